"""The monitor's faust consumer reads committed records only (no broker)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import aiokafka
from prometheus_client import CollectorRegistry

from segstream.services.monitor.app import MonitorService
from segstream.services.monitor.faust_ext import (
    ReadCommittedApp,
    ReadCommittedConsumerThread,
    ReadCommittedTransport,
)
from segstream.shared.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def _service(tmp_path) -> MonitorService:
    s = load_settings(
        REPO / "config" / "flights.yaml",
        {
            "broker": {"bootstrap": "127.0.0.1:1"},
            "monitor": {"data_dir": str(tmp_path / "m"), "bundle_cache_dir": str(tmp_path / "c")},
        },
    )
    return MonitorService(s, CollectorRegistry(), reference_for=lambda b: None)


def test_monitor_consumer_reads_committed_records_only(tmp_path) -> None:
    svc = _service(tmp_path)
    app = svc.app
    assert isinstance(app, ReadCommittedApp)
    assert app.conf.processing_guarantee.value == "at_least_once"  # not transactional itself
    assert isinstance(app.transport, ReadCommittedTransport)
    consumer = app.consumer
    thread = consumer._thread
    assert isinstance(thread, ReadCommittedConsumerThread)

    async def build() -> aiokafka.AIOKafkaConsumer:
        return thread._create_worker_consumer(app.transport)

    kafka_consumer = asyncio.run(build())
    assert kafka_consumer._isolation_level == "read_committed"
    # faust alone would read uncommitted records in a non-transactional app
    assert not consumer.in_transaction


def test_aiokafka_hands_the_isolation_level_to_its_fetcher() -> None:
    """The attribute the thread sets is the one aiokafka's start() gives the Fetcher."""
    assert "isolation_level=self._isolation_level" in inspect.getsource(
        aiokafka.AIOKafkaConsumer.start
    )
