"""Training benchmark: the full flights pipeline (January-August train, September validation,
October-December test) with its quality metrics and step timings.

    python benchmarks/bench_training.py --quick --out benchmarks/results/bench_training.json

``--quick`` and ``--full`` run the same pipeline (the data set is fixed), including the HTML
report; ``--full`` trains 5 times instead of 3. JIT compilation is excluded from the training
time: a warm-up training on two weeks of data runs first and is reported separately
(``jit_warmup_s``). The training times are medians over the repeats (every run is in the JSON,
``*_runs``), per step too; the quality metrics are those of the last run and the JSON says
whether every run gave the same test MAE (binomial/poisson configs, e.g.
``--config config/flights_late.yaml``: the same test log loss / Poisson deviance).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def environment() -> dict[str, object]:
    import numba
    import numpy
    import pandas
    import sklearn
    import xgboost

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": _threading_layer(),
        "scikit_learn": sklearn.__version__,
        "xgboost": xgboost.__version__,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "load_avg": list(os.getloadavg()),
        "platform": platform.platform(),
    }


def _threading_layer() -> str:
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:
        return "not initialised"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    ap.add_argument("--config", default=str(REPO / "config" / "flights.yaml"))
    ap.add_argument("--repeats", type=int, default=None, help="trainings (default 3, --full 5)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/bench_training.json"))
    args = ap.parse_args()
    load_start = list(os.getloadavg())

    from segstream.shared.data import load_dataset
    from segstream.shared.settings import load_settings
    from segstream.training.pipeline import train

    settings = load_settings(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: JIT-compile every numba kernel on a small slice
        df = load_dataset(settings)
        warm = df[df[settings.event_schema.time_field].dt.month.isin([1, 2])]
        warm_path = Path(tmp) / "warm.parquet"
        warm.to_parquet(warm_path)
        warm_settings = settings.model_copy(
            update={
                "training": settings.training.model_copy(
                    update={
                        "train_end": __import__("datetime").date(2013, 1, 31),
                        "validation_end": __import__("datetime").date(2013, 2, 14),
                    }
                )
            }
        )
        t0 = time.perf_counter()
        train(
            warm_settings,
            data_path=str(warm_path),
            publish=False,
            progress=False,
            work_dir=str(Path(tmp) / "warm"),
            report_dir=str(Path(tmp) / "warm-report"),
        )
        jit_s = time.perf_counter() - t0

        repeats = args.repeats or (5 if args.full else 3)
        totals, without_report, step_runs, maes = [], [], [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            r = train(
                settings,
                publish=False,
                progress=False,
                work_dir=str(Path(tmp) / f"b{i}"),
                report_dir=str(Path(tmp) / f"report{i}"),
            )
            total_s = time.perf_counter() - t0
            totals.append(round(total_s, 2))
            without_report.append(round(total_s - r.timings.get("report", 0.0), 2))
            step_runs.append(dict(r.timings))
            part = r.manifest.metrics["test"]["partitioned"]
            maes.append(part.get("mae", part.get("log_loss")))
            print(f"training run {i + 1}/{repeats}: {total_s:.1f} s", flush=True)
    timings = {k: round(statistics.median(t[k] for t in step_runs), 3) for k in step_runs[0]}
    test = r.manifest.metrics["test"]
    result = {
        "benchmark": "training",
        "mode": "full" if args.full else "quick",
        "environment": {**environment(), "load_avg_start": load_start},
        "data": r.manifest.data,
        "jit_warmup_s": round(jit_s, 2),
        "repeats": repeats,
        "statistic": "median over repeats",
        "train_seconds_total": round(statistics.median(totals), 2),
        "train_seconds_total_runs": totals,
        "train_seconds_without_report": round(statistics.median(without_report), 2),
        "train_seconds_without_report_runs": without_report,
        "timings": timings,
        "timings_runs": step_runs,
        "same_test_mae_every_run": len(set(maes)) == 1,
        "metrics_test": test,
        "segments": r.manifest.metrics.get("segments"),
        "patterns": r.manifest.metrics.get("patterns"),
        "family": r.manifest.family,
        "summary": _summary(r.manifest, test, totals),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["summary"], indent=2))
    return 0


def _summary(manifest, test: dict, totals: list[float]) -> dict:
    if manifest.family == "binomial":
        return {
            "train_seconds_median": round(statistics.median(totals), 2),
            **{
                f"{k}_{m}": test[m][k]
                for m in ("partitioned", "global_logistic", "global_xgboost")
                for k in ("log_loss", "brier", "auroc")
            },
            "log_loss_gain_vs_global_logistic": test["log_loss_gain_vs_global_logistic"],
            "log_loss_gain_vs_global_xgboost": test["log_loss_gain_vs_global_xgboost"],
            "threshold": manifest.threshold,
        }
    if manifest.family == "poisson":
        return {
            "train_seconds_median": round(statistics.median(totals), 2),
            **{
                f"{k}_{m}": test[m][k]
                for m in ("partitioned", "global_poisson", "global_xgboost")
                for k in ("deviance", "mae")
            },
        }
    return {
        "train_seconds_median": round(statistics.median(totals), 2),
        "mae_partitioned": test["partitioned"]["mae"],
        "mae_global_linear": test["global_linear"]["mae"],
        "mae_global_xgboost": test["global_xgboost"]["mae"],
        "mae_gain_vs_global_linear": test["mae_gain_vs_global_linear"],
        "mae_gain_vs_global_xgboost": test["mae_gain_vs_global_xgboost"],
        "interval_coverage": test["interval"]["coverage"],
        "interval_mass": test["interval"]["mass"],
        "classifier_accuracy": test["classifier"].get("accuracy"),
        "classifier_auroc": test["classifier"].get("auroc_weighted_ovr"),
    }


if __name__ == "__main__":
    sys.exit(main())
