from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.shared.settings import ENV_DELIMITER, ENV_PREFIX
from tests.train_helpers import january_parquet, small_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
SEED_ENV = f"{ENV_PREFIX}TRAINING{ENV_DELIMITER}SEED"


def segstream(*args: str, timeout: float = 600, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "segstream", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def setup(flights_df, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return tmp, small_config(tmp, tmp / "store"), january_parquet(flights_df, tmp)


def _train(setup, *extra, env: dict[str, str] | None = None):
    tmp, cfg, data = setup
    r = segstream(
        "train",
        "--config",
        str(cfg),
        "--data",
        str(data),
        "--quiet",
        "--report-dir",
        str(tmp / "reports"),
        *extra,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line.split()[0])
    return r, out


def test_train_publish_list_inspect_promote_explain(setup, flights_df):
    tmp, cfg, _ = setup
    r1, out1 = _train(setup)
    assert len(out1["bundle_id"]) == 64 and "test MAE partitioned=" in r1.stdout
    assert Path(out1["report"]).is_file()
    # a second bundle trained with another seed (a setting from the environment): another id
    _r2, out2 = _train(setup, "--work-dir", str(tmp / "w2"), env={SEED_ENV: "7"})
    ids = [out1["bundle_id"], out2["bundle_id"]]
    assert ids[0] != ids[1]

    r = segstream("bundle", "list", "--config", str(cfg))
    assert r.returncode == 0
    listed = [line for line in r.stdout.splitlines() if line[:12] in {i[:12] for i in ids}]
    assert len(listed) == 2
    assert listed[-1].rstrip().endswith("*")  # the newest is LATEST

    r = segstream("bundle", "inspect", "--config", str(cfg))
    assert r.returncode == 0 and "partitioned" in r.stdout and "global_xgboost" in r.stdout

    r = segstream("bundle", "promote", "--config", str(cfg), ids[0][:10])
    assert r.returncode == 0 and f"-> {ids[0]}" in r.stdout
    assert json.loads((tmp / "store/bundles/flights/LATEST").read_text())["bundle_id"] == ids[0]

    from segstream.shared.events import encode_events
    from segstream.shared.settings import load_settings

    schema = load_settings(cfg).event_schema
    ev = flights_df[flights_df["event_time"].dt.month == 1].iloc[[-5]]
    (tmp / "event.json").write_bytes(encode_events(ev, schema)[0][1])
    r = segstream(
        "explain",
        "--config",
        str(cfg),
        "--event",
        str(tmp / "event.json"),
        "--plot",
        str(tmp / "event.png"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "= prediction" in r.stdout and "fallback level" in r.stdout
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("  ")]
    contrib = {ln[0]: float(ln[-1]) for ln in lines if ln[0] != "="}
    pred = float(next(ln[-1] for ln in lines if ln[0] == "="))
    assert sum(contrib.values()) == pytest.approx(pred, abs=0.01)
    assert (tmp / "event.png").stat().st_size > 10_000


def test_train_errors_are_one_line(setup, tmp_path):
    _tmp, cfg, _data = setup
    r = segstream("train", "--config", str(cfg), "--data", str(tmp_path / "nope.parquet"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nope.parquet: no Parquet file matches" in r.stderr
    r = segstream("train", "--config", str(cfg), "--data", str(tmp_path / "nope.csv"))
    assert r.returncode == 2 and "data file not found" in r.stderr and "Traceback" not in r.stderr
    r = segstream("bundle", "promote", "--config", str(cfg), "deadbeef")
    assert r.returncode == 2 and "not found" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("event_id,event_time\nx,not-a-time\n")
    r = segstream("train", "--config", str(cfg), "--data", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr
