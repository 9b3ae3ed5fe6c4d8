"""Write docs/benchmarks.md from the benchmark results in benchmarks/results/*.json.

Every figure on the page is read from a JSON file that a script in ``benchmarks/`` wrote, and
each table names its file. Past runs live in those files' git history, not in the page.

    python docs/gen_benchmarks.py            # rewrite docs/benchmarks.md
    python docs/gen_benchmarks.py --check    # exit 1 when the committed page is stale

``tests/unit/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGE = REPO / "docs" / "benchmarks.md"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def src(name: str) -> str:
    return f"Source: `benchmarks/results/{name}`."


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def n0(x: float) -> str:
    """Integer with a thousands separator: 150,981."""
    return f"{x:,.0f}"


def mrows(x: float) -> str:
    """Rows per second in millions: 25.4M."""
    return f"{x / 1e6:.1f}M"


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def ratio(x: float) -> str:
    return f"{x:.1f}x" if x < 100 else f"{x:,.0f}x"


def shared_note(load_start: float, cpus: int = 2) -> str:
    """A note when the load average at the start says other jobs shared the machine."""
    return " (other jobs shared the machine)" if load_start > cpus else ""


def loadavg(env: dict, start: str, end: str) -> str:
    return f"{env[start][0]:.1f} at start, {env[end][0]:.1f} at end"


# --- sections ------------------------------------------------------------------------------


def training() -> list[str]:
    name = "bench_training.json"
    d = load(name)
    m = d["metrics_test"]
    t = d["data"]["slices"]["test"]
    out = [
        "## Training on flights (`bench_training.py`)",
        "",
        f"`python benchmarks/bench_training.py --quick`: train January–August, validate September, "
        f"test October–December ({n0(t['with_outcome'])} test flights with an outcome); "
        f"{d['environment']['cpu_count']} cores, 1-minute load average "
        f"{d['environment']['load_avg_1m']:.1f}. {d['segments']} segments, "
        f"{d['patterns']} outcome patterns. {src(name)}",
        "",
    ]
    rows = []
    for key, label in (
        ("partitioned", "**partitioned** (segment models, Huber, shrunk)"),
        ("global_linear", "global linear (`__dataset__`)"),
        ("global_xgboost", "global XGBoost regressor"),
    ):
        r = m[key]
        rows.append([label, f"{r['mae']:.2f}", f"{r['rmse']:.2f}", f"{r['r2']:.3f}"])
    out += table(["model (test, Oct–Dec)", "MAE (min)", "RMSE", "R²"], rows)
    fb = m["fallback_share"]
    ivm = m["interval_by_month"]
    out += [
        "",
        f"- MAE gain of the partitioned model: {pct(m['mae_gain_vs_global_linear'])} vs the "
        f"global linear model, {pct(m['mae_gain_vs_global_xgboost'])} vs the global XGBoost "
        "regressor.",
        "- Served by fallback level: "
        + ", ".join(f"{lvl}: {pct(s)}" for lvl, s in sorted(fb.items()))
        + f" (0 = the event's own segment); on a route unseen in training: "
        f"{pct(m['unknown_share'])}.",
        f"- Interval at nominal mass {m['interval']['mass']}: coverage "
        f"**{m['interval']['coverage']:.3f}**, mean width {m['interval']['mean_width']:.1f} min; "
        "by month " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(ivm.items())) + ".",
        _training_time(d),
        "",
    ]
    return out


def training_flights_late() -> list[str]:
    """The binomial example: per-segment logistic models on late flights."""
    name = "bench_training_flights_late.json"
    if not (RESULTS / name).exists():
        return []
    d = load(name)
    m = d["metrics_test"]
    t = d["data"]["slices"]["test"]
    out = [
        "## Training on late flights (`bench_training.py --config config/flights_late.yaml`)",
        "",
        "The binomial example ([classification and counts](guide/classification.md)): "
        "`late = arr_delay >= 15`, one logistic model per segment, same split "
        f"({n0(t['with_outcome'])} test flights with an outcome, "
        f"{pct(m['partitioned']['positive_rate'])} late); {d['environment']['cpu_count']} "
        f"cores, 1-minute load average {d['environment']['load_avg_1m']:.1f}. "
        f"{d['segments']} segments. {src(name)}",
        "",
    ]
    rows = []
    for key, label in (
        ("partitioned", "**partitioned** (segment logistic models, shrunk)"),
        ("global_logistic", "global logistic (one group)"),
        ("global_xgboost", "global XGBoost classifier"),
    ):
        r = m[key]
        rows.append(
            [label, f"{r['log_loss']:.4f}", f"{r['brier']:.4f}", f"{r['auroc']:.4f}",
             f"{r['ece']:.4f}"]
        )  # fmt: skip
    out += table(["model (test, Oct–Dec)", "log loss", "Brier", "AUROC", "ECE"], rows)
    lab = m["labels"]
    out += [
        "",
        f"- Log-loss gain of the partitioned model: {pct(m['log_loss_gain_vs_global_logistic'])} "
        f"vs the global logistic model, {pct(m['log_loss_gain_vs_global_xgboost'])} vs the "
        "global XGBoost classifier.",
        f"- Threshold {lab['threshold']:.3f} (F1 on September): precision "
        f"{lab['precision']:.3f}, recall {lab['recall']:.3f}, F1 {lab['f1']:.3f} on the test "
        "slice.",
        _training_time(d),
        "",
    ]
    return out


def _training_time(d: dict) -> str:
    steps = ", ".join(f"{k} {v:.1f}" for k, v in d["timings"].items())
    runs = d.get("train_seconds_total_runs")
    if runs:  # repeated trainings: medians, with every run
        env = d["environment"]
        load = f"{env['load_avg_start'][0]:.1f} at start, {env['load_avg_1m']:.1f} at end"
        return (
            f"- Training time, median of {d['repeats']} trainings: "
            f"**{d['train_seconds_total']:.1f} s** end to end including the report (runs "
            + " / ".join(f"{x:.1f}" for x in runs)
            + f" s), {d['train_seconds_without_report']:.1f} s without it (runs "
            + " / ".join(f"{x:.1f}" for x in d["train_seconds_without_report_runs"])
            + f" s), after a JIT warm-up of {d['jit_warmup_s']:.1f} s paid once per machine; "
            f"load average {load}{shared_note(env['load_avg_start'][0])}. Median per step (s): "
            + steps
            + "."
        )
    return (
        f"- Training time (one training): **{d['train_seconds_total']:.1f} s** end to end "
        f"including the report ({d['train_seconds_without_report']:.1f} s without it), after a "
        f"JIT warm-up of {d['jit_warmup_s']:.1f} s paid once per machine. Steps (s): {steps}."
    )


def training_scale() -> list[str]:
    names = sorted(p.name for p in RESULTS.glob("bench_training_scale_*.json"))
    if not names:
        return []
    out = [
        "## Training at scale (`bench_training_scale.py`)",
        "",
        "Flights repeated 1x and 10x (full: 100x) with jittered delays and weather, one Parquet "
        "file per copy. `memory`: today's `segstream train --data DIR` end to end. Passes: "
        "each mergeable statistic of `training/passes.py` over the January–August rows of the "
        "10x directory (time pushdown), through the chunked engine (this process) and the dask "
        "engine (2-worker `LocalCluster`, processes), after a warm-up on two files. Peak memory "
        "is the summed resident memory of the child's whole process tree (Dask workers "
        "included), sampled every 0.1 s. Every run is listed; see "
        "[training at scale](guide/scale.md).",
        "",
    ]
    rows = []
    for name in names:
        d = load(name)
        env = d["environment"]
        load_s = f"{env['load_avg_start'][0]:.1f} / {env['load_avg_end'][0]:.1f}"
        for k, m in d["memory_engine"].items():
            rows.append(
                [
                    f"`{name}`",
                    f"memory (train end to end), {k}",
                    n0(d["sizes"][k]["rows"]),
                    f"{m['wall_s']:.0f}",
                    n0(m["rows_per_s"]),
                    f"{m['peak_rss_gb']:.2f}",
                    load_s,
                ]
            )
        for key, m in d["passes"].items():
            eng, k = key.split("_")
            per = [v for v in m["per_pass"].values() if isinstance(v, dict)]
            rows.append(
                [
                    f"`{name}`",
                    f"{eng}: {len(per)} passes, {k}",
                    f"{n0(per[0]['rows'])} per pass",
                    f"{m['wall_s']:.0f} (passes {m['passes_total_s']:.0f}; the rest: start-up, "
                    "warm-up)",
                    f"median pass {m['pass_seconds_median']:.1f} s",
                    f"{m['peak_rss_gb']:.2f}",
                    load_s,
                ]
            )
    out += table(
        ["source", "engine, size", "rows", "wall (s)", "rows/s", "peak RSS (GB)", "load avg"],
        rows,
    )
    out += ["", "Sources: " + ", ".join(f"`benchmarks/results/{n}`" for n in names) + "."]
    with_passes = [n for n in names if load(n)["passes"]]
    if with_passes:
        d = load(with_passes[-1])
        per_rows = []
        for key, m in d["passes"].items():
            for stat, v in m["per_pass"].items():
                if isinstance(v, dict):
                    per_rows.append(
                        [key.replace("_", ", "), stat, f"{v['seconds']:.1f}", n0(v["rows_per_s"])]
                    )
        out += [
            "",
            f"Per pass (`{with_passes[-1]}`). A pass's time is mostly reading and coercing the "
            "record batches, so much of the spread between passes is the machine's load:",
            "",
            *table(["engine, size", "statistic", "seconds", "rows/s"], per_rows),
        ]
    for name in names:
        for k, m in load(name)["memory_engine"].items():
            sp = m.get("step_peak_rss_gb")
            if sp:
                out += [
                    "",
                    f"Peak resident memory (GB) per step of the memory engine at {k} (`{name}`):",
                    "",
                    *table(list(sp), [[f"{v:.2f}" for v in sp.values()]]),
                ]
    return [*out, ""]


def profiles() -> list[str]:
    name = "bench_profiles_quick.json"
    d = load(name)
    f, s, ev = d["fit"], d["scoring"], d["evaluation"]
    c = ev["classifier"]
    iv = ev["intervals"]
    sil = f["silhouette"]
    pats = ev["by_pattern"]["patterns"]
    rows = [
        [
            f'groups / pooled into "other" (min group size {f["min_group_size"]})',
            f"{f['n_groups']} / {f['n_groups_pooled']}",
        ],
        [
            "patterns found (silhouette at K=2 / K=3)",
            f"{f['n_patterns']} ({sil['2']:.2f} / {sil['3']:.2f})",
        ],
        ["fit time Jan–Aug", f"{f['seconds_total']:.1f} s"],
        [
            f"classifier (`{f['classifier']['objective']}`)",
            f"{f['classifier']['n_trees']} trees × depth {f['classifier']['max_depth']}",
        ],
        [
            f"scoring, one thread, batches of {n0(s['batch_rows'])}, median of "
            f"{s['repeats']} passes (classifier alone {n0(s['classifier_only_rows_per_s'])}"
            + ("" if "classifier_seconds_per_pass" in s else ", best pass")
            + ")",
            f"{n0(s['rows_per_s_median'])} rows/s",
        ],
        [
            "pattern accuracy Oct–Dec (majority baseline)",
            f"{c['accuracy']:.3f} ({c['baseline_accuracy']:.3f})",
        ],
        ["weighted one-vs-rest AUROC", f"{c['auroc_weighted_ovr']:.4f}"],
        ["log-loss (prior baseline)", f"{c['log_loss']:.3f} ({c['baseline_log_loss']:.3f})"],
        [
            "coverage at m = 0.5 / 0.8 / 0.95 (calibrated, central)",
            f"{iv['0.5']['coverage']:.3f} / **{iv['0.8']['coverage']:.3f}** / "
            f"{iv['0.95']['coverage']:.3f}",
        ],
        [
            "mean width at 0.8 (naive global interval, its coverage)",
            f"{iv['0.8']['mean_width']:.1f} min ({iv['0.8']['naive_width']:.1f} min, "
            f"{iv['0.8']['naive_coverage']:.3f})",
        ],
        [
            "naive global interval with the same recalibration, at 0.8",
            f"coverage {iv['0.8']['naive_calibrated_coverage']:.3f}, width "
            f"{iv['0.8']['naive_calibrated_width']:.1f} min",
        ],
        [
            "coverage at 0.8 within each pattern (calibrated naive)",
            " / ".join(f"{p['coverage']:.3f}" for p in pats)
            + " ("
            + " / ".join(f"{p['naive_calibrated_coverage']:.3f}" for p in pats)
            + ")",
        ],
        [
            "shortest interval instead of central, at 0.8",
            f"coverage {d['evaluation_shortest_interval']['intervals']['0.8']['coverage']:.3f}",
        ],
    ]
    return [
        "## Outcome profiles (`bench_profiles.py`)",
        "",
        f"`python benchmarks/bench_profiles.py --quick`: flights, classifier on a "
        f"{n0(f['classifier']['n_train_rows'])}-row subsample, {d['environment']['cpu_count']} "
        f"cores. {src(name)}",
        "",
        *table(["", "value"], rows),
        "",
    ]


def _vs_kmeans(d: dict) -> str:
    """The tree's within-segment variance over MiniBatchKMeans', per K (> 1: k-means lower)."""
    v = {k: r["within_variance"] for k, r in d["by_k"].items()}
    q = {k: x["hist"] / x["minibatch_kmeans"] for k, x in v.items()}
    lower = [k for k, x in q.items() if x > 1]
    who = (
        "MiniBatchKMeans reaches a lower within-segment variance than the tree at every K"
        if len(lower) == len(q)
        else f"MiniBatchKMeans reaches a lower within-segment variance at K = {', '.join(lower)}"
        if lower
        else "the tree's within-segment variance is not above MiniBatchKMeans' at any K"
    )
    return f"{who} (tree / k-means: " + ", ".join(f"K={k} {x:.2f}" for k, x in q.items()) + ")."


def partitioner() -> list[str]:
    cols = [
        "K",
        "hist fit (s)",
        "CPU s per fit",
        "exact tree (s)",
        "MiniBatchKMeans (s)",
        "speedup vs exact",
        "speedup vs MiniBatchKMeans",
        "variance ratio vs exact",
        "within-segment variance: tree / MiniBatchKMeans",
        "route end to end (rows/s)",
        "route per CPU s",
        "kernel (rows/s)",
        "tree.apply (rows/s)",
    ]

    def rows(d: dict) -> list[list[str]]:
        out = []
        for k, r in d["by_k"].items():
            rt = r["route"]
            out.append(
                [
                    k,
                    f"{r['hist_fit_s']:.2f}",
                    f"{r['hist_fit_cpu_s_mean']:.2f}",
                    f"{r['exact_tree_fit_s']:.1f}",
                    f"{r['minibatch_kmeans_fit_s']:.1f}",
                    ratio(r["fit_speedup_vs_exact_tree"]),
                    ratio(r["fit_speedup_vs_minibatch_kmeans"]),
                    f"{r['variance_ratio_vs_exact_tree']:.4f}",
                    f"{r['within_variance']['hist']:.3f} / "
                    f"{r['within_variance']['minibatch_kmeans']:.3f} "
                    f"({r['within_variance']['hist'] / r['within_variance']['minibatch_kmeans']:.2f}x)",
                    mrows(rt["numba_end_to_end_rows_per_s"]),
                    mrows(rt["numba_end_to_end_rows_per_cpu_s"]),
                    mrows(rt["numba_kernel_rows_per_s"]),
                    mrows(rt["sklearn_tree_apply_rows_per_s"]),
                ]
            )
        return out

    out = [
        "## Partitioner (`bench_partitioner.py`)",
        "",
        "Seeded gaussian blobs, 10 features, 100 centres; histogram fit = median of 3 whole "
        "`TreePartitioner.fit` calls; routing = medians of 21 interleaved runs on 1e6 rows; "
        "KMeans(n_init=1) is fitted on the first 20k rows only and extrapolated (in the JSON, "
        "not in the table). Within-segment variance is the summed variance of the scaled "
        "features inside the segments, per row (the features' total is 10). MiniBatchKMeans, "
        "not bound to axis-aligned splits, is free to reach a lower one; what the tree buys is segments that "
        "are axis-aligned splits (readable rules, a route for every row through the same "
        "exported arrays, a parent for fallback) and the faster fit.",
        "",
    ]
    for name, title, note in (
        ("bench_partitioner_full.json", "`--full` (1e6 × 10)", ""),
        (
            "bench_partitioner_quick.json",
            "`--quick` (2e5 × 10)",
            " The targets are set for 1e6 rows (`--full`).",
        ),
    ):
        d = load(name)
        s = d["summary"]
        out += [
            f"### {title}",
            "",
            f"Load average {loadavg(d['environment'], 'loadavg_start', 'loadavg_end')}. "
            f"{src(name)}",
            "",
            *table(cols, rows(d)),
            "",
            f"Worst over K: **{ratio(s['fit_speedup_vs_exact_tree'])}** vs the exact tree "
            f"(target {s['targets']['fit_speedup_vs_exact_tree']}), "
            f"**{ratio(s['fit_speedup_vs_minibatch_kmeans'])}** vs MiniBatchKMeans "
            f"(target {s['targets']['fit_speedup_vs_minibatch_kmeans']}), variance ratio "
            f"**{s['variance_ratio_vs_exact_tree']:.4f}** "
            f"(target {s['targets']['variance_ratio_vs_exact_tree']}); routing at "
            f"K = {s['route_k']}: **{mrows(s['route_rows_per_s'])} rows/s** end to end "
            f"(target {s['targets']['route_rows_per_s']}). {_vs_kmeans(d)}{note}",
            "",
        ]
    name = "bench_partitioner_full_k1000.json"
    d = load(name)
    r = d["by_k"]["1000"]
    out += [
        "### `--full --ks 1000` (K = 1000 alone)",
        "",
        f"Load average {loadavg(d['environment'], 'loadavg_start', 'loadavg_end')}. {src(name)}",
        "",
        f"Fit {r['hist_fit_s']:.2f} s (runs "
        + " / ".join(f"{x:.2f}" for x in r["hist_fit_runs_s"])
        + " s), "
        f"**{ratio(r['fit_speedup_vs_exact_tree'])}** vs the exact tree "
        f"({r['exact_tree_fit_s']:.1f} s), **{ratio(r['fit_speedup_vs_minibatch_kmeans'])}** vs "
        f"MiniBatchKMeans ({r['minibatch_kmeans_fit_s']:.1f} s), variance ratio "
        f"{r['variance_ratio_vs_exact_tree']:.4f}, routing "
        f"{mrows(r['route']['numba_end_to_end_rows_per_s'])} rows/s end to end.",
        "",
    ]
    return out


def groupby() -> list[str]:
    out = [
        "## Group-by regression (`bench_groupby_regression.py`)",
        "",
        "Groups of exactly the stated size, rows shuffled, 3 predictors + intercept, weights; "
        "10 % gross outliers for the robust methods; JIT compile excluded; medians (every run "
        "is in the JSON). The engine runs at 1 numba thread and at all threads. The strong "
        "baselines are vectorised (`benchmarks/baselines_groupby.py`): numpy with weighted "
        "group means, then the group-centred cross-products X'WX, X'Wy by `np.bincount` and one "
        "batched `np.linalg.solve`, with BLAS limited to 1 thread and to all threads "
        "(threadpoolctl; bincount and the batched solve are single-threaded either way), and "
        "polars `group_by().agg` of the same centred cross-products with the same solve "
        "(polars' own thread pool). The uncentred forms (raw cross-products, faster, less "
        "accurate on short groups) are reported beside them, and *fastest* is the fastest "
        "vectorised baseline whatever its accuracy. Per-group loops (marked \\*) are timed on "
        "a seeded subset of the groups and extrapolated linearly; their set-up (import, sort, "
        "group index) is outside the timed region. Ratios are baseline time / engine time.",
        "",
    ]
    for name, title in (
        ("bench_groupby_regression_quick.json", "`--quick`"),
        ("bench_groupby_regression_full.json", "`--full`"),
    ):
        if (RESULTS / name).exists():
            out += _groupby_run(name, title)
    return out


def _groupby_run(name: str, title: str) -> list[str]:
    d = load(name)
    env = d["environment"]
    nt = env["numba_num_threads_all"]
    a = f"threads_{nt}"
    time_rows, ratio_rows, hub_rows = [], [], []
    for sc in d["sizes"]:
        size = f"{n0(sc['groups'])} x {sc['rows_per_group']}"
        o, h, sg = sc["ols"], sc["huber"], sc["sigma_clip"]
        b, ra, ag = o["baselines"], o["ratios"], o["agreement"]
        time_rows.append(
            [
                size,
                f"{o['engine']['threads_1']['seconds']:.4f}",
                f"{o['engine'][a]['seconds']:.4f}",
                f"{b['numpy_centred_blas_1']['seconds']:.4f}",
                f"{b[f'numpy_centred_blas_{nt}']['seconds']:.4f}",
                f"{b['polars_centred']['seconds']:.4f}",
                f"{b['numpy_raw']['seconds']:.4f}",
                f"{b['polars_raw']['seconds']:.4f}",
                f"{ag['max_abs_coef_diff_segstream']:.0e} / "
                f"{ag['max_abs_coef_diff_numpy_centred']:.0e} / "
                f"{ag['max_abs_coef_diff_polars_centred']:.0e} / "
                f"{ag['max_abs_coef_diff_numpy_raw']:.0e} / "
                f"{ag['max_abs_coef_diff_polars_raw']:.0e}",
            ]
        )
        ratio_rows.append(
            [
                size,
                f"**{ratio(ra['engine_1thr_vs_numpy_centred_1thr'])}**",
                f"**{ratio(ra['engine_allthr_vs_numpy_centred_allthr'])}**",
                f"**{ratio(ra['engine_allthr_vs_polars_centred'])}**",
                f"{ratio(ra['engine_1thr_vs_fastest_1thr_vectorised'])} "
                f"({o['fastest_1thr_vectorised']})",
                f"{ratio(ra['engine_allthr_vs_fastest_vectorised'])} ({o['fastest_vectorised']})",
                ratio(ra["engine_1thr_vs_numpy_add_at_raw"]),
                ratio(ra["engine_1thr_vs_statsmodels_loop"]),
                ratio(ra["engine_1thr_vs_pandas_apply"]),
                ratio(ra["engine_allthr_vs_polars_ols"])
                if "engine_allthr_vs_polars_ols" in ra
                else "-",
            ]
        )
        rl, hr, ha = h["baselines"]["statsmodels_rlm_loop"], h["ratios"], h["agreement"]
        tight = ha["max_abs_coef_diff_tol_1e-10"]
        hub_rows.append(
            [
                size,
                f"{h['engine']['threads_1']['seconds']:.4f}",
                f"{h['engine'][a]['seconds']:.4f}",
                f"{rl['seconds_per_1000_groups']:.2f} ({n0(rl['groups_timed'])})",
                f"**{ratio(hr['engine_1thr_vs_statsmodels_rlm_loop'])}**",
                f"**{ratio(hr['engine_allthr_vs_statsmodels_rlm_loop'])}**",
                ratio(hr["engine_1thr_vs_sklearn_huber_loop"]),
                "-" if tight is None else f"{tight:.0e} ({ha['groups_compared_tol_1e-10']})",
                f"{sg['engine']['threads_1']['rows_per_s'] / 1e6:.2f} / "
                f"{sg['engine'][a]['rows_per_s'] / 1e6:.2f}",
            ]
        )
    s = d["summary"]
    t, met = s["targets"], s["targets_met"]

    def tgt(k: str) -> str:
        return f"target >= {t[k]:g}x: " + ("met" if met[k] else "**not met**")

    pl_threads = env["polars_thread_pool_size"]
    return [
        f"### {title}",
        "",
        f"{env['cpu_count']} vCPUs, numba threading layer `{env['numba_threading_layer']}`, "
        f"`OMP_WAIT_POLICY={env['omp_wait_policy']}`, polars pool {pl_threads} threads; load "
        f"average {loadavg(env, 'loadavg_start', 'loadavg_end')}"
        f"{shared_note(env['loadavg_start'][0], env['cpu_count'])}. {src(name)}",
        "",
        "OLS, seconds per fit of all groups, and max abs coefficient difference against "
        "per-group `lstsq` on a seeded subset of the groups:",
        "",
        *table(
            [
                "groups x rows",
                "engine 1 thr",
                f"engine {nt} thr",
                "numpy centred, BLAS 1",
                f"numpy centred, BLAS {nt}",
                f"polars centred ({pl_threads} thr)",
                "numpy raw (1 thr)",
                f"polars raw ({pl_threads} thr)",
                "max abs dcoef vs lstsq: engine / numpy c. / polars c. / numpy raw / polars raw",
            ],
            time_rows,
        ),
        "",
        "OLS speed-ups (baseline / engine):",
        "",
        *table(
            [
                "groups x rows",
                "vs numpy centred, 1 thr each",
                f"vs numpy centred, {nt} thr each",
                f"vs polars centred ({nt} thr each)",
                "vs fastest 1-thread vectorised (engine 1 thr)",
                f"vs fastest vectorised (engine {nt} thr)",
                "vs numpy add.at raw (1 thr)",
                "vs statsmodels loop\\* (1 thr)",
                "vs pandas apply\\* (1 thr)",
                f"vs polars-ols\\* ({nt} thr)",
            ],
            ratio_rows,
        ),
        "",
        "Huber (statsmodels `RLM(HuberT(1.345))`, MAD scale, on the sqrt(w)-scaled rows is the "
        "engine's estimator; same tolerance and iteration cap) and sigma-clip (no baseline "
        "fits the same estimator):",
        "",
        *table(
            [
                "groups x rows",
                "Huber 1 thr (s)",
                f"Huber {nt} thr (s)",
                "RLM loop\\* s per 1000 groups (groups timed)",
                "vs RLM, engine 1 thr",
                f"vs RLM, engine {nt} thr",
                "vs sklearn HuberRegressor\\* (another estimator, 1 thr)",
                "max abs dcoef vs RLM at tol 1e-10 (groups)",
                f"sigma-clip M rows/s, 1 / {nt} thr",
            ],
            hub_rows,
        ),
        "",
        f"{s['scenario']}: OLS {s['ols_rows_per_s_1thr'] / 1e6:.1f}M rows/s at 1 thread, "
        f"{s['ols_rows_per_s_allthr'] / 1e6:.1f}M at {nt}; "
        f"**{ratio(s['ols_speedup_vs_numpy_same_threads_1'])}** centred numpy at 1 thread "
        f"({tgt('ols_speedup_vs_numpy_same_threads_1')}), "
        f"**{ratio(s['ols_speedup_vs_numpy_same_threads_all'])}** at {nt} threads "
        f"({tgt('ols_speedup_vs_numpy_same_threads_all')}), "
        f"**{ratio(s['ols_speedup_vs_polars_agg'])}** centred polars "
        f"({tgt('ols_speedup_vs_polars_agg')}); "
        f"{ratio(s['ols_speedup_vs_fastest_1thr_vectorised'])} the fastest 1-thread vectorised "
        f"baseline and {ratio(s['ols_speedup_vs_fastest_vectorised_any_threads'])} the fastest "
        f"at any thread count; Huber **{ratio(s['huber_speedup_vs_statsmodels_rlm_1thr'])}** "
        f"statsmodels RLM at 1 thread each ({tgt('huber_speedup_vs_statsmodels_rlm_1thr')}), "
        f"{ratio(s['huber_speedup_vs_statsmodels_rlm_allthr'])} with the engine on {nt}.",
        "",
        f"\\* {s['notes']}",
        "",
    ]


def groupby_glm() -> list[str]:
    """Group-by GLMs (issue 18): ``bench_groupby_regression.py --part glm``, every run and the
    median of the headline ratio over the runs."""
    import statistics

    names = sorted(p.name for p in RESULTS.glob("bench_groupby_regression_glm_quick*.json"))
    if not names:
        return []
    out = ["## Group-by GLMs (`bench_groupby_regression.py --part glm`)", ""]
    heads: list[float] = []
    for k, name in enumerate(names, 1):
        d = load(name)
        env = d["environment"]
        rows = []
        for sc in d["scenarios"]:
            seg, ra, base = sc["segstream"], sc["ratios"], sc["baselines"]
            smb = base["statsmodels_glm_loop"]
            rows.append(
                [
                    f"{n0(sc['groups'])} x {n0(sc['rows_per_group'])}",
                    f"{seg['all_threads']['rows_per_s'] / 1e6:.2f}",
                    f"{seg['one_thread']['rows_per_s'] / 1e6:.2f}",
                    f"{ratio(ra['vs_statsmodels_glm_loop_all_threads'])} / "
                    f"{ratio(ra['vs_statsmodels_glm_loop_one_thread'])}",
                    f"{ratio(ra['vs_sklearn_logistic_loop_all_threads'])} / "
                    f"{ratio(ra['vs_sklearn_logistic_loop_one_thread'])}",
                    ratio(ra["vs_numpy_batched_irls_all_threads"]),
                    f"{n0(smb['groups_timed'])}",
                    ", ".join(f"{k} {v}" for k, v in seg["status_counts"].items()),
                    f"{sc['max_abs_coef_diff_vs_statsmodels']:.1e}",
                ]
            )
        s = d["summary"]
        heads.append(s["speedup_vs_statsmodels_glm_loop"])
        out += [
            f"**Run {k}** ({d['created_at'][:10]}): per-segment logistic regression "
            f'(`fit_groups(family="binomial")`): groups of exactly the stated size, rows '
            f"shuffled, 3 predictors + intercept, weights; JIT compile excluded; medians. "
            f"{env['cpu_count']} vCPUs, load average "
            f"{loadavg(env, 'load_avg_start', 'load_avg_end')}"
            f"{shared_note(env['load_avg_start'][0])}. {src(name)}",
            "",
            *table(
                [
                    "groups x rows",
                    f"M rows/s ({env.get('numba_num_threads', env.get('numba_num_threads_all'))} threads)",
                    "M rows/s (1 thread)",
                    "vs statsmodels GLM loop* (all / 1 thread)",
                    "vs sklearn LogisticRegression loop* (all / 1 thread)",
                    "vs batched numpy IRLS",
                    "groups timed*",
                    "statuses",
                    "max abs dcoef vs statsmodels",
                ],
                rows,
            ),
            "",
            f"\\* {s['notes']}",
            "",
        ]
    target = s["targets"]["speedup_vs_statsmodels_glm_loop"]
    med = statistics.median(heads)
    out += [
        f"{s['scenario']}, median over the {len(heads)} runs "
        f"({', '.join(ratio(h) for h in heads)}): **{ratio(med)}** the statsmodels GLM loop "
        f"(target {target}x: {'met' if med >= target else '**not met**'}).",
        "",
    ]
    return out


def worker_runs(files: list[str]) -> list[str]:
    """One row per bench_worker run and the medians over the runs of each mode."""
    import statistics

    cols = [
        ("at-least-once", lambda d: d["summary"]["events_per_s_at_least_once"], n0),
        ("exactly-once", lambda d: d["summary"]["events_per_s_exactly_once"], n0),
        (
            "p99 at half load (s)",
            lambda d: d["summary"]["p99_latency_s_at_half_load"],
            "{:.3f}".format,
        ),
        ("in process", lambda d: d["summary"]["in_process_events_per_s"], n0),
        ("faust", lambda d: d["faust_baseline"].get("events_per_s"), n0),
        ("Quix", lambda d: d["quix_baseline"].get("events_per_s"), n0),
        ("worker / faust", lambda d: d["summary"].get("speedup_vs_faust_per_message"), ratio),
        ("worker / Quix", lambda d: d["summary"].get("speedup_vs_quix_per_message"), ratio),
        ("load average", lambda d: d["environment"]["load_average_at_start"][0], "{:.1f}".format),
    ]
    rows = []
    by_mode: dict[str, list[dict]] = {}
    for name in files:
        d = load(name)
        by_mode.setdefault(d["mode"], []).append(d)
        rows.append(
            [f"`{name}`", d["mode"]]
            + [fmt(v) if (v := get(d)) is not None else "–" for _, get, fmt in cols]
        )
    for mode, ds in by_mode.items():
        med = []
        for _, get, fmt in cols:
            vals = [v for d in ds if (v := get(d)) is not None]
            med.append(f"**{fmt(statistics.median(vals))}**" if vals else "–")
        rows.append([f"median of {len(ds)} run(s)", mode, *med])
    return [
        "Every run (events/s unless stated; ratios are taken within each run):",
        "",
        *table(["run", "mode", *(c[0] for c in cols)], rows),
        "",
    ]


def worker() -> list[str]:
    out = [
        "## Stream worker (`bench_worker.py`)",
        "",
        "Flight events (September on) through the embedded Tansu broker, 6 partitions, one "
        "process per contestant, on the same 2-core machine as the broker. Every contestant is "
        "warmed up before its first consume. Throughput, for every contestant: events / (first "
        "consume → acknowledgement of the last output record), timed inside the process. "
        "Latency: at a fixed input rate of half the at-least-once throughput (prediction's "
        "broker timestamp minus the event's, joined by `event_id`). The faust and Quix Streams "
        "baselines score each message with the plain-Python per-message scorer of "
        "`benchmarks/per_message_scorer.py` (the bundle copied into lists and dicts, XGBoost "
        "`inplace_predict` on one row for the pattern), checked against `Bundle.score` in the "
        "same run; each side's client settings are in the JSON.",
        "",
    ]
    files = sorted(p.name for p in RESULTS.glob("bench_worker_*.json"))
    # runs of a binomial/Poisson bundle against a regression bundle: their own section
    files = [
        f
        for f in files
        if load(f).get("benchmark") == "bench_worker" and "baseline_bundle" not in load(f)
    ]
    out += worker_runs(files)
    for name in files:
        d = load(name)
        title = f"`--{d['mode']}`, `{name}`"
        s = d["summary"]
        tg = s["targets"]
        lat = d["latency_at_half_load"]
        al, eo = d["worker_at_least_once"], d["worker_exactly_once"]
        ip = d["in_process"]
        rows = [
            [
                "end-to-end, one worker, at-least-once",
                f"**{n0(al['events_per_s'])} events/s**",
                f">= {n0(tg['events_per_s_at_least_once'])}",
            ],
            [
                "end-to-end, one worker, exactly-once",
                f"**{n0(eo['events_per_s'])} events/s**",
                f">= {n0(tg['events_per_s_exactly_once'])}",
            ],
            [
                f"latency at half load ({n0(lat['achieved_input_rate'])} events/s, "
                f"{n0(lat['events'])} events) p50 / p99 / max",
                f"{lat['p50_s']:.3f} s / **{lat['p99_s']:.3f} s** / {lat['max_s']:.3f} s",
                f"p99 <= {tg['p99_latency_s_at_half_load']} s",
            ],
            [
                f"decode + score + encode in process, no Kafka (batches of {n0(ip['batch_size'])})",
                f"{n0(ip['events_per_s_decode_score_encode'])} events/s",
                "",
            ],
        ]
        pm = d.get("per_message_in_process")
        if pm:
            rows.append(
                [
                    "per-message plain-Python scorer in process, no Kafka (without the "
                    "XGBoost call)",
                    f"{n0(pm['events_per_s'])} events/s ({n0(pm['events_per_s_without_pattern_classifier'])}); "
                    f"batch path {ratio(s['in_process_speedup_vs_per_message'])} faster",
                    "",
                ]
            )
        for key, label in (
            ("faust_baseline", "faust-streaming agent, per-message scorer"),
            ("quix_baseline", "Quix Streams application, per-message scorer"),
        ):
            b = d[key]
            if "events_per_s" in b:
                speed = s["speedup_vs_" + key.split("_")[0] + "_per_message"]
                version = b.get("faust_streaming") or b.get("quixstreams")
                rows.append(
                    [
                        f"{label} ({version}, {n0(b['events'])} events)",
                        f"{n0(b['events_per_s'])} events/s (worker {ratio(speed)} faster)",
                        "",
                    ]
                )
            else:
                rows.append([label, b.get("skipped") or b.get("error", "not run"), ""])
        env = d["environment"]
        out += [
            f"### {title} ({n0(al['events'])} events)",
            "",
            f"Bundle: {d['bundle']}; broker: {env['broker']}; load average "
            f"{loadavg(env, 'load_average_at_start', 'load_average_at_end')}. {src(name)}",
            "",
            *table(["measure", "result", "target"], rows),
            "",
        ]
        chk = (pm or {}).get("parity_with_bundle_score")
        if chk:
            diff = max(
                chk[f"max_abs_diff_{k}"]
                for k in ("prediction", "interval_low", "interval_high", "pattern_proba")
            )
            mism = sum(chk[f"{k}_mismatches"] for k in ("segment", "fallback_level", "pattern"))
            out += [
                f"Same model: on {n0(chk['events'])} events the per-message scorer's prediction, "
                f"interval and pattern probability differ from `Bundle.score` by at most "
                f"{diff:.1e}, with {mism} segment, fallback-level or pattern mismatches.",
                "",
            ]
    return out


def worker_families() -> list[str]:
    """bench_worker runs with --baseline-bundle: a binomial/Poisson bundle against the
    regression bundle in the same run (issue 18: within 15 %)."""
    import statistics

    files = sorted(p.name for p in RESULTS.glob("bench_worker_*.json"))
    files = [
        f
        for f in files
        if load(f).get("benchmark") == "bench_worker" and "baseline_bundle" in load(f)
    ]
    if not files:
        return []
    rows = []
    ratios: dict[str, list[float]] = {"in_process": [], "at_least_once": [], "exactly_once": []}
    for name in files:
        d = load(name)
        b = d["baseline_bundle"]
        v = d["summary"]["vs_baseline_bundle"]
        for k in ratios:
            if v.get(k) is not None:
                ratios[k].append(v[k])
        env = d["environment"]
        rows.append(
            [
                f"`benchmarks/results/{name}`",
                f"{d['family']} vs {b['family']}",
                f"{n0(d['in_process']['events_per_s_decode_score_encode'])} / "
                f"{n0(b['in_process']['events_per_s_decode_score_encode'])}",
                f"{n0(d['worker_at_least_once']['events_per_s'])} / "
                f"{n0(b['worker_at_least_once']['events_per_s'])}",
                f"{n0(d['worker_exactly_once']['events_per_s'])} / "
                f"{n0(b['worker_exactly_once']['events_per_s'])}",
                " / ".join(
                    f"{v[k]:.3f}" if v.get(k) is not None else "–"
                    for k in ("in_process", "at_least_once", "exactly_once")
                ),
                loadavg(env, "load_average_at_start", "load_average_at_end"),
            ]
        )
    med = " / ".join(
        f"**{statistics.median(r):.3f}**" if r else "–"
        for r in (ratios["in_process"], ratios["at_least_once"], ratios["exactly_once"])
    )
    rows.append([f"median of {len(files)} run(s)", "", "", "", "", med, ""])
    d0 = load(files[0])
    return [
        "## Stream worker per target family (`bench_worker.py --baseline-bundle`)",
        "",
        f"The worker on a binomial bundle ({d0['bundle']}, `config/flights_late.yaml`) and on "
        f"the regression bundle ({d0['baseline_bundle']['bundle']}, `config/flights.yaml`) in "
        "the same run, on the same events: each phase of the second bundle right after the "
        "same phase of the first, on a fresh embedded broker. Events/s, binomial / regression; "
        "ratios binomial over regression (issue 18: at least 0.85). Every run:",
        "",
        *table(
            [
                "run",
                "bundles",
                "in process",
                "at-least-once",
                "exactly-once",
                "ratios (in process / ALO / EO)",
                "load average",
            ],
            rows,
        ),
        "",
    ]


def forest() -> list[str]:
    name = "bench_forest_quick.json"
    if not (RESULTS / name).exists():
        return []
    d = load(name)
    rows = []
    for batch, b in d["batches"].items():
        rows.append(
            [
                n0(int(batch)),
                ", ".join(f"{x:.2f}" for x in b["forest_us_per_row"]),
                f"**{b['forest_us_per_row_median']:.2f}**",
                ", ".join(f"{x:.2f}" for x in b["inplace_predict_us_per_row"]),
                f"**{b['inplace_predict_us_per_row_median']:.2f}**",
                ratio(b["speedup_median"]),
            ]
        )
    c = d["classifier"]
    env = d["environment"]
    return [
        "## Pattern classifier (`bench_forest.py`)",
        "",
        f"The flights pattern classifier ({c['objective']}, {c['trees']} trees, "
        f"{c['features']} features): `Forest.predict` (compiled, `shared/_forest.py`) against "
        f"XGBoost {env['xgboost']} `Booster.inplace_predict`, {d['threads']} thread, "
        f"{n0(d['rows'])} real events, {d['passes']} interleaved passes per batch size "
        f"(µs per row; one row per call: 2,000 calls per pass). Probabilities bit-identical: "
        f"{'yes' if d['bit_identical_probabilities'] else '**no**'}. Load average "
        f"{loadavg(env, 'load_average_at_start', 'load_average_at_end')}. {src(name)}",
        "",
        *table(
            [
                "rows per call",
                "forest, passes",
                "median",
                "inplace_predict, passes",
                "median",
                "median ratio",
            ],
            rows,
        ),
        "",
    ]


def fetch() -> list[str]:
    name = "bench_worker_fetch_quick.json"
    if not (RESULTS / name).exists():
        return []
    d = load(name)
    rows = []
    for setting, runs in d["runs"].items():
        sm = d["summary"][setting]
        ok = [r for r in runs if "error" not in r]
        if not ok:
            rows.append([setting, "failed", "", "", ""])
            continue
        rows.append(
            [
                setting,
                ", ".join(f"{r['p99_s']:.3f}" for r in ok),
                f"**{sm['p99_s_median']:.3f}**",
                f"{sm['p50_s_median']:.3f}",
                ", ".join(f"{r['broker_cpu_cores_during_input']:.2f}" for r in ok),
            ]
        )
    env = d["environment"]
    return [
        "## Worker latency by fetch setting (`bench_worker_fetch.py`)",
        "",
        f"One worker at {n0(d['rate'])} events/s for {d['seconds_per_run']:.0f} s per run, "
        f"{d['runs_per_setting']} interleaved runs per setting, a fresh broker per run; "
        f"latency = prediction's broker timestamp minus the event's; broker CPU = the broker "
        f"process's CPU over the input window (cores). Bundle: {d['bundle']}; load average "
        f"{loadavg(env, 'load_average_at_start', 'load_average_at_end')}. {src(name)}",
        "",
        *table(
            [
                "events consumer",
                "p99 per run (s)",
                "p99 median (s)",
                "p50 median (s)",
                "broker CPU per run",
            ],
            rows,
        ),
        "",
    ]


def monitor() -> list[str]:
    out = [
        "## Monitor acceptance (`monitor_acceptance.py`)",
        "",
        "Bundle trained by `config/flights.yaml` on January–August; one `segstream worker`, one "
        "`segstream monitor` and the simulator replaying September–December on the embedded "
        "broker.",
        "",
    ]
    rows = []
    names = tuple(
        n
        for n in (
            "monitor_acceptance.json",
            "monitor_acceptance_calibrated.json",
            "monitor_acceptance_loop.json",
        )
        if (RESULTS / n).is_file()
    )
    for name in names:
        d = load(name)
        s, r = d["summary"], d["run"]
        mt = r["metrics"]
        join = 'segstream_monitor_outcome_join_total{result="%s"}'
        rec = 'segstream_monitor_records_total{result="%s",source="%s"}'
        late = sum(mt.get(rec % ("late", src_), 0) for src_ in ("stats", "predictions", "outcomes"))
        bad = sum(
            mt.get(rec % ("malformed", src_), 0) for src_ in ("stats", "predictions", "outcomes")
        )
        rows.append(
            [
                f"`benchmarks/results/{name}`",
                f"{r['replay_s']:.1f} s",
                f"{r['until_alerts_idle_s']:.0f} s",
                n0(mt[join % "joined"]),
                n0(mt[join % "expired_prediction"]),
                f"{late:.0f} / {bad:.0f}",
                f"**{s['n_alerts']}**",
                str(s["duplicate_alert_ids"]),
                ", ".join(f"{k} {v}" for k, v in s["by_type_severity"].items()),
            ]
        )
    out += table(
        [
            "result file",
            "replay",
            "until the last alert",
            "outcomes joined",
            "predictions expired",
            "late / malformed records",
            "alerts",
            "duplicate alert ids",
            "by type/severity",
        ],
        rows,
    )
    out += [
        "",
        f"The first file used the fixed PSI levels (0.1 / 0.25), the others the calibrated ones "
        f"(the default); the first two ran the faust monitor with new-key counts within a "
        f"30-day lookback, `monitor_acceptance_loop.json` the confluent-kafka monitor with the "
        f"30-day idle expiry (a key's count runs from its first sighting until it has not been "
        f"seen for 30 days). The simulator's own line from the first run: "
        f"`{load(names[0])['run']['simulator']}`.",
        "",
    ]
    with_check = [n for n in names if load(n).get("new_segment_check")]
    chk = load(with_check[-1])["new_segment_check"] if with_check else None
    if chk:
        newseg = load(with_check[-1])["summary"]["new_segment"]
        out += [
            f"New segments in `benchmarks/results/{with_check[-1]}` (count since first seen, "
            f"threshold {chk['threshold']}): {len(chk['expected_keys'])} never-seen carrier "
            f"routes reach the threshold over the whole replay, {len(chk['alerted_keys'])} "
            f"alerted (at most {chk['alerts_per_key_max']} alert per key); not alerted: "
            f"{', '.join(chk['missing']) or 'none'}; unexpected: "
            f"{', '.join(chk['unexpected']) or 'none'}.",
            "",
        ]
        if newseg and "serving_segment" in newseg[0]:
            out += [
                *table(
                    ["key", "first seen", "alerted (window end)", "count", "serving segment"],
                    [
                        [
                            f"`{r['key']}`",
                            (r.get("first_seen") or "")[:10],
                            r.get("window_end") or r["window"],
                            str(r["count"]),
                            str(r.get("serving_segment")),
                        ]
                        for r in newseg
                    ],
                ),
                "",
            ]
    name = "drift_calibration_sep_dec.json"
    d = load(name)
    rows = [
        [
            f"`{feat}`",
            f"{v['days']}",
            f"{v['default_warning_or_more']} ({v['default_critical']})",
            f"{v['calibrated_warning_or_more']} ({v['calibrated_critical']})",
            " / ".join(f"{x:.3g}" for x in v["calibrated_levels"]),
        ]
        for feat, v in d.items()
    ]
    out += [
        "## Drift calibration (`drift_calibration.py`)",
        "",
        f"Daily windows September–December against the January–August reference: days with a "
        f"drift alert per feature (critical in brackets), fixed levels against calibrated ones. "
        f"{src(name)}",
        "",
        *table(
            [
                "feature",
                "days",
                "fixed levels: alert (critical)",
                "calibrated: alert (critical)",
                "calibrated warning / critical PSI",
            ],
            rows,
        ),
        "",
    ]
    return out


#: bench_monitor runs of the batch record path (issue 21, throughput), in the order they ran.
MONITOR_BATCH_RUNS = (
    "bench_monitor_quick_batch_before.json",
    "bench_monitor_quick_floor.json",
    "bench_monitor_quick_batch_join.json",
    "bench_monitor_quick_ck_floor.json",
    "bench_monitor_quick_batch.json",
    "bench_monitor_quick_batch_2.json",
    "bench_monitor_quick_batch_3.json",
    "bench_monitor_quick_batch_before_2.json",
    "bench_monitor_quick_batch_before_3.json",
    "bench_monitor_quick_batch_4.json",
    "bench_monitor_quick_lz4_floor.json",
)

#: bench_monitor runs of the confluent-kafka monitor loop (issue 21), in the order they ran.
MONITOR_LOOP_RUNS = (
    "bench_monitor_quick_loop.json",
    "bench_monitor_quick_loop_2.json",
    "bench_monitor_quick_loop_3.json",
)
#: The faust monitor's runs with the same script (the "before" of the loop).
MONITOR_FAUST_RUNS = (
    "bench_monitor_quick_batch.json",
    "bench_monitor_quick_batch_2.json",
    "bench_monitor_quick_batch_3.json",
    "bench_monitor_quick_batch_4.json",
)


def monitor_loop_summary() -> list[str]:
    """Medians of the faust monitor's runs (batch record path) against the loop's."""
    import statistics

    def runs(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return [load(n) for n in names if (RESULTS / n).is_file()]

    before, after = runs(MONITOR_FAUST_RUNS), runs(MONITOR_LOOP_RUNS)
    if not before or not after:
        return []

    def fig(ds: list[dict[str, Any]], key: str, phase: str) -> list[float]:
        return [d[phase][key] for d in ds if d.get(phase) and d[phase].get(key) is not None]

    def line(ds: list[dict[str, Any]], key: str, phase: str, fmt: str) -> str:
        xs = fig(ds, key, phase)
        return f"{fmt.format(statistics.median(xs))} (runs {', '.join(fmt.format(x) for x in xs)})"

    loads = [x for d in after for x in d["alone"]["loadavg_1m"]]
    return [
        "### Before and after the confluent-kafka loop",
        "",
        f"The faust monitor with the batch record path ({', '.join(f'`{n}`' for n in MONITOR_FAUST_RUNS)}) "
        f"against the confluent-kafka monitor loop ({', '.join(f'`{n}`' for n in MONITOR_LOOP_RUNS if (RESULTS / n).is_file())}), "
        "same script, medians:",
        "",
        *table(
            ["", "faust monitor", "confluent-kafka loop"],
            [
                [
                    "monitor alone, records/s",
                    line(before, "monitor_records_per_s", "alone", "{:,.0f}"),
                    line(after, "monitor_records_per_s", "alone", "{:,.0f}"),
                ],
                [
                    "worker in the same run, events/s",
                    line(before, "worker_events_per_s", "alone", "{:,.0f}"),
                    line(after, "worker_events_per_s", "alone", "{:,.0f}"),
                ],
                [
                    "live catch-up lag, s",
                    line(before, "catch_up_lag_s", "live", "{:.1f}"),
                    line(after, "catch_up_lag_s", "live", "{:.1f}"),
                ],
            ],
        ),
        "",
        f"The loop's runs had a 1-minute load average of {min(loads):.1f}-{max(loads):.1f} "
        "(other engineers' tests and benchmarks on the 2 cores); the faust runs 1.3-2.5.",
        "",
    ]


#: bench_monitor runs after the monitor speed work (issue 21 item 4), in the order they ran.
MONITOR_SPEED_RUNS = (
    "bench_monitor_quick_speed.json",
    "bench_monitor_quick_speed_2.json",
    "bench_monitor_quick_speed_3.json",
)


def monitor_speed_summary() -> list[str]:
    """The loop's runs before the speed work against the runs after it (medians, every run)."""
    import statistics

    before = [load(n) for n in MONITOR_LOOP_RUNS if (RESULTS / n).is_file()]
    names = [n for n in MONITOR_SPEED_RUNS if (RESULTS / n).is_file()]
    after = [load(n) for n in names]
    if not before or not after:
        return []

    def line(ds: list[dict[str, Any]], key: str, phase: str, fmt: str) -> str:
        xs = [d[phase][key] for d in ds if d.get(phase) and d[phase].get(key) is not None]
        if not xs:
            return "-"
        return f"{fmt.format(statistics.median(xs))} (runs {', '.join(fmt.format(x) for x in xs)})"

    def loads(ds: list[dict[str, Any]]) -> str:
        xs = [x for d in ds for x in d["alone"]["loadavg_1m"]]
        return f"{min(xs):.1f}-{max(xs):.1f}"

    return [
        "### Monitor speed: one monitor against one worker",
        "",
        f"The loop before ({', '.join(f'`{n}`' for n in MONITOR_LOOP_RUNS)}) and after the "
        f"speed work ({', '.join(f'`benchmarks/results/{n}`' for n in names)}: event-time kernel compiled before "
        "the first record, the worker's `tune_gc`, lz4 on the changelog producer), "
        "`bench_monitor.py --quick`, join sample 1, medians:",
        "",
        *table(
            ["", "loop before", "after"],
            [
                [
                    "monitor alone, records/s",
                    line(before, "monitor_records_per_s", "alone", "{:,.0f}"),
                    line(after, "monitor_records_per_s", "alone", "{:,.0f}"),
                ],
                [
                    "worker in the same run, events/s",
                    line(before, "worker_events_per_s", "alone", "{:,.0f}"),
                    line(after, "worker_events_per_s", "alone", "{:,.0f}"),
                ],
                [
                    "monitor events/s over the worker's",
                    line(before, "monitor_to_worker_events_ratio", "alone", "{:.2f}"),
                    line(after, "monitor_to_worker_events_ratio", "alone", "{:.2f}"),
                ],
                [
                    "live catch-up lag, s",
                    line(before, "catch_up_lag_s", "live", "{:.1f}"),
                    line(after, "catch_up_lag_s", "live", "{:.1f}"),
                ],
                ["1-minute load average (alone phase)", loads(before), loads(after)],
            ],
        ),
        "",
        *[
            f"Scale-out in `benchmarks/results/{n}` (`--instances`, a fresh consumer group per "
            f"count on the same {d['alone']['scale_out'][0]['partitions']}-partition topics, "
            "rebalances inside the timing, no core of their own): "
            + ", ".join(
                f"{x['instances']} instance{'s' if x['instances'] > 1 else ''} "
                f"**{x['records_per_s']:,.0f} records/s** combined"
                for x in d["alone"]["scale_out"]
            )
            + "."
            for n, d in zip(names, after, strict=True)
            if d["alone"].get("scale_out")
        ],
        "",
    ]


