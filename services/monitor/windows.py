"""Tumbling event-time windows and watermarks (pure; no Kafka).

Windows are epoch-aligned: the window of an event time ``t`` (ms since the Unix epoch, UTC)
starts at ``floor(t / L) * L`` for window length ``L``. A window ``[start, end)`` **closes**
when the watermark reaches ``end + lateness``; a record for a window that has closed is
*late*: it is dropped and counted, never applied to a closed (already alerted) window.

The drift watermark is the minimum, over the *source partitions* of the events topic reported
in stats records within the last ``source_idle_s`` seconds of wall-clock time, of the largest
event time seen from each (like Flink's per-partition watermarks): a partition (or a worker)
that lags behind holds windows open instead of making its records late, and only disorder
*within* a partition needs the lateness allowance; a partition no longer reported (idle, or
its worker stopped) stops holding windows back after ``source_idle_s``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable

import numpy as np

MS = 1000


def parse_time_ms(text: str | None) -> int | None:
    """ISO 8601 (with ``Z`` or an offset; naive = UTC) to epoch milliseconds; None if invalid.

    Examples
    --------
    >>> parse_time_ms("2013-12-01T06:00:00-05:00")
    1385895600000
    >>> parse_time_ms("2013-12-01T11:00:00.000Z")
    1385895600000
    >>> parse_time_ms("yesterday") is None
    True
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return round(t.timestamp() * MS)


def window_start(t_ms: int, length_ms: int) -> int:
    """Start (epoch ms) of the tumbling window of length ``length_ms`` holding ``t_ms``.

    Examples
    --------
    >>> window_start(1385895600000, 86_400_000)  # 2013-12-01T11:00Z
    1385856000000
    """
    return (int(t_ms) // int(length_ms)) * int(length_ms)


def is_closable(start_ms: int, length_ms: int, lateness_ms: int, watermark: float | None) -> bool:
    """True when the window starting at ``start_ms`` may close at ``watermark``."""
    return watermark is not None and watermark >= start_ms + length_ms + lateness_ms


class Watermark:
    """Minimum over active sources of their largest event time (epoch ms).

    Parameters
    ----------
    idle_s : float
        A source not heard from for this long (wall clock) is ignored.
    expected : int
        Number of sources (partitions) expected: until that many have reported, and for at
        most ``idle_s`` after the first report, there is no watermark (a partition that has
        not been read yet must not find its first records late).
    """

    def __init__(self, idle_s: float, expected: int = 1) -> None:
        self.idle_s = idle_s
        self.expected = expected
        self._max: dict[Hashable, int] = {}
        self._seen: dict[Hashable, float] = {}
        self._first_s: float | None = None

    def observe(self, source: Hashable, event_time_ms: int | None, now_s: float) -> None:
        """Record that ``source`` sent an event time (None: alive, no time) at ``now_s``."""
        self._seen[source] = now_s
        if self._first_s is None:
            self._first_s = now_s
        if event_time_ms is not None:
            self._max[source] = max(self._max.get(source, event_time_ms), event_time_ms)

    def forget(self, source: Hashable) -> None:
        """Drop ``source`` (its partition was revoked: another instance reads it now)."""
        self._max.pop(source, None)
        self._seen.pop(source, None)

    def sources(self) -> dict[str, int]:
        """Largest event time per source (keys as strings: JSON-ready)."""
        return {str(k): v for k, v in self._max.items()}

    @property
    def first_seen(self) -> float | None:
        """Wall-clock time (s) of the first report of any source, or None."""
        return self._first_s

    def last_seen(self, source: Hashable) -> float | None:
        """Wall-clock time (s) ``source`` last reported, or None."""
        return self._seen.get(source)

    def source_max(self, source: Hashable) -> int | None:
        """Largest event time reported by ``source``."""
        return self._max.get(source)

    def value(self, now_s: float) -> int | None:
        """The watermark, or None before any active source reported an event time."""
        if (
            len(self._max) < self.expected
            and self._first_s is not None
            and now_s - self._first_s < self.idle_s
        ):
            return None
        active = [
            self._max[s]
            for s, seen in self._seen.items()
            if s in self._max and now_s - seen <= self.idle_s
        ]
        if not active:
            # Every source idle: the largest time ever seen (everything before it is final).
            return max(self._max.values()) if self._max else None
        return min(active)

    @property
    def max_seen(self) -> int | None:
        return max(self._max.values()) if self._max else None


def iso_window(start_ms: int, length_ms: int) -> tuple[str, str]:
    """ISO 8601 UTC bounds of a window."""

    def f(ms: int) -> str:
        return str(np.datetime64(int(ms), "ms")) + "Z"

    return f(start_ms), f(start_ms + length_ms)
