"""Scoring side of the per-segment linear models (no scikit-learn, no training imports, no pickle).

Rebuilt from the ``segment_models`` :class:`~segstream.shared.component.ExportedComponent` written by
``training.groupby_regression.GroupFitResult.export``. :meth:`LinearSegmentModels.predict`
returns the prediction and its additive decomposition (intercept + coefficient x value per
feature), computed by one numba kernel over the batch.

Missing values and dropped predictors
-------------------------------------
* A NaN/inf feature value contributes ``coef * x_mean`` (the segment's weighted training mean of
  that feature), so a missing feature is imputed by the segment's typical value.
* A feature whose slope is NaN was dropped from that segment's fit (``min_stat``): the model
  does not use it and its contribution is 0.
* Unknown segments and segments without a fit (NaN intercept) give NaN everywhere.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleCompatibilityError, SchemaError

__all__ = ["LinearSegmentModels"]

SUPPORTED_FORMAT = 1


@njit(cache=True)
def _predict_kernel(gidx, X, coef_t, x_mean, pred, contrib):
    n, p = X.shape
    for i in range(n):
        g = gidx[i]
        if g < 0 or not math.isfinite(coef_t[g, 0]):
            pred[i] = np.nan
            for j in range(p + 1):
                contrib[i, j] = np.nan
            continue
        total = coef_t[g, 0]
        contrib[i, 0] = total
        for j in range(p):
            c = coef_t[g, 1 + j]
            if math.isnan(c):
                v = 0.0
            else:
                x = X[i, j]
                if not math.isfinite(x):
                    x = x_mean[g, j]
                v = c * x
            contrib[i, 1 + j] = v
            total += v
        pred[i] = total


class LinearSegmentModels:
    """Per-segment linear models for scoring.

    Parameters
    ----------
    groups : ndarray of int64, shape (G,)
        Sorted segment ids.
    coef : ndarray of float64, shape (G, T, p + 1)
        ``[intercept, slopes...]`` per segment and target.
    x_mean : ndarray of float64, shape (G, p)
        Per-segment weighted mean of each feature (imputation of missing values).
    feature_names, target_names : sequence of str
    status : ndarray of int8, shape (G, T), optional
    status_codes : dict, optional
    """

    def __init__(
        self, groups, coef, x_mean, feature_names, target_names, status=None, status_codes=None
    ):
        self.groups = np.ascontiguousarray(groups, dtype=np.int64)
        self.coef = np.ascontiguousarray(coef, dtype=np.float64)
        self.x_mean = np.ascontiguousarray(x_mean, dtype=np.float64)
        self.feature_names = tuple(feature_names)
        self.target_names = tuple(target_names)
        self.status = status
        self.status_codes = dict(status_codes or {})
        G = self.groups.shape[0]
        p = len(self.feature_names)
        if self.coef.shape != (G, len(self.target_names), p + 1):
            raise SchemaError(
                f"segment_models: coef has shape {self.coef.shape}, expected "
                f"({G}, {len(self.target_names)}, {p + 1})"
            )
        if self.x_mean.shape != (G, p):
            raise SchemaError(
                f"segment_models: x_mean has shape {self.x_mean.shape}, expected ({G}, {p})"
            )
        if G > 1 and not (np.diff(self.groups) > 0).all():
            raise SchemaError("segment_models: groups must be strictly increasing")

    @classmethod
    def from_exported(cls, comp: ExportedComponent) -> LinearSegmentModels:
        """Rebuild from an exported ``segment_models`` component.

        Raises
        ------
        BundleCompatibilityError
            Wrong kind or a newer format.
        SchemaError
            Missing or inconsistent arrays.
        """
        if comp.kind != "segment_models":
            raise BundleCompatibilityError(
                f"expected a 'segment_models' component, got {comp.kind!r}"
            )
        fmt = comp.meta.get("format")
        if fmt != SUPPORTED_FORMAT:
            raise BundleCompatibilityError(
                f"segment_models: format {fmt!r} is not supported (this version reads {SUPPORTED_FORMAT})"
            )
        for key in ("groups", "coef", "x_mean"):
            if key not in comp.arrays:
                raise SchemaError(f"segment_models: array {key!r} missing")
        return cls(
            comp.arrays["groups"],
            comp.arrays["coef"],
            comp.arrays["x_mean"],
            comp.meta["feature_names"],
            comp.meta["target_names"],
            status=comp.arrays.get("status"),
            status_codes=comp.meta.get("status_codes"),
        )

    def group_index(self, group_ids) -> np.ndarray:
        """Index into ``groups`` per id (-1 for unknown), int64 (n,)."""
        ids = np.asarray(group_ids, dtype=np.int64).reshape(-1)
        G = self.groups.shape[0]
        if G == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.groups, ids), 0, G - 1)
        return np.where(self.groups[pos] == ids, pos, -1).astype(np.int64)

    def predict(self, group_ids, X, target: int | str = 0) -> tuple[np.ndarray, np.ndarray]:
        """Predict and decompose.

        Parameters
        ----------
        group_ids : array_like of int, shape (n,)
            Segment of each row.
        X : array_like of float64, shape (n, p)
            Features in ``feature_names`` order (NaN = missing).
        target : int or str
            Which target's model.

        Returns
        -------
        prediction : ndarray of float64, shape (n,)
        contributions : ndarray of float64, shape (n, p + 1)
            Column 0 the intercept, column ``1 + j`` the term of feature ``j``; rows sum to the
            prediction.

        Raises
        ------
        SchemaError
            ``X`` has the wrong number of columns or rows.
        """
        gidx = self.group_index(group_ids)
        Xa = np.ascontiguousarray(X, dtype=np.float64)
        p = len(self.feature_names)
        if Xa.ndim == 1 and p == 1:
            Xa = Xa.reshape(-1, 1)
        if Xa.ndim != 2 or Xa.shape != (gidx.shape[0], p):
            raise SchemaError(f"X: expected shape ({gidx.shape[0]}, {p}), got {Xa.shape}")
        t = self.target_names.index(target) if isinstance(target, str) else int(target)
        coef_t = np.ascontiguousarray(self.coef[:, t, :])
        pred = np.empty(gidx.shape[0])
        contrib = np.empty((gidx.shape[0], p + 1))
        _predict_kernel(gidx, Xa, coef_t, self.x_mean, pred, contrib)
        return pred, contrib
