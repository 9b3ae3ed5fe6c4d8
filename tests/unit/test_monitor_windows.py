"""Windows, watermarks, alert ids and the monitor's metrics bundle (no broker)."""

from __future__ import annotations

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from segstream.services.monitor.drift import DriftFinding
from segstream.services.monitor.metrics import MonitorMetrics
from segstream.services.monitor.windows import Watermark, is_closable, parse_time_ms, window_start
from segstream.shared.alerts import alert_id, alert_key, alert_record, encode_alert

DAY = 86_400_000


def test_window_assignment_is_epoch_aligned_utc() -> None:
    t = parse_time_ms("2013-12-01T20:30:00-05:00")  # 2013-12-02T01:30Z
    assert window_start(t, DAY) == parse_time_ms("2013-12-02T00:00:00Z")
    assert window_start(parse_time_ms("2013-12-02T00:00:00Z"), DAY) == parse_time_ms(
        "2013-12-02T00:00:00Z"
    )  # a window is [start, end)
    assert parse_time_ms("2013-12-02T00:00:00") == parse_time_ms("2013-12-02T00:00:00Z")
    assert parse_time_ms(None) is None and parse_time_ms(17) is None


def test_closable_only_after_end_plus_lateness() -> None:
    assert not is_closable(0, DAY, 3_600_000, None)
    assert not is_closable(0, DAY, 3_600_000, DAY + 3_599_999)
    assert is_closable(0, DAY, 3_600_000, DAY + 3_600_000)


def test_watermark_is_the_slowest_active_partition() -> None:
    w = Watermark(idle_s=10.0, expected=2)
    w.observe("p0", 100, now_s=0.0)
    assert w.value(1.0) is None  # partition p1 not heard from yet
    w.observe("p1", 50, now_s=1.0)
    assert w.value(1.0) == 50
    w.observe("p1", 40, now_s=2.0)  # out of order within p1: the max stays
    assert w.value(2.0) == 50
    w.observe("p0", 300, now_s=9.0)
    assert w.value(9.0) == 50
    assert w.value(12.5) == 300  # p1 idle for > 10 s: no longer holds the watermark back
    w2 = Watermark(idle_s=5.0, expected=6)
    w2.observe("p0", 7, now_s=0.0)
    assert w2.value(4.0) is None and w2.value(5.0) == 7  # the others never come


def test_alert_ids_are_deterministic_per_type_subject_window() -> None:
    kw = dict(model="m", bundle_id="b", window_start="s", window_end="e")
    a = alert_id("drift", subject="feature=temp", **kw)
    assert a == alert_id("drift", subject="feature=temp", **kw)
    assert a != alert_id("drift", subject="feature=dewp", **kw)
    assert a != alert_id("performance", subject="feature=temp", **kw)
    assert a != alert_id(
        "drift", subject="feature=temp", model="m", bundle_id="b", window_start="s2", window_end="e"
    )
    rec = alert_record(
        type_="drift",
        severity="warning",
        model="m",
        bundle_id="b",
        feature="temp",
        segment=3,
        statistic="psi",
        value=0.2,
        threshold=0.1,
        window_start="s",
        window_end="e",
        count=9,
    )
    assert rec.alert_id == alert_id("drift", "m", "b", "feature=temp;segment=3", "s", "e", "psi")
    assert a != alert_id("drift", subject="feature=temp", statistic="other", **kw)
    assert alert_key(rec) == b"feature=temp;segment=3"
    assert set(orjson.loads(encode_alert(rec))) == {
        "alert_id",
        "type",
        "severity",
        "model",
        "bundle_id",
        "feature",
        "segment",
        "statistic",
        "value",
        "threshold",
        "window_start",
        "window_end",
        "count",
        "detected_at",
    }


def test_metrics_bundle_observes_the_core() -> None:
    reg = CollectorRegistry()
    m = MonitorMetrics.create(reg, ["temp", "carrier"])
    m.on_drift(
        [
            DriftFinding("temp", None, 0.3, 0.2, 100, "critical", 0.25),
            DriftFinding("temp", 4, 9.0, 0.9, 100, "critical", 0.25),  # segment: no gauge
            DriftFinding("not_a_feature", None, 1.0, 0.5, 100, None, None),
        ],
        0,
    )
    assert reg.get_sample_value("segstream_monitor_psi", {"feature": "temp"}) == 0.3
    assert reg.get_sample_value("segstream_monitor_js_distance", {"feature": "temp"}) == 0.2
    assert reg.get_sample_value("segstream_monitor_psi", {"feature": "not_a_feature"}) is None
    m.on_alert(
        alert_record(
            type_="drift",
            severity="critical",
            model="m",
            bundle_id=None,
            feature="temp",
            segment=None,
            statistic="psi",
            value=0.3,
            threshold=0.25,
            window_start=None,
            window_end=None,
            count=100,
        )
    )
    assert (
        reg.get_sample_value(
            "segstream_monitor_alerts_total", {"type": "drift", "severity": "critical"}
        )
        == 1
    )
    assert (
        reg.get_sample_value(
            "segstream_monitor_alerts_total", {"type": "performance", "severity": "warning"}
        )
        == 0
    )
    m.joined("expired_prediction", 3)
    m.record("stats", "malformed")
    m.closed("drift")
    m.on_performance([], {"n": 4, "sum_abs": 10.0}, 0)
    assert (
        reg.get_sample_value(
            "segstream_monitor_outcome_join_total", {"result": "expired_prediction"}
        )
        == 3
    )
    assert (
        reg.get_sample_value(
            "segstream_monitor_records_total", {"source": "stats", "result": "malformed"}
        )
        == 1
    )
    assert reg.get_sample_value("segstream_monitor_windows_closed_total", {"kind": "drift"}) == 1
    assert reg.get_sample_value("segstream_monitor_window_mae") == 2.5
    assert np.isfinite(reg.get_sample_value("segstream_monitor_window_outcomes"))
