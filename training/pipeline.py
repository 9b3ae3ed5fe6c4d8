"""The batch training pipeline behind ``segstream train``.

load → split by time → partition → fit every node's linear model (with fallback) → outcome
profiles and pattern classifier → conformal intervals → drift reference → evaluate against a
global linear model and a global XGBoost regressor → bundle → store → model-update event →
HTML report.

With ``training.regression.family`` ``binomial`` or ``poisson`` the segment models are GLMs
(logistic / log-linear, :func:`~segstream.training.groupby_regression.fit_groups` with
``family``; ``shrinkage: auto`` picks the strength on the validation slice), the binomial
decision threshold is chosen on the validation slice, the outcome profiles and conformal
intervals are skipped (they describe a continuous outcome; a classifier is judged by its
calibration instead: reliability tables, overall and per segment), and the baselines are a
global GLM (the same engine, one group) and a global XGBoost classifier (``binary:logistic``)
or count model (``count:poisson``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from segstream.shared.bundle import Manifest, load_components, write_bundle
from segstream.shared.component import ExportedComponent
from segstream.shared.data import load_dataset, load_file
from segstream.shared.drift import DriftReference, numeric_reference, window_psi_levels
from segstream.shared.errors import DataError, SchemaError
from segstream.shared.settings import SchemaSettings, Settings
from segstream.training.evaluation import (
    choose_threshold,
    classification_metrics,
    conformal_offsets,
    expected_calibration_error,
    fallback_shares,
    interval_metrics,
    per_segment_calibration,
    per_segment_mae,
    point_metrics,
    poisson_metrics,
    reliability_table,
)

logger = logging.getLogger(__name__)

STEPS = (
    "load",
    "split",
    "partition",
    "segment_models",
    "profiles",
    "intervals",
    "drift_reference",
    "baselines",
    "evaluate",
    "bundle",
    "publish",
    "report",
)


@dataclass
class TrainResult:
    """What a training run produced."""

    bundle_dir: Path
    manifest: Manifest
    uri: str | None = None
    report_path: Path | None = None
    update_sent: bool = False
    #: Whether publishing moved ``LATEST`` (False when the store held this bundle id already:
    #: the same data and config trained again).
    latest_moved: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    #: in-process predictions on the test rows with an outcome, from the training objects
    #: (``event_id``, ``prediction``, ``interval_low``, ``interval_high``): a loaded bundle
    #: must reproduce them.
    test_scores: dict[str, np.ndarray] = field(default_factory=dict)


class _Steps:
    """Times each step and shows progress (tqdm on stderr)."""

    def __init__(self, progress: bool) -> None:
        self.timings: dict[str, float] = {}
        self.bar = tqdm(
            total=len(STEPS),
            desc="train",
            unit="step",
            file=sys.stderr,
            disable=not progress,
            leave=False,
        )

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.bar.update(1)
        logger.info("step %s done in %.2f s", name, self.timings[name])

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- splitting
def split_by_time(
    df: pd.DataFrame,
    schema: SchemaSettings,
    train_end: dt.date | None,
    validation_end: dt.date | None,
) -> tuple[pd.DataFrame, ...]:
    """Train (≤ train_end), validation (≤ validation_end), test (the rest), by event time.

    Without dates: 70 % / 15 % / 15 % of the rows in time order.

    Raises
    ------
    DataError
        A slice is empty.
    """
    t = df[schema.time_field]
    if train_end is None or validation_end is None:
        n = len(df)
        a, b = int(n * 0.70), int(n * 0.85)
        parts = (df.iloc[:a], df.iloc[a:b], df.iloc[b:])
    else:
        tz = t.dt.tz
        te = pd.Timestamp(train_end).tz_localize(tz) + pd.Timedelta(days=1)
        ve = pd.Timestamp(validation_end).tz_localize(tz) + pd.Timedelta(days=1)
        parts = (df[t < te], df[(t >= te) & (t < ve)], df[t >= ve])
    for name, p in zip(("train", "validation", "test"), parts, strict=True):
        if p[schema.target].notna().sum() == 0:
            raise DataError(
                f"the {name} slice has no rows with a finite target "
                f"'{schema.target}' (check training.train_end/validation_end)"
            )
    return tuple(p.reset_index(drop=True) for p in parts)


def fingerprint(df: pd.DataFrame, schema: SchemaSettings) -> str:
    """SHA-256 over the ids, times and target of the data (detects a changed data set)."""
    h = hashlib.sha256()
    h.update(
        pd.util.hash_pandas_object(
            df[[schema.id_field, schema.time_field, schema.target]], index=False
        )
        .to_numpy()
        .tobytes()
    )
    return h.hexdigest()


# --------------------------------------------------------------------------- components
def build_partitioner(settings: Settings) -> Any:
    """The configured partitioner (unfitted) and the columns it needs."""
    from segstream.training.partitioner import CompositePartitioner, KeyPartitioner, TreePartitioner

    ps = settings.training.partitioner
    schema = settings.event_schema
    feats = list(ps.features) or schema.numeric_features
    cats = [f for f in feats if f in schema.categorical_features]
    common = dict(
        min_samples_leaf=ps.min_samples_leaf,
        categorical_features=cats or None,
        y_columns=list(ps.y_columns) or None,
        max_bins=min(255, ps.max_bins),
        random_state=settings.training.seed,
    )
    if ps.kind == "keys":
        if not ps.levels:
            raise SchemaError("training.partitioner.levels is required for kind 'keys'")
        return KeyPartitioner(levels=list(ps.levels)), list(ps.levels)
    if ps.kind == "tree":
        return TreePartitioner(ps.max_leaf_nodes, **common), feats + list(ps.y_columns)
    if not ps.levels:
        raise SchemaError("training.partitioner.levels is required for kind 'keys_then_tree'")
    return (
        CompositePartitioner(list(ps.levels), ps.max_leaf_nodes, **common),
        list(ps.levels) + feats + list(ps.y_columns),
    )


def _check_columns(df: pd.DataFrame, cols: list[str], where: str) -> None:
    missing = [c for c in dict.fromkeys(cols) if c not in df.columns]
    if missing:
        raise SchemaError(f"{where} names column(s) {missing} that the data does not have")


def node_rows(ancestors: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand rows to (row index, node id) for every node on each row's path (leaf…root)."""
    paths = ancestors[segments]  # (n, depth+1), -1 padded
    rows = np.repeat(np.arange(len(segments)), paths.shape[1])
    nodes = paths.reshape(-1)
    keep = nodes >= 0
    return rows[keep], nodes[keep].astype(np.int64)


