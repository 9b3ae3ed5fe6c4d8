"""Event-time sanity in the worker: dead-letter events far from their partition's watermark.

Each source partition of the events topic has a robust event-time watermark
(:class:`segstream.shared.event_time.EventTimeWatermark`, limits ``monitor.max_future_s`` and
``monitor.max_past_s``). :class:`EventTimeGuard` judges every decoded event with a valid
time against it, in offset order; an out-of-range event leaves the batch before scoring and
goes to the DLQ with reason :data:`EVENT_TIME_OUT_OF_RANGE` and the headers
``segstream.dlq.watermark`` (the watermark it was judged against, ISO 8601 UTC) and
``segstream.dlq.limit`` (``max_future_s=86400`` or ``max_past_s=604800``). Events without an
event time are not judged (as before).

Delivery guarantees and rebalances
----------------------------------
The watermark state lives in the worker's memory, per partition it owns:

* **Rewinds** (at-least-once redelivery after a failed delivery, an aborted transaction, a
  broken bundle) re-consume offsets already judged. Before each batch the guard keeps a copy
  of each partition's state keyed by the batch's first offset (the last ``history`` batches);
  a partition whose batch starts below the next offset expected is restored to the copy
  taken at that offset, so re-consumed events are judged against the same state as the first
  time (with the wall-clock slack of now). With no copy at that offset it bootstraps again.
* **Rebalances**: revoked or lost partitions are forgotten (:meth:`EventTimeGuard.forget`);
  a new owner of a partition bootstraps its watermark again from the first batch it consumes
  (the batch's median), as a restarted worker does.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from segstream.services.worker.decode import ALL_DLQ_REASONS, DecodedBatch
from segstream.services.worker.records import DLQ_HEADER_LIMIT, DLQ_HEADER_WATERMARK
from segstream.shared.event_time import (
    AHEAD,
    EventTimeWatermark,
    Judgement,
    epoch_ms,
)

#: The DLQ reason of an event whose time is too far from its partition's watermark.
EVENT_TIME_OUT_OF_RANGE = "event_time_out_of_range"
#: Every DLQ reason the worker gives (the label values of ``worker_dlq_records_total``).
WORKER_DLQ_REASONS: tuple[str, ...] = (*ALL_DLQ_REASONS, EVENT_TIME_OUT_OF_RANGE)


def _iso(ms: int) -> str:
    return str(np.datetime64(int(ms), "ms")) + "Z"


class EventTimeGuard:
    """Judge the event times of the worker's batches per source partition.

    Parameters
    ----------
    monitor : MonitorSettings
        ``max_future_s`` and ``max_past_s`` are read from it.
    history : int, default 32
        Batches per partition whose starting state is kept for rewinds.
    clock : callable, default time.time
        Wall clock in seconds (the watermark's slack for silent partitions).
    **params
        Other :class:`~segstream.shared.event_time.EventTimeWatermark` parameters.
    """

    def __init__(
        self,
        monitor: Any,
        *,
        history: int = 32,
        clock: Callable[[], float] = time.time,
        **params: Any,
    ) -> None:
        self.params = {
            "max_future_s": monitor.max_future_s,
            "max_past_s": monitor.max_past_s,
            **params,
        }
        EventTimeWatermark(**self.params)  # check the parameters
        self.history = history
        self.clock = clock
        self.watermarks: dict[int, EventTimeWatermark] = {}
        self._next: dict[int, int] = {}  # partition -> the offset expected next
        self._saved: dict[int, collections.deque[tuple[int, EventTimeWatermark]]] = {}

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop these partitions' state (revoked or lost: a new owner bootstraps again)."""
        for p in partitions:
            p = int(p)
            self.watermarks.pop(p, None)
            self._next.pop(p, None)
            self._saved.pop(p, None)

    def _watermark_for(self, p: int, first: int) -> EventTimeWatermark:
        """Partition ``p``'s watermark for a batch starting at offset ``first`` (restored on
        a rewind), with its state saved under ``first``."""
        wm = self.watermarks.get(p)
        expected = self._next.get(p)
        saved = self._saved.setdefault(p, collections.deque(maxlen=self.history))
        if wm is not None and expected is not None and first < expected:  # a rewind
            copy = next((w for o, w in saved if o == first), None)
            while saved and saved[-1][0] >= first:
                saved.pop()
            wm = copy.copy() if copy is not None else None
        if wm is None:
            wm = EventTimeWatermark(**self.params)
        self.watermarks[p] = wm
        saved.append((first, wm.copy()))
        return wm

    def judge(self, times: np.ndarray, partitions: np.ndarray, offsets: np.ndarray) -> Judgement:
        """Judge one batch's event times.

        Parameters
        ----------
        times : numpy.ndarray of shape (m,)
            ``datetime64`` event times (NaT: none) of the batch's valid events.
        partitions, offsets : numpy.ndarray of shape (m,), integer
            Their source partitions and offsets (each partition's in ascending order).

        Returns
        -------
        Judgement
            Per event, in input order.
        """
        t = epoch_ms(times)
        parts = np.asarray(partitions, np.int64)
        offs = np.asarray(offsets, np.int64)
        now_ms = int(self.clock() * 1000)
        m = len(t)
        code = np.empty(m, np.int8)
        mark = np.empty(m, np.int64)
        limit = np.empty(m, np.int64)
        for p in np.unique(parts).tolist():
            rows = np.flatnonzero(parts == p)
            wm = self._watermark_for(p, int(offs[rows[0]]))
            j = wm.judge(t[rows], now_ms=now_ms)
            code[rows], mark[rows], limit[rows] = j.code, j.watermark_ms, j.limit_ms
            self._next[p] = int(offs[rows[-1]]) + 1
        return Judgement(code, mark, limit)

    def _advance(self, parts: np.ndarray, offs: np.ndarray) -> None:
        """The offsets expected next: after the batch's last offset per known partition."""
        for p in np.unique(parts).tolist():
            if p in self.watermarks:
                self._next[p] = int(offs[parts == p].max()) + 1

    def check(
        self,
        decoded: DecodedBatch,
        time_field: str,
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> tuple[DecodedBatch, dict[int, list[tuple[str, bytes]]]]:
        """Move a decoded batch's out-of-range events to its DLQ entries.

        Parameters
        ----------
        decoded : DecodedBatch
            The decoder's output for ``n`` consumed events.
        time_field : str
            The schema's event-time field (``datetime64[ns]`` column).
        partitions, offsets : numpy.ndarray of shape (n,), integer
            Source partition and offset of every consumed event (input order).

        Returns
        -------
        decoded : DecodedBatch
            The same batch when every event is in range (or has no time); else one without
            the out-of-range rows, which are in its ``rejected`` with reason
            :data:`EVENT_TIME_OUT_OF_RANGE`.
        headers : dict of int to list of (str, bytes)
            Input index -> the extra DLQ headers (watermark and limit) of each such event.
        """
        times = decoded.columns.get(time_field)
        parts = np.asarray(partitions, np.int64)
        offs = np.asarray(offsets, np.int64)
        if times is None or decoded.n_valid == 0:
            self._advance(parts, offs)
            return decoded, {}
        valid = decoded.valid
        j = self.judge(times, parts[valid], offs[valid])
        self._advance(parts, offs)
        out = j.out_of_range
        if not out.any():
            return decoded, {}
        headers: dict[int, list[tuple[str, bytes]]] = {}
        new: list[tuple[int, str, str]] = []
        t = epoch_ms(times)
        for r in np.flatnonzero(out).tolist():
            idx = int(valid[r])
            wm, lim = int(j.watermark_ms[r]), int(j.limit_ms[r])
            ahead = j.code[r] == AHEAD
            name = "max_future_s" if ahead else "max_past_s"
            limit_text = f"{name}={lim / 1000:g}"
            detail = (
                f"{time_field} {_iso(t[r])} is more than {lim / 1000:g} s "
                f"{'ahead of' if ahead else 'behind'} the event-time watermark "
                f"{_iso(wm)} of partition {int(parts[idx])} ({name})"
            )
            new.append((idx, EVENT_TIME_OUT_OF_RANGE, detail))
            headers[idx] = [
                (DLQ_HEADER_WATERMARK, _iso(wm).encode()),
                (DLQ_HEADER_LIMIT, limit_text.encode()),
            ]
        keep = np.flatnonzero(~out)
        columns = {}
        for k, col in decoded.columns.items():
            sub = col[keep]
            if sub.dtype == object:
                sub.flags.writeable = False
            columns[k] = sub
        text = decoded.event_time_text
        kept = DecodedBatch(
            columns,
            valid[keep],
            sorted(decoded.rejected + new),
            [text[i] for i in keep.tolist()],
        )
        return kept, headers


def stats_max_slices(monitor: Any) -> int:
    """Most event-time slices with their own stats record in one batch: the slices one
    watermark's in-range band covers (``(max_past_s + max_future_s) / window_s``, rounded up,
    plus 2 for the band's partial slices), and at least 64 (a fast replay: one batch can
    follow the watermark across many days)."""
    band = -(-(monitor.max_past_s + monitor.max_future_s) // monitor.window_s) + 2
    return max(64, int(band))


__all__ = [
    "DLQ_HEADER_LIMIT",
    "DLQ_HEADER_WATERMARK",
    "EVENT_TIME_OUT_OF_RANGE",
    "WORKER_DLQ_REASONS",
    "EventTimeGuard",
    "stats_max_slices",
]
