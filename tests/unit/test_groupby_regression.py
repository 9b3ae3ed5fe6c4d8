"""Reference tests of the group-by regression engine.

References: statsmodels WLS / RLM(HuberT), numpy.linalg.lstsq, scipy.optimize.lsq_linear,
and the O2DPG robust engine's own test cases (tests/test_groupby_regression.py upstream).
Tolerances are stated per test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import lsq_linear

from segstream.shared.errors import DataError, SchemaError
from segstream.training import _groupby_kernels as K
from segstream.training.groupby_regression import (
    STATUS_CODES,
    _factorize,
    _group_rows,
    fit_groups,
    make_parallel_fit,
)

OK = STATUS_CODES["ok"]
TOO_FEW = STATUS_CODES["too_few_rows"]
SINGULAR = STATUS_CODES["singular"]


def _random_groups(rng, sizes, p=3, offsets=(0.0, 1e3, 5.0), scales=(1.0, 10.0, 0.1)):
    g = np.repeat(np.arange(len(sizes)), sizes)
    n = g.size
    X = rng.normal(size=(n, p)) * np.asarray(scales[:p]) + np.asarray(offsets[:p])
    beta = rng.normal(size=(len(sizes), p + 1)) * 3
    y = (
        beta[g, 0]
        + np.einsum("ij,ij->i", X, beta[g, 1:])
        + rng.normal(size=n) * rng.uniform(0.1, 2)
    )
    w = rng.uniform(0.1, 3.0, size=n)
    # shuffle rows so groups are interleaved
    perm = rng.permutation(n)
    return g[perm], X[perm], y[perm], w[perm]


# --------------------------------------------------------------------------- kernels


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40))
def test_median_inplace_matches_numpy(vals):
    a = np.array([7.0, *vals, 9.0])
    got = K._median_inplace(a.copy(), 1, len(vals))
    assert got == np.median(np.array(vals))


def test_layout_is_stable_counting_sort():
    codes = np.array([2, 0, 1, 0, 2, 2], dtype=np.int64)
    keep = np.array([True, True, True, False, True, True])
    offsets, rows = K._layout(codes, keep, 3)
    assert offsets.tolist() == [0, 1, 2, 5]
    assert rows.tolist() == [1, 2, 0, 4, 5]


# --------------------------------------------------------------------------- OLS / WLS parity


def test_wls_matches_statsmodels_and_lstsq_coef_and_stderr():
    rng = np.random.default_rng(1)
    sizes = np.concatenate([[2, 3, 4, 5, 6], rng.integers(2, 501, size=40)])
    g, X, y, w = _random_groups(rng, sizes)
    res = fit_groups(g, X, y, w)
    p = X.shape[1]
    for k, n_k in enumerate(sizes):
        m = g == k
        if n_k < p + 1:
            assert res.status[k, 0] == TOO_FEW
            assert np.isnan(res.coef[k, 0]).all()
            continue
        assert res.status[k, 0] == OK
        Xc = sm.add_constant(X[m], has_constant="add")
        ref_np = np.linalg.lstsq(Xc * np.sqrt(w[m])[:, None], y[m] * np.sqrt(w[m]), rcond=None)[0]
        np.testing.assert_allclose(res.coef[k, 0], ref_np, rtol=1e-8, atol=0)
        if n_k == p + 1:
            assert np.isnan(res.stderr[k, 0]).all()  # no residual degrees of freedom
            continue
        wls = sm.WLS(y[m], Xc, weights=w[m]).fit()
        np.testing.assert_allclose(res.coef[k, 0], wls.params, rtol=1e-8)
        np.testing.assert_allclose(res.stderr[k, 0], wls.bse, rtol=1e-8)
        r = y[m] - Xc @ wls.params
        np.testing.assert_allclose(
            res.rms[k, 0], np.sqrt(np.sum(w[m] * r**2) / w[m].sum()), rtol=1e-8
        )
        np.testing.assert_allclose(
            res.mad[k, 0], 1.482602218505602 * np.median(np.abs(r)), rtol=1e-6
        )
        assert res.n_used[k, 0] == n_k
        assert 1.0 <= res.cond[k, 0] < 1e6


def test_ill_conditioned_groups_match_lstsq_via_qr_fallback():
    rng = np.random.default_rng(2)
    rows = []
    for k, eps in enumerate([1e-3, 1e-4, 1e-5, 1e-6]):
        n = 200
        x1 = rng.normal(size=n)
        x2 = x1 + eps * rng.normal(size=n)
        y = 1.0 + x1 - 2 * x2 + 0.01 * rng.normal(size=n)
        rows.append((np.full(n, k), np.c_[x1, x2], y))
    g = np.concatenate([r[0] for r in rows])
    X = np.concatenate([r[1] for r in rows])
    y = np.concatenate([r[2] for r in rows])
    res = fit_groups(g, X, y)
    assert res.cond[-1, 0] > 1e6  # the fallback was needed
    for k in range(4):
        m = g == k
        Xc = sm.add_constant(X[m])
        ref = np.linalg.lstsq(Xc, y[m], rcond=None)[0]
        wls = sm.WLS(y[m], Xc).fit()
        assert res.status[k, 0] == OK
        np.testing.assert_allclose(res.coef[k, 0], ref, rtol=1e-8)
        np.testing.assert_allclose(res.stderr[k, 0], wls.bse, rtol=1e-7)


def test_collinear_and_constant_predictors_are_singular_nan():
    rng = np.random.default_rng(3)
    n = 50
    x1 = rng.normal(size=n)
    X = np.r_[np.c_[x1, 2 * x1 + 1], np.c_[x1, np.full(n, 3.0)], np.c_[x1, rng.normal(size=n)]]
    g = np.repeat([0, 1, 2], n)
    y = rng.normal(size=3 * n)
    res = fit_groups(g, X, y)
    assert res.status[:, 0].tolist() == [SINGULAR, SINGULAR, OK]
    assert np.isnan(res.coef[:2]).all() and np.isnan(res.stderr[:2]).all()
    assert np.isinf(res.cond[:2, 0]).all()
    assert np.isfinite(res.coef[2]).all()


@pytest.mark.parametrize("offset,scale", [(1e12, 1.0), (0.0, 1e-12), (1e-12, 1e-15), (0.0, 1e12)])
def test_huge_and_tiny_magnitudes(offset, scale):
    rng = np.random.default_rng(4)
    n = 300
    g = np.repeat([0, 1, 2], n // 3)
    X = offset + scale * rng.normal(size=(n, 2))
    z = (X - offset) / scale  # exact design in unit scale
    y = 2.0 + 0.5 * z[:, 0] - 1.5 * z[:, 1] + 0.01 * rng.normal(size=n)
    res = fit_groups(g, X, y)
    assert (res.status[:, 0] == OK).all()
    # slopes in data units: 0.5/scale, -1.5/scale
    np.testing.assert_allclose(res.coef[:, 0, 1] * scale, 0.5, atol=0.01)
    np.testing.assert_allclose(res.coef[:, 0, 2] * scale, -1.5, atol=0.01)
    pred = res.predict(g, X)
    assert np.sqrt(np.mean((pred - y) ** 2)) < 0.02


def test_overflowing_values_give_status_not_crash():
    g = np.zeros(10, dtype=np.int64)
    X = np.linspace(-1, 1, 10)[:, None] * 1e200
    y = np.linspace(0, 1, 10) * 1e200
    res = fit_groups(g, X, y)
    assert res.status[0, 0] in (OK, SINGULAR)
    if res.status[0, 0] == SINGULAR:
        assert np.isnan(res.coef).all()


def test_group_ids_any_integers_equal_dense():
    rng = np.random.default_rng(5)
    g, X, y, w = _random_groups(rng, [20, 30, 40])
    dense = fit_groups(g, X, y, w)
    for mapping in ([-7, 3, 10**15], [5, 0, -(2**40)]):
        gg = np.asarray(mapping, dtype=np.int64)[g]
        other = fit_groups(gg.astype(np.int32) if max(map(abs, mapping)) < 2**31 else gg, X, y, w)
        order = np.argsort(mapping)
        assert other.groups.tolist() == sorted(mapping)
        np.testing.assert_allclose(other.coef, dense.coef[order], rtol=1e-12)
    res_u = fit_groups(g.astype(np.uint16), X, y, w)
    np.testing.assert_allclose(res_u.coef, dense.coef, rtol=1e-12)


def test_multiple_targets_have_their_own_nan_pattern():
    rng = np.random.default_rng(6)
    g, X, y, w = _random_groups(rng, [60, 80])
    y2 = 3 * y + 1
    y2[::3] = np.nan
    res = fit_groups(g, X, np.c_[y, y2], w, target_names=["a", "b"])
    single = fit_groups(g, X, y, w)
    np.testing.assert_allclose(res.coef[:, 0], single.coef[:, 0], rtol=1e-12)
    m = np.isfinite(y2)
    only = fit_groups(g[m], X[m], y2[m], w[m])
    np.testing.assert_allclose(res.coef[:, 1], only.coef[:, 0], rtol=1e-12)
    assert res.n_used[:, 1].sum() == m.sum()


def test_nan_rows_selection_and_zero_weights_are_ignored():
    rng = np.random.default_rng(7)
    g, X, y, w = _random_groups(rng, [100, 100])
    Xn = X.copy()
    Xn[::7, 1] = np.nan
    yn = y.copy()
    yn[::11] = np.inf
    sel = np.ones(len(g), bool)
    sel[::5] = False
    w0 = w.copy()
    w0[::13] = 0.0
    res = fit_groups(g, Xn, yn, w0, selection=sel)
    m = np.isfinite(Xn).all(1) & np.isfinite(yn) & sel & (w0 > 0)
    ref = fit_groups(g[m], X[m], y[m], w[m])
    np.testing.assert_allclose(res.coef, ref.coef, rtol=1e-12)
    assert (res.n_used == ref.n_used).all()
    assert res.n_rows.tolist() == np.bincount(g[sel]).tolist()


def test_min_stat_per_predictor_drops_slope_to_nan():
    n = 20
    x1 = np.linspace(0, 1, n)
    x2 = np.r_[np.full(15, np.nan), np.linspace(0, 1, 5)]
    y = 2 * x1 + 1
    res = fit_groups(np.zeros(n, np.int64), np.c_[x1, x2], y, min_stat=[10, 10])
    assert res.status[0, 0] == OK
    assert np.isnan(res.coef[0, 0, 2]) and np.isnan(res.stderr[0, 0, 2])
    np.testing.assert_allclose(res.coef[0, 0, :2], [1.0, 2.0], atol=1e-12)
    assert res.n_used[0, 0] == 20  # rows with NaN in the dropped predictor still count
    # all predictors dropped -> too_few_rows (O2DPG semantics), NaN not 0
    res2 = fit_groups(np.zeros(n, np.int64), np.c_[x1, x2], y, min_stat=[30, 30])
    assert res2.status[0, 0] == TOO_FEW and np.isnan(res2.coef).all()


def test_all_nan_and_tiny_groups_are_too_few_rows_nan():
    g = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    X = np.c_[np.arange(10.0), np.arange(10.0) ** 2]
    y = np.arange(10.0) + np.sin(np.arange(10.0))
    y[:3] = np.nan
    res = fit_groups(g, X, y, min_rows=0)
    assert res.status[:, 0].tolist() == [TOO_FEW, TOO_FEW, OK]
    assert np.isnan(res.coef[:2]).all() and np.isnan(res.rms[:2]).all()
    assert res.n_used[:, 0].tolist() == [0, 2, 5]
    assert (res.coef[:2] != 0).all()  # NaN, never a silent 0


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_clear_errors():
    g = np.zeros(5, np.int64)
    X = np.ones((5, 1))
    y = np.arange(5.0)
    with pytest.raises(SchemaError, match="X"):
        fit_groups(g, np.array([["a"]] * 5), y)
    with pytest.raises(SchemaError, match="group_ids"):
        fit_groups(g.astype(float), X, y)
    with pytest.raises(SchemaError, match="group_ids"):
        fit_groups(np.array(list("aaaaa")), X, y)
    with pytest.raises(DataError, match="y: has 4 rows"):
        fit_groups(g, X, y[:4])
    with pytest.raises(DataError, match="weights"):
        fit_groups(g, X, y, np.array([1, 1, -1, 1, 1.0]))
    with pytest.raises(DataError, match="first at row 3"):
        fit_groups(g, X, y, np.array([1, 1, 1, np.nan, 1.0]))
    # a bad weight on an unselected row is fine
    sel = np.array([True, True, True, False, True])
    fit_groups(g, X, y, np.array([1, 1, 1, np.nan, 1.0]), selection=sel)
    with pytest.raises(ValueError, match="method"):
        fit_groups(g, X, y, method="lasso")
    with pytest.raises(ValueError, match="sign"):
        fit_groups(g, X, y, sign=["up"])
    with pytest.raises(SchemaError, match="selection"):
        fit_groups(g, X, y, selection=np.ones(5))
    with pytest.raises(DataError, match="cycle"):
        fit_groups(g, X, y, parent=np.array([1, 0]), shrinkage=1.0)


def test_empty_input_gives_empty_result():
    res = fit_groups(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0))
    assert res.coef.shape == (0, 1, 3)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=6),
    nan_frac=st.floats(0, 0.6),
    seed=st.integers(0, 2**31 - 1),
    method=st.sampled_from(["ols", "huber", "sigma_clip"]),
)
def test_status_and_nan_invariants(sizes, nan_frac, seed, method):
    rng = np.random.default_rng(seed)
    sizes = [s for s in sizes if s > 0] or [1]
    g = np.repeat(np.arange(len(sizes)) * 3, sizes)
    n = g.size
    X = rng.normal(size=(n, 2))
    X[rng.random((n, 2)) < nan_frac] = np.nan
    y = X[:, 0] + rng.normal(size=n)
    res = fit_groups(g, X, y, method=method)
    fitted = np.isfinite(res.coef[:, 0, 0])
    assert (fitted == np.isin(res.status[:, 0], [OK, STATUS_CODES["not_converged"]])).all()
    assert (res.n_used[:, 0] >= 0).all()
    assert (res.n_used[fitted, 0] >= 1 + np.isfinite(res.coef[fitted, 0, 1:]).sum(1)).all()


# --------------------------------------------------------------------------- robust


def test_huber_matches_statsmodels_rlm():
    rng = np.random.default_rng(8)
    sizes = [30, 60, 120, 400]
    g, X, y, _ = _random_groups(rng, sizes, p=2, offsets=(0, 3), scales=(1, 2))
    out = rng.random(len(y)) < 0.1
    y = y + out * rng.normal(0, 30, len(y))
    res = fit_groups(g, X, y, method="huber", tol=1e-12, max_iter=500)
    for k in range(len(sizes)):
        m = g == k
        rlm = sm.RLM(y[m], sm.add_constant(X[m]), M=sm.robust.norms.HuberT(t=1.345)).fit(
            scale_est="mad", conv="coefs", tol=1e-13, maxiter=1000
        )
        assert res.status[k, 0] == OK
        np.testing.assert_allclose(res.coef[k, 0], rlm.params, atol=1e-4, rtol=0)
        assert res.n_rejected[k, 0] > 0


def test_huber_tiny_max_iter_reports_not_converged():
    rng = np.random.default_rng(9)
    g, X, y, _ = _random_groups(rng, [200], p=1)
    y[::5] += 100
    res = fit_groups(g, X, y, method="huber", max_iter=1, tol=1e-14)
    assert res.status[0, 0] == STATUS_CODES["not_converged"]
    assert np.isfinite(res.coef).all()


def test_sigma_clip_recovers_slopes_where_ols_fails():
    rng = np.random.default_rng(10)
    G, n = 20, 200
    g = np.repeat(np.arange(G), n)
    X = rng.uniform(0, 10, size=(G * n, 2))
    slopes = np.array([1.5, -0.7])
    y = 3 + X @ slopes + rng.normal(0, 0.3, G * n)
    bad = rng.random(G * n) < 0.10
    y[bad] += rng.uniform(20, 60, bad.sum())  # one-sided gross outliers
    clip = fit_groups(g, X, y, method="sigma_clip", sigma_cut=4)
    ols = fit_groups(g, X, y)
    huber = fit_groups(g, X, y, method="huber")
    assert np.abs(clip.coef[:, 0, 1:] - slopes).max() < 0.05
    assert np.abs(ols.coef[:, 0, 1:] - slopes).max() > 0.05
    assert np.abs(huber.coef[:, 0, 1:] - slopes).max() < np.abs(ols.coef[:, 0, 1:] - slopes).max()
    frac = clip.n_rejected[:, 0] / (clip.n_used[:, 0] + clip.n_rejected[:, 0])
    assert np.all(np.abs(frac - bad.reshape(G, n).mean(1)) < 0.03)
    assert (clip.n_iter[:, 0] >= 1).all()


def test_sigma_clip_exact_data_with_outliers_is_exact():
    rng = np.random.default_rng(0)
    x1 = rng.uniform(0, 1, 100)
    x2 = rng.uniform(10, 20, 100)
    y = 2.0 * x1 + 3.0 * x2
    y[::10] += 50
    res = fit_groups(np.zeros(100, np.int64), np.c_[x1, x2], y, method="sigma_clip")
    np.testing.assert_allclose(res.coef[0, 0], [0.0, 2.0, 3.0], atol=1e-8)
    assert res.n_rejected[0, 0] == 10


# --------------------------------------------------------------------------- sign constraints


@pytest.mark.parametrize("seed", range(6))
def test_sign_constraints_match_lsq_linear(seed):
    rng = np.random.default_rng(100 + seed)
    G, p = 8, 4
    sizes = rng.integers(10, 80, G)
    g, X, y, w = _random_groups(rng, sizes, p=p, offsets=(0, 1, 2, 3), scales=(1, 1, 1, 1))
    X[:, 3] = X[:, 2] * 0.7 + 0.5 * X[:, 3]  # correlated predictors make the active set matter
    sign = ["+", "-", None, "+"]
    res = fit_groups(g, X, y, w, sign=sign)
    lb = np.array([-np.inf, 0, -np.inf, -np.inf, 0])
    ub = np.array([np.inf, np.inf, 0, np.inf, np.inf])
    for k in range(G):
        m = g == k
        sw = np.sqrt(w[m])
        A = sm.add_constant(X[m], has_constant="add") * sw[:, None]
        ref = lsq_linear(A, y[m] * sw, bounds=(lb, ub), method="bvls", tol=1e-14, lsmr_tol=None)
        assert res.status[k, 0] == OK
        np.testing.assert_allclose(res.coef[k, 0], ref.x, rtol=1e-7, atol=1e-9)
        c = res.coef[k, 0]
        assert c[1] >= 0 and c[2] <= 0 and c[4] >= 0
        pinned = (c[1:] == 0) & (np.array([1, -1, 0, 1]) != 0)
        assert np.isnan(res.stderr[k, 0, 1:][pinned]).all()


def test_sign_constraints_inactive_equal_unconstrained():
    rng = np.random.default_rng(11)
    g = np.zeros(200, np.int64)
    X = rng.normal(size=(200, 2))
    y = 1 + 2 * X[:, 0] - 3 * X[:, 1] + 0.1 * rng.normal(size=200)
    free = fit_groups(g, X, y)
    con = fit_groups(g, X, y, sign={"x0": "+", "x1": "-"})
    np.testing.assert_allclose(con.coef, free.coef, rtol=1e-10)
    np.testing.assert_allclose(con.stderr, free.stderr, rtol=1e-10)


# --------------------------------------------------------------------------- shrinkage


def _tree_data(rng, n_leaf_rows=(200, 150, 8, 3)):
    # nodes: 0 root; 1, 2 children of 0; leaves 3, 4 under 1; 5, 6 under 2
    parent = np.array([-1, 0, 0, 1, 1, 2, 2])
    leaves = [3, 4, 5, 6]
    g = np.repeat(leaves, n_leaf_rows)
    n = g.size
    X = rng.normal(size=(n, 2))
    b = {3: [1, 2, -1], 4: [1.5, 2.5, -1], 5: [0.5, 1.5, -0.5], 6: [0.8, 1.8, -0.8]}
    B = np.array([b[v] for v in g])
    y = B[:, 0] + (B[:, 1:] * X).sum(1) + rng.normal(0, 0.5, n)
    return g, X, y, parent


def test_shrinkage_lambda_zero_equals_independent_fit():
    rng = np.random.default_rng(12)
    g, X, y, parent = _tree_data(rng)
    hier0 = fit_groups(g, X, y, parent=parent, shrinkage=0.0)
    hier_eps = fit_groups(g, X, y, parent=parent, shrinkage=1e-9)
    indep = fit_groups(g, X, y)
    leaf_pos = hier0.group_index(indep.groups)
    np.testing.assert_allclose(hier0.coef[leaf_pos], indep.coef, rtol=1e-12)
    ok = indep.status[:, 0] == OK
    np.testing.assert_allclose(hier_eps.coef[leaf_pos][ok], indep.coef[ok], rtol=1e-6)
    # internal nodes are fitted on the union of their leaves' rows
    root = fit_groups(np.zeros_like(g), X, y)
    np.testing.assert_allclose(hier0.coef[hier0.group_index([0])[0]], root.coef[0], rtol=1e-12)
    assert hier0.parent[hier0.group_index([3])[0]] == hier0.group_index([1])[0]


def test_shrinkage_lambda_infinite_equals_parent():
    rng = np.random.default_rng(13)
    g, X, y, parent = _tree_data(rng)
    big = fit_groups(g, X, y, parent=parent, shrinkage=1e12)
    assert (big.status[:, 0] == OK).all()  # thin leaf (3 rows) borrows strength
    for v in range(1, 7):
        i = big.group_index([v])[0]
        np.testing.assert_allclose(big.coef[i], big.coef[big.parent[i]], rtol=1e-6, atol=1e-8)


def test_shrinkage_fixed_and_eb_pull_thin_leaf_toward_parent():
    rng = np.random.default_rng(14)
    g, X, y, parent = _tree_data(rng, n_leaf_rows=(300, 300, 300, 6))
    indep = fit_groups(g, X, y, parent=parent)
    mid = fit_groups(g, X, y, parent=parent, shrinkage=20.0)
    eb = fit_groups(g, X, y, parent=parent, shrinkage="eb")
    i = indep.group_index([6])[0]
    P = indep.parent[i]
    for res in (mid, eb):
        d_shrunk = np.abs(res.coef[i, 0] - res.coef[res.parent[i], 0]).sum()
        d_indep = np.abs(indep.coef[i, 0] - indep.coef[P, 0]).sum()
        assert d_shrunk < d_indep
        assert np.isfinite(res.stderr[i, 0]).all()
        assert res.rms[i, 0] >= indep.rms[i, 0] - 1e-12  # shrinkage cannot fit its rows better
    # big leaves barely move under EB
    j = indep.group_index([3])[0]
    np.testing.assert_allclose(eb.coef[j, 0], indep.coef[j, 0], atol=0.1)
    assert np.isfinite(np.asarray(eb.params["eb_tau2"])).all()


# --------------------------------------------------------------------------- export


def test_export_is_plain_arrays_and_json_meta():
    rng = np.random.default_rng(15)
    g, X, y, w = _random_groups(rng, [20, 1, 30])
    res = fit_groups(g, X, y, w, feature_names=["a", "b", "c"], target_names=["t"])
    comp = res.export()
    assert comp.kind == "segment_models"
    for name, a in comp.arrays.items():
        assert a.dtype != object and a.dtype.kind in "iuf", name
    assert comp.arrays["coef"].shape == (3, 1, 4)
    assert comp.arrays["status"].dtype == np.int8
    assert comp.arrays["status"][1, 0] == comp.meta["status_codes"]["too_few_rows"]
    json.dumps(comp.meta)
    assert comp.meta["feature_names"] == ["a", "b", "c"]


# --------------------------------------------------------------------------- O2DPG wrapper


@pytest.fixture
def sample_data():
    np.random.seed(0)
    n = 100
    df = pd.DataFrame(
        {
            "group": np.random.choice(["A", "B"], size=n),
            "x1": np.random.normal(loc=0, scale=1, size=n),
            "x2": np.random.normal(loc=5, scale=2, size=n),
        }
    )
    df["y"] = 2.0 * df["x1"] + 3.0 * df["x2"] + np.random.normal(0, 0.5, size=n)
    df["weight"] = np.ones(n)
    return df


@pytest.mark.parametrize("fitter", ["ols", "robust", "auto"])
def test_o2dpg_column_layout(sample_data, fitter):
    df = sample_data
    df_out, dfGB = make_parallel_fit(
        df,
        gb_columns=["group"],
        fit_columns=["y"],
        linear_columns=["x1", "x2"],
        median_columns=["x1"],
        weights="weight",
        suffix="_rob",
        selection=(df["x1"] > -10),
        addPrediction=True,
        n_jobs=1,
        min_stat=[5, 5],
        fitter=fitter,
    )
    expected = [
        "group",
        "y_slope_x1_rob",
        "y_err_x1_rob",
        "y_slope_x2_rob",
        "y_err_x2_rob",
        "y_intercept_rob",
        "y_rms_rob",
        "y_mad_rob",
        "x1_rob",
        "bin_count_rob",
    ]
    for c in expected:
        assert c in dfGB.columns, c
    assert dfGB["group"].tolist() == ["A", "B"]
    assert "y_rob" in df_out.columns
    assert dfGB["bin_count_rob"].tolist() == df.groupby("group").size().tolist()
    np.testing.assert_allclose(dfGB["x1_rob"], df.groupby("group")["x1"].median().to_numpy())
    errors = df_out["y"] - df_out["y_rob"]
    assert errors.std() < 1.0


def test_o2dpg_exact_coefficient_recovery():
    np.random.seed(0)
    x1 = np.random.uniform(0, 1, 100)
    x2 = np.random.uniform(10, 20, 100)
    df = pd.DataFrame({"group": ["G1"] * 100, "x1": x1, "x2": x2})
    df["y"] = 2.0 * df["x1"] + 3.0 * df["x2"]
    df["weight"] = 1.0
    for fitter in ("ols", "robust"):
        _, dfGB = make_parallel_fit(
            df,
            ["group"],
            ["y"],
            ["x1", "x2"],
            ["x1"],
            "weight",
            "_par",
            selection=(df["x1"] >= 0),
            addPrediction=True,
            min_stat=[1, 1],
            fitter=fitter,
        )
        assert np.isclose(dfGB["y_slope_x1_par"].iloc[0], 2.0, atol=1e-6)
        assert np.isclose(dfGB["y_slope_x2_par"].iloc[0], 3.0, atol=1e-6)


def test_o2dpg_min_stat_per_predictor():
    df = pd.DataFrame(
        {
            "group": ["G1"] * 20,
            "x1": np.linspace(0, 1, 20),
            "x2": [np.nan] * 15 + list(np.linspace(0, 1, 5)),
        }
    )
    df["y"] = (
        2.0 * df["x1"]
        + 3.0 * np.nan_to_num(df["x2"])
        + np.random.default_rng(0).normal(0, 0.01, 20)
    )
    df["weight"] = 1.0
    sel = df["x1"].notna() & df["y"].notna()
    _, dfGB = make_parallel_fit(
        df,
        ["group"],
        ["y"],
        ["x1", "x2"],
        ["x1"],
        "weight",
        "_minstat",
        selection=sel,
        addPrediction=True,
        min_stat=[10, 10],
    )
    assert not np.isnan(dfGB["y_slope_x1_minstat"].iloc[0])
    assert np.isnan(dfGB["y_slope_x2_minstat"].iloc[0])
    assert np.isnan(dfGB["y_err_x2_minstat"].iloc[0])


def test_o2dpg_robust_outlier_resilience_and_sigma_cut():
    np.random.seed(0)
    x1 = np.random.uniform(0, 1, 100)
    x2 = np.random.uniform(10, 20, 100)
    y = 2.0 * x1 + 3.0 * x2
    y[::10] += 50
    df = pd.DataFrame({"group": ["G1"] * 100, "x1": x1, "x2": x2, "y": y, "weight": 1.0})
    # Noiseless data with 10 % gross outliers (+50): the robust fit and the sigma-clipped OLS
    # recover the true coefficients to 1e-6 relative (intercept 0: to 1e-6 absolute). Why this
    # tight: at the true coefficients the inliers' residuals are exactly 0, so the MAD scale
    # of the Huber IRLS shrinks with them every iteration and the outliers' bounded weight
    # (huber_c * scale) goes to 0; the fit stops at tol=1e-8 (measured error 7e-9 on slope
    # x1). The clipped OLS refits on the inliers alone (error at rounding level).
    for fitter in ("robust", "ols"):
        _, rob = make_parallel_fit(
            df,
            ["group"],
            ["y"],
            ["x1", "x2"],
            ["x1"],
            "weight",
            "_r",
            selection=(df["x1"] >= 0),
            fitter=fitter,
        )
        assert rob["y_slope_x1_r"].iloc[0] == pytest.approx(2.0, rel=1e-6, abs=0), fitter
        assert rob["y_slope_x2_r"].iloc[0] == pytest.approx(3.0, rel=1e-6, abs=0), fitter
        assert abs(rob["y_intercept_r"].iloc[0]) < 1e-6, fitter
    # The same with fit_groups' Huber at a tight tolerance: 1e-9 (measured 5e-12), while plain
    # OLS, which the outliers pull, is off by more than 1 (so the data can fail the check).
    g = np.zeros(100, np.int64)
    X = np.column_stack([x1, x2])
    true = np.array([0.0, 2.0, 3.0])
    hub = fit_groups(g, X, y, method="huber", max_iter=500, tol=1e-14)
    np.testing.assert_allclose(hub.coef[0, 0], true, rtol=0, atol=1e-9)
    ols = fit_groups(g, X, y, method="ols")
    assert np.abs(ols.coef[0, 0] - true).max() > 1.0
    n = 10000
    df = pd.DataFrame({"group": ["G1"] * n, "x1": np.linspace(0, 1, n)})
    df["y"] = 3.0 * df["x1"] + np.random.normal(0, 0.1, size=n)
    df.loc[::50, "y"] += 100
    df["weight"] = 1.0
    sel = df["x1"].notna()
    _, loose = make_parallel_fit(
        df,
        ["group"],
        ["y"],
        ["x1"],
        ["x1"],
        "weight",
        "_s",
        selection=sel,
        sigmaCut=1e6,
        fitter="ols",
    )
    _, strict = make_parallel_fit(
        df,
        ["group"],
        ["y"],
        ["x1"],
        ["x1"],
        "weight",
        "_s",
        selection=sel,
        sigmaCut=3,
        fitter="ols",
    )
    assert abs(strict["y_slope_x1_s"].iloc[0] - 3.0) < abs(loose["y_slope_x1_s"].iloc[0] - 3.0)
    assert abs(strict["y_slope_x1_s"].iloc[0] - 3.0) < 0.01


def test_o2dpg_insufficient_data_is_nan_and_kept():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "g1": [1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
            "g2": ["a"] * 3 + ["b"] * 11,
            "x1": rng.normal(size=14),
        }
    )
    df["y"] = 1 + df["x1"] + 0.1 * rng.normal(size=14)
    df["w"] = 1.0
    _, dfGB = make_parallel_fit(
        df,
        ["g1", "g2"],
        ["y"],
        ["x1"],
        [],
        "w",
        "_t",
        selection=np.ones(14, bool),
        min_stat=[10],
        diag=True,
    )
    assert dfGB[["g1", "g2"]].values.tolist() == [[1, "a"], [2, "b"]]
    assert np.isnan(dfGB["y_slope_x1_t"].iloc[0]) and np.isnan(dfGB["y_intercept_t"].iloc[0])
    assert dfGB["y_status_t"].tolist() == ["too_few_rows", "ok"]
    assert "diag_cond_xtx_t" in dfGB.columns


def test_o2dpg_bad_columns():
    df = pd.DataFrame({"g": [1, 1], "x": ["a", "b"], "y": [1.0, 2.0], "w": [1.0, 1.0]})
    with pytest.raises(SchemaError, match="'x'"):
        make_parallel_fit(df, ["g"], ["y"], ["x"], [], "w", "", np.ones(2, bool))
    with pytest.raises(SchemaError, match="nope"):
        make_parallel_fit(df, ["g"], ["y"], ["nope"], [], "w", "", np.ones(2, bool))
    with pytest.raises(ValueError, match="fitter"):
        make_parallel_fit(df, ["g"], ["y"], ["y"], [], "w", "", np.ones(2, bool), fitter=object)


def _kernel_outputs(G, T, p):
    return dict(
        coef=np.full((G, T, p + 1), -1.0),
        se=np.full((G, T, p + 1), -1.0),
        rms=np.full((G, T), -1.0),
        mad=np.full((G, T), -1.0),
        cond=np.full((G, T), -1.0),
        n_used=np.zeros((G, T), np.int64),
        status=np.full((G, T), 9, np.int8),
        x_mean=np.full((G, p), -1.0),
    )


def test_fast_ols_kernel_equals_general_per_group_fit():
    # the inline OLS kernel and the general per-group fit (_fit_one) on the same layout
    rng = np.random.default_rng(16)
    sizes = [2, 3, 4, 5, 30, 200, 40, 25]
    g, X, y, w = _random_groups(rng, sizes)
    X[g == 5, 2] = 1e12 + X[g == 5, 2]  # offsets cancel in the centred sums
    X[g == 6, 1] = np.nan  # non-finite: declined by the fast kernel
    X[g == 7, 2] = X[g == 7, 0] * 2 + 1e-9 * rng.normal(size=(g == 7).sum())  # cond > 1e6
    G, p = len(sizes), 3
    Y = np.c_[y, 2 * y - 1]
    keep = np.ones(len(g), bool)
    offsets, Xg, Yg, Wg = _group_rows(g.astype(np.int64), keep, G, X, Y, w)
    ms = np.array([1, 1, 25])
    ip = np.array([K.METHOD_OLS, 50, 0, 0])
    fp = np.array([1.345, 4.0, 1e-8, 1e6, 1e-14, 1e-10])
    fast = _kernel_outputs(G, 2, p)
    redo = np.ones(G, np.uint8)
    K._fit_ols_fast(
        Xg,
        Yg,
        Wg,
        offsets,
        ms,
        ip,
        fp,
        3,
        fast["coef"],
        fast["se"],
        fast["rms"],
        fast["mad"],
        fast["cond"],
        fast["n_used"],
        fast["status"],
        fast["x_mean"],
        redo,
    )
    # declined: too few rows for min_stat=25 (sizes 2..5 and 25 is fine), NaN, ill-conditioned
    assert redo.tolist() == [1, 1, 1, 1, 0, 0, 1, 1]
    slow = _kernel_outputs(G, 2, p)
    m = len(Wg)
    st = [
        np.zeros((1, 2)),
        np.zeros((1, 2)),
        np.zeros((1, 2, p)),
        np.zeros((1, 2, p, p)),
        np.zeros((1, 2, p)),
        np.zeros((1, 2)),
        np.zeros((1, 2)),
        np.zeros((1, 2, p), np.uint8),
    ]
    K._fit_all(
        Xg,
        Yg,
        Wg,
        offsets,
        ms,
        np.zeros(p, np.int64),
        ip,
        fp,
        3,
        np.ones(G, np.uint8),
        np.empty(m),
        np.empty(m, np.bool_),
        np.empty(m),
        np.empty(m),
        slow["coef"],
        slow["se"],
        slow["rms"],
        slow["mad"],
        slow["cond"],
        slow["n_used"],
        np.zeros((G, 2), np.int64),
        np.zeros((G, 2), np.int64),
        slow["status"],
        *st,
    )
    K._x_mean(Xg, Wg, offsets, 3, np.ones(G, np.uint8), slow["x_mean"])
    done = redo == 0
    for name in ("coef", "se", "rms", "mad", "cond", "x_mean"):
        np.testing.assert_allclose(
            fast[name][done], slow[name][done], rtol=1e-10, atol=0, err_msg=name
        )
    for name in ("status", "n_used"):
        np.testing.assert_array_equal(fast[name][done], slow[name][done], err_msg=name)
    # end to end: the public API gives the general fit's answer for every group
    res = fit_groups(g, X, Y, w, min_stat=[1, 1, 25])
    np.testing.assert_allclose(res.coef, slow["coef"], rtol=1e-10, equal_nan=True)
    np.testing.assert_array_equal(res.status, slow["status"])


@pytest.mark.parametrize("n_groups", [40, 6000])
def test_unsorted_ols_path_equals_general_fit(n_groups):
    # one target, rows in random group order: sufficient statistics accumulated in one pass
    # over the unsorted rows (no row reordering). Reference: the same data with a second,
    # identical target, which takes the grouped-rows path (fast kernel + general fit).
    # 6000 groups x ~20 rows is above the size where the passes are split between threads.
    rng = np.random.default_rng(23)
    sizes = np.r_[
        [1, 2, 3, 4, 5, 30, 30, 30, 30, 30, 30, 30, 30], rng.integers(4, 37, size=n_groups - 13)
    ]
    g, X, y, w = _random_groups(rng, sizes)
    X[g == 5, 2] = 1e12 + X[g == 5, 2]  # offsets cancel around the per-group shift
    X[g == 6, 1] = np.nan  # non-finite: declined, general path
    X[g == 7, 2] = X[g == 7, 0] * 2 + 1e-9 * rng.normal(size=(g == 7).sum())  # cond > 1e6
    X[g == 8] = X[g == 8] * 1e-12  # tiny units
    first8 = np.flatnonzero(g == 9)[0]
    X[first8, 0] = 1e6  # the shift (first row) far from the group mean: declined
    X[g == 10, 1] = 3.0  # constant predictor: singular
    w[np.flatnonzero(g == 11)[:3]] = 0.0  # zero weights are not rows of the fit
    y[np.flatnonzero(g == 12)[:2]] = np.inf  # non-finite target
    sel = rng.random(len(g)) > 0.05
    ms = [1, 1, 25]
    res = fit_groups(g, X, y, w, selection=sel, min_stat=ms)
    ref = fit_groups(g, X, np.c_[y, y], w, selection=sel, min_stat=ms)
    assert (res.status[:, 0] == OK).sum() > 0.5 * n_groups
    assert res.status[10, 0] == SINGULAR
    np.testing.assert_array_equal(res.status[:, 0], ref.status[:, 0])
    np.testing.assert_array_equal(res.n_used[:, 0], ref.n_used[:, 0])
    for name in ("coef", "stderr", "rms", "cond"):
        a = getattr(res, name)[:, 0]
        b = getattr(ref, name)[:, 0]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=0, err_msg=name)
    np.testing.assert_allclose(res.mad[:, 0], ref.mad[:, 0], rtol=1e-8, atol=0)
    np.testing.assert_allclose(res.x_mean, ref.x_mean, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(res.n_rows, ref.n_rows)


@pytest.mark.parametrize("p", [1, 2, 4, 5])
def test_unsorted_ols_path_any_number_of_predictors(p):
    # p <= 4 takes the unrolled accumulation kernel, p > 4 the generic one
    rng = np.random.default_rng(29)
    sizes = rng.integers(1, 40, size=300)
    g = np.repeat(np.arange(sizes.size), sizes)
    n = g.size
    X = rng.normal(size=(n, p)) * rng.uniform(0.1, 10, size=p) + rng.uniform(-100, 100, size=p)
    y = X @ rng.normal(size=p) + 3.0 + rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, size=n)
    perm = rng.permutation(n)
    g, X, y, w = g[perm], X[perm], y[perm], w[perm]
    res = fit_groups(g, X, y, w)
    ref = fit_groups(g, X, np.c_[y, y], w)
    np.testing.assert_array_equal(res.status[:, 0], ref.status[:, 0])
    for name in ("coef", "stderr", "rms", "mad", "cond"):
        a = getattr(res, name)[:, 0]
        b = getattr(ref, name)[:, 0]
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        # exact fits (n = p + 1) have residuals at rounding level: absolute tolerance there
        atol = 1e-9 * np.abs(y).max() if name in ("rms", "mad") else 0.0
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=atol, err_msg=name)


@pytest.mark.parametrize("ids", ["shuffled", "negative_sparse", "grouped", "grouped_with_gaps"])
def test_counting_sort_layout_any_ids(ids):
    rng = np.random.default_rng(17)
    sizes = rng.integers(1, 30, 40)
    g, X, y, w = _random_groups(rng, sizes)
    if ids == "negative_sparse":
        g = np.asarray(rng.choice(np.arange(-(10**6), 10**6), 40, replace=False))[g]
    elif ids == "grouped":
        o = np.argsort(g, kind="stable")
        g, X, y, w = g[o], X[o], y[o], w[o]
    elif ids == "grouped_with_gaps":
        o = np.argsort(g, kind="stable")
        g, X, y, w = g[o] * 7 - 100, X[o], y[o], w[o]
    codes, labels, _ = _factorize(g)
    keep = rng.random(len(g)) > 0.1
    keep[:] = True if ids.startswith("grouped") else keep
    G = labels.size
    offsets, Xg, Yg, Wg = _group_rows(codes, keep, G, X, y.reshape(-1, 1), w)
    ref_off, rows = K._layout(codes, keep, G)  # stable reference order
    np.testing.assert_array_equal(offsets, ref_off)
    np.testing.assert_array_equal(Xg, X[rows])
    np.testing.assert_array_equal(Yg[:, 0], y[rows])
    np.testing.assert_array_equal(Wg, w[rows])
    if ids.startswith("grouped"):
        assert Xg is X  # already grouped: used in place, no copy
    # and the fit does not depend on the row order
    perm = rng.permutation(len(g))
    a = fit_groups(g, X, y, w, method="huber")
    b = fit_groups(g[perm], X[perm], y[perm], w[perm], method="huber")
    np.testing.assert_array_equal(a.groups, b.groups)
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_parallel_scatter_is_stable_across_threads():
    # several slices of rows (one per thread) must keep the original order within a group
    rng = np.random.default_rng(18)
    n, G = 1000, 37
    codes = rng.integers(0, G, n).astype(np.int64)
    keep = rng.random(n) > 0.2
    X = np.arange(n, dtype=np.float64).reshape(-1, 1)
    for n_parts in (1, 2, 3, 7):
        start = np.zeros((n_parts, G), np.int64)
        offsets = np.empty(G + 1, np.int64)
        K._part_counts(codes, keep, start)
        K._part_offsets(start, offsets)
        Xg = np.empty((offsets[-1], 1))
        K._scatter_rows(
            codes,
            keep,
            X,
            X,
            X[:, 0].copy(),
            start,
            Xg,
            np.empty((offsets[-1], 1)),
            np.empty(offsets[-1]),
        )
        ref_off, rows = K._layout(codes, keep, G)
        np.testing.assert_array_equal(offsets, ref_off)
        np.testing.assert_array_equal(Xg[:, 0], rows)


def test_eb_thin_node_is_pooled_not_ok():
    # a leaf with fewer rows than parameters cannot be fitted on its own: with shrinkage it
    # gets the parent-derived estimate and says so
    rng = np.random.default_rng(19)
    g, X, y, parent = _tree_data(rng, n_leaf_rows=(200, 150, 100, 2))
    thin = 6
    for shrink in ("eb", 5.0):
        res = fit_groups(g, X, y, parent=parent, shrinkage=shrink)
        i = res.group_index([thin])[0]
        assert res.status_names()[i, 0] == "pooled"
        assert res.status[i, 0] == STATUS_CODES["pooled"]
        assert np.isfinite(res.coef[i, 0]).all()
        others = np.arange(len(res.groups)) != i
        assert (res.status[others, 0] == OK).all()
    alone = fit_groups(g, X, y, parent=parent)  # no shrinkage: honest too_few_rows, NaN
    i = alone.group_index([thin])[0]
    assert alone.status[i, 0] == TOO_FEW and np.isnan(alone.coef[i, 0]).all()
    # min_rows gates like too few parameters
    res = fit_groups(g, X, y, parent=parent, shrinkage="eb", min_rows=120)
    st = dict(zip(res.groups.tolist(), res.status_names()[:, 0].tolist(), strict=False))
    assert st[3] == "ok" and st[4] == "ok" and st[5] == "pooled" and st[6] == "pooled"


def test_shrinkage_keeps_not_converged_status():
    rng = np.random.default_rng(20)
    g, X, y, parent = _tree_data(rng, n_leaf_rows=(200, 150, 100, 60))
    y = y + (rng.random(len(y)) < 0.2) * 40
    res = fit_groups(g, X, y, parent=parent, shrinkage="eb", method="huber", max_iter=1, tol=1e-14)
    indep = fit_groups(g, X, y, parent=parent, method="huber", max_iter=1, tol=1e-14)
    np.testing.assert_array_equal(res.status, indep.status)
    assert (res.status[:, 0] == STATUS_CODES["not_converged"]).any()


@pytest.mark.parametrize("q", [1, 2, 3, 4])
def test_unrolled_stats_equal_generic_bitwise(q):
    # _stats takes the unrolled kernel for q <= 4: same operations in the same order
    rng = np.random.default_rng(31 + q)
    for n in (1, 3, 20, 57):
        Xg = rng.normal(size=(n, 5)) * rng.uniform(0.1, 10, 5) + rng.uniform(-1e6, 1e6, 5)
        Yg = rng.normal(size=(n, 2)) + 1e3
        weff = rng.uniform(0.0, 2.0, n) * (rng.random(n) > 0.2)
        kidx = rng.permutation(5)[:q].astype(np.int64)
        outs = []
        for fn, extra in ((K._stats_small, ()), (K._stats_generic, (np.zeros(q), np.zeros(q)))):
            xbar, A, rhs = np.full(q, 7.0), np.full((q, q), 7.0), np.full(q, 7.0)
            head = fn(Xg, Yg, 1, weff, 0, n, kidx, q, xbar, A, rhs, *extra)
            outs.append((head, xbar, A, rhs))
        assert outs[0][0] == outs[1][0]
        for a, b in zip(outs[0][1:], outs[1][1:], strict=False):
            np.testing.assert_array_equal(a, b)


def test_beta_only_solve_equals_full_solve():
    # the robust iterations' slopes-only solve gives the full solve's slopes, and declines
    # (False) exactly where the full solve is singular or needs the QR fallback
    rng = np.random.default_rng(37)
    q = 3
    X = rng.normal(size=(30, q)) * [1.0, 10.0, 0.1] + [0.0, 1e3, 5.0]
    y = X @ [1.0, -2.0, 3.0] + rng.normal(size=30)
    w = rng.uniform(0.5, 2.0, 30)
    fp = np.array([1.345, 4.0, 1e-8, 1e6, 1e-14, 1e-10])
    kidx = np.arange(q)
    cases = {
        "ok": X,
        "constant": np.c_[X[:, :2], np.full(30, 5.0)],
        "collinear": np.c_[X[:, :2], 2.0 * X[:, 0] + 1.0],
    }
    for name, Xc in cases.items():
        Yc = y.reshape(-1, 1)
        xbar, A, rhs = np.zeros(q), np.zeros((q, q)), np.zeros(q)
        _n, W, ybar, _ = K._stats(
            Xc, Yc, 0, w, 0, 30, kidx, q, xbar, A, rhs, np.zeros(q), np.zeros(q)
        )
        xs = 64.0 * K.EPS * np.abs(Xc).max(axis=0)
        ws = [
            np.zeros(q),
            np.zeros((q, q)),
            np.zeros(q),
            np.zeros((q, q)),
            np.zeros(q, np.int64),
            np.zeros(q),
            np.zeros(q),
        ]
        D, R, rr, L, idx, z, b_fast = ws
        ok = K._solve_beta(A, rhs, W, xs, q, 1e-14, D, R, rr, L, idx, z, b_fast)
        b_full = np.zeros(q)
        st, _cnd, _m, _ = K._solve_group(
            Xc,
            Yc,
            0,
            w,
            0,
            30,
            kidx,
            q,
            np.zeros(q, np.int64),
            xbar,
            ybar,
            A,
            rhs,
            W,
            xs,
            np.zeros(q),
            np.zeros((q, q)),
            np.zeros(q),
            np.zeros((q, q)),
            np.zeros(q),
            np.zeros(q),
            np.zeros(q, np.int64),
            np.zeros(q, np.bool_),
            np.zeros(q),
            np.zeros((q, q)),
            np.zeros((q, q)),
            b_full,
            fp,
        )
        if name == "ok":
            assert ok and st == OK
            np.testing.assert_array_equal(b_fast, b_full)
        else:
            assert not ok and st == SINGULAR, name


@pytest.mark.parametrize("p", [2, 3, 5])
def test_row_slice_tables_merge_to_one_table(p):
    # per-thread tables over slices of the rows, merged around one shift, equal the table of
    # all rows in one slice (1e12 offsets included: shifts are rows of the group)
    rng = np.random.default_rng(41 + p)
    G, n = 50, 3000
    codes = rng.integers(0, G, n).astype(np.int64)
    keep = rng.random(n) > 0.1
    X = rng.normal(size=(n, p)) * rng.uniform(0.1, 10, p) + rng.uniform(-100, 100, p)
    X[codes == 3, 0] += 1e12
    Y = (X @ rng.normal(size=p) + rng.normal(size=n)).reshape(-1, 1)
    w = rng.uniform(0.5, 2.0, n)
    width = K.ols_table_width(p)
    kernel = K._ols_suffstats_small if p <= 4 else K._ols_suffstats
    merged = {}
    for n_parts in (1, 3):
        tab = np.zeros((n_parts, G, width))
        kernel(codes, keep, X, Y, w, tab)
        acc = np.zeros(width)
        out = np.zeros((G, width))
        for g in range(G):
            K._ols_merge_parts(tab, g, p, acc)
            out[g] = acc
        merged[n_parts] = out
    one, three = merged[1], merged[3]
    np.testing.assert_array_equal(one[:, 0], three[:, 0])  # row counts exact
    # sums around the same shift (the group's first kept row) agree to rounding
    scale = np.abs(one).max(axis=0) + 1e-300
    np.testing.assert_allclose(three / scale, one / scale, rtol=0, atol=1e-12)
    # and the fits from them agree
    res1 = fit_groups(codes, X, Y[:, 0], w, selection=keep)
    ref = fit_groups(codes, X, np.c_[Y, Y], w, selection=keep)
    np.testing.assert_allclose(res1.coef[:, 0], ref.coef[:, 0], rtol=1e-9, atol=0)


def test_parallel_input_checks_match_numpy():
    rng = np.random.default_rng(43)
    n = 5000
    w = rng.uniform(0.0, 2.0, n)
    w[[17, 400, 4999]] = [np.nan, -1.0, np.inf]
    w[rng.random(n) < 0.1] = 0.0
    sel = rng.random(n) > 0.05
    sel[[17, 400, 4999]] = [False, True, True]
    for n_parts in (1, 3):
        keep = np.empty(n, bool)
        n_bad, first = K._check_weights(w, sel, keep, n_parts)
        np.testing.assert_array_equal(keep, sel & (w > 0))
        bad = sel & (~np.isfinite(w) | (w < 0))
        assert (n_bad, first) == (bad.sum(), np.flatnonzero(bad)[0])
    ids = rng.integers(-50, 300, n)
    for n_parts in (1, 3):
        lo, hi = K._id_range(ids, n_parts)
        assert (lo, hi) == (ids.min(), ids.max())
        codes = np.empty(n, np.int64)
        labels, sizes = K._dense_codes(ids, lo, np.zeros((n_parts, hi - lo + 1), np.int64), codes)
        ref_labels, ref_codes, ref_sizes = np.unique(ids, return_inverse=True, return_counts=True)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_array_equal(codes, ref_codes)
        np.testing.assert_array_equal(sizes, ref_sizes)
    # the public error message on a large input (parallel slices)
    g = np.zeros(200_000, np.int64)
    ww = np.ones(200_000)
    ww[150_001] = -2.0
    with pytest.raises(DataError, match=r"weights: 1 selected row\(s\) .*first at row 150001"):
        fit_groups(g, np.ones((200_000, 1)), np.zeros(200_000), ww)