def serving_nodes(
    models: Any, node_parent: np.ndarray, min_stat: int
) -> tuple[np.ndarray, np.ndarray]:
    """Which node's model serves each node: ``(model_node (n_nodes,) int32, model_index
    (n_nodes,) int32)`` (the row of that model in ``models.groups``).

    A node serves predictions with a converged fit on at least ``min_stat`` usable rows of
    its own: status "ok", or "pooled" with that many rows, i.e. a predictor direction the
    node cannot identify (e.g. distance, constant within a route) is taken from the parent by
    the shrinkage while the rest is fitted on the node's rows. Thinner nodes, and GLM nodes
    whose fit does not exist (``one_class``, ``too_few_events``, ``separation``), fall back to
    their nearest such ancestor (the root last).

    Raises
    ------
    DataError
        The root (``__dataset__``) model could not be fitted.
    """
    gid = np.asarray(models.groups, np.int64)
    st0 = np.asarray(models.status)[:, 0]
    n_used = np.asarray(models.n_used)
    n_used = n_used[:, 0] if n_used.ndim > 1 else n_used
    good = (
        ((st0 == 0) | ((st0 == 4) & (n_used >= min_stat)))
        & (np.asarray(models.n_rows) >= min_stat)
        & np.all(np.isfinite(models.coef[:, 0, :1]), axis=1)
    )
    usable = np.zeros(len(node_parent), bool)
    usable[gid[good]] = True
    if not usable[0]:
        raise DataError(
            "the root (__dataset__) model could not be fitted: "
            f"fewer than {min_stat} rows with a finite target"
        )
    mnode = model_nodes(node_parent, usable)
    index_of = {int(g): i for i, g in enumerate(gid)}
    return mnode, np.array([index_of[int(m)] for m in mnode], np.int32)


