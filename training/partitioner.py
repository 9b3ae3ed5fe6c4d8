"""Partitioners: variance-reduction trees, business keys, and keys-then-trees.

The tree follows H-VRT (HotProtato/H-VRT, MIT): scale the continuous features, use the scaled
features themselves (plus optional fit-only ``y_columns``) as a multi-output regression target,
grow a tree with at most ``max_leaf_nodes`` leaves, and call the leaves segments. Here the tree
is grown best-first on binned features with per-feature histograms of the multi-output target
(numba; histogram subtraction for siblings), asking for K leaves gives K leaves, segment ids
are contiguous, categorical encodings are the same at fit and at routing, and the fitted tree
exports plain arrays routed by :mod:`segstream.shared.routing` (no scikit-learn and no pickle at scoring
time).

Public API: :class:`TreePartitioner`, :class:`KeyPartitioner`, :class:`CompositePartitioner`,
:func:`partition_report`, :func:`plot_partition_report`.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
from numba import njit, prange
from sklearn.base import BaseEstimator, clone

from segstream.shared.component import ExportedComponent
from segstream.shared.errors import DataError, NotFittedError, SchemaError
from segstream.shared.routing import (
    FORMAT_VERSION,
    KEY,
    LEAF,
    NUMERIC,
    DesignColumn,
    FeatureSchema,
    Router,
    RouteResult,
    category_strings,
    node_at_depth,
    numeric_column,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CompositePartitioner",
    "KeyPartitioner",
    "PartitionReport",
    "TreePartitioner",
    "partition_report",
    "plot_partition_report",
]

# --------------------------------------------------------------------------------------------
# numba: histogram best-first growth
# --------------------------------------------------------------------------------------------

#: LLVM fast-math flags of the split scan: reassociation lets the per-bin sums over the outputs
#: vectorise. No NaN/Inf assumptions (``nnan``/``ninf`` are off): histograms are finite.
_SCAN_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

#: Nodes with at least this many rows are histogrammed and scanned by all numba threads.
_PAR_MIN_ROWS = 10_000


@njit(cache=True, nogil=True)
def _hist_rows(bins, Y, start, end, hist):
    """Add rows start:end to ``hist`` (F, n_bins + 1, T + 1): sums of Y and counts per bin."""
    F = bins.shape[1]
    T = Y.shape[1]
    for r in range(start, end):
        for f in range(F):
            b = bins[r, f]
            for t in range(T):
                hist[f, b, t] += Y[r, t]
            hist[f, b, T] += 1.0


@njit(cache=True, nogil=True, parallel=True)
def _hist_rows_par(bins, Y, start, end, hist):
    """:func:`_hist_rows` with the features shared out between threads (large nodes)."""
    F = bins.shape[1]
    T = Y.shape[1]
    for f in prange(F):
        hf = hist[f]
        for r in range(start, end):
            b = bins[r, f]
            for t in range(T):
                hf[b, t] += Y[r, t]
            hf[b, T] += 1.0


@njit(cache=True, nogil=True, fastmath=_SCAN_FASTMATH)
def _scan_feature(hf, nb, miss_bin, min_leaf, tot, N, parent, cum):
    """Best split of one feature from its histogram ``hf`` (n_bins + 1, T + 1).

    Returns (gain, bin, missing_left); gain < 0 when no split is valid. Gain is
    SSE(parent) - SSE(left) - SSE(right) summed over outputs: the sums of squares cancel, so
    only the per-bin sums and counts are used, and per candidate bin the work is T
    multiply-adds and two divisions. ``parent`` is sum_t tot[t]^2 / N. Missing values go with
    the child holding more non-missing rows.
    """
    T = hf.shape[1] - 1
    best_g = -1.0
    best_b = -1
    best_ml = False
    if nb < 2:
        return best_g, best_b, best_ml
    mcnt = hf[miss_bin, T]
    nn = N - mcnt
    for t in range(T + 1):
        cum[t] = 0.0
    if mcnt == 0.0:
        for b in range(nb - 1):
            if hf[b, T] == 0.0:
                continue
            for t in range(T + 1):
                cum[t] += hf[b, t]
            nl = cum[T]
            nr = N - nl
            if nr <= 0.0:
                break
            if nl < min_leaf or nr < min_leaf:
                continue
            a = 0.0
            c = 0.0
            for t in range(T):
                lt = cum[t]
                rt = tot[t] - lt
                a += lt * lt
                c += rt * rt
            g = a / nl + c / nr - parent
            if g < 0.0:
                g = 0.0  # rounding; a valid split never increases the SSE
            if g > best_g:
                best_g = g
                best_b = b
                best_ml = nl >= nr
        return best_g, best_b, best_ml
    for b in range(nb - 1):
        if hf[b, T] == 0.0:
            continue
        for t in range(T + 1):
            cum[t] += hf[b, t]
        nl = cum[T]
        nr = nn - nl
        if nr <= 0.0:
            break
        ml = nl >= nr
        nL = nl + mcnt if ml else nl
        nR = N - nL
        if nL < min_leaf or nR < min_leaf:
            continue
        a = 0.0
        c = 0.0
        for t in range(T):
            lt = cum[t] + hf[miss_bin, t] if ml else cum[t]
            rt = tot[t] - lt
            a += lt * lt
            c += rt * rt
        g = a / nL + c / nR - parent
        if g < 0.0:
            g = 0.0
        if g > best_g:
            best_g = g
            best_b = b
            best_ml = ml
    return best_g, best_b, best_ml


@njit(cache=True, nogil=True)
def _parent_term(tot):
    T = tot.shape[0] - 1
    N = tot[T]
    parent = 0.0
    for t in range(T):
        parent += tot[t] * tot[t] / N
    return parent


@njit(cache=True, nogil=True)
def _best_split(hist, nbins, miss_bin, min_leaf, tot, cum):
    """Best split of a node from its histogram: (gain, feature, bin, missing_left).

    Features in order; ties keep the first (lowest feature, then lowest bin). gain < 0 means
    no valid split. See :func:`_scan_feature`.
    """
    N = tot[tot.shape[0] - 1]
    parent = _parent_term(tot)
    best_gain = -1.0
    best_f = -1
    best_b = -1
    best_ml = False
    for f in range(hist.shape[0]):
        g, b, ml = _scan_feature(hist[f], nbins[f], miss_bin, min_leaf, tot, N, parent, cum)
        if g > best_gain:
            best_gain = g
            best_f = f
            best_b = b
            best_ml = ml
    return best_gain, best_f, best_b, best_ml


@njit(cache=True, nogil=True, parallel=True)
def _best_split_par(hist, nbins, miss_bin, min_leaf, tot):
    """:func:`_best_split` with the features shared out between threads; same result."""
    F = hist.shape[0]
    T = hist.shape[2] - 1
    N = tot[T]
    parent = _parent_term(tot)
    gains = np.empty(F)
    bs = np.empty(F, dtype=np.int64)
    mls = np.empty(F, dtype=np.bool_)
    for f in prange(F):
        cum = np.empty(T + 1)
        g, b, ml = _scan_feature(hist[f], nbins[f], miss_bin, min_leaf, tot, N, parent, cum)
        gains[f] = g
        bs[f] = b
        mls[f] = ml
    best_gain = -1.0
    best_f = -1
    best_b = -1
    best_ml = False
    for f in range(F):
        if gains[f] > best_gain:
            best_gain = gains[f]
            best_f = f
            best_b = bs[f]
            best_ml = mls[f]
    return best_gain, best_f, best_b, best_ml


@njit(cache=True, nogil=True)
def _clear_hist(bins, start, end, hist):
    """Zero ``hist`` after it held rows start:end: by re-scan when that is cheaper."""
    F = bins.shape[1]
    if (end - start) < hist.shape[1]:
        for r in range(start, end):
            for f in range(F):
                hist[f, bins[r, f], :] = 0.0
    else:
        hist[:, :, :] = 0.0


@njit(cache=True, nogil=True)
def _heap_before(hg, hn, i, j):
    """Heap order: larger gain first; equal gains by smaller node id (creation order)."""
    return hg[i] > hg[j] or (hg[i] == hg[j] and hn[i] < hn[j])


@njit(cache=True, nogil=True)
def _heap_push(hg, hn, size, g, nd):
    i = size
    hg[i] = g
    hn[i] = nd
    while i > 0:
        p = (i - 1) >> 1
        if not _heap_before(hg, hn, i, p):
            break
        hg[i], hg[p] = hg[p], hg[i]
        hn[i], hn[p] = hn[p], hn[i]
        i = p
    return size + 1


@njit(cache=True, nogil=True)
def _heap_pop(hg, hn, size):
    """Remove the top; returns (node, new size)."""
    top = hn[0]
    size -= 1
    hg[0] = hg[size]
    hn[0] = hn[size]
    i = 0
    while True:
        lft = 2 * i + 1
        if lft >= size:
            break
        c = lft
        if lft + 1 < size and _heap_before(hg, hn, lft + 1, lft):
            c = lft + 1
        if not _heap_before(hg, hn, c, i):
            break
        hg[i], hg[c] = hg[c], hg[i]
        hn[i], hn[c] = hn[c], hn[i]
        i = c
    return top, size


@njit(cache=True, nogil=True)
def _partition_rows(bins, Y, rowsq, rows, start, end, f, b, ml, miss_bin, tb, tY, tq, tr):
    """Stable in-place partition of positions start:end on ``bins[:, f] <= b`` (missing:
    ``ml``). Moves the bin codes, targets, squared norms and row ids together, so that every
    node's rows stay contiguous and in ascending row order. Returns the first right position.
    """
    F = bins.shape[1]
    T = Y.shape[1]
    lo = start
    n_r = 0
    for p in range(start, end):
        v = bins[p, f]
        go_left = ml if v == miss_bin else v <= b
        if go_left:
            if lo != p:
                for j in range(F):
                    bins[lo, j] = bins[p, j]
                for t in range(T):
                    Y[lo, t] = Y[p, t]
                rowsq[lo] = rowsq[p]
                rows[lo] = rows[p]
            lo += 1
        else:
            for j in range(F):
                tb[n_r, j] = bins[p, j]
            for t in range(T):
                tY[n_r, t] = Y[p, t]
            tq[n_r] = rowsq[p]
            tr[n_r] = rows[p]
            n_r += 1
    for q in range(n_r):
        p = lo + q
        for j in range(F):
            bins[p, j] = tb[q, j]
        for t in range(T):
            Y[p, t] = tY[q, t]
        rowsq[p] = tq[q]
        rows[p] = tr[q]
    return lo


@njit(cache=True, nogil=True)
def _grow(
    bins,
    Y,
    rowsq,
    rows,
    nbins,
    miss_bin,
    max_leaves,
    min_leaf,
    min_gain,
    sse_tol,
    retain_min,
    par_min,
    pool,
    n_feat,
    n_bin,
    n_missleft,
    n_left,
    n_right,
    n_count,
    n_start,
    n_end,
):
    """Best-first growth of one tree on the rows held by ``bins``, ``Y``, ``rowsq``, ``rows``.

    The four arrays (bin codes (m, F) uint8, targets (m, T) float32, squared row norms (m,),
    row ids (m,)) are private copies in position order; they are partitioned in place so that
    node ``i`` holds positions ``n_start[i]:n_end[i]`` (contiguous, row ids ascending): every
    histogram scan streams through memory. Node arrays (length 2 * max_leaves - 1) are filled
    in creation order; node 0 is the root. ``pool`` (S, F, n_bins + 1, T + 1) holds
    histograms. Slots 0 and 1 are scratch (kept all-zero while free); a node with at least
    ``retain_min`` rows keeps its histogram in a pool slot while it waits to be split, so that
    its larger child is obtained by subtraction (only the smaller child is scanned). Nodes
    with at least ``par_min`` rows are histogrammed and scanned with the features shared out
    between threads (same result). Open leaves wait in a max-heap keyed by gain (ties:
    creation order). Returns the number of nodes.
    """
    F = bins.shape[1]
    T = Y.shape[1]
    S = pool.shape[0]
    m_rows = bins.shape[0]
    max_nodes = n_feat.shape[0]
    heap_g = np.empty(max_nodes)
    heap_n = np.empty(max_nodes, dtype=np.int64)
    n_heap = 0
    slot = np.full(max_nodes, -1, dtype=np.int64)
    sumsq = np.zeros(max_nodes)
    tot = np.zeros(T + 1)
    cum = np.zeros(T + 1)
    free = np.empty(S, dtype=np.int64)
    n_free = 0
    for s in range(S - 1, 1, -1):
        free[n_free] = s
        n_free += 1
    pool[0, :, :, :] = 0.0
    pool[1, :, :, :] = 0.0

    for i in range(max_nodes):
        n_feat[i] = -1
        n_left[i] = -1
        n_right[i] = -1
    n_nodes = 1
    n_start[0] = 0
    n_end[0] = m_rows
    n_count[0] = m_rows
    if m_rows == 0 or F == 0:
        return n_nodes
    # right-hand rows of a partition wait here (at most half the parent: no, any share)
    tb = np.empty((m_rows, F), dtype=bins.dtype)
    tY = np.empty((m_rows, T), dtype=Y.dtype)
    tq = np.empty(m_rows, dtype=rowsq.dtype)
    tr = np.empty(m_rows, dtype=rows.dtype)

    acc = 0.0
    for p in range(m_rows):
        acc += rowsq[p]
    sumsq[0] = acc
    ev_nodes = np.empty(2, dtype=np.int64)
    ev_slots = np.empty(2, dtype=np.int64)
    if m_rows >= retain_min and n_free > 0:
        n_free -= 1
        s0 = free[n_free]
        pool[s0, :, :, :] = 0.0
    else:
        s0 = 0
    if m_rows >= par_min:
        _hist_rows_par(bins, Y, 0, m_rows, pool[s0])
    else:
        _hist_rows(bins, Y, 0, m_rows, pool[s0])
    ev_nodes[0] = 0
    ev_slots[0] = s0
    n_ev = 1
    n_leaves = 1
    while True:
        for e in range(n_ev):
            nd = ev_nodes[e]
            s = ev_slots[e]
            h = pool[s]
            for t in range(T + 1):
                acc = 0.0
                for b in range(h.shape[1]):
                    acc += h[0, b, t]
                tot[t] = acc
            N = tot[T]
            parent = 0.0
            for t in range(T):
                parent += tot[t] * tot[t] / N
            sse = sumsq[nd] - parent
            is_cand = False
            if 2 * min_leaf <= N and sse > sse_tol * N:
                if n_count[nd] >= par_min:
                    g, bf, bb, bml = _best_split_par(h, nbins, miss_bin, min_leaf, tot)
                else:
                    g, bf, bb, bml = _best_split(h, nbins, miss_bin, min_leaf, tot, cum)
                if bf >= 0 and g >= min_gain:
                    is_cand = True
                    n_heap = _heap_push(heap_g, heap_n, n_heap, g, nd)
                    n_feat[nd] = bf
                    n_bin[nd] = bb
                    n_missleft[nd] = bml
            if s <= 1:
                _clear_hist(bins, n_start[nd], n_end[nd], h)
            elif is_cand:
                slot[nd] = s
            else:
                free[n_free] = s
                n_free += 1
        if n_leaves >= max_leaves or n_heap == 0:
            break
        # split the open leaf with the largest gain
        nd, n_heap = _heap_pop(heap_g, heap_n, n_heap)
        lo = _partition_rows(
            bins,
            Y,
            rowsq,
            rows,
            n_start[nd],
            n_end[nd],
            n_feat[nd],
            n_bin[nd],
            n_missleft[nd],
            miss_bin,
            tb,
            tY,
            tq,
            tr,
        )
        L = n_nodes
        R = n_nodes + 1
        n_nodes += 2
        n_left[nd] = L
        n_right[nd] = R
        n_start[L] = n_start[nd]
        n_end[L] = lo
        n_start[R] = lo
        n_end[R] = n_end[nd]
        n_count[L] = n_end[L] - n_start[L]
        n_count[R] = n_end[R] - n_start[R]
        if n_count[L] <= n_count[R]:
            small = L
            large = R
        else:
            small = R
            large = L
        # smaller child: scanned
        if n_count[small] >= retain_min and n_free > 0:
            n_free -= 1
            ss = free[n_free]
            pool[ss, :, :, :] = 0.0
        else:
            ss = 0
        if n_count[small] >= par_min:
            _hist_rows_par(bins, Y, n_start[small], n_end[small], pool[ss])
        else:
            _hist_rows(bins, Y, n_start[small], n_end[small], pool[ss])
        acc = 0.0
        for p in range(n_start[small], n_end[small]):
            acc += rowsq[p]
        sumsq[small] = acc
        sumsq[large] = sumsq[nd] - acc
        # larger child: parent minus smaller when the parent kept its histogram
        if slot[nd] >= 0:
            sl = slot[nd]
            slot[nd] = -1
            pl = pool[sl]
            ps = pool[ss]
            for ff in range(F):
                for bb2 in range(pl.shape[1]):
                    if ps[ff, bb2, T] != 0.0:
                        for t in range(T + 1):
                            pl[ff, bb2, t] -= ps[ff, bb2, t]
        else:
            if n_count[large] >= retain_min and n_free > 0:
                n_free -= 1
                sl = free[n_free]
                pool[sl, :, :, :] = 0.0
            else:
                sl = 1
            if n_count[large] >= par_min:
                _hist_rows_par(bins, Y, n_start[large], n_end[large], pool[sl])
            else:
                _hist_rows(bins, Y, n_start[large], n_end[large], pool[sl])
        ev_nodes[0] = small
        ev_slots[0] = ss
        ev_nodes[1] = large
        ev_slots[1] = sl
        n_ev = 2
        n_leaves += 1
    return n_nodes


@njit(cache=True, nogil=True, parallel=True)
def _assign_bins(Zs, feats, edges, miss_bin, out):
    """out[i, j] = number of edges of feature j below Zs[feats[j], i] (NaN -> miss_bin).

    ``edges`` rows are sorted and padded with +inf to width 256 (``max_bins <= 255``); the
    search is branch-free and unrolled. Rows are shared out between threads in blocks.
    """
    F = feats.shape[0]
    n = Zs.shape[1]
    block = 4096
    for k in prange((n + block - 1) // block):
        for i in range(k * block, min(n, (k + 1) * block)):
            for j in range(F):
                x = Zs[feats[j], i]
                e = edges[j]
                lo = 0
                for step in (128, 64, 32, 16, 8, 4, 2, 1):  # unrolled: W = 256
                    lo += step * np.int64(e[lo + step - 1] < x)
                out[i, j] = miss_bin if x != x else lo


@njit(cache=True, nogil=True, parallel=True)
def _sorted_finite_rows(Zs, feats, idx):
    """Per feature j: the finite values of Zs[feats[j], idx], sorted, and their count."""
    F = feats.shape[0]
    m = idx.shape[0]
    out = np.empty((F, m))
    cnt = np.zeros(F, dtype=np.int64)
    for j in prange(F):
        buf = np.empty(m)
        c = 0
        for i in range(m):
            v = Zs[feats[j], idx[i]]
            if np.isfinite(v):
                buf[c] = v
                c += 1
        out[j, :c] = np.sort(buf[:c])
        cnt[j] = c
    return out, cnt


@njit(cache=True, nogil=True)
def _finite_stats(x):
    """(count, min, max, mean, std) of the finite values of x (two passes, ddof 0)."""
    cnt = 0
    lo = np.inf
    hi = -np.inf
    s = 0.0
    for v in x:
        if np.isfinite(v):
            cnt += 1
            s += v
            lo = min(lo, v)
            hi = max(hi, v)
    if cnt == 0:
        return 0, np.nan, np.nan, np.nan, np.nan
    m = s / cnt
    ss = 0.0
    for v in x:
        if np.isfinite(v):
            ss += (v - m) * (v - m)
    return cnt, lo, hi, m, np.sqrt(ss / cnt)


@njit(cache=True, nogil=True, parallel=True)
def _zscore_into(x, center, scale, out, j):
    """out[:, j] = (x - center) / scale as float32; non-finite -> 0."""
    n = x.shape[0]
    block = 16384
    for k in prange((n + block - 1) // block):
        for i in range(k * block, min(n, (k + 1) * block)):
            v = x[i]
            out[i, j] = (v - center) / scale if np.isfinite(v) else 0.0


@njit(cache=True, nogil=True)
def _rows_with_nan(Z):
    """Columns of Z (p, n) holding a NaN, as a bool mask of shape (n,)."""
    out = np.zeros(Z.shape[1], dtype=np.bool_)
    for r in range(Z.shape[0]):
        for i in range(Z.shape[1]):
            if Z[r, i] != Z[r, i]:
                out[i] = True
    return out


@njit(cache=True, nogil=True)
def _row_sumsq(Y):
    out = np.empty(Y.shape[0])
    for i in range(Y.shape[0]):
        acc = 0.0
        for t in range(Y.shape[1]):
            v = np.float64(Y[i, t])
            acc += v * v
        out[i] = acc
    return out


# --------------------------------------------------------------------------------------------
# node table: trees and tries assembled, then renumbered in depth-first pre-order
# --------------------------------------------------------------------------------------------


class _NodeTable:
    """Mutable tree under construction (creation-order ids; root is 0)."""

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.weight: list[float] = []
        self.children: list[list[tuple[int, int]]] = []  # (code or 0/1, child id)

    def add(self, weight: float) -> int:
        self.kind.append(LEAF)
        self.feature.append(-1)
        self.threshold.append(np.nan)
        self.weight.append(float(weight))
        self.children.append([])
        return len(self.kind) - 1

    def set_numeric(self, nd: int, feature: int, threshold: float, left: int, right: int) -> None:
        self.kind[nd] = NUMERIC
        self.feature[nd] = int(feature)
        self.threshold[nd] = float(threshold)
        self.children[nd] = [(0, left), (1, right)]

    def set_key(self, nd: int, feature: int, children: list[tuple[int, int]]) -> None:
        self.kind[nd] = KEY
        self.feature[nd] = int(feature)
        self.children[nd] = sorted(children)

    def finalize(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Arrays in pre-order, and ``new_id`` (old id -> pre-order id)."""
        m = len(self.kind)
        order: list[int] = []
        stack = [0]
        while stack:
            nd = stack.pop()
            order.append(nd)
            stack.extend(c for _, c in reversed(self.children[nd]))
        if len(order) != m:  # pragma: no cover - construction bug
            raise RuntimeError("partitioner node table is not a tree")
        new_id = np.empty(m, dtype=np.int64)
        new_id[order] = np.arange(m)
        kind = np.asarray(self.kind, dtype=np.int8)[order]
        feature = np.asarray(self.feature, dtype=np.int32)[order]
        threshold = np.asarray(self.threshold, dtype=np.float64)[order]
        weight = np.asarray(self.weight, dtype=np.float64)[order]
        right = np.full(m, -1, dtype=np.int32)
        parent = np.full(m, -1, dtype=np.int32)
        ptr = np.zeros(m + 1, dtype=np.int64)
        codes: list[int] = []
        kids: list[int] = []
        for i, old in enumerate(order):
            ch = self.children[old]
            for _, c in ch:
                parent[new_id[c]] = i
            if self.kind[old] == NUMERIC:
                right[i] = new_id[ch[1][1]]
                if new_id[ch[0][1]] != i + 1:  # pragma: no cover - pre-order invariant
                    raise RuntimeError("left child must follow its parent")
            elif self.kind[old] == KEY:
                codes.extend(int(c) for c, _ in ch)
                kids.extend(int(new_id[c]) for _, c in ch)
            ptr[i + 1] = len(codes)
        depth = np.zeros(m, dtype=np.int32)
        for i in range(1, m):
            depth[i] = depth[parent[i]] + 1
        leaves = np.flatnonzero(kind == LEAF).astype(np.int32)
        segment = np.full(m, -1, dtype=np.int32)
        segment[leaves] = np.arange(leaves.size, dtype=np.int32)
        max_depth = int(depth.max()) if m else 0
        anc = np.full((leaves.size, max_depth + 1), -1, dtype=np.int32)
        for s, leaf in enumerate(leaves):
            nd, j = int(leaf), 0
            while nd >= 0:
                anc[s, j] = nd
                nd = int(parent[nd])
                j += 1
        arrays = {
            "node_kind": kind,
            "node_feature": feature,
            "node_threshold": threshold,
            "node_right": right,
            "node_parent": parent,
            "node_depth": depth,
            "node_weight": weight,
            "node_count": np.zeros(m, dtype=np.int64),
            "node_segment": segment,
            "child_ptr": ptr,
            "child_code": np.asarray(codes, dtype=np.int32),
            "child_node": np.asarray(kids, dtype=np.int32),
            "segment_node": leaves,
            "ancestors": anc,
        }
        return arrays, new_id


