"""``segstream explain``: one event's segment path, contributions, patterns and interval.

For a binomial or Poisson bundle the contributions are on the link scale (log-odds / log
count; they sum to the linear predictor) and the explanation adds the probability and its
label (binomial) or the expected count and its Poisson interval; there are no outcome
patterns.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segstream.shared.errors import SchemaError


@dataclasses.dataclass
class Explanation:
    """Everything about one event's prediction."""

    event_id: str
    segment: int
    path: list[int]  # node ids, root first, ending at the segment's leaf
    rules: str  # the same path as rules ("origin=JFK / carrier=VX / ...")
    model_node: int
    fallback_level: int
    contributions: dict[str, float]
    prediction: float
    interval: tuple[float, float]
    interval_mass: float
    pattern_proba: list[float]
    imputed: bool
    unknown_key: str | None
    family: str = "gaussian"
    threshold: float | None = None
    label: int = -1

    def lines(self) -> list[str]:
        out = [
            f"event {self.event_id}",
            f"segment {self.segment}: {self.rules} (nodes {' > '.join(map(str, self.path))})"
            f"{' (routed by look-ahead: a value was missing/unknown)' if self.imputed else ''}",
            f"model of node {self.model_node}, fallback level {self.fallback_level}"
            f"{' (own segment model)' if self.fallback_level == 0 else ''}",
        ]
        if self.unknown_key:
            out.append(f"never seen in training: {self.unknown_key}")
        scale = {"binomial": "log-odds", "poisson": "log expected count"}.get(self.family)
        total = "prediction" if scale is None else scale
        out.append(f"contributions ({'' if scale is None else scale + '; '}sum = {total}):")
        for k, v in self.contributions.items():
            out.append(f"  {k:<18} {v:+10.3f}")
        out.append(f"  {'= ' + total:<18} {sum(self.contributions.values()):+10.3f}")
        if self.family == "binomial":
            out.append(
                f"probability {self.prediction:.4f} -> label {self.label} "
                f"(threshold {self.threshold:.4f})"
            )
            return out
        if self.family == "poisson":
            out.append(f"expected count {self.prediction:.3f}")
        out.append(
            f"interval ({self.interval_mass:.0%}): [{self.interval[0]:.1f}, {self.interval[1]:.1f}]"
        )
        if not self.pattern_proba:
            return out
        order = np.argsort(self.pattern_proba)[::-1]
        out.append(
            "pattern probabilities: "
            + ", ".join(f"p{int(i)}={self.pattern_proba[i]:.3f}" for i in order[:5])
        )
        return out


def event_columns(bundle: Any, event: dict[str, Any]) -> dict[str, np.ndarray]:
    """One JSON event as one-row columns in the scoring contract (see shared.scoring).

    Raises
    ------
    SchemaError
        A required field is missing or a numeric field is not a number.
    """
    cols: dict[str, np.ndarray] = {}
    for f in bundle.schema.event_fields:
        v = event.get(f.name)
        if v is None and f.required:
            raise SchemaError(f"event lacks required field '{f.name}'")
        if f.type == "datetime":
            cols[f.name] = np.array(
                [
                    pd.Timestamp(v).tz_convert("UTC").tz_localize(None)
                    if v
                    else np.datetime64("NaT")
                ],
                dtype="datetime64[ns]",
            )
        elif f.type in ("float", "int", "bool"):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise SchemaError(f"field '{f.name}' must be a number, got {v!r}")
            cols[f.name] = np.array([np.nan if v is None else float(v)])
        else:
            cols[f.name] = np.array([None if v is None else str(v)], dtype=object)
    return cols


def explain_event(bundle: Any, event: dict[str, Any]) -> Explanation:
    """Score one event and collect its explanation."""
    cols = event_columns(bundle, event)
    s = bundle.score(cols)
    family = getattr(bundle, "family", "gaussian")
    proba = (
        [float(p) for p in bundle.profiles.score(cols).proba[0]]
        if bundle.profiles is not None
        else []
    )
    seg = int(s["segment"][0])
    anc = [int(a) for a in bundle.router.ancestors[seg] if a >= 0]
    contrib = s["contributions"][0]
    names = bundle.contribution_names
    return Explanation(
        event_id=str(event.get(bundle.schema.id_field, "?")),
        segment=seg,
        path=anc[::-1],
        rules=bundle.router.describe_path(seg),
        model_node=int(s["model_node"][0]),
        fallback_level=int(s["fallback_level"][0]),
        contributions={n: float(c) for n, c in zip(names, contrib, strict=True)},
        prediction=float(s["prediction"][0]),
        interval=(float(s["interval_low"][0]), float(s["interval_high"][0])),
        interval_mass=bundle.interval_mass,
        pattern_proba=proba,
        imputed=bool(s["imputed"][0]),
        unknown_key=s["unknown_key"][0],
        family=family,
        threshold=getattr(bundle, "threshold", None),
        label=int(s["label"][0]) if "label" in s else -1,
    )


def plot_event(bundle: Any, ex: Explanation, path: str | Path, top: int = 3) -> Path:
    """The event's predicted outcome distribution (pattern mixture) against its top patterns
    (the DistETA streaming plot, on demand)."""
    from segstream.training.plotting import pyplot

    plt = pyplot()
    if bundle.profiles is None:
        return _plot_contributions(ex, path)
    prof = bundle.profiles
    edges = prof.edges
    finite = np.isfinite(edges)
    lo_e = edges[finite].min()
    hi_e = edges[finite].max()
    e = np.clip(edges, lo_e, hi_e)
    widths = np.diff(e)
    widths[widths <= 0] = 1.0
    centres = (e[:-1] + e[1:]) / 2
    proba = np.asarray(ex.pattern_proba)
    mix = proba @ prof.pattern_pmf
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(centres, mix / widths, color="black", lw=2, label="this event (mixture)")
    for i in np.argsort(proba)[::-1][:top]:
        ax.plot(
            centres,
            prof.pattern_pmf[i] / widths,
            lw=1,
            alpha=0.8,
            label=f"pattern {int(i)} (p={proba[i]:.2f})",
        )
    ax.axvspan(*ex.interval, color="#2b6cb0", alpha=0.15, label=f"{ex.interval_mass:.0%} interval")
    ax.axvline(ex.prediction, color="#2b6cb0", ls="--", label="prediction")
    q = np.quantile(np.r_[e[1:-1]], [0.0, 0.97])
    ax.set_xlim(q[0], q[1])
    ax.set_xlabel(bundle.schema.target)
    ax.set_ylabel("density")
    ax.set_title(f"event {ex.event_id}: segment {ex.segment}")
    ax.legend(fontsize=7)
    out = Path(path)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out


def _plot_contributions(ex: Explanation, path: str | Path) -> Path:
    """Binomial/Poisson bundles: the link-scale contributions as bars, the probability or
    expected count in the title."""
    from segstream.training.plotting import pyplot

    plt = pyplot()
    names = list(ex.contributions)
    vals = [ex.contributions[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.35 * len(names)))
    ax.barh(names, vals, color=["#2b6cb0" if v >= 0 else "#c53030" for v in vals])
    ax.axvline(0, color="black", lw=0.8)
    ax.invert_yaxis()
    if ex.family == "binomial":
        ax.set_xlabel("contribution to the log-odds")
        title = f"P = {ex.prediction:.3f}, label {ex.label}"
    else:
        ax.set_xlabel("contribution to the log expected count")
        title = f"expected count {ex.prediction:.2f}"
    ax.set_title(f"event {ex.event_id}: segment {ex.segment}; {title}")
    out = Path(path)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out
