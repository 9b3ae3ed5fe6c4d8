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

**Bound**: a batch whose rows span more slices than ``max_slices`` (the worker's is
:func:`segstream.services.worker.event_time.stats_max_slices`, 64 with the default settings)
gives records of their own to the ``max_slices`` slices with the most rows only; the rows of
the other slices are counted in one overflow record (``slice_start`` and ``slice_s`` null,
the time range of those rows in ``event_time_min/max``). So one batch gives at most
``max_slices + 2`` records (slices, no valid time, overflow) before size splitting, whatever
its event times (20,000 events on 20,000 different days: at most 66 records, not 20,000).

With slicing, the batch's DLQ counts (``dlq``, ``n_dlq``) go to its first record only and
``n_events`` is ``n_scored`` plus those; rows without a valid event time get their own record
with ``slice_start`` null.

:func:`batch_stats_records` gives the same records as JSON bytes, which is what the worker
sends.

Bounded records: unknown keys come from the events (a category value can be as long as an
event), so at most ``max_unknown_keys`` are named per record and each name is cut to
``max_unknown_key_chars`` (:func:`bounded_key`: the beginning, ``…`` and a hash of the whole,
the same in every worker). A record that still exceeds ``max_record_bytes`` is split
(:func:`split_record`): the first record keeps every count that fits, continuation records
carry the rest of its ``unknown_keys``, ``segments``, ``categorical`` and ``numeric`` entries
with zero counts otherwise (``n_events`` 0, ``prediction`` null) and the same times, so the
monitor's sums are unchanged.

Bins follow :mod:`segstream.shared.drift` exactly (``NumericReference.bin``,
``CategoricalReference.bin``), so counts add up across batches and workers and compare directly
with the reference's ``expected`` shares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import weakref
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from numba import njit

from segstream.shared.drift import CategoricalReference, DriftReference, NumericReference

