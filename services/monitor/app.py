"""The monitor service: :class:`MonitorCore` over :class:`~.state.StateTables`, run by the
confluent-kafka loop of :mod:`segstream.services.monitor.loop`.

Inputs: the workers' stats records (drift and new-key windows, new-segment alerts), the
predictions and outcomes (co-partitioned, keyed by ``event_id``: the join and the
per-partition performance windows) and the internal ``<app_id>-perf-partials`` topic (final
per-partition performance window states, all on partition 0, merged by its owner:
:meth:`MonitorCore.on_partial`). Alerts go to ``topics.alerts`` keyed by subject. State lives
in memory and in the compacted ``<app_id>-state-changelog`` topic, restored per partition on
assignment (:mod:`.loop`, :mod:`.state`).

Scale-out: several monitor instances of one model form one consumer group (``app_id``) and
split the partitions (range assignment: partition ``p`` of every input topic goes to one
member). Stats records are keyed by the model: drift and new segments are handled by the
owner of their one partition.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector

from segstream.services.monitor.core import MonitorCore
from segstream.services.monitor.loop import MonitorLoop, changelog_topic, partials_topic
from segstream.services.monitor.metrics import MonitorMetrics
from segstream.services.monitor.references import ReferenceCache
from segstream.services.monitor.state import StateTables
from segstream.shared.alerts import Alert
from segstream.shared.settings import Settings

logger = logging.getLogger(__name__)


class MonitorService:
    """The monitor's parts, wired (nothing connects before :meth:`run`).

    Parameters
    ----------
    settings : Settings
    registry : CollectorRegistry
    reference_for : callable, optional
        ``bundle_id -> (DriftReference, Baseline)``; default: a :class:`ReferenceCache` over
        the artifact store.
    """

    def __init__(
        self, settings: Settings, registry: CollectorRegistry, reference_for: Any = None
    ) -> None:
        self.settings = settings
        m = settings.monitor
        t = settings.topics
        schema = settings.event_schema
        self.metrics = MonitorMetrics.create(registry, schema.features)
        #: Alerts of the bundle loading (bundle_rejected, bundle_reload_failed).
        self.reload_alerts: list[Alert] = []
        if reference_for is None:
            from segstream.shared.reloads import ReloadFailures
            from segstream.shared.store import ArtifactStore

            failures = ReloadFailures(
                settings.model,
                alert=self.reload_alerts.append,
                count=lambda reason: self.metrics.bundle_reload_failures.labels(
                    reason=reason
                ).inc(),
            )
            reference_for = ReferenceCache(
                ArtifactStore(settings.store), settings.model, m.bundle_cache_dir, failures=failures
            )
        self.reference_for = reference_for
        self.state = StateTables()
        self.tables = self.state.tables
        self.core = MonitorCore(
            m,
            model=settings.model,
            id_field=schema.id_field,
            time_field=schema.time_field,
            target=schema.target,
            reference_for=reference_for,
            tables=dict(self.tables),
            partitions=t.partitions,
            observer=self.metrics,
            merge_locally=False,
        )
        self.loop = MonitorLoop(
            settings,
            self.core,
            self.state,
            self.metrics,
            take_extra_alerts=self._take_reload_alerts,
        )

    def _take_reload_alerts(self) -> list[Alert]:
        out = list(self.reload_alerts)
        self.reload_alerts.clear()
        return out

    @property
    def events_processed(self) -> int:
        return self.loop.events_processed

    def ready(self) -> tuple[bool, str]:
        """``/readyz``: true once partitions are assigned and their state restored."""
        if self.loop.fatal is not None:
            return False, f"stopping: {self.loop.fatal}"
        if not self.loop.ready:
            return False, "joining the group / restoring state"
        return True, "ok"

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the event-time judging kernel before the
        first record: done lazily, it took a third of the first micro-batches' time in
        ``benchmarks/bench_monitor.py --py-spy`` (numba dispatch, cache load, SciPy/BLAS
        import)."""
        import numpy as np

        from segstream.shared.event_time import EventTimeWatermark

        now_ms = int(time.time() * 1000)
        EventTimeWatermark.from_settings(self.settings.monitor).judge(
            np.array([now_ms, now_ms - 1], np.int64)
        )

    def run(self, stop: threading.Event) -> int:
        """Consume until ``stop`` is set; returns the exit code."""
        return self.loop.run(stop)


def ensure_monitor_topics(settings: Settings) -> None:
    """Create the inputs, alerts, perf-partials and the compacted state changelog topics
    when missing, and check that the inputs are co-partitioned.

    Raises
    ------
    ConfigError
        The input topics have other partition counts than ``topics.partitions``.
    """
    from segstream.shared.errors import ConfigError
    from segstream.shared.kafka import ensure_topics, topic_partitions

    t, m = settings.topics, settings.monitor
    ensure_topics(
        settings.broker,
        [t.stats, t.predictions, t.outcomes, t.alerts, partials_topic(m.app_id)],
        t.partitions,
        t.replication_factor,
    )
    changelog = changelog_topic(m.app_id)
    ensure_topics(
        settings.broker,
        [changelog],
        t.partitions,
        t.replication_factor,
        config={changelog: {"cleanup.policy": "compact"}},
    )
    counts = {
        name: topic_partitions(settings.broker, name)
        for name in (t.stats, t.predictions, t.outcomes, partials_topic(m.app_id), changelog)
    }
    bad = {k: v for k, v in counts.items() if v != t.partitions}
    if bad:
        raise ConfigError(
            f"topics.partitions is {t.partitions} but {bad} have other partition "
            "counts; the monitor's state needs them all equal"
        )


def run_monitor(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    registry: CollectorRegistry | None = None,
    reference_for: Any = None,
) -> int:
    """Run the monitor until ``stop`` is set (default: SIGINT/SIGTERM); returns the exit code.

    Creates missing topics (stats, predictions, outcomes, alerts, perf-partials, the state
    changelog) with ``topics.partitions`` partitions and checks that they are co-partitioned.
    Prints ``metrics_port=<port>`` once /metrics listens.

    Raises
    ------
    ConfigError
        The input topics have different partition counts than ``topics.partitions``.
    BrokerError
        The broker is not reachable.
    """
    from segstream.services.worker.app import tune_gc
    from segstream.shared.health import HealthServer
    from segstream.shared.kafka import check_reachable

    if stop is None:
        from segstream.shared.cli import _stop_event

        stop = _stop_event()
    check_reachable(settings.broker)
    ensure_monitor_topics(settings)
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # the monitor's CPU and memory (process_* metrics)
    service = MonitorService(settings, registry, reference_for)
    service.warm_up()
    # the worker's GC tuning (start-up heap frozen, larger generation 0): a micro-batch
    # allocates tens of thousands of short-lived containers here too
    tune_gc(settings.worker.gc_gen0_threshold)
    m = settings.monitor
    health = HealthServer(registry, m.metrics_host, m.metrics_port, service.ready).start()
    logger.info("monitor /metrics on port %d", health.port)
    print(f"metrics_port={health.port}", flush=True)
    try:
        return service.run(stop)
    finally:
        health.stop()
