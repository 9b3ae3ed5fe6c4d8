"""Bundle reload failures: logged, counted, alerted once per cause, retried with backoff.

The worker's bundle watcher (:mod:`segstream.services.worker.reload`) and the monitor's reference cache
(:mod:`segstream.services.monitor.references`) load bundles in the background; neither may die or fail
silently. Each failure goes through :meth:`ReloadFailures.failed`, which

* classifies it (:func:`segstream.shared.store.reload_failure_reason`, a small fixed set of reasons),
* counts it (``segstream_bundle_reload_failures_total{reason}``, through ``count``),
* logs it (the first of a cause as an error; repeats at most once a minute),
* alerts once per *cause* — a reason, plus the bundle for a refused bundle (the store holds
  few of them; an unknown id named by a hostile record must not multiply alerts) — not once
  per attempt:
  ``bundle_rejected`` for a bundle that is refused (integrity, signature, incompatible, a
  loader bug), ``bundle_reload_failed`` for the rest (store outage, malformed ``LATEST``,
  a missing bundle, an invalid model-updates record). A cause alerts again only after
  :meth:`ReloadFailures.recovered` cleared it (the watcher does when ``LATEST`` is readable
  again or a bundle loads); invalid model-updates records alert once per process.

:class:`Backoff` spaces the retries.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable

from segstream.shared.alerts import Alert, bundle_rejected_alert, bundle_reload_failed_alert
from segstream.shared.store import reload_failure_reason

logger = logging.getLogger(__name__)

#: Reasons that refuse a bundle (``bundle_rejected`` alert); the others are transient.
REJECTING_REASONS = frozenset({"integrity", "signature", "incompatible", "load_error"})


class Backoff:
    """Exponential backoff with jitter: the k-th consecutive failure waits
    ``min(max_s, initial_s * 2**k)`` seconds, ±10 %.

    Parameters
    ----------
    initial_s, max_s : float
        First and largest delay (seconds).

    Examples
    --------
    >>> b = Backoff(1.0, 8.0, jitter=0.0)
    >>> [b.next_delay() for _ in range(5)]
    [1.0, 2.0, 4.0, 8.0, 8.0]
    >>> b.reset(); b.next_delay()
    1.0
    """

    def __init__(self, initial_s: float, max_s: float, *, jitter: float = 0.1) -> None:
        self.initial_s = initial_s
        self.max_s = max(max_s, initial_s)
        self.jitter = jitter
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        d = min(self.max_s, self.initial_s * 2.0 ** min(self.failures, 60))
        self.failures += 1
        return d * (1.0 + self.jitter * (2.0 * random.random() - 1.0))

    def reset(self) -> None:
        """After a success: the next failure waits ``initial_s`` again."""
        self.failures = 0


class ReloadFailures:
    """Log, count and alert bundle reload failures (see the module docstring).

    Parameters
    ----------
    model : str
        The model name (alerts).
    count : callable
        ``count(reason)``: increments ``segstream_bundle_reload_failures_total{reason}``.
    alert : callable, optional
        ``alert(record)``: produces an :class:`~segstream.shared.contracts.Alert`; exceptions
        it raises are logged.
    current : callable, optional
        ``current() -> bundle id or None``: the bundle in use (alerts say what stays).
    repeat_log_s : float
        A repeated cause is logged at most this often (seconds).
    """

    def __init__(
        self,
        model: str,
        *,
        count: Callable[[str], None],
        alert: Callable[[Alert], None] | None = None,
        current: Callable[[], str | None] | None = None,
        repeat_log_s: float = 60.0,
    ) -> None:
        self.model = model
        self.count = count
        self.alert = alert
        self.current = current or (lambda: None)
        self.repeat_log_s = repeat_log_s
        self._alerted: set[tuple[str, str | None]] = set()
        self._last_log: dict[tuple[str, str | None], float] = {}
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, bundle_id: str | None = None) -> str:
        """Report one failure; return its reason.

        Parameters
        ----------
        exc : BaseException
            What was raised (its message names the file, URL or record).
        bundle_id : str, optional
            The (already validated) bundle it concerns, if any.
        """
        reason = reload_failure_reason(exc)
        cause = (reason, bundle_id if reason in REJECTING_REASONS else None)
        now = time.monotonic()
        with self._lock:
            first = cause not in self._alerted
            self._alerted.add(cause)
            log_it = first or now - self._last_log.get(cause, -1e18) >= self.repeat_log_s
            if log_it:
                self._last_log[cause] = now
        try:
            self.count(reason)
        except Exception:
            logger.exception("cannot count a bundle reload failure")
        what = f"bundle {bundle_id[:12]}" if bundle_id else "bundle reload"
        if first:
            logger.error(
                "%s failed (%s): %s",
                what,
                reason,
                exc,
                exc_info=exc if reason == "load_error" else None,
            )
        elif log_it:
            logger.warning("%s still failing (%s): %s", what, reason, exc)
        if first and self.alert is not None:
            self._send_alert(reason, bundle_id, str(exc))
        return reason

    def recovered(self, reasons: Iterable[str], bundle_id: str | None = None) -> None:
        """Forget the causes of ``reasons`` (for ``bundle_id``): they may alert again."""
        with self._lock:
            gone = {
                (r, bundle_id if r in REJECTING_REASONS else None) for r in reasons
            } & self._alerted
            self._alerted -= gone
        for reason, _ in sorted(gone, key=str):
            logger.info("bundle reload recovered from %s", reason)

    def _send_alert(self, reason: str, bundle_id: str | None, detail: str) -> None:
        current = self.current()
        if reason in REJECTING_REASONS and bundle_id is not None:
            rec = bundle_rejected_alert(
                model=self.model, bundle_id=bundle_id, current_bundle_id=current, reason=detail
            )
        else:
            rec = bundle_reload_failed_alert(
                model=self.model,
                bundle_id=bundle_id,
                current_bundle_id=current,
                reason=reason,
                detail=detail,
            )
        try:
            self.alert(rec)  # type: ignore[misc]  # checked by the caller
        except Exception:
            logger.exception("cannot send the %s alert", rec.type)