_I64_MIN = int(np.iinfo(np.int64).min)  # also NaT as datetime64
_I64_MAX = int(np.iinfo(np.int64).max)


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
    max_unknown_key_chars: int | None = None,
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
    max_unknown_key_chars : int, optional
        Longer unknown keys are named by :func:`bounded_key`.

    Returns
    -------
    dict
        JSON-serialisable record.
    """
    m = len(scores["prediction"]) if "prediction" in scores else 0
    numeric = {
        name: np.bincount(ref.bin(columns[name]), minlength=ref.n_bins).tolist()
        for name, ref in reference.numeric.items()
        if name in columns
    }
    categorical = {
        name: np.bincount(ref.bin(columns[name]), minlength=ref.n_bins).tolist()
        for name, ref in reference.categorical.items()
        if name in columns
    }
    prediction = None
    if reference.prediction is not None and m:
        pref = reference.prediction
        prediction = np.bincount(pref.bin(scores["prediction"]), minlength=pref.n_bins).tolist()
    elif reference.prediction is not None:
        prediction = [0] * reference.prediction.n_bins
    levels = (
        np.bincount(np.asarray(scores["fallback_level"], dtype=np.int64))
        if m
        else np.zeros(0, np.int64)
    )
    fallback = {str(i): int(c) for i, c in enumerate(levels.tolist()) if c}
    unknown_col = scores.get("unknown_key")
    unknown: Counter[str] = Counter()
    if unknown_col is not None and m:
        unknown = Counter(v for v in unknown_col.tolist() if v is not None)
    named = _named_keys(unknown, max_unknown_keys, max_unknown_key_chars)
    other = sum(unknown.values()) - sum(named.values())
    node_col = scores.get("model_node")
    pairs: Counter[tuple[str, int]] = Counter()
    if unknown_col is not None and node_col is not None and m:
        pairs = Counter(
            (k, n)
            for k, n in zip(unknown_col.tolist(), np.asarray(node_col).tolist(), strict=True)
            if k is not None
        )
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
                vals = (
                    scores["prediction"][rows]
                    if name == "prediction"
                    else (columns[name][rows] if name in columns else None)
                )
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
        "unknown_key_nodes": _serving_nodes(pairs, named, max_unknown_key_chars),
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
    max_slices: int | None = None,
    **kw: Any,
) -> list[dict[str, Any]]:
    """The stats records of one batch, one per event-time slice of ``slice_s`` seconds.

    Slices are aligned to the Unix epoch (``floor(t / slice_s) * slice_s``, UTC), like the
    monitor's tumbling windows. ``slice_s=None`` gives one record for the whole batch. With
    ``max_slices``, only the ``max_slices`` slices with the most rows (ties: the earlier)
    get records of their own; the rows of the other slices share one overflow record
    (``slice_start`` and ``slice_s`` null, their time range in ``event_time_min/max``),
    after the others.
    Other keyword arguments are those of :func:`batch_stats`; each record equals what
    :func:`batch_stats` gives for the rows of its slice (the reference the tests hold this
    to), but every bin is computed once per batch and counted for all slices at once, into
    one (slices x bins) array (numba passes over the rows): a catch-up batch that spans many
    days costs about as much as one that does not. :func:`batch_stats_records` gives the
    same records JSON-encoded, faster (the worker's path; this one is for the monitor and
    tests).

    Returns
    -------
    list of dict
        At least one record (a batch without valid events gives one record with its DLQ
        counts).
    """
    counts = _slice_counts(
        columns,
        scores,
        reference,
        time_field=time_field,
        slice_s=slice_s,
        partitions=partitions,
        max_slices=max_slices,
    )
    if counts is None:
        return [
            batch_stats(
                columns,
                scores,
                reference,
                time_field=time_field,
                n_events=n_events,
                dlq_counts=dlq_counts,
                partitions=partitions,
                **kw,
            )
        ]
    return _records(
        counts,
        _blocks_as_lists(counts),
        slice_s=slice_s,
        dlq_counts=dlq_counts,
        model=kw["model"],
        bundle_id=kw["bundle_id"],
        worker=kw["worker"],
        batch=kw["batch"],
        created_at=kw["created_at"],
        max_unknown_keys=int(kw.get("max_unknown_keys", 100)),
        max_unknown_key_chars=kw.get("max_unknown_key_chars"),
    )


def batch_stats_records(
    columns: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    reference: DriftReference,
    *,
    time_field: str,
    slice_s: int | None,
    model: str,
    bundle_id: str,
    worker: str,
    batch: int,
    n_events: int,
    dlq_counts: Mapping[str, int],
    created_at: str,
    max_unknown_keys: int = 100,
    partitions: np.ndarray | None = None,
    max_unknown_key_chars: int | None = None,
    max_record_bytes: int | None = None,
    max_slices: int | None = None,
) -> list[bytes]:
    """The stats records of one batch, one per event-time slice, encoded as JSON.

    ``[orjson.loads(b) for b in batch_stats_records(...)]`` equals
    ``[orjson.loads(orjson.dumps(r)) for r in batch_stats_slices(...)]`` (same records, same
    order; the tests hold it to that, byte for byte), faster: the counts never become
    Python ints or lists. One numba pass writes the JSON text of every slice's bin counts
    straight from the batch's count array (with the feature names and segment ids laid out
    once per drift reference), which each record embeds as :class:`orjson.Fragment`; the
    ISO 8601 times of all slices and partitions are formatted in one pass too. (orjson's
    ``OPT_SERIALIZE_NUMPY`` costs ~0.7 us per array, more than it saves on these short
    rows.) This is the worker's hot path.

    Parameters
    ----------
    columns : mapping of str to numpy.ndarray
        Decoded columns of the scored (valid) events, length ``m``; ``columns[time_field]``
        is datetime64 (NaT for rows without a valid time).
    scores : mapping of str to numpy.ndarray
        The scorer's output for them (``prediction``, ``fallback_level``, ``imputed``,
        ``unknown_key``, ``segment``; the partial output of
        :meth:`segstream.shared.scoring.Bundle.score_parts` is enough).
    reference : DriftReference
        The bundle's frozen reference (bin edges and categories).
    time_field : str
        Name of the event-time column.
    slice_s : int or None
        Slice length in seconds (slices aligned to the Unix epoch, UTC); ``None`` gives one
        record for the whole batch.
    model, bundle_id, worker : str
        Copied into every record.
    batch : int
        Sequence number of the batch in this worker.
    n_events : int
        Events consumed in the batch (scored + DLQ); used only when no row is scored (with
        scored rows, each record's ``n_events`` is its ``n_scored`` plus, for the first
        record, the batch's DLQ count).
    dlq_counts : mapping of str to int
        DLQ records per reason (they go to the first record).
    created_at : str
        Copied into every record.
    max_unknown_keys : int, default 100
        At most this many unknown keys are named per record (the most frequent); the count
        of the others goes to ``unknown_keys_other``.
    partitions : numpy.ndarray of shape (m,), optional
        Source partition of each row; gives each record's ``partition_time_max``.
    max_unknown_key_chars : int, optional
        Longer unknown keys are named by :func:`bounded_key` (none is cut when None).
    max_record_bytes : int, optional
        No record is longer (bytes of JSON): a longer one is split (:func:`split_record`).
    max_slices : int, optional
        At most this many slices get records of their own; the rows of the others share
        one overflow record (see :func:`batch_stats_slices`). A batch then gives at most
        ``max_slices + 2`` records (the slices, the rows without a valid time, the
        overflow), each split further only by ``max_record_bytes``.

    Returns
    -------
    list of bytes
        At least one JSON record (see the module docstring for its fields); a batch without
        valid events gives one record with its DLQ counts.

    Examples
    --------
    >>> import numpy as np, orjson
    >>> from shared.drift import DriftReference, NumericReference
    >>> ref = DriftReference({"x": NumericReference(np.array([0.0]), np.full(3, 1 / 3))}, {})
    >>> cols = {"x": np.array([-1.0, 1.0, 2.0]),
    ...         "t": np.array(["2024-01-01T23:00", "2024-01-02T01:00", "NaT"], "M8[ns]")}
    >>> scores = {"prediction": np.zeros(3), "fallback_level": np.zeros(3, np.int8),
    ...           "imputed": np.zeros(3, bool)}
    >>> recs = batch_stats_records(cols, scores, ref, time_field="t", slice_s=86_400,
    ...                            model="m", bundle_id="b", worker="w", batch=0, n_events=4,
    ...                            dlq_counts={"empty": 1}, created_at="now")
    >>> for r in map(orjson.loads, recs):  # the NaT row's slice first, with the DLQ count
    ...     print(r["slice_start"], r["numeric"]["x"], r["n_scored"], r["n_dlq"])
    None [0, 1, 0] 1 1
    2024-01-01T00:00:00.000Z [1, 0, 0] 1 0
    2024-01-02T00:00:00.000Z [0, 1, 0] 1 0
    """
    counts = _slice_counts(
        columns,
        scores,
        reference,
        time_field=time_field,
        slice_s=slice_s,
        partitions=partitions,
        max_slices=max_slices,
    )
    if counts is None:
        out = [
            orjson.dumps(
                batch_stats(
                    columns,
                    scores,
                    reference,
                    time_field=time_field,
                    model=model,
                    bundle_id=bundle_id,
                    worker=worker,
                    batch=batch,
                    n_events=n_events,
                    dlq_counts=dlq_counts,
                    created_at=created_at,
                    max_unknown_keys=max_unknown_keys,
                    partitions=partitions,
                    max_unknown_key_chars=max_unknown_key_chars,
                )
            )
        ]
    else:
        dumps = orjson.dumps
        out = [
            dumps(r)
            for r in _records(
                counts,
                _blocks_as_json(counts),
                slice_s=slice_s,
                dlq_counts=dlq_counts,
                model=model,
                bundle_id=bundle_id,
                worker=worker,
                batch=batch,
                created_at=created_at,
                max_unknown_keys=int(max_unknown_keys),
                max_unknown_key_chars=max_unknown_key_chars,
            )
        ]
    if max_record_bytes is not None and max(map(len, out)) > max_record_bytes:
        out = [
            piece
            for rec in out
            for piece in (
                split_record(rec, max_record_bytes) if len(rec) > max_record_bytes else [rec]
            )
        ]
    return out


#: The sections of a stats record whose entries add up independently (split first to last).
_SPLIT_SECTIONS = ("unknown_keys", "segments", "categorical", "numeric")
#: What a continuation record of :func:`split_record` counts: nothing but its entries.
_CONTINUATION_ZEROS: dict[str, Any] = {
    "n_events": 0,
    "n_scored": 0,
    "n_dlq": 0,
    "dlq": {},
    "prediction": None,
    "fallback_levels": {},
    "unknown_keys_other": 0,
    "unknown_key_nodes": {},
    "imputed": 0,
    **{sec: {} for sec in _SPLIT_SECTIONS},
}


def split_record(record: bytes, max_bytes: int) -> list[bytes]:
    """A stats record (JSON) as records of at most ``max_bytes`` each that add up to it.

    The first keeps every field and as many entries of ``unknown_keys``, ``segments``,
    ``categorical`` and ``numeric`` as fit; each continuation record has the first's
    identity and time fields (``model``, ``bundle_id``, ``worker``, ``batch``, the event
    times, ``partition_time_max``, ``slice_start``: the same monitor window and watermark),
    zero counts, and more of those entries. An entry too large for a record of its own (an
    unknown key of about ``max_bytes``; none is with ``max_unknown_key_chars``) is not named:
    an unknown key's count goes to the first record's ``unknown_keys_other``, any other
    entry is left out and counted in its ``dropped_entries``. The fields outside those
    sections are bounded by the configuration (partitions, DLQ reasons), not by the events.

    Parameters
    ----------
    record : bytes
        One record of :func:`batch_stats_records`.
    max_bytes : int
        Bytes of JSON per record.

    Returns
    -------
    list of bytes
    """
    rec = orjson.loads(record)
    cont = {**rec, **_CONTINUATION_ZEROS}
    room = max_bytes - len(orjson.dumps(cont))  # for the entries of a continuation record
    head = {**rec, **{sec: {} for sec in _SPLIT_SECTIONS}}
    entries: list[tuple[str, str, Any, int]] = []
    dropped = 0
    for sec in _SPLIT_SECTIONS:
        for k, v in (rec.get(sec) or {}).items():
            size = len(orjson.dumps({k: v}))  # its size in a section, with a comma
            if size <= room:
                entries.append((sec, k, v, size))
            elif sec == "unknown_keys":
                head["unknown_keys_other"] = int(head.get("unknown_keys_other") or 0) + int(v)
            else:
                dropped += 1
    if dropped:
        head["dropped_entries"] = dropped
    out: list[dict[str, Any]] = [head]
    left = max_bytes - len(orjson.dumps(head))
    for sec, k, v, size in entries:
        if size > left:
            out.append({**cont, **{s: {} for s in _SPLIT_SECTIONS}})
            left = room
        out[-1][sec][k] = v
        left -= size
    return [orjson.dumps(r) for r in out]


def bounded_key(key: str, max_chars: int) -> str:
    """``key`` itself when at most ``max_chars`` long; else its first characters, ``…`` and
    16 hex characters of its SHA-256, ``max_chars`` in all: the same name in every worker,
    distinct for distinct keys.

    >>> bounded_key("JFK|LAX", 40)
    'JFK|LAX'
    >>> k = bounded_key("x" * 1000, 40)
    >>> len(k), k[:23], k[23]
    (40, 'xxxxxxxxxxxxxxxxxxxxxxx', '…')
    """
    if len(key) <= max_chars:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return key[: max(max_chars - 17, 0)] + "\u2026" + digest


def _serving_nodes(
    pairs: Counter[tuple[str, int]] | None, named: Mapping[str, int], max_chars: int | None
) -> dict[str, int]:
    """Per named unknown key: the tree node whose model served most of its events (the
    nearest known ancestor segment of the key: the routing falls back to it), from
    ``(key, model node) -> events``. Keys are named as in ``unknown_keys``."""
    if not pairs or not named:
        return {}
    best: dict[str, tuple[int, int]] = {}
    for (k, node), c in pairs.items():
        if node is None or int(node) < 0:
            continue
        name = bounded_key(k, max_chars) if max_chars is not None else k
        if name in named and (name not in best or (c, -node) > (best[name][0], -best[name][1])):
            best[name] = (c, int(node))
    return {k: n for k, (_c, n) in best.items()}


def _named_keys(unknown: Counter[str], most: int, max_chars: int | None) -> dict[str, int]:
    """The ``most`` most frequent unknown keys with their counts, long ones bounded."""
    named = dict(unknown.most_common(most))
    if max_chars is None or not named or max(map(len, named)) <= max_chars:
        return named
    out: dict[str, int] = {}
    for k, c in named.items():
        b = bounded_key(k, max_chars)
        out[b] = out.get(b, 0) + c
    return out


#: (feature, first column, n_bins): where a feature's bin counts sit in a slice's count row
_Columns = list[tuple[str, int, int]]


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where every bin count of a slice sits in its count row (the numeric features, the
    categorical features, the prediction, then each large segment's features), what counts
    it, and the JSON text around the counts (:class:`_Text`). Built once per drift
    reference and set of present columns (:func:`_layout`).

    A value source is ``("column", name)`` (``columns[name]``) or ``("score",
    "prediction")`` (``scores["prediction"]``).
    """

    width: int
    numeric: _Columns
    categorical: _Columns
    prediction: tuple[int, int] | None  # (first column, n_bins)
    #: one :func:`_bin_counts` pass per value source of a numeric reference: (source, name,
    #: the batch-wide reference's interior edges (k,) and first column (-1: none), the large
    #: segments' edges (G, E) padded with +inf, their number (G,) (-1: none), first columns)
    numeric_binning: list[tuple[str, str, np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]]
    categorical_refs: list[tuple[str, CategoricalReference, int]]
    segment_ids: list[str]  # ascending, as ``SegmentBinTable.segment_ids``
    segment_columns: list[_Columns]  # per segment, in the order of its references
    segment_others: list[list[tuple[str, Any, int]]]  # per segment: any other reference
    segment_lookup: np.ndarray | None  # segment id -> index or -1, when ids are small ints
    segment_table_ids: np.ndarray
    text: _Text


#: id(reference) -> (weak reference, the names it uses, {columns present: layout})
_LAYOUTS: dict[int, tuple[Any, tuple[str, ...], dict[tuple[bool, ...], _Layout]]] = {}


def _layout(
    reference: DriftReference, columns: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray]
) -> _Layout:
    """The layout of ``reference`` for these columns, cached per reference while it lives
    (as :func:`segstream.shared.routing.encode_categories` caches its lookups)."""
    key = id(reference)
    hit = _LAYOUTS.get(key)
    if hit is None or hit[0]() is not reference:
        names = tuple(
            dict.fromkeys(
                [
                    *reference.numeric,
                    *reference.categorical,
                    *(k for f in reference.segments.values() for k in f),
                ]
            )
        )
        hit = _LAYOUTS[key] = (weakref.ref(reference), names, {})
        weakref.finalize(reference, _LAYOUTS.pop, key, None)
    present = (
        bool(reference.segments) and "segment" in scores,
        *(name in columns for name in hit[1]),
    )
    layout = hit[2].get(present)
    if layout is None:
        layout = hit[2][present] = _build_layout(reference, columns, segments=present[0])
    return layout


