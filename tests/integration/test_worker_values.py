"""Prediction *values* through the real path: a real trained bundle, a real worker, the broker.

The other worker tests use a fake scorer; here a small bundle is trained on real flights
(January 2013, :mod:`tests.train_helpers`), published to the store and served by
``run_worker`` with the default loader (``shared.scoring.load_bundle``). Every prediction record
the worker writes is compared field by field with :meth:`Bundle.score` on the same events,
computed here from the data frame (not from the worker's decoder), joined by event id.

Tolerances: integers (``segment``, ``fallback_level``, ``pattern``) and strings are compared
exactly; floats with ``rtol=1e-12, atol=1e-9``. The worker writes floats with orjson (shortest
round-trip repr), so a float read back is bit-identical to the one scored; the small
tolerance allows only for the numbers the flat decoder parses itself (it is correctly
rounded, so in practice the values are equal) and for summation order inside vectorised
kernels on batches of different sizes (the worker scores micro-batches, the reference one
frame).

The events include carriers, origins and destinations never seen in training (the fallback
along the tree, and ``unknown_key``) and rows with the optional weather features missing
(``null`` in the JSON, NaN in the reference columns).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from segstream.services.simulator.app import run_simulation
from segstream.services.simulator.replay import Replay
from segstream.services.worker.app import run_worker
from segstream.shared.kafka import ensure_topics
from segstream.shared.scoring import Bundle, load_bundle
from segstream.shared.settings import Settings, load_settings
from segstream.shared.store import ArtifactStore
from segstream.training.pipeline import train
from tests.integration.worker_helpers import worker_settings
from tests.kafka_helpers import consume_all
from tests.train_helpers import january_parquet, small_config

pytestmark = pytest.mark.integration

RTOL = 1e-12
ATOL = 1e-9
N_EVENTS = 3000


@pytest.fixture(scope="module")
def trained_store(flights_df, tmp_path_factory) -> tuple[Path, Bundle]:
    """A small real bundle trained once for this module; ``(store dir, loaded bundle)``."""
    tmp = tmp_path_factory.mktemp("values")
    store = tmp / "store"
    cfg = small_config(tmp, store)
    train(
        load_settings(cfg),
        data_path=str(january_parquet(flights_df, tmp)),
        progress=False,
        work_dir=str(tmp / "w"),
        report_dir=str(tmp / "r"),
    )
    s = load_settings(cfg)
    st = ArtifactStore(s.store)
    bundle_id = st.latest(s.model)
    assert bundle_id is not None
    return store, load_bundle(Path(store) / "bundles" / s.model / bundle_id)


def _events(flights_df: pd.DataFrame) -> pd.DataFrame:
    """February flights with unseen categories and missing optional features mixed in."""
    feb = flights_df[flights_df["event_time"].dt.month == 2].iloc[:N_EVENTS].copy()
    feb = feb.reset_index(drop=True)
    rng = np.random.default_rng(23)
    idx = rng.permutation(len(feb))
    unseen_carrier, unseen_origin, unseen_dest, no_weather = np.array_split(idx[:600], 4)
    feb.loc[unseen_carrier, "carrier"] = "ZZ"
    feb.loc[unseen_origin, "origin"] = "QQQ"
    feb.loc[unseen_dest, "dest"] = "XQX"
    weather = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
    feb.loc[no_weather, weather] = np.nan
    feb.loc[idx[600:700], "dep_delay"] = np.nan
    return feb


def _reference_columns(df: pd.DataFrame, bundle: Bundle) -> dict[str, np.ndarray]:
    """Columns for :meth:`Bundle.score` built from the frame (object strings, float64)."""
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


def _setup(kafka, prefix: str, tmp: Path, store: Path, guarantee: str) -> Settings:
    # Exactly-once also writes the optional per-feature contributions, compared as well.
    s = worker_settings(
        kafka.bootstrap,
        prefix,
        tmp,
        guarantee=guarantee,
        batch_size=400,
        include_contributions=guarantee == "exactly_once",
    )
    s = s.model_copy(update={"store": s.store.model_copy(update={"url": f"file://{store}"})})
    t = s.topics
    ensure_topics(
        s.broker, [t.events, t.predictions, t.dlq, t.stats, t.alerts, t.model_updates], t.partitions
    )
    return s


def _send(settings: Settings, df: pd.DataFrame) -> list[Any]:
    recs = list(Replay(df, settings.event_schema, outcomes=False, bad_fraction=0.0, seed=0))
    sim = settings.simulator.model_copy(update={"rate": 1e6, "speedup": None})
    summary = run_simulation(
        settings.model_copy(update={"simulator": sim}), progress=False, records=recs
    )
    assert summary.failed == 0, summary.line()
    return recs


def _close(got: Any, want: float) -> bool:
    if want is None or not np.isfinite(want):
        return got is None
    return got is not None and abs(got - want) <= ATOL + RTOL * abs(want)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_every_prediction_record_equals_bundle_score(
    kafka, topic_prefix, tmp_path, flights_df, trained_store, guarantee
):
    store, bundle = trained_store
    s = _setup(kafka, topic_prefix, tmp_path, store, guarantee)
    df = _events(flights_df)
    ref = bundle.score(_reference_columns(df, bundle))
    # The events must exercise the fallback and the unknown keys, or the test proves less.
    assert (ref["fallback_level"] > 0).any()
    assert sum(u is not None for u in ref["unknown_key"]) >= 150
    recs = _send(s, df)
    assert len(recs) == len(df)
    stop = threading.Event()
    registry = CollectorRegistry()
    code: list[int] = []
    t = threading.Thread(
        target=lambda: code.append(run_worker(s, stop=stop, registry=registry)), daemon=True
    )
    t.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = registry.get_sample_value("segstream_worker_events_consumed_total") or 0
            if done >= len(df):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        t.join(60)
    assert code == [0]
    msgs = consume_all(kafka.bootstrap, s.topics.predictions, len(df), 30, 1.0)
    dlq = consume_all(kafka.bootstrap, s.topics.dlq, 0, 3, 0.5)
    assert dlq == []
    by_id: dict[str, dict[str, Any]] = {}
    for m in msgs:
        rec = orjson.loads(m.value())
        assert m.key().decode() == rec["event_id"]
        if rec["event_id"] in by_id:  # at-least-once may redeliver: the copies must agree
            assert {k: v for k, v in rec.items() if k != "scored_at"} == {
                k: v for k, v in by_id[rec["event_id"]].items() if k != "scored_at"
            }
        by_id[rec["event_id"]] = rec
    # A run without a failure redelivers nothing, under either guarantee.
    assert len(msgs) == len(df)
    ids = df["event_id"].astype(str).tolist()
    assert set(by_id) == set(ids)
    times = pd.to_datetime(df["event_time"], utc=True)
    mismatches: list[str] = []
    for i, eid in enumerate(ids):
        rec = by_id[eid]
        want = {
            "segment": int(ref["segment"][i]),
            "fallback_level": int(ref["fallback_level"][i]),
            "pattern": int(ref["pattern"][i]),
        }
        for k, v in want.items():
            if rec[k] != v:
                mismatches.append(f"{eid} {k}: {rec[k]} != {v}")
        lo, hi = rec["interval"]
        for name, got, w in (
            ("prediction", rec["prediction"], ref["prediction"][i]),
            ("interval_low", lo, ref["interval_low"][i]),
            ("interval_high", hi, ref["interval_high"][i]),
            ("pattern_proba", rec["pattern_proba"], ref["pattern_proba"][i]),
        ):
            if not _close(got, float(w)):
                mismatches.append(f"{eid} {name}: {got!r} != {float(w)!r}")
        if rec["model"] != bundle.model or rec["bundle_id"] != bundle.bundle_id:
            mismatches.append(f"{eid}: model/bundle {rec['model']} {rec['bundle_id']}")
        if rec["interval_mass"] != bundle.interval_mass:
            mismatches.append(f"{eid}: interval_mass {rec['interval_mass']}")
        if s.worker.include_contributions:
            names = bundle.contribution_names
            got_c = rec["contributions"]
            if list(got_c) != names:
                mismatches.append(f"{eid}: contribution names {list(got_c)}")
            for j, name in enumerate(names):
                if not _close(got_c.get(name), float(ref["contributions"][i, j])):
                    mismatches.append(f"{eid} contribution {name}: {got_c.get(name)!r}")
        else:
            assert "contributions" not in rec
        if pd.Timestamp(rec["event_time"]) != times.iloc[i]:
            mismatches.append(f"{eid}: event_time {rec['event_time']} != {times.iloc[i]}")
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
