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

DEFAULT_CONFIG = "config/flights.yaml"

Handler = Callable[[argparse.Namespace], int]
_REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []  # type: ignore[type-arg]


def subcommand(fn: Callable[[argparse._SubParsersAction], None]) -> Callable[..., None]:  # type: ignore[type-arg]
    """Register a function that adds one subcommand parser (with ``set_defaults(func=...)``)."""
    _REGISTRY.append(fn)
    return fn


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("SEGSTREAM_CONFIG", DEFAULT_CONFIG),
                   help=f"settings YAML (default: $SEGSTREAM_CONFIG or {DEFAULT_CONFIG})")


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
def _broker_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "broker", help="run the embedded Kafka-compatible broker (Tansu, memory storage)",
        description="Start the embedded broker on a loopback port, print 'bootstrap=HOST:PORT' "
        "once it answers, and run until SIGINT/SIGTERM. Data is kept in memory only.")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--log", default=None, help="file for the broker's own output")
    p.set_defaults(func=_cmd_broker)


def _cmd_broker(args: argparse.Namespace) -> int:
    from segstream.shared.broker import EmbeddedBroker  # noqa: PLC0415

    stop = _stop_event()
    with EmbeddedBroker(port=args.port, host=args.host, log_path=args.log) as broker:
        print(f"bootstrap={broker.bootstrap}", flush=True)
        while not stop.wait(0.5):
            if not broker.is_running():
                print("segstream: error: embedded broker exited unexpectedly", file=sys.stderr)
                return 1
    return 0


# --------------------------------------------------------------------------- simulate
@subcommand
def _simulate_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "simulate", help="replay the data set to Kafka as events (and outcomes)",
        description="Replay rows in event-time order as JSON events keyed by event id; "
        "outcomes go to the outcomes topic at their outcome time. Prints progress on stderr "
        "and a summary line at the end.")
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
    from segstream.services.simulator.app import run_simulation  # noqa: PLC0415
    from segstream.shared.settings import load_settings  # noqa: PLC0415

    sim: dict[str, Any] = {
        "limit": args.limit, "start": args.start, "end": args.end,
        "bad_fraction": args.bad_fraction, "seed": args.seed,
    }
    if args.rate is not None:
        sim.update(rate=args.rate, speedup=None)
    if args.speedup is not None:
        sim["speedup"] = args.speedup
    if args.no_outcomes:
        sim["outcomes"] = False
    settings = load_settings(args.config, {"broker": {"bootstrap": args.bootstrap},
                                           "simulator": sim})
    if args.speedup is not None:  # a speed-up replaces the configured rate
        settings = settings.model_copy(update={
            "simulator": settings.simulator.model_copy(update={"rate": None})})
    summary = run_simulation(settings, progress=not args.quiet, stop=_stop_event())
    print(summary.line(), flush=True)
    return 1 if summary.failed else 0


# --------------------------------------------------------------------------- config
@subcommand
def _config_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="validate a config and print the resolved settings",
                       description="Load the YAML file with environment overrides, validate it "
                       "and print the resolved settings as JSON (secrets masked); --table prints "
                       "the table of every key and its environment variable.")
    _add_config(p)
    p.add_argument("--table", action="store_true", help="print the configuration table")
    p.set_defaults(func=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    from segstream.shared.settings import load_settings, settings_table_markdown  # noqa: PLC0415

    if args.table:
        print(settings_table_markdown())
        return 0
    import json  # noqa: PLC0415

    settings = load_settings(args.config)
    print(json.dumps(settings.public_dump(), indent=2))  # secrets masked
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segstream",
        description="Score event streams on Kafka with partitioned, explainable models.",
    )
    parser.add_argument("--log-level", default=os.environ.get("SEGSTREAM_LOG_LEVEL", "INFO"),
                        help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _REGISTRY:
        register(sub)
    return parser


def _load_plugins() -> None:
    """Import the modules that register the subcommands of the other packages."""
    import importlib  # noqa: PLC0415

    for mod in ("segstream.training.cli", "segstream.services.cli", "segstream.services.worker.cli", "segstream.services.monitor.cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segstream`` console script; returns the exit code."""
    from segstream.shared.logs import configure_logging  # noqa: PLC0415

    _load_plugins()
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


if __name__ == "__main__":  # pragma: no cover
    # Run the imported module's main, not this __main__ copy: plugins register into shared.cli.
    from segstream.shared.cli import main as _main

    sys.exit(_main())
