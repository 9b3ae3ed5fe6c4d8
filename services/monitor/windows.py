"""Tumbling event-time windows and watermarks (pure; no Kafka).

Windows are epoch-aligned: the window of an event time ``t`` (ms since the Unix epoch, UTC)
starts at ``floor(t / L) * L`` for window length ``L``. A window ``[start, end)`` **closes**
when the watermark reaches ``end + lateness``; a record for a window that has closed is
*late*: it is dropped and counted, never applied to a closed (already alerted) window.

The drift watermark is the minimum, over the workers that sent stats within the last
``source_idle_s`` seconds of wall-clock time, of the largest event time each has reported
(like Flink's per-input watermark): one worker that lags behind holds windows open instead of
making its records late; a worker that stopped no longer does after ``source_idle_s``.
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
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z")
                                      else text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(round(t.timestamp() * MS))


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
    """

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._max: dict[Hashable, int] = {}
        self._seen: dict[Hashable, float] = {}

    def observe(self, source: Hashable, event_time_ms: int | None, now_s: float) -> None:
        """Record that ``source`` sent an event time (None: alive, no time) at ``now_s``."""
        self._seen[source] = now_s
        if event_time_ms is not None:
            self._max[source] = max(self._max.get(source, event_time_ms), event_time_ms)

    def value(self, now_s: float) -> int | None:
        """The watermark, or None before any active source reported an event time."""
        active = [self._max[s] for s, seen in self._seen.items()
                  if s in self._max and now_s - seen <= self.idle_s]
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
