"""What a confluent-kafka consumer loop could give the monitor: the record path of
``segstream monitor`` without faust, for ``bench_monitor.py --floor ck-*``.

One process, one ``confluent_kafka.Consumer`` in its own consumer group on the predictions
and outcomes topics (``consume(num_messages=monitor.batch_max, timeout=0.2)``, like the
worker's loop), offsets committed after each micro-batch. Modes:

``ck-count``
    count the records only (the consumer's floor);
``ck-core``
    feed each micro-batch, per partition, to :class:`MonitorCore` over plain dicts that
    remember their changed keys (the same calls as the faust service's agents);
``ck-changelog``
    as ``ck-core``, and produce every changed key once per batch to a changelog topic
    (``<app_id>-ckfloor-changelog``, the record's partition; JSON key and value, a
    tombstone for a deleted key) with a ``confluent_kafka.Producer``, flushed before the
    offsets are committed: the write cost of the monitor's state semantics, without its
    recovery, ticks and rebalance handling (not built; see docs/guide/monitor.md).

A ``segstream_monitor_records_total{source, result="ok"}`` counter is served on
``/metrics`` so the benchmark times it exactly as it times the monitor.

Usage::

    python benchmarks/confluent_floor_app.py CONFIG.yaml {ck-count,ck-core,ck-changelog}
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class FloorClock:
    """Wall time of the first and the latest micro-batch and the size of the first, on
    ``/metrics`` (``segstream_monitor_floor_*``): the benchmark's rate is the records after
    the first batch over the time between them (a fast consumer finishes between two
    polls of its counters)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge

        self.first = Gauge("segstream_monitor_floor_first_s", "first batch", registry=registry)
        self.last = Gauge("segstream_monitor_floor_last_s", "latest batch", registry=registry)
        self.first_n = Gauge("segstream_monitor_floor_first_n", "first batch", registry=registry)
        self._started = False

    def batch(self, n: int) -> None:
        import time

        now = time.time()
        if not self._started:
            self._started = True
            self.first.set(now)
            self.first_n.set(n)
        self.last.set(now)


def main(argv: list[str]) -> int:
    import orjson
    import yaml
    from confluent_kafka import Consumer, Producer
    from prometheus_client import CollectorRegistry, Counter

    from benchmarks.profile_monitor_core import DirtyDict
    from segstream.services.monitor.core import MonitorCore
    from segstream.services.monitor.references import ReferenceCache
    from segstream.shared.health import HealthServer
    from segstream.shared.kafka import client_config, ensure_topics
    from segstream.shared.settings import Settings
    from segstream.shared.store import ArtifactStore

    cfg, mode = argv[0], argv[1]
    settings = Settings.model_validate(yaml.safe_load(Path(cfg).read_text()))
    m, t, schema = settings.monitor, settings.topics, settings.event_schema
    registry = CollectorRegistry()
    records = Counter(
        "segstream_monitor_records", "records", ["source", "result"], registry=registry
    )
    clock = FloorClock(registry)
    names = ("drift", "newkeys", "pending_p", "pending_o", "perf", "meta", "perfmerge")
    tables = {k: DirtyDict() for k in names}
    core = MonitorCore(
        m,
        model=settings.model,
        id_field=schema.id_field,
        time_field=schema.time_field,
        target=schema.target,
        reference_for=ReferenceCache(
            ArtifactStore(settings.store), settings.model, m.bundle_cache_dir
        ),
        tables=tables,  # type: ignore[arg-type]
        partitions=t.partitions,
    )
    changelog = f"{m.app_id}-ckfloor-changelog"
    producer = None
    if mode == "ck-changelog":
        ensure_topics(settings.broker, [changelog], t.partitions)
        producer = Producer(client_config(settings.broker, linger_ms=5))
    consumer = Consumer(
        client_config(
            settings.broker,
            group_id=f"{m.app_id}-ckfloor-{mode}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=m.isolation_level,
            session_timeout_ms=int(m.session_timeout_s * 1000),
            heartbeat_interval_ms=int(m.session_timeout_s * 100),
        )
    )
    consumer.subscribe([t.predictions, t.outcomes])
    source_of = {t.predictions: "predictions", t.outcomes: "outcomes"}
    handle = {"predictions": core.on_predictions, "outcomes": core.on_outcomes}
    health = HealthServer(registry, "127.0.0.1", 0, lambda: (True, "ok")).start()
    print(f"metrics_port={health.port}", flush=True)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        while not stop:
            msgs = consumer.consume(num_messages=m.batch_max, timeout=0.2)
            if not msgs:
                continue
            groups: dict[tuple[str, int], list[tuple[Any, int, int]]] = {}
            for msg in msgs:
                if msg.error() is not None:
                    continue
                key = (source_of[msg.topic()], msg.partition())
                groups.setdefault(key, []).append((msg.value(), msg.partition(), msg.offset()))
            now = time.time()
            for (source, partition), recs in groups.items():
                if mode != "ck-count":
                    for tbl in tables.values():
                        tbl.partition = partition
                    handle[source](recs, now)
                records.labels(source=source, result="ok").inc(len(recs))
            if producer is not None:
                for name, tbl in tables.items():
                    for k, p in tbl._dirty.items():
                        v = tbl.data.get(k)
                        producer.produce(
                            changelog,
                            key=orjson.dumps([name, k]),
                            value=None if v is None else orjson.dumps(v),
                            partition=p or 0,
                        )
                    producer.poll(0)
                producer.flush()
            for tbl in tables.values():
                tbl.flush()
            consumer.commit(asynchronous=True)
            clock.batch(len(msgs))
    finally:
        consumer.close()
        health.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
