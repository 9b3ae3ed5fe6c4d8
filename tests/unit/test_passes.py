"""Mergeable statistics (training/passes.py): chunked (random cuts, chunks of one row, empty
chunks) and merged in a random tree order equals the whole-data statistic, exactly for counts
and integer-valued sums, within stated tolerances for float sums and sketches, checked
against independent references (numpy, the partitioner's own whole-data functions)."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pandas as pd
import pytest

from segstream.training import glm_kernels as gk
from segstream.training.partitioner import _finite_stats, _quantile_bins
from segstream.training.passes import (
    BinEdges,
    EvaluationSums,
    GLMIRLSStats,
    Joint,
    MomentStats,
    NodeHistograms,
    OLSSuffStats,
    OutcomeHistograms,
    ResidualQuantiles,
    assign_bins,
    fold,
)

FLOAT_RTOL = 1e-10  # float64 sums in another order (and, for OLS, around other shifts)
SKETCH_RANK_TOL = 0.02  # KLL k=200: 1.33 % normalised rank error at 99 % confidence


def cuts(df: pd.DataFrame, rng: np.random.Generator) -> list[pd.DataFrame]:
    """Random chunks covering df in order, with empty and one-row chunks among them."""
    n = len(df)
    pts = np.sort(rng.integers(0, n + 1, size=12))
    pts = np.concatenate([[0, 0, 1, 1, 2], pts, [n - 1, n, n]])  # empties and singletons
    pts = np.clip(np.sort(pts), 0, n)
    return [df.iloc[a:b] for a, b in itertools.pairwise(pts)]


def chunked(stat, df: pd.DataFrame, seed: int):
    """Each chunk's state from init, then merged pairwise in a random tree order."""
    rng = np.random.default_rng(seed)
    states = [stat.update(stat.init(), c) for c in cuts(df, rng)]
    rng.shuffle(states)
    while len(states) > 1:
        i = int(rng.integers(0, len(states) - 1))
        a, b = states[i], states[i + 1]
        states[i : i + 2] = [stat.merge(a, b) if rng.random() < 0.5 else stat.merge(b, a)]
    return pickle.loads(pickle.dumps(states[0]))  # states travel between Dask workers


def data(n: int = 3000, seed: int = 0, integer: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 7, n)
    x1 = rng.normal(size=n) * 10
    x2 = rng.uniform(0, 24, size=n)
    x3 = rng.integers(0, 6, n).astype(float)  # few distinct values
    if integer:
        x1, x2 = np.round(x1), np.round(x2)
    y = 3.0 + g + 0.5 * x1 - 0.2 * x2 + rng.normal(size=n) * 2
    if integer:
        y = np.round(y)
    df = pd.DataFrame({"g": g, "x1": x1, "x2": x2, "x3": x3, "y": y})
    df.loc[rng.random(n) < 0.03, "x1"] = np.nan
    df.loc[rng.random(n) < 0.02, "y"] = np.nan
    df["pred"] = 3.0 + df["g"] + 0.45 * df["x1"].fillna(0)
    df["lo"], df["hi"] = df["pred"] - 2, df["pred"] + 2
    return df


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_moments_match_the_partitioner_scaler(seed):
    df = data(seed=seed)
    st = MomentStats(["x1", "x2", "y"])
    got = st.finalize(chunked(st, df, seed))
    for c in ["x1", "x2", "y"]:
        ref = _finite_stats(df[c].to_numpy())
        assert got[c][:3] == tuple(ref[:3])  # count, min, max exact
        np.testing.assert_allclose(got[c][3:], ref[3:], rtol=1e-12)


def test_bin_edges_distinct_values_exact_and_quantiles_within_sketch_error():
    df = data(n=20_000)
    st = BinEdges(["x3", "x2"], max_bins=32)
    edges, nbins = st.finalize(chunked(st, df, 3))
    Z = np.ascontiguousarray(df[["x3", "x2"]].to_numpy().T)
    _, ref_edges, ref_nbins = _quantile_bins(Z, np.arange(2), 32, np.random.default_rng(0))
    # few distinct values: midpoints, identical to the partitioner's
    assert nbins[0] == ref_nbins[0] == 6
    np.testing.assert_array_equal(edges[0], ref_edges[0])
    # many: each sketch edge sits at its target rank within the KLL error
    x = np.sort(df["x2"].to_numpy())
    e = edges[1, : nbins[1] - 1]
    assert abs(nbins[1] - ref_nbins[1]) <= 2
    target = np.linspace(0, 1, 33)[1:-1][: e.size]
    ranks = np.searchsorted(x, e, side="right") / x.size
    assert np.max(np.abs(ranks - target)) <= SKETCH_RANK_TOL
    # codes via the partitioner's kernel: code b <=> edges[b-1] < x <= edges[b]
    codes = assign_bins(df[["x2"]].to_numpy(), edges[1:2], 32)
    assert codes.max() == nbins[1] - 1
    assert np.all(
        e[codes[:, 0][codes[:, 0] < nbins[1] - 1]]
        >= df["x2"].to_numpy()[codes[:, 0] < nbins[1] - 1]
    )


