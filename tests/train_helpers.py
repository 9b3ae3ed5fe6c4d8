"""A small, fast training setup on real flights (January 2013) for tests."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def january_parquet(flights_df, tmp: Path) -> Path:
    """January 2013 flights as a Parquet file (the generic loader path)."""
    jan = flights_df[flights_df["event_time"].dt.month == 1]
    path = tmp / "january.parquet"
    jan.to_parquet(path)
    return path


def small_config(tmp: Path, store: Path, **overrides) -> Path:
    """The flights config, reduced: train Jan 1-19, validation Jan 20-24, test Jan 25-31."""
    cfg = yaml.safe_load((REPO / "config" / "flights.yaml").read_text())
    cfg["store"] = {"url": f"file://{store}"}
    cfg["broker"] = {"bootstrap": "127.0.0.1:1", "connect_timeout_s": 0.5, "connect_attempts": 1}
    t = cfg["training"]
    t.update(train_end="2013-01-19", validation_end="2013-01-24")
    t["partitioner"].update(min_samples_leaf=200, max_leaf_nodes=2)
    t["regression"].update(min_stat=200)
    t["profiles"].update(k_max=4, max_classifier_rows=5000)
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    path = tmp / "small.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