#: What each floor mode of ``bench_monitor.py --floor`` runs.
FLOOR_MODES = {
    "count": "faust app, counts records only",
    "count-tuned": "faust app, counts only; stream buffer 32768, fetch 8 MiB",
    "changelog": "faust app, counts + one changelog record per record",
    "changelog-lz4": "as changelog, producer compression lz4",
    "ck-count": "confluent-kafka loop, counts only",
    "ck-core": "confluent-kafka loop + MonitorCore (no changelog)",
    "ck-changelog": "confluent-kafka loop + MonitorCore + changelog producer",
}


def monitor_floors() -> list[str]:
    """bench_monitor.py --floor: the record path without the monitor's work (same topics)."""
    rows = []
    for name in MONITOR_BATCH_RUNS:
        if not (RESULTS / name).is_file():
            continue
        d = load(name)
        a = d["alone"]
        mm = a.get("monitor_metrics", {})
        sent = sum(v for k, v in mm.items() if k.startswith("segstream_monitor_changelog_rec"))
        skipped = sum(v for k, v in mm.items() if k.startswith("segstream_monitor_changelog_ski"))
        inputs = a["events"] + a["outcomes"]
        cl = (
            f" ({sent / inputs:.2f} changelog records per input record; "
            f"{n0(skipped)} keys created and deleted within one batch, not written)"
            if sent
            else ""
        )
        rows.append(
            [
                f"`benchmarks/results/{name}`",
                f"`segstream monitor`{cl}",
                n0(a["monitor_records_per_s"]),
                "polled",
                f"{a['loadavg_1m'][0]:.1f}-{a['loadavg_1m'][1]:.1f}",
            ]
        )
        for mode, f in a.get("faust_floor", {}).items():
            own = "seconds_polled" in f  # the app's own first/last batch clock
            rows.append(
                [
                    f"`benchmarks/results/{name}`",
                    f"`{mode}`: {FLOOR_MODES.get(mode, mode)}",
                    n0(f["records_per_s"]),
                    "own clock" if own else f"polled ({f['seconds']:.2f} s)",
                    f"{f['loadavg_1m'][0]:.1f}-{f['loadavg_1m'][1]:.1f}",
                ]
            )
    core = []
    for name in ("monitor_core_before.json", "monitor_core_after.json"):
        if (RESULTS / name).is_file():
            d = load(name)
            env = d["environment"]
            runs = ", ".join(n0(r["records_per_s"]) for r in d["runs"])
            core.append(
                [
                    f"`benchmarks/results/{name}`",
                    d["label"],
                    n0(d["median_records_per_s"]),
                    runs,
                    f"{env['loadavg_start'][0]:.1f}-{env['loadavg_end'][0]:.1f}",
                ]
            )
    if not rows and not core:
        return []
    core_part = (
        [
            "`MonitorCore` alone, no broker (`benchmarks/profile_monitor_core.py`: 20,000 "
            "synthetic predictions and their outcomes as JSON bytes, 6 partitions, batches of "
            "1,000 per partition, tables as dicts that track changed keys):",
            "",
            *table(["result file", "code", "median records/s", "runs", "load avg"], core),
            "",
        ]
        if core
        else []
    )
    return [
        "### Where the monitor's time goes: floors on the same topics",
        "",
        "`bench_monitor.py --floor MODE` times other consumers, each in its own consumer "
        "group, on the alone phase's preloaded topics exactly as it times the monitor "
        "(`benchmarks/faust_floor_app.py`, `benchmarks/confluent_floor_app.py`). The faust "
        "app that only counts records is the ceiling of any monitor built on faust agents; "
        "the confluent-kafka rows are what a consumer loop like the worker's gives with the "
        "same `MonitorCore` (without the recovery, ticks and rebalance handling a real "
        "service needs). Timing: *polled* = records counted after the first poll of "
        "`/metrics` over the time to the last (every 0.25 s: a consumer that finishes in "
        "about a second is not timed by it, e.g. `ck-count` in `bench_monitor_quick_ck_floor"
        ".json`); *own clock* = the app's first and last batch times. "
        "`bench_monitor_quick_floor.json` ran the monitor under py-spy and with unit tests "
        "on the machine: its figures are not throughput results.",
        "",
        *table(["result file", "consumer", "records/s", "timing", "load avg"], rows),
        "",
        *core_part,
    ]


