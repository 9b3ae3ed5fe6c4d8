"""New segments: key combinations unseen in training, counted since first seen (pure; no Kafka).

The workers' stats records name the unknown key combinations of each batch with their counts
(``unknown_keys``; :mod:`segstream.services.worker.stats`). :class:`NewKeyCounter` keeps **one
table entry per (bundle, key)** (``"<bundle_id>|<key>"``), never one value per window, with
the key's event counts in buckets of ``bucket_ms`` (the drift window) over the last
``lookback_ms`` of event time::

    {"p": partition, "first": first seen (epoch ms), "last": last bucket start (epoch ms),
     "buckets": [[bucket start ms, count], ...], "applied": stats offset, "alerted": bool}

A key raises **one** ``new_segment`` alert per bundle when its count within the lookback
(since first seen, once it has been seen for less than the lookback) reaches the threshold.
The entry is forgotten once the drift watermark is ``lookback_ms`` past its last bucket; a key
that comes back after that is new again.

Bounds: at most ``max_keys`` entries per table partition; the events of keys that do not fit
are counted (``overflow``), never stored. The work per stats record is proportional to the
keys it names; expiry (:meth:`NewKeyCounter.expire`) scans the table and runs from the timer.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from segstream.services.monitor.windows import window_start
from segstream.shared.alerts import Alert, alert_record, iso_ms

Table = MutableMapping[str, Any]


class NewKeyCounter:
    """Count unknown keys per (bundle, key) and alert once when a count reaches a threshold.

    Parameters
    ----------
    table : mutable mapping of str to dict
        The ``newkeys`` table (a faust table in the service, a dict in tests).
    model : str
    threshold : int
        Events within the lookback that make a key a new segment.
    lookback_ms : int
        Event-time span (ms) over which a key's events are counted.
    bucket_ms : int
        Bucket length (ms) of the counts (the drift window); ``lookback_ms`` is rounded up to
        whole buckets.
    max_keys : int
        Entries per table partition; keys beyond it are counted by ``on_overflow(n_events)``.
    scan : callable
        ``scan() -> iterable of (key, value)`` over the table (faust: its local store).
    on_overflow : callable
        Called with the number of events of keys that did not fit.
    """

    def __init__(
        self,
        table: Table,
        *,
        model: str,
        threshold: int,
        lookback_ms: int,
        bucket_ms: int,
        max_keys: int,
        scan: Callable[[], Any],
        on_overflow: Callable[[int], None],
    ) -> None:
        self.table = table
        self.model = model
        self.threshold = threshold
        self.lookback_ms = lookback_ms
        self.bucket_ms = bucket_ms
        self.max_keys = max_keys
        self._scan = scan
        self._on_overflow = on_overflow
        self._sizes: dict[int, int] | None = None  # entries per partition (counted once)

    def _size(self, partition: int) -> int:
        if self._sizes is None:
            self._sizes = {}
            for _k, v in self._scan():
                self._sizes[v["p"]] = self._sizes.get(v["p"], 0) + 1
        return self._sizes.get(partition, 0)

    def _grow(self, partition: int, n: int) -> None:
        self._size(partition)
        assert self._sizes is not None
        self._sizes[partition] = self._sizes.get(partition, 0) + n

    def add(
        self,
        unknown: dict[str, int],
        other: int,
        *,
        bundle_id: str,
        bucket_time_ms: int,
        seen_ms: int,
        partition: int,
        offset: int,
    ) -> list[Alert]:
        """Apply one stats record's unknown keys.

        Parameters
        ----------
        unknown : dict of str to int
            Events per unknown key of the record.
        other : int
            Events of unknown keys the record does not name (counted as overflow).
        bundle_id : str
        bucket_time_ms : int
            Event time (epoch ms) of the record's slice: its bucket.
        seen_ms : int
            Earliest event time of the record (a new key's first-seen time).
        partition, offset : int
            Where the record came from; an entry already holding this offset is not changed
            again (a re-delivered record).

        Returns
        -------
        list of Alert
            The ``new_segment`` alerts of keys that reached the threshold with this record.
        """
        if other:
            self._on_overflow(int(other))
        b = window_start(bucket_time_ms, self.bucket_ms)
        oldest = b - self.lookback_ms  # buckets starting at or before this are outside
        alerts: list[Alert] = []
        overflow = 0
        for k, c in unknown.items():
            ek = f"{bundle_id}|{k}"
            cur = self.table.get(ek)
            if cur is None:
                if self._size(partition) >= self.max_keys:
                    overflow += int(c)
                    continue
                self._grow(partition, 1)
                cur = {
                    "p": partition,
                    "first": seen_ms,
                    "last": b,
                    "buckets": [],
                    "applied": -1,
                    "alerted": False,
                }
            elif offset <= cur["applied"]:
                continue
            buckets = {int(s): int(n) for s, n in cur["buckets"] if int(s) > oldest}
            buckets[b] = buckets.get(b, 0) + int(c)
            total = sum(buckets.values())
            first = min(int(cur["first"]), seen_ms)
            new = {
                "p": cur["p"],
                "first": first,
                "last": max(int(cur["last"]), b),
                "buckets": sorted([s, n] for s, n in buckets.items()),
                "applied": offset,
                "alerted": bool(cur["alerted"]),
            }
            if total >= self.threshold and not new["alerted"]:
                new["alerted"] = True
                start = max(first, b + self.bucket_ms - self.lookback_ms)
                alerts.append(
                    alert_record(
                        type_="new_segment",
                        severity="warning",
                        model=self.model,
                        bundle_id=bundle_id,
                        feature=None,
                        segment=k,
                        statistic="count",
                        value=float(total),
                        threshold=float(self.threshold),
                        window_start=iso_ms(start),
                        window_end=iso_ms(b + self.bucket_ms),
                        count=total,
                        first_seen=iso_ms(first),
                    )
                )
            self.table[ek] = new
        if overflow:
            self._on_overflow(overflow)
        return alerts

    def expire(self, partition: int, watermark_ms: int | None) -> int:
        """Forget the keys of ``partition`` not seen for ``lookback_ms`` before the watermark.

        Returns the number of entries removed.
        """
        if watermark_ms is None:
            return 0
        limit = watermark_ms - self.lookback_ms - self.bucket_ms
        gone = [k for k, v in self._scan() if v["p"] == partition and int(v["last"]) < limit]
        for k in gone:
            del self.table[k]
        if gone:
            self._grow(partition, -len(gone))
        return len(gone)
