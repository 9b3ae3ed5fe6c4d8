"""The two committers on their own, over the Kafka fakes (no broker, no scorer).

At-least-once: an offset is never committed past a record that was not delivered, whatever
the order of produces, delivery reports and failures. Exactly-once: a failed transaction is
aborted and rewound, the loop backs off, and it gives up after ``max_transaction_retries``
failures in a row; a fenced producer ends it without a commit.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from segstream.services.worker.committers import (
    AtLeastOnceCommitter,
    Batch,
    ExactlyOnceCommitter,
    ProduceError,
    backoff_s,
    make_committer,
)
from segstream.services.worker.metrics import WorkerMetrics
from segstream.shared.scoring import Scorer
from segstream.shared.settings import WorkerSettings
from tests.fakes import (
    KafkaClient,
    LogConsumer,
    LogProducer,
    load_fake_bundle,
    write_fake_bundle,
)

TOPIC = "events"


def _log(n: int, partitions: int = 2) -> dict[int, list[Message]]:
    return {
        p: [
            Message(topic=TOPIC, partition=p, offset=100 + i, key=b"k", value=b"v")
            for i in range(n)
        ]
        for p in range(partitions)
    }


def _setup(
    committer_cls: Any, *, n: int = 50, transactional: bool = False, **worker: Any
) -> tuple[Any, LogConsumer, LogProducer]:
    from segstream.services.worker.committers import ConsumerOffsets

    consumer = LogConsumer(TOPIC, _log(n))
    producer = LogProducer(transactional=transactional, **worker.pop("producer", {}))
    offsets = ConsumerOffsets(KafkaClient(consumer), TOPIC)
    offsets.assigned = set(consumer.partitions)
    w = WorkerSettings(**worker)
    committer = committer_cls(
        w, offsets, KafkaClient(producer), WorkerMetrics.create(CollectorRegistry())
    )
    producer.on_delivery = committer.on_delivery
    return committer, consumer, producer


def _batch(consumer: LogConsumer, n: int, seq: int) -> tuple[Batch, list[Message]]:
    msgs = consumer.consume(n, 0)
    first: dict[int, int] = {}
    nxt: dict[int, int] = {}
    for m in msgs:
        p, o = m.partition(), m.offset()
        first[p] = min(o, first.get(p, o))
        nxt[p] = max(o + 1, nxt.get(p, o + 1))
    return Batch(seq, first, nxt, len(msgs)), msgs


def _producing(producer: LogProducer, msgs: list[Message]) -> Any:
    """``produce()`` of a batch: one record per message, keyed by ``partition:offset``."""

    def produce() -> int:
        for m in msgs:
            producer.produce("predictions", b"p", f"{m.partition()}:{m.offset()}")
        return len(msgs)

    return produce


def test_make_committer_follows_the_guarantee() -> None:
    a, _, _ = _setup(AtLeastOnceCommitter)
    w = WorkerSettings(guarantee="exactly_once")
    e = make_committer(w, a.offsets, a.producer, a.metrics)
    assert isinstance(e, ExactlyOnceCommitter)
    e.close()


def test_fake_scorer_implements_the_scorer_protocol(tmp_path) -> None:
    from tests.integration.worker_helpers import worker_settings

    s = worker_settings("127.0.0.1:1", "t", tmp_path)
    scorer = load_fake_bundle(write_fake_bundle(tmp_path / "b", s.event_schema))
    members = [*Scorer.__annotations__, "score", "score_parts"]
    assert [m for m in members if not hasattr(scorer, m)] == []
    scores = scorer.score(
        {
            "distance": [1.0],
            "sched_dep_hour": [7.0],
            "carrier": ["AA"],
            "origin": ["JFK"],
            "dest": ["LAX"],
            "event_id": ["e"],
        }
    )
    partial, finish = scorer.score_parts(
        {
            "distance": [1.0],
            "sched_dep_hour": [7.0],
            "carrier": ["AA"],
            "origin": ["JFK"],
            "dest": ["LAX"],
            "event_id": ["e"],
        },
        executor=None,
    )
    assert finish().keys() == scores.keys() and "segment" in partial


# ----------------------------------------------------------------------------- at-least-once
def test_at_least_once_commits_a_batch_once_delivered() -> None:
    c, consumer, producer = _setup(AtLeastOnceCommitter, commit_interval_s=0)
    a, msgs = _batch(consumer, 6, 1)
    c.produce_batch(a, _producing(producer, msgs))
    c.poll(threading.Event())  # sent, not yet acknowledged: nothing is committed
    assert consumer.committed() == {} and list(c.inflight) == [a]
    c.poll(threading.Event())
    assert consumer.committed() == {0: 103, 1: 103} and not c.inflight


def test_at_least_once_failed_delivery_commits_earlier_batches_and_rewinds_the_rest() -> None:
    c, consumer, producer = _setup(AtLeastOnceCommitter, commit_interval_s=3600.0)
    a, msgs_a = _batch(consumer, 4, 1)
    c.produce_batch(a, _producing(producer, msgs_a))
    producer.flush()
    c.settle()  # a delivered; the interval has not passed: not committed yet
    assert consumer.committed() == {} and c.delivered == {0: 102, 1: 102}
    b, msgs_b = _batch(consumer, 4, 2)
    c.produce_batch(b, _producing(producer, msgs_b))
    c.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
    h, _ = _batch(consumer, 2, 3)  # the batch in hand: rewound with b, not produced
    c.produce_batch(h, lambda: pytest.fail("a batch after a failure must not be produced"))
    assert consumer.committed() == {0: 102, 1: 102}  # a stays done
    assert consumer.position == {0: 102, 1: 102}  # b and the batch in hand are read again
    assert not c.inflight and c.backoff_until > time.monotonic() and c.failed is None


def test_at_least_once_refused_record_is_a_failed_delivery_and_gives_up() -> None:
    c, consumer, _producer = _setup(
        AtLeastOnceCommitter, commit_interval_s=0, max_delivery_retries=2
    )

    def refused() -> None:
        raise ProduceError("predictions", KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)))

    for attempt in range(1, 4):
        b, _ = _batch(consumer, 4, attempt)
        c.produce_batch(b, refused)
        c.poll(threading.Event())
        assert consumer.position == {0: 100, 1: 100}  # rewound each time
        if attempt <= 2:
            assert c.failed is None
            assert c.backoff_until == pytest.approx(time.monotonic() + backoff_s(attempt), abs=0.5)
    assert consumer.committed() == {}
    assert c.failed is not None and "max_delivery_retries=2" in c.failed


def test_at_least_once_never_commits_offsets_of_lost_partitions() -> None:
    c, consumer, producer = _setup(AtLeastOnceCommitter, commit_interval_s=3600.0)
    a, msgs = _batch(consumer, 4, 1)
    c.produce_batch(a, _producing(producer, msgs))
    producer.flush()
    c.settle()
    c.on_lost({1})
    c.offsets.assigned.discard(1)
    c.drain()
    assert consumer.committed() == {0: 102}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(["batch", "poll", "fail", "settle", "drain", "finish"]), max_size=40),
    st.lists(st.integers(1, 7), min_size=40, max_size=40),
    st.floats(0, 0.002),
)
def test_at_least_once_never_commits_past_an_undelivered_record(
    steps: list[str], sizes: list[int], interval: float
) -> None:
    """Whatever the order of batches, delivery polls, failed records and rewinds: every
    committed offset is at most the offset of each consumed event whose record was never
    delivered (it will be read again)."""
    c, consumer, producer = _setup(
        AtLeastOnceCommitter, n=60, commit_interval_s=interval, max_delivery_retries=1000
    )
    consumed: set[tuple[int, int]] = set()
    delivered: set[tuple[int, int]] = set()

    def check() -> None:
        delivered.update(tuple(map(int, r[2].decode().split(":"))) for r in producer.delivered)
        for p, committed in consumer.committed().items():
            undelivered = [o for q, o in consumed - delivered if q == p]
            assert committed <= min(undelivered, default=committed), (p, committed)

    for seq, (step, size) in enumerate(zip(steps, sizes, strict=False)):
        if step == "batch":
            b, msgs = _batch(consumer, size, seq)
            if msgs:
                consumed.update((m.partition(), m.offset()) for m in msgs)
                c.produce_batch(b, _producing(producer, msgs))
        elif step == "poll":
            producer.poll()
        elif step == "fail" and (producer.queued or producer.sent):
            queue = producer.queued or producer.sent
            queue.pop(0)  # that record is lost: reported as failed
            c.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
        elif step == "settle":
            c.poll(threading.Event())
        elif step == "drain":
            c.drain()
        elif step == "finish":  # the batch in hand failed scoring: rewound after the others
            b, msgs = _batch(consumer, size, seq)
            if msgs:
                consumed.update((m.partition(), m.offset()) for m in msgs)
                rewind = c.finish_earlier(b.first)
                if rewind is not None:
                    c.offsets.seek(rewind)
        check()
    c.drain()
    check()


# ----------------------------------------------------------------------------- exactly-once
def _commit_fails(code: int = KafkaError._TIMED_OUT) -> Any:
    def fail() -> None:
        raise KafkaException(KafkaError(code, "commit failed", retriable=True))

    return fail


def test_exactly_once_commits_records_and_offsets_in_one_transaction() -> None:
    c, consumer, producer = _setup(ExactlyOnceCommitter, transactional=True)
    a, msgs = _batch(consumer, 4, 1)
    c.produce_batch(a, _producing(producer, msgs))
    assert c.finish()
    assert producer.committed_offsets == {0: 102, 1: 102}
    assert len(producer.records("predictions")) == 4
    assert c.metrics.transactions.labels(result="committed")._value.get() == 1
    c.close()


def test_exactly_once_aborts_rewinds_backs_off_and_gives_up() -> None:
    c, consumer, producer = _setup(
        ExactlyOnceCommitter,
        transactional=True,
        max_transaction_retries=2,
        producer={"fail_commit": _commit_fails()},
    )
    for attempt in range(1, 4):
        b, msgs = _batch(consumer, 4, attempt)
        c.produce_batch(b, _producing(producer, msgs))
        c.drain()  # waits for the transaction thread
        assert producer.aborts == attempt
        assert consumer.position == {0: 100, 1: 100}  # rewound to the batch's first offsets
        if attempt <= 2:
            assert c.failed is None
            assert c.backoff_until == pytest.approx(time.monotonic() + backoff_s(attempt), abs=0.5)
    assert c.failed is not None and "max_transaction_retries=2" in c.failed
    assert producer.committed_offsets == {} and producer.delivered == []
    assert c.metrics.transactions.labels(result="aborted")._value.get() == 3
    c.close()


def test_exactly_once_failed_transaction_rewinds_the_batch_in_hand_too() -> None:
    c, consumer, producer = _setup(
        ExactlyOnceCommitter, transactional=True, producer={"fail_commit": _commit_fails()}
    )
    a, msgs_a = _batch(consumer, 4, 1)
    c.produce_batch(a, _producing(producer, msgs_a))
    b, _ = _batch(consumer, 4, 2)
    c.produce_batch(b, lambda: pytest.fail("not produced after a failed transaction"))
    assert consumer.position == {0: 100, 1: 100}
    assert producer.aborts == 1 and producer.txn is None
    c.close()


def test_exactly_once_refused_record_aborts_the_transaction() -> None:
    c, consumer, producer = _setup(ExactlyOnceCommitter, transactional=True)
    b, _ = _batch(consumer, 4, 1)

    def refused() -> None:
        raise ProduceError("predictions", KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)))

    c.produce_batch(b, refused)
    assert producer.aborts == 1 and consumer.position == {0: 100, 1: 100}
    assert c.backoff_until > time.monotonic() and c.failed is None
    c.close()


def test_exactly_once_fenced_producer_ends_without_commit_or_abort() -> None:
    c, consumer, producer = _setup(
        ExactlyOnceCommitter,
        transactional=True,
        producer={"fail_commit": _commit_fails(KafkaError._FENCED)},
    )
    b, msgs = _batch(consumer, 4, 1)
    c.produce_batch(b, _producing(producer, msgs))
    c.close()
    assert c.failed == "fenced"
    assert producer.aborts == 0 and producer.committed_offsets == {}
    assert c.metrics.transactions.labels(result="fenced")._value.get() == 1
