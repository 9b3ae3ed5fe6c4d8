"""MonitorCore over plain dicts: windows close and alert once, lateness, new segments,
malformed records, per-bundle references, restart (no broker)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import numpy as np
import pytest

from segstream.services.monitor.core import MonitorCore
from segstream.services.monitor.performance import Baseline
from segstream.services.worker.stats import batch_stats_slices
from segstream.shared.drift import CategoricalReference, DriftReference, NumericReference
from segstream.shared.settings import MonitorSettings

DAY = 86_400_000
T0 = int(dt.datetime(2013, 9, 1, tzinfo=dt.UTC).timestamp() * 1000)  # a window start


def ref(edges=(0.0, 10.0), expected=(0.5, 0.5, 0.0, 0.0)) -> DriftReference:
    """x: half below 0, half in [0, 10); c: half a, half b; no prediction reference."""
    return DriftReference(
        numeric={"x": NumericReference(np.asarray(edges), np.asarray(expected))},
        categorical={"c": CategoricalReference(("a", "b"), np.array([0.5, 0.5, 0.0, 0.0]))},
    )


NORMAL = None  # x alternating -5 / 5 and c alternating a / b: no drift


B1, B2, GONE = "b1" * 32, "b2" * 32, "9" * 64  # bundle ids (64 lowercase hex)
BASE = Baseline(mae=10.0, coverage=0.8, mass=0.8, segment_mae={"1": 10.0})


def tables() -> dict[str, dict[str, Any]]:
    return {k: {} for k in ("drift", "newkeys", "pending_p", "pending_o", "perf", "meta")}


def core(tbl=None, refs=None, **kw: Any) -> MonitorCore:
    s = MonitorSettings(**{"lateness_s": 3600, "drift_min_count": 100, **kw})
    refs = refs or {B1: (ref(), BASE)}
    return MonitorCore(
        s,
        model="m",
        id_field="event_id",
        time_field="event_time",
        target="arr_delay",
        reference_for=refs.get,
        tables=tbl if tbl is not None else tables(),
        partitions=1,
    )


def stats(
    t_ms: list[int] | np.ndarray,
    x: Any,
    *,
    bundle: str = B1,
    unknown: list[Any] | None = None,
    worker: str = "w",
    batch: int = 0,
    reference: DriftReference | None = None,
    c: str | None = None,
    nodes: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Stats records (one per day slice) for events at ``t_ms`` with feature ``x``
    (``nodes``: the serving model node per event)."""
    t = np.asarray(t_ms, dtype="datetime64[ms]").astype("datetime64[ns]")
    n = len(t)
    alt = np.arange(n) % 2 == 0
    xs = (
        np.where(alt, -5.0, 5.0)
        if x is None
        else np.broadcast_to(np.asarray(x, float), (n,)).copy()
    )
    cols = {
        "x": xs,
        "c": np.where(alt, "a", "b").astype(object)
        if c is None
        else np.array([c] * n, dtype=object),
        "event_time": t,
    }
    scores = {
        "prediction": np.zeros(n),
        "fallback_level": np.zeros(n, np.int8),
        "unknown_key": np.array(unknown if unknown is not None else [None] * n, dtype=object),
        "imputed": np.zeros(n, bool),
        "segment": np.zeros(n, np.int32),
    }
    if nodes is not None:
        scores["model_node"] = np.asarray(nodes, np.int32)
    return batch_stats_slices(
        cols,
        scores,
        reference or ref(),
        time_field="event_time",
        slice_s=86_400,
        model="m",
        bundle_id=bundle,
        worker=worker,
        batch=batch,
        n_events=n,
        dlq_counts={},
        created_at="now",
        partitions=np.zeros(n, np.int32),
    )


def feed(
    c: MonitorCore, recs: list[dict[str, Any]], start_offset: int = 0, now: float = 0.0
) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(recs):
        out += c.on_stats(r, 0, start_offset + i, now)
    return out


def day(d: int, n: int, hour: float = 12.0) -> np.ndarray:
    return T0 + d * DAY + int(hour * 3_600_000) + np.arange(n)