def _subtree_counts(
    parent: np.ndarray, segment_node: np.ndarray, segments: np.ndarray
) -> np.ndarray:
    """Rows in each node's subtree given each row's segment (pre-order: children > parents)."""
    m = parent.shape[0]
    counts = np.zeros(m, dtype=np.int64)
    counts[segment_node] = np.bincount(segments, minlength=segment_node.shape[0])
    for i in range(m - 1, 0, -1):
        counts[parent[i]] += counts[i]
    return counts


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _as_columns(X: Any) -> tuple[dict[str, Any], list[str], int]:
    """DataFrame / 2-d array / mapping of columns -> (columns, names, n_rows)."""
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
        if len(set(names)) != len(names):
            dup = pd.Index(names)[pd.Index(names).duplicated()][0]
            raise SchemaError(f"column {dup!r} appears more than once in X")
        cols = {str(c): X[c] for c in X.columns}
        return cols, names, int(X.shape[0])
    if isinstance(X, Mapping):
        names = [str(c) for c in X]
        cols = {str(k): v for k, v in X.items()}
        lens = {k: len(v) for k, v in cols.items()}
        n = next(iter(lens.values())) if lens else 0
        for k, m in lens.items():
            if m != n:
                raise SchemaError(f"column {k!r}: length {m} differs from {n}")
        return cols, names, int(n)
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise DataError(f"X must be a DataFrame or a 2-d array, got shape {arr.shape}")
    names = [f"x{j}" for j in range(arr.shape[1])]
    return {nm: arr[:, j] for j, nm in enumerate(names)}, names, int(arr.shape[0])


