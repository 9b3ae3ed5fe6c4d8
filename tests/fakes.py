"""A small deterministic fake :class:`~segstream.shared.scoring.Scorer`, stored as a *real* bundle.

The fake predicts ``coef_distance * distance + coef_hour * sched_dep_hour + offset[carrier]``;
its segment is the carrier's index (unseen carrier: segment 0 at fallback level 1), its pattern
``int(sched_dep_hour) // 6``, its interval ``prediction ± half_width``. With ``family``
``"binomial"`` that linear value ``eta`` becomes a probability ``expit(eta / 10)`` (the
prediction, with ``label = probability >= threshold``, no interval and no pattern); with
``"poisson"`` an expected count ``exp(eta / 50)`` with the interval ``[floor(mu / 2),
ceil(2 mu)]`` — the shapes of ``Bundle.score`` per family, not its numbers. A route (``origin|dest``)
not in ``known_routes`` is an unknown key. :func:`write_fake_bundle` writes it with
:func:`segstream.shared.bundle.write_bundle` (component kind ``"fake"`` plus a ``drift_reference``), so
hot reload and tamper tests go through the real store and verification; :func:`load_fake_bundle`
is the matching loader (inject it where the worker takes ``loader=``).

A fake bundle can be made to fail: ``poison_prefix`` makes scoring raise :class:`PoisonError`
for any batch holding an event whose id starts with it (a bug one event triggers),
``fail_all`` for any non-empty batch (a broken bundle).

The Kafka fakes (:class:`LogConsumer`, :class:`LogProducer`) stand in for confluent-kafka's
``Consumer`` and ``Producer`` in the loop's unit tests: a partitioned log with positions,
seek, pause and commits; a producer with delivery on ``poll``, transactions, and records it
refuses at ``produce()`` as librdkafka does.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segstream.shared.bundle import load_components, write_bundle
from segstream.shared.component import ExportedComponent
from segstream.shared.drift import DriftReference, NumericReference
from segstream.shared.errors import SchemaError
from segstream.shared.settings import SchemaSettings


class PoisonError(RuntimeError):
    """Raised by a fake scorer for a poisoned event (or any event, ``fail_all``)."""


DEFAULT_CARRIERS = ("9E", "AA", "B6", "DL", "EV", "MQ", "UA", "US", "WN")
DEFAULT_ROUTES = ("JFK|LAX", "LGA|ATL", "EWR|ORD", "JFK|SFO", "LGA|ORD", "EWR|IAH")


class FakeScorer:
    """Deterministic vectorised scorer over ``distance``, ``sched_dep_hour`` and ``carrier``."""

    def __init__(
        self,
        *,
        bundle_id: str,
        model: str,
        schema: SchemaSettings,
        coef_distance: float,
        coef_hour: float,
        carriers: Sequence[str],
        offsets: Sequence[float],
        known_routes: Sequence[str],
        half_width: float,
        interval_mass: float,
        drift_reference: DriftReference,
        poison_prefix: str | None = None,
        fail_all: bool = False,
        family: str = "gaussian",
        threshold: float | None = None,
    ) -> None:
        self.bundle_id = bundle_id
        self.family = family
        self.threshold = threshold
        self.model = model
        self.schema = schema
        self.coef_distance = coef_distance
        self.coef_hour = coef_hour
        self.carriers = pd.Index(list(carriers))
        self.offsets = np.asarray(offsets, dtype=np.float64)
        self.routes = pd.Index(list(known_routes))
        self.half_width = half_width
        self.interval_mass = interval_mass
        self.drift_reference = drift_reference
        self.contribution_names = ["intercept", "distance", "sched_dep_hour"]
        self.key_columns = ["origin", "dest"]
        self.poison_prefix = poison_prefix
        self.fail_all = fail_all

    def score_parts(
        self,
        columns: Mapping[str, np.ndarray],
        *,
        executor: concurrent.futures.Executor | None = None,
    ) -> tuple[dict[str, np.ndarray], Callable[[], dict[str, np.ndarray]]]:
        """Everything at once (the executor is not used): ``(scores, lambda: scores)``."""
        out = self.score(columns)  # the attribute: a test may replace it
        return out, lambda: out

    def score(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for c in ("distance", "sched_dep_hour", "carrier", "origin", "dest"):
            if c not in columns:
                raise SchemaError(f"missing column {c!r}")
        if self.fail_all and len(columns["distance"]):
            raise PoisonError("this bundle fails on every event")
        if self.poison_prefix is not None:
            ids = columns[self.schema.id_field].tolist()
            bad = [i for i in ids if i is not None and i.startswith(self.poison_prefix)]
            if bad:
                raise PoisonError(f"poisoned event {bad[0]!r}")
        dist = np.asarray(columns["distance"], dtype=np.float64)
        hour = np.asarray(columns["sched_dep_hour"], dtype=np.float64)
        n = len(dist)
        seg = self.carriers.get_indexer(pd.Index(columns["carrier"], dtype=object))
        unseen = seg < 0
        seg = np.where(unseen, 0, seg).astype(np.int32)
        intercept = np.where(unseen, 0.0, self.offsets[seg])
        c_dist = self.coef_distance * np.nan_to_num(dist)
        c_hour = self.coef_hour * np.nan_to_num(hour)
        pred = intercept + c_dist + c_hour
        route = (
            np.asarray(columns["origin"], dtype=object)
            + "|"
            + np.asarray(columns["dest"], dtype=object)
            if n
            else np.empty(0, dtype=object)
        )
        known = self.routes.get_indexer(pd.Index(route, dtype=object)) >= 0
        unknown = np.where(known, None, route).astype(object)
        out = {
            "segment": seg,
            "fallback_level": unseen.astype(np.int8),
            "prediction": pred,
            "interval_low": pred - self.half_width,
            "interval_high": pred + self.half_width,
            "pattern": (np.nan_to_num(hour) // 6).astype(np.int32),
            "pattern_proba": np.full(n, 0.75),
            "probability": np.full(n, np.nan),
            "label": np.full(n, -1, np.int8),
        }
        if self.family == "binomial":
            p = 1.0 / (1.0 + np.exp(-pred / 10.0))
            out |= {"prediction": p, "probability": p, "interval_low": np.full(n, np.nan)}
            out |= {"interval_high": np.full(n, np.nan), "pattern": np.full(n, -1, np.int32)}
            out |= {"pattern_proba": np.full(n, np.nan)}
            out["label"] = (p >= self.threshold).astype(np.int8)
        elif self.family == "poisson":
            mu = np.exp(pred / 50.0)
            out |= {"prediction": mu, "interval_low": np.floor(mu / 2)}
            out |= {"interval_high": np.ceil(2 * mu), "pattern": np.full(n, -1, np.int32)}
            out |= {"pattern_proba": np.full(n, np.nan)}
        return {
            **out,
            "imputed": np.isnan(dist) | np.isnan(hour),
            "unknown_key": unknown,
            # the node whose model served: the carrier's leaf (node seg + 1), the root (0)
            # for an unseen carrier (fallback level 1)
            "model_node": np.where(unseen, 0, seg + 1).astype(np.int32),
            "contributions": np.column_stack([intercept, c_dist, c_hour])
            if n
            else np.empty((0, 3)),
        }


def fake_drift_reference() -> DriftReference:
    rng = np.random.default_rng(0)
    dist = rng.uniform(100, 2500, 2000)
    hour = rng.uniform(5, 23, 2000)
    carrier = rng.choice(np.asarray(DEFAULT_CARRIERS, dtype=object), 2000)
    ref = DriftReference.fit(
        {"distance": dist, "sched_dep_hour": hour},
        {"carrier": carrier},
        prediction=0.01 * dist + 0.5 * hour,
        n_bins=5,
    )
    return ref


def write_fake_bundle(
    root: str | Path,
    schema: SchemaSettings,
    *,
    model: str = "flights",
    coef_distance: float = 0.01,
    coef_hour: float = 0.5,
    carriers: Sequence[str] = DEFAULT_CARRIERS,
    known_routes: Sequence[str] = DEFAULT_ROUTES,
    half_width: float = 15.0,
    interval_mass: float = 0.8,
    tag: str = "",
    schema_override: dict[str, Any] | None = None,
    poison_prefix: str | None = None,
    fail_all: bool = False,
    family: str = "gaussian",
    threshold: float | None = None,
) -> Path:
    """Write a fake bundle into ``root/<bundle_id>`` and return its directory.

    ``tag`` changes the content (and so the bundle id) without changing the behaviour;
    ``poison_prefix`` and ``fail_all`` make its scorer raise (see :class:`FakeScorer`);
    ``family`` and ``threshold`` go into the manifest as a trained bundle's do.
    """
    offsets = np.linspace(-5.0, 5.0, len(carriers))
    meta: dict[str, Any] = {
        "carriers": list(carriers),
        "known_routes": list(known_routes),
        "half_width": half_width,
        "interval_mass": interval_mass,
        "tag": tag,
    }
    if poison_prefix is not None:
        meta["poison_prefix"] = poison_prefix
    if fail_all:
        meta["fail_all"] = True
    comp = ExportedComponent(
        "fake", {"offsets": offsets, "coef": np.asarray([coef_distance, coef_hour])}, meta
    )
    drift = ExportedComponent("drift_reference", {}, fake_drift_reference().to_meta())
    return write_bundle(
        root,
        model=model,
        components={"fake": comp, "drift_reference": drift},
        schema=schema_override or schema.model_dump(mode="json"),
        created_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        family=family,
        threshold=threshold,
    )


def load_fake_bundle(path: str | Path) -> FakeScorer:
    """Verify a fake bundle directory and rebuild its scorer (the fake ``load_bundle``)."""
    loaded = load_components(path)
    m = loaded.manifest
    comp = loaded["fake"]
    return FakeScorer(
        bundle_id=m.bundle_id,
        model=m.model,
        schema=SchemaSettings.model_validate(m.schema_),
        coef_distance=float(comp.arrays["coef"][0]),
        coef_hour=float(comp.arrays["coef"][1]),
        carriers=comp.meta["carriers"],
        offsets=comp.arrays["offsets"],
        known_routes=comp.meta["known_routes"],
        half_width=float(comp.meta["half_width"]),
        interval_mass=float(comp.meta["interval_mass"]),
        drift_reference=DriftReference.from_meta(loaded["drift_reference"].meta),
        poison_prefix=comp.meta.get("poison_prefix"),
        fail_all=bool(comp.meta.get("fail_all")),
        family=m.family,
        threshold=m.threshold,
    )


def numeric_ref(edges: Sequence[float]) -> NumericReference:
    e = np.asarray(edges, dtype=np.float64)
    return NumericReference(e, np.full(len(e) + 2, 1.0 / (len(e) + 2)))


# ----------------------------------------------------------------------------- Kafka fakes
class KafkaClient:
    """Holds a fake client as ``.client``, like the worker's Kafka adapters."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.conf: dict[str, Any] = {}


