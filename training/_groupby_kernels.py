"""numba kernels of the group-by regression engine (private; plain arrays in, plain arrays out).

Everything here assumes validated input (see :mod:`segstream.training.groupby_regression`): float64
C-contiguous data, rows already laid out group by group (counting sort), weights finite and
> 0. Bad *values* (NaN, inf, collinear columns, overflow) never raise here: they end as a
per-group status code.

Layout conventions
------------------
``Xg (n, p)``, ``Yg (n, T)``, ``Wg (n,)`` are the selected rows in group order; rows of group
``g`` are ``offsets[g]:offsets[g + 1]``. Coefficients are stored as ``[intercept, slope_0, ...,
slope_{p-1}]``. Internally every fit is solved in the *centred* parametrisation (weighted means
removed, corrected two-pass sums) and on the Jacobi-scaled cross-product matrix, which makes the
solve independent of offsets (1e12) and units (1e-12).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

# status codes (mirrored in groupby_regression.STATUS_CODES)
OK = 0
TOO_FEW_ROWS = 1
SINGULAR = 2
NOT_CONVERGED = 3
# too thin to fit on its own (would be TOO_FEW_ROWS or SINGULAR); coefficients are the
# partial-pooling (shrinkage) estimate, i.e. mostly the parent's
POOLED = 4

METHOD_OLS = 0
METHOD_HUBER = 1
METHOD_SIGMA_CLIP = 2

# 1 / Phi^-1(3/4): MAD -> sigma for Gaussian data (statsmodels' ``mad`` uses the same constant)
MAD_TO_SIGMA = 1.482602218505602
EPS = 2.220446049250313e-16

# indices into the float parameter vector
FP_HUBER_C = 0
FP_SIGMA_CUT = 1
FP_TOL = 2
FP_COND_FALLBACK = 3
FP_PIVOT_TOL = 4
FP_SINGULAR_RTOL = 5
# indices into the int parameter vector
IP_METHOD = 0
IP_MAX_ITER = 1
IP_MIN_ROWS = 2
IP_STORE = 3


# --------------------------------------------------------------------------- layout


@njit(cache=True)
def _layout(codes, keep, n_groups):
    """Stable counting sort of the kept rows by group code: (offsets (G+1,), rows (m,)).

    Reference implementation of the ordering that :func:`_scatter_rows` produces (tests)."""
    counts = np.zeros(n_groups + 1, dtype=np.int64)
    n = codes.shape[0]
    for i in range(n):
        if keep[i]:
            counts[codes[i] + 1] += 1
    for g in range(n_groups):
        counts[g + 1] += counts[g]
    offsets = counts.copy()
    pos = counts[:-1].copy()
    rows = np.empty(offsets[n_groups], dtype=np.int64)
    for i in range(n):
        if keep[i]:
            c = codes[i]
            rows[pos[c]] = i
            pos[c] += 1
    return offsets, rows


@njit(cache=True, parallel=True)
def _id_range(ids, n_parts):
    """``(min, max)`` of the integer ids (``n >= 1``) in one pass, ``n_parts`` row slices in
    parallel."""
    n = ids.shape[0]
    lo = np.empty(n_parts, dtype=np.int64)
    hi = np.empty(n_parts, dtype=np.int64)
    for k in prange(n_parts):
        i0 = k * n // n_parts
        i1 = (k + 1) * n // n_parts
        a = ids[min(i0, n - 1)]
        b = a
        for i in range(i0, i1):
            v = ids[i]
            a = min(a, v)
            b = max(b, v)
        lo[k] = a
        hi[k] = b
    return lo.min(), hi.max()


@njit(cache=True, parallel=True)
def _dense_codes(ids, lo, cnt, codes):
    """Dense codes (rank among the distinct ids) of integer ids in ``[lo, lo + span)`` into
    ``codes (n,)``; ``cnt (n_parts, span)`` is zeroed scratch (rows counted per slice of the
    rows in parallel). Returns ``(labels, sizes)``: the sorted distinct ids and their rows."""
    n = ids.shape[0]
    n_parts = cnt.shape[0]
    span = cnt.shape[1]
    for k in prange(n_parts):
        ck = cnt[k]
        for i in range(k * n // n_parts, (k + 1) * n // n_parts):
            ck[ids[i] - lo] += 1
    G = 0
    for v in range(span):
        c = 0
        for k in range(n_parts):
            c += cnt[k, v]
        if c:
            G += 1
    labels = np.empty(G, dtype=np.int64)
    sizes = np.empty(G, dtype=np.int64)
    remap = cnt[0]
    G = 0
    for v in range(span):
        c = 0
        for k in range(n_parts):
            c += cnt[k, v]
        if c:
            labels[G] = v + lo
            sizes[G] = c
            G += 1
        remap[v] = G - 1
    for i in prange(n):
        codes[i] = remap[ids[i] - lo]
    return labels, sizes


@njit(cache=True, parallel=True)
def _check_weights(w, sel, keep, n_parts):
    """``keep[i] = sel[i] and w[i] > 0`` and, over the selected rows, the number with a
    negative or non-finite weight and the first of them (-1 if none), in one parallel pass."""
    n = w.shape[0]
    bad = np.zeros(n_parts, dtype=np.int64)
    first = np.full(n_parts, -1, dtype=np.int64)
    for k in prange(n_parts):
        nb = 0
        f = -1
        for i in range(k * n // n_parts, (k + 1) * n // n_parts):
            wi = w[i]
            si = sel[i]
            keep[i] = si and wi > 0.0
            if si and not (math.isfinite(wi) and wi >= 0.0):
                if nb == 0:
                    f = i
                nb += 1
        bad[k] = nb
        first[k] = f
    f = -1
    for k in range(n_parts):
        if first[k] >= 0:
            f = first[k]
            break
    return bad.sum(), f


@njit(cache=True)
def _is_grouped(codes, keep):
    """True when every row is kept and the codes never decrease (rows already grouped)."""
    n = codes.shape[0]
    for i in range(n):
        if not keep[i]:
            return False
    for i in range(1, n):
        if codes[i] < codes[i - 1]:
            return False
    return True


@njit(cache=True)
def _grouped_offsets(codes, n_groups, offsets):
    """``offsets (G+1,)`` of rows that are already grouped (sorted codes, every row kept)."""
    n = codes.shape[0]
    offsets[0] = 0
    g = 0
    for i in range(n):
        c = codes[i]
        while g < c:
            g += 1
            offsets[g] = i
    while g < n_groups:
        g += 1
        offsets[g] = n


@njit(cache=True, parallel=True)
def _part_counts(codes, keep, cnt):
    """``cnt[k, g]``: kept rows of group ``g`` in the k-th contiguous slice of the rows."""
    n_parts = cnt.shape[0]
    n = codes.shape[0]
    for k in prange(n_parts):
        i0 = k * n // n_parts
        i1 = (k + 1) * n // n_parts
        for i in range(i0, i1):
            if keep[i]:
                cnt[k, codes[i]] += 1


@njit(cache=True)
def _part_offsets(cnt, offsets):
    """Group offsets from the slice counts; turns ``cnt[k, g]`` into the first output position
    of slice k's rows of group g (so the parallel scatter stays stable)."""
    n_parts = cnt.shape[0]
    G = cnt.shape[1]
    pos = 0
    offsets[0] = 0
    for g in range(G):
        for k in range(n_parts):
            c = cnt[k, g]
            cnt[k, g] = pos
            pos += c
        offsets[g + 1] = pos


@njit(cache=True, parallel=True)
def _scatter_rows(codes, keep, X, Y, W, start, Xg, Yg, Wg):
    """Stable counting-sort scatter: kept row ``i`` goes to the next free slot of its group.

    One sequential read of the rows per thread (slice k of the rows, ``start[k]`` from
    :func:`_part_offsets`), writes into the group-ordered arrays allocated by the caller (numpy
    allocates large arrays with huge-page advice: page faults are far cheaper than for arrays
    allocated inside a kernel)."""
    n_parts = start.shape[0]
    n = codes.shape[0]
    p = X.shape[1]
    T = Y.shape[1]
    for k in prange(n_parts):
        i0 = k * n // n_parts
        i1 = (k + 1) * n // n_parts
        pos = start[k]
        for i in range(i0, i1):
            if keep[i]:
                c = codes[i]
                r = pos[c]
                pos[c] = r + 1
                for j in range(p):
                    Xg[r, j] = X[i, j]
                for t in range(T):
                    Yg[r, t] = Y[i, t]
                Wg[r] = W[i]


@njit(cache=True, parallel=True)
def _x_mean(Xg, Wg, offsets, n_chunks, todo, x_mean):
    """Weighted mean of every predictor over each group's finite values (NaN if none), for the
    groups with ``todo[g] != 0``."""
    p = Xg.shape[1]
    G = offsets.shape[0] - 1
    for c in prange(n_chunks):
        g0 = c * G // n_chunks
        g1 = (c + 1) * G // n_chunks
        sw = np.zeros(max(p, 1))
        swx = np.zeros(max(p, 1))
        for g in range(g0, g1):
            if todo[g] == 0:
                continue
            for j in range(p):
                sw[j] = 0.0
                swx[j] = 0.0
            for i in range(offsets[g], offsets[g + 1]):
                w = Wg[i]
                for j in range(p):
                    x = Xg[i, j]
                    if math.isfinite(x):
                        sw[j] += w
                        swx[j] += w * x
            for j in range(p):
                x_mean[g, j] = swx[j] / sw[j] if sw[j] > 0.0 else np.nan


# --------------------------------------------------------------------------- small helpers


@njit(cache=True)
def _median_inplace(a, s, m):
    """Median of ``a[s:s+m]`` by quickselect; reorders that slice. ``m >= 1``.

    Lomuto partition around a median-of-three pivot with a branch-free inner loop (the
    comparison result advances the store index instead of steering a branch): on the ~20
    values of a typical group this is about 3x faster than Hoare partitioning, whose branches
    are unpredictable on random data."""
    k = s + m // 2
    lo = s
    hi = s + m - 1
    while hi > lo:
        if hi == lo + 1:
            if a[lo] > a[hi]:
                tmp = a[lo]
                a[lo] = a[hi]
                a[hi] = tmp
            break
        mid = (lo + hi) >> 1
        x = a[lo]
        y = a[mid]
        z = a[hi]
        if x > y:
            x, y = y, x
        if y > z:
            y, z = z, y
        if x > y:
            x, y = y, x
        # smallest to lo, largest to mid, pivot (median of three) to hi
        a[lo] = x
        a[mid] = z
        a[hi] = y
        pivot = y
        st = lo
        for i in range(lo, hi):
            v = a[i]
            a[i] = a[st]
            a[st] = v
            st += v < pivot
        a[hi] = a[st]
        a[st] = pivot
        if st == k:
            break
        elif st < k:
            lo = st + 1
        else:
            hi = st - 1
    upper = a[k]
    if m % 2 == 1:
        return upper
    lower = a[s]
    for i in range(s + 1, k):
        if a[i] > lower:
            lower = a[i]
    return 0.5 * (lower + upper)