def _build_layout(
    reference: DriftReference, columns: Mapping[str, np.ndarray], *, segments: bool
) -> _Layout:
    """Lay out the references :func:`batch_stats_slices` counts for these columns (with the
    large segments if ``segments``), in the order its records list them."""
    width = 0

    def place(name: str, n_bins: int, into: _Columns) -> int:
        nonlocal width
        into.append((name, width, n_bins))
        width += n_bins
        return width - n_bins

    # the batch-wide references, each numeric one by value source
    numeric: _Columns = []
    binning: dict[tuple[str, str], tuple[np.ndarray, int]] = {
        ("column", name): (
            np.ascontiguousarray(ref.edges, np.float64),
            place(name, ref.n_bins, numeric),
        )
        for name, ref in reference.numeric.items()
        if name in columns
    }
    categorical: _Columns = []
    categorical_refs = [
        (name, ref, place(name, ref.n_bins, categorical))
        for name, ref in reference.categorical.items()
        if name in columns
    ]
    prediction = None
    if reference.prediction is not None:
        pref = reference.prediction
        prediction = (place("prediction", pref.n_bins, []), pref.n_bins)
        binning["score", "prediction"] = (
            np.ascontiguousarray(pref.edges, np.float64),
            prediction[0],
        )
    text = _Text()
    text.object(numeric)
    text.object(categorical)
    if prediction is not None:
        text.unit([(b"", *prediction)], b"")
    n_fixed = len(text.units)

    # large segments (ascending ids), each reference in its segment's order
    segment_ids: list[str] = []
    segment_columns: list[_Columns] = []
    segment_others: list[list[tuple[str, Any, int]]] = []
    table_ids = np.zeros(0, np.int64)
    by_source: dict[tuple[str, str], int] = {}  # -> feature index in the segment table
    if segments:
        table = reference.segment_table
        table_ids = table.segment_ids
        fidx = {name: f for f, name in enumerate(table.features)}
        col = np.full(table.n_edges.shape, -1, np.int64)
        for g, sid in enumerate(table_ids.tolist()):
            cols: _Columns = []
            others: list[tuple[str, Any, int]] = []
            for name, ref in reference.segments[sid].items():
                if name != "prediction" and name not in columns:
                    continue  # no values: not counted (batch_stats does the same)
                if isinstance(ref, NumericReference):
                    col[g, fidx[name]] = place(name, ref.n_bins, cols)
                    by_source["score" if name == "prediction" else "column", name] = fidx[name]
                else:
                    others.append((name, ref, place(name, ref.n_bins, cols)))
            segment_ids.append(str(sid))
            segment_columns.append(cols)
            segment_others.append(others)
            text.object(cols, prefix=orjson.dumps(str(sid)) + b":")
    G = len(segment_ids)
    numeric_binning = []
    for source in dict.fromkeys([*binning, *by_source]):
        edges, first = binning.get(source, (np.zeros(0), -1))
        if source in by_source:
            f = by_source[source]
            seg = (
                np.ascontiguousarray(table.edges[:, f]),
                np.where(col[:, f] >= 0, table.n_edges[:, f], -1),
                col[:, f].copy(),
            )
        else:
            seg = (np.zeros((G, 1)), np.full(G, -1, np.int64), np.full(G, -1, np.int64))
        numeric_binning.append((*source, edges, first, *seg))
    lookup = None
    if G and table_ids.min() >= 0 and table_ids.max() < 1 << 20:
        lookup = np.full(int(table_ids.max()) + 1, -1, np.int64)
        lookup[table_ids] = np.arange(G)
    return _Layout(
        width=width,
        numeric=numeric,
        categorical=categorical,
        prediction=prediction,
        numeric_binning=numeric_binning,
        categorical_refs=categorical_refs,
        segment_ids=segment_ids,
        segment_columns=segment_columns,
        segment_others=segment_others,
        segment_lookup=lookup,
        segment_table_ids=table_ids,
        text=text.freeze(n_fixed),
    )


