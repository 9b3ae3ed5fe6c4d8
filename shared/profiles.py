"""Scoring side of the outcome profiles: distributions, intervals and the pattern classifier.

This module is imported by the worker and by :mod:`segstream.training.distributions`; it needs numpy,
numba and xgboost (no scikit-learn, no pickle). The training side computes every binned
quantity with the same functions, so the bin convention and the interval construction are
identical at fit and at scoring time by construction.

Bin convention
--------------
The outcome axis is cut by ``edges`` (shape ``(B + 1,)``, non-decreasing) into ``B`` bins that
are **left-closed, right-open**: bin ``i`` holds ``edges[i] <= y < edges[i + 1]``. Values below
``edges[0]`` are counted in bin 0 and values at or above ``edges[B]`` (in particular the
training maximum) in bin ``B - 1``; NaN has no bin (index ``-1``). Inside a bin, probability
mass is taken as uniform, so a distribution's CDF is piecewise linear between the edges and its
quantiles are found by linear interpolation. A zero-width bin (``edges[i] == edges[i + 1]``,
only produced for a constant outcome) is a point mass.

Intervals
---------
An event's predicted distribution is the mixture ``proba @ pattern_pmf``. Its interval of mass
``m`` is, by default, the *central* interval ``[Q(a), Q(b)]`` with ``a = (1 - m) / 2`` and
``b = (1 + m) / 2``; ``"shortest"`` gives the shortest single interval of mass ``m`` (equal to
the highest-density region when the mixture is unimodal). Both hold exactly mass ``m`` under the
predicted distribution. Where a recalibration map was fitted on a later validation slice, the
levels are first mapped through it (probability integral transform recalibration, Kuleshov et
al. 2018), so that the nominal mass is met on that slice.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from segstream.shared._forest import Forest
from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleCompatibilityError, SchemaError
from segstream.shared.routing import encode_categories

logger = logging.getLogger(__name__)

#: Version of the ``profiles`` export layout (``meta["format_version"]``).
FORMAT_VERSION = 1

#: Name of the classifier blob in :attr:`ExportedComponent.blobs` (XGBoost UBJSON).
CLASSIFIER_BLOB = "pattern_classifier.ubj"

#: Human-readable statement of the bin convention, stored in the export's meta.
BIN_CONVENTION = (
    "left-closed right-open [edges[i], edges[i+1]); below edges[0] -> bin 0; "
    "at or above edges[-1] -> last bin; NaN -> -1; uniform mass within a bin"
)

INTERVAL_METHODS = ("central", "shortest")

_SHORTEST_GRID = 64


# --------------------------------------------------------------------------- bins
def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin of each value under the module's left-closed, right-open convention.

    Parameters
    ----------
    edges : ndarray of shape (B + 1,), float
        Non-decreasing bin edges in outcome units, ``B >= 1``.
    values : array-like of shape (n,), float
        Outcomes in the same units; NaN allowed.

    Returns
    -------
    ndarray of shape (n,), int64
        Bin index in ``[0, B - 1]``; ``-1`` where the value is NaN.

    Examples
    --------
    >>> bin_index(np.array([0.0, 1.0, 2.0]), np.array([-5.0, 0.0, 0.5, 1.0, 2.0, 9.0, np.nan]))
    array([ 0,  0,  0,  1,  1,  1, -1])
    """
    edges = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    n_bins = edges.size - 1
    idx = np.searchsorted(edges, v, side="right") - 1
    idx = np.clip(idx, 0, n_bins - 1)
    idx[np.isnan(v)] = -1
    return idx.astype(np.int64)


