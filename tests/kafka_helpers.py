"""Helpers for tests that read topics back (bounded by deadlines)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from segstream.shared.kafka import FAST_GROUP_CONFIG


def consume_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0, idle_s: float = 3.0
) -> list[Any]:
    """Read ``topic`` from the beginning until ``expected`` messages (or the deadline), then
    keep reading for ``idle_s`` seconds to catch any extra ones."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
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
