"""Benchmark of the group-by regression engine against the strongest baselines we know.

    flock /tmp/segstream-bench.lock python benchmarks/bench_groupby_regression.py --quick --out benchmarks/results/bench_groupby_regression_quick.json
    flock /tmp/segstream-bench.lock python benchmarks/bench_groupby_regression.py --full  --out benchmarks/results/bench_groupby_regression_full.json

Workload (seeded, network-free): ``G`` groups of exactly ``r`` rows each (checked and reported),
rows shuffled so groups interleave, 3 predictors + intercept with different offsets and scales,
weights U(0.5, 2), Gaussian noise; for the robust methods 10 % of the rows get gross outliers.
Sizes (G x r): 1k x 5, 20k x 5, 10k x 100, 100k x 20 (+ 1e6 x 5 with ``--full``).

Every timing is a median of repeated runs (all runs are in the JSON). Each engine or baseline
entry is labelled: ``label``, ``what`` it is, ``threads`` it used and ``timed_region``.

* Engine: ``fit_groups`` (JIT compile excluded by a warm-up) at 1 numba thread and at all
  threads (``numba.set_num_threads``).
* OLS, strong baselines (the ratios the targets are on), both verified against per-group
  ``np.linalg.lstsq`` on a seeded subset of groups: vectorised numpy (``np.bincount``
  cross-products + one batched ``np.linalg.solve``) with BLAS limited to 1 thread and to all
  threads (``threadpoolctl``), and polars ``group_by().agg`` of the same cross-products + the
  same solve (polars' own thread pool; its size is recorded). Secondary: ``np.add.at``
  cross-products, a statsmodels ``WLS`` loop (sort/grouping index and import outside the timed
  region), pandas ``groupby.apply`` + ``lstsq`` and polars-ols per group.
* Huber: statsmodels ``RLM(HuberT(1.345), scale_est="mad")`` on the ``sqrt(w)``-scaled rows,
  which is the engine's estimator (see ``benchmarks/baselines_groupby.py``), with the engine's
  tolerance and iteration cap; per-group loops are timed on a seeded subset of the groups and
  extrapolated linearly (labelled). Secondary: scikit-learn ``HuberRegressor`` (another
  estimator).
* sigma-clip: no baseline fits the same estimator; the engine's times only.

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` in this process, as in ``bench_partitioner.py``: on
this shared 2-core VM under load, a 2-thread OLS fit of 1k x 20 rows took 17-27x longer with
spinning OpenMP workers than with passive ones (one-off check); the value is in the
environment stamp.

A method is one ``scenario_*`` function plus one line in ``SCENARIOS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numba loads OpenMP

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines_groupby as bl
import numba
from threadpoolctl import threadpool_info, threadpool_limits

from segstream.training.groupby_regression import fit_groups

P = 3
ALL_THREADS = numba.config.NUMBA_NUM_THREADS


def make_data(G: int, r: int, seed: int = 0, outliers: float = 0.0):
    rng = np.random.default_rng(seed)
    n = G * r
    g = np.repeat(np.arange(G, dtype=np.int64), r)
    X = rng.normal(size=(n, P)) * np.array([1.0, 10.0, 0.1]) + np.array([0.0, 100.0, 5.0])
    beta = rng.normal(size=(G, P + 1)) * 2
    y = beta[g, 0] + np.einsum("ij,ij->i", X, beta[g, 1:]) + rng.normal(size=n)
    if outliers:
        bad = rng.random(n) < outliers
        y[bad] += rng.choice([-1, 1], bad.sum()) * rng.uniform(20, 60, bad.sum())
    w = rng.uniform(0.5, 2.0, size=n)
    perm = rng.permutation(n)
    return g[perm], X[perm], y[perm], w[perm]


def timeit(fn: Callable[[], object], repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


@dataclass
class Ctx:
    """One data size: ``G`` groups of ``r`` rows, and the run's knobs."""

    G: int
    r: int
    engine_repeats: int
    repeats: int
    subsets: dict[str, int]
    rng: np.random.Generator

    def subset(self, name: str) -> np.ndarray:
        """Seeded, sorted subset of group ids for the loop baselines called ``name``."""
        k = min(self.G, self.subsets[name])
        return np.sort(self.rng.choice(self.G, size=k, replace=False))


def entry(label, what, threads, timed_region, med, times, G, **extra) -> dict:
    return {
        "label": label,
        "what": what,
        "threads": threads,
        "timed_region": timed_region,
        "seconds": med,
        "seconds_all": times,
        "seconds_per_1000_groups": med / G * 1000,
        **extra,
    }


def loop_entry(label, what, timed_region, med, times, groups, G) -> dict:
    """A per-group loop timed on ``groups`` (a subset), extrapolated linearly to ``G``."""
    k = len(groups)
    return {
        "label": label,
        "what": what,
        "threads": 1,
        "timed_region": timed_region,
        "groups_timed": k,
        "subset": "seeded random subset of the groups" if k < G else "all groups",
        "seconds_timed": med,
        "seconds_timed_all": times,
        "seconds_per_group": med / k,
        "seconds_per_1000_groups": med / k * 1000,
        "seconds": med * G / k,
        "extrapolated": k < G,
        "extrapolation": f"seconds_timed * {G}/{k} (linear in groups)" if k < G else None,
    }


