"""Training benchmark: the full flights pipeline (January-August train, September validation,
October-December test) with its quality metrics and step timings.

    python benchmarks/bench_training.py --quick --out benchmarks/results/bench_training.json

``--quick`` and ``--full`` run the same pipeline (the data set is fixed); ``--quick`` skips
the HTML report. JIT compilation is excluded from the training time: a warm-up training on two
weeks of data runs first and is reported separately (``jit_warmup_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/bench_training.json"))
    args = ap.parse_args()

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

        t0 = time.perf_counter()
        r = train(
            settings,
            publish=False,
            progress=False,
            work_dir=str(Path(tmp) / "b"),
            report_dir=str(Path(tmp) / "report"),
        )
        total_s = time.perf_counter() - t0
        report_s = r.timings.get("report", 0.0)
    test = r.manifest.metrics["test"]
    result = {
        "benchmark": "training",
        "mode": "full" if args.full else "quick",
        "environment": environment(),
        "data": r.manifest.data,
        "jit_warmup_s": round(jit_s, 2),
        "train_seconds_total": round(total_s, 2),
        "train_seconds_without_report": round(total_s - report_s, 2),
        "timings": r.timings,
        "metrics_test": test,
        "segments": r.manifest.metrics.get("segments"),
        "patterns": r.manifest.metrics.get("patterns"),
        "summary": {
            "train_seconds": round(total_s, 2),
            "mae_partitioned": test["partitioned"]["mae"],
            "mae_global_linear": test["global_linear"]["mae"],
            "mae_global_xgboost": test["global_xgboost"]["mae"],
            "mae_gain_vs_global_linear": test["mae_gain_vs_global_linear"],
            "mae_gain_vs_global_xgboost": test["mae_gain_vs_global_xgboost"],
            "interval_coverage": test["interval"]["coverage"],
            "interval_mass": test["interval"]["mass"],
            "classifier_accuracy": test["classifier"].get("accuracy"),
            "classifier_auroc": test["classifier"].get("auroc_weighted_ovr"),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
