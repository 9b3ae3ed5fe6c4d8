"""A small deterministic fake :class:`~segstream.shared.scoring.Scorer`, stored as a *real* bundle.

The fake predicts ``coef_distance * distance + coef_hour * sched_dep_hour + offset[carrier]``;
its segment is the carrier's index (unseen carrier: segment 0 at fallback level 1), its pattern
``int(sched_dep_hour) // 6``, its interval ``prediction ± half_width``. A route (``origin|dest``)
not in ``known_routes`` is an unknown key. :func:`write_fake_bundle` writes it with
:func:`segstream.shared.bundle.write_bundle` (component kind ``"fake"`` plus a ``drift_reference``), so
hot reload and tamper tests go through the real store and verification; :func:`load_fake_bundle`
is the matching loader (inject it where the worker takes ``loader=``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segstream.shared.bundle import load_components, write_bundle
from segstream.shared.component import ExportedComponent
from segstream.shared.drift import DriftReference, NumericReference
from segstream.shared.errors import SchemaError
from segstream.shared.settings import SchemaSettings

DEFAULT_CARRIERS = ("9E", "AA", "B6", "DL", "EV", "MQ", "UA", "US", "WN")
DEFAULT_ROUTES = ("JFK|LAX", "LGA|ATL", "EWR|ORD", "JFK|SFO", "LGA|ORD", "EWR|IAH")


class FakeScorer:
    """Deterministic vectorised scorer over ``distance``, ``sched_dep_hour`` and ``carrier``."""

    def __init__(self, *, bundle_id: str, model: str, schema: SchemaSettings,
                 coef_distance: float, coef_hour: float, carriers: Sequence[str],
                 offsets: Sequence[float], known_routes: Sequence[str], half_width: float,
                 interval_mass: float, drift_reference: DriftReference) -> None:
        self.bundle_id = bundle_id
        self.model = model
        self.schema = schema
        self.coef_distance = coef_distance
        self.coef_hour = coef_hour
        self.carriers = pd.Index(list(carriers))
        self.offsets = np.asarray(offsets, dtype=np.float64)
        self.routes = pd.Index(list(known_routes))
        self.half_width = half_width
        self.interval_mass = interval_mass
        self.drift_reference = drift_reference
        self.contribution_names = ["intercept", "distance", "sched_dep_hour"]
        self.key_columns = ["origin", "dest"]

    def score(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for c in ("distance", "sched_dep_hour", "carrier", "origin", "dest"):
            if c not in columns:
                raise SchemaError(f"missing column {c!r}")
        dist = np.asarray(columns["distance"], dtype=np.float64)
        hour = np.asarray(columns["sched_dep_hour"], dtype=np.float64)
        n = len(dist)
        seg = self.carriers.get_indexer(pd.Index(columns["carrier"], dtype=object))
        unseen = seg < 0
        seg = np.where(unseen, 0, seg).astype(np.int32)
        intercept = np.where(unseen, 0.0, self.offsets[seg])
        c_dist = self.coef_distance * np.nan_to_num(dist)
        c_hour = self.coef_hour * np.nan_to_num(hour)
        pred = intercept + c_dist + c_hour
        route = np.asarray(columns["origin"], dtype=object) + "|" + \
            np.asarray(columns["dest"], dtype=object) if n else np.empty(0, dtype=object)
        known = self.routes.get_indexer(pd.Index(route, dtype=object)) >= 0
        unknown = np.where(known, None, route).astype(object)
        return {
            "segment": seg,
            "fallback_level": unseen.astype(np.int8),
            "prediction": pred,
            "interval_low": pred - self.half_width,
            "interval_high": pred + self.half_width,
            "pattern": (np.nan_to_num(hour) // 6).astype(np.int32),
            "pattern_proba": np.full(n, 0.75),
            "imputed": np.isnan(dist) | np.isnan(hour),
            "unknown_key": unknown,
            "contributions": np.column_stack([intercept, c_dist, c_hour]) if n
            else np.empty((0, 3)),
        }


def fake_drift_reference() -> DriftReference:
    rng = np.random.default_rng(0)
    dist = rng.uniform(100, 2500, 2000)
    hour = rng.uniform(5, 23, 2000)
    carrier = rng.choice(np.asarray(DEFAULT_CARRIERS, dtype=object), 2000)
    ref = DriftReference.fit({"distance": dist, "sched_dep_hour": hour}, {"carrier": carrier},
                             prediction=0.01 * dist + 0.5 * hour, n_bins=5)
    return ref


def write_fake_bundle(root: str | Path, schema: SchemaSettings, *, model: str = "flights",
                      coef_distance: float = 0.01, coef_hour: float = 0.5,
                      carriers: Sequence[str] = DEFAULT_CARRIERS,
                      known_routes: Sequence[str] = DEFAULT_ROUTES, half_width: float = 15.0,
                      interval_mass: float = 0.8, tag: str = "",
                      schema_override: dict[str, Any] | None = None) -> Path:
    """Write a fake bundle into ``root/<bundle_id>`` and return its directory.

    ``tag`` changes the content (and so the bundle id) without changing the behaviour.
    """
    offsets = np.linspace(-5.0, 5.0, len(carriers))
    comp = ExportedComponent(
        "fake",
        {"offsets": offsets, "coef": np.asarray([coef_distance, coef_hour])},
        {"carriers": list(carriers), "known_routes": list(known_routes),
         "half_width": half_width, "interval_mass": interval_mass, "tag": tag},
    )
    drift = ExportedComponent("drift_reference", {}, fake_drift_reference().to_meta())
    return write_bundle(
        root, model=model, components={"fake": comp, "drift_reference": drift},
        schema=schema_override or schema.model_dump(mode="json"),
        created_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    )


def load_fake_bundle(path: str | Path) -> FakeScorer:
    """Verify a fake bundle directory and rebuild its scorer (the fake ``load_bundle``)."""
    loaded = load_components(path)
    m = loaded.manifest
    comp = loaded["fake"]
    return FakeScorer(
        bundle_id=m.bundle_id, model=m.model,
        schema=SchemaSettings.model_validate(m.schema_),
        coef_distance=float(comp.arrays["coef"][0]), coef_hour=float(comp.arrays["coef"][1]),
        carriers=comp.meta["carriers"], offsets=comp.arrays["offsets"],
        known_routes=comp.meta["known_routes"], half_width=float(comp.meta["half_width"]),
        interval_mass=float(comp.meta["interval_mass"]),
        drift_reference=DriftReference.from_meta(loaded["drift_reference"].meta),
    )


def numeric_ref(edges: Sequence[float]) -> NumericReference:
    e = np.asarray(edges, dtype=np.float64)
    return NumericReference(e, np.full(len(e) + 2, 1.0 / (len(e) + 2)))
