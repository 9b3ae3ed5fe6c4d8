"""``segstream demo``: the whole system on one machine, on the embedded defaults.

The demo is an orchestrator of child processes (each a ``segstream`` subcommand), so that what
runs in the demo is exactly what an operator runs: the embedded broker, the simulator, and the
services that exist. It shows a live status line while it runs and a summary at the end, and
stops every child on exit or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import IO, Any

import orjson

from segstream.shared.broker import EmbeddedBroker, die_with_parent
from segstream.shared.kafka import FAST_GROUP_CONFIG, ensure_topics
from segstream.shared.settings import Settings

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Child:
    """A child process of the demo with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]


class ChildProcesses:
    """Start ``segstream`` subcommands as children; stop them all (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: list[Child] = []

    def start(self, name: str, *args: str) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed in stop_all
        cmd = [sys.executable, "-m", "segstream", *args]
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no orphans if the demo is killed
        )
        child = Child(name, proc, log_path, log)
        self.children.append(child)
        logger.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return child

    def stop(self, child: Child, timeout_s: float = 15.0) -> None:
        """SIGTERM one child and wait for it (SIGKILL after ``timeout_s``)."""
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)

    def stop_all(self, timeout_s: float = 15.0) -> None:
        for c in self.children:
            if c.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for c in self.children:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)
            c.log.close()


class TopicCounter(threading.Thread):
    """Counts records per topic (and DLQ records per reason header) in a background thread."""

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        dlq_topic: str | None = None,
        alert_topic: str | None = None,
        keyed_topics: tuple[str, ...] = (),
    ) -> None:
        super().__init__(daemon=True, name="demo-counter")
        self.bootstrap = bootstrap
        self.topics = topics
        self.dlq_topic = dlq_topic
        self.counts: Counter[str] = Counter()
        self.dlq_reasons: Counter[str] = Counter()
        self.samples: dict[str, bytes] = {}
        self.alert_topic = alert_topic
        self.alert_types: Counter[str] = Counter()
        self.alert_examples: dict[str, Any] = {}
        #: Records per key, per topic of ``keyed_topics`` (``keys.json`` in the demo's logs:
        #: the e2e test checks every event id against the predictions and DLQ).
        self.key_counts: dict[str, Counter[str]] = {t: Counter() for t in keyed_topics}
        self._halt = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Consumer

        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "auto.offset.reset": "earliest",
                "group.id": f"demo-counter-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "topic.metadata.refresh.interval.ms": 2000,
                **FAST_GROUP_CONFIG,
            }
        )
        c.subscribe(self.topics)
        try:
            while not self._halt.is_set():
                for m in c.consume(5000, 0.2):
                    if m.error() is not None:
                        continue
                    t = m.topic()
                    self.counts[t] += 1
                    if t in self.key_counts:
                        self.key_counts[t][(m.key() or b"").decode(errors="replace")] += 1
                    self.samples.setdefault(t, m.value() or b"")
                    if t == self.dlq_topic:
                        headers = dict(m.headers() or [])
                        reason = headers.get(
                            "segstream.dlq.reason", headers.get("segstream.reason", b"?")
                        )
                        self.dlq_reasons[reason.decode(errors="replace")] += 1
                    elif t == self.alert_topic:
                        with contextlib.suppress(ValueError):
                            alert = orjson.loads(m.value() or b"{}")
                            kind = str(alert.get("type", "?"))
                            self.alert_types[kind] += 1
                            self.alert_examples.setdefault(kind, alert)
        finally:
            c.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def scrape(port: int, timeout_s: float = 1.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a /metrics endpoint: name -> [(labels, value)]; empty when unreachable."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out.setdefault(smp.name, []).append((dict(smp.labels), float(smp.value)))
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Quantile from cumulative ``(upper bound, count)`` buckets (Prometheus' interpolation)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-12))
        prev_le, prev_c = le, c
    return buckets[-1][0]


def worker_view(ports: list[int]) -> dict[str, Any]:
    """Sum the workers' counters; merge their latency histograms."""
    lag = 0.0
    buckets: dict[float, float] = {}
    for port in ports:
        m = scrape(port)
        lag += sum(v for _, v in m.get("segstream_worker_consumer_lag_messages", []))
        for labels, v in m.get("segstream_worker_end_to_end_latency_seconds_bucket", []):
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    b = list(buckets.items())
    return {"lag": lag, "p50": histogram_quantile(b, 0.5), "p99": histogram_quantile(b, 0.99)}


