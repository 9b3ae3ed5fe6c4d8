"""The health/metrics HTTP server is bounded: idle and slow connections hold no thread and are
closed after the idle timeout; /healthz keeps answering under a pile of idle connections."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from segstream.shared.health import HealthServer

IDLE_S = 2


@pytest.fixture
def server() -> Iterator[HealthServer]:
    registry = CollectorRegistry()
    Counter("segstream_test_events", "test counter", registry=registry).inc(3)
    state = {"ready": False}
    srv = HealthServer(
        registry,
        "127.0.0.1",
        0,
        lambda: (state["ready"], "ready" if state["ready"] else "no bundle"),
        threads=2,
        idle_timeout_s=IDLE_S,
        max_connections=40,
    ).start()
    srv.state = state  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def get(srv: HealthServer, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0.5)
    try:
        return s.recv(1) == b""
    except (TimeoutError, OSError):
        return False


def test_endpoints(server: HealthServer) -> None:
    assert get(server, "/healthz") == (200, b"ok\n")
    assert get(server, "/readyz") == (503, b"no bundle\n")
    server.state["ready"] = True  # type: ignore[attr-defined]
    assert get(server, "/readyz") == (200, b"ready\n")
    code, body = get(server, "/metrics")
    assert code == 200 and b"segstream_test_events_total 3.0" in body
    assert get(server, "/nope")[0] == 404


def test_idle_connections_hold_no_thread_and_are_closed(server: HealthServer) -> None:
    base = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
    # Slow clients: half a request line, then nothing.
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
    for s in slow:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    try:
        time.sleep(0.3)
        assert threading.active_count() <= base  # the server's 1 + 2 threads already ran
        t0 = time.monotonic()
        assert get(server, "/healthz", timeout=2.0) == (200, b"ok\n")
        assert time.monotonic() - t0 < 1.0
        assert threading.active_count() <= base
        time.sleep(IDLE_S + 2.0)
        assert sum(closed_by_peer(s) for s in idle + slow) == len(idle) + len(slow)
    finally:
        for s in idle + slow:
            s.close()


def test_more_idle_connections_than_the_limit_delay_but_do_not_stop_healthz(
    server: HealthServer,
) -> None:
    base = threading.active_count()
    socks = []
    try:
        for _ in range(120):  # three times max_connections; the rest wait in the backlog
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
        t0 = time.monotonic()
        assert get(server, "/healthz", timeout=IDLE_S + 8.0) == (200, b"ok\n")
        assert time.monotonic() - t0 < IDLE_S + 6.0
        assert threading.active_count() <= base
    finally:
        for s in socks:
            s.close()


def test_stop_closes_everything() -> None:
    before = threading.active_count()
    srv = HealthServer(CollectorRegistry(), "127.0.0.1", 0, lambda: (True, "ok")).start()
    s = socket.create_connection(("127.0.0.1", srv.port))
    assert get(srv, "/healthz")[0] == 200
    srv.stop()
    assert closed_by_peer(s)
    s.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
