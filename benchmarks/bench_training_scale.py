"""Training at scale (issue 19): flights repeated 1x, 10x (--full: 100x) with jittered values as
a directory of Parquet files; the memory engine (``segstream train --data DIR``) and the
mergeable passes of training/passes.py through the chunked and dask engines, each in its own
child process, with wall time, rows/s and the peak resident memory of the child's whole process
tree (psutil, sampled every 0.1 s in a thread, Dask worker processes included).

    python benchmarks/bench_training_scale.py --quick --out benchmarks/results/bench_training_scale_quick.json

``--quick``: memory engine at 1x and 10x, passes over 10x. ``--full``: adds 100x (passes only:
the memory engine peaked at 12.2 GB at 10x, so 100x does not fit this 24 GiB machine). Only the
``memory`` engine trains end to end today; the passes are what the ``chunked`` and ``dask``
engines will run (one pass per statistic here; a training makes several).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import environment  # noqa: E402  (the benchmarks' env stamp)

#: Columns jittered per copy (Gaussian noise of this many minutes / units) so that copies are
#: not duplicates: delays by 5 minutes, weather a little.
JITTER = {"dep_delay": 5.0, "arr_delay": 5.0, "temp": 1.0, "wind_speed": 1.0, "visib": 0.2}
N_GROUPS = 512
N_NODES = 64


# --------------------------------------------------------------------------- data


def write_copies(df: pd.DataFrame, root: Path, copies: int, seed: int = 0) -> int:
    """``copies`` jittered copies of ``df``, one Parquet file each under ``root/copy=K/``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = 0
    for k in range(copies):
        c = df.copy()
        for col, s in JITTER.items():
            v = c[col].to_numpy()
            c[col] = np.round(v + rng.normal(0.0, s, len(v)), 2) if k else v
        c["event_id"] = c["event_id"] + f"-{k}"
        d = root / f"copy={k}"
        d.mkdir(exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(c, preserve_index=False),
            d / "part-0.parquet",
            row_group_size=131_072,
        )
        n += len(c)
    return n


# --------------------------------------------------------------------------- peak memory


