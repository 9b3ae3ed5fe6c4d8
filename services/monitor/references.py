"""Drift references and test-time figures per bundle, fetched from the store and cached.

Stats and predictions name the bundle that produced them (``bundle_id``); a window is judged
against *that* bundle's frozen reference and test figures, so a hot reload in the middle of a
window never compares counts binned by one bundle with another bundle's reference.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from segstream.services.monitor.performance import Baseline
from segstream.shared.bundle import check_bundle_id, is_bundle_id, load_components
from segstream.shared.drift import DriftReference
from segstream.shared.errors import BundleIdError
from segstream.shared.reloads import Backoff, ReloadFailures

logger = logging.getLogger(__name__)

#: Failed bundle ids remembered for their backoff (the oldest are forgotten beyond this).
MAX_FAILED = 1024


class ReferenceCache:
    """``cache(bundle_id) -> (DriftReference, Baseline)`` or None (bundle unavailable).

    The bundle id comes from a record (stats, predictions) and is checked
    (:func:`segstream.shared.bundle.is_bundle_id`) before anything is fetched; the store's
    :meth:`~segstream.shared.store.ArtifactStore.fetch` checks the manifest's id, its signature (with
    ``store.trusted_public_keys``) and every size before a component is read. A failure is
    reported through ``failures`` (logged, counted as
    ``segstream_bundle_reload_failures_total{reason}``, alerted once per cause: a
    ``bundle_rejected`` alert for a refused bundle) and retried with exponential backoff, from
    ``retry_initial_s`` up to ``retry_s``; meanwhile windows of that bundle are not judged.

    Parameters
    ----------
    store : ArtifactStore-like
        With ``fetch(model, bundle_id, cache_dir) -> Path``.
    model : str
    cache_dir : str or Path
        Where fetched bundles are kept.
    retry_s : float
        Longest wait before a failed bundle is tried again (seconds).
    failures : ReloadFailures, optional
        Where failures go (default: logged only).
    retry_initial_s : float
        First wait after a failure (seconds).
    """

    def __init__(
        self,
        store: Any,
        model: str,
        cache_dir: str | Path,
        retry_s: float = 60.0,
        failures: ReloadFailures | None = None,
        retry_initial_s: float = 5.0,
    ) -> None:
        self.store = store
        self.model = model
        self.cache_dir = Path(cache_dir)
        self.retry_s = retry_s
        self.retry_initial_s = retry_initial_s
        self.failures = failures or ReloadFailures(model, count=lambda reason: None)
        self._ok: dict[str, tuple[DriftReference, Baseline]] = {}
        self._failed: dict[str, tuple[float, Backoff]] = {}
        self._lock = threading.Lock()

    def put(self, bundle_id: str, reference: DriftReference, baseline: Baseline) -> None:
        """Seed the cache (tests, or a bundle already loaded)."""
        self._ok[bundle_id] = (reference, baseline)

    def __call__(self, bundle_id: str) -> tuple[DriftReference, Baseline] | None:
        hit = self._ok.get(bundle_id)
        if hit is not None:
            return hit
        if not is_bundle_id(bundle_id):
            try:
                check_bundle_id(bundle_id, "a record read by the monitor")
            except BundleIdError as exc:
                self.failures.failed(exc)
            return None
        with self._lock:
            failed = self._failed.get(bundle_id)
            if failed is not None and time.monotonic() < failed[0]:
                return None
            try:
                path = self.store.fetch(self.model, bundle_id, self.cache_dir)
                loaded = load_components(path)
                ref = DriftReference.from_meta(loaded["drift_reference"].meta)
                base = Baseline.from_metrics(loaded.manifest.metrics)
            except Exception as exc:
                self.failures.failed(exc, bundle_id)
                backoff = (
                    failed[1] if failed is not None else Backoff(self.retry_initial_s, self.retry_s)
                )
                self._failed.pop(bundle_id, None)
                self._failed[bundle_id] = (time.monotonic() + backoff.next_delay(), backoff)
                while len(self._failed) > MAX_FAILED:  # ids named by records: bounded
                    self._failed.pop(next(iter(self._failed)))
                return None
            self._ok[bundle_id] = (ref, base)
            if self._failed.pop(bundle_id, None) is not None:
                self.failures.recovered(
                    (
                        "store_unavailable",
                        "not_found",
                        "integrity",
                        "signature",
                        "incompatible",
                        "load_error",
                    ),
                    bundle_id,
                )
            logger.info("loaded drift reference of bundle %s", bundle_id[:12])
            return self._ok[bundle_id]
