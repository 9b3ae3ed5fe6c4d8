"""Soak: 10x the monitor's state bounds through the embedded broker; the tables stay bounded,
the overflow is counted, and no changelog record comes near the producer's 1 MB request size."""

from __future__ import annotations

import time
import urllib.request
import uuid

import numpy as np
import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tests.integration.test_monitor import _Monitor, _settings
from tests.unit.test_monitor_core import DAY, T0, stats
from tests.unit.test_monitor_performance import pred

pytestmark = pytest.mark.integration

PENDING_MAX = 100  # per partition
MAX_KEYS = 50
MEMORY_LIMIT_BYTES = 1_000_000_000  # the monitor process (Python, confluent-kafka, numba)


def _changelog_sizes(bootstrap: str, topic: str, partitions: int, table: str) -> list[int]:
    """Value sizes of the records of ``table`` in the state changelog ``topic`` (key
    ``[table, entry key]``; assigned, not subscribed: no group join)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"soak-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    sizes: list[int] = []
    deadline = time.monotonic() + 60
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < 5:
        msgs = c.consume(5000, 0.5)
        if msgs:
            last = time.monotonic()
        sizes += [
            len(m.value() or b"")
            for m in msgs
            if m.error() is None and orjson.loads(m.key())[0] == table
        ]
    c.close()
    return sizes


def test_state_stays_bounded_under_ten_times_its_bounds(kafka, topic_prefix, tmp_path) -> None:
    s = _settings(
        kafka, topic_prefix, tmp_path, pending_max=PENDING_MAX, new_segment_max_keys=MAX_KEYS
    )
    parts = s.topics.partitions
    n_pred = 10 * PENDING_MAX * parts  # predictions whose outcomes never come
    n_keys = 10 * MAX_KEYS  # unknown keys, 30 events each (a 30,000-key value was 2.4 MB)
    mon = _Monitor(s, tmp_path, "soak")
    try:
        p = Producer({"bootstrap.servers": s.broker.bootstrap, "linger.ms": 20})
        t = T0 + 3_600_000
        for i in range(n_pred):
            rec = pred(f"e{i}", t + i * 1000, 1.0) | {"model": s.model}
            p.produce(s.topics.predictions, orjson.dumps(rec), f"e{i}".encode())
        keys = [f"origin=X{i:04d},carrier=ZZ,dest=Y{i:04d}" for i in range(n_keys)]
        for j in range(0, n_keys, 100):  # stats records naming 100 keys each
            batch = keys[j : j + 100]
            for r in stats(
                T0 + DAY // 2 + np.arange(30 * len(batch)), None, unknown=batch * 30, batch=j
            ):
                p.produce(s.topics.stats, orjson.dumps(r | {"model": s.model}), b"m")
        assert p.flush(30) == 0
        mon.wait(
            lambda m: (
                m.metric("segstream_monitor_records_total", source="predictions", result="ok")
                >= n_pred
                and m.metric("segstream_monitor_records_total", source="stats", result="ok")
                >= n_keys // 100
            ),
            300,
        )
        metrics = mon.metrics()
        text = urllib.request.urlopen(f"http://127.0.0.1:{mon.port}/metrics", timeout=5).read()
        rss = float(
            next(
                line.split()[-1]
                for line in text.decode().splitlines()
                if line.startswith("process_resident_memory_bytes")
            )
        )
    finally:
        mon.stop()
    over = 'segstream_monitor_state_overflow_total{state="%s"}'
    assert metrics['segstream_monitor_pending_entries{kind="predictions"}'] <= PENDING_MAX * parts
    assert metrics[over % "pending_predictions"] >= n_pred - PENDING_MAX * parts
    assert metrics[over % "new_keys"] == 30 * (n_keys - MAX_KEYS)
    assert 0 < rss < MEMORY_LIMIT_BYTES
    changelog = f"{s.monitor.app_id}-state-changelog"
    for table in ("newkeys", "pending_p", "drift"):
        sizes = _changelog_sizes(s.broker.bootstrap, changelog, parts, table)
        assert sizes, table
        assert max(sizes) < 64_000, (table, max(sizes))  # far below the 1 MB request size
    # one small entry per key (a few buckets), never one value holding every key
    newkeys = _changelog_sizes(s.broker.bootstrap, changelog, parts, "newkeys")
    assert max(newkeys) < 2_000 and len(newkeys) >= MAX_KEYS
