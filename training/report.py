"""The self-contained HTML training report (jinja2 template, PNG figures embedded as base64)."""

from __future__ import annotations

import base64
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from segstream.shared.bundle import Manifest
from segstream.training.plotting import pyplot

logger = logging.getLogger(__name__)


def _plt() -> Any:
    return pyplot()


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _file_png(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def segment_path(part: Any, segment: int) -> str:
    """Human-readable path of a segment: its key values and tree splits, root first."""
    return part.router_.describe_path(segment)


def comparison_figure(test: dict[str, Any]) -> str:
    plt = _plt()
    names = ["partitioned", "global_linear", "global_xgboost"]
    mae = [test[n]["mae"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    bars = ax.barh(names, mae, color=["#2b6cb0", "#a0aec0", "#ed8936"])
    ax.bar_label(bars, fmt="%.2f")
    ax.set_xlabel("test MAE (target units)")
    ax.invert_yaxis()
    return _png(fig)


def coefficient_heatmap(coef: np.ndarray, features: list[str], labels: list[str]) -> str:
    """Standardised coefficients (segments × features), diverging colours."""
    plt = _plt()
    finite = np.isfinite(coef)
    scale = np.max(np.where(finite, np.abs(coef), 0.0), axis=0)
    scale[scale == 0] = 1.0
    z = coef / scale
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(features), 0.8 + 0.28 * len(labels)))
    im = ax.imshow(np.nan_to_num(z), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(features)), features, rotation=40, ha="right")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title("coefficient / max |coefficient| per feature")
    fig.colorbar(im, ax=ax, shrink=0.7)
    return _png(fig)