@njit(cache=True)
def _stats(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs, dx, sdx):
    """Weighted centred sufficient statistics of the rows with ``weff > 0``.

    Corrected two-pass algorithm (Chan, Golub & LeVeque 1983): means, then centred sums with
    the first-order correction. Fills ``xbar[:q]``, ``A[:q, :q]`` (= sum w dx dx'),
    ``rhs[:q]`` (= sum w dx dy). Returns ``(n, W, ybar, syy)``. ``q <= 4`` predictors take
    :func:`_stats_small` (same operations in the same order, so bit-identical, about 2x faster).
    """
    if q <= 4:
        return _stats_small(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs)
    return _stats_generic(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs, dx, sdx)


@njit(cache=True)
def _stats_generic(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs, dx, sdx):
    """:func:`_stats` for any number of predictors (``dx``, ``sdx``: length-q scratch)."""
    n = 0
    W = 0.0
    ybar = 0.0
    for a in range(q):
        xbar[a] = 0.0
    for i in range(s, e):
        w = weff[i]
        if w > 0.0:
            n += 1
            W += w
            ybar += w * Yg[i, t]
            for a in range(q):
                xbar[a] += w * Xg[i, kidx[a]]
    for a in range(q):
        rhs[a] = 0.0
        for b in range(q):
            A[a, b] = 0.0
    if n == 0 or not (W > 0.0):
        return 0, 0.0, 0.0, 0.0
    ybar /= W
    for a in range(q):
        xbar[a] /= W
    sdy = 0.0
    syy = 0.0
    for a in range(q):
        sdx[a] = 0.0
    for i in range(s, e):
        w = weff[i]
        if w > 0.0:
            dy = Yg[i, t] - ybar
            sdy += w * dy
            syy += w * dy * dy
            for a in range(q):
                dx[a] = Xg[i, kidx[a]] - xbar[a]
            for a in range(q):
                wa = w * dx[a]
                sdx[a] += wa
                rhs[a] += wa * dy
                for b in range(a + 1):
                    A[a, b] += wa * dx[b]
    for a in range(q):
        rhs[a] -= sdx[a] * sdy / W
        for b in range(a + 1):
            A[a, b] -= sdx[a] * sdx[b] / W
            A[b, a] = A[a, b]
    syy -= sdy * sdy / W
    ybar += sdy / W
    for a in range(q):
        xbar[a] += sdx[a] / W
    return n, W, ybar, syy


@njit(cache=True)
def _stats_small(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs):
    """:func:`_stats` for ``q <= 4``, unrolled: the sums stay in registers instead of being
    loaded and stored through ``A``/``rhs`` for every row (the ``q > j`` branches are the same
    for every row)."""
    k0 = kidx[0] if q > 0 else 0
    k1 = kidx[1] if q > 1 else 0
    k2 = kidx[2] if q > 2 else 0
    k3 = kidx[3] if q > 3 else 0
    n = 0
    W = 0.0
    ybar = 0.0
    m0 = m1 = m2 = m3 = 0.0
    for i in range(s, e):
        w = weff[i]
        if w > 0.0:
            n += 1
            W += w
            ybar += w * Yg[i, t]
            if q > 0:
                m0 += w * Xg[i, k0]
            if q > 1:
                m1 += w * Xg[i, k1]
            if q > 2:
                m2 += w * Xg[i, k2]
            if q > 3:
                m3 += w * Xg[i, k3]
    return _stats_small_pass2(
        Xg, Yg, t, weff, s, e, k0, k1, k2, k3, q, xbar, A, rhs, n, W, ybar, m0, m1, m2, m3
    )


@njit(cache=True)
def _stats_small_pass2(
    Xg, Yg, t, weff, s, e, k0, k1, k2, k3, q, xbar, A, rhs, n, W, ybar, m0, m1, m2, m3
):
    """Second (centred) pass of :func:`_stats_small` from the first pass's weighted sums."""
    for a in range(q):
        xbar[a] = 0.0
        rhs[a] = 0.0
        for b in range(q):
            A[a, b] = 0.0
    if n == 0 or not (W > 0.0):
        return 0, 0.0, 0.0, 0.0
    ybar /= W
    m0 /= W
    m1 /= W
    m2 /= W
    m3 /= W
    sdy = 0.0
    syy = 0.0
    s0 = s1 = s2 = s3 = 0.0
    r0 = r1 = r2 = r3 = 0.0
    a00 = a10 = a11 = a20 = a21 = a22 = a30 = a31 = a32 = a33 = 0.0
    d0 = d1 = d2 = 0.0
    for i in range(s, e):
        w = weff[i]
        if w > 0.0:
            dy = Yg[i, t] - ybar
            sdy += w * dy
            syy += w * dy * dy
            if q > 0:
                d0 = Xg[i, k0] - m0
                w0 = w * d0
                s0 += w0
                r0 += w0 * dy
                a00 += w0 * d0
            if q > 1:
                d1 = Xg[i, k1] - m1
                w1 = w * d1
                s1 += w1
                r1 += w1 * dy
                a10 += w1 * d0
                a11 += w1 * d1
            if q > 2:
                d2 = Xg[i, k2] - m2
                w2 = w * d2
                s2 += w2
                r2 += w2 * dy
                a20 += w2 * d0
                a21 += w2 * d1
                a22 += w2 * d2
            if q > 3:
                d3 = Xg[i, k3] - m3
                w3 = w * d3
                s3 += w3
                r3 += w3 * dy
                a30 += w3 * d0
                a31 += w3 * d1
                a32 += w3 * d2
                a33 += w3 * d3
    # the generic version's correction loops on the register sums
    sd = (s0, s1, s2, s3)
    rs = (r0, r1, r2, r3)
    ms = (m0, m1, m2, m3)
    aa = (a00, a10, a11, a20, a21, a22, a30, a31, a32, a33)
    kk = 0
    for a in range(q):
        rhs[a] = rs[a] - sd[a] * sdy / W
        for b in range(a + 1):
            A[a, b] = aa[kk] - sd[a] * sd[b] / W
            A[b, a] = A[a, b]
            kk += 1
        xbar[a] = ms[a] + sd[a] / W
    syy -= sdy * sdy / W
    ybar += sdy / W
    return n, W, ybar, syy


@njit(cache=True)
def _resid_small(Xg, Yg, t, valid, sqw, s, e, kidx, q, ybar, xbar, beta, res, scratch):
    """Huber residual pass for ``q <= 4``, unrolled (same operations in the same order as the
    generic loop, so bit-identical): ``res[i] = r sqrt(w)`` of the valid rows (``sqw[i - s]``
    holds ``sqrt(Wg[i])``), their absolute values packed into ``scratch[s:s+m]``. Returns m."""
    k0 = kidx[0] if q > 0 else 0
    k1 = kidx[1] if q > 1 else 0
    k2 = kidx[2] if q > 2 else 0
    k3 = kidx[3] if q > 3 else 0
    b0 = beta[0] if q > 0 else 0.0
    b1 = beta[1] if q > 1 else 0.0
    b2 = beta[2] if q > 2 else 0.0
    b3 = beta[3] if q > 3 else 0.0
    m0 = xbar[0] if q > 0 else 0.0
    m1 = xbar[1] if q > 1 else 0.0
    m2 = xbar[2] if q > 2 else 0.0
    m3 = xbar[3] if q > 3 else 0.0
    m = 0
    for i in range(s, e):
        if valid[i]:
            r = Yg[i, t] - ybar
            if q > 0:
                r -= b0 * (Xg[i, k0] - m0)
            if q > 1:
                r -= b1 * (Xg[i, k1] - m1)
            if q > 2:
                r -= b2 * (Xg[i, k2] - m2)
            if q > 3:
                r -= b3 * (Xg[i, k3] - m3)
            ri = r * sqw[i - s]
            res[i] = ri
            scratch[s + m] = abs(ri)
            m += 1
    return m


@njit(cache=True)
def _huber_stats_small(Xg, Yg, Wg, t, weff, valid, res, scale, c_h, s, e, kidx, q, xbar, A, rhs):
    """Huber weights ``weff[i] = Wg[i] h(|res[i]| / scale)`` of the valid rows fused into the
    first pass of :func:`_stats_small` (same operations in the same order: bit-identical to
    the weight loop followed by :func:`_stats_small`)."""
    k0 = kidx[0] if q > 0 else 0
    k1 = kidx[1] if q > 1 else 0
    k2 = kidx[2] if q > 2 else 0
    k3 = kidx[3] if q > 3 else 0
    n = 0
    W = 0.0
    ybar = 0.0
    m0 = m1 = m2 = m3 = 0.0
    for i in range(s, e):
        if valid[i]:
            a_r = abs(res[i]) / scale
            h = 1.0 if a_r <= c_h else c_h / a_r
            w = Wg[i] * h
            weff[i] = w
        else:
            w = weff[i]
        if w > 0.0:
            n += 1
            W += w
            ybar += w * Yg[i, t]
            if q > 0:
                m0 += w * Xg[i, k0]
            if q > 1:
                m1 += w * Xg[i, k1]
            if q > 2:
                m2 += w * Xg[i, k2]
            if q > 3:
                m3 += w * Xg[i, k3]
    return _stats_small_pass2(
        Xg, Yg, t, weff, s, e, k0, k1, k2, k3, q, xbar, A, rhs, n, W, ybar, m0, m1, m2, m3
    )


@njit(cache=True)
def _chol_sub(R, idx, m, L, piv_tol):
    """Cholesky of ``R[idx[:m]][:, idx[:m]]`` into ``L[:m, :m]``; False if not positive definite."""
    for j in range(m):
        d = R[idx[j], idx[j]]
        for k in range(j):
            d -= L[j, k] * L[j, k]
        if not (d > piv_tol):
            return False
        ljj = math.sqrt(d)
        L[j, j] = ljj
        for i in range(j + 1, m):
            v = R[idx[i], idx[j]]
            for k in range(j):
                v -= L[i, k] * L[j, k]
            L[i, j] = v / ljj
    return True


