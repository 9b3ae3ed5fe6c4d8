"""Every dashboard query and every alert rule against a real Prometheus.

A real bundle (January 2013 flights, the small training setup) is published; a worker (and the
monitor, when this build has it) run as subprocesses on the test's broker; Debian's Prometheus
scrapes them with the repository's ``config/prometheus/prometheus.yml``, rendered with static
loopback targets; a short replay with the simulator produces events, outcomes and a few
malformed events. Then every PromQL expression of every Grafana panel and every alert rule is
evaluated through ``/api/v1/query``: each must parse, and each panel query must return data.

Skips: the whole module when the ``prometheus`` binary is missing (``.ci/run`` installs it);
monitor panels when ``services.monitor`` is not in this build; process CPU/memory panels when
the services do not expose prometheus-client's ``process_*`` metrics.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from segstream.shared.broker import free_port
from tests.ops_helpers import (
    PROMETHEUS_CONFIG,
    REPO,
    PanelQuery,
    RuleExpr,
    panel_queries,
    render_grafana_expr,
    rule_exprs,
)
from tests.train_helpers import january_parquet, small_config

pytestmark = pytest.mark.integration

#: Test values of Grafana's variables: the rate window covers the end of the replay.
GRAFANA_VARS = {"__rate_interval": "30s", "__range": "10m", "__interval": "5s"}
PANELS = panel_queries()
RULES = rule_exprs()
HAS_MONITOR = importlib.util.find_spec("segstream.services.monitor.cli") is not None
TOPIC_NAMES = ("events", "predictions", "alerts", "dlq", "stats", "outcomes", "model_updates")


# --------------------------------------------------------------------------- helpers
def _get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _wait(
    pred: Callable[[], bool], timeout_s: float, what: str, procs: Processes | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        if procs is not None:
            procs.check_alive()
        time.sleep(0.25)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {what}"
        + (f"; logs in {procs.log_dir}" if procs else "")
    )


def _sample(port: int, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Sum of the samples ``name`` (matching ``labels``) on a /metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = _get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return None
    total = None
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total = (total or 0.0) + s.value
    return total


class Processes:
    """Subprocesses of the test, each with a log file; all stopped by :meth:`stop_all`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.daemons: set[str] = set()

    def start(self, name: str, cmd: list[str], daemon: bool = True) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        p = subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        self.procs[name] = p
        if daemon:
            self.daemons.add(name)
        return p

    def check_alive(self) -> None:
        for name in self.daemons:
            code = self.procs[name].poll()
            if code is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"{name} exited with {code}:\n{tail}")

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def render_prometheus_config(targets: dict[str, list[str] | None], dest: Path) -> Path:
    """The repository's scrape config with static loopback targets (services.prometheus)."""
    from segstream.services.prometheus import render_config

    return render_config(PROMETHEUS_CONFIG, targets, dest)


@dataclasses.dataclass
class Stack:
    prometheus: str  # base URL
    worker_port: int
    monitor_port: int | None
    scored_at: float  # Unix time when the worker had consumed the whole replay
    monitored_at: float | None  # Unix time when the monitor had closed its windows
    process_metrics: bool
    log_dir: Path

    def query(self, expr: str, at: float) -> dict[str, Any]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr, "time": f"{at:.3f}"}
        )
        status, body = _get(url, timeout_s=10.0)
        assert status in (200, 400, 422), f"HTTP {status} from Prometheus for {expr!r}"
        return json.loads(body)


