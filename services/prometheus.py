"""Running a real Prometheus next to local services (``segstream demo``, the dashboard test).

The repository's scrape config (``config/prometheus/prometheus.yml``) discovers workers and the
monitor by DNS, as in docker compose. :func:`render_config` rewrites it for processes on this
machine: static loopback targets per job, absolute rule-file paths, short intervals.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import IO

import yaml


def find_prometheus() -> str | None:
    """Path of a ``prometheus`` binary on the PATH, or None."""
    return shutil.which("prometheus")


def render_config(
    config_file: Path, targets: dict[str, list[str] | None], dest: Path, interval: str = "1s"
) -> Path:
    """Write ``config_file`` with service discovery replaced by static targets to ``dest``.

    Parameters
    ----------
    config_file : Path
        The repository's ``prometheus.yml``.
    targets : dict of str to list of str or None
        ``host:port`` targets per scrape job; ``None`` drops the job.
    dest : Path
    interval : str
        Scrape and evaluation interval (Prometheus duration).

    Raises
    ------
    KeyError
        A job of the config has no entry in ``targets`` (so none is silently left on DNS).
    """
    cfg = yaml.safe_load(config_file.read_text())
    cfg["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    cfg["rule_files"] = [str(config_file.parent / f) for f in cfg.get("rule_files", [])]
    jobs = []
    for job in cfg["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            raise KeyError(f"scrape job {name!r} has no target")
        if targets[name] is None:
            continue
        job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
        job["static_configs"] = [{"targets": targets[name]}]
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def prometheus_command(binary: str, config: Path, port: int, data_dir: Path) -> list[str]:
    """The argv of a Prometheus on ``127.0.0.1:port`` with its own storage directory."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]


def start_prometheus(
    binary: str, config: Path, port: int, data_dir: Path, log: IO[bytes] | int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """Start Prometheus (the caller stops it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        prometheus_command(binary, config, port, data_dir),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
