"""The worker loop when things fail (no broker): events whose scoring raises, a broken
bundle, records ``produce()`` refuses, in both delivery guarantees.

The consumer is a partitioned log with positions (:class:`tests.fakes.LogConsumer`): what the
loop seeks, pauses and commits decides what it reads next, as with librdkafka.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Message
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import segstream.services.worker.committers as committers
from segstream.services.worker.committers import backoff_s
from segstream.services.worker.loop import EXIT_FAILED, StreamWorker, _bisect
from segstream.services.worker.metrics import WorkerMetrics
from segstream.services.worker.records import warm_up_records
from segstream.shared.events import encode_events
from tests.fakes import (
    KafkaClient,
    LogConsumer,
    LogProducer,
    load_fake_bundle,
    write_fake_bundle,
)
from tests.integration.worker_helpers import worker_settings

POISON = "poison-"


# ----------------------------------------------------------------------------- bisection
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.data())
def test_bisection_finds_exactly_the_failing_events(n: int, data: Any) -> None:
    bad = set(data.draw(st.lists(st.integers(0, n - 1), max_size=min(n, 20), unique=True)))
    allowed = data.draw(st.integers(0, 25))
    calls = []

    def score(rows: np.ndarray) -> None:
        calls.append(len(rows))
        hit = bad.intersection(rows.tolist())
        if hit:
            raise ValueError(f"event {min(hit)}")

    if not bad:  # the batch failed once, but no event fails alone (a passing glitch)
        assert _bisect(score, n, ValueError("once"), max(allowed, 1)) == []
        return
    found = _bisect(score, n, ValueError(f"event {min(bad)}"), allowed)
    if len(bad) > allowed:
        assert found is None
        # Judged on the failing parts' lower bound: about 2 calls per allowed failure per level.
        assert len(calls) <= 2 * (allowed + 1) * max(1, int(np.ceil(np.log2(n))))
    else:
        assert found is not None
        assert [r for r, _ in found] == sorted(bad)
        assert [str(e) for _, e in found] == [f"event {r}" for r in sorted(bad)]
        k = len(bad)
        assert len(calls) <= 2 * k * max(1, int(np.ceil(np.log2(n)))) + 2


def test_bisection_stops_early_on_a_bundle_that_fails_everything() -> None:
    calls = []

    def score(rows: np.ndarray) -> None:
        calls.append(len(rows))
        raise ValueError("all")

    assert _bisect(score, 20_000, ValueError("all"), 200) is None
    assert len(calls) < 1000  # breadth first: ~2 * 256 calls to see 201 failing parts


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_s(k) for k in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_s(30) == committers.BACKOFF_MAX_S


# ----------------------------------------------------------------------------- loop setup
@pytest.fixture(scope="module")
def sept(flights_df):
    return flights_df[flights_df["event_time"].dt.month == 9].reset_index(drop=True)


def _settings(tmp_path, **worker: Any):
    kw: dict[str, Any] = {
        "stats_enabled": True,
        "score_threads": 0,
        "commit_interval_s": 0,
        "batch_size": 20,
    }
    kw.update(worker)
    return worker_settings("127.0.0.1:1", "t", tmp_path, **kw)


def _log(settings: Any, df: Any, poison: set[int] = frozenset()) -> dict[int, list[Message]]:
    """Events of ``df`` over 2 partitions (offsets from 100); ``poison`` rows get a poisoned
    event id."""
    df = df.copy()
    for i in poison:
        df.loc[i, "event_id"] = POISON + str(df.loc[i, "event_id"])
    out: dict[int, list[Message]] = {0: [], 1: []}
    for i, (k, v) in enumerate(encode_events(df, settings.event_schema)):
        p = i % 2
        out[p].append(
            Message(
                topic=settings.topics.events,
                partition=p,
                offset=100 + len(out[p]),
                key=k,
                value=v,
                timestamp=(1, 1000),
            )
        )
    return out


def _scorer(tmp_path, settings: Any, tag: str = "", **kw: Any):
    warm_up_records()
    return load_fake_bundle(
        write_fake_bundle(tmp_path / f"b{tag}", settings.event_schema, tag=tag, **kw)
    )


def _worker(settings, consumer, producer, scorer, **kw: Any) -> StreamWorker:
    loop = StreamWorker(
        settings,
        KafkaClient(consumer),
        KafkaClient(producer),
        scorer,
        WorkerMetrics.create(CollectorRegistry()),
        "w1",
        **kw,
    )
    producer.on_delivery = loop.on_delivery
    loop.assigned = set(consumer.partitions)
    return loop


def _run_until(loop: StreamWorker, done: Any, timeout_s: float = 20.0) -> int | None:
    """Run the loop in a thread until ``done()`` (then stop it) or it ends by itself.
    Returns its exit code if it ended by itself, else None."""
    stop = threading.Event()
    result: dict[str, int] = {}
    t = threading.Thread(target=lambda: result.setdefault("code", loop.run(stop)))
    t.start()
    deadline = time.monotonic() + timeout_s
    while t.is_alive() and not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    ended_by_itself = not t.is_alive()
    stop.set()
    t.join(10)
    assert not t.is_alive()
    return result["code"] if ended_by_itself else None


def _ids(producer: LogProducer, topic: str) -> list[str]:
    return [orjson.loads(v)["event_id"] for _, v, _, _ in producer.records(topic)]


def _end(log: dict[int, list[Message]]) -> dict[int, int]:
    return {p: msgs[-1].offset() + 1 for p, msgs in log.items()}


# ----------------------------------------------------------------------------- isolation
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_poisoned_event_is_dead_lettered_and_its_batch_scored(tmp_path, sept, guarantee) -> None:
    # batches of 20 (rows 0-19, 20-39, 40-59); one failure per 20 events is allowed
    s = _settings(tmp_path, guarantee=guarantee, max_failed_share=0.05)
    log = _log(s, sept.iloc[:60], poison={7, 33})  # one in each of two batches
    consumer = LogConsumer(s.topics.events, log)
    producer = LogProducer(transactional=guarantee == "exactly_once")
    loop = _worker(s, consumer, producer, _scorer(tmp_path, s, poison_prefix=POISON))
    end = _end(log)

    def committed() -> dict[int, int]:
        return producer.committed_offsets if guarantee == "exactly_once" else consumer.committed()

    code = _run_until(loop, lambda: committed() == end)
    assert code is None, "the loop ended by itself"
    preds = _ids(producer, s.topics.predictions)
    want = [str(x) for x in sept["event_id"].iloc[:60]]
    poisoned = {want[7], want[33]}
    assert sorted(preds) == sorted(set(want) - poisoned)  # each once
    dlq = producer.records(s.topics.dlq)
    assert len(dlq) == 2
    for _, value, key, headers in dlq:
        h = dict(headers)
        assert h["segstream.dlq.reason"] == b"scoring_error"
        assert h["segstream.dlq.exception"] == b"tests.fakes.PoisonError"
        assert b"poisoned event" in h["segstream.dlq.detail"]
        assert orjson.loads(value)["event_id"].startswith(POISON)
        assert key.decode().startswith(POISON)
    assert loop.broken is None and loop.fatal is None
    # the stats count the DLQ records of each batch
    stats = [orjson.loads(v) for _, v, _, _ in producer.records(s.topics.stats)]
    assert sum(r["n_dlq"] for r in stats) == 2
    assert sum(r["dlq"].get("scoring_error", 0) for r in stats) == 2
    assert sum(r["n_scored"] for r in stats) == 58
    reg_value = loop.metrics.dlq_records.labels(reason="scoring_error")._value.get()
    assert reg_value == 2


def _broken_setup(tmp_path, sept, guarantee: str):
    s = _settings(tmp_path, guarantee=guarantee)
    # batches of 20 (rows 0-19: 10 per partition, ...): the first is clean, the second has
    # 3 poisoned events (allowed: 1 in the last 100 events scored)
    log = _log(s, sept.iloc[:80], poison={21, 25, 27})
    consumer = LogConsumer(s.topics.events, log)
    producer = LogProducer(transactional=guarantee == "exactly_once")
    alerts: list[dict[str, Any]] = []
    fixed = _scorer(tmp_path, s, tag="fixed")
    pending: list[Any] = []
    loop = _worker(
        s,
        consumer,
        producer,
        _scorer(tmp_path, s, poison_prefix=POISON),
        on_broken=alerts.append,
        take_new_scorer=lambda: pending.pop() if pending else None,
    )
    return s, log, consumer, producer, alerts, fixed, pending, loop


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_more_failures_than_max_failed_share_stop_the_worker_until_a_new_bundle(
    tmp_path, sept, guarantee
) -> None:
    s, log, consumer, producer, alerts, fixed, pending, loop = _broken_setup(
        tmp_path, sept, guarantee
    )
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while loop.broken is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loop.broken is not None and "judged broken" in loop.broken
        time.sleep(0.5)  # it stays stopped: no more batches, no DLQ flood
        assert not loop.ready.is_set()
        assert consumer.paused == {0, 1}
        assert len(alerts) == 1
        assert alerts[0]["bundle_id"] == loop.scorer.bundle_id
        assert alerts[0]["exception"] == "tests.fakes.PoisonError"
        assert alerts[0]["failed"] == 2 and alerts[0]["scored"] == 100
        assert producer.records(s.topics.dlq) == []  # nothing of the broken batch
        first_batch = [str(x) for x in sept["event_id"].iloc[:20]]
        assert sorted(_ids(producer, s.topics.predictions)) == sorted(first_batch)
        committed = (
            producer.committed_offsets if guarantee == "exactly_once" else consumer.committed()
        )
        assert committed == {0: 110, 1: 110}  # the first batch only
        assert consumer.position == {0: 110, 1: 110}  # rewound to the broken batch
        assert loop.metrics.bundle_broken._value.get() == 1
        # a new bundle: consumption resumes where the broken batch began
        pending.append(fixed)
        end = _end(log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            committed = (
                producer.committed_offsets if guarantee == "exactly_once" else consumer.committed()
            )
            if committed == end:
                break
            time.sleep(0.01)
        assert committed == end
        assert loop.broken is None and loop.ready.is_set() and consumer.paused == set()
        assert loop.metrics.bundle_broken._value.get() == 0
    finally:
        stop.set()
        t.join(10)
    ids = _ids(producer, s.topics.predictions)
    assert sorted(ids) == sorted(
        str(x) if i not in {21, 25, 27} else POISON + str(x)
        for i, x in enumerate(sept["event_id"].iloc[:80])
    )
    assert len(alerts) == 1


def test_a_broken_bundle_puts_back_what_a_rebalance_brings(tmp_path, sept) -> None:
    """While stopped, messages of partitions assigned meanwhile (not yet paused) are not
    processed: the consumer is sought back to them."""
    s, _, consumer, producer, _, _, _, loop = _broken_setup(tmp_path, sept, "at_least_once")
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while loop.broken is None and time.monotonic() < deadline:
            time.sleep(0.01)
        consumer.paused.clear()  # as if partitions were newly assigned
        time.sleep(0.3)
        assert consumer.position == {0: 110, 1: 110}
        assert consumer.paused == {0, 1}
        assert producer.records(s.topics.dlq) == []
    finally:
        stop.set()
        t.join(10)


def test_one_failure_per_small_batch_is_judged_over_the_last_events(tmp_path, sept) -> None:
    """A bundle that fails on every event, in batches of 1: the first failure may be an
    event's (1 of the last 100), the second is not: the stream is not dead-lettered."""
    s = _settings(tmp_path, batch_size=1)
    log = _log(s, sept.iloc[:10])
    consumer = LogConsumer(s.topics.events, log)
    producer = LogProducer()
    alerts: list[dict[str, Any]] = []
    loop = _worker(
        s, consumer, producer, _scorer(tmp_path, s, fail_all=True), on_broken=alerts.append
    )
    _run_until(loop, lambda: loop.broken is not None)
    time.sleep(0.2)
    assert loop.broken is not None
    assert len(producer.records(s.topics.dlq)) == 1
    assert len(alerts) == 1