def monitor_throughput() -> list[str]:
    """bench_monitor.py: the monitor alone, and live behind one worker (issue 21)."""
    names = [
        n
        for n in (
            "bench_monitor_quick_before.json",
            "bench_monitor_quick.json",
            "bench_monitor_quick_sampled.json",
            "bench_monitor_full.json",
            *MONITOR_BATCH_RUNS,
            *MONITOR_LOOP_RUNS,
            "bench_monitor_quick_loop_sampled.json",
        )
        if (RESULTS / n).is_file()
    ]
    if not names:
        return []
    rows = []
    for name in names:
        d = load(name)
        a, lv = d["alone"], d.get("live")
        rows.append(
            [
                f"`benchmarks/results/{name}`",
                d.get("label") or "-",
                f"{d.get('join_sample_rate', 1.0):g}",
                n0(d["flights"]),
                n0(a["worker_events_per_s"]) if a["worker_events_per_s"] is not None else "-",
                n0(a["monitor_records_per_s"]),
                n0(a["monitor_events_per_s"]),
                f"{a['monitor_to_worker_events_ratio']:.3f}"
                if a["monitor_to_worker_events_ratio"] is not None
                else "-",
                f"{lv['catch_up_lag_s']:.1f} s" if lv else "-",
                f"{n0(lv['backlog_max_predictions'])} / {n0(lv['backlog_median_predictions'])}"
                if lv and lv["backlog_max_predictions"] is not None
                else "-",
                f"{a['loadavg_1m'][0]:.1f}-{a['loadavg_1m'][1]:.1f}",
            ]
        )
    return [
        "## Monitor throughput (`bench_monitor.py`)",
        "",
        "Real flights from September 2013 with their outcomes, scored by a real worker loop "
        "(fake bundle); then `segstream monitor` alone on the preloaded topics (records/s: "
        "predictions + outcomes; events/s: half of that; ratio: monitor events/s over the "
        "worker's events/s in the same run), and live behind the worker at full speed "
        "(catch-up lag: seconds from the worker's last prediction to the monitor's; backlog: "
        "predictions produced minus counted, max / median of 0.5 s samples). The last column is "
        "the 1-minute load average at the start and end of the alone phase (above 2: other "
        "jobs shared the 2-core machine).",
        "",
        *table(
            [
                "result file",
                "code",
                "join sample",
                "flights",
                "worker events/s",
                "monitor records/s",
                "monitor events/s",
                "monitor / worker",
                "live catch-up lag",
                "live backlog max / median",
                "load avg",
            ],
            rows,
        ),
        "",
        *monitor_loop_summary(),
        *monitor_speed_summary(),
        *monitor_floors(),
    ]