def _extra_targets(y: Any, n: int, taken: set[str]) -> dict[str, np.ndarray]:
    """``y`` passed to fit: extra fit-only target columns."""
    if y is None:
        return {}
    if isinstance(y, pd.Series):
        y = y.to_frame(name=str(y.name) if y.name is not None else "y")
    if isinstance(y, pd.DataFrame):
        out = {str(c): numeric_column(str(c), y[c], n) for c in y.columns}
    else:
        arr = np.asarray(y)
        if arr.ndim == 1:
            out = {"y": numeric_column("y", arr, n)}
        elif arr.ndim == 2:
            out = {f"y{j}": numeric_column(f"y{j}", arr[:, j], n) for j in range(arr.shape[1])}
        else:
            raise DataError(f"y must be 1-d or 2-d, got shape {arr.shape}")
    for k in out:
        if k in taken:
            raise SchemaError(f"target column {k!r} from y clashes with a column of X")
    return out


def _category_table(name: str, values: Any, allow_missing: bool) -> pd.Index:
    strings, missing = category_strings(values)
    if missing.all():
        raise DataError(f"column {name!r}: all values are missing")
    if missing.any() and not allow_missing:
        raise DataError(
            f"key column {name!r}: {int(missing.sum())} missing values; fill them "
            "with an explicit category (e.g. 'unknown') before fitting"
        )
    return pd.Index(np.unique(strings[~missing].astype(str)).astype(object), dtype=object)


