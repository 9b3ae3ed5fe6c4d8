"""Where the monitor's record path spends its time, without a broker.

Feeds N synthetic prediction and outcome records (JSON bytes, as the service receives them;
event times one day of September 2013, 6 partitions, micro-batches of ``--batch`` records per
partition, predictions first, then their outcomes, as a backlog is read) through
:class:`segstream.services.monitor.core.MonitorCore` over plain dicts wrapped in a table that
records dirty keys like the service's ``BufferedTable``, and reports records/s of the core
alone. ``--profile`` prints the top cProfile entries.

Usage::

    python benchmarks/profile_monitor_core.py --n 20000 [--profile] [--repeat 5]
        [--out benchmarks/results/monitor_core_after.json --label after]

With ``--out``: ``--repeat`` timed runs (after one warm-up), all recorded with their median
and an environment stamp (git commit, load average).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from segstream.services.monitor.core import MonitorCore  # noqa: E402
from segstream.services.monitor.performance import Baseline  # noqa: E402
from segstream.shared.contracts import Prediction  # noqa: E402
from segstream.shared.drift import DriftReference  # noqa: E402
from segstream.shared.settings import MonitorSettings  # noqa: E402

BUNDLE = "ab" * 32
T0 = int(dt.datetime(2013, 9, 1, tzinfo=dt.UTC).timestamp() * 1000)


class DirtyDict(MutableMapping):  # type: ignore[type-arg]
    """A dict that remembers changed keys and 'flushes' them (counts), like BufferedTable."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self._dirty: dict[Any, int | None] = {}
        self.partition: int | None = None
        self.sent = 0

    def __getitem__(self, k: Any) -> Any:
        return self.data[k]

    def get(self, k: Any, default: Any = None) -> Any:
        return self.data.get(k, default)

    def __setitem__(self, k: Any, v: Any) -> None:
        self.data[k] = v
        self._dirty[k] = self.partition

    def __delitem__(self, k: Any) -> None:
        del self.data[k]
        self._dirty[k] = self.partition

    def __iter__(self) -> Any:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def flush(self) -> int:
        n = len(self._dirty)
        self.sent += n
        self._dirty.clear()
        return n


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def records(n: int, partitions: int) -> tuple[list[tuple[bytes, int, int]], list[Any]]:
    enc = msgspec.json.Encoder()
    preds, outs = [], []
    offs = [0] * partitions
    for i in range(n):
        p = i % partitions
        t = iso(T0 + i * 86_000_000 // n)
        eid = f"e{i:08d}"
        rec = Prediction(
            event_id=eid,
            model="m",
            bundle_id=BUNDLE,
            segment=i % 40,
            fallback_level=0,
            prediction=float(i % 17),
            interval=(-10.0, 30.0),
            interval_mass=0.8,
            pattern=1,
            pattern_proba=0.7,
            event_time=t,
            scored_at=t,
        )
        preds.append((enc.encode(rec), p, offs[p]))
        y = None if i % 50 == 0 else float(i % 23)
        outs.append(
            (
                enc.encode({"event_id": eid, "arr_delay": y, "event_time": t, "outcome_time": t}),
                p,
                offs[p],
            )
        )
        offs[p] += 1
    return preds, outs


def run(n: int, batch: int, partitions: int, *, batch_api: bool = True) -> dict[str, Any]:
    preds, outs = records(n, partitions)
    tables = {
        k: DirtyDict()
        for k in ("drift", "newkeys", "pending_p", "pending_o", "perf", "meta", "perfmerge")
    }
    core = MonitorCore(
        MonitorSettings(),
        model="m",
        id_field="event_id",
        time_field="event_time",
        target="arr_delay",
        reference_for={
            BUNDLE: (
                DriftReference(numeric={}, categorical={}),
                Baseline(10.0, 0.8, 0.8, {"1": 10.0}),
            )
        }.get,
        tables=tables,  # type: ignore[arg-type]
        partitions=partitions,
    )
    t0 = time.perf_counter()
    for handle, recs in ((core.on_predictions, preds), (core.on_outcomes, outs)):
        for start in range(0, len(recs), batch * partitions):
            chunk = recs[start : start + batch * partitions]
            by_p: dict[int, list[Any]] = {}
            for r in chunk:
                by_p.setdefault(r[1], []).append(r)
            for p, rs in by_p.items():
                for tbl in tables.values():
                    tbl.partition = p
                handle(rs, time.time())
            for tbl in tables.values():
                tbl.flush()
    secs = time.perf_counter() - t0
    return {
        "records": 2 * n,
        "seconds": round(secs, 4),
        "records_per_s": round(2 * n / secs, 1),
        "changelog_writes": sum(t.sent for t in tables.values()),
        "joined": core.counters.join.get("joined", 0) + core.counters.join.get("joined_nan", 0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="JSON result path")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    print("loadavg", os.getloadavg())
    run(2000, args.batch, args.partitions)  # warm-up
    if args.out:
        load0 = list(os.getloadavg())
        runs = [run(args.n, args.batch, args.partitions) for _ in range(args.repeat)]
        doc = {
            "benchmark": "profile_monitor_core",
            "label": args.label,
            "n_events": args.n,
            "batch": args.batch,
            "partitions": args.partitions,
            "runs": runs,
            "median_records_per_s": statistics.median(r["records_per_s"] for r in runs),
            "environment": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "git_commit": subprocess.run(
                    ["git", "rev-parse", "--short", "HEAD"],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                ).stdout.strip(),
                "loadavg_start": load0,
                "loadavg_end": list(os.getloadavg()),
            },
        }
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(doc["median_records_per_s"], [r["records_per_s"] for r in runs])
        return 0
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        res = run(args.n, args.batch, args.partitions)
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
    else:
        res = run(args.n, args.batch, args.partitions)
    print(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
