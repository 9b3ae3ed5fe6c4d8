"""The monitor's runtime: a confluent-kafka consumer loop around :class:`MonitorCore`.

One ``confluent_kafka.Consumer`` (consumer group ``monitor.app_id``, range assignment so
that partition ``p`` of every input topic goes to the same member) reads the stats,
predictions, outcomes and ``<app_id>-perf-partials`` topics in micro-batches
(``consume(monitor.batch_max, timeout)``); one idempotent ``Producer`` writes alerts, the
perf partials and the state changelog. Per micro-batch:

1. **apply**: stats records one by one (:meth:`MonitorCore.on_stats`), predictions then
   outcomes per partition as one join batch each (:meth:`MonitorCore.on_predictions` /
   ``on_outcomes``), perf partials (:meth:`MonitorCore.on_partial`), each with the tables'
   writes owned by the record's partition (:class:`~.state.StateTables`);
2. **alerts and partials** are produced and flushed (waited for) first,
3. then the **changelog** records of every changed table entry (``<app_id>-state-changelog``,
   one record per entry and batch, see :mod:`.state`), flushed,
4. then the batch's **offsets are committed**.

So a crash at any point replays the uncommitted records against the state of the last flush:
at-least-once. A replayed record can only re-raise an alert it raised before, with the same
deterministic ``alert_id`` (:func:`segstream.shared.alerts.alert_id`; consumers deduplicate
on it), and the core skips records whose offsets its entries have applied already
(``applied``). Every ``monitor.tick_s`` the loop runs :meth:`MonitorCore.on_tick` for each
assigned partition (window closing on the watermark, join expiry, the partition's final
performance windows to the merge), with the same two flushes.

**Rebalances** (eager, inside ``consume()``): on revoke the loop flushes and commits
synchronously, then forgets the revoked partitions' entries and clocks; on assignment it
restores the assigned partitions' entries from their changelog partitions before the first
record is fetched (:func:`read_changelog`: read to the end-of-partition event, whose
position comes from a *fetch* response, right on Tansu where the listed high watermark is
too low). Nothing is compacted on Tansu, so a restore reads the whole changelog there; on
Apache Kafka compaction keeps one record per live entry.

A failed delivery (flush timeout or delivery error) stops the loop with an error before
anything is committed: the process exits non-zero and its replacement resumes from the last
commit with the state of the last complete flush.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from segstream.services.monitor.core import MonitorCore
from segstream.services.monitor.metrics import MonitorMetrics
from segstream.services.monitor.state import StateTables
from segstream.shared.alerts import Alert, alert_key, encode_alert
from segstream.shared.errors import BrokerError
from segstream.shared.kafka import client_config
from segstream.shared.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds a flush of the producer may take before the loop gives up (not committed).
FLUSH_TIMEOUT_S = 30.0


def changelog_topic(app_id: str) -> str:
    """The state changelog topic of a monitor consumer group."""
    return f"{app_id}-state-changelog"


def partials_topic(app_id: str) -> str:
    """The internal topic of final per-partition performance window states (partition 0)."""
    return f"{app_id}-perf-partials"


def consumer_config(settings: Settings) -> dict[str, Any]:
    """librdkafka config of the monitor's input consumer (group ``monitor.app_id``)."""
    m = settings.monitor
    conf: dict[str, Any] = {
        "group.id": m.app_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": m.isolation_level,
        # co-partitioning: partition p of every input topic goes to one member
        "partition.assignment.strategy": "range",
        "session.timeout.ms": int(m.session_timeout_s * 1000),
        "heartbeat.interval.ms": max(100, int(m.session_timeout_s * 100)),
        "queued.max.messages.kbytes": 32_768,
    }
    conf.update(client_config(settings.broker))  # operator's client settings win
    return conf


def producer_config(settings: Settings) -> dict[str, Any]:
    """librdkafka config of the producer of alerts, perf partials and the changelog."""
    conf: dict[str, Any] = {
        "linger.ms": 5,
        "acks": "all",
        "enable.idempotence": True,
        "batch.num.messages": 10_000,
        # the changelog is JSON with repeated keys: lz4 cuts the bytes the broker takes
        "compression.type": "lz4",
    }
    conf.update(client_config(settings.broker))
    return conf


