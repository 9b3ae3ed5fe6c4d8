"""Delivery failures made on a real broker, not by a fake producer.

The natural broker-side failure, a topic-level ``max.message.bytes`` on the predictions topic
smaller than a record, cannot be made on the embedded Tansu 0.6 broker: it accepts the topic
config (``describe_configs`` returns it) but ignores it (5 KB and 50 KB records to a topic
with ``max.message.bytes=1000`` are acknowledged), and a produce to a deleted topic is
acknowledged too. What Tansu does let us do is stop answering: the broker process is frozen
(SIGSTOP) for longer than the producer's ``message.timeout.ms``, so librdkafka fails the
outstanding deliveries (``_MSG_TIMED_OUT``, the producer-wide error callback), then thawed
(SIGCONT) with its memory storage intact. Each test runs its own broker so the freeze touches
no other test.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from segstream.services.simulator.app import run_simulation
from segstream.services.simulator.replay import Replay
from segstream.services.worker.app import run_worker
from segstream.shared.broker import EmbeddedBroker
from segstream.shared.kafka import ensure_topics
from tests.fakes import load_fake_bundle
from tests.integration.worker_helpers import publish_fake, worker_settings
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration

TIMEOUT_MS = 2000


def _wait(pred, timeout_s: float, what: str, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def _read_until_covered(bootstrap: str, topic: str, want: set[str], timeout_s: float) -> list:
    """Read ``topic`` again until its records cover every id of ``want`` (or the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        msgs = consume_all(bootstrap, topic, len(want), 20, 1.0)
        ids = {orjson.loads(m.value())["event_id"] for m in msgs}
        if want <= ids or time.monotonic() > deadline:
            return msgs


def test_deliveries_timing_out_on_a_frozen_broker_are_rewound_and_redone(
    flights_df, tmp_path: Path
) -> None:
    """At-least-once, commit after every batch: the broker freezes right after the worker's
    first batch for 3x the delivery timeout. The worker reports the failed deliveries
    (``batch_failures{stage="deliver"}``) and rewinds; once the broker is back every event
    gets a prediction, from the same worker or, on Tansu, from a restarted one: Tansu fences
    the idempotent producer after the timeout, every retry fails and the worker stops
    (exit 1) after ``worker.max_delivery_retries``. Nothing is lost. Records whose delivery
    timed out may still have reached the broker (they were in its socket when it froze), so
    an event may have more than one prediction: the test asserts no gap, not the number of
    copies."""
    df = flights_df[flights_df["event_time"].dt.month == 9].iloc[:6000].reset_index(drop=True)
    with EmbeddedBroker() as broker:
        s = worker_settings(
            broker.bootstrap,
            "frz",
            tmp_path,
            partitions=2,
            guarantee="at_least_once",
            batch_size=200,
            commit_interval_s=0.0,
        )
        s = s.model_copy(
            update={
                "broker": s.broker.model_copy(update={"client": {"message.timeout.ms": TIMEOUT_MS}})
            }
        )
        t = s.topics
        ensure_topics(
            s.broker,
            [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates],
            t.partitions,
        )
        publish_fake(s, tmp_path)
        recs = list(Replay(df, s.event_schema, outcomes=False, bad_fraction=0.0, seed=0))
        sim = s.simulator.model_copy(update={"rate": 1e6, "speedup": None})
        summary = run_simulation(
            s.model_copy(update={"simulator": sim}), progress=False, records=recs
        )
        assert summary.failed == 0, summary.line()
        # All events are in the topic before the worker starts: it prefetches far more than
        # a batch, so when the broker freezes right after its first batch it still has
        # batches to score and produce, whose deliveries then time out.
        registry = CollectorRegistry()
        stop = threading.Event()
        code: list[int] = []
        th = threading.Thread(
            target=lambda: code.append(
                run_worker(s, stop=stop, loader=load_fake_bundle, registry=registry)
            ),
            daemon=True,
        )
        th.start()

        def sample(name: str, labels: dict[str, str] | None = None) -> float:
            return registry.get_sample_value(name, labels or {}) or 0.0

        pid = broker.pid
        assert pid is not None
        try:
            _wait(
                lambda: sample("segstream_worker_events_consumed_total") >= 200,
                90,
                "the first batch",
                poll_s=0.005,
            )
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(3 * TIMEOUT_MS / 1000)
            finally:
                os.kill(pid, signal.SIGCONT)
            _wait(
                lambda: sample("segstream_worker_batch_failures_total", {"stage": "deliver"}) >= 1,
                30,
                "a delivery failure",
            )
            _wait(
                lambda: (
                    not th.is_alive() or sample("segstream_worker_events_consumed_total") >= len(df)
                ),
                120,
                "every event consumed, or the worker's stop",
            )
        finally:
            stop.set()
            th.join(60)
        want = set(df["event_id"].astype(str))
        failures = sample("segstream_worker_batch_failures_total", {"stage": "deliver"})
        assert failures >= 1
        second: list[int] = []
        if code == [1]:
            # Tansu answers the idempotent producer's epoch bump after a timed-out delivery
            # with PRODUCER_FENCED, so every retry fails and the worker stops after
            # worker.max_delivery_retries, not ready, exit 1, committing nothing it did not
            # deliver. A restarted worker (a new producer) must then finish the stream.
            stop2 = threading.Event()
            reg2 = CollectorRegistry()
            th2 = threading.Thread(
                target=lambda: second.append(
                    run_worker(s, stop=stop2, loader=load_fake_bundle, registry=reg2)
                ),
                daemon=True,
            )
            th2.start()
            try:
                preds = _read_until_covered(broker.bootstrap, t.predictions, want, 120)
            finally:
                stop2.set()
                th2.join(60)
            assert second == [0]
        else:
            assert code == [0]
            preds = _read_until_covered(broker.bootstrap, t.predictions, want, 120)
        got = Counter(orjson.loads(m.value())["event_id"] for m in preds)
        assert set(got) == want, f"{len(want - set(got))} events lost after the failure"
