"""Entry point of the ``segstream`` command: collects the subcommands of every part.

Each part registers its own subcommands (``@subcommand`` in :mod:`segstream.shared.cli`) in its
``cli`` module; this module, above the three parts, imports them, so :mod:`segstream.shared`
never imports :mod:`segstream.training` or :mod:`segstream.services`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: Modules whose import registers subcommands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "segstream.shared.cli",
    "segstream.training.cli",
    "segstream.services.cli",
    "segstream.services.worker.cli",
    "segstream.services.monitor.cli",
)


def _load_commands() -> None:
    for mod in COMMAND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a part left out of a slim build
            if exc.name != mod:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``segstream`` command line; returns the process exit code.

    Operator mistakes (:class:`~segstream.shared.errors.SegstreamError`) print one line on
    stderr and return the error's exit code; Ctrl-C returns 130.
    """
    from segstream.shared.cli import run

    _load_commands()
    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