class LogConsumer:
    """A consumer of a partitioned log: ``consume`` returns the next messages of unpaused
    partitions from their positions (advancing them; partitions in turn), ``seek`` moves a
    position, ``commit`` records the offsets. ``log`` lists the calls in order."""

    def __init__(self, topic: str, partitions: dict[int, list[Any]]) -> None:
        self.topic = topic
        self.partitions = partitions
        self.position = {p: (msgs[0].offset() if msgs else 0) for p, msgs in partitions.items()}
        self.paused: set[int] = set()
        self.commits: list[dict[int, int]] = []
        self.seeks: list[tuple[int, int]] = []
        self.log: list[str] = []
        self.consumed = 0

    def consume(self, n: int, timeout: float) -> list[Any]:
        """Up to ``n`` messages, one partition after the other in turn."""
        out: list[Any] = []
        queues = {
            p: [m for m in msgs if m.offset() >= self.position[p]]
            for p, msgs in self.partitions.items()
            if p not in self.paused
        }
        while len(out) < n and any(queues.values()):
            for p in sorted(queues):
                if queues[p] and len(out) < n:
                    m = queues[p].pop(0)
                    out.append(m)
                    self.position[p] = m.offset() + 1
        if not out and timeout > 0:
            import time

            time.sleep(min(timeout, 0.01))
        self.consumed += len(out)
        return out

    def commit(self, offsets: Any, asynchronous: bool = True) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})
        self.log.append("commit")

    def committed(self) -> dict[int, int]:
        """The last committed offset per partition."""
        out: dict[int, int] = {}
        for c in self.commits:
            out.update(c)
        return out

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.partition, tp.offset))
        self.position[tp.partition] = tp.offset
        self.log.append("seek")

    def assignment(self) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(self.topic, p) for p in sorted(self.partitions)]

    def pause(self, parts: list[Any]) -> None:
        self.paused |= {tp.partition for tp in parts}
        self.log.append("pause")

    def resume(self, parts: list[Any]) -> None:
        self.paused -= {tp.partition for tp in parts}
        self.log.append("resume")

    def consumer_group_metadata(self) -> str:
        return "group-metadata"


