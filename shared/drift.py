"""Frozen drift references and the count-only drift statistics (PSI, Jensen–Shannon distance).

The reference is frozen at training and shipped in the bundle; everything downstream works on
**bin counts** so that workers can send compact per-batch summaries and the monitor can add
them up per window.

Bin conventions (used by the trainer, the worker and the monitor alike):

numeric feature with interior edges ``e_1 < ... < e_{k-1}``
    bin ``i`` holds ``e_i <= x < e_{i+1}`` (left-closed, right-open; ``e_0 = -inf``,
    ``e_k = +inf``), i.e. ``np.searchsorted(edges, x, side="right")``; ``k`` value bins plus
    one last bin for missing values (NaN, null, ±inf).
categorical feature with categories ``c_0..c_{m-1}``
    bin ``j`` for ``c_j``, bin ``m`` for any other (unseen) value, bin ``m+1`` for missing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from segstream.shared.routing import MISSING_CODE, encode_categories

#: Added to every bin share before PSI / JS so that empty bins give finite values. With
#: shares p, q: PSI = sum((q - p) * ln(q / p)) over bins after p, q <- (p + eps) / (1 + n*eps).
PSI_EPSILON = 1e-4


@dataclasses.dataclass(frozen=True)
class NumericReference:
    """Interior bin edges and the training share per bin (last bin = missing)."""

    edges: np.ndarray  # float64 (k-1,)
    expected: np.ndarray  # float64 (k+1,), sums to 1

    def bin(self, x: np.ndarray) -> np.ndarray:
        """Bin index per value, int64 (n,); missing/±inf -> the last bin."""
        x = np.asarray(x, dtype=np.float64)
        idx = np.searchsorted(self.edges, x, side="right")
        idx[~np.isfinite(x)] = len(self.edges) + 1
        return idx

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 2


@dataclasses.dataclass(frozen=True)
class CategoricalReference:
    """Training categories and the training share per category (+ other, + missing)."""

    categories: tuple[str, ...]
    expected: np.ndarray  # float64 (m+2,)

    @functools.cached_property
    def _index(self) -> pd.Index:
        return pd.Index(list(self.categories), dtype=object)

    def bin(self, values: np.ndarray) -> np.ndarray:
        """Bin index per value, int64 (n,): category position, then other, then missing."""
        codes = encode_categories(values, self._index).astype(np.int64)
        m = len(self.categories)
        missing = codes == MISSING_CODE
        codes[codes < 0] = m
        codes[missing] = m + 1
        return codes

    @property
    def n_bins(self) -> int:
        return len(self.categories) + 2


@dataclasses.dataclass(frozen=True)
class DriftReference:
    """The frozen reference of one bundle: per feature, for the prediction, per segment."""

    numeric: Mapping[str, NumericReference]
    categorical: Mapping[str, CategoricalReference]
    prediction: NumericReference | None = None
    #: largest segments: segment id -> {feature: NumericReference/CategoricalReference}
    segments: Mapping[int, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    #: feature (or "prediction") -> (p95, p99) of its PSI over the training windows of
    #: ``window_s`` seconds: how different a training window already is from the reference
    window_psi: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    window_s: int | None = None

    def calibrated_levels(
        self, feature: str, warning: float, critical: float
    ) -> tuple[float, float]:
        """``(warning, critical)`` raised to the PSI that 5 % / 1 % of the training windows
        exceed, so that a window is flagged only when it is more unusual than the training
        windows themselves were (cf. NannyML's thresholds from reference chunks)."""
        cal = self.window_psi.get(feature)
        if cal is None:
            return warning, critical
        return max(warning, float(cal[0])), max(critical, float(cal[1]))

    @functools.cached_property
    def segment_table(self) -> SegmentBinTable:
        """The numeric references of :attr:`segments` as padded arrays (built once)."""
        return SegmentBinTable.build(self.segments)

    # -------------------------------------------------------------- (de)serialisation
    def to_meta(self) -> dict[str, Any]:
        """JSON-serialisable form (stored as the bundle's ``drift_reference`` component)."""

        def ref(r: Any) -> dict[str, Any]:
            if isinstance(r, NumericReference):
                return {
                    "type": "numeric",
                    "edges": r.edges.tolist(),
                    "expected": r.expected.tolist(),
                }
            return {
                "type": "categorical",
                "categories": list(r.categories),
                "expected": r.expected.tolist(),
            }

        return {
            "numeric": {k: ref(v) for k, v in self.numeric.items()},
            "categorical": {k: ref(v) for k, v in self.categorical.items()},
            "prediction": ref(self.prediction) if self.prediction is not None else None,
            "segments": {
                str(s): {k: ref(v) for k, v in feats.items()} for s, feats in self.segments.items()
            },
            "window_psi": {k: [float(a), float(b)] for k, (a, b) in self.window_psi.items()},
            "window_s": self.window_s,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> DriftReference:
        def ref(d: Mapping[str, Any]) -> Any:
            if d["type"] == "numeric":
                return NumericReference(
                    np.asarray(d["edges"], np.float64), np.asarray(d["expected"], np.float64)
                )
            return CategoricalReference(
                tuple(d["categories"]), np.asarray(d["expected"], np.float64)
            )

        return cls(
            numeric={k: ref(v) for k, v in meta.get("numeric", {}).items()},
            categorical={k: ref(v) for k, v in meta.get("categorical", {}).items()},
            prediction=ref(meta["prediction"]) if meta.get("prediction") else None,
            segments={
                int(s): {k: ref(v) for k, v in f.items()}
                for s, f in meta.get("segments", {}).items()
            },
            window_psi={
                k: (float(v[0]), float(v[1])) for k, v in meta.get("window_psi", {}).items()
            },
            window_s=meta.get("window_s"),
        )

    # -------------------------------------------------------------- construction
    @classmethod
    def fit(
        cls,
        numeric: Mapping[str, np.ndarray],
        categorical: Mapping[str, np.ndarray],
        prediction: np.ndarray | None = None,
        n_bins: int = 10,
        max_categories: int = 50,
    ) -> DriftReference:
        """Freeze a reference from training columns: quantile edges, training shares."""
        return cls(
            numeric={k: numeric_reference(v, n_bins) for k, v in numeric.items()},
            categorical={
                k: categorical_reference(v, max_categories) for k, v in categorical.items()
            },
            prediction=numeric_reference(prediction, n_bins) if prediction is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class SegmentBinTable:
    """The large segments' numeric references as padded arrays, for binning every segment's
    rows in one kernel pass (``services.worker.stats``).

    Attributes
    ----------
    segment_ids : ndarray of shape (G,), int64
        Segment ids, ascending.
    features : tuple of str, length F
        Every feature (or ``"prediction"``) that has a numeric reference in some segment.
    edges : ndarray of shape (G, F, E), float64
        Interior edges of segment ``g``'s reference for feature ``f`` in ``edges[g, f, :k]``
        (``k = n_edges[g, f]``), padded with +inf.
    n_edges : ndarray of shape (G, F), int64
        Number of interior edges; -1 where segment ``g`` has no numeric reference for ``f``
        (its bins are ``k + 2``: ``k + 1`` value bins and the missing bin).
    """

    segment_ids: np.ndarray
    features: tuple[str, ...]
    edges: np.ndarray
    n_edges: np.ndarray

    @classmethod
    def build(cls, segments: Mapping[int, Mapping[str, Any]]) -> SegmentBinTable:
        ids = sorted(int(s) for s in segments)
        names: dict[str, None] = {}
        for feats in segments.values():
            names.update((k, None) for k, r in feats.items() if isinstance(r, NumericReference))
        features = tuple(names)
        width = max(
            [
                len(r.edges)
                for feats in segments.values()
                for r in feats.values()
                if isinstance(r, NumericReference)
            ],
            default=0,
        )
        edges = np.full((len(ids), len(features), max(width, 1)), np.inf)
        n_edges = np.full((len(ids), len(features)), -1, dtype=np.int64)
        for g, sid in enumerate(ids):
            for f, name in enumerate(features):
                r = segments[sid].get(name)
                if isinstance(r, NumericReference):
                    edges[g, f, : len(r.edges)] = r.edges
                    n_edges[g, f] = len(r.edges)
        return cls(np.asarray(ids, dtype=np.int64), features, edges, n_edges)


def numeric_reference(x: np.ndarray, n_bins: int = 10) -> NumericReference:
    """Edges at the training quantiles (duplicates removed) and the training share per bin."""
    x = np.asarray(x, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if len(finite):
        qs = np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1])
        edges = np.unique(qs)
    else:
        edges = np.empty(0)
    r = NumericReference(edges, np.zeros(len(edges) + 2))
    counts = np.bincount(r.bin(x), minlength=r.n_bins).astype(np.float64)
    return NumericReference(edges, counts / max(1.0, counts.sum()))


def categorical_reference(values: np.ndarray, max_categories: int = 50) -> CategoricalReference:
    """The ``max_categories`` most frequent training categories and their shares."""
    vals = [v for v in values if not (v is None or (isinstance(v, float) and v != v))]
    uniq, cnt = np.unique(np.asarray([str(v) for v in vals], dtype=object), return_counts=True)
    order = np.argsort(-cnt, kind="stable")[:max_categories]
    cats = tuple(str(uniq[i]) for i in sorted(order, key=lambda i: str(uniq[i])))
    r = CategoricalReference(cats, np.zeros(len(cats) + 2))
    counts = np.bincount(r.bin(np.asarray(values, dtype=object)), minlength=r.n_bins)
    counts = counts.astype(np.float64)
    return CategoricalReference(cats, counts / max(1.0, counts.sum()))


def window_psi_levels(
    reference: DriftReference,
    numeric: Mapping[str, np.ndarray],
    categorical: Mapping[str, np.ndarray],
    prediction: np.ndarray | None,
    window: np.ndarray,
    min_count: int,
) -> dict[str, tuple[float, float]]:
    """Per feature, the 95th and 99th percentile of its PSI over the training windows.

    Parameters
    ----------
    reference : DriftReference
        The reference the monitor will compare live windows with.
    numeric, categorical : mapping of str to ndarray (n,)
        The training columns the reference was built from.
    prediction : ndarray (n,) or None
    window : int64 ndarray (n,)
        Window index of each row (event time // window length, as the monitor cuts them).
    min_count : int
        Windows with fewer rows are skipped (the monitor does not judge them either).

    Returns
    -------
    dict of str to (float, float)
        Empty when fewer than 10 windows can be judged.
    """
    window = np.asarray(window)
    uniq, inv = np.unique(window, return_inverse=True)
    sizes = np.bincount(inv, minlength=len(uniq))
    judged = np.flatnonzero(sizes >= min_count)
    out: dict[str, tuple[float, float]] = {}
    if len(judged) < 10:
        return out
    items: list[tuple[str, Any, np.ndarray]] = [
        (k, reference.numeric[k], v) for k, v in numeric.items() if k in reference.numeric
    ]
    items += [
        (k, reference.categorical[k], v)
        for k, v in categorical.items()
        if k in reference.categorical
    ]
    if prediction is not None and reference.prediction is not None:
        items.append(("prediction", reference.prediction, prediction))
    for name, ref, values in items:
        bins = ref.bin(np.asarray(values))
        counts = np.zeros((len(uniq), ref.n_bins))
        np.add.at(counts, (inv, bins), 1.0)
        values_psi = [psi(ref.expected, counts[w]) for w in judged.tolist()]
        p95, p99 = np.quantile(values_psi, [0.95, 0.99])
        out[name] = (float(p95), float(p99))
    return out


def _shares(counts: np.ndarray, eps: float) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    p = c / total if total > 0 else np.full(len(c), 1.0 / len(c))
    return (p + eps) / (1.0 + eps * len(p))


def psi(expected: np.ndarray, actual_counts: np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Population stability index of ``actual_counts`` against the ``expected`` shares.

    ``PSI = sum_i (q_i - p_i) ln(q_i / p_i)`` with ``p`` the expected and ``q`` the actual
    shares, each smoothed by :data:`PSI_EPSILON`. 0 = identical; 0.1 / 0.25 are the customary
    warning / critical levels.

    References
    ----------
    Siddiqi, N. (2006). *Credit Risk Scorecards*, Wiley (population stability index).
    """
    p = _shares(expected, eps)
    q = _shares(actual_counts, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(expected: np.ndarray, actual_counts: np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Jensen–Shannon distance (base 2, in [0, 1]) between expected and actual shares.

    References
    ----------
    Endres, D. M. & Schindelin, J. E. (2003). A new metric for probability distributions.
    IEEE Trans. Inf. Theory 49(7).
    """
    p = _shares(expected, eps)
    q = _shares(actual_counts, eps)
    m = 0.5 * (p + q)
    js = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(np.sqrt(max(0.0, js)))
