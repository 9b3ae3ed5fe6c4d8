"""The monitor's state tables and their changelog (no broker): one record per changed entry
per flush, none for an entry created and deleted in between, restore from the records, drop
of revoked partitions, malformed changelog records refused; a core restarted from its
changelog raises exactly the alerts of a core that never stopped."""

from __future__ import annotations

from typing import Any

import orjson

from segstream.services.monitor.state import ChangelogTable, StateTables


def test_each_changed_entry_is_written_once_with_its_final_value() -> None:
    t = ChangelogTable("x")
    t.partition = 2
    t["a"] = 1
    t["a"] = 2
    t["b"] = 3
    assert t.take_changes() == [(2, "a", 2), (2, "b", 3)]
    assert t.take_changes() == []


def test_an_entry_created_and_deleted_between_flushes_writes_nothing() -> None:
    t = ChangelogTable("x")
    t["pending"] = [0, 1]
    assert t.pop("pending") == [0, 1]
    t["kept"] = 1
    assert t.take_changes() == [(0, "kept", 1)]
    assert "pending" not in t and t.skipped == 1


def test_an_entry_that_existed_before_gets_its_tombstone_in_its_owners_partition() -> None:
    t = ChangelogTable("x")
    t.partition = 1
    t["old"] = 1
    t.take_changes()
    t.partition = 3  # the writes now belong to another partition: the delete still goes to 1
    t["old"] = 5
    del t["old"]
    assert t.take_changes() == [(1, "old", None)]
    t.load(4, "restored", 7)  # a restored entry deleted: tombstone to its partition
    t.pop("restored")
    assert t.take_changes() == [(4, "restored", None)]


def test_an_entry_moving_to_another_partition_leaves_a_tombstone() -> None:
    t = ChangelogTable("x")
    t.partition = 0
    t["k"] = 1
    t.take_changes()
    t.partition = 2
    t["k"] = 2
    assert sorted(t.take_changes(), key=str) == sorted([(0, "k", None), (2, "k", 2)], key=str)
    assert t.owner["k"] == 2


def test_restore_from_the_changelog_rebuilds_the_tables_and_their_owners() -> None:
    a = StateTables()
    log: list[tuple[int, bytes, bytes | None]] = []
    a.at(0)
    a.tables["pending_p"]["e1"] = [0, 1000, 1.0, 2.0, 0.8, 3, "b" * 64]
    a.tables["drift"]["1|b"] = {"p": 0, "n": 3}
    a.at(1)
    a.tables["pending_p"]["e2"] = [1, 2000, 1.0, 2.0, 0.8, 3, "b" * 64]
    a.tables["meta"]["clock|pred|1"] = 2000
    recs, counts = a.changes()
    log += recs
    assert counts["pending_p"] == (2, 0)
    a.at(0)
    del a.tables["pending_p"]["e1"]
    a.tables["drift"]["1|b"] = {"p": 0, "n": 4}
    log += a.changes()[0]
    b = StateTables()
    for p, k, v in log:
        assert b.apply(p, k, v)
    for name in a.tables:
        assert b.tables[name].data == a.tables[name].data, name
        assert b.tables[name].owner == a.tables[name].owner, name
    assert b.changes()[0] == []  # restoring writes nothing
    # a new owner of partition 1 only: restores partition 1's records only
    c = StateTables()
    for p, k, v in log:
        if p == 1:
            c.apply(p, k, v)
    assert set(c.tables["pending_p"]) == {"e2"} and c.owned(1) == 2 and c.owned(0) == 0


def test_revoked_partitions_are_forgotten_without_changelog_records() -> None:
    s = StateTables()
    for p in range(3):
        s.at(p)
        s.tables["pending_o"][f"e{p}"] = [p, 1, 2.0, 1]
        s.tables["meta"][f"drift_closed|{p}"] = p
    s.changes()
    s.at(1)
    s.tables["pending_o"]["late"] = [1, 5, 2.0, 5]  # changed, not flushed, then revoked
    assert s.drop([1]) == 3
    assert set(s.tables["pending_o"]) == {"e0", "e2"}
    assert s.changes()[0] == []


