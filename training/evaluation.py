"""Evaluation helpers of the trainer: point metrics, interval metrics, conformal offsets.

Everything here works on plain arrays; the trainer calls it on the held-out time slices.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def point_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, R² and the row count over rows where both are finite.

    Parameters
    ----------
    y, pred : float64 (n,)
        Outcome and prediction in target units.
    """
    y = np.asarray(y, np.float64)
    pred = np.asarray(pred, np.float64)
    ok = np.isfinite(y) & np.isfinite(pred)
    if not ok.any():
        return {"mae": float("nan"), "rmse": float("nan"), "r2": float("nan"), "n": 0}
    r = y[ok] - pred[ok]
    ss_tot = float(np.sum((y[ok] - y[ok].mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(r))),
        "rmse": float(np.sqrt(np.mean(r**2))),
        "r2": float(1.0 - np.sum(r**2) / ss_tot) if ss_tot > 0 else float("nan"),
        "n": int(ok.sum()),
    }


def interval_metrics(y: np.ndarray, low: np.ndarray, high: np.ndarray) -> dict[str, float]:
    """Coverage (share of finite outcomes inside ``[low, high]``) and mean width."""
    y = np.asarray(y, np.float64)
    ok = np.isfinite(y) & np.isfinite(low) & np.isfinite(high)
    if not ok.any():
        return {"coverage": float("nan"), "mean_width": float("nan"), "n": 0}
    inside = (y[ok] >= low[ok]) & (y[ok] <= high[ok])
    return {
        "coverage": float(inside.mean()),
        "mean_width": float(np.mean(high[ok] - low[ok])),
        "n": int(ok.sum()),
    }


def conformal_offsets(
    residuals: np.ndarray,
    groups: np.ndarray,
    parents: np.ndarray,
    mass: float,
    min_rows: int = 50,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-node split-conformal residual quantiles ``(lo, hi)`` with fallback to the parent.

    For every node ``g`` the interval of mass ``mass`` is ``prediction + [lo[g], hi[g]]`` where
    ``lo``/``hi`` are the finite-sample-corrected ``(1-mass)/2`` and ``(1+mass)/2`` quantiles of
    the calibration residuals ``y - prediction`` of the rows in ``g``. A node with fewer than
    ``min_rows`` calibration rows takes its nearest ancestor's offsets (root = all rows).

    Parameters
    ----------
    residuals : float64 (n,)
        Calibration residuals (NaN rows are ignored).
    groups : int (n, depth) or (n,)
        Node id of each row at each depth (``-1`` padding); a row counts for every listed node.
    parents : int (n_nodes,)
        Parent node of each node, ``-1`` for the root.
    mass : float in (0, 1)

    Returns
    -------
    lo, hi : float64 (n_nodes,)
    source : int64 (n_nodes,)
        The node whose residuals were used (itself or an ancestor).

    References
    ----------
    Lei, J., G'Sell, M., Rinaldo, A., Tibshirani, R. J. & Wasserman, L. (2018). Distribution-free
    predictive inference for regression. JASA 113(523) (split conformal prediction).
    """
    residuals = np.asarray(residuals, np.float64)
    g = np.asarray(groups)
    if g.ndim == 1:
        g = g[:, None]
    n_nodes = len(parents)
    ok = np.isfinite(residuals)
    lo = np.full(n_nodes, np.nan)
    hi = np.full(n_nodes, np.nan)
    source = np.full(n_nodes, -1, np.int64)
    a, b = (1.0 - mass) / 2.0, (1.0 + mass) / 2.0
    rows = np.repeat(np.arange(len(residuals)), g.shape[1])
    nodes = g.reshape(-1)
    keep = (nodes >= 0) & ok[rows]
    rows, nodes = rows[keep], nodes[keep]
    order = np.argsort(nodes, kind="stable")
    rows, nodes = rows[order], nodes[order]
    starts = np.searchsorted(nodes, np.arange(n_nodes), side="left")
    ends = np.searchsorted(nodes, np.arange(n_nodes), side="right")
    for node in range(n_nodes):
        r = residuals[rows[starts[node] : ends[node]]]
        if len(r) >= min_rows:
            lo[node], hi[node] = _conformal_quantiles(r, a, b)
            source[node] = node
    all_r = residuals[ok]
    root_lo, root_hi = _conformal_quantiles(all_r, a, b) if len(all_r) else (np.nan, np.nan)
    for node in range(n_nodes):  # nearest ancestor with enough rows
        if source[node] >= 0:
            continue
        p = parents[node]
        while p >= 0 and source[p] != p:
            p = parents[p]
        if p >= 0:
            lo[node], hi[node], source[node] = lo[p], hi[p], p
        else:
            lo[node], hi[node], source[node] = root_lo, root_hi, -1
    return lo, hi, source


def _conformal_quantiles(r: np.ndarray, a: float, b: float) -> tuple[float, float]:
    n = len(r)
    # finite-sample correction: the ceil((n+1) q)/n empirical quantile
    qa = max(0.0, np.floor((n + 1) * a) / n)
    qb = min(1.0, np.ceil((n + 1) * b) / n)
    return float(np.quantile(r, qa, method="lower")), float(np.quantile(r, qb, method="higher"))


def fallback_shares(levels: np.ndarray) -> dict[str, float]:
    """Share of rows served at each fallback level (``{"0": share, "1": ...}``)."""
    levels = np.asarray(levels)
    if len(levels) == 0:
        return {}
    vals, cnt = np.unique(levels, return_counts=True)
    return {str(int(v)): float(c / len(levels)) for v, c in zip(vals, cnt, strict=True)}


def per_segment_mae(
    y: np.ndarray, pred: np.ndarray, segments: np.ndarray, top: int = 10
) -> list[dict[str, Any]]:
    """MAE of the ``top`` largest segments (by finite-outcome rows), largest first."""
    y = np.asarray(y, np.float64)
    ok = np.isfinite(y) & np.isfinite(pred)
    seg = np.asarray(segments)[ok]
    err = np.abs(y[ok] - np.asarray(pred)[ok])
    if len(seg) == 0:
        return []
    vals, inv, cnt = np.unique(seg, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=err)
    order = np.argsort(-cnt, kind="stable")[:top]
    return [
        {"segment": int(vals[i]), "n": int(cnt[i]), "mae": float(sums[i] / cnt[i])} for i in order
    ]