def drift_reference_figure(ref: Any, max_features: int = 12) -> str:
    plt = _plt()
    items = list(ref.numeric.items())[:max_features]
    if ref.prediction is not None:
        items.append(("prediction", ref.prediction))
    cols = 4
    rows = max(1, int(np.ceil(len(items) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.3 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, items, strict=False):
        labels = (
            ([f"<{r.edges[0]:.3g}"] if len(r.edges) else [])
            + [f"≥{e:.3g}" for e in r.edges]
            + ["NA"]
        )
        if not len(r.edges):
            labels = ["all", "NA"]
        ax.bar(range(len(r.expected)), r.expected, color="#4a5568")
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=6)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(items) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def write_report(
    out_dir: str | Path,
    manifest: Manifest,
    *,
    part: Any,
    fit_df: pd.DataFrame,
    part_cols: list[str],
    models: Any,
    profiles: Any,
    ref: Any,
    settings: Any,
) -> Path:
    """Render ``report-<bundle id prefix>.html`` into ``out_dir``; return its path."""
    from segstream.training.distributions import plot_pattern_sizes, plot_patterns, plot_reliability
    from segstream.training.partitioner import plot_partition_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = manifest.metrics
    test = m["test"]
    schema = settings.event_schema
    figures: dict[str, str] = {
        "comparison": comparison_figure(test),
        "drift_reference": drift_reference_figure(ref),
    }
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        try:
            feats = [c for c in part_cols if c in schema.numeric_features]
            paths = plot_partition_report(fit_df[feats], part.segments_, t / "partition")
            paths = list(paths.values()) if isinstance(paths, dict) else list(paths)
            for i, p in enumerate(sorted(paths)):
                figures["segment_sizes" if i == 0 else "partition_violin"] = _file_png(p)
        except Exception as exc:
            logger.warning("partition figures skipped: %s", exc)
        pattern_keys = []
        for name, fn in (("patterns", plot_patterns), ("pattern_sizes", plot_pattern_sizes)):
            try:
                figures[name] = _file_png(fn(profiles, t / f"{name}.png"))
                pattern_keys.append(name)
            except Exception as exc:
                logger.warning("%s figure skipped: %s", name, exc)
        if m.get("reliability"):
            try:
                figures["reliability"] = _file_png(
                    plot_reliability({"reliability": m["reliability"]}, t / "rel.png")
                )
            except Exception as exc:
                logger.warning("reliability figure skipped: %s", exc)

    # coefficient table for the largest segments
    seg_sizes = np.bincount(part.segments_, minlength=part.n_segments_)
    top = np.argsort(-seg_sizes, kind="stable")[:15]
    lin_feats = list(models.feature_names)
    gid = list(np.asarray(models.groups).tolist())
    coef_rows, coef_mat, labels = [], [], []
    for s in top.tolist():
        node = int(part.segment_node_[s])
        if node not in gid:
            continue
        i = gid.index(node)
        c = np.asarray(models.coef)[i, 0]
        coef_rows.append(
            {"segment": s, "n": int(seg_sizes[s]), "coef": c[1:].tolist(), "intercept": float(c[0])}
        )
        coef_mat.append(c[1:])
        labels.append(f"seg {s}")
    if coef_mat:
        figures["coef_heatmap"] = coefficient_heatmap(np.array(coef_mat), lin_feats, labels)

    comp = [
        ("partitioned (segment models)", test["partitioned"]),
        ("global linear (__dataset__)", test["global_linear"]),
        ("global XGBoost", test["global_xgboost"]),
    ]
    pm, gm, xm = (test[k]["mae"] for k in ("partitioned", "global_linear", "global_xgboost"))
    cmp_sentence = (
        f"The partitioned model's test MAE is {pm:.2f}: "
        f"{abs(1 - pm / gm):.1%} {'lower' if pm < gm else 'higher'} than the global linear "
        f"model ({gm:.2f}) and {abs(1 - pm / xm):.1%} {'lower' if pm < xm else 'higher'} than "
        f"the global XGBoost regressor ({xm:.2f})."
        + (
            " XGBoost wins on accuracy; the partitioned model keeps one explainable linear "
            "model per segment."
            if xm < pm
            else ""
        )
    )
    iv = test["interval"]
    cl = test["classifier"]
    intervals = [
        {
            "name": "segment model + split-conformal offsets",
            "mass": iv["mass"],
            "coverage": iv["coverage"],
            "mean_width": iv["mean_width"],
        }
    ]
    pi = test.get("pattern_interval") or {}
    for mass_key, v in sorted(pi.items()):
        if isinstance(v, dict) and "coverage" in v:
            intervals.append(
                {
                    "name": f"pattern mixture ({mass_key})",
                    "mass": mass_key,
                    "coverage": v["coverage"],
                    "mean_width": v["mean_width"],
                }
            )

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    classifier_rows = [
        ("accuracy", fmt(cl.get("accuracy")), fmt(cl.get("baseline_accuracy"))),
        ("weighted one-vs-rest AUROC", fmt(cl.get("auroc_weighted_ovr")), "0.500"),
        ("log-loss", fmt(cl.get("log_loss")), fmt(cl.get("baseline_log_loss"))),
    ]
    seg_err = [{**s, "path": segment_path(part, s["segment"])} for s in test["segment_mae"]]
    ctx = {
        "model": manifest.model,
        "bundle_id": manifest.bundle_id,
        "created_at": manifest.created_at.isoformat(timespec="seconds"),
        "summary_sentence": cmp_sentence,
        "target": schema.target,
        "fingerprint": manifest.data.get("fingerprint", ""),
        "slices": _slices(manifest),
        "comparison": comp,
        "comparison_sentence": cmp_sentence,
        "segments_sentence": (
            f"{m['segments']} segments ({m['nodes']} nodes with their ancestors). A segment "
            f"with fewer than {settings.training.regression.min_stat} training rows is served "
            "by its nearest ancestor's model (fallback)."
        ),
        "fallback_shares": sorted(test["fallback_share"].items()),
        "segment_errors": seg_err,
        "regression_method": settings.training.regression.method,
        "signs": dict(settings.training.regression.signs),
        "coef_features": lin_feats,
        "coef_rows": coef_rows,
        "patterns_sentence": (
            f"{m.get('patterns')} recurring outcome patterns were found by clustering the "
            "normalised outcome distributions of the profile groups; an XGBoost classifier "
            "predicts an event's pattern from what is known when it happens."
        ),
        "classifier_rows": classifier_rows,
        "pattern_figures": pattern_keys,
        "interval_sentence": (
            f"Nominal mass {iv['mass']}: the segment-model interval covers "
            f"{iv['coverage']:.1%} of test outcomes (mean width {iv['mean_width']:.1f})."
        ),
        "interval_rows": intervals,
        "timings": sorted(manifest.timings.items()),
        "figures": _Default(figures),
    }
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("segstream.training", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report.html.j2").render(**ctx)
    path = out / f"report-{manifest.model}-{manifest.bundle_id[:12]}.html"
    path.write_text(html, encoding="utf-8")
    return path


class _Default(dict):  # type: ignore[type-arg]
    """Missing figures render as empty (the template tests truthiness)."""

    def __missing__(self, key: str) -> str:
        return ""

    def __getattr__(self, key: str) -> str:
        return self[key]


def _slices(manifest: Manifest) -> list[dict[str, Any]]:
    return [{"name": name, **v} for name, v in manifest.data.get("slices", {}).items()]


# --------------------------------------------------------------------------- binomial / poisson
def reliability_figure(
    tables: dict[str, list[dict[str, Any]]], path: str | Path | None = None
) -> str:
    """Reliability plot: observed rate against mean predicted probability per bin, one line
    per model, the diagonal for perfect calibration, and the bin counts underneath.

    Parameters
    ----------
    tables : dict of str to reliability table
        Model name -> :func:`segstream.training.evaluation.reliability_table` rows.
    path : path-like, optional
        Also write the PNG there.

    Returns
    -------
    str
        The PNG, base64-encoded.
    """
    plt = _plt()
    fig, (ax, axc) = plt.subplots(
        2, 1, figsize=(5.6, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="#999", ls=":", lw=1, label="perfectly calibrated")
    colours = ["#2b6cb0", "#a0aec0", "#ed8936", "#38a169"]
    for (name, table), c in zip(tables.items(), colours, strict=False):
        rows = [r for r in table if r["count"]]
        ax.plot(
            [r["mean_predicted"] for r in rows],
            [r["observed_rate"] for r in rows],
            marker="o",
            color=c,
            label=name,
        )
    first = next(iter(tables.values()))
    centres = [(r["low"] + r["high"]) / 2 for r in first]
    axc.bar(centres, [r["count"] for r in first], width=0.09, color="#2b6cb0")
    axc.set_yscale("log")
    axc.set_ylabel("rows (first model)")
    axc.set_xlabel("predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("reliability on the test slice (10 bins)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    return _png(fig)


def glm_comparison_figure(test: dict[str, Any], names: list[str], key: str, label: str) -> str:
    plt = _plt()
    vals = [test[n][key] for n in names]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    bars = ax.barh(names, vals, color=["#2b6cb0", "#a0aec0", "#ed8936"])
    ax.bar_label(bars, fmt="%.4f")
    ax.set_xlabel(label)
    ax.invert_yaxis()
    return _png(fig)


def write_glm_report(
    out_dir: str | Path,
    manifest: Manifest,
    *,
    part: Any,
    models: Any,
    ref: Any,
    settings: Any,
) -> Path:
    """Render the report of a binomial or poisson bundle (``report-<model>-<id>.html``): the
    test comparison with the global GLM and XGBoost, the reliability table and plot
    (binomial), calibration per segment, fallbacks, coefficients on the link scale, the
    drift reference and the timings; return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = manifest.metrics
    test = m["test"]
    family = m["family"]
    schema = settings.event_schema
    binomial = family == "binomial"
    glob = "global_logistic" if binomial else "global_poisson"
    names = ["partitioned", glob, "global_xgboost"]
    figures: dict[str, str] = {"drift_reference": drift_reference_figure(ref)}
    if binomial:
        figures["comparison"] = glm_comparison_figure(test, names, "log_loss", "test log loss")
        figures["reliability"] = reliability_figure({n: test[f"reliability_{n}"] for n in names})
        pl, gl, xl = (test[n]["log_loss"] for n in names)
        sentence = (
            f"Test log loss of the partitioned logistic model: {pl:.4f}, "
            f"{abs(1 - pl / gl):.1%} {'lower' if pl < gl else 'higher'} than the global "
            f"logistic model ({gl:.4f}) and {abs(1 - pl / xl):.1%} "
            f"{'lower' if pl < xl else 'higher'} than the global XGBoost classifier "
            f"({xl:.4f})."
            + (
                " XGBoost wins on log loss; the partitioned model keeps one explainable "
                "logistic model per segment."
                if xl < pl
                else ""
            )
        )
        columns = [("log loss", "log_loss"), ("Brier", "brier"), ("AUROC", "auroc"),
                   ("ECE", "ece"), ("mean P", "mean_probability"), ("observed rate", "positive_rate")]  # fmt: skip
    else:
        figures["comparison"] = glm_comparison_figure(
            test, names, "deviance", "test mean Poisson deviance"
        )
        pd_, gd, xd = (test[n]["deviance"] for n in names)
        sentence = (
            f"Test mean Poisson deviance of the partitioned model: {pd_:.4f} against "
            f"{gd:.4f} for the global Poisson GLM and {xd:.4f} for the global XGBoost "
            "count model."
        )
        columns = [("deviance", "deviance"), ("MAE", "mae"), ("RMSE", "rmse"),
                   ("mean prediction", "mean_prediction"), ("mean count", "mean_count")]  # fmt: skip
    comparison = [
        {"name": n, "values": [test[n].get(k) for _, k in columns], "n": test[n]["n"]}
        for n in names
    ]
    seg_rows = []
    for r in test.get("segment_calibration") or test.get("segment_mae") or []:
        seg_rows.append({**r, "path": segment_path(part, r["segment"])})
    seg_sizes = np.bincount(part.segments_, minlength=part.n_segments_)
    top = np.argsort(-seg_sizes, kind="stable")[:15]
    lin_feats = list(models.feature_names)
    gid = list(np.asarray(models.groups).tolist())
    coef_rows, coef_mat, labels = [], [], []
    status = models.status_names()[:, 0]
    for s in top.tolist():
        node = int(part.segment_node_[s])
        if node not in gid:
            continue
        i = gid.index(node)
        c = np.asarray(models.coef)[i, 0]
        coef_rows.append(
            {
                "segment": s,
                "n": int(seg_sizes[s]),
                "coef": [float(v) for v in c[1:]],
                "intercept": float(c[0]),
                "status": str(status[i]),
            }
        )
        coef_mat.append(np.nan_to_num(c[1:]))
        labels.append(f"seg {s}")
    if coef_mat:
        figures["coef_heatmap"] = coefficient_heatmap(np.array(coef_mat), lin_feats, labels)
    ctx = {
        "model": manifest.model,
        "bundle_id": manifest.bundle_id,
        "created_at": manifest.created_at.isoformat(timespec="seconds"),
        "family": family,
        "binomial": binomial,
        "target": schema.target,
        "fingerprint": manifest.data.get("fingerprint", ""),
        "slices": _slices(manifest),
        "sentence": sentence,
        "columns": [c for c, _ in columns],
        "comparison": comparison,
        "threshold": m.get("threshold"),
        "threshold_criterion": m.get("threshold_criterion"),
        "labels": test.get("labels"),
        "reliability": test.get("reliability_partitioned") or [],
        "interval": test.get("interval"),
        "shrinkage": m.get("shrinkage"),
        "shrinkage_search": sorted((m.get("shrinkage_search") or {}).items()),
        "node_status": sorted((k, v) for k, v in (m.get("node_status") or {}).items() if v),
        "segments_sentence": (
            f"{m['segments']} segments ({m['nodes']} nodes with their ancestors). A node "
            f"with fewer than {settings.training.regression.min_stat} training rows, or whose "
            "maximum-likelihood fit does not exist (one class only, too few events, "
            "separation), is served by its nearest ancestor's model (fallback)."
        ),
        "fallback_shares": sorted(test["fallback_share"].items()),
        "segment_rows": seg_rows,
        "coef_features": lin_feats,
        "coef_rows": coef_rows,
        "signs": dict(settings.training.regression.signs),
        "timings": sorted(manifest.timings.items()),
        "figures": _Default(figures),
    }
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("segstream.training", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    html = env.get_template("report_glm.html.j2").render(**ctx)
    path = out / f"report-{manifest.model}-{manifest.bundle_id[:12]}.html"
    path.write_text(html, encoding="utf-8")
    return path