def test_a_failure_no_single_event_reproduces_is_retried_then_exits(tmp_path, sept) -> None:
    """The whole batch raises but every part scores: not an event's failure. The batch is
    rewound and retried max_scoring_retries times, then the worker exits non-zero."""
    s = _settings(tmp_path, max_scoring_retries=1)
    log = _log(s, sept.iloc[:20])
    consumer = LogConsumer(s.topics.events, log)
    producer = LogProducer()
    scorer = _scorer(tmp_path, s)
    real = scorer.score

    def score(columns: Any) -> Any:
        if len(columns["distance"]) == 20:
            raise MemoryError("the whole batch")
        return real(columns)

    scorer.score = score  # type: ignore[method-assign]
    loop = _worker(s, consumer, producer, scorer)
    code = _run_until(loop, lambda: False, timeout_s=15)
    assert code == EXIT_FAILED
    assert producer.delivered == [] and consumer.committed() == {}
    assert not loop.ready.is_set()


# ----------------------------------------------------------------------------- produce errors
def _too_large() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))


class CheckingConsumer(LogConsumer):
    """Notes every commit of an offset past ``watch`` made before ``delivered()``."""

    def __init__(self, *args: Any, watch: tuple[int, int], delivered: Any) -> None:
        super().__init__(*args)
        self.watch = watch
        self.delivered = delivered
        self.premature: list[dict[int, int]] = []

    def commit(self, offsets: Any, asynchronous: bool = True) -> None:
        super().commit(offsets, asynchronous)
        p, o = self.watch
        if any(tp.partition == p and tp.offset > o for tp in offsets) and not self.delivered():
            self.premature.append(self.commits[-1])


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_record_refused_at_produce_is_a_failed_delivery_and_is_retried(
    tmp_path, sept, guarantee, monkeypatch
) -> None:
    monkeypatch.setattr(committers, "BACKOFF_FIRST_S", 0.01)
    s = _settings(tmp_path, guarantee=guarantee)
    log = _log(s, sept.iloc[:60])
    victim = str(sept["event_id"].iloc[25]).encode()  # second batch: partition 1, offset 112
    refusals = [2]  # refused twice, then accepted

    def refuse(topic: str, value: Any, key: Any, headers: Any) -> Any:
        if topic == s.topics.predictions and key == victim and refusals[0] > 0:
            refusals[0] -= 1
            return _too_large()
        return None

    producer = LogProducer(transactional=guarantee == "exactly_once", refuse=refuse)
    consumer = CheckingConsumer(
        s.topics.events,
        log,
        watch=(1, 112),
        delivered=lambda: any(k == victim for _, _, k, _ in producer.records(s.topics.predictions)),
    )
    loop = _worker(s, consumer, producer, _scorer(tmp_path, s))
    end = _end(log)

    def committed() -> dict[int, int]:
        return producer.committed_offsets if guarantee == "exactly_once" else consumer.committed()

    code = _run_until(loop, lambda: committed() == end)
    assert code is None and committed() == end
    assert producer.refused == 2
    ids = _ids(producer, s.topics.predictions)
    want = {str(x) for x in sept["event_id"].iloc[:60]}
    assert set(ids) == want
    assert consumer.premature == []  # nothing committed past the record before it went out
    if guarantee == "exactly_once":
        assert sorted(ids) == sorted(want)  # aborted transactions publish nothing
        assert producer.aborts == 2
    else:
        assert (1, 110) in consumer.seeks  # the batch was rewound
    assert loop.fatal is None


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_record_always_refused_gives_up_not_ready_and_non_zero(
    tmp_path, sept, guarantee, monkeypatch
) -> None:
    """A deleted output topic (refused at produce() for good): backoff, then exit 1 after
    max_*_retries, never committing past it; it used to retry forever while ready."""
    monkeypatch.setattr(committers, "BACKOFF_FIRST_S", 0.02)
    s = _settings(tmp_path, guarantee=guarantee, max_transaction_retries=3, max_delivery_retries=3)
    log = _log(s, sept.iloc[:60])

    def refuse(topic: str, value: Any, key: Any, headers: Any) -> Any:
        if topic == s.topics.dlq or (
            topic == s.topics.predictions and b"-EWR-" in key and producer.refused < 1000
        ):
            return KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))
        return None

    consumer = LogConsumer(s.topics.events, log)
    producer = LogProducer(transactional=guarantee == "exactly_once", refuse=refuse)
    loop = _worker(s, consumer, producer, _scorer(tmp_path, s))
    t0 = time.monotonic()
    code = _run_until(loop, lambda: False, timeout_s=20)
    elapsed = time.monotonic() - t0
    assert code == EXIT_FAILED, "the loop should give up by itself"
    assert not loop.ready.is_set() and "3" in (loop.fatal or "")
    assert elapsed >= 0.02 + 0.04 + 0.08  # backed off between the attempts
    committed = producer.committed_offsets if guarantee == "exactly_once" else consumer.committed()
    # the first batch with an EWR flight was never delivered: nothing at or after it
    first_bad = min(i for i, x in enumerate(sept["event_id"].iloc[:60]) if "-EWR-" in str(x))
    bad_offset = {first_bad % 2: 100 + first_bad // 2}
    for p, o in bad_offset.items():
        assert committed.get(p, 100) <= o
    if guarantee == "exactly_once":
        assert producer.aborts == 4  # the first try and 3 retries
    else:
        assert producer.refused == 4


def test_refused_produce_with_old_behaviour_would_commit_past(tmp_path, sept) -> None:
    """A regression guard for the at-least-once bookkeeping: a batch whose records are
    refused mid-way is never counted delivered (its offsets are not committed) even though
    the producer queue is empty right after the refusal."""
    s = _settings(tmp_path)
    log = _log(s, sept.iloc[:20])
    victim = str(sept["event_id"].iloc[3]).encode()
    consumer = LogConsumer(s.topics.events, log)
    producer = LogProducer(
        refuse=lambda topic, value, key, headers: _too_large() if key == victim else None
    )
    loop = _worker(s, consumer, producer, _scorer(tmp_path, s))
    loop._process(consumer.consume(20, 0))
    assert len(producer) < 20  # the refusal stopped the batch's records
    loop.committer.settle(force=True)
    assert consumer.committed() == {}
    assert consumer.position == {0: 100, 1: 100}  # rewound


def test_before_a_rewind_undelivered_earlier_batches_are_rewound_too(tmp_path, sept) -> None:
    """A scoring failure or a broken bundle rewinds the batch in hand; an earlier batch whose
    records are still undelivered after the drain is not committed and must be read again
    (it used to be dropped from the bookkeeping and skipped)."""
    from segstream.services.worker.committers import Batch

    s = _settings(tmp_path)
    consumer = LogConsumer(s.topics.events, _log(s, sept.iloc[:4]))
    producer = LogProducer()
    loop = _worker(s, consumer, producer, _scorer(tmp_path, s))
    producer.queued.append((s.topics.predictions, b"stuck", b"k", None))
    producer.flush = lambda timeout=0: 1  # type: ignore[method-assign]
    loop.committer.inflight.append(Batch(3, {0: 100, 1: 100}, {0: 102, 1: 102}))
    rewind = loop.committer.finish_earlier({0: 102, 1: 102})
    assert rewind == {0: 100, 1: 100}
    assert consumer.committed() == {} and not loop.committer.inflight
