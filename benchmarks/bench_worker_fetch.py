"""Benchmark of the worker's end-to-end latency by events-consumer fetch setting.

One ``segstream worker`` at a fixed input rate through the embedded Tansu broker (a fresh
broker per run), for each fetch setting: a fetch per produced batch (``fetch.min.bytes`` 1,
``fetch.wait.max.ms`` 10, no back-off), large held fetches (1 MB / 60 ms), the paced fetches
(``worker.fetch_backoff_ms`` 50) with uncompressed outputs, and the defaults (paced fetches,
lz4 outputs). Latency = prediction's broker timestamp - event's, joined by event id, over the
whole run; broker CPU = the broker process's CPU seconds over the input window / its length.
Runs of the settings are interleaved (setting 1, 2, 3, 4, 1, 2, ...); every run is recorded
and the summary gives medians.

Usage::

    python benchmarks/bench_worker_fetch.py --quick --bundle DIR --out benchmarks/results/bench_worker_fetch_quick.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_worker import FAKE_LOADER, environment, event_values, latency_at_rate  # noqa: E402

from segstream.shared.broker import EmbeddedBroker  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "fetch per produced batch (1 B / 10 ms, no back-off), lz4": {
        "fetch_backoff_ms": 0,
        "fetch_min_bytes": 1,
        "fetch_wait_max_ms": 10,
    },
    "held fetches (1 MB / 60 ms, no back-off), lz4": {
        "fetch_backoff_ms": 0,
        "fetch_min_bytes": 1_000_000,
        "fetch_wait_max_ms": 60,
    },
    "paced 50 ms, uncompressed outputs": {"producer_compression": "none"},
    "paced 50 ms, lz4 outputs (the defaults)": {},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 runs of 8 s per setting")
    mode.add_argument("--full", action="store_true", help="5 runs of 20 s per setting")
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: the fake scorer)")
    ap.add_argument("--rate", type=float, default=8_000.0, help="input events/s")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    args = ap.parse_args(argv)
    runs, seconds = (5, 20.0) if args.full else (2, 8.0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    if args.bundle is None:
        from segstream.shared.settings import load_settings
        from tests.fakes import write_fake_bundle

        schema = load_settings(REPO / "config" / "flights.yaml").event_schema
        bundle_dir = write_fake_bundle(tmp / "bundle", schema)
        loader: str | None = FAKE_LOADER
        label = "fake scorer (tests/fakes.py)"
    else:
        bundle_dir = args.bundle.resolve()
        loader = None
        label = f"trained bundle {bundle_dir.name[:12]}"
    records = event_values(int(args.rate * seconds))
    result: dict[str, Any] = {
        "benchmark": "bench_worker_fetch",
        "mode": "full" if args.full else "quick",
        "bundle": label,
        "rate": args.rate,
        "seconds_per_run": seconds,
        "runs_per_setting": runs,
        "environment": environment(),
        "settings": {k: v or "defaults" for k, v in SETTINGS.items()},
        "runs": {k: [] for k in SETTINGS},
    }
    for i in range(runs):
        for name, overrides in SETTINGS.items():
            print(f"run {i + 1}/{runs}: {name} ...", file=sys.stderr)
            with EmbeddedBroker() as broker:
                try:
                    r = latency_at_rate(
                        broker.bootstrap,
                        tmp,
                        bundle_dir,
                        loader,
                        records,
                        args.rate,
                        seconds,
                        broker.pid,
                        **overrides,
                    )
                except Exception as exc:
                    r = {"error": f"{type(exc).__name__}: {exc}"}
            result["runs"][name].append(r)
    summary = {}
    for name, rs in result["runs"].items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            summary[name] = {"runs_ok": 0}
            continue
        summary[name] = {
            "runs_ok": len(ok),
            "p50_s_median": float(np.median([r["p50_s"] for r in ok])),
            "p99_s_median": float(np.median([r["p99_s"] for r in ok])),
            "p99_s_min": min(r["p99_s"] for r in ok),
            "p99_s_max": max(r["p99_s"] for r in ok),
            "broker_cpu_cores_median": float(
                np.median([r["broker_cpu_cores_during_input"] for r in ok])
            ),
            "achieved_input_rate_median": float(np.median([r["achieved_input_rate"] for r in ok])),
        }
    result["summary"] = summary
    result["environment"]["load_average_at_end"] = list(os.getloadavg())
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
