"""Bounded monitor state (no broker): pending join entries by count (oldest first) and by the
clock of their own stream once the other stream stops; per-record work independent of the
table size."""

from __future__ import annotations

from typing import Any

from segstream.services.monitor.core import MonitorCore, PendingBound
from tests.unit.test_monitor_performance import DAY, T0, core, outcome, pred


def test_pending_predictions_are_bounded_per_partition_oldest_first() -> None:
    c = core(pending_max=10)
    t = T0 + 3_600_000
    for i in range(25):  # out of order event times: eviction follows event time
        c.on_prediction(pred(f"p{i}", t + ((i * 7) % 25) * 1000, 1.0), 0, i, 0.0)
    assert len(c.t["pending_p"]) == 10
    kept = sorted(c.t["pending_p"].values(), key=lambda v: v[1])
    assert kept[0][1] == t + 15 * 1000  # the 10 newest by event time remain
    assert c.counters.overflows["pending_predictions"] == 15
    # another partition has its own bound
    for i in range(5):
        c.on_prediction(pred(f"q{i}", t, 1.0), 1, i, 0.0)
    assert len(c.t["pending_p"]) == 15


def test_pending_outcomes_are_bounded() -> None:
    c = core(pending_max=3)
    for i in range(8):
        c.on_outcome(outcome(f"o{i}", T0 + i, 1.0), 0, i, 0.0)
    assert set(c.t["pending_o"]) == {"o5", "o6", "o7"}
    assert c.counters.overflows["pending_outcomes"] == 5


def test_joined_entries_free_their_place_in_the_bound() -> None:
    c = core(pending_max=2)
    for i in range(50):  # each prediction is joined at once by its outcome
        c.on_prediction(pred(f"e{i}", T0 + i, 1.0), 0, i, 0.0)
        c.on_outcome(outcome(f"e{i}", T0 + i, 2.0), 0, i, 0.0)
    assert c.counters.overflows == {}
    assert c.counters.join["joined"] == 50
    assert c.pending_p.size(0) == 0 and c.pending_o.size(0) == 0


def test_predictions_expire_by_their_own_clock_when_outcomes_stop() -> None:
    """Outcomes stop (no outcome ever again): after source_idle_s the predictions' own
    stream expires them; while outcomes flow their clock decides (issue 21)."""
    c = core(join_idle_s=30.0, max_future_s=10 * 86_400.0)  # "far" is 3 days ahead
    t = T0 + 3_600_000
    c.on_outcome(outcome("x", t - 10, 1.0), 0, 0, 0.0)  # outcome stream seen once at 0 s
    assert c.s.join_idle_s == 30.0 and core().s.join_idle_s == 600.0
    c.on_prediction(pred("waiting", t, 1.0), 0, 0, 0.0)
    c.on_prediction(pred("far", t + 3 * DAY, 1.0), 0, 1, 10.0)  # own clock past t + 1 day
    c.on_tick(0, 10.0)
    assert "waiting" in c.t["pending_p"]  # outcomes still active: their clock rules
    c.on_tick(0, 40.0)  # outcomes silent for 40 s > 30 s
    assert "waiting" not in c.t["pending_p"] and "far" in c.t["pending_p"]
    assert c.counters.join["expired_prediction"] == 1


def test_pending_bound_rebuilds_from_a_recovered_table() -> None:
    table: dict[str, Any] = {f"e{i}": [0, T0 + i, 1.0] for i in range(6)}
    evicted: list[int] = []
    b = PendingBound(table, 4, lambda: list(table.items()), evicted.append)
    b.add("new", [0, T0 + 100, 1.0])
    assert sorted(table) == ["e3", "e4", "e5", "new"] and evicted == [3]
    assert b.expire_before(0, T0 + 5) == 2 and sorted(table) == ["e5", "new"]


class _CountingDict(dict):  # type: ignore[type-arg]
    """A dict counting full iterations (the core's scans go through ``items()``)."""

    scans = 0

    def items(self):  # type: ignore[override]
        _CountingDict.scans += 1
        return super().items()


