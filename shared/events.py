"""Encoding of events and outcomes as JSON records (the wire format on Kafka).

An **event** is a JSON object with the schema's event fields (everything but the target):
numbers as JSON numbers, categories as strings, times as ISO 8601 strings with a UTC offset,
missing values as ``null``. Its Kafka key is the ``event_id`` (UTF-8).

An **outcome** is ``{"<id>": ..., "<target>": value or null, "event_time": ..., "outcome_time":
...}`` keyed by the same ``event_id`` so that it is co-partitioned with its event and
prediction.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pandas as pd

from segstream.shared.settings import SchemaSettings


def _iso(s: pd.Series) -> list[str | None]:
    """ISO 8601 strings with a ``+HH:MM`` offset, vectorised; None for NaT.

    Formatting tz-aware values with ``%z`` goes through zoneinfo per element; formatting the
    naive wall time and appending the (few distinct) offsets is ~20x faster.
    """
    if len(s) == 0:
        return []
    if getattr(s.dt, "tz", None) is None:
        return _none_where_missing(s.dt.strftime("%Y-%m-%dT%H:%M:%S"), s)
    wall = s.dt.tz_localize(None)
    utc = s.dt.tz_convert("UTC").dt.tz_localize(None)
    off = ((wall - utc).dt.total_seconds() // 60).fillna(0).astype(np.int64)
    table = {
        o: f"{'+' if o >= 0 else '-'}{abs(o) // 60:02d}:{abs(o) % 60:02d}"
        for o in off.drop_duplicates().tolist()
    }
    txt = wall.dt.strftime("%Y-%m-%dT%H:%M:%S") + off.map(table)
    return _none_where_missing(txt, s)


def _none_where_missing(txt: pd.Series, s: pd.Series) -> list[str | None]:
    out: list[str | None] = txt.to_numpy(dtype=object).tolist()
    for i in np.flatnonzero(s.isna().to_numpy()).tolist():
        out[i] = None
    return out


def _column_values(s: pd.Series, ftype: str) -> list[object]:
    if ftype == "datetime":
        return list(_iso(s))
    if ftype in ("float", "int", "bool"):
        a = s.to_numpy(dtype=np.float64, na_value=np.nan)
        floats: list[float] = a.tolist()
        if ftype == "int":
            return [None if v != v else int(v) for v in floats]
        if ftype == "bool":
            return [None if v != v else bool(v) for v in floats]
        return list(floats)  # orjson writes NaN floats as null
    return [None if (isinstance(v, float) and v != v) or v is None else str(v) for v in s.tolist()]


def event_records(df: pd.DataFrame, schema: SchemaSettings) -> list[dict[str, object]]:
    """The event dicts of the rows of ``df`` (schema event fields only), in row order."""
    fields = schema.event_fields
    cols = {f.name: _column_values(df[f.name], f.type) for f in fields}
    names = list(cols)
    return [dict(zip(names, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def encode_events(df: pd.DataFrame, schema: SchemaSettings) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` byte pairs for each row of ``df``: key = event id, value = JSON event.

    Parameters
    ----------
    df : pandas.DataFrame
        Rows with the schema's event fields (see :func:`segstream.shared.data.coerce_to_schema`).
    schema : SchemaSettings

    Returns
    -------
    list of (bytes, bytes)
    """
    id_field = schema.id_field
    return [(str(rec[id_field]).encode(), orjson.dumps(rec)) for rec in event_records(df, schema)]


def encode_outcomes(df: pd.DataFrame, schema: SchemaSettings) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs of the outcome records of ``df`` (one per row, target may be null)."""
    ids = df[schema.id_field].astype(str).tolist()
    target = _column_values(df[schema.target], "float")
    et = _iso(df[schema.time_field])
    ot = (
        _iso(pd.to_datetime(df["outcome_time"], utc=True))
        if "outcome_time" in df
        else [None] * len(df)
    )
    tname, idn, tf = schema.target, schema.id_field, schema.time_field
    return [
        (i.encode(), orjson.dumps({idn: i, tname: y, tf: e, "outcome_time": o}))
        for i, y, e, o in zip(ids, target, et, ot, strict=True)
    ]


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """Slices ``[0:size], [size:2*size], ...`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