def time_engine(ctx: Ctx, data, method: str) -> tuple[dict, object]:
    out, res = {}, None
    for nt in sorted({1, ALL_THREADS}):
        numba.set_num_threads(nt)
        try:
            med, times, res = timeit(
                lambda nt=nt: fit_groups(*data, method=method), ctx.engine_repeats
            )
        finally:
            numba.set_num_threads(ALL_THREADS)
        st = np.bincount(res.status[:, 0].astype(np.int64), minlength=5)
        out[f"threads_{nt}"] = entry(
            f"segstream fit_groups({method})",
            "numba engine: sufficient statistics per group, one pass, all groups at once",
            nt,
            "fit_groups(g, X, y, w) on numpy arrays in random group order "
            "(validation, grouping and solve included)",
            med,
            times,
            ctx.G,
            rows_per_s=ctx.G * ctx.r / med,
            status_counts={
                "ok": int(st[0]),
                "too_few_rows": int(st[1]),
                "singular": int(st[2]),
                "not_converged": int(st[3]),
            },
            mean_iterations=float(res.n_iter[:, 0].mean()),
        )
        print(f"    engine {method:10s} {nt} thr {med:8.4f} s", flush=True)
    return out, res


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.nanmax(np.abs(a - b)))


# --- scenarios (one function per method) ----------------------------------------------------


