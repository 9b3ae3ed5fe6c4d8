"""The worker loop's at-least-once bookkeeping with fake Kafka clients (no broker).

Delivery reports come for failed records only (``delivery.report.only.error``), so the loop
commits when the producer has nothing outstanding; these tests pin what that means: a batch is
committed once delivered (before the next one is produced; with ``commit_interval_s`` 0), a
failed record rewinds every batch in flight and commits none of them; with a commit interval,
delivered batches wait for it (or for shutdown, or a rewind) and are committed together.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message
from prometheus_client import CollectorRegistry

from segstream.services.worker.loop import StreamWorker
from segstream.services.worker.metrics import WorkerMetrics
from segstream.services.worker.records import warm_up_records
from segstream.shared.events import encode_events
from tests.fakes import load_fake_bundle, write_fake_bundle
from tests.integration.worker_helpers import worker_settings


class FakeConsumer:
    """Hands out the given batches in order. ``seek`` redelivers, as librdkafka does: the
    partition's messages from the sought offset on (of everything handed out or still
    planned) come next, in offset order, as one batch, and the planned batches lose them."""

    def __init__(self, batches: list[list[Message]]) -> None:
        self.batches = [list(b) for b in batches]
        self.commits: list[dict[int, int]] = []
        self.seeks: list[tuple[int, int]] = []
        self.log: list[str] = []
        self.idle_polls = 0  # polls that found nothing left
        self.known: dict[tuple[int, int], Message] = {
            (m.partition(), m.offset()): m for b in batches for m in b
        }
        self.handed: list[Message] = []  # every message handed out, in order

    def consume(self, n: int, timeout: float) -> list[Message]:
        if self.batches:
            batch = self.batches.pop(0)
            self.handed += batch
            return batch
        self.idle_polls += 1
        return []

    def commit(self, offsets: Any, asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})
        self.log.append("commit")

    def committed_total(self) -> dict[int, int]:
        """The last committed offset per partition."""
        out: dict[int, int] = {}
        for c in self.commits:
            out.update(c)
        return out

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.partition, tp.offset))
        self.log.append("seek")
        p, at = tp.partition, tp.offset
        again = sorted(
            (m for (mp, off), m in self.known.items() if mp == p and off >= at),
            key=Message.offset,
        )
        self.batches = [
            kept
            for b in self.batches
            if (kept := [m for m in b if not (m.partition() == p and m.offset() >= at)])
        ]
        if again:
            self.batches.insert(0, again)

    def assignment(self) -> list[Any]:
        return []


class FakeProducer:
    """A record is delivered (or fails, the first time only, if its value contains one of
    ``fail_values``: a transient failure, as a broker timeout) at the second ``poll`` after it
    was produced: one poll to send it, one to get the answer."""

    def __init__(self, fail_values: set[bytes] = frozenset(), log: list[str] | None = None):
        self.queued: list[tuple[bytes, Any]] = []
        self.sent: list[tuple[bytes, Any]] = []
        self.delivered: list[bytes] = []
        self.fail_values = set(fail_values)
        self.failed: list[bytes] = []
        self.log = log if log is not None else []
        self.on_delivery: Any = None  # the producer-wide callback (set to the loop's)

    def produce(
        self,
        topic: str,
        value: bytes,
        key: Any = None,
        headers: Any = None,
        on_delivery: Any = None,
    ) -> None:
        self.queued.append((value, on_delivery))
        self.log.append("produce")

    def poll(self, timeout: float = 0) -> int:
        done, self.sent, self.queued = self.sent, self.queued, []
        for value, _ in done:
            failing = [f for f in self.fail_values if f in value]
            if failing:
                self.fail_values -= set(failing)
                self.failed.append(value)
                self.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                self.delivered.append(value)
        return len(done)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self.queued) + len(self.sent)


class _Client:
    def __init__(self, client: Any) -> None:
        self.client = client


def _messages(settings: Any, rows: Any, partition: int, start: int) -> list[Message]:
    out = []
    for i, (k, v) in enumerate(encode_events(rows, settings.event_schema)):
        out.append(
            Message(
                topic=settings.topics.events,
                partition=partition,
                offset=start + i,
                key=k,
                value=v,
                timestamp=(1, 1_000),
            )
        )
    return out


@pytest.fixture()
def setup(tmp_path, flights_df):
    sept_flights = flights_df[flights_df["event_time"].dt.month == 9].reset_index(drop=True)
    s = worker_settings(
        "127.0.0.1:1", "t", tmp_path, stats_enabled=False, score_threads=0, commit_interval_s=0
    )
    scorer = load_fake_bundle(write_fake_bundle(tmp_path / "b", s.event_schema))
    # A bundle load warms the numba kernels up (services.worker.reload.warm_up); these loops
    # get their scorer directly, and their timers leave no room for a first-batch JIT.
    warm_up_records()
    a = _messages(s, sept_flights.iloc[:5], 0, 100)
    b = _messages(s, sept_flights.iloc[5:8], 1, 40) + _messages(s, sept_flights.iloc[8:10], 0, 105)
    return s, scorer, a, b


def _run(s, scorer, consumer, producer) -> StreamWorker:
    loop = StreamWorker(
        s,
        _Client(consumer),
        _Client(producer),
        scorer,
        WorkerMetrics.create(CollectorRegistry()),
        "w1",
    )
    producer.on_delivery = loop.on_delivery
    loop.assigned = {0, 1}
    stop = threading.Event()

    def stop_when_idle() -> None:
        # Stop once the loop has polled an empty topic a while (every record produced and
        # answered by then), not after a fixed time: a busy machine must not cut the run short.
        deadline = time.monotonic() + 30.0
        while consumer.idle_polls < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()

    threading.Thread(target=stop_when_idle, daemon=True).start()
    assert loop.run(stop) == 0
    return loop


def test_each_delivered_batch_is_committed_before_the_next_is_produced(setup) -> None:
    s, scorer, a, b = setup
    consumer = FakeConsumer([a, b])
    producer = FakeProducer(log=consumer.log)
    _run(s, scorer, consumer, producer)
    assert len(producer.delivered) == 10
    assert consumer.commits[0] == {0: 105}  # batch a, once delivered
    # batch a's commit comes before any record of batch b is produced
    assert consumer.log.index("commit") == 5
    assert {0: 107, 1: 43}.items() <= {k: v for c in consumer.commits for k, v in c.items()}.items()
    assert consumer.seeks == []


def _delivered_ids(producer: FakeProducer) -> list[str]:
    return [orjson.loads(v)["event_id"] for v in producer.delivered]


def test_a_failed_record_rewinds_every_batch_in_flight_without_commit(setup) -> None:
    s, scorer, a, b = setup
    bad_id = a[2].key()  # one prediction of batch a fails (once)
    consumer = FakeConsumer([a, b])
    producer = FakeProducer(fail_values={b'"event_id":"' + bad_id + b'"'})
    loop = _run(s, scorer, consumer, producer)
    # The failure shows before batch b is produced: a and b are rewound, nothing committed
    # before the rewind.
    assert consumer.log.index("seek") < consumer.log.index("commit")
    assert sorted(consumer.seeks) == [(0, 100), (1, 40)]
    assert len(producer.failed) == 1 and not loop.committer.inflight
    # The rewind redelivers: a's 5 and b's 5 events are scored again and delivered, so every
    # event is delivered; a's 4 records delivered before the failure are the duplicates
    # (at-least-once), nothing else is.
    ids = [m.key().decode() for m in a + b]
    got = Counter(_delivered_ids(producer))
    assert set(got) == set(ids)
    assert sorted(e for e, c in got.items() if c > 1) == sorted(
        m.key().decode() for m in a if m.key() != bad_id
    )
    assert max(got.values()) == 2
    assert consumer.committed_total() == {0: 107, 1: 43}


def _with_interval(s: Any, seconds: float) -> Any:
    return s.model_copy(
        update={"worker": s.worker.model_copy(update={"commit_interval_s": seconds})}
    )


def test_with_a_commit_interval_delivered_batches_are_committed_together_on_shutdown(setup) -> None:
    s, scorer, a, b = setup
    consumer = FakeConsumer([a, b])
    producer = FakeProducer(log=consumer.log)
    _run(_with_interval(s, 3600.0), scorer, consumer, producer)
    assert len(producer.delivered) == 10
    # Nothing was due during the run: one commit, on shutdown, after every record.
    assert consumer.commits == [{0: 107, 1: 43}]
    assert consumer.log[-1] == "commit" and consumer.log.count("produce") == 10


def test_a_commit_interval_commits_when_due_even_with_no_new_batch(setup) -> None:
    s, scorer, a, _ = setup
    consumer = FakeConsumer([a])
    producer = FakeProducer()
    loop = StreamWorker(
        _with_interval(s, 0.1),
        _Client(consumer),
        _Client(producer),
        scorer,
        WorkerMetrics.create(CollectorRegistry()),
        "w1",
    )
    producer.on_delivery = loop.on_delivery
    loop.assigned = {0, 1}
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,))
    t.start()
    try:
        import time

        deadline = time.monotonic() + 5
        while not consumer.commits and time.monotonic() < deadline:
            time.sleep(0.01)
        assert consumer.commits == [{0: 105}]  # idle loop, interval passed: committed
    finally:
        stop.set()
        t.join(5)


def test_a_failure_commits_the_batches_delivered_before_it_and_rewinds_the_rest(setup) -> None:
    s, scorer, a, b = setup
    bad_id = b[0].key()  # batch a is delivered (not yet committed), then b fails
    consumer = FakeConsumer([a, b])
    producer = FakeProducer(fail_values={b'"event_id":"' + bad_id + b'"'})
    loop = _run(_with_interval(s, 3600.0), scorer, consumer, producer)
    assert consumer.commits[0] == {0: 105}  # a: delivered before the failure
    assert sorted(consumer.seeks) == [(0, 105), (1, 40)]  # b rewound
    assert consumer.log.index("commit") < consumer.log.index("seek")
    assert not loop.committer.inflight and not loop.committer.delivered
    # b redelivered and delivered: the second commit covers it; only b's records delivered
    # before the failure are duplicates.
    assert consumer.commits[1:] == [{0: 107, 1: 43}]
    got = Counter(_delivered_ids(producer))
    assert set(got) == {m.key().decode() for m in a + b}
    assert {e for e, c in got.items() if c > 1} <= {m.key().decode() for m in b} - {bad_id.decode()}


def test_a_drain_with_records_outstanding_still_commits_what_was_delivered(setup) -> None:
    """drain (revoke, shutdown, scoring failure) commits the batches already delivered even
    when a later batch's records could not be delivered in time."""
    s, scorer, _a, _b = setup
    producer = FakeProducer()
    loop = StreamWorker(
        _with_interval(s, 3600.0),
        _Client(FakeConsumer([])),
        _Client(producer),
        scorer,
        WorkerMetrics.create(CollectorRegistry()),
        "w1",
    )
    producer.on_delivery = loop.on_delivery
    loop.assigned = {0, 1}
    loop.committer.delivered = {0: 105}  # batch a: delivered, not yet committed
    producer.queued.append((b"stuck", None))  # a later batch's record, never delivered
    producer.flush = lambda timeout=0: 1  # type: ignore[method-assign]
    from segstream.services.worker.committers import Batch

    loop.committer.inflight.append(Batch(2, {0: 105, 1: 40}, {0: 107, 1: 43}))
    loop.committer.drain()
    assert loop.consumer.client.commits == [{0: 105}]  # a only; the stuck batch is not
    assert not loop.committer.inflight


