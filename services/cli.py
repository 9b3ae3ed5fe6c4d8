"""Subcommands of the ``services`` package: ``demo`` (worker and monitor join here later)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import orjson

from segstream.shared.cli import _add_config, subcommand


@subcommand
def _demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo", help="run everything together on the embedded broker",
        description="Start the embedded broker and the services as child processes, replay "
        "September-December flights (with a small share of malformed events), show a live "
        "status line and print a summary. Ctrl-C stops everything.")
    _add_config(p)
    p.add_argument("--seconds", type=float, default=60.0, help="run time (default 60)")
    p.add_argument("--rate", type=float, default=None, help="events per second for the replay")
    p.add_argument("--keep-running", action="store_true", help="run until Ctrl-C")
    p.add_argument("--out", default="demo-run", help="directory for logs and the report")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from segstream.services.demo import run_demo  # noqa: PLC0415
    from segstream.shared.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config)
    summary = run_demo(settings, seconds=args.seconds, rate=args.rate,
                       keep_running=args.keep_running, out_dir=Path(args.out),
                       config_path=os.path.abspath(args.config))
    print("demo summary: " + orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0
