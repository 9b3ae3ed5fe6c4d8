"""A robust per-partition event-time watermark, and the in-range test it gives.

Why not the maximum
-------------------
A watermark that is the largest event time seen can be moved to the year 2261 by one event;
every later event then looks years late. :class:`EventTimeWatermark` follows a robust order
statistic of the recent *in-range* event times of one source partition instead, so no small
number of events can move it far ahead or behind, and it judges each event against it:

* **in range**: ``watermark - max_past_s <= t <= watermark + max_future_s``;
* **ahead** (too far in the future): ``t > watermark + max_future_s``;
* **behind** (too far in the past): ``t < watermark - max_past_s``;
* **no time** (NaT / missing): not judged, as before.

The statistic and its bounded state
-----------------------------------
The last ``window`` in-range times (a ring buffer, with a sorted copy) give the watermark:
the ``rank``-th largest of them (the median while fewer than ``2 * rank`` are held). A high
order statistic rather than the median, because a monotone stream's median lags half the
window behind its newest events (at one event an hour, 32 hours for a window of 64), its
``rank``-th largest only ``rank - 1`` events; and fewer than ``rank`` events ahead can never
lift it. An in-range event can be at most ``max_future_s`` ahead, so lifting the watermark by
a year takes at least ``rank * 365 * 86400 / max_future_s`` events one after another.

Events are judged **in arrival order**, each against the watermark left by those before it
(one numba pass over the batch; the outcome does not depend on how events are batched,
except for the two rules marked *batch* below):

* **Bootstrap** (*batch*): with no watermark yet, it starts at *the median of the batch's
  first* (up to ``window``) *valid times*, so a lone far-future first event among normal
  ones is caught; from there on the events are judged one after another as always.
* **Rebase** (*batch*): a stream that really jumps (a producer back after an outage, a replay
  restarted at an older date) gives out-of-range events one after another. After ``need``
  of them in a row with no in-range event between (``need = min(rebase_after,
  max(support, min_rebase))``, ``support``: in-range events since the last (re)anchoring),
  the watermark re-anchors at their median and the run is judged again from there, in
  order (those of its events still in the current batch get that judgement: a batch of a
  real jump loses none).
* **Slack** (optional): with ``now_ms`` (wall clock) given, ``max_future_s`` grows by the
  wall-clock time since the partition's last in-range event: a live partition silent over a
  weekend is not judged two days "ahead" when it resumes. A replay (months of event time in
  minutes) gets no slack to speak of, so a far-future event is still caught.

A replay that advances months in minutes is followed: consecutive events a few minutes or
hours apart are all in range of a watermark ``rank`` events behind them.

The state (:meth:`EventTimeWatermark.state`) is a small JSON-serialisable dict: at most
``window + rebase_after`` integers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from numba import njit

#: Epoch milliseconds meaning "no event time" (NaT's int64 value).
MISSING_MS = int(np.iinfo(np.int64).min)

#: Judgement codes (:attr:`Judgement.code`).
IN_RANGE = 0
AHEAD = 1
BEHIND = 2
NO_TIME = 3

STATE_VERSION = 1

# meta array slots of the kernel state
_ANCHORED, _WM, _N_W, _HEAD, _SUPPORT, _STREAK, _S_HEAD, _LAST_WALL = range(8)
_N_META = 8
_NONE = MISSING_MS
#: Times are clipped to +-2**62 ms (beyond datetime64's range) so no sum overflows.
_BOUND = 1 << 62


def epoch_ms(times: np.ndarray) -> np.ndarray:
    """Event times as int64 milliseconds since the Unix epoch (UTC).

    Parameters
    ----------
    times : numpy.ndarray of shape (n,)
        ``datetime64`` of any unit (NaT allowed), or integers already in epoch ms.

    Returns
    -------
    numpy.ndarray of shape (n,), int64
        Epoch ms, floored; NaT becomes :data:`MISSING_MS`.
    """
    a = np.asarray(times)
    if a.dtype.kind == "M":
        ms = a.astype("datetime64[ms]").view(np.int64)  # NaT stays int64 min
        return np.ascontiguousarray(ms)
    if a.dtype.kind not in "iu":
        raise TypeError(f"event times must be datetime64 or integer epoch ms, not {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Judgement:
    """The outcome of :meth:`EventTimeWatermark.judge` for ``n`` events.

    Attributes
    ----------
    code : numpy.ndarray of shape (n,), int8
        :data:`IN_RANGE`, :data:`AHEAD`, :data:`BEHIND` or :data:`NO_TIME` per event.
    watermark_ms : numpy.ndarray of shape (n,), int64
        The watermark (epoch ms) each event was judged against; :data:`MISSING_MS` for
        events without a time.
    limit_ms : numpy.ndarray of shape (n,), int64
        The bound the event was held to: ``max_future_s`` (plus any slack) in ms for
        ``AHEAD`` and in-range events, ``max_past_s`` in ms for ``BEHIND``; 0 without a time.
    """

    code: np.ndarray
    watermark_ms: np.ndarray
    limit_ms: np.ndarray

    @property
    def out_of_range(self) -> np.ndarray:
        """bool (n,): ahead or behind."""
        return (self.code == AHEAD) | (self.code == BEHIND)

    @property
    def kept(self) -> np.ndarray:
        """bool (n,): in range or without a time (what is scored)."""
        return ~self.out_of_range


class EventTimeWatermark:
    """The robust event-time watermark of one source partition (see the module docstring).

    Parameters
    ----------
    max_future_s : float, default 86400
        Seconds an event may be ahead of the watermark (``monitor.max_future_s``).
    max_past_s : float, default 604800
        Seconds an event may be behind it (``monitor.max_past_s``).
    window : int, default 64
        Recent in-range times kept.
    rank : int, default 8
        The watermark is the ``rank``-th largest of them.
    rebase_after : int, default 256
        Most out-of-range events in a row before the watermark re-anchors at them.
    min_rebase : int, default 8
        Fewest out-of-range events in a row that re-anchor it (while ``support`` is small,
        e.g. after a bootstrap from one event).

    Raises
    ------
    ValueError
        A limit is not positive, or ``window``, ``rank``, ``rebase_after``, ``min_rebase``
        are not ``1 <= rank <= window``, ``1 <= min_rebase <= rebase_after``.

    Examples
    --------
    >>> import numpy as np
    >>> wm = EventTimeWatermark(max_future_s=86_400, max_past_s=7 * 86_400)
    >>> t = np.array(["2013-06-01T10:00", "2261-01-01", "2013-06-01T10:05", "NaT"], "M8[ms]")
    >>> j = wm.judge(epoch_ms(t))
    >>> j.code.tolist()  # the far-future event is caught by the batch's median
    [0, 1, 0, 3]
    >>> str(np.datetime64(wm.watermark_ms, "ms"))
    '2013-06-01T10:05:00.000'
    """

    def __init__(
        self,
        *,
        max_future_s: float = 86_400.0,
        max_past_s: float = 604_800.0,
        window: int = 64,
        rank: int = 8,
        rebase_after: int = 256,
        min_rebase: int = 8,
    ) -> None:
        if not max_future_s > 0 or not max_past_s > 0:
            raise ValueError("max_future_s and max_past_s must be > 0")
        if not 1 <= rank <= window:
            raise ValueError(f"need 1 <= rank <= window, got rank={rank}, window={window}")
        if not 1 <= min_rebase <= rebase_after:
            raise ValueError(
                f"need 1 <= min_rebase <= rebase_after, got {min_rebase}, {rebase_after}"
            )
        self.max_future_s = max_future_s
        self.max_past_s = max_past_s
        self.window = window
        self.rank = rank
        self.rebase_after = rebase_after
        self.min_rebase = min_rebase
        self._ring = np.zeros(window, np.int64)
        self._sorted = np.zeros(window, np.int64)
        self._streak = np.zeros(rebase_after, np.int64)
        self._meta = np.zeros(_N_META, np.int64)
        self.reset()

    @classmethod
    def from_settings(cls, monitor: Any, **kw: Any) -> EventTimeWatermark:
        """One with ``monitor.max_future_s`` and ``monitor.max_past_s``
        (:class:`segstream.shared.settings.MonitorSettings`); other parameters as given."""
        return cls(max_future_s=monitor.max_future_s, max_past_s=monitor.max_past_s, **kw)

    def reset(self) -> None:
        """Forget everything: the next batch bootstraps again."""
        self._meta[:] = 0
        self._meta[_WM] = _NONE
        self._meta[_LAST_WALL] = _NONE

    @property
    def watermark_ms(self) -> int | None:
        """The current watermark (epoch ms), None before the first valid time."""
        return int(self._meta[_WM]) if self._meta[_ANCHORED] else None

    def judge(self, times_ms: np.ndarray, *, now_ms: int | None = None) -> Judgement:
        """Judge a batch of this partition's event times, in arrival order, and advance.

        Parameters
        ----------
        times_ms : numpy.ndarray of shape (n,), int64
            Epoch ms (:func:`epoch_ms`), :data:`MISSING_MS` for no time, in arrival
            (offset) order.
        now_ms : int, optional
            Wall clock (epoch ms) for the slack rule; None: no slack (deterministic).

        Returns
        -------
        Judgement
        """
        t = np.ascontiguousarray(times_ms, dtype=np.int64)
        if t.ndim != 1:
            raise ValueError(f"times_ms must be 1-d, not of shape {t.shape}")
        if len(t) and (t.min() < -_BOUND or t.max() > _BOUND):  # no overflow in the kernel
            t = np.where(t == MISSING_MS, t, np.clip(t, -_BOUND, _BOUND))
        n = t.shape[0]
        code = np.empty(n, np.int8)
        mark = np.empty(n, np.int64)
        limit = np.empty(n, np.int64)
        _judge(
            t,
            _NONE if now_ms is None else int(now_ms),
            self._meta,
            self._ring,
            self._sorted,
            self._streak,
            round(self.max_future_s * 1000),
            round(self.max_past_s * 1000),
            self.rank,
            self.min_rebase,
            code,
            mark,
            limit,
        )
        return Judgement(code, mark, limit)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The state as a JSON-serialisable dict (ints and lists of ints; the parameters
        are not part of it): ``version``, ``watermark`` (epoch ms or None), ``window`` (the
        in-range times, oldest first), ``support``, ``streak`` (the current run of
        out-of-range times, oldest first, at most ``rebase_after``), ``streak_n``,
        ``last_wall`` (epoch ms or None)."""
        m = self._meta
        n_w, head = int(m[_N_W]), int(m[_HEAD])
        W = self.window
        ring = [int(self._ring[(head - n_w + i) % W]) for i in range(n_w)]
        streak_n = int(m[_STREAK])
        k = min(streak_n, self.rebase_after)
        sh, R = int(m[_S_HEAD]), self.rebase_after
        streak = [int(self._streak[(sh - k + i) % R]) for i in range(k)]
        return {
            "version": STATE_VERSION,
            "watermark": self.watermark_ms,
            "window": ring,
            "support": int(m[_SUPPORT]),
            "streak": streak,
            "streak_n": streak_n,
            "last_wall": None if m[_LAST_WALL] == _NONE else int(m[_LAST_WALL]),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> EventTimeWatermark:
        """Rebuild from :meth:`state` (``params``: the constructor's; ``window`` and
        ``rebase_after`` may differ from the saved state's: the newest entries are kept).

        Raises
        ------
        ValueError
            ``state`` is not a state of this version.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not an event-time watermark state of version {STATE_VERSION}")
        wm = cls(**params)
        wm.set_state(state)
        return wm

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`state` into this watermark (see :meth:`from_state`)."""
        try:
            ring = [int(v) for v in state["window"]][-self.window :]
            streak = [int(v) for v in state["streak"]][-self.rebase_after :]
            wmv = state["watermark"]
            last = state["last_wall"]
            support = int(state["support"])
            streak_n = int(state["streak_n"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad event-time watermark state: {exc!r}") from exc
        self.reset()
        m = self._meta
        if wmv is not None:
            m[_ANCHORED] = 1
            m[_WM] = int(wmv)
        n_w = len(ring)
        self._ring[:n_w] = ring
        self._sorted[:n_w] = np.sort(np.array(ring, np.int64))
        m[_N_W] = n_w
        m[_HEAD] = n_w % self.window
        m[_SUPPORT] = max(0, support)
        k = len(streak)
        self._streak[:k] = streak
        m[_STREAK] = max(k, streak_n)
        m[_S_HEAD] = k % self.rebase_after
        m[_LAST_WALL] = _NONE if last is None else int(last)

    def copy(self) -> EventTimeWatermark:
        """An independent copy (same parameters and state)."""
        out = EventTimeWatermark(
            max_future_s=self.max_future_s,
            max_past_s=self.max_past_s,
            window=self.window,
            rank=self.rank,
            rebase_after=self.rebase_after,
            min_rebase=self.min_rebase,
        )
        out._ring[:] = self._ring
        out._sorted[:] = self._sorted
        out._streak[:] = self._streak
        out._meta[:] = self._meta
        return out


class PartitionWatermarks:
    """:class:`EventTimeWatermark` per source partition, created on first use.

    Parameters
    ----------
    **params
        The :class:`EventTimeWatermark` constructor's (``max_future_s``, ``max_past_s``...).
    """

    def __init__(self, **params: Any) -> None:
        EventTimeWatermark(**params)  # check the parameters once
        self.params = params
        self.partitions: dict[int, EventTimeWatermark] = {}

    @classmethod
    def from_settings(cls, monitor: Any, **kw: Any) -> PartitionWatermarks:
        """With ``monitor.max_future_s`` and ``monitor.max_past_s``."""
        return cls(max_future_s=monitor.max_future_s, max_past_s=monitor.max_past_s, **kw)

    def get(self, partition: int) -> EventTimeWatermark:
        """The watermark of ``partition`` (a fresh one on first use)."""
        wm = self.partitions.get(partition)
        if wm is None:
            wm = self.partitions[partition] = EventTimeWatermark(**self.params)
        return wm

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop these partitions' state (revoked: a later owner bootstraps again)."""
        for p in partitions:
            self.partitions.pop(int(p), None)

    def judge(
        self, times_ms: np.ndarray, partitions: np.ndarray, *, now_ms: int | None = None
    ) -> Judgement:
        """Judge a batch mixing partitions, each partition's events in their order.

        Parameters
        ----------
        times_ms : numpy.ndarray of shape (n,), int64
            Epoch ms, :data:`MISSING_MS` for no time.
        partitions : numpy.ndarray of shape (n,), integer
            Source partition of each event.
        now_ms : int, optional
            See :meth:`EventTimeWatermark.judge`.

        Returns
        -------
        Judgement
            For the ``n`` events, in input order.
        """
        t = np.ascontiguousarray(times_ms, dtype=np.int64)
        parts = np.asarray(partitions)
        if parts.shape != t.shape:
            raise ValueError(f"partitions has shape {parts.shape}; times has {t.shape}")
        n = len(t)
        code = np.empty(n, np.int8)
        mark = np.empty(n, np.int64)
        limit = np.empty(n, np.int64)
        uniq = np.unique(parts)
        for p in uniq.tolist():
            rows = np.flatnonzero(parts == p) if len(uniq) > 1 else slice(None)
            j = self.get(int(p)).judge(t[rows], now_ms=now_ms)
            code[rows], mark[rows], limit[rows] = j.code, j.watermark_ms, j.limit_ms
        return Judgement(code, mark, limit)


# ---------------------------------------------------------------------------- kernel
@njit(cache=True, nogil=True)
def _stat(srt: np.ndarray, n_w: int, rank: int) -> int:  # pragma: no cover - numba
    """The ``rank``-th largest of ``srt[:n_w]`` (ascending), the median while n_w < 2 rank."""
    back = min(rank - 1, (n_w - 1) // 2)
    return srt[n_w - 1 - back]


@njit(cache=True, nogil=True)
def _insert(
    meta: np.ndarray, ring: np.ndarray, srt: np.ndarray, v: int
) -> None:  # pragma: no cover - numba
    """Add ``v`` to the window (evicting the oldest when full), keeping ``srt`` sorted."""
    W = ring.shape[0]
    n_w = meta[_N_W]
    head = meta[_HEAD]
    if n_w == W:  # evict ring[head] from the sorted copy
        old = ring[head]
        lo, hi = 0, n_w
        while lo < hi:
            mid = (lo + hi) // 2
            if srt[mid] < old:
                lo = mid + 1
            else:
                hi = mid
        for k in range(lo, n_w - 1):
            srt[k] = srt[k + 1]
        n_w -= 1
    ring[head] = v
    meta[_HEAD] = (head + 1) % W
    k = n_w
    while k > 0 and srt[k - 1] > v:
        srt[k] = srt[k - 1]
        k -= 1
    srt[k] = v
    meta[_N_W] = n_w + 1


@njit(cache=True, nogil=True)
def _anchor(meta: np.ndarray, values: np.ndarray) -> None:  # pragma: no cover - numba
    """Re-anchor at the lower median of ``values``: an empty window and streak, the
    watermark at that median until the first in-range event."""
    tmp = np.sort(values)
    meta[_ANCHORED] = 1
    meta[_WM] = tmp[(len(tmp) - 1) // 2]
    meta[_N_W] = 0
    meta[_HEAD] = 0
    meta[_SUPPORT] = 0
    meta[_STREAK] = 0
    meta[_S_HEAD] = 0


@njit(cache=True, nogil=True)
def _step(
    meta: np.ndarray,
    ring: np.ndarray,
    srt: np.ndarray,
    v: int,
    now: int,
    fut: int,
    past: int,
    rank: int,
    max_support: int,
) -> tuple[int, int, int]:  # pragma: no cover - numba
    """Judge one time ``v`` against the watermark; an in-range one joins the window and
    moves the watermark. Returns (code, the watermark judged against, the limit in ms)."""
    wm = meta[_WM]
    slack = 0
    if now != _NONE and meta[_LAST_WALL] != _NONE and now > meta[_LAST_WALL]:
        slack = now - meta[_LAST_WALL]
    if v > wm + fut + slack:
        return AHEAD, wm, fut + slack
    if v < wm - past:
        return BEHIND, wm, past
    _insert(meta, ring, srt, v)
    meta[_SUPPORT] = min(meta[_SUPPORT] + 1, max_support)
    if now != _NONE:
        meta[_LAST_WALL] = now
    meta[_WM] = _stat(srt, meta[_N_W], rank)
    return IN_RANGE, wm, fut + slack


@njit(cache=True, nogil=True)
def _judge(
    t: np.ndarray,
    now: int,
    meta: np.ndarray,
    ring: np.ndarray,
    srt: np.ndarray,
    sbuf: np.ndarray,
    fut: int,
    past: int,
    rank: int,
    min_rebase: int,
    code: np.ndarray,
    mark: np.ndarray,
    limit: np.ndarray,
) -> None:  # pragma: no cover - numba
    """Judge ``t`` (n,) int64 epoch ms in order against the state (meta, ring, srt, sbuf),
    writing code (n,) int8, mark (n,) int64 (the watermark) and limit (n,) int64 (ms)."""
    n = t.shape[0]
    R = sbuf.shape[0]
    for i in range(n):
        code[i] = NO_TIME
        mark[i] = _NONE
        limit[i] = 0
    if meta[_ANCHORED] == 0:  # bootstrap: the median of the first valid times
        W = ring.shape[0]
        k = 0
        end = 0
        while end < n and k < W:
            if t[end] != _NONE:
                k += 1
            end += 1
        if k == 0:
            return
        sample = np.empty(k, np.int64)
        k = 0
        for j in range(end):
            if t[j] != _NONE:
                sample[k] = t[j]
                k += 1
        _anchor(meta, sample)
    streak_start = -1  # first index in this batch of the current streak (-1: before it)
    for i in range(n):
        v = t[i]
        if v == _NONE:
            continue
        c, m, lim = _step(meta, ring, srt, v, now, fut, past, rank, R)
        code[i], mark[i], limit[i] = c, m, lim
        if c == IN_RANGE:
            meta[_STREAK] = 0
            meta[_S_HEAD] = 0
            streak_start = -1
            continue
        # out of range: extend the streak, re-anchor when it is long enough
        if meta[_STREAK] == 0:
            streak_start = i
        sbuf[meta[_S_HEAD]] = v
        meta[_S_HEAD] = (meta[_S_HEAD] + 1) % R
        meta[_STREAK] += 1
        need = min(R, max(meta[_SUPPORT], min_rebase))
        if meta[_STREAK] < need:
            continue
        # the streak (all of it is in sbuf: need <= R) replayed from its median, in order;
        # the last q of it are this batch's events from streak_start to i
        k = meta[_STREAK]
        vals = np.empty(k, np.int64)
        h = meta[_S_HEAD]
        for j in range(k):
            vals[j] = sbuf[(h - k + j) % R]
        here = np.empty(k, np.int64)
        q = 0
        for j in range(max(streak_start, 0), i + 1):
            if t[j] != _NONE and q < k:
                here[q] = j
                q += 1
        _anchor(meta, vals)
        for j in range(k):
            c, m, lim = _step(meta, ring, srt, vals[j], now, fut, past, rank, R)
            b = j - (k - q)
            if b >= 0:
                idx = here[b]
                code[idx], mark[idx], limit[idx] = c, m, lim
        streak_start = -1


__all__ = [
    "AHEAD",
    "BEHIND",
    "IN_RANGE",
    "MISSING_MS",
    "NO_TIME",
    "EventTimeWatermark",
    "Judgement",
    "PartitionWatermarks",
    "epoch_ms",
]
