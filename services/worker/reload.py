"""Bundles for the worker: load from the artifact store, check, and hot-reload off the hot path.

:class:`BundleSource` turns a bundle id into a verified, compatible
:class:`~segstream.shared.scoring.Scorer`; the loader is injectable (``loader=``), defaulting to
:func:`segstream.shared.scoring.load_bundle` imported lazily. :class:`BundleWatcher` is a thread that
learns about new bundles from the model-updates topic and, as a fallback, from polling the
store's ``LATEST``; it loads and verifies them in the background and hands a ready scorer to the
worker loop, which swaps it in between two batches. A bundle that fails verification or does
not fit the configured event schema is refused: the old one stays, and ``on_rejected`` is called
(the worker produces a ``bundle_rejected`` alert).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from segstream.services.worker.decode import EventDecoder
from segstream.services.worker.records import warm_up_records
from segstream.services.worker.stats import batch_stats_records
from segstream.shared.errors import (
    BundleCompatibilityError,
    BundleIntegrityError,
    SchemaError,
    StoreError,
)
from segstream.shared.scoring import Scorer
from segstream.shared.settings import SchemaSettings
from segstream.shared.store import ArtifactStore

logger = logging.getLogger(__name__)

Loader = Callable[[Path], Scorer]


def default_loader(path: Path) -> Scorer:
    """:func:`segstream.shared.scoring.load_bundle` (imported on first use)."""
    from segstream.shared.scoring import load_bundle  # type: ignore[attr-defined]  # noqa: PLC0415

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
        problems.append(f"time field {bundle.time_field!r} != configured "
                        f"{configured.time_field!r}")
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

    def __init__(self, store: ArtifactStore, model: str, cache_dir: str | Path,
                 schema: SchemaSettings, loader: Loader | None = None) -> None:
        self.store = store
        self.model = model
        self.cache_dir = Path(cache_dir)
        self.schema = schema
        self.loader = loader or default_loader

    def latest_id(self) -> str | None:
        """The store's ``LATEST`` bundle id for the model, or None."""
        return self.store.latest(self.model)

    def load(self, bundle_id: str) -> Scorer:
        """Fetch (verified), load and check one bundle.

        Raises
        ------
        BundleIntegrityError
            The bundle does not verify (names the file).
        BundleCompatibilityError
            Other model, newer format, or a schema that does not fit the configured one.
        StoreError, FileNotFoundError
            The store cannot be read or has no such bundle (transient: retried later).
        """
        path = self.store.fetch(self.model, bundle_id, self.cache_dir)
        try:
            scorer = self.loader(path)
        except SchemaError as exc:
            raise BundleCompatibilityError(f"bundle {bundle_id[:12]}: {exc}") from None
        if scorer.bundle_id != bundle_id:
            raise BundleIntegrityError(
                f"bundle {bundle_id[:12]}: loaded bundle says it is {scorer.bundle_id[:12]}")
        if scorer.model != self.model:
            raise BundleCompatibilityError(
                f"bundle {bundle_id[:12]} is for model {scorer.model!r}, not {self.model!r}")
        problems = schema_problems(self.schema, scorer.schema)
        if problems:
            raise BundleCompatibilityError(
                f"bundle {bundle_id[:12]} has an incompatible schema: " + "; ".join(problems))
        try:
            warm_up(scorer)
        except Exception as exc:  # noqa: BLE001 - any failure here would fail every batch
            raise BundleCompatibilityError(
                f"bundle {bundle_id[:12]} fails to score a test batch: "
                f"{type(exc).__name__}: {exc}") from None
        return scorer


