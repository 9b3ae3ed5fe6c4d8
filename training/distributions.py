"""Outcome profiles: cluster the *shapes* of per-group outcome distributions into patterns.

The idea comes from DistETA (``oarguido/DistETA_and_LLMReporting``): for every combination of
categorical values (for flights: carrier, origin, dest) build a histogram of the outcome
(arrival delay), cluster the histograms with K-Means, describe each cluster ("pattern") by its
pooled distribution and highest-density regions, and train an XGBoost classifier that predicts
an event's pattern. This implementation fixes DistETA's flaws:

* K-Means runs on **normalised** histograms (probability vectors), so a pattern is a shape, not
  a traffic volume;
* the classifier sees only **features known when the event happens** (never the outcome or its
  bin), and it is evaluated on a **later time slice**, not on its training rows;
* an HDR is the smallest set of bins holding *at least* the requested mass, ranked by
  **density** (mass / width), and reported in outcome units;
* one bin convention everywhere (:mod:`segstream.shared.profiles`: left-closed, right-open), shared by
  fitting and scoring code;
* an event's predicted distribution is the probability-weighted **mixture** of the pattern
  distributions, and its interval has a stated, measured coverage.

Pipeline of :meth:`OutcomeProfiles.fit`
---------------------------------------
1. Rows with a NaN outcome (flights: cancelled or diverted) are excluded and counted
   (``n_outcome_missing_``).
2. Shared bin edges over all training outcomes (:func:`bin_edges`).
3. Groups by ``profile_keys``; groups smaller than the resolved minimum size
   (:func:`resolve_min_group_size`) are pooled into one ``"other"`` profile.
4. Each profile is its normalised histogram (optionally plus its scaled quantile vector).
5. K-Means for each K in ``k_range``; K chosen by silhouette with the drop rule of
   :func:`select_n_patterns`; patterns are renumbered by increasing median outcome.
6. Per pattern: pooled distribution, quantiles, mean, HDRs (:func:`highest_density_region`).
7. XGBoost classifier (``binary:logistic`` for two patterns, else ``multi:softprob``) of the
   event's group pattern from the configured features, early-stopped on a later validation
   slice.
8. Optional PIT recalibration of interval levels on the same validation slice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from segstream.shared import profiles as sp
from segstream.shared.component import ExportedComponent
from segstream.shared.errors import ConfigError, DataError, NotFittedError, SchemaError
from segstream.training.plotting import pyplot

logger = logging.getLogger(__name__)

#: Default quantile levels p05, p10, ..., p95.
DEFAULT_QUANTILE_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))

_KEY_SEP = "\x1f"

#: Fewer validation outcomes than this leave the interval calibration as the identity: the
#: PIT quantiles of a smaller sample are too noisy (sd of the 0.1 level ~0.013 at 500).
_MIN_CALIBRATION_OUTCOMES = 500


# --------------------------------------------------------------------------- bins
def bin_edges(
    y: np.ndarray, method: str = "quantile", n_bins: int = 50, max_bins: int = 200
) -> np.ndarray:
    """Shared bin edges for the outcome over the whole training set.

    Parameters
    ----------
    y : ndarray of shape (n,), float
        Finite training outcomes (NaN must be removed first).
    method : {"quantile", "fd"}, default "quantile"
        ``"quantile"``: edges at the ``i / n_bins`` quantiles of ``y`` (duplicates removed, so
        heavily tied data gives fewer, wider bins). ``"fd"``: equal-width bins of the
        Freedman–Diaconis width ``2 IQR n^(-1/3)`` from ``min(y)`` to ``max(y)``, widened so
        that there are at most ``max_bins``.
    n_bins : int, default 50
        Number of quantile bins.
    max_bins : int, default 200
        Cap on the number of Freedman–Diaconis bins.

    Returns
    -------
    ndarray of shape (B + 1,), float64
        Increasing edges with ``edges[0] = min(y)`` and ``edges[-1] = max(y)``. A constant
        outcome gives ``[v, v]``: one zero-width bin, a point mass. Bins follow the convention of
        :func:`segstream.shared.profiles.bin_index` (left-closed, right-open; out-of-range values go to
        the first/last bin).

    Raises
    ------
    DataError
        No finite outcome.
    ConfigError
        Unknown ``method`` or a non-positive bin count.

    References
    ----------
    .. [1] Freedman, Diaconis (1981). On the histogram as a density estimator: L2 theory.
       Zeitschrift für Wahrscheinlichkeitstheorie und verwandte Gebiete 57, 453-476.
    """
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    if y.size == 0:
        raise DataError("outcome profiles: no finite outcome to build bins from")
    if n_bins < 1 or max_bins < 1:
        raise ConfigError("outcome profiles: n_bins and max_bins must be >= 1")
    lo, hi = float(y.min()), float(y.max())
    if lo == hi:
        return np.array([lo, hi])
    if method == "quantile":
        edges = np.unique(np.quantile(y, np.linspace(0.0, 1.0, n_bins + 1)))
    elif method == "fd":
        q75, q25 = np.quantile(y, [0.75, 0.25])
        width = 2.0 * (q75 - q25) * y.size ** (-1.0 / 3.0)
        n = max_bins if width <= 0 else min(max_bins, max(1, math.ceil((hi - lo) / width)))
        edges = np.linspace(lo, hi, n + 1)
    else:
        raise ConfigError(f"outcome profiles: binning must be 'quantile' or 'fd', got {method!r}")
    edges[0], edges[-1] = lo, hi
    return edges


# --------------------------------------------------------------------------- groups
def knee_size(sizes: np.ndarray) -> int:
    """Group size at the knee of the sorted log group sizes (Kneedle).

    Sizes are sorted ascending and ``log(size)`` is plotted against the rank, both scaled to
    ``[0, 1]``. For long-tailed group sizes this curve rises steeply through the many tiny
    groups and then flattens; the knee is the point farthest above the chord from the first
    to the last point.

    Parameters
    ----------
    sizes : ndarray of shape (G,), int
        Group sizes (rows with a finite outcome), all >= 1.

    Returns
    -------
    int
        The size at the knee (groups at least this large keep their own profile); 1 when
        there are fewer than three groups or all have the same size.

    References
    ----------
    .. [1] Satopää, Albrecht, Irwin, Raghavan (2011). Finding a "Kneedle" in a haystack:
       detecting knee points in system behavior. ICDCS workshops.
    """
    s = np.sort(np.asarray(sizes, dtype=np.float64))
    if s.size < 3 or s[0] == s[-1]:
        return 1
    ly = np.log(s)
    yn = (ly - ly[0]) / (ly[-1] - ly[0])
    xn = np.linspace(0.0, 1.0, s.size)
    return int(s[int(np.argmax(yn - xn))])


def resolve_min_group_size(sizes: np.ndarray, rule: int | str) -> int:
    """Minimum group size from a rule.

    Parameters
    ----------
    sizes : ndarray of shape (G,), int
        Group sizes.
    rule : int or str
        An int ``>= 1`` is a count; ``"pNN"`` (e.g. ``"p25"``) is the NN-th percentile of the
        group sizes; ``"auto"`` is :func:`knee_size`.

    Returns
    -------
    int
        Groups with fewer rows are pooled into the ``"other"`` profile.

    Raises
    ------
    ConfigError
        The rule is not one of the above.
    """
    if isinstance(rule, bool):
        raise ConfigError(f"min_group_size must be an int, 'pNN' or 'auto', got {rule!r}")
    if isinstance(rule, (int, np.integer)):
        if rule < 1:
            raise ConfigError(f"min_group_size must be >= 1, got {rule}")
        return int(rule)
    if rule == "auto":
        return knee_size(sizes)
    m = re.fullmatch(r"p(\d+(?:\.\d+)?)", str(rule))
    if m and 0.0 <= float(m.group(1)) <= 100.0:
        return max(1, math.ceil(np.percentile(sizes, float(m.group(1)))))
    raise ConfigError(f"min_group_size must be an int, 'pNN' or 'auto', got {rule!r}")


def _key_strings(frame: pd.DataFrame, keys: Sequence[str]) -> np.ndarray:
    parts = [frame[k].astype(object).where(frame[k].notna(), "<NA>").astype(str) for k in keys]
    out = parts[0]
    for p in parts[1:]:
        out = out + _KEY_SEP + p
    return out.to_numpy(dtype=object)


# --------------------------------------------------------------------------- HDR
@dataclasses.dataclass(frozen=True)
class HighDensityRegion:
    """A highest-density region of a binned distribution.

    Attributes
    ----------
    intervals : ndarray of shape (J, 2), float64
        Disjoint ``[low, high]`` intervals in outcome units, increasing; ``J > 1`` when the
        distribution is multi-modal.
    bins : ndarray of shape (B,), bool
        The bins in the region.
    mass : float
        Probability mass actually covered (>= the requested mass, by at most one bin's mass).
    density_threshold : float
        Lowest density (mass per outcome unit) among the region's bins: Hyndman's ``f_alpha``.
    requested_mass : float
        The mass asked for.
    """

    intervals: np.ndarray
    bins: np.ndarray
    mass: float
    density_threshold: float
    requested_mass: float


def highest_density_region(pmf: np.ndarray, edges: np.ndarray, mass: float) -> HighDensityRegion:
    """Smallest set of bins holding at least ``mass``, as intervals in outcome units.

    Bins are ranked by **density** ``pmf[i] / (edges[i+1] - edges[i])`` (not by mass: quantile
    bins have unequal widths) and taken in that order until their mass reaches ``mass``; ties
    in density are taken left to right. The selected bins are exactly
    ``{y : f(y) >= f_alpha}`` of Hyndman (1996) for the histogram density ``f``, except that
    among bins tied at the threshold only as many are kept as the mass needs. Adjacent
    selected bins are merged into intervals.

    Parameters
    ----------
    pmf : ndarray of shape (B,), float
        Bin probabilities (summing to 1; renormalised if not).
    edges : ndarray of shape (B + 1,), float
        Bin edges (convention of :func:`segstream.shared.profiles.bin_index`).
    mass : float
        Requested mass in ``(0, 1]``.

    Returns
    -------
    HighDensityRegion

    Raises
    ------
    ValueError
        ``mass`` outside ``(0, 1]``, shape mismatch, or a distribution without mass.

    References
    ----------
    .. [1] Hyndman, R. J. (1996). Computing and graphing highest density regions.
       The American Statistician 50(2), 120-126.

    Examples
    --------
    >>> r = highest_density_region(np.array([0.1, 0.6, 0.3]), np.array([0., 1., 2., 3.]), 0.8)
    >>> r.intervals.tolist(), round(r.mass, 3)
    ([[1.0, 3.0]], 0.9)
    """
    p = np.asarray(pmf, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if not 0.0 < float(mass) <= 1.0:
        raise ValueError(f"HDR mass must lie in (0, 1], got {mass!r}")
    if e.size != p.size + 1:
        raise ValueError(f"HDR: {p.size} bins need {p.size + 1} edges, got {e.size}")
    tot = p.sum()
    if not tot > 0:
        raise ValueError("HDR: distribution has no mass")
    p = p / tot
    width = np.diff(e)
    dens = np.divide(p, width, out=np.where(p > 0, np.inf, 0.0), where=width > 0)
    order = np.argsort(-dens, kind="stable")
    cum = np.cumsum(p[order])
    n_sel = int(np.searchsorted(cum, float(mass) - 1e-12, side="left")) + 1
    n_sel = min(n_sel, int(np.count_nonzero(p > 0)))
    sel = np.zeros(p.size, dtype=bool)
    sel[order[:n_sel]] = True
    idx = np.flatnonzero(sel)
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    blocks = np.split(idx, breaks)
    intervals = np.array([[e[b[0]], e[b[-1] + 1]] for b in blocks], dtype=np.float64)
    return HighDensityRegion(
        intervals=intervals.reshape(-1, 2),
        bins=sel,
        mass=float(p[sel].sum()),
        density_threshold=float(dens[order[n_sel - 1]]),
        requested_mass=float(mass),
    )


# --------------------------------------------------------------------------- K selection
@dataclasses.dataclass(frozen=True)
class PatternSelection:
    """Outcome of :func:`select_n_patterns`.

    Attributes
    ----------
    n_patterns : int
        Chosen K.
    labels : ndarray of shape (n_profiles,), int64
        Pattern of each profile (K-Means labels, not yet renumbered).
    silhouette : dict of int to float
        Mean silhouette per candidate K.
    reason : str
        How K was chosen (the drop rule, or the fallback for too few distinct profiles).
    """

    n_patterns: int
    labels: np.ndarray
    silhouette: dict[int, float]
    reason: str


def select_n_patterns(
    profiles: np.ndarray,
    k_range: tuple[int, int] = (2, 8),
    silhouette_drop: float = 0.05,
    peak_tolerance: float = 0.01,
    random_state: int = 0,
) -> PatternSelection:
    """K-Means over profiles with K chosen by silhouette and a drop rule.

    **Drop rule.** For every candidate K in ``k_range`` (K-Means with 10 seeded restarts), the
    mean silhouette ``s(K)`` is computed. The walk starts at the smallest K whose silhouette is
    within ``peak_tolerance`` of the best one, then moves to K + 1 as long as the relative drop
    ``(s(K) - s(K+1)) / |s(K)|`` is at most ``silhouette_drop``, and stops before the first
    larger drop. So K is the largest number of patterns reachable from the silhouette peak
    without a marked loss of separation (DistETA's heuristic, with an explicit tolerance in
    place of rounding to two decimals).

    **Too few profiles.** Silhouettes need ``2 <= K <= n_distinct - 1``. When no K of the range
    qualifies (fewer distinct profiles than ``k_min + 1``), every distinct profile becomes its
    own pattern (K = number of distinct profiles, possibly 1) and ``reason`` says so.

    Parameters
    ----------
    profiles : ndarray of shape (n_profiles, D), float
        One row per profile (normalised histogram, optionally with its quantile vector).
    k_range : tuple of two ints, default (2, 8)
        Inclusive range of K.
    silhouette_drop : float, default 0.05
        Largest tolerated relative silhouette drop when increasing K.
    peak_tolerance : float, default 0.01
        Absolute tolerance for the starting peak.
    random_state : int, default 0
        Seed of K-Means.

    Returns
    -------
    PatternSelection

    Raises
    ------
    ConfigError
        ``k_range`` not ``(k_min, k_max)`` with ``1 <= k_min <= k_max``.

    References
    ----------
    .. [1] Rousseeuw, P. J. (1987). Silhouettes: a graphical aid to the interpretation and
       validation of cluster analysis. Journal of Computational and Applied Mathematics 20,
       53-65.
    .. [2] DistETA, ``oarguido/DistETA_and_LLMReporting``, ``clustering_utils.py``.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    k_min, k_max = (int(k) for k in k_range)
    if not 1 <= k_min <= k_max:
        raise ConfigError(f"outcome profiles: k_range must satisfy 1 <= min <= max, got {k_range}")
    x = np.asarray(profiles, dtype=np.float64)
    distinct, inverse = np.unique(np.round(x, 12), axis=0, return_inverse=True)
    n_distinct = distinct.shape[0]
    cands = [k for k in range(max(2, k_min), k_max + 1) if k <= n_distinct - 1]
    if not cands:
        k = n_distinct
        return PatternSelection(
            k,
            inverse.ravel().astype(np.int64),
            {},
            f"fallback: {n_distinct} distinct profile(s), fewer than "
            f"k_min + 1 = {k_min + 1}; one pattern per distinct profile",
        )
    scores: dict[int, float] = {}
    labels: dict[int, np.ndarray] = {}
    for k in cands:
        with warnings.catch_warnings():  # duplicate profiles: fewer distinct clusters than k
            warnings.simplefilter("ignore", category=UserWarning)
            km = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit(x)
        labels[k] = km.labels_.astype(np.int64)
        n_used = np.unique(km.labels_).size
        scores[k] = float(silhouette_score(x, km.labels_)) if n_used > 1 else -1.0
    best = max(scores.values())
    start = min(k for k in cands if scores[k] >= best - peak_tolerance)
    chosen = start
    for k in [c for c in cands if c > start]:
        prev = scores[chosen]
        drop = (prev - scores[k]) / abs(prev) if prev != 0 else (1.0 if scores[k] < 0 else 0.0)
        if drop > silhouette_drop or k != chosen + 1:
            break
        chosen = k
    reason = (
        f"silhouette peak at K={start} (best {best:.3f}); kept increasing K while the "
        f"relative drop was <= {silhouette_drop:g}"
    )
    return PatternSelection(chosen, labels[chosen], scores, reason)


# --------------------------------------------------------------------------- calibration
def pit_calibration(
    pmf: np.ndarray, edges: np.ndarray, y: np.ndarray, n_knots: int = 101
) -> tuple[np.ndarray, np.ndarray]:
    """Recalibration map of interval levels from probability integral transforms.

    With ``u_i = F_i(y_i)`` the PIT of each validation outcome under its predicted
    distribution and ``G`` their empirical CDF, a level ``u`` is replaced by ``G^{-1}(u)``
    before taking a quantile. The interval ``[Q(G^{-1}(a)), Q(G^{-1}(b))]`` then covers the
    share ``b - a`` of the validation outcomes, whatever the (mis)calibration of ``F``; on a
    later slice it stays calibrated as long as the PIT distribution does not drift.

    Parameters
    ----------
    pmf : ndarray of shape (n, B) or (B,), float
        Predicted distributions of the validation events (one shared row allowed).
    edges : ndarray of shape (B + 1,), float
        Bin edges.
    y : ndarray of shape (n,), float
        Finite validation outcomes.
    n_knots : int, default 101
        Number of equally spaced nominal levels in ``[0, 1]``.

    Returns
    -------
    nominal, adjusted : ndarray of shape (n_knots,), float64
        Monotone map with ``adjusted[0] = 0`` and ``adjusted[-1] = 1``.

    References
    ----------
    .. [1] Kuleshov, Fenner, Ermon (2018). Accurate uncertainties for deep learning using
       calibrated regression. ICML.
    """
    pit = sp.cdf_at(pmf, edges, np.asarray(y, dtype=np.float64))
    pit = pit[np.isfinite(pit)]
    nominal = np.linspace(0.0, 1.0, n_knots)
    if pit.size == 0:
        return nominal, nominal.copy()
    adjusted = np.quantile(pit, nominal)
    adjusted[0], adjusted[-1] = 0.0, 1.0
    return nominal, np.maximum.accumulate(adjusted)


# --------------------------------------------------------------------------- estimator
class OutcomeProfiles(BaseEstimator):
    """Outcome-distribution patterns per group, and a classifier predicting them per event.

    Parameters
    ----------
    profile_keys : tuple of str, default ("carrier", "origin", "dest")
        Columns whose value combinations define the groups (for flights: routes per carrier).
    features : tuple of str or None, default None
        Classifier inputs, all known when the event happens; None uses ``profile_keys``. The
        outcome must not be among them.
    categorical_features : tuple of str or None, default None
        Which ``features`` are categorical; None takes the profile keys and every non-numeric
        column among the features.
    target : str or None, default None
        Name of the outcome column. When given, it is refused as a feature (leakage guard).
    min_group_size : int or str, default "auto"
        Minimum rows (with a finite outcome) for a group to keep its own profile: a count, a
        percentile ``"pNN"`` of group sizes, or ``"auto"`` (knee, :func:`knee_size`). Smaller
        groups are pooled into one ``"other"`` profile, never dropped.
    binning : {"quantile", "fd"}, default "quantile"
        Bin edge rule of :func:`bin_edges`.
    n_bins : int, default 50
        Quantile bins.
    max_bins : int, default 200
        Cap on Freedman–Diaconis bins.
    profile_quantiles : bool, default False
        Append each group's quantile vector (at ``quantile_levels``, centred on the global
        median and divided by the global IQR and by ``sqrt(L)``) to its histogram for K-Means.
    k_range : tuple of two ints, default (2, 8)
        Candidate numbers of patterns.
    silhouette_drop : float, default 0.05
        Drop rule of :func:`select_n_patterns`.
    quantile_levels : tuple of float or None, default None
        Levels of the pattern and event quantiles; None = p05, p10, ..., p95.
    hdr_masses : tuple of float, default (0.5, 0.8, 0.95)
        Masses of the per-pattern HDRs.
    interval_mass : float, default 0.8
        Mass of the per-event interval.
    interval_method : {"central", "shortest"}, default "central"
        Per-event interval construction (:func:`segstream.shared.profiles.interval`).
    calibration : {"pit", "none"}, default "pit"
        ``"pit"``: recalibrate interval levels on the validation slice so that each nominal
        level is met there (Kuleshov et al. 2018); needs at least 500 validation outcomes,
        otherwise the identity map is used. ``"none"``: identity.
    n_estimators : int, default 100
        Maximum boosting rounds (each round adds K trees).
    max_depth : int, default 4
        Tree depth.
    learning_rate : float, default 0.3
        XGBoost ``eta``.
    early_stopping_rounds : int, default 10
        Rounds without validation log-loss improvement before stopping.
    validation_fraction : float, default 0.1
        When ``fit`` gets no ``eval_set``: the latest share of rows (by ``time_column``, else by
        row order) held out for early stopping and calibration; 0 disables both.
    time_column : str or None, default None
        Column ordering rows in time for the internal validation split.
    max_classifier_rows : int or None, default None
        Train the classifier on a seeded random subset of at most this many rows.
    categorical_encoding : {"ordinal", "native"}, default "ordinal"
        How the classifier sees category codes (index in the sorted category table; unseen and
        missing -> NaN): ``"ordinal"`` as numbers split by thresholds, ``"native"`` with
        XGBoost's categorical splits. On flights both reach the same accuracy, and ordinal
        trees train about 3x and predict about 2.5x faster, hence the default.
    nthread : int, default 2
        XGBoost threads.
    random_state : int, default 0
        Seed of K-Means, XGBoost and subsampling.

    Attributes
    ----------
    bin_edges_ : ndarray of shape (B + 1,)
        Shared bin edges (outcome units).
    min_group_size_ : int
        Resolved minimum group size.
    groups_ : pandas.DataFrame
        One row per training group: the key columns, ``n_events`` (finite outcomes),
        ``n_outcome_missing``, ``pooled`` (in "other"), ``pattern``.
    profiles_ : ndarray of shape (P, B)
        Normalised histograms of the kept groups, then the "other" profile if any.
    n_patterns_ : int
    pattern_pmf_ : ndarray of shape (K, B)
        Pooled distribution per pattern.
    pattern_quantiles_ : ndarray of shape (K, L)
    pattern_mean_ : ndarray of shape (K,)
        Mean outcome of the pattern's training events (exact, not binned).
    pattern_n_events_, pattern_n_groups_ : ndarray of shape (K,), int64
    hdr_ : list of dict of float to HighDensityRegion
        Per pattern, HDR by mass.
    other_pattern_ : int
        Pattern of the pooled "other" profile (also used for unseen groups); -1 when no group
        was pooled.
    selection_ : PatternSelection
    booster_ : xgboost.Booster or None
        The classifier (None when K = 1), truncated to its best iteration.
    features_, feature_types_, categories_ :
        Classifier inputs, their types ("q"/"c") and category tables.
    calibration_ : tuple of two ndarrays
        ``(nominal, adjusted)`` level map.
    naive_calibration_ : tuple of two ndarrays
        The same PIT map fitted for ``global_pmf_`` (for a fair naive baseline).
    global_pmf_ : ndarray of shape (B,)
        Distribution of all training outcomes (the naive baseline).
    n_outcome_missing_ : int
        Training rows with a NaN outcome (excluded, counted).
    fit_report_ : dict
        Counts and timings of the fit (JSON-serialisable).

    References
    ----------
    .. [1] DistETA, ``oarguido/DistETA_and_LLMReporting``.
    .. [2] Hyndman (1996). Computing and graphing highest density regions.
    .. [3] Rousseeuw (1987). Silhouettes.
    .. [4] Chen, Guestrin (2016). XGBoost: a scalable tree boosting system. KDD.
    """

    def __init__(
        self,
        profile_keys: tuple[str, ...] = ("carrier", "origin", "dest"),
        features: tuple[str, ...] | None = None,
        categorical_features: tuple[str, ...] | None = None,
        target: str | None = None,
        min_group_size: int | str = "auto",
        binning: str = "quantile",
        n_bins: int = 50,
        max_bins: int = 200,
        profile_quantiles: bool = False,
        k_range: tuple[int, int] = (2, 8),
        silhouette_drop: float = 0.05,
        quantile_levels: tuple[float, ...] | None = None,
        hdr_masses: tuple[float, ...] = (0.5, 0.8, 0.95),
        interval_mass: float = 0.8,
        interval_method: str = "central",
        calibration: str = "pit",
        n_estimators: int = 100,
        max_depth: int = 4,
        learning_rate: float = 0.3,
        early_stopping_rounds: int = 10,
        validation_fraction: float = 0.1,
        time_column: str | None = None,
        max_classifier_rows: int | None = None,
        categorical_encoding: str = "ordinal",
        nthread: int = 2,
        random_state: int = 0,
    ) -> None:
        self.profile_keys = profile_keys
        self.features = features
        self.categorical_features = categorical_features
        self.target = target
        self.min_group_size = min_group_size
        self.binning = binning
        self.n_bins = n_bins
        self.max_bins = max_bins
        self.profile_quantiles = profile_quantiles
        self.k_range = k_range
        self.silhouette_drop = silhouette_drop
        self.quantile_levels = quantile_levels
        self.hdr_masses = hdr_masses
        self.interval_mass = interval_mass
        self.interval_method = interval_method
        self.calibration = calibration
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.time_column = time_column
        self.max_classifier_rows = max_classifier_rows
        self.categorical_encoding = categorical_encoding
        self.nthread = nthread
        self.random_state = random_state

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_schema(cls, schema: Any, **params: Any) -> OutcomeProfiles:
        """Estimator whose features are the schema's numeric and categorical features.

        Parameters
        ----------
        schema : shared.settings.SchemaSettings
            Event schema; its target becomes ``target`` (and is therefore refused as a feature).
        **params
            Other hyper-parameters (e.g. ``profile_keys``, ``n_estimators``).

        Returns
        -------
        OutcomeProfiles
        """
        params.setdefault("features", tuple(schema.numeric_features + schema.categorical_features))
        params.setdefault("categorical_features", tuple(schema.categorical_features))
        params.setdefault("target", schema.target)
        params.setdefault("time_column", schema.time_field)
        return cls(**params)

    # ------------------------------------------------------------------ validation
    def _validate_params(self) -> None:
        if not self.profile_keys:
            raise ConfigError("outcome profiles: profile_keys must name at least one column")
        if self.interval_method not in sp.INTERVAL_METHODS:
            raise ConfigError(
                f"outcome profiles: interval_method must be one of "
                f"{sp.INTERVAL_METHODS}, got {self.interval_method!r}"
            )
        if self.calibration not in ("pit", "none"):
            raise ConfigError(
                f"outcome profiles: calibration must be 'pit' or 'none', got {self.calibration!r}"
            )
        if not 0.0 < float(self.interval_mass) < 1.0:
            raise ConfigError(
                f"outcome profiles: interval_mass must lie in (0, 1), got {self.interval_mass!r}"
            )
        for m in self.hdr_masses:
            if not 0.0 < float(m) <= 1.0:
                raise ConfigError(f"outcome profiles: hdr_masses must lie in (0, 1], got {m!r}")
        if not 0.0 <= float(self.validation_fraction) < 1.0:
            raise ConfigError("outcome profiles: validation_fraction must lie in [0, 1)")
        if self.categorical_encoding not in ("ordinal", "native"):
            raise ConfigError(
                "outcome profiles: categorical_encoding must be 'ordinal' or "
                f"'native', got {self.categorical_encoding!r}"
            )
        if self.n_estimators < 1 or self.max_depth < 1:
            raise ConfigError("outcome profiles: n_estimators and max_depth must be >= 1")

    def _resolve_features(self, X: pd.DataFrame) -> tuple[list[str], list[str]]:
        feats = list(self.features) if self.features is not None else list(self.profile_keys)
        if not feats:
            raise ConfigError("outcome profiles: the classifier needs at least one feature")
        if self.target is not None and self.target in feats:
            raise ConfigError(
                f"outcome profiles: the outcome '{self.target}' is listed as a "
                "classifier feature; the classifier may only see features known "
                "when the event happens"
            )
        missing = [c for c in [*feats, *self.profile_keys] if c not in X.columns]
        if missing:
            raise SchemaError(f"outcome profiles: missing column(s) {missing}")
        if self.categorical_features is not None:
            cats = set(self.categorical_features) | (set(self.profile_keys) & set(feats))
        else:
            cats = set(self.profile_keys) & set(feats)
            cats |= {c for c in feats if not pd.api.types.is_numeric_dtype(X[c])}
        types = ["c" if f in cats else "q" for f in feats]
        return feats, types

    def _check_fitted(self) -> None:
        if not hasattr(self, "pattern_pmf_"):
            raise NotFittedError("OutcomeProfiles is not fitted yet; call fit(X, y) first")

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X: pd.DataFrame,
        y: Any,
        *,
        eval_set: tuple[pd.DataFrame, Any] | None = None,
    ) -> OutcomeProfiles:
        """Fit bins, profiles, patterns, the pattern classifier and the interval calibration.

        Parameters
        ----------
        X : pandas.DataFrame of shape (n, n_columns)
            Training events: the profile keys and the features (extra columns are ignored).
        y : array-like of shape (n,), float
            Outcome (e.g. arrival delay in minutes); NaN rows are excluded and counted.
        eval_set : tuple (X_val, y_val), optional
            A *later* time slice for early stopping and calibration. Without it, the latest
            ``validation_fraction`` of rows is split off (see ``time_column``).

        Returns
        -------
        self

        Raises
        ------
        ConfigError
            Invalid hyper-parameter, or the outcome listed as a feature.
        SchemaError
            A profile key or feature column is missing.
        DataError
            ``X`` is not a non-empty DataFrame, ``y`` has the wrong length, no finite outcome,
            or a feature column is identical to the outcome (leakage).
        """
        t0 = time.perf_counter()
        self._validate_params()
        if not isinstance(X, pd.DataFrame) or len(X) == 0:
            raise DataError("outcome profiles: X must be a non-empty pandas DataFrame")
        y = np.asarray(y, dtype=np.float64).ravel()
        if y.size != len(X):
            raise DataError(f"outcome profiles: y has {y.size} rows, X has {len(X)}")
        feats, types = self._resolve_features(X)
        self._check_leakage(X, y, feats, types)
        self.n_features_in_ = len(feats)
        self.feature_names_in_ = np.asarray(feats, dtype=object)
        self.features_, self.feature_types_ = feats, types

        X_val, y_val = None, None
        if eval_set is not None:
            X_val, y_val = eval_set
            y_val = np.asarray(y_val, dtype=np.float64).ravel()
            if len(X_val) != y_val.size:
                raise DataError("outcome profiles: eval_set X and y lengths differ")
        elif self.validation_fraction > 0 and len(X) >= 20:
            order = (
                np.argsort(X[self.time_column].to_numpy(), kind="stable")
                if self.time_column is not None
                else np.arange(len(X))
            )
            n_val = max(1, round(len(X) * self.validation_fraction))
            tr_idx, va_idx = order[:-n_val], order[-n_val:]
            X_val, y_val = X.iloc[va_idx], y[va_idx]
            X, y = X.iloc[tr_idx], y[tr_idx]

        finite = np.isfinite(y)
        self.n_outcome_missing_ = int((~finite).sum())
        if not finite.any():
            raise DataError(
                "outcome profiles: the outcome has no finite value in the training rows"
            )
        Xf = X.iloc[np.flatnonzero(finite)]
        yf = y[finite]
        levels = np.asarray(
            self.quantile_levels if self.quantile_levels is not None else DEFAULT_QUANTILE_LEVELS,
            dtype=np.float64,
        )
        self.quantile_levels_ = levels

        # -- bins and per-group histograms
        edges = bin_edges(yf, self.binning, self.n_bins, self.max_bins)
        self.bin_edges_ = edges
        n_bins = edges.size - 1
        bins = sp.bin_index(edges, yf)
        keys_all = _key_strings(X, self.profile_keys)
        codes_all, uniques = pd.factorize(keys_all, sort=True)
        codes = codes_all[finite]
        n_groups = uniques.size
        counts = np.bincount(codes * n_bins + bins, minlength=n_groups * n_bins)
        counts = counts.reshape(n_groups, n_bins).astype(np.float64)
        sizes = counts.sum(axis=1)
        missing_per_group = np.bincount(codes_all[~finite], minlength=n_groups)
        with_data = sizes > 0
        self.min_group_size_ = resolve_min_group_size(sizes[with_data], self.min_group_size)
        kept = with_data & (sizes >= self.min_group_size_)
        pooled = with_data & ~kept
        rows = [counts[kept]]
        if pooled.any():
            rows.append(counts[pooled].sum(axis=0, keepdims=True))
        prof_counts = np.concatenate(rows, axis=0)
        self.profiles_ = prof_counts / prof_counts.sum(axis=1, keepdims=True)
        x_cluster = self.profiles_
        if self.profile_quantiles:
            x_cluster = np.concatenate(
                [x_cluster, self._quantile_block(yf, codes, kept, pooled, levels)], axis=1
            )

        # -- patterns
        sel = select_n_patterns(
            x_cluster, tuple(self.k_range), self.silhouette_drop, random_state=self.random_state
        )
        k = sel.n_patterns
        raw_pmf = np.stack([prof_counts[sel.labels == c].sum(axis=0) for c in range(k)])
        raw_pmf = raw_pmf / raw_pmf.sum(axis=1, keepdims=True)
        med = sp.quantiles(raw_pmf, edges, np.array([0.5]))[:, 0]
        order_k = np.lexsort((np.arange(k), med))
        renum = np.empty(k, dtype=np.int64)
        renum[order_k] = np.arange(k)
        prof_pattern = renum[sel.labels]
        self.selection_ = sel
        self.n_patterns_ = k
        group_pattern = np.full(n_groups, -1, dtype=np.int64)
        group_pattern[kept] = prof_pattern[: int(kept.sum())]
        self.other_pattern_ = int(prof_pattern[-1]) if pooled.any() else -1
        group_pattern[pooled] = self.other_pattern_
        # groups with only NaN outcomes: treated like unseen groups
        group_pattern[~with_data] = self.other_pattern_
        key_parts = [u.split(_KEY_SEP) for u in uniques]
        self.groups_ = pd.DataFrame(
            {kname: [kp[i] for kp in key_parts] for i, kname in enumerate(self.profile_keys)}
        )
        self.groups_["n_events"] = sizes.astype(np.int64)
        self.groups_["n_outcome_missing"] = missing_per_group.astype(np.int64)
        self.groups_["pooled"] = ~kept
        self.groups_["pattern"] = group_pattern
        self._group_lookup = dict(zip(uniques.tolist(), group_pattern.tolist(), strict=True))

        row_pattern = group_pattern[codes]
        pcounts = np.stack(
            [np.bincount(bins[row_pattern == c], minlength=n_bins) for c in range(k)]
        ).astype(np.float64)
        self.pattern_pmf_ = pcounts / pcounts.sum(axis=1, keepdims=True)
        self.pattern_n_events_ = pcounts.sum(axis=1).astype(np.int64)
        self.pattern_n_groups_ = np.array(
            [
                int(((group_pattern == c) & kept).sum())
                + int(pooled.any() and c == self.other_pattern_)
                for c in range(k)
            ],
            dtype=np.int64,
        )
        self.pattern_quantiles_ = sp.quantiles(self.pattern_pmf_, edges, levels)
        self.pattern_mean_ = np.bincount(row_pattern, weights=yf, minlength=k) / np.maximum(
            self.pattern_n_events_, 1
        )
        self.hdr_ = [
            {
                float(m): highest_density_region(self.pattern_pmf_[c], edges, float(m))
                for m in self.hdr_masses
            }
            for c in range(k)
        ]
        g = np.bincount(bins, minlength=n_bins).astype(np.float64)
        self.global_pmf_ = g / g.sum()

        # -- classifier
        self.categories_ = {
            f: sorted({str(v) for v in X[f].dropna().unique()})
            for f, t in zip(feats, types, strict=True)
            if t == "c"
        }
        t1 = time.perf_counter()
        self._fit_classifier(Xf, row_pattern, X_val, y_val)
        t2 = time.perf_counter()

        # -- calibration on the validation slice
        ident = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))
        self.calibration_ = ident
        self.naive_calibration_ = ident
        n_cal = 0
        if self.calibration == "pit" and X_val is not None:
            fin = np.isfinite(y_val)
            n_cal = int(fin.sum())
            if n_cal >= _MIN_CALIBRATION_OUTCOMES:
                pmf = self.predict_distribution(X_val.iloc[np.flatnonzero(fin)])
                self.calibration_ = pit_calibration(pmf, edges, y_val[fin])
                self.naive_calibration_ = pit_calibration(self.global_pmf_, edges, y_val[fin])
            else:
                logger.warning(
                    "outcome profiles: %d validation outcomes, fewer than %d; "
                    "interval calibration left as identity",
                    n_cal,
                    _MIN_CALIBRATION_OUTCOMES,
                )
        self.fit_report_ = {
            "n_rows": len(X),
            "n_outcome_missing": self.n_outcome_missing_,
            "n_validation_rows": 0 if X_val is None else len(X_val),
            "n_calibration_outcomes": n_cal,
            "n_groups": int(n_groups),
            "n_groups_kept": int(kept.sum()),
            "n_groups_pooled": int(pooled.sum()),
            "n_events_pooled": int(sizes[pooled].sum()),
            "min_group_size": self.min_group_size_,
            "n_bins": int(n_bins),
            "n_patterns": int(k),
            "silhouette": {str(kk): v for kk, v in sel.silhouette.items()},
            "k_selection": sel.reason,
            "classifier": dict(self.classifier_info_),
            "seconds_profiles": round(t1 - t0, 3),
            "seconds_classifier": round(t2 - t1, 3),
            "seconds_total": round(time.perf_counter() - t0, 3),
        }
        logger.info(
            "outcome profiles: %d groups (%d pooled), K=%d, %s",
            n_groups,
            int(pooled.sum()),
            k,
            sel.reason,
        )
        return self

    def _check_leakage(
        self, X: pd.DataFrame, y: np.ndarray, feats: list[str], types: list[str]
    ) -> None:
        fin = np.isfinite(y)
        if fin.sum() < 2:
            return
        for f, t in zip(feats, types, strict=True):
            if t != "q":
                continue
            col = pd.to_numeric(X[f], errors="coerce").to_numpy(dtype=np.float64)
            if np.array_equal(col[fin], y[fin]):
                raise DataError(
                    f"outcome profiles: feature '{f}' is identical to the outcome; "
                    "the classifier must not see the outcome"
                )

    def _quantile_block(
        self,
        yf: np.ndarray,
        codes: np.ndarray,
        kept: np.ndarray,
        pooled: np.ndarray,
        levels: np.ndarray,
    ) -> np.ndarray:
        q25, q50, q75 = np.quantile(yf, [0.25, 0.5, 0.75])
        scale = (q75 - q25) if q75 > q25 else 1.0
        df = pd.DataFrame({"g": codes, "y": yf})
        qs = (
            df.groupby("g")["y"]
            .quantile(list(levels))
            .unstack()
            .reindex(range(kept.size))
            .to_numpy()
        )
        kept_q = qs[kept]
        out = [kept_q]
        if pooled.any():
            sel = np.isin(codes, np.flatnonzero(pooled))
            out.append(np.quantile(yf[sel], levels)[None, :])
        block = np.concatenate(out, axis=0)
        return (block - q50) / scale / math.sqrt(levels.size)

    def _columns(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        missing = [f for f in self.features_ if f not in X.columns]
        if missing:
            raise SchemaError(f"outcome profiles: missing feature column(s) {missing}")
        return {f: X[f].to_numpy() for f in self.features_}

    def _fit_classifier(
        self,
        Xf: pd.DataFrame,
        labels: np.ndarray,
        X_val: pd.DataFrame | None,
        y_val: np.ndarray | None,
    ) -> None:
        k = self.n_patterns_
        self.booster_ = None
        self.classifier_info_: dict[str, Any] = {
            "n_rounds": 0,
            "n_trees": 0,
            "max_depth": int(self.max_depth),
            "best_iteration": None,
            "n_train_rows": 0,
            "n_validation_rows": 0,
            "features": list(self.features_),
            "categorical_encoding": self.categorical_encoding,
        }
        if k == 1:
            return
        import xgboost as xgb

        rng = np.random.default_rng(self.random_state)
        idx = np.arange(len(Xf))
        ok = labels >= 0
        idx = idx[ok]
        if self.max_classifier_rows is not None and idx.size > self.max_classifier_rows:
            idx = np.sort(rng.choice(idx, size=int(self.max_classifier_rows), replace=False))
        x = sp.feature_matrix(
            self._columns(Xf.iloc[idx]), self.features_, self.feature_types_, self.categories_
        )
        xgb_types = (
            list(self.feature_types_)
            if self.categorical_encoding == "native"
            else ["q"] * len(self.features_)
        )
        dtrain = xgb.DMatrix(
            x,
            label=labels[idx],
            feature_names=self.features_,
            feature_types=xgb_types,
            enable_categorical=True,
            nthread=self.nthread,
        )
        # Two patterns: one logistic tree per round instead of one softmax tree per class and
        # round (the same probabilities model, half the trees to evaluate when scoring).
        objective = (
            {"objective": "binary:logistic", "eval_metric": "logloss"}
            if k == 2
            else {"objective": "multi:softprob", "num_class": k, "eval_metric": "mlogloss"}
        )
        params = {
            **objective,
            "max_depth": int(self.max_depth),
            "eta": float(self.learning_rate),
            "tree_method": "hist",
            "nthread": int(self.nthread),
            "seed": int(self.random_state),
            "verbosity": 0,
        }
        evals = []
        n_val = 0
        if X_val is not None and len(X_val) > 0:
            lab_val = self.group_pattern(X_val)
            keep = lab_val >= 0
            if np.isfinite(y_val).any():
                keep &= np.isfinite(y_val)
            n_val = int(keep.sum())
            if n_val > 0:
                xv = sp.feature_matrix(
                    self._columns(X_val.iloc[np.flatnonzero(keep)]),
                    self.features_,
                    self.feature_types_,
                    self.categories_,
                )
                dval = xgb.DMatrix(
                    xv,
                    label=lab_val[keep],
                    feature_names=self.features_,
                    feature_types=xgb_types,
                    enable_categorical=True,
                    nthread=self.nthread,
                )
                evals = [(dval, "validation")]
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=int(self.n_estimators),
            evals=evals,
            early_stopping_rounds=int(self.early_stopping_rounds) if evals else None,
            verbose_eval=False,
        )
        best = getattr(booster, "best_iteration", None) if evals else None
        if best is not None:
            booster = booster[: int(best) + 1]
        self.booster_ = booster
        rounds = booster.num_boosted_rounds()
        self.classifier_info_.update(
            {
                "n_rounds": int(rounds),
                "n_trees": int(rounds * (1 if k == 2 else k)),
                "objective": params["objective"],
                "best_iteration": None if best is None else int(best),
                "n_train_rows": int(idx.size),
                "n_validation_rows": n_val,
            }
        )

    # ------------------------------------------------------------------ prediction
    def group_pattern(self, X: pd.DataFrame) -> np.ndarray:
        """Pattern of each row's group from the training group table (the classifier's label).

        Parameters
        ----------
        X : pandas.DataFrame of shape (n, ...)
            Must contain the profile keys.

        Returns
        -------
        ndarray of shape (n,), int64
            The group's pattern; unseen groups get ``other_pattern_`` (they are smaller than
            the minimum size), or -1 when nothing was pooled.
        """
        self._check_fitted()
        missing = [c for c in self.profile_keys if c not in X.columns]
        if missing:
            raise SchemaError(f"outcome profiles: missing profile key column(s) {missing}")
        keys = pd.Series(_key_strings(X, self.profile_keys))
        return keys.map(self._group_lookup).fillna(self.other_pattern_).to_numpy(np.int64)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Pattern probabilities per event.

        Parameters
        ----------
        X : pandas.DataFrame of shape (n, ...)
            Must contain ``features_``; NaN and unseen categories are accepted.

        Returns
        -------
        ndarray of shape (n, K), float64
            Rows sum to 1.

        Raises
        ------
        NotFittedError, SchemaError
        """
        self._check_fitted()
        x = sp.feature_matrix(
            self._columns(X), self.features_, self.feature_types_, self.categories_
        )
        return sp.predict_pattern_proba(self.booster_, x, self.n_patterns_)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Most probable pattern per event, shape (n,), int32."""
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int32)

    def predict_distribution(self, X: pd.DataFrame) -> np.ndarray:
        """Mixture distribution ``predict_proba(X) @ pattern_pmf_``, shape (n, B)."""
        return sp.mixture_pmf(self.predict_proba(X), self.pattern_pmf_)

    def predict_quantiles(
        self, X: pd.DataFrame, levels: Sequence[float] | None = None, calibrated: bool = False
    ) -> np.ndarray:
        """Mixture quantiles per event, shape (n, L), outcome units.

        Parameters
        ----------
        X : pandas.DataFrame
        levels : sequence of float, optional
            Defaults to ``quantile_levels_``.
        calibrated : bool, default False
            Map the levels through ``calibration_`` first.
        """
        self._check_fitted()
        lv = self.quantile_levels_ if levels is None else np.asarray(levels, dtype=np.float64)
        if calibrated:
            lv = np.interp(lv, *self.calibration_)
        return sp.quantiles(self.predict_distribution(X), self.bin_edges_, lv)

    def predict_interval(
        self,
        X: pd.DataFrame,
        mass: float | None = None,
        method: str | None = None,
        calibrated: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Interval of the given mass per event (see :func:`segstream.shared.profiles.interval`).

        Parameters
        ----------
        X : pandas.DataFrame
        mass : float, optional
            Defaults to ``interval_mass``.
        method : {"central", "shortest"}, optional
            Defaults to ``interval_method``.
        calibrated : bool, default True
            Apply ``calibration_``.

        Returns
        -------
        low, high : ndarray of shape (n,), float64
        """
        self._check_fitted()
        m = self.interval_mass if mass is None else mass
        return sp.interval(
            self.predict_distribution(X),
            self.bin_edges_,
            m,
            method or self.interval_method,
            self.calibration_ if calibrated else None,
        )

    def naive_interval(
        self, mass: float | None = None, calibrated: bool = False
    ) -> tuple[float, float]:
        """Central interval of the global training distribution (the naive baseline).

        With ``calibrated=True`` its levels go through ``naive_calibration_``, the PIT map of
        the global distribution fitted on the same validation slice as ``calibration_`` (so the
        baseline gets the same recalibration as the model).
        """
        self._check_fitted()
        lo, hi = sp.interval(
            self.global_pmf_,
            self.bin_edges_,
            self.interval_mass if mass is None else mass,
            "central",
            self.naive_calibration_ if calibrated else None,
        )
        return float(lo[0]), float(hi[0])

    # ------------------------------------------------------------------ export
    def export(self) -> ExportedComponent:
        """Plain data for the model bundle and for :class:`segstream.shared.profiles.ProfileScorer`.

        Returns
        -------
        ExportedComponent
            ``kind="profiles"``. Arrays: ``bin_edges`` (B+1,), ``pattern_pmf`` (K, B),
            ``pattern_quantiles`` (K, L), ``quantile_levels`` (L,), ``pattern_mean`` (K,),
            ``pattern_n_events`` (K,), ``pattern_n_groups`` (K,), ``hdr_masses`` (M,),
            ``hdr_bins`` (K, M, B) bool, ``hdr_intervals`` (K, M, J, 2) NaN-padded,
            ``hdr_mass`` (K, M), ``hdr_density_threshold`` (K, M), ``calibration_nominal`` and
            ``calibration_adjusted`` (C,), ``global_pmf`` (B,), ``silhouette_k`` and
            ``silhouette_score`` (candidates). Meta: see the keys in the code (features,
            feature types, category tables, profile keys, group table, masses, conventions,
            classifier size). Blob ``pattern_classifier.ubj``: the XGBoost booster in UBJSON
            (absent when K = 1).

        Raises
        ------
        NotFittedError
        """
        self._check_fitted()
        k, m = self.n_patterns_, len(self.hdr_masses)
        n_bins = self.bin_edges_.size - 1
        j = max(len(self.hdr_[c][float(ms)].intervals) for c in range(k) for ms in self.hdr_masses)
        hdr_int = np.full((k, m, j, 2), np.nan)
        hdr_bins = np.zeros((k, m, n_bins), dtype=bool)
        hdr_mass = np.zeros((k, m))
        hdr_thr = np.zeros((k, m))
        for c in range(k):
            for i, ms in enumerate(self.hdr_masses):
                r = self.hdr_[c][float(ms)]
                hdr_int[c, i, : len(r.intervals)] = r.intervals
                hdr_bins[c, i] = r.bins
                hdr_mass[c, i] = r.mass
                hdr_thr[c, i] = r.density_threshold
        sil_k = np.array(sorted(self.selection_.silhouette), dtype=np.int64)
        arrays = {
            "bin_edges": self.bin_edges_.astype(np.float64),
            "pattern_pmf": self.pattern_pmf_.astype(np.float64),
            "pattern_quantiles": self.pattern_quantiles_.astype(np.float64),
            "quantile_levels": self.quantile_levels_.astype(np.float64),
            "pattern_mean": self.pattern_mean_.astype(np.float64),
            "pattern_n_events": self.pattern_n_events_.astype(np.int64),
            "pattern_n_groups": self.pattern_n_groups_.astype(np.int64),
            "hdr_masses": np.asarray(self.hdr_masses, dtype=np.float64),
            "hdr_bins": hdr_bins,
            "hdr_intervals": hdr_int,
            "hdr_mass": hdr_mass,
            "hdr_density_threshold": hdr_thr,
            "calibration_nominal": self.calibration_[0].astype(np.float64),
            "calibration_adjusted": self.calibration_[1].astype(np.float64),
            "global_pmf": self.global_pmf_.astype(np.float64),
            "silhouette_k": sil_k,
            "silhouette_score": np.array(
                [self.selection_.silhouette[int(x)] for x in sil_k], dtype=np.float64
            ),
        }
        g = self.groups_
        meta = {
            "format_version": sp.FORMAT_VERSION,
            "target": self.target,
            "profile_keys": list(self.profile_keys),
            "features": list(self.features_),
            "feature_types": list(self.feature_types_),
            "categories": {f: list(v) for f, v in self.categories_.items()},
            "unknown_category": "NaN (treated as missing by the classifier)",
            "categorical_encoding": self.categorical_encoding,
            "bin_convention": sp.BIN_CONVENTION,
            "binning": self.binning,
            "n_patterns": int(self.n_patterns_),
            "other_pattern": int(self.other_pattern_),
            "min_group_size": int(self.min_group_size_),
            "min_group_size_rule": self.min_group_size
            if isinstance(self.min_group_size, str)
            else int(self.min_group_size),
            "interval_mass": float(self.interval_mass),
            "interval_method": self.interval_method,
            "calibration": self.calibration,
            "hdr_masses": [float(x) for x in self.hdr_masses],
            "quantile_levels": [float(x) for x in self.quantile_levels_],
            "k_selection": self.selection_.reason,
            "groups": {
                "keys": [
                    [str(v) for v in row]
                    for row in g[list(self.profile_keys)].itertuples(index=False, name=None)
                ],
                "pattern": [int(v) for v in g["pattern"]],
                "n_events": [int(v) for v in g["n_events"]],
                "pooled": [bool(v) for v in g["pooled"]],
            },
            "classifier": {kk: v for kk, v in self.classifier_info_.items()},
            "classifier_blob": sp.CLASSIFIER_BLOB if self.booster_ is not None else None,
            "n_outcome_missing": int(self.n_outcome_missing_),
        }
        blobs = {}
        if self.booster_ is not None:
            blobs[sp.CLASSIFIER_BLOB] = bytes(self.booster_.save_raw("ubj"))
        return ExportedComponent(kind="profiles", arrays=arrays, meta=meta, blobs=blobs)


# --------------------------------------------------------------------------- evaluation
def _weighted_ovr_auroc(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    total, acc = 0, 0.0
    for c in range(proba.shape[1]):
        pos = y == c
        npos = int(pos.sum())
        if npos == 0 or npos == y.size:
            continue
        acc += npos * roc_auc_score(pos, proba[:, c])
        total += npos
    return float(acc / total) if total else float("nan")


def evaluate(
    model: OutcomeProfiles,
    X: pd.DataFrame,
    y: Any,
    masses: Sequence[float] = (0.5, 0.8, 0.95),
    reliability_masses: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Honest evaluation on a later time slice than the one the model was fitted on.

    Parameters
    ----------
    model : OutcomeProfiles
        Fitted estimator.
    X : pandas.DataFrame of shape (n, ...)
        Test events (e.g. flights of October–December when trained on January–August).
    y : array-like of shape (n,), float
        Their outcomes; NaN rows are excluded from interval metrics and counted.
    masses : sequence of float, default (0.5, 0.8, 0.95)
        Interval masses to report.
    reliability_masses : sequence of float, optional
        Nominal masses of the reliability curve; default 0.1, 0.2, ..., 0.9, 0.95.

    Returns
    -------
    dict
        ``classifier``: ``accuracy``, ``auroc_weighted_ovr``, ``log_loss`` and the baseline's
        (majority training pattern for accuracy, training pattern shares for log-loss, 0.5 for
        AUROC), on rows with a finite outcome whose group has a pattern label; ``intervals``:
        per mass, ``coverage``/``mean_width`` of the calibrated interval, the uncalibrated one
        (``*_uncalibrated``), the naive global interval (``naive_*``) and the naive interval
        with its own PIT recalibration on the same validation slice (``naive_calibrated_*``);
        ``reliability``: nominal masses and coverages of the four; ``by_pattern``: coverage at
        ``interval_mass`` within each true pattern (conditional calibration) for the model and
        the calibrated naive interval; counts.
    """
    from sklearn.metrics import log_loss

    model._check_fitted()
    y = np.asarray(y, dtype=np.float64).ravel()
    fin = np.isfinite(y)
    Xf = X.iloc[np.flatnonzero(fin)]
    yf = y[fin]
    k = model.n_patterns_
    proba = model.predict_proba(Xf)
    labels = model.group_pattern(Xf)
    has = labels >= 0
    prior = model.pattern_n_events_ / model.pattern_n_events_.sum()
    clf: dict[str, Any] = {"n_rows": int(has.sum()), "n_patterns": int(k)}
    if has.any() and k > 1:
        yl, pl = labels[has], proba[has]
        base = np.broadcast_to(prior, pl.shape)
        clf.update(
            {
                "accuracy": float(np.mean(np.argmax(pl, axis=1) == yl)),
                "auroc_weighted_ovr": _weighted_ovr_auroc(yl, pl),
                "log_loss": float(log_loss(yl, pl, labels=np.arange(k))),
                "baseline_accuracy": float(np.mean(yl == int(np.argmax(prior)))),
                "baseline_auroc_weighted_ovr": 0.5,
                "baseline_log_loss": float(log_loss(yl, base, labels=np.arange(k))),
            }
        )
    pmf = sp.mixture_pmf(proba, model.pattern_pmf_)
    edges = model.bin_edges_
    rel = (
        list(reliability_masses)
        if reliability_masses is not None
        else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    )
    out_int: dict[str, Any] = {}
    curve: dict[str, list[float]] = {
        "nominal": [],
        "coverage": [],
        "coverage_uncalibrated": [],
        "naive_coverage": [],
        "naive_calibrated_coverage": [],
    }
    for m in sorted(set(map(float, masses)) | set(map(float, rel))):
        lo, hi = sp.interval(pmf, edges, m, model.interval_method, model.calibration_)
        ulo, uhi = sp.interval(pmf, edges, m, model.interval_method, None)
        nlo, nhi = model.naive_interval(m)
        clo, chi = model.naive_interval(m, calibrated=True)
        row = {
            "coverage": float(np.mean((yf >= lo) & (yf <= hi))),
            "mean_width": float(np.mean(hi - lo)),
            "coverage_uncalibrated": float(np.mean((yf >= ulo) & (yf <= uhi))),
            "mean_width_uncalibrated": float(np.mean(uhi - ulo)),
            "naive_coverage": float(np.mean((yf >= nlo) & (yf <= nhi))),
            "naive_width": float(nhi - nlo),
            "naive_calibrated_coverage": float(np.mean((yf >= clo) & (yf <= chi))),
            "naive_calibrated_width": float(chi - clo),
        }
        if m in map(float, masses):
            out_int[f"{m:g}"] = row
        if m in map(float, rel):
            curve["nominal"].append(m)
            curve["coverage"].append(row["coverage"])
            curve["coverage_uncalibrated"].append(row["coverage_uncalibrated"])
            curve["naive_coverage"].append(row["naive_coverage"])
            curve["naive_calibrated_coverage"].append(row["naive_calibrated_coverage"])
    # conditional calibration: coverage at the interval mass within each (true) pattern
    m0 = float(model.interval_mass)
    lo, hi = sp.interval(pmf, edges, m0, model.interval_method, model.calibration_)
    clo, chi = model.naive_interval(m0, calibrated=True)
    by_pattern = []
    for c in range(k):
        sel = labels == c
        if not sel.any():
            continue
        yc = yf[sel]
        by_pattern.append(
            {
                "pattern": c,
                "n": int(sel.sum()),
                "coverage": float(np.mean((yc >= lo[sel]) & (yc <= hi[sel]))),
                "mean_width": float(np.mean(hi[sel] - lo[sel])),
                "naive_calibrated_coverage": float(np.mean((yc >= clo) & (yc <= chi))),
            }
        )
    return {
        "n_rows": len(X),
        "n_outcome_missing": int((~fin).sum()),
        "n_unlabelled": int((~has).sum()),
        "interval_method": model.interval_method,
        "classifier": clf,
        "intervals": out_int,
        "reliability": curve,
        "by_pattern": {"mass": m0, "patterns": by_pattern},
    }


# --------------------------------------------------------------------------- plots
def _plt() -> Any:
    return pyplot()


def plot_patterns(
    model: OutcomeProfiles, path: str | Path, mass: float | None = None, unit: str = ""
) -> Path:
    """One panel per pattern: its density over the shared bins with the HDR shaded.

    Parameters
    ----------
    model : OutcomeProfiles
        Fitted estimator.
    path : str or Path
        PNG file to write.
    mass : float, optional
        HDR mass to shade; defaults to the middle of ``hdr_masses``.
    unit : str
        Outcome unit for the x label.

    Returns
    -------
    Path
    """
    model._check_fitted()
    plt = _plt()
    k = model.n_patterns_
    mass = float(mass if mass is not None else sorted(model.hdr_masses)[len(model.hdr_masses) // 2])
    if mass not in model.hdr_[0]:
        raise ValueError(f"no HDR at mass {mass}; available {list(model.hdr_[0])}")
    e = model.bin_edges_
    # the last quantile bin holds the long tail up to the training maximum: show up to its start
    xlo, xhi = e[0], (e[-2] if e.size > 2 and e[-2] > e[0] else e[-1])
    ncol = min(k, 3)
    nrow = math.ceil(k / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), squeeze=False)
    width = np.diff(e)
    for c in range(k):
        ax = axes[c // ncol][c % ncol]
        dens = np.divide(model.pattern_pmf_[c], width, out=np.zeros(width.size), where=width > 0)
        ax.stairs(dens, e, fill=True, alpha=0.35, color="tab:blue")
        r = model.hdr_[c][mass]
        for lo, hi in r.intervals:
            ax.axvspan(lo, hi, color="tab:orange", alpha=0.25)
        ax.axhline(r.density_threshold, color="tab:orange", lw=0.8, ls="--")
        ax.set_xlim(xlo, xhi)
        ax.set_title(
            f"pattern {c}: {model.pattern_n_groups_[c]} groups, "
            f"{model.pattern_n_events_[c]} events",
            fontsize=9,
        )
        ax.set_xlabel(f"outcome {unit}".strip(), fontsize=8)
        ax.text(
            0.98,
            0.95,
            f"HDR {mass:g}: mass {r.mass:.2f}\nmean {model.pattern_mean_[c]:.1f}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
        )
    for c in range(k, nrow * ncol):
        axes[c // ncol][c % ncol].axis("off")
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def plot_pattern_sizes(model: OutcomeProfiles, path: str | Path) -> Path:
    """Bar chart of events and groups per pattern (PNG). Returns the path."""
    model._check_fitted()
    plt = _plt()
    k = model.n_patterns_
    fig, ax = plt.subplots(figsize=(1.2 * k + 3, 3))
    x = np.arange(k)
    ax.bar(x, model.pattern_n_events_, color="tab:blue")
    for i in range(k):
        ax.text(
            i,
            model.pattern_n_events_[i],
            f"{model.pattern_n_groups_[i]} groups",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(x)
    ax.set_xlabel("pattern")
    ax.set_ylabel("training events")
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def plot_reliability(evaluation: dict[str, Any], path: str | Path) -> Path:
    """Reliability chart: observed interval coverage against nominal mass (PNG).

    Parameters
    ----------
    evaluation : dict
        Output of :func:`evaluate`.
    path : str or Path

    Returns
    -------
    Path
    """
    plt = _plt()
    rel = evaluation["reliability"]
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.plot(rel["nominal"], rel["coverage"], "o-", label="profiles (calibrated)")
    ax.plot(rel["nominal"], rel["coverage_uncalibrated"], "s--", label="profiles (raw)")
    ax.plot(rel["nominal"], rel["naive_coverage"], "^:", label="naive global (raw)")
    if "naive_calibrated_coverage" in rel:
        ax.plot(
            rel["nominal"],
            rel["naive_calibrated_coverage"],
            "v:",
            label="naive global (calibrated)",
        )
    ax.set_xlabel("nominal mass")
    ax.set_ylabel("observed coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


__all__ = [
    "DEFAULT_QUANTILE_LEVELS",
    "HighDensityRegion",
    "OutcomeProfiles",
    "PatternSelection",
    "bin_edges",
    "evaluate",
    "highest_density_region",
    "knee_size",
    "pit_calibration",
    "plot_pattern_sizes",
    "plot_patterns",
    "plot_reliability",
    "resolve_min_group_size",
    "select_n_patterns",
]