def _quantile_bins(
    Z: np.ndarray, feats: np.ndarray, max_bins: int, rng: np.random.Generator, sample: int = 200_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin rows ``feats`` of Z (p, n): uint8 codes (n, len(feats)) with NaN -> ``max_bins``.

    Edges come from the distinct values (midpoints) when a seeded sample of up to ``sample``
    rows (one sample shared by all features) has at most ``max_bins`` distinct finite values,
    else from their quantiles. Code ``b`` means ``edges[b-1] < x <= edges[b]``, so
    ``code <= b`` iff ``x <= edges[b]`` (the routed test).
    """
    n = Z.shape[1]
    F = feats.shape[0]
    edges = np.full((F, max(max_bins - 1, 1)), np.inf)
    nbins = np.ones(F, dtype=np.int64)
    idx = (np.sort(rng.choice(n, sample, replace=False)) if n > sample else np.arange(n)).astype(
        np.int64
    )
    srt, cnt = _sorted_finite_rows(Z, feats, idx)
    for f in range(F):
        fin = srt[f, : cnt[f]]
        if fin.size == 0:
            continue
        u = fin[np.concatenate([[True], fin[1:] != fin[:-1]])]
        if u.size <= max_bins:
            th = u[:-1] + (u[1:] - u[:-1]) / 2.0
            bad = th >= u[1:]  # adjacent floats: the midpoint rounds up
            th[bad] = u[:-1][bad]
        else:
            pos = np.linspace(0.0, fin.size - 1.0, max_bins + 1)[1:-1]
            lo = np.floor(pos).astype(np.int64)
            w = pos - lo
            hi = np.minimum(lo + 1, fin.size - 1)
            th = np.unique(fin[lo] * (1.0 - w) + fin[hi] * w)
            th = th[th < u[-1]]  # an edge at the maximum separates nothing
        edges[f, : th.size] = th
        nbins[f] = th.size + 1
    bins = np.empty((n, F), dtype=np.uint8)
    padded = np.full((F, 256), np.inf)
    padded[:, : edges.shape[1]] = edges
    _assign_bins(Z, feats, padded, max_bins, bins)
    return bins, edges, nbins


def _check_positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------


class _BasePartitioner(BaseEstimator):
    """Shared fit/routing/export machinery. Subclasses define ``_levels`` and ``_has_tree``."""

    _export_kind = "tree"

    # -------------------------------------------------------------- hooks
    def _levels(self) -> list[str]:
        return []

    def _has_tree(self) -> bool:
        return True

    def _tree_param(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    # -------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any = None) -> _BasePartitioner:
        """Fit the partition.

        Parameters
        ----------
        X : pandas.DataFrame, mapping of str to array of shape (n,), or array of shape (n, p)
            Training rows. Arrays get column names ``x0 .. x{p-1}``. Numeric columns must be
            numeric; string columns must be declared (``categorical_features`` or ``levels``).
        y : array-like of shape (n,) or (n, k), pandas Series or DataFrame, optional
            Extra fit-only target columns (like ``y_columns``): they shape the tree but are not
            needed for routing. Ignored by :class:`KeyPartitioner`.

        Returns
        -------
        self

        Raises
        ------
        DataError
            Empty X, fewer than 2 rows, an all-missing column, missing business-key values,
            no numeric column to build the target from.
        SchemaError
            A non-numeric column not declared categorical, a declared column absent from X, a
            ``weights`` key that is not a target column; the message names the column.
        ValueError
            Invalid hyper-parameters (named in the message).
        """
        self._fit(X, y)
        return self

    def fit_partition(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit and return the training rows' segments (int32 of shape (n,), ``segments_``)."""
        return self.fit(X, y).segments_

    def _fit(self, X: Any, y: Any) -> None:
        cols, names, n = _as_columns(X)
        if n == 0 or not names:
            raise DataError(f"X is empty ({n} rows, {len(names)} columns)")
        if n < 2:
            raise DataError("X has a single row; a partition needs at least 2 rows")
        levels = [str(c) for c in self._levels()]
        has_tree = self._has_tree()
        if len(set(levels)) != len(levels):
            raise SchemaError(f"levels repeat a column: {levels}")
        for c in levels:
            if c not in cols:
                raise SchemaError(f"key column {c!r} (levels) is not in X")
        cat: list[str] = []
        ycols: list[str] = []
        numeric: list[str] = []
        Y = np.zeros((n, 0), dtype=np.float32)
        target_names: list[str] = []
        encoding = "onehot"
        if has_tree:
            encoding = self._tree_param("category_encoding", "onehot")
            if encoding not in ("onehot", "target"):
                raise ValueError(
                    f"category_encoding must be 'onehot' or 'target', got {encoding!r}"
                )
            max_leaf = _check_positive_int("max_leaf_nodes", self.max_leaf_nodes, 1)
            _check_positive_int("min_samples_leaf", self.min_samples_leaf, 1)
            mb = _check_positive_int("max_bins", self.max_bins, 2)
            if mb > 255:
                raise ValueError(f"max_bins must be <= 255, got {mb}")
            if not (
                isinstance(self.min_impurity_decrease, (int, float))
                and self.min_impurity_decrease >= 0
            ):
                raise ValueError(
                    "min_impurity_decrease must be a number >= 0, got "
                    f"{self.min_impurity_decrease!r}"
                )
            if self.algorithm not in ("hist", "exact"):
                raise ValueError(f"algorithm must be 'hist' or 'exact', got {self.algorithm!r}")
            del max_leaf
            cat = [str(c) for c in (self.categorical_features or [])]
            ycols = [str(c) for c in (self.y_columns or [])]
            for group, label in ((cat, "categorical_features"), (ycols, "y_columns")):
                for c in group:
                    if c not in cols:
                        raise SchemaError(f"column {c!r} ({label}) is not in X")
                    if c in levels:
                        raise SchemaError(f"column {c!r} is both a key level and in {label}")
            for c in set(cat) & set(ycols):
                raise SchemaError(f"column {c!r} is both categorical and a y_column")
            skip = set(levels) | set(cat) | set(ycols)
            numeric = [c for c in names if c not in skip]
            raw: dict[str, np.ndarray] = {}
            stats: dict[str, tuple] = {}
            for c in numeric + ycols:
                try:
                    raw[c] = numeric_column(c, cols[c], n)
                except SchemaError as exc:
                    raise SchemaError(
                        f"{exc}; list it in categorical_features" + (" or levels" if levels else "")
                    ) from None
                stats[c] = _finite_stats(raw[c])
                cnt, lo, hi, _, _ = stats[c]
                if cnt == 0:
                    raise DataError(f"column {c!r}: all values are missing (or infinite)")
                if lo == hi:
                    warnings.warn(
                        f"column {c!r} is constant; it cannot split and only adds a "
                        "zero-variance target",
                        UserWarning,
                        stacklevel=3,
                    )
            for k, v in _extra_targets(y, n, set(names)).items():
                if _finite_stats(v)[0] == 0:
                    raise DataError(f"target {k!r} (y): all values are missing")
                raw[k] = v
                ycols = [*ycols, k]
            target_names = numeric + ycols
            if not target_names:
                raise DataError(
                    "no numeric column to build the variance target from; add "
                    "numeric features or y_columns"
                )
            Y = self._scaled_targets(raw, target_names, n, stats)
        # category tables (shared encoding code with the router)
        categories: dict[str, pd.Index] = {}
        for c in cat:
            categories[c] = _category_table(c, cols[c], allow_missing=True)
        for c in levels:
            categories[c] = _category_table(c, cols[c], allow_missing=False)
        design: list[DesignColumn] = [DesignColumn(c, "numeric") for c in numeric]
        target_encoding: dict[str, np.ndarray] = {}
        for c in cat:
            if encoding == "onehot":
                design.extend(DesignColumn(c, "onehot", j) for j in range(len(categories[c])))
            else:
                design.append(DesignColumn(c, "target"))
        key_rows = []
        for c in levels:
            key_rows.append(len(design))
            design.append(DesignColumn(c, "key"))
        if encoding == "target" and cat:
            schema0 = FeatureSchema(tuple(design), categories, {}, tuple(levels))
            codes = schema0.codes(cols, n)
            ybar = Y.mean(axis=1, dtype=np.float64)
            m = float(self.target_smoothing)
            if m < 0:
                raise ValueError(f"target_smoothing must be >= 0, got {m}")
            mu = float(ybar.mean())
            for c in cat:
                k = len(categories[c])
                ok = codes[c] >= 0
                s = np.bincount(codes[c][ok], weights=ybar[ok], minlength=k)
                cnt = np.bincount(codes[c][ok], minlength=k)
                target_encoding[c] = (s + m * mu) / (cnt + m) if m > 0 else s / np.maximum(cnt, 1)
        schema = FeatureSchema(tuple(design), categories, target_encoding, tuple(levels))
        Z, codes = schema.design(cols)

        table = _NodeTable()
        root = table.add(n)
        row_leaf = np.zeros(n, dtype=np.int64)  # growth-time leaf (table id) per training row
        key_leaves: list[tuple[int, np.ndarray]] = [(root, np.arange(n))]
        if levels:
            key_leaves = self._build_trie(table, codes, levels, key_rows, n, row_leaf)
        if has_tree and key_leaves:
            self._grow_trees(table, Z, Y, key_rows, key_leaves, row_leaf, n)
        arrays, new_id = table.finalize()
        fit_segments = arrays["node_segment"][new_id[row_leaf]]

        meta_schema, schema_arrays = schema.to_meta()
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self._export_kind,
            "n_segments": int(arrays["segment_node"].shape[0]),
            "max_depth": int(arrays["ancestors"].shape[1] - 1),
            "numeric_features": numeric,
            "categorical_features": cat,
            "category_encoding": encoding if cat else None,
            "y_columns": ycols,
            "target_columns": target_names,
            "algorithm": self._tree_param("algorithm") if has_tree else None,
            "scaler": (
                None
                if not has_tree
                else "zscore"
                if self._tree_param("scaler") is None
                else type(self._tree_param("scaler")).__name__
            ),
            **meta_schema,
        }
        arrays.update(schema_arrays)
        arrays.update(self._scaler_arrays())
        router = Router.from_arrays(arrays, meta)
        if has_tree and self._tree_param("algorithm") == "hist":
            # a complete row routes where it grew (code <= b iff x <= edges[b], the routed
            # test on the same float64 design values); only rows with a missing split value
            # are re-routed by the look-ahead rule
            segments = fit_segments.astype(np.int32)
            miss = _rows_with_nan(Z)
            if miss.any():
                segments[miss] = router.route_design(Z[:, miss]).segment
        else:
            segments = router.route_design(Z).segment
        arrays["node_count"] = _subtree_counts(
            arrays["node_parent"], arrays["segment_node"], segments
        )
        self._arrays = arrays
        self._meta = meta
        self.router_ = Router.from_arrays(arrays, meta)
        self.schema_ = schema
        self.segments_ = segments
        self.fit_segments_ = fit_segments.astype(np.int32)
        self.n_segments_ = int(arrays["segment_node"].shape[0])
        self.n_features_in_ = len(names)
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.target_columns_ = list(target_names)
        self.ancestors_ = arrays["ancestors"]
        self.node_count_ = arrays["node_count"]
        self.node_weight_ = arrays["node_weight"]
        self.node_parent_ = arrays["node_parent"]
        self.node_depth_ = arrays["node_depth"]
        self.segment_node_ = arrays["segment_node"]
        self.segment_sizes_ = arrays["node_count"][arrays["segment_node"]]

    def _scaled_targets(
        self, raw: dict[str, np.ndarray], names: list[str], n: int, stats: dict[str, tuple]
    ) -> np.ndarray:
        """Scaled, weighted targets as float32 (n, T); missing/infinite -> 0 (the mean).

        ``stats`` holds :func:`_finite_stats` of columns already scanned (others are scanned).
        """
        scaler = self._tree_param("scaler")
        Y = np.empty((n, len(names)), dtype=np.float32)
        if scaler is None:
            center = np.empty(len(names))
            scale = np.empty(len(names))
            for j, c in enumerate(names):
                st = stats[c] if c in stats else _finite_stats(raw[c])
                _, _, _, center[j], scale[j] = st
            scale[~(scale > 0)] = 1.0
            for j, c in enumerate(names):
                _zscore_into(raw[c], center[j], scale[j], Y, j)
            self.scaler_ = None
            self._scaler_params = (center, scale)
        else:
            T = np.column_stack([raw[c] for c in names]).astype(np.float64)
            T[~np.isfinite(T)] = np.nan
            self.scaler_ = clone(scaler)
            S = np.asarray(self.scaler_.fit_transform(T), dtype=np.float64)
            if S.shape != T.shape:
                raise ValueError(f"scaler must keep the shape {T.shape}, returned {S.shape}")
            Y[:] = np.where(np.isfinite(S), S, 0.0)
            center = getattr(self.scaler_, "mean_", getattr(self.scaler_, "center_", None))
            sc = getattr(self.scaler_, "scale_", None)
            self._scaler_params = (
                None
                if center is None or sc is None
                else (np.asarray(center, dtype=np.float64), np.asarray(sc, dtype=np.float64))
            )
        weights = self._tree_param("weights") or {}
        for k, w in weights.items():
            if k not in names:
                raise SchemaError(f"weights: {k!r} is not a target column (targets: {names})")
            Y[:, names.index(k)] *= np.float32(w)
        return Y

    def _scaler_arrays(self) -> dict[str, np.ndarray]:
        p = getattr(self, "_scaler_params", None)
        if p is None:
            return {}
        return {"scaler_center": p[0], "scaler_scale": p[1]}

    @staticmethod
    def _build_trie(
        table: _NodeTable,
        codes: dict[str, np.ndarray],
        levels: list[str],
        key_rows: list[int],
        n: int,
        row_leaf: np.ndarray,
    ) -> list[tuple[int, np.ndarray]]:
        """Add one node per observed key prefix; return (leaf id, rows) per full combination."""
        C = np.column_stack([codes[c] for c in levels]).astype(np.int64)
        row_node = np.zeros(n, dtype=np.int64)  # node of each row at the current depth
        for d in range(len(levels)):
            uniq, inv, cnt = np.unique(
                C[:, : d + 1], axis=0, return_inverse=True, return_counts=True
            )
            inv = inv.reshape(-1)
            ids = np.empty(uniq.shape[0], dtype=np.int64)
            first = np.full(uniq.shape[0], -1, dtype=np.int64)
            first[inv[::-1]] = np.arange(n)[::-1]
            parents = row_node[first]
            children: dict[int, list[tuple[int, int]]] = {}
            for u in range(uniq.shape[0]):
                ids[u] = table.add(cnt[u])
                children.setdefault(int(parents[u]), []).append((int(uniq[u, d]), int(ids[u])))
            for p, ch in children.items():
                table.set_key(p, key_rows[d], ch)
            row_node = ids[inv]
        row_leaf[:] = row_node
        order = np.argsort(row_node, kind="stable")
        bounds = np.flatnonzero(np.diff(row_node[order])) + 1
        return [(int(row_node[g[0]]), g) for g in np.split(order, bounds)]

    def _grow_trees(
        self,
        table: _NodeTable,
        Z: np.ndarray,
        Y: np.ndarray,
        key_rows: list[int],
        key_leaves: list[tuple[int, np.ndarray]],
        row_leaf: np.ndarray,
        n: int,
    ) -> None:
        split_rows = np.array(
            [r for r in range(Z.shape[0]) if r not in set(key_rows)], dtype=np.int64
        )
        T = Y.shape[1]
        budget = int(self.max_leaf_nodes)
        msl = int(self.min_samples_leaf)
        min_gain = float(self.min_impurity_decrease) * n * T
        if self.algorithm == "exact":
            self._grow_exact(table, Z, Y, split_rows, key_leaves, row_leaf, budget, msl, n)
            return
        mb = int(self.max_bins)
        rng = np.random.default_rng(self.random_state)
        bins, edges, nbins = _quantile_bins(Z, split_rows, mb, rng)
        rowsq = _row_sumsq(Y)
        F = split_rows.size
        slot_bytes = max(F, 1) * (mb + 1) * (T + 1) * 8
        mem = float(self.histogram_memory_mb) * 2**20
        n_slots = int(max(3, min(2 * budget + 2, mem // slot_bytes)))
        pool = np.empty((n_slots, max(F, 1), mb + 1, T + 1))
        max_nodes = 2 * budget - 1
        # below this many rows a histogram costs more to keep than to rebuild by a scan
        retain_min = 2 * (mb + 1)
        par_min = self._par_min(F, mb, T)
        sse_tol = 1e-12 * max(T, 1)
        for leaf_id, rows in key_leaves:
            rows = np.ascontiguousarray(rows, dtype=np.int64)
            if rows.shape[0] == n:  # one tree over all rows: reorder the fit's own arrays
                kb, kY, kq = bins, Y, rowsq
            else:
                kb, kY, kq = bins[rows], Y[rows], rowsq[rows]
            nf = np.empty(max_nodes, dtype=np.int64)
            nb = np.zeros(max_nodes, dtype=np.int64)
            nml = np.zeros(max_nodes, dtype=np.bool_)
            nl = np.empty(max_nodes, dtype=np.int64)
            nr = np.empty(max_nodes, dtype=np.int64)
            ncnt = np.zeros(max_nodes, dtype=np.int64)
            nst = np.zeros(max_nodes, dtype=np.int64)
            nen = np.zeros(max_nodes, dtype=np.int64)
            m = _grow(
                kb,
                kY,
                kq,
                rows,
                nbins,
                mb,
                budget,
                msl,
                min_gain,
                sse_tol,
                retain_min,
                par_min,
                pool,
                nf,
                nb,
                nml,
                nl,
                nr,
                ncnt,
                nst,
                nen,
            )
            ids = np.empty(m, dtype=np.int64)
            ids[0] = leaf_id
            for i in range(1, m):
                ids[i] = table.add(ncnt[i])
            for i in range(m):
                if nl[i] >= 0:
                    table.set_numeric(
                        int(ids[i]),
                        int(split_rows[nf[i]]),
                        float(edges[nf[i], nb[i]]),
                        int(ids[nl[i]]),
                        int(ids[nr[i]]),
                    )
                else:
                    row_leaf[rows[nst[i] : nen[i]]] = ids[i]

    @staticmethod
    def _par_min(F: int, max_bins: int, T: int) -> int:
        """Rows from which a node's histogram and split scan use all numba threads."""
        if numba.get_num_threads() < 2 or F < 2:
            return np.iinfo(np.int64).max
        return _PAR_MIN_ROWS

    def _grow_exact(
        self,
        table: _NodeTable,
        Z: np.ndarray,
        Y: np.ndarray,
        split_rows: np.ndarray,
        key_leaves: list[tuple[int, np.ndarray]],
        row_leaf: np.ndarray,
        budget: int,
        msl: int,
        n: int,
    ) -> None:
        from sklearn.tree import DecisionTreeRegressor

        Xs = Z[split_rows].T.astype(np.float32)
        self.estimators_ = []
        for leaf_id, rows in key_leaves:
            if budget < 2 or rows.size < 2 or split_rows.size == 0:
                self.estimators_.append(None)
                continue
            est = DecisionTreeRegressor(
                max_leaf_nodes=budget,
                min_samples_leaf=msl,
                min_impurity_decrease=float(self.min_impurity_decrease) * n / rows.size,
                random_state=self.random_state,
            )
            est.fit(Xs[rows], Y[rows])
            self.estimators_.append(est)
            t = est.tree_
            ids = np.empty(t.node_count, dtype=np.int64)
            ids[0] = leaf_id
            for i in range(1, t.node_count):
                ids[i] = table.add(t.weighted_n_node_samples[i])
            for i in range(t.node_count):
                if t.children_left[i] >= 0:
                    table.set_numeric(
                        int(ids[i]),
                        int(split_rows[t.feature[i]]),
                        float(t.threshold[i]),
                        int(ids[t.children_left[i]]),
                        int(ids[t.children_right[i]]),
                    )
            row_leaf[rows] = ids[est.apply(Xs[rows])]
        if len(self.estimators_) == 1:
            self.estimator_ = self.estimators_[0]

    # -------------------------------------------------------------- fitted use
    def _check_fitted(self) -> None:
        if not hasattr(self, "router_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit first")

    def route(self, X: Any) -> RouteResult:
        """Route rows to segments with the exported arrays (the worker's code path).

        Parameters
        ----------
        X : pandas.DataFrame, mapping of str to array of shape (n,), or array of shape (n, p)
            Must contain the routing columns (``router_.required_columns``); ``y_columns``
            may be absent. A 2-d array must have the fit-time column order.

        Returns
        -------
        shared.routing.RouteResult

        Raises
        ------
        NotFittedError
            Before ``fit``.
        SchemaError
            A routing column is absent or not numeric where it must be (named).
        """
        self._check_fitted()
        if isinstance(X, (pd.DataFrame, Mapping)):
            cols = X
        else:
            arr = np.asarray(X)
            if arr.ndim != 2 or arr.shape[1] != self.n_features_in_:
                raise SchemaError(
                    f"X has shape {arr.shape}; expected (n, {self.n_features_in_})"
                    f" columns {list(self.feature_names_in_)}"
                )
            cols = {nm: arr[:, j] for j, nm in enumerate(self.feature_names_in_)}
        return self.router_.route(cols)

    def partition(self, X: Any) -> np.ndarray:
        """Segment id of each row, int32 of shape (n,) in ``0..n_segments_-1``.

        Same input and errors as :meth:`route`.
        """
        return self.route(X).segment

    def export(self) -> ExportedComponent:
        """Plain arrays and JSON meta for the bundle (``kind="partitioner"``).

        Returns
        -------
        shared.component.ExportedComponent
            ``arrays``: the node arrays listed in :class:`segstream.shared.routing.Router`, plus
            ``target_encoding__<column>`` (float64 per category) and ``scaler_center`` /
            ``scaler_scale`` (float64 per target column) when available. ``meta``: format
            version, kind (tree/keys/composite), feature and target names, design columns,
            category tables (lists of str), key columns.

        Raises
        ------
        NotFittedError
            Before ``fit``.
        """
        self._check_fitted()
        return ExportedComponent(
            kind="partitioner",
            arrays={k: np.array(v) for k, v in self._arrays.items()},
            meta=dict(self._meta),
        )

    def nodes_at_depth(self, depth: int, segments: np.ndarray | None = None) -> np.ndarray:
        """Node at ``depth`` of each row's path (leaf when shallower), int32 of shape (n,).

        Parameters
        ----------
        depth : int
            0 is the root.
        segments : numpy.ndarray of shape (n,), optional
            Segment ids; default ``segments_`` (the training rows).
        """
        self._check_fitted()
        seg = self.segments_ if segments is None else segments
        return node_at_depth(self.ancestors_, self.node_depth_, self.segment_node_, seg, depth)


class TreePartitioner(_BasePartitioner):
    """H-VRT variance-reduction tree partitioner (segments = leaves).

    The numeric features are scaled (z-score by default) and, together with the fit-only
    ``y_columns``, form a multi-output target; a regression tree with at most
    ``max_leaf_nodes`` leaves is grown best-first on the features (numeric plus encoded
    categoricals) to reduce the summed within-leaf variance of that target. Its leaves are the
    segments, numbered 0..K-1 in depth-first order.

    Parameters
    ----------
    max_leaf_nodes : int, default=200
        Number of segments K requested; K is obtained whenever the data has enough distinct
        rows (and ``min_impurity_decrease`` is 0).
    min_samples_leaf : int, default=1
        Minimum training rows per segment.
    min_impurity_decrease : float, default=0.0
        A split is made only if it lowers the mean (over outputs) squared error, weighted by
        the node's share of training rows, by at least this much (scikit-learn's definition).
    scaler : scikit-learn transformer or None, default=None
        Scales the target columns; None is a NaN-aware z-score (std 0 -> 1).
    categorical_features : list of str, optional
        Categorical columns (any values; stored as ``str``). Missing and unseen categories
        route like missing values.
    category_encoding : {"onehot", "target"}, default="onehot"
        ``onehot``: one 0/1 split feature per category. ``target``: one feature holding the
        smoothed mean of the row-averaged scaled target per category; the same table encodes
        training rows and routed rows (no cross-fitting).
    target_smoothing : float, default=10.0
        Pseudo-count pulling rare categories' target encoding to the global mean.
    y_columns : list of str, optional
        Numeric columns of X used only as targets (not as split features, not needed to route).
    weights : dict of str to float, optional
        Multiplier of each scaled target column (by name).
    max_bins : int, default=255
        Histogram bins per feature (2..255), from quantiles of up to 200,000 sampled rows
        (one seeded sample shared by all features).
    algorithm : {"hist", "exact"}, default="hist"
        ``hist``: numba histogram growth; each node's rows are kept contiguous (bin codes and
        targets are reordered in place), only the smaller child is histogrammed, and nodes of
        at least 10,000 rows are histogrammed and scanned with all numba threads (same tree
        as one thread; on a shared machine set ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP
        workers sleep instead of spinning). ``exact``: scikit-learn's
        ``DecisionTreeRegressor(max_leaf_nodes=K)`` (reference; it compares float32 features,
        so a routed value within a float32 rounding of a threshold may go the other way).
    random_state : int, numpy Generator or None, default=None
        Seeds the bin-edge subsample (and the exact tree).
    histogram_memory_mb : float, default=256
        Memory for cached histograms; beyond it, children are histogrammed by a row scan
        instead of by subtraction (slower, same result).

    Attributes
    ----------
    segments_ : numpy.ndarray of shape (n,), int32
        Segment of each training row, as :meth:`partition` routes it (with ``hist``, complete
        rows keep the leaf they grew in, which is where they route; only rows with a missing
        split value are routed again).
    fit_segments_ : numpy.ndarray of shape (n,), int32
        Segment in which each row sat while the tree grew. Equal to ``segments_`` for rows
        without missing values; rows with missing split values are re-assigned by the routing
        rule (largest-weight reachable leaf).
    n_segments_ : int
    ancestors_ : numpy.ndarray of shape (n_segments_, max_depth + 1), int32
        leaf, parent, ..., root node ids per segment, padded with -1.
    node_count_ : numpy.ndarray of shape (n_nodes,), int64
        Training rows in each node's subtree (final assignment).
    node_weight_ : numpy.ndarray of shape (n_nodes,), float64
        Training rows that reached each node during growth (look-ahead weight).
    node_parent_, node_depth_ : numpy.ndarray of shape (n_nodes,), int32
    segment_node_ : numpy.ndarray of shape (n_segments_,), int32
    segment_sizes_ : numpy.ndarray of shape (n_segments_,), int64
    router_ : shared.routing.Router
        Routing from the exported arrays.
    target_columns_ : list of str
    n_features_in_ : int
    feature_names_in_ : numpy.ndarray of str
    estimator_ : sklearn.tree.DecisionTreeRegressor
        Only with ``algorithm="exact"``.

    References
    ----------
    .. [1] HotProtato, *H-VRT: hierarchical variance-reduction tree partitioner*,
       https://github.com/HotProtato/H-VRT (MIT).
    .. [2] G. Ke et al., "LightGBM: A highly efficient gradient boosting decision tree",
       NeurIPS 2017 (histogram subtraction).
    .. [3] H. Shi, "Best-first decision tree learning", MSc thesis, University of Waikato, 2007.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(2000, 4))
    >>> tp = TreePartitioner(max_leaf_nodes=16, random_state=0).fit(X)
    >>> tp.n_segments_, int(tp.partition(X).max())
    (16, 15)
    """

    _export_kind = "tree"

    def __init__(
        self,
        max_leaf_nodes: int = 200,
        *,
        min_samples_leaf: int = 1,
        min_impurity_decrease: float = 0.0,
        scaler: Any = None,
        categorical_features: Sequence[str] | None = None,
        category_encoding: str = "onehot",
        target_smoothing: float = 10.0,
        y_columns: Sequence[str] | None = None,
        weights: Mapping[str, float] | None = None,
        max_bins: int = 255,
        algorithm: str = "hist",
        random_state: Any = None,
        histogram_memory_mb: float = 256,
    ) -> None:
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.min_impurity_decrease = min_impurity_decrease
        self.scaler = scaler
        self.categorical_features = categorical_features
        self.category_encoding = category_encoding
        self.target_smoothing = target_smoothing
        self.y_columns = y_columns
        self.weights = weights
        self.max_bins = max_bins
        self.algorithm = algorithm
        self.random_state = random_state
        self.histogram_memory_mb = histogram_memory_mb


class KeyPartitioner(_BasePartitioner):
    """Segments by business keys: every observed key combination is a segment.

    ``levels=["origin", "carrier"]`` makes a two-level hierarchy: the root, one node per
    observed origin, one leaf per observed (origin, carrier). A routed row whose combination
    was never seen goes to its deepest known prefix: ``RouteResult.node`` is that prefix node,
    ``unknown`` is set with ``unknown_key`` the level of the first unseen key, and the segment
    is the prefix's largest training leaf (``imputed``). Missing key values route the same way
    but are not flagged ``unknown``.

    Parameters
    ----------
    levels : list of str
        Key columns, outermost first. Values are compared as ``str``. Other columns of X are
        ignored. Missing key values at fit are an error (fill them with an explicit category).

    Attributes
    ----------
    segments_, n_segments_, ancestors_, node_count_, node_weight_, node_parent_, node_depth_,
    segment_node_, segment_sizes_, router_
        As in :class:`TreePartitioner`; segments are ordered by the sorted key strings.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"origin": ["JFK", "JFK", "LGA"], "carrier": ["AA", "B6", "AA"]})
    >>> kp = KeyPartitioner(levels=["origin", "carrier"]).fit(X)
    >>> kp.partition(X).tolist()
    [0, 1, 2]
    >>> r = kp.route({"origin": ["LGA"], "carrier": ["UA"]})
    >>> bool(r.unknown[0]), int(r.unknown_key[0]), int(r.segment[0])
    (True, 1, 2)
    """

    _export_kind = "keys"

    def __init__(self, levels: Sequence[str]) -> None:
        self.levels = levels

    def _levels(self) -> list[str]:
        if isinstance(self.levels, str) or not len(self.levels):
            raise ValueError(
                f"levels must be a non-empty list of column names, got {self.levels!r}"
            )
        return list(self.levels)

    def _has_tree(self) -> bool:
        return False


class CompositePartitioner(TreePartitioner):
    """Business keys first, then a variance-reduction tree inside each key segment.

    Each observed key combination (see :class:`KeyPartitioner`) is the root of its own
    :class:`TreePartitioner`-style tree with its own leaf budget ``max_leaf_nodes``; segments
    are the leaves of those trees. Targets are scaled once over all rows. The export has the
    same arrays as the other partitioners, so the router does not care which kind it gets.

    Parameters
    ----------
    levels : list of str
        Key columns, outermost first (not used as tree features).
    max_leaf_nodes : int, default=8
        Leaf budget of the tree inside each key segment. The keyword-only parameters
        ``min_samples_leaf``, ``min_impurity_decrease``, ``scaler``, ``categorical_features``,
        ``category_encoding``, ``target_smoothing``, ``y_columns``, ``weights``, ``max_bins``,
        ``algorithm``, ``random_state`` and ``histogram_memory_mb`` are those of
        :class:`TreePartitioner`.

    References
    ----------
    .. [1] HotProtato, *H-VRT*, https://github.com/HotProtato/H-VRT (MIT).
    """

    _export_kind = "composite"

    def __init__(
        self,
        levels: Sequence[str],
        max_leaf_nodes: int = 8,
        *,
        min_samples_leaf: int = 1,
        min_impurity_decrease: float = 0.0,
        scaler: Any = None,
        categorical_features: Sequence[str] | None = None,
        category_encoding: str = "onehot",
        target_smoothing: float = 10.0,
        y_columns: Sequence[str] | None = None,
        weights: Mapping[str, float] | None = None,
        max_bins: int = 255,
        algorithm: str = "hist",
        random_state: Any = None,
        histogram_memory_mb: float = 256,
    ) -> None:
        self.levels = levels
        super().__init__(
            max_leaf_nodes,
            min_samples_leaf=min_samples_leaf,
            min_impurity_decrease=min_impurity_decrease,
            scaler=scaler,
            categorical_features=categorical_features,
            category_encoding=category_encoding,
            target_smoothing=target_smoothing,
            y_columns=y_columns,
            weights=weights,
            max_bins=max_bins,
            algorithm=algorithm,
            random_state=random_state,
            histogram_memory_mb=histogram_memory_mb,
        )

    def _levels(self) -> list[str]:
        return KeyPartitioner._levels(self)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# profiler
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PartitionReport:
    """Tidy tables describing a partition (see :func:`partition_report`).

    Attributes
    ----------
    sizes : pandas.DataFrame
        One row per segment: ``segment``, ``n_rows``, ``share`` (of all rows).
    by_segment : pandas.DataFrame
        One row per (feature, segment): ``n`` (non-missing values), ``mean``, ``variance``
        (ddof 0; 0 for fewer than 2 values), ``span`` (max - min; 0 for fewer than 2 values),
        ``variance_share`` (variance / sum of the feature's segment variances), ``span_share``.
    by_feature : pandas.DataFrame
        One row per feature: ``total_variance`` (ddof 0 over all rows), ``within_variance``
        (size-weighted mean of segment variances), ``variance_ratio`` (within / total; the
        share of variance left inside segments), ``variance_hhi`` and ``span_hhi`` (sum of
        squared shares; 1/K when even, 1 when concentrated in one segment; 0 when all segment
        variances are 0), ``max_variance_share``, ``max_span_share``.
    """

    sizes: pd.DataFrame
    by_segment: pd.DataFrame
    by_feature: pd.DataFrame


def _numeric_frame(X: Any, features: Sequence[str] | None) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        df = X
    elif isinstance(X, Mapping):
        df = pd.DataFrame(dict(X))
    else:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise DataError(f"X must be 2-d, got shape {arr.shape}")
        df = pd.DataFrame(arr, columns=[f"x{j}" for j in range(arr.shape[1])])
    if features is None:
        features = [
            c
            for c in df.columns
            if pd.api.types.is_numeric_dtype(df[c].dtype)
            and not pd.api.types.is_bool_dtype(df[c].dtype)
        ]
    out = {}
    for c in features:
        if c not in df.columns:
            raise SchemaError(f"column {c!r} is not in X")
        out[str(c)] = numeric_column(str(c), df[c])
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def partition_report(
    X: Any, segments: Any, features: Sequence[str] | None = None
) -> PartitionReport:
    """Per feature and segment: variance share, span share and their concentration (HHI).

    Parameters
    ----------
    X : pandas.DataFrame, mapping of columns, or array of shape (n, p)
        Rows in the order of ``segments``; by default every numeric (non-bool) column is
        profiled, in its own units.
    segments : array-like of shape (n,), int
        Segment of each row (e.g. ``TreePartitioner.segments_``).
    features : list of str, optional
        Columns to profile.

    Returns
    -------
    PartitionReport

    Raises
    ------
    DataError
        Lengths differ or X has no rows.
    SchemaError
        A requested feature is absent or not numeric.

    References
    ----------
    .. [1] HotProtato, *H-VRT* ``full_report`` (variance and span HHI),
       https://github.com/HotProtato/H-VRT (MIT).

    Examples
    --------
    >>> import numpy as np
    >>> rep = partition_report({"a": [0.0, 2.0, 10.0, 10.0]}, np.array([0, 0, 1, 1]))
    >>> rep.by_segment["variance"].tolist(), float(rep.by_feature["variance_hhi"][0])
    ([1.0, 0.0], 1.0)
    """
    df = _numeric_frame(X, features)
    seg = np.asarray(segments)
    if seg.ndim != 1 or seg.shape[0] != len(df):
        raise DataError(f"segments has shape {seg.shape}; expected ({len(df)},)")
    if len(df) == 0:
        raise DataError("X has no rows")
    labels, seg_idx = np.unique(seg, return_inverse=True)
    K = labels.size
    n_rows = np.bincount(seg_idx, minlength=K)
    sizes = pd.DataFrame({"segment": labels, "n_rows": n_rows, "share": n_rows / seg.size})
    seg_rows = []
    feat_rows = []
    for c in df.columns:
        x = df[c].to_numpy(dtype=np.float64)
        ok = ~np.isnan(x)
        xi, si = x[ok], seg_idx[ok]
        cnt = np.bincount(si, minlength=K).astype(np.float64)
        s1 = np.bincount(si, weights=xi, minlength=K)
        mean = np.divide(s1, cnt, out=np.full(K, np.nan), where=cnt > 0)
        dev = xi - mean[si]
        var = np.bincount(si, weights=dev * dev, minlength=K) / np.maximum(cnt, 1)
        mx = np.full(K, -np.inf)
        mn = np.full(K, np.inf)
        np.maximum.at(mx, si, xi)
        np.minimum.at(mn, si, xi)
        span = np.where(cnt > 1, mx - mn, 0.0)
        var = np.where(cnt > 1, var, 0.0)
        span = np.nan_to_num(span, nan=0.0, posinf=0.0, neginf=0.0)
        var_share = var / var.sum() if var.sum() > 0 else np.zeros(K)
        span_share = span / span.sum() if span.sum() > 0 else np.zeros(K)
        total = float(np.var(xi)) if xi.size else float("nan")
        within = float((cnt * var).sum() / max(cnt.sum(), 1.0))
        seg_rows.append(
            pd.DataFrame(
                {
                    "feature": c,
                    "segment": labels,
                    "n": cnt.astype(np.int64),
                    "mean": mean,
                    "variance": var,
                    "span": span,
                    "variance_share": var_share,
                    "span_share": span_share,
                }
            )
        )
        feat_rows.append(
            {
                "feature": c,
                "total_variance": total,
                "within_variance": within,
                "variance_ratio": within / total if total > 0 else float("nan"),
                "variance_hhi": float((var_share**2).sum()),
                "span_hhi": float((span_share**2).sum()),
                "max_variance_share": float(var_share.max()),
                "max_span_share": float(span_share.max()),
            }
        )
    by_segment = (
        pd.concat(seg_rows, ignore_index=True)
        if seg_rows
        else pd.DataFrame(
            columns=[
                "feature",
                "segment",
                "n",
                "mean",
                "variance",
                "span",
                "variance_share",
                "span_share",
            ]
        )
    )
    by_feature = pd.DataFrame(
        feat_rows,
        columns=[
            "feature",
            "total_variance",
            "within_variance",
            "variance_ratio",
            "variance_hhi",
            "span_hhi",
            "max_variance_share",
            "max_span_share",
        ],
    )
    return PartitionReport(sizes, by_segment, by_feature)


def plot_partition_report(
    X: Any,
    segments: Any,
    out_dir: str | Path,
    *,
    features: Sequence[str] | None = None,
    n_bins: int = 20,
    max_features: int = 3,
    detail_threshold: int = 50,
    max_points_per_bin: int = 5000,
    seed: int = 0,
) -> list[Path]:
    """Write PNG figures of a partition: segment sizes and per-feature distributions.

    Parameters
    ----------
    X, segments, features
        As in :func:`partition_report`; by default the ``max_features`` features with the
        highest variance HHI are drawn.
    out_dir : str or Path
        Created if absent.
    n_bins : int, default=20
        With more than ``detail_threshold`` segments, segments are sorted by the feature's
        mean and grouped into this many rank bins, one violin per bin.
    max_features : int, default=3
    detail_threshold : int, default=50
        Up to this many segments: a bar chart of sizes and one box per segment.
    max_points_per_bin : int, default=5000
        Values drawn per violin/box (seeded subsample).
    seed : int, default=0

    Returns
    -------
    list of Path
        ``segment_sizes.png`` then ``feature_<name>.png`` per feature.

    Raises
    ------
    DataError, SchemaError
        As in :func:`partition_report`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    report = partition_report(X, segments, features)
    df = _numeric_frame(X, features)
    seg = np.asarray(segments)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    K = len(report.sizes)

    fig = Figure(figsize=(10, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if detail_threshold >= K:
        ax.bar(report.sizes["segment"].astype(str), report.sizes["n_rows"])
        ax.set_xlabel("segment")
        ax.set_ylabel("rows")
        ax.set_title("Rows per segment")
    else:
        ax.hist(report.sizes["n_rows"], bins=min(K, 50))
        ax.set_xlabel("rows in segment")
        ax.set_ylabel("segments")
        ax.set_title(f"Segment size distribution ({K} segments)")
    p = out / "segment_sizes.png"
    fig.savefig(p, dpi=80)
    paths.append(p)

    chosen = report.by_feature.sort_values("variance_hhi", ascending=False)["feature"]
    for feat in list(chosen)[:max_features]:
        x = df[feat].to_numpy()
        ok = ~np.isnan(x)
        means = report.by_segment[report.by_segment["feature"] == feat].set_index("segment")["mean"]
        order = means.sort_values(kind="stable").index.to_numpy()
        rank = pd.Series(np.arange(order.size), index=order)
        r = rank.reindex(seg).to_numpy()
        if detail_threshold >= K:
            groups = [x[ok & (seg == s)] for s in order]
            labels = [str(s) for s in order]
            xlabel = "segment (sorted by mean)"
        else:
            b = np.minimum((r * n_bins) // K, n_bins - 1)
            groups = [x[ok & (b == j)] for j in range(n_bins)]
            labels = [str(j) for j in range(n_bins)]
            xlabel = f"segment rank bin (segments sorted by mean {feat!r})"
        groups = [
            g
            if g.size <= max_points_per_bin
            else g[rng.choice(g.size, max_points_per_bin, replace=False)]
            for g in groups
        ]
        keep = [i for i, g in enumerate(groups) if g.size > 0]
        fig = Figure(figsize=(12, 5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if keep:
            data = [groups[i] for i in keep]
            if detail_threshold >= K:
                ax.boxplot(data, tick_labels=[labels[i] for i in keep])
            else:
                ax.violinplot(data, positions=np.arange(len(keep)), showmedians=True)
                ax.set_xticks(np.arange(len(keep)), [labels[i] for i in keep])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(feat)
        ax.set_title(f"Distribution of {feat!r} across segments")
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in feat)
        p = out / f"feature_{safe}.png"
        fig.savefig(p, dpi=80)
        paths.append(p)
    return paths
