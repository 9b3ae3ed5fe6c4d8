"""Far-future and far-past events among normal ones through a worker on a real broker: every
event is predicted or dead-lettered as event_time_out_of_range with its original bytes."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from segstream.services.simulator.app import run_simulation
from segstream.services.simulator.replay import Record, Replay
from segstream.services.worker.app import run_worker
from segstream.shared.contracts import DlqHeaders
from segstream.shared.kafka import ensure_topics
from tests.fakes import load_fake_bundle
from tests.integration.worker_helpers import publish_fake, worker_settings
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration


def _wait_for(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _hostile(records: list[Record]) -> tuple[list[Record], dict[bytes, str]]:
    """Every 50th event dated 2261 (and every 170th 1990) instead; returns the records and
    the hostile values -> their event id."""
    out: list[Record] = []
    hostile: dict[bytes, str] = {}
    for i, r in enumerate(records):
        if r.kind == "event" and (i % 50 == 7 or i % 170 == 11):
            doc = orjson.loads(r.value)
            doc["event_time"] = "2261-03-01T00:00:00Z" if i % 50 == 7 else "1990-01-01T00:00:00Z"
            value = orjson.dumps(doc)
            hostile[value] = doc["event_id"]
            out.append(Record("events", r.key, value, r.sim_time_s, "event_time"))
        else:
            out.append(r)
    return out, hostile


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_far_future_events_are_dead_lettered_and_the_rest_predicted(
    kafka, topic_prefix, tmp_path, flights_df, guarantee
) -> None:
    df = flights_df[flights_df["event_time"].dt.month == 9].iloc[:2000].reset_index(drop=True)
    s = worker_settings(
        kafka.bootstrap, topic_prefix, tmp_path, guarantee=guarantee, batch_size=300
    )
    t = s.topics
    ensure_topics(
        s.broker, [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates], t.partitions
    )
    publish_fake(s, tmp_path)
    recs, hostile = _hostile(list(Replay(df, s.event_schema, outcomes=False)))
    assert len(hostile) > 40
    registry = CollectorRegistry()
    stop = threading.Event()
    result: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault(
            "code", run_worker(s, stop=stop, loader=load_fake_bundle, registry=registry)
        ),
        daemon=True,
    )
    thread.start()

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    try:
        _wait_for(lambda: sample("segstream_worker_assigned_partitions") > 0, 60, "assignment")
        sim = s.simulator.model_copy(update={"rate": 1e6, "speedup": None})
        summary = run_simulation(
            s.model_copy(update={"simulator": sim}), progress=False, records=recs
        )
        assert summary.failed == 0, summary.line()
        _wait_for(
            lambda: sample("segstream_worker_events_consumed_total") >= len(recs),
            120,
            "all events consumed",
        )
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(60)
    assert result.get("code") == 0
    preds = consume_all(kafka.bootstrap, t.predictions, len(recs) - len(hostile), 60, 2.0)
    dlq = consume_all(kafka.bootstrap, t.dlq, len(hostile), 60, 2.0)
    assert len(preds) + len(dlq) == len(recs)  # events == predictions + DLQ
    assert {orjson.loads(m.value())["event_id"] for m in preds}.isdisjoint(hostile.values())
    assert len(dlq) == len(hostile)
    for m in dlq:
        h = DlqHeaders.from_headers(m.headers())
        assert h.reason == "event_time_out_of_range"
        assert m.value() in hostile  # the original bytes
        assert h.watermark.startswith("2013-09")
        assert h.limit in ("max_future_s=86400", "max_past_s=604800")
    assert sample(
        "segstream_worker_dlq_records_total", {"reason": "event_time_out_of_range"}
    ) == len(hostile)
    stats = [orjson.loads(m.value()) for m in consume_all(kafka.bootstrap, t.stats, 1, 30, 2.0)]
    assert sum(r["dlq"].get("event_time_out_of_range", 0) for r in stats) == len(hostile)
    assert all(
        r[k] is None or r[k].startswith("2013-09")
        for r in stats
        for k in ("event_time_min", "event_time_max")
    )