class TimedConsumer(FakeConsumer):
    """librdkafka's ``consume(n, timeout)``: returns when ``n`` messages are queued or the
    timeout has passed. Messages arrive at given times after the first call."""

    def __init__(self, arrivals: list[tuple[float, Message]]) -> None:
        super().__init__([])
        self.arrivals = sorted(arrivals, key=lambda a: a[0])
        self.t0: float | None = None
        self.taken: list[tuple[float, float]] = []  # (arrival, taken) per message

    def consume(self, n: int, timeout: float) -> list[Message]:
        import time

        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        deadline = now + timeout
        while True:
            now = time.monotonic()
            due = [a for a in self.arrivals if self.t0 + a[0] <= now]
            if len(due) >= n or now >= deadline:
                break
            time.sleep(0.002)
        out = due[:n]
        for a in out:
            self.arrivals.remove(a)
            self.taken.append((a[0], now - self.t0))
        return [m for _, m in out]


def test_an_event_arriving_into_an_idle_worker_does_not_wait_for_the_batch_timeout(setup) -> None:
    """With a 1 s batch timeout and 1000-event batches, a single event arriving while the
    queue is empty is taken within milliseconds (not when the timeout ends), and events
    already queued are taken together."""
    s, scorer, a, _ = setup
    s = s.model_copy(
        update={"worker": s.worker.model_copy(update={"batch_timeout_s": 1.0, "batch_size": 1000})}
    )
    consumer = TimedConsumer([(0.3, a[0]), (0.0, a[1]), (0.0, a[2])])
    producer = FakeProducer()
    loop = StreamWorker(
        s,
        _Client(consumer),
        _Client(producer),
        scorer,
        WorkerMetrics.create(CollectorRegistry()),
        "w1",
    )
    producer.on_delivery = loop.on_delivery
    loop.assigned = {0, 1}
    stop = threading.Event()
    threading.Timer(0.8, stop.set).start()
    assert loop.run(stop) == 0
    waits = sorted(taken - arrived for arrived, taken in consumer.taken)
    assert len(waits) == 3 and waits[-1] < 0.1, waits
    assert len(producer.delivered) == 3