@njit(cache=True)
def _chol_solve(L, m, b, z):
    """Solve ``L L' z = b`` (both length m)."""
    for i in range(m):
        v = b[i]
        for k in range(i):
            v -= L[i, k] * z[k]
        z[i] = v / L[i, i]
    for i in range(m - 1, -1, -1):
        v = z[i]
        for k in range(i + 1, m):
            v -= L[k, i] * z[k]
        z[i] = v / L[i, i]


@njit(cache=True)
def _tri_inv_gram(T, m, upper, Minv, work):
    """``Minv[:m,:m] = (T' T)^-1`` for triangular ``T`` (``upper``) or ``(T T')^-1`` (lower)."""
    # work = inverse of the triangular factor
    for i in range(m):
        for j in range(m):
            work[i, j] = 0.0
    if upper:
        for j in range(m):
            work[j, j] = 1.0 / T[j, j]
            for i in range(j - 1, -1, -1):
                v = 0.0
                for k in range(i + 1, j + 1):
                    v += T[i, k] * work[k, j]
                work[i, j] = -v / T[i, i]
        # (T'T)^-1 = Tinv Tinv'
        for i in range(m):
            for j in range(m):
                v = 0.0
                for k in range(m):
                    v += work[i, k] * work[j, k]
                Minv[i, j] = v
    else:
        for j in range(m):
            work[j, j] = 1.0 / T[j, j]
            for i in range(j + 1, m):
                v = 0.0
                for k in range(j, i):
                    v += T[i, k] * work[k, j]
                work[i, j] = -v / T[i, i]
        # (L L')^-1 = Linv' Linv
        for i in range(m):
            for j in range(m):
                v = 0.0
                for k in range(m):
                    v += work[k, i] * work[k, j]
                Minv[i, j] = v


@njit(cache=True)
def _cond1_sub(R, idx, m, Minv):
    """1-norm condition number of ``R[idx][:, idx]`` given its inverse ``Minv[:m,:m]``."""
    n1 = 0.0
    n2 = 0.0
    for j in range(m):
        c1 = 0.0
        c2 = 0.0
        for i in range(m):
            c1 += abs(R[idx[i], idx[j]])
            c2 += abs(Minv[i, j])
        n1 = max(n1, c1)
        n2 = max(n2, c2)
    return n1 * n2


@njit(cache=True)
def _xvx_lower(L, m, idx, xs, v):
    """``||L^-1 xs[idx]||^2`` by forward substitution (``L`` lower, m x m): ``x' (L L')^-1 x``
    without forming the inverse (keeps the intercept variance accurate when predictors are
    nearly collinear)."""
    acc = 0.0
    for i in range(m):
        t = xs[idx[i]]
        for k in range(i):
            t -= L[i, k] * v[k]
        v[i] = t / L[i, i]
        acc += v[i] * v[i]
    return acc


# --------------------------------------------------------------------------- solvers


@njit(cache=True)
def _qr_solve(Xg, Yg, t, weff, s, e, kidx, q, xbar, ybar, D, beta, Minv, work, sing_rtol, xs):
    """Householder QR of the scaled, centred, sqrt(w)-weighted rows: the ill-conditioned fallback.

    Returns True on success (``beta[:q]`` scaled-space solution, ``Minv[:q,:q]`` = inverse of
    the scaled cross-product matrix) or False when the columns are numerically dependent
    (``min |R_jj| < sing_rtol`` on unit-norm columns).
    """
    m = 0
    for i in range(s, e):
        if weff[i] > 0.0:
            m += 1
    M = np.empty((m, q))
    v = np.empty(m)
    r = 0
    for i in range(s, e):
        w = weff[i]
        if w > 0.0:
            sw = math.sqrt(w)
            for a in range(q):
                M[r, a] = sw * (Xg[i, kidx[a]] - xbar[a]) / D[a]
            v[r] = sw * (Yg[i, t] - ybar)
            r += 1
    hv = np.empty(m)
    for j in range(q):
        nrm = 0.0
        for i in range(j, m):
            nrm += M[i, j] * M[i, j]
        nrm = math.sqrt(nrm)
        if not (nrm > 0.0):
            return False, np.nan
        alpha = -nrm if M[j, j] >= 0.0 else nrm
        for i in range(j, m):
            hv[i] = M[i, j]
        hv[j] -= alpha
        hn = 0.0
        for i in range(j, m):
            hn += hv[i] * hv[i]
        if hn > 0.0:
            for c in range(j, q):
                d = 0.0
                for i in range(j, m):
                    d += hv[i] * M[i, c]
                d = 2.0 * d / hn
                for i in range(j, m):
                    M[i, c] -= d * hv[i]
            d = 0.0
            for i in range(j, m):
                d += hv[i] * v[i]
            d = 2.0 * d / hn
            for i in range(j, m):
                v[i] -= d * hv[i]
    for j in range(q):
        if not (abs(M[j, j]) > sing_rtol):
            return False, np.nan
    for i in range(q - 1, -1, -1):
        acc = v[i]
        for k in range(i + 1, q):
            acc -= M[i, k] * beta[k]
        beta[i] = acc / M[i, i]
    _tri_inv_gram(M, q, True, Minv, work)
    # x' (T'T)^-1 x = ||T'^-1 x||^2 by forward substitution with T' (lower)
    xvx = 0.0
    for i in range(q):
        acc = xs[i]
        for k in range(i):
            acc -= M[k, i] * hv[k]
        hv[i] = acc / M[i, i]
        xvx += hv[i] * hv[i]
    return True, xvx


@njit(cache=True)
def _nnls_gram(R, rr, q, sign, passive, u, z, L, idx, grad, piv_tol, tol):
    """Active-set least squares with sign constraints from the Gram form (Lawson & Hanson 1974;
    Bro & de Jong 1997), variables already sign-flipped so every constrained one must be >= 0.

    ``sign[a] != 0`` marks a constrained variable; free variables are always passive.
    Returns 0 (ok), 1 (singular passive set) or 2 (iteration limit).
    """
    for a in range(q):
        passive[a] = sign[a] == 0
        u[a] = 0.0
    # solve on the free set
    m = 0
    for a in range(q):
        if passive[a]:
            idx[m] = a
            m += 1
    if m > 0:
        if not _chol_sub(R, idx, m, L, piv_tol):
            return 1
        for k in range(m):
            grad[k] = rr[idx[k]]
        _chol_solve(L, m, grad, z)
        for k in range(m):
            u[idx[k]] = z[k]
    for _outer in range(3 * q + 10):
        best = -1
        gmax = tol
        for a in range(q):
            if not passive[a]:
                g = rr[a]
                for b in range(q):
                    g -= R[a, b] * u[b]
                if g > gmax:
                    gmax = g
                    best = a
        if best < 0:
            return 0
        passive[best] = True
        feasible = False
        for _inner in range(3 * q + 10):
            m = 0
            for a in range(q):
                if passive[a]:
                    idx[m] = a
                    m += 1
            if not _chol_sub(R, idx, m, L, piv_tol):
                return 1
            for k in range(m):
                grad[k] = rr[idx[k]]
            _chol_solve(L, m, grad, z)
            # z is in compact order; check feasibility of constrained passive variables
            alpha = 2.0
            for k in range(m):
                a = idx[k]
                if sign[a] != 0 and z[k] <= 0.0:
                    den = u[a] - z[k]
                    r = u[a] / den if den > 0.0 else 0.0
                    if r < alpha:
                        alpha = r
            if alpha > 1.0:
                for a in range(q):
                    u[a] = 0.0
                for k in range(m):
                    u[idx[k]] = z[k]
                feasible = True
                break
            for k in range(m):
                a = idx[k]
                u[a] = u[a] + alpha * (z[k] - u[a])
            for a in range(q):
                if passive[a] and sign[a] != 0 and u[a] <= tol * 1e-3:
                    passive[a] = False
                    u[a] = 0.0
        if not feasible:
            return 2
    return 2


@njit(cache=True)
def _scale_gram(A, rhs, W, xspread_tol, q, D, R, rr):
    """Jacobi scaling of the centred normal equations: ``D = sqrt(diag A)``, ``R = D^-1 A D^-1``,
    ``rr = D^-1 rhs``. False when a predictor is constant (within rounding of its magnitude,
    i.e. collinear with the intercept) or the right-hand side is not finite."""
    for a in range(q):
        d2 = A[a, a]
        if not (d2 > 0.0) or not (math.sqrt(d2 / W) > xspread_tol[a]):
            return False
        D[a] = math.sqrt(d2)
    for a in range(q):
        rr[a] = rhs[a] / D[a]
        for b in range(q):
            R[a, b] = A[a, b] / (D[a] * D[b])
        if not math.isfinite(rr[a]):
            return False
    return True


@njit(cache=True)
def _solve_beta(A, rhs, W, xspread_tol, q, piv_tol, D, R, rr, L, idx, z, beta):
    """Slopes only (robust iterations, no sign constraint): the Cholesky step of
    :func:`_solve_group` without inverse, condition number or QR check. False when that
    solve would not succeed (singular, or Cholesky fails): the caller then takes
    :func:`_solve_group`, which decides between QR and ``SINGULAR``."""
    if not _scale_gram(A, rhs, W, xspread_tol, q, D, R, rr):
        return False
    for a in range(q):
        idx[a] = a
    if not _chol_sub(R, idx, q, L, piv_tol):
        return False
    _chol_solve(L, q, rr, z)
    for a in range(q):
        beta[a] = z[a] / D[a]
    return True


