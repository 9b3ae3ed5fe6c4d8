"""Outcome ↔ prediction join and per-window performance (pure; no Kafka).

Predictions and outcomes are keyed by ``event_id`` on co-partitioned topics; whichever of the
two arrives first waits in a table of pending entries (compact lists, see
:func:`pending_prediction` and :func:`pending_outcome`). When the other arrives the pair is
joined into the performance state of the window of the event's time::

    {"n": outcomes with a value, "n_nan": outcomes without one (cancelled / diverted),
     "sum_abs": sum of |y - prediction|, "covered": outcomes inside the interval,
     "mass_sum": sum of the interval masses, "bundles": {bundle_id: n},
     "segments": {segment: [n, sum_abs]}}

States of different partitions add up (:func:`merge`). A closed window is compared with the
test-time figures of the bundles that scored it (:func:`performance_findings`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import msgspec.structs
import numpy as np

from segstream.services.monitor.drift import MalformedRecord, RecordDecoder
from segstream.services.monitor.windows import parse_time_ms
from segstream.shared.contracts import Prediction, outcome_struct

# pending prediction: [partition, event_time_ms, prediction, low, high, segment, bundle_id, mass]
# pending outcome:    [partition, event_time_ms, y or None, outcome_time_ms]

#: Decodes a prediction record (JSON bytes or a decoded object) into a
#: :class:`~segstream.shared.contracts.Prediction`; raises :class:`MalformedRecord`.
decode_prediction: RecordDecoder[Prediction] = RecordDecoder(Prediction, "prediction")


@functools.lru_cache(maxsize=8)
def outcome_decoder(id_field: str, time_field: str, target: str) -> RecordDecoder[Any]:
    """The decoder of outcome records with the schema's field names
    (:func:`segstream.shared.contracts.outcome_struct`)."""
    return RecordDecoder(outcome_struct(id_field, time_field, target), "outcome")


#: :func:`parse_time_ms` with a cache: a micro-batch's records share few distinct event times
#: (flights leave on the minute; a replay sends thousands per scheduled minute), so each
#: distinct text is parsed once instead of once per record.
_time_ms = functools.lru_cache(maxsize=1 << 16)(parse_time_ms)


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def pending_prediction(rec: Prediction, partition: int) -> tuple[str, list[Any]]:
    """``(event_id, compact entry)`` of a decoded prediction record.

    Raises
    ------
    MalformedRecord
        ``event_time`` is null or not ISO 8601, or ``prediction`` is null (not finite).
    """
    t = _time_ms(rec.event_time)
    if t is None:
        raise MalformedRecord("prediction: event_time missing or not ISO 8601")
    pred = _finite(rec.prediction)
    if pred is None:
        raise MalformedRecord("prediction: prediction missing or not finite")
    lo, hi = rec.interval
    return rec.event_id, [
        partition,
        t,
        pred,
        _finite(lo),
        _finite(hi),
        rec.segment,
        rec.bundle_id,
        _finite(rec.interval_mass),
    ]


def pending_outcome(rec: Any, partition: int) -> tuple[str, list[Any]]:
    """``(event_id, compact entry)`` of a decoded outcome record (:func:`outcome_decoder`);
    a null target is kept as None.

    Raises
    ------
    MalformedRecord
        The event time is not ISO 8601.
    """
    eid, y, t_text, ot_text = msgspec.structs.astuple(rec)
    t = _time_ms(t_text)
    if t is None:
        raise MalformedRecord("outcome: event time not ISO 8601")
    ot = _time_ms(ot_text)
    return eid, [partition, t, _finite(y), ot if ot is not None else t]


def empty_state() -> dict[str, Any]:
    return {
        "n": 0,
        "n_nan": 0,
        "sum_abs": 0.0,
        "sum_sq": 0.0,
        "covered": 0,
        "n_interval": 0,
        "mass_sum": 0.0,
        "bundles": {},
        "segments": {},
    }


def add_pair(
    state: Mapping[str, Any], pred: list[Any], out: list[Any], track_segment: bool = True
) -> dict[str, Any]:
    """Add one joined (prediction, outcome) pair to a window's performance state.

    ``track_segment`` False leaves the per-segment sums alone (only the bundle's large
    segments, which have a test MAE to compare with, are tracked: the state stays small).
    """
    s = dict(state)
    y = out[2]
    if y is None:
        s["n_nan"] = state["n_nan"] + 1
        return s
    p, lo, hi, seg, bid, mass = pred[2], pred[3], pred[4], pred[5], pred[6], pred[7]
    err = abs(y - p)
    s["n"] = state["n"] + 1
    s["sum_abs"] = state["sum_abs"] + err
    s["sum_sq"] = state.get("sum_sq", 0.0) + err * err
    if lo is not None and hi is not None:
        s["n_interval"] = state["n_interval"] + 1
        s["covered"] = state["covered"] + int(lo <= y <= hi)
        s["mass_sum"] = state["mass_sum"] + (mass if mass is not None else 0.0)
    b = dict(state["bundles"])
    b[str(bid)] = b.get(str(bid), 0) + 1
    s["bundles"] = b
    segs = dict(state["segments"])
    if seg is not None and track_segment:
        n0, e0 = segs.get(str(seg), (0, 0.0))
        segs[str(seg)] = [n0 + 1, e0 + err]
    s["segments"] = segs
    return s


def _fold(start: float, values: np.ndarray) -> float:
    """``start + v0 + v1 + ...`` added left to right (a C-level fold, not a pairwise or
    compensated sum): the same float as adding the values one record at a time, so a
    window's sums do not depend on how its records were cut into micro-batches (two
    monitor instances, or a restart, give bit-identical states)."""
    return float(functools.reduce(operator.add, values.tolist(), float(start)))


def add_pairs(
    state: Mapping[str, Any],
    preds: Sequence[list[Any]],
    outs: Sequence[list[Any]],
    tracked: Sequence[bool],
) -> dict[str, Any]:
    """Add a micro-batch of joined pairs to a window's performance state with array sums.

    The batch form of :func:`add_pair` (the same state, up to the order of floating-point
    additions): the pairs' columns are gathered into numpy arrays once and every sum of the
    state is taken over the batch, so a batch of ``k`` pairs costs one state update instead
    of ``k`` copies of it.

    Parameters
    ----------
    state : mapping
        The window's performance state (:func:`empty_state` keys).
    preds, outs : sequences of length k
        Pending prediction and outcome entries (:func:`pending_prediction`,
        :func:`pending_outcome`), pair ``i`` = ``(preds[i], outs[i])``.
    tracked : sequence of k bool
        Whether pair ``i``'s segment has a test MAE (its per-segment sums are kept).

    Returns
    -------
    dict
        A new state; ``state`` is not changed.

    Examples
    --------
    >>> p = [0, 0, 10.0, 0.0, 20.0, 3, "b", 0.8]
    >>> st = add_pairs(empty_state(), [p, p, p], [[0, 0, 12.0, 0], [0, 0, None, 0],
    ...                [0, 0, 25.0, 0]], [True, True, True])
    >>> st["n"], st["n_nan"], st["sum_abs"], st["covered"], st["segments"]
    (2, 1, 17.0, 1, {'3': [2, 17.0]})
    """
    k = len(preds)
    if len(outs) != k or len(tracked) != k:
        raise ValueError(f"add_pairs: {k} predictions, {len(outs)} outcomes, {len(tracked)} flags")
    s = dict(state)
    if k == 0:
        return s
    nan = math.nan
    y = np.fromiter((nan if o[2] is None else o[2] for o in outs), np.float64, k)
    has = ~np.isnan(y)  # outcomes are finite or None (pending_outcome)
    n = int(has.sum())
    s["n_nan"] = state["n_nan"] + (k - n)
    if n == 0:
        return s
    pred = np.fromiter((q[2] for q in preds), np.float64, k)
    lo = np.fromiter((nan if q[3] is None else q[3] for q in preds), np.float64, k)
    hi = np.fromiter((nan if q[4] is None else q[4] for q in preds), np.float64, k)
    mass = np.fromiter((0.0 if q[7] is None else q[7] for q in preds), np.float64, k)
    err = np.abs(y - pred)
    e = err[has]
    s["n"] = state["n"] + n
    s["sum_abs"] = _fold(state["sum_abs"], e)
    s["sum_sq"] = _fold(state.get("sum_sq", 0.0), e * e)
    iv = has & ~np.isnan(lo) & ~np.isnan(hi)
    if iv.any():
        with np.errstate(invalid="ignore"):
            inside = iv & (lo <= y) & (y <= hi)
        s["n_interval"] = state["n_interval"] + int(iv.sum())
        s["covered"] = state["covered"] + int(inside.sum())
        s["mass_sum"] = _fold(state["mass_sum"], mass[iv])
    b = dict(state["bundles"])
    segs = dict(state["segments"])
    idx = np.flatnonzero(has).tolist()
    errs = err.tolist()
    for i in idx:
        q = preds[i]
        bid = str(q[6])
        b[bid] = b.get(bid, 0) + 1
        if tracked[i] and q[5] is not None:
            key = str(q[5])
            n0, e0 = segs.get(key, (0, 0.0))
            segs[key] = [n0 + 1, e0 + errs[i]]
    s["bundles"] = b
    s["segments"] = segs
    return s


def merge(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum of several performance states (e.g. one per partition)."""
    out = empty_state()
    for st in states:
        for k in ("n", "n_nan", "sum_abs", "sum_sq", "covered", "n_interval", "mass_sum"):
            out[k] += st.get(k, 0)
        for b, c in st["bundles"].items():
            out["bundles"][b] = out["bundles"].get(b, 0) + c
        for s, (n, e) in st["segments"].items():
            n0, e0 = out["segments"].get(s, (0, 0.0))
            out["segments"][s] = [n0 + n, e0 + e]
    return out


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Test-time figures of one bundle (``manifest.metrics["test"]``)."""

    mae: float | None
    coverage: float | None
    mass: float | None
    segment_mae: Mapping[str, float]

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> Baseline:
        test = (metrics or {}).get("test", {}) or {}
        mae = (test.get("partitioned") or {}).get("mae")
        iv = test.get("interval") or {}
        seg = test.get("segment_mae") or {}
        if isinstance(seg, list):  # [{segment, mae, ...}] or [[segment, mae], ...]
            items = {}
            for row in seg:
                if isinstance(row, dict) and "segment" in row and "mae" in row:
                    items[str(row["segment"])] = float(row["mae"])
                elif isinstance(row, (list, tuple)) and len(row) >= 2:
                    items[str(row[0])] = float(row[1])
            seg = items
        elif isinstance(seg, dict):
            seg = {
                str(k): float(v["mae"] if isinstance(v, dict) else v)
                for k, v in seg.items()
                if v is not None and (not isinstance(v, dict) or v.get("mae") is not None)
            }
        return cls(
            float(mae) if mae is not None else None,
            float(iv["coverage"]) if iv.get("coverage") is not None else None,
            float(iv["mass"]) if iv.get("mass") is not None else None,
            seg,
        )


@dataclasses.dataclass(frozen=True)
class PerformanceFinding:
    """One performance check of a closed window (whole model when ``segment`` is None)."""

    statistic: str  # "mae_ratio" or "interval_coverage"
    segment: str | None
    value: float
    count: int
    severity: str | None
    threshold: float | None
    mae: float | None = None
    baseline_mae: float | None = None
    band: tuple[float, float] | None = None
    ci: tuple[float, float] | None = None


#: Performance statistics judged per model family (the hook for classifiers and counts).
#: Only the regression set exists: a window's MAE against the test MAE and its interval
#: coverage. A family without an entry here is not judged (no findings); the GLM work adds
#: e.g. ``"binomial": ("log_loss_ratio", "brier", "calibration")`` with its own sums in
#: :func:`add_pair` and checks in :func:`performance_findings`.
FAMILY_STATISTICS: dict[str, tuple[str, ...]] = {
    "gaussian": ("mae_ratio", "interval_coverage"),
}


def performance_findings(
    state: Mapping[str, Any],
    baselines: Mapping[str, Baseline],
    *,
    ratio_warning: float,
    ratio_critical: float,
    min_count: int,
    coverage_band: float,
    family: str = "gaussian",
) -> list[PerformanceFinding]:
    """MAE ratio and interval coverage of a closed window against the bundles' test figures.

    The baseline MAE of a window scored by several bundles is their test MAEs weighted by the
    window's outcomes per bundle; bundles without figures are left out of the weights. The
    coverage band is the nominal interval mass ± ``coverage_band``.

    ``family`` selects the statistics (:data:`FAMILY_STATISTICS`); a family without an
    entry gives no findings.

    Returns
    -------
    list of PerformanceFinding
        Whole-model MAE ratio and coverage (when the window has ``min_count`` outcomes and a
        baseline exists), then per-segment MAE ratios for segments with a test MAE.
    """
    out: list[PerformanceFinding] = []
    n = state["n"]
    judged = FAMILY_STATISTICS.get(family, ())
    if n < min_count or n == 0 or not judged:
        return out
    w_sum, w_mae = 0, 0.0
    for b, c in state["bundles"].items():
        base = baselines.get(b)
        if base is not None and base.mae:
            w_sum += c
            w_mae += c * base.mae
    mae = state["sum_abs"] / n

    def ratio_finding(
        seg: str | None, m: float, base_mae: float, count: int, ci: tuple[float, float] | None
    ) -> None:
        r = m / base_mae
        sev, thr = None, None
        if r >= ratio_critical:
            sev, thr = "critical", ratio_critical
        elif r >= ratio_warning:
            sev, thr = "warning", ratio_warning
        ci_r = (ci[0] / base_mae, ci[1] / base_mae) if ci is not None else None
        out.append(PerformanceFinding("mae_ratio", seg, r, count, sev, thr, m, base_mae, ci=ci_r))

    if w_sum:
        ratio_finding(None, mae, w_mae / w_sum, n, mean_ci(mae, state.get("sum_sq"), n))
    if state["n_interval"] >= min_count:
        cov = state["covered"] / state["n_interval"]
        mass = state["mass_sum"] / state["n_interval"]
        lo, hi = max(0.0, mass - coverage_band), min(1.0, mass + coverage_band)
        sev = "warning" if not lo <= cov <= hi else None
        thr = (lo if cov < lo else hi) if sev else None
        out.append(
            PerformanceFinding(
                "interval_coverage",
                None,
                cov,
                state["n_interval"],
                sev,
                thr,
                band=(lo, hi),
                ci=wilson_ci(state["covered"], state["n_interval"]),
            )
        )
    if len(state["bundles"]) == 1:  # segment ids are per bundle
        base = baselines.get(next(iter(state["bundles"])))
        if base is not None:
            for seg, (cnt, err) in sorted(state["segments"].items()):
                bm = base.segment_mae.get(seg)
                if bm and cnt >= min_count:
                    ratio_finding(seg, err / cnt, bm, cnt, None)
    return [f for f in out if f.statistic in judged]


Z95 = 1.959963984540054  # standard normal 0.975 quantile


def mean_ci(mean: float, sum_sq: float | None, n: int) -> tuple[float, float] | None:
    """Normal-approximation 95 % confidence interval of a mean absolute error.

    Parameters
    ----------
    mean : float
        The MAE (target units).
    sum_sq : float or None
        Sum of the squared absolute errors (None: a state from before it was kept).
    n : int
        Number of errors.

    Returns
    -------
    (low, high) or None
        None when ``sum_sq`` is None or ``n < 2``.

    Examples
    --------
    >>> mean_ci(2.0, 5.0 * 100, 100)  # errors with mean 2, mean square 5: sd 1 (n-1: 1.005)
    (1.8030162078991123, 2.1969837921008875)
    """
    if sum_sq is None or n < 2:
        return None
    var = max(0.0, sum_sq / n - mean * mean) * n / (n - 1)
    half = Z95 * math.sqrt(var / n)
    return (mean - half, mean + half)


def wilson_ci(k: int, n: int) -> tuple[float, float] | None:
    """Wilson score 95 % interval of a proportion ``k / n`` (interval coverage).

    References
    ----------
    E. B. Wilson (1927), "Probable inference, the law of succession, and statistical
    inference", JASA 22(158).

    Examples
    --------
    >>> lo, hi = wilson_ci(80, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.7112, 0.8666)
    """
    if n <= 0:
        return None
    p = k / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def in_sample(event_id: str, rate: float) -> bool:
    """Whether ``event_id`` is in the join sample of ``rate`` (0 < rate <= 1).

    Deterministic: a hash of the id (BLAKE2b, 64 bits) decides, so every monitor instance,
    restart and replay samples the same events, and a prediction and its outcome are always
    sampled together.

    Examples
    --------
    >>> in_sample("any id", 1.0)
    True
    >>> in_sample("e1", 0.5) == in_sample("e1", 0.5)
    True
    """
    if rate >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")
    return h < rate * 18446744073709551616.0  # 2**64
