"""The monitor's state machine over plain mutable mappings (pure; no Kafka, no faust).

:class:`MonitorCore` receives stats, prediction and outcome records and timer ticks, keeps its
state in five mappings (faust tables in the service, dicts in tests) and returns the alerts to
send. Every write goes to an entry *owned by the partition of the record being processed*
(the partition is part of the entry), because a faust table writes each change to the
changelog partition of the current event:

``drift``      ``"<window start ms>|<bundle_id>"`` → drift state (:mod:`.drift`) + ``p``,
               ``applied`` (largest stats offset applied: a re-delivered record is skipped)
``newkeys``    ``"<bundle_id>|<unknown key>"`` → one entry per key: counts per drift window over
               the lookback, first seen, alerted (:mod:`.newkeys`)
``pending_p``  ``event_id`` → pending prediction (:func:`.performance.pending_prediction`)
``pending_o``  ``event_id`` → pending outcome (:func:`.performance.pending_outcome`)
``perf``       ``"<window start ms>|<partition>"`` → performance state (:mod:`.performance`)
               + ``applied`` offsets of the join that last changed it
``perfmerge``  ``"w|<window start ms>"`` → ``{"parts": {partition: state}}`` and
               ``"progress|<p>"`` → event time before which partition ``p`` is final (written
               by the merging owner, partition 0 of the partials topic)
``meta``       ``"drift_closed|<p>"``, ``"perf_closed|<p>"`` (window starts below this are
               closed / sent to the merge), ``"perf_closed"`` (judged; the merging owner)

Clocks (event time, epoch ms; in memory, re-learned after a restart from new records), each a
:class:`.windows.Watermark` over partitions: the **drift watermark** over the events
partitions named in stats records (``partition_time_max``); the **prediction clock** over the
predictions partitions (event time) and the **outcome clock** over the outcomes partitions
(``outcome_time``). Rules:

* a drift window closes when the drift watermark passes ``end + lateness``; an unknown key's
  entry is forgotten when it passes the key's last window + ``new_segment_lookback_s``;
* a pending prediction of partition ``p`` expires when partition ``p``'s outcome clock passes
  its event time + ``join_expiry`` (its own prediction clock once partition ``p`` of the
  outcomes has been silent for ``join_idle_s``, wall clock: outcomes that stop do not keep
  predictions forever; long, because one agent can starve the other for a while when the
  monitor catches up); a pending outcome is *unmatched* by the mirror rule;
* at most ``pending_max`` pending predictions (and outcomes) per partition: beyond it the
  oldest by event time are evicted and counted (:class:`PendingBound`), and at most
  ``new_segment_max_keys`` unknown keys are tracked;
* partition ``p``'s part of a performance window is final when ``p``'s outcome clock passes
  ``end + join_expiry`` and its prediction clock ``end + lateness`` (a silent partition
  follows the instance's watermark); its tick then sends the part and its progress to the
  merge (:meth:`MonitorCore.take_partials`), and the merging owner judges the window once every
  partition's progress has passed its end (:meth:`MonitorCore.on_partial`) — so monitor
  instances can split the partitions;
* without any input for ``idle_close_s`` (wall clock) every open window closes.

A record for a window that has closed is *late*: counted, not applied.

Event-time sanity: every prediction's and outcome's event time is judged against the robust
event-time watermark of its stream and partition
(:class:`segstream.shared.event_time.EventTimeWatermark`, ``monitor.max_future_s`` /
``max_past_s``); an out-of-range prediction or outcome (or an outcome time before its event
time or more than ``max_future_s`` after it) is counted (``result="out_of_range"``) and
dropped. The drift watermark comes from the stats records, whose times the worker has judged
with the same watermark (out-of-range events go to its DLQ, not into the stats). One event
dated far in the future therefore cannot close every window.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, MutableMapping
from typing import Any

import numpy as np

from segstream.services.monitor import drift as drift_mod
from segstream.services.monitor import performance as perf_mod
from segstream.services.monitor.drift import MalformedRecord
from segstream.services.monitor.newkeys import NewKeyCounter
from segstream.services.monitor.windows import Watermark, iso_window, parse_time_ms, window_start
from segstream.shared.alerts import Alert, alert_record, iso_ms
from segstream.shared.contracts import StatsRecord
from segstream.shared.drift import DriftReference
from segstream.shared.event_time import IN_RANGE, EventTimeWatermark
from segstream.shared.settings import MonitorSettings

logger = logging.getLogger(__name__)

S = 1000
#: Progress of a partition that has gone idle (``idle_close_s``): every window is final.
FOREVER_MS = 2**62
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
        self.overflows: dict[str, int] = {}

    def record(self, source: str, result: str, n: int = 1) -> None:
        self.records[(source, result)] = self.records.get((source, result), 0) + n
        if self.sink is not None:
            self.sink.record(source, result, n)

    def joined(self, result: str, n: int = 1) -> None:
        self.join[result] = self.join.get(result, 0) + n
        if self.sink is not None:
            self.sink.joined(result, n)

    def closed(self, kind: str, n: int = 1) -> None:
        self.windows_closed[kind] = self.windows_closed.get(kind, 0) + n
        if self.sink is not None:
            self.sink.closed(kind, n)

    def overflow(self, state: str, n: int = 1) -> None:
        """``n`` entries (events) of ``state`` evicted or not tracked because of a bound."""
        self.overflows[state] = self.overflows.get(state, 0) + n
        if self.sink is not None:
            self.sink.overflow(state, n)


class PendingBound:
    """At most ``limit`` entries per partition in a pending join table (oldest evicted).

    Entries are ``[partition, event time ms, ...]`` lists keyed by event id. A min-heap per
    partition of ``(event time, event id)`` finds the oldest; heap items of entries that
    left the table (joined, expired) are skipped when popped and dropped when the heap grows
    past twice the entries. Built from one scan of the table on first use (after a restart:
    from the recovered table).

    Parameters
    ----------
    table : mutable mapping
    limit : int
    scan : callable
        ``scan() -> iterable of (event id, entry)``.
    on_evict : callable
        Called with the number of entries evicted.
    """

    def __init__(
        self, table: Table, limit: int, scan: Callable[[], Any], on_evict: Callable[[int], None]
    ) -> None:
        self.table = table
        self.limit = limit
        self._scan = scan
        self._on_evict = on_evict
        self._heaps: dict[int, list[tuple[int, str]]] | None = None
        self._sizes: dict[int, int] = {}

    def _load(self) -> dict[int, list[tuple[int, str]]]:
        if self._heaps is None:
            heaps: dict[int, list[tuple[int, str]]] = {}
            for eid, v in self._scan():
                heaps.setdefault(int(v[0]), []).append((int(v[1]), eid))
            for h in heaps.values():
                heapq.heapify(h)
            self._heaps = heaps
            self._sizes = {p: len(h) for p, h in heaps.items()}
        return self._heaps

    def add(self, eid: str, entry: list[Any]) -> None:
        """Store ``entry`` under ``eid`` and evict the partition's oldest beyond the limit."""
        heaps = self._load()
        p = int(entry[0])
        existed = eid in self.table
        self.table[eid] = entry
        h = heaps.setdefault(p, [])
        heapq.heappush(h, (int(entry[1]), eid))
        if not existed:
            self._sizes[p] = self._sizes.get(p, 0) + 1
        evicted = 0
        while self._sizes[p] > self.limit and h:
            t, old = heapq.heappop(h)
            v = self.table.get(old)
            if v is not None and int(v[0]) == p and int(v[1]) == t:
                del self.table[old]
                self._sizes[p] -= 1
                evicted += 1
        if len(h) > 2 * self._sizes[p] + 1024:  # drop the items of entries that left
            heaps[p] = [
                (t, e)
                for t, e in h
                if (v := self.table.get(e)) is not None and int(v[0]) == p and int(v[1]) == t
            ]
            heapq.heapify(heaps[p])
        if evicted:
            self._on_evict(evicted)

    def reset(self) -> None:
        """Rebuild the heaps from the table on next use (entries restored or dropped)."""
        self._heaps = None
        self._sizes = {}

    def pop(self, eid: str) -> Any:
        """Remove ``eid``'s entry (None when absent) and return it."""
        self._load()
        v = self.table.pop(eid, None)
        if v is not None:
            p = int(v[0])
            self._sizes[p] = self._sizes.get(p, 1) - 1
        return v

    def size(self, partition: int) -> int:
        self._load()
        return self._sizes.get(partition, 0)

    def expire_before(self, partition: int, limit_ms: int) -> int:
        """Remove the partition's entries with an event time before ``limit_ms`` (oldest
        first, through the heap: work proportional to what expires); returns how many."""
        heaps = self._load()
        h = heaps.get(partition)
        n = 0
        while h and h[0][0] < limit_ms:
            t, eid = heapq.heappop(h)
            v = self.table.get(eid)
            if v is not None and int(v[0]) == partition and int(v[1]) == t:
                del self.table[eid]
                self._sizes[partition] -= 1
                n += 1
        return n


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
    merge_locally : bool
        Merge the partitions' performance window states in this object (one instance owns
        every partition: tests, offline replays). The service passes False and routes
        :meth:`take_partials` through a topic to the one merging owner.
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
        merge_locally: bool = True,
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
        lookback = -(-settings.new_segment_lookback_s // settings.window_s) * settings.window_s
        self.newkeys = NewKeyCounter(
            tables["newkeys"],
            model=model,
            threshold=settings.new_segment_threshold,
            lookback_ms=lookback * S,
            bucket_ms=self.win_ms,
            max_keys=settings.new_segment_max_keys,
            scan=lambda: self._scan("newkeys"),
            on_overflow=lambda n: self.counters.overflow("new_keys", n),
        )
        self.late_ms = settings.lateness_s * S
        self.expiry_ms = settings.join_expiry_s * S
        self.watermark = Watermark(settings.source_idle_s, partitions)
        self.pred_clocks = Watermark(settings.source_idle_s, partitions)
        self.out_clocks = Watermark(settings.source_idle_s, partitions)
        self.last_input_s: float | None = None
        self._expired_at: dict[int, float] = {}
        self._drift_checked: dict[int, int | None] = {}
        self.partitions = partitions
        self.merge_locally = merge_locally
        #: Event-time sanity per (stream, partition): :mod:`segstream.shared.event_time`.
        self._sanity: dict[tuple[str, Any], EventTimeWatermark] = {}
        self._outbox: list[dict[str, Any]] = []
        self._progress_sent: dict[int, int] = {}
        self._first_tick: dict[int, float] = {}
        tables.setdefault("perfmerge", {})
        self.pending_p = PendingBound(
            tables["pending_p"],
            settings.pending_max,
            lambda: self._scan("pending_p"),
            lambda n: self.counters.overflow("pending_predictions", n),
        )
        self.pending_o = PendingBound(
            tables["pending_o"],
            settings.pending_max,
            lambda: self._scan("pending_o"),
            lambda n: self.counters.overflow("pending_outcomes", n),
        )
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
            # the worker judged these times already (its out-of-range events went to the DLQ
            # and are not in the stats); one time per batch is too sparse to judge again
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
                if cur is None:  # a new window: check it against the watermark once
                    self._drift_checked.pop(partition, None)
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
        """Count unknown keys (:class:`.newkeys.NewKeyCounter`); ``seen_ms`` = earliest event
        time of the record (first-seen)."""
        if not rec.unknown_keys and not rec.unknown_keys_other:
            return []
        alerts = self.newkeys.add(
            dict(rec.unknown_keys),
            rec.unknown_keys_other,
            bundle_id=rec.bundle_id,
            bucket_time_ms=w,
            seen_ms=seen_ms,
            partition=partition,
            offset=offset,
            nodes=dict(rec.unknown_key_nodes),
        )
        for a in alerts:
            if self.observer is not None:
                self.observer.on_alert(a)
        return alerts

    def _close_drift(self, partition: int, now_s: float) -> list[Alert]:
        wm = self.watermark.value(now_s)
        idle = self._idle(now_s)
        alerts: list[Alert] = []
        if not idle and partition in self._drift_checked and self._drift_checked[partition] == wm:
            return alerts  # nothing can have become due: no table scan for this record
        self._drift_checked[partition] = wm
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
    def _perf_closed(self, partition: int) -> int | None:
        """Window starts of ``partition`` below this have been sent to the merge."""
        return self._meta(f"perf_closed|{partition}")

    def _tracked(self, bundle: Any, segment: Any) -> bool:
        """Whether ``segment`` of ``bundle`` has a test MAE (only those are tracked)."""
        if segment is None or bundle is None:
            return False
        ref = self.reference_for(str(bundle))
        return ref is not None and str(segment) in ref[1].segment_mae

    def _join_batch(
        self, source: str, recs: list[tuple[str, list[Any], int, int]], now_s: float
    ) -> None:
        """Join a micro-batch of in-range, sampled records of ``source`` (``"predictions"``
        or ``"outcomes"``): ``(event id, pending entry, partition, offset)`` in arrival order.

        A hash join on the event id against the other stream's pending table: one lookup per
        record; the records that find their partner are grouped by (window, partition) and
        added with array sums (:func:`.performance.add_pairs`), one state write per window
        and batch; the others become pending entries. The result equals applying the records
        one by one (a repeated event id after its join in the same batch waits again, as it
        would have).
        """
        if not recs:
            return
        own_clock, t_idx = (
            (self.pred_clocks, 1) if source == "predictions" else (self.out_clocks, 3)
        )
        newest: dict[int, int] = {}
        for _eid, entry, partition, _off in recs:
            t = entry[t_idx]
            if t >= newest.get(partition, t):
                newest[partition] = t
        for partition, t in newest.items():  # = observing every record (the clock is a max)
            own_clock.observe(partition, t, now_s)
        other = self.t["pending_o" if source == "predictions" else "pending_p"]
        bound = self.pending_p if source == "predictions" else self.pending_o
        joined: set[str] = set()
        pairs: list[tuple[str, list[Any], list[Any], int, int]] = []
        again: list[tuple[str, list[Any]]] = []
        for eid, entry, partition, offset in recs:
            if eid in joined:  # joined earlier in this batch: waits again after the join
                again.append((eid, entry))
                continue
            match = other.get(eid)
            if match is None:
                bound.add(eid, entry)
            else:
                joined.add(eid)
                if source == "predictions":
                    pairs.append((eid, entry, match, partition, offset))
                else:
                    pairs.append((eid, match, entry, partition, offset))
        if pairs:
            self._apply_pairs(source, pairs)
        for eid, entry in again:
            bound.add(eid, entry)

    def _apply_pairs(
        self, source: str, pairs: list[tuple[str, list[Any], list[Any], int, int]]
    ) -> None:
        """Add joined ``(event id, prediction, outcome, partition, offset)`` pairs to their
        windows' performance states (one write per window) and delete their pending
        entries."""
        groups: dict[tuple[int, int], list[int]] = {}
        win = self.win_ms
        for i, pair in enumerate(pairs):
            groups.setdefault(((pair[1][1] // win) * win, pair[3]), []).append(i)
        perf = self.t["perf"]
        for (w, partition), idx in groups.items():
            closed = self._perf_closed(partition)
            if closed is not None and w < closed:
                self.counters.joined("late", len(idx))
                continue
            key = f"{w}|{partition}"
            cur = perf.get(key)
            applied = cur["applied"].get(source, -1) if cur is not None else -1
            keep: list[int] = []
            for i in idx:  # a re-delivered record: its offset was applied already
                offset = pairs[i][4]
                if offset <= applied:
                    continue
                keep.append(i)
                applied = offset
            if len(keep) < len(idx):
                self.counters.joined("duplicate", len(idx) - len(keep))
            if not keep:
                continue
            st = cur or {**perf_mod.empty_state(), "applied": {}}
            preds = [pairs[i][1] for i in keep]
            outs = [pairs[i][2] for i in keep]
            tracked = [self._tracked(q[6], q[5]) for q in preds]
            new = perf_mod.add_pairs(st, preds, outs, tracked)
            new["applied"] = {**st["applied"], source: applied}
            perf[key] = new  # before the deletes: a replay finds `applied`
            n_nan = sum(1 for o in outs if o[2] is None)
            if len(keep) - n_nan:
                self.counters.joined("joined", len(keep) - n_nan)
            if n_nan:
                self.counters.joined("joined_nan", n_nan)
        for eid, *_ in pairs:
            self.pending_p.pop(eid)
            self.pending_o.pop(eid)

    def on_prediction(self, raw: Any, partition: int, offset: int, now_s: float) -> None:
        """Apply one prediction record: its JSON value (bytes) or the record already decoded
        (a dict or :class:`~segstream.shared.contracts.Prediction`)."""
        self.on_predictions([(raw, partition, offset)], now_s)

    def on_outcome(self, raw: Any, partition: int, offset: int, now_s: float) -> None:
        """Apply one outcome record (its JSON value, or the record already decoded); a null
        target is a NaN outcome."""
        self.on_outcomes([(raw, partition, offset)], now_s)

    def _judge_times(self, stream: str, items: list[tuple[int, int]]) -> list[bool]:
        """In-range flags of ``(partition, event time ms)`` items: one
        :meth:`EventTimeWatermark.judge` call per partition of the batch, in arrival order."""
        by_p: dict[int, list[int]] = {}
        for i, (p, _t) in enumerate(items):
            by_p.setdefault(p, []).append(i)
        ok = [False] * len(items)
        for p, idx in by_p.items():
            wm = self._sanity.get((stream, p))
            if wm is None:
                wm = self._sanity[(stream, p)] = EventTimeWatermark.from_settings(self.s)
            codes = wm.judge(np.array([items[i][1] for i in idx], np.int64)).code
            for i, c in zip(idx, codes.tolist(), strict=True):
                ok[i] = c == IN_RANGE
        return ok

    def on_predictions(self, batch: list[tuple[Any, int, int]], now_s: float) -> None:
        """Apply a micro-batch of prediction records ``(value, partition, offset)`` in order
        (decoded and their event times judged once per batch and partition)."""
        self._input(now_s)
        good: list[tuple[str, list[Any], int, int]] = []
        for raw, partition, offset in batch:
            try:
                rec = perf_mod.decode_prediction(raw)
                eid, entry = perf_mod.pending_prediction(rec, partition)
            except MalformedRecord as exc:
                logger.warning(
                    "malformed prediction at partition %d offset %d: %s", partition, offset, exc
                )
                self.counters.record("predictions", "malformed")
                continue
            if rec.model != self.model:
                self.counters.record("predictions", "foreign")
                continue
            good.append((eid, entry, partition, offset))
        flags = self._judge_times("predictions", [(g[2], g[1][1]) for g in good])
        n = {"ok": 0, "out_of_range": 0, "unsampled": 0}
        rate = self.s.join_sample_rate
        joinable: list[tuple[str, list[Any], int, int]] = []
        for g, in_range in zip(good, flags, strict=True):
            if not in_range:
                n["out_of_range"] += 1
            elif not perf_mod.in_sample(g[0], rate):
                n["unsampled"] += 1
            else:
                joinable.append(g)
        n["ok"] = len(joinable)
        self._join_batch("predictions", joinable, now_s)
        for result, k in n.items():
            if k:
                self.counters.record("predictions", result, k)

    def on_outcomes(self, batch: list[tuple[Any, int, int]], now_s: float) -> None:
        """Apply a micro-batch of outcome records ``(value, partition, offset)`` in order."""
        self._input(now_s)
        good: list[tuple[str, list[Any], int, int]] = []
        for raw, partition, offset in batch:
            try:
                eid, entry = perf_mod.pending_outcome(self._decode_outcome(raw), partition)
            except MalformedRecord as exc:
                logger.warning(
                    "malformed outcome at partition %d offset %d: %s", partition, offset, exc
                )
                self.counters.record("outcomes", "malformed")
                continue
            good.append((eid, entry, partition, offset))
        flags = self._judge_times("outcomes", [(g[2], g[1][1]) for g in good])
        n = {"ok": 0, "out_of_range": 0, "unsampled": 0}
        rate = self.s.join_sample_rate
        ahead_ms = self.s.max_future_s * S
        joinable: list[tuple[str, list[Any], int, int]] = []
        for g, in_range in zip(good, flags, strict=True):
            entry = g[1]
            # event time near its partition's watermark, outcome time not before it
            if not in_range or not entry[1] <= entry[3] <= entry[1] + ahead_ms:
                n["out_of_range"] += 1
            elif not perf_mod.in_sample(g[0], rate):
                n["unsampled"] += 1
            else:
                joinable.append(g)
        n["ok"] = len(joinable)
        self._join_batch("outcomes", joinable, now_s)
        for result, k in n.items():
            if k:
                self.counters.record("outcomes", result, k)

    # ------------------------------------------------------------------ ticks
    def on_tick(self, partition: int, now_s: float) -> list[Alert]:
        """Timer work for ``partition``: close due drift windows, expire pending entries, hand
        the partition's final performance windows to the merge (:meth:`take_partials`;
        merged here at once when ``merge_locally``)."""
        alerts = self._close_drift(partition, now_s)
        self._expire(partition, now_s)
        self._send_partials(partition, now_s)
        if self.merge_locally:
            for rec in self.take_partials():
                alerts += self.on_partial(rec, now_s)
        return alerts

    # ------------------------------------------------------------------ performance merge
    def _stream_clock(self, clock: Watermark, partition: int, now_s: float) -> int | None:
        """``partition``'s own clock while it is active; else the instance's watermark (a
        silent partition has nothing newer: it must not hold windows back)."""
        seen = clock.last_seen(partition)
        if seen is not None and now_s - seen <= self.s.source_idle_s:
            return clock.source_max(partition)
        return clock.value(now_s)

    def _progress(self, partition: int, now_s: float) -> int | None:
        """Event time (ms) before which ``partition``'s performance windows are final."""
        if self._idle(now_s):
            return FOREVER_MS
        if self.pred_clocks.last_seen(partition) is None and (
            self.out_clocks.last_seen(partition) is None
        ):  # not read here yet (e.g. just assigned in a rebalance: its backlog is unread)
            first = self._first_tick.setdefault(partition, now_s)
            if now_s - first < self.s.source_idle_s:
                return None
        out = self._stream_clock(self.out_clocks, partition, now_s)
        pred = self._stream_clock(self.pred_clocks, partition, now_s)
        if out is None or pred is None:
            return None
        return min(out - self.expiry_ms, pred - self.late_ms)

    def _send_partials(self, partition: int, now_s: float) -> None:
        """Queue the partition's final window states, then its progress (in that order: the
        merge judges a window once every partition's progress has passed its end)."""
        progress = self._progress(partition, now_s)
        if progress is None:
            return
        due = sorted(
            (int(k.split("|")[0]), k)
            for k, v in self._scan("perf")
            if int(k.split("|")[1]) == partition and int(k.split("|")[0]) + self.win_ms <= progress
        )
        for w, key in due:
            state = {k: v for k, v in self.t["perf"][key].items() if k != "applied"}
            self._outbox.append({"kind": "partial", "w": w, "p": partition, "state": state})
            del self.t["perf"][key]
            closed = self._perf_closed(partition)
            if closed is None or w + self.win_ms > closed:
                self.t["meta"][f"perf_closed|{partition}"] = w + self.win_ms
        if due or self._progress_sent.get(partition) != progress:
            self._progress_sent[partition] = progress
            self._outbox.append({"kind": "progress", "p": partition, "through": progress})

    def take_partials(self) -> list[dict[str, Any]]:
        """The merge records queued since the last call (partials and progress), in order.

        The service sends them to partition 0 of its internal ``<app_id>-perf-partials``
        topic, whose owner calls :meth:`on_partial` (one merging owner per model).
        """
        out, self._outbox = self._outbox, []
        return out

    def on_partial(self, rec: dict[str, Any], now_s: float) -> list[Alert]:
        """Merge one record of :meth:`take_partials` (from any instance); judge every window
        that every partition has reported past. Writes the ``perfmerge`` table and
        ``meta["perf_closed"]``.

        Returns the performance alerts of the windows judged.
        """
        merged = self.t["perfmerge"]
        closed = self._meta("perf_closed")
        p = int(rec["p"])
        if rec.get("kind") == "partial":
            w = int(rec["w"])
            if closed is not None and w < closed:
                self.counters.joined("late")  # a re-sent partial of a judged window
            else:
                cur = merged.get(f"w|{w}") or {"parts": {}}
                merged[f"w|{w}"] = {"parts": {**cur["parts"], str(p): rec["state"]}}
            return []
        old = merged.get(f"progress|{p}")
        if old is None or int(rec["through"]) > int(old):
            merged[f"progress|{p}"] = int(rec["through"])
        progress = [merged.get(f"progress|{q}") for q in range(self.partitions)]
        reported = [int(v) for v in progress if v is not None]
        if len(reported) < self.partitions:
            return []
        through = min(reported)
        windows = sorted(
            int(k.split("|")[1]) for k, _ in self._scan("perfmerge") if k.startswith("w|")
        )
        alerts: list[Alert] = []
        for w in windows:
            if w + self.win_ms > through:
                break  # windows close in order
            parts = merged[f"w|{w}"]["parts"]
            del merged[f"w|{w}"]
            alerts += self._judge_performance(perf_mod.merge(parts.values()), w)
            self.t["meta"]["perf_closed"] = w + self.win_ms
            self.counters.closed("performance")
        return alerts

    # ------------------------------------------------------------------ partitions
    def save_clocks(self, partition: int, *, drift: bool = False) -> None:
        """Write ``partition``'s prediction and outcome clocks (and, with ``drift``, the drift
        watermark's sources: the stats partition's) to the ``meta`` table when they moved, so
        that they are in the changelog with the state they belong to. Call with the tables'
        writes owned by ``partition``."""
        meta = self.t["meta"]
        for name, clock in (("pred", self.pred_clocks), ("out", self.out_clocks)):
            t = clock.source_max(partition)
            key = f"clock|{name}|{partition}"
            if t is not None and meta.get(key) != t:
                meta[key] = t
        if drift:
            sources = self.watermark.sources()
            if sources and meta.get("clock|drift") != sources:
                meta["clock|drift"] = sources

    def restore_partitions(self, partitions: list[int], now_s: float) -> None:
        """After the tables of ``partitions`` were restored from the changelog: re-read their
        clocks (as if their sources reported now) and rebuild the indexes over the tables."""
        meta = self.t["meta"]
        for p in partitions:
            for name, clock in (("pred", self.pred_clocks), ("out", self.out_clocks)):
                t = meta.get(f"clock|{name}|{p}")
                if isinstance(t, int):
                    clock.observe(p, t, now_s)
        sources = meta.get("clock|drift")
        if isinstance(sources, dict):
            for src, t in sources.items():
                if isinstance(t, int):
                    self.watermark.observe(src, t, now_s)
        self._reset_indexes()

    def forget_partitions(self, partitions: list[int], *, drift: bool) -> None:
        """``partitions`` were revoked (their table entries are dropped by the caller): forget
        their clocks and indexes; with ``drift`` (a stats partition among them) the drift
        watermark too (its next owner restores it)."""
        for p in partitions:
            self.pred_clocks.forget(p)
            self.out_clocks.forget(p)
            for d in (self._expired_at, self._drift_checked, self._progress_sent, self._first_tick):
                d.pop(p, None)
            for key in [k for k in self._sanity if k[1] == p]:
                del self._sanity[key]
        if drift:
            self.watermark = Watermark(self.s.source_idle_s, self.partitions)
        self._reset_indexes()

    def _reset_indexes(self) -> None:
        self.pending_p.reset()
        self.pending_o.reset()
        self.newkeys.reset()
        self._drift_checked.clear()

    def _scan(self, name: str) -> Any:
        """Items of a table for reading: a faust table's store directly (its ``items()`` goes
        through ``__getitem__`` per key, far slower on tables of many thousand entries)."""
        tbl = self.t[name]
        return getattr(tbl, "data", tbl).items()

    def _expiry_clock(
        self, own: Watermark, other: Watermark, partition: int, now_s: float
    ) -> int | None:
        """The clock that expires a pending entry of ``partition``: the other stream's
        (the one it waits for) while that stream's partition is active, else its own stream's
        (the other stream stopped: entries must not wait for it forever)."""
        seen = other.last_seen(partition)
        if seen is None:  # never seen: silent since this stream started (not since forever)
            seen = own.first_seen
        if seen is not None and now_s - seen <= self.s.join_idle_s:
            return other.source_max(partition)
        return own.source_max(partition)

    def _expire(self, partition: int, now_s: float) -> None:
        last = self._expired_at.get(partition)
        if last is not None and now_s - last < EXPIRE_EVERY_S:
            return
        self._expired_at[partition] = now_s
        clock = self._expiry_clock(self.pred_clocks, self.out_clocks, partition, now_s)
        if clock is not None:
            n = self.pending_p.expire_before(partition, clock - self.expiry_ms)
            if n:
                self.counters.joined("expired_prediction", n)
        clock = self._expiry_clock(self.out_clocks, self.pred_clocks, partition, now_s)
        if clock is not None:
            n = self.pending_o.expire_before(partition, clock - self.expiry_ms)
            if n:
                self.counters.joined("unmatched_outcome", n)
        n = self.newkeys.expire(partition, self.watermark.value(now_s))
        if n:
            self.counters.closed("new_segment", n)

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
            limits=perf_mod.FamilyLimits.from_settings(self.s),
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
            if f.ci is not None:
                extra["ci"] = (round(f.ci[0], 6), round(f.ci[1], 6))
            if f.observed is not None and f.baseline is not None:  # binomial, poisson checks
                extra.update(observed=round(f.observed, 6), baseline=round(f.baseline, 6))
            if f.error_bound is not None:
                extra["error_bound"] = round(f.error_bound, 6)
            if self.s.join_sample_rate < 1.0:
                extra["sample_rate"] = self.s.join_sample_rate
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
