"""Binomial prediction *values* through the real path: a logistic bundle trained on real
flights, the real worker, the broker.

A small binomial bundle (``late = arr_delay >= 15``, the US DOT rule of
``config/flights_late.yaml``; January 2013, the small training setup of
:mod:`tests.train_helpers`) is published to the store and served by ``run_worker`` with the
default loader. Every prediction record is compared field by field with :meth:`Bundle.score`
on the same events, computed here from the data frame: ``probability`` (= ``prediction``),
``label``, the bundle's ``threshold``, ``family``, segment and fallback level, the null
interval and pattern. Tolerances as ``test_worker_values.py``: integers exactly, floats with
``rtol=1e-12, atol=1e-9``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pandas as pd
import pytest
import yaml
from prometheus_client import CollectorRegistry

from segstream.services.simulator.app import run_simulation
from segstream.services.simulator.replay import Replay
from segstream.services.worker.app import run_worker
from segstream.shared.contracts import Prediction
from segstream.shared.kafka import ensure_topics
from segstream.shared.scoring import Bundle, load_bundle
from segstream.shared.settings import Settings, load_settings
from segstream.shared.store import ArtifactStore
from segstream.shared.targets import derive_target
from segstream.training.pipeline import train
from tests.integration.worker_helpers import worker_settings
from tests.kafka_helpers import consume_all
from tests.train_helpers import january_parquet, small_config

pytestmark = pytest.mark.integration

RTOL = 1e-12
ATOL = 1e-9
N_EVENTS = 2000


def binomial_config(tmp: Path, store: Path) -> Path:
    """The small flights config with the flights_late target: ``late`` (0/1) derived from
    ``arr_delay >= 15``, per-segment logistic models, threshold by validation F1."""
    path = small_config(tmp, store)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = "flights_late"
    cfg["dataset"]["target_from"] = {"column": "arr_delay", "op": ">=", "value": 15}
    fields = [f for f in cfg["schema"]["fields"] if f["role"] != "target"]
    fields.append({"name": "late", "type": "int", "role": "target"})
    cfg["schema"]["fields"] = fields
    reg = cfg["training"]["regression"]
    reg.pop("method", None)  # huber/sigma_clip are gaussian only
    reg.update(family="binomial", threshold="f1", min_events=20)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def binomial_store(flights_df, tmp_path_factory) -> tuple[Path, Path, Bundle]:
    """``(config, store dir, loaded bundle)`` of a small binomial bundle trained once."""
    tmp = tmp_path_factory.mktemp("binomial-values")
    store = tmp / "store"
    cfg = binomial_config(tmp, store)
    train(
        load_settings(cfg),
        data_path=str(january_parquet(flights_df, tmp)),
        progress=False,
        work_dir=str(tmp / "w"),
        report_dir=str(tmp / "r"),
    )
    s = load_settings(cfg)
    bundle_id = ArtifactStore(s.store).latest(s.model)
    assert bundle_id is not None
    bundle = load_bundle(Path(store) / "bundles" / s.model / bundle_id)
    assert bundle.family == "binomial" and bundle.threshold is not None
    return cfg, store, bundle


def _events(flights_df: pd.DataFrame) -> pd.DataFrame:
    """February flights with an unseen carrier and missing weather mixed in."""
    feb = flights_df[flights_df["event_time"].dt.month == 2].iloc[:N_EVENTS].copy()
    feb = feb.reset_index(drop=True)
    rng = np.random.default_rng(7)
    idx = rng.permutation(len(feb))
    feb.loc[idx[:100], "carrier"] = "ZZ"
    weather = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
    feb.loc[idx[100:250], weather] = np.nan
    return feb


def _reference_columns(df: pd.DataFrame, bundle: Bundle) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    for f in bundle.schema.fields:
        if f.name not in df:
            continue
        if f.type == "string":
            cols[f.name] = df[f.name].astype(object).to_numpy()
        elif f.type in ("float", "int", "bool"):
            cols[f.name] = df[f.name].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            cols[f.name] = pd.to_datetime(df[f.name], utc=True).to_numpy()
    return cols


def _close(got: Any, want: float) -> bool:
    if want is None or not np.isfinite(want):
        return got is None
    return got is not None and abs(got - want) <= ATOL + RTOL * abs(want)


def test_binomial_prediction_records_equal_bundle_score(
    kafka, topic_prefix, tmp_path, flights_df, binomial_store
):
    cfg, store, bundle = binomial_store
    flights = worker_settings(kafka.bootstrap, topic_prefix, tmp_path, batch_size=400)
    s = load_settings(
        cfg,
        {
            "broker": {"bootstrap": kafka.bootstrap},
            "topics": flights.topics.model_dump(),
            "store": {"url": f"file://{store}"},
            "worker": flights.worker.model_dump(),
        },
    )
    _run(kafka, s, flights_df, bundle)


def _run(kafka: Any, s: Settings, flights_df: pd.DataFrame, bundle: Bundle) -> None:
    t = s.topics
    ensure_topics(
        s.broker, [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates], t.partitions
    )
    # the flights frame has arr_delay; the replay's outcome rows read the target (late)
    df = derive_target(_events(flights_df), s.dataset.target_from, s.event_schema.target)
    ref = bundle.score(_reference_columns(df, bundle))
    assert (ref["fallback_level"] > 0).any()
    assert set(np.unique(ref["label"])) == {0, 1}  # the threshold splits these events
    recs = list(Replay(df, s.event_schema, outcomes=False, bad_fraction=0.0, seed=0))
    sim = s.simulator.model_copy(update={"rate": 1e6, "speedup": None})
    summary = run_simulation(s.model_copy(update={"simulator": sim}), progress=False, records=recs)
    assert summary.failed == 0, summary.line()
    stop = threading.Event()
    registry = CollectorRegistry()
    code: list[int] = []
    th = threading.Thread(
        target=lambda: code.append(run_worker(s, stop=stop, registry=registry)), daemon=True
    )
    th.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = registry.get_sample_value("segstream_worker_events_consumed_total") or 0
            if done >= len(df):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        th.join(60)
    assert code == [0]
    info = registry.get_sample_value(
        "segstream_worker_bundle_info",
        {"bundle_id": bundle.bundle_id, "model": bundle.model, "family": "binomial"},
    )
    assert info == 1.0
    msgs = consume_all(kafka.bootstrap, t.predictions, len(df), 30, 1.0)
    assert consume_all(kafka.bootstrap, t.dlq, 0, 3, 0.5) == []
    decoder = msgspec.json.Decoder(Prediction)
    by_id = {}
    for m in msgs:
        decoder.decode(m.value())  # the contract
        rec = orjson.loads(m.value())
        by_id[rec["event_id"]] = rec
    ids = df["event_id"].astype(str).tolist()
    assert set(by_id) == set(ids)
    mismatches: list[str] = []
    for i, eid in enumerate(ids):
        rec = by_id[eid]
        want_int = {
            "segment": int(ref["segment"][i]),
            "fallback_level": int(ref["fallback_level"][i]),
            "pattern": -1,
            "label": int(ref["label"][i]),
        }
        for k, v in want_int.items():
            if rec[k] != v:
                mismatches.append(f"{eid} {k}: {rec[k]} != {v}")
        for name, got, w in (
            ("prediction", rec["prediction"], ref["prediction"][i]),
            ("probability", rec["probability"], ref["probability"][i]),
        ):
            if not _close(got, float(w)):
                mismatches.append(f"{eid} {name}: {got!r} != {float(w)!r}")
        if rec["probability"] is not None and rec["label"] != int(
            rec["probability"] >= bundle.threshold
        ):
            mismatches.append(f"{eid}: label {rec['label']} vs threshold {bundle.threshold}")
        fixed = (rec["family"], rec["threshold"], rec["interval"], rec["pattern_proba"])
        if fixed != ("binomial", bundle.threshold, [None, None], None):
            mismatches.append(f"{eid}: {fixed}")
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