def startup() -> list[str]:
    name = "bench_startup_quick.json"
    if not (RESULTS / name).is_file():
        return []
    d = load(name)
    cold = ", ".join(f"{x:.1f}" for x in d["cold_s"])
    warm = ", ".join(f"{x:.1f}" for x in d["warm_s"])
    return [
        "## Worker start-up (`bench_startup.py`)",
        "",
        "Seconds from starting `segstream worker` to `/readyz` answering 200, with an empty "
        "numba cache (a container without `segstream warmup`) and with the cache that "
        f"`segstream warmup` filled (what the image does at build time). {src(name)}",
        "",
        *table(
            ["numba cache", "runs (s)", "median (s)"],
            [
                ["empty (cold)", cold, f"{d['cold_median_s']:.1f}"],
                ["filled by `segstream warmup`", warm, f"{d['warm_median_s']:.1f}"],
            ],
        ),
        "",
        f"Cold over warm: {d['cold_over_warm']:.1f}x; the warm-up itself took "
        f"{d['warmup_command_s']:.0f} s.",
        "",
    ]


def event_time() -> list[str]:
    name = "bench_event_time_quick.json"
    if not (RESULTS / name).is_file():
        return []
    d = load(name)
    g, st, env = d["guard"], d["stats_20000_days"], d["env"]
    b, u = st["bounded"], st["unbounded"]
    return [
        "## Event-time guard and bounded stats records (`bench_event_time.py`)",
        "",
        f"Per batch of {n0(g['batch_size'])} real flight events over {g['partitions']} "
        f"partitions ({g['far_future_injected']} of {n0(g['events'])} dated 2261), medians of "
        f"{g['batches_timed']} batches; load average {env['load_average_at_start'][0]:.1f} at "
        f"start, {env['load_average_at_end'][0]:.1f} at end"
        f"{shared_note(env['load_average_at_start'][0], env['cpu_count'])}. {src(name)}",
        "",
        *table(
            ["step", "median per batch (ms)"],
            [
                ["decode (the worker's first step, for scale)", f"{g['decode_ms_median']:.1f}"],
                [
                    "event-time guard (judge + move out-of-range events to the DLQ)",
                    f"{g['guard_ms_median']:.1f}",
                ],
                [
                    "running-maximum watermark (the non-robust rule it replaces)",
                    f"{g['max_baseline_ms_median']:.1f}",
                ],
            ],
        ),
        "",
        f"The guard costs {g['guard_over_decode']:.2f}x the decode "
        f"({g['guard_ns_per_event']:.0f} ns per event). Stats records of "
        f"{n0(st['events'])} events on {n0(st['distinct_days'])} different days: "
        f"{n0(b['records'])} records ({n0(b['bytes'])} bytes, {b['ms_median']:.1f} ms) with "
        f"`max_slices={b['max_slices']}`, against {n0(u['records'])} records "
        f"({n0(u['bytes'])} bytes, {u['ms_median']:.0f} ms) unbounded.",
        "",
    ]


