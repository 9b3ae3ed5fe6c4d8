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


# --------------------------------------------------------------------------- binomial / poisson
def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Log loss, Brier score and AUROC of predicted probabilities (scikit-learn's
    ``log_loss``, ``brier_score_loss``, ``roc_auc_score``) over rows where both are finite.

    Parameters
    ----------
    y : float64 (n,)
        Outcomes 0/1 (NaN = no outcome).
    proba : float64 (n,)
        Predicted P(y = 1).

    Returns
    -------
    dict
        ``log_loss`` (natural log, per row), ``brier``, ``auroc`` (NaN with one class only),
        ``positive_rate`` (observed), ``mean_probability`` and ``n``.
    """
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y, np.float64)
    p = np.asarray(proba, np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    if not ok.any():
        nan = float("nan")
        return {"log_loss": nan, "brier": nan, "auroc": nan, "positive_rate": nan, "n": 0}
    yk, pk = y[ok], np.clip(p[ok], 1e-15, 1 - 1e-15)
    two = 0 < yk.sum() < yk.size
    return {
        "log_loss": float(log_loss(yk, pk, labels=[0.0, 1.0])),
        "brier": float(brier_score_loss(yk, pk)),
        "auroc": float(roc_auc_score(yk, pk)) if two else float("nan"),
        "positive_rate": float(yk.mean()),
        "mean_probability": float(pk.mean()),
        "n": int(ok.sum()),
    }


def reliability_table(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Calibration of predicted probabilities in ``bins`` equal-width bins of [0, 1].

    Returns
    -------
    list of dict
        Per bin: ``low``, ``high``, ``count``, ``mean_predicted``, ``observed_rate`` (None for
        an empty bin). A calibrated model has ``observed_rate ≈ mean_predicted`` in every bin
        (scikit-learn's ``calibration_curve`` with ``strategy="uniform"``, plus the counts).
    """
    y = np.asarray(y, np.float64)
    p = np.asarray(proba, np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    b = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(b, minlength=bins)
    sp = np.bincount(b, p, minlength=bins)
    sy = np.bincount(b, y, minlength=bins)
    out = []
    for i in range(bins):
        n = int(count[i])
        out.append(
            {
                "low": i / bins,
                "high": (i + 1) / bins,
                "count": n,
                "mean_predicted": float(sp[i] / n) if n else None,
                "observed_rate": float(sy[i] / n) if n else None,
            }
        )
    return out


def expected_calibration_error(table: list[dict[str, Any]]) -> float:
    """Count-weighted mean of ``|observed_rate - mean_predicted|`` over a reliability table."""
    n = sum(r["count"] for r in table)
    if not n:
        return float("nan")
    return float(
        sum(r["count"] * abs(r["observed_rate"] - r["mean_predicted"]) for r in table if r["count"])
        / n
    )


def choose_threshold(y: np.ndarray, proba: np.ndarray, criterion: str) -> float:
    """The decision threshold that maximises ``criterion`` on ``(y, proba)`` (the validation
    slice), among the distinct predicted probabilities.

    Parameters
    ----------
    y : float64 (n,)
        Outcomes 0/1 (NaN rows are ignored).
    proba : float64 (n,)
    criterion : {"f1", "youden"}
        ``f1``: F1 score of the positive class, ``2 TP / (2 TP + FP + FN)`` (from scikit-learn's
        ``precision_recall_curve``); ``youden``: Youden's J = TPR - FPR (from ``roc_curve``;
        W. J. Youden, "Index for rating diagnostic tests", Cancer 3 (1950)).

    Returns
    -------
    float in (0, 1)
        ``label = proba >= threshold``. 0.5 when ``y`` has a single class.

    Raises
    ------
    ValueError
        Unknown ``criterion``.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    y = np.asarray(y, np.float64)
    p = np.asarray(proba, np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    if not (0 < y.sum() < y.size):
        return 0.5
    if criterion == "f1":
        prec, rec, thr = precision_recall_curve(y, p)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)[:-1]
        t = float(thr[int(np.argmax(f1))])
    elif criterion == "youden":
        fpr, tpr, thr = roc_curve(y, p)
        j = (tpr - fpr)[1:]  # thr[0] is +inf (nothing predicted positive)
        t = float(thr[1:][int(np.argmax(j))])
    else:
        raise ValueError(f"threshold criterion: expected 'f1' or 'youden', got {criterion!r}")
    return float(min(max(t, 1e-6), 1 - 1e-6))


def poisson_metrics(y: np.ndarray, mu: np.ndarray) -> dict[str, float]:
    """Mean Poisson deviance (scikit-learn's ``mean_poisson_deviance``), MAE and RMSE of
    expected counts over rows where both are finite (``mu`` clipped to >= 1e-12).

    Returns
    -------
    dict
        ``deviance``, ``mae``, ``rmse``, ``mean_count`` (observed), ``mean_prediction``, ``n``.
    """
    from sklearn.metrics import mean_poisson_deviance

    y = np.asarray(y, np.float64)
    m = np.asarray(mu, np.float64)
    ok = np.isfinite(y) & np.isfinite(m)
    if not ok.any():
        nan = float("nan")
        return {"deviance": nan, "mae": nan, "rmse": nan, "n": 0}
    yk, mk = y[ok], np.maximum(m[ok], 1e-12)
    r = yk - mk
    return {
        "deviance": float(mean_poisson_deviance(yk, mk)),
        "mae": float(np.mean(np.abs(r))),
        "rmse": float(np.sqrt(np.mean(r**2))),
        "mean_count": float(yk.mean()),
        "mean_prediction": float(mk.mean()),
        "n": int(ok.sum()),
    }


def per_segment_calibration(
    y: np.ndarray, proba: np.ndarray, segments: np.ndarray, top: int = 10
) -> list[dict[str, Any]]:
    """Calibration of the largest ``top`` segments (by test rows): per segment its rows,
    mean predicted probability, observed rate and log loss (what replaces the outcome
    profiles' per-pattern intervals for a classifier)."""
    y = np.asarray(y, np.float64)
    p = np.asarray(proba, np.float64)
    ok = np.isfinite(y) & np.isfinite(p)
    seg = np.asarray(segments)[ok]
    y, p = y[ok], np.clip(p[ok], 1e-15, 1 - 1e-15)
    ids, counts = np.unique(seg, return_counts=True)
    out = []
    for s in ids[np.argsort(-counts, kind="stable")][:top].tolist():
        m = seg == s
        ll = -np.mean(y[m] * np.log(p[m]) + (1 - y[m]) * np.log1p(-p[m]))
        out.append(
            {
                "segment": int(s),
                "n": int(m.sum()),
                "mean_predicted": float(p[m].mean()),
                "observed_rate": float(y[m].mean()),
                "log_loss": float(ll),
            }
        )
    return out
