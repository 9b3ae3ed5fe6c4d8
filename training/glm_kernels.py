"""numba kernels of the group-by GLMs (private; see :mod:`segstream.training.glm`).

Kept apart from :mod:`segstream.training._groupby_kernels` (whose helpers they call: ``_stats``,
``_solve_group``) so that numba's on-disk cache of the linear kernels is not invalidated when
these change. Same conventions: validated float64 input, rows laid out group by group, bad
values end as a per-group status, never an exception.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from segstream.training._groupby_kernels import (
    EPS,
    NOT_CONVERGED,
    OK,
    SINGULAR,
    TOO_FEW_ROWS,
    _solve_group,
    _stats,
)

# --------------------------------------------------------------------------- IRLS
#
# Generalised linear models with canonical links (binomial/logit, Poisson/log) by iteratively
# reweighted least squares (McCullagh & Nelder 1989, ch. 2.5): every iteration turns each row
# into a working weight ``w_i = prior_i * mu'(eta)^2 / V(mu)`` and a working response
# ``z_i = eta_i - offset_i + (y_i - mu_i) / mu'(eta_i)`` at the current coefficients, then
# solves the same weighted least-squares problem as the linear path from the same centred
# sufficient statistics (``_stats``, ``_solve_group``: Jacobi-scaled Cholesky, QR fallback,
# sign-constrained NNLS). The two halves are separate kernels so that an engine over chunks of
# rows can run the first per chunk and merge:
#   ``_glm_accumulate``: one pass over the rows of the active groups -> per-group working
#       statistics (W, zbar, xbar, A, rhs), deviance and the count of rows fitted numerically
#       at 0 or 1 (``st_*`` arrays, predictor axis in the full p layout of ``_store``);
#   ``_glm_update``: per group, from those statistics: accept the step or halve it (deviance
#       went up), solve, Newton-decrement convergence test, statuses.

FAMILY_GAUSSIAN = 0
FAMILY_BINOMIAL = 1
FAMILY_POISSON = 2
# GLM statuses (mirrored in groupby_regression.STATUS_CODES)
SEPARATION = 5
ONE_CLASS = 6
TOO_FEW_EVENTS = 7
# |eta| beyond which a fitted probability is within 1e-5 of 0 or 1 (logit), or a Poisson mean
# below 1e-5 (eta < -11.5): a group with such rows is a separation candidate (a fit heading
# to an infinite coefficient), confirmed or cleared by the exact linear-programming check
GLM_ETA_EXTREME = 11.512925464970229
GLM_MAX_HALVINGS = 30


@njit(cache=True)
def _glm_row(family, eta, y):
    """Working weight factor ``mu'^2 / V``, working residual ``(y - mu) / mu'`` and unit
    deviance of one row at linear predictor ``eta`` (offset included). Canonical links:
    ``mu'^2 / V = mu' = V``."""
    if family == FAMILY_BINOMIAL:
        ea = math.exp(-abs(eta))
        den = 1.0 + ea
        v = ea / (den * den)  # mu (1 - mu), exact in the tails
        mu = 1.0 / den if eta >= 0.0 else ea / den
        # -log(mu) = softplus(-eta), -log(1 - mu) = softplus(eta); softplus(x) = log1p(e^-|x|)
        # + max(x, 0)
        lp = math.log1p(ea)
        dev = 2.0 * (lp + (max(-eta, 0.0) if y > 0.5 else max(eta, 0.0)))
        r = (y - mu) / v if v > 0.0 else 0.0
        return v, r, dev
    # Poisson, log link
    mu = math.exp(eta)
    dev = 2.0 * ((y * (math.log(y) - eta) if y > 0.0 else 0.0) - (y - mu))
    r = (y - mu) / mu if mu > 0.0 else 0.0
    return mu, r, dev


@njit(cache=True, parallel=True)
def _glm_prepare(
    Xg,
    Yg,
    Og,
    Wg,
    offsets,
    t,
    family,
    min_stat,
    min_rows,
    min_events,
    n_chunks,
    valid,
    kept,
    xspread,
    n_used,
    n_events,
    status,
    active,
):
    """Per group (target ``t``): predictors kept by ``min_stat`` (``kept (G, p)``), usable rows
    (``valid (n,)``: target, offset and every kept predictor finite), ``xspread (G, p)`` the
    rounding tolerance of each predictor's spread, ``n_used``, ``n_events (G, 2)`` (binomial:
    rows with outcome 0 and 1; Poisson: rows and the sum of the counts) and the statuses
    decided before any fit: ``too_few_rows``, ``one_class`` (one outcome only / every count
    0), ``too_few_events`` (rarer class / total count below ``min_events``; ``min_events < 0``
    means the number of parameters). ``active[g] = 1`` for the groups to fit."""
    G = offsets.shape[0] - 1
    p = Xg.shape[1]
    for ch in prange(n_chunks):
        g0 = ch * G // n_chunks
        g1 = (ch + 1) * G // n_chunks
        cnt = np.zeros(max(p, 1), dtype=np.int64)
        for g in range(g0, g1):
            s = offsets[g]
            e = offsets[g + 1]
            for j in range(p):
                cnt[j] = 0
            for i in range(s, e):
                if math.isfinite(Yg[i, t]) and math.isfinite(Og[i]):
                    for j in range(p):
                        if math.isfinite(Xg[i, j]):
                            cnt[j] += 1
            q = 0
            for j in range(p):
                kj = cnt[j] >= min_stat[j]
                kept[g, j] = kj
                xspread[g, j] = 0.0
                if kj:
                    q += 1
            nv = 0
            e0 = 0.0
            e1 = 0.0
            for i in range(s, e):
                y = Yg[i, t]
                ok = math.isfinite(y) and math.isfinite(Og[i])
                if ok:
                    for j in range(p):
                        if kept[g, j] and not math.isfinite(Xg[i, j]):
                            ok = False
                            break
                valid[i] = ok
                if ok:
                    nv += 1
                    for j in range(p):
                        if kept[g, j]:
                            xspread[g, j] = max(xspread[g, j], abs(Xg[i, j]))
                    if family == FAMILY_BINOMIAL:
                        if y > 0.5:
                            e1 += 1.0
                        else:
                            e0 += 1.0
                    else:
                        e0 += 1.0
                        e1 += y
            for j in range(p):
                xspread[g, j] = 64.0 * EPS * xspread[g, j]
            n_used[g] = nv
            n_events[g, 0] = e0
            n_events[g, 1] = e1
            active[g] = 0
            k = q + 1
            need_ev = float(k) if min_events < 0 else float(min_events)
            if (p > 0 and q == 0) or nv < max(k, min_rows) or nv == 0:
                status[g] = TOO_FEW_ROWS
            elif (e0 == 0.0 or e1 == 0.0) if family == FAMILY_BINOMIAL else e1 == 0.0:
                status[g] = ONE_CLASS
            elif (min(e0, e1) if family == FAMILY_BINOMIAL else e1) < need_ev:
                status[g] = TOO_FEW_EVENTS
            else:
                status[g] = OK
                active[g] = 1


@njit(cache=True)
def _kept_index(kept, g, sign, kidx, sign_k):
    """Compact index of the predictors kept in group ``g``; returns their number."""
    q = 0
    for j in range(kept.shape[1]):
        if kept[g, j]:
            kidx[q] = j
            sign_k[q] = sign[j]
            q += 1
    return q


@njit(cache=True, parallel=True)
def _glm_accumulate(
    Xg,
    Yg,
    Og,
    Wg,
    offsets,
    t,
    family,
    init,
    n_chunks,
    active,
    kept,
    valid,
    coef,
    Z,
    weff,
    st_W,
    st_zbar,
    st_xbar,
    st_A,
    st_rhs,
    st_dev,
    st_extreme,
):
    """One IRLS pass over the rows of the active groups: working weights into ``weff (n,)``,
    working responses (offset removed) into ``Z (n, 1)`` and, per group, the centred weighted
    statistics of ``z`` on the kept predictors (``_stats``), the deviance ``sum prior * d(y,
    mu)`` and the number of rows with ``|eta| > GLM_ETA_EXTREME`` at the current coefficients
    ``coef (G, 1 + p)`` (intercept, slopes; ``init``: at the family's starting means instead,
    ``mu = (y + 0.5) / 2`` binomial, ``(y + ybar) / 2`` Poisson, as statsmodels)."""
    G = offsets.shape[0] - 1
    p = Xg.shape[1]
    qq = max(p, 1)
    for ch in prange(n_chunks):
        g0 = ch * G // n_chunks
        g1 = (ch + 1) * G // n_chunks
        kidx = np.zeros(qq, dtype=np.int64)
        sign_k = np.zeros(qq, dtype=np.int64)
        dummy = np.zeros(qq, dtype=np.int64)
        xbar = np.zeros(qq)
        A = np.zeros((qq, qq))
        rhs = np.zeros(qq)
        dx = np.zeros(qq)
        sdx = np.zeros(qq)
        for g in range(g0, g1):
            if active[g] == 0:
                continue
            s = offsets[g]
            e = offsets[g + 1]
            q = _kept_index(kept, g, dummy, kidx, sign_k)
            ybar0 = 0.0
            if init and family == FAMILY_POISSON:
                sw = 0.0
                for i in range(s, e):
                    if valid[i]:
                        sw += Wg[i]
                        ybar0 += Wg[i] * Yg[i, t]
                ybar0 /= sw
            dev = 0.0
            n_ext = 0
            for i in range(s, e):
                if not valid[i]:
                    weff[i] = 0.0
                    Z[i, 0] = 0.0
                    continue
                y = Yg[i, t]
                if init:
                    if family == FAMILY_BINOMIAL:
                        mu0 = (y + 0.5) / 2.0
                        eta = math.log(mu0 / (1.0 - mu0))
                    else:
                        eta = math.log((y + ybar0) / 2.0)
                else:
                    eta = Og[i] + coef[g, 0]
                    for a in range(q):
                        eta += coef[g, 1 + kidx[a]] * Xg[i, kidx[a]]
                v, r, d = _glm_row(family, eta, y)
                dev += Wg[i] * d
                if eta < -GLM_ETA_EXTREME or (family == FAMILY_BINOMIAL and eta > GLM_ETA_EXTREME):
                    n_ext += 1
                w = Wg[i] * v
                if w > 0.0 and math.isfinite(w) and math.isfinite(r):
                    weff[i] = w
                    Z[i, 0] = eta - Og[i] + r
                else:
                    weff[i] = 0.0
                    Z[i, 0] = 0.0
            _n, W, zbar, _syy = _stats(Xg, Z, 0, weff, s, e, kidx, q, xbar, A, rhs, dx, sdx)
            st_W[g] = W
            st_zbar[g] = zbar
            st_dev[g] = dev
            st_extreme[g] = n_ext
            for j in range(p):
                st_xbar[g, j] = np.nan
                st_rhs[g, j] = 0.0
                for jj in range(p):
                    st_A[g, j, jj] = 0.0
            for a in range(q):
                st_xbar[g, kidx[a]] = xbar[a]
                st_rhs[g, kidx[a]] = rhs[a]
                for b in range(q):
                    st_A[g, kidx[a], kidx[b]] = A[a, b]


@njit(cache=True, parallel=True)
def _glm_update(
    Xg,
    Z,
    weff,
    offsets,
    n_chunks,
    it,
    max_iter,
    tol,
    fp,
    sign,
    active,
    kept,
    xspread,
    st_W,
    st_zbar,
    st_xbar,
    st_A,
    st_rhs,
    st_dev,
    st_extreme,
    coef,
    coef_prev,
    dev_prev,
    n_halve,
    se,
    cond_out,
    n_iter,
    status,
):
    """Per active group, from the statistics of :func:`_glm_accumulate` at ``coef``: if the
    deviance rose above the last accepted one (or is not finite), halve the step back toward
    ``coef_prev`` (at most ``GLM_MAX_HALVINGS`` times, then ``not_converged``); otherwise
    accept, solve the working least-squares problem (``_solve_group``) and move ``coef`` to
    its solution. Converged when the Newton decrement ``d' (X'WX) d <= tol (|dev| + 0.1)``
    (``d`` the step; scale-free, in deviance units): ``active[g] = 0``, status ``ok``. At the
    last iteration an unconverged group is ``not_converged`` (last iterate kept). A singular
    working problem is ``singular``, or ``separation`` when rows are fitted at 0/1 (weights
    vanished). ``se`` gets the Fisher standard errors ``sqrt(diag((X'WX)^-1))`` of the solve
    (dispersion 1)."""
    G = offsets.shape[0] - 1
    p = Xg.shape[1]
    qq = max(p, 1)
    for ch in prange(n_chunks):
        g0 = ch * G // n_chunks
        g1 = (ch + 1) * G // n_chunks
        kidx = np.zeros(qq, dtype=np.int64)
        sign_k = np.zeros(qq, dtype=np.int64)
        xbar = np.zeros(qq)
        xsp = np.zeros(qq)
        A = np.zeros((qq, qq))
        rhs = np.zeros(qq)
        D = np.zeros(qq)
        R = np.zeros((qq, qq))
        rr = np.zeros(qq)
        L = np.zeros((qq, qq))
        zz = np.zeros(qq)
        u = np.zeros(qq)
        idx = np.zeros(qq, dtype=np.int64)
        passive = np.zeros(qq, dtype=np.bool_)
        grad = np.zeros(qq)
        Minv = np.zeros((qq, qq))
        work = np.zeros((qq, qq))
        beta = np.zeros(qq)
        for g in range(g0, g1):
            if active[g] == 0:
                continue
            dev = st_dev[g]
            if it > 0 and not (dev <= dev_prev[g] + 1e-12 * abs(dev_prev[g])):
                # the last step made the fit worse: halve it
                if n_halve[g] >= GLM_MAX_HALVINGS:
                    for c in range(p + 1):
                        coef[g, c] = coef_prev[g, c]
                    status[g] = NOT_CONVERGED
                    active[g] = 0
                    continue
                n_halve[g] += 1
                for c in range(p + 1):
                    coef[g, c] = 0.5 * (coef[g, c] + coef_prev[g, c])
                continue
            # the deviance at the starting means is not that of any coefficients
            dev_prev[g] = dev if it > 0 else np.inf
            for c in range(p + 1):
                coef_prev[g, c] = coef[g, c]
            s = offsets[g]
            e = offsets[g + 1]
            q = _kept_index(kept, g, sign, kidx, sign_k)
            W = st_W[g]
            zbar = st_zbar[g]
            for a in range(q):
                xbar[a] = st_xbar[g, kidx[a]]
                rhs[a] = st_rhs[g, kidx[a]]
                xsp[a] = xspread[g, kidx[a]]
                for b in range(q):
                    A[a, b] = st_A[g, kidx[a], kidx[b]]
            n_iter[g] = it + 1
            if not (W > 0.0):
                status[g] = SEPARATION if st_extreme[g] > 0 else SINGULAR
                active[g] = 0
                continue
            st, cnd, _m, xvx = _solve_group(
                Xg,
                Z,
                0,
                weff,
                s,
                e,
                kidx,
                q,
                sign_k,
                xbar,
                zbar,
                A,
                rhs,
                W,
                xsp,
                D,
                R,
                rr,
                L,
                zz,
                u,
                idx,
                passive,
                grad,
                Minv,
                work,
                beta,
                fp,
            )
            if st == SINGULAR:
                status[g] = SEPARATION if st_extreme[g] > 0 else SINGULAR
                cond_out[g] = np.inf
                active[g] = 0
                continue
            # Newton decrement of the step in the centred parametrisation (c = eta at xbar)
            c_old = coef[g, 0]
            for a in range(q):
                c_old += coef[g, 1 + kidx[a]] * xbar[a]
            dc = zbar - c_old
            lam2 = W * dc * dc
            for a in range(q):
                da = beta[a] - coef[g, 1 + kidx[a]]
                for b in range(q):
                    lam2 += da * A[a, b] * (beta[b] - coef[g, 1 + kidx[b]])
            icpt = zbar
            for a in range(q):
                icpt -= beta[a] * xbar[a]
                coef[g, 1 + kidx[a]] = beta[a]
            coef[g, 0] = icpt
            se[g, 0] = math.sqrt(1.0 / W + xvx)
            for a in range(q):
                se[g, 1 + kidx[a]] = math.sqrt(Minv[a, a]) if passive[a] else np.nan
            cond_out[g] = cnd
            if st != NOT_CONVERGED and lam2 <= tol * (abs(dev) + 0.1):
                status[g] = OK
                active[g] = 0
            elif it + 1 >= max_iter:
                status[g] = NOT_CONVERGED
                active[g] = 0
            else:
                status[g] = st


@njit(cache=True, parallel=True)
def _glm_fisher(
    Xg,
    Z,
    weff,
    offsets,
    n_chunks,
    fp,
    sign,
    active,
    kept,
    xspread,
    st_W,
    st_zbar,
    st_xbar,
    st_A,
    st_rhs,
    se,
    cond_out,
):
    """Fisher standard errors at the final coefficients: from the statistics of a last
    :func:`_glm_accumulate` pass at them, ``se = sqrt(diag((X'WX)^-1))`` (intercept
    included, dispersion 1, restricted to the slopes not pinned at 0 by a sign constraint)
    and the condition number; the coefficients are not moved."""
    G = offsets.shape[0] - 1
    p = Xg.shape[1]
    qq = max(p, 1)
    for ch in prange(n_chunks):
        g0 = ch * G // n_chunks
        g1 = (ch + 1) * G // n_chunks
        kidx = np.zeros(qq, dtype=np.int64)
        sign_k = np.zeros(qq, dtype=np.int64)
        xbar = np.zeros(qq)
        xsp = np.zeros(qq)
        A = np.zeros((qq, qq))
        rhs = np.zeros(qq)
        D = np.zeros(qq)
        R = np.zeros((qq, qq))
        rr = np.zeros(qq)
        L = np.zeros((qq, qq))
        zz = np.zeros(qq)
        u = np.zeros(qq)
        idx = np.zeros(qq, dtype=np.int64)
        passive = np.zeros(qq, dtype=np.bool_)
        grad = np.zeros(qq)
        Minv = np.zeros((qq, qq))
        work = np.zeros((qq, qq))
        beta = np.zeros(qq)
        for g in range(g0, g1):
            if active[g] == 0:
                continue
            q = _kept_index(kept, g, sign, kidx, sign_k)
            W = st_W[g]
            for c in range(p + 1):
                se[g, c] = np.nan
            if not (W > 0.0):
                continue
            for a in range(q):
                xbar[a] = st_xbar[g, kidx[a]]
                rhs[a] = st_rhs[g, kidx[a]]
                xsp[a] = xspread[g, kidx[a]]
                for b in range(q):
                    A[a, b] = st_A[g, kidx[a], kidx[b]]
            st, cnd, _m, xvx = _solve_group(
                Xg,
                Z,
                0,
                weff,
                offsets[g],
                offsets[g + 1],
                kidx,
                q,
                sign_k,
                xbar,
                st_zbar[g],
                A,
                rhs,
                W,
                xsp,
                D,
                R,
                rr,
                L,
                zz,
                u,
                idx,
                passive,
                grad,
                Minv,
                work,
                beta,
                fp,
            )
            cond_out[g] = cnd
            if st == SINGULAR:
                continue
            se[g, 0] = math.sqrt(1.0 / W + xvx)
            for a in range(q):
                se[g, 1 + kidx[a]] = math.sqrt(Minv[a, a]) if passive[a] else np.nan