@njit(cache=True)
def _solve_group(
    Xg,
    Yg,
    t,
    weff,
    s,
    e,
    kidx,
    q,
    sign_k,
    xbar,
    ybar,
    A,
    rhs,
    W,
    xspread_tol,
    D,
    R,
    rr,
    L,
    z,
    u,
    idx,
    passive,
    grad,
    Minv,
    work,
    beta,
    fp,
):
    """Solve one weighted least-squares problem from centred statistics.

    On success ``beta[:q]`` holds the slopes (original units), ``Minv[:q,:q]`` the inverse of
    ``A`` restricted to the estimated (passive) coefficients, ``passive[:q]`` which slopes are
    estimated (False = pinned to 0 by a sign constraint). Returns ``(status, cond, n_est)``.
    """
    piv_tol = fp[FP_PIVOT_TOL]
    constrained = False
    for a in range(q):
        if sign_k[a] != 0:
            constrained = True
    if not _scale_gram(A, rhs, W, xspread_tol, q, D, R, rr):
        return SINGULAR, np.inf, 0, np.nan
    for a in range(q):
        grad[a] = xbar[a] / D[a]  # scaled means (grad is free until the NNLS below)
    if not constrained:
        for a in range(q):
            idx[a] = a
            passive[a] = True
        use_qr = False
        cond = np.inf
        xvx = 0.0
        if _chol_sub(R, idx, q, L, piv_tol):
            _chol_solve(L, q, rr, z)
            xvx = _xvx_lower(L, q, idx, grad, u)
            _tri_inv_gram(L, q, False, Minv, work)
            cond = _cond1_sub(R, idx, q, Minv)
            if not (cond <= fp[FP_COND_FALLBACK]):
                use_qr = True
        else:
            use_qr = True
        if use_qr:
            okq, xvx = _qr_solve(
                Xg,
                Yg,
                t,
                weff,
                s,
                e,
                kidx,
                q,
                xbar,
                ybar,
                D,
                z,
                Minv,
                work,
                fp[FP_SINGULAR_RTOL],
                grad,
            )
            if not okq:
                return SINGULAR, np.inf, 0, np.nan
            cond = _cond1_sub(R, idx, q, Minv)
        for a in range(q):
            beta[a] = z[a] / D[a]
            for b in range(q):
                Minv[a, b] = Minv[a, b] / (D[a] * D[b])
        return OK, cond, q, xvx
    # sign-constrained: flip so that every constrained variable is >= 0
    for a in range(q):
        fa = -1.0 if sign_k[a] < 0 else 1.0
        rr[a] *= fa
        for b in range(q):
            fb = -1.0 if sign_k[b] < 0 else 1.0
            R[a, b] *= fa * fb
    tol = 1e-12 * max(1.0, np.max(np.abs(rr[:q])))
    code = _nnls_gram(R, rr, q, sign_k, passive, u, z, L, idx, grad, piv_tol, tol)
    if code == 1:
        return SINGULAR, np.inf, 0, np.nan
    m = 0
    for a in range(q):
        if passive[a]:
            idx[m] = a
            m += 1
    cond = 1.0
    xvx = 0.0
    for a in range(q):
        fa = -1.0 if sign_k[a] < 0 else 1.0
        grad[a] = fa * xbar[a] / D[a]
    if m > 0:
        if not _chol_sub(R, idx, m, L, piv_tol):
            return SINGULAR, np.inf, 0, np.nan
        xvx = _xvx_lower(L, m, idx, grad, rr)
        _tri_inv_gram(L, m, False, work, Minv)  # inverse into `work` (scratch roles swapped)
        cond = _cond1_sub(R, idx, m, work)
    # un-flip and unscale; Minv in full q x q layout (zeros for pinned)
    for a in range(q):
        fa = -1.0 if sign_k[a] < 0 else 1.0
        beta[a] = fa * u[a] / D[a] if passive[a] else 0.0
        for b in range(q):
            Minv[a, b] = 0.0
    for k in range(m):
        a = idx[k]
        fa = -1.0 if sign_k[a] < 0 else 1.0
        for kk in range(m):
            b = idx[kk]
            fb = -1.0 if sign_k[b] < 0 else 1.0
            Minv[a, b] = fa * fb * work[k, kk] / (D[a] * D[b])
    status = OK if code == 0 else NOT_CONVERGED
    return status, cond, m, xvx


# --------------------------------------------------------------------------- one group, one target


