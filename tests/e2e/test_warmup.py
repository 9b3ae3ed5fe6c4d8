"""``segstream warmup`` fills an empty numba cache for the training and the worker kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from segstream.services.warmup import synthetic_events
from segstream.shared.settings import load_settings

pytestmark = pytest.mark.e2e


def test_synthetic_events_follow_the_schema():
    schema = load_settings(None).event_schema
    df = synthetic_events(schema, n=500)
    assert len(df) == 500 and df[schema.id_field].is_unique
    for f in schema.event_fields:
        assert f.name in df.columns
    assert df[schema.target].notna().all()
    span = df[schema.time_field].max() - df[schema.time_field].min()
    assert span.days >= 80  # covers the train, validation and test slices


def test_warmup_writes_the_kernels_into_an_empty_cache(tmp_path):
    cache = tmp_path / "numba"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    r = subprocess.run(
        [sys.executable, "-m", "segstream", "--log-level", "WARNING", "warmup"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"kernels compiled into {cache}" in r.stdout
    indexed = {p.name.split("-")[0] for p in cache.rglob("*.nbi")}
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