def test_malformed_changelog_records_are_refused() -> None:
    s = StateTables()
    good_key = orjson.dumps(["pending_p", "e"])
    bad: list[tuple[Any, Any]] = [
        (b"not json", b"1"),
        (orjson.dumps(["nope", "e"]), b"1"),  # unknown table
        (orjson.dumps("e"), b"1"),  # not [table, key]
        (orjson.dumps(["pending_p", 3]), b"[0, 1, 2, 3]"),  # key not a string
        (good_key, b"{"),  # value not JSON
        (good_key, b'{"p": 0}'),  # a pending entry must be a list
        (good_key, b'["0", 1, 2, 3]'),  # partition not an int
        (orjson.dumps(["drift", "w"]), b"[1]"),  # a drift state must be a dict with p
        (None, b"1"),
    ]
    for k, v in bad:
        assert not s.apply(0, k, v), (k, v)
    assert all(len(t) == 0 for t in s.tables.values())
    assert s.apply(0, good_key, b"[0, 1, 2.5, 1]")
    assert s.apply(0, good_key, None)  # tombstone
    assert "e" not in s.tables["pending_p"]


# ----------------------------------------------------------------------------- core restart
def _core(state: StateTables) -> Any:
    from segstream.services.monitor.core import MonitorCore
    from segstream.shared.drift import DriftReference
    from segstream.shared.settings import MonitorSettings
    from tests.unit.test_monitor_performance import B1, BASE
    from tests.unit.test_monitor_scaleout import P

    s = MonitorSettings(
        performance_min_count=20,
        join_expiry_s=86_400,
        lateness_s=3600,
        idle_close_s=60.0,
        max_future_s=30 * 86_400.0,
    )
    return MonitorCore(
        s,
        model="m",
        id_field="event_id",
        time_field="event_time",
        target="arr_delay",
        reference_for={B1: (DriftReference({}, {}), BASE)}.get,
        tables=dict(state.tables),
        partitions=P,
        merge_locally=True,
    )


def _run(recs: list[Any], stop_at: int | None, redeliver: int = 0) -> list[Any]:
    """Feed ``recs`` in batches of 50 as the loop does (apply, save clocks, flush); at
    ``stop_at`` the core is dropped and a new one restored from the changelog written so
    far, which then re-reads the last ``redeliver`` records (not committed) and goes on."""
    from tests.unit.test_monitor_scaleout import P

    state = StateTables()
    core = _core(state)
    log: list[tuple[int, bytes, bytes | None]] = []
    alerts: list[Any] = []
    i = 0
    while i < len(recs):
        if stop_at is not None and i == stop_at:
            state = StateTables()
            for p, k, v in log:
                assert state.apply(p, k, v)
            core = _core(state)
            core.restore_partitions(list(range(P)), 1.0)
            i -= redeliver
            stop_at = None
        batch = recs[i : i + 50]
        for j, (p, kind, rec) in enumerate(batch, start=i):
            state.at(p)
            (core.on_prediction if kind == "p" else core.on_outcome)(rec, p, j, 1.0)
        for p in {b[0] for b in batch}:
            state.at(p)
            core.save_clocks(p)
        for q in range(P):
            state.at(q)
            alerts += core.on_tick(q, 1.0)
        log += state.changes()[0]
        i += 50
    for now in (2.0, 10_000.0):
        for q in range(P):
            state.at(q)
            alerts += core.on_tick(q, now)
    return alerts


def test_a_core_restored_from_its_changelog_raises_exactly_the_alerts_of_one_that_never_stopped():
    from collections import Counter

    from tests.unit.test_monitor_scaleout import workload

    recs = workload()
    straight = _run(recs, None)
    assert len([a for a in straight if a.type == "performance"]) >= 3
    for stop_at, redeliver in ((600, 0), (1000, 50), (1450, 50)):
        restarted = _run(recs, stop_at, redeliver)
        ids1 = Counter(a.alert_id for a in straight)
        ids2 = Counter(a.alert_id for a in restarted)
        assert ids2 == ids1, (stop_at, redeliver)  # none lost, none doubled
        by_id = {a.alert_id: a for a in straight}
        for a in restarted:
            b = by_id[a.alert_id]
            assert (a.count, a.value, a.mae) == (b.count, b.value, b.mae)