def read_changelog(
    conf: dict[str, Any],
    topic: str,
    partitions: list[int],
    apply: Callable[[int, bytes | None, bytes | None], bool],
    timeout_s: float,
) -> tuple[int, int]:
    """Read ``partitions`` of ``topic`` from the beginning to their end and hand each record
    to ``apply(partition, key, value)``.

    The end is librdkafka's end-of-partition event (``enable.partition.eof``), raised when a
    fetch reaches the high watermark carried by the fetch response (Tansu lists a watermark
    that is too low; a fetched one is right, docs/design.md).

    Returns
    -------
    (int, int)
        Records applied, records ``apply`` refused (malformed).

    Raises
    ------
    BrokerError
        Not every partition reached its end within ``timeout_s``.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    if not partitions:
        return 0, 0
    c = Consumer(
        {
            **conf,
            "group.id": f"{conf.get('group.id', 'segstream-monitor')}-restore-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_uncommitted",
        }
    )
    ok = bad = 0
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"state restore of {topic} partitions {sorted(pending)} did not reach the "
                    f"end within {timeout_s:g} s"
                )
            for msg in c.consume(10_000, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    else:
                        logger.warning("changelog %s: %s", topic, err)
                    continue
                if apply(msg.partition(), msg.key(), msg.value()):
                    ok += 1
                else:
                    bad += 1
    finally:
        c.close()
    return ok, bad


class Batch:
    """A micro-batch split by source (:func:`split_batch`)."""

    __slots__ = ("join", "offsets", "partials", "stats")

    def __init__(self) -> None:
        #: Stats records ``(value, partition, offset)`` in arrival order.
        self.stats: list[tuple[Any, int, int]] = []
        #: ``(is_outcome, partition, [(value, partition, offset), ...])``: predictions
        #: before outcomes, partitions ascending, records in arrival order.
        self.join: list[tuple[bool, int, list[tuple[Any, int, int]]]] = []
        #: Perf-partials records ``(value, partition)``.
        self.partials: list[tuple[Any, int]] = []
        #: Largest offset per ``(topic, partition)``.
        self.offsets: dict[tuple[str, int], int] = {}


def split_batch(msgs: list[Any], source_of: dict[str, str]) -> Batch:
    """Split consumed messages by their topic's source (``stats``, ``predictions``,
    ``outcomes``, ``partials``); messages with an error are logged and skipped."""
    out = Batch()
    groups: dict[tuple[bool, int], list[tuple[Any, int, int]]] = {}
    for msg in msgs:
        if msg.error() is not None:
            logger.warning("consume: %s", msg.error())
            continue
        topic, p, off = msg.topic(), msg.partition(), msg.offset()
        out.offsets[(topic, p)] = off
        source = source_of.get(topic)
        if source == "stats":
            out.stats.append((msg.value(), p, off))
        elif source == "partials":
            out.partials.append((msg.value(), p))
        elif source is not None:
            groups.setdefault((source == "outcomes", p), []).append((msg.value(), p, off))
    out.join = [(o, p, groups[(o, p)]) for o, p in sorted(groups)]
    return out


class MonitorLoop:
    """Consume, apply, flush, commit (see the module docstring). Clients are created in
    :meth:`run`.

    Parameters
    ----------
    settings : Settings
    core : MonitorCore
        Built over ``state.tables`` with ``merge_locally=False``.
    state : StateTables
    metrics : MonitorMetrics
    take_extra_alerts : callable, optional
        Alerts raised outside the core (bundle loading: ``bundle_rejected``), sent with the
        next batch's.
    restore_timeout_s : float
        Deadline of a state restore.
    """

    def __init__(
        self,
        settings: Settings,
        core: MonitorCore,
        state: StateTables,
        metrics: MonitorMetrics,
        *,
        take_extra_alerts: Callable[[], list[Alert]] | None = None,
        restore_timeout_s: float = 300.0,
    ) -> None:
        t, m = settings.topics, settings.monitor
        self.settings = settings
        self.core = core
        self.state = state
        self.metrics = metrics
        self.take_extra_alerts = take_extra_alerts or (lambda: [])
        self.restore_timeout_s = restore_timeout_s
        self.batch_max = m.batch_max
        self.tick_s = m.tick_s
        self.changelog = changelog_topic(m.app_id)
        self.partials = partials_topic(m.app_id)
        self.alerts_topic = t.alerts
        self.source_of = {
            t.stats: "stats",
            t.predictions: "predictions",
            t.outcomes: "outcomes",
            self.partials: "partials",
        }
        self.input_topics = (t.stats, t.predictions, t.outcomes)
        self.stats_topic = t.stats
        self.consumer_conf = consumer_config(settings)
        self.producer_conf = producer_config(settings)
        #: Input partitions assigned (and restored) now.
        self.assigned: list[int] = []
        self.ready = False
        self.events_processed = 0
        self.fatal: str | None = None
        self.consumer: Any = None
        self.producer: Any = None
        self._offsets: dict[tuple[str, int], int] = {}  # processed, not yet committed
        self._errors: list[Any] = []
        self._last_tick = 0.0
        self._stats_partitions: set[int] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> MonitorLoop:
        from confluent_kafka import Consumer, Producer

        self.producer = Producer({**self.producer_conf, "error_cb": self._on_error})
        self.consumer = Consumer({**self.consumer_conf, "error_cb": _log_error})
        self.consumer.subscribe(
            [*self.input_topics, self.partials],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return self

    def run(self, stop: Any) -> int:
        """Run until ``stop`` (a ``threading.Event``) is set; returns the exit code (0, or 1
        after a delivery failure: nothing past the last complete flush is committed)."""
        if self.consumer is None:
            self.start()
        try:
            while not stop.is_set():
                self.poll_once()
            self._commit(sync=True)
            return 0
        except BrokerError as exc:
            self.fatal = str(exc)
            logger.error("monitor stopped: %s", exc)
            return 1
        finally:
            self.close()

    def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(RuntimeError, BrokerError):
                self.consumer.close()  # revokes: flush + commit (when not failed)
            self.consumer = None
        if self.producer is not None:
            self.producer.flush(5)
            self.producer = None

    def poll_once(self) -> None:
        """One micro-batch (or an empty poll) and, when due, one tick."""
        timeout = max(0.01, min(0.2, self.tick_s))
        msgs = self.consumer.consume(num_messages=self.batch_max, timeout=timeout)
        now = time.time()
        if msgs:
            self._process(msgs, now)
        if now - self._last_tick >= self.tick_s and self.ready:
            self._last_tick = now
            self._tick(now)

    # ------------------------------------------------------------------ batches
    def _process(self, msgs: list[Any], now: float) -> None:
        core, state = self.core, self.state
        batch = split_batch(msgs, self.source_of)
        self._offsets.update(batch.offsets)
        stats, join, partials = batch.stats, batch.join, batch.partials
        alerts: list[Alert] = []
        for value, p, off in stats:
            state.at(p)
            alerts += core.on_stats(value, p, off, now)
            self._stats_partitions.add(p)
        if stats:
            for p in {s[1] for s in stats}:
                state.at(p)
                core.save_clocks(p, drift=True)
        for is_outcome, p, recs in join:  # predictions first
            state.at(p)
            (core.on_outcomes if is_outcome else core.on_predictions)(recs, now)
        for p in sorted({g[1] for g in join}):
            state.at(p)
            core.save_clocks(p)
        for value, p in partials:
            state.at(p)
            try:
                rec = orjson.loads(value) if value is not None else None
            except orjson.JSONDecodeError:
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("p"), int):
                logger.warning("undecodable perf-partials record skipped")
                continue
            alerts += core.on_partial(rec, now)
        self.events_processed += len(msgs)
        self._checkpoint(alerts + self.take_extra_alerts(), core.take_partials())

    def _tick(self, now: float) -> None:
        alerts: list[Alert] = []
        for p in self.assigned:
            self.state.at(p)
            alerts += self.core.on_tick(p, now)
        self._checkpoint(alerts + self.take_extra_alerts(), self.core.take_partials())
        self._gauges(now)

    def _checkpoint(self, alerts: list[Alert], partials: list[dict[str, Any]]) -> None:
        """Alerts and partials, then the changelog, each flushed; then commit."""
        if alerts or partials:
            for a in alerts:
                logger.info(
                    "alert %s %s %s=%s window %s",
                    a.type,
                    a.severity,
                    a.statistic,
                    a.value,
                    a.window_start,
                )
                self._produce(self.alerts_topic, alert_key(a), encode_alert(a))
            for rec in partials:  # before the deletions of their window states
                self._produce(self.partials, b"perf", orjson.dumps(rec), 0)
            self._flush()
        records, counts = self.state.changes()
        if records:
            for p, key, value in records:
                self._produce(self.changelog, key, value, p)
            self._flush()
        for name, (sent, skipped) in counts.items():
            if sent:
                self.metrics.changelog_records.labels(table=name).inc(sent)
            if skipped:
                self.metrics.changelog_skipped.labels(table=name).inc(skipped)
        self._commit(sync=False)

    def _produce(self, topic: str, key: bytes, value: bytes | None, partition: int = -1) -> None:
        while True:
            try:
                if partition >= 0:
                    self.producer.produce(topic, value, key, partition=partition)
                else:
                    self.producer.produce(topic, value, key)
                return
            except BufferError:  # queue full: serve delivery reports and retry
                self.producer.poll(0.05)

    def _flush(self) -> None:
        remaining = self.producer.flush(FLUSH_TIMEOUT_S)
        if remaining:
            raise BrokerError(
                f"{remaining} records (alerts / changelog) not delivered within "
                f"{FLUSH_TIMEOUT_S:g} s to {self.settings.broker.bootstrap}; nothing committed"
            )
        if self._errors:
            err, self._errors = self._errors[0], []
            raise BrokerError(f"delivery failed: {err}; nothing committed")

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._errors.append(err)
        logger.warning("kafka client error: %s", err)

    def _commit(self, *, sync: bool) -> None:
        if not self._offsets or self.consumer is None:
            return
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(t, p, off + 1) for (t, p), off in self._offsets.items()]
        self._offsets = {}
        try:
            self.consumer.commit(offsets=tps, asynchronous=not sync)
        except KafkaException as exc:  # e.g. a rebalance in progress: the records come again
            logger.warning("offset commit failed: %s", exc)

    # ------------------------------------------------------------------ rebalances
    def _inputs(self, partitions: list[Any]) -> list[int]:
        return sorted({tp.partition for tp in partitions if tp.topic in self.input_topics})

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        ps = self._inputs(partitions)
        t0 = time.monotonic()
        ok, bad = read_changelog(
            {k: v for k, v in self.consumer_conf.items()},
            self.changelog,
            ps,
            self.state.apply,
            self.restore_timeout_s,
        )
        self.core.restore_partitions(ps, time.time())
        owner = self.state.tables["meta"].owner.get("clock|drift")
        if owner is not None:
            self._stats_partitions.add(owner)
        self.assigned = ps
        self.ready = True
        self.metrics.restored_records.inc(ok)
        if bad:
            self.metrics.restored_records_malformed.inc(bad)
        self.metrics.restore_seconds.set(time.monotonic() - t0)
        logger.info(
            "assigned partitions %s: %d changelog records restored (%d malformed) in %.2f s",
            ps,
            ok,
            bad,
            time.monotonic() - t0,
        )

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        ps = self._inputs(partitions)
        if self.fatal is None:
            with contextlib.suppress(BrokerError):
                # everything applied is flushed at the end of each batch and tick already
                records, _ = self.state.changes()
                for p, key, value in records:
                    self._produce(self.changelog, key, value, p)
                if records:
                    self._flush()
                self._commit(sync=True)
        self._forget(ps)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._offsets = {}
        self._forget(self._inputs(partitions))

    def _forget(self, ps: list[int]) -> None:
        self.state.drop(ps)
        drift = bool(self._stats_partitions & set(ps))
        self._stats_partitions -= set(ps)
        self.core.forget_partitions(ps, drift=drift)
        self.assigned = [p for p in self.assigned if p not in ps]
        logger.info("revoked partitions %s", ps)

    # ------------------------------------------------------------------ gauges
    def _gauges(self, now: float) -> None:
        m, core = self.metrics, self.core
        m.pending.labels(kind="predictions").set(len(self.state.tables["pending_p"]))
        m.pending.labels(kind="outcomes").set(len(self.state.tables["pending_o"]))
        for name, v in (
            ("drift", core.watermark.value(now)),
            ("predictions", core.pred_clocks.value(now)),
            ("outcomes", core.out_clocks.value(now)),
        ):
            if v is not None:
                m.watermark.labels(clock=name).set(v / 1000.0)


def _log_error(err: Any) -> None:
    logger.warning("kafka client error: %s", err)
