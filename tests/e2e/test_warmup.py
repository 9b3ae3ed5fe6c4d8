"""``segstream warmup`` fills an empty numba cache for the training and the worker kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.services.warmup import synthetic_events
from segstream.shared.settings import load_settings

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_synthetic_events_follow_the_schema():
    schema = load_settings(None).event_schema
    df = synthetic_events(schema, n=500)
    assert len(df) == 500 and df[schema.id_field].is_unique
    for f in schema.event_fields:
        assert f.name in df.columns
    assert df[schema.target].notna().all()
    span = df[schema.time_field].max() - df[schema.time_field].min()
    assert span.days >= 80  # covers the train, validation and test slices


def _cache_index_files() -> set[str]:
    """Names of the numba cache index files the test session's processes use: under
    ``NUMBA_CACHE_DIR`` when it is set, else in ``__pycache__`` beside the sources."""
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    roots = (
        [Path(cache_dir)] if cache_dir else [REPO / d for d in ("shared", "training", "services")]
    )
    return {p.name for root in roots if root.exists() for p in root.rglob("*.nbi")}


@pytest.mark.timeout(1300)  # a cold compile of every kernel: ~285 s on a quiet 2-core machine
def test_warmup_fills_the_numba_cache_the_suite_uses():
    """``segstream warmup`` writes every kernel module into the cache the rest of the suite then
    loads from. ``pytest_collection_modifyitems`` (tests/conftest.py) runs this test first, so
    on a fresh clone (CI) the cache is empty when it starts and the check below is a real one;
    the kernels are compiled once for the whole suite instead of once more into a throw-away
    cache (that copy cost about 285 s of CI time). On a warm cache the command must still
    succeed and name the cache."""
    before = _cache_index_files()
    r = subprocess.run(
        [sys.executable, "-m", "segstream", "--log-level", "WARNING", "warmup"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "kernels compiled into" in r.stdout
    indexed = {name.split("-")[0] for name in _cache_index_files()}
    for module in (
        "_groupby_kernels",
        "partitioner",
        "routing",
        "_forest",
        "linear",
        "_decode_kernels",
        "records",
        "stats",
        "scoring",  # the Poisson interval of Poisson bundles, whatever the configured family
    ):
        assert any(name.startswith(module) for name in indexed), (module, sorted(indexed))
    assert _cache_index_files() >= before  # warm-up never drops what was cached