def hist_reference(df, feats, edges, n_nodes, node, Y, max_bins):
    H = np.zeros((n_nodes, len(feats), max_bins + 1, Y.shape[1] + 1))
    codes = assign_bins(df[feats].to_numpy(), edges, max_bins)
    for i in range(len(df)):
        if node[i] < 0:
            continue
        for f in range(len(feats)):
            H[node[i], f, codes[i, f], :-1] += Y[i].astype(np.float64)
            H[node[i], f, codes[i, f], -1] += 1
    return H


@pytest.mark.parametrize("integer", [True, False])
def test_node_histograms(integer):
    df = data(n=1500, integer=integer, seed=4)
    df["node"] = np.where(df["g"] == 6, -1, df["g"] % 4)  # some rows in no growing node
    feats = ["x1", "x2"]
    edges, _ = BinEdges(feats, max_bins=16).finalize(fold(BinEdges(feats, max_bins=16), [df]))

    def targets(c):
        return np.column_stack([c["y"].fillna(0), c["x2"]]).astype(np.float32)

    st = NodeHistograms(feats, edges, 4, "node", targets, max_bins=16)
    got = chunked(st, df, 5)
    whole = fold(st, [df])
    ref = hist_reference(df, feats, edges, 4, df["node"].to_numpy(), targets(df), 16)
    np.testing.assert_array_equal(got[..., -1], ref[..., -1])  # counts exact
    if integer:
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(whole, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-3)  # float32 targets
        np.testing.assert_allclose(got, whole, rtol=FLOAT_RTOL, atol=1e-9)


def test_ols_sufficient_statistics_against_lstsq():
    df = data(n=4000, seed=6)
    df["w"] = np.random.default_rng(1).uniform(0.5, 2.0, len(df))
    st = OLSSuffStats(["x1", "x2"], "y", "g", 7, weight="w")
    got = st.finalize(chunked(st, df, 7))
    whole = st.finalize(fold(st, [df]))
    for k in ("n", "W"):
        np.testing.assert_allclose(got[k], whole[k], rtol=1e-14)
    for k in ("xbar", "ybar", "A", "rhs", "coef"):
        np.testing.assert_allclose(got[k], whole[k], rtol=FLOAT_RTOL, atol=1e-9)
    ok = df[["x1", "x2", "y"]].notna().all(axis=1)
    for g in range(7):
        d = df[ok & (df["g"] == g)]
        sw = np.sqrt(d["w"].to_numpy())
        M = np.column_stack([np.ones(len(d)), d["x1"], d["x2"]]) * sw[:, None]
        ref = np.linalg.lstsq(M, d["y"].to_numpy() * sw, rcond=None)[0]
        np.testing.assert_allclose(got["coef"][g], ref, rtol=1e-8)
        assert got["n"][g] == len(d)


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_glm_irls_pass_against_numpy(family):
    rng = np.random.default_rng(8)
    n = 3000
    df = pd.DataFrame(
        {"g": rng.integers(0, 5, n), "x1": rng.normal(size=n), "x2": rng.normal(size=n)}
    )
    eta_true = 0.2 * df["g"] - 0.5 + 0.8 * df["x1"] - 0.3 * df["x2"]
    if family == "binomial":
        df["y"] = (rng.random(n) < 1 / (1 + np.exp(-eta_true))).astype(float)
    else:
        df["y"] = rng.poisson(np.exp(eta_true)).astype(float)
    coef = np.column_stack([np.linspace(-0.4, 0.4, 5), np.full(5, 0.5), np.full(5, -0.1)])
    st = GLMIRLSStats(["x1", "x2"], "y", "g", coef, family=family)
    got = chunked(st, df, 9)
    for g in range(5):
        d = df[df["g"] == g]
        X = d[["x1", "x2"]].to_numpy()
        eta = coef[g, 0] + X @ coef[g, 1:]
        y = d["y"].to_numpy()
        if family == "binomial":
            mu = 1 / (1 + np.exp(-eta))
            w = mu * (1 - mu)
            dev = -2 * (y * np.log(mu) + (1 - y) * np.log(1 - mu))
        else:
            mu = np.exp(eta)
            w = mu
            with np.errstate(divide="ignore", invalid="ignore"):
                dev = 2 * (np.where(y > 0, y * np.log(y / mu), 0.0) - (y - mu))
        z = eta + (y - mu) / w
        W = w.sum()
        xbar = (w[:, None] * X).sum(0) / W
        zbar = (w * z).sum() / W
        dx = X - xbar
        np.testing.assert_allclose(got.W[g], W, rtol=1e-10)
        np.testing.assert_allclose(got.zbar[g], zbar, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.xbar[g], xbar, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            got.A[g], (w[:, None, None] * dx[:, :, None] * dx[:, None, :]).sum(0), rtol=1e-9
        )
        np.testing.assert_allclose(
            got.rhs[g], (w[:, None] * dx * (z - zbar)[:, None]).sum(0), rtol=1e-8, atol=1e-10
        )
        np.testing.assert_allclose(got.dev[g], dev.sum(), rtol=1e-9)
    whole = fold(st, [df])
    assert np.array_equal(got.extreme, whole.extreme)


