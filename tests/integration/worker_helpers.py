"""Helpers for the worker integration tests and the benchmark: settings, bundles, events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from segstream.shared.settings import Settings, load_settings
from segstream.shared.store import ArtifactStore
from tests.fakes import write_fake_bundle

REPO = Path(__file__).resolve().parents[2]
FLIGHTS_CONFIG = REPO / "config" / "flights.yaml"


def worker_settings(
    bootstrap: str, prefix: str, tmp: Path, *, partitions: int = 3, **worker: Any
) -> Settings:
    """Flights settings with unique topics, a private store and fast reload polling."""
    names = ("events", "predictions", "alerts", "dlq", "stats", "outcomes", "model_updates")
    w: dict[str, Any] = {
        "group_id": f"{prefix}-g",
        "metrics_port": 0,
        "reload_poll_s": 1.0,
        "bundle_cache_dir": str(tmp / "cache"),
        "batch_timeout_s": 0.05,
    }
    w.update(worker)
    return load_settings(
        FLIGHTS_CONFIG,
        {
            "broker": {"bootstrap": bootstrap},
            "topics": {**{n: f"{prefix}.{n}" for n in names}, "partitions": partitions},
            "store": {"url": f"file://{tmp / 'store'}"},
            "worker": w,
        },
    )


def write_config(settings: Settings, path: Path) -> Path:
    """Write settings as a YAML config file (for worker subprocesses)."""
    data = settings.model_dump(mode="json", by_alias=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def publish_fake(
    settings: Settings, tmp: Path, *, tag: str = "", promote: bool = True, **kw: Any
) -> str:
    """Write a fake bundle and publish it to the settings' store; return its bundle id."""
    d = write_fake_bundle(tmp / "build", settings.event_schema, model=settings.model, tag=tag, **kw)
    ArtifactStore(settings.store).publish(d, promote=promote)
    return d.name
