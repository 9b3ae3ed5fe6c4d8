"""The monitor against a real broker: a short replay through a worker (fake bundle) and the
monitor; a restart in the middle of a window; the changelog watermark probe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from segstream.services.simulator.app import run_simulation
from segstream.services.simulator.replay import Replay
from segstream.services.worker.app import run_worker
from segstream.shared.kafka import ensure_topics
from segstream.shared.settings import Settings
from tests.fakes import load_fake_bundle
from tests.integration.worker_helpers import REPO, publish_fake, worker_settings, write_config
from tests.kafka_helpers import consume_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sept(flights_df):
    df = flights_df[
        (flights_df["event_time"] >= "2013-09-01") & (flights_df["event_time"] < "2013-09-04")
    ]
    return df.reset_index(drop=True)


def _settings(kafka, prefix: str, tmp: Path, **monitor: Any) -> Settings:
    # every unknown route named in the stats (the fake bundle knows 6 routes; the default 100
    # per record would leave small routes in unknown_keys_other, depending on batch sizes)
    s = worker_settings(kafka.bootstrap, prefix, tmp, max_unknown_keys=1000)
    m = {
        "app_id": f"{prefix}-mon",
        "metrics_port": 0,
        "idle_close_s": 6.0,
        "session_timeout_s": 2.0 if not kafka.real_kafka else 6.0,
        "tick_s": 0.5,
        "bundle_cache_dir": str(tmp / "mcache"),
        "new_segment_threshold": 15,
        # the default, read_committed: confluent-kafka's read_committed consumer receives the
        # workers' output on Tansu too (faust's aiokafka consumer received nothing)
        "isolation_level": "read_committed",
        **monitor,
    }
    s = s.model_copy(update={"monitor": s.monitor.model_copy(update=m)})
    t = s.topics
    ensure_topics(
        s.broker,
        [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.outcomes, t.model_updates],
        t.partitions,
    )
    publish_fake(s, tmp)
    return s


class _Monitor:
    """``segstream monitor`` in a subprocess; ``metric()`` reads its /metrics."""

    def __init__(self, settings: Settings, tmp: Path, name: str = "monitor") -> None:
        cfg = write_config(settings, tmp / f"{name}.yaml")
        self.log = tmp / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segstream", "monitor", "--config", str(cfg)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=open(self.log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.port = None
        deadline = time.monotonic() + 60
        while self.port is None and time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("metrics_port="):
                    self.port = int(line.split("=", 1)[1])
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.2)
        assert self.port, "monitor did not start"

    def metrics(self) -> dict[str, float]:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
            .read()
            .decode()
        )
        out = {}
        for line in text.splitlines():
            if line.startswith("segstream_monitor_"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def metric(self, name: str, **labels: str) -> float:
        key = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        return self.metrics().get(key, 0.0)

    def wait(self, cond, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if cond(self):
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError(
            f"timed out; metrics: { {k: v for k, v in self.metrics().items() if v and 'created' not in k} }"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class _Worker:
    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=run_worker,
            args=(settings,),
            daemon=True,
            kwargs={"stop": self.stop, "loader": load_fake_bundle, "registry": CollectorRegistry()},
        )
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)


def _replay(settings: Settings, df, outcomes: bool = True) -> tuple[int, int]:
    recs = list(Replay(df, settings.event_schema, outcomes=outcomes))
    sim = settings.simulator.model_copy(update={"rate": 20_000.0, "speedup": None})
    summary = run_simulation(
        settings.model_copy(update={"simulator": sim}), progress=False, records=recs
    )
    assert summary.failed == 0
    n_out = (
        sum(1 for r in recs if r.topic == settings.topics.outcomes)
        if hasattr(recs[0], "topic")
        else None
    )
    return len(df), n_out


def _processed(mon: _Monitor, events: int, outcomes: int):
    def cond(m: _Monitor) -> bool:
        return (
            m.metric("segstream_monitor_records_total", source="predictions", result="ok") >= events
            and m.metric("segstream_monitor_records_total", source="outcomes", result="ok")
            >= outcomes
        )

    return cond


def _alerts(settings: Settings, expected: int = 1) -> list[dict[str, Any]]:
    msgs = consume_all(
        settings.broker.bootstrap, settings.topics.alerts, expected, timeout_s=30, idle_s=3
    )
    return [orjson.loads(m.value()) | {"_key": m.key()} for m in msgs]


def _utc_day_counts(df) -> Counter:
    return Counter(df["event_time"].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d"))


def test_short_replay_produces_drift_new_segment_and_performance_alerts(
    kafka, topic_prefix, tmp_path, sept
) -> None:
    s = _settings(kafka, topic_prefix, tmp_path)
    mon = _Monitor(s, tmp_path)
    worker = _Worker(s)
    try:
        n_events = len(sept)
        n_out = int(sept["arr_delay"].notna().sum())
        _replay(s, sept)
        mon.wait(_processed(mon, n_events, n_out), 300)
        # the idle close (6 s without input) closes the last windows
        mon.wait(
            lambda m: m.metric("segstream_monitor_windows_closed_total", kind="performance") >= 4
        )
        alerts = _alerts(s, 10)
        metrics = mon.metrics()
    finally:
        worker.finish()
        mon.stop()
    days = _utc_day_counts(sept)
    full_days = sorted(d for d, n in days.items() if n >= s.monitor.drift_min_count)
    ids = Counter(a["alert_id"] for a in alerts)
    assert max(ids.values()) == 1, "an alert was sent twice"
    drift = [a for a in alerts if a["type"] == "drift" and a["segment"] is None]
    # the fake reference is uniform over 100-2500 miles: real distances drift, every full day
    dist = {a["window_start"][:10]: a for a in drift if a["feature"] == "distance"}
    assert sorted(dist) == full_days
    for d, a in dist.items():
        assert a["count"] == days[d] and a["value"] >= 0.25 and a["severity"] == "critical"
        assert 0 < a["js_distance"] <= 1 and a["_key"] == b"feature=distance"
        assert a["bundle_id"] and a["model"] == "flights"
    # interval +-15 min: far below its 0.8 mass -> a coverage alert per full day
    cov = {
        a["window_start"][:10]
        for a in alerts
        if a["type"] == "performance" and a["statistic"] == "interval_coverage"
    }
    assert set(full_days) <= cov
    # routes outside the fake bundle's six are unknown keys; one alert per key once its count
    # since first seen (all three days are inside the 30-day lookback) reaches 15
    route = sept["origin"] + "|" + sept["dest"]
    route_n = Counter(route)
    first = sept.groupby(route)["event_time"].min()
    last = sept.groupby(route)["event_time"].max()
    known = {"JFK|LAX", "LGA|ATL", "EWR|ORD", "JFK|SFO", "LGA|ORD", "EWR|IAH"}
    want = {k for k, n in route_n.items() if n >= 15 and k not in known}
    new_seg = [a for a in alerts if a["type"] == "new_segment"]
    got = Counter(a["segment"] for a in new_seg)
    assert want and set(got) == want and max(got.values()) == 1
    for a in new_seg:
        # the count when it crossed 15: at least 15, never more than the route's flights
        assert 15 <= a["count"] <= route_n[a["segment"]], a
        # first seen: the earliest event time among the key's stats records counted when the
        # alert fired. Partitions are read at different paces (under load a later day's records
        # can come first), so it lies between the day of the key's first flight and its last.
        seen = pd.Timestamp(a["first_seen"])
        day0 = first[a["segment"]].tz_convert("UTC").floor("D")
        assert day0 <= seen <= last[a["segment"]], a
        assert a["window_start"] == a["first_seen"]
        # the ancestor segment (model node) serving the unknown key, from the worker's stats
        assert isinstance(a["serving_segment"], int) and a["serving_segment"] >= 0, a
    assert metrics.get('segstream_monitor_state_overflow_total{state="new_keys"}', 0) == 0
    assert metrics['segstream_monitor_outcome_join_total{result="joined"}'] == n_out
    assert metrics['segstream_monitor_records_total{result="late",source="stats"}'] == 0
    assert metrics['segstream_monitor_psi{feature="distance"}'] > 0.25


def _send_outcomes(settings: Settings, df) -> int:
    from confluent_kafka import Producer

    from segstream.shared.events import encode_outcomes

    df = df[df["arr_delay"].notna()]
    p = Producer({"bootstrap.servers": settings.broker.bootstrap, "linger.ms": 20})
    for key, value in encode_outcomes(df, settings.event_schema):
        p.produce(settings.topics.outcomes, value, key)
    assert p.flush(30) == 0
    return len(df)


def test_restart_in_the_middle_of_a_window_keeps_its_state(
    kafka, topic_prefix, tmp_path, sept
) -> None:
    """Kill -9 the monitor mid-window with ~330 predictions waiting for their outcomes; the
    new monitor restores its state from the changelog (read to the fetched end of each
    partition), joins every outcome sent after the restart and closes the window with all
    counts from before and after."""
    s = _settings(
        kafka,
        topic_prefix,
        tmp_path,
        idle_close_s=8.0,
    )
    utc = sept["event_time"].dt.tz_convert("UTC")
    day1 = sept[utc < "2013-09-02"]  # UTC Sep 1 (New York: Aug 31 20:00 .. Sep 1 20:00)
    first = day1.iloc[: len(day1) // 2]
    rest = sept.iloc[len(first) :]
    rest = rest[rest["event_time"].dt.tz_convert("UTC") < "2013-09-02T12:00"]
    worker = _Worker(s)
    mon = _Monitor(s, tmp_path, "monitor-1")
    mon2 = None
    try:
        _replay(s, first, outcomes=False)  # predictions only: they wait in the join table
        mon.wait(_processed(mon, len(first), 0))
        mon.wait(
            lambda m: m.metric("segstream_monitor_records_total", source="stats", result="ok") >= 1
        )
        mon.wait(
            lambda m: (
                m.metric("segstream_monitor_pending_entries", kind="predictions") >= len(first)
            )
        )
        time.sleep(2)  # a few ticks: their state (clocks) reaches the changelog too
        assert mon.metric("segstream_monitor_windows_closed_total", kind="drift") == 0
        mon.stop(signal.SIGKILL)
        mon2 = _Monitor(s, tmp_path, "monitor-2")
        mon2.wait(
            lambda m: (
                urllib.request.urlopen(f"http://127.0.0.1:{m.port}/readyz", timeout=2).status == 200
            ),
            60,
        )
        n_first = _send_outcomes(s, first)  # the outcomes of the predictions before the kill
        _replay(s, rest)
        mon2.wait(
            lambda m: m.metric("segstream_monitor_windows_closed_total", kind="performance") >= 2,
            120,
        )
        alerts = _alerts(s, 3)
        after = mon2.metrics()
    finally:
        if mon2 is not None:
            mon2.stop()
        worker.finish()
        mon.stop()
    assert n_first > 300
    ids = Counter(a["alert_id"] for a in alerts)
    assert max(ids.values()) == 1, "an alert was sent twice across the restart"
    (dist,) = [
        a
        for a in alerts
        if a["type"] == "drift"
        and a["feature"] == "distance"
        and a["segment"] is None
        and a["window_start"].startswith("2013-09-01")
    ]
    assert dist["count"] == len(day1), "drift counts from before the restart were lost"
    (cov,) = [
        a
        for a in alerts
        if a["type"] == "performance"
        and a["statistic"] == "interval_coverage"
        and a["window_start"].startswith("2013-09-01")
    ]
    day1_out = int(day1["arr_delay"].notna().sum())
    assert cov["count"] == day1_out, (
        f"{day1_out - cov['count']} predictions from before the restart were lost"
    )
    assert after.get('segstream_monitor_records_total{result="late",source="stats"}', 0) == 0
    assert after.get('segstream_monitor_outcome_join_total{result="unmatched_outcome"}', 0) == 0


def pd_notna(df) -> int:
    return int(df["arr_delay"].notna().sum())


def test_state_restore_reads_to_the_fetched_end_of_the_changelog(kafka, topic_prefix) -> None:
    """Tansu lists a high watermark = first offset of the last batch + 1; the restore reads
    to the end-of-partition event of a fetch, which is right (all 350 records)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from segstream.services.monitor.loop import read_changelog
    from segstream.shared.settings import BrokerSettings

    topic = f"{topic_prefix}.wm"
    ensure_topics(BrokerSettings(bootstrap=kafka.bootstrap), [topic, f"{topic}-empty"], 2)
    p = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 50})
    for batch in (100, 250):
        for i in range(batch):
            p.produce(topic, b"v", b"k%d" % i, partition=0)
        p.flush(10)
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"{topic_prefix}-g"})
    _lo, listed = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)
    c.close()
    seen: list[tuple[int, bytes]] = []

    def apply(partition: int, key: bytes | None, value: bytes | None) -> bool:
        seen.append((partition, key))
        return key != b"k0"  # one refused record is counted apart

    conf = {"bootstrap.servers": kafka.bootstrap, "group.id": f"{topic_prefix}-r"}
    assert read_changelog(conf, topic, [0, 1], apply, 30) == (348, 2)
    assert len(seen) == 350 and {p for p, _ in seen} == {0}
    # empty partitions end at once
    assert read_changelog(conf, f"{topic}-empty", [0, 1], apply, 30) == (0, 0)
    if kafka.real_kafka:
        assert listed == 350
    else:
        assert listed < 350  # the deviation a listed watermark would suffer (measured: 101)