def test_glm_init_is_refused_for_poisson_and_row_local_for_binomial():
    df = pd.DataFrame({"g": [0, 0, 1, 1], "x1": [0.0, 1.0, 2.0, 3.0], "y": [0.0, 1.0, 1.0, 0.0]})
    with pytest.raises(ValueError, match="Poisson"):
        GLMIRLSStats(["x1"], "y", "g", np.zeros((2, 2)), family="poisson", init=True).update(
            GLMIRLSStats(["x1"], "y", "g", np.zeros((2, 2))).init(), df
        )
    st = GLMIRLSStats(["x1"], "y", "g", np.zeros((2, 2)), family="binomial", init=True)
    a = fold(st, [df])
    b = st.merge(fold(st, [df.iloc[:1]]), fold(st, [df.iloc[1:]]))
    np.testing.assert_allclose(a.A, b.A, rtol=1e-12)
    assert gk.FAMILY_BINOMIAL == 1


def test_outcome_histograms_exact_commutative_associative():
    df = data(n=2000, seed=10)
    edges = np.linspace(-10, 20, 13)
    st = OutcomeHistograms("y", edges, "g", 7)
    got = chunked(st, df, 11)
    ref = np.zeros((7, 12), np.int64)
    y = df["y"].to_numpy()
    for g in range(7):
        v = np.clip(y[(df["g"] == g) & np.isfinite(y)], edges[0], edges[-1] - 1e-9)
        ref[g] = np.histogram(v, edges)[0]
    np.testing.assert_array_equal(got, ref)
    parts = [fold(st, [c]) for c in np.array_split(np.arange(len(df)), 3) for c in [df.iloc[c]]]
    a, b, c = parts
    np.testing.assert_array_equal(st.merge(a, b), st.merge(b, a))
    np.testing.assert_array_equal(st.merge(st.merge(a, b), c), st.merge(a, st.merge(b, c)))


def test_residual_quantiles_within_sketch_rank_error():
    df = data(n=30_000, seed=12)
    st = ResidualQuantiles("y", "pred", "g", k=200)
    sk = st.finalize(chunked(st, df, 13))
    assert sorted(sk) == list(range(7))
    r = (df["y"] - df["pred"]).to_numpy()
    for g, s in sk.items():
        rg = np.sort(r[(df["g"] == g).to_numpy() & np.isfinite(r)])
        assert s.n == rg.size
        qs = s.quantiles(np.array([0.1, 0.5, 0.9]))
        ranks = np.searchsorted(rg, qs, side="right") / rg.size
        assert np.max(np.abs(ranks - [0.1, 0.5, 0.9])) <= SKETCH_RANK_TOL


def test_evaluation_sums():
    df = data(n=2500, seed=14)
    st = EvaluationSums("y", "pred", group="g", n_groups=7, interval=("lo", "hi"))
    got = st.finalize(chunked(st, df, 15))
    whole = EvaluationSums("y", "pred", interval=("lo", "hi"))
    tot = whole.finalize(fold(whole, cuts(df, np.random.default_rng(0))))
    ok = df["y"].notna() & df["pred"].notna()
    e = (df["y"] - df["pred"])[ok]
    assert tot["n"][0] == ok.sum() and got["n"].sum() == ok.sum()
    np.testing.assert_allclose(tot["mae"][0], e.abs().mean(), rtol=1e-12)
    np.testing.assert_allclose(tot["rmse"][0], np.sqrt((e**2).mean()), rtol=1e-12)
    np.testing.assert_allclose(tot["bias"][0], -e.mean(), rtol=1e-10)
    yy = df["y"][ok]
    np.testing.assert_allclose(
        tot["r2"][0], 1 - (e**2).sum() / ((yy - yy.mean()) ** 2).sum(), rtol=1e-10
    )
    cov = ((df["y"] >= df["lo"]) & (df["y"] <= df["hi"]))[ok].mean()
    np.testing.assert_allclose(tot["coverage"][0], cov, rtol=1e-12)
    d3 = df[ok & (df["g"] == 3)]
    np.testing.assert_allclose(got["mae"][3], (d3["y"] - d3["pred"]).abs().mean(), rtol=1e-12)


def test_joint_pass_equals_its_members():
    df = data(n=1500, seed=16)
    edges = np.linspace(-10, 20, 7)
    members = [OutcomeHistograms("y", edges, "g", 7), EvaluationSums("y", "pred")]
    joint = Joint(members)
    got = joint.finalize(chunked(joint, df, 17))
    np.testing.assert_array_equal(got[0], members[0].finalize(fold(members[0], [df])))
    ref = members[1].finalize(fold(members[1], [df]))
    for k in ref:
        np.testing.assert_allclose(got[1][k], ref[k], rtol=1e-12)
