"""The worker's main loop: consume a micro-batch, decode, score, produce, commit.

Delivery guarantees
-------------------
``at_least_once``
    Predictions, DLQ and stats records of a batch are produced without a per-record callback;
    the producer's one delivery callback (:meth:`StreamWorker.on_delivery`) is called by
    librdkafka for failed records only (``delivery.report.only.error``: a Python callback per
    delivered record would cost more than scoring it). A batch's offsets are committed once
    the producer has nothing outstanding (``len(producer) == 0``: every record produced so far
    is acknowledged and no failure was reported), which is checked before each new batch is
    produced, so the previous batch, delivered while this one was being scored, is known
    delivered without waiting. Delivered offsets are committed at most every
    ``commit_interval_s`` (0: after every batch), and always before partitions are given up, on
    shutdown, and before a rewind. Up to ``max_batches_in_flight`` batches are pipelined;
    beyond that the loop waits for the producer to drain. A delivery failure rewinds the
    consumer to the first offset of the oldest batch in flight (no batch in flight is
    committed; batches delivered before it are).
``exactly_once``
    One transaction per batch holds its predictions, DLQ and stats records and its consumed
    offsets (``send_offsets_to_transaction`` with the consumer group's metadata). The offsets
    and the commit (broker round trips) run in a transaction thread while the loop decodes and
    scores the next batch, which is produced in its own transaction once the previous one has
    committed. Any error aborts the transaction and rewinds the consumer to the batch's first
    offsets (and those of the batch in hand, which is then not produced); a fenced or
    otherwise fatal producer ends the loop cleanly without committing.

A batch whose decoding/scoring raises (a bug, not bad input: bad input goes to the DLQ) is
never committed: the consumer is rewound and the batch retried ``max_scoring_retries`` times,
after which the worker exits non-zero. Partition revocation happens inside ``consume()``, i.e.
between batches: at-least-once waits for the batches in flight and commits them first;
exactly-once waits for the transaction being committed (no transaction is open then).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import operator
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka import Message

from segstream.services.worker.decode import DLQ_REASONS, EventDecoder
from segstream.services.worker.metrics import WorkerMetrics
from segstream.services.worker.records import dlq_value_and_headers, encode_predictions, utc_now_iso
from segstream.services.worker.stats import batch_stats_records
from segstream.shared.scoring import Bundle, Scorer
from segstream.shared.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


_SECOND = operator.itemgetter(1)


def _at_once(score: Callable[[Any], dict[str, np.ndarray]]) -> Callable[..., Any]:
    """``score_parts`` for a scorer without it: everything now, ``finish`` returns it."""
    def parts(columns: Any) -> tuple[dict[str, np.ndarray], Callable[[], Any]]:
        out = score(columns)
        return out, lambda: out
    return parts


def _offset_range(parts: np.ndarray, offs: np.ndarray) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition of a batch, its first offset and the offset after its last one."""
    first: dict[int, int] = {}
    nxt: dict[int, int] = {}
    for p in np.unique(parts).tolist():
        o = offs[parts == p]
        first[p] = int(o.min())
        nxt[p] = int(o.max()) + 1
    return first, nxt


class _Transaction:
    """An exactly-once batch whose transaction is being committed in the background."""

    __slots__ = ("future", "first", "n_predictions", "seq")

    def __init__(self, future: concurrent.futures.Future[None], first: dict[int, int],
                 n_predictions: int, seq: int) -> None:
        self.future = future
        self.first = first
        self.n_predictions = n_predictions
        self.seq = seq


class _InFlight:
    """One at-least-once batch whose records may not all be delivered yet."""

    __slots__ = ("seq", "first", "next", "n_predictions")

    def __init__(self, seq: int, first: dict[int, int], nxt: dict[int, int]) -> None:
        self.seq = seq
        self.first = first
        self.next = nxt
        self.n_predictions = 0


