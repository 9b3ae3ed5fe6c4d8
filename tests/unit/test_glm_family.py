"""Outcome families end to end on the training side (issue 18 part 2): settings, derived and
mapped targets, threshold criteria, reliability tables, the Poisson interval kernel, and a
binomial and a Poisson training run on synthetic data with a known segment structure whose
bundles must score like a numpy/scipy reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import yaml
from scipy import stats

from segstream.shared.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    load_components,
    verify_bundle_dir,
    write_bundle,
)
from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleIntegrityError, ConfigError, DataError, SchemaError
from segstream.shared.scoring import SCORE_COLUMNS, load_bundle, poisson_interval
from segstream.shared.settings import TargetRule, load_settings
from segstream.shared.targets import derive_target
from segstream.training.evaluation import (
    choose_threshold,
    classification_metrics,
    expected_calibration_error,
    reliability_table,
)
from segstream.training.pipeline import prepare_target, train
from tests.glm_helpers import ONE_CLASS_KEY, synthetic_config, synthetic_frame


# --------------------------------------------------------------------------- settings
def _config(tmp_path: Path, family: str, **regression) -> Path:
    return synthetic_config(tmp_path, family, **regression)


def test_family_settings_defaults_and_bad_combinations_name_the_key(tmp_path):
    s = load_settings(_config(tmp_path, "binomial"))
    rp = s.training.regression
    assert (rp.family, rp.method, rp.threshold, rp.labels) == ("binomial", "ols", "f1", None)
    assert load_settings(_config(tmp_path, "poisson")).training.regression.method == "ols"
    assert load_settings(_config(tmp_path, "gaussian")).training.regression.method == "huber"
    bad = [
        ({"method": "huber"}, "binomial", "training.regression.method 'huber'"),
        ({"method": "sigma_clip"}, "poisson", "training.regression.method 'sigma_clip'"),
        ({"threshold": 1.5}, "binomial", "training.regression.threshold must be in (0, 1)"),
        ({"threshold": "accuracy"}, "binomial", "training.regression.threshold"),
        ({"threshold": 0.3}, "gaussian", "training.regression.threshold applies to family"),
        ({"labels": [1, 2]}, "poisson", "training.regression.labels applies to family"),
        ({"labels": [1, 1]}, "binomial", "two distinct values"),
        ({"min_events": 5}, "gaussian", "training.regression.min_events applies"),
    ]
    for reg, family, msg in bad:
        with pytest.raises(ConfigError) as exc:
            load_settings(_config(tmp_path, family, **reg))
        assert msg in str(exc.value) and "training.regression" in str(exc.value), reg
        assert "\n" not in str(exc.value)
    ok = load_settings(_config(tmp_path, "binomial", threshold=0.25, labels=[1, 2]))
    assert ok.training.regression.threshold == 0.25 and ok.training.regression.labels == (1, 2)
    cfg = yaml.safe_load(_config(tmp_path, "binomial").read_text())
    cfg["dataset"]["target_from"] = {"column": "arr_delay", "op": "=>", "value": 15}
    path = tmp_path / "bad_op.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"dataset\.target_from\.op"):
        load_settings(path)


def test_flights_late_config_loads():
    s = load_settings("flights_late")
    assert s.event_schema.target == "late"
    assert s.training.regression.family == "binomial"
    assert s.dataset.target_from == TargetRule(column="arr_delay", op=">=", value=15)
    flights = load_settings("flights")
    assert (s.training.train_end, s.training.validation_end) == (
        flights.training.train_end,
        flights.training.validation_end,
    )
    assert "arr_delay" not in [f.name for f in s.event_schema.fields]  # never sent in events


# --------------------------------------------------------------------------- targets
def test_derive_target_keeps_missing_outcomes_missing():
    df = pd.DataFrame({"arr_delay": [14.0, 15.0, np.nan, -3.0, 120.0], "x": range(5)})
    out = derive_target(df, TargetRule(column="arr_delay", op=">=", value=15), "late")
    np.testing.assert_array_equal(out["late"].to_numpy(), [0.0, 1.0, np.nan, 0.0, 1.0])
    assert "late" not in df.columns  # a copy
    assert derive_target(df, None, "late") is df
    lt = derive_target(df, TargetRule(column="arr_delay", op="<", value=0), "early")
    np.testing.assert_array_equal(lt["early"].to_numpy(), [0.0, 0.0, np.nan, 1.0, 0.0])
    with pytest.raises(SchemaError, match=r"dataset\.target_from\.column 'nope'"):
        derive_target(df, TargetRule(column="nope", op=">=", value=1), "late")
    with pytest.raises(SchemaError, match="not numeric"):
        derive_target(
            pd.DataFrame({"c": ["a", "b"]}), TargetRule(column="c", op="==", value=1), "t"
        )


def test_prepare_target_maps_labels_and_names_bad_values(tmp_path):
    s = load_settings(_config(tmp_path, "binomial"))
    df = pd.DataFrame({"y": [0.0, 1.0, np.nan, 2.0, 2.0, 7.0]})
    with pytest.raises(DataError) as exc:
        prepare_target(df, s)
    msg = str(exc.value)
    assert "target 'y'" in msg and "found [0, 1, 2, 7]" in msg and "3 row(s) with [2, 7]" in msg
    ok = prepare_target(df.iloc[:3], s)
    np.testing.assert_array_equal(ok["y"].to_numpy(), [0.0, 1.0, np.nan])
    mapped_s = load_settings(_config(tmp_path, "binomial", labels=[2, 7]))
    mapped = prepare_target(pd.DataFrame({"y": [2.0, 7.0, np.nan, 7.0]}), mapped_s)
    np.testing.assert_array_equal(mapped["y"].to_numpy(), [0.0, 1.0, np.nan, 1.0])
    with pytest.raises(DataError, match=r"values 2 and 7 \(training.regression.labels\)"):
        prepare_target(pd.DataFrame({"y": [2.0, 1.0]}), mapped_s)
    ps = load_settings(_config(tmp_path, "poisson"))
    with pytest.raises(DataError, match=r"count >= 0; found \[-1\] in 1 row"):
        prepare_target(pd.DataFrame({"y": [0.0, 3.0, -1.0]}), ps)
    gs = load_settings(_config(tmp_path, "gaussian"))
    assert prepare_target(df, gs) is df


# --------------------------------------------------------------------------- evaluation
def test_choose_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(3)
    p = rng.random(2000)
    y = (rng.random(2000) < p**2).astype(float)
    cands = np.unique(p)

    def f1(t):
        lab = p >= t
        tp, fp, fn = np.sum(lab & (y == 1)), np.sum(lab & (y == 0)), np.sum(~lab & (y == 1))
        return 2 * tp / (2 * tp + fp + fn)

    def youden(t):
        lab = p >= t
        return lab[y == 1].mean() - lab[y == 0].mean()

    t_f1 = choose_threshold(y, p, "f1")
    t_j = choose_threshold(y, p, "youden")
    assert f1(t_f1) == pytest.approx(max(f1(t) for t in cands), abs=1e-12)
    assert youden(t_j) == pytest.approx(max(youden(t) for t in cands), abs=1e-12)
    assert choose_threshold(np.zeros(10), p[:10], "f1") == 0.5
    with pytest.raises(ValueError, match="criterion"):
        choose_threshold(y, p, "accuracy")


def test_reliability_table_and_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1, np.nan])
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0, 0.5])
    table = reliability_table(y, p, 10)
    assert [r["count"] for r in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table[1]["mean_predicted"] == pytest.approx(0.15)
    assert table[1]["observed_rate"] == pytest.approx(0.5)
    assert table[9]["observed_rate"] == 1.0 and table[2]["observed_rate"] is None
    ece = expected_calibration_error(table)
    assert ece == pytest.approx((0.05 + 2 * 0.35 + 2 * 0.025) / 5)
    m = classification_metrics(y, p)
    assert m["n"] == 5 and m["auroc"] == pytest.approx(5.5 / 6)
    assert m["brier"] == pytest.approx(np.mean((y[:5] - p[:5]) ** 2))


def test_poisson_interval_equals_scipy_ppf():
    rng = np.random.default_rng(0)
    mu = np.r_[np.exp(rng.normal(0, 3, 20_000)), 0.0, 1e-300, 3.0, 1e6]
    for mass in (0.5, 0.8, 0.95):
        low, high = poisson_interval(mu, mass)
        np.testing.assert_array_equal(low, stats.poisson.ppf((1 - mass) / 2, mu))
        np.testing.assert_array_equal(high, stats.poisson.ppf((1 + mass) / 2, mu))
    low, high = poisson_interval(np.array([np.nan, -1.0, np.inf]), 0.8)
    assert np.isnan(low).all() and np.isnan(high).all()


# --------------------------------------------------------------------------- training
def _train(tmp_path_factory, family: str):
    tmp = tmp_path_factory.mktemp(family)
    df = synthetic_frame(family)
    data = tmp / "data.parquet"
    df.to_parquet(data)
    settings = load_settings(_config(tmp, family))
    result = train(settings, data_path=str(data), progress=False, work_dir=str(tmp / "bundles"))
    return result, df


@pytest.fixture(scope="module")
def binomial_run(tmp_path_factory):
    return _train(tmp_path_factory, "binomial")


@pytest.fixture(scope="module")
def poisson_run(tmp_path_factory):
    return _train(tmp_path_factory, "poisson")


def _columns(bundle, df: pd.DataFrame) -> dict[str, np.ndarray]:
    cols = {}
    for f in bundle.schema.event_fields:
        s = df[f.name]
        if f.type == "datetime":
            cols[f.name] = s.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
        elif f.type in ("float", "int", "bool"):
            cols[f.name] = s.to_numpy(np.float64)
        else:
            cols[f.name] = s.to_numpy(object)
    return cols


def _reference_eta(bundle_dir: Path, cols: dict[str, np.ndarray], segment: np.ndarray):
    """eta = intercept + X @ beta of the serving model, from the bundle's raw arrays."""
    loaded = load_components(bundle_dir)
    glm = loaded["segment_glms"]
    sc = loaded["scoring"]
    node = np.asarray(loaded["partitioner"].arrays["segment_node"])[segment]
    gi = np.asarray(sc.arrays["model_index"])[node]
    coef = glm.arrays["coef"][gi, 0, :]
    X = np.column_stack([cols[f] for f in glm.meta["feature_names"]])
    return coef[:, 0] + np.sum(np.nan_to_num(coef[:, 1:]) * X, axis=1)


