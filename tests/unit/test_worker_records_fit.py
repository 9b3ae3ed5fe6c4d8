"""Every record the worker produces fits the producer's ``message.max.bytes``: DLQ copies
of hostile events (huge keys, values, headers), and stats records with many long unknown
keys. Checked against librdkafka itself: a real ``Producer`` (no broker needed) refuses an
oversized record at ``produce()``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import KafkaException, Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from segstream.services.monitor import drift as drift_mod
from segstream.services.worker.records import (
    DLQ_HEADER_HEADERS_DROPPED,
    DLQ_HEADER_KEY_TRUNCATED,
    DLQ_HEADER_TRUNCATED,
    dlq_record,
    record_bytes,
)
from segstream.services.worker.stats import batch_stats_records, bounded_key, split_record
from segstream.shared.drift import CategoricalReference, DriftReference
from tests.fakes import numeric_ref

MAX = 20_000


@pytest.fixture(scope="module")
def producer():
    p = Producer(
        {
            "bootstrap.servers": "127.0.0.1:1",
            "message.max.bytes": MAX,
            "log_level": 0,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    yield p
    p.purge()


def _fits(producer: Producer, key: Any, value: Any, headers: Any) -> bool:
    try:
        producer.produce("t", value, key, headers=headers)
    except KafkaException:
        return False
    return True


def test_the_fake_producer_refuses_what_does_not_fit(producer) -> None:
    """The check the tests rely on: librdkafka refuses a record one byte too large."""
    assert _fits(producer, b"k", b"v" * (MAX - 64), [("h", b"x")])
    assert not _fits(producer, b"k" * MAX, b"v", None)


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(st.none(), st.integers(0, 60_000).map(lambda n: b"k" * n)),
    value=st.one_of(st.none(), st.integers(0, 60_000).map(lambda n: b"v" * n)),
    # the event's own headers (one named like ours: test_contracts' header-order test)
    headers=st.lists(
        st.tuples(
            st.text(max_size=30).filter(lambda n: not n.startswith("segstream.dlq.")),
            st.one_of(st.none(), st.integers(0, 15_000).map(lambda n: b"h" * n)),
        ),
        max_size=6,
    ),
    max_value=st.integers(1024, 40_000),
    detail=st.text(max_size=2000),
)
def test_a_dlq_copy_always_fits_and_says_what_was_cut(
    producer, key, value, headers, max_value, detail
) -> None:
    v, k, h = dlq_record(
        value,
        key,
        headers,
        reason="invalid_json",
        detail=detail,
        topic="events",
        partition=3,
        offset=12345,
        worker="worker-1",
        max_value_bytes=max_value,
        max_record_bytes=MAX,
        exception="tests.fakes.PoisonError",
    )
    assert record_bytes(k, v, h) <= MAX
    assert _fits(producer, k, v, h)
    d = dict(h)
    assert d["segstream.dlq.reason"] == b"invalid_json"
    assert d["segstream.dlq.offset"] == b"12345"
    assert d["segstream.dlq.exception"] == b"tests.fakes.PoisonError"
    # what was cut is said, what was not is unchanged
    if value is None:
        assert v is None
    elif len(v) < len(value):
        assert value.startswith(v) and d[DLQ_HEADER_TRUNCATED] == str(len(value)).encode()
    else:
        assert v == value and DLQ_HEADER_TRUNCATED not in d
    if key is None:
        assert k is None
    elif len(k) < len(key):
        assert key.startswith(k) and d[DLQ_HEADER_KEY_TRUNCATED] == str(len(key)).encode()
    else:
        assert k == key and DLQ_HEADER_KEY_TRUNCATED not in d
    kept = [x for x in h if not x[0].startswith("segstream.dlq.")]
    assert all(x in headers for x in kept)
    dropped = len(headers) - len(kept)
    if dropped:
        assert d[DLQ_HEADER_HEADERS_DROPPED] == str(dropped).encode()
    else:
        assert DLQ_HEADER_HEADERS_DROPPED not in d and kept == list(headers)


def test_a_small_event_is_copied_whole_and_a_huge_key_is_cut(producer) -> None:
    v, k, h = dlq_record(
        b'{"a":1}',
        b"key",
        [("trace", b"t1")],
        reason="wrong_type",
        detail="a: int",
        topic="events",
        partition=0,
        offset=1,
        worker="w",
        max_value_bytes=900_000,
        max_record_bytes=MAX,
    )
    assert (v, k, h[0]) == (b'{"a":1}', b"key", ("trace", b"t1"))
    assert [n for n, _ in h if "truncated" in n or "dropped" in n] == []
    v, k, h = dlq_record(
        b'{"a":1}',
        b"K" * 1_000_000,
        None,
        reason="wrong_type",
        detail="",
        topic="events",
        partition=0,
        offset=1,
        worker="w",
        max_value_bytes=900_000,
        max_record_bytes=MAX,
    )
    assert v == b'{"a":1}' and 15_000 < len(k) < MAX
    assert dict(h)[DLQ_HEADER_KEY_TRUNCATED] == b"1000000"
    assert _fits(producer, k, v, h)


# ----------------------------------------------------------------------------- stats
def _reference() -> DriftReference:
    return DriftReference(
        {"x": numeric_ref([0.0, 1.0])}, {"c": CategoricalReference(["a", "b"], np.full(4, 0.25))}
    )


def _batch(n: int, unknown: list[str | None]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    rng = np.random.default_rng(0)
    t = np.datetime64("2024-01-01T00:00:00", "ns") + (
        rng.integers(0, 3, n) * 86_400 * 10**9
    ).astype("timedelta64[ns]")
    cols = {
        "x": rng.normal(size=n),
        "c": np.array(["a", "b", "z"] * (n // 3) + ["a"] * (n % 3), dtype=object),
        "t": t,
    }
    scores = {
        "prediction": rng.normal(size=n),
        "fallback_level": np.zeros(n, np.int8),
        "imputed": np.zeros(n, bool),
        "segment": np.zeros(n, np.int32),
        "unknown_key": np.array(unknown, dtype=object),
    }
    return cols, scores


def _stats(cols: dict[str, Any], scores: dict[str, Any], **kw: Any) -> list[bytes]:
    return batch_stats_records(
        cols,
        scores,
        _reference(),
        time_field="t",
        slice_s=86_400,
        model="m",
        bundle_id="b" * 64,
        worker="w",
        batch=1,
        n_events=len(scores["prediction"]) + 5,
        dlq_counts={"invalid_json": 5},
        created_at="now",
        partitions=np.arange(len(scores["prediction"])) % 3,
        **kw,
    )


def _monitor_sum(records: list[bytes]) -> dict[str, Any]:
    """What the monitor adds up per window from these records (its own functions)."""
    states: dict[Any, dict[str, Any]] = {}
    keys: dict[Any, Counter[str]] = {}
    other: Counter[Any] = Counter()
    for raw in records:
        rec = drift_mod.validate_stats(orjson.loads(raw))
        drift_mod.check_bins(rec, _reference())
        w = rec.slice_start
        st_ = states.get(w) or drift_mod.empty_state()
        states[w] = drift_mod.add_stats(st_, rec, None, None)
        keys.setdefault(w, Counter()).update(rec.unknown_keys)
        other[w] += rec.unknown_keys_other
    out = {}
    for w, s in states.items():
        out[w] = {
            k: s[k]
            for k in (
                "n",
                "numeric",
                "categorical",
                "prediction",
                "segments",
                "fallback_levels",
                "n_dlq",
                "imputed",
            )
        }
        out[w]["keys"] = dict(keys[w])
        out[w]["other"] = other[w]
    return out


def test_many_long_unknown_keys_are_bounded_and_a_record_never_exceeds_the_limit() -> None:
    n = 3000
    rng = np.random.default_rng(1)
    # 3000 distinct keys of 5-50 KB each (a category value can be as long as an event)
    unknown = ["ORIG|" + "x" * int(rng.integers(5_000, 50_000)) + str(i) for i in range(n)]
    cols, scores = _batch(n, unknown)
    plain = _stats(cols, scores, max_unknown_keys=100)
    assert max(map(len, plain)) > 1_000_000  # what the worker used to send
    bounded = _stats(
        cols, scores, max_unknown_keys=100, max_unknown_key_chars=200, max_record_bytes=MAX
    )
    assert max(map(len, bounded)) <= MAX
    for raw in bounded:
        rec = orjson.loads(raw)
        assert all(len(k) <= 200 for k in rec["unknown_keys"])
    total = _monitor_sum(bounded)
    # each window still names 100 keys (bounded names) and counts the others
    for s in total.values():
        assert len(s["keys"]) == 100
        assert sum(s["keys"].values()) + s["other"] == s["n"]
    # the counts the monitor sums are those of the unsplit records
    assert {
        w: {k: v for k, v in s.items() if k not in ("keys", "other")} for w, s in total.items()
    } == {
        w: {k: v for k, v in s.items() if k not in ("keys", "other")}
        for w, s in _monitor_sum(plain).items()
    }


def test_a_record_too_large_is_split_into_records_that_add_up_to_it() -> None:
    n = 900
    unknown = [f"ORIG|DEST-{i:04d}-" + "y" * 150 for i in range(n)]  # 900 keys of ~165 chars
    cols, scores = _batch(n, unknown)
    whole = _stats(cols, scores, max_unknown_keys=1000)
    assert max(map(len, whole)) > 40_000
    split = _stats(cols, scores, max_unknown_keys=1000, max_record_bytes=8_000)
    assert len(split) > len(whole) and max(map(len, split)) <= 8_000
    assert _monitor_sum(split) == _monitor_sum(whole)
    firsts = [orjson.loads(r) for r in split]
    assert sum(r["n_events"] for r in firsts) == n + 5  # the batch's events, once


def test_split_record_folds_an_entry_too_large_for_any_record_into_other() -> None:
    rec = {
        "model": "m",
        "bundle_id": "b",
        "worker": "w",
        "batch": 0,
        "n_events": 3,
        "n_scored": 3,
        "n_dlq": 0,
        "dlq": {},
        "event_time_min": None,
        "event_time_max": None,
        "numeric": {},
        "categorical": {},
        "prediction": None,
        "fallback_levels": {"0": 3},
        "unknown_keys": {"k" * 5000: 2, "short": 1},
        "unknown_keys_other": 4,
        "segments": {},
        "partition_time_max": {},
        "imputed": 0,
        "created_at": "now",
        "slice_start": None,
        "slice_s": None,
    }
    parts = [orjson.loads(p) for p in split_record(orjson.dumps(rec), 1000)]
    assert all(len(orjson.dumps(p)) <= 1000 for p in parts)
    assert sum(p["unknown_keys_other"] for p in parts) == 6
    assert Counter(k for p in parts for k in p["unknown_keys"]) == Counter({"short": 1})


def test_bounded_keys_are_stable_and_distinct() -> None:
    a, b = "A" * 500 + "1", "A" * 500 + "2"
    assert bounded_key(a, 64) == bounded_key(a, 64) != bounded_key(b, 64)
    assert len(bounded_key(a, 64)) == 64 and bounded_key("short", 64) == "short"