class StreamWorker:
    """Run the consume → score → produce → commit loop until ``stop`` is set.

    Parameters
    ----------
    settings : Settings
    consumer : object
        Started :class:`~segstream.services.worker.kafka_io.EventConsumer`-like object with ``client``.
        Its rebalance callbacks must call :meth:`on_assign`, :meth:`on_revoke` and
        :meth:`on_lost` (see :func:`segstream.services.worker.app.run_worker`).
    producer : object
        Started :class:`~segstream.services.worker.kafka_io.OutputProducer`-like object with ``client``.
    scorer : Scorer
        The bundle to start with.
    metrics : WorkerMetrics
    worker_id : str
        Identity in DLQ headers and stats records.
    take_new_scorer : callable, optional
        Returns a newly loaded scorer or None; called between batches (hot reload).
    """

    def __init__(self, settings: Settings, consumer: Any, producer: Any, scorer: Scorer,
                 metrics: WorkerMetrics, worker_id: str,
                 take_new_scorer: Callable[[], Scorer | None] | None = None) -> None:
        self.settings = settings
        self.w = settings.worker
        self.topics = settings.topics
        self.consumer = consumer
        self.producer = producer
        self.metrics = metrics
        self.worker_id = worker_id
        self.take_new_scorer = take_new_scorer or (lambda: None)
        self.exactly_once = self.w.guarantee == "exactly_once"
        self.assigned: set[int] = set()
        self.inflight: collections.deque[_InFlight] = collections.deque()
        # at_least_once: next offsets of delivered batches not yet committed, and when the
        # last commit was sent (commits are paced by worker.commit_interval_s).
        self.delivered: dict[int, int] = {}
        self._last_commit = time.monotonic()
        self.seq = 0
        self.failures = 0
        self.fatal: str | None = None
        self.ready = threading.Event()
        self._delivery_error: str | None = None
        self._pool = (concurrent.futures.ThreadPoolExecutor(
            self.w.score_threads, thread_name_prefix="score") if self.w.score_threads else None)
        self._txn: _Transaction | None = None
        self._txn_pool = (concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="transaction") if self.exactly_once else None)
        self._install(scorer)

    # ------------------------------------------------------------------ bundle
    def _install(self, scorer: Scorer) -> None:
        self.scorer = scorer
        # A bundle that can overlap its profile part with routing gets the pool (the tests'
        # fake scorers cannot).
        if self._pool is not None and isinstance(scorer, Bundle):
            self._score_parts = functools.partial(scorer.score_parts, executor=self._pool)
        else:
            self._score_parts = _at_once(scorer.score)
        self.decoder = EventDecoder(scorer.schema, self.w.max_event_bytes)
        self.id_field = scorer.schema.id_field
        self.time_field = scorer.schema.time_field
        self.contribution_names = (list(scorer.contribution_names)
                                   if self.w.include_contributions else None)
        self.metrics.bundle_info.info({"bundle_id": scorer.bundle_id, "model": scorer.model})
        logger.info("scoring with bundle %s", scorer.bundle_id[:12])

    def _maybe_swap(self) -> None:
        new = self.take_new_scorer()
        if new is not None:
            old = self.scorer.bundle_id
            self._install(new)
            logger.info("hot reload: bundle %s -> %s", old[:12], new.bundle_id[:12])

    def on_delivery(self, err: Any, msg: Any) -> None:
        """The producer's delivery report (``on_delivery`` in its config), called by librdkafka
        for failed records only (``delivery.report.only.error``); any failure rewinds every
        uncommitted batch, so which record failed does not matter."""
        if err is not None and self._delivery_error is None:
            self._delivery_error = str(err)

    # ------------------------------------------------------------------ rebalance callbacks
    def on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.metrics.rebalances.labels(kind="assign").inc()
        self.assigned |= {p.partition for p in partitions}
        self.metrics.assigned_partitions.set(len(self.assigned))
        logger.info("assigned partitions %s", sorted(p.partition for p in partitions))

    def on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.metrics.rebalances.labels(kind="revoke").inc()
        if self.exactly_once:
            self._finish_transaction()  # commit (or abort) before giving partitions up
        else:
            self._drain(commit_sync=True)
        gone = {p.partition for p in partitions}
        self.assigned -= gone
        self._forget_delivered(gone)
        self.metrics.assigned_partitions.set(len(self.assigned))
        self.metrics.forget_partitions(self.topics.events, gone)
        logger.info("revoked partitions %s", sorted(gone))

    def on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self.metrics.rebalances.labels(kind="lost").inc()
        gone = {p.partition for p in partitions}
        # Offsets of lost partitions must not be committed: drop the batches in flight (a
        # transaction already committing is waited for; its stale generation fails it).
        if self.exactly_once:
            self._finish_transaction()
        self.producer.client.flush(self.w.transaction_timeout_s)
        self.inflight.clear()
        self.assigned -= gone
        self._forget_delivered(gone)  # another member owns them now: never commit these
        self.metrics.assigned_partitions.set(len(self.assigned))
        self.metrics.forget_partitions(self.topics.events, gone)
        logger.warning("lost partitions %s", sorted(gone))

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event) -> int:
        """Process batches until ``stop`` is set (then finish, commit, return 0) or a fatal
        error (return non-zero, or 0 for a fenced producer)."""
        c = self.consumer.client
        n, timeout = self.w.batch_size, self.w.batch_timeout_s
        self.ready.set()
        try:
            while not stop.is_set() and self.fatal is None:
                self._maybe_swap()
                self._backpressure(stop)
                # What is already fetched is processed at once. An empty queue waits (up to
                # batch_timeout_s) for its *first* message, then takes whatever else is
                # queued: consume(n, timeout) would return only when n messages are there or
                # the timeout has passed, adding the whole timeout to events that arrive into
                # an idle worker (p50 create->consume 46 -> 17 ms at 30k events/s).
                msgs = c.consume(n, 0)
                if not msgs:
                    msgs = c.consume(1, timeout)
                    if msgs and n > 1:
                        msgs += c.consume(n - 1, 0)
                if msgs:
                    self._process(msgs)
                if not self.exactly_once:
                    self._settle()
                    if len(self.inflight) >= self.w.max_batches_in_flight:
                        self._wait_head(stop)
                elif self._txn is not None and self._txn.future.done():
                    self._finish_transaction()  # account for it without waiting for a batch
                self.metrics.producer_queue.set(len(self.producer.client))
            if self.exactly_once:
                self._finish_transaction()
        finally:
            self.ready.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self._txn_pool is not None:
                self._finish_transaction()
                self._txn_pool.shutdown(wait=True)
        if self.fatal == "fenced":
            logger.warning("producer fenced by a newer instance: exiting without committing")
            return EXIT_OK
        if self.fatal is not None:
            logger.error("worker stopping after a fatal error: %s", self.fatal)
            if not self.exactly_once:
                self._drain(commit_sync=True)
            return EXIT_FAILED
        if not self.exactly_once:
            self._drain(commit_sync=True)
        logger.info("stopped after %d batches", self.seq)
        return EXIT_OK

    # ------------------------------------------------------------------ one batch
    def _process(self, msgs: list[Any]) -> None:
        errors = list(map(Message.error, msgs))
        if errors.count(None) != len(errors):
            for e in errors:
                if e is not None:
                    logger.warning("consume error: %s", e)
            msgs = [m for m, e in zip(msgs, errors, strict=True) if e is None]
            if not msgs:
                return
        # One C-level pass per attribute (no per-message Python frames).
        n_msgs = len(msgs)
        parts = np.fromiter(map(Message.partition, msgs), np.int32, n_msgs)
        offs = np.fromiter(map(Message.offset, msgs), np.int64, n_msgs)
        first, nxt = _offset_range(parts, offs)
        t0 = time.perf_counter()
        try:
            values = list(map(Message.value, msgs))
            decoded = self.decoder.decode(values)
            scorer = self.scorer
            # Route and apply the segment models now; with worker.score_threads > 0 the pattern
            # classifier runs in the pool meanwhile (default 0: in this thread, see the
            # setting), and the stats, which do not need it, are counted in between.
            partial, finish = self._score_parts(decoded.columns) if decoded.n_valid else (
                {}, dict)
            dlq_counts = collections.Counter(r for _, r, _ in decoded.rejected)
            stats: list[bytes] = []
            if self.w.stats_enabled:
                # One record per monitor window (event time) so none straddles a boundary.
                stats = batch_stats_records(
                    decoded.columns, partial, scorer.drift_reference,
                    time_field=self.time_field, slice_s=self.settings.monitor.window_s,
                    model=scorer.model, bundle_id=scorer.bundle_id,
                    worker=self.worker_id, batch=self.seq, n_events=len(msgs),
                    dlq_counts=dlq_counts, created_at=utc_now_iso(),
                    max_unknown_keys=self.w.max_unknown_keys,
                    partitions=parts[decoded.valid])
            scores = finish()
            if decoded.n_valid:
                ids = decoded.columns[self.id_field].tolist()
                preds = encode_predictions(
                    ids, scores, None if decoded.event_time_json is not None
                    else decoded.event_time_text, event_time_json=decoded.event_time_json,
                    model=scorer.model,
                    bundle_id=scorer.bundle_id, interval_mass=scorer.interval_mass,
                    scored_at=utc_now_iso(), contribution_names=self.contribution_names)
            else:
                ids, preds = [], []
        except Exception:  # noqa: BLE001 - a scoring bug: never commit this batch
            logger.exception("batch %d failed in decode/score (%d events); rewinding",
                             self.seq, len(msgs))
            self.metrics.batch_failures.labels(stage="score").inc()
            self._scoring_failed(first)
            return
        score_s = time.perf_counter() - t0
        self.failures = 0
        self.seq += 1
        m = self.metrics
        m.events_consumed.inc(len(msgs))
        m.batch_size.observe(len(msgs))
        m.scoring_batch_seconds.observe(score_s)
        m.scoring_event_seconds.observe(score_s / len(msgs), len(msgs))
        if self.exactly_once:
            self._produce_transaction(msgs, decoded, ids, preds, stats, first, nxt)
        else:
            self._produce_at_least_once(msgs, decoded, ids, preds, stats, first, nxt)
        if preds:
            lv = np.bincount(np.asarray(scores["fallback_level"], dtype=np.int64))
            for level, count in enumerate(lv.tolist()):
                if count:
                    m.predictions_by_fallback.labels(level=str(level)).inc(count)
        for reason, count in dlq_counts.items():
            m.dlq_records.labels(reason=reason).inc(count)
        now_ms = time.time() * 1000.0
        ts = np.fromiter(map(_SECOND, map(Message.timestamp, msgs)), dtype=np.float64,
                         count=n_msgs)
        lat = (now_ms - ts[ts > 0]) / 1000.0
        m.end_to_end_latency.observe_many(lat)
        m.batches.inc()
        m.batch_seconds.observe(time.perf_counter() - t0)

    def _produce_all(self, msgs: list[Any], decoded: Any, ids: list[Any], preds: list[bytes],
                     stats: list[bytes]) -> int:
        """Produce every output record of a batch (delivery failures reach the producer-wide
        :meth:`on_delivery`); returns how many were produced."""
        p = self.producer.client
        produce = p.produce
        topic = self.topics.predictions
        # Produce until the queue is full, then poll and retry that record (never drop).
        records = zip(preds, ids)
        value = key = None
        while True:
            try:
                if value is not None:
                    produce(topic, value, key)  # the record that found the queue full
                for value, key in records:
                    produce(topic, value, key)
                break
            except BufferError:
                self.metrics.paused.set(1)
                p.poll(0.05)
        count = len(preds)
        self.metrics.paused.set(0)
        src = self.topics.events
        for idx, reason, detail in decoded.rejected:
            msg = msgs[idx]
            value, headers = dlq_value_and_headers(
                msg.value(), msg.headers(), reason=reason, detail=detail, topic=src,
                partition=msg.partition(), offset=msg.offset(), worker=self.worker_id,
                max_value_bytes=self.w.dlq_max_value_bytes)
            self._produce_one(self.topics.dlq, value, msg.key(), headers)
            count += 1
        for rec in stats:
            self._produce_one(self.topics.stats, rec, self.scorer.model, None)
            count += 1
        return count

    def _produce_one(self, topic: str, value: Any, key: Any, headers: Any) -> None:
        p = self.producer.client
        while True:
            try:
                if headers:
                    p.produce(topic, value, key, headers=headers)
                else:
                    p.produce(topic, value, key)
                return
            except BufferError:
                p.poll(0.05)

    # ------------------------------------------------------------------ at-least-once
    def _produce_at_least_once(self, msgs: list[Any], decoded: Any, ids: list[Any],
                               preds: list[bytes], stats: list[bytes],
                               first: dict[int, int], nxt: dict[int, int]) -> None:
        # The previous batches were being delivered while this one was scored: commit them
        # first (usually without waiting), then produce this one. If one of them failed, the
        # rewind covers this batch too: it is not produced and will be consumed again.
        if not self._settle(current_first=first):
            return
        batch = _InFlight(self.seq, first, nxt)
        batch.n_predictions = len(preds)
        self.inflight.append(batch)
        self._produce_all(msgs, decoded, ids, preds, stats)

    def _settle(self, commit_sync: bool = False,
                current_first: dict[int, int] | None = None, force: bool = False) -> bool:
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
                if n_pred:
                    self.metrics.predictions_produced.inc(n_pred)
        # Offsets delivered earlier precede those still in flight: committing them is right
        # even while newer batches are outstanding.
        if force or time.monotonic() - self._last_commit >= self.w.commit_interval_s:
            self._commit_delivered(sync=commit_sync)
        return True

    def _commit_delivered(self, sync: bool) -> None:
        """Commit :attr:`delivered` (if anything is) and restart the commit interval."""
        if self.delivered:
            self._commit(self.delivered, sync=sync)
            self.delivered = {}
            self._last_commit = time.monotonic()

    def _forget_delivered(self, partitions: set[int]) -> None:
        for part in partitions:
            self.delivered.pop(part, None)

    def _wait_head(self, stop: threading.Event) -> None:
        """Wait until the producer has delivered everything in flight (or a record failed)."""
        deadline = time.monotonic() + self.w.transaction_timeout_s * 4
        p = self.producer.client
        while self.inflight and len(p) and self._delivery_error is None:
            p.poll(0.01)
            if time.monotonic() > deadline:
                self.fatal = "deliveries did not complete in time"
                return
        self._settle()

    def _drain(self, commit_sync: bool) -> None:
        """Wait for every record in flight, then commit what was delivered."""
        remaining = self.producer.client.flush(self.w.transaction_timeout_s * 2)
        if remaining:
            logger.error("%d records still undelivered; their batches are not committed",
                         remaining)
        self._settle(commit_sync=commit_sync, force=True)
        self.inflight.clear()

    def _commit(self, offsets: dict[int, int], sync: bool) -> None:
        from confluent_kafka import KafkaException, TopicPartition  # noqa: PLC0415

        tps = [TopicPartition(self.topics.events, p, o) for p, o in offsets.items()
               if p in self.assigned]
        if not tps:
            return
        try:
            self.consumer.client.commit(offsets=tps, asynchronous=not sync)
        except KafkaException as exc:
            logger.warning("commit failed (events will be redelivered): %s", exc)

    def _delivery_failed(self, current_first: dict[int, int] | None = None) -> None:
        logger.error("delivery failed (%s); rewinding %d uncommitted batch(es) (from batch %s) "
                     "without commit", self._delivery_error, len(self.inflight),
                     self.inflight[0].seq if self.inflight else "-")
        self.metrics.batch_failures.labels(stage="deliver").inc()
        self.producer.client.flush(self.w.transaction_timeout_s)
        self._delivery_error = None  # everything in flight is rewound below
        self._commit_delivered(sync=False)  # batches delivered before the failure stay done
        rewind: dict[int, int] = {}
        firsts = [b.first for b in self.inflight] + [current_first or {}]
        for first in firsts:  # every batch in flight (none is committed) and the one in hand
            for p, o in first.items():
                rewind[p] = min(o, rewind.get(p, o))
        self.inflight.clear()
        self._seek(rewind)

    # ------------------------------------------------------------------ exactly-once
    def _produce_transaction(self, msgs: list[Any], decoded: Any, ids: list[Any],
                             preds: list[bytes], stats: list[bytes],
                             first: dict[int, int], nxt: dict[int, int]) -> None:
        """Open this batch's transaction, produce into it, and hand the offsets and the commit
        to the transaction thread; the loop goes on with the next batch meanwhile (it is
        decoded and scored while this one commits, and produced after it committed)."""
        from confluent_kafka import KafkaException, TopicPartition  # noqa: PLC0415

        if not self._finish_transaction(current_first=first):
            return  # the previous transaction failed: rewound, this batch included
        p = self.producer.client
        c = self.consumer.client
        try:
            p.begin_transaction()
            self._produce_all(msgs, decoded, ids, preds, stats)
            offsets = [TopicPartition(self.topics.events, part, o) for part, o in nxt.items()]
            group = c.consumer_group_metadata()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            self._transaction_failed(err, exc, first, self.seq)
            return
        self._txn = _Transaction(
            self._txn_pool.submit(self._commit_transaction, offsets, group),  # type: ignore[union-attr]
            first, len(preds), self.seq)

    def _commit_transaction(self, offsets: list[Any], group: Any) -> None:
        """In the transaction thread: add the consumed offsets, commit."""
        p = self.producer.client
        timeout = self.w.transaction_timeout_s
        p.send_offsets_to_transaction(offsets, group, timeout)
        p.commit_transaction(timeout)

    def _finish_transaction(self, current_first: dict[int, int] | None = None) -> bool:
        """Wait for the transaction being committed, if any. Returns False when it failed
        (aborted and rewound to its first offsets and those of ``current_first``, the batch
        in hand, which must then not be produced; or fatal)."""
        txn, self._txn = self._txn, None
        if txn is None:
            return True
        try:
            txn.future.result()
        except Exception as exc:  # noqa: BLE001 - KafkaException or anything else: abort
            err = exc.args[0] if exc.args and hasattr(exc.args[0], "code") else None
            rewind = dict(txn.first)
            for part, o in (current_first or {}).items():
                rewind[part] = min(o, rewind.get(part, o))
            self._transaction_failed(err, exc, rewind, txn.seq)
            return False
        self.metrics.transactions.labels(result="committed").inc()
        self.metrics.predictions_produced.inc(txn.n_predictions)
        return True

    def _transaction_failed(self, err: Any, exc: Exception, first: dict[int, int],
                            seq: int) -> None:
        from confluent_kafka import KafkaError  # noqa: PLC0415

        p = self.producer.client
        fatal = err is not None and (err.fatal() or err.code() in (
            KafkaError._FENCED, KafkaError.PRODUCER_FENCED,  # type: ignore[attr-defined]
            KafkaError.INVALID_PRODUCER_EPOCH))
        if fatal:
            self.metrics.transactions.labels(result="fenced").inc()
            self.fatal = "fenced" if err.code() in (
                KafkaError._FENCED, KafkaError.PRODUCER_FENCED,  # type: ignore[attr-defined]
                KafkaError.INVALID_PRODUCER_EPOCH) else f"fatal producer error: {err}"
            logger.error("transaction failed fatally: %s", exc)
            return
        logger.warning("batch %d: transaction failed (%s); aborting and rewinding", seq, exc)
        self.metrics.transactions.labels(result="aborted").inc()
        self.metrics.batch_failures.labels(stage="transaction").inc()
        try:
            p.abort_transaction(self.w.transaction_timeout_s)
        except Exception as abort_exc:  # noqa: BLE001
            self.fatal = f"abort failed: {abort_exc}"
            logger.error("abort_transaction failed: %s", abort_exc)
            return
        self._seek(first)

    # ------------------------------------------------------------------ failures
    def _scoring_failed(self, first: dict[int, int]) -> None:
        self.failures += 1
        if self.exactly_once:
            self._finish_transaction(current_first=first)  # earlier batches: commit them
        else:
            self._drain(commit_sync=False)  # earlier batches are fine: commit them
        if self.failures > self.w.max_scoring_retries:
            self.fatal = f"scoring failed {self.failures} times in a row"
            return
        self._seek(first)
        time.sleep(min(5.0, 0.2 * 2 ** self.failures))

    def _seek(self, offsets: dict[int, int]) -> None:
        from confluent_kafka import KafkaException, TopicPartition  # noqa: PLC0415

        for p, o in offsets.items():
            if p not in self.assigned:
                continue
            try:
                self.consumer.client.seek(TopicPartition(self.topics.events, p, o))
            except KafkaException as exc:
                logger.warning("seek %s[%d] to %d failed: %s", self.topics.events, p, o, exc)

    # ------------------------------------------------------------------ backpressure
    def _backpressure(self, stop: threading.Event) -> None:
        """Pause fetching while the producer queue is above its high mark."""
        p = self.producer.client
        high = int(self.w.producer_queue_max_messages * self.w.queue_high_fraction)
        if len(p) < high:
            return
        c = self.consumer.client
        parts = c.assignment()
        c.pause(parts)
        self.metrics.paused.set(1)
        logger.info("producer queue at %d messages: pausing %d partitions", len(p), len(parts))
        try:
            while len(p) > high // 2 and not stop.is_set():
                p.poll(0.05)
                if not self.exactly_once:
                    self._settle()
        finally:
            c.resume(parts)
            self.metrics.paused.set(0)


__all__ = ["StreamWorker", "DLQ_REASONS"]
