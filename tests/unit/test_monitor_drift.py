"""PSI and Jensen–Shannon distance against hand-computed values; drift aggregation (no broker)."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from scipy.spatial.distance import jensenshannon

from segstream.services.monitor.drift import (
    MalformedRecord,
    add_stats,
    drift_findings,
    empty_state,
    validate_stats,
)
from segstream.shared.contracts import StatsRecord
from segstream.shared.drift import (
    PSI_EPSILON,
    CategoricalReference,
    DriftReference,
    js_distance,
    psi,
)
from tests.fakes import numeric_ref

B = "b" * 64  # a bundle id (64 lowercase hex)


def test_psi_hand_computed() -> None:
    # p = (0.5, 0.5), q = (0.75, 0.25): PSI = 0.25 ln 1.5 + 0.25 ln 2 = 0.274653 (no smoothing)
    assert psi(np.array([0.5, 0.5]), np.array([3, 1]), eps=0.0) == pytest.approx(
        0.25 * math.log(1.5) + 0.25 * math.log(2.0), abs=1e-12
    )
    assert psi(np.array([0.5, 0.5]), np.array([3, 1]), eps=0.0) == pytest.approx(0.274653, abs=1e-6)
    # with the documented epsilon the shares become (s + eps) / (1 + 2 eps)
    e = PSI_EPSILON
    p = (0.5 + e) / (1 + 2 * e)
    q1, q2 = (0.75 + e) / (1 + 2 * e), (0.25 + e) / (1 + 2 * e)
    want = (q1 - p) * math.log(q1 / p) + (q2 - p) * math.log(q2 / p)
    assert psi(np.array([0.5, 0.5]), np.array([3, 1])) == pytest.approx(want, rel=1e-12)
    # identical distributions: 0; counts scale-free
    assert psi(np.array([0.2, 0.3, 0.5]), np.array([20, 30, 50])) == pytest.approx(0, abs=1e-15)
    assert psi(np.array([0.5, 0.5]), np.array([300, 100])) == psi(
        np.array([0.5, 0.5]), np.array([3, 1])
    )


def test_psi_empty_bins_stay_finite() -> None:
    # all mass moves to a bin that was empty in training: finite thanks to epsilon
    e = PSI_EPSILON
    hi, lo = (1 + e) / (1 + 2 * e), e / (1 + 2 * e)
    want = 2 * (hi - lo) * math.log(hi / lo)
    got = psi(np.array([1.0, 0.0]), np.array([0, 5]))
    assert math.isfinite(got) and got == pytest.approx(want, rel=1e-12)
    assert got == pytest.approx(18.41, abs=0.01)


def test_js_distance_hand_computed_and_against_scipy() -> None:
    # p = (0.5, 0.5), q = (0.75, 0.25), m = (0.625, 0.375):
    # KL(p||m) = 0.5 log2(0.8) + 0.5 log2(4/3) = 0.0465550; KL(q||m) = 0.75 log2(1.2)
    # + 0.25 log2(2/3) = 0.0510349; JS = 0.0487949; distance = sqrt = 0.2208957
    got = js_distance(np.array([0.5, 0.5]), np.array([3, 1]), eps=0.0)
    assert got == pytest.approx(0.2208957, abs=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(2, 12))
        p = rng.dirichlet(np.ones(k))
        c = rng.integers(1, 50, k)  # eps=0 needs non-empty bins (0 log 0)
        assert js_distance(p, c, eps=0.0) == pytest.approx(
            jensenshannon(p, c / c.sum(), base=2), abs=1e-9
        )
    assert 0.0 <= js_distance(np.array([1.0, 0.0]), np.array([0, 9])) <= 1.0


def _ref() -> DriftReference:
    return DriftReference(
        numeric={"x": numeric_ref([0.0, 10.0])},  # 4 bins, expected 0.25 each
        categorical={"c": CategoricalReference(("a", "b"), np.array([0.5, 0.5, 0.0, 0.0]))},
        prediction=numeric_ref([5.0]),
        segments={3: {"x": numeric_ref([0.0, 10.0])}},
    )


def _levels(feature: str) -> tuple[float, float]:
    return (0.1, 0.25)


def stats_record(**fields) -> dict:
    """A complete, valid stats record (as the worker sends it) with ``fields`` replaced."""
    rec = {
        "model": "m",
        "bundle_id": B,
        "worker": "w",
        "batch": 0,
        "n_events": 400,
        "n_scored": 400,
        "n_dlq": 0,
        "dlq": {},
        "event_time_min": None,
        "event_time_max": None,
        "numeric": {},
        "categorical": {},
        "prediction": None,
        "fallback_levels": {},
        "unknown_keys": {},
        "unknown_keys_other": 0,
        "segments": {},
        "partition_time_max": {},
        "imputed": 0,
        "created_at": "2013-09-01T00:00:00.000Z",
        "slice_start": None,
        "slice_s": None,
    }
    return rec | fields


def test_add_stats_sums_counts_and_findings_match_psi() -> None:
    st = empty_state()
    rec = stats_record(
        numeric={"x": [100, 100, 100, 100]},
        categorical={"c": [300, 100, 0, 0]},
        prediction=[200, 200, 0],
        segments={"3": {"x": [0, 0, 400, 0]}},
    )
    st = add_stats(st, validate_stats(rec), 1000, 2000)
    st = add_stats(st, validate_stats(orjson.dumps(rec)), 500, 2500)  # as JSON bytes
    assert st["n"] == 800 and st["numeric"]["x"] == [200, 200, 200, 200]
    assert st["event_time_min"] == 500 and st["event_time_max"] == 2500
    found = {(f.feature, f.segment): f for f in drift_findings(st, _ref(), _levels, min_count=100)}
    assert found[("x", None)].psi == pytest.approx(0.0, abs=1e-12)
    assert found[("x", None)].severity is None
    c = found[("c", None)]
    assert c.psi == pytest.approx(psi(np.array([0.5, 0.5, 0, 0]), np.array([600, 200, 0, 0])))
    assert c.severity == "critical" if c.psi >= 0.25 else "warning"
    assert found[("x", 3)].severity == "critical" and found[("x", 3)].count == 800
    assert found[("prediction", None)].count == 800
    # below the minimum count nothing is judged; excluded features are skipped
    assert drift_findings(st, _ref(), _levels, min_count=10_000) == []
    assert all(
        f.feature != "c"
        for f in drift_findings(st, _ref(), _levels, min_count=1, exclude=frozenset({"c"}))
    )


def test_a_complete_record_is_valid_and_unknown_fields_are_ignored() -> None:
    rec = validate_stats(stats_record(numeric={"x": [1, 2, 3, 4]}, added_later={"a": 1}))
    assert isinstance(rec, StatsRecord) and rec.numeric == {"x": [1, 2, 3, 4]}
    assert not hasattr(rec, "added_later")


@pytest.mark.parametrize("field", sorted(stats_record()))
def test_a_stats_record_missing_any_field_is_rejected(field: str) -> None:
    rec = stats_record()
    del rec[field]
    with pytest.raises(MalformedRecord, match=f"missing required field `{field}`"):
        validate_stats(rec)
    with pytest.raises(MalformedRecord, match=f"missing required field `{field}`"):
        validate_stats(orjson.dumps(rec))


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "x",
        b"",
        b"{",
        b"[1]",
        b"null",
        stats_record(bundle_id="../../etc"),
        stats_record(bundle_id="/abs/path"),
        stats_record(bundle_id=B.upper()),
        stats_record(bundle_id=B + "\n"),
        stats_record(model=None),
        stats_record(model=3),
        stats_record(n_scored=True),
        stats_record(n_scored=-1),
        stats_record(n_scored=1.5),
        stats_record(numeric={"x": [1, -1, 0, 0]}),
        stats_record(numeric={"x": "1,2"}),
        stats_record(numeric=[]),
        stats_record(prediction=[1.5]),
        stats_record(segments={"1": [1]}),
        stats_record(unknown_keys={"k": "many"}),
        stats_record(partition_time_max={"0": None}),
        stats_record(slice_s=0),
    ],
)
def test_malformed_stats_records_are_rejected(bad) -> None:
    with pytest.raises(MalformedRecord):
        validate_stats(bad)
    if isinstance(bad, dict):  # the same as JSON bytes (the service's input)
        with pytest.raises(MalformedRecord):
            validate_stats(orjson.dumps(bad))


def test_bin_count_mismatch_is_malformed() -> None:
    st = add_stats(
        empty_state(), validate_stats(stats_record(numeric={"x": [1, 2, 3, 4]})), None, None
    )
    with pytest.raises(MalformedRecord, match="bins"):
        add_stats(st, validate_stats(stats_record(numeric={"x": [1, 2, 3]})), None, None)
