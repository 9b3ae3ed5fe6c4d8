"""Baselines for the group-by regression benchmark: what a competent user writes without our engine.

Every function fits one weighted linear model with intercept per group: coefficients
``(intercept, slope_1, ..., slope_p)``, float64, shape ``(G, p + 1)``, row ``k`` for group ``k``
(group ids are ``0 .. G-1``). The data are ``g`` (int64, shape (n,)), ``X`` (float64, (n, p)),
``y`` (float64, (n,)), ``w`` (float64 prior weights > 0, (n,)).

Strong, vectorised baselines (the ones the benchmark's ratios are against):

* :func:`numpy_ols` -- weighted group means, then the group-centred sufficient statistics
  ``X'WX`` and ``X'Wy`` of every group summed with ``np.bincount`` (one pass per entry), then
  one batched ``np.linalg.solve`` of the normal equations of all groups (LAPACK ``gesv`` per
  group, in numpy's C loop). :func:`numpy_ols_raw` (uncentred, 1e-4 errors on short groups)
  and :func:`numpy_ols_add_at` (uncentred, ``np.add.at``) are secondary.
* :func:`polars_ols` -- the same centred cross-products from polars (group means by
  ``group_by().agg``, joined back, then ``group_by("g").agg(sum(...))``; polars' own thread
  pool), then the same batched solve. :func:`polars_ols_raw` (uncentred, one ``agg``) is
  faster and less accurate on short groups.

Loops (the usual per-group code, kept as labelled secondary lines):

* :func:`statsmodels_wls_loop`, :func:`statsmodels_rlm_loop` and :func:`sklearn_huber_loop`
  take a :class:`GroupIndex` built *outside* the timed region (stable sort, group boundaries,
  the design matrix with its constant column).

Reference: :func:`lstsq_reference`, one ``np.linalg.lstsq`` (SVD) per group on the
``sqrt(w)``-scaled rows.

The Huber baselines use the engine's estimator (``training/groupby_regression.py``: IRLS with
weights ``w * min(1, c / |e|)``, ``e = r sqrt(w) / s``, ``s = 1.4826 median |r sqrt(w)|``
re-estimated every iteration, started from the WLS fit): statsmodels ``RLM(M=HuberT(t=c))``
with ``scale_est="mad"`` (centre 0, the same constant) on the ``sqrt(w)``-scaled rows is that
estimator exactly. RLM stops when every coefficient changes by ``<= tol`` (absolute); the engine
stops when the largest change is ``<= tol * max |coef|`` (relative).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


def _design(X: np.ndarray) -> np.ndarray:
    """``[1, X]``, shape (n, p + 1)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    return np.column_stack([np.ones(len(X)), X])


def solve_normal_equations(xtwx: np.ndarray, xtwy: np.ndarray) -> np.ndarray:
    """Batched solve of ``xtwx[k] @ beta[k] = xtwy[k]``.

    Parameters
    ----------
    xtwx : ndarray of float64, shape (G, q, q)
    xtwy : ndarray of float64, shape (G, q)

    Returns
    -------
    ndarray of float64, shape (G, q)

    Raises
    ------
    numpy.linalg.LinAlgError
        If any group's matrix is exactly singular (LAPACK ``gesv``).
    """
    return np.linalg.solve(xtwx, xtwy[..., None])[..., 0]


