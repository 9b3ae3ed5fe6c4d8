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
from segstream.shared.bundle import load_components
from segstream.shared.drift import DriftReference

logger = logging.getLogger(__name__)


class ReferenceCache:
    """``cache(bundle_id) -> (DriftReference, Baseline)`` or None (bundle unavailable).

    Parameters
    ----------
    store : ArtifactStore-like
        With ``fetch(model, bundle_id, cache_dir) -> Path``.
    model : str
    cache_dir : str or Path
        Where fetched bundles are kept.
    retry_s : float
        A failed fetch is retried after this many seconds (not on every window).
    """

    def __init__(self, store: Any, model: str, cache_dir: str | Path,
                 retry_s: float = 60.0) -> None:
        self.store = store
        self.model = model
        self.cache_dir = Path(cache_dir)
        self.retry_s = retry_s
        self._ok: dict[str, tuple[DriftReference, Baseline]] = {}
        self._failed: dict[str, float] = {}
        self._lock = threading.Lock()

    def put(self, bundle_id: str, reference: DriftReference, baseline: Baseline) -> None:
        """Seed the cache (tests, or a bundle already loaded)."""
        self._ok[bundle_id] = (reference, baseline)

    def __call__(self, bundle_id: str) -> tuple[DriftReference, Baseline] | None:
        hit = self._ok.get(bundle_id)
        if hit is not None:
            return hit
        with self._lock:
            failed = self._failed.get(bundle_id)
            if failed is not None and time.monotonic() - failed < self.retry_s:
                return None
            try:
                path = self.store.fetch(self.model, bundle_id, self.cache_dir)
                loaded = load_components(path)
                ref = DriftReference.from_meta(loaded["drift_reference"].meta)
                base = Baseline.from_metrics(loaded.manifest.metrics)
            except Exception as exc:  # noqa: BLE001 - any store/bundle problem: not judged
                logger.error("cannot load the drift reference of bundle %s: %s", bundle_id,
                             exc)
                self._failed[bundle_id] = time.monotonic()
                return None
            self._ok[bundle_id] = (ref, base)
            self._failed.pop(bundle_id, None)
            logger.info("loaded drift reference of bundle %s", bundle_id[:12])
            return self._ok[bundle_id]