class UpdateFeed(Protocol):
    """Source of model-update records (the model-updates topic adapter)."""

    def poll_updates(self, timeout_s: float) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class BundleWatcher(threading.Thread):
    """Background thread: notice new bundles, load them, hand them to the loop.

    Parameters
    ----------
    source : BundleSource
    current_id : str
        The bundle the worker starts with.
    poll_s : float
        Poll ``LATEST`` this often.
    feed : UpdateFeed, optional
        Model-update records ``{model, bundle_id, uri, created_at}``.
    on_loaded : callable, optional
        ``on_loaded(result)`` with result in ``loaded``, ``rejected``, ``failed`` (metrics).
    on_rejected : callable, optional
        ``on_rejected(bundle_id, reason)`` (the worker produces a ``bundle_rejected`` alert).
    """

    def __init__(self, source: BundleSource, current_id: str, *, poll_s: float,
                 feed: UpdateFeed | None = None,
                 on_loaded: Callable[[str], None] | None = None,
                 on_rejected: Callable[[str, str], None] | None = None) -> None:
        super().__init__(name="bundle-watcher", daemon=True)
        self.source = source
        self.poll_s = poll_s
        self.feed = feed
        self.on_loaded = on_loaded or (lambda result: None)
        self.on_rejected = on_rejected or (lambda bid, reason: None)
        self._current = current_id
        self._last_latest: str | None = current_id
        self._pending: Scorer | None = None
        self._rejected: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ loop side
    def take_pending(self) -> Scorer | None:
        """The newly loaded scorer, once (None when there is nothing new)."""
        with self._lock:
            s, self._pending = self._pending, None
            return s

    def stop(self) -> None:
        self._stopping.set()

    # ------------------------------------------------------------------ thread side
    def run(self) -> None:
        next_poll = time.monotonic() + self.poll_s
        while not self._stopping.is_set():
            candidates: list[str] = []
            if self.feed is not None:
                try:
                    for rec in self.feed.poll_updates(0.5):
                        if rec.get("model") == self.source.model and rec.get("bundle_id"):
                            candidates.append(str(rec["bundle_id"]))
                except Exception:  # noqa: BLE001 - a broken feed must not stop reloads
                    logger.exception("model-updates feed failed; relying on LATEST polling")
                    self.feed = None
            else:
                self._stopping.wait(0.5)
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_s
                try:
                    latest = self.source.latest_id()
                except StoreError as exc:
                    logger.warning("cannot read LATEST: %s", exc)
                    latest = None
                if latest is not None and latest != self._last_latest:
                    self._last_latest = latest
                    candidates.append(latest)
            for bid in candidates:
                self.consider(bid)
        if self.feed is not None:
            self.feed.close()

    def consider(self, bundle_id: str) -> None:
        """Load ``bundle_id`` unless it is current, pending or already refused."""
        with self._lock:
            pending_id = self._pending.bundle_id if self._pending is not None else None
        if bundle_id in (self._current, pending_id) or bundle_id in self._rejected:
            return
        logger.info("loading bundle %s", bundle_id[:12])
        try:
            scorer = self.source.load(bundle_id)
        except (BundleIntegrityError, BundleCompatibilityError) as exc:
            self._rejected.add(bundle_id)
            logger.error("bundle %s refused, keeping %s: %s", bundle_id[:12],
                         self._current[:12], exc)
            self.on_loaded("rejected")
            self.on_rejected(bundle_id, str(exc))
            return
        except (StoreError, FileNotFoundError, OSError) as exc:
            logger.warning("bundle %s could not be fetched (will retry): %s", bundle_id[:12],
                           exc)
            self.on_loaded("failed")
            self._last_latest = None  # retry on the next LATEST poll
            return
        except Exception as exc:  # noqa: BLE001 - a loader bug must not kill the worker
            self._rejected.add(bundle_id)
            logger.exception("bundle %s failed to load, keeping %s", bundle_id[:12],
                             self._current[:12])
            self.on_loaded("rejected")
            self.on_rejected(bundle_id, f"load failed: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._pending = scorer
            self._current = bundle_id
        self.on_loaded("loaded")
        logger.info("bundle %s ready; swapping in at the next batch boundary", bundle_id[:12])


def parse_update(value: bytes | None) -> dict[str, Any] | None:
    """A model-update record, or None when the value is not a JSON object."""
    if not value:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


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
    reference = getattr(scorer, "drift_reference", None)
    if reference is not None:  # the stats kernel (large segments) too
        batch_stats_records(columns, scores, reference, time_field=scorer.schema.time_field,
                            slice_s=86_400, n_events=2, dlq_counts={}, model=scorer.model,
                            bundle_id=scorer.bundle_id, worker="warm-up", batch=0,
                            created_at="", max_unknown_keys=1)
    EventDecoder(scorer.schema, 1 << 16).warm_up()  # the flat-path kernels
    warm_up_records()  # and the record encoder's
