"""What a loaded bundle offers the worker: one vectorised ``score(columns)``.

:class:`Scorer` is the contract between the bundle (built by the trainer) and the worker. The
input is a batch in columnar form, one array per event field of the bundle's schema:

* numeric fields: ``float64`` arrays, NaN for missing;
* categorical/string and id fields: ``object`` arrays of ``str`` (None for missing);
* the time field: ``datetime64[ns]`` in UTC (NaT for missing).

The output is a dict of arrays of the same length ``n`` (see :data:`SCORE_COLUMNS`) plus
``contributions`` ``(n, p + 1)`` float64 (intercept first, then one per linear feature, in the
order of ``contribution_names``).

Outcome families
----------------
A bundle's segment models predict one outcome family (:attr:`Scorer.family`, from the
manifest; bundles written before families existed are ``"gaussian"``):

* ``gaussian`` (a continuous outcome): ``prediction`` is the linear model's value,
  ``interval_low/high`` its split-conformal interval, ``pattern``/``pattern_proba`` the most
  probable outcome pattern; ``probability`` NaN, ``label`` -1.
* ``binomial`` (a 0/1 outcome, logistic models): ``prediction`` = ``probability`` = P(y = 1)
  = ``expit(eta)`` of the linear predictor ``eta``; ``label`` = 1 where ``probability >=``
  :attr:`Scorer.threshold`, else 0 (-1 where the probability is NaN); ``interval_low/high``
  NaN; ``pattern`` -1, ``pattern_proba`` NaN (outcome profiles describe continuous outcomes
  only).
* ``poisson`` (a count, log-linear models): ``prediction`` is the expected count
  ``exp(eta)``; ``interval_low/high`` the central ``interval_mass`` interval of the Poisson
  distribution with that mean (:func:`poisson_interval`); ``pattern`` -1, ``pattern_proba``
  NaN, ``probability`` NaN, ``label`` -1.

``contributions`` are always on the link scale (identity for gaussian, log-odds for binomial,
log count for Poisson): intercept first, they sum to the linear predictor ``eta`` (for
gaussian that is ``prediction`` itself).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
from numba import njit

from segstream.shared.bundle import LoadedComponents, Manifest, load_components
from segstream.shared.component import ExportedComponent
from segstream.shared.drift import DriftReference
from segstream.shared.errors import BundleCompatibilityError, SchemaError
from segstream.shared.settings import SchemaSettings

if TYPE_CHECKING:
    from segstream.shared.linear import LinearSegmentModels
    from segstream.shared.profiles import ProfileScorer

#: Output columns of :meth:`Scorer.score` and their dtypes.
SCORE_COLUMNS: dict[str, type | str] = {
    "segment": np.int32,  # the routed leaf segment id
    "fallback_level": np.int8,  # 0 = the segment's own model, 1 = its parent, ...
    "prediction": np.float64,  # gaussian: target units; binomial: P(y=1); poisson: mean count
    "interval_low": np.float64,  # prediction interval of mass `interval_mass` (binomial: NaN)
    "interval_high": np.float64,
    "pattern": np.int32,  # most probable outcome pattern (-1 for binomial/poisson)
    "pattern_proba": np.float64,  # its probability (NaN for binomial/poisson)
    "imputed": np.bool_,  # routing followed a missing value
    "unknown_key": object,  # str naming a never-seen key combination, or None
    "probability": np.float64,  # binomial: P(y=1); NaN for the other families
    "label": np.int8,  # binomial: probability >= threshold as 0/1; -1 otherwise
}

#: Outcome families a bundle can serve (see the module docstring).
FAMILIES = ("gaussian", "binomial", "poisson")


class Scorer(Protocol):
    """A loaded, verified bundle as the worker uses it: everything the worker's loop, its
    warm-up and its stats read (:class:`Bundle` and the tests' fake scorers implement it).

    Attributes
    ----------
    bundle_id, model : str
        Stamped on every prediction and stats record.
    schema : SchemaSettings
        The event schema the bundle was trained on (the decoder is built from it).
    interval_mass : float
        Mass of the prediction interval.
    family : str
        Outcome family of the segment models: ``"gaussian"``, ``"binomial"`` or
        ``"poisson"`` (what ``prediction`` means; see the module docstring).
    threshold : float or None
        Binomial decision threshold in (0, 1) (``label`` is ``probability >= threshold``);
        None for the other families.
    contribution_names : list of str
        Names of the ``contributions`` columns (intercept first; link scale).
    drift_reference : DriftReference
        Training distributions the stats records are binned against.
    key_columns : list of str
        Columns whose value combinations define known keys (for new-segment counting).
    """

    bundle_id: str
    model: str
    schema: SchemaSettings
    interval_mass: float
    family: str
    threshold: float | None
    contribution_names: list[str]
    drift_reference: DriftReference
    key_columns: list[str]

    def score(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score a batch; never raises on values (NaN, unseen categories), only on a missing
        column (``SchemaError``)."""
        ...

    def score_parts(
        self,
        columns: Mapping[str, np.ndarray],
        *,
        executor: concurrent.futures.Executor | None = None,
    ) -> tuple[dict[str, np.ndarray], Callable[[], dict[str, np.ndarray]]]:
        """Score a batch in two parts, ``(partial, finish)``: ``partial`` holds at least
        ``segment``, ``fallback_level``, ``prediction`` and the interval (what the stats
        need), ``finish()`` returns the full :meth:`score` dict. A scorer may compute part of
        the work in ``executor`` meanwhile (:meth:`Bundle.score_parts`) or ignore it and
        compute everything at once. Raises as :meth:`score`."""
        ...


# --------------------------------------------------------------------------- link functions
@njit(cache=True)
def _poisson_quantiles(mu, q_low, q_high, low, high):  # pragma: no cover - numba
    """Smallest ``k`` with ``P(Y <= k) >= q`` for ``Y ~ Poisson(mu[i])``, for both ``q``.

    The probabilities are summed upwards from ``k0 = max(0, floor(mu - 10 sqrt(mu) - 10))``
    (``pmf(k0)`` from ``lgamma``, then ``pmf(k + 1) = pmf(k) mu / (k + 1)``); the mass below
    ``k0`` is below 1e-20 and is left out.
    """
    for i in range(mu.shape[0]):
        m = mu[i]
        if not (m >= 0.0 and m <= 1e9):  # NaN, negative, inf, absurdly large
            low[i] = np.nan
            high[i] = np.nan
            continue
        if m == 0.0:
            low[i] = 0.0
            high[i] = 0.0
            continue
        k = max(0.0, math.floor(m - 10.0 * math.sqrt(m) - 10.0))
        pmf = math.exp(k * math.log(m) - m - math.lgamma(k + 1.0))
        cdf = pmf
        got_low = False
        while True:
            if not got_low and cdf >= q_low:
                low[i] = k
                got_low = True
            if cdf >= q_high:
                high[i] = k
                break
            k += 1.0
            pmf *= m / k
            cdf += pmf
            if pmf == 0.0 and k > m:  # the remaining mass is below double precision
                if not got_low:
                    low[i] = k
                high[i] = k
                break


def poisson_interval(mu: np.ndarray, mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Central ``mass`` interval of ``Poisson(mu)``: its ``(1 - mass) / 2`` and
    ``(1 + mass) / 2`` quantiles (the smallest count ``k`` with ``P(Y <= k) >= q``, as
    ``scipy.stats.poisson.ppf``, which the tests compare with: equal for means up to 1e6;
    above that the summed probabilities' rounding can move a bound by one count).

    A numba kernel summing the probability mass function from about ten standard deviations
    below the mean: ``O(sqrt(mu))`` per row and about 50 times faster than
    ``scipy.stats.poisson.ppf`` (which inverts the regularised incomplete gamma function).

    Parameters
    ----------
    mu : ndarray of float64, shape (n,)
        Expected counts; NaN, negative or infinite values give NaN (means above 1e9 too).
    mass : float in (0, 1)

    Returns
    -------
    low, high : ndarray of float64, shape (n,)
        Whole counts.
    """
    m = np.ascontiguousarray(mu, dtype=np.float64)
    low = np.empty_like(m)
    high = np.empty_like(m)
    _poisson_quantiles(m, (1.0 - mass) / 2.0, (1.0 + mass) / 2.0, low, high)
    return low, high


def logistic(eta: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-eta))`` without overflow (``scipy.special.expit``); NaN stays NaN."""
    from scipy.special import expit

    return np.asarray(expit(np.asarray(eta, dtype=np.float64)), dtype=np.float64)


# --------------------------------------------------------------------------- the real bundle
#: Components a scoring bundle must have, with their kinds, per outcome family.
REQUIRED_COMPONENTS = {
    "partitioner": "partitioner",
    "segment_models": "segment_models",
    "profiles": "profiles",
    "scoring": "scoring",
    "drift_reference": "drift_reference",
}
#: binomial and poisson bundles: GLMs instead of linear models, no outcome profiles.
REQUIRED_GLM_COMPONENTS = {
    "partitioner": "partitioner",
    "segment_glms": "segment_glms",
    "scoring": "scoring",
    "drift_reference": "drift_reference",
}


@dataclasses.dataclass(frozen=True)
class NodeTables:
    """Per-node arrays that tie routing, segment models and intervals together.

    Attributes
    ----------
    model_node : int32 (n_nodes,)
        The node whose linear model serves rows that reach this node: itself when it has a
        usable model, else its nearest ancestor with one (the fallback chain leaf → parent → …
        → root, the root being the ``__dataset__`` model).
    model_index : int32 (n_nodes,)
        Row of ``model_node`` in the segment models' group table.
    depth : int32 (n_nodes,)
        Depth of each node (root 0).
    segment_node : int32 (n_segments,)
        Leaf node of each segment.
    interval_lo, interval_hi : float64 (n_nodes,)
        Split-conformal residual offsets of the model node (prediction + offset).
    """

    model_node: np.ndarray
    model_index: np.ndarray
    depth: np.ndarray
    segment_node: np.ndarray
    interval_lo: np.ndarray
    interval_hi: np.ndarray


class Bundle:
    """A verified model bundle ready to score (implements :class:`Scorer`).

    Built by :func:`load_bundle`; holds the manifest, the router, the segment models, the
    profile scorer (gaussian bundles; None for binomial/poisson), the interval table and the
    drift reference. Nothing here imports scikit-learn or unpickles anything.

    Attributes
    ----------
    family : {"gaussian", "binomial", "poisson"}
        From the manifest (``gaussian`` when it has none).
    threshold : float or None
        Binomial decision threshold from the manifest; None for the other families.
    """

    def __init__(self, loaded: LoadedComponents, path: Path | None = None) -> None:
        from segstream.shared.linear import LinearSegmentModels
        from segstream.shared.profiles import ProfileScorer
        from segstream.shared.routing import Router
        from segstream.shared.settings import SchemaSettings

        m = loaded.manifest
        self.family: str = m.family
        self.threshold: float | None = m.threshold
        required = REQUIRED_COMPONENTS if self.family == "gaussian" else REQUIRED_GLM_COMPONENTS
        for name, kind in required.items():
            if name not in loaded or loaded[name].kind != kind:
                raise BundleCompatibilityError(
                    f"bundle {m.bundle_id[:12]}: component {name!r} of kind {kind!r} missing "
                    f"(family {self.family!r})"
                )
        self.manifest: Manifest = m
        self.path = path
        self.bundle_id = m.bundle_id
        self.model = m.model
        self.schema = SchemaSettings.model_validate(m.schema_)
        sc = loaded["scoring"]
        self.interval_mass = float(sc.meta["interval_mass"])
        self.linear_features: list[str] = list(sc.meta["linear_features"])
        self.contribution_names = ["intercept", *self.linear_features]
        self.key_columns: list[str] = list(sc.meta["key_columns"])
        self._known_keys: list[list[str]] = [list(map(str, k)) for k in sc.meta["known_keys"]]
        self._keys: tuple[list[Any], np.ndarray, np.ndarray] | None = None
        self.nodes = NodeTables(
            **{f.name: np.asarray(sc.arrays[f.name]) for f in dataclasses.fields(NodeTables)}
        )
        self.router = Router.from_export(loaded["partitioner"])
        self.profiles: ProfileScorer | None
        if self.family == "gaussian":
            self.linear = LinearSegmentModels.from_exported(loaded["segment_models"])
            self.profiles = ProfileScorer(loaded["profiles"])
        else:
            self.linear = _glm_models(loaded["segment_glms"], self.family)
            self.profiles = None
        self.drift_reference = DriftReference.from_meta(loaded["drift_reference"].meta)
        self.metrics: dict[str, Any] = m.metrics

    def _key_tables(self) -> tuple[list[Any], np.ndarray, np.ndarray]:
        """Per key column its category index; the mixed-radix codes of the known keys."""
        cols = (
            list(zip(*self._known_keys, strict=True))
            if self._known_keys
            else [()] * len(self.key_columns)
        )
        values = [sorted(set(c)) for c in cols]
        indexes = [pd.Index(v, dtype=object) for v in values]
        radix = np.cumprod([1] + [len(v) for v in values[:-1]]).astype(np.int64)
        known = np.zeros(len(self._known_keys), np.int64)
        for i, idx in enumerate(indexes):
            known += idx.get_indexer(list(cols[i])) * radix[i]
        return indexes, radix, np.sort(known)

    def unknown_keys(self, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """``"col=value,..."`` for rows whose key combination was never seen in training
        (None elsewhere); vectorised: category codes per column, one mixed-radix code per row.
        """
        from segstream.shared.routing import encode_categories

        out = np.full(n, None, dtype=object)
        if not self.key_columns:
            return out
        if self._keys is None:
            self._keys = self._key_tables()
        indexes, radix, known = self._keys
        code = np.zeros(n, np.int64)
        bad = np.zeros(n, bool)
        for i, (c, idx) in enumerate(zip(self.key_columns, indexes, strict=True)):
            k = encode_categories(columns[c], idx)
            bad |= k < 0
            code += np.maximum(k, 0).astype(np.int64) * radix[i]
        if len(known):
            pos = np.minimum(np.searchsorted(known, code), len(known) - 1)
            bad |= known[pos] != code
        else:
            bad[:] = True
        for i in np.flatnonzero(bad).tolist():
            out[i] = ",".join(f"{c}={columns[c][i]}" for c in self.key_columns)
        return out

    def score(
        self,
        columns: Mapping[str, np.ndarray],
        *,
        executor: concurrent.futures.Executor | None = None,
    ) -> dict[str, np.ndarray]:
        """Score a batch (see the module docstring for the column contract).

        Parameters
        ----------
        columns : mapping of str to numpy.ndarray
            The batch, one array of length n per event field.
        executor : concurrent.futures.Executor, optional
            Compute the outcome-profile part there (see :meth:`score_parts`); same result.

        Returns
        -------
        dict of str to numpy.ndarray
            The arrays of :data:`SCORE_COLUMNS`, each of length n, plus ``contributions``
            ``(n, p + 1)`` float64 on the link scale (intercept first; they sum to the linear
            predictor: the prediction itself for gaussian, its logit for binomial, its log for
            Poisson) and ``model_node`` int32 (the node whose model served each row).

        Raises
        ------
        SchemaError
            A feature column is absent.
        """
        _, finish = self.score_parts(columns, executor=executor)
        return finish()

    def score_parts(
        self,
        columns: Mapping[str, np.ndarray],
        *,
        executor: concurrent.futures.Executor | None = None,
    ) -> tuple[dict[str, np.ndarray], Callable[[], dict[str, np.ndarray]]]:
        """Score a batch in two parts: ``(partial, finish)``.

        ``partial`` holds everything but the outcome-profile fields (``segment``,
        ``fallback_level``, ``prediction``, ``interval_low/high``, ``probability``, ``label``,
        ``imputed``, ``unknown_key``, ``contributions``, ``model_node``); ``finish()`` returns
        the full :meth:`score` dict. Binomial and Poisson bundles have no outcome profiles:
        their ``partial`` is complete (``pattern`` -1, ``pattern_proba`` NaN) and the
        ``executor`` is not used. With an ``executor`` the profile part (the XGBoost pattern
        classifier, which runs without the GIL) is computed there from the start, so the caller can use ``partial`` (e.g. count drift statistics)
        before calling ``finish()``.

        Raises
        ------
        SchemaError
            A feature column is absent.
        """
        missing = [c for c in self.required_columns if c not in columns]
        if missing:
            raise SchemaError(
                f"batch lacks column(s) {missing} needed by bundle {self.bundle_id[:12]}"
            )
        profiles = self.profiles
        pending = (
            executor.submit(profiles.pattern, columns)
            if executor is not None and profiles is not None
            else None
        )
        r = self.router.route(columns)
        n = len(r.segment)
        t = self.nodes
        model_node = t.model_node[r.node]
        level = (t.depth[t.segment_node[r.segment]] - t.depth[model_node]).astype(np.int8)
        X = np.empty((n, len(self.linear_features)), dtype=np.float64)
        for j, f in enumerate(self.linear_features):
            X[:, j] = _float_column(columns[f])
        eta, contrib = self.linear.predict(t.model_index[r.node], X)
        partial = {
            "segment": r.segment.astype(np.int32, copy=False),
            "fallback_level": level,
            **self._outcome(eta, model_node),
            "imputed": r.imputed,
            "unknown_key": self.unknown_keys(columns, n),
            "contributions": contrib,
            "model_node": model_node.astype(np.int32, copy=False),
        }
        if profiles is None:
            partial["pattern"] = np.full(n, -1, np.int32)
            partial["pattern_proba"] = np.full(n, np.nan)
            return partial, lambda: partial

        def finish() -> dict[str, np.ndarray]:
            assert profiles is not None  # for mypy: checked above
            pattern, proba = pending.result() if pending is not None else profiles.pattern(columns)
            return {**partial, "pattern": pattern, "pattern_proba": proba}

        return partial, finish

    def _outcome(self, eta: np.ndarray, model_node: np.ndarray) -> dict[str, np.ndarray]:
        """``prediction``, ``interval_low/high``, ``probability`` and ``label`` from the
        linear predictor ``eta`` (n,) by the bundle's family (see the module docstring)."""
        n = eta.shape[0]
        nan = np.full(n, np.nan)
        if self.family == "binomial":
            prob = logistic(eta)
            thr = float(self.threshold) if self.threshold is not None else 0.5
            label = np.where(np.isnan(prob), -1, prob >= thr).astype(np.int8)
            return {
                "prediction": prob,
                "interval_low": nan,
                "interval_high": nan.copy(),
                "probability": prob,
                "label": label,
            }
        label = np.full(n, -1, np.int8)
        if self.family == "poisson":
            with np.errstate(over="ignore"):
                mu = np.exp(eta)
            low, high = poisson_interval(mu, self.interval_mass)
            return {
                "prediction": mu,
                "interval_low": low,
                "interval_high": high,
                "probability": nan,
                "label": label,
            }
        t = self.nodes
        return {
            "prediction": eta,
            "interval_low": eta + t.interval_lo[model_node],
            "interval_high": eta + t.interval_hi[model_node],
            "probability": nan,
            "label": label,
        }

    @property
    def required_columns(self) -> list[str]:
        cols = list(self.router.required_columns) + self.linear_features
        if self.profiles is not None:
            cols += list(self.profiles.features)
        cols += self.key_columns
        return list(dict.fromkeys(cols))


def _glm_models(comp: ExportedComponent, family: str) -> LinearSegmentModels:
    """The link-scale scorer of an exported ``segment_glms`` component (its coefficients are
    those of the linear predictor, so the linear scorer computes ``eta`` and its terms).

    Raises
    ------
    BundleCompatibilityError
        A newer format, or a component fitted for another family than the manifest's.
    SchemaError
        Missing or inconsistent arrays.
    """
    from segstream.shared.linear import SUPPORTED_FORMAT, LinearSegmentModels

    fmt = comp.meta.get("format")
    if fmt != SUPPORTED_FORMAT:
        raise BundleCompatibilityError(
            f"segment_glms: format {fmt!r} is not supported (this version reads {SUPPORTED_FORMAT})"
        )
    if comp.meta.get("family") != family:
        raise BundleCompatibilityError(
            f"segment_glms: fitted for family {comp.meta.get('family')!r}, the manifest says "
            f"{family!r}"
        )
    for key in ("groups", "coef", "x_mean"):
        if key not in comp.arrays:
            raise SchemaError(f"segment_glms: array {key!r} missing")
    return LinearSegmentModels(
        comp.arrays["groups"],
        comp.arrays["coef"],
        comp.arrays["x_mean"],
        comp.meta["feature_names"],
        comp.meta["target_names"],
        status=comp.arrays.get("status"),
        status_codes=comp.meta.get("status_codes"),
    )


def _float_column(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind in "fiub":
        return arr.astype(np.float64, copy=False)
    out = np.full(len(arr), np.nan)
    for i, v in enumerate(arr):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[i] = v
    return out


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Verify and load a bundle directory into a :class:`Bundle`.

    Raises
    ------
    BundleIntegrityError
        A modified, missing or extra file, or an edited manifest (the message names it).
    BundleCompatibilityError
        Newer format version or a missing component.
    """
    p = Path(path)
    return Bundle(load_components(p), p)
