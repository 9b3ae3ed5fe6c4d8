"""What a loaded bundle offers the worker: one vectorised ``score(columns)``.

:class:`Scorer` is the contract between the bundle (built by the trainer) and the worker. The
input is a batch in columnar form, one array per event field of the bundle's schema:

* numeric fields: ``float64`` arrays, NaN for missing;
* categorical/string and id fields: ``object`` arrays of ``str`` (None for missing);
* the time field: ``datetime64[ns]`` in UTC (NaT for missing).

The output is a dict of arrays of the same length ``n`` (see :data:`SCORE_COLUMNS`) plus
``contributions`` ``(n, p + 1)`` float64 (intercept first, then one per linear feature, in the
order of ``contribution_names``; they sum to ``prediction``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from segstream.shared.bundle import LoadedComponents, Manifest, load_components
from segstream.shared.drift import DriftReference
from segstream.shared.errors import BundleCompatibilityError, SchemaError
from segstream.shared.settings import SchemaSettings

#: Output columns of :meth:`Scorer.score` and their dtypes.
SCORE_COLUMNS: dict[str, type | str] = {
    "segment": np.int32,  # the routed leaf segment id
    "fallback_level": np.int8,  # 0 = the segment's own model, 1 = its parent, ...
    "prediction": np.float64,  # point prediction, target units
    "interval_low": np.float64,  # prediction interval of mass `interval_mass`
    "interval_high": np.float64,
    "pattern": np.int32,  # most probable outcome pattern
    "pattern_proba": np.float64,  # its probability
    "imputed": np.bool_,  # routing followed a missing value
    "unknown_key": object,  # str naming a never-seen key combination, or None
}


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
    contribution_names : list of str
        Names of the ``contributions`` columns (intercept first).
    drift_reference : DriftReference
        Training distributions the stats records are binned against.
    key_columns : list of str
        Columns whose value combinations define known keys (for new-segment counting).
    """

    bundle_id: str
    model: str
    schema: SchemaSettings
    interval_mass: float
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


# --------------------------------------------------------------------------- the real bundle
#: Components a scoring bundle must have, with their kinds.
REQUIRED_COMPONENTS = {
    "partitioner": "partitioner",
    "segment_models": "segment_models",
    "profiles": "profiles",
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
    profile scorer, the interval table and the drift reference. Nothing here imports
    scikit-learn or unpickles anything.
    """

    def __init__(self, loaded: LoadedComponents, path: Path | None = None) -> None:
        from segstream.shared.linear import LinearSegmentModels
        from segstream.shared.profiles import ProfileScorer
        from segstream.shared.routing import Router
        from segstream.shared.settings import SchemaSettings

        m = loaded.manifest
        for name, kind in REQUIRED_COMPONENTS.items():
            if name not in loaded or loaded[name].kind != kind:
                raise BundleCompatibilityError(
                    f"bundle {m.bundle_id[:12]}: component {name!r} of kind {kind!r} missing"
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
        self.linear = LinearSegmentModels.from_exported(loaded["segment_models"])
        self.profiles = ProfileScorer(loaded["profiles"])
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
            The arrays of :data:`SCORE_COLUMNS`, each of length n.

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
        ``fallback_level``, ``prediction``, ``interval_low/high``, ``imputed``,
        ``unknown_key``, ``contributions``, ``model_node``); ``finish()`` returns the full
        :meth:`score` dict. With an ``executor`` the profile part (the XGBoost pattern
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
        pending = executor.submit(self.profiles.pattern, columns) if executor is not None else None
        r = self.router.route(columns)
        n = len(r.segment)
        t = self.nodes
        model_node = t.model_node[r.node]
        level = (t.depth[t.segment_node[r.segment]] - t.depth[model_node]).astype(np.int8)
        X = np.empty((n, len(self.linear_features)), dtype=np.float64)
        for j, f in enumerate(self.linear_features):
            X[:, j] = _float_column(columns[f])
        pred, contrib = self.linear.predict(t.model_index[r.node], X)
        partial = {
            "segment": r.segment.astype(np.int32, copy=False),
            "fallback_level": level,
            "prediction": pred,
            "interval_low": pred + t.interval_lo[model_node],
            "interval_high": pred + t.interval_hi[model_node],
            "imputed": r.imputed,
            "unknown_key": self.unknown_keys(columns, n),
            "contributions": contrib,
            "model_node": model_node.astype(np.int32, copy=False),
        }

        def finish() -> dict[str, np.ndarray]:
            pattern, proba = (
                pending.result() if pending is not None else self.profiles.pattern(columns)
            )
            return {**partial, "pattern": pattern, "pattern_proba": proba}

        return partial, finish

    @property
    def required_columns(self) -> list[str]:
        cols = list(self.router.required_columns) + self.linear_features
        cols += list(self.profiles.features) + self.key_columns
        return list(dict.fromkeys(cols))


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
