"""Subcommands of the ``training`` side: ``train``, ``bundle``, ``explain``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from segstream.shared.cli import _add_bootstrap, _add_config, subcommand
from segstream.shared.errors import DataError, SchemaError


def _settings(args: argparse.Namespace) -> Any:
    from segstream.shared.settings import load_settings

    store = getattr(args, "store", None)
    return load_settings(
        args.config,
        {
            "broker": {"bootstrap": getattr(args, "bootstrap", None)},
            "store": {"url": store},
        },
    )


# --------------------------------------------------------------------------- train
@subcommand
def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fit partitioner, segment models and outcome profiles; publish a bundle",
        description="Run the training pipeline on the configured data set, write a verified "
        "bundle, publish it to the artifact store (moving LATEST), announce it on the "
        "model-updates topic when a broker answers, and write the HTML report.",
    )
    _add_config(p)
    _add_bootstrap(p)
    p.add_argument("--data", help="CSV/Parquet file instead of the configured data set")
    p.add_argument("--store", help="artifact store URL (overrides store.url)")
    p.add_argument("--no-publish", action="store_true", help="write the bundle locally only")
    p.add_argument("--report-dir", help="where the HTML report goes (default: next to bundle)")
    p.add_argument("--work-dir", help="where the bundle is staged (default: a temp dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from segstream.training.pipeline import train

    settings = _settings(args)
    r = train(
        settings,
        data_path=args.data,
        publish=not args.no_publish,
        report_dir=args.report_dir,
        progress=not args.quiet,
        work_dir=args.work_dir,
    )
    t = r.manifest.metrics["test"]
    print(f"bundle_id={r.manifest.bundle_id}")
    print(f"bundle_dir={r.bundle_dir}")
    if r.uri:
        if r.latest_moved:
            print(f"published={r.uri} (LATEST){' model-update sent' if r.update_sent else ''}")
        else:
            print(f"published={r.uri} (stored already: LATEST unchanged)")
    if r.report_path:
        print(f"report={r.report_path}")
    family = r.manifest.family
    if family == "binomial":
        figures = (
            f"test log loss partitioned={t['partitioned']['log_loss']:.4f} "
            f"global_logistic={t['global_logistic']['log_loss']:.4f} "
            f"global_xgboost={t['global_xgboost']['log_loss']:.4f}; "
            f"AUROC partitioned={t['partitioned']['auroc']:.4f}; "
            f"threshold={r.manifest.threshold:.4f}"
        )
    elif family == "poisson":
        figures = (
            f"test mean Poisson deviance partitioned={t['partitioned']['deviance']:.4f} "
            f"global_poisson={t['global_poisson']['deviance']:.4f} "
            f"global_xgboost={t['global_xgboost']['deviance']:.4f}; "
            f"MAE partitioned={t['partitioned']['mae']:.3f}"
        )
    else:
        figures = (
            f"test MAE partitioned={t['partitioned']['mae']:.2f} "
            f"global_linear={t['global_linear']['mae']:.2f} "
            f"global_xgboost={t['global_xgboost']['mae']:.2f}; "
            f"interval coverage={t['interval']['coverage']:.3f} at mass {t['interval']['mass']}"
        )
    print(f"{figures}; train time {sum(r.timings.values()):.1f} s")
    return 0


# --------------------------------------------------------------------------- bundle
@subcommand
def _bundle_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bundle",
        help="list, inspect, promote or sign stored bundles",
        description="Manage bundles in the artifact store, and signing keys.",
    )
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    for name, help_ in (
        ("list", "list the stored bundles of the model"),
        ("inspect", "print a bundle's manifest metrics as a table"),
        ("promote", "point LATEST at a bundle (roll-out or roll-back)"),
        ("sign", "sign a stored bundle with store.signing_key_file"),
    ):
        q = bsub.add_parser(name, help=help_, description=help_)
        _add_config(q)
        q.add_argument("--store", help="artifact store URL (overrides store.url)")
        q.add_argument("--model", help="model name (default: the config's)")
        if name != "list":
            q.add_argument(
                "bundle",
                nargs="?" if name == "inspect" else None,
                default="LATEST",
                help="bundle id, unique prefix, or LATEST",
            )
        if name == "inspect":
            q.add_argument("--json", action="store_true", help="print the whole manifest")
        q.set_defaults(func=_cmd_bundle)
    k = bsub.add_parser(
        "keygen",
        help="generate an Ed25519 key pair for signing bundles",
        description="Write a new Ed25519 key pair as PEM files: PREFIX.key (private, mode "
        "0600: the trainer's store.signing_key_file) and PREFIX.pub (public: an entry of "
        "store.trusted_public_keys on workers and the monitor). Existing files are never "
        "overwritten.",
    )
    k.add_argument("prefix", help="path prefix of the two files, e.g. keys/segstream-signing")
    k.set_defaults(func=_cmd_keygen)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from segstream.shared.signing import generate_key_pair

    priv, pub = Path(f"{args.prefix}.key"), Path(f"{args.prefix}.pub")
    kid = generate_key_pair(priv, pub)
    print(f"private_key={priv}\npublic_key={pub}\nkey_id={kid}")
    return 0


def _signature_line(store: Any, model: str, m: Any) -> str:
    """How the bundle is signed, and whether a trusted key verifies it."""
    import msgspec

    from segstream.shared.errors import BundleSignatureError
    from segstream.shared.signing import ManifestSignature

    raw = store.read_signature(model, m.bundle_id)
    if raw is None:
        status = "unsigned"
    else:
        try:
            status = f"signed, key id {msgspec.json.decode(raw, type=ManifestSignature).key_id}"
        except msgspec.DecodeError:
            status = "malformed signature"
    if store.requires_signature:
        try:
            store.check_signature(m, raw, store.uri(model, m.bundle_id))
            status += " (verified by a trusted key)"
        except BundleSignatureError:
            status += " (NOT verified by any trusted key)"
    return f"signature: {status}"


def _cmd_bundle(args: argparse.Namespace) -> int:
    from segstream.shared.settings import redact_secrets
    from segstream.shared.store import ArtifactStore

    settings = _settings(args)
    model = args.model or settings.model
    store = ArtifactStore(settings.store)
    if args.bundle_command == "list":
        rows = store.list(model)
        if not rows:
            print(f"no bundles of model {model!r} in {store.url}")
            return 0
        print(f"{'bundle_id':<14} {'created_at':<26} {'test MAE':>9} {'coverage':>9}  latest")
        for b in rows:
            t = b.metrics.get("test", {})
            mae = t.get("partitioned", {}).get("mae", float("nan"))
            cov = t.get("interval", {}).get("coverage", float("nan"))
            print(
                f"{b.bundle_id[:12]:<14} {b.created_at.isoformat(timespec='seconds'):<26} "
                f"{mae:>9.2f} {cov:>9.3f}  {'*' if b.is_latest else ''}"
            )
        return 0
    if args.bundle_command == "promote":
        bid = store.promote(model, args.bundle)
        print(f"LATEST of {model} -> {bid}")
        return 0
    if args.bundle_command == "sign":
        from segstream.shared.errors import SigningKeyError
        from segstream.shared.signing import load_private_key

        key = load_private_key(settings.store)
        if key is None:
            raise SigningKeyError(
                "bundle sign: set store.signing_key_file (or SEGSTREAM_STORE__SIGNING_KEY)"
            )
        bid = store.sign(model, args.bundle, key)
        print(f"signed {model} bundle {bid}")
        return 0
    bid = store.resolve(model, args.bundle)
    m = store.verify(model, bid, check_signature=False)
    if args.json:
        d = m.model_dump(mode="json", by_alias=True)
        # Masked again: manifests written before broker.security may hold client passwords.
        d["config"] = redact_secrets(d["config"])
        print(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(
        f"bundle {m.bundle_id}\nmodel {m.model}, created {m.created_at.isoformat()}, "
        f"format {m.format_version}, {len(m.files)} files, "
        f"{sum(f.bytes for f in m.files.values()):,} bytes"
    )
    print(_signature_line(store, model, m))
    print(f"data: {m.data.get('rows', '?')} rows, {m.data.get('time_range')}")
    for line in metrics_table(m.metrics):
        print(line)
    return 0


def metrics_table(metrics: dict[str, Any]) -> list[str]:
    """The manifest's test metrics as aligned text rows."""
    t = metrics.get("test", {})
    family = metrics.get("family", "gaussian")
    if family == "binomial":
        out = [f"{'model (test slice)':<28} {'log loss':>9} {'Brier':>8} {'AUROC':>7} {'rows':>8}"]
        for k in ("partitioned", "global_logistic", "global_xgboost"):
            if k in t:
                r = t[k]
                out.append(
                    f"{k:<28} {r['log_loss']:>9.4f} {r['brier']:>8.4f} {r['auroc']:>7.4f} "
                    f"{r['n']:>8}"
                )
        if metrics.get("threshold") is not None:
            out.append(
                f"threshold {metrics['threshold']:.4f} "
                f"({metrics.get('threshold_criterion') or 'configured'})"
            )
    elif family == "poisson":
        out = [f"{'model (test slice)':<28} {'deviance':>9} {'MAE':>8} {'rows':>8}"]
        for k in ("partitioned", "global_poisson", "global_xgboost"):
            if k in t:
                r = t[k]
                out.append(f"{k:<28} {r['deviance']:>9.4f} {r['mae']:>8.3f} {r['n']:>8}")
    else:
        out = [f"{'model (test slice)':<28} {'MAE':>8} {'RMSE':>8} {'R2':>7} {'rows':>8}"]
        for k in ("partitioned", "global_linear", "global_xgboost"):
            if k in t:
                r = t[k]
                out.append(
                    f"{k:<28} {r['mae']:>8.2f} {r['rmse']:>8.2f} {r['r2']:>7.3f} {r['n']:>8}"
                )
    if "interval" in t:
        iv = t["interval"]
        out.append(
            f"interval mass {iv['mass']}: coverage {iv['coverage']:.3f}, "
            f"mean width {iv['mean_width']:.1f}"
        )
    if "classifier" in t:
        c = t["classifier"]
        out.append(
            "pattern classifier: "
            + ", ".join(f"{k}={v:.3f}" for k, v in c.items() if isinstance(v, float))
        )
    if "fallback_share" in t:
        out.append(
            "fallback levels: "
            + ", ".join(f"{k}: {v:.1%}" for k, v in sorted(t["fallback_share"].items()))
        )
    return out


