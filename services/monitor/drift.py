"""Drift aggregation per window and its judgement against the frozen reference (pure).

A window's drift state is a JSON-serialisable dict (it lives in a faust table) holding the sum
of the workers' stats records of one bundle in one window::

    {"n": scored events, "numeric": {feature: [counts]}, "categorical": {...},
     "prediction": [counts] or None, "segments": {segment: {feature: [counts]}},
     "fallback_levels": {level: count}, "n_dlq": int, "imputed": int,
     "event_time_min": ms, "event_time_max": ms, "records": int}

Counts use the bins of :mod:`segstream.shared.drift` (the bundle's reference), so they add across
batches and workers. At close, :func:`drift_findings` computes for every feature, for the
prediction and (optionally) per large segment the PSI (:func:`segstream.shared.drift.psi`, smoothed by
:data:`segstream.shared.drift.PSI_EPSILON`) and the Jensen–Shannon distance
(:func:`segstream.shared.drift.js_distance`, base 2, in [0, 1]), and marks the ones at or above the
warning / critical PSI levels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np

from segstream.shared.bundle import is_bundle_id
from segstream.shared.contracts import StatsRecord
from segstream.shared.drift import DriftReference, js_distance, psi


class MalformedRecord(ValueError):
    """A stats, prediction or outcome record that cannot be used (counted and skipped)."""


T = TypeVar("T")


class RecordDecoder(Generic[T]):
    """Typed decoding of one record type of :mod:`segstream.shared.contracts`.

    Parameters
    ----------
    type_ : type
        The record's Struct type.
    what : str
        The record's name in error messages.

    Calling it with the record's JSON bytes (what the service receives) decodes them with a
    reusable ``msgspec.json.Decoder``; with an already decoded object (a dict in tests and
    in-process callers, or the Struct itself) it converts it with :func:`msgspec.convert`,
    with the same rules. Unknown fields are ignored; missing fields and wrong types raise
    :class:`MalformedRecord` naming the field (``$.numeric.x[1]``).
    """

    def __init__(self, type_: type[T], what: str) -> None:
        self.type = type_
        self.what = what
        self._json = msgspec.json.Decoder(type_)

    def __call__(self, raw: Any) -> T:
        try:
            if isinstance(raw, (bytes, bytearray, memoryview)):
                return self._json.decode(raw)
            return msgspec.convert(raw, self.type)
        except msgspec.DecodeError as exc:  # also msgspec.ValidationError
            raise MalformedRecord(f"{self.what}: {exc}") from None


_STATS = RecordDecoder(StatsRecord, "stats record")


def empty_state() -> dict[str, Any]:
    return {
        "n": 0,
        "numeric": {},
        "categorical": {},
        "prediction": None,
        "segments": {},
        "fallback_levels": {},
        "n_dlq": 0,
        "imputed": 0,
        "event_time_min": None,
        "event_time_max": None,
        "records": 0,
    }


def _add(acc: list[int] | None, v: list[int], what: str) -> list[int]:
    if acc is None:
        return list(v)
    if len(acc) != len(v):
        raise MalformedRecord(f"{what}: {len(v)} bins, the window has {len(acc)}")
    return [a + b for a, b in zip(acc, v, strict=True)]


def validate_stats(raw: Any) -> StatsRecord:
    """Decode and check a stats record (:class:`~segstream.shared.contracts.StatsRecord`).

    Parameters
    ----------
    raw : bytes, dict or StatsRecord
        The record's JSON value, or the record already decoded.

    Raises
    ------
    MalformedRecord
        Naming the offending field: not a JSON object, a field missing or of the wrong type,
        a negative count, a bundle id that is not 64 lowercase hexadecimal characters.
    """
    rec = _STATS(raw)
    if not is_bundle_id(rec.bundle_id):  # the schema's pattern lets a trailing newline in
        raise MalformedRecord("stats record: bundle_id: not 64 lowercase hexadecimal characters")
    return rec


def check_bins(rec: StatsRecord, reference: DriftReference) -> None:
    """Check a stats record's bin counts against its bundle's reference.

    Raises
    ------
    MalformedRecord
        A feature the reference does not know, or a count list of the wrong length.
    """
    for sec, got, refs in (
        ("numeric", rec.numeric, reference.numeric),
        ("categorical", rec.categorical, reference.categorical),
    ):
        for name, counts in got.items():
            r = refs.get(name)
            if r is None:
                raise MalformedRecord(f"{sec}.{name}: not in the bundle's drift reference")
            if len(counts) != r.n_bins:
                raise MalformedRecord(
                    f"{sec}.{name}: {len(counts)} bins, the reference has {r.n_bins}"
                )
    pred = rec.prediction
    if (
        pred is not None
        and reference.prediction is not None
        and len(pred) != reference.prediction.n_bins
    ):
        raise MalformedRecord(
            f"prediction: {len(pred)} bins, the reference has {reference.prediction.n_bins}"
        )
    for sid, feats in rec.segments.items():
        try:
            seg_refs = reference.segments.get(int(sid))
        except ValueError:
            raise MalformedRecord(f"segments.{sid}: not a segment id") from None
        if seg_refs is None:
            raise MalformedRecord(f"segments.{sid}: no reference for this segment")
        for name, counts in feats.items():
            r = seg_refs.get(name)
            if r is None or len(counts) != r.n_bins:
                raise MalformedRecord(f"segments.{sid}.{name}: does not match the reference")


def add_stats(
    state: dict[str, Any], rec: StatsRecord, t_min: int | None, t_max: int | None
) -> dict[str, Any]:
    """Add one (validated) stats record to a window state; returns a new state.

    Raises
    ------
    MalformedRecord
        When bin counts disagree in length with the window's (another reference).
    """
    out = dict(state)
    out["n"] = state["n"] + rec.n_scored
    for sec, got in (("numeric", rec.numeric), ("categorical", rec.categorical)):
        acc = dict(state[sec])
        for k, c in got.items():
            acc[k] = _add(acc.get(k), c, f"{sec}.{k}")
        out[sec] = acc
    if rec.prediction is not None:
        out["prediction"] = _add(state["prediction"], rec.prediction, "prediction")
    segs = {s: dict(f) for s, f in state["segments"].items()}
    for s, feats in rec.segments.items():
        acc = segs.setdefault(str(s), {})
        for k, c in feats.items():
            acc[k] = _add(acc.get(k), c, f"segments.{s}.{k}")
    out["segments"] = segs
    fl = dict(state["fallback_levels"])
    for lvl, c in rec.fallback_levels.items():
        fl[str(lvl)] = fl.get(str(lvl), 0) + c
    out["fallback_levels"] = fl
    out["n_dlq"] = state["n_dlq"] + rec.n_dlq
    out["imputed"] = state["imputed"] + rec.imputed
    if t_min is not None:
        cur = state["event_time_min"]
        out["event_time_min"] = t_min if cur is None else min(cur, t_min)
    if t_max is not None:
        cur = state["event_time_max"]
        out["event_time_max"] = t_max if cur is None else max(cur, t_max)
    out["records"] = state["records"] + 1
    return out


@dataclasses.dataclass(frozen=True)
class DriftFinding:
    """PSI and JS distance of one feature (or the prediction) in one window (and segment)."""

    feature: str
    segment: int | None
    psi: float
    js_distance: float
    count: int
    severity: str | None  # None, "warning", "critical"
    threshold: float | None  # the level that was reached


def _judge(
    feature: str,
    segment: int | None,
    expected: np.ndarray,
    counts: list[int],
    levels: tuple[float, float],
    min_count: int,
) -> DriftFinding | None:
    n = int(sum(counts))
    if n < min_count or len(counts) != len(expected):
        return None
    value = psi(expected, np.asarray(counts, dtype=np.float64))
    js = js_distance(expected, np.asarray(counts, dtype=np.float64))
    warning, critical = levels
    severity, threshold = None, None
    if value >= critical:
        severity, threshold = "critical", critical
    elif value >= warning:
        severity, threshold = "warning", warning
    return DriftFinding(feature, segment, value, js, n, severity, threshold)


def drift_findings(
    state: Mapping[str, Any],
    reference: DriftReference,
    levels: Callable[[str], tuple[float, float]],
    *,
    min_count: int,
    segments: bool = True,
    exclude: frozenset[str] = frozenset(),
) -> list[DriftFinding]:
    """Every feature's (and the prediction's) PSI and JS distance for a closed window.

    Parameters
    ----------
    state : dict
        The window's drift state (module docstring).
    reference : DriftReference
        The frozen reference of the bundle that produced the counts.
    levels : callable
        ``levels(feature) -> (warning, critical)`` PSI levels.
    min_count : int
        Features / segments with fewer events are not judged (PSI of few events is noise:
        about ``(bins - 1) / n`` without any drift).
    segments : bool
        Also judge the large segments that have their own reference.
    exclude : set of str
        Features not judged.

    Returns
    -------
    list of DriftFinding
        Whole-model findings first (segment None), then per segment; only judged ones.
    """
    out: list[DriftFinding] = []
    for sec, refs in (("numeric", reference.numeric), ("categorical", reference.categorical)):
        for name, counts in state[sec].items():
            ref = refs.get(name)
            if ref is None or name in exclude:
                continue
            f = _judge(name, None, ref.expected, counts, levels(name), min_count)
            if f is not None:
                out.append(f)
    if state.get("prediction") is not None and reference.prediction is not None:
        f = _judge(
            "prediction",
            None,
            reference.prediction.expected,
            state["prediction"],
            levels("prediction"),
            min_count,
        )
        if f is not None:
            out.append(f)
    if segments:
        for s, feats in sorted(state["segments"].items(), key=lambda kv: int(kv[0])):
            seg_refs = reference.segments.get(int(s))
            if not seg_refs:
                continue
            for name, counts in feats.items():
                ref = seg_refs.get(name)
                if ref is None or name in exclude:
                    continue
                f = _judge(name, int(s), ref.expected, counts, levels(name), min_count)
                if f is not None:
                    out.append(f)
    return out
