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

from shared.events import encode_events, encode_outcomes
from shared.settings import SchemaSettings

#: Kinds of malformed events mixed in by ``--bad-fraction`` (the DLQ must name each).
MALFORMED_KINDS = ("invalid_json", "wrong_type", "missing_field", "huge_payload", "not_object",
                   "empty", "garbage")


@dataclasses.dataclass(frozen=True)
class Record:
    """One record to produce: ``kind`` is ``event``, ``outcome`` or ``malformed:<kind>``."""

    topic_role: str  # "events" or "outcomes"
    key: bytes
    value: bytes
    sim_time_s: float  # seconds since the replay's first event time
    kind: str = "event"


def malformed_event(
    good: bytes, key: bytes, kind: str, rng: np.random.Generator, schema: SchemaSettings,
    huge_bytes: int,
) -> tuple[bytes, bytes]:
    """Turn a valid encoded event into a malformed one of ``kind`` (see :data:`MALFORMED_KINDS`).
    """
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
    """All records of a replay of ``df`` in send order.

    Events come in ``event_time`` order; a malformed event replaces a share ``bad_fraction`` of
    them (chosen at random, seeded), keeping their key; outcomes (rows with a known outcome time)
    are interleaved at their ``outcome_time``; outcomes after the last event follow at the end.

    Returns
    -------
    list of Record
    """
    tf = schema.time_field
    df = df.sort_values(tf, kind="stable").reset_index(drop=True)
    if len(df) == 0:
        return []
    t0 = df[tf].iloc[0]
    ev_t = ((df[tf] - t0).dt.total_seconds()).to_numpy(np.float64)
    rng = np.random.default_rng(seed)
    pairs = encode_events(df, schema)
    bad = rng.random(len(pairs)) < bad_fraction if bad_fraction > 0 else np.zeros(len(pairs), bool)
    kinds = rng.integers(0, len(MALFORMED_KINDS), size=len(pairs))
    events = []
    for i, (k, v) in enumerate(pairs):
        if bad[i]:
            kind = MALFORMED_KINDS[kinds[i]]
            k, v = malformed_event(v, k, kind, rng, schema, huge_bytes)
            events.append(Record("events", k, v, float(ev_t[i]), "malformed:" + kind))
        else:
            events.append(Record("events", k, v, float(ev_t[i])))
    if not outcomes or "outcome_time" not in df:
        return events
    has = df["outcome_time"].notna().to_numpy() & ~df[schema.target].isna().to_numpy()
    odf = df.loc[has]
    ot = pd.to_datetime(odf["outcome_time"], utc=True)
    out_t = (ot - t0.tz_convert("UTC")).dt.total_seconds().to_numpy(np.float64)
    order = np.argsort(out_t, kind="stable")
    opairs = encode_outcomes(odf, schema)
    outs = [Record("outcomes", opairs[j][0], opairs[j][1], float(out_t[j]), "outcome")
            for j in order]
    return list(_merge(events, outs))


def _merge(events: list[Record], outs: list[Record]) -> Iterator[Record]:
    j = 0
    for e in events:
        while j < len(outs) and outs[j].sim_time_s <= e.sim_time_s:
            yield outs[j]
            j += 1
        yield e
    yield from outs[j:]


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