def test_work_per_record_does_not_scan_the_tables() -> None:
    c = core(pending_max=100_000)
    for name in ("pending_p", "pending_o", "drift", "newkeys", "perf"):
        c.t[name] = _CountingDict(c.t[name])
    c2 = MonitorCore(
        c.s,
        model="m",
        id_field="event_id",
        time_field="event_time",
        target="arr_delay",
        reference_for=c.reference_for,
        tables=c.t,
        partitions=1,
    )
    for i in range(2000):
        c2.on_prediction(pred(f"p{i}", T0 + i, 1.0), 0, i, 0.0)
        c2.on_outcome(outcome(f"o{i}", T0 + i, 1.0), 0, i, 0.0)
    # one scan per pending table to build its heap, never one per record
    assert _CountingDict.scans <= 2


def test_outcomes_wait_for_predictions_that_have_not_been_read_yet() -> None:
    """The monitor reads every outcome of a replay before the first prediction (the worker is
    slower than the simulator): the outcomes wait, they do not expire by their own clock."""
    c = core(join_idle_s=30.0, max_future_s=10 * 86_400.0)  # a few events days apart
    t = T0 + 3_600_000
    for i in range(5):  # three days of outcomes, no prediction read yet
        c.on_outcome(outcome(f"e{i}", t + i * DAY, 1.0), 0, i, 0.0)
    c.on_tick(0, 20.0)
    assert len(c.t["pending_o"]) == 5
    for i in range(5):
        c.on_prediction(pred(f"e{i}", t + i * DAY, 0.0), 0, i, 25.0)
    assert c.counters.join["joined"] == 5 and "unmatched_outcome" not in c.counters.join
    # predictions never come for these: after join_idle_s their own clock expires them
    c.on_outcome(outcome("lonely", t + 6 * DAY, 1.0), 0, 10, 26.0)
    c.on_outcome(outcome("later", t + 9 * DAY, 1.0), 0, 11, 26.0)
    c.on_tick(0, 40.0)
    assert "lonely" in c.t["pending_o"]  # predictions seen 15 s ago: their clock rules
    c.on_tick(0, 60.0)
    assert "lonely" not in c.t["pending_o"] and "later" in c.t["pending_o"]


def test_an_event_dated_far_in_the_future_is_dropped_and_moves_no_clock() -> None:
    c = core()
    t = T0 + 3_600_000
    for i in range(20):
        c.on_prediction(pred(f"p{i}", t + i * 60_000, 1.0), 0, i, 0.0)
        c.on_outcome(outcome(f"o{i}", t + i * 60_000, 1.0), 0, i, 0.0)
    far = T0 + 250 * 365 * DAY  # the year 2263
    c.on_prediction(pred("future", far, 1.0), 0, 100, 0.0)
    c.on_outcome(outcome("future2", far, 1.0), 0, 100, 0.0)
    c.on_outcome(outcome("backwards", t, 1.0, after_ms=-3_600_000), 0, 101, 0.0)
    assert c.counters.records[("predictions", "out_of_range")] == 1
    assert c.counters.records[("outcomes", "out_of_range")] == 2
    assert "future" not in c.t["pending_p"] and "future2" not in c.t["pending_o"]
    assert c.pred_clocks.source_max(0) == t + 19 * 60_000
    c.on_tick(0, 10.0)
    assert len(c.t["pending_p"]) == 20  # nothing expired by the far-future time


def test_a_micro_batch_gives_what_its_records_give_one_by_one() -> None:
    import orjson

    recs = []
    for i in range(300):
        p = i % 3
        recs.append(("p", (orjson.dumps(pred(f"e{i}", T0 + i * 60_000, 1.0)), p, i)))
        if i % 4:
            recs.append(("o", (orjson.dumps(outcome(f"e{i}", T0 + i * 60_000, 3.0)), p, i)))
    recs.append(("p", (b"not json", 0, 999)))
    recs.append(("p", (orjson.dumps(pred("far", T0 + 400 * 365 * DAY, 1.0)), 1, 998)))
    one, batched = core(pending_max=50), core(pending_max=50)
    for kind, r in recs:
        (one.on_prediction if kind == "p" else one.on_outcome)(*r, 0.0)
    for j in range(0, len(recs), 64):
        chunk = recs[j : j + 64]
        batched.on_predictions([r for k, r in chunk if k == "p"], 0.0)
        batched.on_outcomes([r for k, r in chunk if k == "o"], 0.0)
    assert one.counters.records == batched.counters.records
    assert one.counters.records[("predictions", "out_of_range")] == 1
    assert set(one.t["pending_p"]) == set(batched.t["pending_p"])
    assert one.t["perf"] == batched.t["perf"]