# --------------------------------------------------------------------------- explain
@subcommand
def _explain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="explain one event's prediction",
        description="Route one JSON event through a bundle and print its segment path, "
        "fallback level, the linear contributions (summing to the prediction), the pattern "
        "probabilities and the interval; --plot draws its predicted distribution.",
    )
    _add_config(p)
    p.add_argument("--event", required=True, help="JSON file with one event object")
    p.add_argument(
        "--bundle",
        default="LATEST",
        help="bundle directory, or id/prefix/LATEST in the store (default LATEST)",
    )
    p.add_argument("--store", help="artifact store URL (overrides store.url)")
    p.add_argument("--plot", help="write the event's distribution plot to this PNG")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from segstream.training.explain import explain_event, plot_event

    settings = _settings(args)
    try:
        event = orjson.loads(Path(args.event).read_bytes())
    except FileNotFoundError:
        raise DataError(f"event file not found: {args.event}") from None
    except orjson.JSONDecodeError as exc:
        raise DataError(f"{args.event}: not valid JSON ({exc})") from None
    if not isinstance(event, dict):
        raise SchemaError(f"{args.event}: an event must be a JSON object")
    bundle = _resolve_bundle(settings, args.bundle)
    ex = explain_event(bundle, event)
    for line in ex.lines():
        print(line)
    if args.plot:
        print(f"plot={plot_event(bundle, ex, args.plot)}")
    return 0


def _resolve_bundle(settings: Any, ref: str) -> Any:
    from segstream.shared.scoring import load_bundle
    from segstream.shared.store import ArtifactStore

    if Path(ref).is_dir():
        return load_bundle(ref)
    store = ArtifactStore(settings.store)
    bid = store.resolve(settings.model, ref)
    return load_bundle(store.fetch(settings.model, bid, settings.worker.bundle_cache_dir))