def scenario_ols(ctx: Ctx) -> dict:
    G = ctx.G
    g, X, y, w = make_data(G, ctx.r, seed=1)
    engine, res = time_engine(ctx, (g, X, y, w), "ols")
    coef = res.coef[:, 0, :]
    base: dict = {}
    coefs: dict[str, np.ndarray] = {}
    bl.numpy_ols(g, X, y, w, G)  # warm-up, as for the engine
    for nt in sorted({1, ALL_THREADS}):
        with threadpool_limits(limits=nt, user_api="blas"):
            med, times, coefs["numpy_centred"] = timeit(
                lambda: bl.numpy_ols(g, X, y, w, G), ctx.repeats
            )
        base[f"numpy_centred_blas_{nt}"] = entry(
            "numpy bincount (group-centred) + batched solve",
            "vectorised: weighted group means, centred X'WX and X'Wy per group by np.bincount "
            "(14 passes), one batched np.linalg.solve",
            f"BLAS limited to {nt} (threadpoolctl); bincount and numpy's batched solve loop "
            "run on one thread either way",
            "numpy_ols(g, X, y, w) on numpy arrays",
            med,
            times,
            G,
        )
        print(f"    numpy centred blas={nt} {med:8.4f} s", flush=True)
    with threadpool_limits(limits=1, user_api="blas"):
        med, times, coefs["numpy_raw"] = timeit(
            lambda: bl.numpy_ols_raw(g, X, y, w, G), ctx.repeats
        )
    base["numpy_raw"] = entry(
        "numpy bincount (uncentred) + batched solve",
        "vectorised: raw X'WX and X'Wy per group by np.bincount (14 passes), one batched "
        "solve; fastest numpy form, loses digits on short groups (see agreement)",
        1,
        "numpy_ols_raw(g, X, y, w) on numpy arrays",
        med,
        times,
        G,
    )
    med, times, _ = timeit(lambda: bl.numpy_ols_add_at(g, X, y, w, G), ctx.repeats)
    base["numpy_add_at_raw"] = entry(
        "numpy np.add.at (uncentred) + batched solve",
        "vectorised: raw X'WX and X'Wy per group by one np.add.at each, one batched solve",
        1,
        "numpy_ols_add_at(g, X, y, w) on numpy arrays",
        med,
        times,
        G,
    )
    import polars as pl

    df = bl.polars_frame(g, X, y, w)
    for key, fn, label, what in (
        (
            "polars_centred",
            bl.polars_ols,
            "polars group_by().agg (group-centred) + batched solve",
            "vectorised: group means by group_by().agg joined back, centred cross-products by "
            "a second group_by().agg, then the same batched solve",
        ),
        (
            "polars_raw",
            bl.polars_ols_raw,
            "polars group_by().agg (uncentred) + batched solve",
            "vectorised: raw cross-products by one group_by().agg, then the same batched "
            "solve; loses digits on short groups (see agreement)",
        ),
    ):
        fn(df, P)  # warm-up
        med, times, coefs[key] = timeit(lambda fn=fn: fn(df, P), ctx.repeats)
        base[key] = entry(
            label,
            what,
            pl.thread_pool_size(),
            f"{fn.__name__}(df): polars aggregations, to numpy, batched solve (frame built "
            "outside)",
            med,
            times,
            G,
        )
        print(f"    {key} {med:8.4f} s ({pl.thread_pool_size()} threads)", flush=True)
    # reference: per-group lstsq on a seeded subset
    sub = ctx.subset("lstsq")
    m = np.isin(g, sub)
    ref = bl.lstsq_reference(np.searchsorted(sub, g[m]), X[m], y[m], w[m])
    agreement = {
        "groups_compared": len(sub),
        "reference": "per-group np.linalg.lstsq on sqrt(w)-scaled rows",
        "max_abs_coef_diff_segstream": max_abs_diff(coef[sub], ref),
        **{f"max_abs_coef_diff_{k}": max_abs_diff(c[sub], ref) for k, c in coefs.items()},
        "max_rel_coef_diff_segstream": float(
            np.nanmax(np.abs(coef[sub] - ref) / np.maximum(np.abs(ref), 1e-300))
        ),
    }
    # secondary loops
    idx = bl.GroupIndex.build(g, X, y, w)
    import statsmodels.api  # noqa: F401  (import outside the timed region)

    sub = ctx.subset("statsmodels")
    with threadpool_limits(limits=1, user_api="blas"):
        med, times, c_sm = timeit(lambda: bl.statsmodels_wls_loop(idx, sub), ctx.repeats)
    base["statsmodels_wls_loop"] = loop_entry(
        "statsmodels WLS loop",
        "per group: sm.WLS(y, Z, weights=w).fit().params",
        "the loop over groups only (import, stable sort, group bounds, design matrix outside)",
        med,
        times,
        sub,
        G,
    )
    agreement["max_abs_coef_diff_statsmodels_vs_segstream"] = max_abs_diff(c_sm, coef[sub])
    import pandas as pd

    sub = ctx.subset("pandas")
    m = np.isin(g, sub)
    pdf = pd.DataFrame({"g": g[m], "x0": X[m, 0], "x1": X[m, 1], "x2": X[m, 2], "y": y[m]})
    pdf["w"] = w[m]

    def pandas_apply():
        def fit(d):
            sw = np.sqrt(d["w"].to_numpy())
            A = np.c_[np.ones(len(d)), d[["x0", "x1", "x2"]].to_numpy()] * sw[:, None]
            return pd.Series(np.linalg.lstsq(A, d["y"].to_numpy() * sw, rcond=None)[0])

        return pdf.groupby("g").apply(fit, include_groups=False)

    med, times, _ = timeit(pandas_apply, ctx.repeats)
    base["pandas_apply_lstsq"] = loop_entry(
        "pandas groupby.apply + lstsq",
        "per group: np.linalg.lstsq on sqrt(w)-scaled rows inside DataFrame.groupby.apply",
        "groupby('g').apply(...) on a DataFrame of the subset's rows (frame built outside)",
        med,
        times,
        sub,
        G,
    )
    try:
        import polars_ols  # noqa: F401  (registers the namespace)
    except ImportError:
        base["polars_ols_per_group"] = {"available": False}
    else:
        sub = ctx.subset("polars_ols")
        m = np.isin(g, sub)
        dfs = df.filter(pl.Series(m))

        def run_polars_ols():
            return (
                dfs.group_by("g")
                .agg(
                    pl.col("y")
                    .least_squares.wls(
                        pl.col("x0"),
                        pl.col("x1"),
                        pl.col("x2"),
                        sample_weights=pl.col("w"),
                        add_intercept=True,
                        mode="coefficients",
                    )
                    .alias("c")
                )
                .sort("g")
            )

        run_polars_ols()
        med, times, _ = timeit(run_polars_ols, ctx.repeats)
        e = loop_entry(
            "polars-ols least_squares.wls per group",
            "polars-ols expression per group inside group_by().agg",
            "group_by/agg/sort on a frame of the subset's rows (frame built outside)",
            med,
            times,
            sub,
            G,
        )
        e["threads"] = pl.thread_pool_size()
        base["polars_ols_per_group"] = e
    e1 = engine["threads_1"]["seconds"]
    ea = engine[f"threads_{ALL_THREADS}"]["seconds"]
    one_thread = ("numpy_centred_blas_1", "numpy_raw", "numpy_add_at_raw")
    fastest_1 = min(one_thread, key=lambda k: base[k]["seconds"])
    fastest_all = min(
        (*one_thread, f"numpy_centred_blas_{ALL_THREADS}", "polars_centred", "polars_raw"),
        key=lambda k: base[k]["seconds"],
    )
    ratios = {
        "engine_1thr_vs_numpy_centred_1thr": base["numpy_centred_blas_1"]["seconds"] / e1,
        "engine_allthr_vs_numpy_centred_allthr": base[f"numpy_centred_blas_{ALL_THREADS}"][
            "seconds"
        ]
        / ea,
        "engine_allthr_vs_polars_centred": base["polars_centred"]["seconds"] / ea,
        "engine_1thr_vs_numpy_raw": base["numpy_raw"]["seconds"] / e1,
        "engine_allthr_vs_polars_raw": base["polars_raw"]["seconds"] / ea,
        "engine_1thr_vs_numpy_add_at_raw": base["numpy_add_at_raw"]["seconds"] / e1,
        "engine_1thr_vs_fastest_1thr_vectorised": base[fastest_1]["seconds"] / e1,
        "engine_allthr_vs_fastest_vectorised": base[fastest_all]["seconds"] / ea,
        "engine_1thr_vs_statsmodels_loop": base["statsmodels_wls_loop"]["seconds"] / e1,
        "engine_1thr_vs_pandas_apply": base["pandas_apply_lstsq"]["seconds"] / e1,
    }
    if "seconds" in base["polars_ols_per_group"]:
        ratios["engine_allthr_vs_polars_ols"] = base["polars_ols_per_group"]["seconds"] / ea
    return {
        "engine": engine,
        "baselines": base,
        "agreement": agreement,
        "fastest_1thr_vectorised": fastest_1,
        "fastest_vectorised": fastest_all,
        "ratios": ratios,
    }


