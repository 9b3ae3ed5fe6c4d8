"""Group-by generalised linear models: the IRLS driver behind ``fit_groups(family=...)``.

Per-segment weighted logistic regression (binomial, logit link) and Poisson regression (log
link), all segments at once, by iteratively reweighted least squares (IRLS; McCullagh &
Nelder 1989, sec. 2.5) on the numba group-by engine: rows are laid out group by group once
(the engine's counting sort), then every iteration is

1. ``_groupby_kernels._glm_accumulate``: one parallel pass over the rows of the groups still
   iterating; each row's working weight and working response at the current coefficients and,
   per group, the engine's centred weighted sufficient statistics (``_stats``) of the working
   response on the kept predictors, the deviance and the count of rows fitted at the edge
   (``|eta| > 11.5``: a probability within 1e-5 of 0 or 1, a Poisson mean below 1e-5);
2. ``_groupby_kernels._glm_update``: per group, from those statistics only (plus the group's
   working rows for the QR fallback of ill-conditioned groups): step halving when the
   deviance rose, the linear path's solve (``_solve_group``: Jacobi-scaled Cholesky, QR
   fallback, sign-constrained active-set NNLS), and the Newton-decrement convergence test.

The statistics of step 1 are sums over rows, so an engine over chunks of rows can run it per
chunk and merge before step 2. Groups that stop at the edge (fitted values at 0/1, singular
working problem) are checked exactly for (quasi-)complete separation by linear programming
(Konis 2007; ``scipy.optimize.linprog``, HiGHS) and get status ``separation`` with NaN
coefficients when the maximum-likelihood estimate does not exist.

References
----------
.. [1] P. McCullagh and J. A. Nelder, *Generalized Linear Models*, 2nd ed., Chapman & Hall
   (1989), sec. 2.5 (IRLS), sec. 4.4 (binomial), sec. 6.2 (Poisson).
.. [2] A. Albert and J. A. Anderson, "On the existence of maximum likelihood estimates in
   logistic regression models", Biometrika 71 (1984) (complete and quasi-complete separation).
.. [3] K. Konis, *Linear programming algorithms for detecting separated data in binary
   logistic regression models*, DPhil thesis, University of Oxford (2007).
.. [4] statsmodels ``GLM`` (``statsmodels.genmod.generalized_linear_model``): the reference
   implementation the tests compare with.
"""

from __future__ import annotations

import logging

import numpy as np

from segstream.training import _groupby_kernels as _lk
from segstream.training import glm_kernels as _k

logger = logging.getLogger(__name__)

FAMILIES: dict[str, int] = {
    "gaussian": _k.FAMILY_GAUSSIAN,
    "binomial": _k.FAMILY_BINOMIAL,
    "poisson": _k.FAMILY_POISSON,
}
SLOW_ITER = 10
_NAN_STATUSES = (
    _k.TOO_FEW_ROWS,
    _k.SINGULAR,
    _k.SEPARATION,
    _k.ONE_CLASS,
    _k.TOO_FEW_EVENTS,
)


def check_glm_target(ya: np.ndarray, keep: np.ndarray, family: str) -> None:
    """Raise ``ValueError`` naming the offending values when a target does not fit the family.

    Parameters
    ----------
    ya : ndarray of float64, shape (n, T)
    keep : ndarray of bool, shape (n,)
        Rows that take part in a fit (selected, weight > 0); NaN targets are missing values.
    family : {"binomial", "poisson"}

    Raises
    ------
    ValueError
        binomial: a finite outcome other than 0 or 1; poisson: a negative count or an
        infinite value.
    """
    yk = ya[keep]
    if family == "binomial":
        bad = yk[~np.isnan(yk) & (yk != 0.0) & (yk != 1.0)]
        if bad.size:
            vals = np.unique(bad)
            raise ValueError(
                f"y: family='binomial' needs outcomes 0 or 1 (NaN = missing), found "
                f"{vals[:5].tolist()}{' ...' if vals.size > 5 else ''} in {bad.size} row(s)"
            )
    elif family == "poisson":
        bad = yk[~np.isnan(yk) & ~((yk >= 0.0) & np.isfinite(yk))]
        if bad.size:
            vals = np.unique(bad)
            raise ValueError(
                f"y: family='poisson' needs counts >= 0 (NaN = missing), found "
                f"{vals[:5].tolist()}{' ...' if vals.size > 5 else ''} in {bad.size} row(s)"
            )