def render() -> str:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by docs/gen_benchmarks.py from benchmarks/results/*.json; do not edit. -->",
        "",
        "Every benchmark is a script in `benchmarks/` (`python benchmarks/NAME.py --quick --out "
        "FILE.json`): seeded, network-free apart from the embedded broker, JIT warm-up excluded, "
        "baselines run in the same process, and a JSON result with an environment stamp written "
        "into `benchmarks/results/`. They are not part of `make test`. This page shows the "
        "figures of the committed JSON files, each table citing its file; earlier runs are in "
        "the files' git history. Regenerate it with `python docs/gen_benchmarks.py` after a run.",
        "",
        "The machine is a 2-core VM whose speed drifts by tens of percent over minutes; ratios "
        "against baselines are taken in the same process and hold better than absolute rates. "
        "How each benchmark works is described in the user guide: "
        "[training](guide/training.md), [partitioner](guide/partitioner.md#benchmark), "
        "[segment models](guide/segment-models.md#benchmark), "
        "[profiles](guide/profiles.md), [worker](guide/worker.md#benchmark), "
        "[monitor](guide/monitor.md#real-data-acceptance-train-januaryaugust-replay-septemberdecember).",
        "",
    ]
    for section in (
        training,
        training_flights_late,
        training_scale,
        profiles,
        forest,
        partitioner,
        groupby,
        groupby_glm,
        worker,
        worker_families,
        fetch,
        event_time,
        startup,
        monitor,
        monitor_throughput,
    ):
        lines += section()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare, do not write")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(
                f"{PAGE.relative_to(REPO)} is stale: run python docs/gen_benchmarks.py",
                file=sys.stderr,
            )
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