def scenario_huber(ctx: Ctx) -> dict:
    G = ctx.G
    g, X, y, w = make_data(G, ctx.r, seed=1, outliers=0.1)
    engine, res = time_engine(ctx, (g, X, y, w), "huber")
    idx = bl.GroupIndex.build(g, X, y, w)
    import statsmodels.api  # noqa: F401  (import outside the timed region)

    base: dict = {}
    sub = ctx.subset("rlm")
    with threadpool_limits(limits=1, user_api="blas"):
        med, times, c_rlm = timeit(lambda: bl.statsmodels_rlm_loop(idx, sub), ctx.repeats)
    base["statsmodels_rlm_loop"] = loop_entry(
        "statsmodels RLM(HuberT) loop",
        "per group: sm.RLM(sqrt(w) y, sqrt(w) Z, M=HuberT(t=1.345)).fit(scale_est='mad', "
        "conv='coefs', tol=1e-8, maxiter=50): the engine's estimator and settings "
        "(tolerance absolute in RLM, relative to max|coef| in the engine)",
        "the loop over groups only (import, stable sort, group bounds, design matrix outside)",
        med,
        times,
        sub,
        G,
    )
    sub_sk = ctx.subset("sklearn_huber")
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        med, times, _ = timeit(lambda: bl.sklearn_huber_loop(idx, sub_sk), ctx.repeats)
    base["sklearn_huber_loop"] = loop_entry(
        "scikit-learn HuberRegressor loop (another estimator)",
        "per group: HuberRegressor(epsilon=1.35, tol=1e-4, max_iter=200, alpha=1e-4) with "
        "sample weights; scale estimated jointly (Owen 2007), not the MAD",
        "the loop over groups only (import, stable sort, group bounds outside)",
        med,
        times,
        sub_sk,
        G,
    )
    # agreement with RLM: at the timing settings on the timed subset, and tightly converged
    coef = res.coef[:, 0, :]
    ident = (res.n_used[:, 0] >= 2 * (P + 1)) & (res.status[:, 0] == 0)
    cmp_ = ident[sub]
    sub_t = sub[: ctx.subsets["rlm_tight"]]
    m = np.isin(g, sub_t)
    tight = fit_groups(
        np.searchsorted(sub_t, g[m]), X[m], y[m], w[m], method="huber", tol=1e-10, max_iter=500
    )
    c_tight = bl.statsmodels_rlm_loop(idx, sub_t, tol=1e-10, maxiter=500)
    ok_t = (tight.status[:, 0] == 0) & (tight.n_used[:, 0] >= 2 * (P + 1))
    agreement = {
        "reference": "statsmodels RLM(HuberT(1.345), scale_est='mad') on sqrt(w)-scaled rows",
        "groups_compared_at_timing_settings": int(cmp_.sum()),
        "max_abs_coef_diff_at_timing_settings": (
            max_abs_diff(coef[sub][cmp_], c_rlm[cmp_]) if cmp_.any() else None
        ),
        "groups_compared_tol_1e-10": int(ok_t.sum()),
        "max_abs_coef_diff_tol_1e-10": (
            max_abs_diff(tight.coef[ok_t, 0, :], c_tight[ok_t]) if ok_t.any() else None
        ),
        "groups_excluded_scale_not_identified": int((~ident[sub]).sum()),
        "note": "groups with fewer than 2 x (parameters) rows are not compared: an exact fit "
        "through a subset of the rows zeroes the MAD scale and the estimate is not unique",
    }
    e1 = engine["threads_1"]["seconds"]
    ea = engine[f"threads_{ALL_THREADS}"]["seconds"]
    ratios = {
        "engine_1thr_vs_statsmodels_rlm_loop": base["statsmodels_rlm_loop"]["seconds"] / e1,
        "engine_allthr_vs_statsmodels_rlm_loop": base["statsmodels_rlm_loop"]["seconds"] / ea,
        "engine_1thr_vs_sklearn_huber_loop": base["sklearn_huber_loop"]["seconds"] / e1,
    }
    return {"engine": engine, "baselines": base, "agreement": agreement, "ratios": ratios}


def scenario_sigma_clip(ctx: Ctx) -> dict:
    data = make_data(ctx.G, ctx.r, seed=1, outliers=0.1)
    engine, _ = time_engine(ctx, data, "sigma_clip")
    return {
        "engine": engine,
        "baselines": {},
        "ratios": {},
        "note": "no baseline implements the same estimator (iterated MAD clipping with "
        "re-admission); engine times only",
    }


