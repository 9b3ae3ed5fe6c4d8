"""Delivery bookkeeping of the worker: one committer per delivery guarantee.

The loop (:class:`~segstream.services.worker.loop.StreamWorker`) consumes, decodes and scores
a batch and hands it to a :class:`Committer`, which produces it and decides when its consumed
offsets may be committed, what is rewound when a delivery fails, and when to give up. As Quix
Streams keeps its commits in ``checkpointing/checkpoint.py``, apart from the application and
the Kafka wrappers, the two guarantees live here, behind one interface:

:class:`AtLeastOnceCommitter` (``worker.guarantee: at_least_once``)
    Records are produced without a per-record callback; the producer's one delivery callback
    (:meth:`~AtLeastOnceCommitter.on_delivery`) is called by librdkafka for failed records
    only (``delivery.report.only.error``). The batches produced are *in flight* until the
    producer has nothing outstanding (``len(producer) == 0``) with no failure reported: then
    every one of them is delivered and its offsets are committed, at most every
    ``commit_interval_s`` (0: after every batch), and always before partitions are given up,
    on shutdown and before a rewind. Beyond ``max_batches_in_flight`` the loop waits for the
    producer. A failed delivery (or a record refused by ``produce()``) commits what was
    delivered before it and rewinds every batch in flight and the batch in hand, then backs
    off; after ``max_delivery_retries`` failures in a row the committer has ``failed``.
:class:`ExactlyOnceCommitter` (``worker.guarantee: exactly_once``)
    One transaction per batch holds its records and its consumed offsets
    (``send_offsets_to_transaction``). The offsets and the commit (broker round trips) run in
    a transaction thread while the loop decodes and scores the next batch, which is produced
    in its own transaction once the previous one has committed. An error aborts the
    transaction and rewinds the consumer to its first offsets (and those of the batch in
    hand), then backs off; after ``max_transaction_retries`` failures in a row, or on a
    fenced or fatal producer, the committer has ``failed`` (``"fenced"``: a newer instance
    took over).

Backoff is never slept here (this may run inside a rebalance callback): a committer sets
``backoff_until`` and the loop waits before its next batch. Operator-facing behaviour:
docs/dlq.md (failures) and docs/guide/worker.md (delivery guarantees).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from segstream.services.worker.metrics import WorkerMetrics
from segstream.services.worker.records import exception_name
from segstream.shared.errors import SegstreamError
from segstream.shared.settings import WorkerSettings

logger = logging.getLogger(__name__)

#: Backoff after a failed transaction or delivery: 0.5 s, doubling, at most 30 s.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0

_FENCED = (
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,  # type: ignore[attr-defined]
    KafkaError.INVALID_PRODUCER_EPOCH,
)


def backoff_s(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** max(failures - 1, 0))


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, at most 200 characters."""
    return f"{exception_name(exc)}: {exc}"[:200]


class ProduceError(SegstreamError):
    """``produce()`` refused a record (not a full queue): handled like a failed delivery.

    The message names the topic and the cause (``MSG_SIZE_TOO_LARGE``: raise the broker's
    and ``broker.client``'s ``message.max.bytes``; an unknown topic: create it, or let the
    worker do so at start-up).
    """

    def __init__(self, topic: str, cause: Exception) -> None:
        super().__init__(f"produce to {topic} refused: {describe(cause)}")
        self.topic = topic
        self.cause = cause


class Batch:
    """A scored batch as a committer sees it: its number, offsets and prediction count.

    Parameters
    ----------
    seq : int
        The loop's batch number (logs).
    first : dict of int to int
        Per partition, the batch's first offset (where a rewind goes).
    nxt : dict of int to int
        Per partition, the offset after its last message (what a commit stores).
    n_predictions : int
        Prediction records of the batch (counted once delivered / committed).
    """

    __slots__ = ("first", "n_predictions", "next", "seq")

    def __init__(
        self, seq: int, first: dict[int, int], nxt: dict[int, int], n_predictions: int = 0
    ) -> None:
        self.seq = seq
        self.first = first
        self.next = nxt
        self.n_predictions = n_predictions


def _earliest(*offsets: dict[int, int] | None) -> dict[int, int]:
    """Per partition, the smallest offset of ``offsets`` (where a rewind of them all goes)."""
    out: dict[int, int] = {}
    for first in offsets:
        for p, o in (first or {}).items():
            out[p] = min(o, out.get(p, o))
    return out


