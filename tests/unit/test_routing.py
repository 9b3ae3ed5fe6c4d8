"""Routing from exported arrays (shared.routing) against references and invariants."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segstream.shared.component import ExportedComponent
from segstream.shared.errors import BundleCompatibilityError, SchemaError
from segstream.shared.routing import (
    KEY,
    LEAF,
    NUMERIC,
    Router,
    _design_view,
    _route_kernel,
    encode_categories,
)
from segstream.training.partitioner import CompositePartitioner, KeyPartitioner, TreePartitioner


def _blobs(n: int, p: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=5.0, size=(12, p))
    return centers[rng.integers(0, 12, n)] + rng.normal(size=(n, p))


def _cols(X: np.ndarray) -> dict[str, np.ndarray]:
    return {f"x{j}": X[:, j] for j in range(X.shape[1])}


def _sklearn_leaf_rank(tree) -> np.ndarray:
    """Independent mapping: sklearn node id -> rank of the leaf in depth-first (left first)
    order, which is how segment ids are numbered."""
    left, right = tree.children_left, tree.children_right
    rank = np.full(tree.node_count, -1)
    stack, k = [0], 0
    while stack:
        nd = stack.pop()
        if left[nd] < 0:
            rank[nd] = k
            k += 1
        else:
            stack.extend([right[nd], left[nd]])
    return rank


def _brute_route(router: Router, z: np.ndarray) -> tuple[int, bool]:
    """Reference for one row of the design matrix: recursive, all-children on missing."""
    a = router.arrays

    def leaves(nd: int) -> list[int]:
        k = a["node_kind"][nd]
        if k == LEAF:
            return [nd]
        v = z[a["node_feature"][nd]]
        if k == NUMERIC:
            if np.isnan(v):
                return leaves(nd + 1) + leaves(int(a["node_right"][nd]))
            return (
                leaves(nd + 1) if v <= a["node_threshold"][nd] else leaves(int(a["node_right"][nd]))
            )
        lo, hi = a["child_ptr"][nd], a["child_ptr"][nd + 1]
        codes = list(a["child_code"][lo:hi])
        if not np.isnan(v) and v >= 0 and int(v) in codes:
            return leaves(int(a["child_node"][lo + codes.index(int(v))]))
        return [x for c in a["child_node"][lo:hi] for x in leaves(int(c))]

    cands = leaves(0)
    best = max(cands, key=lambda nd: (a["node_weight"][nd], -a["node_segment"][nd]))
    return int(a["node_segment"][best]), len(cands) > 1 or False


@pytest.fixture(scope="module")
def hist_tree():
    X = _blobs(4000, 5, 0)
    return TreePartitioner(max_leaf_nodes=40, random_state=0).fit(X), X


def test_exact_routing_equals_sklearn_apply_on_1e5_rows():
    X = _blobs(3000, 6, 1)
    tp = TreePartitioner(max_leaf_nodes=60, algorithm="exact", random_state=0).fit(X)
    rng = np.random.default_rng(2)
    # float32-representable values: sklearn compares float32, the router float64
    Xr = (rng.normal(scale=6.0, size=(100_000, 6))).astype(np.float32).astype(np.float64)
    expected = _sklearn_leaf_rank(tp.estimator_.tree_)[tp.estimator_.apply(Xr.astype(np.float32))]
    got = tp.router_.route(_cols(Xr)).segment
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    # and on the training rows
    np.testing.assert_array_equal(
        tp.segments_,
        _sklearn_leaf_rank(tp.estimator_.tree_)[tp.estimator_.apply(X.astype(np.float32))],
    )


def test_hist_routing_equals_growth_assignment():
    X = _blobs(5000, 4, 3)
    X[::7, 2] = np.nan  # rows with a missing value are re-assigned by the routing rule
    tp = TreePartitioner(max_leaf_nodes=50, random_state=0).fit(X)
    complete = ~np.isnan(X).any(axis=1)
    np.testing.assert_array_equal(tp.segments_[complete], tp.fit_segments_[complete])
    np.testing.assert_array_equal(tp.partition(X), tp.segments_)
    r = tp.route(X)
    assert not r.imputed[complete].any()
    assert r.imputed[~complete].mean() > 0.2  # x2 is a split feature of many paths


def test_missing_value_lookahead_matches_brute_force(hist_tree):
    tp, X = hist_tree
    rng = np.random.default_rng(5)
    Xr = X[:300].copy()
    Xr[rng.random(Xr.shape) < 0.3] = np.nan
    router = tp.router_
    Z = router.design(_cols(Xr))
    res = router.route_design(Z)
    for i in range(Xr.shape[0]):
        seg, _ = _brute_route(router, Z[:, i])
        assert res.segment[i] == seg, i
    assert (res.imputed == np.isnan(Xr).any(axis=1)).sum() >= 250
    # the imputed node is an ancestor of the chosen leaf
    anc = router.ancestors[res.segment]
    assert all(res.node[i] in anc[i] for i in range(len(res)))


def test_roundtrip_through_npz_and_json(hist_tree):
    tp, X = hist_tree
    comp = tp.export()
    buf = io.BytesIO()
    np.savez(buf, **comp.arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(json.dumps(comp.meta))
    r2 = Router.from_export(ExportedComponent("partitioner", arrays, meta))
    np.testing.assert_array_equal(r2.route(_cols(X)).segment, tp.segments_)
    assert r2.n_segments == 40 and r2.kind == "tree"


finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=arrays(np.float64, st.tuples(st.integers(1, 40), st.just(5)), elements=finite_or_not))
def test_routing_total_and_deterministic_numeric(hist_tree, data):
    tp, _ = hist_tree
    r1 = tp.route(data)
    r2 = tp.route(data.copy())
    assert ((r1.segment >= 0) & (r1.segment < tp.n_segments_)).all()
    np.testing.assert_array_equal(r1.segment, r2.segment)
    np.testing.assert_array_equal(r1.imputed, r2.imputed)
    np.testing.assert_array_equal(r1.depth, tp.node_depth_[tp.segment_node_[r1.segment]])
    assert not r1.imputed[~np.isnan(data).any(axis=1)].any()


def test_lockstep_kernel_equals_per_row_kernel(hist_tree):
    """The eight-row numeric kernel against the general per-row kernel on adversarial values
    (NaN, +-inf, +-1e308, -0.0, subnormals), with a row count that is not a multiple of 8."""
    tp, X = hist_tree
    router = tp.router_
    rng = np.random.default_rng(11)
    Xr = np.concatenate([X[:1000], rng.normal(scale=8.0, size=(1003, X.shape[1]))])
    special = np.array([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0, -0.0, 5e-324])
    mask = rng.random(Xr.shape) < 0.05
    Xr[mask] = rng.choice(special, int(mask.sum()))
    Z = router.design(_cols(Xr))
    got = router.route_design(Z)
    a = router.arrays
    n = Z.shape[1]
    ref = (
        np.empty(n, np.int32),
        np.empty(n, np.int32),
        np.empty(n, np.int32),
        np.empty(n, np.bool_),
        np.empty(n, np.int32),
    )
    _route_kernel(
        Z,
        a["node_kind"],
        a["node_feature"],
        a["node_threshold"],
        a["node_right"],
        a["child_ptr"],
        a["child_code"],
        a["child_node"],
        a["node_segment"],
        a["node_weight"],
        a["node_depth"],
        *ref,
    )
    for name, expected in zip(("segment", "node", "depth", "imputed"), ref, strict=False):
        np.testing.assert_array_equal(getattr(got, name), expected, err_msg=name)
    assert got.imputed.any() and not got.imputed.all()
    assert not got.unknown.any()


def test_route_reads_any_column_layout(hist_tree):
    """Zero-copy (evenly spaced columns) and copying (anything else, several chunks) give
    the same result."""
    tp, X = hist_tree
    router = tp.router_
    rng = np.random.default_rng(12)
    n = 60_003  # several copy chunks
    Xr = X[rng.integers(0, X.shape[0], n)] + rng.normal(scale=0.5, size=(n, X.shape[1]))
    Xr[rng.random(Xr.shape) < 0.01] = np.nan
    expected = router.route_design(np.ascontiguousarray(Xr.T))
    names = [f"x{j}" for j in range(Xr.shape[1])]
    layouts = {
        "row-major matrix": (_cols(np.ascontiguousarray(Xr)), True),
        "column-major matrix": (_cols(np.asfortranarray(Xr)), True),
        "reversed column order": (
            dict(zip(names[::-1], np.ascontiguousarray(Xr[:, ::-1]).T, strict=False)),
            True,
        ),
        "every other row": (_cols(np.repeat(Xr, 2, axis=0)[::2]), True),
        "separate arrays": ({k: v.copy() for k, v in _cols(Xr).items()}, None),
        "dataframe": (pd.DataFrame(Xr, columns=names), None),
        "lists": ({k: v.tolist() for k, v in _cols(Xr).items()}, None),
    }
    for label, (cols, zero_copy) in layouts.items():
        if zero_copy:
            n, rows, _ = router.schema.design_rows(cols)
            view = _design_view(rows, n)
            assert view is not None, label
            np.testing.assert_array_equal(
                view, Xr.T[[int(c.source[1:]) for c in router.schema.columns]], err_msg=label
            )
        got = router.route(cols)
        for name in ("segment", "node", "depth", "imputed", "unknown"):
            np.testing.assert_array_equal(
                getattr(got, name), getattr(expected, name), err_msg=f"{label}: {name}"
            )
    # columns of different strides or unevenly spaced: no view
    a = np.zeros(20)
    assert _design_view([a[:10], a[::2]], 10) is None
    assert _design_view([a[0:5], a[5:10], a[15:20]], 5) is None
    assert _design_view([a[0:5], a[5:10], a[10:15].astype(np.float32)], 5) is None


@pytest.fixture(scope="module")
def cat_tree():
    rng = np.random.default_rng(7)
    n = 3000
    city = rng.choice(["a", "b", "c", "d"], n)
    x = rng.normal(size=n) + (city == "b") * 4 + (city == "d") * 8
    df = pd.DataFrame({"x": x, "z": rng.normal(size=n), "city": city})
    fitted = {
        enc: TreePartitioner(
            max_leaf_nodes=12, categorical_features=["city"], category_encoding=enc, random_state=0
        ).fit(df)
        for enc in ("onehot", "target")
    }
    return fitted, df


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    x=st.lists(finite_or_not, min_size=1, max_size=20),
    city=st.lists(
        st.one_of(
            st.sampled_from(["a", "b", "c", "d", None]),
            st.text(max_size=4),
            st.integers(),
            st.just(float("nan")),
        ),
        min_size=20,
        max_size=20,
    ),
)
def test_routing_total_with_unseen_categories(cat_tree, x, city):
    fitted, _ = cat_tree
    n = len(x)
    cols = {"x": np.asarray(x), "z": np.zeros(n), "city": np.asarray(city[:n], dtype=object)}
    for tp in fitted.values():
        r = tp.route(cols)
        assert ((r.segment >= 0) & (r.segment < tp.n_segments_)).all()
        np.testing.assert_array_equal(r.segment, tp.route(cols).segment)
        seen = np.array([c in ("a", "b", "c", "d") for c in cols["city"]])
        missing = pd.isna(cols["city"])
        np.testing.assert_array_equal(r.unknown, ~seen & ~missing)


def test_unknown_category_routes_like_missing(cat_tree):
    fitted, df = cat_tree
    for tp in fitted.values():
        cols_new = {
            "x": df["x"].to_numpy(),
            "z": df["z"].to_numpy(),
            "city": np.full(len(df), "zz", dtype=object),
        }
        cols_nan = dict(cols_new, city=np.full(len(df), None, dtype=object))
        a, b = tp.route(cols_new), tp.route(cols_nan)
        np.testing.assert_array_equal(a.segment, b.segment)
        assert a.unknown.all() and not b.unknown.any()


def test_y_columns_not_needed_at_routing():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=2000), "delay": rng.normal(size=2000)})
    tp = TreePartitioner(max_leaf_nodes=8, y_columns=["delay"], random_state=0).fit(df)
    assert tp.router_.required_columns == ("x",)
    np.testing.assert_array_equal(tp.partition(df[["x"]]), tp.segments_)


def test_schema_errors_name_the_column(hist_tree):
    tp, X = hist_tree
    cols = _cols(X[:10])
    del cols["x3"]
    with pytest.raises(SchemaError, match="'x3'"):
        tp.router_.route(cols)
    cols = _cols(X[:10])
    cols["x1"] = np.array(["a"] * 10, dtype=object)
    with pytest.raises(SchemaError, match="'x1'"):
        tp.router_.route(cols)
    cols = _cols(X[:10])
    cols["x4"] = cols["x4"][:5]
    with pytest.raises(SchemaError, match="'x4'"):
        tp.router_.route(cols)
    # object arrays of numbers and None are fine (decoded JSON events)
    cols = _cols(X[:3])
    cols["x0"] = np.array([1.0, None, 2], dtype=object)
    assert tp.router_.route(cols).imputed[1]


def test_bad_export_rejected(hist_tree):
    tp, _ = hist_tree
    comp = tp.export()
    with pytest.raises(BundleCompatibilityError, match="kind"):
        Router.from_export(ExportedComponent("profiles", comp.arrays, comp.meta))
    with pytest.raises(BundleCompatibilityError, match="format_version"):
        Router.from_arrays(comp.arrays, dict(comp.meta, format_version=99))
    arrays = dict(comp.arrays)
    del arrays["node_right"]
    with pytest.raises(BundleCompatibilityError, match="node_right"):
        Router.from_arrays(arrays, comp.meta)


@pytest.fixture(scope="module")
def flights_like():
    rng = np.random.default_rng(11)
    n = 4000
    origin = rng.choice(["EWR", "JFK", "LGA"], n)
    carrier = rng.choice(["AA", "B6", "DL", "UA"], n)
    keep = ~((origin == "LGA") & (carrier == "B6"))  # a combination never seen in training
    df = pd.DataFrame(
        {
            "origin": origin,
            "carrier": carrier,
            "distance": rng.gamma(2.0, 500.0, n),
            "hour": rng.uniform(5, 23, n),
        }
    )
    return df[keep].reset_index(drop=True)


def test_key_partitioner_unseen_combination_goes_to_prefix(flights_like):
    df = flights_like
    kp = KeyPartitioner(levels=["origin", "carrier"]).fit(df)
    assert kp.n_segments_ == 11
    r = kp.route({"origin": ["LGA", "XXX", "JFK", None], "carrier": ["B6", "AA", "ZZ", "AA"]})
    router = kp.router_
    lga = int(router.ancestors[kp.partition(df[df.origin == "LGA"].head(1))[0], 1])
    assert router.arrays["node_kind"][lga] == KEY and r.node[0] == lga
    assert r.unknown.tolist() == [True, True, True, False]
    assert r.unknown_key.tolist() == [1, 0, 1, -1]
    assert r.imputed.all()
    assert r.node[1] == 0  # unknown origin: only the root is known
    # segment = the prefix's largest training leaf
    lga_leaves = [s for s in range(kp.n_segments_) if router.ancestors[s, 1] == lga]
    sizes = kp.segment_sizes_
    assert r.segment[0] == max(lga_leaves, key=lambda s: (sizes[s], -s))
    # unknown origin, known carrier: every origin is followed, the carrier still filters
    keys = df.groupby(["origin", "carrier"]).size().index
    aa = [s for s, (_, c) in enumerate(keys) if c == "AA"]
    assert r.segment[1] == max(aa, key=lambda s: (sizes[s], -s))
    # the hierarchy: segments ordered by sorted key strings
    seg_keys = df.groupby(["origin", "carrier"]).size()
    np.testing.assert_array_equal(sizes, seg_keys.to_numpy())


def test_composite_exports_same_router(flights_like):
    df = flights_like
    cp = CompositePartitioner(levels=["origin", "carrier"], max_leaf_nodes=5, random_state=0).fit(
        df
    )
    assert cp.n_segments_ == 11 * 5
    router = Router.from_export(cp.export())
    assert router.kind == "composite"
    np.testing.assert_array_equal(router.route(df).segment, cp.segments_)
    # every segment lies under exactly one key combination, at depth >= 2
    assert (router.node_depth[router.segment_node] >= 3).all()
    per_key = df.assign(s=cp.segments_).groupby(["origin", "carrier"])["s"].nunique()
    assert (per_key == 5).all()
    r = router.route({"origin": ["LGA"], "carrier": ["B6"], "distance": [100.0], "hour": [np.nan]})
    assert r.unknown[0] and r.unknown_key[0] == 1


def test_encode_categories_codes():
    table = pd.Index(["a", "b", "c"], dtype=object)
    codes = encode_categories(np.array(["c", None, "x", "a", np.nan], dtype=object), table)
    assert codes.tolist() == [2, -2, -1, 0, -2]


def test_node_at_depth(hist_tree):
    tp, _ = hist_tree
    r = tp.router_
    seg = np.arange(r.n_segments)
    np.testing.assert_array_equal(r.node_at_depth(seg, 0), np.zeros(r.n_segments))
    d1 = r.node_at_depth(seg, 1)
    assert set(d1.tolist()) == {1, int(r.arrays["node_right"][0])}
    np.testing.assert_array_equal(r.node_at_depth(seg, 99), r.segment_node)


def test_describe_path_names_keys_and_splits():
    import pandas as pd

    from segstream.training.partitioner import CompositePartitioner

    rng = np.random.default_rng(3)
    n = 4000
    X = pd.DataFrame({"origin": rng.choice(["EWR", "JFK"], n), "hour": rng.uniform(5, 23, n)})
    part = CompositePartitioner(["origin"], 2, min_samples_leaf=100, random_state=0).fit(X)
    router = part.router_
    paths = {router.describe_path(s) for s in range(part.n_segments_)}
    assert len(paths) == part.n_segments_ == 4
    for p in paths:
        key, split = p.split(" / ")
        assert key in ("origin=EWR", "origin=JFK")
        assert split.startswith("hour <= ") or split.startswith("hour > ")
    # the rule agrees with routing: a row routed to a segment satisfies its split
    seg = part.partition(X)
    for s in range(part.n_segments_):
        _, split = router.describe_path(s).split(" / ")
        op, t = split.split()[1], float(split.split()[2])
        h = X["hour"].to_numpy()[seg == s]
        assert (h <= t + 1e-3).all() if op == "<=" else (h > t - 1e-3).all()
    assert router.describe_node(0) == "all"


def test_read_only_columns_take_the_factorised_path_with_identical_codes() -> None:
    """A CategoryColumn is factorised once and reused across tables; the codes equal
    the per-value path's, including missing values, unseen values and non-str values (which
    fall back, since factorize would merge 1, 1.0 and True)."""
    import pandas as pd

    from segstream.shared.routing import (
        MISSING_CODE,
        UNKNOWN_CODE,
        CategoryColumn,
        encode_categories,
    )

    rng = np.random.default_rng(3)
    pool = np.array(["JFK", "LGA", "EWR", "XXX", None, np.nan, ""], dtype=object)
    for extra in ([], [1, 1.0, True]):
        vals = rng.choice(np.concatenate([pool, np.array(extra, dtype=object)]), 2000)
        tables = [pd.Index(["EWR", "JFK", "LGA"]), pd.Index(["JFK", "", "1", "1.0", "True"])]
        want = [encode_categories(vals.copy(), t) for t in tables]  # writeable: per-value path
        vals = CategoryColumn(vals)
        got = [encode_categories(vals, t) for t in tables]
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(w, g)
        assert (want[0] == MISSING_CODE).any() and (want[0] == UNKNOWN_CODE).any()
        assert (vals.factorization() is not None) == (not extra)
