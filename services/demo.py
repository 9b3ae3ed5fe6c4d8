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

from shared.broker import EmbeddedBroker
from shared.kafka import FAST_GROUP_CONFIG, ensure_topics
from shared.settings import Settings

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
        cmd = [sys.executable, "-m", "shared.cli", *args]
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
        )
        child = Child(name, proc, log_path, log)
        self.children.append(child)
        logger.info("started %s (pid %d), log %s", name, proc.pid, log_path)
        return child

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

    def __init__(self, bootstrap: str, topics: list[str], dlq_topic: str | None = None) -> None:
        super().__init__(daemon=True, name="demo-counter")
        self.bootstrap = bootstrap
        self.topics = topics
        self.dlq_topic = dlq_topic
        self.counts: Counter[str] = Counter()
        self.dlq_reasons: Counter[str] = Counter()
        self.samples: dict[str, bytes] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Consumer  # noqa: PLC0415

        c = Consumer({"bootstrap.servers": self.bootstrap, "auto.offset.reset": "earliest",
                      "group.id": f"demo-counter-{uuid.uuid4().hex[:6]}",
                      "enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 2000,
                      **FAST_GROUP_CONFIG})
        c.subscribe(self.topics)
        try:
            while not self._halt.is_set():
                for m in c.consume(5000, 0.2):
                    if m.error() is not None:
                        continue
                    t = m.topic()
                    self.counts[t] += 1
                    self.samples.setdefault(t, m.value() or b"")
                    if t == self.dlq_topic:
                        reason = dict(m.headers() or []).get("segstream.reason", b"?")
                        self.dlq_reasons[reason.decode(errors="replace")] += 1
        finally:
            c.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def run_demo(settings: Settings, *, seconds: float, rate: float | None, keep_running: bool,
             out_dir: Path, config_path: str) -> dict[str, Any]:
    """Run the demo; return the summary dict (also printed by the CLI)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    with EmbeddedBroker(log_path=out_dir / "broker.log") as broker:
        print(f"demo: embedded broker at {broker.bootstrap}; logs in {out_dir}", flush=True)
        env = dict(os.environ, SEGSTREAM_BROKER__BOOTSTRAP=broker.bootstrap,
                   SEGSTREAM_CONFIG=config_path)
        t = settings.topics
        b = settings.broker.model_copy(update={"bootstrap": broker.bootstrap})
        ensure_topics(b, [t.events, t.outcomes, t.predictions, t.dlq, t.alerts, t.stats,
                          t.model_updates], t.partitions, t.replication_factor)
        counter = TopicCounter(broker.bootstrap, [t.events, t.outcomes, t.predictions, t.dlq,
                                                  t.alerts], dlq_topic=t.dlq)
        counter.start()
        children = ChildProcesses(out_dir, env)
        try:
            sim_args = ["simulate", "--config", config_path, "--quiet",
                        "--bad-fraction", str(settings.simulator.bad_fraction or 0.01)]
            if rate is not None:
                sim_args += ["--rate", str(rate)]
            sim = children.start("simulator", *sim_args)
            deadline = None if keep_running else started + seconds
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                time.sleep(1.0)
                c = counter.counts
                line = (f"\rdemo: {time.monotonic() - started:5.0f} s  events={c[t.events]:,} "
                        f"outcomes={c[t.outcomes]:,} predictions={c[t.predictions]:,} "
                        f"dlq={c[t.dlq]:,} alerts={c[t.alerts]:,}")
                print(line, end="", file=sys.stderr, flush=True)
                if sim.proc.poll() is not None and not keep_running:
                    time.sleep(2.0)  # let the last records be counted
                    break
            print(file=sys.stderr)
        finally:
            children.stop_all()
            counter.stop()
        sim_summary = ""
        with contextlib.suppress(OSError):
            lines = sim.log_path.read_text(errors="replace").splitlines()
            sim_summary = next((ln for ln in reversed(lines) if ln.startswith("simulate:")), "")
        elapsed = time.monotonic() - started
        c = counter.counts
        return {
            "seconds": round(elapsed, 1),
            "events": c[t.events],
            "outcomes": c[t.outcomes],
            "predictions": c[t.predictions],
            "dlq": c[t.dlq],
            "dlq_by_reason": dict(counter.dlq_reasons),
            "alerts": c[t.alerts],
            "events_per_s": round(c[t.events] / elapsed, 1) if elapsed else 0.0,
            "simulator": sim_summary,
            "logs": str(out_dir),
            "children_left": [ch.name for ch in children.children if ch.proc.poll() is None],
        }
