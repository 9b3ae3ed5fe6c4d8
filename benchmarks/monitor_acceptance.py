"""Real-data acceptance of the monitor: train on January–August, replay September–December.

Runs, on the embedded broker (or ``--bootstrap``): one ``segstream worker`` with a real
bundle trained by ``config/flights.yaml`` (January–August), one ``segstream monitor``
(one-day event-time windows), and the simulator replaying September 1 – December 31 with
outcomes at arrival time (``--rate`` events/s). Reads every alert back and writes a summary:
alerts by type / severity / month, the drift alerts per feature with their first window and
largest PSI, new-segment alerts, performance alerts with MAE and coverage, the monitor's
final metrics, plus facts computed from the data itself (mean temperature per month, unseen
routes, mean delay per month) so the findings can be checked.

Usage::

    python -m segstream train --config config/flights.yaml --store file:///tmp/mon/store
    python benchmarks/monitor_acceptance.py --store file:///tmp/mon/store \\
        --out benchmarks/results/monitor_acceptance.json
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from segstream.shared.broker import EmbeddedBroker  # noqa: E402
from segstream.shared.kafka import ensure_topics  # noqa: E402
from segstream.shared.settings import load_settings  # noqa: E402
from tests.integration.worker_helpers import write_config  # noqa: E402

PY = sys.executable


def environment() -> dict[str, Any]:
    import confluent_kafka
    import numpy
    import pandas

    return {
        "python": platform.python_version(),
        "monitor_runtime": "confluent-kafka loop",
        "confluent_kafka": confluent_kafka.version(),
        "loadavg_start": list(os.getloadavg()),
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def data_facts() -> dict[str, Any]:
    """What the data says, independent of the monitor."""
    from segstream.shared.data import load_nycflights13

    df = load_nycflights13()
    month = df["event_time"].dt.month
    train = df[month <= 8]
    later = df[month >= 9]
    route = lambda d: set(zip(d["origin"], d["dest"], strict=True))  # noqa: E731
    croute = lambda d: set(zip(d["origin"], d["carrier"], d["dest"], strict=True))  # noqa: E731
    new_routes = sorted("|".join(r) for r in route(later) - route(train))
    new_croutes = sorted("|".join(r) for r in croute(later) - croute(train))
    later_keys = later.assign(k=later["origin"] + "|" + later["carrier"] + "|" + later["dest"])
    counts = later_keys[later_keys["k"].isin(set(new_croutes))].groupby("k").size()
    per_day = (
        later_keys[later_keys["k"].isin(set(new_croutes))]
        .groupby(["k", later_keys["event_time"].dt.date])
        .size()
    )
    return {
        "mean_temp_by_month": {
            int(m): round(float(v), 1) for m, v in df.groupby(month)["temp"].mean().items()
        },
        "mean_arr_delay_by_month": {
            int(m): round(float(v), 2) for m, v in df.groupby(month)["arr_delay"].mean().items()
        },
        "new_routes": new_routes,
        "new_carrier_routes": len(new_croutes),
        "new_carrier_route_flights_sep_dec": {
            k: int(v) for k, v in counts.sort_values(ascending=False).items()
        },
        "new_carrier_route_max_flights_per_day": int(per_day.max()) if len(per_day) else 0,
        "flights_sep_dec": len(later),
    }


def read_all(bootstrap: str, topic: str, idle_s: float, timeout_s: float) -> list[Any]:
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"acc-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 300,
        }
    )
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            for m in c.consume(10_000, 0.5):
                if m.error() is None:
                    out.append(orjson.loads(m.value()))
                    last = time.monotonic()
    finally:
        c.close()
    return out


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("segstream_monitor_") and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def wait_until_done(
    port: int, events: int, outcomes: int, quiet_s: float, timeout_s: float = 3600
) -> None:
    """Until the monitor has read every prediction and outcome and closed no further window
    for ``quiet_s`` seconds (the idle close included)."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            m = scrape(port)
        except OSError:
            time.sleep(2)
            continue
        done = sum(
            v
            for k, v in m.items()
            if k.startswith("segstream_monitor_records_total") and 'source="predictions"' in k
        )
        done_o = sum(
            v
            for k, v in m.items()
            if k.startswith("segstream_monitor_records_total") and 'source="outcomes"' in k
        )
        closed = tuple(
            v
            for k, v in sorted(m.items())
            if k.startswith("segstream_monitor_windows_closed_total")
        )
        if closed != last:
            last, since = closed, time.monotonic()
        print(
            f"monitor: predictions {done:.0f}/{events} outcomes {done_o:.0f}/{outcomes} "
            f"windows closed {closed}",
            flush=True,
        )
        if done >= events and done_o >= outcomes and time.monotonic() - since >= quiet_s:
            return
        time.sleep(5)


