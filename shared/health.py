"""``/metrics``, ``/healthz`` and ``/readyz`` on a small, bounded HTTP server.

The server is waitress (the Pylons project's pure-Python WSGI server): one I/O thread
multiplexes every connection and reads each request completely before a request thread
sees it, so an idle or slow connection holds a socket, never a thread. Bounds
(:class:`HealthServer` parameters; docs/security.md, "HTTP endpoints"):

* ``threads`` request threads answer complete requests (default 2): the thread count of the
  server is ``threads + 1`` whatever the number of connections;
* a connection with no request in progress is closed after ``idle_timeout_s`` seconds
  (default 10; checked every second);
* at most ``max_connections`` connections are open at once (default 64); beyond, new ones
  wait in the kernel's accept backlog until one closes;
* request headers are limited to 8 KiB and bodies to 1 KiB (the endpoints take none).

The bind address is ``worker.metrics_host`` / ``monitor.metrics_host``: ``0.0.0.0`` by default
because Prometheus and the orchestrator's probes reach the process from another host or
container (docker compose, Kubernetes); the endpoints take no input and show no secrets. Bind
``127.0.0.1`` where only local scrapers are wanted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app

logger = logging.getLogger(__name__)

_TEXT = [("Content-Type", "text/plain; charset=utf-8")]


class HealthServer:
    """Serve Prometheus metrics and health endpoints from a daemon thread.

    Parameters
    ----------
    registry : CollectorRegistry
        What ``/metrics`` exports.
    host : str
        Bind address (``0.0.0.0``: every interface; see the module docstring).
    port : int
        0 picks a free port (see :attr:`port` after :meth:`start`).
    ready : callable
        ``ready() -> (bool, reason)`` for ``/readyz`` (200 or 503 with the reason).
    threads : int
        Request threads (complete requests only; idle connections use none).
    idle_timeout_s : int
        Seconds after which a connection without a request in progress is closed.
    max_connections : int
        Open connections at most; beyond, new connections wait in the accept backlog.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        ready: Callable[[], tuple[bool, str]],
        *,
        threads: int = 2,
        idle_timeout_s: int = 10,
        max_connections: int = 64,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.ready = ready
        self.threads = threads
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application: ``/metrics``, ``/healthz``, ``/readyz``, else 404."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", _TEXT)
            return [b"ok\n"]
        if path == "/readyz":
            ok, reason = self.ready()
            start_response("200 OK" if ok else "503 Service Unavailable", _TEXT)
            return [(reason + "\n").encode()]
        start_response("404 Not Found", _TEXT)
        return [b"not found\n"]

    def start(self) -> HealthServer:
        """Bind and serve in a daemon thread; :attr:`port` is the bound port afterwards.

        Raises
        ------
        OSError
            The address cannot be bound (port taken, unknown host).
        """
        from waitress.server import create_server

        self._metrics = make_wsgi_app(self.registry)
        self._server = create_server(
            self.app,
            host=self.host,
            port=self.port,
            threads=self.threads,
            channel_timeout=self.idle_timeout_s,
            cleanup_interval=1,
            connection_limit=self.max_connections,
            asyncore_use_poll=True,
            max_request_header_size=8192,
            max_request_body_size=1024,
            ident="segstream",
            expose_tracebacks=False,
        )
        self.port = int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name="health-http", daemon=True)
        self._thread.start()
        logger.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and stop the request threads."""
        server, self._server = self._server, None
        if server is None:
            return

        def close_all() -> None:  # runs in the server's I/O thread
            for channel in list(server._map.values()):
                if channel is not server and channel is not server.trigger:
                    channel.handle_close()
            server.close()  # the listener and the trigger: the map empties, run() returns

        server.trigger.pull_trigger(close_all)
        if self._thread is not None:
            self._thread.join(5.0)
        server.task_dispatcher.shutdown(timeout=5)
