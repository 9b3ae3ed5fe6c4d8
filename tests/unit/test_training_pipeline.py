from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segstream.shared.bundle import load_components
from segstream.shared.errors import DataError, SchemaError
from segstream.shared.scoring import load_bundle
from segstream.shared.settings import load_settings
from segstream.training.evaluation import conformal_offsets, interval_metrics, point_metrics
from segstream.training.pipeline import model_nodes, node_rows, split_by_time, train
from tests.train_helpers import january_parquet, small_config


def test_node_rows_expands_paths():
    anc = np.array([[2, 1, 0], [3, 1, 0], [4, 0, -1]])
    rows, nodes = node_rows(anc, np.array([0, 2, 1]))
    assert rows.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert nodes.tolist() == [2, 1, 0, 4, 0, 3, 1, 0]


def test_model_nodes_fall_back_to_nearest_usable_ancestor():
    parent = np.array([-1, 0, 1, 1, 0])
    usable = np.array([True, False, True, False, True])
    assert model_nodes(parent, usable).tolist() == [0, 0, 2, 0, 4]


def test_point_and_interval_metrics_by_hand():
    m = point_metrics(np.array([1.0, 2.0, np.nan, 4.0]), np.array([2.0, 2.0, 0.0, 2.0]))
    assert m["mae"] == pytest.approx(1.0) and m["n"] == 3
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 3))
    iv = interval_metrics(np.array([0.0, 5.0, 10.0]), np.zeros(3), np.full(3, 6.0))
    assert iv["coverage"] == pytest.approx(2 / 3) and iv["mean_width"] == 6.0


def test_conformal_offsets_cover_exchangeable_data_and_fall_back():
    rng = np.random.default_rng(0)
    parent = np.array([-1, 0, 0])
    n = 4000
    node = np.where(rng.random(n) < 0.995, 1, 2)  # node 2 is thin -> uses the root's
    scale = np.where(node == 1, 1.0, 5.0)
    r = rng.normal(size=n) * scale
    groups = np.c_[node, np.zeros(n, int)]
    lo, hi, src = conformal_offsets(r, groups, parent, 0.8, min_rows=50)
    assert src.tolist() == [0, 1, 0]
    assert lo[2] == lo[0] and hi[2] == hi[0]
    fresh = rng.normal(size=20000)
    cov = np.mean((fresh >= lo[1]) & (fresh <= hi[1]))
    assert abs(cov - 0.8) < 0.02
    assert lo[1] == pytest.approx(-1.2816, abs=0.1) and hi[1] == pytest.approx(1.2816, abs=0.1)


def test_split_by_time_and_empty_slice_error(flights_df, flights_config):
    s = load_settings(flights_config)
    jan = flights_df[flights_df["event_time"].dt.month == 1]
    import datetime as dt

    a, b, c = split_by_time(jan, s.event_schema, dt.date(2013, 1, 19), dt.date(2013, 1, 24))
    assert (
        a["event_time"].max()
        < b["event_time"].min()
        <= b["event_time"].max()
        < c["event_time"].min()
    )
    assert len(a) + len(b) + len(c) == len(jan)
    with pytest.raises(DataError, match="test slice has no rows"):
        split_by_time(jan, s.event_schema, dt.date(2013, 1, 19), dt.date(2013, 2, 24))