def model_nodes(parent: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Nearest ancestor-or-self of every node with a usable model (root must be usable)."""
    out = np.empty(len(parent), np.int32)
    for node in range(len(parent)):  # pre-order: parents come first
        p = parent[node]
        out[node] = node if usable[node] or p < 0 else out[p]
    return out


def train(
    settings: Settings,
    *,
    data_path: str | None = None,
    publish: bool = True,
    report_dir: str | None = None,
    progress: bool = True,
    work_dir: str | None = None,
) -> TrainResult:
    """Run the whole pipeline; return where the bundle (and report) went.

    Raises
    ------
    DataError, SchemaError
        Data problems, naming the column or file.
    StoreError
        The store cannot be written (``LATEST`` is left where it was).
    SigningKeyError
        ``store.signing_key_file`` / ``store.signing_key`` is set but unusable (checked before
        training starts).
    """
    from segstream.shared.signing import load_private_key
    from segstream.training.distributions import OutcomeProfiles
    from segstream.training.distributions import evaluate as evaluate_profiles
    from segstream.training.groupby_regression import fit_groups

    signing_key = load_private_key(settings.store)  # fail before an hour of training
    tr = settings.training
    schema = settings.event_schema
    steps = _Steps(progress)
    target = schema.target
    try:
        with steps("load"):
            if data_path:
                df = load_file(
                    data_path, schema, settings.dataset.timezone, settings.dataset.target_from
                )
            else:
                df = load_dataset(settings)
            df = prepare_target(df, settings)
        with steps("split"):
            train_df, val_df, test_df = split_by_time(df, schema, tr.train_end, tr.validation_end)
            fit_df = train_df[train_df[target].notna()].reset_index(drop=True)
            val_fit = val_df[val_df[target].notna()].reset_index(drop=True)
            test_fit = test_df[test_df[target].notna()].reset_index(drop=True)
        lin_feats = list(tr.regression.features) or schema.numeric_features
        _check_columns(df, lin_feats, "training.regression.features")

        with steps("partition"):
            part, part_cols = build_partitioner(settings)
            _check_columns(df, part_cols, "training.partitioner")
            part.fit(fit_df[part_cols])
            seg = part.segments_

        rp = tr.regression
        family = rp.family
        threshold: float | None = None
        rows, nodes = node_rows(part.ancestors_, seg)
        X = fit_df[lin_feats].to_numpy(np.float64)
        y = fit_df[target].to_numpy(np.float64)
        if family == "gaussian":
            with steps("segment_models"):
                models = fit_groups(
                    nodes,
                    X[rows],
                    y[rows],
                    method=rp.method,
                    min_rows=rp.min_stat,
                    min_stat=rp.min_stat,
                    sign=dict(rp.signs) or None,
                    parent=part.node_parent_,
                    shrinkage="eb" if rp.shrinkage == "auto" else rp.shrinkage,
                    feature_names=lin_feats,
                    target_names=[target],
                )
                mnode, model_index = serving_nodes(models, part.node_parent_, rp.min_stat)
                global_models = fit_groups(
                    np.zeros(len(y), np.int64),
                    X,
                    y,
                    method=rp.method,
                    sign=dict(rp.signs) or None,
                    feature_names=lin_feats,
                    target_names=[target],
                )
        else:
            with steps("segment_models"):
                glm = fit_glm_models(settings, part, part_cols, lin_feats, fit_df, val_fit)
            models, mnode, model_index, global_models = (
                glm.models,
                glm.mnode,
                glm.model_index,
                glm.global_models,
            )
            threshold = glm.threshold

        def predict_partitioned(frame: pd.DataFrame) -> dict[str, np.ndarray]:
            r = part.route(frame[part_cols])
            mn = mnode[r.node]
            Xf = frame[lin_feats].to_numpy(np.float64)

            pred = models.predict(mn, Xf)
            lvl = part.node_depth_[part.segment_node_[r.segment]] - part.node_depth_[mn]
            return {
                "prediction": pred,
                "node": r.node,
                "model_node": mn,
                "segment": r.segment,
                "level": lvl,
            }

        pp = tr.profiles
        keys = list(pp.keys) or schema.categorical_features
        profiles: Any = None
        pfeats = list(pp.features) or schema.features
        with steps("profiles"):
            _check_columns(df, keys + pfeats, "training.profiles")
            if family == "gaussian":  # binomial/poisson: no outcome profiles (module docstring)
                profiles = OutcomeProfiles(
                    profile_keys=tuple(keys),
                    features=tuple(pfeats),
                    categorical_features=tuple(
                        f for f in pfeats if f in schema.categorical_features
                    )
                    or None,
                    target=target,
                    k_range=(pp.k_min, pp.k_max),
                    hdr_masses=tuple(pp.masses),
                    interval_mass=tr.interval_mass,
                    time_column=schema.time_field,
                    n_estimators=pp.n_estimators,
                    max_depth=pp.max_depth,
                    max_classifier_rows=pp.max_classifier_rows,
                    random_state=tr.seed,
                )
                profiles.fit(
                    fit_df,
                    fit_df[target].to_numpy(),
                    eval_set=(val_fit, val_fit[target].to_numpy()),
                )

        if family != "gaussian":
            # No conformal offsets: the binomial model has no interval, the Poisson interval
            # comes from the Poisson distribution at scoring (shared.scoring.poisson_interval).
            with steps("intervals"):
                pt = predict_partitioned(fit_df)
                lo = hi = np.full(len(part.node_parent_), np.nan)
        else:
            with steps("intervals"):
                # Split-conformal offsets per serving node from the residuals of January through
                # the validation slice: September alone is a calm month whose residuals under-cover
                # later months; training residuals are in-sample, but every serving node has at
                # least min_stat rows for a handful of parameters, so their optimism is small.
                pt = predict_partitioned(fit_df)
                pv = predict_partitioned(val_fit)
                resid = np.r_[
                    fit_df[target].to_numpy(np.float64) - pt["prediction"],
                    val_fit[target].to_numpy(np.float64) - pv["prediction"],
                ]
                lo, hi, _src = conformal_offsets(
                    resid,
                    np.r_[pt["model_node"], pv["model_node"]],
                    part.node_parent_,
                    tr.interval_mass,
                    min_rows=100,
                )

        with steps("drift_reference"):
            p_train = pt["prediction"]
            ref = DriftReference.fit(
                {f: train_df[f].to_numpy(np.float64) for f in schema.numeric_features},
                {f: train_df[f].to_numpy(object) for f in schema.categorical_features},
                prediction=p_train,
                n_bins=tr.drift_bins,
            )
            sizes = np.bincount(seg, minlength=part.n_segments_)
            top = np.argsort(-sizes, kind="stable")[: tr.drift_top_segments]
            seg_refs = {}
            for s in top.tolist():
                m = seg == s
                seg_refs[int(s)] = {
                    **{
                        f: numeric_reference(fit_df.loc[m, f].to_numpy(np.float64), tr.drift_bins)
                        for f in schema.numeric_features
                    },
                    "prediction": numeric_reference(p_train[m], tr.drift_bins),
                }
            # How far a training window of the monitor's length already is from the reference:
            # the monitor raises each feature's levels to these (see DriftReference).
            mon = settings.monitor

            def windows(frame: pd.DataFrame) -> np.ndarray:
                t_ns = (
                    frame[schema.time_field]
                    .dt.tz_convert("UTC")
                    .dt.tz_localize(None)
                    .to_numpy("datetime64[ns]")
                    .astype(np.int64)
                )
                return t_ns // (mon.window_s * 1_000_000_000)

            window_psi = window_psi_levels(
                ref,
                {f: train_df[f].to_numpy(np.float64) for f in schema.numeric_features},
                {f: train_df[f].to_numpy(object) for f in schema.categorical_features},
                None,
                windows(train_df),
                mon.drift_min_count,
            )
            window_psi.update(
                window_psi_levels(ref, {}, {}, p_train, windows(fit_df), mon.drift_min_count)
            )
            ref = DriftReference(
                ref.numeric, ref.categorical, ref.prediction, seg_refs, window_psi, mon.window_s
            )

        with steps("baselines"):
            xgb_model = _fit_xgb_baseline(fit_df, val_fit, schema, tr.seed, family)

        with steps("evaluate"):
            pt_test = predict_partitioned(test_fit)
            if family != "gaussian":
                metrics = _evaluate_glm(
                    settings, part, part_cols, pt_test, mnode, global_models, lin_feats,
                    xgb_model, test_df, test_fit, glm,
                )  # fmt: skip
            else:
                metrics = _evaluate(
                    settings,
                    part,
                    part_cols,
                    pt_test,
                    lo,
                    hi,
                    mnode,
                    global_models,
                    lin_feats,
                    xgb_model,
                    profiles,
                    evaluate_profiles,
                    test_df,
                    test_fit,
                    seg,
                )

        with steps("bundle"):
            components = _components(
                settings,
                part,
                models,
                profiles,
                ref,
                mnode,
                model_index,
                lo,
                hi,
                lin_feats,
                keys,
                fit_df,
            )
            if family != "gaussian":
                # the GLMs under their own kind (shared.scoring.REQUIRED_GLM_COMPONENTS)
                components["segment_glms"] = components.pop("segment_models")
            tf = schema.time_field
            data_info = {
                "rows": len(df),
                "rows_train": len(train_df),
                "rows_validation": len(val_df),
                "rows_test": len(test_df),
                "rows_without_outcome": int(df[target].isna().sum()),
                "time_range": [str(df[tf].min()), str(df[tf].max())],
                "train_range": [str(train_df[tf].min()), str(train_df[tf].max())],
                "slices": {
                    name: {
                        "rows": len(d),
                        "with_outcome": int(d[target].notna().sum()),
                        "start": str(d[tf].min()),
                        "end": str(d[tf].max()),
                    }
                    for name, d in (
                        ("all", df),
                        ("train", train_df),
                        ("validation", val_df),
                        ("test", test_df),
                    )
                },
                "fingerprint": fingerprint(df, schema),
            }
            staging = Path(work_dir or tempfile.mkdtemp(prefix="segstream-bundle-"))
            bundle_dir = write_bundle(
                staging,
                model=settings.model,
                components=components,
                config=settings.public_dump(),  # secrets masked
                schema=schema.model_dump(mode="json"),
                data=data_info,
                metrics=metrics,
                timings=dict(steps.timings),
                family=family,
                threshold=threshold,
            )
            manifest = load_components(bundle_dir).manifest
            if signing_key is not None:
                from segstream.shared.signing import sign_bundle_dir

                sign_bundle_dir(bundle_dir, signing_key)

        result = TrainResult(
            bundle_dir,
            manifest,
            timings=steps.timings,
            test_scores={
                "event_id": test_fit[schema.id_field].to_numpy(object),
                "prediction": pt_test["prediction"],
                **_test_intervals(pt_test, lo, hi, family, tr.interval_mass),
            },
        )
        with steps("publish"):
            if publish:
                from segstream.shared.store import ArtifactStore

                store = ArtifactStore(settings.store)
                published = store.publish_bundle(bundle_dir)
                result.uri, result.latest_moved = published.uri, published.promoted
                if (
                    signing_key is not None
                    and not published.uploaded
                    and store.read_signature(manifest.model, manifest.bundle_id) is None
                ):
                    # The stored copy (same id, its own annotations) was published unsigned.
                    store.sign(manifest.model, manifest.bundle_id, signing_key)
                if published.promoted:
                    result.update_sent = _send_model_update(settings, manifest, result.uri)
                else:
                    logger.info(
                        "bundle %s was in the store already: LATEST and the model-updates "
                        "topic left alone",
                        manifest.bundle_id[:12],
                    )
        with steps("report"):
            from segstream.training.report import write_report

            out = Path(report_dir) if report_dir else bundle_dir.parent / "reports"
            if family != "gaussian":
                from segstream.training.report import write_glm_report

                result.report_path = write_glm_report(
                    out, manifest, part=part, models=models, ref=ref, settings=settings
                )
            else:
                result.report_path = write_report(
                    out,
                    manifest,
                    part=part,
                    fit_df=fit_df,
                    part_cols=part_cols,
                    models=models,
                    profiles=profiles,
                    ref=ref,
                    settings=settings,
                )
    finally:
        steps.close()
    return result


def _fit_xgb_baseline(
    fit_df: pd.DataFrame,
    val_fit: pd.DataFrame,
    schema: SchemaSettings,
    seed: int,
    family: str = "gaussian",
) -> Any:
    """Global XGBoost model on all features, early-stopped on the validation slice: a
    regressor (gaussian), a classifier (``binary:logistic``, binomial) or a count model
    (``count:poisson``, poisson)."""
    import xgboost as xgb

    Xt, Xv = _xgb_frame(fit_df, schema), _xgb_frame(val_fit, schema, like=fit_df)
    cls: Any = xgb.XGBClassifier if family == "binomial" else xgb.XGBRegressor
    extra: dict[str, Any] = {}
    if family == "binomial":
        extra = {"objective": "binary:logistic", "eval_metric": "logloss"}
    elif family == "poisson":
        extra = {"objective": "count:poisson", "eval_metric": "poisson-nloglik"}
    model = cls(
        **extra,
        n_estimators=300,
        max_depth=6,
        learning_rate=0.15,
        max_bin=128,
        tree_method="hist",
        enable_categorical=True,
        nthread=2,
        early_stopping_rounds=20,
        random_state=seed,
    )
    model.fit(Xt, fit_df[schema.target], eval_set=[(Xv, val_fit[schema.target])], verbose=False)
    return model


def _xgb_frame(
    df: pd.DataFrame, schema: SchemaSettings, like: pd.DataFrame | None = None
) -> pd.DataFrame:
    out = df[schema.features].copy()
    for c in schema.categorical_features:
        cats = sorted(pd.unique((like if like is not None else df)[c].dropna().astype(str)))
        out[c] = pd.Categorical(out[c].astype(object), categories=cats)
    return out


def _evaluate(
    settings,
    part,
    part_cols,
    p,
    lo,
    hi,
    mnode,
    global_models,
    lin_feats,
    xgb_model,
    profiles,
    evaluate_profiles,
    test_df,
    test_fit,
    seg,
) -> dict[str, Any]:
    schema = settings.event_schema
    target = schema.target
    y = test_fit[target].to_numpy(np.float64)
    Xt = test_fit[lin_feats].to_numpy(np.float64)
    g_pred = global_models.predict(np.zeros(len(Xt), np.int64), Xt)
    x_pred = xgb_model.predict(_xgb_frame(test_fit, schema, like=test_fit))
    low = p["prediction"] + lo[p["model_node"]]
    high = p["prediction"] + hi[p["model_node"]]
    prof_eval = evaluate_profiles(
        profiles, test_fit, y, masses=tuple(settings.training.profiles.masses)
    )
    all_route = part.route(test_df[part_cols])
    all_levels = (
        part.node_depth_[part.segment_node_[all_route.segment]]
        - part.node_depth_[mnode[all_route.node]]
    )
    test = {
        "partitioned": point_metrics(y, p["prediction"]),
        "global_linear": point_metrics(y, g_pred),
        "global_xgboost": point_metrics(y, x_pred),
        "interval": {"mass": settings.training.interval_mass, **interval_metrics(y, low, high)},
        "interval_by_month": {
            str(month): interval_metrics(y[sel], low[sel], high[sel])["coverage"]
            for month in sorted(set(test_fit[schema.time_field].dt.strftime("%Y-%m")))
            for sel in [(test_fit[schema.time_field].dt.strftime("%Y-%m") == month).to_numpy()]
        },
        "pattern_interval": prof_eval["intervals"],
        "classifier": prof_eval["classifier"],
        "fallback_share": fallback_shares(all_levels),
        "imputed_share": float(all_route.imputed.mean()),
        "unknown_share": float(all_route.unknown.mean()),
        "segment_mae": per_segment_mae(y, p["prediction"], p["segment"], top=10),
        "rows": len(test_df),
        "rows_with_outcome": len(test_fit),
    }
    pm, gm, xm = (test[k]["mae"] for k in ("partitioned", "global_linear", "global_xgboost"))
    test["mae_gain_vs_global_linear"] = float(1 - pm / gm)
    test["mae_gain_vs_global_xgboost"] = float(1 - pm / xm)
    return {
        "test": test,
        "segments": int(part.n_segments_),
        "nodes": len(part.node_parent_),
        "patterns": int(profiles.n_patterns_) if hasattr(profiles, "n_patterns_") else None,
        "reliability": prof_eval.get("reliability"),
    }


def _components(
    settings, part, models, profiles, ref, mnode, model_index, lo, hi, lin_feats, keys, fit_df
) -> dict[str, ExportedComponent]:
    known = sorted(
        {tuple(vals) for vals in fit_df[keys].astype(str).itertuples(index=False, name=None)}
    )
    scoring = ExportedComponent(
        "scoring",
        arrays={
            "model_node": mnode.astype(np.int32),
            "model_index": model_index,
            "depth": np.asarray(part.node_depth_, np.int32),
            "segment_node": np.asarray(part.segment_node_, np.int32),
            "interval_lo": lo.astype(np.float64),
            "interval_hi": hi.astype(np.float64),
        },
        meta={
            "interval_mass": settings.training.interval_mass,
            "linear_features": list(lin_feats),
            "key_columns": list(keys),
            "known_keys": [list(k) for k in known],
        },
    )
    out = {
        "partitioner": part.export(),
        "segment_models": models.export(),
        "profiles": profiles.export() if profiles is not None else None,
        "scoring": scoring,
        "drift_reference": ExportedComponent("drift_reference", {}, ref.to_meta()),
    }
    return {k: v for k, v in out.items() if v is not None}


def _send_model_update(settings: Settings, manifest: Manifest, uri: str) -> bool:
    """Produce a :class:`~segstream.shared.store.ModelUpdate` to the model-updates topic: a hint for
    workers to re-read ``LATEST`` now (they never load the id it names).

    Returns False (and logs) when no broker answers; a broker that answers but does not
    confirm delivery raises :class:`~segstream.shared.errors.BrokerError`.
    """
    from confluent_kafka import Producer

    from segstream.shared.errors import BrokerError
    from segstream.shared.kafka import check_reachable, client_config, ensure_topics
    from segstream.shared.store import ModelUpdate, encode_model_update

    b = settings.broker.model_copy(update={"connect_attempts": 1, "connect_timeout_s": 2.0})
    try:
        check_reachable(b)
    except BrokerError as exc:
        logger.warning("model-update event not sent: %s", exc)
        return False
    t = settings.topics
    ensure_topics(b, [t.model_updates], 1, t.replication_factor)
    errors: list[str] = []
    p = Producer(client_config(b, acks="all"))
    p.produce(
        t.model_updates,
        encode_model_update(
            ModelUpdate(
                model=manifest.model,
                bundle_id=manifest.bundle_id,
                uri=uri,
                created_at=manifest.created_at.isoformat(),
            )
        ),
        manifest.model.encode(),
        on_delivery=lambda err, msg: errors.append(str(err)) if err else None,
    )
    if p.flush(10.0) or errors:
        raise BrokerError(
            f"model-update event not confirmed by {b.bootstrap}: "
            f"{errors[0] if errors else 'timeout'}"
        )
    return True


# --------------------------------------------------------------------------- binomial / poisson
#: Shrinkage strengths (pseudo-rows) tried for ``shrinkage: auto`` with a GLM family.
GLM_SHRINKAGE_GRID = (0.0, 30.0, 300.0, 3000.0)


def prepare_target(df: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Check (and for a binomial target with ``labels``, map) the target for the family.

    gaussian: unchanged. binomial: with ``training.regression.labels = [negative, positive]``
    those two values become 0 and 1; without, the values must be 0/1 already. poisson:
    counts >= 0. Missing values stay missing (events without an outcome).

    Raises
    ------
    DataError
        One line naming the target column and the values found.
    """
    rp = settings.training.regression
    if rp.family == "gaussian":
        return df
    target = settings.event_schema.target
    y = df[target].to_numpy(np.float64)
    known = ~np.isnan(y)
    if rp.family == "binomial":
        neg, pos = rp.labels if rp.labels is not None else (0.0, 1.0)
        bad = known & (y != neg) & (y != pos)
        if bad.any():
            vals = np.unique(y[bad])
            found = np.unique(y[known])
            raise DataError(
                f"target '{target}' of family binomial must take the values {neg:g} and "
                f"{pos:g}"
                + (" (training.regression.labels)" if rp.labels is not None else "")
                + f"; found {_show_values(found)} ({int(bad.sum())} row(s) with "
                f"{_show_values(vals)})"
            )
        if rp.labels is not None:
            df = df.copy()
            df[target] = np.where(known, (y == pos).astype(np.float64), np.nan)
        return df
    bad = known & ~((y >= 0) & np.isfinite(y))
    if bad.any():
        raise DataError(
            f"target '{target}' of family poisson must be a count >= 0; found "
            f"{_show_values(np.unique(y[bad]))} in {int(bad.sum())} row(s)"
        )
    return df


def _show_values(v: np.ndarray, k: int = 6) -> str:
    shown = ", ".join(f"{x:g}" for x in v[:k].tolist())
    return f"[{shown}{', ...' if v.size > k else ''}]"


@dataclass
class GlmFit:
    """The GLM step's result: per-node models and which serves each node, the one-group
    global GLM, the chosen shrinkage and (binomial) threshold with how they were chosen."""

    models: Any
    mnode: np.ndarray
    model_index: np.ndarray
    global_models: Any
    shrinkage: float
    shrinkage_search: dict[str, float]
    threshold: float | None
    threshold_criterion: str | None
    validation: dict[str, Any]


def _glm_loss(family: str, y: np.ndarray, mu: np.ndarray) -> float:
    """Mean validation deviance / 2 (binomial: log loss; poisson: mean Poisson deviance)."""
    if family == "binomial":
        return classification_metrics(y, mu)["log_loss"]
    return poisson_metrics(y, mu)["deviance"]


def fit_glm_models(
    settings: Settings,
    part: Any,
    part_cols: list[str],
    lin_feats: list[str],
    fit_df: pd.DataFrame,
    val_fit: pd.DataFrame,
) -> GlmFit:
    """Fit every node's GLM (binomial or poisson) with fallback; choose the shrinkage
    (``auto``: the strength of :data:`GLM_SHRINKAGE_GRID` with the lowest validation loss:
    log loss, binomial, or mean Poisson deviance) and the binomial threshold on the
    validation slice.

    Raises
    ------
    DataError
        The root model could not be fitted.
    """
    from segstream.training.groupby_regression import fit_groups

    rp = settings.training.regression
    family = rp.family
    target = settings.event_schema.target
    rows, nodes = node_rows(part.ancestors_, part.segments_)
    X = fit_df[lin_feats].to_numpy(np.float64)
    y = fit_df[target].to_numpy(np.float64)
    route_v = part.route(val_fit[part_cols])
    Xv = val_fit[lin_feats].to_numpy(np.float64)
    yv = val_fit[target].to_numpy(np.float64)
    grid = GLM_SHRINKAGE_GRID if rp.shrinkage == "auto" else (float(rp.shrinkage),)
    best: tuple[float, float, Any, np.ndarray, np.ndarray] | None = None
    search: dict[str, float] = {}
    for lam in grid:
        models = fit_groups(
            nodes,
            X[rows],
            y[rows],
            family=family,
            min_rows=rp.min_stat,
            min_stat=rp.min_stat,
            min_events=rp.min_events,
            sign=dict(rp.signs) or None,
            parent=part.node_parent_,
            shrinkage=lam,
            feature_names=lin_feats,
            target_names=[target],
        )
        mnode, model_index = serving_nodes(models, part.node_parent_, rp.min_stat)
        loss = _glm_loss(family, yv, models.predict(mnode[route_v.node], Xv))
        search[f"{lam:g}"] = loss
        logger.info("GLM shrinkage %g: validation loss %.5f", lam, loss)
        if best is None or loss < best[1]:
            best = (lam, loss, models, mnode, model_index)
    assert best is not None
    lam, _, models, mnode, model_index = best
    global_models = fit_groups(
        np.zeros(len(y), np.int64),
        X,
        y,
        family=family,
        min_events=rp.min_events,
        sign=dict(rp.signs) or None,
        feature_names=lin_feats,
        target_names=[target],
    )
    pv = models.predict(mnode[route_v.node], Xv)
    threshold: float | None = None
    criterion: str | None = None
    if family == "binomial":
        if isinstance(rp.threshold, str):
            criterion = rp.threshold
            threshold = choose_threshold(yv, pv, criterion)
        else:
            threshold = float(rp.threshold)
    validation: dict[str, Any] = (
        classification_metrics(yv, pv) if family == "binomial" else poisson_metrics(yv, pv)
    )
    return GlmFit(
        models, mnode, model_index, global_models, lam, search, threshold, criterion, validation
    )


def _label_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """Confusion-matrix figures of ``label = proba >= threshold``."""
    ok = np.isfinite(y) & np.isfinite(proba)
    yk = y[ok] > 0.5
    lab = proba[ok] >= threshold
    tp = float(np.sum(lab & yk))
    fp = float(np.sum(lab & ~yk))
    fn = float(np.sum(~lab & yk))
    tn = float(np.sum(~lab & ~yk))
    return {
        "threshold": threshold,
        "accuracy": (tp + tn) / max(tp + fp + fn + tn, 1.0),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        "positive_share": (tp + fp) / max(tp + fp + fn + tn, 1.0),
    }


def _evaluate_glm(
    settings: Settings,
    part: Any,
    part_cols: list[str],
    p: dict[str, np.ndarray],
    mnode: np.ndarray,
    global_models: Any,
    lin_feats: list[str],
    xgb_model: Any,
    test_df: pd.DataFrame,
    test_fit: pd.DataFrame,
    glm: GlmFit,
) -> dict[str, Any]:
    """Test-slice metrics of a binomial/poisson bundle (see docs/guide/classification.md).

    ``metrics["test"]["partitioned"]`` holds the served model's figures the monitor compares
    live windows with: binomial ``log_loss``, ``brier``, ``auroc``; poisson ``deviance``,
    ``mae``.
    """
    schema = settings.event_schema
    family = settings.training.regression.family
    y = test_fit[schema.target].to_numpy(np.float64)
    Xt = test_fit[lin_feats].to_numpy(np.float64)
    g_pred = global_models.predict(np.zeros(len(Xt), np.int64), Xt)
    xf = _xgb_frame(test_fit, schema, like=test_fit)
    all_route = part.route(test_df[part_cols])
    all_levels = (
        part.node_depth_[part.segment_node_[all_route.segment]]
        - part.node_depth_[mnode[all_route.node]]
    )
    test: dict[str, Any] = {}
    pred = p["prediction"]
    if family == "binomial":
        x_pred = xgb_model.predict_proba(xf)[:, 1]
        preds = {"partitioned": pred, "global_logistic": g_pred, "global_xgboost": x_pred}
        for name, v in preds.items():
            table = reliability_table(y, v, 10)
            test[name] = {**classification_metrics(y, v), "ece": expected_calibration_error(table)}
            test[f"reliability_{name}"] = table
        assert glm.threshold is not None
        test["labels"] = _label_metrics(y, pred, glm.threshold)
        test["segment_calibration"] = per_segment_calibration(y, pred, p["segment"], top=10)
        pl, gl, xl = (test[k]["log_loss"] for k in preds)
        test["log_loss_gain_vs_global_logistic"] = float(1 - pl / gl)
        test["log_loss_gain_vs_global_xgboost"] = float(1 - pl / xl)
    else:
        x_pred = xgb_model.predict(xf)
        preds = {"partitioned": pred, "global_poisson": g_pred, "global_xgboost": x_pred}
        for name, v in preds.items():
            test[name] = poisson_metrics(y, v)
        from segstream.shared.scoring import poisson_interval

        low, high = poisson_interval(pred, settings.training.interval_mass)
        test["interval"] = {
            "mass": settings.training.interval_mass,
            **interval_metrics(y, low, high),
        }
        test["segment_mae"] = per_segment_mae(y, pred, p["segment"], top=10)
        pd_, gd, xd = (test[k]["deviance"] for k in preds)
        test["deviance_gain_vs_global_poisson"] = float(1 - pd_ / gd)
        test["deviance_gain_vs_global_xgboost"] = float(1 - pd_ / xd)
    test.update(
        {
            "fallback_share": fallback_shares(all_levels),
            "imputed_share": float(all_route.imputed.mean()),
            "unknown_share": float(all_route.unknown.mean()),
            "rows": len(test_df),
            "rows_with_outcome": len(test_fit),
        }
    )
    st = np.asarray(glm.models.status)[:, 0]
    from segstream.training.groupby_regression import STATUS_CODES

    return {
        "family": family,
        "test": test,
        "validation": glm.validation,
        "threshold": glm.threshold,
        "threshold_criterion": glm.threshold_criterion,
        "shrinkage": glm.shrinkage,
        "shrinkage_search": glm.shrinkage_search,
        "node_status": {k: int(np.sum(st == v)) for k, v in STATUS_CODES.items()},
        "segments": int(part.n_segments_),
        "nodes": len(part.node_parent_),
        "patterns": None,
    }


def _test_intervals(
    p: dict[str, np.ndarray], lo: np.ndarray, hi: np.ndarray, family: str, mass: float
) -> dict[str, np.ndarray]:
    """The intervals a loaded bundle must reproduce on the test rows."""
    pred = p["prediction"]
    if family == "binomial":
        return {
            "interval_low": np.full_like(pred, np.nan),
            "interval_high": np.full_like(pred, np.nan),
        }
    if family == "poisson":
        from segstream.shared.scoring import poisson_interval

        low, high = poisson_interval(pred, mass)
        return {"interval_low": low, "interval_high": high}
    return {
        "interval_low": pred + lo[p["model_node"]],
        "interval_high": pred + hi[p["model_node"]],
    }