class ConsumerOffsets:
    """The events consumer's positions as the loop and the committers move them: the
    assigned partitions, ``seek`` and ``commit`` (both limited to assigned partitions).

    Parameters
    ----------
    consumer : object
        Started :class:`~segstream.services.worker.kafka_io.EventConsumer`-like object with
        ``client``.
    topic : str
        The events topic.
    """

    def __init__(self, consumer: Any, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic
        self.assigned: set[int] = set()

    def seek(self, offsets: dict[int, int]) -> None:
        """Move each assigned partition of ``offsets`` to its offset (a failed seek is
        logged: the partition is read on from where it was)."""
        for p, o in offsets.items():
            if p not in self.assigned:
                continue
            try:
                self.consumer.client.seek(TopicPartition(self.topic, p, o))
            except KafkaException as exc:
                logger.warning("seek %s[%d] to %d failed: %s", self.topic, p, o, exc)

    def commit(self, offsets: dict[int, int], sync: bool) -> None:
        """Commit the offsets of assigned partitions (a failed commit is logged: its
        events will be redelivered)."""
        tps = [TopicPartition(self.topic, p, o) for p, o in offsets.items() if p in self.assigned]
        if not tps:
            return
        try:
            self.consumer.client.commit(offsets=tps, asynchronous=not sync)
        except KafkaException as exc:
            logger.warning("commit failed (events will be redelivered): %s", exc)


class Committer(Protocol):
    """Produces the batches the loop hands over and commits their offsets when it may.

    Attributes
    ----------
    failed : str or None
        Why the committer gave up (the loop stops, not ready): ``"fenced"`` for a fenced
        producer (exit 0), anything else exits non-zero.
    backoff_until : float
        ``time.monotonic()`` before which the loop consumes nothing (after a failure).
    """

    failed: str | None
    backoff_until: float

    def on_delivery(self, err: Any, msg: Any) -> None:
        """The producer's delivery callback (failed records only)."""
        ...

    def produce_batch(self, batch: Batch, produce: Callable[[], object]) -> None:
        """Produce a batch: ``produce()`` sends its records (raising :class:`ProduceError`
        for a refused record). An earlier failure found first rewinds this batch with the
        others, and then it is not produced."""
        ...

    def poll(self, stop: threading.Event) -> None:
        """Once per loop iteration: account for what was delivered or committed (commit when
        due); wait when too much is in flight."""
        ...

    def serve_deliveries(self) -> None:
        """While the loop waits on a full producer queue: account for deliveries."""
        ...

    def finish_earlier(self, first: dict[int, int]) -> dict[int, int] | None:
        """Before the batch in hand (first offsets ``first``) is rewound, finish the batches
        before it. Returns where to rewind, or None when a failure already rewound them and
        the batch in hand."""
        ...

    def on_revoke(self, partitions: set[int]) -> None:
        """Partitions are given up (inside ``consume()``): finish and commit first."""
        ...

    def on_lost(self, partitions: set[int]) -> None:
        """Partitions were lost: never commit their offsets."""
        ...

    def drain(self) -> None:
        """At shutdown: wait for what is in flight and commit what was delivered."""
        ...

    def close(self) -> None:
        """Finish what is being committed and release threads."""
        ...


class AtLeastOnceCommitter:
    """At-least-once bookkeeping: batches in flight, delivered offsets, paced commits,
    rewinds on failed deliveries (see the module docstring).

    Parameters
    ----------
    settings : WorkerSettings
        ``commit_interval_s``, ``max_batches_in_flight``, ``max_delivery_retries``,
        ``transaction_timeout_s`` (bounds the waits for the producer).
    offsets : ConsumerOffsets
    producer : object
        Started :class:`~segstream.services.worker.kafka_io.OutputProducer`-like object with
        ``client``, whose delivery callback calls :meth:`on_delivery`.
    metrics : WorkerMetrics
    """

    def __init__(
        self,
        settings: WorkerSettings,
        offsets: ConsumerOffsets,
        producer: Any,
        metrics: WorkerMetrics,
    ) -> None:
        self.w = settings
        self.offsets = offsets
        self.producer = producer
        self.metrics = metrics
        self.inflight: collections.deque[Batch] = collections.deque()
        #: Next offsets of delivered batches not yet committed.
        self.delivered: dict[int, int] = {}
        self.failed: str | None = None
        self.backoff_until = 0.0
        self._last_commit = time.monotonic()
        self._delivery_error: str | None = None
        self._failures = 0  # failed deliveries in a row

    def on_delivery(self, err: Any, msg: Any) -> None:
        """The producer's delivery report (``on_delivery`` in its config), called by librdkafka
        for failed records only (``delivery.report.only.error``); any failure rewinds every
        uncommitted batch, so which record failed does not matter."""
        if err is not None and self._delivery_error is None:
            self._delivery_error = str(err)

    def produce_batch(self, batch: Batch, produce: Callable[[], object]) -> None:
        # The previous batches were being delivered while this one was scored: commit them
        # first (usually without waiting), then produce this one. If one of them failed, the
        # rewind covers this batch too: it is not produced and will be consumed again.
        if not self.settle(current_first=batch.first):
            return
        self.inflight.append(batch)
        try:
            produce()
        except ProduceError as exc:
            # As a failed delivery: the batch is in flight, so the next settle rewinds it
            # (and every batch in flight) and commits none of them.
            logger.error("batch %d: %s", batch.seq, exc)
            if self._delivery_error is None:
                self._delivery_error = str(exc)

    def poll(self, stop: threading.Event) -> None:
        self.settle()
        if len(self.inflight) >= self.w.max_batches_in_flight:
            self._wait_head()

    def serve_deliveries(self) -> None:
        self.settle()

    def settle(
        self,
        *,
        commit_sync: bool = False,
        current_first: dict[int, int] | None = None,
        force: bool = False,
    ) -> bool:
        """Serve delivery reports; when the producer has nothing outstanding and no record
        failed, every batch in flight is delivered: its offsets join :attr:`delivered`, which
        is committed when ``commit_interval_s`` has passed since the last commit (or
        ``force``). Returns False when a failure rewound the consumer (to the first offsets
        of the batches in flight and of ``current_first``, the batch in hand that is not
        produced yet)."""
        p = self.producer.client
        p.poll(0)
        if self.inflight:
            if self._delivery_error is not None:
                self._delivery_failed(current_first)
                return False
            if not len(p):
                n_pred = 0
                for b in self.inflight:
                    self.delivered.update(b.next)
                    n_pred += b.n_predictions
                self.inflight.clear()
                self._failures = 0
                if n_pred:
                    self.metrics.predictions_produced.inc(n_pred)
        # Offsets delivered earlier precede those still in flight: committing them is right
        # even while newer batches are outstanding.
        if force or time.monotonic() - self._last_commit >= self.w.commit_interval_s:
            self._commit_delivered(sync=commit_sync)
        return True

    def finish_earlier(self, first: dict[int, int]) -> dict[int, int] | None:
        """Wait for the batches in flight and commit those delivered. Returns ``first`` and
        the first offsets of earlier batches that could not be delivered in time (never
        committed); None when a failed delivery already rewound them and this batch."""
        earlier = [b.first for b in self.inflight]
        remaining = self.producer.client.flush(self.w.transaction_timeout_s * 2)
        if not self.settle(force=True, current_first=first):
            return None  # a failed delivery: rewound to the oldest batch in flight
        if remaining or self.inflight:  # not delivered in time: not committed, read again
            logger.error("%d records still undelivered; rewinding their batches too", remaining)
            self.inflight.clear()
            return _earliest(first, *earlier)
        return dict(first)

    def on_revoke(self, partitions: set[int]) -> None:
        self._drain(commit_sync=True)
        self._forget(partitions)

    def on_lost(self, partitions: set[int]) -> None:
        # Offsets of lost partitions must not be committed: drop the batches in flight.
        self.producer.client.flush(self.w.transaction_timeout_s)
        self.inflight.clear()
        self._forget(partitions)  # another member owns them now: never commit these

    def drain(self) -> None:
        self._drain(commit_sync=True)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ internals
    def _drain(self, commit_sync: bool) -> None:
        """Wait for every record in flight, then commit what was delivered."""
        remaining = self.producer.client.flush(self.w.transaction_timeout_s * 2)
        if remaining:
            logger.error("%d records still undelivered; their batches are not committed", remaining)
        self.settle(commit_sync=commit_sync, force=True)
        self.inflight.clear()

    def _wait_head(self) -> None:
        """Wait until the producer has delivered everything in flight (or a record failed)."""
        deadline = time.monotonic() + self.w.transaction_timeout_s * 4
        p = self.producer.client
        while self.inflight and len(p) and self._delivery_error is None:
            p.poll(0.01)
            if time.monotonic() > deadline:
                self._fail("deliveries did not complete in time")
                return
        self.settle()

    def _commit_delivered(self, sync: bool) -> None:
        """Commit :attr:`delivered` (if anything is) and restart the commit interval."""
        if self.delivered:
            self.offsets.commit(self.delivered, sync=sync)
            self.delivered = {}
            self._last_commit = time.monotonic()

    def _forget(self, partitions: set[int]) -> None:
        for part in partitions:
            self.delivered.pop(part, None)

    def _delivery_failed(self, current_first: dict[int, int] | None) -> None:
        logger.error(
            "delivery failed (%s); rewinding %d uncommitted batch(es) (from batch %s) "
            "without commit",
            self._delivery_error,
            len(self.inflight),
            self.inflight[0].seq if self.inflight else "-",
        )
        self.metrics.batch_failures.labels(stage="deliver").inc()
        self.producer.client.flush(self.w.transaction_timeout_s)
        self._delivery_error = None  # everything in flight is rewound below
        self._commit_delivered(sync=False)  # batches delivered before the failure stay done
        # every batch in flight (none is committed) and the one in hand
        rewind = _earliest(*[b.first for b in self.inflight], current_first)
        self.inflight.clear()
        self.offsets.seek(rewind)
        self._failures += 1
        if self._failures > self.w.max_delivery_retries:
            self._fail(
                f"delivery failed {self._failures} times in a row "
                f"(worker.max_delivery_retries={self.w.max_delivery_retries})"
            )
        else:
            self.backoff_until = _backoff_deadline(self._failures)

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason


class _Transaction:
    """An exactly-once batch whose transaction is being committed in the background."""

    __slots__ = ("batch", "future")

    def __init__(self, future: concurrent.futures.Future[None], batch: Batch) -> None:
        self.future = future
        self.batch = batch


class ExactlyOnceCommitter:
    """Exactly-once: one transaction per batch, committed in a transaction thread while the
    loop scores the next batch; abort, rewind and backoff on failure (see the module
    docstring).

    Parameters
    ----------
    settings : WorkerSettings
        ``max_transaction_retries``, ``transaction_timeout_s``.
    offsets : ConsumerOffsets
    producer : object
        Started transactional :class:`~segstream.services.worker.kafka_io.OutputProducer`-like
        object with ``client``.
    metrics : WorkerMetrics
    """

    def __init__(
        self,
        settings: WorkerSettings,
        offsets: ConsumerOffsets,
        producer: Any,
        metrics: WorkerMetrics,
    ) -> None:
        self.w = settings
        self.offsets = offsets
        self.producer = producer
        self.metrics = metrics
        self.failed: str | None = None
        self.backoff_until = 0.0
        self._failures = 0  # failed transactions in a row
        self._txn: _Transaction | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="transaction")

    def on_delivery(self, err: Any, msg: Any) -> None:
        """Failed records fail their transaction's commit: nothing to note here."""

    def produce_batch(self, batch: Batch, produce: Callable[[], object]) -> None:
        """Open this batch's transaction, produce into it, and hand the offsets and the commit
        to the transaction thread; the loop goes on with the next batch meanwhile (it is
        decoded and scored while this one commits, and produced after it committed)."""
        if not self.finish(current_first=batch.first):
            return  # the previous transaction failed: rewound, this batch included
        p = self.producer.client
        try:
            p.begin_transaction()
            produce()
            offsets = [
                TopicPartition(self.offsets.topic, part, o) for part, o in batch.next.items()
            ]
            group = self.offsets.consumer.client.consumer_group_metadata()
        except (KafkaException, ProduceError) as exc:
            cause = exc.cause if isinstance(exc, ProduceError) else exc
            err = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
            self._failed(err, exc, batch.first, batch.seq)
            return
        self._txn = _Transaction(self._pool.submit(self._commit, offsets, group), batch)

    def poll(self, stop: threading.Event) -> None:
        if self._txn is not None and self._txn.future.done():
            self.finish()  # account for it without waiting for a batch

    def serve_deliveries(self) -> None:
        pass  # transactions are accounted for between batches

    def finish(self, current_first: dict[int, int] | None = None) -> bool:
        """Wait for the transaction being committed, if any. Returns False when it failed
        (aborted and rewound to its first offsets and those of ``current_first``, the batch
        in hand, which must then not be produced; or fatal)."""
        txn, self._txn = self._txn, None
        if txn is None:
            return True
        try:
            txn.future.result()
        except Exception as exc:
            err = exc.args[0] if exc.args and hasattr(exc.args[0], "code") else None
            rewind = dict(txn.batch.first)
            for part, o in (current_first or {}).items():
                rewind[part] = min(o, rewind.get(part, o))
            self._failed(err, exc, rewind, txn.batch.seq)
            return False
        self.metrics.transactions.labels(result="committed").inc()
        self.metrics.predictions_produced.inc(txn.batch.n_predictions)
        self._failures = 0
        return True

    def finish_earlier(self, first: dict[int, int]) -> dict[int, int] | None:
        """Wait for the transaction being committed: ``first``, or None when it failed (the
        rewind covered the batch in hand)."""
        return dict(first) if self.finish(current_first=first) else None

    def on_revoke(self, partitions: set[int]) -> None:
        self.finish()  # commit (or abort) before giving partitions up

    def on_lost(self, partitions: set[int]) -> None:
        # A transaction already committing is waited for; its stale generation fails it.
        self.finish()
        self.producer.client.flush(self.w.transaction_timeout_s)

    def drain(self) -> None:
        self.finish()

    def close(self) -> None:
        self.finish()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ internals
    def _commit(self, offsets: list[Any], group: Any) -> None:
        """In the transaction thread: add the consumed offsets, commit."""
        p = self.producer.client
        timeout = self.w.transaction_timeout_s
        p.send_offsets_to_transaction(offsets, group, timeout)
        p.commit_transaction(timeout)

    def _failed(self, err: Any, exc: Exception, first: dict[int, int], seq: int) -> None:
        if err is not None and (err.fatal() or err.code() in _FENCED):
            self.metrics.transactions.labels(result="fenced").inc()
            self.failed = "fenced" if err.code() in _FENCED else f"fatal producer error: {err}"
            logger.error("transaction failed fatally: %s", exc)
            return
        logger.warning("batch %d: transaction failed (%s); aborting and rewinding", seq, exc)
        self.metrics.transactions.labels(result="aborted").inc()
        self.metrics.batch_failures.labels(stage="transaction").inc()
        try:
            self.producer.client.abort_transaction(self.w.transaction_timeout_s)
        except Exception as abort_exc:
            self._fail(f"abort failed: {abort_exc}")
            logger.error("abort_transaction failed: %s", abort_exc)
            return
        self.offsets.seek(first)
        self._failures += 1
        if self._failures > self.w.max_transaction_retries:
            self._fail(
                f"transaction failed {self._failures} times in a row "
                f"(worker.max_transaction_retries={self.w.max_transaction_retries})"
            )
        else:
            self.backoff_until = _backoff_deadline(self._failures)

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason


def _backoff_deadline(failures: int) -> float:
    """When the loop may consume again after the ``failures``-th failure in a row."""
    delay = backoff_s(failures)
    logger.warning("failure %d in a row: backing off %.1f s", failures, delay)
    return time.monotonic() + delay


def make_committer(
    settings: WorkerSettings, offsets: ConsumerOffsets, producer: Any, metrics: WorkerMetrics
) -> Committer:
    """The committer of ``settings.guarantee``."""
    if settings.guarantee == "exactly_once":
        return ExactlyOnceCommitter(settings, offsets, producer, metrics)
    return AtLeastOnceCommitter(settings, offsets, producer, metrics)


__all__ = [
    "BACKOFF_FIRST_S",
    "BACKOFF_MAX_S",
    "AtLeastOnceCommitter",
    "Batch",
    "Committer",
    "ConsumerOffsets",
    "ExactlyOnceCommitter",
    "ProduceError",
    "backoff_s",
    "make_committer",
]
