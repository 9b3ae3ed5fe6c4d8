"""The worker benchmark's per-message baseline scorer is the same model as ``Bundle.score``."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

from segstream.shared.events import encode_events
from segstream.shared.scoring import load_bundle
from segstream.shared.settings import load_settings
from segstream.training.pipeline import train
from tests.train_helpers import january_parquet, small_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from per_message_scorer import PerMessageScorer, parity


@pytest.fixture(scope="module")
def bundle_dir(flights_df, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pm")
    cfg = load_settings(small_config(tmp, tmp / "store"))
    result = train(
        cfg,
        data_path=str(january_parquet(flights_df, tmp)),
        publish=False,
        report_dir=str(tmp / "reports"),
        progress=False,
        work_dir=str(tmp / "work"),
    )
    return result.bundle_dir, cfg


def _values(flights_df, cfg, n=3000):
    df = flights_df[flights_df["event_time"].dt.month == 2].iloc[:n]
    vals = [v for _, v in encode_events(df, cfg.event_schema)]
    # adversarial: unseen key values, missing routing and regression inputs, strings
    odd = []
    for i, edit in enumerate(
        [
            {"dest": "ZZZ"},
            {"carrier": "Q9", "origin": "XXX"},
            {"sched_dep_hour": None},
            {"dep_delay": None, "wind_speed": None},
            {"visib": "n/a", "distance": None},
            {"origin": None},
        ]
    ):
        ev = orjson.loads(vals[i])
        ev.update(edit)
        odd.append(orjson.dumps(ev))
    return vals + odd


def test_per_message_scorer_matches_bundle_score(bundle_dir, flights_df):
    path, cfg = bundle_dir
    bundle = load_bundle(path)
    check = parity(bundle, PerMessageScorer(str(path)), _values(flights_df, cfg))
    assert check["events"] >= 3002
    assert check["events"] + check["rejected_by_decoder"] == 3006
    for k in ("segment", "fallback_level", "pattern"):
        assert check[f"{k}_mismatches"] == 0, check
    for k in ("prediction", "interval_low", "interval_high", "pattern_proba"):
        assert check[f"max_abs_diff_{k}"] <= 1e-9, check


def test_parity_reports_a_different_model(bundle_dir, flights_df):
    path, cfg = bundle_dir
    pm = PerMessageScorer(str(path))
    pm.node_model = [(d, [c[0] + 1.0, *c[1:]], m, lo, hi) for d, c, m, lo, hi in pm.node_model]
    check = parity(load_bundle(path), pm, _values(flights_df, cfg, 200)[:200])
    assert check["max_abs_diff_prediction"] == pytest.approx(1.0)
