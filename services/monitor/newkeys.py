"""New segments: key combinations unseen in training, counted since first seen (pure; no Kafka).

The workers' stats records name the unknown key combinations of each batch with their counts
(``unknown_keys``; :mod:`segstream.services.worker.stats`) and, per key, the tree node whose
model served its events (``unknown_key_nodes``: the nearest known ancestor segment, see
:meth:`segstream.shared.scoring.Scorer.unknown_key_nodes`). :class:`NewKeyCounter` keeps **one
table entry per (bundle, key)** (``"<bundle_id>|<key>"``), never one value per window::

    {"p": partition, "first": first seen (epoch ms), "last": start of the window of the last
     sighting (epoch ms), "count": events since first seen, "node": serving node or null,
     "applied": stats offset, "alerted": bool}

**Rule (idle expiry).** A key's count runs from its first sighting; it raises **one**
``new_segment`` alert per bundle when the count reaches the threshold. Its entry is forgotten
once the key has not been seen for ``lookback_ms`` of event time (the drift watermark passes
the end of the window of its last sighting + ``lookback_ms``); a key that comes back after
that is new again. So a route flown regularly accumulates however slowly (three flights a
week reach 50 in four months), while a key seen once and never again costs one entry for
``lookback_ms`` only.

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
        Idle expiry (ms of event time): an entry is forgotten once its key has not been seen
        for this long.
    bucket_ms : int
        The drift window (ms): sightings are dated by the start of their window.
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
        nodes: dict[str, int] | None = None,
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
            Event time (epoch ms) of the record's slice: its window.
        seen_ms : int
            Earliest event time of the record (a new key's first-seen time).
        partition, offset : int
            Where the record came from; an entry already holding this offset is not changed
            again (a re-delivered record).
        nodes : dict of str to int, optional
            Per key: the tree node whose model served its events (the nearest known ancestor
            segment); the alert carries it as ``serving_segment``.

        Returns
        -------
        list of Alert
            The ``new_segment`` alerts of keys that reached the threshold with this record.
        """
        if other:
            self._on_overflow(int(other))
        b = window_start(bucket_time_ms, self.bucket_ms)
        nodes = nodes or {}
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
                    "count": 0,
                    "node": None,
                    "applied": -1,
                    "alerted": False,
                }
            elif offset <= cur["applied"]:
                continue
            total = int(cur["count"]) + int(c)
            first = min(int(cur["first"]), seen_ms)
            node = nodes.get(k, cur.get("node"))
            new = {
                "p": cur["p"],
                "first": first,
                "last": max(int(cur["last"]), b),
                "count": total,
                "node": int(node) if node is not None else None,
                "applied": offset,
                "alerted": bool(cur["alerted"]),
            }
            if total >= self.threshold and not new["alerted"]:
                new["alerted"] = True
                extra: dict[str, Any] = {}
                if new["node"] is not None:
                    extra["serving_segment"] = new["node"]
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
                        window_start=iso_ms(first),
                        window_end=iso_ms(b + self.bucket_ms),
                        count=total,
                        first_seen=iso_ms(first),
                        **extra,
                    )
                )
            self.table[ek] = new
        if overflow:
            self._on_overflow(overflow)
        return alerts

    def expire(self, partition: int, watermark_ms: int | None) -> int:
        """Forget the keys of ``partition`` not seen for ``lookback_ms`` before the watermark
        (counted from the end of the window of their last sighting).

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

    def reset(self) -> None:
        """Recount the entries per partition on next use (after a restore or a revoke)."""
        self._sizes = None