class TreePeak:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples: list[tuple[float, int]] = []  # (unix time, summed RSS bytes)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            rss = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            self.peak = max(self.peak, rss)
            self.samples.append((time.time(), rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreePeak:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_child(cmd: list[str], log: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        with TreePeak(p.pid) as peak:
            rc = p.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{cmd[:4]} failed ({rc}):\n{tail}")
    out: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "peak_rss_bytes": peak.peak,
        "peak_rss_gb": round(peak.peak / 1e9, 3),
    }
    steps = step_peaks(log.read_text(), peak.samples)
    if steps:
        out["step_peak_rss_gb"] = steps
    return out


_STEP = re.compile(r'ts=(\S+) .*msg="step (\w+) done in ([0-9.]+) s"')


def step_peaks(log: str, samples: list[tuple[float, int]]) -> dict[str, float]:
    """Peak RSS (GB) of the process tree during each training step, from the pipeline's
    ``step NAME done in S s`` log lines (their timestamps end the step)."""
    out: dict[str, float] = {}
    for ts, name, secs in _STEP.findall(log):
        end = pd.Timestamp(ts).timestamp()
        start = end - float(secs)
        inside = [r for t, r in samples if start - 0.1 <= t <= end + 0.1]
        if inside:
            out[name] = round(max(inside) / 1e9, 3)
    return out


# --------------------------------------------------------------------------- passes (child)


def route_group(chunk: pd.DataFrame, n: int) -> np.ndarray:
    """Group id of each row: a hash of (origin, carrier, dest) modulo ``n`` (stable across
    chunks and processes)."""
    h = pd.util.hash_pandas_object(chunk[["origin", "carrier", "dest"]], index=False)
    return (h.to_numpy() % np.uint64(n)).astype(np.int64)


def scaled_target(chunk: pd.DataFrame, center: float, scale: float) -> np.ndarray:
    y = chunk["arr_delay"].to_numpy(np.float64)
    return np.where(np.isfinite(y), (y - center) / scale, 0.0).astype(np.float32)[:, None]


def dep_delay(chunk: pd.DataFrame) -> np.ndarray:
    return chunk["dep_delay"].to_numpy(np.float64)


def child_passes(data: str, engine_name: str, config: str, out: str) -> None:
    from segstream.shared.data import dataset_parts, iter_part_batches
    from segstream.shared.settings import load_settings
    from segstream.training import passes as ps
    from segstream.training.engines import ChunkedEngine, DaskEngine

    s = load_settings(config)
    schema = s.event_schema
    feats = ["dep_delay", "distance", "sched_dep_hour", "wind_speed", "visib", "precip"]
    split = ["sched_dep_hour", "distance", "temp", "dewp", "humid", "pressure"]
    cols = sorted({"origin", "carrier", "dest", "arr_delay", *feats, *split})
    parts = dataset_parts(data, schema, columns=cols)
    reader = functools.partial(
        iter_part_batches,
        schema=schema,
        timezone=s.dataset.timezone,
        columns=cols,
        start=None,
        end=s.training.train_end,
    )
    group = functools.partial(route_group, n=N_GROUPS)
    node = functools.partial(route_group, n=N_NODES)
    eng: Any = (
        ChunkedEngine(progress=False)
        if engine_name == "chunked"
        else DaskEngine(n_workers=2, processes=True, progress=False).start()
    )
    res: dict[str, Any] = {}

    def run(name: str, stat: Any) -> Any:
        r = eng.run(parts, stat, reader, desc=name)
        res[name] = {
            "seconds": round(r.seconds, 2),
            "rows": r.rows,
            "rows_per_s": round(r.rows / r.seconds),
        }
        print(name, res[name], flush=True)
        return stat.finalize(r.state)

    try:
        # warm-up, not reported: imports and numba kernels loaded in every worker
        eng.run(parts[:2], ps.MomentStats(["arr_delay"]), reader)
        warm_edges = np.full((len(split), 254), np.inf)
        warm_t = functools.partial(scaled_target, center=0.0, scale=1.0)
        eng.run(parts[:2], ps.NodeHistograms(split, warm_edges, N_NODES, node, warm_t), reader)
        mom = run("moments", ps.MomentStats(["arr_delay", *split]))
        edges, _ = run("bin_edges", ps.BinEdges(split, max_bins=255))
        _, _, _, c, sd = mom["arr_delay"]
        tgt = functools.partial(scaled_target, center=c, scale=sd)
        run("node_histograms", ps.NodeHistograms(split, edges, N_NODES, node, tgt))
        ols = run("ols_suffstats", ps.OLSSuffStats(feats, "arr_delay", group, N_GROUPS))
        coef = np.zeros((N_GROUPS, 1 + len(feats)))
        run("glm_irls_pass", ps.GLMIRLSStats(feats, "arr_delay", group, coef, family="gaussian"))
        run(
            "outcome_histograms",
            ps.OutcomeHistograms("arr_delay", np.linspace(-60, 240, 61), group, N_GROUPS),
        )
        run("residual_quantiles", ps.ResidualQuantiles("arr_delay", dep_delay, group))
        run(
            "evaluation_sums",
            ps.EvaluationSums("arr_delay", "dep_delay", group=group, n_groups=N_GROUPS),
        )
        res["ols_groups_fitted"] = int(np.isfinite(ols["coef"][:, 0]).sum())
    finally:
        if isinstance(eng, DaskEngine):
            eng.close()
    Path(out).write_text(json.dumps(res))


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    ap.add_argument("--config", default=str(REPO / "config" / "flights.yaml"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--sizes", type=int, nargs="+", help="copies (default 1 10; --full 1 10 100)")
    ap.add_argument("--passes-only", action="store_true", help="only the passes (no memory engine)")
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="only the memory engine (e.g. to compare a loader change); no passes",
    )
    ap.add_argument(
        "--child-passes", nargs=3, metavar=("DATA", "ENGINE", "OUT"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child_passes:
        child_passes(args.child_passes[0], args.child_passes[1], args.config, args.child_passes[2])
        return 0
    full = bool(args.full)
    out = Path(
        args.out
        or REPO
        / "benchmarks"
        / "results"
        / f"bench_training_scale_{'full' if full else 'quick'}.json"
    )
    env = {**environment(), "load_avg_start": list(os.getloadavg())}

    from segstream.shared.data import load_dataset
    from segstream.shared.settings import load_settings

    settings = load_settings(args.config)
    flights = load_dataset(settings)
    base_cols = [c for c in flights.columns if c not in ("outcome_missing",)]
    flights = flights[base_cols]
    sizes = args.sizes or ([1, 10, 100] if full else [1, 10])
    result: dict[str, Any] = {
        "benchmark": "training_scale",
        "mode": "full" if full else "quick",
        "environment": env,
        "jitter": JITTER,
        "sizes": {},
        "memory_engine": {},
        "passes": {},
    }
    py = sys.executable
    segstream = str(Path(py).parent / "segstream")
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        for k in sizes:
            d = Path(tmp) / f"flights_{k}x"
            t0 = time.perf_counter()
            rows = write_copies(flights, d, k)
            nbytes = sum(f.stat().st_size for f in d.rglob("*.parquet"))
            result["sizes"][f"{k}x"] = {
                "rows": rows,
                "files": k,
                "parquet_bytes": nbytes,
                "write_s": round(time.perf_counter() - t0, 1),
            }
            print(f"{k}x: {rows:,} rows, {nbytes / 1e6:.0f} MB parquet", flush=True)
            if k <= 10 and not args.passes_only:
                cmd = [
                    segstream,
                    "train",
                    "--config",
                    args.config,
                    "--data",
                    str(d),
                    "--no-publish",
                    "--quiet",
                    "--work-dir",
                    str(Path(tmp) / f"w{k}"),
                    "--report-dir",
                    str(Path(tmp) / f"r{k}"),
                ]
                m = run_child(cmd, Path(tmp) / f"train{k}.log")
                m["rows_per_s"] = round(rows / m["wall_s"])
                result["memory_engine"][f"{k}x"] = m
                print(f"memory engine {k}x: {m}", flush=True)
            if k >= 10 and not args.memory_only:
                for eng in ("chunked", "dask"):
                    if k == 100 and eng == "dask":
                        continue
                    o = Path(tmp) / f"passes_{eng}_{k}.json"
                    cmd = [
                        py,
                        __file__,
                        "--config",
                        args.config,
                        "--child-passes",
                        str(d),
                        eng,
                        str(o),
                    ]
                    m = run_child(cmd, Path(tmp) / f"passes_{eng}_{k}.log")
                    m["per_pass"] = json.loads(o.read_text())
                    secs = [v["seconds"] for v in m["per_pass"].values() if isinstance(v, dict)]
                    m["passes_total_s"] = round(sum(secs), 2)
                    m["pass_seconds_median"] = round(statistics.median(secs), 2)
                    result["passes"][f"{eng}_{k}x"] = m
                    print(
                        f"passes {eng} {k}x: peak {m['peak_rss_gb']} GB, {m['passes_total_s']} s",
                        flush=True,
                    )
            for f in d.rglob("*.parquet"):
                if k == 100:
                    f.unlink()
    env["load_avg_end"] = list(os.getloadavg())
    mem10 = result["memory_engine"].get("10x", {})
    ch10 = result["passes"].get("chunked_10x", {})
    dk10 = result["passes"].get("dask_10x", {})
    result["summary"] = {
        "memory_engine_peak_gb_10x": mem10.get("peak_rss_gb"),
        "memory_engine_wall_s_10x": mem10.get("wall_s"),
        "chunked_passes_peak_gb_10x": ch10.get("peak_rss_gb"),
        "dask_passes_peak_gb_10x": dk10.get("peak_rss_gb"),
        "chunked_pass_seconds_median_10x": ch10.get("pass_seconds_median"),
        "dask_pass_seconds_median_10x": dk10.get("pass_seconds_median"),
        "dask_over_chunked_total": (
            round(dk10["passes_total_s"] / ch10["passes_total_s"], 2) if ch10 and dk10 else None
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