SCENARIOS: list[tuple[str, Callable[[Ctx], dict]]] = [
    ("ols", scenario_ols),
    ("huber", scenario_huber),
    ("sigma_clip", scenario_sigma_clip),
]


def env_stamp() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for pkg in (
        "numpy",
        "numba",
        "pandas",
        "scipy",
        "scikit-learn",
        "statsmodels",
        "polars",
        "polars-ols",
        "threadpoolctl",
    ):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not initialised"
    try:
        import polars as pl

        polars_threads = pl.thread_pool_size()
    except ImportError:
        polars_threads = None
    return {
        "versions": versions,
        "cpu_count": os.cpu_count(),
        "numba_num_threads_all": ALL_THREADS,
        "numba_threading_layer": layer,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "polars_thread_pool_size": polars_threads,
        "blas": [
            {k: i.get(k) for k in ("internal_api", "num_threads", "version")}
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ],
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def run(sizes, engine_repeats: int, repeats: int, subsets: dict[str, int]) -> list[dict]:
    # warm-up: compile every kernel variant, at both thread counts, outside the timings
    gw, Xw, yw, ww = make_data(50, 10, seed=99, outliers=0.1)
    for nt in sorted({1, ALL_THREADS}):
        numba.set_num_threads(nt)
        for m in ("ols", "huber", "sigma_clip"):
            fit_groups(gw, Xw, yw, ww, method=m)
    numba.set_num_threads(ALL_THREADS)
    results = []
    for G, r in sizes:
        print(f"size {G} groups x {r} rows, load {os.getloadavg()[0]:.1f}", flush=True)
        g = make_data(G, r, seed=1)[0]
        counts = np.bincount(g)
        sc: dict = {
            "groups": G,
            "rows_per_group": r,
            "rows": G * r,
            "realised_group_size": {
                "min": int(counts.min()),
                "max": int(counts.max()),
                "mean": float(counts.mean()),
                "n_groups": int((counts > 0).sum()),
            },
            "loadavg_start": list(os.getloadavg()),
        }
        ctx = Ctx(G, r, engine_repeats, repeats, subsets, np.random.default_rng(1000 + G + r))
        for name, fn in SCENARIOS:
            sc[name] = fn(ctx)
            print(
                "  "
                + name
                + " "
                + ", ".join(f"{k}={v:.2f}" for k, v in sc[name]["ratios"].items()),
                flush=True,
            )
        sc["loadavg_end"] = list(os.getloadavg())
        results.append(sc)
    return results


def summarise(sizes: list[dict]) -> dict:
    big = next(s for s in sizes if s["groups"] == 100_000)
    a = f"threads_{ALL_THREADS}"
    ols, hub = big["ols"], big["huber"]
    s = {
        "scenario": "100k groups x 20 rows (3 predictors + intercept, weights)",
        "ols_rows_per_s_1thr": ols["engine"]["threads_1"]["rows_per_s"],
        "ols_rows_per_s_allthr": ols["engine"][a]["rows_per_s"],
        "huber_rows_per_s_allthr": hub["engine"][a]["rows_per_s"],
        "sigma_clip_rows_per_s_allthr": big["sigma_clip"]["engine"][a]["rows_per_s"],
        "ols_speedup_vs_numpy_same_threads_1": ols["ratios"]["engine_1thr_vs_numpy_centred_1thr"],
        "ols_speedup_vs_numpy_same_threads_all": ols["ratios"][
            "engine_allthr_vs_numpy_centred_allthr"
        ],
        "ols_speedup_vs_polars_agg": ols["ratios"]["engine_allthr_vs_polars_centred"],
        "ols_speedup_vs_fastest_1thr_vectorised": ols["ratios"][
            "engine_1thr_vs_fastest_1thr_vectorised"
        ],
        "ols_speedup_vs_fastest_vectorised_any_threads": ols["ratios"][
            "engine_allthr_vs_fastest_vectorised"
        ],
        "ols_speedup_vs_statsmodels_loop_1thr": ols["ratios"]["engine_1thr_vs_statsmodels_loop"],
        "huber_speedup_vs_statsmodels_rlm_1thr": hub["ratios"][
            "engine_1thr_vs_statsmodels_rlm_loop"
        ],
        "huber_speedup_vs_statsmodels_rlm_allthr": hub["ratios"][
            "engine_allthr_vs_statsmodels_rlm_loop"
        ],
        "max_abs_coef_diff_ols_vs_lstsq": max(
            s["ols"]["agreement"]["max_abs_coef_diff_segstream"] for s in sizes
        ),
        "max_abs_coef_diff_numpy_centred_vs_lstsq": max(
            s["ols"]["agreement"]["max_abs_coef_diff_numpy_centred"] for s in sizes
        ),
        "max_abs_coef_diff_polars_centred_vs_lstsq": max(
            s["ols"]["agreement"]["max_abs_coef_diff_polars_centred"] for s in sizes
        ),
        "max_abs_coef_diff_numpy_raw_vs_lstsq": max(
            s["ols"]["agreement"]["max_abs_coef_diff_numpy_raw"] for s in sizes
        ),
        "max_abs_coef_diff_huber_vs_rlm_tol_1e-10": max(
            (
                s["huber"]["agreement"]["max_abs_coef_diff_tol_1e-10"]
                for s in sizes
                if s["huber"]["agreement"]["max_abs_coef_diff_tol_1e-10"] is not None
            ),
            default=None,
        ),
        # Targets are ratios against the strong baselines, same thread count on both sides.
        "targets": {
            "ols_speedup_vs_numpy_same_threads_1": 2.0,
            "ols_speedup_vs_numpy_same_threads_all": 2.0,
            "ols_speedup_vs_polars_agg": 2.0,
            "huber_speedup_vs_statsmodels_rlm_1thr": 100.0,
        },
        "notes": (
            "Medians; JIT compile excluded. Per-group loops (statsmodels, pandas, polars-ols, "
            "sklearn) are timed on a seeded subset of groups and extrapolated linearly "
            "(groups_timed, extrapolation per entry). numpy's bincount and batched solve run "
            "on one thread whatever the BLAS limit; polars uses its own pool "
            "(polars_thread_pool_size). Huber vs RLM is compared on groups with at least 2 x "
            "(parameters) rows only (the 5-row sizes have none). The targets are on the "
            "group-centred numpy and polars baselines (accurate to lstsq); the uncentred "
            "forms are faster and are reported too (fastest_* ratios)."
        ),
    }
    s["targets_met"] = {k: s[k] >= v for k, v in s["targets"].items()}
    return s


PROFILES = {
    "quick": {
        "sizes": [(1_000, 5), (20_000, 5), (10_000, 100), (100_000, 20)],
        "engine_repeats": 9,
        "repeats": 3,
        "subsets": {
            "lstsq": 2_000,
            "statsmodels": 500,
            "pandas": 500,
            "polars_ols": 3_000,
            "rlm": 200,
            "rlm_tight": 60,
            "sklearn_huber": 20,
        },
    },
    "full": {
        "sizes": [(1_000, 5), (20_000, 5), (10_000, 100), (100_000, 20), (1_000_000, 5)],
        "engine_repeats": 9,
        "repeats": 5,
        "subsets": {
            "lstsq": 5_000,
            "statsmodels": 2_000,
            "pandas": 2_000,
            "polars_ols": 20_000,
            "rlm": 1_000,
            "rlm_tight": 200,
            "sklearn_huber": 200,
        },
    },
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="4 sizes (default)")
    mode.add_argument("--full", action="store_true", help="adds 1e6 groups x 5 rows")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    ap.add_argument("--part", choices=["linear", "glm"], default="linear", help="glm: issue 18")
    ap.add_argument("--glm-repeats", type=int, default=5)
    ap.add_argument("--glm-sm-groups", type=int, default=300)
    args = ap.parse_args(argv)
    if args.part == "glm":
        return glm_main(args)
    prof = PROFILES["full" if args.full else "quick"]
    t0 = time.perf_counter()
    load_start = list(os.getloadavg())
    sizes = run(prof["sizes"], prof["engine_repeats"], prof["repeats"], prof["subsets"])
    env = env_stamp()
    env["loadavg_start"] = load_start
    env["loadavg_end"] = list(os.getloadavg())
    out = {
        "benchmark": "bench_groupby_regression",
        "mode": "full" if args.full else "quick",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": time.perf_counter() - t0,
        "environment": env,
        "profile": {k: v for k, v in prof.items() if k != "sizes"},
        "sizes": sizes,
        "summary": summarise(sizes),
    }
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps(out["summary"], indent=2))