def test_window_closes_exactly_once_with_one_alert_per_feature() -> None:
    c = core()
    # day 0: x all above the last edge (bin 2 of 4, expected 0.25) -> critical PSI
    assert feed(c, stats(day(0, 400), 50.0)) == []
    # day 1 at 00:30: watermark below day-0 end + 1 h lateness -> still open
    assert feed(c, stats(day(1, 10, hour=0.5), NORMAL), 1) == []
    alerts = feed(c, stats(day(1, 10, hour=1.5), NORMAL), 2)
    drift = [a for a in alerts if a.type == "drift"]
    assert {a.feature for a in drift} == {"x"}
    a = drift[0]
    assert a.severity == "critical" and a.statistic == "psi" and a.count == 400
    assert a.window_start == "2013-09-01T00:00:00.000Z"
    assert a.window_end == "2013-09-02T00:00:00.000Z"
    assert a.bundle_id == B1 and a.js_distance > 0.5
    assert f"{T0}|{B1}" not in c.t["drift"] and c.t["meta"]["drift_closed|0"] == T0 + DAY
    # nothing more for that window: ticks and further records do not repeat it
    assert c.on_tick(0, 1.0) == []
    assert [
        x
        for x in feed(c, stats(day(1, 5, hour=2), NORMAL), 3)
        if x.window_start.startswith("2013-09-01")
    ] == []


def test_categorical_psi_alert_and_thresholds_per_feature() -> None:
    c = core(drift_thresholds={"c": (0.9, 5.0)})
    feed(c, stats(day(0, 400), NORMAL, c="a"))
    alerts = feed(c, stats(day(1, 1, hour=2), NORMAL), 1)
    # c: all "a" vs 0.5/0.5 -> PSI = 0.5 ln 2 + 0.5 ln(0.5 / 1e-4) = 4.60 (epsilon-smoothed)
    # >= 0.9 but < 5: a warning at the feature's own level
    (a,) = [x for x in alerts if x.feature == "c"]
    assert a.severity == "warning" and a.threshold == 0.9
    assert a.value == pytest.approx(0.5 * np.log(2) + 0.5 * np.log(0.5 / 1e-4), abs=2e-3)


def test_late_record_within_allowance_is_applied_after_it_is_dropped_and_counted() -> None:
    c = core()
    feed(c, stats(day(0, 200), NORMAL))
    feed(c, stats(day(1, 1, hour=0.5), NORMAL), 1)  # watermark day1 00:30
    feed(c, stats(day(0, 100, hour=23), 50.0), 2)  # out of order but within lateness: applied
    assert c.t["drift"][f"{T0}|{B1}"]["n"] == 300
    alerts = feed(c, stats(day(1, 1, hour=1.5), NORMAL), 3)  # closes day 0
    (a,) = [x for x in alerts if x.feature == "x"]
    assert a.count == 300
    late = feed(c, stats(day(0, 500, hour=23.5), 50.0), 4)  # after the close: late
    assert late == [] and c.counters.records[("stats", "late")] == 1
    assert f"{T0}|{B1}" not in c.t["drift"]


def test_redelivered_stats_record_is_not_counted_twice() -> None:
    c = core()
    recs = stats(day(0, 150), NORMAL)
    feed(c, recs, 7)
    feed(c, recs, 7)  # same offset again (at-least-once replay after a crash)
    assert c.t["drift"][f"{T0}|{B1}"]["n"] == 150
    assert c.counters.records[("stats", "duplicate")] == 1


def test_batch_straddling_midnight_is_split_into_its_windows() -> None:
    c = core()
    t = np.r_[day(0, 150, hour=23.9), day(1, 150, hour=0.1)]
    recs = stats(t, NORMAL)
    assert len(recs) == 2
    feed(c, recs)
    assert c.t["drift"][f"{T0}|{B1}"]["n"] == 150
    assert c.t["drift"][f"{T0 + DAY}|{B1}"]["n"] == 150


def _new(alerts: list[Any]) -> list[Any]:
    return [a for a in alerts if a.type == "new_segment"]


def test_new_segment_counts_since_first_seen_across_days_and_alerts_once() -> None:
    """The real replay's case: an unseen key never reaches the threshold in one day but does
    over several; it alerts once (per key and bundle), with its first-seen time and count."""
    c = core(new_segment_threshold=50)
    k = "origin=LGA,carrier=MQ,dest=STL"
    out = []
    for d in range(4):  # 15 a day: crosses 50 on the 4th day
        out += _new(feed(c, stats(day(d, 15), NORMAL, unknown=[k] * 15), d * 10))
    (a,) = out
    assert a.segment == k and a.count == 60 and a.value == 60 and a.threshold == 50
    assert a.statistic == "count" and a.feature is None and a.bundle_id == B1
    assert a.first_seen == "2013-09-01T12:00:00.000Z"
    assert a.window_start == "2013-09-01T12:00:00.000Z"  # since first seen
    assert a.window_end == "2013-09-05T00:00:00.000Z"  # end of the day it crossed
    # more events of the key: no second alert; another key below the threshold: none
    assert _new(feed(c, stats(day(4, 60), NORMAL, unknown=[k] * 60), 50)) == []
    assert _new(feed(c, stats(day(4, 49, hour=13), NORMAL, unknown=["o"] * 49), 60)) == []
    assert c.t["newkeys"][f"{B1}|o"]["count"] == 49
    # the same key under another bundle is a new segment of that bundle
    b2 = _new(feed(c, stats(day(5, 50), NORMAL, bundle=B2, unknown=[k] * 50), 70))
    assert [(x.segment, x.bundle_id) for x in b2] == [(k, B2)]