def numpy_ols(
    g: np.ndarray, X: np.ndarray, y: np.ndarray, w: np.ndarray, n_groups: int | None = None
) -> np.ndarray:
    """Vectorised weighted least squares of every group: centred ``np.bincount`` cross-products.

    Weighted group means of the predictors and the target (``np.bincount``), the centred
    cross-products ``Xc'WXc`` and ``Xc'Wyc`` per group (``np.bincount``, one pass per entry),
    one batched ``np.linalg.solve`` for the slopes, intercept ``ybar - xbar . b``. Centring
    within the group keeps the normal equations well conditioned (what a careful user does;
    :func:`numpy_ols_raw` skips it).

    Parameters
    ----------
    g : ndarray of int, shape (n,)
        Group ids ``0 .. G-1``; every group present with positive weight.
    X : ndarray of float64, shape (n, p)
    y, w : ndarray of float64, shape (n,)
    n_groups : int, optional
        ``G``; default ``g.max() + 1``.

    Returns
    -------
    ndarray of float64, shape (G, p + 1)
        Intercept and slopes per group.
    """
    G = int(g.max()) + 1 if n_groups is None else int(n_groups)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    p = X.shape[1]
    sw = np.bincount(g, weights=w, minlength=G)
    xbar = np.empty((G, p))
    xc = np.empty_like(X)
    for j in range(p):
        xbar[:, j] = np.bincount(g, weights=w * X[:, j], minlength=G) / sw
        xc[:, j] = X[:, j] - xbar[g, j]
    ybar = np.bincount(g, weights=w * y, minlength=G) / sw
    yc = y - ybar[g]
    xtwx = np.empty((G, p, p))
    xtwy = np.empty((G, p))
    for a in range(p):
        wxa = w * xc[:, a]
        xtwy[:, a] = np.bincount(g, weights=wxa * yc, minlength=G)
        for b in range(a, p):
            s = np.bincount(g, weights=wxa * xc[:, b], minlength=G)
            xtwx[:, a, b] = s
            xtwx[:, b, a] = s
    slopes = solve_normal_equations(xtwx, xtwy)
    return np.column_stack([ybar - np.einsum("gj,gj->g", xbar, slopes), slopes])


def numpy_ols_raw(
    g: np.ndarray, X: np.ndarray, y: np.ndarray, w: np.ndarray, n_groups: int | None = None
) -> np.ndarray:
    """Vectorised weighted least squares of every group from *raw* (uncentred) cross-products.

    ``np.bincount`` sums of ``w z_a z_b`` and ``w z_a y`` with ``z = (1, x)``, then the batched
    solve. Cheapest, but the uncentred normal equations lose digits when a predictor's mean is
    large against its spread within a group (here up to 1e-4 on 5-row groups, see the JSON).

    Parameters
    ----------
    g : ndarray of int, shape (n,)
        Group ids ``0 .. G-1``.
    X : ndarray of float64, shape (n, p)
    y, w : ndarray of float64, shape (n,)
    n_groups : int, optional
        ``G``; default ``g.max() + 1``.

    Returns
    -------
    ndarray of float64, shape (G, p + 1)
        Intercept and slopes per group.
    """
    G = int(g.max()) + 1 if n_groups is None else int(n_groups)
    Z = _design(X)
    q = Z.shape[1]
    xtwx = np.empty((G, q, q))
    xtwy = np.empty((G, q))
    for a in range(q):
        wza = w * Z[:, a]
        xtwy[:, a] = np.bincount(g, weights=wza * y, minlength=G)
        for b in range(a, q):
            s = np.bincount(g, weights=wza * Z[:, b], minlength=G)
            xtwx[:, a, b] = s
            xtwx[:, b, a] = s
    return solve_normal_equations(xtwx, xtwy)


def numpy_ols_add_at(
    g: np.ndarray, X: np.ndarray, y: np.ndarray, w: np.ndarray, n_groups: int | None = None
) -> np.ndarray:
    """As :func:`numpy_ols_raw`, with the cross-products summed by one ``np.add.at`` call.

    Parameters and returns as :func:`numpy_ols`.
    """
    G = int(g.max()) + 1 if n_groups is None else int(n_groups)
    Z = _design(X)
    q = Z.shape[1]
    wz = Z * w[:, None]
    xtwx = np.zeros((G, q, q))
    np.add.at(xtwx, g, wz[:, :, None] * Z[:, None, :])
    xtwy = np.zeros((G, q))
    np.add.at(xtwy, g, wz * y[:, None])
    return solve_normal_equations(xtwx, xtwy)