def _lp_block(M: np.ndarray, y: np.ndarray, family: int):
    """One group's part of the separation LP (Konis 2007): ``(c, A_ub, A_eq)`` over the
    coefficients ``b`` (intercept + the kept predictors, centred and scaled to max |x| = 1),
    bounds ``|b| <= 1``, ``A_ub b <= 0``, ``A_eq b = 0``, minimise ``c'b``; the maximum-
    likelihood estimate does not exist when the minimum is below 0.

    Binomial: (quasi-)complete separation, some ``b != 0`` with ``(2y - 1) x'b >= 0`` on every
    row and ``> 0`` on one: minimise ``-sum (2y - 1) x'b``. Poisson: some direction with
    ``x'b = 0`` on the rows with a positive count and ``x'b <= 0`` on the zero counts, ``< 0``
    on one (those can be fitted with mean -> 0): minimise ``sum_{y=0} x'b``.
    """
    C = M - M.mean(axis=0)
    sd = np.abs(C).max(axis=0) if C.shape[0] else np.zeros(C.shape[1])
    live = sd > 0
    B = np.column_stack([np.ones(M.shape[0]), C[:, live] / sd[live]])
    if family == _k.FAMILY_BINOMIAL:
        SB = np.where(y > 0.5, 1.0, -1.0)[:, None] * B
        return -SB.sum(axis=0), -SB, np.zeros((0, B.shape[1]))
    zero = y <= 0.0
    return B[zero].sum(axis=0), B[zero], B[~zero]


def separated(blocks: list[tuple[np.ndarray, np.ndarray]], family: int) -> np.ndarray:
    """Exact check, for each group, that its maximum-likelihood estimate does not exist.

    All groups are solved as one block-diagonal linear program (one ``scipy.optimize.linprog``
    call, HiGHS): the objective is a sum of independent parts, so each block of the optimum is
    optimal for its own group.

    Parameters
    ----------
    blocks : list of (ndarray (m, q) float64, ndarray (m,) float64)
        Each group's usable rows of its kept predictors and their outcomes/counts.
    family : int
        ``FAMILY_BINOMIAL`` or ``FAMILY_POISSON``.

    Returns
    -------
    ndarray of bool, shape (len(blocks),)

    References
    ----------
    K. Konis (2007), see the module docstring; A. Albert and J. A. Anderson (1984).
    """
    from scipy import sparse
    from scipy.optimize import linprog

    if not blocks:
        return np.zeros(0, bool)
    parts = [_lp_block(M, y, family) for M, y in blocks]
    c = np.concatenate([p[0] for p in parts])
    A_ub = sparse.block_diag([p[1] for p in parts], format="csr")
    A_eq = sparse.block_diag([p[2] for p in parts], format="csr")
    has_eq = A_eq.shape[0] > 0
    res = linprog(
        c,
        A_ub=A_ub,
        b_ub=np.zeros(A_ub.shape[0]),
        A_eq=A_eq if has_eq else None,
        b_eq=np.zeros(A_eq.shape[0]) if has_eq else None,
        bounds=(-1.0, 1.0),
        method="highs",
    )
    if res.status != 0:  # pragma: no cover - the LP is always feasible (b = 0) and bounded
        raise RuntimeError(f"separation check: linprog failed: {res.message}")
    out = np.empty(len(parts), bool)
    pos = 0
    for i, p in enumerate(parts):
        k = p[0].shape[0]
        out[i] = -float(c[pos : pos + k] @ res.x[pos : pos + k]) > 1e-6 * max(
            1, blocks[i][0].shape[0]
        )
        pos += k
    return out


