"""``segstream worker``: the stream worker subcommand."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from segstream.shared.cli import _add_bootstrap, _add_config, _stop_event, subcommand
from segstream.shared.errors import ConfigError


@subcommand
def _worker_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="score the events topic with the LATEST bundle (consumer-group member)",
        description="Consume events in micro-batches, score them with the model's LATEST bundle "
        "(hot-reloaded), produce predictions, DLQ and stats records with at-least-once or "
        "exactly-once delivery, and serve /metrics, /healthz and /readyz. SIGTERM finishes the "
        "batch, commits and exits 0.",
    )
    _add_config(p)
    _add_bootstrap(p)
    p.add_argument("--metrics-port", type=int, help="port of /metrics (0 = any free port)")
    p.add_argument(
        "--guarantee",
        choices=("at_least_once", "exactly_once"),
        help="delivery guarantee (overrides worker.guarantee)",
    )
    p.add_argument("--group-id", help="consumer group (overrides worker.group_id)")
    p.add_argument(
        "--loader",
        default=None,
        metavar="MODULE:FUNCTION",
        help="bundle loader to use instead of shared.scoring.load_bundle "
        "(custom bundle formats, tests)",
    )
    p.set_defaults(func=_cmd_worker)


def _import_loader(spec: str) -> Any:
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise ConfigError(f"--loader {spec!r}: expected MODULE:FUNCTION")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--loader {spec!r}: {exc}") from None


def _cmd_worker(args: argparse.Namespace) -> int:
    from segstream.services.worker.app import run_worker
    from segstream.shared.settings import load_settings

    settings = load_settings(
        args.config,
        {
            "broker": {"bootstrap": args.bootstrap},
            "worker": {
                "metrics_port": args.metrics_port,
                "guarantee": args.guarantee,
                "group_id": args.group_id,
            },
        },
    )
    loader = _import_loader(args.loader) if args.loader else None
    return run_worker(settings, stop=_stop_event(), loader=loader)