@njit(cache=True)
def _fit_one(
    Xg,
    Yg,
    Wg,
    s,
    e,
    t,
    g,
    min_stat,
    sign,
    ip,
    fp,
    weff,
    valid,
    res,
    scratch,
    sqw,
    cnt,
    kidx,
    sign_k,
    xbar,
    xspread,
    A,
    rhs,
    dx,
    D,
    R,
    rr,
    L,
    z,
    u,
    idx,
    passive,
    grad,
    Minv,
    work,
    beta,
    beta_old,
    coef,
    se,
    rms,
    mad,
    cond_out,
    n_used,
    n_rej,
    n_iter,
    status,
    st_W,
    st_ybar,
    st_xbar,
    st_A,
    st_rhs,
    st_syy,
    st_sig2,
    st_kept,
):
    p = Xg.shape[1]
    method = ip[IP_METHOD]
    max_iter = ip[IP_MAX_ITER]
    # ---- per-predictor availability (min_stat) among rows with a finite target; in the same
    # pass the rows usable when every predictor is kept (the common case)
    for j in range(p):
        cnt[j] = 0
        xspread[j] = 0.0
    nv = 0
    ymax = 0.0
    for i in range(s, e):
        y = Yg[i, t]
        ok = math.isfinite(y)
        if ok:
            for j in range(p):
                if math.isfinite(Xg[i, j]):
                    cnt[j] += 1
                else:
                    ok = False
        valid[i] = ok
        if ok:
            weff[i] = Wg[i]
            nv += 1
            ymax = max(ymax, abs(y))
            for j in range(p):
                xspread[j] = max(xspread[j], abs(Xg[i, j]))
        else:
            weff[i] = 0.0
    q = 0
    for j in range(p):
        if cnt[j] >= min_stat[j]:
            kidx[q] = j
            sign_k[q] = sign[j]
            q += 1
    if ip[IP_STORE]:
        for j in range(p):
            st_kept[g, t, j] = 0
        for a in range(q):
            st_kept[g, t, kidx[a]] = 1
    if q < p:
        # some predictor dropped: rows are usable when the target and the *kept* ones are finite
        nv = 0
        ymax = 0.0
        for a in range(q):
            xspread[a] = 0.0
        for i in range(s, e):
            y = Yg[i, t]
            ok = math.isfinite(y)
            if ok:
                for a in range(q):
                    if not math.isfinite(Xg[i, kidx[a]]):
                        ok = False
                        break
            valid[i] = ok
            if ok:
                weff[i] = Wg[i]
                nv += 1
                ymax = max(ymax, abs(y))
                for a in range(q):
                    xspread[a] = max(xspread[a], abs(Xg[i, kidx[a]]))
            else:
                weff[i] = 0.0
    for a in range(q):
        xspread[a] = 64.0 * EPS * xspread[a]
    k = q + 1
    n_used[g, t] = nv
    n_rej[g, t] = 0
    n_iter[g, t] = 0
    for c in range(p + 1):
        coef[g, t, c] = np.nan
        se[g, t, c] = np.nan
    rms[g, t] = np.nan
    mad[g, t] = np.nan
    cond_out[g, t] = np.nan
    need = max(k, ip[IP_MIN_ROWS])
    if (p > 0 and q == 0) or nv < need or nv == 0:
        status[g, t] = TOO_FEW_ROWS
        if ip[IP_STORE]:
            _n0, W0, yb0, syy0 = _stats(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs, dx, grad)
            _store(
                g,
                t,
                q,
                kidx,
                W0,
                yb0,
                xbar,
                A,
                rhs,
                syy0,
                np.nan,
                st_W,
                st_ybar,
                st_xbar,
                st_A,
                st_rhs,
                st_syy,
                st_sig2,
            )
        return
    # ---- initial (weighted least-squares) fit
    _n, W, ybar, syy = _stats(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs, dx, grad)
    st, cnd, m_est, xvx = _solve_group(
        Xg,
        Yg,
        t,
        weff,
        s,
        e,
        kidx,
        q,
        sign_k,
        xbar,
        ybar,
        A,
        rhs,
        W,
        xspread,
        D,
        R,
        rr,
        L,
        z,
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
        status[g, t] = SINGULAR
        cond_out[g, t] = np.inf
        if ip[IP_STORE]:
            _store(
                g,
                t,
                q,
                kidx,
                W,
                ybar,
                xbar,
                A,
                rhs,
                syy,
                np.nan,
                st_W,
                st_ybar,
                st_xbar,
                st_A,
                st_rhs,
                st_syy,
                st_sig2,
            )
        return
    final_status = st
    partial = False
    constrained = False
    for a in range(q):
        if sign_k[a] != 0:
            constrained = True
    piv_tol = fp[FP_PIVOT_TOL]
    # floor under which residuals are rounding noise of the data's magnitude
    rfloor = 1e3 * EPS * ymax
    iters = 0
    if method == METHOD_HUBER:
        c_h = fp[FP_HUBER_C]
        tol = fp[FP_TOL]
        converged = False
        # per-row constants of the iterations: sqrt of the input weights
        for i in range(s, e):
            if valid[i]:
                sqw[i - s] = math.sqrt(Wg[i])
        small = q <= 4
        for it in range(max_iter):
            # residuals at the current fit and MAD scale of standardised residuals (centre 0)
            if small:
                m = _resid_small(
                    Xg, Yg, t, valid, sqw, s, e, kidx, q, ybar, xbar, beta, res, scratch
                )
            else:
                m = 0
                for i in range(s, e):
                    if valid[i]:
                        r = Yg[i, t] - ybar
                        for a in range(q):
                            r -= beta[a] * (Xg[i, kidx[a]] - xbar[a])
                        res[i] = r * sqw[i - s]
                        scratch[s + m] = abs(res[i])
                        m += 1
            scale = _median_inplace(scratch, s, m) * MAD_TO_SIGMA
            if not (scale > rfloor):
                converged = True  # (near-)perfect fit of at least half the rows
                break
            if not small:
                for i in range(s, e):
                    if valid[i]:
                        a_r = abs(res[i]) / scale
                        h = 1.0 if a_r <= c_h else c_h / a_r
                        weff[i] = Wg[i] * h
            for a in range(q):
                beta_old[a] = beta[a]
            xb0 = 0.0
            for a in range(q):
                xb0 += beta[a] * xbar[a]
            icpt_old = ybar - xb0
            if small:
                _n, W, ybar, syy = _huber_stats_small(
                    Xg, Yg, Wg, t, weff, valid, res, scale, c_h, s, e, kidx, q, xbar, A, rhs
                )
            else:
                _n, W, ybar, syy = _stats(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs, dx, grad)
            # slopes only while iterating; the full solve is redone at the final weights
            if not constrained and _solve_beta(
                A, rhs, W, xspread, q, piv_tol, D, R, rr, L, idx, z, beta
            ):
                st, cnd, m_est, xvx = OK, np.nan, q, 0.0
            else:
                st, cnd, m_est, xvx = _solve_group(
                    Xg,
                    Yg,
                    t,
                    weff,
                    s,
                    e,
                    kidx,
                    q,
                    sign_k,
                    xbar,
                    ybar,
                    A,
                    rhs,
                    W,
                    xspread,
                    D,
                    R,
                    rr,
                    L,
                    z,
                    u,
                    idx,
                    passive,
                    grad,
                    Minv,
                    work,
                    beta,
                    fp,
                )
            iters = it + 1
            if st == SINGULAR:
                break
            partial = math.isnan(cnd)
            final_status = st
            xb0 = 0.0
            for a in range(q):
                xb0 += beta[a] * xbar[a]
            icpt = ybar - xb0
            dmax = abs(icpt - icpt_old)
            bmax = abs(icpt)
            for a in range(q):
                dmax = max(dmax, abs(beta[a] - beta_old[a]))
                bmax = max(bmax, abs(beta[a]))
            if dmax <= tol * max(bmax, 1e-300):
                converged = True
                break
        if st == SINGULAR:
            status[g, t] = SINGULAR
            cond_out[g, t] = np.inf
            return
        if not converged:
            final_status = NOT_CONVERGED
        nr = 0
        for i in range(s, e):
            if valid[i] and weff[i] < Wg[i]:
                nr += 1
        n_rej[g, t] = nr
    elif method == METHOD_SIGMA_CLIP:
        cut = fp[FP_SIGMA_CUT]
        converged = False
        for it in range(max_iter):
            m = 0
            for i in range(s, e):
                if valid[i]:
                    r = Yg[i, t] - ybar
                    for a in range(q):
                        r -= beta[a] * (Xg[i, kidx[a]] - xbar[a])
                    res[i] = r * math.sqrt(Wg[i])
                    if weff[i] > 0.0:
                        scratch[s + m] = abs(res[i])
                        m += 1
            scale = _median_inplace(scratch, s, m) * MAD_TO_SIGMA
            thr = cut * scale
            changed = 0
            n_in = 0
            for i in range(s, e):
                if valid[i]:
                    inside = abs(res[i]) <= max(thr, rfloor * math.sqrt(Wg[i]))
                    if inside != (weff[i] > 0.0):
                        changed += 1
                    if inside:
                        n_in += 1
            if changed == 0:
                converged = True
                break
            if n_in < need:
                converged = True  # clipping would leave too few rows: keep the current fit
                break
            for i in range(s, e):
                if valid[i]:
                    inside = abs(res[i]) <= max(thr, rfloor * math.sqrt(Wg[i]))
                    weff[i] = Wg[i] if inside else 0.0
            _n, W, ybar, syy = _stats(Xg, Yg, t, weff, s, e, kidx, q, xbar, A, rhs, dx, grad)
            # slopes only while iterating; the full solve is redone at the final weights
            if not constrained and _solve_beta(
                A, rhs, W, xspread, q, piv_tol, D, R, rr, L, idx, z, beta
            ):
                st, cnd, m_est, xvx = OK, np.nan, q, 0.0
            else:
                st, cnd, m_est, xvx = _solve_group(
                    Xg,
                    Yg,
                    t,
                    weff,
                    s,
                    e,
                    kidx,
                    q,
                    sign_k,
                    xbar,
                    ybar,
                    A,
                    rhs,
                    W,
                    xspread,
                    D,
                    R,
                    rr,
                    L,
                    z,
                    u,
                    idx,
                    passive,
                    grad,
                    Minv,
                    work,
                    beta,
                    fp,
                )
            iters = it + 1
            if st == SINGULAR:
                break
            partial = math.isnan(cnd)
            final_status = st
        if st == SINGULAR:
            status[g, t] = SINGULAR
            cond_out[g, t] = np.inf
            return
        if not converged:
            final_status = NOT_CONVERGED
        nr = 0
        for i in range(s, e):
            if valid[i] and not (weff[i] > 0.0):
                nr += 1
        n_rej[g, t] = nr
    n_iter[g, t] = iters
    if partial:
        # the last robust iteration solved for beta only: full solve (inverse, condition
        # number, QR fallback) at the final weights
        st, cnd, m_est, xvx = _solve_group(
            Xg,
            Yg,
            t,
            weff,
            s,
            e,
            kidx,
            q,
            sign_k,
            xbar,
            ybar,
            A,
            rhs,
            W,
            xspread,
            D,
            R,
            rr,
            L,
            z,
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
            status[g, t] = SINGULAR
            cond_out[g, t] = np.inf
            return
        if final_status == OK:
            final_status = st
    # ---- final residual statistics over the rows used in the final fit
    xb0 = 0.0
    for a in range(q):
        xb0 += beta[a] * xbar[a]
    icpt = ybar - xb0
    sw = 0.0
    swr2 = 0.0
    swe_r2 = 0.0
    m = 0
    nfit = 0
    for i in range(s, e):
        if valid[i] and weff[i] > 0.0:
            r = Yg[i, t] - ybar
            for a in range(q):
                r -= beta[a] * (Xg[i, kidx[a]] - xbar[a])
            sw += Wg[i]
            swr2 += Wg[i] * r * r
            swe_r2 += weff[i] * r * r
            scratch[s + m] = abs(r)
            m += 1
            nfit += 1
    n_used[g, t] = nfit
    k_est = 1 + m_est
    dof = nfit - k_est
    sig2 = swe_r2 / dof if dof > 0 else np.nan
    coef[g, t, 0] = icpt
    vc = 1.0 / W + xvx
    se[g, t, 0] = math.sqrt(sig2 * vc) if dof > 0 else np.nan
    for a in range(q):
        j = kidx[a]
        coef[g, t, 1 + j] = beta[a]
        if passive[a]:
            se[g, t, 1 + j] = math.sqrt(sig2 * Minv[a, a]) if dof > 0 else np.nan
    rms[g, t] = math.sqrt(swr2 / sw)
    mad[g, t] = _median_inplace(scratch, s, m) * MAD_TO_SIGMA
    cond_out[g, t] = cnd
    status[g, t] = final_status
    if ip[IP_STORE]:
        _store(
            g,
            t,
            q,
            kidx,
            W,
            ybar,
            xbar,
            A,
            rhs,
            syy,
            sig2,
            st_W,
            st_ybar,
            st_xbar,
            st_A,
            st_rhs,
            st_syy,
            st_sig2,
        )


@njit(cache=True)
def _store(
    g,
    t,
    q,
    kidx,
    W,
    ybar,
    xbar,
    A,
    rhs,
    syy,
    sig2,
    st_W,
    st_ybar,
    st_xbar,
    st_A,
    st_rhs,
    st_syy,
    st_sig2,
):
    p = st_xbar.shape[2]
    st_W[g, t] = W
    st_ybar[g, t] = ybar
    st_syy[g, t] = syy
    st_sig2[g, t] = sig2
    for j in range(p):
        st_xbar[g, t, j] = np.nan
        st_rhs[g, t, j] = 0.0
        for jj in range(p):
            st_A[g, t, j, jj] = 0.0
    for a in range(q):
        st_xbar[g, t, kidx[a]] = xbar[a]
        st_rhs[g, t, kidx[a]] = rhs[a]
        for b in range(q):
            st_A[g, t, kidx[a], kidx[b]] = A[a, b]


@njit(cache=True, parallel=True)
def _fit_all(
    Xg,
    Yg,
    Wg,
    offsets,
    min_stat,
    sign,
    ip,
    fp,
    n_chunks,
    todo,
    weff,
    valid,
    res,
    scratch,
    coef,
    se,
    rms,
    mad,
    cond_out,
    n_used,
    n_rej,
    n_iter,
    status,
    st_W,
    st_ybar,
    st_xbar,
    st_A,
    st_rhs,
    st_syy,
    st_sig2,
    st_kept,
):
    """Fit every group and target. Groups are split into ``n_chunks`` contiguous chunks run in
    parallel, each with its own small workspace (no allocation per group); ``weff``, ``res``,
    ``scratch`` (float64) and ``valid`` (bool), shape (n,), are row workspaces allocated by
    the caller. Only groups with ``todo[g] != 0`` are fitted."""
    G = offsets.shape[0] - 1
    T = Yg.shape[1]
    p = Xg.shape[1]
    qq = max(p, 1)
    for c in prange(n_chunks):
        g0 = c * G // n_chunks
        g1 = (c + 1) * G // n_chunks
        cnt = np.zeros(qq, dtype=np.int64)
        kidx = np.zeros(qq, dtype=np.int64)
        sign_k = np.zeros(qq, dtype=np.int64)
        xbar = np.zeros(qq)
        xspread = np.zeros(qq)
        A = np.zeros((qq, qq))
        rhs = np.zeros(qq)
        dx = np.zeros(qq)
        D = np.zeros(qq)
        R = np.zeros((qq, qq))
        rr = np.zeros(qq)
        L = np.zeros((qq, qq))
        z = np.zeros(qq)
        u = np.zeros(qq)
        idx = np.zeros(qq, dtype=np.int64)
        passive = np.zeros(qq, dtype=np.bool_)
        grad = np.zeros(qq)
        Minv = np.zeros((qq, qq))
        work = np.zeros((qq, qq))
        beta = np.zeros(qq)
        beta_old = np.zeros(qq)
        # chunk-local row workspace (sized for the chunk's largest group)
        lmax = 1
        for g in range(g0, g1):
            lmax = max(lmax, offsets[g + 1] - offsets[g])
        sqw = np.empty(lmax)
        for g in range(g0, g1):
            if todo[g] == 0:
                continue
            s = offsets[g]
            e = offsets[g + 1]
            for t in range(T):
                _fit_one(
                    Xg,
                    Yg,
                    Wg,
                    s,
                    e,
                    t,
                    g,
                    min_stat,
                    sign,
                    ip,
                    fp,
                    weff,
                    valid,
                    res,
                    scratch,
                    sqw,
                    cnt,
                    kidx,
                    sign_k,
                    xbar,
                    xspread,
                    A,
                    rhs,
                    dx,
                    D,
                    R,
                    rr,
                    L,
                    z,
                    u,
                    idx,
                    passive,
                    grad,
                    Minv,
                    work,
                    beta,
                    beta_old,
                    coef,
                    se,
                    rms,
                    mad,
                    cond_out,
                    n_used,
                    n_rej,
                    n_iter,
                    status,
                    st_W,
                    st_ybar,
                    st_xbar,
                    st_A,
                    st_rhs,
                    st_syy,
                    st_sig2,
                    st_kept,
                )


# --------------------------------------------------------------------------- shrinkage


@njit(cache=True)
def _shrink_topdown(
    order,
    pidx,
    prec,
    by_sigma2,
    coef,
    se,
    status,
    st_W,
    st_ybar,
    st_xbar,
    st_A,
    st_rhs,
    st_sig2,
    st_kept,
    piv_tol,
):
    """Shrink every group toward its (already shrunk) parent, in ``order`` (parents first).

    In the centred parametrisation ``theta = (c, b)`` with ``c`` the prediction at the group's
    weighted mean, minimise ``sum w r^2 + sum_j Lambda_j (theta_j - theta_parent_j)^2``; the
    normal equations separate into ``c = (W ybar + L_c c_P) / (W + L_c)`` and
    ``(A + diag L_b) b = rhs + L_b b_P``. ``Lambda = prec[t] * (sigma2 if by_sigma2 else 1)``.
    A node whose own fit was ``TOO_FEW_ROWS`` or ``SINGULAR`` becomes ``POOLED``; other
    statuses are kept. Returns a boolean mask of the (group, target) pairs that were refitted.
    """
    G, T, k = coef.shape
    p = k - 1
    done = np.zeros((G, T), dtype=np.bool_)
    sig_used = st_sig2.copy()
    M = np.zeros((max(p, 1), max(p, 1)))
    L = np.zeros((max(p, 1), max(p, 1)))
    Minv = np.zeros((max(p, 1), max(p, 1)))
    work = np.zeros((max(p, 1), max(p, 1)))
    idx = np.zeros(max(p, 1), dtype=np.int64)
    b = np.zeros(max(p, 1))
    z = np.zeros(max(p, 1))
    lam = np.zeros(k)
    for oi in range(order.shape[0]):
        g = order[oi]
        P = pidx[g]
        if P < 0:
            continue
        for t in range(T):
            W = st_W[g, t]
            if not (W > 0.0) or not math.isfinite(coef[P, t, 0]):
                continue
            sig2 = st_sig2[g, t]
            if not math.isfinite(sig2):
                sig2 = sig_used[P, t]
            sig_used[g, t] = sig2
            if by_sigma2 and not math.isfinite(sig2):
                continue
            q = 0
            for j in range(p):
                if st_kept[g, t, j]:
                    idx[q] = j
                    q += 1
            for c in range(k):
                lam[c] = prec[t, c] * (sig2 if by_sigma2 else 1.0)
            cP = coef[P, t, 0]
            for a in range(q):
                bp = coef[P, t, 1 + idx[a]]
                if math.isfinite(bp):
                    cP += bp * st_xbar[g, t, idx[a]]
            c_hat = (W * st_ybar[g, t] + lam[0] * cP) / (W + lam[0])
            for a in range(q):
                j = idx[a]
                bp = coef[P, t, 1 + j]
                lj = lam[1 + j] if math.isfinite(bp) else 0.0
                if not math.isfinite(bp):
                    bp = 0.0
                z[a] = st_rhs[g, t, j] + lj * bp
                for bb in range(q):
                    M[a, bb] = st_A[g, t, j, idx[bb]]
                M[a, a] += lj
            if q > 0:
                pd_diag = True
                for a in range(q):
                    if not (M[a, a] > 0.0):
                        pd_diag = False
                if not pd_diag:
                    continue
                # Jacobi scaling for a stable Cholesky
                for a in range(q):
                    for bb in range(q):
                        work[a, bb] = M[a, bb] / math.sqrt(M[a, a] * M[bb, bb])
                pos = np.arange(q)
                if not _chol_sub(work, pos, q, L, piv_tol):
                    continue
                for a in range(q):
                    z[a] = z[a] / math.sqrt(M[a, a])
                _chol_solve(L, q, z, b)
                _tri_inv_gram(L, q, False, Minv, work)
                for a in range(q):
                    b[a] = b[a] / math.sqrt(M[a, a])
                for a in range(q):
                    for bb in range(q):
                        Minv[a, bb] = Minv[a, bb] / math.sqrt(M[a, a] * M[bb, bb])
            icpt = c_hat
            for a in range(q):
                icpt -= b[a] * st_xbar[g, t, idx[a]]
            coef[g, t, 0] = icpt
            vc = sig2 / (W + lam[0])
            for a in range(q):
                for bb in range(q):
                    vc += sig2 * st_xbar[g, t, idx[a]] * Minv[a, bb] * st_xbar[g, t, idx[bb]]
            se[g, t, 0] = math.sqrt(vc) if math.isfinite(sig2) else np.nan
            for a in range(q):
                j = idx[a]
                coef[g, t, 1 + j] = b[a]
                se[g, t, 1 + j] = math.sqrt(sig2 * Minv[a, a]) if math.isfinite(sig2) else np.nan
            # a node that could not be fitted on its own only has a borrowed estimate; one that
            # could keeps its own status (ok / not_converged)
            if status[g, t] == TOO_FEW_ROWS or status[g, t] == SINGULAR:
                status[g, t] = POOLED
            done[g, t] = True
    return done


@njit(cache=True)
def _residual_stats(Xg, Yg, Wg, offsets, coef, mask, rms, mad, n_used):
    """Weighted RMS and scaled MAD of the residuals of ``coef`` over all usable rows, for the
    (group, target) pairs in ``mask`` (used after shrinkage changed the coefficients)."""
    G = offsets.shape[0] - 1
    T = Yg.shape[1]
    p = Xg.shape[1]
    scratch = np.empty(Xg.shape[0])
    for g in range(G):
        s = offsets[g]
        e = offsets[g + 1]
        for t in range(T):
            if not mask[g, t]:
                continue
            sw = 0.0
            swr2 = 0.0
            m = 0
            for i in range(s, e):
                r = Yg[i, t] - coef[g, t, 0]
                ok = math.isfinite(r)
                for j in range(p):
                    c = coef[g, t, 1 + j]
                    if math.isfinite(c):
                        x = Xg[i, j]
                        if not math.isfinite(x):
                            ok = False
                            break
                        r -= c * x
                if ok:
                    sw += Wg[i]
                    swr2 += Wg[i] * r * r
                    scratch[s + m] = abs(r)
                    m += 1
            n_used[g, t] = m
            if m > 0:
                rms[g, t] = math.sqrt(swr2 / sw)
                mad[g, t] = _median_inplace(scratch, s, m) * MAD_TO_SIGMA
            else:
                rms[g, t] = np.nan
                mad[g, t] = np.nan


@njit(cache=True, inline="always")
def _scaled_chol_inv(A, iD, q, piv_tol, R, L, iL, Li, Minv):
    """Jacobi-scaled Cholesky of the centred Gram ``A`` (``R = D^-1 A D^-1``, lower triangle
    used; ``iD = 1 / sqrt(diag A)``): ``L``, ``iL = 1 / diag L``, ``Minv = R^-1`` and the return
    value, the 1-norm condition number of ``R`` (NaN when ``R`` is not positive definite
    above ``piv_tol``)."""
    for a in range(q):
        for b in range(a):
            R[a, b] = A[a, b] * iD[a] * iD[b]
        R[a, a] = 1.0
    for j in range(q):
        d = R[j, j]
        for k in range(j):
            d -= L[j, k] * L[j, k]
        if not (d > piv_tol):
            return np.nan  # fails every ``cnd <= limit`` test, whatever the limit
        ljj = math.sqrt(d)
        L[j, j] = ljj
        iL[j] = 1.0 / ljj
        for i2 in range(j + 1, q):
            val = R[i2, j]
            for k in range(j):
                val -= L[i2, k] * L[j, k]
            L[i2, j] = val * iL[j]
    # inverse of L, Minv = (L L')^-1 = Li' Li, 1-norm condition number of R
    for j in range(q):
        for i2 in range(j):
            Li[i2, j] = 0.0
        Li[j, j] = iL[j]
        for i2 in range(j + 1, q):
            val = 0.0
            for k in range(j, i2):
                val += L[i2, k] * Li[k, j]
            Li[i2, j] = -val * iL[i2]
    n1 = 0.0
    n2 = 0.0
    for j in range(q):
        c1 = 0.0
        c2 = 0.0
        for i2 in range(q):
            val = 0.0
            for k in range(max(i2, j), q):
                val += Li[k, i2] * Li[k, j]
            Minv[i2, j] = val
            c2 += abs(val)
            c1 += abs(R[i2, j] if i2 >= j else R[j, i2])
        n1 = max(n1, c1)
        n2 = max(n2, c2)
    return n1 * n2


@njit(cache=True, inline="always")
def _chol_solve_scaled(L, iL, iD, rhs, xbar, q, z, v):
    """Solve ``L L' z = rhs / D`` in place in ``z``; return ``||L^-1 (xbar / D)||^2`` (the
    intercept's variance term), ``v`` holding ``L^-1 (xbar / D)``."""
    xvx = 0.0
    for i2 in range(q):
        val = rhs[i2] * iD[i2]
        xv = xbar[i2] * iD[i2]
        for k in range(i2):
            val -= L[i2, k] * z[k]
            xv -= L[i2, k] * v[k]
        z[i2] = val * iL[i2]
        v[i2] = xv * iL[i2]
        xvx += v[i2] * v[i2]
    for i2 in range(q - 1, -1, -1):
        val = z[i2]
        for k in range(i2 + 1, q):
            val -= L[k, i2] * z[k]
        z[i2] = val * iL[i2]
    return xvx


# --------------------------------------------------------------------------- OLS fast path
#
# Plain weighted least squares of a group whose rows are all finite, with every predictor kept
# and no sign constraint, is the common case. It is fitted here with everything inline on the
# group's contiguous rows (three passes: means, centred sums, residuals; Cholesky of the
# Jacobi-scaled matrix; MAD by quickselect on a chunk-local buffer) -- the same formulas as
# ``_stats`` + ``_solve_group`` + the tail of ``_fit_one``. Anything else (non-finite values,
# a predictor dropped by ``min_stat``, too few rows, Cholesky failure, condition number above
# ``cond_fallback``) sets ``redo[g]`` and the group is fitted by ``_fit_one``.


@njit(cache=True, parallel=True)
def _fit_ols_fast(
    Xg,
    Yg,
    Wg,
    offsets,
    min_stat,
    ip,
    fp,
    n_chunks,
    coef,
    se,
    rms,
    mad,
    cond_out,
    n_used,
    status,
    x_mean,
    redo,
):
    G = offsets.shape[0] - 1
    T = Yg.shape[1]
    p = Xg.shape[1]
    q = p
    qq = max(p, 1)
    piv_tol = fp[FP_PIVOT_TOL]
    cond_max = fp[FP_COND_FALLBACK]
    need = max(p + 1, ip[IP_MIN_ROWS])
    ms_max = 1
    for j in range(p):
        ms_max = max(ms_max, min_stat[j])
    need = max(need, ms_max)
    for ch in prange(n_chunks):
        g0 = ch * G // n_chunks
        g1 = (ch + 1) * G // n_chunks
        xbar = np.zeros(qq)
        xmax = np.zeros(qq)
        sdx = np.zeros(qq)
        dx = np.zeros(qq)
        A = np.zeros((qq, qq))
        rhs = np.zeros(qq)
        D = np.zeros(qq)
        iD = np.zeros(qq)
        R = np.zeros((qq, qq))
        L = np.zeros((qq, qq))
        iL = np.zeros(qq)
        Li = np.zeros((qq, qq))
        Minv = np.zeros((qq, qq))
        z = np.zeros(qq)
        v = np.zeros(qq)
        beta = np.zeros(qq)
        buf = np.empty(64)
        for g in range(g0, g1):
            s = offsets[g]
            e = offsets[g + 1]
            n = e - s
            redo[g] = 0
            if n < need:
                redo[g] = 1
                continue
            if buf.shape[0] < n:
                buf = np.empty(2 * n)
            for t in range(T):
                # ---- pass 1: weighted means, magnitudes, finiteness
                W = 0.0
                sy = 0.0
                for a in range(q):
                    xbar[a] = 0.0
                    xmax[a] = 0.0
                fin = True
                for i in range(s, e):
                    w = Wg[i]
                    y = Yg[i, t]
                    if not math.isfinite(y):
                        fin = False
                        break
                    W += w
                    sy += w * y
                    for a in range(q):
                        x = Xg[i, a]
                        if not math.isfinite(x):
                            fin = False
                        xbar[a] += w * x
                        ax = abs(x)
                        if ax > xmax[a]:
                            xmax[a] = ax
                if not fin or not (W > 0.0):
                    redo[g] = 1
                    break
                ybar = sy / W
                for a in range(q):
                    xbar[a] = xbar[a] / W
                # ---- pass 2: corrected centred sums (Chan, Golub & LeVeque 1983)
                sdy = 0.0
                syy = 0.0
                for a in range(q):
                    sdx[a] = 0.0
                    rhs[a] = 0.0
                    for b in range(a + 1):
                        A[a, b] = 0.0
                for i in range(s, e):
                    w = Wg[i]
                    dy = Yg[i, t] - ybar
                    sdy += w * dy
                    syy += w * dy * dy
                    for a in range(q):
                        dx[a] = Xg[i, a] - xbar[a]
                    for a in range(q):
                        wa = w * dx[a]
                        sdx[a] += wa
                        rhs[a] += wa * dy
                        for b in range(a + 1):
                            A[a, b] += wa * dx[b]
                iW = 1.0 / W
                for a in range(q):
                    rhs[a] -= sdx[a] * sdy * iW
                    for b in range(a + 1):
                        A[a, b] -= sdx[a] * sdx[b] * iW
                ybar += sdy * iW
                for a in range(q):
                    xbar[a] += sdx[a] * iW
                # ---- Jacobi scaling (R = unit-diagonal A, lower triangle) + Cholesky
                ok = True
                for a in range(q):
                    d2 = A[a, a]
                    if not (d2 > 0.0) or not (math.sqrt(d2 * iW) > 64.0 * EPS * xmax[a]):
                        ok = False
                        break
                    D[a] = math.sqrt(d2)
                    iD[a] = 1.0 / D[a]
                cnd = np.nan
                if ok:
                    cnd = _scaled_chol_inv(A, iD, q, piv_tol, R, L, iL, Li, Minv)
                    ok = cnd <= cond_max
                if not ok:
                    redo[g] = 1
                    break
                xvx = _chol_solve_scaled(L, iL, iD, rhs, xbar, q, z, v)
                icpt = ybar
                for a in range(q):
                    beta[a] = z[a] * iD[a]
                    icpt -= beta[a] * xbar[a]
                # ---- pass 3: residuals
                swr2 = 0.0
                m = 0
                for i in range(s, e):
                    r = Yg[i, t] - ybar
                    for a in range(q):
                        r -= beta[a] * (Xg[i, a] - xbar[a])
                    swr2 += Wg[i] * r * r
                    buf[m] = abs(r)
                    m += 1
                dof = n - 1 - q
                sig2 = swr2 / dof if dof > 0 else np.nan
                coef[g, t, 0] = icpt
                se[g, t, 0] = math.sqrt(sig2 * (1.0 / W + xvx)) if dof > 0 else np.nan
                for a in range(q):
                    coef[g, t, 1 + a] = beta[a]
                    se[g, t, 1 + a] = (math.sqrt(sig2 * Minv[a, a]) * iD[a]) if dof > 0 else np.nan
                rms[g, t] = math.sqrt(swr2 * iW)
                mad[g, t] = _median_inplace(buf, 0, m) * MAD_TO_SIGMA
                cond_out[g, t] = cnd
                n_used[g, t] = n
                status[g, t] = OK
            if redo[g] == 0:
                for a in range(p):
                    x_mean[g, a] = xbar[a]


# --------------------------------------------------------------------------- OLS, unsorted rows
#
# Plain OLS of rows that arrive in random group order, without moving whole rows:
#   1. ``_ols_suffstats``: one pass over the rows scatter-accumulates every group's weighted
#      sufficient statistics around a per-group shift (the group's first row), so that the sums
#      stay small even for 1e12 offsets; row counts and max |x| too. Each thread takes a
#      contiguous slice of the rows into its own table.
#   2. ``_ols_solve_table``: per group, the slices' sums merged around one shift
#      (``_ols_merge_parts``), centred cross-products, the same Jacobi-scaled Cholesky,
#      condition number and fallback tests as ``_fit_ols_fast``.
#   3. ``_ols_residuals``: second pass over the rows: residual of each row written to its
#      group-ordered slot (counting-sort positions, 8 bytes per row) and ``sum w r^2``.
#   4. ``_ols_finish``: per group, standard errors, RMS and MAD (quickselect on the contiguous
#      residuals).
# The row passes split the rows between threads (slice k of the rows to thread k), the
# per-group passes split the groups. A group the fast path declines (non-finite value, too few
# rows, shift too far from the mean, ill-conditioned) gets ``redo[g] = 1`` and is fitted by
# the general path.


PREFETCH_AHEAD = 16


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Software prefetch (``llvm.prefetch``, write intent) of ``arr[idx]`` of a 1-D array: the
    scatter passes know the group of the row ``PREFETCH_AHEAD`` rows ahead, so its table
    entry's cache lines are requested while the current row is processed."""
    if not isinstance(arr, types.Array) or arr.ndim != 1:
        return None
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = ir.PointerType(ir.IntType(8))
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


def ols_table_width(p):
    """Doubles per group in a sufficient-statistics table (see :func:`_ols_suffstats`)."""
    return 3 + 2 * p + p * (p + 1) // 2 + p + (p + 1)


@njit(cache=True, parallel=True)
def _ols_suffstats(codes, keep, X, Y, W, tab):
    """Scatter-accumulate shifted weighted sums per group: ``tab[k] (G, width)`` (zeroed) gets
    those of the k-th contiguous slice of the rows (one slice per thread; merged per group by
    :func:`_ols_solve_table`).

    Layout of a row of ``tab[k]``: ``n, sum w, sum w v, sum w u (p), sum w u v (p),
    sum w u u' (packed lower triangle), max |x| (p), shift x (p), shift y`` with
    ``u = x - shift_x``, ``v = y - shift_y``, the shift being the slice's first row of the
    group."""
    n_parts = tab.shape[0]
    n = codes.shape[0]
    p = X.shape[1]
    o_su = 3
    o_suv = 3 + p
    o_suu = 3 + 2 * p
    o_xm = o_suu + p * (p + 1) // 2
    o_sh = o_xm + p
    width = tab.shape[2]
    for k in prange(n_parts):
        i0 = k * n // n_parts
        i1 = (k + 1) * n // n_parts
        tk = tab[k]
        flat = tk.reshape(-1)
        u = np.empty(max(p, 1))
        for i in range(i0, i1):
            if i + PREFETCH_AHEAD < i1:
                bf = codes[i + PREFETCH_AHEAD] * width
                for off in range(0, width, 8):
                    _prefetch(flat, bf + off)
            if not keep[i]:
                continue
            c = codes[i]
            if tk[c, 0] == 0.0:
                for a in range(p):
                    tk[c, o_sh + a] = X[i, a]
                tk[c, o_sh + p] = Y[i, 0]
            w = W[i]
            v = Y[i, 0] - tk[c, o_sh + p]
            tk[c, 0] += 1.0
            tk[c, 1] += w
            tk[c, 2] += w * v
            kk = o_suu
            for a in range(p):
                x = X[i, a]
                ax = abs(x)
                if not (ax <= tk[c, o_xm + a]):
                    tk[c, o_xm + a] = ax
                ua = x - tk[c, o_sh + a]
                u[a] = ua
                wu = w * ua
                tk[c, o_su + a] += wu
                tk[c, o_suv + a] += wu * v
                for b in range(a + 1):
                    tk[c, kk] += wu * u[b]
                    kk += 1


@njit(cache=True, parallel=True)
def _ols_suffstats_small(codes, keep, X, Y, W, tab):
    """:func:`_ols_suffstats` for ``p <= 4`` predictors, unrolled (the predictors of a row stay
    in registers; the ``p > j`` branches are the same for every row): about 1.5x faster."""
    n_parts = tab.shape[0]
    p = X.shape[1]
    n = codes.shape[0]
    o_su = 3
    o_suv = 3 + p
    o_suu = 3 + 2 * p
    o_xm = o_suu + p * (p + 1) // 2
    o_sh = o_xm + p
    width = tab.shape[2]
    for k in prange(n_parts):
        i0 = k * n // n_parts
        i1 = (k + 1) * n // n_parts
        flat = tab[k].reshape(-1)
        for i in range(i0, i1):
            if i + PREFETCH_AHEAD < i1:
                bf = codes[i + PREFETCH_AHEAD] * width
                for off in range(0, width, 8):
                    _prefetch(flat, bf + off)
            if not keep[i]:
                continue
            b = codes[i] * width
            y = Y[i, 0]
            w = W[i]
            x0 = X[i, 0] if p > 0 else 0.0
            x1 = X[i, 1] if p > 1 else 0.0
            x2 = X[i, 2] if p > 2 else 0.0
            x3 = X[i, 3] if p > 3 else 0.0
            sh = b + o_sh
            if flat[b] == 0.0:
                flat[sh + p] = y
                if p > 0:
                    flat[sh] = x0
                if p > 1:
                    flat[sh + 1] = x1
                if p > 2:
                    flat[sh + 2] = x2
                if p > 3:
                    flat[sh + 3] = x3
            v = y - flat[sh + p]
            flat[b] += 1.0
            flat[b + 1] += w
            flat[b + 2] += w * v
            su = b + o_su
            suv = b + o_suv
            t = b + o_suu
            xm = b + o_xm
            if p > 0:
                u0 = x0 - flat[sh]
                w0 = w * u0
                flat[su] += w0
                flat[suv] += w0 * v
                flat[t] += w0 * u0
                flat[xm] = max(flat[xm], abs(x0))
            if p > 1:
                u1 = x1 - flat[sh + 1]
                w1 = w * u1
                flat[su + 1] += w1
                flat[suv + 1] += w1 * v
                flat[t + 1] += w1 * u0
                flat[t + 2] += w1 * u1
                flat[xm + 1] = max(flat[xm + 1], abs(x1))
            if p > 2:
                u2 = x2 - flat[sh + 2]
                w2 = w * u2
                flat[su + 2] += w2
                flat[suv + 2] += w2 * v
                flat[t + 3] += w2 * u0
                flat[t + 4] += w2 * u1
                flat[t + 5] += w2 * u2
                flat[xm + 2] = max(flat[xm + 2], abs(x2))
            if p > 3:
                u3 = x3 - flat[sh + 3]
                w3 = w * u3
                flat[su + 3] += w3
                flat[suv + 3] += w3 * v
                flat[t + 6] += w3 * u0
                flat[t + 7] += w3 * u1
                flat[t + 8] += w3 * u2
                flat[t + 9] += w3 * u3
                flat[xm + 3] = max(flat[xm + 3], abs(x3))


@njit(cache=True)
def _ols_merge_parts(tab, g, p, acc):
    """Sums of group ``g`` over all row slices into ``acc (width,)``, around the shift of the
    first slice that has rows of the group: another slice's sums around its own shift are
    moved to that one (``u -> u + d``, ``d`` = difference of the two shifts, both rows of
    the group: ``sum w u u' -> sum w u u' + d sum w u' + sum w u d' + W d d'``, etc.)."""
    o_su = 3
    o_suv = 3 + p
    o_suu = 3 + 2 * p
    o_xm = o_suu + p * (p + 1) // 2
    o_sh = o_xm + p
    width = tab.shape[2]
    ref = -1
    for k in range(tab.shape[0]):
        if tab[k, g, 0] > 0.0:
            if ref < 0:
                ref = k
                for j in range(width):
                    acc[j] = tab[k, g, j]
                continue
            Wk = tab[k, g, 1]
            Sv = tab[k, g, 2]
            dy = tab[k, g, o_sh + p] - acc[o_sh + p]
            acc[0] += tab[k, g, 0]
            acc[1] += Wk
            acc[2] += Sv + Wk * dy
            kk = o_suu
            for a in range(p):
                da = tab[k, g, o_sh + a] - acc[o_sh + a]
                Sa = tab[k, g, o_su + a]
                acc[o_su + a] += Sa + Wk * da
                acc[o_suv + a] += tab[k, g, o_suv + a] + da * Sv + dy * Sa + Wk * da * dy
                for b in range(a + 1):
                    db = tab[k, g, o_sh + b] - acc[o_sh + b]
                    acc[kk] += tab[k, g, kk] + da * tab[k, g, o_su + b] + db * Sa + Wk * da * db
                    kk += 1
                acc[o_xm + a] = max(acc[o_xm + a], tab[k, g, o_xm + a])
    if ref < 0:
        for j in range(width):
            acc[j] = 0.0


@njit(cache=True, parallel=True)
def _ols_solve_table(
    tab, p, need, fp, n_chunks, offsets, rec, coef, se, rms, cond_out, n_used, status, x_mean, redo
):
    """Solve every group from ``tab (n_parts, G, width)`` (slices merged by
    :func:`_ols_merge_parts`); ``rec (G, 2p+1)`` gets ``ybar, xbar (p), b (p)`` (b NaN for
    declined groups) for the residual pass, ``se[g, 0, :]`` the variance factors
    (``1/W + xbar' M^-1 xbar``, ``M^-1_aa``) that ``_ols_finish`` multiplies by sigma^2 and
    ``rms[g, 0]`` the total weight it divides by. ``offsets[g + 1]`` gets the rows of group g
    (the caller turns them into offsets)."""
    G = tab.shape[1]
    q = p
    qq = max(p, 1)
    piv_tol = fp[FP_PIVOT_TOL]
    cond_max = fp[FP_COND_FALLBACK]
    o_su = 3
    o_suv = 3 + p
    o_suu = 3 + 2 * p
    o_xm = o_suu + p * (p + 1) // 2
    o_sh = o_xm + p
    for ch in prange(n_chunks):
        g0 = ch * G // n_chunks
        g1 = (ch + 1) * G // n_chunks
        du = np.zeros(qq)
        A = np.zeros((qq, qq))
        S2 = np.zeros(qq)
        rhs = np.zeros(qq)
        D = np.zeros(qq)
        iD = np.zeros(qq)
        R = np.zeros((qq, qq))
        L = np.zeros((qq, qq))
        iL = np.zeros(qq)
        Li = np.zeros((qq, qq))
        Minv = np.zeros((qq, qq))
        z = np.zeros(qq)
        v = np.zeros(qq)
        xbar = np.zeros(qq)
        acc = np.zeros(tab.shape[2])
        for g in range(g0, g1):
            _ols_merge_parts(tab, g, p, acc)
            nrow = np.int64(acc[0])
            offsets[g + 1] = nrow
            Wt = acc[1]
            redo[g] = 1
            for a in range(2 * p + 1):
                rec[g, a] = np.nan
            if nrow < need or not (Wt > 0.0):
                continue
            iW = 1.0 / Wt
            dv = acc[2] * iW
            ok = math.isfinite(dv)
            kk = o_suu
            for a in range(q):
                du[a] = acc[o_su + a] * iW
                rhs[a] = acc[o_suv + a] - acc[o_su + a] * acc[2] * iW
                for b in range(a + 1):
                    A[a, b] = acc[kk] - acc[o_su + a] * acc[o_su + b] * iW
                    kk += 1
                S2[a] = acc[kk - 1]
                ok = ok and math.isfinite(rhs[a]) and math.isfinite(S2[a])
                xbar[a] = acc[o_sh + a] + du[a]
            if not ok:
                continue
            ybar = acc[o_sh + p] + dv
            # the centred diagonal must not be a small difference of the shifted sums (shift
            # far from the mean), and the spread must not be rounding noise of the magnitude
            for a in range(q):
                d2 = A[a, a]
                if not (d2 > 1e-3 * S2[a]) or not (math.sqrt(d2 * iW) > 64.0 * EPS * acc[o_xm + a]):
                    ok = False
                    break
                D[a] = math.sqrt(d2)
                iD[a] = 1.0 / D[a]
            if not ok:
                continue
            cnd = _scaled_chol_inv(A, iD, q, piv_tol, R, L, iL, Li, Minv)
            if not (cnd <= cond_max):
                continue
            xvx = _chol_solve_scaled(L, iL, iD, rhs, xbar, q, z, v)
            icpt = ybar
            rec[g, 0] = ybar
            for a in range(q):
                b = z[a] * iD[a]
                icpt -= b * xbar[a]
                rec[g, 1 + a] = xbar[a]
                rec[g, 1 + p + a] = b
                coef[g, 0, 1 + a] = b
                se[g, 0, 1 + a] = Minv[a, a] * iD[a] * iD[a]
                x_mean[g, a] = xbar[a]
            coef[g, 0, 0] = icpt
            se[g, 0, 0] = iW + xvx
            rms[g, 0] = Wt
            cond_out[g, 0] = cnd
            n_used[g, 0] = nrow
            status[g, 0] = OK
            redo[g] = 0


@njit(cache=True, parallel=True)
def _ols_residuals(codes, keep, X, Y, W, rec, pos, swr2, resid):
    """Residual of every kept row into its group-ordered slot ``resid[pos[k, g]++]`` and
    ``swr2[k, g] += w r^2``; thread k takes the k-th contiguous slice of the rows, ``pos[k]``
    starts at the first slot of that slice's rows of each group."""
    n = codes.shape[0]
    p = X.shape[1]
    n_parts = pos.shape[0]
    width = rec.shape[1]
    flat = rec.reshape(-1)
    for k in prange(n_parts):
        i0 = k * n // n_parts
        i1 = (k + 1) * n // n_parts
        pk = pos[k]
        sk = swr2[k]
        for i in range(i0, i1):
            if i + PREFETCH_AHEAD < i1:
                cf = codes[i + PREFETCH_AHEAD]
                _prefetch(flat, cf * width)
                _prefetch(flat, cf * width + width - 1)
                _prefetch(pk, cf)
                _prefetch(sk, cf)
            if not keep[i]:
                continue
            c = codes[i]
            r = Y[i, 0] - rec[c, 0]
            for a in range(p):
                r -= rec[c, 1 + p + a] * (X[i, a] - rec[c, 1 + a])
            sk[c] += W[i] * r * r
            s = pk[c]
            resid[s] = abs(r)
            pk[c] = s + 1


@njit(cache=True, parallel=True)
def _ols_finish(swr2_parts, offsets, resid, p, n_chunks, se, rms, mad, redo):
    """Standard errors, weighted RMS and scaled MAD of the groups the fast path solved (``se``
    and ``rms`` hold the variance factors and total weights from :func:`_ols_solve_table`)."""
    G = offsets.shape[0] - 1
    for ch in prange(n_chunks):
        g0 = ch * G // n_chunks
        g1 = (ch + 1) * G // n_chunks
        for g in range(g0, g1):
            if redo[g]:
                continue
            s = offsets[g]
            m = offsets[g + 1] - s
            swr2 = 0.0
            for k in range(swr2_parts.shape[0]):
                swr2 += swr2_parts[k, g]
            dof = m - 1 - p
            sig2 = swr2 / dof if dof > 0 else np.nan
            for a in range(p + 1):
                se[g, 0, a] = math.sqrt(sig2 * se[g, 0, a]) if dof > 0 else np.nan
            rms[g, 0] = math.sqrt(swr2 / rms[g, 0])
            mad[g, 0] = _median_inplace(resid, s, m) * MAD_TO_SIGMA
