"""Logging for the ``services`` entry points: one line per record, logfmt style.

Context such as ``topic``, ``partition`` or ``bundle_id`` is attached with :func:`log_context`
and printed as ``key=value`` pairs after the message. Library modules only do
``logger = logging.getLogger(__name__)``; only entry points call :func:`configure_logging`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

# Read-only default: the context is only ever replaced (set), never mutated in place.
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "segstream_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Attach ``key=value`` pairs to every log record emitted inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **values})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def set_log_context(**values: Any) -> None:
    """Attach ``key=value`` pairs for the rest of the current context (e.g. a worker's id)."""
    _CONTEXT.set({**_CONTEXT.get(), **values})


def _quote(v: Any) -> str:
    s = str(v)
    return f'"{s}"' if (" " in s or "=" in s or not s) else s


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\n", " | ")
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(msg)}",
        ]
        parts += [f"{k}={_quote(v)}" for k, v in _CONTEXT.get().items()]
        if record.exc_info:
            parts.append(
                f"exc={_quote(self.formatException(record.exc_info))}".replace("\n", " | ")
            )
        return " ".join(parts)


def configure_logging(level: str | int = "INFO", stream: Any = None) -> None:
    """Install the one-line formatter on the root logger (entry points only)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    for noisy in (
        "urllib3",
        "botocore",
        "s3fs",
        "matplotlib",
        "numba",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
