"""``segstream monitor``: the monitor subcommand."""

from __future__ import annotations

import argparse

from segstream.shared.cli import _add_bootstrap, _add_config, _stop_event, subcommand


@subcommand
def _monitor_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="windowed drift, new-segment and performance alerts",
        description="Aggregate the workers' stats records and join outcomes to predictions in "
        "tumbling event-time windows; produce drift, new_segment and performance alerts to "
        "the alerts topic; serve /metrics, /healthz and /readyz. State is kept in memory and "
        "in a compacted changelog topic, restored per partition on assignment and restart. "
        "SIGTERM finishes the batch, commits and stops.",
    )
    _add_config(p)
    _add_bootstrap(p)
    p.add_argument("--metrics-port", type=int, help="port of /metrics (0 = any free port)")
    p.add_argument("--app-id", help="consumer group and topic prefix (overrides monitor.app_id)")
    p.set_defaults(func=_cmd_monitor)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from segstream.services.monitor.app import run_monitor
    from segstream.shared.settings import load_settings

    settings = load_settings(
        args.config,
        {
            "broker": {"bootstrap": args.bootstrap},
            "monitor": {"metrics_port": args.metrics_port, "app_id": args.app_id},
        },
    )
    return run_monitor(settings, stop=_stop_event())
