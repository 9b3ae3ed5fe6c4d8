from __future__ import annotations

import math

import numpy as np
import pytest

from segstream.shared.drift import (
    PSI_EPSILON,
    CategoricalReference,
    DriftReference,
    NumericReference,
    categorical_reference,
    js_distance,
    numeric_reference,
    psi,
)


def test_psi_hand_computed():
    expected = np.array([0.5, 0.5])
    actual = np.array([30, 70])
    e = PSI_EPSILON
    p = (np.array([0.5, 0.5]) + e) / (1 + 2 * e)
    q = (np.array([0.3, 0.7]) + e) / (1 + 2 * e)
    want = float(np.sum((q - p) * np.log(q / p)))
    assert psi(expected, actual) == pytest.approx(want, rel=1e-12)
    # without smoothing: (0.3-0.5) ln(0.6) + (0.7-0.5) ln(1.4) = 0.1695...
    assert want == pytest.approx(-0.2 * math.log(0.6) + 0.2 * math.log(1.4), rel=1e-3)
    assert psi(expected, np.array([50, 50])) == pytest.approx(0.0, abs=1e-15)


def test_psi_empty_bin_is_finite():
    assert math.isfinite(psi(np.array([0.0, 1.0]), np.array([10, 0])))


def test_js_distance_hand_computed():
    # disjoint distributions: JS divergence = 1 bit, distance 1 (up to the smoothing)
    assert js_distance(np.array([1.0, 0.0]), np.array([0, 5])) == pytest.approx(1.0, abs=2e-3)
    assert js_distance(np.array([0.5, 0.5]), np.array([5, 5])) == pytest.approx(0.0, abs=1e-7)
    p, q = np.array([0.25, 0.75]), np.array([0.5, 0.5])
    m = (p + q) / 2
    want = math.sqrt(0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m)))
    assert js_distance(p, np.array([1, 1])) == pytest.approx(want, abs=1e-4)


def test_numeric_bins_left_closed_missing_last():
    r = NumericReference(np.array([0.0, 1.0]), np.full(4, 0.25))
    got = r.bin(np.array([-5, 0.0, 0.5, 1.0, 7, np.nan, np.inf, -np.inf]))
    assert got.tolist() == [0, 1, 1, 2, 2, 3, 3, 3]


def test_numeric_reference_quantiles_and_shares():
    x = np.r_[np.arange(100, dtype=float), [np.nan] * 25]
    r = numeric_reference(x, n_bins=4)
    assert r.edges.tolist() == pytest.approx([24.75, 49.5, 74.25])
    assert r.expected.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.2])


def test_categorical_reference_other_and_missing():
    r = categorical_reference(np.array(["a", "b", "a", None, "c"], dtype=object), max_categories=2)
    assert r.categories == ("a", "b") or r.categories == ("a", "c")
    assert r.bin(np.array(["a", "zzz", None, float("nan")], dtype=object)).tolist() == [0, 2, 3, 3]
    assert r.expected.sum() == pytest.approx(1.0)


def test_reference_meta_round_trip():
    ref = DriftReference.fit(
        {"x": np.arange(50.0)},
        {"c": np.array(["u", "v"] * 5, object)},
        prediction=np.linspace(-1, 1, 20),
    )
    back = DriftReference.from_meta(ref.to_meta())
    np.testing.assert_array_equal(back.numeric["x"].edges, ref.numeric["x"].edges)
    assert back.categorical["c"].categories == ("u", "v")
    assert isinstance(back.prediction, NumericReference)
    assert isinstance(back.categorical["c"], CategoricalReference)


def test_window_psi_levels_separate_autocorrelated_from_iid_features():
    """A feature that is narrow within each window (like one day's temperature) already has a
    large PSI in training windows; an iid feature does not."""
    from segstream.shared.drift import window_psi_levels

    rng = np.random.default_rng(0)
    n_win, per = 60, 500
    window = np.repeat(np.arange(n_win), per)
    seasonal = np.repeat(rng.normal(0, 10, n_win), per) + rng.normal(0, 1, n_win * per)
    iid = rng.normal(0, 1, n_win * per)
    ref = DriftReference.fit({"seasonal": seasonal, "iid": iid}, {})
    levels = window_psi_levels(
        ref, {"seasonal": seasonal, "iid": iid}, {}, None, window, min_count=300
    )
    assert levels["seasonal"][0] > 2.0  # days are far from the whole-period reference
    assert levels["iid"][1] < 0.1  # ~ (bins - 1) / n of sampling noise
    assert levels["iid"][0] <= levels["iid"][1]
    # too few judged windows: no calibration
    assert window_psi_levels(ref, {"iid": iid}, {}, None, window, min_count=10_000) == {}


def test_calibrated_levels_only_raise_and_round_trip():
    ref = DriftReference({}, {}, window_psi={"temp": (3.0, 5.0), "x": (0.01, 0.02)}, window_s=86400)
    assert ref.calibrated_levels("temp", 0.1, 0.25) == (3.0, 5.0)
    assert ref.calibrated_levels("x", 0.1, 0.25) == (0.1, 0.25)
    assert ref.calibrated_levels("other", 0.1, 0.25) == (0.1, 0.25)
    back = DriftReference.from_meta(ref.to_meta())
    assert back.window_psi == {"temp": (3.0, 5.0), "x": (0.01, 0.02)}
    assert back.window_s == 86400


def test_monitor_threshold_precedence():
    from segstream.shared.settings import MonitorSettings

    ref = DriftReference({}, {}, window_psi={"temp": (3.0, 5.0)})
    s = MonitorSettings(drift_thresholds={"humid": (0.5, 1.0)})
    assert s.threshold("temp", ref) == (3.0, 5.0)  # calibrated
    assert s.threshold("humid", ref) == (0.5, 1.0)  # explicit wins
    assert s.threshold("temp") == (0.1, 0.25)  # no reference: defaults
    off = MonitorSettings(drift_calibrated=False)
    assert off.threshold("temp", ref) == (0.1, 0.25)
