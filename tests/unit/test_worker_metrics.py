"""The worker's metrics bundle (fresh registry per test; no broker)."""

from __future__ import annotations

import urllib.request

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from segstream.services.worker.decode import DLQ_REASONS
from segstream.services.worker.metrics import BatchHistogram, WorkerMetrics
from segstream.shared.health import HealthServer


def test_create_registers_everything_with_fixed_labels() -> None:
    r = CollectorRegistry()
    WorkerMetrics.create(r)
    for reason in DLQ_REASONS:
        assert r.get_sample_value("segstream_worker_dlq_records_total", {"reason": reason}) == 0
    assert r.get_sample_value("segstream_worker_bundle_reloads_total", {"result": "rejected"}) == 0
    assert r.get_sample_value("segstream_worker_events_consumed_total") == 0


def test_batch_histogram_matches_prometheus_histogram() -> None:
    from prometheus_client import Histogram

    r = CollectorRegistry()
    buckets = (1e-6, 1e-5, 1e-4, 1e-3)
    mine = BatchHistogram("mine_seconds", "x", buckets, r)
    ref = Histogram("ref_seconds", "x", buckets=buckets, registry=r)
    values = np.random.default_rng(0).exponential(1e-4, 500)
    values[:3] = [1e-5, 1e-3, 0.0]  # on the bucket bounds: le is inclusive
    mine.observe_many(values)
    for v in values:
        ref.observe(v)
    mine.observe(2e-6, count=4)
    for _ in range(4):
        ref.observe(2e-6)
    for le in ("1e-06", "1e-05", "0.0001", "0.001", "+Inf"):
        assert r.get_sample_value("mine_seconds_bucket", {"le": le}) == r.get_sample_value(
            "ref_seconds_bucket", {"le": le}
        ), le
    assert (
        abs(r.get_sample_value("mine_seconds_sum") - r.get_sample_value("ref_seconds_sum")) < 1e-12
    )
    assert r.get_sample_value("mine_seconds_count") == 504


def test_consumer_lag_uses_the_fetched_high_watermark() -> None:
    r = CollectorRegistry()
    m = WorkerMetrics.create(r)
    stats = {
        "topics": {
            "ev": {
                "partitions": {
                    "0": {
                        "hi_offset": 1000,
                        "ls_offset": 1000,
                        "app_offset": 400,
                        "committed_offset": 300,
                        "desired": True,
                    },
                    "1": {
                        "hi_offset": 50,
                        "app_offset": -1001,
                        "committed_offset": 20,
                        "desired": True,
                    },
                    "2": {
                        "hi_offset": 70,
                        "app_offset": -1001,
                        "committed_offset": -1001,
                        "desired": True,
                    },
                    "3": {"hi_offset": 70, "app_offset": 10, "desired": False},
                    "-1": {"hi_offset": -1},
                }
            }
        }
    }
    m.observe_librdkafka_stats(orjson.dumps(stats), "ev")
    lag = lambda p: r.get_sample_value(  # noqa: E731
        "segstream_worker_consumer_lag_messages", {"topic": "ev", "partition": p}
    )
    assert lag("0") == 600
    assert lag("1") == 30
    assert lag("2") is None and lag("3") is None
    m.forget_partitions("ev", [0])
    assert lag("0") is None


def test_health_server_serves_metrics_and_readiness() -> None:
    r = CollectorRegistry()
    m = WorkerMetrics.create(r)
    m.events_consumed.inc(5)
    state = {"ready": False}
    srv = HealthServer(r, "127.0.0.1", 0, lambda: (state["ready"], "why")).start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "segstream_worker_events_consumed_total 5.0" in body
        assert "segstream_worker_scoring_event_seconds_bucket" in body
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
        try:
            urllib.request.urlopen(base + "/readyz", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        state["ready"] = True
        assert urllib.request.urlopen(base + "/readyz", timeout=5).status == 200
    finally:
        srv.stop()
