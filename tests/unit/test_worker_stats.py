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
