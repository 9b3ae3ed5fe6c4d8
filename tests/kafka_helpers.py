"""Helpers for tests that read topics back (bounded by deadlines)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from segstream.shared.kafka import FAST_GROUP_CONFIG


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 60.0,
    idle_s: float = 3.0,
    *,
    isolation: str = "read_committed",
) -> list[Any]:
    """Read ``topic`` from the beginning until ``expected`` messages (or the deadline), then
    keep reading for ``idle_s`` seconds to catch any extra ones. ``isolation`` is the
    consumer's ``isolation.level`` (librdkafka's default, ``read_committed``, stated)."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            **FAST_GROUP_CONFIG,
        }
    )
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    idle_until = None
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(10_000, 0.5)
            for m in msgs:
                if m.error() is None:
                    out.append(m)
            if len(out) >= expected:
                idle_until = idle_until or time.monotonic() + idle_s
                if time.monotonic() >= idle_until:
                    break
    finally:
        c.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The consumer group's committed offset per partition (-1001: none), read without
    joining the group."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **FAST_GROUP_CONFIG})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=20)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in tps}