class _Text:
    """The JSON text around the count lists, per unit: a JSON value rendered for each slice
    (the numeric object, the categorical object, the prediction list: the ``n_fixed`` first
    units), or a member ``"id": {...}`` of the segments object (one unit per segment).
    Built with :meth:`unit` / :meth:`object`, then :meth:`freeze` makes the flat arrays
    :func:`_render_lists` reads."""

    # set by freeze()
    n_fixed: int
    text: np.ndarray  # uint8: all the text pieces
    item_array: np.ndarray  # (I, 4) int64: text from, to; first column, n
    unit_items: np.ndarray  # (U + 1,) int64: first item of each unit
    unit_close: np.ndarray  # (U, 2) int64: closing text from, to
    fixed: np.ndarray  # (U,) int64: bytes of a unit besides the digits of its counts
    n_counts: np.ndarray  # (U,) int64: counts in a unit

    def __init__(self) -> None:
        self.buf = bytearray()
        self.items: list[tuple[int, int, int, int]] = []
        self.units: list[tuple[int, int, int]] = []
        self.sizes: list[tuple[int, int]] = []  # per unit: fixed bytes, counts

    def _piece(self, b: bytes) -> tuple[int, int]:
        self.buf += b
        return len(self.buf) - len(b), len(self.buf)

    def unit(self, lists: list[tuple[bytes, int, int]], close: bytes) -> None:
        """A unit: each list of counts (first column, n) after its text, then ``close``."""
        first = len(self.items)
        for before, col, n in lists:
            self.items.append((*self._piece(before), col, n))
        self.units.append((first, *self._piece(close)))
        self.sizes.append(
            (sum(len(b) + 2 for b, _, _ in lists) + len(close), sum(n for _, _, n in lists))
        )

    def object(self, members: _Columns, prefix: bytes = b"") -> None:
        """A unit ``prefix{"feature": [counts], ...}``."""
        if not members:
            self.unit([], prefix + b"{}")
            return
        self.unit(
            [
                ((prefix + b"{" if i == 0 else b",") + orjson.dumps(k) + b":", a, n)
                for i, (k, a, n) in enumerate(members)
            ],
            b"}",
        )

    def freeze(self, n_fixed: int) -> _Text:
        """Build the kernel's arrays; the units from ``n_fixed`` on are object members."""
        self.n_fixed = n_fixed
        self.text = np.frombuffer(bytes(self.buf), np.uint8)
        units = np.array(self.units, np.int64).reshape(-1, 3)
        self.item_array = np.array(self.items, np.int64).reshape(-1, 4)
        self.unit_items = np.append(units[:, 0], len(self.items))
        self.unit_close = np.ascontiguousarray(units[:, 1:])
        sizes = np.array(self.sizes, np.int64).reshape(-1, 2)
        self.fixed, self.n_counts = sizes[:, 0].copy(), sizes[:, 1].copy()
        return self

    def render(self, counts: np.ndarray, present: np.ndarray) -> tuple[bytes, list[int]]:
        """The JSON text of every slice ``s`` (row of ``counts``): each fixed unit, then the
        object of the member units ``g`` with ``present[g, s]``. Value ``j`` of slice ``s`` is
        ``blob[at[s * (n_fixed + 1) + j]:at[s * (n_fixed + 1) + j + 1]]``."""
        digits = len(str(int(counts.max(initial=0)))) + 1  # and a comma
        size = self.fixed + self.n_counts * digits
        n = self.n_fixed
        bound = (
            counts.shape[0] * (int(size[:n].sum()) + 2)  # + "{}" of the object
            + int(present.sum(axis=1) @ (size[n:] + 1))
        )  # + a comma per member
        out = np.empty(bound, np.uint8)
        at = np.empty(counts.shape[0] * (n + 1) + 1, np.int64)
        end = _render_lists(
            counts,
            n,
            present,
            self.unit_items,
            self.item_array,
            self.unit_close,
            self.text,
            out,
            at,
        )
        return out[:end].tobytes(), at.tolist()


