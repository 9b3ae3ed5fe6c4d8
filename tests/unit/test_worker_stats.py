"""Per-batch stats records for the monitor (no broker)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from segstream.services.worker.stats import batch_stats
from segstream.shared.drift import CategoricalReference, DriftReference
from tests.fakes import numeric_ref


def _ref() -> DriftReference:
    return DriftReference(
        numeric={"x": numeric_ref([0.0, 10.0])},
        categorical={"c": CategoricalReference(("a", "b"), np.full(4, 0.25))},
        prediction=numeric_ref([5.0]),
    )


def _stats(columns, scores, **kw):
    args = dict(
        time_field="t",
        model="m",
        bundle_id="b1",
        worker="w1",
        batch=3,
        n_events=7,
        dlq_counts={"empty": 1, "wrong_type": 0},
        created_at="2024-01-01T00:00:00Z",
    )
    args.update(kw)
    return batch_stats(columns, scores, _ref(), **args)


def test_counts_use_the_reference_bins() -> None:
    cols = {
        "x": np.array([-1.0, 0.0, 5.0, 10.0, np.nan, np.inf]),
        "c": np.array(["a", "b", "z", None, "a", "a"], dtype=object),
        "t": np.array(
            [
                "2013-09-01T10:00",
                "NaT",
                "2013-09-01T09:00",
                "2013-09-02T00:00",
                "2013-09-01T12:00",
                "2013-09-01T12:00",
            ],
            dtype="datetime64[ns]",
        ),
    }
    scores = {
        "prediction": np.array([1.0, 5.0, 6.0, 7.0, 2.0, 3.0]),
        "fallback_level": np.array([0, 0, 1, 2, 0, 0], dtype=np.int8),
        "unknown_key": np.array([None, "JFK|XXX", "JFK|XXX", "LGA|YYY", None, None], dtype=object),
        "imputed": np.array([False, False, False, False, True, True]),
    }
    rec = _stats(cols, scores)
    ref = _ref()
    assert rec["numeric"]["x"] == np.bincount(ref.numeric["x"].bin(cols["x"]), minlength=4).tolist()
    assert rec["numeric"]["x"] == [1, 2, 1, 2]  # <0, [0,10), >=10, missing (NaN, inf)
    assert rec["categorical"]["c"] == [3, 1, 1, 1]  # a, b, other, missing
    assert rec["prediction"] == [3, 3, 0]
    assert rec["fallback_levels"] == {"0": 4, "1": 1, "2": 1}
    assert rec["unknown_keys"] == {"JFK|XXX": 2, "LGA|YYY": 1}
    assert rec["unknown_keys_other"] == 0
    assert rec["event_time_min"] == "2013-09-01T09:00:00.000Z"
    assert rec["event_time_max"] == "2013-09-02T00:00:00.000Z"
    assert rec["dlq"] == {"empty": 1} and rec["n_dlq"] == 1
    assert rec["imputed"] == 2
    assert rec["n_scored"] == 6 and rec["n_events"] == 7
    orjson.dumps(rec)  # JSON-serialisable


def test_unknown_keys_are_capped() -> None:
    cols = {
        "x": np.zeros(5),
        "c": np.array(["a"] * 5, dtype=object),
        "t": np.zeros(5, dtype="datetime64[ns]"),
    }
    scores = {
        "prediction": np.zeros(5),
        "fallback_level": np.zeros(5, np.int8),
        "unknown_key": np.array(["k1", "k1", "k2", "k3", "k4"], dtype=object),
        "imputed": np.zeros(5, bool),
    }
    rec = _stats(cols, scores, max_unknown_keys=1)
    assert rec["unknown_keys"] == {"k1": 2}
    assert rec["unknown_keys_other"] == 3


def test_batch_without_valid_events() -> None:
    cols = {
        "x": np.zeros(0),
        "c": np.zeros(0, dtype=object),
        "t": np.zeros(0, dtype="datetime64[ns]"),
    }
    rec = _stats(cols, {}, dlq_counts={"invalid_json": 4})
    assert rec["n_scored"] == 0 and rec["n_dlq"] == 4
    assert rec["numeric"]["x"] == [0, 0, 0, 0]
    assert rec["prediction"] == [0, 0, 0]
    assert rec["event_time_min"] is None


def _day_batch():
    t = np.array(
        ["2013-09-01T23:00", "2013-09-01T23:59:59", "2013-09-02T00:00", "2013-09-02T05:00"],
        dtype="datetime64[ns]",
    )
    cols = {
        "x": np.array([1.0, 2.0, 20.0, 30.0]),
        "c": np.array(["a", "b", "a", "a"], dtype=object),
        "t": t,
    }
    scores = {
        "prediction": np.array([1.0, 6.0, 7.0, 8.0]),
        "fallback_level": np.zeros(4, np.int8),
        "unknown_key": np.array(["k", None, "k", "k"], dtype=object),
        "imputed": np.zeros(4, bool),
        "segment": np.array([7, 7, 8, 7], np.int32),
    }
    return cols, scores


def test_batch_straddling_a_slice_boundary_gives_one_record_per_slice() -> None:
    from segstream.services.worker.stats import batch_stats_slices

    cols, scores = _day_batch()
    ref = _ref()
    ref = DriftReference(
        ref.numeric,
        ref.categorical,
        ref.prediction,
        segments={7: {"x": numeric_ref([10.0]), "prediction": numeric_ref([5.0])}},
    )
    recs = batch_stats_slices(
        cols,
        scores,
        ref,
        time_field="t",
        slice_s=86_400,
        model="m",
        bundle_id="b1",
        worker="w1",
        batch=3,
        n_events=6,
        dlq_counts={"empty": 2},
        created_at="now",
        partitions=np.array([0, 1, 1, 2]),
    )
    assert [r["slice_start"] for r in recs] == [
        "2013-09-01T00:00:00.000Z",
        "2013-09-02T00:00:00.000Z",
    ]
    a, b = recs
    assert a["n_scored"] == 2 and b["n_scored"] == 2
    assert a["n_dlq"] == 2 and b["n_dlq"] == 0  # the batch's DLQ counts go to the first
    assert a["n_events"] == 4 and b["n_events"] == 2
    assert a["numeric"]["x"] == [0, 2, 0, 0] and b["numeric"]["x"] == [0, 0, 2, 0]
    assert a["unknown_keys"] == {"k": 1} and b["unknown_keys"] == {"k": 2}
    assert a["partition_time_max"] == {
        "0": "2013-09-01T23:00:00.000Z",
        "1": "2013-09-01T23:59:59.000Z",
    }
    assert b["partition_time_max"] == {
        "1": "2013-09-02T00:00:00.000Z",
        "2": "2013-09-02T05:00:00.000Z",
    }
    # per large segment: segment 7 only (8 has no reference); bins of the segment reference
    assert a["segments"] == {"7": {"x": [2, 0, 0], "prediction": [1, 1, 0]}}
    assert b["segments"] == {"7": {"x": [0, 1, 0], "prediction": [0, 1, 0]}}
    assert a["slice_s"] == 86_400
    one = batch_stats_slices(
        cols,
        scores,
        ref,
        time_field="t",
        slice_s=None,
        model="m",
        bundle_id="b1",
        worker="w1",
        batch=3,
        n_events=6,
        dlq_counts={},
        created_at="now",
    )
    assert len(one) == 1 and one[0]["n_scored"] == 4 and one[0]["slice_start"] is None


def _take(d, rows):
    return {k: v[rows] for k, v in d.items()}


def test_vectorised_slices_equal_batch_stats_per_slice() -> None:
    """Reference test: every record of ``batch_stats_slices`` (all slices counted at once)
    equals ``batch_stats`` on the rows of its slice, on a catch-up batch spanning many days
    with NaT times, unknown keys, imputed rows, large segments and several partitions."""
    from segstream.services.worker.stats import batch_stats_slices

    rng = np.random.default_rng(7)
    n = 3000
    t = (
        np.datetime64("2013-09-01T00:00", "ns")
        + rng.integers(0, 20 * 86_400, n).astype("timedelta64[s]")
    ).astype("datetime64[ns]")
    t[rng.random(n) < 0.02] = np.datetime64("NaT")
    x = rng.normal(5, 8, n)
    x[rng.random(n) < 0.05] = np.nan
    x[::97] = 4.0  # exactly on an edge (bins are left-closed)
    x[::101] = 9.0
    x[5], x[6] = np.inf, -np.inf
    cols = {"x": x, "c": rng.choice(np.array(["a", "b", "z", None], dtype=object), n), "t": t}
    keys = np.array([None] * 6 + ["JFK|XXX", "LGA|YYY", "EWR|ZZZ"], dtype=object)
    scores = {
        "prediction": rng.normal(5, 3, n),
        "fallback_level": rng.integers(0, 3, n).astype(np.int8),
        "unknown_key": rng.choice(keys, n),
        "imputed": rng.random(n) < 0.1,
        "segment": rng.integers(0, 6, n).astype(np.int32),
    }
    base = _ref()
    ref = DriftReference(
        base.numeric,
        base.categorical,
        base.prediction,
        segments={
            1: {"x": numeric_ref([0.0, 4.0]), "prediction": numeric_ref([5.0])},
            4: {"x": numeric_ref([9.0]), "c": CategoricalReference(("a",), np.full(3, 1 / 3))},
            5: {"prediction": numeric_ref([]), "absent_feature": numeric_ref([1.0])},
        },
    )
    parts = rng.integers(0, 4, n)
    kw = dict(model="m", bundle_id="b1", worker="w1", batch=3, created_at="now", max_unknown_keys=2)
    recs = batch_stats_slices(
        cols,
        scores,
        ref,
        time_field="t",
        slice_s=86_400,
        n_events=n + 5,
        dlq_counts={"empty": 5},
        partitions=parts,
        **kw,
    )
    ns = t.view(np.int64)
    slot = np.where(np.isnat(t), np.iinfo(np.int64).min, ns // (86_400 * 10**9))
    uniq = np.unique(slot)
    assert len(recs) == len(uniq) > 15
    for i, (rec, k) in enumerate(zip(recs, uniq.tolist(), strict=True)):
        rows = slot == k
        want = batch_stats(
            _take(cols, rows),
            _take(scores, rows),
            ref,
            time_field="t",
            n_events=int(rows.sum()) + (5 if i == 0 else 0),
            dlq_counts={"empty": 5} if i == 0 else {},
            partitions=parts[rows],
            **kw,
        )
        if k != np.iinfo(np.int64).min:
            want["slice_start"] = str(np.datetime64(k * 86_400, "s")) + ".000Z"
            want["slice_s"] = 86_400
        assert orjson.loads(orjson.dumps(rec)) == orjson.loads(orjson.dumps(want)), i


# ---------------------------------------------------------------- batch_stats_records
# The worker's hot path: the records of batch_stats_slices, JSON-encoded without Python ints.
# Held to the strongest form of the contract: byte for byte what orjson makes of the dicts
# (same keys in the same order, same records in the same order, same values).

_KW = dict(model="m", bundle_id="b1", worker="w1", batch=3, created_at="now")


def _records_and_slices(cols, scores, ref, **kw):
    from segstream.services.worker.stats import batch_stats_records, batch_stats_slices

    args = {
        **_KW,
        "time_field": "t",
        "slice_s": 86_400,
        "n_events": 10,
        "dlq_counts": {"empty": 2, "too_large": 0},
        **kw,
    }
    got = batch_stats_records(cols, scores, ref, **args)
    want = [orjson.dumps(r) for r in batch_stats_slices(cols, scores, ref, **args)]
    assert got == want
    assert [orjson.loads(b) for b in got] == [orjson.loads(b) for b in want]
    return [orjson.loads(b) for b in got]


def _segment_ref(base: DriftReference | None = None, **kw) -> DriftReference:
    """Large segments with numeric, categorical and prediction references, and one for a
    feature the batch lacks."""
    base = base or _ref()
    return DriftReference(
        base.numeric,
        base.categorical,
        base.prediction,
        segments={
            0: {"x": numeric_ref([2.0])},
            1: {"x": numeric_ref([0.0, 4.0]), "prediction": numeric_ref([5.0])},
            4: {"c": CategoricalReference(("a",), np.full(3, 1 / 3)), "x": numeric_ref([9.0])},
            5: {"prediction": numeric_ref([]), "absent_feature": numeric_ref([1.0])},
            **kw.get("segments", {}),
        },
    )


def _catchup_batch(seed: int, n: int = 3000, days: int = 20, nat: float = 0.02):
    """A catch-up batch over ``days`` one-day slices: NaT times, values on bin edges, NaN and
    ±inf, missing and unseen categories, unknown keys, imputed rows, large segments, four
    source partitions."""
    rng = np.random.default_rng(seed)
    t = (
        np.datetime64("2013-09-01T00:00", "ns")
        + rng.integers(0, days * 86_400, n).astype("timedelta64[s]")
    ).astype("datetime64[ns]")
    t[rng.random(n) < nat] = np.datetime64("NaT")
    x = rng.normal(5, 8, n)
    x[rng.random(n) < 0.05] = np.nan
    x[::97] = 4.0
    x[::101] = 9.0
    x[5], x[6] = np.inf, -np.inf
    cols = {"x": x, "c": rng.choice(np.array(["a", "b", "z", None], dtype=object), n), "t": t}
    keys = np.array([None] * 6 + ["JFK|XXX", "LGA|YYY", "EWR|ZZZ", 'é|"q"'], dtype=object)
    scores = {
        "prediction": rng.normal(5, 3, n),
        "fallback_level": rng.integers(0, 3, n).astype(np.int8),
        "unknown_key": rng.choice(keys, n),
        "imputed": rng.random(n) < 0.1,
        "segment": rng.integers(0, 6, n).astype(np.int32),
    }
    return cols, scores, rng.integers(0, 4, n).astype(np.int32)


def test_records_equal_slices_on_the_day_batch() -> None:
    cols, scores = _day_batch()
    ref = _segment_ref(segments={7: {"x": numeric_ref([10.0]), "prediction": numeric_ref([5.0])}})
    recs = _records_and_slices(cols, scores, ref, partitions=np.array([0, 1, 1, 2]))
    assert [r["n_scored"] for r in recs] == [2, 2]
    assert recs[1]["partition_time_max"] == {
        "1": "2013-09-02T00:00:00.000Z",
        "2": "2013-09-02T05:00:00.000Z",
    }
    assert recs[0]["segments"] == {"7": {"x": [2, 0, 0], "prediction": [1, 1, 0]}}
    assert len(_records_and_slices(cols, scores, ref, slice_s=None)) == 1


@pytest.mark.parametrize("seed", range(4))
def test_records_equal_slices_on_catchup_batches(seed: int) -> None:
    cols, scores, parts = _catchup_batch(seed)
    recs = _records_and_slices(
        cols, scores, _segment_ref(), partitions=parts, max_unknown_keys=2, n_events=3005
    )
    assert len(recs) == 21 and recs[0]["slice_start"] is None  # the NaT rows' slice first
    assert sum(r["n_scored"] for r in recs) == 3000 and recs[0]["n_dlq"] == 2
    assert any(r["unknown_keys_other"] for r in recs)
    assert all(set(r["segments"]) <= {"0", "1", "4", "5"} for r in recs)
    assert max(max(v) for v in recs[5]["numeric"].values()) >= 10  # multi-digit counts
    assert recs == _per_slice_reference(
        cols, scores, _segment_ref(), partitions=parts, max_unknown_keys=2, n_events=3005
    )


def _variant(name: str):
    """(columns, scores, reference, keyword arguments) of one edge case."""
    cols, scores, parts = _catchup_batch(11, n=400, days=3)
    ref = _segment_ref()
    kw: dict = {"partitions": parts}
    if name == "all_nat":
        cols["t"] = np.full(400, np.datetime64("NaT"), "datetime64[ns]")
    elif name == "no_nat":
        cols["t"] = np.where(np.isnat(cols["t"]), cols["t"][0], cols["t"])
    elif name == "no_valid_rows":
        cols = {k: v[:0] for k, v in cols.items()}
        scores, kw = {}, {"partitions": parts[:0], "dlq_counts": {"invalid_json": 4}}
    elif name == "no_time_column":
        del cols["t"]
    elif name == "slice_s_none":
        kw["slice_s"] = None
    elif name == "partitions_none":
        kw["partitions"] = None
    elif name == "partitions_sparse":  # ids too far apart for a dense table
        kw["partitions"] = np.where(parts == 3, 2**40, parts)
    elif name == "partitions_negative":
        kw["partitions"] = parts - 2
    elif name == "one_partition":
        kw["partitions"] = np.full(400, 5, np.int32)
    elif name == "slices_far_apart":  # too many slices between them for a dense table
        cols["t"][::7] = np.datetime64("2200-01-01T12:00", "ns")
    elif name == "hourly_slices":
        kw["slice_s"] = 3600
    elif name == "before_1970":
        cols["t"] = cols["t"] - np.timedelta64(50 * 365, "D")
    elif name == "earliest_datetime64":  # numpy's ns -> ms wraps around here; so does _iso
        cols["t"] = (np.iinfo(np.int64).min + np.arange(1, 401) * 4001).view("datetime64[ns]")
        kw["slice_s"] = None
    elif name == "large_segment_ids":  # beyond a dense segment lookup
        ref = _segment_ref(
            segments={2**21: {"x": numeric_ref([1.0])}, -3: {"prediction": numeric_ref([2.0, 3.0])}}
        )
        scores["segment"] = np.where(scores["segment"] == 2, 2**21, scores["segment"])
        scores["segment"] = np.where(scores["segment"] == 3, -3, scores["segment"])
    elif name == "no_segment_column":
        del scores["segment"]
    elif name == "no_prediction_reference":
        b = _ref()
        ref = _segment_ref(DriftReference(b.numeric, b.categorical, None))
    elif name == "empty_reference":
        ref = DriftReference({}, {})
    elif name == "absent_feature":
        del cols["x"]
    elif name == "no_unknown_keys":
        scores["unknown_key"] = np.full(400, None, dtype=object)
    elif name == "no_unknown_key_column":
        del scores["unknown_key"]
    elif name == "imputed_counts":
        scores["imputed"] = np.arange(400) % 3
    elif name == "no_imputed_column":
        del scores["imputed"]
    elif name == "no_dlq":
        kw["dlq_counts"] = {}
    elif name == "many_rows_one_slice":  # five-digit counts
        cols, scores, parts = _catchup_batch(12, n=30_000, days=1, nat=0.0)
        kw["partitions"] = parts
    return cols, scores, ref, kw


def _per_slice_reference(
    cols, scores, ref, *, slice_s=86_400, partitions=None, dlq_counts=None, n_events=10, **kw
):
    """What batch_stats gives for the rows of each slice (the independent reference of the
    counting that batch_stats_slices and batch_stats_records share)."""
    dlq_counts = {"empty": 2, "too_large": 0} if dlq_counts is None else dlq_counts
    args = {**_KW, "time_field": "t", **kw}
    t = cols.get("t")
    m = len(scores["prediction"]) if "prediction" in scores else 0
    if t is None or m == 0:
        return [
            batch_stats(
                cols,
                scores,
                ref,
                n_events=n_events,
                dlq_counts=dlq_counts,
                partitions=partitions,
                **args,
            )
        ]
    lowest = np.iinfo(np.int64).min
    slot = (
        np.where(np.isnat(t), lowest, t.view(np.int64) // (slice_s * 10**9))
        if slice_s
        else np.zeros(m, np.int64)
    )
    n_dlq = sum(dlq_counts.values())
    out = []
    for i, k in enumerate(np.unique(slot).tolist()):
        rows = slot == k
        rec = batch_stats(
            _take(cols, rows),
            _take(scores, rows),
            ref,
            n_events=int(rows.sum()) + (n_dlq if i == 0 else 0),
            dlq_counts=dlq_counts if i == 0 else {},
            partitions=None if partitions is None else partitions[rows],
            **args,
        )
        if slice_s and k != lowest:
            rec["slice_start"] = str(np.datetime64(k * slice_s, "s").astype("M8[ms]")) + "Z"
            rec["slice_s"] = slice_s
        out.append(orjson.loads(orjson.dumps(rec)))
    return out


@pytest.mark.parametrize(
    "name",
    [
        "all_nat",
        "no_nat",
        "no_valid_rows",
        "no_time_column",
        "slice_s_none",
        "partitions_none",
        "partitions_sparse",
        "partitions_negative",
        "one_partition",
        "slices_far_apart",
        "hourly_slices",
        "before_1970",
        "earliest_datetime64",
        "large_segment_ids",
        "no_segment_column",
        "no_prediction_reference",
        "empty_reference",
        "absent_feature",
        "no_unknown_keys",
        "no_unknown_key_column",
        "imputed_counts",
        "no_imputed_column",
        "no_dlq",
        "many_rows_one_slice",
    ],
)
def test_records_equal_slices_on_edge_cases(name: str) -> None:
    cols, scores, ref, kw = _variant(name)
    recs = _records_and_slices(cols, scores, ref, **kw)
    assert recs and recs[0]["n_dlq"] == sum(kw.get("dlq_counts", {"empty": 2}).values())
    if name != "imputed_counts":  # batch_stats counts rows with imputed != 0; the slices
        # have always summed the column (the same for the scorer's bool column)
        assert recs == _per_slice_reference(cols, scores, ref, **kw)


def test_records_follow_the_columns_of_each_batch() -> None:
    """The layout is cached per reference; a batch that lacks a column gets its own."""
    cols, scores, parts = _catchup_batch(3, n=300, days=2)
    ref = _segment_ref()
    full = _records_and_slices(cols, scores, ref, partitions=parts)
    less = _records_and_slices(
        {k: v for k, v in cols.items() if k != "x"}, scores, ref, partitions=parts
    )
    assert "x" in full[1]["numeric"] and "x" not in less[1]["numeric"]
    assert _records_and_slices(cols, scores, ref, partitions=parts) == full


def test_layout_cache_lets_the_reference_go() -> None:
    import gc

    from segstream.services.worker import stats

    cols, scores, parts = _catchup_batch(4, n=100, days=2)
    ref = _segment_ref()
    _records_and_slices(cols, scores, ref, partitions=parts)
    key = id(ref)
    assert key in stats._LAYOUTS
    del ref
    gc.collect()
    assert key not in stats._LAYOUTS


def test_iso_array_equals_iso() -> None:
    """Reference test of the vectorised ISO 8601 formatting against numpy's (``_iso``) over
    the whole datetime64[ns] range, leap days, and the ends where numpy wraps around."""
    from segstream.services.worker.stats import _iso, _iso_array

    rng = np.random.default_rng(0)
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    ns = np.concatenate(
        [
            rng.integers(lo + 1, hi, 20_000),
            rng.integers(-(10**15), 10**15, 5000),
            rng.integers(-(10**9), 10**9, 5000),
            lo + rng.integers(0, 3_000_000, 500),
            hi - rng.integers(0, 3_000_000, 500),
            [
                lo,
                lo + 1,
                hi,
                -1,
                0,
                1,
                -999_999,
                -1_000_000,
                -1_000_001,
                951_782_400_000_000_000,
                951_868_799_999_999_999,
                -2_208_988_800_000_000_000,
            ],
        ]
    )
    assert _iso_array(ns) == [_iso(t) for t in ns.view("datetime64[ns]")]
