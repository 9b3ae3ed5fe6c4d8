"""The pickle-free scorer (shared.linear) reproduces the training-side predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleCompatibilityError, SchemaError
from segstream.shared.linear import LinearSegmentModels
from segstream.training.groupby_regression import fit_groups, make_parallel_fit


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    sizes = [50, 80, 2, 40]
    g = np.repeat([5, 9, 11, 40], sizes)
    n = g.size
    X = rng.normal(size=(n, 3))
    X[rng.random((n, 3)) < 0.05] = np.nan
    y = 1 + X[:, 0] - 2 * np.nan_to_num(X[:, 1]) + rng.normal(0, 0.1, n)
    y2 = 2 * y
    # predictor 2 almost never observed in group 40 -> dropped there by min_stat
    X[g == 40, 2] = np.nan
    X[np.flatnonzero(g == 40)[:3], 2] = 1.0
    res = fit_groups(
        g,
        X,
        np.c_[y, y2],
        min_stat=[5, 5, 5],
        feature_names=["a", "b", "c"],
        target_names=["y", "y2"],
    )
    return res, g, X


def test_scorer_equals_training_prediction_and_contributions_sum(fitted):
    res, g, X = fitted
    scorer = LinearSegmentModels.from_exported(res.export())
    rng = np.random.default_rng(1)
    gq = np.r_[g, [777, 5]]  # unknown segment, then a known one
    Xq = np.r_[X, rng.normal(size=(2, 3))]
    for t in ("y", "y2", 1):
        pred, contrib = scorer.predict(gq, Xq, target=t)
        ref = res.predict(gq, Xq, target=t)
        np.testing.assert_allclose(pred, ref, rtol=1e-13, equal_nan=True)
        fin = np.isfinite(pred)
        np.testing.assert_allclose(contrib[fin].sum(1), pred[fin], rtol=1e-12)
    assert np.isnan(pred[-2]) and np.isnan(contrib[-2]).all()
    assert np.isfinite(pred[-1])
    # group 11 (2 rows) is not fitted: NaN, never 0
    assert np.isnan(pred[:-2][g == 11]).all()
    assert np.isnan(res.coef[res.group_index([40])[0], 0, 3])  # 'c' dropped in group 40


def test_missing_feature_contributes_coef_times_group_mean(fitted):
    res, _g, _X = fitted
    scorer = LinearSegmentModels.from_exported(res.export())
    gi = res.group_index([9])[0]
    x = np.array([[0.3, np.nan, -1.0]])
    _pred, contrib = scorer.predict([9], x)
    c = res.coef[gi, 0]
    assert contrib[0, 0] == c[0]
    assert contrib[0, 2] == pytest.approx(c[2] * res.x_mean[gi, 1])
    assert contrib[0, 3] == pytest.approx(c[3] * -1.0)
    # a dropped predictor contributes exactly 0 even if present
    pred40, contrib40 = scorer.predict([40], np.array([[1.0, 1.0, 123.0]]))
    assert contrib40[0, 3] == 0.0 and np.isfinite(pred40[0])


def test_scorer_matches_o2dpg_wrapper_prediction():
    rng = np.random.default_rng(2)
    n = 400
    df = pd.DataFrame(
        {"seg": rng.integers(0, 4, n), "x1": rng.normal(size=n), "x2": rng.normal(size=n)}
    )
    df["y"] = 1 + df["seg"] * df["x1"] - df["x2"] + rng.normal(0, 0.1, n)
    df["w"] = rng.uniform(0.5, 2, n)
    df_out, _dfGB = make_parallel_fit(
        df,
        ["seg"],
        ["y"],
        ["x1", "x2"],
        [],
        "w",
        "_f",
        selection=np.ones(n, bool),
        addPrediction=True,
        min_stat=[3, 3],
        fitter="ols",
    )
    res = fit_groups(
        df["seg"].to_numpy(),
        df[["x1", "x2"]].to_numpy(),
        df["y"].to_numpy(),
        df["w"].to_numpy(),
        method="sigma_clip",
        min_stat=[3, 3],
        min_rows=3,
        feature_names=["x1", "x2"],
    )
    scorer = LinearSegmentModels.from_exported(res.export())
    pred, _ = scorer.predict(df["seg"].to_numpy(), df[["x1", "x2"]].to_numpy())
    np.testing.assert_allclose(pred, df_out["y_f"].to_numpy(), rtol=1e-12)


def test_from_exported_rejects_wrong_kind_format_and_shapes(fitted):
    res, _, _ = fitted
    comp = res.export()
    with pytest.raises(BundleCompatibilityError):
        LinearSegmentModels.from_exported(ExportedComponent("partitioner", comp.arrays, comp.meta))
    with pytest.raises(BundleCompatibilityError, match="format"):
        LinearSegmentModels.from_exported(
            ExportedComponent("segment_models", comp.arrays, {**comp.meta, "format": 99})
        )
    bad = dict(comp.arrays)
    bad["x_mean"] = bad["x_mean"][:, :2]
    with pytest.raises(SchemaError, match="x_mean"):
        LinearSegmentModels.from_exported(ExportedComponent("segment_models", bad, comp.meta))
    scorer = LinearSegmentModels.from_exported(comp)
    with pytest.raises(SchemaError, match="X"):
        scorer.predict([5], np.zeros((1, 2)))
