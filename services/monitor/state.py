"""The monitor's state: in-memory tables whose changes go to one compacted changelog topic.

Pure (no Kafka client here): :class:`StateTables` holds the tables :class:`MonitorCore`
works on (:data:`~segstream.services.monitor.metrics.STATE_TABLES`), remembers which input
partition *owns* each entry and which entries changed, hands the changes over as changelog
records (:meth:`StateTables.changes`), applies changelog records read back on a partition
assignment (:meth:`StateTables.apply`) and forgets the entries of revoked partitions
(:meth:`StateTables.drop`). The loop (:mod:`segstream.services.monitor.loop`) produces and
reads the records.

Changelog layout
----------------
One topic, ``<monitor.app_id>-state-changelog``, ``cleanup.policy=compact``, with as many
partitions as the input topics: an entry owned by input partition ``p`` lives in changelog
partition ``p`` (so the owner of ``p`` restores exactly its own entries with one sequential
read). Record key: the JSON array ``[table, entry key]`` (compaction keeps the last value of
each table entry); value: the entry as JSON, or a tombstone (null value) for a deleted entry.

Per flush, each changed entry is written once with its final value; an entry created and
deleted between two flushes (a prediction joined with its outcome in the same micro-batch)
writes nothing (:attr:`ChangelogTable.skipped`). An entry that moves to another owner (not
done by the core today) leaves a tombstone in its old partition.

Changelog contents are untrusted like any topic: records that do not decode, name an unknown
table or have the wrong shape for their table are skipped and counted
(:meth:`StateTables.apply` returns False).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import orjson

from segstream.services.monitor.metrics import STATE_TABLES

_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_MISSING = object()


class ChangelogTable(MutableMapping):  # type: ignore[type-arg]
    """A mapping that remembers the owning partition of each entry and the entries changed
    since the last :meth:`take_changes`.

    Writes are owned by :attr:`partition` (set by the loop before it hands the core a record
    or a tick of that partition). Reads are plain dict reads (:attr:`data` is the dict: the
    core scans it directly).

    Parameters
    ----------
    name : str
        The table name (first element of the changelog key).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[Any, Any] = {}
        self.owner: dict[Any, int] = {}
        #: Partition owning the writes from now on.
        self.partition = 0
        self._dirty: dict[Any, int] = {}
        self._new: set[Any] = set()  # dirty keys absent before their first change
        self._moved: dict[Any, int] = {}  # key -> old owner that needs a tombstone
        #: Entries created and deleted between two flushes, never written (total).
        self.skipped = 0

    # ------------------------------------------------------------------ mapping
    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __setitem__(self, key: Any, value: Any) -> None:
        data, p = self.data, self.partition
        if key not in data:
            if key not in self._dirty:
                self._new.add(key)
        else:
            old = self.owner[key]
            if old != p and key not in self._moved:
                self._moved[key] = old
        data[key] = value
        self.owner[key] = p
        self._dirty[key] = p

    def __delitem__(self, key: Any) -> None:
        del self.data[key]
        p = self.owner.pop(key)
        # moved since the last flush, then deleted: only its old owner holds a value
        self._dirty[key] = self._moved.pop(key, p)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        if key in self.data:
            value = self.data[key]
            del self[key]
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    # ------------------------------------------------------------------ changelog
    def take_changes(self) -> list[tuple[int, Any, Any]]:
        """``(partition, key, value or None)`` of every entry changed since the last call
        (None: deleted); entries created and deleted in between are left out."""
        data, new, out = self.data, self._new, []
        for key, p in self._moved.items():
            if self.owner.get(key) != p:
                out.append((p, key, None))
        for key, p in self._dirty.items():
            if key in data:
                out.append((p, key, data[key]))
            elif key in new:
                self.skipped += 1
            else:
                out.append((p, key, None))
        self._dirty.clear()
        self._moved.clear()
        new.clear()
        return out

    def load(self, partition: int, key: Any, value: Any) -> None:
        """Apply one changelog record of ``partition`` (restore; nothing becomes dirty)."""
        if value is None:
            if self.owner.get(key) == partition:
                self.data.pop(key, None)
                self.owner.pop(key, None)
            return
        self.data[key] = value
        self.owner[key] = partition

    def drop(self, partitions: Iterable[int]) -> int:
        """Forget the entries owned by ``partitions`` (revoked: another instance owns them
        now); returns how many. Pending changes of those entries are discarded too."""
        ps = set(partitions)
        gone = [k for k, p in self.owner.items() if p in ps]
        for k in gone:
            del self.data[k]
            del self.owner[k]
        for k in [k for k, p in self._dirty.items() if p in ps]:
            del self._dirty[k]
            self._new.discard(k)
        return len(gone)


