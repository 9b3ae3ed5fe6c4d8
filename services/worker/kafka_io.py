"""Thin Kafka adapters of the worker. Each builds its librdkafka config in ``__init__`` and
creates its client in :meth:`start`; nothing here knows about scoring.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

from segstream.shared.alerts import Alert, encode_alert
from segstream.shared.kafka import FAST_GROUP_CONFIG, client_config
from segstream.shared.settings import Settings

logger = logging.getLogger(__name__)


def consumer_config(
    settings: Settings,
    *,
    stats_cb: Callable[[str], None] | None = None,
    error_cb: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """librdkafka config of the events consumer (group, manual commits, bounded prefetch)."""
    w = settings.worker
    conf: dict[str, Any] = dict(FAST_GROUP_CONFIG)
    conf.update(
        {
            "group.id": w.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # Bounded prefetch: at most ~32 MB per worker waits in librdkafka's queue.
            "queued.max.messages.kbytes": 32_768,
            # Paced fetches: a broker pays per fetch (Tansu's memory storage lists every stored
            # batch of a partition on each fetch that returns data, so a fetch per produced batch
            # saturated it within seconds at 59k events/s; docs: worker, Latency). A fetch is answered
            # as soon as data is there (fetch.min.bytes 1: no second storage read, as a held
            # fetch costs on Tansu), and the next one waits until the loop has taken what the
            # last one brought and fetch_backoff_ms has passed.
            "fetch.wait.max.ms": w.fetch_wait_max_ms,
            "fetch.min.bytes": w.fetch_min_bytes,
            "statistics.interval.ms": w.statistics_interval_ms,
        }
    )
    if w.fetch_backoff_ms > 0:
        conf.update({"queued.min.messages": 1, "fetch.queue.backoff.ms": w.fetch_backoff_ms})
    conf.update(client_config(settings.broker))  # operator's client settings win
    if stats_cb is not None and w.statistics_interval_ms > 0:
        conf["stats_cb"] = stats_cb
    if error_cb is not None:
        conf["error_cb"] = error_cb
    return conf


def producer_config(
    settings: Settings,
    *,
    transactional_id: str | None,
    error_cb: Callable[[Any], None] | None = None,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> dict[str, Any]:
    """librdkafka config of the output producer (large batches, bounded queue)."""
    w = settings.worker
    conf: dict[str, Any] = {
        "linger.ms": w.producer_linger_ms,
        "compression.type": w.producer_compression,
        "batch.num.messages": 10_000,
        "batch.size": 4_000_000,
        "queue.buffering.max.messages": w.producer_queue_max_messages,
        "acks": "all",
        "enable.idempotence": True,
        "message.max.bytes": max(1_000_000, w.dlq_max_value_bytes + 64_000),
        # Delivery reports for failed records only: the at-least-once loop commits when the
        # producer has nothing outstanding (see services.worker.loop).
        "delivery.report.only.error": True,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = int(w.transaction_timeout_s * 1000)
    conf.update(client_config(settings.broker))
    if error_cb is not None:
        conf["error_cb"] = error_cb
    if on_delivery is not None:  # one producer-wide callback, not a Python object per record
        conf["on_delivery"] = on_delivery
    return conf


class EventConsumer:
    """The consumer-group member reading the events topic."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_assign: Callable[[Any, list[Any]], None],
        on_revoke: Callable[[Any, list[Any]], None],
        on_lost: Callable[[Any, list[Any]], None],
        stats_cb: Callable[[str], None] | None = None,
    ) -> None:
        self.topic = settings.topics.events
        self.conf = consumer_config(settings, stats_cb=stats_cb, error_cb=_log_error)
        self._callbacks = {"on_assign": on_assign, "on_revoke": on_revoke, "on_lost": on_lost}
        self.client: Any = None

    def start(self) -> EventConsumer:
        from confluent_kafka import Consumer

        self.client = Consumer(self.conf)
        self.client.subscribe([self.topic], **self._callbacks)
        return self

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(RuntimeError):
                self.client.close()
            self.client = None


class OutputProducer:
    """The producer of predictions, DLQ and stats records (transactional for exactly-once)."""

    def __init__(
        self,
        settings: Settings,
        *,
        transactional_id: str | None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.transactional_id = transactional_id
        self.conf = producer_config(
            settings,
            transactional_id=transactional_id,
            error_cb=_log_error,
            on_delivery=on_delivery,
        )
        self.init_timeout_s = settings.worker.transaction_timeout_s
        self.client: Any = None

    def start(self) -> OutputProducer:
        from confluent_kafka import Producer

        self.client = Producer(self.conf)
        if self.transactional_id:
            self.client.init_transactions(self.init_timeout_s)
        return self


class AlertProducer:
    """A small idempotent producer for alert records (never transactional)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.alerts
        self.conf = client_config(settings.broker, linger_ms=5, acks="all")
        self.client: Any = None

    def start(self) -> AlertProducer:
        from confluent_kafka import Producer

        self.client = Producer(self.conf)
        return self

    def send(self, key: str, record: Alert, timeout_s: float = 10.0) -> bool:
        """Produce one alert and wait for it; True when delivered."""
        if self.client is None:
            self.start()
        errors: list[Any] = []
        self.client.produce(
            self.topic, encode_alert(record), key, on_delivery=lambda err, msg: errors.append(err)
        )
        remaining = self.client.flush(timeout_s)
        ok = remaining == 0 and errors == [None]
        if not ok:
            logger.error("alert not delivered to %s: %s", self.topic, errors or "timeout")
        return ok


class ModelUpdatesFeed:
    """Reads model-update records from the end of the model-updates topic (no group commits).

    Each worker uses its own throw-away group id so that every worker sees every update.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topics.model_updates
        conf: dict[str, Any] = dict(FAST_GROUP_CONFIG)
        conf.update(
            {
                "group.id": f"segstream-updates-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
            }
        )
        conf.update(client_config(settings.broker))
        self.conf = conf
        self.client: Any = None
        self._since_ms = 0

    def start(self) -> ModelUpdatesFeed:
        import time

        # Records older than this are ignored: a listed watermark that is too low (Tansu)
        # would otherwise replay old updates (each only a hint to re-read LATEST).
        self._since_ms = int(time.time() * 1000) - 2000
        from confluent_kafka import Consumer

        self.client = Consumer(self.conf)
        self.client.subscribe([self.topic])
        return self

    def poll_updates(self, timeout_s: float) -> list[bytes | None]:
        """Raw values of new records (untrusted: the bundle watcher decodes and checks them)."""
        if self.client is None:
            self.start()
        return [
            m.value()
            for m in self.client.consume(100, timeout_s)
            if m.error() is None and m.timestamp()[1] >= self._since_ms
        ]

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(RuntimeError):
                self.client.close()
            self.client = None


def _log_error(err: Any) -> None:
    logger.warning("kafka client error: %s", err)
