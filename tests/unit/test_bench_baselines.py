"""The group-by benchmark's baselines (benchmarks/baselines_groupby.py) fit what they claim.

They are the denominators of the benchmark's speed-ups, so they must be right: the vectorised
OLS baselines against per-group ``np.linalg.lstsq`` (independent SVD solves), the statsmodels
RLM loop against the engine's Huber fit (same estimator), on small seeded data.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load():
    path = REPO / "benchmarks" / "baselines_groupby.py"
    spec = importlib.util.spec_from_file_location("baselines_groupby", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("baselines_groupby", mod)
    spec.loader.exec_module(mod)
    return mod


bl = _load()


def _data(G=40, r=12, p=3, seed=0, outliers=0.0, sizes=None):
    rng = np.random.default_rng(seed)
    sizes = np.full(G, r) if sizes is None else np.asarray(sizes)
    g = np.repeat(np.arange(G), sizes)
    n = len(g)
    X = rng.normal(size=(n, p)) * np.array([1.0, 10.0, 0.1][:p]) + np.array([0.0, 100.0, 5.0][:p])
    beta = rng.normal(size=(G, p + 1)) * 2
    y = beta[g, 0] + np.einsum("ij,ij->i", X, beta[g, 1:]) + rng.normal(size=n)
    if outliers:
        bad = rng.random(n) < outliers
        y[bad] += rng.choice([-1, 1], bad.sum()) * rng.uniform(20, 60, bad.sum())
    w = rng.uniform(0.5, 2.0, size=n)
    perm = rng.permutation(n)
    return g[perm], X[perm], y[perm], w[perm]


def _lstsq_by_hand(g, X, y, w):
    out = []
    for k in range(g.max() + 1):
        m = g == k
        sw = np.sqrt(w[m])
        A = np.c_[np.ones(m.sum()), X[m]] * sw[:, None]
        out.append(np.linalg.lstsq(A, y[m] * sw, rcond=None)[0])
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_ols_baselines_agree_with_lstsq(seed):
    sizes = np.random.default_rng(seed).integers(5, 30, size=50)  # unequal groups
    g, X, y, w = _data(G=50, sizes=sizes, seed=seed)
    ref = _lstsq_by_hand(g, X, y, w)
    assert ref.shape == (50, 4)
    np.testing.assert_allclose(bl.lstsq_reference(g, X, y, w), ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(bl.numpy_ols(g, X, y, w), ref, rtol=0, atol=1e-8)
    pytest.importorskip("polars")
    df = bl.polars_frame(g, X, y, w)
    np.testing.assert_allclose(bl.polars_ols(df, 3), ref, rtol=0, atol=1e-8)
    # the uncentred forms solve the same equations, with fewer correct digits on short
    # groups (a predictor at 5 +- 0.1 next to the intercept): agreement to 1e-8 relative
    scale = np.abs(ref).max()
    for raw in (
        bl.numpy_ols_raw(g, X, y, w),
        bl.numpy_ols_add_at(g, X, y, w),
        bl.polars_ols_raw(df, 3),
    ):
        np.testing.assert_allclose(raw, ref, rtol=0, atol=1e-8 * scale)


def test_vectorised_ols_uses_the_weights():
    g, X, y, w = _data(G=10, r=15, seed=3, outliers=0.2)
    weighted = bl.numpy_ols(g, X, y, w)
    unweighted = bl.numpy_ols(g, X, y, np.ones_like(w))
    assert np.abs(weighted - unweighted).max() > 1e-3


def test_loops_agree_with_lstsq_and_take_a_group_subset():
    pytest.importorskip("statsmodels")
    g, X, y, w = _data(G=30, r=10, seed=4)
    ref = _lstsq_by_hand(g, X, y, w)
    idx = bl.GroupIndex.build(g, X, y, w)
    assert idx.n_groups == 30
    groups = np.array([2, 7, 29])
    np.testing.assert_allclose(bl.statsmodels_wls_loop(idx, groups), ref[groups], atol=1e-8)


def test_rlm_loop_is_the_engines_weighted_huber_estimator():
    pytest.importorskip("statsmodels")
    from segstream.training.groupby_regression import fit_groups

    g, X, y, w = _data(G=20, r=30, seed=5, outliers=0.1)
    idx = bl.GroupIndex.build(g, X, y, w)
    rlm = bl.statsmodels_rlm_loop(idx, np.arange(20), tol=1e-10, maxiter=500)
    res = fit_groups(g, X, y, w, method="huber", tol=1e-10, max_iter=500)
    assert (res.status[:, 0] == 0).all()
    np.testing.assert_allclose(res.coef[:, 0, :], rlm, rtol=0, atol=1e-6)
    # and it is not simply the weighted least-squares fit
    assert np.abs(rlm - bl.numpy_ols(g, X, y, w)).max() > 1e-2
