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
        f"- Training time: **{d['train_seconds_total']:.1f} s** end to end including the report "
        f"({d['train_seconds_without_report']:.1f} s without it), after a JIT warm-up of "
        f"{d['jit_warmup_s']:.1f} s paid once per machine. Steps (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in d["timings"].items())
        + ".",
        "",
    ]
    return out


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
            f"scoring, one thread, batches of {n0(s['batch_rows'])} (classifier alone "
            f"{n0(s['classifier_only_rows_per_s'])})",
            f"{n0(s['rows_per_s'])} rows/s",
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
        "not in the table).",
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
            f"(target {s['targets']['route_rows_per_s']}).{note}",
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
    name = "bench_groupby_regression_quick.json"
    d = load(name)
    env = d["environment"]
    rows = []
    for sc in d["scenarios"]:
        seg, ra = sc["segstream"], sc["ratios"]
        rows.append(
            [
                f"{n0(sc['groups'])} x {sc['rows_per_group']}",
                f"{seg['ols']['rows_per_s'] / 1e6:.2f}",
                f"{seg['huber']['rows_per_s'] / 1e6:.2f}",
                f"{seg['sigma_clip']['rows_per_s'] / 1e6:.2f}",
                ratio(ra["ols_vs_pandas_apply"]),
                ratio(ra["ols_vs_statsmodels_loop"]),
                ratio(ra["ols_vs_polars_ols"]),
                ratio(ra["huber_vs_sklearn_huber_loop"]),
                f"{sc['max_abs_coef_diff_ols_vs_lstsq']:.1e}",
            ]
        )
    s = d["summary"]
    t, met = s["targets"], s["targets_met"]

    def yes(k: str) -> str:
        return "met" if met[k] else "**not met**"

    sk = d["scenarios"][-1]["baselines"]["sklearn_huber_loop"]
    return [
        "## Group-by regression (`bench_groupby_regression.py`)",
        "",
        f"`--quick`: groups of exactly the stated size, rows shuffled, 3 predictors + intercept, "
        f"weights; 10 % gross outliers for the robust methods; JIT compile excluded; medians. "
        f"{env['cpu_count']} vCPUs, numba threading layer `{env['numba_threading_layer']}`. "
        f"{src(name)}",
        "",
        *table(
            [
                "groups x rows",
                "OLS M rows/s",
                "Huber M rows/s",
                "sigma-clip M rows/s",
                "OLS vs pandas apply",
                "OLS vs statsmodels loop*",
                "OLS vs polars-ols",
                "Huber vs sklearn Huber loop*",
                "max abs dcoef OLS vs lstsq",
            ],
            rows,
        ),
        "",
        f"\\* {s['notes']}",
        "",
        f"{s['scenario']}: OLS **{s['ols_rows_per_s_100k_groups'] / 1e6:.1f}M rows/s** "
        f"(target {t['ols_rows_per_s'] / 1e6:.0f}M: {yes('ols_rows_per_s')}), "
        f"**{ratio(s['speedup_vs_pandas_apply'])}** pandas apply (target "
        f"{t['speedup_vs_pandas_apply']}x: {yes('speedup_vs_pandas_apply')}), "
        f"**{ratio(s['speedup_vs_statsmodels'])}** statsmodels (target "
        f"{t['speedup_vs_statsmodels']}x: {yes('speedup_vs_statsmodels')}), Huber "
        f"**{ratio(s['huber_speedup_vs_sklearn_huber'])}** scikit-learn HuberRegressor (target "
        f"{t['huber_speedup_vs_sklearn_huber']}x: {yes('huber_speedup_vs_sklearn_huber')}; the "
        f"sklearn loop takes {sk['seconds_per_1000_groups']:.1f} s per 1000 groups, timed on "
        f"{n0(sk['groups_timed'])} groups). Huber agrees with statsmodels RLM to "
        f"{s['max_abs_coef_diff_huber_vs_rlm']:.1e}.",
        "",
    ]


def worker() -> list[str]:
    out = [
        "## Stream worker (`bench_worker.py`)",
        "",
        "Flight events (September on) through the embedded Tansu broker, 6 partitions, one "
        "worker process, on the same 2-core machine as the broker. Throughput: all events in "
        "the topic before the worker starts (broker time of the first to the last prediction). "
        "Latency: at a fixed input rate of half the at-least-once throughput (prediction's "
        "broker timestamp minus the event's, joined by `event_id`).",
        "",
    ]
    for name, title in (
        ("bench_worker_full.json", "`--full`"),
        ("bench_worker_quick.json", "`--quick`"),
    ):
        d = load(name)
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
            [
                "faust-streaming agent, same decoder/scorer",
                f"{n0(d['faust_baseline']['events_per_s'])} events/s (worker "
                f"{ratio(s['speedup_vs_faust'])} faster)",
                "",
            ],
        ]
        q = d["quix_baseline"]
        if "events_per_s" in q:
            rows.append(
                [
                    f"Quix Streams {q['quixstreams']} application, per record",
                    f"{n0(q['events_per_s'])} events/s (worker "
                    f"{ratio(s['speedup_vs_quix'])} faster)",
                    "",
                ]
            )
        rows.append(
            [
                "per-row loop `score(X.iloc[[i]])`",
                f"{n0(d['per_row_baseline']['events_per_s'])} events/s (vectorised "
                f"{ratio(s['speedup_vs_per_row'])} faster)",
                "",
            ]
        )
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
    return out


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
    names = ("monitor_acceptance.json", "monitor_acceptance_calibrated.json")
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
        f"The first file used the fixed PSI levels (0.1 / 0.25), the second the calibrated ones "
        f"(the default). The simulator's own line from the first run: "
        f"`{load(names[0])['run']['simulator']}`.",
        "",
    ]
    with_check = [n for n in names if load(n).get("new_segment_check")]
    chk = load(with_check[-1])["new_segment_check"] if with_check else None
    if chk:
        out += [
            f"New segments in `benchmarks/results/{with_check[-1]}` (count since first seen "
            f"within the 30-day lookback, threshold {chk['threshold']}): "
            f"{len(chk['expected_keys'])} never-seen carrier routes reach the threshold over the "
            f"whole replay, {len(chk['alerted_keys'])} alerted (at most {chk['alerts_per_key_max']} "
            f"alert per key); not alerted (more than the lookback from first seen to the "
            f"threshold): {', '.join(chk['missing']) or 'none'}; unexpected: "
            f"{', '.join(chk['unexpected']) or 'none'}.",
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


def monitor_throughput() -> list[str]:
    """bench_monitor.py: the monitor alone, and live behind one worker (issue 21)."""
    names = [
        n
        for n in (
            "bench_monitor_quick_before.json",
            "bench_monitor_quick.json",
            "bench_monitor_quick_sampled.json",
            "bench_monitor_full.json",
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
                n0(a["worker_events_per_s"]),
                n0(a["monitor_records_per_s"]),
                n0(a["monitor_events_per_s"]),
                f"{a['monitor_to_worker_events_ratio']:.3f}",
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
        "predictions produced minus counted, max / median of 0.5 s samples). The machine was "
        "shared with other engineers' tests (1-minute load average at the start and end of the "
        "alone phase in the last column).",
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
        profiles,
        partitioner,
        groupby,
        worker,
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
