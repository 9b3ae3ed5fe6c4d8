"""``segstream worker``: wire the store, the bundle watcher, Kafka clients, metrics and the loop."""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading

from prometheus_client import CollectorRegistry, ProcessCollector

from segstream.services.worker.kafka_io import (
    AlertProducer,
    EventConsumer,
    ModelUpdatesFeed,
    OutputProducer,
)
from segstream.services.worker.loop import EXIT_OK, StreamWorker
from segstream.services.worker.metrics import WorkerMetrics
from segstream.services.worker.reload import BundleSource, BundleWatcher, Loader, load_initial
from segstream.shared.alerts import scoring_failed_alert
from segstream.shared.errors import SegstreamError
from segstream.shared.health import HealthServer
from segstream.shared.kafka import check_reachable, ensure_topics
from segstream.shared.logs import set_log_context
from segstream.shared.reloads import ReloadFailures
from segstream.shared.settings import Settings
from segstream.shared.store import ArtifactStore

logger = logging.getLogger(__name__)


def worker_identity(settings: Settings) -> str:
    """``worker.instance_id`` or ``<hostname>-<pid>``."""
    return settings.worker.instance_id or f"{socket.gethostname()}-{os.getpid()}"


def transactional_id(settings: Settings, worker_id: str) -> str:
    """``<group id>-<worker id>``: stable across restarts when ``instance_id`` is set, so a
    restarted instance fences its zombie."""
    return f"{settings.worker.group_id}-{worker_id}"


def tune_gc(gen0_threshold: int) -> None:
    """Move every object that exists after start-up (modules, the bundle, numba and XGBoost
    state) to the GC's permanent generation and raise the generation-0 threshold.

    A micro-batch allocates tens of thousands of short-lived containers (decoded events,
    Kafka messages, output records); with Python's default threshold of 700 each batch
    triggers dozens of collections, and every older-generation collection walks the whole
    start-up heap. Reference cycles are still collected, only less often, so memory stays
    bounded. ``gen0_threshold=0`` leaves the interpreter's settings alone.
    """
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, g1, g2)


def run_worker(
    settings: Settings,
    *,
    stop: threading.Event,
    loader: Loader | None = None,
    registry: CollectorRegistry | None = None,
    serve_http: bool = True,
) -> int:
    """Run one worker until ``stop`` is set; return the process exit code.

    Parameters
    ----------
    settings : Settings
    stop : threading.Event
        Set by SIGTERM/SIGINT: the worker finishes its batch, commits, closes and returns 0.
    loader : callable, optional
        ``loader(bundle_dir) -> Scorer``; default the real ``shared.scoring.load_bundle``.
    registry : CollectorRegistry, optional
        Where metrics go (a fresh one by default).
    serve_http : bool
        Serve ``/metrics``, ``/healthz``, ``/readyz`` on ``worker.metrics_port``.
    """
    w = settings.worker
    worker_id = worker_identity(settings)
    set_log_context(worker=worker_id, topic=settings.topics.events)
    if registry is None:
        # A process of its own: export its CPU and memory (process_* metrics) too.
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
    metrics = WorkerMetrics.create(registry)
    state: dict[str, object] = {"loop": None}

    def ready() -> tuple[bool, str]:
        loop: StreamWorker | None = state["loop"]  # type: ignore[assignment]
        if loop is None:
            return False, "no bundle loaded"
        if loop.broken is not None:
            return False, loop.broken
        if loop.fatal is not None:
            return False, f"stopping: {loop.fatal}"
        if not loop.ready.is_set():
            return False, "not running"
        if not loop.assigned:
            return False, "no partitions assigned"
        return True, "ready"

    http = (
        HealthServer(registry, w.metrics_host, w.metrics_port, ready).start()
        if serve_http
        else None
    )
    check_reachable(settings.broker)
    t = settings.topics
    ensure_topics(
        settings.broker,
        [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates],
        t.partitions,
        t.replication_factor,
    )
    alerts = AlertProducer(settings).start() if w.alerts_enabled else None
    failures = ReloadFailures(  # the watcher sets its current bundle (None at start-up)
        settings.model,
        count=lambda reason: metrics.bundle_reload_failures.labels(reason=reason).inc(),
        alert=(lambda rec: alerts.send(settings.model, rec)) if alerts is not None else None,
    )

    def count_load(result: str) -> None:
        metrics.bundle_reloads.labels(result=result).inc()

    try:
        store = ArtifactStore(settings.store)
        source = BundleSource(
            store, settings.model, w.bundle_cache_dir, settings.event_schema, loader=loader
        )
        scorer = load_initial(source, stop, failures, on_loaded=count_load)
    except SegstreamError:  # a malformed LATEST or key configuration: one line, exit
        if http is not None:
            http.stop()
        raise
    if scorer is None:
        if http is not None:
            http.stop()
        return EXIT_OK
    set_log_context(bundle_id=scorer.bundle_id[:12])

    watcher = BundleWatcher(
        source,
        scorer.bundle_id,
        poll_s=w.reload_poll_s,
        feed=ModelUpdatesFeed(settings),
        failures=failures,
        on_loaded=count_load,
    )

    # The loop object exists before the consumer so that rebalance callbacks can reach it.
    holder: dict[str, StreamWorker] = {}
    consumer = EventConsumer(
        settings,
        on_assign=lambda c, ps: holder["loop"].on_assign(c, ps),  # noqa: PLW0108 - late binding: the loop exists only after the clients
        on_revoke=lambda c, ps: holder["loop"].on_revoke(c, ps),  # noqa: PLW0108
        on_lost=lambda c, ps: holder["loop"].on_lost(c, ps),  # noqa: PLW0108
        stats_cb=lambda s: metrics.observe_librdkafka_stats(s, t.events),
    )
    producer = OutputProducer(
        settings,
        transactional_id=transactional_id(settings, worker_id)
        if w.guarantee == "exactly_once"
        else None,
        on_delivery=lambda err, msg: holder["loop"].on_delivery(err, msg),  # noqa: PLW0108
    )
    producer.start()

    def on_broken(details: dict[str, object]) -> None:
        if alerts is not None:
            alerts.send(settings.model, scoring_failed_alert(**details))  # type: ignore[arg-type]

    loop = StreamWorker(
        settings,
        consumer,
        producer,
        scorer,
        metrics,
        worker_id,
        take_new_scorer=watcher.take_pending,
        on_broken=on_broken,
    )
    holder["loop"] = loop
    state["loop"] = loop
    consumer.start()
    watcher.start()
    tune_gc(w.gc_gen0_threshold)
    # The loop and the score pool thread hand the GIL back and forth several times a batch;
    # with the default 5 ms interval each hand-over can wait that long.
    sys.setswitchinterval(w.gil_switch_interval_ms / 1000.0)
    logger.info("worker %s started (%s, group %s)", worker_id, w.guarantee, w.group_id)
    code = EXIT_OK
    try:
        code = loop.run(stop)
    finally:
        watcher.stop()
        consumer.close()
        remaining = producer.client.flush(10.0)
        if remaining:
            logger.error("%d output records not delivered at shutdown", remaining)
        if alerts is not None and alerts.client is not None:
            alerts.client.flush(5.0)
        watcher.join(5.0)
        if http is not None:
            http.stop()
    logger.info("worker %s exited with code %d", worker_id, code)
    return code
