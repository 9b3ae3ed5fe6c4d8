"""Pure replay logic: which records to send, in which order, and when (no Kafka here).

A replay is a merge of two time-ordered streams: events at their ``event_time`` and outcomes at
their ``outcome_time``. Pacing is either a fixed rate (events per second; outcomes follow the
simulated clock, i.e. the event time of the last event sent) or real time compressed by a
speed-up factor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import orjson
import pandas as pd

from segstream.shared.events import encode_events, encode_outcomes
from segstream.shared.settings import SchemaSettings

#: Kinds of malformed events mixed in by ``--bad-fraction`` (the DLQ must name each).
MALFORMED_KINDS = (
    "invalid_json",
    "wrong_type",
    "missing_field",
    "huge_payload",
    "not_object",
    "empty",
    "garbage",
)


@dataclasses.dataclass(frozen=True)
class Record:
    """One record to produce: ``kind`` is ``event``, ``outcome`` or ``malformed:<kind>``."""

    topic_role: str  # "events" or "outcomes"
    key: bytes
    value: bytes
    sim_time_s: float  # seconds since the replay's first event time
    kind: str = "event"


def malformed_event(
    good: bytes,
    key: bytes,
    kind: str,
    rng: np.random.Generator,
    schema: SchemaSettings,
    huge_bytes: int,
) -> tuple[bytes, bytes]:
    """Turn a valid encoded event into a malformed one of ``kind`` (see :data:`MALFORMED_KINDS`)."""
    if kind == "invalid_json":
        return key, good[: max(1, len(good) // 2)]
    if kind == "empty":
        return key, b""
    if kind == "garbage":
        return key, rng.integers(0, 256, size=64, dtype=np.uint8).tobytes()
    if kind == "not_object":
        return key, orjson.dumps([orjson.loads(good)])
    rec = orjson.loads(good)
    if kind == "wrong_type":
        numeric = schema.numeric_features or [schema.time_field]
        rec[numeric[int(rng.integers(len(numeric)))]] = {"not": "a number"}
        return key, orjson.dumps(rec)
    if kind == "missing_field":
        required = [f.name for f in schema.event_fields if f.required and f.role != "id"]
        rec.pop(required[int(rng.integers(len(required)))] if required else schema.time_field)
        return key, orjson.dumps(rec)
    if kind == "huge_payload":
        rec["padding"] = "x" * huge_bytes
        return key, orjson.dumps(rec)
    raise ValueError(f"unknown malformed kind {kind!r}")


def build_replay(
    df: pd.DataFrame,
    schema: SchemaSettings,
    *,
    outcomes: bool = True,
    bad_fraction: float = 0.0,
    seed: int = 0,
    huge_bytes: int = 200_000,
) -> list[Record]:
    """All records of a replay of ``df`` in send order (see :class:`Replay`)."""
    return list(
        Replay(
            df,
            schema,
            outcomes=outcomes,
            bad_fraction=bad_fraction,
            seed=seed,
            huge_bytes=huge_bytes,
        )
    )


class Replay:
    """The records of a replay of ``df``, in send order, encoded lazily chunk by chunk.

    Events come in ``event_time`` order; a malformed event replaces a share ``bad_fraction`` of
    them (chosen at random, seeded), keeping their key; outcomes (rows with a known outcome)
    are interleaved at their ``outcome_time`` (an outcome due at or before an event's time is
    sent before it); outcomes after the last event follow at the end. The send order is planned
    up front with vectorised sorts; JSON encoding happens ``chunk`` records at a time, so the
    first record is available at once.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        schema: SchemaSettings,
        *,
        outcomes: bool = True,
        bad_fraction: float = 0.0,
        seed: int = 0,
        huge_bytes: int = 200_000,
        chunk: int = 5000,
    ) -> None:
        tf = schema.time_field
        self.df = df.sort_values(tf, kind="stable").reset_index(drop=True)
        self.schema = schema
        self.huge_bytes = huge_bytes
        self.chunk = chunk
        self.seed = seed
        n = len(self.df)
        t0 = self.df[tf].iloc[0] if n else None
        ev_t = ((self.df[tf] - t0).dt.total_seconds()).to_numpy(np.float64) if n else np.empty(0)
        rng = np.random.default_rng(seed)
        self.bad = (rng.random(n) < bad_fraction) if bad_fraction > 0 else np.zeros(n, bool)
        self.kinds = rng.integers(0, len(MALFORMED_KINDS), size=n)
        rows = np.arange(n)
        roles = np.ones(n, np.int8)  # 1 = event, 0 = outcome
        times = ev_t
        if outcomes and n and "outcome_time" in self.df:
            has = (
                self.df["outcome_time"].notna().to_numpy()
                & self.df[schema.target].notna().to_numpy()
            )
            ot = pd.to_datetime(self.df.loc[has, "outcome_time"], utc=True)
            out_t = (ot - t0.tz_convert("UTC")).dt.total_seconds().to_numpy(np.float64)
            rows = np.concatenate([rows, np.flatnonzero(has)])
            roles = np.concatenate([roles, np.zeros(len(out_t), np.int8)])
            times = np.concatenate([ev_t, out_t])
        # Outcomes sort before events at equal times; events keep their order (stable sort).
        order = np.lexsort((roles, times))
        self.plan_rows, self.plan_roles, self.plan_times = rows[order], roles[order], times[order]

    def __len__(self) -> int:
        return len(self.plan_rows)

    def __iter__(self) -> Iterator[Record]:
        rng = np.random.default_rng(self.seed + 1)
        for start in range(0, len(self), self.chunk):
            sl = slice(start, start + self.chunk)
            rows, roles, times = self.plan_rows[sl], self.plan_roles[sl], self.plan_times[sl]
            ev_rows = rows[roles == 1]
            out_rows = rows[roles == 0]
            ev = iter(encode_events(self.df.iloc[ev_rows], self.schema))
            out = iter(encode_outcomes(self.df.iloc[out_rows], self.schema))
            for row, role, t in zip(rows.tolist(), roles.tolist(), times.tolist(), strict=True):
                if role == 0:
                    k, v = next(out)
                    yield Record("outcomes", k, v, t, "outcome")
                    continue
                k, v = next(ev)
                if self.bad[row]:
                    kind = MALFORMED_KINDS[self.kinds[row]]
                    k, v = malformed_event(v, k, kind, rng, self.schema, self.huge_bytes)
                    yield Record("events", k, v, t, "malformed:" + kind)
                else:
                    yield Record("events", k, v, t)


class Pacer:
    """When each record may be sent (wall-clock seconds since the start of the replay).

    Parameters
    ----------
    rate : float or None
        Events per second (outcomes are not rate-limited; they follow the simulated clock).
    speedup : float or None
        Replay at event time divided by this factor. Exactly one of the two is set.
    """

    def __init__(self, rate: float | None = None, speedup: float | None = None) -> None:
        if (rate is None) == (speedup is None):
            raise ValueError("give exactly one of rate and speedup")
        self.rate = rate
        self.speedup = speedup
        self._events = 0

    def due_s(self, rec: Record) -> float:
        """Wall-clock offset (s) at which ``rec`` is due."""
        if self.speedup is not None:
            return rec.sim_time_s / self.speedup
        if rec.topic_role == "events":
            self._events += 1
            return (self._events - 1) / float(self.rate)  # type: ignore[arg-type]
        return max(0.0, (self._events - 1) / float(self.rate))  # type: ignore[arg-type]
