"""segstream.training.partitioner: estimator conventions, K requested = K obtained, quality vs the exact
tree, encodings, hierarchy, bad input, profiler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.preprocessing import RobustScaler, StandardScaler

from segstream.shared.errors import DataError, NotFittedError, SchemaError
from segstream.training.partitioner import (
    CompositePartitioner,
    KeyPartitioner,
    TreePartitioner,
    partition_report,
    plot_partition_report,
)


def _blobs(n: int, p: int, seed: int, centers: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(scale=5.0, size=(centers, p))
    return c[rng.integers(0, centers, n)] + rng.normal(size=(n, p))


def _within_ss(X: np.ndarray, seg: np.ndarray) -> float:
    Z = (X - X.mean(0)) / X.std(0)
    cnt = np.bincount(seg)
    tot = 0.0
    for j in range(Z.shape[1]):
        m = np.bincount(seg, Z[:, j]) / np.maximum(cnt, 1)
        tot += ((Z[:, j] - m[seg]) ** 2).sum()
    return tot


@pytest.mark.parametrize("algorithm", ["hist", "exact"])
@pytest.mark.parametrize("k", [1, 2, 37, 300])
def test_k_requested_is_k_obtained(algorithm, k):
    X = _blobs(3000, 4, 0)
    tp = TreePartitioner(max_leaf_nodes=k, algorithm=algorithm, random_state=0).fit(X)
    assert tp.n_segments_ == k
    assert tp.segments_.dtype == np.int32
    assert set(np.unique(tp.segments_)) == set(range(k))  # contiguous, none empty


def test_k_obtained_with_categoricals_and_min_samples_leaf():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": rng.normal(size=4000), "c": rng.choice(list("abcdef"), 4000)})
    tp = TreePartitioner(
        max_leaf_nodes=64, min_samples_leaf=20, categorical_features=["c"], random_state=0
    ).fit(df)
    assert tp.n_segments_ == 64
    assert tp.segment_sizes_.min() >= 20


def test_fewer_segments_only_when_data_does_not_allow():
    X = np.repeat(np.arange(5.0)[:, None], 10, axis=0)  # 5 distinct rows
    tp = TreePartitioner(max_leaf_nodes=50).fit(X)
    assert tp.n_segments_ == 5
    tp = TreePartitioner(max_leaf_nodes=50, min_impurity_decrease=0.05).fit(_blobs(2000, 3, 2))
    assert 1 < tp.n_segments_ < 50


@pytest.mark.parametrize("k", [10, 60])
def test_variance_close_to_exact_tree(k):
    X = _blobs(8000, 6, 3, centers=30)
    h = TreePartitioner(max_leaf_nodes=k, random_state=0).fit(X)
    e = TreePartitioner(max_leaf_nodes=k, algorithm="exact", random_state=0).fit(X)
    ratio = _within_ss(X, h.segments_) / _within_ss(X, e.segments_)
    assert ratio <= 1.02
    # and the tree actually reduces variance
    assert _within_ss(X, h.segments_) < 0.5 * _within_ss(X, np.zeros(len(X), dtype=int))


def test_sklearn_scaler_matches_default_zscore_and_is_exported():
    X = _blobs(3000, 4, 4)
    a = TreePartitioner(max_leaf_nodes=20, random_state=0).fit(X)
    b = TreePartitioner(max_leaf_nodes=20, scaler=StandardScaler(), random_state=0).fit(X)
    np.testing.assert_array_equal(a.segments_, b.segments_)
    exp = TreePartitioner(max_leaf_nodes=5, scaler=RobustScaler()).fit(X).export()
    np.testing.assert_allclose(exp.arrays["scaler_center"], np.median(X, axis=0))
    np.testing.assert_allclose(a.export().arrays["scaler_scale"], X.std(axis=0))


def test_weights_and_y_columns_shape_the_tree():
    rng = np.random.default_rng(5)
    n = 4000
    x = rng.uniform(0, 1, n)
    w = rng.uniform(0, 1, n)
    delay = np.where(w > 0.5, 10.0, 0.0) + rng.normal(scale=0.1, size=n)
    df = pd.DataFrame({"x": x, "w": w, "delay": delay})
    # without the target, the first split is on either feature; with a heavy target weight the
    # root must separate the two delay regimes, i.e. split w near 0.5
    tp = TreePartitioner(
        max_leaf_nodes=2, y_columns=["delay"], weights={"delay": 10.0}, random_state=0
    ).fit(df)
    a = tp.router_.arrays
    assert tp.router_.schema.columns[a["node_feature"][0]].source == "w"
    assert abs(a["node_threshold"][0] - 0.5) < 0.02
    assert tp.target_columns_ == ["x", "w", "delay"]
    with pytest.raises(SchemaError, match="'nope'"):
        TreePartitioner(weights={"nope": 2.0}).fit(df)


def test_y_argument_adds_fit_only_targets():
    rng = np.random.default_rng(6)
    X = rng.uniform(size=(3000, 2))
    y = (X[:, 1] > 0.3) * 50.0
    tp = TreePartitioner(max_leaf_nodes=2, random_state=0).fit(X, y)
    assert tp.target_columns_ == ["x0", "x1", "y"]
    assert tp.router_.arrays["node_feature"][0] == 1
    assert abs(tp.router_.arrays["node_threshold"][0] - 0.3) < 0.02


def test_target_encoding_same_at_fit_and_routing():
    rng = np.random.default_rng(8)
    n = 3000
    cat = rng.choice([f"k{i}" for i in range(15)], n)
    x = rng.normal(size=n)
    delay = rng.normal(size=n) + np.array([int(c[1:]) for c in cat]) * 2.0
    df = pd.DataFrame({"x": x, "cat": cat, "delay": delay})
    tp = TreePartitioner(
        max_leaf_nodes=10,
        categorical_features=["cat"],
        y_columns=["delay"],
        category_encoding="target",
        target_smoothing=10.0,
        random_state=0,
    ).fit(df)
    # the encoding table by hand: smoothed mean of the row-averaged scaled target per category
    ybar = ((x - x.mean()) / x.std() + (delay - delay.mean()) / delay.std()) / 2
    table = tp.export().arrays["target_encoding__cat"]
    cats = sorted(set(cat))
    for j, c in enumerate(cats):
        m = cat == c
        assert table[j] == pytest.approx((ybar[m].sum() + 10 * ybar.mean()) / (m.sum() + 10))
    # a row lands in the same segment at fit and when routed, alone or in a batch
    np.testing.assert_array_equal(tp.partition(df), tp.segments_)
    single = [int(tp.partition(df[["x", "cat"]].iloc[[i]])[0]) for i in range(0, n, 150)]
    assert single == tp.segments_[::150].tolist()
    # the categorical actually matters (otherwise this test would prove nothing)
    feats = {
        tp.router_.schema.columns[f].source for f in tp.router_.arrays["node_feature"] if f >= 0
    }
    assert "cat" in feats


def test_hierarchy_arrays_are_consistent():
    X = _blobs(5000, 4, 9)
    X[::11, 0] = np.nan
    tp = TreePartitioner(max_leaf_nodes=33, random_state=0).fit(X)
    anc, parent, cnt = tp.ancestors_, tp.node_parent_, tp.node_count_
    assert anc.shape == (33, tp.node_depth_.max() + 1)
    np.testing.assert_array_equal(anc[:, 0], tp.segment_node_)
    for s in range(33):
        chain = anc[s][anc[s] >= 0]
        assert chain[-1] == 0
        np.testing.assert_array_equal(parent[chain[:-1]], chain[1:])
        assert (anc[s][len(chain) :] == -1).all()
    assert cnt[0] == len(X)
    np.testing.assert_array_equal(cnt[tp.segment_node_], np.bincount(tp.segments_))
    for nd in range(1, len(parent)):
        kids = np.flatnonzero(parent == nd)
        if kids.size:
            assert cnt[nd] == cnt[kids].sum()
    # node at each depth per training row
    d1 = tp.nodes_at_depth(1)
    for node in np.unique(d1):
        assert tp.node_parent_[node] == 0
    np.testing.assert_array_equal(
        np.bincount(d1, minlength=len(parent))[np.unique(d1)], cnt[np.unique(d1)]
    )


def test_estimator_conventions():
    tp = TreePartitioner(max_leaf_nodes=7, categorical_features=["a"], weights={"x": 2.0})
    assert tp.get_params()["max_leaf_nodes"] == 7
    assert tp.categorical_features == ["a"]  # stored unchanged
    c = clone(tp)
    assert c.get_params() == tp.get_params()
    for call in (lambda: tp.partition(np.zeros((2, 2))), tp.export, lambda: tp.route({})):
        with pytest.raises(NotFittedError):
            call()
    X = _blobs(500, 3, 0)
    assert TreePartitioner(max_leaf_nodes=4).fit(X) is not None
    assert KeyPartitioner(levels=["k"]).get_params() == {"levels": ["k"]}
    assert CompositePartitioner(levels=["k"], max_leaf_nodes=3).get_params()["levels"] == ["k"]
    with pytest.raises(ValueError, match="max_leaf_nodes"):
        TreePartitioner(max_leaf_nodes=0).fit(X)
    with pytest.raises(ValueError, match="max_bins"):
        TreePartitioner(max_bins=1000).fit(X)
    with pytest.raises(ValueError, match="category_encoding"):
        TreePartitioner(category_encoding="ordinal").fit(X)


def test_bad_input_errors_name_the_column():
    good = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [1.0, 5.0, 2.0]})
    with pytest.raises(DataError, match="empty"):
        TreePartitioner().fit(good.iloc[:0])
    with pytest.raises(DataError, match="single row"):
        TreePartitioner().fit(good.iloc[:1])
    with pytest.raises(DataError, match="'b'"):
        TreePartitioner().fit(good.assign(b=np.nan))
    with pytest.raises(SchemaError, match=r"'s'.*categorical_features"):
        TreePartitioner().fit(good.assign(s=["x", "y", "z"]))
    with pytest.raises(SchemaError, match="'zz'"):
        TreePartitioner(categorical_features=["zz"]).fit(good)
    with pytest.raises(SchemaError, match="'zz'"):
        TreePartitioner(y_columns=["zz"]).fit(good)
    with pytest.raises(DataError, match="'k'"):
        KeyPartitioner(levels=["k"]).fit(good.assign(k=["x", None, "y"]))
    with pytest.raises(SchemaError, match="'k'"):
        KeyPartitioner(levels=["k"]).fit(good)
    with pytest.raises(DataError, match="'c'"):
        TreePartitioner(categorical_features=["c"]).fit(good.assign(c=[None] * 3))
    with pytest.warns(UserWarning, match="'a'"):
        tp = TreePartitioner(max_leaf_nodes=2).fit(good.assign(a=1.0))
    assert tp.n_segments_ == 2
    tp = TreePartitioner(max_leaf_nodes=2).fit(good)
    with pytest.raises(SchemaError, match="'b'"):
        tp.partition(good[["a"]])
    with pytest.raises(SchemaError, match=r"\(n, 2\)"):
        tp.partition(np.zeros((3, 5)))


def test_partition_report_by_hand():
    X = pd.DataFrame(
        {
            "a": [0.0, 2.0, 10.0, 10.0, 4.0, np.nan],
            "b": [1.0, 1.0, 1.0, 3.0, 5.0, 7.0],
            "s": ["x"] * 6,
        }
    )
    seg = np.array([0, 0, 1, 1, 2, 2])
    rep = partition_report(X, seg)
    assert rep.sizes["n_rows"].tolist() == [2, 2, 2]
    a = rep.by_segment[rep.by_segment.feature == "a"]
    # segment 0: {0, 2} var 1, span 2; segment 1: {10, 10} var 0 span 0; segment 2: {4} only
    assert a["variance"].tolist() == [1.0, 0.0, 0.0]
    assert a["span"].tolist() == [2.0, 0.0, 0.0]
    assert a["n"].tolist() == [2, 2, 1]
    b = rep.by_segment[rep.by_segment.feature == "b"]
    # b: var 0, 1, 1 -> shares 0, .5, .5, HHI .5 ; spans 0, 2, 2 -> HHI .5
    np.testing.assert_allclose(b["variance_share"], [0.0, 0.5, 0.5])
    fb = rep.by_feature.set_index("feature")
    assert fb.loc["b", "variance_hhi"] == pytest.approx(0.5)
    assert fb.loc["b", "span_hhi"] == pytest.approx(0.5)
    assert fb.loc["a", "variance_hhi"] == pytest.approx(1.0)
    # b: mean 3, squared deviations 4+4+4+0+4+16 = 32 -> total variance 32/6 = 16/3;
    # within = (2*0 + 2*1 + 2*1)/6 = 2/3 -> ratio 1/8
    assert fb.loc["b", "total_variance"] == pytest.approx(16 / 3)
    assert fb.loc["b", "within_variance"] == pytest.approx(2 / 3)
    assert fb.loc["b", "variance_ratio"] == pytest.approx(1 / 8)
    assert "s" not in set(fb.index)
    with pytest.raises(DataError):
        partition_report(X, seg[:3])


def test_plot_partition_report_writes_pngs(tmp_path):
    X = _blobs(3000, 3, 10)
    tp = TreePartitioner(max_leaf_nodes=80, random_state=0).fit(X)
    paths = plot_partition_report(X, tp.segments_, tmp_path, max_features=2)
    assert next(p.name for p in paths) == "segment_sizes.png"
    assert len(paths) == 3
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    few = plot_partition_report(X, tp.segments_ % 5, tmp_path / "few", max_features=1)
    assert len(few) == 2


def test_composite_leaf_budget_per_key_segment():
    rng = np.random.default_rng(12)
    n = 3000
    df = pd.DataFrame(
        {"region": rng.choice(["n", "s"], n), "x": rng.normal(size=n), "y2": rng.normal(size=n)}
    )
    cp = CompositePartitioner(levels=["region"], max_leaf_nodes=6, random_state=0).fit(df)
    assert cp.n_segments_ == 12
    for _region, g in df.assign(s=cp.segments_).groupby("region"):
        assert g["s"].nunique() == 6
    ex = CompositePartitioner(
        levels=["region"], max_leaf_nodes=6, algorithm="exact", random_state=0
    ).fit(df)
    assert ex.n_segments_ == 12
    np.testing.assert_array_equal(ex.partition(df), ex.segments_)


# --------------------------------------------------------------------------------------------
# histogram kernels against references
# --------------------------------------------------------------------------------------------


def _split_reference(hist, nbins, miss_bin, min_leaf):
    """Brute force over (feature, bin): SSE reduction with missing rows sent to the child
    holding more non-missing rows; first maximum wins. Returns (gain, feature, bin)."""
    T = hist.shape[2] - 1
    tot = hist[0].sum(axis=0)
    N = tot[T]
    parent = (tot[:T] ** 2).sum() / N
    best = (-1.0, -1, -1)
    for f in range(hist.shape[0]):
        miss = hist[f, miss_bin]
        for b in range(nbins[f] - 1):
            if hist[f, b, T] == 0:
                continue
            left = hist[f, : b + 1].sum(axis=0)
            nn = N - miss[T]
            if nn - left[T] <= 0:
                break
            if left[T] >= nn - left[T]:
                left = left + miss
            right = tot - left
            if left[T] < min_leaf or right[T] < min_leaf:
                continue
            g = max(
                (left[:T] ** 2).sum() / left[T] + (right[:T] ** 2).sum() / right[T] - parent, 0.0
            )
            if g > best[0] * (1 + 1e-12) + 1e-12:
                best = (g, f, b)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_split_scan_matches_brute_force(seed):
    from segstream.training.partitioner import _best_split, _best_split_par

    rng = np.random.default_rng(seed)
    F, T, miss_bin = 4, 3, 12
    n_rows = int(rng.integers(2, 80))
    # one set of rows; feature f bins them coarser (code // (f + 1)), odd seeds add missing
    codes = rng.integers(0, miss_bin, n_rows)
    missing = (rng.random(n_rows) < 0.2) if seed % 2 else np.zeros(n_rows, dtype=bool)
    y = rng.normal(size=(n_rows, T)) + codes[:, None] * 0.3
    hist = np.zeros((F, miss_bin + 1, T + 1))
    nbins = np.empty(F, dtype=np.int64)
    for f in range(F):
        b = np.where(missing, miss_bin, codes // (f + 1))
        nbins[f] = (miss_bin - 1) // (f + 1) + 1
        np.add.at(hist[f, :, :T], b, y)
        np.add.at(hist[f, :, T], b, 1.0)
    tot = hist[0].sum(axis=0)
    for min_leaf in (1, 5):
        g, f, b, _ = _best_split(hist, nbins, miss_bin, min_leaf, tot, np.zeros(T + 1))
        gp, fp, bp, _ = _best_split_par(hist, nbins, miss_bin, min_leaf, tot)
        rg, rf, rb = _split_reference(hist, nbins, miss_bin, min_leaf)
        assert (g, f, b) == (gp, fp, bp)  # threaded scan: identical
        if rf < 0:
            assert f < 0
        else:
            assert g == pytest.approx(rg, rel=1e-9, abs=1e-12)
            # the reference's split, or one as good within rounding (coarser features can
            # reproduce a finer feature's split exactly)
            assert (f, b) == (rf, rb) or g >= rg * (1 - 1e-9)


def test_threaded_growth_gives_the_serial_tree(monkeypatch):
    import segstream.training.partitioner as tpmod

    X = _blobs(6000, 5, 21, centers=20)
    X[::7, 2] = np.nan
    fits = []
    for par_min in (np.iinfo(np.int64).max, 50):
        monkeypatch.setattr(tpmod, "_PAR_MIN_ROWS", par_min)
        fits.append(TreePartitioner(max_leaf_nodes=120, random_state=0).fit(X))
    a, b = (f.export().arrays for f in fits)
    for name in ("node_feature", "node_threshold", "node_right", "node_weight"):
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(fits[0].segments_, fits[1].segments_)


def test_segments_equal_full_routing_with_missing_values():
    # complete rows keep the segment they grew in; rows with a NaN are re-routed
    X = _blobs(5000, 4, 22)
    X[::5, 1] = np.nan
    X[::13, 3] = np.nan
    tp = TreePartitioner(max_leaf_nodes=64, random_state=0).fit(X)
    routed = tp.router_.route_design(
        tp.router_.design({f"x{j}": X[:, j] for j in range(4)})
    ).segment
    np.testing.assert_array_equal(tp.segments_, routed)
    complete = ~np.isnan(X).any(axis=1)
    np.testing.assert_array_equal(tp.segments_[complete], tp.fit_segments_[complete])
