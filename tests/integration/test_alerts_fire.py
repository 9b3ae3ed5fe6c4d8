"""The availability alerts fire for stopped containers, on a real Prometheus.

Two workers and the monitor run as real processes against the test broker (no bundle is
needed: their /metrics, /healthz answer while they wait for one). Debian's Prometheus scrapes
them through file-based service discovery, which the test edits as Docker's DNS behaves: a
stopped container's address disappears, so its ``up`` series goes stale instead of reading 0.
The shipped rules are loaded from a rendered copy with test-only ``for:`` durations and scrape
and evaluation intervals (tests/ops_helpers.py: render_alert_test_config); their expressions
are the shipped ones.

Stop one worker and the monitor: SegstreamWorkerReplicasMissing and SegstreamMonitorAbsent
fire (SegstreamWorkerDown, which needs ``up == 0``, does not); stop the last worker:
SegstreamNoWorkerUp fires.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from segstream.shared.broker import free_port
from tests.ops_helpers import REPO, render_alert_test_config, write_sd_targets

pytestmark = pytest.mark.integration

#: How long an alert may take to fire: discovery refresh + staleness + `for` (3 s) + margin.
FIRE_WITHIN_S = 60


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _wait(pred: Callable[[], bool], timeout_s: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs in {logs}")


class Procs:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            )

    def stop(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture
def stack(kafka, tmp_path) -> Iterator[tuple[Procs, str, dict[str, Path], dict[str, int]]]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("the prometheus binary is missing (Debian package 'prometheus')")
    prefix = f"t-{os.urandom(4).hex()}"
    cfg = yaml.safe_load((REPO / "config" / "flights.yaml").read_text())
    cfg["broker"] = {"bootstrap": kafka.bootstrap}
    names = ("events", "predictions", "alerts", "dlq", "stats", "outcomes", "model_updates")
    cfg["topics"] = {**{n: f"{prefix}.{n}" for n in names}, "partitions": 2}
    cfg["store"] = {"url": f"file://{tmp_path / 'store'}"}  # empty: they wait for a bundle
    cfg["worker"] = {
        "group_id": f"{prefix}-workers",
        "metrics_host": "127.0.0.1",
        "bundle_cache_dir": str(tmp_path / "cache"),
    }
    cfg["monitor"] = {
        "app_id": f"{prefix}-monitor",
        "metrics_host": "127.0.0.1",
        "bundle_cache_dir": str(tmp_path / "monitor-cache"),
        "session_timeout_s": 2.0,
    }
    config = tmp_path / "segstream.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    ports = {"w1": free_port(), "w2": free_port(), "monitor": free_port(), "prom": free_port()}
    procs = Procs(tmp_path)
    cli = [sys.executable, "-m", "segstream"]
    sd = {"segstream-worker": tmp_path / "workers.json", "segstream-monitor": tmp_path / "mon.json"}
    try:
        for w in ("w1", "w2"):
            procs.start(
                w,
                [*cli, "worker", "--config", str(config)],
                {"SEGSTREAM_WORKER__METRICS_PORT": str(ports[w])},
            )
        procs.start(
            "monitor",
            [*cli, "monitor", "--config", str(config), "--metrics-port", str(ports["monitor"])],
        )
        for name in ("w1", "w2", "monitor"):
            _wait(
                lambda name=name: _get(f"http://127.0.0.1:{ports[name]}/healthz")[0] == 200,
                120,
                f"{name} /healthz",
                tmp_path,
            )
        write_sd_targets(sd["segstream-worker"], [f"127.0.0.1:{ports[w]}" for w in ("w1", "w2")])
        write_sd_targets(sd["segstream-monitor"], [f"127.0.0.1:{ports['monitor']}"])
        prom_cfg = render_alert_test_config(tmp_path / "prom", sd)
        procs.start(
            "prometheus",
            [
                prometheus,
                f"--config.file={prom_cfg}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{ports['prom']}",
                "--log.level=warn",
            ],
        )
        yield procs, f"http://127.0.0.1:{ports['prom']}", sd, ports
    finally:
        procs.stop_all()


def _query(base: str, expr: str) -> list[dict]:
    status, body = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return json.loads(body)["data"]["result"] if status == 200 else []


def _firing(base: str) -> set[str]:
    status, body = _get(f"{base}/api/v1/alerts")
    if status != 200:
        return set()
    return {
        a["labels"]["alertname"]
        for a in json.loads(body)["data"]["alerts"]
        if a["state"] == "firing"
    }


def test_stopped_worker_and_monitor_fire_their_alerts(stack, tmp_path) -> None:
    procs, base, sd, ports = stack
    _wait(lambda: _get(f"{base}/-/ready")[0] == 200, 60, "Prometheus ready", tmp_path)
    _wait(
        lambda: (
            [r["value"][1] for r in _query(base, 'count(up{job="segstream-worker"} == 1)')] == ["2"]
            and _query(base, 'up{job="segstream-monitor"} == 1') != []
        ),
        60,
        "two workers and the monitor up in Prometheus",
        tmp_path,
    )
    time.sleep(3)  # a few evaluations with both workers up (the replica subquery's max)
    assert not _firing(base) & {
        "SegstreamWorkerReplicasMissing",
        "SegstreamMonitorAbsent",
        "SegstreamNoWorkerUp",
    }

    # As Docker does: stopped containers leave DNS (here: the discovery file), so Prometheus
    # never scrapes them as down.
    write_sd_targets(sd["segstream-worker"], [f"127.0.0.1:{ports['w1']}"])
    write_sd_targets(sd["segstream-monitor"], [])
    procs.stop("w2")
    procs.stop("monitor")
    want = {"SegstreamWorkerReplicasMissing", "SegstreamMonitorAbsent"}
    _wait(lambda: want <= _firing(base), FIRE_WITHIN_S, f"{sorted(want)} firing", tmp_path)
    firing = _firing(base)
    assert "SegstreamNoWorkerUp" not in firing  # one worker still answers
    assert "SegstreamWorkerDown" not in firing  # no `up == 0` for a vanished target

    write_sd_targets(sd["segstream-worker"], [])
    procs.stop("w1")
    _wait(
        lambda: "SegstreamNoWorkerUp" in _firing(base),
        FIRE_WITHIN_S,
        "SegstreamNoWorkerUp firing",
        tmp_path,
    )