def histogram(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts per bin of the finite ``values`` (NaN ignored), using :func:`bin_index`.

    Returns
    -------
    ndarray of shape (B,), int64
    """
    idx = bin_index(edges, values)
    return np.bincount(idx[idx >= 0], minlength=np.asarray(edges).size - 1).astype(np.int64)


# --------------------------------------------------------------------------- distributions
def _as_2d(pmf: np.ndarray) -> np.ndarray:
    p = np.asarray(pmf, dtype=np.float64)
    return p[None, :] if p.ndim == 1 else p


def cdf_at(pmf: np.ndarray, edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Piecewise-linear CDF of binned distributions evaluated at one value per row.

    Parameters
    ----------
    pmf : ndarray of shape (n, B) or (B,), float
        Bin probabilities (rows sum to 1); a 1-D ``pmf`` is shared by all values.
    edges : ndarray of shape (B + 1,), float
        Bin edges (see the module's bin convention).
    values : ndarray of shape (n,), float
        Outcome per row; NaN gives NaN.

    Returns
    -------
    ndarray of shape (n,), float64
        ``F(value)`` in ``[0, 1]``: 0 below ``edges[0]``, 1 at or above ``edges[-1]``. Used for
        the probability integral transform (PIT) of observed outcomes.
    """
    edges = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    p = _as_2d(pmf)
    if p.shape[0] == 1 and v.size != 1:
        p = np.broadcast_to(p, (v.size, p.shape[1]))
    cum = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(p, axis=1)], axis=1)
    j = bin_index(edges, v)
    ok = j >= 0
    jj = np.where(ok, j, 0)
    rows = np.arange(v.size)
    lo = edges[jj]
    width = edges[jj + 1] - lo
    frac = np.divide(v - lo, width, out=np.ones_like(v), where=width > 0)
    frac = np.clip(frac, 0.0, 1.0)
    out = cum[rows, jj] + p[rows, jj] * frac
    out = np.where(v < edges[0], 0.0, out)
    out = np.where(v >= edges[-1], 1.0, out)
    out = np.clip(out, 0.0, 1.0)
    out[~ok] = np.nan
    return out


