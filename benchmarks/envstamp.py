"""The environment stamp every benchmark's JSON carries: machine, load, versions, commit.

Machines are noisy: the load average at the start and at the end of a run says whether other
jobs shared the machine (``docs/gen_benchmarks.py`` marks runs whose start load exceeds the core
count), and the commit and package versions say what was measured.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def environment(*distributions: str, **extra: Any) -> dict[str, Any]:
    """The stamp at the start of a run.

    Parameters
    ----------
    *distributions : str
        PyPI distribution names whose installed versions are recorded (``"numpy"``,
        ``"xgboost"``, ...); one that is not installed is recorded as ``None``.
    **extra
        Further fields, recorded as given.

    Returns
    -------
    dict
        ``python``, ``platform``, ``cpu_count``, ``load_average_at_start`` (1, 5, 15 min),
        ``commit`` (short hash or None), ``date`` (UTC, ISO 8601), one entry per distribution
        (key with ``-`` replaced by ``_``), then ``extra``.
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    for name in distributions:
        try:
            env[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name.replace("-", "_")] = None
    env.update(extra)
    return env


def finish(env: dict[str, Any]) -> dict[str, Any]:
    """Add ``load_average_at_end`` to a stamp from :func:`environment` and return it."""
    env["load_average_at_end"] = list(os.getloadavg())
    return env