def polars_frame(g: np.ndarray, X: np.ndarray, y: np.ndarray, w: np.ndarray):
    """The data as a polars DataFrame with columns ``g, x0 .. x{p-1}, y, w`` (the user's input)."""
    import polars as pl

    X = np.asarray(X, dtype=np.float64)
    cols = {"g": g}
    cols.update({f"x{j}": X[:, j] for j in range(X.shape[1])})
    cols.update({"y": y, "w": w})
    return pl.DataFrame(cols)


def _polars_solve(out, p: int, centred: bool) -> np.ndarray:
    G = out.height
    q = p if centred else p + 1
    xtwx = np.empty((G, q, q))
    xtwy = np.empty((G, q))
    for a in range(q):
        xtwy[:, a] = out[f"b{a}"].to_numpy()
        for b in range(a, q):
            s = out[f"a{a}_{b}"].to_numpy()
            xtwx[:, a, b] = s
            xtwx[:, b, a] = s
    beta = solve_normal_equations(xtwx, xtwy)
    if not centred:
        return beta
    xbar = np.column_stack([out[f"m_x{j}"].to_numpy() for j in range(p)])
    return np.column_stack([out["m_y"].to_numpy() - np.einsum("gj,gj->g", xbar, beta), beta])


def polars_ols_raw(df, p: int) -> np.ndarray:
    """Vectorised weighted least squares per group from a polars frame, uncentred.

    The raw cross-products ``w z_a z_b``, ``w z_a y`` (``z = (1, x)``) summed by
    ``group_by("g").agg``, then the batched solve of :func:`numpy_ols`. Fastest polars form;
    loses digits on short groups as :func:`numpy_ols_raw` does.

    Parameters
    ----------
    df : polars.DataFrame
        From :func:`polars_frame`; groups ``0 .. G-1`` all present.
    p : int
        Number of predictors.

    Returns
    -------
    ndarray of float64, shape (G, p + 1)
    """
    import polars as pl

    z = [pl.lit(1.0)] + [pl.col(f"x{j}") for j in range(p)]
    w = pl.col("w")
    aggs = []
    for a in range(p + 1):
        aggs += [(w * z[a] * z[b]).sum().alias(f"a{a}_{b}") for b in range(a, p + 1)]
        aggs.append((w * z[a] * pl.col("y")).sum().alias(f"b{a}"))
    return _polars_solve(df.group_by("g").agg(aggs).sort("g"), p, centred=False)


def polars_ols(df, p: int) -> np.ndarray:
    """Vectorised weighted least squares per group from a polars frame, group-centred.

    Weighted group means by one ``group_by("g").agg``, joined back; the centred
    cross-products summed by a second ``group_by("g").agg``; then the batched solve of
    :func:`numpy_ols`. (Window expressions ``over("g")`` and centring inside the aggregation
    were 2x and 2-4x slower here.)

    Parameters
    ----------
    df : polars.DataFrame
        From :func:`polars_frame`; groups ``0 .. G-1`` all present.
    p : int
        Number of predictors.

    Returns
    -------
    ndarray of float64, shape (G, p + 1)
    """
    import polars as pl

    w = pl.col("w")
    names = [f"x{j}" for j in range(p)] + ["y"]
    means = df.group_by("g").agg([((w * pl.col(c)).sum() / w.sum()).alias(f"m_{c}") for c in names])
    d = df.join(means, on="g").with_columns(
        [(pl.col(c) - pl.col(f"m_{c}")).alias(f"c_{c}") for c in names]
    )
    aggs = [pl.col(f"m_{c}").first() for c in names]
    for a in range(p):
        aggs += [
            (w * pl.col(f"c_x{a}") * pl.col(f"c_x{b}")).sum().alias(f"a{a}_{b}")
            for b in range(a, p)
        ]
        aggs.append((w * pl.col(f"c_x{a}") * pl.col("c_y")).sum().alias(f"b{a}"))
    return _polars_solve(d.group_by("g").agg(aggs).sort("g"), p, centred=True)


