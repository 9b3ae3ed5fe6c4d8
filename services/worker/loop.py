"""The worker's main loop: consume a micro-batch, decode, score, produce, commit.

Delivery guarantees
-------------------
The loop consumes, decodes and scores a batch and hands it to a committer
(:mod:`segstream.services.worker.committers`): :class:`AtLeastOnceCommitter` (batches in
flight, delivered offsets, paced commits, rewinds on a failed delivery) or
:class:`ExactlyOnceCommitter` (one transaction per batch, committed in a transaction thread
while the next batch is scored). The loop itself knows neither protocol.

Failures
--------
A bad *value* never reaches the loop as an exception: :meth:`EventDecoder.decode` turns each
into its DLQ record. When *scoring* a batch raises, the batch is bisected (:func:`_bisect`)
to the events that fail alone; each goes to the DLQ as ``scoring_error`` (header
``segstream.dlq.exception``: the exception type) and the others are scored and produced in
the same batch, committed as usual. If more than ``max_failed_share`` of the events scored fail
(over the batch, or over the last ``1 / max_failed_share`` events when batches are smaller:
see :meth:`StreamWorker._allowed_failures`), the bundle is judged broken: earlier batches are
finished (delivered and committed / their transaction committed), nothing of this batch is
produced or committed and the consumer is rewound to its first offsets, every assigned
partition is paused (the worker stays in the group: nobody else takes its partitions to fail
the same way), ``/readyz`` fails, one ``scoring_failed`` alert goes out, and the loop waits for
a new bundle, then resumes where the batch began. A failure no single event reproduces is
rewound and retried ``max_scoring_retries`` times, after which the worker exits non-zero.

Every produced record fits ``message.max.bytes`` (DLQ copies are cut, stats records split).
A record refused by ``produce()`` itself (not a full queue, which is waited out) counts as a
failed delivery: at-least-once rewinds every batch in flight and commits none of them;
exactly-once aborts the transaction and rewinds. Either backs off (0.5 s doubling, at most
30 s) and gives up after ``max_delivery_retries`` / ``max_transaction_retries`` failures in
a row: not ready, exit non-zero, nothing committed past an undelivered record.

Partition revocation happens inside ``consume()``, i.e. between batches: the committer
finishes and commits what it holds first (:meth:`Committer.on_revoke`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import math
import operator
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka import Message

from segstream.services.worker.committers import (
    Batch,
    Committer,
    ConsumerOffsets,
    ProduceError,
    make_committer,
)
from segstream.services.worker.committers import describe as _describe
from segstream.services.worker.decode import (
    DLQ_REASONS,
    SCORING_ERROR,
    DecodedBatch,
    EventDecoder,
)
from segstream.services.worker.event_time import EventTimeGuard, stats_max_slices
from segstream.services.worker.kafka_io import producer_config
from segstream.services.worker.metrics import WorkerMetrics
from segstream.services.worker.records import (
    RECORD_OVERHEAD_BYTES,
    dlq_record,
    encode_predictions,
    exception_name,
    utc_now_iso,
)
from segstream.services.worker.stats import batch_stats_records
from segstream.shared.scoring import Scorer
from segstream.shared.settings import Settings

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


_SECOND = operator.itemgetter(1)


class _Scored:
    """A batch's scores and its encoded prediction and stats records."""

    __slots__ = ("dlq_counts", "ids", "preds", "scores", "stats")

    def __init__(
        self,
        ids: list[Any],
        preds: list[bytes],
        stats: list[bytes],
        scores: dict[str, np.ndarray],
        dlq_counts: collections.Counter[str],
    ) -> None:
        self.ids = ids
        self.preds = preds
        self.stats = stats
        self.scores = scores
        self.dlq_counts = dlq_counts


def _take(decoded: DecodedBatch, rows: np.ndarray) -> DecodedBatch:
    """The valid rows ``rows`` (positions in ``decoded.valid``) of a decoded batch, with its
    rejected entries (the stats' DLQ counts); object columns read-only, as decoded (their
    factorisation is not carried over: a CategoryColumn computes its own on use)."""
    columns = {}
    for k, col in decoded.columns.items():
        sub = col[rows]
        if sub.dtype == object:
            sub.flags.writeable = False
        columns[k] = sub
    text = decoded.event_time_text
    return DecodedBatch(
        columns, decoded.valid[rows], list(decoded.rejected), [text[i] for i in rows.tolist()]
    )