@dataclasses.dataclass
class _SliceCounts:
    """Every count of a batch per event-time slice: what both output stages read.

    ``S`` slices in ascending order (the slice of NaT times first); the bin counts of slice
    ``s`` are ``counts[s]``, laid out as ``layout`` says.
    """

    layout: _Layout
    slots: list[int]  # floor(t / slice_s) per slice; int64 min for NaT or without slicing
    counts: np.ndarray  # (S, layout.width) int64
    segment_slices: np.ndarray  # (G, S) bool: the segment has rows in the slice
    n_rows: list[int]
    levels: list[list[int]]  # (S, max fallback level + 1)
    imputed: list[int]
    unknown: list[Counter[str] | None]
    #: per slice: (unknown key, serving model node) -> events (:func:`_serving_nodes`)
    unknown_nodes: list[Counter[tuple[str, int]] | None]
    time_min: list[str | None]
    time_max: list[str | None]
    starts: list[str | None]
    partition_time_max: list[dict[str, str]]


def _slice_counts(
    columns: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    reference: DriftReference,
    *,
    time_field: str,
    slice_s: int | None,
    partitions: np.ndarray | None,
    max_slices: int | None = None,
) -> _SliceCounts | None:
    """Count a batch per slice; None without a time column or without scored rows."""
    times = columns.get(time_field)
    m = len(scores["prediction"]) if "prediction" in scores else 0
    if times is None or m == 0:
        return None
    ns = np.ascontiguousarray(np.asarray(times).astype("datetime64[ns]").view(np.int64))
    step = int(slice_s) * 1_000_000_000 if slice_s else 0
    if step:
        slot_of = ns // step
        keys, slot = _dense_slices(ns, slot_of, 4 * m + 64)
        if not len(keys):  # slices too far apart for a dense table
            keys, slot = np.unique(np.where(ns == _I64_MIN, _I64_MIN, slot_of), return_inverse=True)
            slot = slot.astype(np.int64, copy=False)
        if max_slices is not None:
            keys, slot = _cap_slices(keys, slot, max_slices)
    else:
        keys, slot = np.full(1, _I64_MIN), np.zeros(m, np.int64)
    slots = keys.tolist()
    S = len(slots)
    lay = _layout(reference, columns, scores)
    counts = np.zeros((S, lay.width), np.int64)

    def values(source: str, name: str) -> np.ndarray:
        return scores["prediction"] if source == "score" else columns[name]

    # the rows in a large segment, the segment's index in the table, and its slices
    G = len(lay.segment_ids)
    segment_slices = np.zeros((G, S), np.bool_)
    rows = group = np.zeros(0, np.int64)
    if G:
        seg = np.ascontiguousarray(scores["segment"], np.int64)
        if lay.segment_lookup is not None:
            rows, group = _segment_rows(seg, lay.segment_lookup, slot, segment_slices)
        else:
            ids = lay.segment_table_ids
            pos = np.minimum(np.searchsorted(ids, seg), len(ids) - 1)
            rows = np.flatnonzero(ids[pos] == seg)
            group = pos[rows].astype(np.int64)
            segment_slices[group, slot[rows]] = True

    # numeric bins: one pass per value source, for the batch-wide reference and the large
    # segments' at once; categorical bins by the reference's own bin()
    for source, name, edges, col, seg_edges, seg_n_edges, seg_col in lay.numeric_binning:
        _bin_counts(
            np.ascontiguousarray(values(source, name), np.float64),
            slot,
            edges,
            col,
            rows,
            group,
            seg_edges,
            seg_n_edges,
            seg_col,
            counts,
        )
    for name, ref, col in lay.categorical_refs:
        _add_bins(ref.bin(columns[name]), slot, col, counts)
    for g, others in enumerate(lay.segment_others):
        if others and segment_slices[g].any():
            rows_g = rows[group == g]
            for name, ref, col in others:
                source = "score" if name == "prediction" else "column"
                _add_bins(ref.bin(values(source, name)[rows_g]), slot[rows_g], col, counts)

    levels = np.ascontiguousarray(scores["fallback_level"], dtype=np.int64)
    if levels.min() < 0:
        raise ValueError("fallback_level must be >= 0")
    level_counts = np.zeros((S, int(levels.max()) + 1), np.int64)
    _add_bins(levels, slot, 0, level_counts)
    imputed = np.zeros(S, np.int64)
    if "imputed" in scores:
        flags = np.asarray(scores["imputed"])
        if flags.dtype == np.bool_:
            imputed = np.bincount(slot[flags], minlength=S)
        else:  # a count per row, summed as batch_stats_slices always did
            imputed = np.bincount(slot, weights=flags.astype(np.float64), minlength=S).astype(
                np.int64
            )

    # unknown keys: few rows carry one; count (slice, key) pairs in Python over those only
    unknown: list[Counter[str] | None] = [None] * S
    unknown_nodes: list[Counter[tuple[str, int]] | None] = [None] * S
    unknown_col = scores.get("unknown_key")
    if unknown_col is not None:
        uk = np.asarray(unknown_col, dtype=object)
        # elementwise "is not None" (the bool loop compares identity first: ~2x faster
        # than ``uk != None``)
        has = np.flatnonzero(~np.equal(uk, None, dtype=bool))
        node_col = scores.get("model_node")
        nodes = np.asarray(node_col)[has].tolist() if node_col is not None else [-1] * len(has)
        for s_i, key, node in zip(slot[has].tolist(), uk[has].tolist(), nodes, strict=True):
            counter = unknown[s_i]
            if counter is None:
                counter = unknown[s_i] = Counter()
                unknown_nodes[s_i] = Counter()
            counter[key] += 1
            unknown_nodes[s_i][(key, node)] += 1  # type: ignore[index]  # set with counter

    # event-time range and per-partition maxima per slice, formatted in one call
    lo = np.full(S, _I64_MAX)
    hi = np.full(S, _I64_MIN)
    labels = part = np.zeros(0, np.int64)
    if partitions is not None and len(partitions):
        parts = np.asarray(partitions, dtype=np.int64)
        if parts.shape != (m,):
            raise ValueError(f"partitions has shape {parts.shape}; the batch has {m} rows")
        p0, p1 = int(parts.min()), int(parts.max())
        if p1 - p0 < 4 * m + 64:  # a dense table of partitions, ascending
            labels, part = np.arange(p0, p1 + 1), np.ascontiguousarray(parts - p0)
        else:
            labels, part = np.unique(parts, return_inverse=True)
            part = part.astype(np.int64, copy=False)
    part_max = np.full((S, len(labels)), _I64_MIN)
    _time_extremes(ns, slot, part, lo, hi, part_max)
    lo[hi == _I64_MIN] = _I64_MIN
    seen = np.flatnonzero((part_max != _I64_MIN).any(axis=0))
    part_names = [str(p) for p in labels[seen].tolist()]
    starts = (
        np.array([k * step if k not in _UNSLICED else _I64_MIN for k in slots], np.int64)
        if step
        else np.full(S, _I64_MIN)
    )
    iso = _iso_array(np.concatenate([lo, hi, starts, part_max[:, seen].reshape(-1)]))
    P = len(part_names)
    per_part = iso[3 * S :]
    part_dicts = [
        {
            p: t
            for p, t in zip(part_names, per_part[s_i * P : (s_i + 1) * P], strict=True)
            if t is not None
        }
        for s_i in range(S)
    ]
    return _SliceCounts(
        layout=lay,
        slots=slots,
        counts=counts,
        segment_slices=segment_slices,
        n_rows=np.bincount(slot, minlength=S).tolist(),
        levels=level_counts.tolist(),
        imputed=imputed.tolist(),
        unknown=unknown,
        unknown_nodes=unknown_nodes,
        time_min=iso[:S],
        time_max=iso[S : 2 * S],
        starts=iso[2 * S : 3 * S],
        partition_time_max=part_dicts,
    )


