from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def segstream(*args: str, timeout: float = 120, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "segstream", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_subcommands_and_each_has_help():
    r = segstream("--help")
    assert r.returncode == 0
    for cmd in ("broker", "simulate", "config", "demo"):
        assert cmd in r.stdout
        sub = segstream(cmd, "--help")
        assert sub.returncode == 0 and "usage: segstream " + cmd in sub.stdout


def test_broker_prints_bootstrap_and_stops_on_sigterm():
    p = subprocess.Popen(
        [sys.executable, "-m", "segstream", "broker"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("bootstrap=127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            p.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the Tansu child is gone with it
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(0.2)
        except OSError:
            break
    else:
        pytest.fail("broker port still open after stop")


def test_broker_port_taken_is_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = segstream("broker", "--port", str(port), timeout=30)
    assert r.returncode == 2
    assert f"port {port}" in r.stderr and "already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_simulate_unreachable_broker_names_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = segstream(
        "simulate",
        "--limit",
        "10",
        "--quiet",
        "--bootstrap",
        f"127.0.0.1:{port}",
        env={
            "SEGSTREAM_BROKER__CONNECT_TIMEOUT_S": "0.5",
            "SEGSTREAM_BROKER__CONNECT_ATTEMPTS": "2",
        },
        timeout=60,
    )
    assert r.returncode == 2
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_is_one_line_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((REPO / "config/flights.yaml").read_text() + "\nsimulator: {rate: fast}\n")
    r = segstream("simulate", "--config", str(cfg), "--limit", "1")
    assert r.returncode == 2 and "key 'simulator.rate'" in r.stderr and str(cfg) in r.stderr
    assert "Traceback" not in r.stderr


def test_simulate_against_broker_prints_summary(kafka, topic_prefix):
    r = segstream(
        "simulate",
        "--limit",
        "300",
        "--rate",
        "20000",
        "--quiet",
        "--bootstrap",
        kafka.bootstrap,
        "--bad-fraction",
        "0.1",
        env={
            "SEGSTREAM_TOPICS__EVENTS": f"{topic_prefix}.events",
            "SEGSTREAM_TOPICS__OUTCOMES": f"{topic_prefix}.outcomes",
        },
    )
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("simulate: sent=300 events") and "failed=0" in line