def test_new_segment_alert_names_the_ancestor_segment_serving_the_key() -> None:
    """The worker's stats name, per unknown key, the model node that served most of its
    events (the nearest known ancestor the routing fell back to); the alert carries it."""
    c = core(new_segment_threshold=30)
    k = "origin=LGA,carrier=MQ,dest=STL"
    recs = stats(day(0, 40), NORMAL, unknown=[k] * 30 + [None] * 10, nodes=[3] * 20 + [7] * 20)
    assert recs[0]["unknown_key_nodes"] == {k: 3}  # 20 of its 30 events served by node 3
    (a,) = _new(feed(c, recs))
    assert a.serving_segment == 3 and a.segment == k
    # records of workers from before the field: no serving_segment, still counted
    old = stats(day(0, 40, hour=13), NORMAL, unknown=["o"] * 40)
    del old[0]["unknown_key_nodes"]
    (b,) = _new(feed(c, old, 5))
    assert b.segment == "o" and b.serving_segment is msgspec.UNSET


def test_a_regular_key_accumulates_however_slowly_idle_expiry() -> None:
    """The rule (idle expiry): a key's count runs from its first sighting while it keeps being
    seen within the lookback, however long it takes to reach the threshold; the 14 routes of
    the real replay need 38-64 days for 50 flights."""
    c = core(new_segment_threshold=50, new_segment_lookback_s=3 * 86_400)
    k = "k"
    out = []
    for d in range(0, 20, 2):  # 5 every other day: 50 on day 18, far beyond the lookback
        out += _new(feed(c, stats(day(d, 5), NORMAL, unknown=[k] * 5), d * 10))
        for q in range(1, 3):  # the watermark moves on in between
            feed(c, stats(day(d + q, 5), NORMAL), d * 10 + q)
            c.on_tick(0, float(d * 10 + q))
    (a,) = out
    assert a.count == 50 and a.first_seen == "2013-09-01T12:00:00.000Z"
    assert a.window_start == a.first_seen and a.window_end == "2013-09-20T00:00:00.000Z"


def test_a_key_idle_for_the_lookback_is_forgotten_and_counts_from_zero_again() -> None:
    c = core(new_segment_threshold=50, new_segment_lookback_s=3 * 86_400)
    assert _new(feed(c, stats(day(0, 40), NORMAL, unknown=["k"] * 40))) == []
    off = 1
    for d in range(1, 6):  # not seen for days 1-5: gone once the watermark is 3 days past
        feed(c, stats(day(d, 10), NORMAL), off)
        c.on_tick(0, 10.0 * off)  # expiry runs at most every 5 s (wall clock)
        off += 1
    assert f"{B1}|k" not in c.t["newkeys"]
    # back on day 6 with 40 more: 40 since its new first sighting, below 50: no alert
    assert _new(feed(c, stats(day(6, 40), NORMAL, unknown=["k"] * 40), off)) == []
    assert c.t["newkeys"][f"{B1}|k"]["count"] == 40
    assert c.t["newkeys"][f"{B1}|k"]["first"] == T0 + 6 * DAY + 12 * 3_600_000


def test_new_segment_redelivered_record_is_not_counted_twice() -> None:
    c = core(new_segment_threshold=50)
    recs = stats(day(0, 30), NORMAL, unknown=["k"] * 30)
    feed(c, recs, 5)
    feed(c, recs, 5)  # the same offset again (re-delivery after a restart)
    assert c.t["newkeys"][f"{B1}|k"]["count"] == 30