#: per slice: the values of "numeric", "categorical", "prediction" and "segments"
_Blocks = list[tuple[Any, Any, Any, Any]]


def _blocks_as_lists(c: _SliceCounts) -> _Blocks:
    """The count blocks of each slice as dicts of lists of ints."""
    lay = c.layout
    rows = c.counts.tolist()
    segments: list[dict[str, dict[str, list[int]]]] = [{} for _ in rows]
    for sid, cols, present in zip(
        lay.segment_ids, lay.segment_columns, c.segment_slices.tolist(), strict=True
    ):
        for s_i in itertools.compress(range(len(rows)), present):
            r = rows[s_i]
            segments[s_i][sid] = {k: r[a : a + n] for k, a, n in cols}
    pa, pn = lay.prediction if lay.prediction is not None else (0, 0)
    return [
        (
            {k: r[a : a + n] for k, a, n in lay.numeric},
            {k: r[a : a + n] for k, a, n in lay.categorical},
            r[pa : pa + pn] if lay.prediction is not None else None,
            seg,
        )
        for r, seg in zip(rows, segments, strict=True)
    ]


def _blocks_as_json(c: _SliceCounts) -> _Blocks:
    """The count blocks of each slice as JSON text (:class:`orjson.Fragment`), written by one
    kernel pass: the same values as :func:`_blocks_as_lists`, without a Python int."""
    blob, at = c.layout.text.render(c.counts, c.segment_slices)
    fragment = orjson.Fragment
    values = [fragment(blob[a:b]) for a, b in itertools.pairwise(at)]
    if c.layout.prediction is not None:
        return list(zip(values[::4], values[1::4], values[2::4], values[3::4], strict=True))
    return [
        (n, k, None, g) for n, k, g in zip(values[::3], values[1::3], values[2::3], strict=True)
    ]


def _records(
    c: _SliceCounts,
    blocks: _Blocks,
    *,
    slice_s: int | None,
    dlq_counts: Mapping[str, int],
    model: str,
    bundle_id: str,
    worker: str,
    batch: int,
    created_at: str,
    max_unknown_keys: int,
    max_unknown_key_chars: int | None = None,
) -> list[dict[str, Any]]:
    """The records of :func:`batch_stats_slices` around the count blocks of each slice."""
    n_dlq = int(sum(dlq_counts.values()))
    level_names = [str(i) for i in range(max(map(len, c.levels), default=0))]
    out = []
    for s_i, (slot, (numeric, categorical, prediction, segments)) in enumerate(
        zip(c.slots, blocks, strict=True)
    ):
        first = s_i == 0
        uk = c.unknown[s_i]
        named = _named_keys(uk, max_unknown_keys, max_unknown_key_chars) if uk is not None else {}
        nodes = _serving_nodes(c.unknown_nodes[s_i], named, max_unknown_key_chars)
        sliced = bool(slice_s) and slot not in _UNSLICED
        out.append(
            {
                "model": model,
                "bundle_id": bundle_id,
                "worker": worker,
                "batch": batch,
                "n_events": c.n_rows[s_i] + (n_dlq if first else 0),
                "n_scored": c.n_rows[s_i],
                "n_dlq": n_dlq if first else 0,
                "dlq": {k: int(v) for k, v in dlq_counts.items() if v} if first else {},
                "event_time_min": c.time_min[s_i],
                "event_time_max": c.time_max[s_i],
                "numeric": numeric,
                "categorical": categorical,
                "prediction": prediction,
                "fallback_levels": {
                    k: n for k, n in zip(level_names, c.levels[s_i], strict=True) if n
                },
                "unknown_keys": named,
                "unknown_keys_other": (sum(uk.values()) - sum(named.values()))
                if uk is not None
                else 0,
                "unknown_key_nodes": nodes,
                "segments": segments,
                "partition_time_max": c.partition_time_max[s_i],
                "imputed": c.imputed[s_i],
                "created_at": created_at,
                "slice_start": c.starts[s_i] if sliced else None,
                "slice_s": int(slice_s) if sliced else None,  # type: ignore[arg-type]
            }
        )
    return out