class LogProducer:
    """A producer whose records are delivered (or fail) at the second ``poll`` after
    ``produce``: one poll to send, one for the answer.

    ``refuse(topic, value, key, headers)`` returning an exception makes ``produce`` raise it
    (as librdkafka raises ``MSG_SIZE_TOO_LARGE`` or an unknown topic). With ``transactional``,
    records and offsets are kept per transaction: ``commit_transaction`` publishes them
    (``delivered``, ``committed_offsets``), ``abort_transaction`` drops them;
    ``fail_commit`` makes a commit raise."""

    def __init__(
        self, *, transactional: bool = False, refuse: Any = None, fail_commit: Any = None
    ) -> None:
        self.transactional = transactional
        self.refuse = refuse or (lambda topic, value, key, headers: None)
        self.fail_commit = fail_commit or (lambda: None)
        self.queued: list[tuple[str, Any, Any, Any]] = []
        self.sent: list[tuple[str, Any, Any, Any]] = []
        self.delivered: list[tuple[str, Any, Any, Any]] = []
        self.txn: list[tuple[str, Any, Any, Any]] | None = None
        self.txn_offsets: dict[int, int] = {}
        self.committed_offsets: dict[int, int] = {}
        self.aborts = 0
        self.commits = 0
        self.refused = 0
        self.on_delivery: Any = None
        self.log: list[tuple[float, str]] = []

    def _note(self, what: str) -> None:
        import time

        self.log.append((time.monotonic(), what))

    def produce(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Any = None,
        on_delivery: Any = None,
    ) -> None:
        if isinstance(key, str):  # librdkafka takes str keys as UTF-8 bytes
            key = key.encode()
        if isinstance(value, str):
            value = value.encode()
        exc = self.refuse(topic, value, key, headers)
        if exc is not None:
            self.refused += 1
            raise exc
        rec = (topic, value, key, headers)
        if self.transactional:
            if self.txn is None:
                raise RuntimeError("produce outside a transaction")
            self.txn.append(rec)
        else:
            self.queued.append(rec)

    def poll(self, timeout: float = 0) -> int:
        done, self.sent, self.queued = self.sent, self.queued, []
        self.delivered += done
        return len(done)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self.queued) + len(self.sent)

    # transactions
    def begin_transaction(self) -> None:
        assert self.txn is None, "a transaction is open"
        self.txn = []
        self.txn_offsets = {}
        self._note("begin")

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self.txn_offsets = {tp.partition: tp.offset for tp in offsets}

    def commit_transaction(self, timeout: float) -> None:
        self.fail_commit()
        assert self.txn is not None
        self.delivered += self.txn
        self.committed_offsets.update(self.txn_offsets)
        self.txn = None
        self.commits += 1
        self._note("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.txn = None
        self.aborts += 1
        self._note("abort")

    def records(self, topic: str) -> list[tuple[str, Any, Any, Any]]:
        return [r for r in self.delivered if r[0] == topic]