def test_new_keys_are_bounded_and_overflow_is_counted() -> None:
    c = core(new_segment_max_keys=3, new_segment_threshold=1000)
    keys = [f"k{i}" for i in range(10)]
    feed(c, stats(day(0, 100), NORMAL, unknown=[keys[i % 10] for i in range(100)]))
    assert len(c.t["newkeys"]) == 3  # one entry per key, at most max_keys
    assert c.counters.overflows["new_keys"] == 70  # the events of the 7 untracked keys
    # a tracked key keeps counting at the bound
    feed(c, stats(day(0, 10, hour=13), NORMAL, unknown=["k0"] * 10), 1)
    assert len(c.t["newkeys"]) == 3


def test_new_keys_are_forgotten_a_lookback_after_they_were_last_seen() -> None:
    c = core(new_segment_threshold=1000, new_segment_lookback_s=2 * 86_400)
    feed(c, stats(day(0, 10), NORMAL, unknown=["gone"] * 10))
    for d in range(1, 6):  # the watermark moves on, the key is not seen again
        feed(c, stats(day(d, 10), NORMAL), d)
        c.on_tick(0, 10.0 * d)
    assert f"{B1}|gone" not in c.t["newkeys"]
    assert c.counters.windows_closed["new_segment"] == 1


def test_malformed_stats_do_not_break_anything() -> None:
    c = core()
    short_bins = stats(day(0, 10), NORMAL)[0]
    short_bins["numeric"] = {"x": [1, 2]}  # the reference has 4 bins
    for i, bad in enumerate([None, "text", {"model": "m"}, short_bins]):
        assert c.on_stats(bad, 0, i, 0.0) == []
    # the bin-count mismatch is detected against the window's existing counts
    feed(c, stats(day(0, 10), NORMAL), 10)
    assert c.counters.records[("stats", "malformed")] == 4
    assert c.t["drift"][f"{T0}|{B1}"]["n"] == 10
    # another model's stats are ignored
    other = stats(day(0, 10), NORMAL)[0] | {"model": "other"}
    assert c.on_stats(other, 0, 20, 0.0) == [] and c.counters.records[("stats", "foreign")] == 1


def test_each_bundle_is_judged_against_its_own_reference() -> None:
    r2 = ref(edges=(40.0, 60.0), expected=(0.0, 1.0, 0.0, 0.0))  # x = 50 typical for b2
    asked: list[str] = []
    refs = {B1: (ref(), BASE), B2: (r2, BASE)}

    def lookup(b: str):
        asked.append(b)
        return refs.get(b)

    s = MonitorSettings(lateness_s=0, drift_min_count=100)
    c = MonitorCore(
        s,
        model="m",
        id_field="event_id",
        time_field="event_time",
        target="arr_delay",
        reference_for=lookup,
        tables=tables(),
        partitions=1,
    )
    feed(c, stats(day(0, 200), 50.0, bundle=B1))
    feed(c, stats(day(0, 200, hour=13), 50.0, bundle=B2, reference=r2), 1)
    alerts = feed(c, stats(day(1, 1, hour=1), NORMAL), 2)
    xs = {a.bundle_id: a for a in alerts if a.feature == "x"}
    assert set(xs) == {B1}  # drift for b1's reference only
    assert {B1, B2} <= set(asked)
    # a bundle whose reference cannot be loaded: its window is not judged, and counted
    feed(c, stats(day(1, 200), 50.0, bundle=GONE), 3)
    feed(c, stats(day(2, 1, hour=1), NORMAL), 4)
    assert c.counters.records[("stats", "no_reference")] >= 1


def test_idle_close_closes_open_windows() -> None:
    c = core(idle_close_s=5.0)
    feed(c, stats(day(0, 200), 50.0), now=100.0)
    assert c.on_tick(0, 103.0) == []
    alerts = c.on_tick(0, 106.0)
    assert [a.feature for a in alerts if a.type == "drift"] == ["x"]
    assert c.t["drift"] == {}


def test_restart_in_the_middle_of_a_window_continues_it() -> None:
    tbl = tables()
    c1 = core(tbl)
    feed(c1, stats(day(0, 150), 50.0))
    # "crash": a new core over the same (recovered) tables, clocks lost
    c2 = core(tbl)
    feed(c2, stats(day(0, 150, hour=18), 50.0), 1)
    alerts = feed(c2, stats(day(1, 1, hour=2), NORMAL), 2)
    (a,) = [x for x in alerts if x.feature == "x"]
    assert a.count == 300
    # re-delivery of the record before the crash (offset 0) after the restart: skipped
    feed(c2, stats(day(0, 150), 50.0), 0)
    assert c2.counters.records[("stats", "late")] == 1  # day 0 closed: re-delivery is late
