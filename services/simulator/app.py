"""``segstream simulate``: replay the configured data set to Kafka as events and outcomes."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections import Counter
from typing import Any

from tqdm import tqdm

from segstream.services.simulator.replay import Pacer, Record, Replay
from segstream.shared.data import load_dataset, time_slice
from segstream.shared.errors import BrokerError
from segstream.shared.kafka import check_reachable, client_config, ensure_topics
from segstream.shared.settings import Settings

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SimulationSummary:
    """What a replay sent. ``failed`` counts records whose delivery the broker did not confirm."""

    events_sent: int = 0
    malformed_sent: int = 0
    outcomes_sent: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    malformed_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events_sent / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        kinds = ",".join(f"{k}={v}" for k, v in sorted(self.malformed_by_kind.items()))
        return (
            f"simulate: sent={self.events_sent} events (malformed={self.malformed_sent}"
            f"{' ' + kinds if kinds else ''}) outcomes={self.outcomes_sent} "
            f"delivered={self.delivered} failed={self.failed} "
            f"rate={self.events_per_s:,.0f} events/s in {self.seconds:.1f} s"
            + (f" first_error={self.first_error}" if self.first_error else "")
        )


class _Delivery:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err: Any, msg: Any) -> None:
        if err is None:
            self.ok += 1
        else:
            self.failed += 1
            if self.first_error is None:
                self.first_error = str(err)


def select_rows(settings: Settings) -> Any:
    """The rows the simulator replays: the configured date range and limit, time-ordered."""
    sim = settings.simulator
    df = load_dataset(settings)
    df = time_slice(df, settings.event_schema.time_field, sim.start, sim.end)
    if sim.limit is not None:
        df = df.iloc[: sim.limit]
    return df


def run_simulation(
    settings: Settings,
    *,
    progress: bool = True,
    stop: threading.Event | None = None,
    records: Replay | list[Record] | None = None,
) -> SimulationSummary:
    """Replay to Kafka; return the summary. Producer errors are counted, never ignored.

    Raises
    ------
    BrokerError
        The broker is unreachable (after bounded retries) or topics cannot be created.
    """
    from confluent_kafka import Producer

    sim, topics, broker = settings.simulator, settings.topics, settings.broker
    check_reachable(broker)
    ensure_topics(
        broker, [topics.events, topics.outcomes], topics.partitions, topics.replication_factor
    )
    if records is None:
        records = Replay(
            select_rows(settings),
            settings.event_schema,
            outcomes=sim.outcomes,
            bad_fraction=sim.bad_fraction,
            seed=sim.seed,
            huge_bytes=sim.huge_event_bytes,
        )
    pacer = Pacer(rate=None if sim.speedup else sim.rate, speedup=sim.speedup)
    delivery = _Delivery()
    producer = Producer(
        client_config(
            broker,
            linger_ms=5,
            acks="all",
            enable_idempotence=True,
            message_max_bytes=max(1_048_576, sim.huge_event_bytes * 2),
            queue_buffering_max_messages=200_000,
        )
    )
    topic_of = {"events": topics.events, "outcomes": topics.outcomes}
    summary = SimulationSummary()
    kinds: Counter[str] = Counter()
    bar = tqdm(
        total=len(records),
        desc="simulate",
        unit="rec",
        file=sys.stderr,
        disable=not progress,
        mininterval=1.0,
    )
    start = time.monotonic()
    try:
        for i, rec in enumerate(records):
            if stop is not None and stop.is_set():
                break
            ahead = start + pacer.due_s(rec) - time.monotonic()
            if ahead > 0.002:
                producer.poll(0)
                time.sleep(ahead)
            while True:
                try:
                    producer.produce(
                        topic_of[rec.topic_role], rec.value, rec.key, on_delivery=delivery
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            if rec.topic_role == "outcomes":
                summary.outcomes_sent += 1
            else:
                summary.events_sent += 1
                if rec.kind.startswith("malformed:"):
                    summary.malformed_sent += 1
                    kinds[rec.kind.split(":", 1)[1]] += 1
            if i % 1000 == 0:
                producer.poll(0)
                bar.update(i + 1 - bar.n)
    finally:
        remaining = producer.flush(30.0)
        summary.seconds = time.monotonic() - start
        bar.update(len(records) - bar.n if stop is None or not stop.is_set() else 0)
        bar.close()
    summary.delivered = delivery.ok
    summary.failed = delivery.failed + remaining
    summary.first_error = delivery.first_error or (
        f"{remaining} record(s) not confirmed by {broker.bootstrap}" if remaining else None
    )
    summary.malformed_by_kind = dict(kinds)
    if summary.failed and summary.delivered == 0:
        raise BrokerError(f"no record delivered to {broker.bootstrap}: {summary.first_error}")
    return summary