def quantiles(pmf: np.ndarray, edges: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles of binned distributions by linear interpolation of their CDF, vectorised.

    Parameters
    ----------
    pmf : ndarray of shape (n, B) or (B,), float
        Bin probabilities; each row sums to 1 (rows are renormalised if not).
    edges : ndarray of shape (B + 1,), float
        Bin edges in outcome units.
    levels : ndarray of shape (L,) or (n, L), float
        Probability levels in ``[0, 1]``; a 2-D array gives per-row levels.

    Returns
    -------
    ndarray of shape (n, L), float64
        ``Q(level)`` in outcome units. ``Q(0)`` is the left edge of the first bin with mass,
        ``Q(1)`` the right edge of the last one.

    Raises
    ------
    ValueError
        If a level is outside ``[0, 1]`` or a row has no mass.
    """
    edges = np.asarray(edges, dtype=np.float64)
    p = _as_2d(pmf)
    n, n_bins = p.shape
    tot = p.sum(axis=1, keepdims=True)
    if np.any(~(tot > 0)):
        raise ValueError("quantiles: a distribution has no probability mass")
    p = p / tot
    lv = np.asarray(levels, dtype=np.float64)
    if lv.ndim == 1:
        lv = np.broadcast_to(lv, (n, lv.size))
    if np.any((lv < 0) | (lv > 1)) or np.any(np.isnan(lv)):
        raise ValueError("quantiles: levels must lie in [0, 1]")
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0
    # j = number of cumulative values strictly below the level -> the level's bin.
    if lv.shape[1] <= 8:
        j = np.stack([(cum < lv[:, i : i + 1]).sum(axis=1) for i in range(lv.shape[1])], axis=1)
    else:
        # Batched searchsorted: shift each row's CDF by 2*row so the rows are one sorted array.
        shift = 2.0 * np.arange(n)[:, None]
        j = np.searchsorted((cum + shift).ravel(), (lv + shift).ravel(), side="left")
        j = j.reshape(lv.shape) - np.arange(n)[:, None] * n_bins
    # Level 0 belongs to the first bin with mass (not to an empty leading bin).
    first = np.argmax(p > 0, axis=1)[:, None]
    j = np.where(lv <= 0.0, first, np.clip(j, 0, n_bins - 1))
    rows = np.arange(n)[:, None]
    pj = p[rows, j]
    below = cum[rows, j] - pj
    lo = edges[j]
    width = edges[j + 1] - lo
    frac = np.divide(lv - below, pj, out=np.zeros_like(lv), where=pj > 0)
    return lo + np.clip(frac, 0.0, 1.0) * width


def mixture_pmf(proba: np.ndarray, pattern_pmf: np.ndarray) -> np.ndarray:
    """Probability-weighted mixture of the pattern distributions.

    Parameters
    ----------
    proba : ndarray of shape (n, K), float
        Pattern probabilities per event (rows sum to 1).
    pattern_pmf : ndarray of shape (K, B), float
        Pattern distributions over the shared bins.

    Returns
    -------
    ndarray of shape (n, B), float64
    """
    return np.asarray(proba, dtype=np.float64) @ np.asarray(pattern_pmf, dtype=np.float64)


def _map_levels(
    levels: np.ndarray, calibration: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray:
    if calibration is None:
        return levels
    nominal, adjusted = calibration
    return np.interp(levels, nominal, adjusted)


def interval(
    pmf: np.ndarray,
    edges: np.ndarray,
    mass: float,
    method: str = "central",
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Single interval of probability ``mass`` from binned distributions, vectorised.

    Parameters
    ----------
    pmf : ndarray of shape (n, B) or (B,), float
        Predicted distributions (e.g. from :func:`mixture_pmf`).
    edges : ndarray of shape (B + 1,), float
        Bin edges in outcome units.
    mass : float
        Nominal probability mass in ``(0, 1)``.
    method : {"central", "shortest"}
        ``"central"``: equal tails, ``[Q((1-m)/2), Q((1+m)/2)]``. ``"shortest"``: the shortest
        ``[Q(u), Q(u+m)]`` over a grid of 64 values of ``u`` in ``[0, 1 - m]``.
    calibration : tuple of two ndarrays of shape (L,), optional
        Recalibration map ``(nominal, adjusted)``: a level ``u`` is replaced by
        ``interp(u, nominal, adjusted)`` before taking the quantile.

    Returns
    -------
    low, high : ndarray of shape (n,), float64
        Interval bounds in outcome units.

    Raises
    ------
    ValueError
        Unknown ``method`` or ``mass`` outside ``(0, 1)``.

    References
    ----------
    .. [1] Kuleshov, Fenner, Ermon (2018). Accurate uncertainties for deep learning using
       calibrated regression. ICML.
    """
    if not 0.0 < float(mass) < 1.0:
        raise ValueError(f"interval mass must lie in (0, 1), got {mass!r}")
    if method == "central":
        lv = np.array([(1.0 - mass) / 2.0, (1.0 + mass) / 2.0])
        q = quantiles(pmf, edges, _map_levels(lv, calibration))
        return q[:, 0], q[:, 1]
    if method == "shortest":
        u = np.linspace(0.0, 1.0 - mass, _SHORTEST_GRID)
        lv = np.concatenate([u, u + mass])
        q = quantiles(pmf, edges, np.clip(_map_levels(lv, calibration), 0.0, 1.0))
        lo, hi = q[:, :_SHORTEST_GRID], q[:, _SHORTEST_GRID:]
        best = np.argmin(hi - lo, axis=1)
        rows = np.arange(q.shape[0])
        return lo[rows, best], hi[rows, best]
    raise ValueError(f"interval method must be one of {INTERVAL_METHODS}, got {method!r}")


# --------------------------------------------------------------------------- features
def encode_categorical(
    values: np.ndarray | Sequence[Any], table: Sequence[str] | Mapping[str, int]
) -> np.ndarray:
    """Codes of categorical values in a sorted category table; unknown and missing -> NaN.

    Parameters
    ----------
    values : array-like of shape (n,)
        Category values (str; anything else but None/NaN is compared by ``str(value)``).
        None and NaN are missing.
    table : sequence of str, sorted, or mapping of str to int
        The categories seen at fit time (code ``i`` is ``table[i]``), or a prebuilt
        category -> code mapping (see :func:`category_index`).

    Returns
    -------
    ndarray of shape (n,), float32
        Code per value, NaN for a missing or unseen category (the classifier treats both as
        missing and still answers).

    Examples
    --------
    >>> encode_categorical(["b", "a", "zz", None], ["a", "b"])
    array([ 1.,  0., nan, nan], dtype=float32)
    """
    keys = list(table) if not isinstance(table, Mapping) else sorted(table, key=lambda k: table[k])
    codes = encode_categories(values, _table_index(tuple(keys))).astype(np.float32)
    codes[codes < 0] = np.nan
    return codes


@functools.lru_cache(maxsize=256)
def _table_index(table: tuple[str, ...]) -> pd.Index:
    return pd.Index(list(table), dtype=object)


def category_index(table: Sequence[str]) -> dict[str, int]:
    """Category -> code mapping of a category table (code = position)."""
    return {str(c): i for i, c in enumerate(table)}


def feature_matrix(
    columns: Mapping[str, Any],
    features: Sequence[str],
    feature_types: Sequence[str],
    categories: Mapping[str, Sequence[str] | Mapping[str, int]],
) -> np.ndarray:
    """Classifier input matrix from named columns.

    Parameters
    ----------
    columns : mapping of str to array-like of shape (n,)
        Event columns by name (extra columns are ignored).
    features : sequence of str
        Feature names in the classifier's order.
    feature_types : sequence of {"q", "c"}
        ``"q"`` numeric (float; None/NaN/unparsable -> NaN), ``"c"`` categorical (see
        :func:`encode_categorical`).
    categories : mapping of str to (sequence of str or mapping of str to int)
        Category table (or prebuilt :func:`category_index`) per categorical feature.

    Returns
    -------
    ndarray of shape (n, F), float32

    Raises
    ------
    SchemaError
        A feature column is missing, or columns have different lengths.
    """
    missing = [f for f in features if f not in columns]
    if missing:
        raise SchemaError(f"outcome profiles: missing feature column(s) {missing}")
    lengths = {len(columns[f]) for f in features}
    if len(lengths) > 1:
        raise SchemaError(f"outcome profiles: feature columns have different lengths {lengths}")
    n = lengths.pop() if lengths else 0
    out = np.empty((n, len(features)), dtype=np.float32)
    for i, (name, kind) in enumerate(zip(features, feature_types, strict=True)):
        col = columns[name]
        if kind == "c":
            out[:, i] = encode_categorical(col, categories[name])
        else:
            a = np.asarray(col)
            if a.dtype.kind in "fiub":
                out[:, i] = a.astype(np.float32)
            else:
                out[:, i] = _to_float(a)
    return out


def _to_float(a: np.ndarray) -> np.ndarray:
    res = np.full(a.size, np.nan, dtype=np.float32)
    for i, x in enumerate(a.ravel()):
        try:
            res[i] = float(x) if x is not None else np.nan
        except (TypeError, ValueError):
            res[i] = np.nan
    return res


def predict_pattern_proba(booster: Any, x: np.ndarray, n_patterns: int) -> np.ndarray:
    """Pattern probabilities from the XGBoost classifier (``multi:softprob``, or
    ``binary:logistic`` giving the probability of pattern 1 when there are two patterns).

    Parameters
    ----------
    booster : xgboost.Booster, shared._forest.Forest or None
        The classifier, or its compiled form (:class:`ProfileScorer` passes the
        :class:`~segstream.shared._forest.Forest` built at load time, whose ``inplace_predict`` answers
        bit for bit what the booster's does, without the GIL); None when there is a single
        pattern.
    x : ndarray of shape (n, F), float32
        Output of :func:`feature_matrix`.
    n_patterns : int
        Number of patterns ``K``.

    Returns
    -------
    ndarray of shape (n, K), float64
        Rows sum to 1 (renormalised in float64).
    """
    n = x.shape[0]
    if booster is None or n_patterns == 1:
        return np.ones((n, 1), dtype=np.float64)
    if n == 0:
        return np.zeros((0, n_patterns), dtype=np.float64)
    p = np.asarray(booster.inplace_predict(x), dtype=np.float64)
    if p.ndim == 1 and n_patterns == 2:  # binary:logistic: P(pattern 1)
        return np.column_stack([1.0 - p, p])
    p = p.reshape(n, n_patterns)
    return p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- scorer
@dataclasses.dataclass(frozen=True)
class ProfileScores:
    """Per-event output of :meth:`ProfileScorer.score` (all arrays have ``n`` rows).

    Attributes
    ----------
    pattern : ndarray of shape (n,), int32
        Most probable pattern.
    pattern_proba : ndarray of shape (n,), float64
        Its probability.
    proba : ndarray of shape (n, K), float64
        All pattern probabilities (rows sum to 1).
    low, high : ndarray of shape (n,), float64
        Interval of mass :attr:`mass` in outcome units.
    mass : float
        The interval's nominal mass.
    quantiles : ndarray of shape (n, L), float64 or None
        Mixture quantiles at the export's ``quantile_levels`` when asked for.
    """

    pattern: np.ndarray
    pattern_proba: np.ndarray
    proba: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mass: float
    quantiles: np.ndarray | None = None


class ProfileScorer:
    """Outcome-profile scoring rebuilt from an exported ``profiles`` component.

    Loads the classifier from its UBJSON blob with ``xgboost.Booster.load_model`` and the rest
    from plain arrays and JSON: no scikit-learn, no pickle. The booster is then converted once
    into a :class:`~segstream.shared._forest.Forest` (:attr:`forest`), which predicts the same
    probabilities bit for bit with a GIL-free numba kernel (about 4x faster per row than
    ``inplace_predict`` with one thread) and keeps XGBoost for models it does not compile.

    Parameters
    ----------
    exported : ExportedComponent
        Output of ``training.distributions.OutcomeProfiles.export()`` (``kind="profiles"``).
    nthread : int, default 1
        Threads XGBoost may use for prediction (when :attr:`forest` falls back to it).

    Raises
    ------
    BundleCompatibilityError
        Wrong kind, newer format version, or a missing array or blob.

    Examples
    --------
    >>> scorer = ProfileScorer(exported)                 # doctest: +SKIP
    >>> s = scorer.score({"carrier": ["UA"], ...})       # doctest: +SKIP
    >>> s.low, s.high                                    # doctest: +SKIP
    """

    def __init__(self, exported: ExportedComponent, nthread: int = 1) -> None:
        if exported.kind != "profiles":
            raise BundleCompatibilityError(
                f"expected a 'profiles' component, got {exported.kind!r}"
            )
        meta = exported.meta
        version = int(meta.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise BundleCompatibilityError(
                f"profiles format_version {version} is newer than this scorer ({FORMAT_VERSION})"
            )
        need = (
            "bin_edges",
            "pattern_pmf",
            "quantile_levels",
            "calibration_nominal",
            "calibration_adjusted",
        )
        absent = [a for a in need if a not in exported.arrays]
        if absent:
            raise BundleCompatibilityError(f"profiles export lacks array(s) {absent}")
        self.meta = meta
        self.edges = np.asarray(exported.arrays["bin_edges"], dtype=np.float64)
        self.pattern_pmf = np.asarray(exported.arrays["pattern_pmf"], dtype=np.float64)
        self.quantile_levels = np.asarray(exported.arrays["quantile_levels"], dtype=np.float64)
        self.n_patterns = int(self.pattern_pmf.shape[0])
        self.features: list[str] = list(meta["features"])
        self.feature_types: list[str] = list(meta["feature_types"])
        self.categories: dict[str, list[str]] = {k: list(v) for k, v in meta["categories"].items()}
        self._index = {k: category_index(v) for k, v in self.categories.items()}
        self.interval_mass = float(meta["interval_mass"])
        self.interval_method = str(meta["interval_method"])
        nominal = np.asarray(exported.arrays["calibration_nominal"], dtype=np.float64)
        adjusted = np.asarray(exported.arrays["calibration_adjusted"], dtype=np.float64)
        self.calibration = (nominal, adjusted)
        self.booster = None
        #: The classifier compiled for prediction (None with a single pattern); its
        #: ``fallback`` says whether XGBoost predicts instead, and why.
        self.forest: Forest | None = None
        if self.n_patterns > 1:
            if CLASSIFIER_BLOB not in exported.blobs:
                raise BundleCompatibilityError(f"profiles export lacks blob {CLASSIFIER_BLOB!r}")
            import xgboost

            self.booster = xgboost.Booster()
            self.booster.load_model(bytearray(exported.blobs[CLASSIFIER_BLOB]))
            self.booster.set_param({"nthread": int(nthread)})
            self.forest = Forest.from_booster(self.booster)

    def predict_proba(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Pattern probabilities, shape (n, K), rows summing to 1 (see :func:`feature_matrix`)."""
        x = feature_matrix(columns, self.features, self.feature_types, self._index)
        return predict_pattern_proba(self.forest, x, self.n_patterns)

    def pattern(self, columns: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The most probable pattern and its probability, without the intervals.

        The part of :meth:`score` a prediction record carries (the stream worker's hot path).

        Returns
        -------
        pattern : ndarray of shape (n,), int32
        pattern_proba : ndarray of shape (n,), float64
            Equal to ``score(columns).pattern`` and ``.pattern_proba``.

        Raises
        ------
        SchemaError
            A feature column is missing.
        """
        proba = self.predict_proba(columns)
        pattern = np.argmax(proba, axis=1).astype(np.int32)
        return pattern, proba[np.arange(proba.shape[0]), pattern]

    def score(
        self,
        columns: Mapping[str, Any],
        *,
        mass: float | None = None,
        with_quantiles: bool = False,
    ) -> ProfileScores:
        """Score a batch of events.

        Parameters
        ----------
        columns : mapping of str to array-like of shape (n,)
            Event columns by name; must include every feature in ``meta["features"]``.
            Unseen categories and None/NaN values are accepted (encoded as missing).
        mass : float, optional
            Interval mass; defaults to the export's ``interval_mass``.
        with_quantiles : bool, default False
            Also return the mixture quantiles at ``quantile_levels``.

        Returns
        -------
        ProfileScores

        Raises
        ------
        SchemaError
            A feature column is missing.
        """
        proba = self.predict_proba(columns)
        m = self.interval_mass if mass is None else float(mass)
        pmf = mixture_pmf(proba, self.pattern_pmf)
        if proba.shape[0] == 0:
            empty = np.zeros(0)
            return ProfileScores(
                np.zeros(0, np.int32),
                empty,
                proba,
                empty,
                empty,
                m,
                np.zeros((0, self.quantile_levels.size)) if with_quantiles else None,
            )
        low, high = interval(pmf, self.edges, m, self.interval_method, self.calibration)
        pattern = np.argmax(proba, axis=1).astype(np.int32)
        q = quantiles(pmf, self.edges, self.quantile_levels) if with_quantiles else None
        return ProfileScores(
            pattern=pattern,
            pattern_proba=proba[np.arange(proba.shape[0]), pattern],
            proba=proba,
            low=low,
            high=high,
            mass=m,
            quantiles=q,
        )