def summarise(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    by_type = collections.Counter((a["type"], a["severity"]) for a in alerts)
    ids = collections.Counter(a["alert_id"] for a in alerts)
    drift_model = collections.defaultdict(list)
    drift_seg = collections.Counter()
    for a in alerts:
        if a["type"] == "drift":
            if a["segment"] is None:
                drift_model[a["feature"]].append(a)
            else:
                drift_seg[a["feature"]] += 1
    drift = {}
    for f, lst in sorted(drift_model.items()):
        lst.sort(key=lambda a: a["window_start"])
        months = collections.Counter(a["window_start"][:7] for a in lst)
        top = max(lst, key=lambda a: a["value"])
        drift[f] = {
            "windows": len(lst),
            "critical": sum(a["severity"] == "critical" for a in lst),
            "first_window": lst[0]["window_start"][:10],
            "first_value": lst[0]["value"],
            "by_month": dict(sorted(months.items())),
            "max_psi": top["value"],
            "max_psi_window": top["window_start"][:10],
            "max_psi_js": top.get("js_distance"),
        }
    newseg = sorted(
        (
            {
                "key": a["segment"],
                "window": a["window_start"][:10],
                "window_end": (a.get("window_end") or "")[:10],
                "count": a["count"],
                "first_seen": a.get("first_seen"),
                "serving_segment": a.get("serving_segment"),
            }
            for a in alerts
            if a["type"] == "new_segment"
        ),
        key=lambda r: r["window"],
    )
    perf = sorted(
        (
            {
                "window": a["window_start"][:10],
                "statistic": a["statistic"],
                "severity": a["severity"],
                "value": a["value"],
                "segment": a["segment"],
                "mae": a.get("mae"),
                "baseline_mae": a.get("baseline_mae"),
                "count": a["count"],
            }
            for a in alerts
            if a["type"] == "performance"
        ),
        key=lambda r: r["window"],
    )
    return {
        "n_alerts": len(alerts),
        "duplicate_alert_ids": sum(c - 1 for c in ids.values()),
        "by_type_severity": {f"{t}/{s}": n for (t, s), n in sorted(by_type.items())},
        "drift_whole_model": drift,
        "drift_segment_alerts_by_feature": dict(drift_seg),
        "new_segment": newseg,
        "performance": perf,
    }


def new_segment_check(
    summary: dict[str, Any], facts: dict[str, Any], threshold: int
) -> dict[str, Any]:
    """The run's new-segment alerts against the data: every never-seen (origin, carrier, dest)
    with ``threshold`` or more flights in the replay alerts once, no other key does."""
    expected = {k for k, n in facts["new_carrier_route_flights_sep_dec"].items() if n >= threshold}
    got: collections.Counter[str] = collections.Counter()
    for r in summary["new_segment"]:
        kv = dict(p.split("=", 1) for p in str(r["key"]).split(",") if "=" in p)
        got["|".join(kv.get(c, "?") for c in ("origin", "carrier", "dest"))] += 1
    return {
        "threshold": threshold,
        "expected_keys": sorted(expected),
        "alerted_keys": sorted(got),
        "missing": sorted(expected - set(got)),
        "unexpected": sorted(set(got) - expected),
        "alerts_per_key_max": max(got.values()) if got else 0,
    }


def offline_new_segments(stats: list[dict[str, Any]], settings: Any) -> dict[str, Any]:
    """Replay the run's stats records through the pure core with other lookbacks.

    The run itself counts each never-seen key since first seen, forgetting a key only once it
    has not been seen for ``monitor.new_segment_lookback_s`` (30 days, idle expiry); this
    shows what the same stats give with 1-, 7- and 30-day idle expiries (same threshold; no
    ticks here, so nothing expires: the three agree unless the core's rule changes).
    """
    import logging

    from segstream.services.monitor.core import MonitorCore

    logging.getLogger("segstream.services.monitor.core").setLevel(
        logging.CRITICAL
    )  # no references here
    out: dict[str, Any] = {"stats_records": len(stats)}
    for days in (1, 7, 30):
        m = settings.monitor.model_copy(
            update={"new_segment_lookback_s": days * 86_400, "drift_segments": False}
        )
        tables: dict[str, Any] = {
            k: {} for k in ("drift", "newkeys", "pending_p", "pending_o", "perf", "meta")
        }
        core = MonitorCore(
            m,
            model=settings.model,
            id_field="event_id",
            time_field="event_time",
            target="arr_delay",
            reference_for=lambda b: None,
            tables=tables,
            partitions=settings.topics.partitions,
        )
        alerts = []
        for i, rec in enumerate(stats):
            alerts += [a for a in core.on_stats(rec, 0, i, 0.0) if a.type == "new_segment"]
        out[f"{days}d"] = sorted(
            (
                {
                    "key": a.segment,
                    "window": (a.window_start or "")[:10],
                    "count": a.count,
                    "first_seen": a.first_seen,
                }
                for a in alerts
            ),
            key=lambda r: (r["window"], r["key"]),
        )
    return out


def offline_psi(store_url: str) -> dict[str, Any]:
    """PSI of the data itself against the bundle's frozen reference, per UTC day and month.

    Context for the drift alerts: the median one-day PSI over the *training* months
    (January-August, in-sample) is what a one-day window shows without any seasonal drift;
    one-month windows show the seasonal trend.
    """
    import numpy as np

    from segstream.shared.bundle import load_components
    from segstream.shared.data import load_nycflights13
    from segstream.shared.drift import DriftReference, psi
    from segstream.shared.settings import StoreSettings
    from segstream.shared.store import ArtifactStore

    store = ArtifactStore(StoreSettings(url=store_url))
    bid = store.latest("flights")
    path = store.fetch("flights", bid, Path(tempfile.mkdtemp(prefix="monacc-ref-")))
    ref = DriftReference.from_meta(load_components(path)["drift_reference"].meta)
    df = load_nycflights13()
    utc = df["event_time"].dt.tz_convert("UTC")
    day, month = utc.dt.strftime("%Y-%m-%d"), utc.dt.month
    out: dict[str, Any] = {"bundle_id": bid}
    for f in (
        "temp",
        "dewp",
        "humid",
        "pressure",
        "wind_speed",
        "visib",
        "precip",
        "dep_delay",
        "distance",
        "sched_dep_hour",
    ):
        r = ref.numeric[f]
        bins = r.bin(df[f].to_numpy(np.float64))
        daily: dict[int, list[float]] = {}
        for (m, _d), idx in df.groupby([month, day]).indices.items():
            if len(idx) >= 300:
                daily.setdefault(int(m), []).append(
                    psi(r.expected, np.bincount(bins[idx], minlength=r.n_bins))
                )
        monthly = {
            int(m): round(psi(r.expected, np.bincount(bins[idx], minlength=r.n_bins)), 4)
            for m, idx in df.groupby(month).indices.items()
        }
        missing = {
            int(m): round(float(np.isnan(df[f].to_numpy(np.float64)[idx]).mean()), 4)
            for m, idx in df.groupby(month).indices.items()
        }
        out[f] = {
            "median_daily_psi_by_month": {
                m: round(float(np.median(v)), 3) for m, v in sorted(daily.items())
            },
            "monthly_window_psi": monthly,
            "missing_share_by_month": missing,
        }
    return out


KEEP = (
    "type",
    "severity",
    "feature",
    "segment",
    "statistic",
    "value",
    "threshold",
    "count",
    "js_distance",
    "mae",
    "baseline_mae",
    "first_seen",
    "alert_id",
)


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The stored result: alerts trimmed to their telling fields (window as its start date),
    one line each; metrics without their ``_created`` timestamps."""
    res["alerts"] = [
        {"window": a["window_start"][:10], **{k: a[k] for k in KEEP if k in a}}
        if "window_start" in a
        else a
        for a in res["alerts"]
    ]
    res["run"]["metrics"] = {k: v for k, v in res["run"]["metrics"].items() if "_created" not in k}
    return res


def dump(res: dict[str, Any]) -> bytes:
    alerts = res.pop("alerts")
    body = orjson.dumps(res, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    lines = ",\n".join("    " + orjson.dumps(a).decode() for a in alerts)
    res["alerts"] = alerts
    return (body[:-2] + ',\n  "alerts": [\n' + lines + "\n  ]\n}\n").encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--store",
        default="file:///tmp/mon/store",
        help="artifact store with a flights bundle trained on January-August",
    )
    ap.add_argument("--bootstrap", help="external broker (default: embedded Tansu)")
    ap.add_argument("--rate", type=float, default=20_000)
    ap.add_argument("--start", default="2013-09-01")
    ap.add_argument("--end", default="2013-12-31")
    ap.add_argument("--out", default="benchmarks/results/monitor_acceptance.json")
    ap.add_argument("--quick", action="store_true", help="September 1-10 only")
    ap.add_argument(
        "--offline-only",
        action="store_true",
        help="only (re)compute the offline PSI context into an existing --out",
    )
    args = ap.parse_args(argv)
    if args.offline_only:
        res = orjson.loads(Path(args.out).read_bytes())
        res["offline_psi"] = offline_psi(args.store)
        Path(args.out).write_bytes(dump(compact(res)))
        print(
            orjson.dumps(
                res["offline_psi"], option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
            ).decode()
        )
        return 0
    if args.quick:
        args.end = "2013-09-10"
    tmp = Path(tempfile.mkdtemp(prefix="monacc-"))
    facts = data_facts()

    def run(bootstrap: str) -> dict[str, Any]:
        prefix = f"acc-{uuid.uuid4().hex[:6]}"
        names = ("events", "predictions", "alerts", "dlq", "stats", "outcomes", "model_updates")
        s = load_settings(
            REPO / "config" / "flights.yaml",
            {
                "broker": {"bootstrap": bootstrap},
                "topics": {**{n: f"{prefix}.{n}" for n in names}, "partitions": 6},
                "store": {"url": args.store},
                "worker": {
                    "group_id": f"{prefix}-w",
                    "metrics_port": 0,
                    "bundle_cache_dir": str(tmp / "wcache"),
                },
                "monitor": {
                    "app_id": f"{prefix}-mon",
                    "metrics_port": 0,
                    "idle_close_s": 20,
                    "session_timeout_s": 2.0,
                    "bundle_cache_dir": str(tmp / "mcache"),
                },
                "simulator": {"rate": args.rate, "start": args.start, "end": args.end},
            },
        )
        t = s.topics
        ensure_topics(s.broker, [getattr(t, n) for n in names], t.partitions)
        cfg = write_config(s, tmp / "acc.yaml")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        mon_log = open(tmp / "monitor.log", "w")  # noqa: SIM115
        mon = subprocess.Popen(
            [PY, "-m", "segstream", "monitor", "--config", str(cfg)],
            cwd=REPO,
            env=env,
            stdout=mon_log,
            stderr=subprocess.STDOUT,
        )
        wrk = subprocess.Popen(
            [PY, "-m", "segstream", "--log-level", "WARNING", "worker", "--config", str(cfg)],
            cwd=REPO,
            env=env,
            stdout=open(tmp / "worker.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(8)
            t0 = time.monotonic()
            sim = subprocess.run(
                [PY, "-m", "segstream", "simulate", "--config", str(cfg), "--quiet"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            sim_s = time.monotonic() - t0
            print(sim.stdout.strip(), sim.stderr.strip()[-500:], flush=True)
            port = None
            deadline = time.monotonic() + 60
            while port is None and time.monotonic() < deadline:
                for line in (tmp / "monitor.log").read_text().splitlines():
                    if line.startswith("metrics_port="):
                        port = int(line.split("=", 1)[1])
                time.sleep(0.5)
            sent = {
                k: int(v)
                for k, v in (
                    kv.split("=")
                    for kv in sim.stdout.split()
                    if kv.startswith(("sent=", "outcomes="))
                )
            }
            wait_until_done(port, sent["sent"], sent["outcomes"], quiet_s=60)
            alerts = read_all(bootstrap, t.alerts, idle_s=15, timeout_s=600)
            total_s = time.monotonic() - t0
            stats = read_all(bootstrap, t.stats, idle_s=10, timeout_s=600)
            metrics = scrape(port) if port else {}
        finally:
            for p in (wrk, mon):
                p.terminate()
            for p in (wrk, mon):
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        return {
            "simulator": sim.stdout.strip(),
            "replay_s": round(sim_s, 1),
            "until_alerts_idle_s": round(total_s, 1),
            "alerts": alerts,
            "metrics": metrics,
            "stats": stats,
            "settings": s,
        }

    if args.bootstrap:
        res = run(args.bootstrap)
        broker = "external"
    else:
        with EmbeddedBroker() as b:
            res = run(b.bootstrap)
        broker = "embedded-tansu"
    offline = offline_new_segments(res["stats"], res["settings"])
    out = {
        "environment": environment(),
        "broker": broker,
        "store": args.store,
        "replay": {"start": args.start, "end": args.end, "rate": args.rate},
        "data_facts": facts,
        "run": {k: v for k, v in res.items() if k not in ("alerts", "stats", "settings")},
        "summary": (summary := summarise(res["alerts"])),
        "new_segment_check": new_segment_check(
            summary, facts, res["settings"].monitor.new_segment_threshold
        ),
        "offline_new_segment_windows": offline,
        "offline_psi": offline_psi(args.store),
        "alerts": res["alerts"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(dump(compact(out)))
    print(
        orjson.dumps(out["summary"], option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()[
            :6000
        ]
    )
    print(f"written {args.out}; logs in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
