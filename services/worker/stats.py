"""Compact per-batch statistics for the monitor (pure; no Kafka).

One stats record per micro-batch, keyed by the model name (so every record of a model lands in
one partition and a monitor can add them up per window), JSON::

    {"model", "bundle_id", "worker", "batch", "n_events", "n_scored", "n_dlq",
     "dlq": {reason: count},
     "event_time_min", "event_time_max",            # ISO 8601 UTC, null if no valid time
     "numeric": {feature: [count per drift-reference bin]},
     "categorical": {feature: [count per category, other, missing]},
     "prediction": [count per prediction bin] or null,
     "fallback_levels": {"0": count, "1": count, ...},
     "unknown_keys": {"origin|dest value": count, ...}, "unknown_keys_other": count,
     "imputed": count, "created_at"}

Bins follow :mod:`shared.drift` exactly (``NumericReference.bin``,
``CategoricalReference.bin``), so counts add up across batches and workers and compare directly
with the reference's ``expected`` shares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.drift import DriftReference


def _iso(t: np.datetime64) -> str | None:
    if np.isnat(t):
        return None
    return str(t.astype("datetime64[ms]")) + "Z"


def batch_stats(
    columns: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    reference: DriftReference,
    *,
    time_field: str,
    model: str,
    bundle_id: str,
    worker: str,
    batch: int,
    n_events: int,
    dlq_counts: Mapping[str, int],
    created_at: str,
    max_unknown_keys: int = 100,
) -> dict[str, Any]:
    """The stats record of one batch.

    Parameters
    ----------
    columns : dict of str to numpy.ndarray
        Decoded columns of the scored (valid) events, length ``m``.
    scores : dict of str to numpy.ndarray
        The scorer's output for them.
    reference : DriftReference
        The bundle's frozen reference (bin edges and categories).
    time_field : str
    model, bundle_id, worker : str
    batch : int
        Sequence number of the batch in this worker.
    n_events : int
        Events consumed in the batch (scored + DLQ).
    dlq_counts : mapping of str to int
        DLQ records per reason.
    created_at : str
    max_unknown_keys : int
        At most this many unknown keys are named (the most frequent); the count of the others
        goes to ``unknown_keys_other``.

    Returns
    -------
    dict
        JSON-serialisable record.
    """
    m = len(scores["prediction"]) if "prediction" in scores else 0
    numeric = {name: np.bincount(ref.bin(columns[name]), minlength=ref.n_bins).tolist()
               for name, ref in reference.numeric.items() if name in columns}
    categorical = {name: np.bincount(ref.bin(columns[name]), minlength=ref.n_bins).tolist()
                   for name, ref in reference.categorical.items() if name in columns}
    prediction = None
    if reference.prediction is not None and m:
        pref = reference.prediction
        prediction = np.bincount(pref.bin(scores["prediction"]), minlength=pref.n_bins).tolist()
    elif reference.prediction is not None:
        prediction = [0] * reference.prediction.n_bins
    levels = np.bincount(np.asarray(scores["fallback_level"], dtype=np.int64)) if m \
        else np.zeros(0, np.int64)
    fallback = {str(i): int(c) for i, c in enumerate(levels.tolist()) if c}
    unknown_col = scores.get("unknown_key")
    unknown: Counter[str] = Counter()
    if unknown_col is not None and m:
        unknown = Counter(v for v in unknown_col.tolist() if v is not None)
    named = dict(unknown.most_common(max_unknown_keys))
    other = sum(unknown.values()) - sum(named.values())
    times = columns.get(time_field)
    tmin = tmax = None
    if times is not None and len(times):
        valid = times[~np.isnat(times)]
        if len(valid):
            tmin, tmax = _iso(valid.min()), _iso(valid.max())
    imputed = int(np.count_nonzero(scores["imputed"])) if m and "imputed" in scores else 0
    return {
        "model": model,
        "bundle_id": bundle_id,
        "worker": worker,
        "batch": batch,
        "n_events": n_events,
        "n_scored": m,
        "n_dlq": int(sum(dlq_counts.values())),
        "dlq": {k: int(v) for k, v in dlq_counts.items() if v},
        "event_time_min": tmin,
        "event_time_max": tmax,
        "numeric": numeric,
        "categorical": categorical,
        "prediction": prediction,
        "fallback_levels": fallback,
        "unknown_keys": named,
        "unknown_keys_other": int(other),
        "imputed": imputed,
        "created_at": created_at,
    }
