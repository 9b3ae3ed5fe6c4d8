"""``segstream warmup``: compile every numba kernel into the numba cache ahead of time.

numba compiles a kernel on its first call and, with ``cache=True`` (every kernel here), stores
the machine code under ``NUMBA_CACHE_DIR`` (default: ``__pycache__`` beside the source). A
fresh container otherwise pays that compilation in its first seconds: the worker is not ready
until its bundle has been warmed up. :func:`warm_up_kernels` trains a small bundle on synthetic
events drawn from the configured schema (so every training kernel runs with the dtypes real
data has), loads it, and runs the worker's decode, score, stats and record-encoding kernels on
it, exactly as the worker's own warm-up does after loading a bundle. Nothing is published and
no broker is needed; the Docker image runs it at build time.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segstream.shared.settings import SchemaSettings, Settings

logger = logging.getLogger(__name__)

#: Synthetic events span 90 days from this date: 45 train, 15 validation, 30 test.
_START = dt.datetime(2020, 1, 1)


def synthetic_events(
    schema: SchemaSettings, n: int = 6_000, seed: int = 0, *, family: str = "gaussian"
) -> pd.DataFrame:
    """Events with every field of ``schema``, random but shaped like real data.

    Parameters
    ----------
    schema : SchemaSettings
        The event schema; each field gets values of its ``type``.
    n : int
        Number of rows.
    seed : int
        Seed of the random generator.
    family : {"gaussian", "binomial", "poisson"}
        The target's kind: ``eta`` = a linear function of the numeric features plus noise
        (gaussian), a 0/1 outcome with ``P(1) = expit(eta)`` (binomial) or a count with mean
        ``exp(eta / 2)`` (poisson).

    Returns
    -------
    pandas.DataFrame
        ``n`` rows: unique string ids, event times spread over 90 days from 2020-01-01 (naive,
        read in the configured time zone), numeric fields ~ N(0, 1) (ints in 0..6, bools 0/1),
        categorical fields with four levels, and a target that depends on the numeric features
        as ``family`` says (so every segment model has something to fit).

    Raises
    ------
    ValueError
        An unknown ``family``.
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {}
    numeric = np.zeros(n)
    for f in schema.event_fields:
        if f.name == schema.id_field:
            cols[f.name] = np.array([f"warmup-{i}" for i in range(n)], dtype=object)
        elif f.type == "datetime":
            secs = np.sort(rng.uniform(0, 90 * 86_400, n))
            cols[f.name] = pd.Timestamp(_START) + pd.to_timedelta(secs, unit="s")
        elif f.type == "string":
            cols[f.name] = np.array(["a", "b", "c", "d"], dtype=object)[rng.integers(0, 4, n)]
        elif f.type == "int":
            cols[f.name] = rng.integers(0, 7, n)
        elif f.type == "bool":
            cols[f.name] = rng.integers(0, 2, n).astype(bool)
        else:
            cols[f.name] = rng.normal(size=n)
        if f.role == "numeric" and f.type in ("float", "int", "bool"):
            numeric = numeric + 0.5 * np.asarray(cols[f.name], dtype=np.float64)
    eta = numeric + rng.normal(size=n)
    if family == "gaussian":
        cols[schema.target] = eta
    elif family == "binomial":
        cols[schema.target] = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
    elif family == "poisson":
        cols[schema.target] = rng.poisson(np.exp(np.clip(eta, -10, 10) / 2)).astype(np.float64)
    else:
        raise ValueError(f"synthetic_events: unknown family {family!r}")
    return pd.DataFrame(cols)


def warm_up_family_scoring() -> None:
    """Compile (or load from numba's cache) the scoring kernels of the binomial and Poisson
    bundles that a Gaussian bundle does not run: the Poisson interval
    (:func:`segstream.shared.scoring.poisson_interval`) on a float64 batch, and the
    logistic function. The worker's warm-up of a loaded bundle
    (:func:`segstream.services.worker.reload.warm_up`) runs its own family's path anyway;
    this covers the families a deployment was not configured with."""
    from segstream.shared.scoring import logistic, poisson_interval

    mu = np.array([0.0, 0.4, 3.5, 250.0, np.nan])
    poisson_interval(mu, 0.8)
    logistic(mu)


def warm_up_kernels(settings: Settings, *, rows: int = 6_000) -> dict[str, float]:
    """Train on synthetic events, load the bundle and run the worker's kernels once.

    Parameters
    ----------
    settings : Settings
        The deployment's settings: their schema and training options decide which kernels run
        with which dtypes. The dataset, the store and the broker are not used.
    rows : int
        Synthetic rows to train on.

    Returns
    -------
    dict
        Wall seconds of ``train`` and ``score`` (the worker's warm-up on the loaded bundle).

    Raises
    ------
    SegstreamError
        Whatever training or loading raises for a schema or options that cannot train.
    """
    from segstream.services.worker.event_time import EventTimeGuard
    from segstream.services.worker.reload import warm_up
    from segstream.shared.scoring import load_bundle
    from segstream.training.pipeline import train

    schema = settings.event_schema
    tr = settings.training
    family = tr.regression.family
    with tempfile.TemporaryDirectory(prefix="segstream-warmup-") as tmp:
        data = Path(tmp) / "events.parquet"
        synthetic_events(schema, rows, family=family).to_parquet(data)
        small = settings.model_copy(
            update={
                "dataset": settings.dataset.model_copy(
                    update={"source": "file", "path": str(data)}
                ),
                "training": tr.model_copy(
                    update={
                        "train_end": (_START + dt.timedelta(days=45)).date(),
                        "validation_end": (_START + dt.timedelta(days=60)).date(),
                        "partitioner": tr.partitioner.model_copy(
                            update={
                                "min_samples_leaf": min(
                                    tr.partitioner.min_samples_leaf, rows // 20
                                ),
                                "max_leaf_nodes": min(tr.partitioner.max_leaf_nodes, 8),
                            }
                        ),
                        "regression": tr.regression.model_copy(
                            update={"min_stat": min(tr.regression.min_stat, rows // 40)}
                        ),
                        "profiles": tr.profiles.model_copy(
                            update={
                                "k_max": min(tr.profiles.k_max, 3),
                                "n_estimators": 20,
                                "max_classifier_rows": 2_000,
                            }
                        ),
                    }
                ),
            }
        )
        t0 = time.perf_counter()
        result = train(
            small,
            data_path=str(data),
            publish=False,
            progress=False,
            report_dir=os.path.join(tmp, "report"),
            work_dir=os.path.join(tmp, "b"),
        )
        t1 = time.perf_counter()
        warm_up(load_bundle(result.bundle_dir))
        warm_up_family_scoring()  # the other families' scoring kernels
        # the worker's event-time guard compiles its kernel when the worker starts
        EventTimeGuard(settings.monitor)
        t2 = time.perf_counter()
    return {"train": t1 - t0, "score": t2 - t1}