def _test_rows(result, df):
    ids = pd.Index(result.test_scores["event_id"])
    return df.set_index("event_id").loc[ids].reset_index()


def test_binomial_training_beats_global_logistic_and_scores_like_the_reference(binomial_run):
    result, df = binomial_run
    m = result.manifest
    assert (m.family, m.format_version) == ("binomial", FORMAT_VERSION)
    assert 0 < m.threshold < 1 and m.threshold == m.metrics["threshold"]
    assert m.metrics["threshold_criterion"] == "f1"
    assert set(m.components) == {"partitioner", "segment_glms", "scoring", "drift_reference"}
    test = m.metrics["test"]
    # the slope of x1 flips sign between keys: one logistic model cannot fit them
    assert test["partitioned"]["log_loss"] < 0.9 * test["global_logistic"]["log_loss"]
    assert test["partitioned"]["auroc"] > test["global_logistic"]["auroc"] + 0.05
    assert test["partitioned"]["ece"] < 0.05
    assert sum(r["count"] for r in test["reliability_partitioned"]) == test["partitioned"]["n"]
    assert len(test["reliability_global_xgboost"]) == 10
    assert {"log_loss", "brier", "auroc"} <= set(test["partitioned"])
    b = load_bundle(result.bundle_dir)
    assert (b.family, b.threshold, b.profiles) == ("binomial", m.threshold, None)
    rows = _test_rows(result, df)
    cols = _columns(b, rows)
    out = b.score(cols)
    assert set(SCORE_COLUMNS) <= set(out)
    for name, dtype in SCORE_COLUMNS.items():
        assert out[name].dtype == np.dtype(dtype), name
    eta = _reference_eta(result.bundle_dir, cols, out["segment"])
    ref = 1.0 / (1.0 + np.exp(-eta))
    np.testing.assert_allclose(out["probability"], ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out["prediction"], result.test_scores["prediction"], rtol=1e-12)
    np.testing.assert_array_equal(out["prediction"], out["probability"])
    np.testing.assert_allclose(out["contributions"].sum(axis=1), eta, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(out["label"], (ref >= b.threshold).astype(np.int8))
    assert 0 < out["label"].mean() < 1
    assert np.isnan(out["interval_low"]).all() and np.isnan(out["interval_high"]).all()
    assert (out["pattern"] == -1).all() and np.isnan(out["pattern_proba"]).all()
    partial, finish = b.score_parts(cols)
    assert partial["label"] is finish()["label"]
    # the all-zero key has no maximum-likelihood fit of its own; shrinkage (auto chose > 0)
    # gives it a finite partial-pooling estimate (status pooled) pulled far below the root's
    assert m.metrics["shrinkage"] > 0 and m.metrics["node_status"]["pooled"] == 1
    one = (rows["grp"] == ONE_CLASS_KEY).to_numpy()
    assert one.any() and (out["fallback_level"] == 0).all()
    assert out["probability"][one].max() < 0.1 < rows["y"].mean()
    coef = load_components(result.bundle_dir)["segment_glms"].arrays["coef"]
    assert not np.isinf(coef).any()
    assert result.report_path is not None and "reliability" in result.report_path.read_text()
    from segstream.training.cli import metrics_table

    table = "\n".join(metrics_table(m.metrics))
    assert "log loss" in table and "global_logistic" in table and "threshold" in table


def test_poisson_training_beats_global_poisson_and_scores_like_the_reference(poisson_run):
    result, df = poisson_run
    m = result.manifest
    assert (m.family, m.threshold, m.format_version) == ("poisson", None, FORMAT_VERSION)
    test = m.metrics["test"]
    assert test["partitioned"]["deviance"] < 0.8 * test["global_poisson"]["deviance"]
    assert test["partitioned"]["mae"] < test["global_poisson"]["mae"]
    # [ppf(0.1), ppf(0.9)] of a discrete distribution holds at least 80 % of its mass
    # (both ends included): small counts are over-covered, never under-covered
    assert 0.79 <= test["interval"]["coverage"] < 0.99
    b = load_bundle(result.bundle_dir)
    cols = _columns(b, _test_rows(result, df))
    out = b.score(cols)
    eta = _reference_eta(result.bundle_dir, cols, out["segment"])
    np.testing.assert_allclose(out["prediction"], np.exp(eta), rtol=1e-12)
    np.testing.assert_allclose(out["prediction"], result.test_scores["prediction"], rtol=1e-12)
    np.testing.assert_allclose(out["contributions"].sum(axis=1), eta, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(out["interval_low"], stats.poisson.ppf(0.1, out["prediction"]))
    np.testing.assert_array_equal(out["interval_high"], stats.poisson.ppf(0.9, out["prediction"]))
    np.testing.assert_array_equal(out["interval_low"], result.test_scores["interval_low"])
    assert np.isnan(out["probability"]).all() and (out["label"] == -1).all()


def test_glm_bundle_tampering_is_refused(binomial_run, tmp_path):
    result, _ = binomial_run
    for victim in ("segment_glms.npz", MANIFEST):
        d = tmp_path / victim / result.bundle_dir.name
        shutil.copytree(result.bundle_dir, d)
        if victim == MANIFEST:
            doc = orjson.loads((d / MANIFEST).read_bytes())
            doc["threshold"] = 0.01  # label everything late
            (d / MANIFEST).write_bytes(orjson.dumps(doc))
        else:
            raw = bytearray((d / victim).read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            (d / victim).write_bytes(bytes(raw))
        with pytest.raises(BundleIntegrityError):
            load_bundle(d)
    verify_bundle_dir(result.bundle_dir)


def test_family_and_threshold_in_the_manifest_are_validated(tmp_path):
    comp = {"c": ExportedComponent("c", {"a": np.arange(3)}, {"k": 1})}
    with pytest.raises(ValueError, match="needs a threshold"):
        write_bundle(tmp_path, model="m", components=comp, family="binomial")
    with pytest.raises(ValueError, match="binomial only"):
        write_bundle(tmp_path, model="m", components=comp, family="poisson", threshold=0.5)
    with pytest.raises(ValueError, match="not one of"):
        write_bundle(tmp_path, model="m", components=comp, family="gamma")
    g = write_bundle(tmp_path, model="m", components=comp)
    doc = orjson.loads((g / MANIFEST).read_bytes())
    assert doc["format_version"] == 2 and "family" not in doc and "threshold" not in doc
    b = write_bundle(tmp_path, model="m", components=comp, family="binomial", threshold=0.3)
    assert b != g
    m = load_components(b).manifest
    assert (m.format_version, m.family, m.threshold) == (3, "binomial", 0.3)
    # a format-2 manifest may not carry a family (it would be read by older versions)
    doc = orjson.loads((g / MANIFEST).read_bytes())
    doc["family"] = "binomial"
    (g / MANIFEST).write_bytes(orjson.dumps(doc))
    with pytest.raises(BundleIntegrityError, match="not part of format_version 2"):
        verify_bundle_dir(g)


def test_explain_shows_link_scale_contributions_and_the_probability(binomial_run, tmp_path):
    from segstream.training.explain import explain_event, plot_event

    result, df = binomial_run
    b = load_bundle(result.bundle_dir)
    row = _test_rows(result, df).iloc[0]
    event = {
        "event_id": row["event_id"],
        "event_time": row["event_time"].isoformat(),
        "grp": row["grp"],
        "x1": float(row["x1"]),
        "x2": float(row["x2"]),
    }
    ex = explain_event(b, event)
    eta = sum(ex.contributions.values())
    assert ex.prediction == pytest.approx(1 / (1 + np.exp(-eta)), rel=1e-12)
    assert ex.label == int(ex.prediction >= b.threshold)
    text = "\n".join(ex.lines())
    assert "log-odds" in text and f"probability {ex.prediction:.4f}" in text
    assert "pattern" not in text
    assert plot_event(b, ex, tmp_path / "ex.png").stat().st_size > 1000


def test_a_binary_fit_only_column_shapes_the_tree_and_is_not_needed_to_route():
    from segstream.training.partitioner import TreePartitioner

    rng = np.random.default_rng(1)
    n = 6000
    x1 = rng.uniform(-1, 1, n)
    x2 = rng.uniform(-1, 1, n)
    y = (rng.random(n) < np.where(x2 > 0.3, 0.9, 0.1)).astype(float)  # outcome set by x2
    frame = pd.DataFrame({"x1": x1, "x2": x2, "y": y})
    shaped = TreePartitioner(2, min_samples_leaf=200, y_columns=["y"], random_state=0)
    shaped.fit(frame)
    plain = TreePartitioner(2, min_samples_leaf=200, random_state=0).fit(frame[["x1", "x2"]])

    def outcome_gap(part):
        s = part.segments_
        rates = [y[s == k].mean() for k in range(part.n_segments_)]
        return max(rates) - min(rates)

    assert outcome_gap(shaped) > 0.6 > outcome_gap(plain)
    assert "y" not in shaped.router_.required_columns
    routed = shaped.route(frame[["x1", "x2"]])
    np.testing.assert_array_equal(routed.segment, shaped.segments_)


def test_nodes_without_a_usable_glm_fall_back_to_their_nearest_usable_ancestor():
    from types import SimpleNamespace

    from segstream.training.groupby_regression import STATUS_CODES
    from segstream.training.pipeline import serving_nodes

    # root 0 -> 1 (one_class: NaN coefficients) -> 3 (ok), root 0 -> 2 (ok, too thin)
    parent = np.array([-1, 0, 0, 1])
    st = [STATUS_CODES[k] for k in ("ok", "one_class", "ok", "ok")]
    coef = np.zeros((4, 1, 3))
    coef[1] = np.nan
    models = SimpleNamespace(
        groups=np.arange(4),
        status=np.array(st, np.int8)[:, None],
        n_used=np.array([[900], [500], [50], [300]]),
        n_rows=np.array([900, 500, 50, 300]),
        coef=coef,
    )
    mnode, index = serving_nodes(models, parent, 200)
    assert mnode.tolist() == [0, 0, 0, 3] and index.tolist() == [0, 0, 0, 3]
    models.status[0, 0] = STATUS_CODES["separation"]
    models.coef[0] = np.nan
    with pytest.raises(DataError, match="root"):
        serving_nodes(models, parent, 200)
