"""Event-time sanity in the worker (no broker): out-of-range events go to the DLQ with their
reason, watermark and limit, the rest is scored; rewinds and rebalances; bounded stats."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from confluent_kafka import KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from segstream.services.worker.event_time import (
    EVENT_TIME_OUT_OF_RANGE,
    EventTimeGuard,
    stats_max_slices,
)
from segstream.services.worker.loop import StreamWorker
from segstream.services.worker.metrics import WorkerMetrics
from segstream.services.worker.records import warm_up_records
from segstream.services.worker.stats import batch_stats_records, batch_stats_slices
from segstream.shared.contracts import DlqHeaders
from segstream.shared.drift import CategoricalReference, DriftReference
from segstream.shared.event_time import AHEAD, BEHIND, IN_RANGE
from segstream.shared.events import encode_events
from segstream.shared.settings import MonitorSettings
from tests.fakes import (
    KafkaClient,
    LogConsumer,
    LogProducer,
    load_fake_bundle,
    numeric_ref,
    write_fake_bundle,
)
from tests.integration.worker_helpers import worker_settings

FAR_FUTURE = pd.Timestamp("2261-06-01T00:00:00Z")
FAR_PAST = pd.Timestamp("1990-01-01T00:00:00Z")


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


def _log(settings: Any, df: Any) -> dict[int, list[Message]]:
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


def _worker(tmp_path, settings, consumer, producer) -> StreamWorker:
    warm_up_records()
    scorer = load_fake_bundle(write_fake_bundle(tmp_path / "b", settings.event_schema))
    loop = StreamWorker(
        settings,
        KafkaClient(consumer),
        KafkaClient(producer),
        scorer,
        WorkerMetrics.create(CollectorRegistry()),
        "w1",
    )
    producer.on_delivery = loop.on_delivery
    loop.assigned = set(consumer.partitions)
    return loop


def _run_until(loop: StreamWorker, done: Any, timeout_s: float = 30.0) -> None:
    stop = threading.Event()
    t = threading.Thread(target=loop.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + timeout_s
    while t.is_alive() and not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.is_alive(), "the loop ended by itself"
    stop.set()
    t.join(10)
    assert not t.is_alive()


def _hostile(sept: pd.DataFrame, n: int) -> tuple[pd.DataFrame, set[str]]:
    """The first n September events, with far-future and far-past times on some."""
    df = sept.iloc[:n].copy()
    bad = {3: FAR_FUTURE, 4: FAR_FUTURE, 27: FAR_FUTURE, 50: FAR_PAST}
    for i, t in bad.items():
        df.loc[i, "event_time"] = t
    return df, {str(df.loc[i, "event_id"]) for i in bad}


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_out_of_range_events_are_dead_lettered_and_the_rest_scored(
    tmp_path, sept, guarantee
) -> None:
    s = _settings(tmp_path, guarantee=guarantee)
    df, hostile = _hostile(sept, 80)
    log = _log(s, df)
    consumer = LogConsumer(s.topics.events, log)
    producer = LogProducer(transactional=guarantee == "exactly_once")
    loop = _worker(tmp_path, s, consumer, producer)
    end = {p: msgs[-1].offset() + 1 for p, msgs in log.items()}

    def committed() -> dict[int, int]:
        return producer.committed_offsets if guarantee == "exactly_once" else consumer.committed()

    _run_until(loop, lambda: committed() == end)
    preds = [orjson.loads(v)["event_id"] for _, v, _, _ in producer.records(s.topics.predictions)]
    want = [str(x) for x in df["event_id"]]
    assert sorted(preds) == sorted(set(want) - hostile)  # each once
    dlq = producer.records(s.topics.dlq)
    originals = {m.value(): m for msgs in log.values() for m in msgs}
    assert len(dlq) == len(hostile)
    for _, value, key, headers in dlq:
        h = DlqHeaders.from_headers(headers)
        assert h.reason == EVENT_TIME_OUT_OF_RANGE
        src = originals[value]  # the original bytes, untouched
        assert key == src.key() and h.offset == src.offset() and h.partition == src.partition()
        ev = orjson.loads(value)
        assert ev["event_id"] in hostile
        assert h.watermark.startswith("2013-09")
        if ev["event_time"].startswith("2261"):
            assert h.limit == "max_future_s=86400" and "ahead of" in h.detail
        else:
            assert h.limit == "max_past_s=604800" and "behind" in h.detail
    stats = [orjson.loads(v) for _, v, _, _ in producer.records(s.topics.stats)]
    assert sum(r["dlq"].get(EVENT_TIME_OUT_OF_RANGE, 0) for r in stats) == len(hostile)
    assert sum(r["n_scored"] for r in stats) == len(want) - len(hostile)
    # no stats record carries a far-future or far-past time
    times = [r[k] for r in stats for k in ("event_time_min", "event_time_max") if r[k]]
    assert all(t.startswith("2013-09") for t in times)
    count = loop.metrics.dlq_records.labels(reason=EVENT_TIME_OUT_OF_RANGE)._value.get()
    assert count == len(hostile)


def test_a_rewind_judges_again_against_the_same_state(tmp_path, sept) -> None:
    """A refused produce rewinds the batches in flight (at-least-once); re-consumed events
    are judged against the watermark they met the first time, not the later one."""
    s = _settings(tmp_path, guarantee="at_least_once")
    df, hostile = _hostile(sept, 80)
    log = _log(s, df)
    consumer = LogConsumer(s.topics.events, log)
    refusals = {"n": 0}

    def refuse(topic, value, key, headers):
        if topic == s.topics.predictions and refusals["n"] < 1 and consumer.consumed >= 40:
            refusals["n"] += 1
            return KafkaException("refused once")
        return None

    producer = LogProducer(refuse=refuse)
    loop = _worker(tmp_path, s, consumer, producer)
    end = {p: msgs[-1].offset() + 1 for p, msgs in log.items()}
    _run_until(loop, lambda: consumer.committed() == end)
    assert refusals["n"] == 1 and consumer.seeks, "no rewind happened"
    preds = {orjson.loads(v)["event_id"] for _, v, _, _ in producer.records(s.topics.predictions)}
    dlq = {orjson.loads(v)["event_id"] for _, v, _, _ in producer.records(s.topics.dlq)}
    want = {str(x) for x in df["event_id"]}
    assert preds == want - hostile
    assert dlq == hostile


def test_revoked_partitions_are_forgotten(tmp_path, sept) -> None:
    s = _settings(tmp_path)
    log = _log(s, sept.iloc[:40])
    consumer = LogConsumer(s.topics.events, log)
    producer = LogProducer()
    loop = _worker(tmp_path, s, consumer, producer)
    _run_until(loop, lambda: consumer.committed() == {0: 120, 1: 120})
    assert set(loop.time_guard.watermarks) == {0, 1}
    loop.on_revoke(None, [TopicPartition(s.topics.events, 1)])
    assert set(loop.time_guard.watermarks) == {0}
    loop.on_lost(None, [TopicPartition(s.topics.events, 0)])
    assert loop.time_guard.watermarks == {}


# ----------------------------------------------------------------------------- the guard
def _ms_times(start: str, n: int, step_min: int = 10) -> np.ndarray:
    return np.datetime64(start, "ms") + np.arange(n) * np.timedelta64(step_min, "m")


def test_guard_restores_the_state_at_a_rewound_offset() -> None:
    guard = EventTimeGuard(MonitorSettings(), clock=lambda: 0.0)
    t = _ms_times("2013-09-01", 300)
    t[150] = np.datetime64("2261-01-01")
    parts = np.zeros(300, np.int64)
    offs = np.arange(300, dtype=np.int64)
    first = [guard.judge(t[a:b], parts[a:b], offs[a:b]) for a, b in ((0, 100), (100, 300))]
    assert first[1].code[50] == AHEAD
    # rewound to offset 100: the same judgement, against the same watermarks
    again = guard.judge(t[100:300], parts[100:300], offs[100:300])
    np.testing.assert_array_equal(again.code, first[1].code)
    np.testing.assert_array_equal(again.watermark_ms, first[1].watermark_ms)
    # rewound to an offset with no saved state: a fresh bootstrap (the batch's median)
    fresh = guard.judge(t[120:300], parts[120:300], offs[120:300])
    assert fresh.code[30] == AHEAD and (np.delete(fresh.code, 30) == IN_RANGE).all()
    assert fresh.watermark_ms[0] == np.sort(t[120:184].view(np.int64))[31]


def test_guard_forget_and_two_partitions() -> None:
    guard = EventTimeGuard(
        MonitorSettings(max_future_s=3 * 3600, max_past_s=4 * 3600), clock=lambda: 0.0
    )
    t = np.concatenate([_ms_times("2013-09-01", 50), _ms_times("2013-01-01", 50)])
    parts = np.repeat([0, 1], 50)
    offs = np.concatenate([np.arange(50), np.arange(50)])
    j = guard.judge(t, parts, offs)
    assert (j.code == IN_RANGE).all()
    # a September time is far ahead of partition 1's (January) watermark, a January time
    # far behind partition 0's (September)
    j = guard.judge(np.array([t[10]]), np.array([1]), np.array([50]))
    assert j.code.tolist() == [AHEAD]
    j = guard.judge(np.array([t[60]]), np.array([0]), np.array([50]))
    assert j.code.tolist() == [BEHIND]
    guard.forget([1])
    assert set(guard.watermarks) == {0}


def test_stats_max_slices_covers_the_band() -> None:
    assert stats_max_slices(MonitorSettings()) == 64
    m = MonitorSettings(window_s=3600, lateness_s=60, max_past_s=7 * 86_400)
    assert stats_max_slices(m) == 7 * 24 + 24 + 2


# ----------------------------------------------------------------------------- bounded stats
def _ref() -> DriftReference:
    return DriftReference(
        numeric={"x": numeric_ref([0.0, 10.0])},
        categorical={"c": CategoricalReference(("a", "b"), np.full(4, 0.25))},
        prediction=numeric_ref([5.0]),
    )


def test_20000_events_on_20000_days_give_a_bounded_number_of_records() -> None:
    n = 20_000
    rng = np.random.default_rng(0)
    days = np.datetime64("1700-01-01", "D") + rng.permutation(n)  # 20,000 distinct days
    t = days.astype("datetime64[ns]")
    t[:5] = np.datetime64("NaT")
    # a few days hold more events than the others: those keep records of their own
    busy = np.datetime64("2013-09-01", "D")
    t[5:205] = busy.astype("datetime64[ns]") + np.arange(200) * np.timedelta64(1, "m")
    cols = {
        "x": rng.normal(5, 5, n),
        "c": np.array(rng.choice(["a", "b", "z"], n), dtype=object),
        "t": t,
    }
    scores = {
        "prediction": rng.normal(5, 2, n),
        "fallback_level": rng.integers(0, 3, n).astype(np.int8),
        "imputed": np.zeros(n, bool),
    }
    kw = dict(
        time_field="t",
        slice_s=86_400,
        model="m",
        bundle_id="b",
        worker="w",
        batch=1,
        n_events=n + 3,
        dlq_counts={"empty": 3},
        created_at="now",
        partitions=np.arange(n) % 4,
    )
    recs = [orjson.loads(r) for r in batch_stats_records(cols, scores, _ref(), max_slices=64, **kw)]
    assert len(recs) == 64 + 2
    assert sum(len(orjson.dumps(r)) for r in recs) < 200_000  # not 11 MB
    # the same records as the dict path
    assert recs == [
        orjson.loads(orjson.dumps(r))
        for r in batch_stats_slices(cols, scores, _ref(), max_slices=64, **kw)
    ]
    # nothing is lost: the counts add up to the whole batch's
    whole = orjson.loads(batch_stats_records(cols, scores, _ref(), **{**kw, "slice_s": None})[0])
    assert sum(r["n_scored"] for r in recs) == n
    assert sum(r["n_dlq"] for r in recs) == 3
    for name in ("x",):
        assert np.sum([r["numeric"][name] for r in recs], axis=0).tolist() == whole["numeric"][name]
    assert np.sum([r["prediction"] for r in recs], axis=0).tolist() == whole["prediction"]
    # the no-time record first, the busy day's record among the slices, the overflow last
    assert recs[0]["slice_start"] is None and recs[0]["event_time_min"] is None
    assert recs[0]["n_scored"] == 5
    sliced = [r for r in recs if r["slice_start"] is not None]
    assert len(sliced) == 64
    assert any(
        r["slice_start"] == "2013-09-01T00:00:00.000Z" and r["n_scored"] == 200 for r in sliced
    )
    assert [r["slice_start"] for r in sliced] == sorted(r["slice_start"] for r in sliced)
    over = recs[-1]
    assert over["slice_start"] is None and over["slice_s"] is None
    assert over["n_scored"] == n - 5 - 200 - 63
    assert over["event_time_min"] < over["event_time_max"]


def test_few_slices_are_not_capped() -> None:
    t = np.array(["2024-01-01T23:00", "2024-01-02T01:00", "NaT"], "M8[ns]")
    cols = {"x": np.array([-1.0, 1.0, 2.0]), "t": t}
    scores = {
        "prediction": np.zeros(3),
        "fallback_level": np.zeros(3, np.int8),
        "imputed": np.zeros(3, bool),
    }
    kw = dict(
        time_field="t",
        slice_s=86_400,
        model="m",
        bundle_id="b",
        worker="w",
        batch=0,
        n_events=3,
        dlq_counts={},
        created_at="now",
    )
    a = batch_stats_records(cols, scores, _ref(), max_slices=2, **kw)
    b = batch_stats_records(cols, scores, _ref(), **kw)
    assert a == b and len(a) == 3
    capped = [
        orjson.loads(r) for r in batch_stats_records(cols, scores, _ref(), max_slices=1, **kw)
    ]
    assert [r["slice_start"] for r in capped] == [None, "2024-01-01T00:00:00.000Z", None]
    assert capped[2]["event_time_min"] == "2024-01-02T01:00:00.000Z"
