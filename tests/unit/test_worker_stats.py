"""Per-batch stats records for the monitor (no broker)."""

from __future__ import annotations

import numpy as np
import orjson

from services.worker.stats import batch_stats
from shared.drift import CategoricalReference, DriftReference
from tests.fakes import numeric_ref


def _ref() -> DriftReference:
    return DriftReference(
        numeric={"x": numeric_ref([0.0, 10.0])},
        categorical={"c": CategoricalReference(("a", "b"), np.full(4, 0.25))},
        prediction=numeric_ref([5.0]),
    )


def _stats(columns, scores, **kw):
    args = dict(time_field="t", model="m", bundle_id="b1", worker="w1", batch=3, n_events=7,
                dlq_counts={"empty": 1, "wrong_type": 0}, created_at="2024-01-01T00:00:00Z")
    args.update(kw)
    return batch_stats(columns, scores, _ref(), **args)


def test_counts_use_the_reference_bins() -> None:
    cols = {
        "x": np.array([-1.0, 0.0, 5.0, 10.0, np.nan, np.inf]),
        "c": np.array(["a", "b", "z", None, "a", "a"], dtype=object),
        "t": np.array(["2013-09-01T10:00", "NaT", "2013-09-01T09:00", "2013-09-02T00:00",
                       "2013-09-01T12:00", "2013-09-01T12:00"], dtype="datetime64[ns]"),
    }
    scores = {
        "prediction": np.array([1.0, 5.0, 6.0, 7.0, 2.0, 3.0]),
        "fallback_level": np.array([0, 0, 1, 2, 0, 0], dtype=np.int8),
        "unknown_key": np.array([None, "JFK|XXX", "JFK|XXX", "LGA|YYY", None, None],
                                dtype=object),
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
    cols = {"x": np.zeros(5), "c": np.array(["a"] * 5, dtype=object),
            "t": np.zeros(5, dtype="datetime64[ns]")}
    scores = {"prediction": np.zeros(5), "fallback_level": np.zeros(5, np.int8),
              "unknown_key": np.array(["k1", "k1", "k2", "k3", "k4"], dtype=object),
              "imputed": np.zeros(5, bool)}
    rec = _stats(cols, scores, max_unknown_keys=1)
    assert rec["unknown_keys"] == {"k1": 2}
    assert rec["unknown_keys_other"] == 3


def test_batch_without_valid_events() -> None:
    cols = {"x": np.zeros(0), "c": np.zeros(0, dtype=object),
            "t": np.zeros(0, dtype="datetime64[ns]")}
    rec = _stats(cols, {}, dlq_counts={"invalid_json": 4})
    assert rec["n_scored"] == 0 and rec["n_dlq"] == 4
    assert rec["numeric"]["x"] == [0, 0, 0, 0]
    assert rec["prediction"] == [0, 0, 0]
    assert rec["event_time_min"] is None


def _day_batch():
    t = np.array(["2013-09-01T23:00", "2013-09-01T23:59:59", "2013-09-02T00:00",
                  "2013-09-02T05:00"], dtype="datetime64[ns]")
    cols = {"x": np.array([1.0, 2.0, 20.0, 30.0]), "c": np.array(["a", "b", "a", "a"],
                                                                  dtype=object), "t": t}
    scores = {"prediction": np.array([1.0, 6.0, 7.0, 8.0]),
              "fallback_level": np.zeros(4, np.int8),
              "unknown_key": np.array(["k", None, "k", "k"], dtype=object),
              "imputed": np.zeros(4, bool), "segment": np.array([7, 7, 8, 7], np.int32)}
    return cols, scores


def test_batch_straddling_a_slice_boundary_gives_one_record_per_slice() -> None:
    from services.worker.stats import batch_stats_slices

    cols, scores = _day_batch()
    ref = _ref()
    ref = DriftReference(ref.numeric, ref.categorical, ref.prediction,
                         segments={7: {"x": numeric_ref([10.0]), "prediction": numeric_ref([5.0])}})
    recs = batch_stats_slices(cols, scores, ref, time_field="t", slice_s=86_400, model="m",
                              bundle_id="b1", worker="w1", batch=3, n_events=6,
                              dlq_counts={"empty": 2}, created_at="now",
                              partitions=np.array([0, 1, 1, 2]))
    assert [r["slice_start"] for r in recs] == ["2013-09-01T00:00:00.000Z",
                                                "2013-09-02T00:00:00.000Z"]
    a, b = recs
    assert a["n_scored"] == 2 and b["n_scored"] == 2
    assert a["n_dlq"] == 2 and b["n_dlq"] == 0  # the batch's DLQ counts go to the first
    assert a["n_events"] == 4 and b["n_events"] == 2
    assert a["numeric"]["x"] == [0, 2, 0, 0] and b["numeric"]["x"] == [0, 0, 2, 0]
    assert a["unknown_keys"] == {"k": 1} and b["unknown_keys"] == {"k": 2}
    assert a["partition_time_max"] == {"0": "2013-09-01T23:00:00.000Z",
                                       "1": "2013-09-01T23:59:59.000Z"}
    assert b["partition_time_max"] == {"1": "2013-09-02T00:00:00.000Z",
                                       "2": "2013-09-02T05:00:00.000Z"}
    # per large segment: segment 7 only (8 has no reference); bins of the segment reference
    assert a["segments"] == {"7": {"x": [2, 0, 0], "prediction": [1, 1, 0]}}
    assert b["segments"] == {"7": {"x": [0, 1, 0], "prediction": [0, 1, 0]}}
    assert a["slice_s"] == 86_400
    one = batch_stats_slices(cols, scores, ref, time_field="t", slice_s=None, model="m",
                             bundle_id="b1", worker="w1", batch=3, n_events=6,
                             dlq_counts={}, created_at="now")
    assert len(one) == 1 and one[0]["n_scored"] == 4 and one[0]["slice_start"] is None


def _take(d, rows):
    return {k: v[rows] for k, v in d.items()}


def test_vectorised_slices_equal_batch_stats_per_slice() -> None:
    """Reference test: every record of ``batch_stats_slices`` (all slices counted at once)
    equals ``batch_stats`` on the rows of its slice, on a catch-up batch spanning many days
    with NaT times, unknown keys, imputed rows, large segments and several partitions."""
    from services.worker.stats import batch_stats_slices

    rng = np.random.default_rng(7)
    n = 3000
    t = (np.datetime64("2013-09-01T00:00", "ns")
         + rng.integers(0, 20 * 86_400, n).astype("timedelta64[s]")).astype("datetime64[ns]")
    t[rng.random(n) < 0.02] = np.datetime64("NaT")
    x = rng.normal(5, 8, n)
    x[rng.random(n) < 0.05] = np.nan
    x[::97] = 4.0  # exactly on an edge (bins are left-closed)
    x[::101] = 9.0
    x[5], x[6] = np.inf, -np.inf
    cols = {"x": x, "c": rng.choice(np.array(["a", "b", "z", None], dtype=object), n), "t": t}
    keys = np.array([None] * 6 + ["JFK|XXX", "LGA|YYY", "EWR|ZZZ"], dtype=object)
    scores = {"prediction": rng.normal(5, 3, n),
              "fallback_level": rng.integers(0, 3, n).astype(np.int8),
              "unknown_key": rng.choice(keys, n), "imputed": rng.random(n) < 0.1,
              "segment": rng.integers(0, 6, n).astype(np.int32)}
    base = _ref()
    ref = DriftReference(base.numeric, base.categorical, base.prediction, segments={
        1: {"x": numeric_ref([0.0, 4.0]), "prediction": numeric_ref([5.0])},
        4: {"x": numeric_ref([9.0]), "c": CategoricalReference(("a",), np.full(3, 1 / 3))},
        5: {"prediction": numeric_ref([]), "absent_feature": numeric_ref([1.0])}})
    parts = rng.integers(0, 4, n)
    kw = dict(model="m", bundle_id="b1", worker="w1", batch=3, created_at="now",
              max_unknown_keys=2)
    recs = batch_stats_slices(cols, scores, ref, time_field="t", slice_s=86_400, n_events=n + 5,
                              dlq_counts={"empty": 5}, partitions=parts, **kw)
    ns = t.view(np.int64)
    slot = np.where(np.isnat(t), np.iinfo(np.int64).min, ns // (86_400 * 10**9))
    uniq = np.unique(slot)
    assert len(recs) == len(uniq) > 15
    for i, (rec, k) in enumerate(zip(recs, uniq.tolist(), strict=True)):
        rows = slot == k
        want = batch_stats(_take(cols, rows), _take(scores, rows), ref, time_field="t",
                           n_events=int(rows.sum()) + (5 if i == 0 else 0),
                           dlq_counts={"empty": 5} if i == 0 else {},
                           partitions=parts[rows], **kw)
        if k != np.iinfo(np.int64).min:
            want["slice_start"] = str(np.datetime64(k * 86_400, "s")) + ".000Z"
            want["slice_s"] = 86_400
        assert orjson.loads(orjson.dumps(rec)) == orjson.loads(orjson.dumps(want)), i