def _bisect(
    score: Callable[[np.ndarray], Any], n: int, exc: Exception, allowed: int
) -> list[tuple[int, Exception]] | None:
    """The events that fail alone, by bisection of a batch of ``n`` whose scoring raised.

    Breadth first: every failing part is halved and each half scored (``score(rows)`` with
    row positions; it raises when they fail), down to single events. Each failing part holds
    at least one failing event, so the search stops (None) as soon as the failing parts and
    events found exceed ``allowed``; a bundle that fails on everything is judged after
    about ``2 * allowed`` calls. Costs about ``2 k log2(n / k)`` calls for ``k`` failing
    events.

    Parameters
    ----------
    score : callable
        ``score(rows)`` with an int64 array of positions; raises for a failing part.
    n : int
        Events in the batch (it failed as a whole with ``exc``).
    exc : Exception
    allowed : int
        Most failing events accepted.

    Returns
    -------
    list of (int, Exception) or None
        The positions that fail alone with their exception, ascending; empty when no
        event fails alone (the failure needs several events together, or went away); None
        when more than ``allowed`` fail.
    """
    if n == 0:
        return []
    if allowed < 1:
        return None
    found: list[tuple[int, Exception]] = []
    level = [np.arange(n, dtype=np.int64)]
    if n == 1:  # does it fail again alone?
        level, found = [], _failures(score, level[0])
    while level:
        failing: list[np.ndarray] = []
        for i, rows in enumerate(level):
            mid = len(rows) // 2
            for half in (rows[:mid], rows[mid:]):
                if len(half) == 1:
                    found += _failures(score, half)
                    continue
                try:
                    score(half)
                except Exception:
                    failing.append(half)
            if len(found) + len(failing) + len(level) - i - 1 > allowed:
                return None
        level = failing
    return sorted(found, key=operator.itemgetter(0))


def _failures(score: Callable[[np.ndarray], Any], one: np.ndarray) -> list[tuple[int, Exception]]:
    """``[(event, exception)]`` when scoring the one event ``one`` raises, else ``[]``."""
    try:
        score(one)
    except Exception as e:
        return [(int(one[0]), e)]
    return []


