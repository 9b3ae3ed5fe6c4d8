"""The floor of faust's record path: a faust app that only counts records (or also writes
one changelog record per record), for ``bench_monitor.py --floor``.

Same consumer settings as ``segstream monitor`` (memory store, ``take_events`` micro-batches
of ``monitor.batch_max`` within 0.2 s, the monitor's session timeout, ``read_uncommitted`` on
the embedded broker) on the predictions and outcomes topics, with a
``segstream_monitor_records_total{source, result="ok"}`` counter on ``/metrics`` so the
benchmark times it exactly as it times the monitor.

Usage::

    python benchmarks/faust_floor_app.py CONFIG.yaml {count,changelog,count-tuned}

``changelog-lz4`` is ``changelog`` with the producer's lz4 compression. ``count-tuned``
counts with larger consumer buffers (``stream_buffer_maxsize`` 32768,
``consumer_max_fetch_size`` 8 MiB per partition): whether faust's defaults are the bound.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


TUNED = {"stream_buffer_maxsize": 32768, "consumer_max_fetch_size": 8 * 1024 * 1024}


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
    import faust
    import yaml
    from prometheus_client import CollectorRegistry, Counter

    from segstream.shared.health import HealthServer
    from segstream.shared.settings import Settings

    cfg, mode = argv[0], argv[1]
    settings = Settings.model_validate(yaml.safe_load(Path(cfg).read_text()))
    m, t = settings.monitor, settings.topics
    registry = CollectorRegistry()
    records = Counter(
        "segstream_monitor_records", "records", ["source", "result"], registry=registry
    )
    clock = FloorClock(registry)
    app = faust.App(
        f"{m.app_id}-floor-{mode}",
        broker=[f"kafka://{h}" for h in settings.broker.bootstrap.split(",")],
        store="memory://",
        topic_partitions=t.partitions,
        datadir=tempfile.mkdtemp(prefix="faust-floor-"),  # faust's (empty) data dir
        web_enabled=False,
        broker_session_timeout=m.session_timeout_s,
        broker_heartbeat_interval=m.session_timeout_s / 10,
        broker_rebalance_timeout=m.session_timeout_s,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        table_standby_replicas=0,
        producer_linger=0.005,
        producer_max_batch_size=512 * 1024,
        **(TUNED if mode.endswith("-tuned") else {}),
        **({"producer_compression_type": "lz4"} if mode.endswith("-lz4") else {}),
    )
    app.producer.buffer.max_messages = 5000
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    table = app.Table(
        "floor",
        default=None,
        partitions=t.partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
    )

    def agent_for(source: str) -> Any:
        async def agent(stream: Any) -> None:
            async for events in stream.take_events(m.batch_max, 0.2):
                if mode.startswith("changelog"):  # one changelog record per input record
                    for ev in events:
                        msg = ev.message
                        table.send_changelog(msg.partition, f"{source}|{msg.offset}", [1])
                records.labels(source=source, result="ok").inc(len(events))
                clock.batch(len(events))

        return agent

    app.agent(app.topic(t.predictions, **raw), name="floor-predictions")(agent_for("predictions"))
    app.agent(app.topic(t.outcomes, **raw), name="floor-outcomes")(agent_for("outcomes"))
    health = HealthServer(registry, "127.0.0.1", 0, lambda: (True, "ok")).start()
    print(f"metrics_port={health.port}", flush=True)
    worker = faust.Worker(app, loglevel="WARNING", override_logging=False, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
