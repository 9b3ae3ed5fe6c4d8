"""Two monitor cores in one consumer group (each owns some partitions; partials merged by one
owner) raise exactly the performance alerts one core owning every partition raises."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from segstream.services.monitor.core import MonitorCore
from segstream.shared.drift import DriftReference
from segstream.shared.settings import MonitorSettings
from tests.unit.test_monitor_performance import B1, BASE, DAY, T0, outcome, pred

P = 4


def make(merge_locally: bool) -> MonitorCore:
    s = MonitorSettings(
        performance_min_count=20,
        join_expiry_s=86_400,
        lateness_s=3600,
        idle_close_s=60.0,
        max_future_s=30 * 86_400.0,  # few events days apart in one test
    )
    tables: dict[str, Any] = {
        k: {} for k in ("drift", "newkeys", "pending_p", "pending_o", "perf", "meta", "perfmerge")
    }
    return MonitorCore(
        s,
        model="m",
        id_field="event_id",
        time_field="event_time",
        target="arr_delay",
        reference_for={B1: (DriftReference({}, {}), BASE)}.get,
        tables=tables,
        partitions=P,
        merge_locally=merge_locally,
    )


def workload(seed: int = 0) -> list[tuple[int, str, dict[str, Any]]]:
    """(partition, kind, record): 4 days, errors growing per day (day 2-3: MAE alerts)."""
    rng = np.random.default_rng(seed)
    out = []
    for d in range(4):
        for i in range(200):
            eid = f"d{d}-e{i}"
            t = T0 + d * DAY + int(rng.integers(0, DAY - 3_600_000))
            p = int(rng.integers(0, P))
            y = float(rng.normal(5.0 * d * d, 3.0))
            out.append((p, "p", pred(eid, t, 0.0, half=4.0)))
            out.append((p, "o", outcome(eid, t, y)))
    out.sort(key=lambda r: (r[2]["event_time"], r[1]))
    return out


def run_single(recs) -> list[Any]:
    c = make(True)
    alerts: list[Any] = []
    for i, (p, kind, rec) in enumerate(recs):
        (c.on_prediction if kind == "p" else c.on_outcome)(rec, p, i, 1.0)
        if i % 100 == 99:
            for q in range(P):
                alerts += c.on_tick(q, 1.0)
    for now in (2.0, 10_000.0):  # the end of the replay: idle sources, then every window
        for q in range(P):
            alerts += c.on_tick(q, now)
    return alerts


def run_two(recs) -> list[Any]:
    a, b = make(False), make(False)
    owner = {p: (a if p % 2 == 0 else b) for p in range(P)}
    alerts: list[Any] = []

    def tick(now: float) -> None:
        for q in range(P):
            alerts.extend(owner[q].on_tick(q, now))
        # the partials topic's partition 0 is owned by a: it merges both instances' records
        for rec in a.take_partials() + b.take_partials():
            alerts.extend(a.on_partial(rec, now))

    for i, (p, kind, rec) in enumerate(recs):
        c = owner[p]
        (c.on_prediction if kind == "p" else c.on_outcome)(rec, p, i, 1.0)
        if i % 100 == 99:
            tick(1.0)
    for now in (2.0, 10_000.0):
        tick(now)
    return alerts


def test_two_instances_raise_exactly_the_alerts_of_one() -> None:
    recs = workload()
    one, two = run_single(recs), run_two(recs)
    perf1 = [x for x in one if x.type == "performance"]
    assert len(perf1) >= 3, "the workload must raise performance alerts"
    ids1, ids2 = Counter(x.alert_id for x in one), Counter(x.alert_id for x in two)
    assert ids1 == ids2  # same ids, none lost, none doubled
    assert max(ids2.values()) == 1
    by_id = {x.alert_id: x for x in one}
    for x in two:
        y = by_id[x.alert_id]
        assert (x.count, x.value, x.ci, x.mae) == (y.count, y.value, y.ci, y.mae)


def test_a_window_waits_for_every_partition() -> None:
    a = make(False)
    t = T0 + 3_600_000
    for p in range(P):
        a.on_prediction(pred(f"e{p}", t, 0.0), p, 0, 1.0)
        a.on_outcome(outcome(f"e{p}", t, 20.0), p, 0, 1.0)
    for p in range(P):  # clocks of every partition past day 0's end + expiry
        a.on_prediction(pred(f"x{p}", t + 3 * DAY, 0.0), p, 1, 1.0)
        a.on_outcome(outcome(f"y{p}", t + 3 * DAY, 0.0), p, 1, 1.0)
    for p in range(P - 1):
        a.on_tick(p, 1.0)
    recs = a.take_partials()
    assert [r["kind"] for r in recs].count("partial") == P - 1
    merged: list[Any] = []
    for r in recs:
        merged += a.on_partial(r, 1.0)
    assert a.counters.windows_closed.get("performance", 0) == 0  # partition P-1 not reported
    a.on_tick(P - 1, 1.0)
    for r in a.take_partials():
        merged += a.on_partial(r, 1.0)
    assert a.counters.windows_closed["performance"] == 1
    # a re-sent partial of the judged window (at-least-once) changes nothing
    a.on_partial({"kind": "partial", "w": T0, "p": 0, "state": {}}, 1.0)
    assert "w|" + str(T0) not in a.t["perfmerge"]


def test_a_partition_just_assigned_reports_no_progress_before_its_records() -> None:
    """After a rebalance the new owner of a partition has read none of its backlog yet: it
    must not declare the partition's windows final from its other partitions' clocks."""
    b = make(False)
    t = T0 + 3_600_000
    b.on_prediction(pred("x", t + 3 * DAY, 0.0), 1, 0, 1.0)  # b's own partition 1 is far on
    b.on_outcome(outcome("x", t + 3 * DAY, 0.0), 1, 0, 1.0)
    b.on_tick(0, 1.0)  # partition 0 just assigned to b, nothing of it read yet
    assert b.take_partials() == []
    b.on_prediction(pred("y", t, 0.0), 0, 5, 2.0)  # its backlog starts: its own clocks rule
    b.on_outcome(outcome("y", t, 0.0), 0, 5, 2.0)
    b.on_tick(0, 2.0)
    (prog,) = [r for r in b.take_partials() if r["kind"] == "progress"]
    assert prog["p"] == 0 and prog["through"] < t