class BoundedProducer(FakeProducer):
    """A producer queue of ``bound`` records: ``produce`` raises BufferError when full, as
    librdkafka does; ``poll`` delivers what was sent."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound
        self.full_hits = 0

    def produce(
        self,
        topic: str,
        value: bytes,
        key: Any = None,
        headers: Any = None,
        on_delivery: Any = None,
    ) -> None:
        if len(self) >= self.bound:
            self.full_hits += 1
            raise BufferError("Local: Queue full")
        super().produce(topic, value, key, headers, on_delivery)


def test_a_full_producer_queue_is_waited_out_and_no_record_is_lost_or_doubled(setup) -> None:
    s, scorer, a, b = setup
    consumer = FakeConsumer([a, b])
    producer = BoundedProducer(bound=2)
    _run(s, scorer, consumer, producer)
    assert producer.full_hits > 0
    ids = [orjson.loads(v)["event_id"] for v in producer.delivered]
    assert sorted(ids) == sorted(m.key().decode() for m in a + b)  # each once
    assert {0: 107, 1: 43}.items() <= {k: v for c in consumer.commits for k, v in c.items()}.items()


@pytest.mark.parametrize(("family", "threshold"), [("binomial", 0.4), ("poisson", None)])
def test_records_of_a_binomial_or_poisson_bundle_carry_its_family_fields(
    setup, tmp_path, family, threshold
) -> None:
    """The loop writes the scorer's family fields: binomial probability, label and the
    bundle's threshold; Poisson the family with the expected count and its interval."""
    s, _, a, b = setup
    scorer = load_fake_bundle(
        write_fake_bundle(tmp_path / family, s.event_schema, family=family, threshold=threshold)
    )
    assert (scorer.family, scorer.threshold) == (family, threshold)
    consumer = FakeConsumer([a, b])
    producer = FakeProducer(log=consumer.log)
    _run(s, scorer, consumer, producer)
    recs = {r["event_id"]: r for r in map(orjson.loads, producer.delivered)}
    assert len(recs) == 10
    from segstream.services.worker.decode import EventDecoder

    batch = EventDecoder(scorer.schema, 1 << 16).decode([m.value() for m in a + b])
    want = scorer.score(batch.columns)
    ids = batch.columns[scorer.schema.id_field].tolist()
    for i, eid in enumerate(ids):
        rec = recs[eid]
        assert rec["family"] == family
        assert rec["prediction"] == want["prediction"][i]
        assert rec["pattern"] == -1 and rec["pattern_proba"] is None
        if family == "binomial":
            assert rec["probability"] == rec["prediction"]
            assert rec["label"] == int(want["label"][i]) == int(rec["probability"] >= threshold)
            assert rec["threshold"] == threshold and rec["interval"] == [None, None]
        else:
            assert rec["interval"] == [want["interval_low"][i], want["interval_high"][i]]
            assert "probability" not in rec and "label" not in rec
