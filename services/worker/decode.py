"""Bytes to columns: decode a micro-batch of event values and validate it against a schema.

Pure logic (no Kafka). Every input value ends up either as one row of the decoded columns or
with exactly one DLQ reason from :data:`DLQ_REASONS`; :meth:`EventDecoder.decode` never raises
on values.

Three paths, each accepting a subset of what the next one accepts, with the same values, so the
faster paths change speed, never outcomes:

1. **Flat path** (:mod:`segstream.services.worker._decode_kernels`): the batch's values are joined into one
   buffer and one GIL-free numba pass parses the plain form producers write (an object of
   scalars, ASCII strings without escapes, the time field in a fixed ISO 8601 form) straight
   into columns; string columns are cut out of the buffer in one ``split`` each. Numbers that
   are not one correctly rounded operation away (17 significant digits...) are converted by
   msgspec in one call for the batch.
2. **Struct path**, for the events the flat path leaves: a msgspec decoder typed by the schema
   (a ``Struct`` per event: parsing and type validation in C, unknown fields skipped), the
   columns picked out with one ``msgspec.structs.astuple`` pass.
3. **Slow path**, for the values msgspec refuses (or that are empty or too large):
   ``orjson.loads`` into dicts and a per-column type check that names the DLQ reason.

Handling of odd inputs
----------------------
* ``null`` / empty value (tombstone): ``empty``.
* Longer than ``max_event_bytes``: ``too_large`` (checked before parsing, so a 10 MB value
  costs no JSON work).
* Not UTF-8 / not JSON / truncated / ``NaN`` literals / numbers beyond float64's range
  (``1e400``, a 400-digit integer) / nesting deeper than orjson's limit (1024 levels):
  ``invalid_json``. msgspec's own bound is the
  interpreter's recursion limit (about 1000 levels, checked in C: a ``RecursionError``, never a
  stack overflow); a value it refuses so goes to the slow path, whose orjson parse decides,
  so the outcome does not depend on the path.
* A JSON array, string, number, ``true``/``false``/``null``: ``not_object``.
* A required field absent or ``null``: ``missing_field``. Optional fields may be absent or
  ``null`` (NaN / None / NaT in the columns).
* A value of the wrong JSON type (string in a numeric field, ``"NaN"`` or ``"inf"`` as
  strings, ``true`` in a float field, an object or array anywhere): ``wrong_type``.
  Numbers are read as float64 (the column type the models read): a float field takes any
  JSON number in float64's range, integer literals of any length included (rounded to the
  nearest float64). An ``int`` field takes a number whose value is an integer of magnitude
  below 2**53 (exact in float64), in any notation: ``6``, ``6.0``, ``1e2``, ``-0`` (stored as
  0). A non-integral number (``6.5``), or one of magnitude 2**53 or more (``1e30``,
  ``9007199254740993``, any integer beyond 64 bits) is ``wrong_type``, the detail naming the
  field and the value as parsed; the check runs on the float64 column, so a decimal that
  rounds to an integer in float64 (``6.0000000000000001``) is that integer.
* The time field as a string that is not ISO 8601 or is outside 1677-2262: ``bad_time``.
  Times without a UTC offset are taken as UTC.
* Extra fields are ignored. A JSON object with a duplicated key keeps the last value
  (orjson's behaviour). An extra field's value is skipped, not checked: an out-of-range
  number (``1e400``) or invalid UTF-8 inside it does not reject the event (msgspec skips it
  so, and the flat path agrees), though the slow path, reached for another reason, would
  call the event ``invalid_json``.
* Anything else that makes decoding raise (a bug, or an input nobody foresaw): the batch is
  decoded again one value at a time and each value whose decoding still raises is
  ``undecodable`` (detail: the exception's type and message); the others keep their outcome.
  :meth:`EventDecoder.decode` itself never raises (``Exception``; ``KeyboardInterrupt`` and
  ``SystemExit`` pass).
* Duplicated event ids are not a decoding error: each copy is scored and produced (same
  key), as it would be after an at-least-once redelivery; consumers keep one per
  ``event_id``. The worker keeps no per-id state, so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
import msgspec.structs
import numpy as np
import orjson
import pandas as pd

from segstream.services.worker._decode_kernels import (
    KIND_BOOL,
    KIND_NUMBER,
    KIND_STRING,
    KIND_TIME,
    code_spans,
    join_hard,
    join_spans,
    json_string_array,
    parse_flat_objects,
)
from segstream.shared.routing import CategoryColumn
from segstream.shared.settings import FieldSpec, SchemaSettings

logger = logging.getLogger(__name__)

#: The fixed set of DLQ reasons (also the label values of ``worker_dlq_records_total``).
DLQ_REASONS: tuple[str, ...] = (
    "empty",
    "too_large",
    "invalid_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_time",
    "undecodable",
)
#: The reason the worker's loop adds: the event's scoring raised (``services.worker.loop``).
SCORING_ERROR = "scoring_error"
#: Every DLQ reason (the label values of ``worker_dlq_records_total``; ``docs/dlq.md``).
ALL_DLQ_REASONS: tuple[str, ...] = (*DLQ_REASONS, SCORING_ERROR)

#: What msgspec raises on a value it refuses: a decode or validation error, a UTF-8 error in a
#: string, or ``RecursionError`` for nesting deeper than the interpreter's recursion limit.
_REFUSED = (msgspec.DecodeError, ValueError, TypeError, RecursionError)

_JSON_TYPES: dict[str, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({float, int}),
    "bool": frozenset({bool}),
    "string": frozenset({str}),
    "datetime": frozenset({str}),
}
_NONE = type(None)
_EMPTY: dict[str, Any] = {}


@dataclasses.dataclass
class DecodedBatch:
    """The outcome of decoding ``n`` values.

    Attributes
    ----------
    columns : dict of str to numpy.ndarray
        One array per event field of the schema, valid rows only, in input order (the
        :class:`~segstream.shared.scoring.Scorer` input contract: float64 with NaN, object arrays of
        ``str``/None, ``datetime64[ns]`` UTC with NaT). The object arrays are read-only.
    valid : numpy.ndarray
        int64 ``(m,)``: input index of each valid row.
    rejected : list of (int, str, str)
        ``(input index, reason, detail)`` for every other input, reason in
        :data:`DLQ_REASONS`.
    event_time_text : list of str or None
        The time field of each valid row as sent (echoed in prediction records). On the flat
        path it is built on first access from ``event_time_json``.
    event_time_json : bytes or None
        The same as one JSON array (``["2013-09-01T05:16:00-04:00",null,...]``), when the
        flat path made it: :func:`segstream.services.worker.records.encode_predictions` copies the
        elements from it instead of encoding Python strings.
    """

    columns: dict[str, np.ndarray]
    valid: np.ndarray
    rejected: list[tuple[int, str, str]]
    _time_text: list[str | None] | None
    event_time_json: bytes | None = None

    @property
    def n_valid(self) -> int:
        return len(self.valid)

    @property
    def event_time_text(self) -> list[str | None]:
        if self._time_text is None:
            self._time_text = (
                _TEXT_LIST.decode(self.event_time_json) if self.event_time_json is not None else []
            )
        return self._time_text


class EventDecoder:
    """Decode and validate batches of JSON event values against a schema.

    Parameters
    ----------
    schema : SchemaSettings
        The bundle's schema; every event field (all but the target) becomes a column.
    max_event_bytes : int
        Values longer than this go to the DLQ as ``too_large``.

    Examples
    --------
    >>> from shared.settings import SchemaSettings
    >>> schema = SchemaSettings(fields=[
    ...     {"name": "id", "type": "string", "role": "id", "required": True},
    ...     {"name": "t", "type": "datetime", "role": "time", "required": True},
    ...     {"name": "x", "type": "float", "role": "numeric"},
    ...     {"name": "y", "type": "float", "role": "target"}])
    >>> out = EventDecoder(schema, 1000).decode(
    ...     [b'{"id":"a","t":"2013-01-01T00:00:00Z","x":1}', b'[1]', b''])
    >>> out.columns["x"].tolist(), out.rejected
    ([1.0], [(1, 'not_object', 'JSON array'), (2, 'empty', 'empty value')])
    """

    def __init__(self, schema: SchemaSettings, max_event_bytes: int) -> None:
        self.schema = schema
        self.max_event_bytes = max_event_bytes
        self.fields: list[FieldSpec] = list(schema.event_fields)
        self.time_field = schema.time_field
        event = _event_struct(self.fields)
        self._struct_decoder = msgspec.json.Decoder(event)
        # ``astuple`` gives the values in the struct's field order (required fields first).
        by_attr = {f"f{i}": f.name for i, f in enumerate(self.fields)}
        self._struct_names = [by_attr[a] for a in event.__struct_fields__]
        self._flat = _FlatLayout(self.fields, self.time_field)
        self._int_fields = [f.name for f in self.fields if f.type == "int"]

    def warm_up(self) -> None:
        """Decode a synthetic event of the schema (and one with a number msgspec converts), so
        that the flat path's numba kernels are compiled or loaded from numba's cache now, off
        the hot path."""
        doc: dict[str, Any] = {}
        for f in self.fields:
            if f.name == self.time_field:
                doc[f.name] = "2020-01-01T00:00:00Z"
            elif f.type == "bool":
                doc[f.name] = True
            elif f.type in ("float", "int"):
                doc[f.name] = 0.1 + 0.2  # 17 significant digits: the msgspec hand-over
            else:
                doc[f.name] = "x"
        value = orjson.dumps(doc)
        self.decode([value, value])

    # ------------------------------------------------------------------ parsing
    def _parse(self, values: Sequence[bytes | None], reasons: list[Any]) -> list[Any]:
        """One JSON document per value; bad ones are ``_EMPTY`` with a reason set."""
        n = len(values)
        try:
            lengths = list(map(len, values))  # TypeError on None
            if n and (min(lengths) == 0 or max(lengths) > self.max_event_bytes):
                raise ValueError
            return [orjson.loads(v) for v in values]
        except (TypeError, ValueError, RecursionError):
            pass  # some value is bad: classify one by one
        docs: list[Any] = [_EMPTY] * n
        limit = self.max_event_bytes
        for i, v in enumerate(values):
            if v is None or len(v) == 0:
                reasons[i] = ("empty", "empty value")
            elif len(v) > limit:
                reasons[i] = ("too_large", f"{len(v)} bytes > {limit}")
            else:
                try:
                    docs[i] = orjson.loads(v)
                except orjson.JSONDecodeError as exc:
                    reasons[i] = ("invalid_json", str(exc)[:200])
                except (TypeError, ValueError, RecursionError) as exc:  # not orjson's own
                    reasons[i] = ("invalid_json", _describe(exc))
        return docs

    # ------------------------------------------------------------------ API
    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode ``values``; never raises.

        Every value becomes one valid row or one ``rejected`` entry. Should decoding the
        batch raise anyway (a bug, or an input nobody foresaw), the batch is decoded again
        one value at a time (:meth:`_decode_isolated`): the values that raise alone are
        ``undecodable``, the others get the outcome they would have had.

        Parameters
        ----------
        values : sequence of bytes or None
            Kafka message values of one micro-batch.

        Returns
        -------
        DecodedBatch
        """
        try:
            return self._decode(values)
        except Exception as exc:
            logger.warning(
                "decoding a batch of %d values raised %s; decoding them one at a time",
                len(values),
                _describe(exc),
            )
            return self._decode_isolated(values)

    def _decode_isolated(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode each value alone; a value whose decoding raises is ``undecodable``."""
        n = len(values)
        parts: list[tuple[DecodedBatch, np.ndarray]] = []
        undecodable: list[tuple[int, str, str]] = []
        for i, v in enumerate(values):
            try:
                parts.append((self._decode([v]), np.array([i], np.int64)))
            except Exception as exc:
                undecodable.append((i, "undecodable", _describe(exc)))
        if not parts:
            return DecodedBatch(self._empty_columns(), np.zeros(0, np.int64), undecodable, [])
        out = _merge_many(n, parts)
        if undecodable:
            out.rejected = sorted(out.rejected + undecodable)
        return _frozen(out)

    def _empty_columns(self) -> dict[str, np.ndarray]:
        """The columns of a batch without valid rows (the dtypes of :class:`DecodedBatch`)."""
        out: dict[str, np.ndarray] = {}
        for f in self.fields:
            if f.name == self.time_field:
                out[f.name] = np.zeros(0, "datetime64[ns]")
            elif f.type in ("float", "int", "bool"):
                out[f.name] = np.zeros(0, np.float64)
            else:
                out[f.name] = np.zeros(0, object)
        return out

    def _decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        n = len(values)
        limit = self.max_event_bytes
        if n:
            try:
                lengths = np.fromiter(map(len, values), np.int64, n)  # TypeError on None
            except TypeError:
                lengths = None
            if lengths is not None and lengths.min() > 0 and lengths.max() <= limit:
                return _frozen(self._check_integers(self._decode_flat(values, lengths)))
        return _frozen(self._decode_structs(values))

    def _check_integers(self, batch: DecodedBatch) -> DecodedBatch:
        """Reject the rows whose ``int`` field holds a number that is not an integer of
        magnitude below 2**53 (``wrong_type``, the detail names the field and the value).

        Every path parses numbers into float64 (the column type the models read); this check
        runs on those columns at the end of each path (flat, struct, slow; running it twice
        changes nothing), so the outcome does not depend on the path.
        Below 2**53 every integer is exact in float64, so an accepted value is the value
        sent; ``-0`` is stored as ``0.0``.
        """
        if not self._int_fields or not len(batch.valid):
            return batch
        bad = np.zeros(len(batch.valid), dtype=bool)
        details: dict[int, str] = {}
        for name in self._int_fields:
            col = batch.columns[name]
            with np.errstate(invalid="ignore"):
                wrong = ~np.isnan(col) & ((np.abs(col) >= _INT_LIMIT) | (np.trunc(col) != col))
            if wrong.any():
                for j in np.flatnonzero(wrong & ~bad).tolist():
                    details[j] = (
                        f"{name}: {float(col[j])!r} is not an integer of magnitude below 2**53"
                    )
                bad |= wrong
            batch.columns[name] = col + 0.0  # -0.0 becomes 0.0
        if not bad.any():
            return batch
        keep = np.flatnonzero(~bad)
        rejected = sorted(
            batch.rejected
            + [
                (int(batch.valid[j]), "wrong_type", details[j])
                for j in np.flatnonzero(bad).tolist()
            ]
        )
        text = batch.event_time_text
        return DecodedBatch(
            {k: v[keep] for k, v in batch.columns.items()},
            batch.valid[keep],
            rejected,
            [text[j] for j in keep.tolist()],
        )

    def _decode_structs(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """The struct path (and the slow path for what msgspec refuses)."""
        n = len(values)
        limit = self.max_event_bytes
        decode_one = self._struct_decoder.decode
        try:  # the common case, every value good: C-level loops only
            if n and min(map(len, values)) > 0 and max(map(len, values)) <= limit:
                return self._from_structs(list(map(decode_one, values)))
        except _REFUSED:
            pass  # a None value, or one msgspec refuses: sort them out one by one
        structs: list[Any] = []
        fast_idx: list[int] = []
        slow_idx: list[int] = []
        for i, v in enumerate(values):
            if v is None or not 0 < len(v) <= limit:
                slow_idx.append(i)
                continue
            try:
                structs.append(decode_one(v))
                fast_idx.append(i)
            except _REFUSED:
                slow_idx.append(i)
        if not fast_idx:
            return self._decode_slow(values)
        fast = self._from_structs(structs)
        if not slow_idx:
            return fast
        slow = self._decode_slow([values[i] for i in slow_idx])
        return _merge(n, fast, np.asarray(fast_idx, np.int64), slow, np.asarray(slow_idx, np.int64))

    def _decode_flat(self, values: Sequence[bytes], lengths: np.ndarray) -> DecodedBatch:
        """The flat path for non-empty values within the size limit; the events it leaves go
        through :meth:`_decode_structs` and are merged back in input order."""
        lay = self._flat
        n = len(values)
        buf = np.frombuffer(b"".join(values), np.uint8)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        num = np.full((lay.n_num, n), np.nan)
        s_start = np.full((lay.n_str, n), -1, np.int64)
        s_end = np.full((lay.n_str, n), -1, np.int64)
        time_ns = np.full(n, _NAT_INT, np.int64)
        status = np.empty(n, np.uint8)
        if len(lay.hard) < n * lay.n_num:
            lay.hard = np.empty((n * lay.n_num, 4), np.int64)
        n_hard = parse_flat_objects(
            buf,
            offsets,
            lay.names,
            lay.name_off,
            lay.kinds,
            lay.slots,
            lay.required,
            num,
            s_start,
            s_end,
            time_ns,
            lay.hard,
            status,
        )
        if n_hard:
            _hard_numbers(buf, lay.hard[:n_hard], num, status)
        if status.any():
            good = np.flatnonzero(status == 0)
            rest = np.flatnonzero(status)
        else:
            good = np.arange(n, dtype=np.int64)
            rest = None
        columns: dict[str, np.ndarray] = {}
        all_good = rest is None
        time_json = b"[]"
        for f, kind, slot in zip(self.fields, lay.kinds.tolist(), lay.slots.tolist(), strict=True):
            if kind in (KIND_NUMBER, KIND_BOOL):
                columns[f.name] = num[slot] if all_good else num[slot, good]
                continue
            if kind == KIND_TIME:
                t = time_ns if all_good else time_ns[good]
                columns[f.name] = t.view("datetime64[ns]")
                time_json = json_string_array(buf, s_start[slot], s_end[slot], good).tobytes()
            elif f.role != "categorical":  # ids (distinct per event): cut out, no dictionary
                columns[f.name] = _to_object(_split_spans(buf, s_start[slot], s_end[slot], good))
            else:  # categories: few distinct values, coded once for routing too
                columns[f.name] = _coded_strings(buf, s_start[slot], s_end[slot], good)
        fast = DecodedBatch(columns, np.arange(len(good), dtype=np.int64), [], None, time_json)
        if rest is None:
            return fast
        if not len(good):
            return self._decode_structs(values)
        other = self._decode_structs([values[i] for i in rest.tolist()])
        return _merge(n, fast, good, other, rest)

    def _from_structs(self, structs: list[Any]) -> DecodedBatch:
        """Columns of msgspec-validated events (types already right; only times can fail)."""
        m = len(structs)
        rows = list(map(msgspec.structs.astuple, structs))  # one C call per event
        table = list(zip(*rows, strict=True))
        raw = dict(zip(self._struct_names, table, strict=True))  # name -> tuple
        times = list(raw[self.time_field])
        parsed_time = _parse_times(times)
        nat = np.isnat(parsed_time)
        bad = (
            np.flatnonzero(nat & np.fromiter((v is not None for v in times), bool, count=m))
            if nat.any()
            else np.zeros(0, np.int64)
        )
        rejected = [
            (int(i), "bad_time", f"{self.time_field}: {str(times[i])[:40]!r}") for i in bad.tolist()
        ]
        keep = np.ones(m, dtype=bool)
        keep[bad] = False
        valid = np.flatnonzero(keep).astype(np.int64)
        all_valid = len(valid) == m
        columns: dict[str, np.ndarray] = {}
        for f in self.fields:
            if f.name == self.time_field:
                arr = parsed_time
            elif f.type in ("float", "int", "bool"):
                arr = _to_float(raw[f.name])
            else:
                arr = _to_object(raw[f.name])
            columns[f.name] = arr if all_valid else arr[valid]
        time_text = times if all_valid else [times[i] for i in valid.tolist()]
        return self._check_integers(DecodedBatch(columns, valid, rejected, time_text))

    def _decode_slow(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode ``values`` through orjson dicts, naming a DLQ reason for every bad one.

        Parameters
        ----------
        values : sequence of bytes or None
            Kafka message values of one micro-batch.

        Returns
        -------
        DecodedBatch
        """
        n = len(values)
        reasons: list[Any] = [None] * n
        docs = self._parse(values, reasons)
        if set(map(type, docs)) != {dict}:
            for i, d in enumerate(docs):
                if type(d) is not dict:
                    if reasons[i] is None:
                        reasons[i] = ("not_object", _json_kind(d))
                    docs[i] = _EMPTY
        raw: dict[str, list[Any]] = {}
        table = _columns(docs, [f.name for f in self.fields])
        for j, f in enumerate(self.fields):
            name = f.name
            col = table[j]
            types = set(map(type, col))
            allowed = _JSON_TYPES[f.type]
            # An absent key reads as NaN (JSON has no NaN literal, so NaN always means absent).
            if float in types and f.type not in ("float", "int"):
                col = [None if v != v else v for v in col]
                types = set(map(type, col))
            elif f.required and float in types and f.type in ("float", "int"):
                if types <= {float, int}:
                    absent = np.flatnonzero(np.isnan(np.array(col, dtype=np.float64))).tolist()
                else:
                    absent = [i for i, v in enumerate(col) if type(v) is float and v != v]
                for i in absent:
                    if reasons[i] is None:
                        reasons[i] = ("missing_field", name)
            if not (types <= allowed or (not f.required and types <= allowed | {_NONE})):
                for i, v in enumerate(col):
                    if v is None:
                        if f.required and reasons[i] is None:
                            reasons[i] = ("missing_field", name)
                    elif type(v) not in allowed:
                        if reasons[i] is None:
                            reasons[i] = ("wrong_type", f"{name}: {type(v).__name__} for {f.type}")
                        col[i] = None
            raw[name] = col

        times = raw[self.time_field]
        parsed_time = _parse_times(times)
        bad_time = np.isnat(parsed_time) & np.fromiter(
            (v is not None for v in times), dtype=bool, count=n
        )
        if bad_time.any():
            for i in np.flatnonzero(bad_time).tolist():
                if reasons[i] is None:
                    reasons[i] = ("bad_time", f"{self.time_field}: {str(times[i])[:40]!r}")

        rejected = [(i, r[0], r[1]) for i, r in enumerate(reasons) if r is not None]
        if rejected:
            keep = np.ones(n, dtype=bool)
            keep[[i for i, _, _ in rejected]] = False
            valid = np.flatnonzero(keep)
        else:
            valid = np.arange(n, dtype=np.int64)
        all_valid = len(valid) == n
        columns: dict[str, np.ndarray] = {}
        for f in self.fields:
            col = raw[f.name]
            if f.name == self.time_field:
                arr = parsed_time
            elif f.type in ("float", "int", "bool"):
                arr = _to_float(col)
            else:
                arr = _to_object(col)
            columns[f.name] = arr if all_valid else arr[valid]
        time_text = times if all_valid else [times[i] for i in valid.tolist()]
        return self._check_integers(
            DecodedBatch(columns, valid.astype(np.int64, copy=False), rejected, time_text)
        )


#: msgspec type per schema type on the fast path: every JSON number in float/int fields (as the
#: slow path), strict bool, strings for strings and times.
_STRUCT_TYPES: dict[str, type] = {
    "float": float,
    "int": float,
    "bool": bool,
    "string": str,
    "datetime": str,
}


def _event_struct(fields: Sequence[FieldSpec]) -> type:
    """A msgspec Struct for the schema: required fields without default (absent or null fails
    validation and goes to the slow path), optional ones ``T | None = None``. Attributes are
    ``f0..fk`` renamed to the field names, so any field name works."""
    spec: list[Any] = []
    for i, f in enumerate(fields):
        t = _STRUCT_TYPES[f.type]
        spec.append((f"f{i}", t) if f.required else (f"f{i}", t | None, None))
    required = [x for x in spec if len(x) == 2]
    optional = [x for x in spec if len(x) == 3]
    # gc=False: the fields are scalars, so an Event can never be part of a reference cycle;
    # untracked structs make the thousands per batch invisible to the cyclic GC.
    return msgspec.defstruct(
        "Event",
        required + optional,
        kw_only=True,
        gc=False,
        rename={f"f{i}": f.name for i, f in enumerate(fields)},
    )


class _FlatLayout:
    """The schema as the flat-path kernel reads it (see ``parse_flat_objects``)."""

    def __init__(self, fields: Sequence[FieldSpec], time_field: str) -> None:
        encoded = [f.name.encode() for f in fields]
        self.names = np.frombuffer(b"".join(encoded) or b"\0", np.uint8)
        self.name_off = np.zeros(len(fields) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self.name_off[1:])
        kinds, slots = [], []
        n_num = n_str = 0
        for f in fields:
            if f.type in ("float", "int"):
                kinds.append(KIND_NUMBER)
            elif f.type == "bool":
                kinds.append(KIND_BOOL)
            else:  # strings, and datetimes kept as text except the time field
                kinds.append(KIND_TIME if f.name == time_field else KIND_STRING)
            if kinds[-1] in (KIND_NUMBER, KIND_BOOL):
                slots.append(n_num)
                n_num += 1
            else:
                slots.append(n_str)
                n_str += 1
        self.kinds = np.array(kinds, np.int64)
        self.slots = np.array(slots, np.int64)
        self.required = np.array([f.required for f in fields], np.uint8)
        self.n_num = n_num
        self.n_str = n_str
        self.hard = np.empty((0, 4), np.int64)  # scratch, grown to the largest batch


_NAT_INT = np.iinfo(np.int64).min
#: ``int`` fields take integers of magnitude below this (exact in the float64 columns).
_INT_LIMIT = float(2**53)
_TEXT_LIST = msgspec.json.Decoder(list[str | None])
_FLOAT_LIST = msgspec.json.Decoder(list[float])
_FLOAT = msgspec.json.Decoder(float)


def _hard_numbers(buf: np.ndarray, hard: np.ndarray, num: np.ndarray, status: np.ndarray) -> None:
    """Convert the numbers the flat kernel left (``hard`` rows: event, slot, start, end) with
    msgspec, the struct path's parser; an event with a number msgspec refuses goes to the
    struct path (``status`` 1), which names its reason."""
    try:
        vals = np.array(_FLOAT_LIST.decode(join_hard(buf, hard, len(hard))), np.float64)
    except (msgspec.DecodeError, ValueError):
        raw = buf.tobytes()
        vals = np.full(len(hard), np.nan)
        for k, (row, _, s, e) in enumerate(hard.tolist()):
            try:
                vals[k] = _FLOAT.decode(raw[s:e])
            except (msgspec.DecodeError, ValueError):
                status[row] = 1
    num[hard[:, 1], hard[:, 0]] = vals


def _coded_strings(
    buf: np.ndarray, start: np.ndarray, end: np.ndarray, rows: np.ndarray
) -> CategoryColumn:
    """The strings ``buf[start[r]:end[r]]`` for ``r`` in ``rows`` as a read-only
    :class:`~segstream.shared.routing.CategoryColumn` (None where ``start[r] < 0``) carrying
    their codes, built from their distinct values (``code_spans``): one ``str`` per distinct
    value and one ``take``."""
    codes, first_start, first_end = code_spans(buf, start, end, rows)
    raw = buf.data
    table = np.empty(len(first_start) + 1, dtype=object)  # the last one (code -1) is None
    table[:-1] = [
        str(raw[s:e], "ascii")
        for s, e in zip(first_start.tolist(), first_end.tolist(), strict=True)
    ]
    return CategoryColumn(table[codes], codes, table[:-1].tolist())


def _split_spans(
    buf: np.ndarray, start: np.ndarray, end: np.ndarray, rows: np.ndarray
) -> list[str | None]:
    """The strings ``buf[start[r]:end[r]]`` (ASCII without control bytes, as the flat kernel
    guarantees) for ``r`` in ``rows``, None where ``start[r] < 0``: one join kernel, one decode
    and one ``split`` for the whole column."""
    if not len(rows):
        return []
    out: list[str | None] = join_spans(buf, start, end, rows).tobytes().decode("ascii").split("\n")
    nulls = start[rows] < 0
    if nulls.any():
        for k in np.flatnonzero(nulls).tolist():
            out[k] = None
    return out


def _merge(
    n: int, fast: DecodedBatch, fast_idx: np.ndarray, slow: DecodedBatch, slow_idx: np.ndarray
) -> DecodedBatch:
    """One batch (input order) from the fast-path rows and the slow-path rows."""
    valid = np.concatenate([fast_idx[fast.valid], slow_idx[slow.valid]])
    order = np.argsort(valid, kind="stable")
    columns = {k: np.concatenate([fast.columns[k], slow.columns[k]])[order] for k in fast.columns}
    text = fast.event_time_text + slow.event_time_text
    rejected = sorted(
        [(int(fast_idx[i]), r, d) for i, r, d in fast.rejected]
        + [(int(slow_idx[i]), r, d) for i, r, d in slow.rejected]
    )
    return DecodedBatch(columns, valid[order], rejected, [text[i] for i in order.tolist()])


def _merge_many(n: int, parts: list[tuple[DecodedBatch, np.ndarray]]) -> DecodedBatch:
    """One batch (input order) from several, each with the input index of its values."""
    valid = np.concatenate([idx[b.valid] for b, idx in parts])
    order = np.argsort(valid, kind="stable")
    names = parts[0][0].columns
    columns = {k: np.concatenate([b.columns[k] for b, _ in parts])[order] for k in names}
    text = [t for b, _ in parts for t in b.event_time_text]
    rejected = sorted((int(idx[i]), r, d) for b, idx in parts for i, r, d in b.rejected)
    return DecodedBatch(columns, valid[order], rejected, [text[i] for i in order.tolist()])


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, at most 200 characters."""
    return f"{type(exc).__name__}: {exc}"[:200]


def _columns(docs: list[dict[str, Any]], names: list[str]) -> list[list[Any]]:
    """Per name, the list of ``d.get(name)`` over ``docs``; absent keys give NaN.

    Uses pandas' C ``dicts_to_array`` (3x faster than a comprehension per column) when
    available, else ``map(dict.get, ...)``.
    """
    if _dicts_to_array is not None and docs:
        arr = _dicts_to_array(docs, names)
        return [arr[:, j].tolist() for j in range(len(names))]
    nan = float("nan")
    return [[d.get(n, nan) for d in docs] for n in names]


try:  # pandas internals: fall back to pure Python when they move
    from pandas._libs.lib import dicts_to_array as _dicts_to_array
except ImportError:  # pragma: no cover
    _dicts_to_array = None


def _json_kind(d: Any) -> str:
    if isinstance(d, list):
        return "JSON array"
    if d is None:
        return "JSON null"
    if isinstance(d, bool):
        return "JSON boolean"
    if isinstance(d, str):
        return "JSON string"
    return "JSON number"


def _to_float(col: Sequence[Any]) -> np.ndarray:
    try:
        return np.array(col, dtype=np.float64)  # None -> NaN
    except (TypeError, ValueError, OverflowError):
        return np.fromiter((_float_or_nan(v) for v in col), dtype=np.float64, count=len(col))


def _float_or_nan(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def _to_object(col: Sequence[Any]) -> np.ndarray:
    arr = np.empty(len(col), dtype=object)
    arr[:] = col
    return arr


def _frozen(batch: DecodedBatch) -> DecodedBatch:
    """The object (string) columns as read-only
    :class:`~segstream.shared.routing.CategoryColumn` views (those the flat path coded carry
    their codes already): :func:`segstream.shared.routing.encode_categories` factorises each
    once and reuses that for every category table (router, key tables, drift reference),
    instead of hashing every value once per table."""
    cols = batch.columns
    for name, arr in cols.items():
        # (a merged column is a writeable CategoryColumn without codes: viewed again)
        if arr.dtype == object and (not isinstance(arr, CategoryColumn) or arr.flags.writeable):
            cols[name] = CategoryColumn(arr)
    return batch


def _parse_times(col: list[Any]) -> np.ndarray:
    """ISO 8601 strings to ``datetime64[ns]`` UTC (NaT for None and unparsable strings).

    The common fixed-width forms are parsed by :func:`_fast_iso` on the distinct values of the
    batch; anything else goes through ``pandas.to_datetime(format="ISO8601")``.
    """
    n = len(col)
    out = np.full(n, _NAT)
    if n == 0:
        return out
    present = [i for i, v in enumerate(col) if v is not None] if None in col else None
    strings = col if present is None else [col[i] for i in present]
    if not strings:
        return out
    codes, uniques = pd.factorize(np.array(strings, dtype=object))
    uniq = uniques.tolist()
    parsed = _fast_iso(uniq)
    if parsed is None:
        parsed = _pandas_times(uniq)
    else:
        retry = np.flatnonzero(np.isnat(parsed))
        if len(retry):
            parsed[retry] = _pandas_times([uniq[i] for i in retry.tolist()])
    values = parsed[codes]
    if present is None:
        return values
    out[present] = values
    return out


def _pandas_times(strings: list[str]) -> np.ndarray:
    try:
        idx = pd.to_datetime(
            pd.Index(strings, dtype=object), utc=True, format="ISO8601", errors="coerce"
        )
    except (ValueError, TypeError, OverflowError):
        idx = pd.DatetimeIndex([_one_time(v) for v in strings], tz="UTC")
    us = idx.tz_convert(None).to_numpy(dtype="datetime64[us]").copy()
    # pandas may hold times outside the datetime64[ns] range (e.g. year 9999): NaT for those.
    out_of_range = (us < _NS_MIN) | (us > _NS_MAX)
    us[out_of_range] = np.datetime64("NaT", "us")
    return us.astype("datetime64[ns]")


def _one_time(v: Any) -> Any:
    try:
        return pd.to_datetime(v, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


_DIGITS = {19: [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]}
_DIGITS[20] = _DIGITS[19]
_DIGITS[25] = _DIGITS[19] + [20, 21, 23, 24]
_NAT = np.datetime64("NaT", "ns")
_NS_MIN = np.datetime64("1677-09-22T00:00:00", "us")
_NS_MAX = np.datetime64("2262-04-11T00:00:00", "us")


def _fast_iso(strings: list[str]) -> np.ndarray | None:
    """Vectorised ``YYYY-MM-DDTHH:MM:SS`` [``Z`` | ``±HH:MM``] to ``datetime64[ns]`` UTC.

    NaT where a string does not have exactly this form (the caller retries those with
    pandas); None when the batch as a whole does not (mixed lengths, non-ASCII).
    """
    n = len(strings)
    try:
        arr = np.array(strings, dtype="S")
    except (UnicodeEncodeError, ValueError, TypeError):
        return None
    w = arr.dtype.itemsize
    if w not in (19, 20, 25):
        return None
    b = arr.view(np.uint8).reshape(n, w)
    if (b[:, w - 1] == 0).any():  # shorter strings (zero padded)
        return None
    ok = (
        (b[:, 4] == 45)
        & (b[:, 7] == 45)
        & ((b[:, 10] == 84) | (b[:, 10] == 32))
        & (b[:, 13] == 58)
        & (b[:, 16] == 58)
    )
    d = b[:, _DIGITS[w]].astype(np.int64) - 48
    ok &= ((d >= 0) & (d <= 9)).all(axis=1)
    year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    month = d[:, 4] * 10 + d[:, 5]
    day = d[:, 6] * 10 + d[:, 7]
    hh = d[:, 8] * 10 + d[:, 9]
    mm = d[:, 10] * 10 + d[:, 11]
    ss = d[:, 12] * 10 + d[:, 13]
    off = np.zeros(n, np.int64)
    if w == 20:
        ok &= b[:, 19] == 90
    elif w == 25:
        ok &= ((b[:, 19] == 43) | (b[:, 19] == 45)) & (b[:, 22] == 58)
        off = (d[:, 14] * 10 + d[:, 15]) * 60 + d[:, 16] * 10 + d[:, 17]
        off = np.where(b[:, 19] == 45, -off, off)
        ok &= (d[:, 14] * 10 + d[:, 15] < 24) & (d[:, 16] * 10 + d[:, 17] < 60)
    ok &= (month >= 1) & (month <= 12) & (day >= 1) & (hh < 24) & (mm < 60) & (ss < 60)
    ok &= (year >= 1678) & (year <= 2261)
    month = np.where(ok, month, 1)
    year = np.where(ok, year, 1970)
    day = np.where(ok, day, 1)
    ym = (year - 1970) * 12 + (month - 1)
    first = ym.astype("datetime64[M]").astype("datetime64[D]")
    date = first + (day - 1).astype("timedelta64[D]")
    ok &= date.astype("datetime64[M]") == first.astype("datetime64[M]")  # day within month
    secs = date.astype("datetime64[s]").astype(np.int64) + hh * 3600 + mm * 60 + ss - off * 60
    out = (secs * 1_000_000_000).view("datetime64[ns]")
    out[~ok] = _NAT
    return out
