"""The monitor service: a faust-streaming app around :class:`~segstream.services.monitor.core.MonitorCore`.

Agents (one per source topic; each takes up to ``monitor.batch_max`` records at once, applies
them one by one and then writes every changed table key once to the changelog partition of
the record that owns it, see :class:`BufferedTable`):

* ``stats``: the workers' stats records → drift and new-key windows (+ new-segment alerts, and
  drift alerts for windows the watermark advance closes);
* ``predictions`` and ``outcomes`` (co-partitioned, keyed by ``event_id``), one agent for both
  topics → the join tables and the per-partition performance windows (each micro-batch joined
  at once, :meth:`MonitorCore.on_predictions` / ``on_outcomes``);
* ``ticks``: an internal topic with one small record per partition per ``tick_s`` from a
  timer, so that window closing, join expiry and the idle close run *inside* an event of the
  right partition (faust tables can only be changed from a stream event).

Alerts go to ``topics.alerts`` keyed by subject. State lives in faust tables (memory store,
changelog topics ``<app_id>-<table>-changelog``) and is recovered on start; see
:mod:`segstream.services.monitor.faust_ext` for the Tansu watermark correction.

Scale-out: several monitor instances of one model form one consumer group and split the
partitions. Each partition's owner sends its final performance window states and its progress
to partition 0 of the internal ``<app_id>-perf-partials`` topic; that partition's owner merges
them and judges a window once every partition has reported past its end
(:meth:`MonitorCore.on_partial`). Stats records are keyed by the model: drift and new segments
are handled by the owner of their one partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, ProcessCollector

from segstream.services.monitor.core import MonitorCore
from segstream.services.monitor.metrics import STATE_TABLES, MonitorMetrics
from segstream.services.monitor.references import ReferenceCache
from segstream.shared.alerts import Alert, alert_key, encode_alert
from segstream.shared.kafka import aiokafka_ssl_context, client_config
from segstream.shared.settings import BrokerSettings, Settings

logger = logging.getLogger(__name__)

TABLES = STATE_TABLES


class BufferedTable(MutableMapping):  # type: ignore[type-arg]
    """A faust table seen as a plain mapping whose changes reach the changelog in batches.

    Reads and writes go to the table's local store at once; each changed key is remembered
    with the partition that owns it (:attr:`partition`, set before each record) and
    :meth:`flush` sends its final value (or a tombstone) once to that changelog partition.
    A key that was absent when the batch first changed it and is absent again at the flush
    (a pending join entry created and joined within one batch) sends nothing: the changelog
    holds no value for it (never written, or last written as a tombstone), which is already
    the key's state. faust flushes its producer before committing the source offsets, so a
    batch's changelog records are written before the batch counts as processed
    (at-least-once).
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.partition: int | None = None
        self._dirty: dict[Any, int | None] = {}
        self._new: set[Any] = set()  # dirty keys that were absent before this batch
        #: Keys created and deleted within a batch that :meth:`flush` did not send (total).
        self.skipped = 0

    @property
    def data(self) -> Any:  # what MonitorCore scans
        return self.table.data

    def __getitem__(self, key: Any) -> Any:
        return self.table.data[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self.table.data.get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        data = self.table.data
        if key not in self._dirty and key not in data:
            self._new.add(key)
        data[key] = value
        self._dirty[key] = self.partition

    def __delitem__(self, key: Any) -> None:
        del self.table.data[key]
        self._dirty[key] = self.partition

    def __iter__(self) -> Any:
        return iter(self.table.data)

    def __len__(self) -> int:
        return len(self.table.data)

    def flush(self) -> int:
        """Send every changed key once; returns how many changelog records were sent."""
        data, send, new = self.table.data, self.table.send_changelog, self._new
        n = 0
        for key, partition in self._dirty.items():
            if key in data:
                send(partition, key, data[key])
            elif key in new:
                self.skipped += 1  # created and deleted within the batch: nothing to undo
                continue
            else:
                send(partition, key, None, value_serializer="raw")
            n += 1
        self._dirty.clear()
        new.clear()
        return n


def split_join_batch(
    events: Any, outcomes_topic: str
) -> list[tuple[bool, int, list[tuple[Any, int, int]]]]:
    """Split a micro-batch of the join agent (faust events of the predictions and outcomes
    topics) into ``(is_outcome, partition, [(value, partition, offset), ...])`` groups:
    predictions before outcomes, partitions ascending, records in arrival order.

    ``events`` are objects with ``value`` and ``message.topic``, ``.partition``, ``.offset``.
    """
    groups: dict[tuple[bool, int], list[tuple[Any, int, int]]] = {}
    for event in events:
        msg = event.message
        key = (msg.topic == outcomes_topic, msg.partition)
        groups.setdefault(key, []).append((event.value, msg.partition, msg.offset))
    return [(o, p, groups[(o, p)]) for o, p in sorted(groups)]


class MonitorService:
    """Build the faust app of the monitor (nothing connects before :meth:`run`).

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
        import faust

        self.settings = settings
        m = settings.monitor
        t = settings.topics
        schema = settings.event_schema
        self.partitions = t.partitions
        self.metrics = MonitorMetrics.create(registry, schema.features)
        #: Alerts of the bundle loading (bundle_rejected, bundle_reload_failed), sent by the
        #: stats and ticks agents.
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
        brokers = [f"kafka://{h.strip()}" for h in settings.broker.bootstrap.split(",")]
        Path(m.data_dir).mkdir(parents=True, exist_ok=True)  # faust makes only the last level
        extra: dict[str, Any] = {}
        if m.recovery_probe:
            extra["TableManager"] = "segstream.services.monitor.faust_ext:ProbingTableManager"
        from segstream.services.monitor.faust_ext import ReadCommittedApp

        # read_committed: predictions and stats of aborted worker transactions are not counted
        app = ReadCommittedApp(
            m.app_id,
            broker=brokers,
            broker_credentials=faust_credentials(settings.broker),
            store="memory://",
            topic_partitions=t.partitions,
            datadir=str(Path(m.data_dir) / f"{m.app_id}-data"),  # not faust's ./<id>-data
            topic_replication_factor=t.replication_factor,
            web_enabled=False,
            broker_session_timeout=m.session_timeout_s,
            broker_heartbeat_interval=m.session_timeout_s / 10,
            broker_rebalance_timeout=m.session_timeout_s,
            consumer_auto_offset_reset="earliest",
            autodiscover=False,
            table_standby_replicas=0,
            producer_linger=0.005,
            producer_max_batch_size=512 * 1024,
            **extra,
        )
        app.isolation_level = m.isolation_level
        # The recovery probe (services.monitor.faust_ext) is a confluent-kafka client: it
        # needs the same security settings as every other client.
        app.probe_client_config = client_config(settings.broker)
        self.app = app
        raw = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        self.stats_topic = app.topic(t.stats, **raw)
        self.join_topic = app.topic(t.predictions, t.outcomes, **raw)
        self.alerts_topic = app.topic(t.alerts, **raw)
        self.ticks_topic = app.topic(
            f"{m.app_id}-ticks", partitions=t.partitions, internal=True, **raw
        )
        # Final per-partition performance window states and progress, all sent to partition
        # 0 (co-partitioned with the tables): its owner merges them (MonitorCore.on_partial).
        self.partials_topic = app.topic(
            f"{m.app_id}-perf-partials", partitions=t.partitions, internal=True, **raw
        )
        schema_json = faust.Schema(key_serializer="json", value_serializer="json")
        self.faust_tables = {
            name: app.Table(name, default=None, partitions=t.partitions, schema=schema_json)
            for name in TABLES
        }
        self.tables = {name: BufferedTable(tbl) for name, tbl in self.faust_tables.items()}
        self.core = MonitorCore(
            m,
            model=settings.model,
            id_field=schema.id_field,
            time_field=schema.time_field,
            target=schema.target,
            reference_for=reference_for,
            tables=self.tables,
            partitions=t.partitions,
            observer=self.metrics,
            merge_locally=False,
        )
        self.started = False
        self.events_processed = 0
        # Table changes wait in faust's producer buffer; its default bound (100 messages) makes
        # every agent stall on each flush. A larger bound lets aiokafka batch them.
        app.producer.buffer.max_messages = 5000
        self._register()

    # ------------------------------------------------------------------ agents
    async def _send(self, alerts: list[Alert]) -> None:
        for a in alerts:
            logger.info(
                "alert %s %s %s=%s window %s",
                a.type,
                a.severity,
                a.statistic,
                a.value,
                a.window_start,
            )
            await self.alerts_topic.send(key=alert_key(a), value=encode_alert(a))

    def _take_reload_alerts(self) -> list[Alert]:
        out = list(self.reload_alerts)
        self.reload_alerts.clear()
        return out

    def _register(self) -> None:
        app, core = self.app, self.core

        batch, within = self.settings.monitor.batch_max, 0.2

        def at(partition: int) -> None:
            for tbl in self.tables.values():
                tbl.partition = partition

        m = self.metrics

        def flush() -> None:
            for name, tbl in self.tables.items():
                skipped = tbl.skipped
                sent = tbl.flush()
                if sent:
                    m.changelog_records.labels(table=name).inc(sent)
                if tbl.skipped > skipped:
                    m.changelog_skipped.labels(table=name).inc(tbl.skipped - skipped)

        async def stats_agent(stream: Any) -> None:
            async for events in stream.take_events(batch, within):
                alerts: list[Alert] = []
                for event in events:
                    msg = event.message
                    at(msg.partition)
                    alerts += core.on_stats(event.value, msg.partition, msg.offset, time.time())
                flush()
                self.events_processed += len(events)
                await self._send(alerts + self._take_reload_alerts())

        outcomes_topic = self.settings.topics.outcomes

        async def join_agent(stream: Any) -> None:
            """Predictions and outcomes in one agent: a micro-batch holds both, so a
            prediction and its outcome that arrive in the same batch are joined without
            their pending entry ever reaching the changelog (:class:`BufferedTable`).
            Predictions of the batch first, then outcomes, each per partition."""
            async for events in stream.take_events(batch, within):
                now = time.time()
                for is_outcome, partition, recs in split_join_batch(events, outcomes_topic):
                    at(partition)
                    handle = core.on_outcomes if is_outcome else core.on_predictions
                    handle(recs, now)
                flush()
                self.events_processed += len(events)

        async def ticks_agent(stream: Any) -> None:
            async for events in stream.take_events(batch, within):
                alerts: list[Alert] = []
                for event in events:
                    at(event.message.partition)
                    alerts += core.on_tick(event.message.partition, time.time())
                # the partials go out before the deletions of their window states
                for rec in core.take_partials():
                    await self.partials_topic.send(
                        key=b"perf", value=orjson.dumps(rec), partition=0
                    )
                flush()
                await self._send(alerts + self._take_reload_alerts())

        async def partials_agent(stream: Any) -> None:
            async for events in stream.take_events(batch, within):
                alerts: list[Alert] = []
                for event in events:
                    at(event.message.partition)
                    try:
                        rec = orjson.loads(event.value)
                    except orjson.JSONDecodeError:
                        logger.warning("undecodable perf-partials record skipped")
                        continue
                    alerts += core.on_partial(rec, time.time())
                flush()
                await self._send(alerts)

        async def tick_timer() -> None:
            if not self.started:
                return
            for p in range(self.partitions):
                await self.ticks_topic.send(value=b"t", partition=p)
            self._gauges()

        app.agent(self.stats_topic, name="monitor-stats")(stats_agent)
        app.agent(self.join_topic, name="monitor-join")(join_agent)
        app.agent(self.ticks_topic, name="monitor-ticks")(ticks_agent)
        app.agent(self.partials_topic, name="monitor-perf-partials")(partials_agent)
        app.timer(interval=self.settings.monitor.tick_s, name="monitor-tick-timer")(tick_timer)

        @app.on_rebalance_complete.connect
        async def _ready(app_: Any, **kw: Any) -> None:
            self.started = True

    def _gauges(self) -> None:
        m, core = self.metrics, self.core
        m.pending.labels(kind="predictions").set(len(self.tables["pending_p"]))
        m.pending.labels(kind="outcomes").set(len(self.tables["pending_o"]))
        now = time.time()
        for name, v in (
            ("drift", core.watermark.value(now)),
            ("predictions", core.pred_clocks.value(now)),
            ("outcomes", core.out_clocks.value(now)),
        ):
            if v is not None:
                m.watermark.labels(clock=name).set(v / 1000.0)

    def ready(self) -> tuple[bool, str]:
        """``/readyz``: true once tables are recovered and partitions assigned."""
        if not self.started:
            return False, "recovering tables / joining the group"
        return True, "ok"


def faust_credentials(broker: BrokerSettings) -> Any:
    """faust's ``broker_credentials`` for ``broker.security``; None for PLAINTEXT.

    SASL protocols give :class:`faust.SASLCredentials` (with a TLS context for SASL_SSL),
    SSL gives :class:`faust.SSLCredentials`; the TLS context comes from
    :func:`segstream.shared.kafka.aiokafka_ssl_context`.
    """
    import faust

    sec = broker.security
    context = aiokafka_ssl_context(sec)
    if sec.sasl:
        return faust.SASLCredentials(
            username=sec.username,
            password=sec.password.get_secret_value() if sec.password is not None else None,
            ssl_context=context,
            mechanism=sec.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def run_monitor(settings: Settings, *, log_level: str = "INFO") -> int:
    """Run the monitor until SIGINT/SIGTERM; returns the exit code.

    Creates missing topics (stats, predictions, outcomes, alerts) with
    ``topics.partitions`` partitions and checks that the three inputs are co-partitioned.

    Raises
    ------
    ConfigError
        The input topics have different partition counts than ``topics.partitions``.
    """
    import faust

    from segstream.shared.errors import ConfigError
    from segstream.shared.health import HealthServer
    from segstream.shared.kafka import check_reachable, ensure_topics, topic_partitions

    t = settings.topics
    check_reachable(settings.broker)
    ensure_topics(
        settings.broker,
        [t.stats, t.predictions, t.outcomes, t.alerts],
        t.partitions,
        t.replication_factor,
    )
    counts = {
        name: topic_partitions(settings.broker, name)
        for name in (t.stats, t.predictions, t.outcomes)
    }
    bad = {k: v for k, v in counts.items() if v != t.partitions}
    if bad:
        raise ConfigError(
            f"topics.partitions is {t.partitions} but {bad} have other partition "
            "counts; the monitor's tables need them all equal"
        )
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # the monitor's CPU and memory (process_* metrics)
    service = MonitorService(settings, registry)
    m = settings.monitor
    health = HealthServer(registry, m.metrics_host, m.metrics_port, service.ready).start()
    logger.info("monitor /metrics on port %d", health.port)
    print(f"metrics_port={health.port}", flush=True)
    try:
        worker = faust.Worker(service.app, loglevel=log_level, override_logging=False, quiet=True)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
    finally:
        health.stop()
        asyncio.set_event_loop(asyncio.new_event_loop())
    return 0
