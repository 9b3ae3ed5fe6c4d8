"""Subcommands of :mod:`segstream.services`: ``simulate`` and ``demo`` (the worker and the monitor
register theirs in their own ``cli`` modules)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import orjson

from segstream.shared.cli import _add_bootstrap, _add_config, _date, _stop_event, subcommand


@subcommand
def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run everything together on the embedded broker",
        description="Start the embedded broker and the services as child processes, replay "
        "September-December flights (with a small share of malformed events), show a live "
        "status line and print a summary. Ctrl-C stops everything.",
    )
    _add_config(p)
    p.add_argument("--seconds", type=float, default=60.0, help="run time (default 60)")
    p.add_argument("--rate", type=float, default=None, help="events per second for the replay")
    p.add_argument("--keep-running", action="store_true", help="run until Ctrl-C")
    p.add_argument("--out", default="demo-run", help="directory for logs and the report")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from segstream.services.demo import run_demo
    from segstream.shared.settings import load_settings, resolve_config

    settings = load_settings(args.config)
    summary = run_demo(
        settings,
        seconds=args.seconds,
        rate=args.rate,
        keep_running=args.keep_running,
        out_dir=Path(args.out),
        config_path=os.path.abspath(resolve_config(args.config)),
    )
    print("demo summary: " + orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


# --------------------------------------------------------------------------- simulate
@subcommand
def _simulate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay the data set to Kafka as events (and outcomes)",
        description="Replay rows in event-time order as JSON events keyed by event id; "
        "outcomes go to the outcomes topic at their outcome time. Prints progress on stderr "
        "and a summary line at the end.",
    )
    _add_config(p)
    _add_bootstrap(p)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="events per second (fixed rate)")
    pace.add_argument("--speedup", type=float, help="real time compressed by this factor")
    p.add_argument("--limit", type=int, help="stop after N events")
    p.add_argument("--start", type=_date, help="first event date, YYYY-MM-DD")
    p.add_argument("--end", type=_date, help="last event date (inclusive), YYYY-MM-DD")
    p.add_argument("--bad-fraction", type=float, help="share of malformed events, 0..1")
    p.add_argument("--no-outcomes", action="store_true", help="do not send outcomes")
    p.add_argument("--seed", type=int, help="random seed for malformed events")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from segstream.services.simulator.app import run_simulation
    from segstream.shared.settings import load_settings

    sim: dict[str, Any] = {
        "limit": args.limit,
        "start": args.start,
        "end": args.end,
        "bad_fraction": args.bad_fraction,
        "seed": args.seed,
    }
    if args.rate is not None:
        sim.update(rate=args.rate, speedup=None)
    if args.speedup is not None:
        sim["speedup"] = args.speedup
    if args.no_outcomes:
        sim["outcomes"] = False
    settings = load_settings(
        args.config, {"broker": {"bootstrap": args.bootstrap}, "simulator": sim}
    )
    if args.speedup is not None:  # a speed-up replaces the configured rate
        settings = settings.model_copy(
            update={"simulator": settings.simulator.model_copy(update={"rate": None})}
        )
    summary = run_simulation(settings, progress=not args.quiet, stop=_stop_event())
    print(summary.line(), flush=True)
    return 1 if summary.failed else 0


# --------------------------------------------------------------------------- warmup
@subcommand
def _warmup_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "warmup",
        help="compile every numba kernel into the numba cache (for images)",
        description="Train a small bundle on synthetic events of the configured schema, load "
        "it and run the worker's kernels once, so that numba writes its compiled code to "
        "NUMBA_CACHE_DIR (or __pycache__ beside the sources). Needs no broker and no store; "
        "run it at image build time so that new containers do not compile.",
    )
    _add_config(p)
    p.set_defaults(func=_cmd_warmup)


def _cmd_warmup(args: argparse.Namespace) -> int:
    from segstream.services.warmup import warm_up_kernels
    from segstream.shared.settings import load_settings

    seconds = warm_up_kernels(load_settings(args.config))
    where = os.environ.get("NUMBA_CACHE_DIR") or "__pycache__ beside the sources"
    print(
        f"warmup: kernels compiled into {where} (train {seconds['train']:.1f} s, "
        f"score {seconds['score']:.1f} s)",
        flush=True,
    )
    return 0