def _shrink_levels(
    lam, fam, pidx, depth, max_iter, tol, Xg, Yg, Og, Wg, offsets, t, n_chunks, kept, valid,
    n_used, ct, se_t, stt, Z, weff,
) -> np.ndarray:  # fmt: skip
    """Partial pooling toward the parent by penalised IRLS, level by level from the root.

    Every node of depth ``d >= 1`` with usable rows and a fitted parent minimises
    ``deviance / 2 + sum_j Lambda_j (theta_j - theta_parent_j)^2 / 2`` over the coefficients
    of its linear predictor, in the linear path's parametrisation ``theta = (c, b)`` (``c``:
    linear predictor at the node's working-weighted mean of the predictors, ``b``: slopes).
    Each IRLS iteration is the engine's accumulate pass followed by the linear path's
    penalised solve (``_groupby_kernels._shrink_topdown`` on the working statistics, weights
    known: ``sigma^2 = 1``), from the node's own fit (or its parent's when it has none), until
    the largest coefficient change is ``<= tol`` times the largest coefficient. ``Lambda_c =
    lam * wbar``, ``Lambda_bj = lam * wbar * var_w(x_j)``: the parent counts as ``lam`` rows of
    average information (``wbar`` = mean prior weight times ``p (1 - p)``, binomial, or times
    the mean count, Poisson, over the roots' rows). Nodes that had no fit of their own become
    ``pooled``. Returns the mask of the refitted nodes; ``ct``, ``se_t`` (posterior standard
    errors ``sqrt(diag((X'WX + Lambda)^-1))``) and ``stt`` are updated in place.
    """
    G, k = ct.shape
    p = k - 1
    sizes = np.diff(offsets)
    root_rows = np.repeat(depth == 0, sizes) & valid
    wr = Wg[root_rows]
    yr = Yg[root_rows, t]
    mean_w = float(wr.mean()) if wr.size else 1.0
    if fam == _k.FAMILY_BINOMIAL:
        pi = float(np.average(yr, weights=wr)) if wr.size else 0.5
        wbar = mean_w * pi * (1.0 - pi)
    else:
        wbar = mean_w * (float(np.average(yr, weights=wr)) if wr.size else 1.0)
    var = np.zeros(p)
    for j in range(p):
        xj = Xg[root_rows, j]
        fin = np.isfinite(xj)
        if fin.any() and wr[fin].sum() > 0:
            mu = np.average(xj[fin], weights=wr[fin])
            var[j] = np.average((xj[fin] - mu) ** 2, weights=wr[fin])
    prec = (lam * wbar * np.concatenate([[1.0], var]))[None, :]
    st_W = np.zeros(G)
    st_zbar = np.zeros(G)
    st_xbar = np.zeros((G, p))
    st_A = np.zeros((G, p, p))
    st_rhs = np.zeros((G, p))
    st_dev = np.zeros(G)
    st_ext = np.zeros(G, np.int64)
    ones = np.ones((G, 1))
    own_fit = np.isfinite(ct[:, 0])
    refit = np.zeros(G, bool)
    for d in range(1, int(depth.max(initial=0)) + 1):
        lvl = np.flatnonzero((depth == d) & (pidx >= 0) & (n_used > 0))
        lvl = lvl[np.isfinite(ct[pidx[lvl], 0])]
        if lvl.size == 0:
            continue
        start = np.where(own_fit[lvl, None], ct[lvl], ct[pidx[lvl]])
        ct[lvl] = np.where(np.isnan(start), 0.0, start)
        act = np.zeros(G, np.uint8)
        act[lvl] = 1
        order = lvl.astype(np.int64)
        for _ in range(max_iter):
            _k._glm_accumulate(
                Xg, Yg, Og, Wg, offsets, t, fam, False, n_chunks, act, kept, valid, ct, Z,
                weff, st_W, st_zbar, st_xbar, st_A, st_rhs, st_dev, st_ext,
            )  # fmt: skip
            old = ct[lvl].copy()
            done = _lk._shrink_topdown(
                order, pidx, prec, False, ct[:, None, :], se_t[:, None, :], stt[:, None],
                st_W[:, None], st_zbar[:, None], st_xbar[:, None, :], st_A[:, None, :, :],
                st_rhs[:, None, :], ones, kept[:, None, :], 1e-14,
            )  # fmt: skip
            refit |= done[:, 0]
            new = ct[lvl]
            if np.max(np.abs(new - old)) <= tol * max(float(np.max(np.abs(new))), 1e-300):
                break
    pooled = refit & ~own_fit
    stt[pooled] = _lk.POOLED
    return refit


