"""Outcome ↔ prediction join and per-window performance (no broker)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import orjson
import pytest

from segstream.services.monitor.core import MonitorCore
from segstream.services.monitor.drift import MalformedRecord
from segstream.services.monitor.performance import (
    Baseline,
    add_pair,
    decode_prediction,
    empty_state,
    merge,
    outcome_decoder,
    pending_outcome,
    pending_prediction,
    performance_findings,
)
from segstream.shared.drift import DriftReference
from segstream.shared.settings import MonitorSettings

DAY = 86_400_000
T0 = int(dt.datetime(2013, 9, 1, tzinfo=dt.UTC).timestamp() * 1000)


def iso(ms: int) -> str:
    return str(np.datetime64(int(ms), "ms")) + "Z"


B1, B2 = "b1" * 32, "b2" * 32  # bundle ids (64 lowercase hex)


def pred(
    eid: str, t_ms: int, p: float, *, half: float = 10.0, seg: int = 1, bundle: str = B1
) -> dict[str, Any]:
    return {
        "event_id": eid,
        "model": "m",
        "bundle_id": bundle,
        "segment": seg,
        "fallback_level": 0,
        "prediction": p,
        "interval": [p - half, p + half],
        "interval_mass": 0.8,
        "pattern": 0,
        "pattern_proba": 0.5,
        "event_time": iso(t_ms),
        "scored_at": "now",
    }


def outcome(eid: str, t_ms: int, y: float | None, *, after_ms: int = 3_600_000) -> dict[str, Any]:
    return {
        "event_id": eid,
        "arr_delay": y,
        "event_time": iso(t_ms),
        "outcome_time": iso(t_ms + after_ms),
    }


BASE = Baseline(mae=10.0, coverage=0.8, mass=0.8, segment_mae={"1": 8.0})


def core(**kw: Any) -> MonitorCore:
    s = MonitorSettings(
        **{
            "performance_min_count": 4,
            "join_expiry_s": 86_400,
            "lateness_s": 3600,
            # a handful of events days apart: the event-time sanity must not drop them
            "max_future_s": 30 * 86_400.0,
            **kw,
        }
    )
    tables = {k: {} for k in ("drift", "newkeys", "pending_p", "pending_o", "perf", "meta")}
    return MonitorCore(
        s,
        model="m",
        id_field="event_id",
        time_field="event_time",
        target="arr_delay",
        reference_for={B1: (DriftReference({}, {}), BASE)}.get,
        tables=tables,
        partitions=1,
    )


def test_join_in_both_orders_and_nan_outcomes() -> None:
    c = core()
    t = T0 + 3_600_000
    c.on_prediction(pred("a", t, 10.0), 0, 0, 0.0)
    c.on_outcome(outcome("a", t, 30.0), 0, 0, 0.0)  # prediction first: |30-10| = 20
    c.on_outcome(outcome("b", t, 5.0), 0, 1, 0.0)  # outcome first
    c.on_prediction(pred("b", t, 0.0), 0, 1, 0.0)  # |5-0| = 5, covered
    c.on_prediction(pred("x", t, 0.0), 0, 2, 0.0)
    c.on_outcome(outcome("x", t, None), 0, 2, 0.0)  # cancelled flight: NaN outcome
    st = c.t["perf"][f"{T0}|0"]
    assert st["n"] == 2 and st["n_nan"] == 1
    assert st["sum_abs"] == pytest.approx(25.0)
    assert st["covered"] == 1 and st["n_interval"] == 2
    assert st["segments"] == {"1": [2, 25.0]}
    assert c.t["pending_p"] == {} and c.t["pending_o"] == {}
    assert c.counters.join == {"joined": 2, "joined_nan": 1}


def test_missing_outcomes_expire_and_unknown_outcomes_are_unmatched() -> None:
    c = core()
    t = T0 + 3_600_000
    c.on_prediction(pred("lonely", t, 1.0), 0, 0, 0.0)
    c.on_outcome(outcome("ghost", t, 3.0), 0, 0, 0.0)  # no prediction will ever come
    c.on_tick(0, 1.0)
    assert "lonely" in c.t["pending_p"] and "ghost" in c.t["pending_o"]
    # both clocks move past t + expiry (1 day)
    c.on_prediction(pred("later", t + DAY + 1, 1.0), 0, 1, 2.0)
    c.on_outcome(outcome("later2", t + DAY, 1.0, after_ms=2), 0, 1, 2.0)
    c.on_tick(0, 3.0)
    assert "lonely" in c.t["pending_p"]  # scanned at most every 5 s
    c.on_tick(0, 7.0)
    assert "lonely" not in c.t["pending_p"] and "ghost" not in c.t["pending_o"]
    assert c.counters.join["expired_prediction"] == 1
    assert c.counters.join["unmatched_outcome"] == 1


def test_performance_window_closes_once_with_mae_alert() -> None:
    c = core()
    t = T0 + 3_600_000
    # 4 outcomes, errors 20 each -> MAE 20 = 2.0 x the test MAE 10: critical
    for i in range(4):
        c.on_prediction(pred(f"e{i}", t + i, 0.0, half=5.0), 0, i, 0.0)
        c.on_outcome(outcome(f"e{i}", t + i, 20.0), 0, i, 0.0)
    assert c.on_tick(0, 1.0) == []  # clocks not past end + expiry yet
    # outcome clock passes day-0 end + 1 day expiry, prediction clock passes end + 1 h
    c.on_prediction(pred("p2", T0 + 2 * DAY + 1, 0.0), 0, 10, 2.0)
    c.on_outcome(outcome("o2", T0 + 2 * DAY, 0.0, after_ms=1), 0, 10, 2.0)
    alerts = c.on_tick(0, 3.0)
    by = {a.statistic: a for a in alerts if a.segment is None}
    mae = by["mae_ratio"]
    assert mae.type == "performance" and mae.severity == "critical"
    assert mae.value == pytest.approx(2.0) and mae.threshold == 2.0
    assert mae.mae == 20.0 and mae.baseline_mae == 10.0 and mae.count == 4
    assert mae.window_start == "2013-09-01T00:00:00.000Z"
    cov = by["interval_coverage"]  # none of the 4 inside +-5: 0 outside [0.7, 0.9]
    assert cov.value == 0.0 and cov.threshold == pytest.approx(0.7)
    # the segment with a test MAE of 8: ratio 2.5
    (seg,) = [a for a in alerts if a.segment == 1]
    assert seg.value == pytest.approx(2.5)
    assert c.t["meta"]["perf_closed"] == T0 + DAY
    assert len({a.alert_id for a in alerts}) == len(alerts)  # MAE and coverage differ
    assert c.on_tick(0, 4.0) == []  # exactly once
    # an outcome for the closed window joining now is late (not applied)
    c.on_prediction(pred("slow", t, 0.0), 0, 11, 5.0)
    c.on_outcome(outcome("slow", t, 100.0, after_ms=DAY * 3), 0, 11, 5.0)
    assert c.counters.join["late"] == 1


def test_minimum_count_and_ratio_below_threshold() -> None:
    st = empty_state()
    p = [0, T0, 0.0, -10.0, 10.0, 1, "b1", 0.8]
    for y in (12.0, 12.0, 12.0):
        st = add_pair(st, p, [0, T0, y, T0])
    assert (
        performance_findings(
            st, {"b1": BASE}, ratio_warning=1.5, ratio_critical=2.0, min_count=4, coverage_band=0.1
        )
        == []
    )
    st = add_pair(st, p, [0, T0, 12.0, T0])
    f = {
        x.statistic: x
        for x in performance_findings(
            st, {"b1": BASE}, ratio_warning=1.5, ratio_critical=2.0, min_count=4, coverage_band=0.1
        )
        if x.segment is None
    }
    assert f["mae_ratio"].value == pytest.approx(1.2) and f["mae_ratio"].severity is None
    # coverage 0/4 -> outside the band
    assert f["interval_coverage"].severity == "warning"


def test_baseline_is_weighted_by_bundle_and_states_merge() -> None:
    a, b = empty_state(), empty_state()
    for _ in range(3):
        a = add_pair(a, [0, T0, 0.0, None, None, 1, "b1", None], [0, T0, 30.0, T0])
    b = add_pair(b, [1, T0, 0.0, None, None, 1, "b2", None], [1, T0, 30.0, T0])
    m = merge([a, b])
    assert m["n"] == 4 and m["bundles"] == {"b1": 3, "b2": 1}
    assert m["segments"] == {"1": [4, 120.0]}
    bases = {"b1": BASE, "b2": Baseline(mae=20.0, coverage=None, mass=None, segment_mae={})}
    (f,) = [
        x
        for x in performance_findings(
            m, bases, ratio_warning=1.5, ratio_critical=2.0, min_count=1, coverage_band=0.1
        )
        if x.statistic == "mae_ratio"
    ]
    assert f.baseline_mae == pytest.approx((3 * 10 + 20) / 4)  # weighted by outcomes
    assert f.value == pytest.approx(30.0 / 12.5)


def test_baseline_from_manifest_metrics() -> None:
    b = Baseline.from_metrics(
        {
            "test": {
                "partitioned": {"mae": 11.9},
                "interval": {"coverage": 0.83, "mass": 0.8},
                "segment_mae": [{"segment": 15, "n": 891, "mae": 9.7}],
            }
        }
    )
    assert b.mae == 11.9 and b.coverage == 0.83 and b.mass == 0.8
    assert b.segment_mae == {"15": 9.7}
    assert Baseline.from_metrics({}).mae is None


GOOD_PRED = pred("a", T0, 1.0)
GOOD_OUT = outcome("a", T0, 1.0)
DECODE_OUTCOME = outcome_decoder("event_id", "event_time", "arr_delay")


def _pending_prediction(raw: Any) -> tuple[str, list[Any]]:
    return pending_prediction(decode_prediction(raw), 0)


def _pending_outcome(raw: Any) -> tuple[str, list[Any]]:
    return pending_outcome(DECODE_OUTCOME(raw), 0)


def test_valid_records_decode_from_dicts_and_json_alike() -> None:
    assert (
        _pending_prediction(GOOD_PRED)
        == _pending_prediction(orjson.dumps(GOOD_PRED))
        == ("a", [0, T0, 1.0, -9.0, 11.0, 1, B1, 0.8])
    )
    assert (
        _pending_outcome(GOOD_OUT)
        == _pending_outcome(orjson.dumps(GOOD_OUT))
        == ("a", [0, T0, 1.0, T0 + 3_600_000])
    )
    # unknown fields are ignored; an optional contributions object is accepted
    assert _pending_prediction(GOOD_PRED | {"contributions": {"x": 1.5}, "later": 1})[0] == "a"
    # a null target is an outcome without a value; a null outcome_time is the event time
    assert _pending_outcome(GOOD_OUT | {"arr_delay": None, "outcome_time": None})[1] == [
        0,
        T0,
        None,
        T0,
    ]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        "x",
        b"",
        b"{",
        b"[]",
        *({k: v for k, v in GOOD_PRED.items() if k != drop} for drop in GOOD_PRED),
        GOOD_PRED | {"event_id": 3},
        GOOD_PRED | {"event_time": "bad"},
        GOOD_PRED | {"event_time": None},
        GOOD_PRED | {"prediction": "x"},
        GOOD_PRED | {"prediction": None},
        GOOD_PRED | {"interval": [1.0]},
        GOOD_PRED | {"interval": None},
        GOOD_PRED | {"segment": 1.5},
        GOOD_PRED | {"fallback_level": -1},
        GOOD_PRED | {"bundle_id": "b1"},
        GOOD_PRED | {"contributions": {"x": "big"}},
    ],
)
def test_malformed_predictions(bad) -> None:
    with pytest.raises(MalformedRecord):
        _pending_prediction(bad)
    if isinstance(bad, dict):
        with pytest.raises(MalformedRecord):
            _pending_prediction(orjson.dumps(bad))


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "garbage",
        b"garbage",
        *({k: v for k, v in GOOD_OUT.items() if k != drop} for drop in GOOD_OUT),
        GOOD_OUT | {"event_id": 1},
        GOOD_OUT | {"event_time": "bad"},
        GOOD_OUT | {"event_time": None},
        GOOD_OUT | {"arr_delay": "late"},
    ],
)
def test_malformed_outcomes(bad) -> None:
    with pytest.raises(MalformedRecord):
        _pending_outcome(bad)


def test_malformed_records_are_counted_not_raised() -> None:
    c = core()
    c.on_prediction({"event_id": 1}, 0, 0, 0.0)
    c.on_outcome("garbage", 0, 0, 0.0)
    assert c.counters.records[("predictions", "malformed")] == 1
    assert c.counters.records[("outcomes", "malformed")] == 1
    _eid, entry = _pending_outcome(outcome("n", T0, float("nan")))
    assert entry[2] is None  # NaN outcome kept as None (not in the MAE)