def lstsq_reference(g: np.ndarray, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-group ``np.linalg.lstsq`` (SVD) on the ``sqrt(w)``-scaled rows: the reference.

    Returns
    -------
    ndarray of float64, shape (G, p + 1), G = ``g.max() + 1``
    """
    idx = GroupIndex.build(g, X, y, w)
    out = np.full((idx.n_groups, idx.Z.shape[1]), np.nan)
    for k in range(idx.n_groups):
        s = slice(idx.bounds[k], idx.bounds[k + 1])
        sw = np.sqrt(idx.w[s])
        out[k] = np.linalg.lstsq(idx.Z[s] * sw[:, None], idx.y[s] * sw, rcond=None)[0]
    return out


@dataclass(frozen=True)
class GroupIndex:
    """Rows sorted by group (stable), with group boundaries: the set-up of a per-group loop.

    Attributes
    ----------
    Z : ndarray of float64, shape (n, p + 1)
        Design matrix (constant column first), rows in group order.
    y, w : ndarray of float64, shape (n,)
        Target and weights in group order.
    bounds : ndarray of int64, shape (G + 1,)
        Group ``k`` is rows ``bounds[k]:bounds[k + 1]``.
    """

    Z: np.ndarray
    y: np.ndarray
    w: np.ndarray
    bounds: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.bounds) - 1

    @classmethod
    def build(cls, g, X, y, w) -> GroupIndex:
        order = np.argsort(g, kind="stable")
        G = int(g.max()) + 1
        bounds = np.searchsorted(g[order], np.arange(G + 1))
        return cls(_design(X)[order], np.asarray(y)[order], np.asarray(w)[order], bounds)


def statsmodels_wls_loop(idx: GroupIndex, groups: np.ndarray) -> np.ndarray:
    """statsmodels ``WLS(y, Z, weights=w).fit().params`` for each of ``groups``.

    Returns
    -------
    ndarray of float64, shape (len(groups), p + 1)
    """
    import statsmodels.api as sm

    out = np.empty((len(groups), idx.Z.shape[1]))
    for i, k in enumerate(groups):
        s = slice(idx.bounds[k], idx.bounds[k + 1])
        out[i] = sm.WLS(idx.y[s], idx.Z[s], weights=idx.w[s]).fit().params
    return out


def statsmodels_rlm_loop(
    idx: GroupIndex,
    groups: np.ndarray,
    *,
    huber_c: float = 1.345,
    tol: float = 1e-8,
    maxiter: int = 50,
) -> np.ndarray:
    """statsmodels ``RLM(M=HuberT(t=huber_c)).fit(scale_est="mad")`` per group, the engine's
    weighted Huber estimator (rows scaled by ``sqrt(w)``; see the module docstring).

    Returns
    -------
    ndarray of float64, shape (len(groups), p + 1)
    """
    import statsmodels.api as sm

    norm = sm.robust.norms.HuberT(t=huber_c)
    out = np.empty((len(groups), idx.Z.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, k in enumerate(groups):
            s = slice(idx.bounds[k], idx.bounds[k + 1])
            sw = np.sqrt(idx.w[s])
            r = sm.RLM(idx.y[s] * sw, idx.Z[s] * sw[:, None], M=norm).fit(
                scale_est="mad", conv="coefs", tol=tol, maxiter=maxiter
            )
            out[i] = r.params
    return out


def sklearn_huber_loop(idx: GroupIndex, groups: np.ndarray) -> np.ndarray:
    """scikit-learn ``HuberRegressor(tol=1e-4, max_iter=200)`` per group, with sample weights.

    A different estimator (scale estimated jointly with the coefficients, L2 penalty
    ``alpha=1e-4``, epsilon 1.35), kept as a secondary line.

    Returns
    -------
    ndarray of float64, shape (len(groups), p + 1)
    """
    from sklearn.linear_model import HuberRegressor

    out = np.empty((len(groups), idx.Z.shape[1]))
    for i, k in enumerate(groups):
        s = slice(idx.bounds[k], idx.bounds[k + 1])
        m = HuberRegressor(tol=1e-4, max_iter=200).fit(
            idx.Z[s, 1:], idx.y[s], sample_weight=idx.w[s]
        )
        out[i] = np.r_[m.intercept_, m.coef_]
    return out