def fit_glm_rows(
    codes: np.ndarray,
    keep: np.ndarray,
    G: int,
    Xa: np.ndarray,
    ya: np.ndarray,
    w: np.ndarray,
    off: np.ndarray,
    ms: np.ndarray,
    sgn: np.ndarray,
    family: str,
    min_rows: int,
    min_events: int,
    max_iter: int,
    tol: float,
    fp: np.ndarray,
    n_chunks: int,
    shrinkage: float = 0.0,
    pidx: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """IRLS fit of every group and target (validated arrays from ``fit_groups``).

    With ``shrinkage > 0`` and a tree (``pidx (G,)`` parent index, ``depth (G,)``), nodes are
    then refitted top-down by penalised IRLS toward their (final) parent, see
    :func:`_shrink_levels`.

    Returns a dict of arrays: ``coef``, ``se (G, T, 1 + p)``, ``deviance``, ``cond
    (G, T) float64``, ``n_used``, ``n_iter (G, T) int64``, ``n_events (G, T, 2) float64``,
    ``status (G, T) int8``, ``x_mean (G, p)``, ``separation_checked (G, T) bool`` (groups the
    linear-programming check ran on).
    """
    from segstream.training.groupby_regression import _group_rows

    fam = FAMILIES[family]
    p = Xa.shape[1]
    T = ya.shape[1]
    # the offset travels with the targets through the counting sort
    offsets, Xg, YOg, Wg = _group_rows(codes, keep, G, Xa, np.column_stack([ya, off]), w)
    Yg = np.ascontiguousarray(YOg[:, :T])
    Og = np.ascontiguousarray(YOg[:, T])
    m = Xg.shape[0]
    k = p + 1
    coef = np.full((G, T, k), np.nan)
    se = np.full((G, T, k), np.nan)
    deviance = np.full((G, T), np.nan)
    cond = np.full((G, T), np.nan)
    n_used = np.zeros((G, T), np.int64)
    n_iter = np.zeros((G, T), np.int64)
    n_events = np.zeros((G, T, 2))
    status = np.zeros((G, T), np.int8)
    checked = np.zeros((G, T), bool)
    x_mean = np.empty((G, p))
    if G:
        _lk._x_mean(Xg, Wg, offsets, n_chunks, np.ones(G, np.uint8), x_mean)
    valid = np.empty(m, dtype=np.bool_)
    kept = np.zeros((G, p), np.uint8)
    xspread = np.zeros((G, p))
    Z = np.empty((m, 1))
    weff = np.empty(m)
    st_W = np.zeros(G)
    st_zbar = np.zeros(G)
    st_xbar = np.zeros((G, p))
    st_A = np.zeros((G, p, p))
    st_rhs = np.zeros((G, p))
    st_dev = np.zeros(G)
    st_ext = np.zeros(G, np.int64)
    for t in range(T):
        nu = np.zeros(G, np.int64)
        nev = np.zeros((G, 2))
        stt = np.zeros(G, np.int8)
        active = np.zeros(G, np.uint8)
        if G == 0:
            continue
        _k._glm_prepare(
            Xg, Yg, Og, Wg, offsets, t, fam, ms, int(min_rows), int(min_events), n_chunks,
            valid, kept, xspread, nu, nev, stt, active,
        )  # fmt: skip
        ct = np.zeros((G, k))
        c_prev = np.zeros((G, k))
        dev_prev = np.full(G, np.inf)
        n_halve = np.zeros(G, np.int64)
        se_t = np.full((G, k), np.nan)
        cond_t = np.full(G, np.nan)
        it_t = np.zeros(G, np.int64)
        for it in range(max_iter):
            if not active.any():
                break
            _k._glm_accumulate(
                Xg, Yg, Og, Wg, offsets, t, fam, it == 0, n_chunks, active, kept, valid, ct,
                Z, weff, st_W, st_zbar, st_xbar, st_A, st_rhs, st_dev, st_ext,
            )  # fmt: skip
            _k._glm_update(
                Xg, Z, weff, offsets, n_chunks, it, max_iter, tol, fp, sgn, active, kept,
                xspread, st_W, st_zbar, st_xbar, st_A, st_rhs, st_dev, st_ext, ct, c_prev,
                dev_prev, n_halve, se_t, cond_t, it_t, stt,
            )  # fmt: skip
        left = active.astype(bool)
        if left.any():  # stopped inside a step halving: the last accepted iterate
            ct[left] = c_prev[left]
            stt[left] = _k.NOT_CONVERGED
        # deviance, edge rows and Fisher information at the final coefficients (one more pass)
        fin = np.isin(stt, (_k.OK, _k.NOT_CONVERGED)).astype(np.uint8)
        st_dev[:] = np.nan
        st_ext[:] = 0
        _k._glm_accumulate(
            Xg, Yg, Og, Wg, offsets, t, fam, False, n_chunks, fin, kept, valid, ct,
            Z, weff, st_W, st_zbar, st_xbar, st_A, st_rhs, st_dev, st_ext,
        )  # fmt: skip
        _k._glm_fisher(
            Xg, Z, weff, offsets, n_chunks, fp, sgn, fin, kept, xspread, st_W, st_zbar,
            st_xbar, st_A, st_rhs, se_t, cond_t,
        )  # fmt: skip
        # exact separation check of the groups that ended at the edge
        # candidates: a singular working problem with rows at the edge, or a fit that ended
        # with rows at the edge after many steps or none converging (on a finite MLE IRLS is
        # Newton's method and converges in a few steps; under separation the linear predictor
        # of the separated rows grows by about one unit per step, so it takes >= 10 to reach
        # the edge)
        slow = (it_t >= SLOW_ITER) | (stt == _k.NOT_CONVERGED)
        cand = np.flatnonzero(((fin == 1) & (st_ext > 0) & slow) | (stt == _k.SEPARATION))
        blocks = []
        for g in cand:
            s, e = int(offsets[g]), int(offsets[g + 1])
            rows = valid[s:e]
            blocks.append((Xg[s:e][rows][:, kept[g].astype(bool)], Yg[s:e, t][rows]))
        sep = separated(blocks, fam)
        checked[cand, t] = True
        stt[cand[sep]] = _k.SEPARATION
        stt[cand[~sep & (stt[cand] == _k.SEPARATION)]] = _k.SINGULAR
        if cand.size:
            logger.debug("GLM target %d: %d separation checks", t, cand.size)
        nanfit = np.isin(stt, _NAN_STATUSES)
        ct[nanfit] = np.nan
        se_t[nanfit] = np.nan
        dropped = np.concatenate([np.zeros((G, 1), bool), kept == 0], axis=1)
        ct[dropped] = np.nan
        se_t[dropped] = np.nan
        if shrinkage > 0 and pidx is not None and depth is not None:
            shrunk = _shrink_levels(
                shrinkage, fam, pidx, depth, max_iter, tol, Xg, Yg, Og, Wg, offsets, t,
                n_chunks, kept, valid, nu, ct, se_t, stt, Z, weff,
            )  # fmt: skip
            ct[dropped] = np.nan
            se_t[dropped] = np.nan
            if shrunk.any():
                act = shrunk.astype(np.uint8)
                _k._glm_accumulate(
                    Xg, Yg, Og, Wg, offsets, t, fam, False, n_chunks, act, kept, valid,
                    np.where(np.isnan(ct), 0.0, ct), Z, weff, st_W, st_zbar, st_xbar, st_A,
                    st_rhs, st_dev, st_ext,
                )  # fmt: skip
                nanfit = np.isin(stt, _NAN_STATUSES)
        coef[:, t] = ct
        se[:, t] = se_t
        deviance[:, t] = np.where(nanfit, np.nan, st_dev)
        cond[:, t] = cond_t
        n_used[:, t] = nu
        n_iter[:, t] = it_t
        n_events[:, t] = nev
        status[:, t] = stt
    return {
        "coef": coef,
        "se": se,
        "deviance": deviance,
        "cond": cond,
        "n_used": n_used,
        "n_iter": n_iter,
        "n_events": n_events,
        "status": status,
        "x_mean": x_mean,
        "separation_checked": checked,
    }
