"""Reference tests of the group-by GLMs (``fit_groups(family="binomial" | "poisson")``).

References: statsmodels ``GLM`` (Binomial, Poisson; IRLS to tol 1e-13) for coefficients, Fisher
standard errors and deviance (rtol 1e-6), scikit-learn ``LogisticRegression(penalty=None)`` (spelt ``C=inf``)
(Newton-Cholesky, tol 1e-12; rtol 1e-5), ``scipy.optimize.minimize`` with bounds for the
sign-constrained maximum likelihood (rtol 1e-4).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

from segstream.shared.errors import DataError
from segstream.training.groupby_regression import STATUS_CODES, fit_groups

OK = STATUS_CODES["ok"]


def _design(rng, sizes, p=3):
    g = np.repeat(np.arange(len(sizes)), sizes)
    n = g.size
    X = rng.normal(size=(n, p)) * np.array([1.0, 10.0, 0.1])[:p] + np.array([0.0, 100.0, 5.0])[:p]
    Xs = (X - np.array([0.0, 100.0, 5.0])[:p]) / np.array([1.0, 10.0, 0.1])[:p]
    beta = rng.normal(size=(len(sizes), p + 1)) * 0.5
    eta_std = beta[g, 0] + np.einsum("ij,ij->i", Xs, beta[g, 1:])
    perm = rng.permutation(n)
    return g[perm], X[perm], eta_std[perm]


def _sm_fit(y, X, family, w=None, offset=None):
    m = sm.GLM(
        y,
        sm.add_constant(X, has_constant="add"),
        family=family,
        var_weights=w,
        offset=offset,
    )
    return m.fit(tol=1e-13, maxiter=200)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("with_offset", [False, True])
def test_binomial_matches_statsmodels_glm(weighted, with_offset):
    rng = np.random.default_rng(1)
    sizes = [40, 80, 300, 1000, 60]
    g, X, eta = _design(rng, sizes)
    off = rng.normal(scale=0.5, size=g.size) if with_offset else None
    y = (rng.random(g.size) < 1.0 / (1.0 + np.exp(-(eta + (off if off is not None else 0))))) * 1.0
    w = rng.uniform(0.2, 3.0, size=g.size) if weighted else None
    res = fit_groups(g, X, y, w, family="binomial", offset=off)
    assert res.family == "binomial"
    for k in range(len(sizes)):
        m = g == k
        ref = _sm_fit(
            y[m],
            X[m],
            sm.families.Binomial(),
            None if w is None else w[m],
            None if off is None else off[m],
        )
        assert res.status[k, 0] == OK
        np.testing.assert_allclose(res.coef[k, 0], ref.params, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(res.stderr[k, 0], ref.bse, rtol=1e-6)
        np.testing.assert_allclose(res.deviance[k, 0], ref.deviance, rtol=1e-9)
        # fitted probabilities through the result's own predict (inverse link)
        pred = res.predict(g[m], X[m], offset=None if off is None else off[m])
        np.testing.assert_allclose(pred, ref.fittedvalues, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_poisson_with_log_exposure_matches_statsmodels_glm(weighted):
    rng = np.random.default_rng(2)
    sizes = [30, 200, 1500]
    g, X, eta = _design(rng, sizes)
    exposure = rng.uniform(0.1, 5.0, size=g.size)
    y = rng.poisson(exposure * np.exp(0.3 * eta + 0.5)).astype(float)
    w = rng.uniform(0.5, 2.0, size=g.size) if weighted else None
    res = fit_groups(g, X, y, w, family="poisson", offset=np.log(exposure))
    for k in range(len(sizes)):
        m = g == k
        ref = _sm_fit(
            y[m], X[m], sm.families.Poisson(), None if w is None else w[m], np.log(exposure[m])
        )
        assert res.status[k, 0] == OK
        np.testing.assert_allclose(res.coef[k, 0], ref.params, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(res.stderr[k, 0], ref.bse, rtol=1e-6)
        np.testing.assert_allclose(res.deviance[k, 0], ref.deviance, rtol=1e-9)
        assert res.n_events[k, 0, 1] == y[m].sum()


def test_binomial_matches_sklearn_logistic_regression_unpenalised():
    rng = np.random.default_rng(3)
    sizes = [150, 400, 900]
    g, X, eta = _design(rng, sizes)
    y = (rng.random(g.size) < 1.0 / (1.0 + np.exp(-eta))) * 1.0
    w = rng.uniform(0.5, 2.0, size=g.size)
    res = fit_groups(g, X, y, w, family="binomial")
    for k in range(len(sizes)):
        m = g == k
        Xs = (X[m] - X[m].mean(0)) / X[m].std(0)  # the solver's own scaling, undone below
        # C=inf is penalty=None (the spelling scikit-learn 1.8+ asks for)
        lr = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=200)
        lr.fit(Xs, y[m], sample_weight=w[m])
        slopes = lr.coef_[0] / X[m].std(0)
        icpt = lr.intercept_[0] - np.sum(slopes * X[m].mean(0))
        np.testing.assert_allclose(res.coef[k, 0, 1:], slopes, rtol=1e-5)
        np.testing.assert_allclose(res.coef[k, 0, 0], icpt, rtol=1e-5)


def test_complete_and_quasi_complete_separation_are_reported_nan():
    rng = np.random.default_rng(4)
    # group 0: complete separation on x0; group 1: quasi-complete (ties at the boundary);
    # group 2: overlapping classes (a finite MLE)
    x0 = np.linspace(-2, 2, 40)
    x1 = rng.normal(size=40)
    y0 = (x0 > 0).astype(float)
    xq = np.r_[np.linspace(-2, 0, 20), np.linspace(0, 2, 20)]
    yq = np.r_[np.zeros(20), np.ones(20)]
    yq[19] = 1.0  # x = 0 with both outcomes: quasi-complete
    x2 = rng.normal(size=60)
    y2 = (rng.random(60) < 1 / (1 + np.exp(-x2))).astype(float)
    g = np.repeat([0, 1, 2], [40, 40, 60])
    X = np.c_[np.r_[x0, xq, x2], np.r_[x1, rng.normal(size=40), rng.normal(size=60)]]
    y = np.r_[y0, yq, y2]
    res = fit_groups(g, X, y, family="binomial")
    names = res.status_names()[:, 0].tolist()
    assert names == ["separation", "separation", "ok"]
    assert np.isnan(res.coef[:2]).all() and np.isnan(res.stderr[:2]).all()
    assert np.isfinite(res.coef[2]).all()
    assert not np.isinf(res.coef).any()


def test_poisson_zero_counts_in_a_subspace_are_separation():
    # every positive count is at x = -1 and every other row has count 0: the log-mean of the
    # rows with x > -1 can go to -inf (direction (-1, -1) of (intercept, slope))
    x = np.r_[np.full(5, -1.0), np.linspace(-0.5, 1.0, 30)]
    y = np.r_[[1.0, 3.0, 2.0, 4.0, 2.0], np.zeros(30)]
    res = fit_groups(np.zeros(35, np.int64), x, y, family="poisson")
    assert res.status_names()[0, 0] == "separation"
    assert np.isnan(res.coef[0, 0]).all()
    # with counts spread over several x the estimate exists
    y2 = y.copy()
    y2[10] = 1.0
    assert fit_groups(np.zeros(35, np.int64), x, y2, family="poisson").status[0, 0] == OK


def test_one_class_and_too_few_events():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(90, 2))
    g = np.repeat([0, 1, 2], 30)
    y = np.zeros(90)
    y[30:32] = 1.0  # group 1: 2 events < 3 parameters
    y[60:75] = 1.0  # group 2: fine
    res = fit_groups(g, x, y, family="binomial")
    assert res.status_names()[:, 0].tolist() == ["one_class", "too_few_events", "ok"]
    assert np.isnan(res.coef[:2]).all()
    assert res.n_events[1, 0].tolist() == [28.0, 2.0]
    # the threshold is a parameter
    res2 = fit_groups(g, x, y, family="binomial", min_events=1)
    assert res2.status_names()[1, 0] in ("ok", "separation")
    # Poisson: every count 0 is one_class, a total count below min_events too_few_events
    yc = np.zeros(90)
    yc[30] = 2.0
    yc[60:] = rng.poisson(3.0, size=30)
    resp = fit_groups(g, x, yc, family="poisson", min_events=5)
    assert resp.status_names()[:, 0].tolist() == ["one_class", "too_few_events", "ok"]


def test_sign_constraints_match_bounded_maximum_likelihood():
    rng = np.random.default_rng(6)
    n = 400
    X = rng.normal(size=(n, 2))
    eta = 0.3 - 1.0 * X[:, 0] + 0.8 * X[:, 1]
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    g = np.zeros(n, np.int64)
    res = fit_groups(g, X, y, family="binomial", sign=["+", None])

    def nll(b):
        e = b[0] + X @ b[1:]
        return np.sum(np.logaddexp(0.0, e) - y * e)

    def grad(b):
        mu = 1 / (1 + np.exp(-(b[0] + X @ b[1:])))
        r = mu - y
        return np.r_[r.sum(), X.T @ r]

    ref = minimize(
        nll,
        np.zeros(3),
        jac=grad,
        bounds=[(None, None), (0.0, None), (None, None)],
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    assert res.status[0, 0] == OK
    assert res.coef[0, 0, 1] == 0.0 and np.isnan(res.stderr[0, 0, 1])
    np.testing.assert_allclose(res.coef[0, 0, [0, 2]], ref.x[[0, 2]], rtol=1e-4)
    # the free-slope model's SEs: those of the GLM without the pinned predictor
    sm_ref = _sm_fit(y, X[:, 1:], sm.families.Binomial())
    np.testing.assert_allclose(res.stderr[0, 0, [0, 2]], sm_ref.bse, rtol=1e-6)


def test_min_stat_drops_a_predictor_and_fits_the_rest():
    rng = np.random.default_rng(7)
    n = 300
    X = rng.normal(size=(n, 2))
    X[5:, 1] = np.nan  # only 5 rows observe x1
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.2 + X[:, 0])))).astype(float)
    res = fit_groups(np.zeros(n, np.int64), X, y, family="binomial", min_stat=[10, 10])
    assert np.isnan(res.coef[0, 0, 2])
    ref = _sm_fit(y, X[:, :1], sm.families.Binomial())
    np.testing.assert_allclose(res.coef[0, 0, :2], ref.params, rtol=1e-6)


def test_thin_leaf_falls_back_to_its_fitted_parent():
    rng = np.random.default_rng(8)
    # tree: 0 root; 1, 2 leaves. leaf 2 has one class only
    parent = np.array([-1, 0, 0])
    n1, n2 = 300, 40
    x = rng.normal(size=n1 + n2)
    y = np.r_[(rng.random(n1) < 1 / (1 + np.exp(-x[:n1]))) * 1.0, np.zeros(n2)]
    leaf = np.r_[np.ones(n1, np.int64), np.full(n2, 2)]
    res = fit_groups(leaf, x, y, family="binomial", parent=parent)
    assert res.groups.tolist() == [0, 1, 2]
    assert res.status_names()[:, 0].tolist() == ["ok", "ok", "one_class"]
    assert res.fallback_index().tolist() == [0, 1, 0]
    # the root is the GLM of the union of its leaves' rows
    ref = _sm_fit(y, x, sm.families.Binomial())
    np.testing.assert_allclose(res.coef[0, 0], ref.params, rtol=1e-6)
    # predictions of the leaf's rows come from the root, probabilities in (0, 1)
    fb = res.fallback_index()[res.group_index(leaf)]
    pred = res.predict(res.groups[fb], x)
    assert np.all((pred > 0) & (pred < 1))


def test_export_is_a_separate_glm_component():
    rng = np.random.default_rng(9)
    g, X, eta = _design(rng, [100, 100])
    y = (rng.random(g.size) < 1 / (1 + np.exp(-eta))) * 1.0
    comp = fit_groups(g, X, y, family="binomial").export()
    # the identity-link scorer refuses it (kind), the meta names family and link
    assert comp.kind == "segment_glms"
    assert comp.meta["family"] == "binomial" and comp.meta["link"] == "logit"
    assert comp.arrays["deviance"].shape == (2, 1)
    assert comp.meta["status_codes"]["separation"] == STATUS_CODES["separation"]


def test_bad_targets_and_options_raise_one_line_errors():
    g = np.zeros(6, np.int64)
    x = np.arange(6.0)
    with pytest.raises(ValueError, match=r"binomial.*found \[0\.5, 2\.0\]"):
        fit_groups(g, x, np.array([0, 1, 0.5, 2, 1, np.nan]), family="binomial")
    with pytest.raises(ValueError, match=r"poisson.*found \[-2\.0, -1\.0\]"):
        fit_groups(g, x, np.array([0, 1, -1, 2, -2, 3.0]), family="poisson")
    with pytest.raises(ValueError, match="family"):
        fit_groups(g, x, np.zeros(6), family="gamma")
    with pytest.raises(ValueError, match="method"):
        fit_groups(g, x, np.zeros(6), family="binomial", method="huber")
    with pytest.raises(ValueError, match="shrinkage"):
        fit_groups(g, x, np.zeros(6), family="binomial", parent=np.array([-1]), shrinkage="eb")
    with pytest.raises(DataError, match="offset"):
        fit_groups(g, x, np.zeros(6), family="poisson", offset=np.zeros(5))
    # a row outside the selection may hold anything
    y = np.array([0, 1, 0, 1, 1, 7.0])
    sel = np.array([True] * 5 + [False])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_groups(g, x, y, family="binomial", selection=sel, min_events=1)


def test_statuses_and_nan_invariants_on_random_groups():
    rng = np.random.default_rng(10)
    sizes = rng.integers(1, 60, size=200)
    g, X, eta = _design(rng, sizes, p=2)
    y = (rng.random(g.size) < 1 / (1 + np.exp(-2 * eta))) * 1.0
    X[rng.random(X.shape) < 0.02] = np.nan
    res = fit_groups(g, X, y, family="binomial", min_events=1)
    names = res.status_names()[:, 0]
    fitted = np.isin(names, ["ok", "not_converged"])
    # finite coefficients exactly where fitted, NaN elsewhere; never infinite
    assert np.isfinite(res.coef[fitted, 0]).all()
    assert np.isnan(res.coef[~fitted, 0]).all()
    assert not np.isinf(res.coef).any()
    # every "ok" group agrees with statsmodels on its usable rows
    for k in np.flatnonzero(names == "ok")[:25]:
        m = (g == k) & np.isfinite(X).all(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = _sm_fit(y[m], X[m], sm.families.Binomial())
        np.testing.assert_allclose(res.coef[k, 0], ref.params, rtol=1e-5, atol=1e-8)
    assert set(names) >= {"ok", "one_class"}


def _two_leaf_tree(rng, n1=400, n2=60):
    parent = np.array([-1, 0, 0])
    x = rng.normal(size=n1 + n2)
    eta = np.r_[0.5 + 1.0 * x[:n1], -0.5 + 0.2 * x[n1:]]
    y = (rng.random(n1 + n2) < 1 / (1 + np.exp(-eta))) * 1.0
    leaf = np.r_[np.ones(n1, np.int64), np.full(n2, 2)]
    return parent, leaf, x, y


def test_shrinkage_limits_and_monotone_pull_toward_parent():
    rng = np.random.default_rng(11)
    parent, leaf, x, y = _two_leaf_tree(rng)
    free = fit_groups(leaf, x, y, family="binomial", parent=parent)
    tiny = fit_groups(leaf, x, y, family="binomial", parent=parent, shrinkage=1e-9)
    huge = fit_groups(leaf, x, y, family="binomial", parent=parent, shrinkage=1e9)
    mid = fit_groups(leaf, x, y, family="binomial", parent=parent, shrinkage=50.0)
    # the root is never shrunk; lambda -> 0 is the independent fit, lambda -> inf the parent
    np.testing.assert_allclose(huge.coef[0], free.coef[0], rtol=1e-12)
    np.testing.assert_allclose(tiny.coef[1:], free.coef[1:], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(huge.coef[2, 0], free.coef[0, 0], rtol=1e-5, atol=1e-6)
    # in between, the thin leaf's slope moves toward the parent's, but not all the way
    d_free = abs(free.coef[2, 0, 1] - free.coef[0, 0, 1])
    d_mid = abs(mid.coef[2, 0, 1] - free.coef[0, 0, 1])
    assert 0.05 * d_free < d_mid < 0.95 * d_free
    assert mid.status_names()[:, 0].tolist() == ["ok", "ok", "ok"]
    # posterior standard errors shrink too
    assert mid.stderr[2, 0, 1] < free.stderr[2, 0, 1]


def test_shrinkage_gives_one_class_leaf_a_pooled_finite_fit():
    rng = np.random.default_rng(12)
    parent, leaf, x, y = _two_leaf_tree(rng)
    y[leaf == 2] = 0.0
    res = fit_groups(leaf, x, y, family="binomial", parent=parent, shrinkage=20.0)
    assert res.status_names()[:, 0].tolist() == ["ok", "ok", "pooled"]
    assert np.isfinite(res.coef[2, 0]).all()
    # a leaf with no events gets a probability below its parent's at the same x
    assert res.predict([2], [0.0])[0] < res.predict([0], [0.0])[0]
    assert res.fallback_index(serve=("ok", "pooled")).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="eb"):
        fit_groups(leaf, x, y, family="binomial", parent=parent, shrinkage="eb")


def test_gaussian_offset_is_fitting_y_minus_offset_and_multiple_targets():
    rng = np.random.default_rng(13)
    g, X, eta = _design(rng, [50, 70])
    off = rng.normal(size=g.size)
    y = eta + rng.normal(size=g.size)
    a = fit_groups(g, X, y, offset=off)
    b = fit_groups(g, X, y - off)
    np.testing.assert_array_equal(a.coef, b.coef)
    # two binomial targets are fitted independently, each like a single-target fit
    y1 = (rng.random(g.size) < 1 / (1 + np.exp(-eta))) * 1.0
    y2 = (rng.random(g.size) < 0.3) * 1.0
    both = fit_groups(g, X, np.c_[y1, y2], family="binomial")
    one = fit_groups(g, X, y2, family="binomial")
    np.testing.assert_allclose(both.coef[:, 1], one.coef[:, 0], rtol=1e-12)
    np.testing.assert_allclose(both.stderr[:, 1], one.stderr[:, 0], rtol=1e-12)
