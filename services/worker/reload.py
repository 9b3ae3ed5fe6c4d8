"""Bundles for the worker: load from the artifact store, check, and hot-reload off the hot path.

:class:`BundleSource` turns a bundle id into a verified, compatible
:class:`~segstream.shared.scoring.Scorer`; the loader is injectable (``loader=``), defaulting to
:func:`segstream.shared.scoring.load_bundle` imported lazily. :class:`BundleWatcher` is a thread that
reads the store's ``LATEST`` (the single source of truth) every ``poll_s`` and at once when the
model-updates topic hints at a new bundle; it loads and verifies new bundles in the background
and hands a ready scorer to the worker loop, which swaps it in between two batches. A bundle
that fails verification (or its signature check) or does not fit the configured event schema
is refused: the old one stays and a ``bundle_rejected`` alert is sent. Every failure is
reported through :class:`~segstream.shared.reloads.ReloadFailures` and retried with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from segstream.services.worker.decode import EventDecoder
from segstream.services.worker.records import warm_up_records
from segstream.services.worker.stats import batch_stats_records
from segstream.shared.bundle import check_bundle_id
from segstream.shared.errors import (
    BundleCompatibilityError,
    BundleIntegrityError,
    LatestError,
    ModelUpdateError,
    SchemaError,
)
from segstream.shared.reloads import REJECTING_REASONS, Backoff, ReloadFailures
from segstream.shared.scoring import Scorer
from segstream.shared.settings import SchemaSettings
from segstream.shared.store import ArtifactStore, decode_model_update

logger = logging.getLogger(__name__)

Loader = Callable[[Path], Scorer]


def default_loader(path: Path) -> Scorer:
    """:func:`segstream.shared.scoring.load_bundle` (imported on first use)."""
    from segstream.shared.scoring import load_bundle  # type: ignore[attr-defined]

    return load_bundle(path)


def schema_problems(configured: SchemaSettings, bundle: SchemaSettings) -> list[str]:
    """Why events of the ``configured`` schema cannot be scored by a bundle of ``bundle``.

    Every event field the bundle reads must exist in the configured schema with the same type;
    the id and time fields must have the same names; a field the bundle requires must not be
    optional in the configured schema. An empty list means compatible.

    Examples
    --------
    >>> s = SchemaSettings(fields=[
    ...     {"name": "id", "type": "string", "role": "id"},
    ...     {"name": "t", "type": "datetime", "role": "time"},
    ...     {"name": "y", "type": "float", "role": "target"}])
    >>> schema_problems(s, s)
    []
    """
    problems = []
    if configured.id_field != bundle.id_field:
        problems.append(f"id field {bundle.id_field!r} != configured {configured.id_field!r}")
    if configured.time_field != bundle.time_field:
        problems.append(f"time field {bundle.time_field!r} != configured {configured.time_field!r}")
    have = {f.name: f for f in configured.event_fields}
    for f in bundle.event_fields:
        c = have.get(f.name)
        if c is None:
            problems.append(f"field {f.name!r} not in the configured schema")
        elif c.type != f.type:
            problems.append(f"field {f.name!r} is {f.type} in the bundle, {c.type} configured")
        elif f.required and not c.required:
            problems.append(f"field {f.name!r} is required by the bundle, optional configured")
    return problems


class BundleSource:
    """Fetch, verify, load and check bundles of one model.

    Parameters
    ----------
    store : ArtifactStore
    model : str
        Model name (bundles are stored under it).
    cache_dir : path-like
        Local directory for fetched bundles.
    schema : SchemaSettings
        The configured event schema; bundles must be compatible with it.
    loader : callable, optional
        ``loader(bundle_dir) -> Scorer``; default :func:`default_loader` (the real
        ``shared.scoring.load_bundle``). Tests inject a fake.
    """

    def __init__(
        self,
        store: ArtifactStore,
        model: str,
        cache_dir: str | Path,
        schema: SchemaSettings,
        loader: Loader | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.cache_dir = Path(cache_dir)
        self.schema = schema
        self.loader = loader or default_loader

    def latest_id(self) -> str | None:
        """The store's ``LATEST`` bundle id for the model (validated), or None.

        Raises
        ------
        LatestError
            ``LATEST`` is malformed.
        StoreError
            The store cannot be read.
        """
        return self.store.latest(self.model)

    def load(self, bundle_id: str) -> Scorer:
        """Fetch (verified), load and check one bundle.

        Raises
        ------
        BundleIdError
            ``bundle_id`` is not 64 lowercase hex characters (nothing is read).
        BundleIntegrityError
            The bundle does not verify (names the file); :class:`BundleSignatureError` when
            it is not signed by a trusted key (checked before any component is read).
        BundleCompatibilityError
            Other model, newer format, or a schema that does not fit the configured one.
        StoreError, FileNotFoundError
            The store cannot be read or has no such bundle (transient: retried later).
        """
        check_bundle_id(bundle_id, f"bundle of model {self.model!r}")
        path = self.store.fetch(self.model, bundle_id, self.cache_dir)
        try:
            scorer = self.loader(path)
        except SchemaError as exc:
            raise BundleCompatibilityError(f"bundle {bundle_id[:12]}: {exc}") from None
        if scorer.bundle_id != bundle_id:
            raise BundleIntegrityError(
                f"bundle {bundle_id[:12]}: loaded bundle says it is {scorer.bundle_id[:12]}"
            )
        if scorer.model != self.model:
            raise BundleCompatibilityError(
                f"bundle {bundle_id[:12]} is for model {scorer.model!r}, not {self.model!r}"
            )
        problems = schema_problems(self.schema, scorer.schema)
        if problems:
            raise BundleCompatibilityError(
                f"bundle {bundle_id[:12]} has an incompatible schema: " + "; ".join(problems)
            )
        try:
            warm_up(scorer)
        except Exception as exc:
            raise BundleCompatibilityError(
                f"bundle {bundle_id[:12]} fails to score a test batch: {type(exc).__name__}: {exc}"
            ) from None
        return scorer


class UpdateFeed(Protocol):
    """Source of model-update records (the model-updates topic adapter)."""

    topic: str

    def poll_updates(self, timeout_s: float) -> list[bytes | None]:
        """Raw values of the records that arrived (untrusted; decoded by the watcher)."""
        ...

    def close(self) -> None: ...


#: Outcomes of one load attempt (``segstream_worker_bundle_reloads_total{result}``).
LOADED, REJECTED, FAILED = "loaded", "rejected", "failed"


def _attempt(
    source: BundleSource, bundle_id: str, failures: ReloadFailures
) -> tuple[str, Scorer | None]:
    """Load one bundle; report a failure. Returns ``(result, scorer or None)``."""
    try:
        return LOADED, source.load(bundle_id)
    except Exception as exc:
        reason = failures.failed(exc, bundle_id)
        return (REJECTED if reason in REJECTING_REASONS else FAILED), None


def load_initial(
    source: BundleSource,
    stop: threading.Event,
    failures: ReloadFailures,
    *,
    on_loaded: Callable[[str], None] | None = None,
    wait_s: float = 1.0,
    backoff_max_s: float = 30.0,
) -> Scorer | None:
    """The store's ``LATEST`` bundle, waiting until there is a usable one (or ``stop``).

    A store outage or a missing bundle is retried with backoff; a refused bundle is not
    loaded again until ``LATEST`` moves. Each is reported through ``failures`` (logged,
    counted, alerted once).

    Returns
    -------
    Scorer or None
        None when ``stop`` was set first.

    Raises
    ------
    LatestError
        ``LATEST`` is malformed: a start-up error (one line on the command line).
    """
    on_loaded = on_loaded or (lambda result: None)
    backoff = Backoff(wait_s, backoff_max_s)
    refused: set[str] = set()
    announced = False
    while not stop.is_set():
        delay = wait_s
        try:
            bid = source.latest_id()
        except LatestError:
            raise
        except Exception as exc:
            failures.failed(exc)
            bid, delay = None, backoff.next_delay()
        else:
            failures.recovered(("store_unavailable",))
            if bid is None and not announced:
                logger.info(
                    "waiting for a bundle of model %r in %s", source.model, source.store.url
                )
                announced = True
        if bid is not None and bid not in refused:
            result, scorer = _attempt(source, bid, failures)
            on_loaded(result)
            if scorer is not None:
                return scorer
            if result == REJECTED:
                refused.add(bid)
            else:
                delay = backoff.next_delay()
        stop.wait(delay)
    return None


class BundleWatcher(threading.Thread):
    """Background thread: notice new bundles, load them, hand them to the loop.

    ``LATEST`` in the store is the only source of truth: it is read every ``poll_s`` seconds,
    and at once (at most every ``hint_min_interval_s``) when a record for this model arrives
    on the model-updates topic. The record's ids are never loaded: an old id, an unknown one
    or a path cannot choose the bundle. A bundle ``LATEST`` names that is not the current one
    is loaded; a refused one is not tried again while ``LATEST`` stays on it.

    The thread never dies: store outages, a malformed ``LATEST``, invalid model-updates
    records and refused bundles go to ``failures`` (logged, counted, alerted once per cause)
    and are retried with exponential backoff (``min(1, poll_s)`` doubling up to
    ``backoff_max_s``); any other exception of an iteration is reported the same way.

    Parameters
    ----------
    source : BundleSource
    current_id : str
        The bundle the worker starts with.
    poll_s : float
        Read ``LATEST`` this often (seconds).
    feed : UpdateFeed, optional
        Raw model-update records.
    failures : ReloadFailures, optional
        Where failures are reported (default: logged and not counted); its ``current`` is
        set to this watcher's current bundle.
    on_loaded : callable, optional
        ``on_loaded(result)`` with result in ``loaded``, ``rejected``, ``failed`` (metrics).
    backoff_max_s : float
        Longest wait between retries after failures (seconds).
    hint_min_interval_s : float
        Model-update records make ``LATEST`` be read at most this often (seconds).
    """

    def __init__(
        self,
        source: BundleSource,
        current_id: str,
        *,
        poll_s: float,
        feed: UpdateFeed | None = None,
        failures: ReloadFailures | None = None,
        on_loaded: Callable[[str], None] | None = None,
        backoff_max_s: float = 60.0,
        hint_min_interval_s: float = 1.0,
    ) -> None:
        super().__init__(name="bundle-watcher", daemon=True)
        self.source = source
        self.poll_s = poll_s
        self.feed = feed
        self.failures = failures or ReloadFailures(source.model, count=lambda reason: None)
        self.failures.current = lambda: self._current  # alerts name the bundle that stays
        self.on_loaded = on_loaded or (lambda result: None)
        self.hint_min_interval_s = hint_min_interval_s
        self._current = current_id
        self._pending: Scorer | None = None
        self._refused: str | None = None  # the LATEST bundle last refused
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._backoff = Backoff(min(1.0, poll_s), backoff_max_s)
        self._next_check = time.monotonic() + poll_s
        self._last_check = -1e18
        self._retry_at = -1e18  # no hint brings a read forward before this (backoff)
        self.iterations = 0

    # ------------------------------------------------------------------ loop side
    def take_pending(self) -> Scorer | None:
        """The newly loaded scorer, once (None when there is nothing new)."""
        with self._lock:
            s, self._pending = self._pending, None
            return s

    @property
    def current_id(self) -> str:
        """The bundle in use or about to be swapped in."""
        return self._current

    def stop(self) -> None:
        self._stopping.set()

    # ------------------------------------------------------------------ thread side
    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self.step()
                except Exception as exc:
                    self.failures.failed(exc)
                    self._retry_later()
                    self._stopping.wait(0.5)
        finally:
            if self.feed is not None:
                try:
                    self.feed.close()
                except Exception:
                    logger.exception("cannot close the model-updates feed")

    def step(self) -> None:
        """One iteration: take model-update hints (or wait), read ``LATEST`` when due."""
        self.iterations += 1
        if self.feed is not None:
            try:
                values = self.feed.poll_updates(0.5)
            except Exception:
                logger.exception("model-updates feed failed; relying on LATEST polling")
                self.feed = None
                values = []
            for value in values:
                self.hint(value)
        else:
            self._stopping.wait(0.5)
        if time.monotonic() >= self._next_check:
            self.check_latest()

    def hint(self, value: bytes | None) -> None:
        """A model-update record: if valid and for this model, read ``LATEST`` soon."""
        topic = getattr(self.feed, "topic", "model-updates")
        try:
            update = decode_model_update(value, f"topic {topic}")
        except ModelUpdateError as exc:
            self.failures.failed(exc)
            return
        if update.model != self.source.model:
            return
        now = time.monotonic()
        due = max(now, self._last_check + self.hint_min_interval_s, self._retry_at)
        logger.info("model update for bundle %s: re-reading LATEST", update.bundle_id[:12])
        self._next_check = min(self._next_check, due)

    def check_latest(self) -> None:
        """Read ``LATEST`` and load the bundle it names if that is new."""
        now = time.monotonic()
        self._last_check = now
        self._next_check = now + self.poll_s
        try:
            latest = self.source.latest_id()
        except Exception as exc:
            self.failures.failed(exc)
            self._retry_later()
            return
        self.failures.recovered(("store_unavailable", "latest_malformed"))
        with self._lock:
            pending_id = self._pending.bundle_id if self._pending is not None else None
        if latest != self._refused:
            self._refused = None
        if latest is None or latest in (self._current, pending_id, self._refused):
            self._backoff.reset()
            return
        logger.info("loading bundle %s", latest[:12])
        result, scorer = _attempt(self.source, latest, self.failures)
        self.on_loaded(result)
        if result == REJECTED:
            self._refused = latest
            logger.error("bundle %s refused, keeping %s", latest[:12], self._current[:12])
            self._backoff.reset()
        elif scorer is None:
            self._retry_later()
        else:
            with self._lock:
                self._pending = scorer
                self._current = latest
            self._backoff.reset()
            self.failures.recovered(("not_found", "store_unavailable"), latest)
            logger.info("bundle %s ready; swapping in at the next batch boundary", latest[:12])

    def _retry_later(self) -> None:
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        self._next_check = self._retry_at


def warm_up(scorer: Scorer) -> None:
    """Score a two-row batch so that numba's compiled kernels and XGBoost's predictor are
    loaded here (and the stats kernel run on its output), off the hot path, instead of in the first real batch (hundreds of
    milliseconds of latency otherwise). Row 0 has every optional field missing, row 1 holds
    zeros and empty strings; required fields are present in both, as the decoder guarantees.

    Raises whatever the scorer raises: a bundle that cannot score this cannot score events.
    """
    columns: dict[str, np.ndarray] = {}
    for f in scorer.schema.event_fields:
        if f.type in ("float", "int", "bool"):
            columns[f.name] = np.array([0.0 if f.required else np.nan, 0.0])
        elif f.type == "datetime":
            t0 = "2020-01-01T00:00:00" if f.required else "NaT"
            columns[f.name] = np.array([t0, "2020-01-01T00:00:00"], dtype="datetime64[ns]")
        else:
            columns[f.name] = np.array(["" if f.required else None, ""], dtype=object)
    scores = scorer.score(columns)
    # the stats kernel (large segments) too
    batch_stats_records(
        columns,
        scores,
        scorer.drift_reference,
        time_field=scorer.schema.time_field,
        slice_s=86_400,
        n_events=2,
        dlq_counts={},
        model=scorer.model,
        bundle_id=scorer.bundle_id,
        worker="warm-up",
        batch=0,
        created_at="",
        max_unknown_keys=1,
    )
    EventDecoder(scorer.schema, 1 << 16).warm_up()  # the flat-path kernels
    warm_up_records()  # and the record encoder's
