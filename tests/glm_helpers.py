"""Small synthetic binary and count data sets with a known segment structure (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

#: Per key: intercept and slope of x1 on the link scale; the slope's sign flips between keys,
#: so one global model cannot fit them.
KEYS = {"a": (-1.0, 2.0), "b": (0.5, -2.0), "c": (-2.0, 0.0), "d": (1.0, 1.0)}
#: A key whose outcomes are all 0: its GLM does not exist (status one_class), it falls back.
ONE_CLASS_KEY = "e"


def synthetic_frame(family: str, n: int = 12_000, seed: int = 0) -> pd.DataFrame:
    """``n`` events over 120 days: key ``grp`` (a-d, and ``e`` whose outcomes are all 0),
    features ``x1``, ``x2`` (noise), and a target ``y`` drawn from the key's GLM (binomial 0/1
    or Poisson count); 2 % without an outcome."""
    rng = np.random.default_rng(seed)
    grp = rng.choice(np.array([*KEYS, ONE_CLASS_KEY]), n, p=[0.22] * 4 + [0.12])
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    b0 = np.array([KEYS.get(g, (0.0, 0.0))[0] for g in grp])
    b1 = np.array([KEYS.get(g, (0.0, 0.0))[1] for g in grp])
    eta = b0 + b1 * x1
    if family == "binomial":
        y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    else:
        y = rng.poisson(np.exp(0.5 * eta)).astype(float)
    y[grp == ONE_CLASS_KEY] = 0.0
    y[rng.random(n) < 0.02] = np.nan
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    times = t0 + pd.to_timedelta(np.sort(rng.uniform(0, 120 * 86400, n)), unit="s")
    return pd.DataFrame(
        {
            "event_id": [f"e{i:06d}" for i in range(n)],
            "event_time": times,
            "grp": grp,
            "x1": x1,
            "x2": x2,
            "y": y,
        }
    )


def synthetic_config(tmp: Path, family: str, **regression) -> Path:
    """A config for :func:`synthetic_frame` (keys partitioner on ``grp``; train to day 80,
    validation to day 100, test after)."""
    cfg = {
        "model": f"synthetic-{family}",
        "dataset": {"source": "file", "timezone": "UTC"},
        "schema": {
            "fields": [
                {"name": "event_id", "type": "string", "role": "id", "required": True},
                {"name": "event_time", "type": "datetime", "role": "time", "required": True},
                {"name": "grp", "type": "string", "role": "categorical", "required": True},
                {"name": "x1", "type": "float", "role": "numeric"},
                {"name": "x2", "type": "float", "role": "numeric"},
                {"name": "y", "type": "float", "role": "target"},
            ]
        },
        "store": {"url": f"file://{tmp / 'store'}"},
        "broker": {"bootstrap": "127.0.0.1:1", "connect_timeout_s": 0.5, "connect_attempts": 1},
        "training": {
            "train_end": "2024-03-20",
            "validation_end": "2024-04-09",
            "partitioner": {"kind": "keys", "levels": ["grp"], "min_samples_leaf": 100},
            "regression": {
                "family": family,
                "features": ["x1", "x2"],
                "min_stat": 200,
                **regression,
            },
            "profiles": {"keys": ["grp"]},
        },
        "monitor": {"window_s": 86400},
    }
    path = tmp / f"synthetic-{family}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
