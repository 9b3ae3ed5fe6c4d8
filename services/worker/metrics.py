"""The worker's Prometheus metrics as one typed bundle, built from a registry passed in.

Per-event observations (latency, scoring seconds per event) are recorded a batch at a time by
:class:`BatchHistogram` (numpy bucket counts), so the hot path pays one ``searchsorted`` per
batch instead of one lock per event. Consumer lag comes from librdkafka's statistics
(:meth:`WorkerMetrics.observe_librdkafka_stats`), using the high watermark carried by *fetch*
responses (``hi_offset``); on the embedded Tansu broker the *listed* watermark is too low.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from segstream.services.worker.event_time import WORKER_DLQ_REASONS
from segstream.shared.store import RELOAD_FAILURE_REASONS

#: Buckets (seconds) for per-event work: 1 µs .. 10 ms.
PER_EVENT_BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 1e-2)
#: Buckets (seconds) for per-batch work: 100 µs .. 10 s.
PER_BATCH_BUCKETS = (
    1e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
#: Buckets (seconds) for end-to-end latency: 1 ms .. 60 s.
LATENCY_BUCKETS = (1e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets for the batch size (events).
BATCH_SIZE_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000)
RELOAD_RESULTS = ("loaded", "rejected", "failed")


class BatchHistogram(Collector):
    """A Prometheus histogram that takes many observations per call.

    Parameters
    ----------
    name, documentation : str
    buckets : sequence of float
        Upper bounds (``le``), increasing; ``+Inf`` is added.
    registry : CollectorRegistry or None

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> r = CollectorRegistry()
    >>> h = BatchHistogram("x_seconds", "x", (0.1, 1.0), r)
    >>> h.observe_many(np.array([0.05, 0.5, 5.0]))
    >>> r.get_sample_value("x_seconds_bucket", {"le": "1.0"}), r.get_sample_value("x_seconds_count")
    (2.0, 3.0)
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(list(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Add every value of ``values`` (float64 array) as one observation."""
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return
        idx = np.searchsorted(self.bounds, v, side="left")  # le semantics: v <= bound
        counts = np.bincount(idx, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(v.sum())

    def observe(self, value: float, count: int = 1) -> None:
        """Add ``value`` ``count`` times (e.g. a batch's per-event time for each event)."""
        if count <= 0:
            return
        i = int(np.searchsorted(self.bounds, value, side="left"))
        with self._lock:
            self._counts[i] += count
            self._sum += value * count

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cum = [float(c) for c in np.cumsum(self._counts).tolist()]
            total = self._sum
        buckets = [(_fmt(b), c) for b, c in zip(self.bounds.tolist(), cum, strict=False)]
        buckets.append(("+Inf", cum[-1]))
        fam = HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)
        yield fam


def _fmt(b: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(b)


@dataclasses.dataclass(frozen=True)
class WorkerMetrics:
    """Every metric of the worker. Build with :meth:`create`."""

    events_consumed: Counter
    predictions_produced: Counter
    dlq_records: Counter
    batches: Counter
    batch_failures: Counter
    batch_size: Histogram
    scoring_batch_seconds: Histogram
    scoring_event_seconds: BatchHistogram
    batch_seconds: Histogram
    end_to_end_latency: BatchHistogram
    consumer_lag: Gauge
    predictions_by_fallback: Counter
    rebalances: Counter
    assigned_partitions: Gauge
    bundle_reloads: Counter
    bundle_info: Info
    producer_queue: Gauge
    paused: Gauge
    transactions: Counter
    bundle_reload_failures: Counter
    bundle_broken: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, namespace: str = "segstream") -> WorkerMetrics:
        """Register the worker's metrics in ``registry`` (tests pass a fresh one)."""
        ns = namespace + "_worker"
        m = cls(
            events_consumed=Counter(
                f"{ns}_events_consumed", "Events consumed from the events topic.", registry=registry
            ),
            predictions_produced=Counter(
                f"{ns}_predictions_produced",
                "Prediction records produced (delivered or in the committed transaction).",
                registry=registry,
            ),
            dlq_records=Counter(
                f"{ns}_dlq_records",
                "Events routed to the DLQ, by reason.",
                ["reason"],
                registry=registry,
            ),
            batches=Counter(f"{ns}_batches", "Micro-batches completed.", registry=registry),
            batch_failures=Counter(
                f"{ns}_batch_failures",
                "Micro-batches that failed and were rewound, by stage.",
                ["stage"],
                registry=registry,
            ),
            batch_size=Histogram(
                f"{ns}_batch_size_events",
                "Events per micro-batch.",
                buckets=BATCH_SIZE_BUCKETS,
                registry=registry,
            ),
            scoring_batch_seconds=Histogram(
                f"{ns}_scoring_batch_seconds",
                "Seconds to decode, score and encode one batch.",
                buckets=PER_BATCH_BUCKETS,
                registry=registry,
            ),
            scoring_event_seconds=BatchHistogram(
                f"{ns}_scoring_event_seconds",
                "Seconds of "
                "decode+score+encode per event (batch time / "
                "batch size, once per event).",
                PER_EVENT_BUCKETS,
                registry,
            ),
            batch_seconds=Histogram(
                f"{ns}_batch_seconds",
                "Seconds per batch end to end in the worker (consume to produce/commit).",
                buckets=PER_BATCH_BUCKETS,
                registry=registry,
            ),
            end_to_end_latency=BatchHistogram(
                f"{ns}_end_to_end_latency_seconds",
                "Seconds from the event's broker timestamp to the produce of its prediction.",
                LATENCY_BUCKETS,
                registry,
            ),
            consumer_lag=Gauge(
                f"{ns}_consumer_lag_messages",
                "Messages behind the fetched high "
                "watermark, per partition (librdkafka statistics).",
                ["topic", "partition"],
                registry=registry,
            ),
            predictions_by_fallback=Counter(
                f"{ns}_predictions_by_fallback_level",
                "Predictions per fallback level (0 = own segment model).",
                ["level"],
                registry=registry,
            ),
            rebalances=Counter(
                f"{ns}_rebalances",
                "Consumer-group rebalance events, by kind.",
                ["kind"],
                registry=registry,
            ),
            assigned_partitions=Gauge(
                f"{ns}_assigned_partitions", "Partitions assigned now.", registry=registry
            ),
            bundle_reloads=Counter(
                f"{ns}_bundle_reloads", "Bundle loads by result.", ["result"], registry=registry
            ),
            bundle_info=Info(
                f"{ns}_bundle",
                "The bundle in use (its target family: gaussian, binomial, poisson).",
                registry=registry,
            ),
            producer_queue=Gauge(
                f"{ns}_producer_queue_messages",
                "Messages in the producer queue.",
                registry=registry,
            ),
            paused=Gauge(
                f"{ns}_paused", "1 while fetching is paused for backpressure.", registry=registry
            ),
            transactions=Counter(
                f"{ns}_transactions",
                "Transactions by result (exactly_once).",
                ["result"],
                registry=registry,
            ),
            bundle_reload_failures=Counter(
                f"{namespace}_bundle_reload_failures",
                "Failed bundle reloads (worker and "
                "monitor) by reason; each cause also alerts once.",
                ["reason"],
                registry=registry,
            ),
            bundle_broken=Gauge(
                f"{ns}_bundle_broken",
                "1 while consumption is stopped because "
                "scoring failed for more than worker.max_failed_share of the "
                "events (until a new bundle).",
                registry=registry,
            ),
        )
        for r in WORKER_DLQ_REASONS:
            m.dlq_records.labels(reason=r)
        for r in RELOAD_RESULTS:
            m.bundle_reloads.labels(result=r)
        for r in RELOAD_FAILURE_REASONS:
            m.bundle_reload_failures.labels(reason=r)
        for k in ("assign", "revoke", "lost"):
            m.rebalances.labels(kind=k)
        return m

    def observe_librdkafka_stats(self, stats_json: str | bytes, topic: str) -> None:
        """Set the per-partition lag gauges from a librdkafka statistics document.

        Lag = ``hi_offset`` (high watermark from the last fetch response) minus the
        application's position (``app_offset``), or minus the committed offset before the first
        message was consumed. Partitions without a known position are left out.
        """
        doc: dict[str, Any] = orjson.loads(stats_json)
        parts = doc.get("topics", {}).get(topic, {}).get("partitions", {})
        for pid, p in parts.items():
            if pid == "-1" or not p.get("desired", True):
                continue
            hi = p.get("hi_offset", -1)
            pos = p.get("app_offset", -1)
            if pos is None or pos < 0:
                pos = p.get("committed_offset", -1)
            if hi is None or hi < 0 or pos is None or pos < 0:
                continue
            self.consumer_lag.labels(topic=topic, partition=pid).set(max(0, hi - pos))

    def forget_partitions(self, topic: str, partitions: Iterable[int]) -> None:
        """Drop the lag series of partitions this worker no longer owns."""
        for p in partitions:
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(topic, str(p))
