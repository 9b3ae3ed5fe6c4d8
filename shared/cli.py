"""The ``segstream`` command line: one console script with a subcommand per part.

Operator mistakes (:class:`~segstream.shared.errors.SegstreamError`) print one line and exit non-zero;
subcommands import their implementation lazily so that ``segstream --help`` is fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from segstream.shared.errors import SegstreamError

Handler = Callable[[argparse.Namespace], int]
_REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []


def subcommand(fn: Callable[[argparse._SubParsersAction], None]) -> Callable[..., None]:
    """Register a function that adds one subcommand parser (with ``set_defaults(func=...)``)."""
    _REGISTRY.append(fn)
    return fn


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=os.environ.get("SEGSTREAM_CONFIG") or None,
        help="settings YAML file or the name of a packaged example "
        "(default: $SEGSTREAM_CONFIG, else the packaged 'flights' example)",
    )


def _add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides broker.bootstrap)")


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {s!r}") from None


def _stop_event() -> threading.Event:
    """An event set by SIGINT/SIGTERM (the first one; a second SIGINT interrupts hard)."""
    ev = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if ev.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        ev.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return ev


# --------------------------------------------------------------------------- broker
@subcommand
def _broker_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu, memory storage)",
        description="Start the embedded broker on a loopback port, print 'bootstrap=HOST:PORT' "
        "once it answers, and run until SIGINT/SIGTERM. Data is kept in memory only.",
    )
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--log", default=None, help="file for the broker's own output")
    p.set_defaults(func=_cmd_broker)


def _cmd_broker(args: argparse.Namespace) -> int:
    from segstream.shared.broker import EmbeddedBroker

    stop = _stop_event()
    with EmbeddedBroker(port=args.port, host=args.host, log_path=args.log) as broker:
        print(f"bootstrap={broker.bootstrap}", flush=True)
        while not stop.wait(0.5):
            if not broker.is_running():
                print("segstream: error: embedded broker exited unexpectedly", file=sys.stderr)
                return 1
    return 0


# --------------------------------------------------------------------------- config
@subcommand
def _config_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="validate a config and print the resolved settings",
        description="Load the YAML file with environment overrides, validate it "
        "and print the resolved settings as JSON (secrets masked); --table prints "
        "the table of every key and its environment variable.",
    )
    _add_config(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--table", action="store_true", help="print the configuration table")
    out.add_argument(
        "--example",
        metavar="NAME",
        help="print the packaged example config NAME (e.g. flights) as YAML",
    )
    p.set_defaults(func=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    from segstream.shared.settings import (
        example_text,
        load_settings,
        settings_table_markdown,
    )

    if args.example:
        print(example_text(args.example), end="")
        return 0
    if args.table:
        print(settings_table_markdown())
        return 0
    import json

    settings = load_settings(args.config)
    print(json.dumps(settings.public_dump(), indent=2))  # secrets masked
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segstream",
        description="Score event streams on Kafka with partitioned, explainable models.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SEGSTREAM_LOG_LEVEL", "INFO"),
        help="logging level (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _REGISTRY:
        register(sub)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with every registered subcommand and run it; returns the exit code.

    The subcommands of the other parts are registered by importing their ``cli`` modules
    (:func:`segstream.cli.main` does that before calling this).
    """
    from segstream.shared.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except SegstreamError as exc:
        print(f"segstream: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("segstream: interrupted", file=sys.stderr)
        return 130
