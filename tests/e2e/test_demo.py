from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil
import pytest

from segstream.shared.settings import load_settings
from segstream.training.pipeline import train
from tests.train_helpers import january_parquet, small_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def test_demo_end_to_end_counts_consistent_and_no_child_left(flights_df, tmp_path):
    """``segstream demo`` on a store that already has a (small) bundle: broker, two workers,
    simulator; every event id has exactly one prediction or DLQ record, the summary's counts
    add up and no child process survives."""
    cfg = small_config(tmp_path, tmp_path / "store")
    train(
        load_settings(cfg),
        data_path=str(january_parquet(flights_df, tmp_path)),
        progress=False,
        work_dir=str(tmp_path / "w"),
        report_dir=str(tmp_path / "r"),
    )
    env = {
        **os.environ,
        "SEGSTREAM_STORE__URL": f"file://{tmp_path / 'store'}",
        "SEGSTREAM_WORKER__BUNDLE_CACHE_DIR": str(tmp_path / "cache"),
    }
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "segstream",
            "demo",
            "--seconds",
            "20",
            "--rate",
            "1000",
            "--out",
            str(tmp_path / "demo"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.split("demo summary:", 1)[1])
    assert summary["events"] > 1000
    assert summary["consistent"], summary
    assert summary["predictions"] + summary["dlq"] == summary["events"]
    assert summary["dlq"] > 0 and set(summary["dlq_by_reason"]) <= {
        "empty",
        "too_large",
        "invalid_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "bad_time",
    }
    assert summary["children_left"] == []
    # Ids, not counts: the demo's workers run at-least-once (the default guarantee) and are
    # stopped with SIGTERM, which commits what was delivered before the consumer leaves; a
    # rebalance commits the same way before partitions are given up. Nothing is rewound in
    # such a run, so every event id produced is in the predictions or the DLQ exactly as
    # often as it was produced (one lost event plus one duplicate would fail here).
    keys = json.loads((tmp_path / "demo" / "keys.json").read_text())
    events = Counter(keys["events"])
    out = Counter(keys["predictions"]) + Counter(keys["dlq"])
    assert sum(events.values()) == summary["events"]
    missing, extra = events - out, out - events
    assert not missing and not extra, (
        f"{sum(missing.values())} event ids without an outcome (e.g. {list(missing)[:3]}), "
        f"{sum(extra.values())} extra (duplicates or unknown ids, e.g. {list(extra)[:3]})"
    )
    assert not set(keys["predictions"]) & set(keys["dlq"])  # one outcome per id
    assert summary["latency_p99_s"] is not None
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == []
    for name in ("broker.log", "worker-1.log", "worker-2.log", "simulator.log"):
        assert (tmp_path / "demo" / name).exists()
    import shutil

    if shutil.which("prometheus"):
        assert summary["prometheus"].startswith("http://127.0.0.1:")
        assert (tmp_path / "demo" / "prometheus.yml").exists()
    else:
        assert summary["prometheus"] is None
        assert any("prometheus not on the PATH" in n for n in summary["notes"])
