"""faust extensions: a consumer that reads committed records only, and table recovery that
reads changelogs to their *fetched* high watermark.

**read_committed.** faust's aiokafka consumer reads with ``isolation_level=read_uncommitted``
unless the app's own ``processing_guarantee`` is ``exactly_once`` (then faust wraps its own
processing in transactions; ``faust/transport/drivers/aiokafka.py``,
``AIOKafkaConsumerThread._create_worker_consumer``); there is no setting for it. The monitor
reads the output of workers that write in transactions (``worker.delivery: exactly_once``):
with read_uncommitted it would count predictions and stats of aborted transactions, which the
worker re-sends after its retry, i.e. twice. :class:`ReadCommittedApp` makes the monitor's
consumer read committed records only (:class:`ReadCommittedConsumerThread`) without making
the monitor itself transactional. On Apache Kafka this hides aborted and open
transactions; the embedded Tansu broker still delivers aborted records to read_committed
consumers (a broker deviation, docs/design.md).

faust recovers a table by reading its changelog partitions up to the high watermark it
*lists* (``ListOffsets``) when the partitions are assigned. The embedded Tansu broker lists
a watermark that is too low: measured, it is the first offset of the partition's last record
batch + 1, so recovery stops after the first record of the last batch and the rest of that
batch (often many changelog records, since the producer batches them) is lost. A *fetch*
response carries the right watermark. :class:`ProbingRecovery` therefore corrects each listed
watermark by fetching from just before it with a short-lived confluent-kafka consumer and
reading the watermark of that fetch response (one small fetch per changelog partition per
rebalance; on Apache Kafka the two agree and nothing changes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

logger = logging.getLogger(__name__)


def fetched_high_watermarks(
    bootstrap: str,
    listed: Mapping[Any, int | None],
    timeout_s: float = 5.0,
    client: Mapping[str, Any] | None = None,
) -> dict[Any, int | None]:
    """High watermarks of ``(topic, partition)`` pairs as carried by fetch responses.

    Parameters
    ----------
    bootstrap : str
    listed : mapping of (topic, partition)-like to int or None
        The listed watermarks (the fetch starts one record before them).
    timeout_s : float
        Deadline for all partitions together; on timeout the listed value is kept.

    Returns
    -------
    dict
        Same keys; ``max(listed, fetched)``.
    """
    from confluent_kafka import Consumer, TopicPartition

    out: dict[Any, int | None] = dict(listed)
    todo = {k: v for k, v in listed.items() if v}  # empty partitions need no probe
    if not todo:
        return out
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "segstream-monitor-probe",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 0,
            **dict(client or {}),
        }
    )
    try:
        tps = {(k[0], k[1]): k for k in todo}
        c.assign([TopicPartition(t, p, max(0, todo[k] - 1)) for (t, p), k in tps.items()])
        pending = set(tps)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                key = (m.topic(), m.partition())
                if key in pending:
                    pending.discard(key)
            for t, p in list(tps):
                _lo, hi = c.get_watermark_offsets(TopicPartition(t, p), cached=True)
                k = tps[(t, p)]
                if hi is not None and hi >= 0:
                    out[k] = max(out[k] or 0, hi)
        if pending:
            logger.warning(
                "watermark probe timed out for %s; keeping listed values", sorted(pending)
            )
    finally:
        c.close()
    return out


class ProbingRecovery(Recovery):
    """faust :class:`~faust.tables.recovery.Recovery` with probed changelog highwaters."""

    async def _build_highwaters(
        self, consumer: Any, tps: Any, destination: Any, title: str
    ) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        listed = {
            tp: (v + 1 if v is not None and v >= 0 else None) for tp, v in destination.items()
        }
        bootstrap = ",".join(f"{u.host}:{u.port}" for u in self.app.conf.broker)
        loop = asyncio.get_running_loop()
        # Security settings (and any broker.client extras) of the monitor's Kafka clients.
        client = getattr(self.app, "probe_client_config", None)
        fetched = await loop.run_in_executor(
            None, fetched_high_watermarks, bootstrap, listed, 5.0, client
        )
        changed = {
            tp: (listed[tp], v) for tp, v in fetched.items() if v is not None and v != listed[tp]
        }
        if changed:
            logger.info(
                "%s changelog highwaters corrected by fetch (listed -> fetched): %s",
                title,
                {f"{tp.topic}[{tp.partition}]": c for tp, c in changed.items()},
            )
        for tp, v in fetched.items():
            destination[tp] = v - 1 if v is not None else -1


class ProbingTableManager(TableManager):
    """faust TableManager whose recovery uses :class:`ProbingRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = ProbingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


#: The isolation level of the monitor's consumer.
ISOLATION_LEVEL = "read_committed"


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread whose consumer reads committed records only."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka keeps the constructor argument as given and hands it to its Fetcher in
        # start(); faust passes read_uncommitted here unless the app is transactional.
        consumer._isolation_level = getattr(self.app, "isolation_level", ISOLATION_LEVEL)
        return consumer


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    """faust aiokafka Consumer using :class:`ReadCommittedConsumerThread`."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with :class:`ReadCommittedConsumer`."""

    Consumer = ReadCommittedConsumer


class ReadCommittedApp(faust.App):
    """A faust App whose consumer reads with ``isolation_level=read_committed``."""

    #: Set by the monitor from ``monitor.isolation_level``.
    isolation_level: str = ISOLATION_LEVEL

    def _new_transport(self) -> Any:
        return ReadCommittedTransport(self.conf.broker_consumer, self)


__all__ = [
    "ISOLATION_LEVEL",
    "TP",
    "ProbingRecovery",
    "ProbingTableManager",
    "ReadCommittedApp",
    "ReadCommittedConsumer",
    "ReadCommittedConsumerThread",
    "ReadCommittedTransport",
    "fetched_high_watermarks",
]