# =========================================================================================
# GLM scenario (issue 18): per-segment logistic regression, ``--part glm``. Kept in its own
# block (functions below + the ``--part`` switch in ``main``) and written to its own JSON
# (default benchmarks/results/bench_groupby_regression_glm_quick.json).
#
# Workload: G groups of exactly r rows, rows shuffled, the same 3 predictors (offsets and
# scales as above) + intercept, weights U(0.5, 2), outcomes Bernoulli(logistic(eta)) with
# per-group coefficients N(0, 0.5^2) on standardised predictors. Engine: ``fit_groups(...,
# family="binomial")`` with numba's default threads and with 1 thread (median of repeats,
# JIT excluded). Baselines in the same process, timed without set-up (sorting/grouping,
# design matrices and imports outside the timed region): a statsmodels ``GLM(Binomial)``
# loop and a scikit-learn ``LogisticRegression(C=inf, solver="newton-cholesky")`` loop on a
# seeded random subset of groups, extrapolated linearly (labelled), single-threaded Python
# loops; and a batched numpy IRLS over all groups at once (equal-size groups only, fixed
# Newton steps, no statuses, no separation check) as the strong vectorised baseline.
# =========================================================================================

GLM_SCENARIOS = [(100_000, 20), (1_000, 2_000)]


