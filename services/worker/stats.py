"""Compact per-batch statistics for the monitor (pure; no Kafka).

One stats record per micro-batch **and event-time slice** (:func:`batch_stats_slices`: a batch
that straddles a slice boundary, e.g. midnight with one-day monitor windows, gives one record
per slice, so that every record falls into exactly one monitor window), keyed by the model name (so every record of a model lands in
one partition and a monitor can add them up per window), JSON::

    {"model", "bundle_id", "worker", "batch", "n_events", "n_scored", "n_dlq",
     "dlq": {reason: count},
     "event_time_min", "event_time_max",            # ISO 8601 UTC, null if no valid time
     "numeric": {feature: [count per drift-reference bin]},
     "categorical": {feature: [count per category, other, missing]},
     "prediction": [count per prediction bin] or null,
     "fallback_levels": {"0": count, "1": count, ...},
     "unknown_keys": {"origin|dest value": count, ...}, "unknown_keys_other": count,
     "segments": {segment id: {feature or "prediction": [count per bin]}},  # large segments
     "partition_time_max": {source partition: ISO 8601 UTC},   # largest event time per partition
     "imputed": count, "created_at",
     "slice_start": ISO 8601 UTC or null, "slice_s": slice length in seconds or null}

With slicing, the batch's DLQ counts (``dlq``, ``n_dlq``) go to its first record only and
``n_events`` is ``n_scored`` plus those; rows without a valid event time get their own record
with ``slice_start`` null.

Bins follow :mod:`shared.drift` exactly (``NumericReference.bin``,
``CategoricalReference.bin``), so counts add up across batches and workers and compare directly
with the reference's ``expected`` shares.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from shared.drift import DriftReference, NumericReference


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
    partitions: np.ndarray | None = None,
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
    partitions : numpy.ndarray, optional
        Source partition of each valid row; gives ``partition_time_max`` = {partition: the
        largest event time of its rows} (the monitor's per-partition watermark).

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
    part_max: dict[str, str | None] = {}
    if partitions is not None and times is not None and len(times) and len(partitions):
        ns = np.asarray(times).astype("datetime64[ns]")
        ok = ~np.isnat(ns)
        parts = np.asarray(partitions)[ok]
        vals = ns[ok]
        for p in np.unique(parts).tolist():
            part_max[str(p)] = _iso(vals[parts == p].max())
    segments: dict[str, dict[str, list[int]]] = {}
    seg_col = scores.get("segment")
    if reference.segments and seg_col is not None and m:
        seg_col = np.asarray(seg_col)
        for sid, feats in reference.segments.items():
            rows = seg_col == sid
            if not rows.any():
                continue
            out: dict[str, list[int]] = {}
            for name, ref in feats.items():
                vals = scores["prediction"][rows] if name == "prediction" else (
                    columns[name][rows] if name in columns else None)
                if vals is not None:
                    out[name] = np.bincount(ref.bin(vals), minlength=ref.n_bins).tolist()
            segments[str(sid)] = out
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
        "segments": segments,
        "partition_time_max": part_max,
        "imputed": imputed,
        "created_at": created_at,
        "slice_start": None,
        "slice_s": None,
    }


def batch_stats_slices(
    columns: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    reference: DriftReference,
    *,
    time_field: str,
    slice_s: int | None,
    n_events: int,
    dlq_counts: Mapping[str, int],
    partitions: np.ndarray | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    """The stats records of one batch, one per event-time slice of ``slice_s`` seconds.

    Slices are aligned to the Unix epoch (``floor(t / slice_s) * slice_s``, UTC), like the
    monitor's tumbling windows. ``slice_s=None`` gives one record for the whole batch.
    Other keyword arguments are those of :func:`batch_stats`; each record equals what
    :func:`batch_stats` gives for the rows of its slice (the reference the tests hold this
    to), but every bin is computed once per batch and counted for all slices at once with one
    ``bincount`` over ``slice * n_bins + bin``: a catch-up batch that spans many days costs
    about as much as one that does not.

    Returns
    -------
    list of dict
        At least one record (a batch without valid events gives one record with its DLQ
        counts).
    """
    times = columns.get(time_field)
    m = len(scores["prediction"]) if "prediction" in scores else 0
    if times is None or m == 0:
        rec = batch_stats(columns, scores, reference, time_field=time_field, n_events=n_events,
                          dlq_counts=dlq_counts, partitions=partitions, **kw)
        return [rec]
    ns = np.asarray(times).astype("datetime64[ns]")
    nat = np.isnat(ns)
    ns_i = ns.view(np.int64)
    if slice_s:
        step = int(slice_s) * 1_000_000_000
        slot_key = np.where(nat, np.iinfo(np.int64).min, ns_i // step)
        keys, slot = np.unique(slot_key, return_inverse=True)
    else:
        step = 0
        keys, slot = np.zeros(1, np.int64), np.zeros(m, np.int64)
    slot = slot.astype(np.int64, copy=False)
    S = len(keys)
    n_rows = np.bincount(slot, minlength=S)

    def counts(bins: np.ndarray, n_bins: int, rows: np.ndarray | None = None) -> list[Any]:
        sl = slot if rows is None else slot[rows]
        return np.bincount(sl * n_bins + bins, minlength=S * n_bins).reshape(
            S, n_bins).tolist()

    numeric = {name: counts(ref.bin(columns[name]), ref.n_bins)
               for name, ref in reference.numeric.items() if name in columns}
    categorical = {name: counts(ref.bin(columns[name]), ref.n_bins)
                   for name, ref in reference.categorical.items() if name in columns}
    prediction = None
    if reference.prediction is not None:
        pref = reference.prediction
        prediction = counts(pref.bin(scores["prediction"]), pref.n_bins)
    levels = np.asarray(scores["fallback_level"], dtype=np.int64)
    n_levels = int(levels.max()) + 1 if m else 1
    level_counts = counts(levels, n_levels)
    imputed = (np.bincount(slot, weights=np.asarray(scores["imputed"], dtype=np.float64),
                           minlength=S).astype(np.int64).tolist()
               if "imputed" in scores else [0] * S)

    # unknown keys: few rows carry one; count (slice, key) pairs in Python over those only
    unknown: list[Counter[str]] = [Counter() for _ in range(S)]
    unknown_col = scores.get("unknown_key")
    if unknown_col is not None:
        uk = np.asarray(unknown_col, dtype=object)
        has = np.flatnonzero(uk != None)  # noqa: E711 - elementwise on an object array
        for s_i, key in zip(slot[has].tolist(), uk[has].tolist(), strict=True):
            unknown[s_i][key] += 1

    # event-time range and per-partition maxima per slice
    lo = np.full(S, np.iinfo(np.int64).max)
    hi = np.full(S, np.iinfo(np.int64).min)
    ok = ~nat
    np.minimum.at(lo, slot[ok], ns_i[ok])
    np.maximum.at(hi, slot[ok], ns_i[ok])
    part_max: list[dict[str, str | None]] = [{} for _ in range(S)]
    if partitions is not None and len(partitions):
        parts = np.asarray(partitions, dtype=np.int64)[ok]
        uparts, pidx = np.unique(parts, return_inverse=True)
        P = len(uparts)
        pm = np.full(S * P, np.iinfo(np.int64).min)
        np.maximum.at(pm, slot[ok] * P + pidx, ns_i[ok])
        pm = pm.reshape(S, P)
        for s_i in range(S):
            for j, p in enumerate(uparts.tolist()):
                if pm[s_i, j] != np.iinfo(np.int64).min:
                    part_max[s_i][str(p)] = _iso(np.datetime64(int(pm[s_i, j]), "ns"))

    # large segments: bins of each segment's own reference, counted per slice; the numeric
    # references of all segments in one kernel pass, any other reference by its own bin()
    segments: list[dict[str, dict[str, list[int]]]] = [{} for _ in range(S)]
    seg_col = scores.get("segment")
    if reference.segments and seg_col is not None:
        seg_col = np.asarray(seg_col, dtype=np.int64)
        table = reference.segment_table
        ids = table.segment_ids
        pos = np.minimum(np.searchsorted(ids, seg_col), len(ids) - 1)
        group = np.where(ids[pos] == seg_col, pos, -1).astype(np.int64)
        fidx = {name: f for f, name in enumerate(table.features)}
        values = np.full((len(table.features), m), np.nan)
        have = np.zeros(len(table.features), dtype=np.bool_)
        for f, name in enumerate(table.features):
            col = scores["prediction"] if name == "prediction" else columns.get(name)
            if col is not None:
                values[f] = col
                have[f] = True
        n_edges = np.where(have[None, :], table.n_edges, -1)
        binned = np.zeros((len(ids), len(table.features), S, table.edges.shape[2] + 2),
                          dtype=np.int64)
        seg_rows = np.zeros((len(ids), S), dtype=np.int64)
        _segment_bin_counts(group, slot, values, table.edges, n_edges, binned, seg_rows)
        for g, sid in enumerate(ids.tolist()):
            present = np.flatnonzero(seg_rows[g]).tolist()
            if not present:
                continue
            feats = reference.segments[sid]
            rows = None
            per_feature: dict[str, list[Any]] = {}
            for name, ref in feats.items():
                if isinstance(ref, NumericReference):
                    f = fidx[name]
                    if have[f]:
                        per_feature[name] = binned[g, f, :, :ref.n_bins].tolist()
                    continue
                if rows is None:
                    rows = np.flatnonzero(group == g)
                vals = scores["prediction"][rows] if name == "prediction" else (
                    columns[name][rows] if name in columns else None)
                if vals is not None:
                    per_feature[name] = counts(ref.bin(vals), ref.n_bins, rows)
            for s_i in present:
                segments[s_i][str(sid)] = {k: v[s_i] for k, v in per_feature.items()}

    n_dlq = int(sum(dlq_counts.values()))
    max_unknown = int(kw.get("max_unknown_keys", 100))
    out: list[dict[str, Any]] = []
    for s_i, key in enumerate(keys.tolist()):
        first = s_i == 0
        named = dict(unknown[s_i].most_common(max_unknown))
        rec = {
            "model": kw["model"],
            "bundle_id": kw["bundle_id"],
            "worker": kw["worker"],
            "batch": kw["batch"],
            "n_events": int(n_rows[s_i]) + (n_dlq if first else 0),
            "n_scored": int(n_rows[s_i]),
            "n_dlq": n_dlq if first else 0,
            "dlq": {k: int(v) for k, v in dlq_counts.items() if v} if first else {},
            "event_time_min": _iso(np.datetime64(int(lo[s_i]), "ns"))
            if hi[s_i] != np.iinfo(np.int64).min else None,
            "event_time_max": _iso(np.datetime64(int(hi[s_i]), "ns"))
            if hi[s_i] != np.iinfo(np.int64).min else None,
            "numeric": {k: v[s_i] for k, v in numeric.items()},
            "categorical": {k: v[s_i] for k, v in categorical.items()},
            "prediction": prediction[s_i] if prediction is not None else None,
            "fallback_levels": {str(i): c for i, c in enumerate(level_counts[s_i]) if c},
            "unknown_keys": named,
            "unknown_keys_other": int(sum(unknown[s_i].values()) - sum(named.values())),
            "segments": segments[s_i],
            "partition_time_max": part_max[s_i],
            "imputed": int(imputed[s_i]),
            "created_at": kw["created_at"],
            "slice_start": None,
            "slice_s": None,
        }
        if slice_s and key != np.iinfo(np.int64).min:
            rec["slice_start"] = _iso(np.datetime64(key * step, "ns"))
            rec["slice_s"] = int(slice_s)
        out.append(rec)
    return out


@njit(cache=True, nogil=True)
def _segment_bin_counts(group: np.ndarray, slot: np.ndarray, values: np.ndarray,
                        edges: np.ndarray, n_edges: np.ndarray, out: np.ndarray,
                        rows_out: np.ndarray) -> None:  # pragma: no cover - numba
    """Count every large-segment row into its segment's bins, all features at once.

    ``group`` (n,) int64: index into the segment table or -1; ``slot`` (n,) int64: slice;
    ``values`` (F, n) float64; ``edges`` (G, F, E) / ``n_edges`` (G, F) from
    :class:`shared.drift.SegmentBinTable` (``n_edges < 0``: skip the feature). Adds to
    ``out`` (G, F, S, E + 2) and ``rows_out`` (G, S). A value's bin is
    ``searchsorted(edges, x, side="right")`` and the last bin (``k + 1``) for NaN/±inf, as
    :meth:`shared.drift.NumericReference.bin`.
    """
    n = group.shape[0]
    n_feat = values.shape[0]
    for i in range(n):
        g = group[i]
        if g < 0:
            continue
        s = slot[i]
        rows_out[g, s] += 1
        for f in range(n_feat):
            k = n_edges[g, f]
            if k < 0:
                continue
            x = values[f, i]
            if np.isfinite(x):
                b = np.searchsorted(edges[g, f, :k], x, side="right")
            else:
                b = k + 1
            out[g, f, s, b] += 1