@pytest.fixture(scope="module")
def trained(flights_df, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = small_config(tmp, tmp / "store")
    data = january_parquet(flights_df, tmp)
    result = train(
        load_settings(cfg),
        data_path=str(data),
        publish=True,
        report_dir=str(tmp / "reports"),
        progress=False,
        work_dir=str(tmp / "work"),
    )
    return result, tmp, data, cfg


def test_bundle_round_trip_scores_identical(trained, flights_df):
    result, _tmp, _data, _ = trained
    b = load_bundle(result.bundle_dir)
    ids = set(result.test_scores["event_id"])
    test = (
        flights_df[flights_df["event_id"].isin(ids)]
        .set_index("event_id")
        .loc[result.test_scores["event_id"]]
        .reset_index()
    )
    cols = {}
    for f in b.schema.event_fields:
        s = test[f.name]
        if f.type == "datetime":
            cols[f.name] = s.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
        elif f.type in ("float", "int", "bool"):
            cols[f.name] = s.to_numpy(np.float64)
        else:
            cols[f.name] = s.to_numpy(object)
    out = b.score(cols)
    np.testing.assert_allclose(
        out["prediction"], result.test_scores["prediction"], rtol=1e-12, atol=1e-9
    )
    np.testing.assert_allclose(
        out["interval_low"], result.test_scores["interval_low"], atol=1e-9, rtol=1e-12
    )
    np.testing.assert_allclose(
        out["interval_high"], result.test_scores["interval_high"], atol=1e-9, rtol=1e-12
    )
    np.testing.assert_allclose(
        out["contributions"].sum(axis=1), out["prediction"], rtol=1e-9, atol=1e-9
    )
    assert out["pattern_proba"].min() > 0 and out["pattern_proba"].max() <= 1
    # unknown key combinations are named; trained ones are not
    one = {k: v[:2].copy() for k, v in cols.items()}
    one["dest"][1] = "ZZZ"
    keys = b.unknown_keys(one, 2)
    train_combo = set(map(tuple, b._known_keys))
    first = tuple(str(one[c][0]) for c in b.key_columns)
    assert (keys[0] is None) == (first in train_combo)
    assert keys[1] == ",".join(f"{c}={one[c][1]}" for c in b.key_columns)


def test_manifest_metrics_and_components(trained):
    result, *_ = trained
    m = result.manifest
    assert set(m.components) == {
        "partitioner",
        "segment_models",
        "profiles",
        "scoring",
        "drift_reference",
    }
    t = m.metrics["test"]
    for k in ("partitioned", "global_linear", "global_xgboost"):
        assert t[k]["n"] > 1000 and np.isfinite(t[k]["mae"])
    assert 0.5 < t["interval"]["coverage"] <= 1.0
    assert sum(t["fallback_share"].values()) == pytest.approx(1.0)
    assert {"accuracy", "auroc_weighted_ovr", "log_loss"} <= set(t["classifier"])
    assert set(m.timings) >= {"load", "partition", "segment_models", "profiles"}
    assert m.data["rows_train"] > 0 and len(m.data["fingerprint"]) == 64
    # Secrets are masked in the manifest (Settings.public_dump): null when unset.
    assert m.config["store"]["s3_secret"] is None
    assert m.config["broker"]["security"]["password"] is None


def test_partitioned_model_beats_the_global_linear_model_on_the_test_slice(trained):
    """Quality guard on real flights (the packaged config, small variant: train Jan 1-19,
    test Jan 25-31): the per-segment models' MAE is below the one global linear model's on
    the same test rows (measured 13.29 vs 13.56 minutes, n=5719), and below XGBoost's."""
    t = trained[0].manifest.metrics["test"]
    assert t["partitioned"]["n"] == t["global_linear"]["n"] > 1000
    assert t["partitioned"]["mae"] < t["global_linear"]["mae"]
    assert t["partitioned"]["mae"] < t["global_xgboost"]["mae"]


def test_flights_quality_guards(tmp_path):
    """Quality guards on the packaged flights config (train January-August, calibrate the
    intervals on September, test October-December; about 20 s): the partitioned model's test
    MAE is below the global linear model's, and the intervals' empirical coverage is within
    0.05 of the nominal mass the config states (``training.interval_mass``, 0.8).

    On the small January config the conformal offsets calibrated on five days under-cover the
    week after (0.73 for 0.8, a shift in the weather, not a bug); the guard runs on the
    config users train with."""
    settings = load_settings(None)
    settings = settings.model_copy(
        update={"store": settings.store.model_copy(update={"url": f"file://{tmp_path / 's'}"})}
    )
    result = train(
        settings,
        publish=False,
        progress=False,
        work_dir=str(tmp_path / "w"),
        report_dir=str(tmp_path / "r"),
    )
    t = result.manifest.metrics["test"]
    assert t["partitioned"]["n"] > 80_000
    assert t["partitioned"]["mae"] < t["global_linear"]["mae"], t
    iv = t["interval"]
    assert iv["mass"] == settings.training.interval_mass == 0.8
    assert abs(iv["coverage"] - iv["mass"]) <= 0.05, iv


def test_published_and_report_written(trained):
    result, tmp, *_ = trained
    assert result.uri and result.uri.endswith(result.manifest.bundle_id)
    assert (tmp / "store" / "bundles" / "flights" / "LATEST").exists()
    assert not result.update_sent  # no broker at 127.0.0.1:1: the event is skipped, logged
    html = result.report_path.read_text()
    assert html.count("data:image/png;base64,") >= 4
    for section in (
        "Which model is better?",
        "Drivers",
        "Outcome patterns",
        "Intervals",
        "Drift reference",
    ):
        assert section in html


def test_loaded_components_have_no_object_arrays(trained):
    result, *_ = trained
    loaded = load_components(result.bundle_dir)
    for comp in loaded.components.values():
        for a in comp.arrays.values():
            assert a.dtype != object


def test_missing_column_in_config_is_named(trained, tmp_path):
    _, _tmp, data, _ = trained
    cfg = small_config(tmp_path, tmp_path / "store")
    import yaml

    doc = yaml.safe_load(cfg.read_text())
    doc["training"]["regression"]["features"] = ["dep_delay", "no_such_column"]
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(SchemaError, match="no_such_column"):
        train(
            load_settings(cfg),
            data_path=str(data),
            publish=False,
            progress=False,
            work_dir=str(tmp_path / "w"),
        )


def test_target_without_finite_values_is_data_error(trained, tmp_path):
    _, _tmp, data, _ = trained
    df = pd.read_parquet(data)
    df["arr_delay"] = np.nan
    bad = tmp_path / "bad.parquet"
    df.to_parquet(bad)
    cfg = small_config(tmp_path, tmp_path / "store")
    with pytest.raises(DataError, match="finite target 'arr_delay'"):
        train(
            load_settings(cfg),
            data_path=str(bad),
            publish=False,
            progress=False,
            work_dir=str(tmp_path / "w"),
        )


def test_training_the_same_data_and_config_again_publishes_nothing(trained, tmp_path):
    """Same data, same config: the same bundle id (created_at and timings differ and are
    outside it); the store already holds it, so LATEST stays where an operator put it (here:
    rolled to another bundle) and no model update is sent."""
    from segstream.shared.store import ArtifactStore
    from tests.fakes import write_fake_bundle

    first, _tmp, data, cfg = trained
    settings = load_settings(cfg)
    store = ArtifactStore(settings.store)
    other = write_fake_bundle(tmp_path / "other", settings.event_schema, model=settings.model)
    store.publish(other)
    assert store.latest(settings.model) == other.name
    again = train(
        settings,
        data_path=str(data),
        publish=True,
        report_dir=str(tmp_path / "reports"),
        progress=False,
        work_dir=str(tmp_path / "work"),  # a fresh staging directory
    )
    assert again.manifest.bundle_id == first.manifest.bundle_id
    assert again.manifest.created_at != first.manifest.created_at
    assert again.uri == first.uri and not again.latest_moved and not again.update_sent
    assert store.latest(settings.model) == other.name
    stored = store.read_manifest(settings.model, first.manifest.bundle_id)
    assert stored.created_at == first.manifest.created_at  # the stored copy is kept
    assert first.latest_moved
