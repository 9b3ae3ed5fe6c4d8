"""The monitor's state machine over plain mutable mappings (pure; no Kafka, no faust).

:class:`MonitorCore` receives stats, prediction and outcome records and timer ticks, keeps its
state in five mappings (faust tables in the service, dicts in tests) and returns the alerts to
send. Every write goes to an entry *owned by the partition of the record being processed*
(the partition is part of the entry), because a faust table writes each change to the
changelog partition of the current event:

``drift``      ``"<window start ms>|<bundle_id>"`` → drift state (:mod:`.drift`) + ``p``,
               ``applied`` (largest stats offset applied: a re-delivered record is skipped)
``newkeys``    ``"<window start ms>"`` → ``{"p", "applied", "keys": {key: [count, first ms]},
               "alerted": [key, ...], "other": n}``
``pending_p``  ``event_id`` → pending prediction (:func:`.performance.pending_prediction`)
``pending_o``  ``event_id`` → pending outcome (:func:`.performance.pending_outcome`)
``perf``       ``"<window start ms>|<partition>"`` → performance state (:mod:`.performance`)
               + ``applied`` offsets of the join that last changed it
``meta``       ``"drift_closed|<p>"``, ``"newkeys_closed|<p>"`` (window starts below this are
               closed), ``"perf_closed"`` (written from partition 0 only)

Clocks (event time, epoch ms; in memory, re-learned after a restart from new records), each a
:class:`.windows.Watermark` over partitions: the **drift watermark** over the events
partitions named in stats records (``partition_time_max``); the **prediction clock** over the
predictions partitions (event time) and the **outcome clock** over the outcomes partitions
(``outcome_time``). Rules:

* a drift / new-key window closes when the drift watermark passes ``end + lateness``;
* a pending prediction of partition ``p`` expires when partition ``p``'s outcome clock passes
  its event time + ``join_expiry``; a pending outcome is *unmatched* when partition ``p``'s
  prediction clock passes the same;
* a performance window closes (on partition 0's tick, summing every partition's state) when
  the outcome clock passes ``end + join_expiry`` and the prediction clock ``end + lateness``;
* without any input for ``idle_close_s`` (wall clock) every open window closes.

A record for a window that has closed is *late*: counted, not applied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, MutableMapping
from typing import Any

from segstream.services.monitor import drift as drift_mod
from segstream.services.monitor import performance as perf_mod
from segstream.services.monitor.drift import MalformedRecord
from segstream.services.monitor.windows import Watermark, iso_window, parse_time_ms, window_start
from segstream.shared.alerts import Alert, alert_record, iso_ms
from segstream.shared.contracts import StatsRecord
from segstream.shared.drift import DriftReference
from segstream.shared.settings import MonitorSettings

logger = logging.getLogger(__name__)

S = 1000
#: Pending entries of a partition are scanned for expiry at most this often (wall seconds).
EXPIRE_EVERY_S = 5.0
Table = MutableMapping[str, Any]
#: ``reference_for(bundle_id) -> (DriftReference, Baseline) or None`` (cached by the caller).
ReferenceLookup = Callable[[str], "tuple[DriftReference, perf_mod.Baseline] | None"]


class Counters:
    """Counts of what the core did (tests read them); forwarded to ``sink`` (metrics)."""

    def __init__(self, sink: Any = None) -> None:
        self.sink = sink
        self.records: dict[tuple[str, str], int] = {}
        self.join: dict[str, int] = {}
        self.windows_closed: dict[str, int] = {}

    def record(self, source: str, result: str, n: int = 1) -> None:
        self.records[(source, result)] = self.records.get((source, result), 0) + n
        if self.sink is not None:
            self.sink.record(source, result, n)

    def joined(self, result: str, n: int = 1) -> None:
        self.join[result] = self.join.get(result, 0) + n
        if self.sink is not None:
            self.sink.joined(result, n)

    def closed(self, kind: str) -> None:
        self.windows_closed[kind] = self.windows_closed.get(kind, 0) + 1
        if self.sink is not None:
            self.sink.closed(kind)


class MonitorCore:
    """Windowed drift, new-segment and performance monitoring of one model.

    Parameters
    ----------
    settings : MonitorSettings
    model : str
        Records of other models are counted as ``foreign`` and skipped.
    id_field, time_field, target : str
        Field names of the outcome records (the schema's,
        :func:`segstream.shared.contracts.outcome_struct`).
    reference_for : callable
        ``bundle_id -> (DriftReference, Baseline)`` or None when the bundle is unavailable.
    partitions : int
        Partitions of the events, predictions and outcomes topics (the watermarks wait for
        all of them, see :class:`.windows.Watermark`).
    tables : dict of str to mutable mapping
        ``drift``, ``newkeys``, ``pending_p``, ``pending_o``, ``perf``, ``meta``.
    observer : object, optional
        Metrics sink: ``on_drift(findings, window_start_ms)``,
        ``on_performance(findings, state, window_start_ms)``, ``on_alert(alert)``,
        ``record(source, result, n)``, ``joined(result, n)``, ``closed(kind)``.
    """

    def __init__(
        self,
        settings: MonitorSettings,
        *,
        model: str,
        id_field: str,
        time_field: str,
        target: str,
        reference_for: ReferenceLookup,
        tables: dict[str, Table],
        partitions: int = 1,
        observer: Any = None,
    ) -> None:
        self.s = settings
        self.model = model
        self.id_field, self.time_field, self.target = id_field, time_field, target
        self._decode_outcome = perf_mod.outcome_decoder(id_field, time_field, target)
        self.reference_for = reference_for
        self.t = tables
        self.observer = observer
        self.counters = Counters(observer)
        self.win_ms = settings.window_s * S
        self.nk_ms = (settings.new_segment_window_s or settings.window_s) * S
        self.late_ms = settings.lateness_s * S
        self.expiry_ms = settings.join_expiry_s * S
        self.watermark = Watermark(settings.source_idle_s, partitions)
        self.pred_clocks = Watermark(settings.source_idle_s, partitions)
        self.out_clocks = Watermark(settings.source_idle_s, partitions)
        self.last_input_s: float | None = None
        self._expired_at: dict[int, float] = {}
        self.flushed = False

    # ------------------------------------------------------------------ helpers
    def _meta(self, key: str) -> int | None:
        v = self.t["meta"].get(key)
        return int(v) if v is not None else None

    def _idle(self, now_s: float) -> bool:
        return (
            self.s.idle_close_s is not None
            and self.last_input_s is not None
            and now_s - self.last_input_s >= self.s.idle_close_s
        )

    def _input(self, now_s: float) -> None:
        self.last_input_s = now_s
        self.flushed = False

    def _emit(self, alerts: list[Alert], alert: Alert) -> None:
        alerts.append(alert)
        if self.observer is not None:
            self.observer.on_alert(alert)

    # ------------------------------------------------------------------ stats
    def on_stats(self, raw: Any, partition: int, offset: int, now_s: float) -> list[Alert]:
        """Apply one stats record: its JSON value (bytes), or the record already decoded (a
        dict or :class:`~segstream.shared.contracts.StatsRecord`). A record that does not
        decode as a ``StatsRecord`` is counted as malformed and skipped.

        Returns the alerts to send (new-segment alerts, and drift alerts of windows this
        record's watermark advance closed).
        """
        self._input(now_s)
        try:
            rec = drift_mod.validate_stats(raw)
        except MalformedRecord as exc:
            logger.warning(
                "malformed stats record at partition %d offset %d: %s", partition, offset, exc
            )
            self.counters.record("stats", "malformed")
            return []
        if rec.model != self.model:
            self.counters.record("stats", "foreign")
            return []
        ref = self.reference_for(rec.bundle_id)
        if ref is not None:
            try:
                drift_mod.check_bins(rec, ref[0])
            except MalformedRecord as exc:
                logger.warning(
                    "stats record at partition %d offset %d does not match bundle %s: %s",
                    partition,
                    offset,
                    rec.bundle_id[:12],
                    exc,
                )
                self.counters.record("stats", "malformed")
                return []
        t_min = parse_time_ms(rec.event_time_min)
        t_max = parse_time_ms(rec.event_time_max)
        anchor = parse_time_ms(rec.slice_start) or t_min
        if rec.partition_time_max:  # per source partition (in order within each)
            for p, t in rec.partition_time_max.items():
                self.watermark.observe(f"p{p}", parse_time_ms(t), now_s)
        else:  # no valid event time in the batch: the worker is alive
            self.watermark.observe(f"w{rec.worker}", t_max, now_s)
        alerts: list[Alert] = []
        if anchor is None:  # no valid event time (a batch of DLQ records only)
            self.counters.record("stats", "untimed")
            return self._close_drift(partition, now_s)
        w = window_start(anchor, self.win_ms)
        closed = self._meta(f"drift_closed|{partition}")
        if closed is not None and w < closed:
            self.counters.record("stats", "late")
        else:
            key = f"{w}|{rec.bundle_id}"
            cur = self.t["drift"].get(key)
            if cur is not None and offset <= cur["applied"]:
                self.counters.record("stats", "duplicate")
            else:
                state = cur or {**drift_mod.empty_state(), "p": partition, "applied": -1}
                try:
                    new = drift_mod.add_stats(state, rec, t_min, t_max)
                except MalformedRecord as exc:
                    logger.warning(
                        "stats record at partition %d offset %d does not fit its window: %s",
                        partition,
                        offset,
                        exc,
                    )
                    self.counters.record("stats", "malformed")
                    return self._close_drift(partition, now_s)
                new["applied"] = offset
                self.t["drift"][key] = new
                self.counters.record("stats", "ok")
            alerts += self._new_keys(
                rec, w, t_min if t_min is not None else anchor, partition, offset
            )
        alerts += self._close_drift(partition, now_s)
        return alerts

    def _new_keys(
        self, rec: StatsRecord, w: int, seen_ms: int, partition: int, offset: int
    ) -> list[Alert]:
        """Count unknown keys; ``seen_ms`` = earliest event time of the record (first-seen)."""
        uk = rec.unknown_keys
        other = rec.unknown_keys_other
        if not uk and not other:
            return []
        nw = window_start(w, self.nk_ms)
        closed = self._meta(f"newkeys_closed|{partition}")
        if closed is not None and nw < closed:
            return []
        key = str(nw)
        cur = self.t["newkeys"].get(key)
        if cur is not None and offset <= cur["applied"]:
            return []
        st = cur or {"p": partition, "applied": -1, "keys": {}, "alerted": [], "other": 0}
        keys = dict(st["keys"])
        alerted = list(st["alerted"])
        alerts: list[Alert] = []
        ws, we = iso_window(nw, self.nk_ms)
        for k, c in uk.items():
            n0, first = keys.get(k, (0, seen_ms))
            n1 = n0 + int(c)
            keys[k] = [n1, min(first, seen_ms)]
            if n1 >= self.s.new_segment_threshold and k not in alerted:
                alerted.append(k)
                self._emit(
                    alerts,
                    alert_record(
                        type_="new_segment",
                        severity="warning",
                        model=self.model,
                        bundle_id=rec.bundle_id,
                        feature=None,
                        segment=k,
                        statistic="count",
                        value=float(n1),
                        threshold=float(self.s.new_segment_threshold),
                        window_start=ws,
                        window_end=we,
                        count=n1,
                        first_seen=iso_ms(keys[k][1]),
                    ),
                )
        self.t["newkeys"][key] = {
            "p": partition,
            "applied": offset,
            "keys": keys,
            "alerted": alerted,
            "other": st["other"] + other,
        }
        return alerts

    def _close_drift(self, partition: int, now_s: float) -> list[Alert]:
        wm = self.watermark.value(now_s)
        idle = self._idle(now_s)
        alerts: list[Alert] = []
        due = sorted(
            k
            for k, v in self._scan("drift")
            if v["p"] == partition
            and (
                idle
                or (wm is not None and wm >= int(k.split("|", 1)[0]) + self.win_ms + self.late_ms)
            )
        )
        for key in due:
            state = self.t["drift"][key]
            w_s, bundle = key.split("|", 1)
            w = int(w_s)
            alerts += self._judge_drift(state, w, bundle)
            del self.t["drift"][key]
            self.counters.closed("drift")
            cur = self._meta(f"drift_closed|{partition}")
            if cur is None or w + self.win_ms > cur:
                self.t["meta"][f"drift_closed|{partition}"] = w + self.win_ms
        for key in sorted(
            k
            for k, v in self._scan("newkeys")
            if v["p"] == partition
            and (idle or (wm is not None and wm >= int(k) + self.nk_ms + self.late_ms))
        ):
            del self.t["newkeys"][key]
            self.counters.closed("new_segment")
            end = int(key) + self.nk_ms
            cur = self._meta(f"newkeys_closed|{partition}")
            if cur is None or end > cur:
                self.t["meta"][f"newkeys_closed|{partition}"] = end
        return alerts

    def _judge_drift(self, state: dict[str, Any], w: int, bundle: str) -> list[Alert]:
        ref = self.reference_for(bundle)
        if ref is None:
            logger.error(
                "no drift reference for bundle %s: window %s not judged", bundle[:12], iso_ms(w)
            )
            self.counters.record("stats", "no_reference", state["records"])
            return []
        findings = drift_mod.drift_findings(
            state,
            ref[0],
            lambda f: self.s.threshold(f, ref[0]),
            min_count=self.s.drift_min_count,
            segments=self.s.drift_segments,
            exclude=frozenset(self.s.drift_exclude),
        )
        if self.observer is not None:
            self.observer.on_drift(findings, w)
        ws, we = iso_window(w, self.win_ms)
        alerts: list[Alert] = []
        for f in findings:
            if f.severity is None:
                continue
            self._emit(
                alerts,
                alert_record(
                    type_="drift",
                    severity=f.severity,
                    model=self.model,
                    bundle_id=bundle,
                    feature=f.feature,
                    segment=f.segment,
                    statistic="psi",
                    value=round(f.psi, 6),
                    threshold=f.threshold,
                    window_start=ws,
                    window_end=we,
                    count=f.count,
                    js_distance=round(f.js_distance, 6),
                ),
            )
        return alerts

    # ------------------------------------------------------------------ join
    def _perf_closed(self) -> int | None:
        return self._meta("perf_closed")

    def _tracked(self, bundle: Any, segment: Any) -> bool:
        """Whether ``segment`` of ``bundle`` has a test MAE (only those are tracked)."""
        if segment is None or bundle is None:
            return False
        ref = self.reference_for(str(bundle))
        return ref is not None and str(segment) in ref[1].segment_mae

    def _join(
        self,
        event_id: str,
        pred: list[Any],
        out: list[Any],
        partition: int,
        source: str,
        offset: int,
    ) -> None:
        w = window_start(pred[1], self.win_ms)
        closed = self._perf_closed()
        if closed is not None and w < closed:
            self.counters.joined("late")
        else:
            key = f"{w}|{partition}"
            cur = self.t["perf"].get(key)
            if cur is not None and offset <= cur["applied"].get(source, -1):
                self.counters.joined("duplicate")
            else:
                st = cur or {**perf_mod.empty_state(), "applied": {}}
                new = perf_mod.add_pair(st, pred, out, self._tracked(pred[6], pred[5]))
                new["applied"] = {**st["applied"], source: offset}
                self.t["perf"][key] = new  # before the deletes: a replay finds `applied`
                self.counters.joined("joined_nan" if out[2] is None else "joined")
        self.t["pending_p"].pop(event_id, None)
        self.t["pending_o"].pop(event_id, None)

    def on_prediction(self, raw: Any, partition: int, offset: int, now_s: float) -> None:
        """Apply one prediction record: its JSON value (bytes) or the record already decoded
        (a dict or :class:`~segstream.shared.contracts.Prediction`)."""
        self._input(now_s)
        try:
            rec = perf_mod.decode_prediction(raw)
            eid, entry = perf_mod.pending_prediction(rec, partition)
        except MalformedRecord as exc:
            logger.warning(
                "malformed prediction at partition %d offset %d: %s", partition, offset, exc
            )
            self.counters.record("predictions", "malformed")
            return
        if rec.model != self.model:
            self.counters.record("predictions", "foreign")
            return
        self.counters.record("predictions", "ok")
        self.pred_clocks.observe(partition, entry[1], now_s)
        out = self.t["pending_o"].get(eid)
        if out is not None:
            self._join(eid, entry, out, partition, "predictions", offset)
        else:
            self.t["pending_p"][eid] = entry

    def on_outcome(self, raw: Any, partition: int, offset: int, now_s: float) -> None:
        """Apply one outcome record (its JSON value, or the record already decoded); a null
        target is a NaN outcome."""
        self._input(now_s)
        try:
            eid, entry = perf_mod.pending_outcome(self._decode_outcome(raw), partition)
        except MalformedRecord as exc:
            logger.warning(
                "malformed outcome at partition %d offset %d: %s", partition, offset, exc
            )
            self.counters.record("outcomes", "malformed")
            return
        self.counters.record("outcomes", "ok")
        self.out_clocks.observe(partition, entry[3], now_s)
        pred = self.t["pending_p"].get(eid)
        if pred is not None:
            self._join(eid, pred, entry, partition, "outcomes", offset)
        else:
            self.t["pending_o"][eid] = entry

    # ------------------------------------------------------------------ ticks
    def on_tick(self, partition: int, now_s: float) -> list[Alert]:
        """Timer work for ``partition``: close due windows, expire pending entries."""
        alerts = self._close_drift(partition, now_s)
        self._expire(partition, now_s)
        if partition == 0:
            alerts += self._close_performance(now_s)
        self._gc_perf(partition)
        return alerts

    def _scan(self, name: str) -> Any:
        """Items of a table for reading: a faust table's store directly (its ``items()`` goes
        through ``__getitem__`` per key, far slower on tables of many thousand entries)."""
        tbl = self.t[name]
        return getattr(tbl, "data", tbl).items()

    def _expire(self, partition: int, now_s: float) -> None:
        last = self._expired_at.get(partition)
        if last is not None and now_s - last < EXPIRE_EVERY_S:
            return
        self._expired_at[partition] = now_s
        out_clock = self.out_clocks.source_max(partition)
        pred_clock = self.pred_clocks.source_max(partition)
        if out_clock is not None:
            limit = out_clock - self.expiry_ms
            gone = [k for k, v in self._scan("pending_p") if v[0] == partition and v[1] < limit]
            for k in gone:
                del self.t["pending_p"][k]
            if gone:
                self.counters.joined("expired_prediction", len(gone))
        if pred_clock is not None:
            limit = pred_clock - self.expiry_ms
            gone = [k for k, v in self._scan("pending_o") if v[0] == partition and v[1] < limit]
            for k in gone:
                del self.t["pending_o"][k]
            if gone:
                self.counters.joined("unmatched_outcome", len(gone))

    def _close_performance(self, now_s: float) -> list[Alert]:
        idle = self._idle(now_s)
        out_clock, pred_clock = self.out_clocks.value(now_s), self.pred_clocks.value(now_s)
        by_window: dict[int, list[dict[str, Any]]] = {}
        for k, v in self._scan("perf"):
            by_window.setdefault(int(k.split("|", 1)[0]), []).append(v)
        closed = self._perf_closed()
        alerts: list[Alert] = []
        for w in sorted(by_window):
            if closed is not None and w < closed:
                continue
            end = w + self.win_ms
            ready = idle or (
                out_clock is not None
                and out_clock >= end + self.expiry_ms
                and pred_clock is not None
                and pred_clock >= end + self.late_ms
            )
            if not ready:
                break  # windows close in order
            alerts += self._judge_performance(perf_mod.merge(by_window[w]), w)
            self.t["meta"]["perf_closed"] = end
            closed = end
            self.counters.closed("performance")
        return alerts

    def _gc_perf(self, partition: int) -> None:
        closed = self._perf_closed()
        if closed is None:
            return
        for k in [
            k
            for k, _ in self._scan("perf")
            if int(k.split("|")[1]) == partition and int(k.split("|")[0]) < closed
        ]:
            del self.t["perf"][k]

    def _judge_performance(self, state: dict[str, Any], w: int) -> list[Alert]:
        baselines = {}
        for b in state["bundles"]:
            ref = self.reference_for(b)
            if ref is not None:
                baselines[b] = ref[1]
        findings = perf_mod.performance_findings(
            state,
            baselines,
            ratio_warning=self.s.mae_ratio_warning,
            ratio_critical=self.s.mae_ratio_critical,
            min_count=self.s.performance_min_count,
            coverage_band=self.s.coverage_band,
        )
        if self.observer is not None:
            self.observer.on_performance(findings, state, w)
        ws, we = iso_window(w, self.win_ms)
        bundle = max(state["bundles"], key=state["bundles"].get) if state["bundles"] else None
        alerts: list[Alert] = []
        for f in findings:
            if f.severity is None:
                continue
            extra: dict[str, Any] = {}
            if f.mae is not None:
                extra.update(mae=round(f.mae, 4), baseline_mae=round(f.baseline_mae, 4))
            if f.band is not None:
                extra["band"] = (round(f.band[0], 4), round(f.band[1], 4))
            value = round(f.value, 6) if math.isfinite(f.value) else None
            self._emit(
                alerts,
                alert_record(
                    type_="performance",
                    severity=f.severity,
                    model=self.model,
                    bundle_id=bundle,
                    feature=None,
                    segment=int(f.segment) if f.segment is not None else None,
                    statistic=f.statistic,
                    value=value,
                    threshold=f.threshold,
                    window_start=ws,
                    window_end=we,
                    count=f.count,
                    n_nan=state["n_nan"],
                    **extra,
                ),
            )
        return alerts