def make_glm_data(G: int, r: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = G * r
    g = np.repeat(np.arange(G, dtype=np.int64), r)
    loc = np.array([0.0, 100.0, 5.0])
    scale = np.array([1.0, 10.0, 0.1])
    Xs = rng.normal(size=(n, P))
    X = Xs * scale + loc
    beta = rng.normal(size=(G, P + 1)) * 0.5
    eta = beta[g, 0] + np.einsum("ij,ij->i", Xs, beta[g, 1:])
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
    w = rng.uniform(0.5, 2.0, size=n)
    perm = rng.permutation(n)
    return g[perm], X[perm], y[perm], w[perm]


def _glm_group_slices(g, X, y, w, groups):
    """Set-up of the loop baselines (not timed): per group, its design matrix with a
    constant column, outcomes and weights."""
    order = np.argsort(g, kind="stable")
    gs = g[order]
    out = []
    for k in groups:
        lo, hi = np.searchsorted(gs, [k, k + 1])
        idx = order[lo:hi]
        out.append((np.c_[np.ones(idx.size), X[idx]], X[idx], y[idx], w[idx]))
    return out


def statsmodels_glm_loop(slices):
    import warnings

    import statsmodels.api as sm

    fam = sm.families.Binomial()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for Xc, _X, yk, wk in slices:
            out.append(sm.GLM(yk, Xc, family=fam, var_weights=wk).fit().params)
    return np.array(out)


def sklearn_logistic_loop(slices):
    import warnings

    from sklearn.linear_model import LogisticRegression

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _Xc, Xk, yk, wk in slices:
            m = LogisticRegression(C=np.inf, solver="newton-cholesky", max_iter=100)
            m.fit(Xk, yk, sample_weight=wk)
            out.append(np.r_[m.intercept_, m.coef_[0]])
    return np.array(out)


def numpy_batched_irls(Xb, yb, wb, n_iter: int = 25, tol: float = 1e-10):
    """IRLS of every group at once: ``Xb (G, r, k)``, ``yb``, ``wb (G, r)`` (equal sizes),
    batched ``np.linalg.solve`` of the (G, k, k) normal equations; stops when no coefficient
    of any group moved more than ``tol`` (relative)."""
    G, _r, k = Xb.shape
    beta = np.zeros((G, k))
    mu = (yb + 0.5) / 2.0
    eta = np.log(mu / (1.0 - mu))
    for _ in range(n_iter):
        v = mu * (1.0 - mu)
        ww = wb * v
        z = eta + (yb - mu) / v
        XtW = Xb * ww[:, :, None]
        A = np.einsum("gri,grj->gij", XtW, Xb)
        b = np.einsum("gri,gr->gi", XtW, z)
        new = np.linalg.solve(A, b[:, :, None])[:, :, 0]
        done = np.nanmax(np.abs(new - beta) / np.maximum(np.abs(new), 1e-12)) < tol
        beta = new
        eta = np.einsum("grk,gk->gr", Xb, beta)
        mu = 1.0 / (1.0 + np.exp(-eta))
        if done:
            break
    return beta


def run_glm(repeats: int, sm_groups: int, seed: int = 1):
    import numba

    gw, Xw, _yw, ww = make_data(50, 30, seed=99)
    yw = (np.random.default_rng(98).random(gw.size) < 0.4).astype(float)
    fit_groups(gw, Xw, yw, ww, family="binomial")  # JIT warm-up
    n_threads = numba.get_num_threads()
    rng = np.random.default_rng(seed)
    results = []
    for G, r in GLM_SCENARIOS:
        print(f"GLM scenario {G} groups x {r} rows", flush=True)
        g, X, y, w = make_glm_data(G, r, seed=seed)
        sizes = np.bincount(g)
        sc: dict = {
            "groups": G,
            "rows_per_group": r,
            "rows": G * r,
            "realised_group_size": {"min": int(sizes.min()), "max": int(sizes.max())},
            "event_rate": float(y.mean()),
        }
        holder: dict = {}

        def call(g=g, X=X, y=y, w=w, holder=holder):
            holder["res"] = fit_groups(g, X, y, w, family="binomial")

        eng = {}
        for label, nt in (("all_threads", n_threads), ("one_thread", 1)):
            numba.set_num_threads(nt)
            try:
                med, times, _ = timeit(call, repeats)
            finally:
                numba.set_num_threads(n_threads)
            eng[label] = {
                "threads": nt,
                "seconds": med,
                "seconds_all": times,
                "rows_per_s": G * r / med,
            }
            print(f"  segstream {label:11s} {med:8.4f} s  {G * r / med / 1e6:6.2f} M rows/s")
        res = holder["res"]
        names = res.status_names()[:, 0]
        eng["status_counts"] = {k: int((names == k).sum()) for k in np.unique(names)}
        eng["mean_iterations"] = float(res.n_iter[:, 0].mean())
        sc["segstream"] = eng
        # seeded subset of groups for the loop baselines
        ns = min(G, sm_groups)
        sub = np.sort(rng.choice(G, size=ns, replace=False))
        slices = _glm_group_slices(g, X, y, w, sub)
        base = {}
        t0 = time.perf_counter()
        csm = statsmodels_glm_loop(slices)
        ts = time.perf_counter() - t0
        base["statsmodels_glm_loop"] = {
            "groups_timed": ns,
            "seconds_timed": ts,
            "seconds": ts * G / ns,
            "extrapolated": ns < G,
            "threads": 1,
        }
        t0 = time.perf_counter()
        csk = sklearn_logistic_loop(slices)
        tk = time.perf_counter() - t0
        base["sklearn_logistic_loop"] = {
            "groups_timed": ns,
            "seconds_timed": tk,
            "seconds": tk * G / ns,
            "extrapolated": ns < G,
            "threads": 1,
        }
        # batched numpy IRLS on all groups (set-up: the (G, r, k) layout, not timed)
        order = np.argsort(g, kind="stable")
        Xb = np.concatenate([np.ones((G * r, 1)), X[order]], axis=1).reshape(G, r, P + 1)
        yb = y[order].reshape(G, r)
        wb = w[order].reshape(G, r)
        npb: dict = {}

        def call_np(Xb=Xb, yb=yb, wb=wb, npb=npb):
            with np.errstate(all="ignore"):
                npb["beta"] = numpy_batched_irls(Xb, yb, wb)

        tn, tn_all, _ = timeit(call_np, max(1, repeats // 2))
        base["numpy_batched_irls"] = {
            "groups_timed": G,
            "seconds": tn,
            "seconds_all": tn_all,
            "extrapolated": False,
            "note": "equal-size groups only; no statuses, min_stat, sign or separation check",
        }
        sc["baselines"] = base
        okm = res.status[sub, 0] == 0
        sc["groups_compared"] = int(okm.sum())
        sc["max_abs_coef_diff_vs_statsmodels"] = (
            float(np.max(np.abs(res.coef[sub, 0][okm] - csm[okm]))) if okm.any() else None
        )
        sc["max_abs_coef_diff_vs_sklearn"] = (
            float(np.max(np.abs(res.coef[sub, 0][okm] - csk[okm]))) if okm.any() else None
        )
        ok_all = res.status[:, 0] == 0
        sc["max_abs_coef_diff_vs_numpy_batched_ok_groups"] = float(
            np.nanmax(np.abs(res.coef[ok_all, 0] - npb["beta"][ok_all]))
        )
        t_all = eng["all_threads"]["seconds"]
        t_one = eng["one_thread"]["seconds"]
        sc["ratios"] = {
            "vs_statsmodels_glm_loop_all_threads": base["statsmodels_glm_loop"]["seconds"] / t_all,
            "vs_statsmodels_glm_loop_one_thread": base["statsmodels_glm_loop"]["seconds"] / t_one,
            "vs_sklearn_logistic_loop_all_threads": base["sklearn_logistic_loop"]["seconds"]
            / t_all,
            "vs_sklearn_logistic_loop_one_thread": base["sklearn_logistic_loop"]["seconds"] / t_one,
            "vs_numpy_batched_irls_all_threads": tn / t_all,
        }
        print("  ratios " + ", ".join(f"{k}={v:.1f}" for k, v in sc["ratios"].items()), flush=True)
        results.append(sc)
    return results


def glm_main(args) -> None:
    import numba

    t0 = time.perf_counter()
    env = env_stamp()
    env["load_avg_start"] = list(os.getloadavg())
    scenarios = run_glm(repeats=args.glm_repeats, sm_groups=args.glm_sm_groups)
    env["load_avg_end"] = list(os.getloadavg())
    big = scenarios[0]
    summary = {
        "scenario": "100k groups x 20 rows, logistic (3 predictors + intercept, weights)",
        "rows_per_s_100k_groups": big["segstream"]["all_threads"]["rows_per_s"],
        "rows_per_s_1k_groups_2000_rows": scenarios[1]["segstream"]["all_threads"]["rows_per_s"],
        "speedup_vs_statsmodels_glm_loop": big["ratios"]["vs_statsmodels_glm_loop_all_threads"],
        "speedup_vs_statsmodels_glm_loop_one_thread": big["ratios"][
            "vs_statsmodels_glm_loop_one_thread"
        ],
        "speedup_vs_sklearn_logistic_loop": big["ratios"]["vs_sklearn_logistic_loop_all_threads"],
        "speedup_vs_numpy_batched_irls": big["ratios"]["vs_numpy_batched_irls_all_threads"],
        "targets": {"speedup_vs_statsmodels_glm_loop": 300},
        "notes": (
            "statsmodels and scikit-learn loops are single-threaded Python loops timed on a "
            "seeded random subset of groups (groups_timed) and extrapolated linearly; their "
            "set-up (sorting, grouping, design matrices) is outside the timed region. "
            f"segstream runs with numba's {numba.get_num_threads()} threads and with 1 thread "
            "(both reported). Medians; JIT compile excluded by a warm-up; other engineers' "
            "jobs shared the machine (load averages in the environment stamp)."
        ),
    }
    summary["targets_met"] = {
        "speedup_vs_statsmodels_glm_loop": summary["speedup_vs_statsmodels_glm_loop"] >= 300
    }
    out = {
        "benchmark": "bench_groupby_regression",
        "part": "glm",
        "mode": "quick",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_seconds": time.perf_counter() - t0,
        "environment": env,
        "scenarios": scenarios,
        "summary": summary,
    }
    path = args.out or Path("benchmarks/results/bench_groupby_regression_glm_quick.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