# --------------------------------------------------------------------------- the stack
def _write_config(
    tmp: Path, bootstrap: str, prefix: str, worker_port: int, monitor_port: int | None
) -> Path:
    cfg = yaml.safe_load(small_config(tmp, tmp / "store").read_text())
    cfg["broker"] = {"bootstrap": bootstrap}
    cfg["topics"] = {**{n: f"{prefix}.{n}" for n in TOPIC_NAMES}, "partitions": 3}
    cfg["worker"] = {
        "group_id": f"{prefix}-workers",
        "metrics_port": worker_port,
        "metrics_host": "127.0.0.1",
        "bundle_cache_dir": str(tmp / "cache"),
        "reload_poll_s": 2.0,
        "batch_timeout_s": 0.05,
        "statistics_interval_ms": 500,
    }
    # Ten days after the training range, with outcomes and a few malformed events.
    cfg["simulator"] = {
        "start": "2013-01-20",
        "end": "2013-01-29",
        "rate": 1500,
        "bad_fraction": 0.02,
        "outcomes": True,
        "seed": 7,
    }
    if monitor_port is not None:
        from segstream.shared.settings import MonitorSettings  # type: ignore[attr-defined]

        wanted = {
            "app_id": f"{prefix}-monitor",
            "metrics_port": monitor_port,
            "metrics_host": "127.0.0.1",
            "bundle_cache_dir": str(tmp / "monitor-cache"),
            "session_timeout_s": 2.0,
            "idle_close_s": 3.0,
            "source_idle_s": 5.0,
            "tick_s": 0.5,
            "drift_min_count": 100,
            "performance_min_count": 50,
            "new_segment_threshold": 5,
        }
        cfg["monitor"] = {k: v for k, v in wanted.items() if k in MonitorSettings.model_fields}
    path = tmp / "segstream.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(kafka, flights_df, tmp_path_factory) -> Iterator[Stack]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip(
            "the prometheus binary is missing (Debian package 'prometheus'; .ci/run installs it)"
        )
    from segstream.shared.settings import load_settings
    from segstream.training.pipeline import train

    tmp = tmp_path_factory.mktemp("prom-dashboards")
    prefix = f"t-{os.urandom(4).hex()}"
    worker_port = free_port()
    monitor_port = free_port() if HAS_MONITOR else None
    prom_port = free_port()
    config = _write_config(tmp, kafka.bootstrap, prefix, worker_port, monitor_port)
    settings = load_settings(config)
    train(settings, data_path=str(january_parquet(flights_df, tmp)), publish=True, progress=False)

    procs = Processes(tmp)
    cli = [sys.executable, "-m", "segstream"]
    try:
        procs.start("worker", [*cli, "worker", "--config", str(config)])
        if monitor_port is not None:
            procs.start("monitor", [*cli, "monitor", "--config", str(config)])
        _wait(
            lambda: _get(f"http://127.0.0.1:{worker_port}/readyz")[0] == 200,
            90,
            "worker /readyz",
            procs,
        )
        if monitor_port is not None:
            _wait(
                lambda: _get(f"http://127.0.0.1:{monitor_port}/readyz")[0] == 200,
                90,
                "monitor /readyz",
                procs,
            )

        prom_cfg = render_prometheus_config(
            {
                "segstream-worker": [f"127.0.0.1:{worker_port}"],
                "segstream-monitor": [f"127.0.0.1:{monitor_port}"] if monitor_port else None,
                "prometheus": [f"127.0.0.1:{prom_port}"],
            },
            tmp / "prometheus.yml",
        )
        from segstream.services.prometheus import prometheus_command

        procs.start("prometheus", prometheus_command(prometheus, prom_cfg, prom_port, tmp / "tsdb"))
        base = f"http://127.0.0.1:{prom_port}"
        _wait(lambda: _get(f"{base}/-/ready")[0] == 200, 30, "Prometheus /-/ready", procs)

        def all_up() -> bool:
            status, body = _get(f"{base}/api/v1/targets")
            targets = json.loads(body)["data"]["activeTargets"] if status == 200 else []
            return bool(targets) and all(t["health"] == "up" for t in targets)

        _wait(all_up, 30, "every scrape target up", procs)

        sim = procs.start(
            "simulator", [*cli, "simulate", "--config", str(config), "--quiet"], daemon=False
        )
        try:
            assert sim.wait(180) == 0, f"simulator failed; see {tmp / 'simulator.log'}"
        except subprocess.TimeoutExpired:
            raise AssertionError("the replay did not finish in 180 s") from None
        sent = _sent_events(tmp / "simulator.log")

        consumed = "segstream_worker_events_consumed_total"
        _wait(
            lambda: (_sample(worker_port, consumed) or 0) >= sent,
            60,
            f"the worker to consume {sent} events",
            procs,
        )
        scored_at = time.time()
        monitored_at = None
        if monitor_port is not None:
            _wait(
                lambda: (
                    (
                        _sample(
                            monitor_port,
                            "segstream_monitor_windows_closed_total",
                            {"kind": "performance"},
                        )
                        or 0
                    )
                    > 0
                    and (
                        _sample(
                            monitor_port,
                            "segstream_monitor_windows_closed_total",
                            {"kind": "drift"},
                        )
                        or 0
                    )
                    > 0
                ),
                60,
                "the monitor to close drift and performance windows",
                procs,
            )
            monitored_at = time.time()
        time.sleep(2.5)  # scrapes after the evaluation times
        procs.check_alive()
        yield Stack(
            base,
            worker_port,
            monitor_port,
            scored_at,
            monitored_at,
            _sample(worker_port, "process_cpu_seconds_total") is not None,
            tmp,
        )
    finally:
        procs.stop_all()


def _sent_events(log: Path) -> int:
    line = next(ln for ln in reversed(log.read_text().splitlines()) if ln.startswith("simulate:"))
    return int(line.split("sent=", 1)[1].split()[0])


# --------------------------------------------------------------------------- tests
def test_every_scrape_job_is_up_and_every_rule_is_loaded_and_healthy(stack: Stack) -> None:
    status, body = _get(f"{stack.prometheus}/api/v1/rules")
    assert status == 200
    rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(r.name for r in RULES)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    r = stack.query('up{job="segstream-worker"}', time.time())
    assert [float(s["value"][1]) for s in r["data"]["result"]] == [1.0]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_alert_rule_expression_evaluates(stack: Stack, rule: RuleExpr) -> None:
    r = stack.query(rule.expr, stack.scored_at)
    assert r["status"] == "success", f"{rule.id}: {r.get('error')}"


@pytest.mark.parametrize("q", PANELS, ids=lambda q: q.id)
def test_dashboard_panel_query_returns_data(stack: Stack, q: PanelQuery) -> None:
    if q.needs_monitor and stack.monitor_port is None:
        pytest.skip("segstream.services.monitor is not in this build: no monitor to scrape")
    if q.needs_classifier:
        pytest.skip(
            "a classifier panel: this stack serves a regression bundle (the metrics are "
            "checked by tests/unit/test_monitor_families.py)"
        )
    if q.needs_process_metrics and not stack.process_metrics:
        pytest.skip(
            "the worker exposes no process_* metrics (its CollectorRegistry has no "
            "prometheus_client ProcessCollector)"
        )
    expr = render_grafana_expr(q.expr, GRAFANA_VARS)
    at = stack.monitored_at if q.needs_monitor else stack.scored_at
    assert at is not None
    r = stack.query(expr, at)
    assert r["status"] == "success", f"{q.id}: {expr}: {r.get('error')}"
    data = r["data"]
    result = data["result"] if data["resultType"] in ("vector", "matrix") else [data["result"]]
    assert result, f"{q.id}: no data for {expr}"
    values = [float(s["value"][1]) if isinstance(s, dict) else float(s[1]) for s in result]
    assert any(math.isfinite(v) for v in values), f"{q.id}: only NaN for {expr}: {values}"