def _offset_range(parts: np.ndarray, offs: np.ndarray) -> tuple[dict[int, int], dict[int, int]]:
    """Per partition of a batch, its first offset and the offset after its last one."""
    first: dict[int, int] = {}
    nxt: dict[int, int] = {}
    for p in np.unique(parts).tolist():
        o = offs[parts == p]
        first[p] = int(o.min())
        nxt[p] = int(o.max()) + 1
    return first, nxt


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
    on_broken : callable, optional
        ``on_broken(details)`` once per bundle judged broken, with the keyword arguments of
        :func:`segstream.shared.alerts.scoring_failed_alert` (the worker sends that alert).
    """

    def __init__(
        self,
        settings: Settings,
        consumer: Any,
        producer: Any,
        scorer: Scorer,
        metrics: WorkerMetrics,
        worker_id: str,
        take_new_scorer: Callable[[], Scorer | None] | None = None,
        on_broken: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.w = settings.worker
        self.topics = settings.topics
        self.consumer = consumer
        self.producer = producer
        self.metrics = metrics
        self.worker_id = worker_id
        self.take_new_scorer = take_new_scorer or (lambda: None)
        self.on_broken = on_broken or (lambda details: None)
        self.offsets = ConsumerOffsets(consumer, self.topics.events)
        #: Produces the batches and commits their offsets (the delivery guarantee).
        self.committer: Committer = make_committer(self.w, self.offsets, producer, metrics)
        self.seq = 0
        self.failures = 0
        self._fatal: str | None = None
        #: Why the bundle was judged broken (consumption stopped), or None.
        self.broken: str | None = None
        self.ready = threading.Event()
        # Scoring failures: (events scored when the batch ended, failing events) per batch
        # with failures, within the window of max_failed_share; events scored so far.
        self._failures_seen: collections.deque[tuple[int, int]] = collections.deque()
        self._failure_clock = 0
        share = self.w.max_failed_share
        self._min_window = math.ceil(1.0 / share - 1e-9) if share > 0 else 1
        self._alerted: set[str] = set()
        # Every record must fit the producer's message.max.bytes (what it is configured to).
        self.max_record_bytes = int(
            producer_config(settings, transactional_id=None)["message.max.bytes"]
        )
        self.max_stats_bytes = (
            self.max_record_bytes - RECORD_OVERHEAD_BYTES - len(settings.model.encode())
        )
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(self.w.score_threads, thread_name_prefix="score")
            if self.w.score_threads
            else None
        )
        #: Event-time sanity per source partition (out-of-range events to the DLQ).
        self.time_guard = EventTimeGuard(settings.monitor)
        self.stats_max_slices = stats_max_slices(settings.monitor)
        self._install(scorer)

    @property
    def assigned(self) -> set[int]:
        """The events partitions assigned to this worker."""
        return self.offsets.assigned

    @assigned.setter
    def assigned(self, partitions: set[int]) -> None:
        self.offsets.assigned = partitions

    @property
    def fatal(self) -> str | None:
        """Why the worker stops (not ready; :meth:`run` returns), or None: the loop's
        reason, else the committer's (``"fenced"``: a newer instance took over)."""
        return self._fatal if self._fatal is not None else self.committer.failed

    # ------------------------------------------------------------------ bundle
    def _install(self, scorer: Scorer) -> None:
        self.scorer = scorer
        # A scorer may compute its profile part in the pool while the loop counts the stats.
        self._score_parts = functools.partial(scorer.score_parts, executor=self._pool)
        self.decoder = EventDecoder(scorer.schema, self.w.max_event_bytes)
        self.id_field = scorer.schema.id_field
        self.time_field = scorer.schema.time_field
        self.contribution_names = (
            list(scorer.contribution_names) if self.w.include_contributions else None
        )
        self.metrics.bundle_info.info(
            {"bundle_id": scorer.bundle_id, "model": scorer.model, "family": scorer.family}
        )
        logger.info("scoring with bundle %s", scorer.bundle_id[:12])

    def _maybe_swap(self) -> None:
        new = self.take_new_scorer()
        if new is not None:
            old = self.scorer.bundle_id
            self._install(new)
            logger.info("hot reload: bundle %s -> %s", old[:12], new.bundle_id[:12])
            if self.broken is not None:
                self._recover()

    def on_delivery(self, err: Any, msg: Any) -> None:
        """The producer's delivery report (``on_delivery`` in its config), called by librdkafka
        for failed records only (``delivery.report.only.error``): the committer's."""
        self.committer.on_delivery(err, msg)

    # ------------------------------------------------------------------ rebalance callbacks
    def on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.metrics.rebalances.labels(kind="assign").inc()
        self.assigned |= {p.partition for p in partitions}
        self.metrics.assigned_partitions.set(len(self.assigned))
        logger.info("assigned partitions %s", sorted(p.partition for p in partitions))

    def on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.metrics.rebalances.labels(kind="revoke").inc()
        gone = {p.partition for p in partitions}
        self.committer.on_revoke(gone)  # finish and commit before giving partitions up
        self.time_guard.forget(gone)  # a later owner bootstraps its watermark again
        self.assigned -= gone
        self.metrics.assigned_partitions.set(len(self.assigned))
        self.metrics.forget_partitions(self.topics.events, gone)
        logger.info("revoked partitions %s", sorted(gone))

    def on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self.metrics.rebalances.labels(kind="lost").inc()
        gone = {p.partition for p in partitions}
        self.committer.on_lost(gone)  # offsets of lost partitions must not be committed
        self.time_guard.forget(gone)
        self.assigned -= gone
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
                if self.broken is not None:
                    self._while_broken(max(timeout, 0.1))
                    continue
                wait = self.committer.backoff_until - time.monotonic()
                if wait > 0:  # after a failed delivery or transaction
                    stop.wait(wait)
                    continue
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
                self.committer.poll(stop)
                self.metrics.producer_queue.set(len(self.producer.client))
        finally:
            self.ready.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self.committer.close()
        if self.fatal == "fenced":
            logger.warning("producer fenced by a newer instance: exiting without committing")
            return EXIT_OK
        if self.fatal is not None:
            logger.error(
                "worker stopping after a fatal error (not ready, exit code %d): %s",
                EXIT_FAILED,
                self.fatal,
            )
            self.committer.drain()
            return EXIT_FAILED
        self.committer.drain()
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
        decoded = self.decoder.decode(list(map(Message.value, msgs)))  # never raises
        decoded, time_headers = self.time_guard.check(decoded, self.time_field, parts, offs)
        n_valid = decoded.n_valid
        failed: dict[int, str] = {}
        try:
            out = self._score(decoded, parts, n_msgs)
        except Exception as exc:
            isolated = self._isolate(decoded, parts, n_msgs, first, exc)
            if isolated is None:
                return  # rewound: a broken bundle, or a failure no event explains
            out, decoded, failed = isolated
        self._failure_clock += n_valid
        score_s = time.perf_counter() - t0
        self.failures = 0
        self.seq += 1
        m = self.metrics
        m.events_consumed.inc(len(msgs))
        m.batch_size.observe(len(msgs))
        m.scoring_batch_seconds.observe(score_s)
        m.scoring_event_seconds.observe(score_s / len(msgs), len(msgs))
        self.committer.produce_batch(
            Batch(self.seq, first, nxt, len(out.preds)),
            functools.partial(
                self._produce_all,
                msgs,
                decoded,
                out.ids,
                out.preds,
                out.stats,
                failed,
                time_headers,
            ),
        )
        if out.preds:
            lv = np.bincount(np.asarray(out.scores["fallback_level"], dtype=np.int64))
            for level, count in enumerate(lv.tolist()):
                if count:
                    m.predictions_by_fallback.labels(level=str(level)).inc(count)
        for reason, count in out.dlq_counts.items():
            m.dlq_records.labels(reason=reason).inc(count)
        now_ms = time.time() * 1000.0
        ts = np.fromiter(map(_SECOND, map(Message.timestamp, msgs)), dtype=np.float64, count=n_msgs)
        lat = (now_ms - ts[ts > 0]) / 1000.0
        m.end_to_end_latency.observe_many(lat)
        m.batches.inc()
        m.batch_seconds.observe(time.perf_counter() - t0)

    def _score(self, decoded: DecodedBatch, parts: np.ndarray, n_events: int) -> _Scored:
        """Score the valid rows of ``decoded`` and encode their prediction and stats records
        (everything of a batch that can raise on its events' content)."""
        scorer = self.scorer
        # Route and apply the segment models now; with worker.score_threads > 0 the pattern
        # classifier runs in the pool meanwhile (default 0: in this thread, see the
        # setting), and the stats, which do not need it, are counted in between.
        partial, finish = self._score_parts(decoded.columns) if decoded.n_valid else ({}, dict)
        dlq_counts = collections.Counter(r for _, r, _ in decoded.rejected)
        stats: list[bytes] = []
        if self.w.stats_enabled:
            # One record per monitor window (event time) so none straddles a boundary.
            stats = batch_stats_records(
                decoded.columns,
                partial,
                scorer.drift_reference,
                time_field=self.time_field,
                slice_s=self.settings.monitor.window_s,
                model=scorer.model,
                bundle_id=scorer.bundle_id,
                worker=self.worker_id,
                batch=self.seq,
                n_events=n_events,
                dlq_counts=dlq_counts,
                created_at=utc_now_iso(),
                max_unknown_keys=self.w.max_unknown_keys,
                max_unknown_key_chars=self.w.max_unknown_key_chars,
                max_record_bytes=self.max_stats_bytes,
                partitions=parts[decoded.valid],
                max_slices=self.stats_max_slices,
            )
        scores = finish()
        if decoded.n_valid:
            ids = decoded.columns[self.id_field].tolist()
            preds = encode_predictions(
                ids,
                scores,
                None if decoded.event_time_json is not None else decoded.event_time_text,
                event_time_json=decoded.event_time_json,
                model=scorer.model,
                bundle_id=scorer.bundle_id,
                interval_mass=scorer.interval_mass,
                scored_at=utc_now_iso(),
                contribution_names=self.contribution_names,
                family=scorer.family,
                threshold=scorer.threshold,
            )
        else:
            ids, preds = [], []
        return _Scored(ids, preds, stats, scores, dlq_counts)

    # ------------------------------------------------------------------ isolation
    def _isolate(
        self,
        decoded: DecodedBatch,
        parts: np.ndarray,
        n_events: int,
        first: dict[int, int],
        exc: Exception,
    ) -> tuple[_Scored, DecodedBatch, dict[int, str]] | None:
        """Scoring the batch raised ``exc``: find the events that fail alone (bisection) and
        score the others. Returns the outcome without the failing events (now ``rejected``
        as ``scoring_error``) and their input index -> exception type; or None when the batch
        was rewound instead: more than ``max_failed_share`` failed (the bundle is broken), or
        no event fails alone but the rest fails again (a failure of the batch, not of an
        event: the old retry path)."""
        self.metrics.batch_failures.labels(stage="score").inc()
        n = decoded.n_valid
        allowed = self._allowed_failures(n)
        logger.warning(
            "batch %d: scoring %d events raised %s; isolating the failing events "
            "(at most %d allowed)",
            self.seq,
            n,
            _describe(exc),
            allowed,
        )
        found = _bisect(
            lambda rows: self._score(_take(decoded, rows), parts, n_events), n, exc, allowed
        )
        if found is None:
            self._bundle_broken(first, decoded, exc, allowed)
            return None
        if not found:
            logger.error("batch %d: no event fails alone; retrying the batch", self.seq)
            self._scoring_failed(first)
            return None
        rows = np.array([r for r, _ in found], np.int64)
        keep = np.setdiff1d(np.arange(n, dtype=np.int64), rows)
        failed = {int(decoded.valid[r]): exception_name(e) for r, e in found}
        rest = _take(decoded, keep)
        rest.rejected = sorted(
            decoded.rejected
            + [(int(decoded.valid[r]), SCORING_ERROR, _describe(e)) for r, e in found]
        )
        try:
            out = self._score(rest, parts, n_events)
        except Exception:
            logger.exception("batch %d: scoring the %d other events failed", self.seq, len(keep))
            self._scoring_failed(first)
            return None
        self._failures_seen.append((self._failure_clock + n, len(found)))
        logger.warning(
            "batch %d: %d event(s) failed scoring (%s); dead-lettered as scoring_error, %d scored",
            self.seq,
            len(found),
            ", ".join(sorted(set(failed.values()))),
            len(keep),
        )
        return out, rest, failed

    def _allowed_failures(self, n: int) -> int:
        """How many of this batch's ``n`` events may fail scoring before the bundle counts as
        broken: ``max_failed_share`` of the window (this batch, or the last
        ``ceil(1 / max_failed_share)`` events when the batch is smaller) minus the failures
        already seen in it."""
        share = self.w.max_failed_share
        span = max(n, self._min_window)
        start = self._failure_clock + n - span
        while self._failures_seen and self._failures_seen[0][0] <= start:
            self._failures_seen.popleft()
        seen = sum(f for _, f in self._failures_seen)
        return max(-1, math.floor(share * span + 1e-9) - seen)

    def _bundle_broken(
        self, first: dict[int, int], decoded: DecodedBatch, exc: Exception, allowed: int
    ) -> None:
        """More events failed scoring than allowed: never dead-letter the stream. Earlier
        batches are finished (delivered and committed), this one is rewound (nothing of it is
        produced or committed), fetching stops, the worker is not ready, and one
        ``scoring_failed`` alert goes out, until a new bundle is loaded."""
        rewind = self.committer.finish_earlier(first)
        if rewind is not None:
            self.offsets.seek(rewind)
        bundle = self.scorer.bundle_id
        self.broken = (
            f"bundle {bundle[:12]} judged broken: scoring failed for more than "
            f"{self.w.max_failed_share:g} of the events ({_describe(exc)})"
        )
        self.ready.clear()
        self.metrics.bundle_broken.set(1)
        self._pause_all()
        logger.error(
            "%s; stopped consuming (offsets from %s are not committed) until a new "
            "bundle is loaded",
            self.broken,
            dict(sorted((rewind or first).items())),
        )
        if bundle not in self._alerted:
            self._alerted.add(bundle)
            span = max(decoded.n_valid, self._min_window)
            try:
                self.on_broken(
                    {
                        "model": self.scorer.model,
                        "bundle_id": bundle,
                        "worker": self.worker_id,
                        "failed": max(allowed, 0) + 1,
                        "scored": span,
                        "max_failed_share": self.w.max_failed_share,
                        "exception": exception_name(exc),
                        "reason": str(exc),
                    }
                )
            except Exception:
                logger.exception("could not send the scoring_failed alert")

    def _pause_all(self) -> None:
        c = self.consumer.client
        parts = c.assignment()
        if parts:
            c.pause(parts)

    def _while_broken(self, timeout: float) -> None:
        """Stay in the group without consuming: serve rebalances, pause what is assigned,
        and put back anything fetched (seek to it: nothing is skipped or committed)."""
        c = self.consumer.client
        self._pause_all()
        msgs = c.consume(self.w.batch_size, timeout)
        if msgs:
            back: dict[int, int] = {}
            for msg in msgs:
                if msg.error() is None:
                    p, o = msg.partition(), msg.offset()
                    back[p] = min(o, back.get(p, o))
            self.offsets.seek(back)
            self._pause_all()

    def _recover(self) -> None:
        """A new bundle after a broken one: resume fetching where the broken batch began."""
        logger.warning("new bundle %s loaded: resuming consumption", self.scorer.bundle_id[:12])
        self.broken = None
        self._failures_seen.clear()
        self.metrics.bundle_broken.set(0)
        c = self.consumer.client
        parts = c.assignment()
        if parts:
            c.resume(parts)
        if self.fatal is None:
            self.ready.set()

    def _produce_all(
        self,
        msgs: list[Any],
        decoded: Any,
        ids: list[Any],
        preds: list[bytes],
        stats: list[bytes],
        failed: dict[int, str] | None = None,
        time_headers: dict[int, list[tuple[str, bytes]]] | None = None,
    ) -> int:
        """Produce every output record of a batch (delivery failures reach the producer-wide
        :meth:`on_delivery`); returns how many were produced.

        A full queue (``BufferError``) is waited out. Any other error raised by
        ``produce()`` (``KafkaException``: ``MSG_SIZE_TOO_LARGE``, an unknown topic, a
        fatal producer; or a bad argument) is raised as :class:`ProduceError` and handled
        like a failed delivery by the caller."""
        p = self.producer.client
        produce = p.produce
        topic = self.topics.predictions
        # Produce until the queue is full, then poll and retry that record (never drop).
        records = zip(preds, ids, strict=True)
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
            except Exception as exc:
                raise ProduceError(topic, exc) from exc
        count = len(preds)
        self.metrics.paused.set(0)
        src = self.topics.events
        for idx, reason, detail in decoded.rejected:
            msg = msgs[idx]
            value, key, headers = dlq_record(
                msg.value(),
                msg.key(),
                msg.headers(),
                reason=reason,
                detail=detail,
                topic=src,
                partition=msg.partition(),
                offset=msg.offset(),
                worker=self.worker_id,
                max_value_bytes=self.w.dlq_max_value_bytes,
                max_record_bytes=self.max_record_bytes,
                exception=failed.get(idx) if failed else None,
                extra=time_headers.get(idx) if time_headers else None,
            )
            self._produce_one(self.topics.dlq, value, key, headers)
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
            except Exception as exc:
                raise ProduceError(topic, exc) from exc

    # ------------------------------------------------------------------ failures
    def _scoring_failed(self, first: dict[int, int]) -> None:
        self.failures += 1
        rewind = self.committer.finish_earlier(first)
        if self.failures > self.w.max_scoring_retries:
            self._set_fatal(f"scoring failed {self.failures} times in a row")
            return
        if rewind is not None:
            self.offsets.seek(rewind)
        time.sleep(min(5.0, 0.2 * 2**self.failures))

    def _set_fatal(self, reason: str) -> None:
        """Stop: not ready at once, the loop ends and :meth:`run` returns non-zero."""
        if self._fatal is None:
            self._fatal = reason
        self.ready.clear()

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
                self.committer.serve_deliveries()
        finally:
            c.resume(parts)
            self.metrics.paused.set(0)


__all__ = ["DLQ_REASONS", "StreamWorker"]
