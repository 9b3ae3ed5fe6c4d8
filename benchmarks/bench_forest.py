"""Benchmark of the compiled pattern classifier: ``Forest.predict`` against XGBoost's
``Booster.inplace_predict`` on the same rows.

The classifier is the flights bundle's (``--bundle DIR``), or, without one, that of a small
bundle trained here on January 2013 (as ``bench_startup.py`` does). Rows: the classifier's
feature matrix of real flight events from September 2013 on. For each batch size, the two
predictors run interleaved (forest, booster, forest, ...) ``--repeats`` times over all rows,
both with one thread (the worker's setting); figures are medians of the per-pass µs per row,
with every pass recorded. Before timing, both predict every row once and the probabilities are
compared bit for bit.

Usage::

    python benchmarks/bench_forest.py --quick --bundle DIR --out benchmarks/results/bench_forest_quick.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from envstamp import environment, finish  # noqa: E402


def classifier_rows(bundle: Any, n: int) -> np.ndarray:
    """The classifier's float32 input matrix of ``n`` September-on flight events."""
    from segstream.shared.data import load_nycflights13
    from segstream.shared.profiles import feature_matrix

    p = bundle.profiles
    df = load_nycflights13()
    df = df[df["event_time"].dt.month >= 9].iloc[:n]
    cols = {f: df[f].to_numpy() for f in p.features}
    return feature_matrix(cols, p.features, p.feature_types, p._index)


def small_bundle(tmp: Path) -> Path:
    from benchmarks.bench_startup import train_small_bundle
    from tests.integration.worker_helpers import worker_settings

    settings = worker_settings("127.0.0.1:1", "forest", tmp, partitions=1)
    train_small_bundle(tmp, settings)
    store = Path(settings.store.url.removeprefix("file://"))
    return next(store.glob("bundles/*/*/manifest.json")).parent


def timed(fn: Any, x: np.ndarray, batch: int) -> float:
    """µs per row of one pass over ``x`` in batches of ``batch``."""
    t = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i : i + batch])
    return (time.perf_counter() - t) / len(x) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="20,000 rows, 5 passes (default)")
    mode.add_argument("--full", action="store_true", help="60,000 rows, 9 passes")
    ap.add_argument("--bundle", type=Path, help="bundle directory (default: train a small one)")
    ap.add_argument("--out", type=Path, help="write the JSON result here")
    args = ap.parse_args(argv)
    n, repeats = (60_000, 9) if args.full else (20_000, 5)

    from segstream.shared.scoring import load_bundle

    bundle_dir = args.bundle or small_bundle(Path(tempfile.mkdtemp(prefix="bench-forest-")))
    bundle = load_bundle(bundle_dir)
    forest = bundle.profiles.forest
    if forest is None or forest.fallback is not None:
        raise SystemExit(f"no compiled forest: {getattr(forest, 'fallback', 'one pattern')}")
    booster = forest.booster
    booster.set_param({"nthread": 1})
    x = classifier_rows(bundle, n)
    same = bool(np.array_equal(forest.predict(x), booster.inplace_predict(x)))
    env = environment("xgboost", "numpy")
    batches: dict[str, Any] = {}
    for batch in (20_000, 256, 1):
        rows = x if batch > 1 else x[:2_000]  # one row per call: 2,000 calls per pass
        f_us, b_us = [], []
        timed(forest.predict, rows[:batch], batch)  # warm-up
        timed(booster.inplace_predict, rows[:batch], batch)
        for _ in range(repeats):
            f_us.append(timed(forest.predict, rows, batch))
            b_us.append(timed(booster.inplace_predict, rows, batch))
        fm, bm = float(np.median(f_us)), float(np.median(b_us))
        batches[str(batch)] = {
            "rows_per_pass": len(rows),
            "forest_us_per_row": f_us,
            "inplace_predict_us_per_row": b_us,
            "forest_us_per_row_median": fm,
            "inplace_predict_us_per_row_median": bm,
            "speedup_median": bm / fm,
        }
    finish(env)
    result = {
        "benchmark": "bench_forest",
        "mode": "full" if args.full else "quick",
        "bundle_id": bundle.bundle_id,
        "classifier": {
            "objective": forest.objective,
            "trees": booster.num_boosted_rounds(),
            "features": forest.n_features,
            "outputs_per_row": forest.n_groups,
        },
        "rows": n,
        "passes": repeats,
        "threads": 1,
        "bit_identical_probabilities": same,
        "batches": batches,
        "environment": env,
    }
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