def monitor_view(port: int | None) -> dict[str, Any]:
    """The monitor's view of the last closed performance window: outcomes, MAE and, for a
    binomial or Poisson model, its statistics beside the bundle's test figures
    (``{"window": {"log_loss": ..., "auroc": ...}, "test": {...}}``); empty without a
    monitor or before one answers."""
    if port is None:
        return {}
    m = scrape(port)
    out: dict[str, Any] = {}
    for name, key in (
        ("segstream_monitor_window_outcomes", "outcomes"),
        ("segstream_monitor_window_mae", "mae"),
    ):
        if m.get(name):
            out[key] = m[name][0][1]
    for name, key in (
        ("segstream_monitor_window_statistic", "window"),
        ("segstream_monitor_test_statistic", "test"),
    ):
        stats = {lab["statistic"]: round(v, 6) for lab, v in m.get(name, [])}
        if stats:
            out[key] = stats
    closed = {lab["kind"]: v for lab, v in m.get("segstream_monitor_windows_closed_total", [])}
    if closed:
        out["windows_closed"] = closed
    return out


def view_settled(ports: list[int]) -> bool:
    """True when every worker reports zero consumer lag."""
    return worker_view(ports)["lag"] == 0


def _wait_ready(port: int, child: Child, timeout_s: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def run_demo(
    settings: Settings,
    *,
    seconds: float,
    rate: float | None,
    keep_running: bool,
    out_dir: Path,
    config_path: str,
    workers: int = 2,
) -> dict[str, Any]:
    """Run the demo; return the summary dict (also printed by the CLI).

    Steps: embedded broker → topics → train and publish a bundle when the store has none →
    ``workers`` workers (one consumer group) and, when installed, the monitor → the simulator
    (September-December replay with outcomes and 1 % malformed events) → live status line →
    summary. Every child is stopped on exit, Ctrl-C or a broker failure.
    """
    from segstream.shared.broker import free_port
    from segstream.shared.store import ArtifactStore

    out_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    notes: list[str] = []
    with EmbeddedBroker(log_path=out_dir / "broker.log") as broker:
        print(f"demo: embedded broker at {broker.bootstrap}; logs in {out_dir}", flush=True)
        env = dict(
            os.environ,
            SEGSTREAM_BROKER__BOOTSTRAP=broker.bootstrap,
            SEGSTREAM_CONFIG=config_path,
        )
        t = settings.topics
        b = settings.broker.model_copy(update={"bootstrap": broker.bootstrap})
        ensure_topics(
            b,
            [t.events, t.outcomes, t.predictions, t.dlq, t.alerts, t.stats, t.model_updates],
            t.partitions,
            t.replication_factor,
        )
        children = ChildProcesses(out_dir, env)
        counter = TopicCounter(
            broker.bootstrap,
            [t.events, t.outcomes, t.predictions, t.dlq, t.alerts],
            dlq_topic=t.dlq,
            alert_topic=t.alerts,
            keyed_topics=(t.events, t.predictions, t.dlq),
        )
        counter.start()
        ports: list[int] = []
        sim: Child | None = None
        replay_s = 0.0
        prometheus_url: str | None = None
        monitor_port: int | None = None
        performance: dict[str, Any] = {}
        try:
            store = ArtifactStore(settings.store)
            bundle_id = store.latest(settings.model)
            if bundle_id is None:
                print(
                    f"demo: no bundle of {settings.model!r} in {store.url}: training one "
                    "(about a minute; log in train.log)",
                    flush=True,
                )
                tr = children.start(
                    "train",
                    "train",
                    "--config",
                    config_path,
                    "--quiet",
                    "--report-dir",
                    str(out_dir / "report"),
                )
                while tr.proc.poll() is None and not stop.is_set():
                    time.sleep(0.5)
                if tr.proc.returncode != 0:
                    raise RuntimeError(f"training failed; see {tr.log_path}")
                bundle_id = store.latest(settings.model)
                notes.append(f"trained bundle {bundle_id}; report in {out_dir / 'report'}")
            print(f"demo: serving bundle {bundle_id[:12] if bundle_id else '?'}", flush=True)
            for i in range(workers):
                port = free_port()
                ports.append(port)
                w = children.start(
                    f"worker-{i + 1}",
                    "worker",
                    "--config",
                    config_path,
                    "--metrics-port",
                    str(port),
                )
                if not _wait_ready(port, w, 60.0):
                    raise RuntimeError(f"worker-{i + 1} did not become ready; see {w.log_path}")
            if _has_module("segstream.services.monitor.cli"):
                monitor_port = free_port()
                children.start(
                    "monitor",
                    "monitor",
                    "--config",
                    config_path,
                    "--metrics-port",
                    str(monitor_port),
                )
            else:
                notes.append("monitor not installed in this build: no alerts")
            prometheus_url = _start_prometheus(
                children, out_dir, config_path, ports, monitor_port, notes
            )
            sim_args = [
                "simulate",
                "--config",
                config_path,
                "--quiet",
                "--bad-fraction",
                str(settings.simulator.bad_fraction or 0.01),
            ]
            if rate is not None:
                sim_args += ["--rate", str(rate)]
            sim = children.start("simulator", *sim_args)
            replay_started = time.monotonic()
            deadline = None if keep_running else replay_started + seconds
            view: dict[str, Any] = {}
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                time.sleep(1.0)
                if not broker.is_running():
                    notes.append("the broker went away: stopping")
                    print("\ndemo: error: the embedded broker exited; stopping", file=sys.stderr)
                    break
                view = worker_view(ports)
                c = counter.counts
                line = (
                    f"\rdemo: {time.monotonic() - replay_started:5.0f} s  "
                    f"events={c[t.events]:,} predictions={c[t.predictions]:,} "
                    f"dlq={c[t.dlq]:,} alerts={c[t.alerts]:,} lag={view['lag']:,.0f} "
                    f"p99={view['p99'] * 1000:,.0f} ms   "
                )
                print(line, end="", file=sys.stderr, flush=True)
                if (
                    sim.proc.poll() is not None
                    and not keep_running
                    and (
                        c[t.predictions] + c[t.dlq] >= c[t.events]
                        or time.monotonic() > (deadline or 0)
                    )
                ):
                    break
            print(file=sys.stderr)
            replay_s = time.monotonic() - replay_started
            # Stop the input first, then let the workers drain what is in the topic (bounded),
            # so that the summary's counts can add up: events = predictions + DLQ.
            children.stop(sim)
            drain_until = time.monotonic() + 30.0
            while time.monotonic() < drain_until and not stop.is_set():
                c = counter.counts
                if c[t.predictions] + c[t.dlq] >= c[t.events] and view_settled(ports):
                    break
                time.sleep(0.5)
            time.sleep(1.0)  # the counter's last fetch
            view = worker_view(ports) or view
            performance = monitor_view(monitor_port)
        finally:
            children.stop_all()
            counter.stop()
            keys = {"events": t.events, "predictions": t.predictions, "dlq": t.dlq}
            (out_dir / "keys.json").write_bytes(
                orjson.dumps({role: counter.key_counts[topic] for role, topic in keys.items()})
            )
        elapsed = time.monotonic() - started
        c = counter.counts
        sim_summary = ""
        if sim is not None:
            with contextlib.suppress(OSError):
                lines = sim.log_path.read_text(errors="replace").splitlines()
                sim_summary = next((ln for ln in reversed(lines) if ln.startswith("simulate:")), "")
        return {
            "seconds": round(elapsed, 1),
            "bundle_id": bundle_id,
            "events": c[t.events],
            "predictions": c[t.predictions],
            "dlq": c[t.dlq],
            "dlq_by_reason": dict(counter.dlq_reasons),
            "outcomes": c[t.outcomes],
            "alerts": c[t.alerts],
            "alerts_by_type": dict(counter.alert_types),
            "alert_examples": counter.alert_examples,
            "consistent": c[t.predictions] + c[t.dlq] == c[t.events],
            "replay_seconds": round(replay_s, 1),
            "predictions_per_s": round(c[t.predictions] / replay_s, 1) if replay_s else 0.0,
            "latency_p50_s": view.get("p50"),
            "latency_p99_s": view.get("p99"),
            "performance": performance,
            "simulator": sim_summary,
            "prometheus": prometheus_url,
            "notes": notes,
            "logs": str(out_dir),
            "children_left": [ch.name for ch in children.children if ch.proc.poll() is None],
        }


def _start_prometheus(
    children: ChildProcesses,
    out_dir: Path,
    config_path: str,
    worker_ports: list[int],
    monitor_port: int | None,
    notes: list[str],
) -> str | None:
    """Start Prometheus with the repository's rules scraping the demo's services, when a
    ``prometheus`` binary is on the PATH; say so either way."""
    from segstream.services.prometheus import find_prometheus, prometheus_command, render_config
    from segstream.shared.broker import free_port

    binary = find_prometheus()
    import importlib.resources

    # The scrape config and alert rules ship with the package (segstream.config), so the demo
    # has them outside the repository too.
    config_file = (
        Path(str(importlib.resources.files("segstream.config"))) / "prometheus" / "prometheus.yml"
    )
    if binary is None or not config_file.is_file():
        notes.append(
            "prometheus not on the PATH: running without it (apt-get install prometheus to get one)"
            if binary is None
            else f"no Prometheus config at {config_file}: running without Prometheus"
        )
        return None
    port = free_port()
    cfg = render_config(
        config_file,
        {
            "segstream-worker": [f"127.0.0.1:{p}" for p in worker_ports],
            "segstream-monitor": [f"127.0.0.1:{monitor_port}"] if monitor_port else None,
            "prometheus": [f"127.0.0.1:{port}"],
        },
        out_dir / "prometheus.yml",
        interval="2s",
    )
    log_path = out_dir / "prometheus.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed by stop_all
    proc = subprocess.Popen(
        prometheus_command(binary, cfg, port, out_dir / "tsdb"),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - it only calls prctl(PR_SET_PDEATHSIG)
    )
    children.children.append(Child("prometheus", proc, log_path, log))
    url = f"http://127.0.0.1:{port}"
    notes.append(
        f"Prometheus at {url} (scraping the workers and the monitor, with the "
        "repository's alert rules)"
    )
    return url


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