#: The slice key of the overflow record (rows of slices beyond ``max_slices``).
_OVERFLOW = _I64_MIN + 1
#: Slice keys without a slice of their own: no valid time, the overflow.
_UNSLICED = (_I64_MIN, _OVERFLOW)


def _cap_slices(
    keys: np.ndarray, slot: np.ndarray, max_slices: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``max_slices`` slices with the most rows (ties: the earlier; ``keys``
    ascending, NaT's first); the rows of the others go to one :data:`_OVERFLOW` slice, last.
    Returns the new keys and each row's index into them."""
    timed = np.flatnonzero(keys != _I64_MIN)
    if len(timed) <= max_slices:
        return keys, slot
    rows = np.bincount(slot, minlength=len(keys))
    top = np.sort(timed[np.argsort(-rows[timed], kind="stable")[: max(max_slices, 0)]])
    new_index = np.full(len(keys), -1, np.int64)
    new_keys = [_I64_MIN] if len(timed) < len(keys) else []
    if new_keys:
        new_index[keys == _I64_MIN] = 0
    new_index[top] = np.arange(len(new_keys), len(new_keys) + len(top))
    new_index[new_index < 0] = len(new_keys) + len(top)
    out = np.array([*new_keys, *keys[top].tolist(), _OVERFLOW], np.int64)
    return out, new_index[slot]


def _iso_array(ns: np.ndarray) -> list[str | None]:
    """:func:`_iso` of int64 nanoseconds since the epoch (int64 min: NaT, None), all at once."""
    ns = np.ascontiguousarray(ns, np.int64)
    out = np.zeros((len(ns), 24), np.uint8)
    _format_iso(ns, out)
    text = out.tobytes().decode("ascii")
    iso: list[str | None] = [
        None if t == _I64_MIN else text[i : i + 24]
        for i, t in zip(range(0, 24 * len(ns), 24), ns.tolist(), strict=True)
    ]
    # numpy's ns -> ms conversion overflows (wraps around to 2262) within 1 ms of the
    # smallest datetime64[ns]: those few as numpy, like _iso
    for i in np.flatnonzero((ns > _I64_MIN) & (ns < _I64_MIN + 1_000_000)).tolist():
        iso[i] = _iso(ns[i : i + 1].view("datetime64[ns]")[0])
    return iso


@njit(cache=True, nogil=True)
def _dense_slices(
    ns: np.ndarray, slot_of: np.ndarray, max_slices: int
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - numba
    """``np.unique(where(ns is NaT, int64 min, slot_of), return_inverse=True)`` through a
    dense table over ``min(slot_of)..max(slot_of)``; two empty arrays when that spans more
    than ``max_slices`` slices. ``ns`` (n,) int64 (int64 min: NaT), ``slot_of`` (n,) int64."""
    n = ns.shape[0]
    lo = _I64_MAX
    hi = _I64_MIN
    for i in range(n):
        if ns[i] != _I64_MIN:
            lo = min(lo, slot_of[i])
            hi = max(hi, slot_of[i])
    span = hi - lo + 1 if hi >= lo else 0
    if span > max_slices:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    index = np.zeros(span + 1, np.int64)  # 0: NaT, 1 + j: slice lo + j
    for i in range(n):
        index[0 if ns[i] == _I64_MIN else slot_of[i] - lo + 1] = 1
    n_keys = 0
    for j in range(span + 1):
        if index[j]:
            index[j] = n_keys
            n_keys += 1
        else:
            index[j] = -1
    keys = np.empty(n_keys, np.int64)
    for j in range(span + 1):
        if index[j] >= 0:
            keys[index[j]] = _I64_MIN if j == 0 else lo + j - 1
    slot = np.empty(n, np.int64)
    for i in range(n):
        slot[i] = index[0 if ns[i] == _I64_MIN else slot_of[i] - lo + 1]
    return keys, slot


@njit(cache=True, nogil=True, inline="always")
def _numeric_bin(edges: np.ndarray, k: int, v: float) -> int:  # pragma: no cover - numba
    """The bin of ``v`` as :meth:`segstream.shared.drift.NumericReference.bin`: the number of edges
    <= v, i.e. ``searchsorted(edges[:k], v, side="right")`` (``edges`` may be padded with
    +inf, which never counts: a fixed trip count, no branch), and ``k + 1`` for NaN/±inf."""
    if not np.isfinite(v):
        return k + 1
    b = 0
    for j in range(edges.shape[0]):
        b += edges[j] <= v
    return b


@njit(cache=True, nogil=True)
def _bin_counts(
    x: np.ndarray,
    slot: np.ndarray,
    edges: np.ndarray,
    col: int,
    rows: np.ndarray,
    group: np.ndarray,
    seg_edges: np.ndarray,
    seg_n_edges: np.ndarray,
    seg_col: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - numba
    """Count each value into the bins of a numeric reference per slice: the batch-wide one
    (interior ``edges``; bins from column ``col`` of ``out``, < 0: none), and for the
    ``rows`` in a large segment (``group``: its index), the segment's (``seg_edges[g]``
    padded with +inf, ``seg_n_edges[g]`` of them, < 0: none; bins from column
    ``seg_col[g]``).

    ``x`` (n,) float64; ``slot`` (n,) int64; adds to ``out`` (S, W) int64, C-contiguous.
    The bin is :func:`_numeric_bin`'s.
    """
    width = out.shape[1]
    flat = out.reshape(-1)
    k = edges.shape[0]
    if col >= 0:
        for i in range(x.shape[0]):
            flat[slot[i] * width + col + _numeric_bin(edges, k, x[i])] += 1
    for r in range(rows.shape[0]):
        i = rows[r]
        g = group[r]
        if seg_n_edges[g] >= 0:
            flat[
                slot[i] * width + seg_col[g] + _numeric_bin(seg_edges[g], seg_n_edges[g], x[i])
            ] += 1


@njit(cache=True, nogil=True)
def _add_bins(
    bins: np.ndarray, slot: np.ndarray, col: int, out: np.ndarray
) -> None:  # pragma: no cover - numba
    """``out[slot[i], col + bins[i]] += 1`` for each row."""
    for i in range(bins.shape[0]):
        out[slot[i], col + bins[i]] += 1


@njit(cache=True, nogil=True)
def _segment_rows(
    segment: np.ndarray, lookup: np.ndarray, slot: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - numba
    """The rows in a large segment and the segment's index, ``lookup[segment id]`` (-1:
    none, also for ids beyond ``lookup``), marking ``present[g, slot]``."""
    n = segment.shape[0]
    rows = np.empty(n, np.int64)
    group = np.empty(n, np.int64)
    k = 0
    for i in range(n):
        s = segment[i]
        g = lookup[s] if 0 <= s < lookup.shape[0] else -1
        if g >= 0:
            rows[k] = i
            group[k] = g
            present[g, slot[i]] = True
            k += 1
    return rows[:k], group[:k]


@njit(cache=True, nogil=True)
def _time_extremes(
    ns: np.ndarray,
    slot: np.ndarray,
    part: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    part_max: np.ndarray,
) -> None:  # pragma: no cover - numba
    """Per slice the smallest (``lo``) and largest (``hi``) time, and per slice and partition
    (``part`` (n,) int64 index, or empty: no partitions) the largest (``part_max`` (S, P)),
    over the rows with a time (``ns`` int64, int64 min for NaT)."""
    with_part = part.shape[0] > 0
    for i in range(ns.shape[0]):
        t = ns[i]
        if t == _I64_MIN:
            continue
        s = slot[i]
        lo[s] = min(lo[s], t)
        hi[s] = max(hi[s], t)
        if with_part:
            part_max[s, part[i]] = max(part_max[s, part[i]], t)


@njit(cache=True, nogil=True)
def _format_iso(ns: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - numba
    """``out[i]`` (24 bytes) = ``YYYY-MM-DDTHH:MM:SS.mmmZ`` of ``ns[i]`` (int64 nanoseconds
    since the epoch, floored to milliseconds as ``astype("datetime64[ms]")``; proleptic
    Gregorian calendar, H. Hinnant's ``civil_from_days``); NaT (int64 min) is left as is.

    References
    ----------
    H. Hinnant, "chrono-Compatible Low-Level Date Algorithms",
    https://howardhinnant.github.io/date_algorithms.html
    """
    for i in range(ns.shape[0]):
        if ns[i] == _I64_MIN:
            continue
        ms = ns[i] // 1_000_000  # floor division, also before 1970
        days = ms // 86_400_000
        rem = ms - days * 86_400_000
        z = days + 719_468
        era = z // 146_097
        doe = z - era * 146_097  # [0, 146096]
        yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365  # [0, 399]
        doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # [0, 365]
        mp = (5 * doy + 2) // 153  # [0, 11], March first
        day = doy - (153 * mp + 2) // 5 + 1
        month = mp + 3 if mp < 10 else mp - 9
        year = yoe + era * 400 + (month <= 2)
        o = out[i]
        _digits(o, 0, year, 4)
        o[4] = 45  # -
        _digits(o, 5, month, 2)
        o[7] = 45
        _digits(o, 8, day, 2)
        o[10] = 84  # T
        _digits(o, 11, rem // 3_600_000, 2)
        o[13] = 58  # :
        _digits(o, 14, rem // 60_000 % 60, 2)
        o[16] = 58
        _digits(o, 17, rem // 1000 % 60, 2)
        o[19] = 46  # .
        _digits(o, 20, rem % 1000, 3)
        o[23] = 90  # Z


@njit(cache=True, nogil=True, inline="always")
def _digits(out: np.ndarray, at: int, v: int, width: int) -> None:  # pragma: no cover - numba
    """``v`` (>= 0) as ``width`` decimal digits, zero-padded, at ``out[at:]``."""
    for j in range(width - 1, -1, -1):
        out[at + j] = 48 + v % 10
        v //= 10


@njit(cache=True, nogil=True)
def _render_lists(
    counts: np.ndarray,
    n_fixed: int,
    present: np.ndarray,
    unit_items: np.ndarray,
    items: np.ndarray,
    unit_close: np.ndarray,
    text: np.ndarray,
    out: np.ndarray,
    at: np.ndarray,
) -> int:  # pragma: no cover
    """Write the JSON text of each slice ``s`` (``counts`` (S, W) int64 >= 0) into ``out``:
    units ``0 .. n_fixed - 1``, then ``{``, the units ``n_fixed + g`` with ``present[g, s]``
    separated by commas, ``}``. A unit ``u`` is each of its items ``i`` (``unit_items[u]``
    to ``unit_items[u + 1]``) as ``text[items[i, 0]:items[i, 1]]`` then ``[counts[s, c],
    ..., counts[s, c + n - 1]]`` (``c, n = items[i, 2:]``), then ``text[unit_close[u, 0]:
    unit_close[u, 1]]``. ``at[s * (n_fixed + 1) + j]`` is where the ``j``-th value of slice
    ``s`` starts; returns the end."""
    pos = 0
    k = 0
    for s in range(counts.shape[0]):
        for u in range(n_fixed):
            at[k] = pos
            k += 1
            pos = _render_unit(counts, s, u, unit_items, items, unit_close, text, out, pos)
        at[k] = pos
        k += 1
        out[pos] = 123  # {
        pos += 1
        first = True
        for g in range(present.shape[0]):
            if present[g, s]:
                if not first:
                    out[pos] = 44  # ,
                    pos += 1
                first = False
                pos = _render_unit(
                    counts, s, n_fixed + g, unit_items, items, unit_close, text, out, pos
                )
        out[pos] = 125  # }
        pos += 1
    at[k] = pos
    return pos


@njit(cache=True, nogil=True)
def _render_unit(
    counts: np.ndarray,
    s: int,
    u: int,
    unit_items: np.ndarray,
    items: np.ndarray,
    unit_close: np.ndarray,
    text: np.ndarray,
    out: np.ndarray,
    pos: int,
) -> int:  # pragma: no cover - numba
    """Write unit ``u`` of slice ``s`` at ``out[pos:]`` (:func:`_render_lists`); returns the
    new end."""
    for i in range(unit_items[u], unit_items[u + 1]):
        for j in range(items[i, 0], items[i, 1]):
            out[pos] = text[j]
            pos += 1
        out[pos] = 91  # [
        pos += 1
        c = items[i, 2]
        for j in range(items[i, 3]):
            if j:
                out[pos] = 44  # ,
                pos += 1
            v = counts[s, c + j]
            if v < 10:  # most counts of a slice are small
                out[pos] = 48 + v
                pos += 1
                continue
            lo = pos
            while v:  # digits last to first, then reversed in place
                out[pos] = 48 + v % 10
                pos += 1
                v //= 10
            hi = pos - 1
            while lo < hi:
                out[lo], out[hi] = out[hi], out[lo]
                lo += 1
                hi -= 1
        out[pos] = 93  # ]
        pos += 1
    for j in range(unit_close[u, 0], unit_close[u, 1]):
        out[pos] = text[j]
        pos += 1
    return pos