def _valid(table: str, value: Any) -> bool:
    """The shape the core relies on when it reads an entry of ``table``."""
    if value is None:
        return True
    if table in ("pending_p", "pending_o"):
        return (
            isinstance(value, list)
            and len(value) >= 4
            and all(isinstance(v, int) for v in value[:2])
        )
    if table in ("drift", "newkeys"):
        return isinstance(value, dict) and isinstance(value.get("p"), int)
    if table == "perf":
        return isinstance(value, dict) and isinstance(value.get("applied"), dict)
    if table == "meta":
        return isinstance(value, int | dict)
    return isinstance(value, dict | int)  # perfmerge: window parts, progress


class StateTables:
    """The monitor's tables (:data:`STATE_TABLES`) as :class:`ChangelogTable` objects.

    Parameters
    ----------
    names : iterable of str, optional
        Table names (default: :data:`STATE_TABLES`).
    """

    def __init__(self, names: Iterable[str] = STATE_TABLES) -> None:
        self.tables: dict[str, ChangelogTable] = {n: ChangelogTable(n) for n in names}

    def at(self, partition: int) -> None:
        """Writes from now on are owned by ``partition``."""
        for t in self.tables.values():
            t.partition = partition

    def changes(self) -> tuple[list[tuple[int, bytes, bytes | None]], dict[str, tuple[int, int]]]:
        """The changelog records of every change since the last call.

        Returns
        -------
        records : list of (partition, key bytes, value bytes or None)
            Key ``[table, entry key]`` and value as JSON (None: a tombstone).
        counts : dict of str to (int, int)
            Per table: records written, entries created and deleted in between (not written).
        """
        out: list[tuple[int, bytes, bytes | None]] = []
        counts: dict[str, tuple[int, int]] = {}
        for name, t in self.tables.items():
            skipped = t.skipped
            changes = t.take_changes()
            for p, key, value in changes:
                out.append(
                    (
                        p,
                        orjson.dumps([name, key]),
                        None if value is None else orjson.dumps(value, option=_DUMPS_OPTIONS),
                    )
                )
            if changes or t.skipped > skipped:
                counts[name] = (len(changes), t.skipped - skipped)
        return out, counts

    def apply(self, partition: int, key: bytes | None, value: bytes | None) -> bool:
        """Apply one changelog record read back from ``partition``; False (nothing applied)
        when it does not decode or does not fit its table."""
        try:
            k = orjson.loads(key) if key is not None else None
            v = orjson.loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            return False
        if not (isinstance(k, list) and len(k) == 2 and isinstance(k[1], str)):
            return False
        table = self.tables.get(k[0]) if isinstance(k[0], str) else None
        if table is None or not _valid(table.name, v):
            return False
        table.load(partition, k[1], v)
        return True

    def drop(self, partitions: Iterable[int]) -> int:
        """Forget every entry owned by ``partitions``; returns how many."""
        ps = list(partitions)
        return sum(t.drop(ps) for t in self.tables.values())

    def owned(self, partition: int) -> int:
        """Entries owned by ``partition`` (all tables)."""
        return sum(1 for t in self.tables.values() for p in t.owner.values() if p == partition)
