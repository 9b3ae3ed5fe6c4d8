"""Engines: how the chunks of a pass are scheduled (the maths is in
:mod:`segstream.training.passes`).

A pass runs one :class:`~segstream.training.passes.Statistic` over a data set given as parts
(the files of a Parquet data set, :func:`segstream.shared.data.dataset_parts`): each part is
read in bounded record batches and folded into a state with ``update``; part states are
combined with ``merge`` in a balanced tree; ``finalize`` is left to the caller. Raw rows never
leave the task that read them (no shuffle): only states, whose size does not grow with the
number of rows, are sent.

:class:`ChunkedEngine`
    In this process, part after part: memory is one batch plus the states.
:class:`DaskEngine`
    The same per-part tasks on Dask (``client.map``, then ``client.submit`` of the merges in a
    tree), on a ``LocalCluster`` it starts (its dashboard link is printed) or on an existing
    scheduler (``tcp://HOST:8786``).

Both engines give the same merged state for the same parts (the merge tree is the same
balanced tree over the parts in order); progress is one tqdm bar per pass (parts and rows).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import pandas as pd

from segstream.shared.errors import SchedulerError

logger = logging.getLogger(__name__)

S = TypeVar("S")

#: Reads one part as chunks: ``reader(part) -> iterator of DataFrames``.
Reader = Callable[[Any], Iterator[pd.DataFrame]]

__all__ = ["ChunkedEngine", "DaskEngine", "Engine", "PassResult", "tree_merge"]


@dataclass(frozen=True)
class PassResult:
    """A merged state with what the pass read: ``rows`` (chunk rows seen), ``parts`` and
    ``seconds`` (wall time)."""

    state: Any
    rows: int
    parts: int
    seconds: float


class Engine(Protocol):
    """What a training step needs of an engine."""

    def run(
        self, parts: Sequence[Any], stat: Any, reader: Reader, *, desc: str = "pass"
    ) -> PassResult: ...


def _update_part(part: Any, stat: Any, reader: Reader) -> tuple[Any, int]:
    """One task: fold every chunk of ``part`` into a fresh state; (state, rows)."""
    st = stat.init()
    rows = 0
    for chunk in reader(part):
        st = stat.update(st, chunk)
        rows += len(chunk)
    return st, rows


def _rows_of(res: tuple[Any, int]) -> int:
    return res[1]


def _merge_pair(stat: Any, a: tuple[Any, int], b: tuple[Any, int]) -> tuple[Any, int]:
    return stat.merge(a[0], b[0]), a[1] + b[1]


def tree_merge(items: list[Any], merge: Callable[[Any, Any], Any]) -> Any:
    """Balanced pairwise merge of ``items`` in order: ((0 1) (2 3)) (4 ...) — the order both
    engines use, so that their float sums round alike."""
    if not items:
        raise ValueError("nothing to merge")
    level = list(items)
    while len(level) > 1:
        nxt = [merge(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="part",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )


class ChunkedEngine:
    """Passes in this process, one part after the other (the ``chunked`` engine).

    Parameters
    ----------
    progress : bool, default=True
        A tqdm bar per pass (parts done, rows read) on stderr.
    """

    def __init__(self, *, progress: bool = True) -> None:
        self.progress = progress

    def run(
        self, parts: Sequence[Any], stat: Any, reader: Reader, *, desc: str = "pass"
    ) -> PassResult:
        """Fold ``stat`` over every part; see :class:`PassResult`.

        Raises
        ------
        DataError, SchemaError
            From the reader, naming the file.
        """
        t0 = time.perf_counter()
        done: list[tuple[Any, int]] = []
        rows = 0
        with _bar(len(parts), desc, self.progress) as bar:
            for part in parts:
                res = _update_part(part, stat, reader)
                rows += res[1]
                done.append(res)
                bar.update(1)
                bar.set_postfix(rows=f"{rows:,}")
        if not done:
            return PassResult(stat.init(), 0, 0, time.perf_counter() - t0)
        st, n = tree_merge(done, lambda a, b: _merge_pair(stat, a, b))
        return PassResult(st, n, len(parts), time.perf_counter() - t0)


class DaskEngine:
    """Passes as Dask tasks (the ``dask`` engine): one ``update`` task per part, then a tree
    of ``merge`` tasks; only states travel.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://HOST:8786``). Default: start a
        ``LocalCluster`` with ``n_workers`` workers and print its dashboard link.
    n_workers : int, default=2
        Workers of the local cluster (one thread each: the numba kernels use the cores).
    processes : bool, default=True
        Local workers as processes (``False``: threads in this process, for tests).
    connect_timeout : float, default=5
        Seconds to reach ``scheduler`` before :class:`SchedulerError`.
    progress : bool, default=True

    Notes
    -----
    Use as a context manager, or call :meth:`start` and :meth:`close`. Parts, the statistic
    and the reader are pickled to the workers (cloudpickle): the data set's files must be
    readable from every worker (shared disk or S3).
    """

    def __init__(
        self,
        *,
        scheduler: str | None = None,
        n_workers: int = 2,
        processes: bool = True,
        connect_timeout: float = 5.0,
        progress: bool = True,
    ) -> None:
        self.scheduler = scheduler
        self.n_workers = n_workers
        self.processes = processes
        self.connect_timeout = connect_timeout
        self.progress = progress
        self._client: Any = None
        self._cluster: Any = None

    def start(self) -> DaskEngine:
        """Connect to the scheduler or start the local cluster.

        Raises
        ------
        SchedulerError
            The scheduler cannot be reached within ``connect_timeout`` (naming the address).
        """
        if self._client is not None:
            return self
        from distributed import Client, LocalCluster

        if self.scheduler:
            try:
                self._client = Client(
                    self.scheduler, timeout=self.connect_timeout, set_as_default=False
                )
            except (OSError, TimeoutError, ValueError) as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SchedulerError(
                    f"dask scheduler {self.scheduler}: cannot connect within "
                    f"{self.connect_timeout:g} s ({msg})"
                ) from None
            return self
        self._cluster = LocalCluster(
            n_workers=self.n_workers,
            threads_per_worker=1,
            processes=self.processes,
            dashboard_address=":0",
        )
        self._client = Client(self._cluster, set_as_default=False)
        link = self._client.dashboard_link
        print(f"dask: local cluster with {self.n_workers} workers, dashboard {link}", flush=True)
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> DaskEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self, parts: Sequence[Any], stat: Any, reader: Reader, *, desc: str = "pass"
    ) -> PassResult:
        """Fold ``stat`` over every part on the cluster; see :class:`PassResult`.

        Raises
        ------
        DataError, SchemaError
            Raised in a task by the reader (naming the file), re-raised here.
        """
        from distributed import as_completed

        self.start()
        client = self._client
        t0 = time.perf_counter()
        if not parts:
            return PassResult(stat.init(), 0, 0, time.perf_counter() - t0)
        futs = client.map(_update_part, list(parts), stat=stat, reader=reader, pure=False)
        counts = client.map(_rows_of, futs, pure=False)  # small results for the progress bar
        rows = 0
        with _bar(len(parts), desc, self.progress) as bar, client.as_current():
            for fut in as_completed(counts):
                rows += fut.result()  # re-raises a task's exception (a DataError names its file)
                bar.update(1)
                bar.set_postfix(rows=f"{rows:,}")
        root = tree_merge(futs, lambda a, b: client.submit(_merge_pair, stat, a, b, pure=False))
        st, n = root.result()
        return PassResult(st, n, len(parts), time.perf_counter() - t0)