def test_two_instances_raise_exactly_the_alerts_of_one(kafka, topic_prefix, tmp_path, sept):
    """Scale-out: two monitors in one consumer group split the partitions and, merging the
    partitions' performance windows through the perf-partials topic, raise the same alerts
    (same alert ids, none lost, none doubled) as one monitor reading the same topics."""
    s = _settings(kafka, topic_prefix, tmp_path, idle_close_s=10.0)

    def variant(name: str) -> Settings:
        t = s.topics.model_copy(update={"alerts": f"{topic_prefix}.alerts-{name}"})
        m = s.monitor.model_copy(update={"app_id": f"{topic_prefix}-{name}"})
        return s.model_copy(update={"topics": t, "monitor": m})

    one, two = variant("one"), variant("two")
    ensure_topics(s.broker, [one.topics.alerts, two.topics.alerts], s.topics.partitions)
    mons = [
        _Monitor(one, tmp_path, "one"),
        _Monitor(two, tmp_path, "two-a"),
        _Monitor(two, tmp_path, "two-b"),
    ]
    worker = _Worker(s)
    try:
        for m in mons:
            m.wait(
                lambda m: (
                    urllib.request.urlopen(f"http://127.0.0.1:{m.port}/readyz", timeout=2).status
                    == 200
                ),
                120,
            )
        time.sleep(5)  # the second instance's join settles
        n_events = len(sept)
        n_out = int(sept["arr_delay"].notna().sum())
        _replay(s, sept)

        def total(ms: list[_Monitor], name: str, **labels: str) -> float:
            return sum(m.metric(name, **labels) for m in ms)

        def done(ms: list[_Monitor]) -> bool:
            return (
                total(ms, "segstream_monitor_records_total", source="predictions", result="ok")
                >= n_events
                and total(ms, "segstream_monitor_records_total", source="outcomes", result="ok")
                >= n_out
                and total(ms, "segstream_monitor_windows_closed_total", kind="performance") >= 4
            )

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (done(mons[:1]) and done(mons[1:])):
            for m in mons:
                assert m.proc.poll() is None, m.log.read_text()[-3000:]
            time.sleep(1)
        assert done(mons[:1]) and done(mons[1:]), [m.metrics() for m in mons]
        # both instances of "two" did some of the work
        for m in mons[1:]:
            assert m.metric("segstream_monitor_records_total", source="predictions", result="ok")
        time.sleep(5)
        a1 = _alerts(one, 10)
        a2 = _alerts(two, 10)
    finally:
        worker.finish()
        for m in mons:
            m.stop()
    ids1 = Counter(a["alert_id"] for a in a1)
    ids2 = Counter(a["alert_id"] for a in a2)
    assert {a["type"] for a in a1} >= {"drift", "new_segment", "performance"}
    assert ids2 == ids1 and max(ids1.values()) == 1
    perf1 = {a["alert_id"]: a for a in a1 if a["type"] == "performance"}
    for a in a2:
        if a["type"] == "performance":
            b = perf1[a["alert_id"]]
            assert (a["count"], a["value"], a.get("ci")) == (b["count"], b["value"], b.get("ci"))
