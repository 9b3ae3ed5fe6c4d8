"""Output records of the worker (pure; no Kafka): predictions and DLQ headers.

Alert records are built by :mod:`segstream.shared.alerts` (re-exported here for the worker).

Prediction record (DESIGN.md contract), JSON, keyed by ``event_id``::

    {"event_id", "model", "bundle_id", "segment", "fallback_level", "prediction",
     "interval": [low, high], "interval_mass", "pattern", "pattern_proba",
     "event_time", "scored_at", [family fields], ["contributions": {name: value}]}

The family fields follow ``scored_at`` for the bundles that are not Gaussian (a Gaussian
record has none, so its bytes are those of the regression contract): a binomial bundle's
records add ``"family": "binomial", "probability", "label", "threshold"`` (``prediction`` is
the probability too, the interval null); a Poisson bundle's add ``"family": "poisson"``
(``prediction`` is the expected count, ``interval`` the central Poisson interval of mass
``interval_mass``). See :data:`FAMILIES`.

``event_time`` is echoed as the event sent it; ``scored_at`` is one ISO 8601 UTC time per
batch. Non-finite floats are written as ``null`` (orjson's behaviour).

Encoding (:func:`encode_predictions`, the worker's hot path) is columnar: each column is
encoded as one JSON array by a C library (orjson for the numeric columns, msgspec for the
event ids and times), the per-batch constants are encoded once into template pieces, and a
numba kernel splits each array into its element spans and writes every record into one
buffer of exactly computed size. Records are then the same bytes as ``orjson.dumps`` of the
contract's dict. Records with ``contributions`` are encoded per record (msgspec Structs).
"""

from __future__ import annotations

import datetime as dt
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import orjson
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from segstream.shared.alerts import bundle_rejected_alert  # noqa: F401 - the alert contract lives there

#: Headers added to every DLQ record (the original headers are kept before them; see
#: :func:`dlq_record`).
DLQ_HEADER_REASON = "segstream.dlq.reason"
DLQ_HEADER_DETAIL = "segstream.dlq.detail"
DLQ_HEADER_TOPIC = "segstream.dlq.topic"
DLQ_HEADER_PARTITION = "segstream.dlq.partition"
DLQ_HEADER_OFFSET = "segstream.dlq.offset"
DLQ_HEADER_WORKER = "segstream.dlq.worker"
DLQ_HEADER_TRUNCATED = "segstream.dlq.truncated_from_bytes"
DLQ_HEADER_KEY_TRUNCATED = "segstream.dlq.key_truncated_from_bytes"
DLQ_HEADER_HEADERS_DROPPED = "segstream.dlq.headers_dropped"
DLQ_HEADER_EXCEPTION = "segstream.dlq.exception"
DLQ_HEADER_WATERMARK = "segstream.dlq.watermark"  # event_time_out_of_range
DLQ_HEADER_LIMIT = "segstream.dlq.limit"  # event_time_out_of_range


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with milliseconds (``...Z``)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: The columnar kernel's word-at-a-time scan assumes little-endian words.
_LITTLE_ENDIAN = sys.byteorder == "little"

#: Numeric score columns of a prediction record, in record order.
_NUMERIC_COLUMNS = (
    "segment",
    "fallback_level",
    "prediction",
    "interval_low",
    "interval_high",
    "pattern",
    "pattern_proba",
)

#: Target families of a bundle (``Scorer.family``), and the score columns each adds to a
#: record after ``scored_at`` (binomial: ``probability`` float64, ``label`` int8).
FAMILIES = ("gaussian", "binomial", "poisson")
_FAMILY_COLUMNS: dict[str, tuple[str, ...]] = {
    "gaussian": (),
    "binomial": ("probability", "label"),
    "poisson": (),
}


def _family_tail(family: str, threshold: float | None) -> tuple[bytes, list[bytes]]:
    """The bytes after ``scored_at``'s value: ``(head, pieces)`` where ``head`` follows the
    value, then each family column's element follows ``pieces[i]``. The closing ``}`` is
    the caller's."""
    if family == "gaussian":
        return b"", []
    if family == "binomial":
        return b',"family":"binomial","probability":', [
            b',"label":',
            b',"threshold":' + orjson.dumps(threshold, option=orjson.OPT_SERIALIZE_NUMPY),
        ]
    if family == "poisson":
        return b',"family":"poisson"', []
    raise ValueError(f"encode_predictions: family must be one of {FAMILIES}, got {family!r}")


def encode_predictions(
    event_ids: Sequence[Any],
    scores: Mapping[str, np.ndarray],
    event_time_text: Sequence[Any] | None,
    *,
    model: str,
    bundle_id: str,
    interval_mass: float,
    scored_at: str,
    contribution_names: Sequence[str] | None = None,
    event_time_json: bytes | None = None,
    family: str = "gaussian",
    threshold: float | None = None,
) -> list[bytes]:
    """One JSON prediction record per scored event.

    Without contributions the batch is encoded column by column: each numeric score column
    is one ``orjson.dumps`` of the array (floats as float64, integers as int64 or uint64,
    booleans as ``true``/``false``: the values of ``.tolist()``), ``event_ids`` and
    ``event_time_text`` are one ``msgspec`` encode each, ``model``, ``bundle_id``,
    ``interval_mass`` and ``scored_at`` are encoded once into the template of a record, and
    a numba kernel interleaves the arrays' elements with the template into one buffer, which
    is split into records. On the 2-core dev VM, 20,000 events take 0.8-0.9 µs per event
    instead of 1.9-2.2 µs with one msgspec Struct per record (the method still used with
    contributions, and for score columns of other dtypes); about half of what remains is
    allocating the n ``bytes`` objects of the result (see ``bytes.split``). Work arrays
    (about 10 MB for 20,000 events) are kept per thread between calls.

    Parameters
    ----------
    event_ids : sequence of str, length n
        Any JSON value msgspec encodes is accepted (str in practice).
    scores : dict of str to numpy.ndarray
        Output of :meth:`segstream.shared.scoring.Scorer.score`: ``segment`` (n,) int32,
        ``fallback_level`` (n,) int8, ``prediction``, ``interval_low``, ``interval_high``
        (n,) float64 in target units, ``pattern`` (n,) int32, ``pattern_proba`` (n,)
        float64. Other integer, float and bool dtypes are written as their ``.tolist()``
        values; other dtypes (object, ...) take the per-record path.
    event_time_text : sequence of str or None, length n; or None with ``event_time_json``
        The events' time field as sent.
    model, bundle_id : str
    interval_mass : float
    scored_at : str
        ISO 8601 time of the batch.
    contribution_names : sequence of str, optional
        When given, each record carries ``contributions`` = {name: value} from
        ``scores["contributions"]`` (n, len(names)).
    event_time_json : bytes, optional
        The time values as one JSON array of n strings or nulls (the decoder's
        :attr:`~segstream.services.worker.decode.DecodedBatch.event_time_json`); used instead of
        ``event_time_text``, its elements are copied into the records as they are.
    family : {"gaussian", "binomial", "poisson"}
        The bundle's target family (:attr:`~segstream.shared.scoring.Scorer.family`). Not
        Gaussian: the records gain ``family`` after ``scored_at``; binomial also
        ``probability`` and ``label`` from ``scores["probability"]`` (n,) float64 and
        ``scores["label"]`` (n,) int8, and ``threshold``.
    threshold : float or None
        Binomial: the probability threshold of ``label`` (the bundle's
        :attr:`~segstream.shared.scoring.Scorer.threshold`), the same in every record.

    Returns
    -------
    list of bytes, length n
        The records in event order; each equals ``orjson.dumps`` of the contract's dict
        (field order as above; NaN and ±inf written as ``null``). With contributions,
        floats of magnitude >= 1e16 are spelled as msgspec does (``1e16``, not ``1e+16``).

    Raises
    ------
    ValueError
        A column's length differs from ``len(event_ids)``.
    TypeError, UnicodeEncodeError
        A value has no JSON encoding (an unsupported type, a str with a lone surrogate).
    ValueError
        An unknown ``family``.
    KeyError
        A binomial batch without ``probability`` or ``label``.

    Examples
    --------
    >>> scores = {"segment": np.array([3], np.int32), "fallback_level": np.zeros(1, np.int8),
    ...           "prediction": np.array([-2.5]), "interval_low": np.array([-20.0]),
    ...           "interval_high": np.array([np.inf]), "pattern": np.array([1], np.int32),
    ...           "pattern_proba": np.array([0.75])}
    >>> rec = encode_predictions(["e1"], scores, [None], model="m", bundle_id="b",
    ...                          interval_mass=0.8, scored_at="2024-01-01T00:00:00.000Z")[0]
    >>> print(rec.decode().replace(',"', ',\\n "'))  # one field a line
    {"event_id":"e1",
     "model":"m",
     "bundle_id":"b",
     "segment":3,
     "fallback_level":0,
     "prediction":-2.5,
     "interval":[-20.0,null],
     "interval_mass":0.8,
     "pattern":1,
     "pattern_proba":0.75,
     "event_time":null,
     "scored_at":"2024-01-01T00:00:00.000Z"}

    A binomial bundle's record (``prediction`` is the probability):

    >>> scores |= {"prediction": np.array([0.25]), "interval_low": np.array([np.nan]),
    ...            "interval_high": np.array([np.nan]), "pattern": np.array([-1], np.int32),
    ...            "pattern_proba": np.array([np.nan]), "probability": np.array([0.25]),
    ...            "label": np.array([1], np.int8)}
    >>> rec = encode_predictions(["e1"], scores, [None], model="m", bundle_id="b",
    ...                          interval_mass=0.8, scored_at="2024-01-01T00:00:00.000Z",
    ...                          family="binomial", threshold=0.2)[0]
    >>> print(rec.decode().split(',"scored_at":')[1])
    "2024-01-01T00:00:00.000Z","family":"binomial","probability":0.25,"label":1,"threshold":0.2}
    """
    head, tail = _family_tail(family, threshold)  # ValueError for an unknown family
    extra = _FAMILY_COLUMNS[family]
    if contribution_names is None and _LITTLE_ENDIAN:
        numeric = [_numeric_for_orjson(scores[k]) for k in (*_NUMERIC_COLUMNS, *extra)]
        if all(a is not None for a in numeric):
            return _encode_columnar(
                event_ids,
                numeric,
                event_time_text,
                model=model,
                bundle_id=bundle_id,
                interval_mass=interval_mass,
                scored_at=scored_at,
                event_time_json=event_time_json,
                family_head=head,
                family_pieces=tail,
            )
    if event_time_json is not None:
        event_time_text = msgspec.json.decode(event_time_json)
    if event_time_text is None:
        raise TypeError("encode_predictions: event_time_text or event_time_json is needed")
    return _encode_structs(
        event_ids,
        scores,
        event_time_text,
        model=model,
        bundle_id=bundle_id,
        interval_mass=interval_mass,
        scored_at=scored_at,
        contribution_names=contribution_names,
        family=family,
        threshold=threshold,
    )


def warm_up_records() -> None:
    """Compile (or load from numba's cache) the kernel of :func:`encode_predictions`.

    Encodes a two-record batch, so that the first real batch does not pay for it (about a
    second when compiling, milliseconds when loading the cache). Call it when a bundle is
    loaded, off the hot path; calling it again costs microseconds.
    """
    ints, floats = np.zeros(2, np.int32), np.zeros(2, np.float64)
    scores = {
        "segment": ints,
        "fallback_level": ints.astype(np.int8),
        "prediction": floats,
        "interval_low": floats,
        "interval_high": floats,
        "pattern": ints,
        "pattern_proba": floats,
    }
    encode_predictions(
        ["warm-up", "warm-up"],
        scores,
        ["2020-01-01T00:00:00Z", None],
        model="warm-up",
        bundle_id="warm-up",
        interval_mass=0.5,
        scored_at="2020-01-01T00:00:00.000Z",
    )


# ------------------------------------------------------------------- columnar encoding
def _numeric_for_orjson(col: Any) -> np.ndarray | None:
    """``col`` as a contiguous 1-d array whose orjson encoding spells the values of
    ``col.tolist()`` (float64, int64, uint64 or bool), or None for any other dtype."""
    a = np.asarray(col)
    if a.ndim != 1:
        return None
    kind = a.dtype.kind
    if kind == "f":
        dtype: type = np.float64
    elif kind == "i":
        dtype = np.int64
    elif kind == "u":
        dtype = np.uint64
    elif kind == "b":
        dtype = np.bool_
    else:
        return None
    return np.ascontiguousarray(a, dtype=dtype)


def _text_list(values: Sequence[Any]) -> list[Any]:
    if isinstance(values, list):
        return values
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def _encode_columnar(
    event_ids: Sequence[Any],
    numeric: list[np.ndarray],
    event_time_text: Sequence[Any] | None,
    *,
    model: str,
    bundle_id: str,
    interval_mass: float,
    scored_at: str,
    event_time_json: bytes | None = None,
    family_head: bytes = b"",
    family_pieces: Sequence[bytes] = (),
) -> list[bytes]:
    ids = _text_list(event_ids)
    n = len(ids)
    # numeric: the regression columns, then the family's (one per family piece but the last)
    names = (*_NUMERIC_COLUMNS, *("probability", "label")[: len(numeric) - len(_NUMERIC_COLUMNS)])
    checked: list[tuple[str, Any]] = list(zip(names, numeric, strict=True))
    if event_time_json is None:
        if event_time_text is None:
            raise TypeError("encode_predictions: event_time_text or event_time_json is needed")
        times = _text_list(event_time_text)
        checked.append(("event_time_text", times))
    for name, col in checked:
        if len(col) != n:
            raise ValueError(f"encode_predictions: {name} has {len(col)} values for {n} event ids")
    if n == 0:
        return []
    # The arrays in record order, and the template pieces around them (constants encoded
    # by orjson, so that a record is byte for byte orjson.dumps of the contract's dict).
    base = len(_NUMERIC_COLUMNS)
    arrays = [_ENCODER.encode(ids)]
    arrays += [orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY) for a in numeric[:base]]
    # The time array's element count is checked by the kernel (ValueError below).
    arrays.append(event_time_json if event_time_json is not None else _ENCODER.encode(times))
    # then the family's columns (binomial: probability, label), after scored_at; a binomial
    # bundle's probability is its prediction array itself: its JSON is reused, not redone
    for a in numeric[base:]:
        same = [i for i, b in enumerate(numeric[:base]) if b is a]
        arrays.append(
            arrays[1 + same[0]] if same else orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY)
        )

    def const(v: Any) -> bytes:
        return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY)

    pieces = [
        b'{"event_id":',
        b',"model":' + const(model) + b',"bundle_id":' + const(bundle_id) + b',"segment":',
        b',"fallback_level":',
        b',"prediction":',
        b',"interval":[',
        b",",
        b'],"interval_mass":' + const(interval_mass) + b',"pattern":',
        b',"pattern_proba":',
        b',"event_time":',
        b',"scored_at":' + const(scored_at) + family_head,
        *family_pieces,
    ]
    pieces[-1] += b"}\n"
    src = np.frombuffer(b"".join(arrays), dtype=np.uint8)
    src_off = np.cumsum([0] + [len(a) for a in arrays], dtype=np.int64)
    tmpl = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    tmpl_off = np.cumsum([0] + [len(p) for p in pieces], dtype=np.int64)
    seps = _SCRATCH.array("seps", len(arrays) * (n + 1), np.int64).reshape(len(arrays), n + 1)
    size = _element_seps(src, src_off, seps)
    if size < 0:  # not expected: the encoders wrote n elements per array
        raise ValueError(f"encode_predictions: JSON array {-1 - size} does not hold {n} elements")
    size += n * len(tmpl)
    buf = _SCRATCH.array("records", size, np.uint8)
    if _write_records(src, seps, tmpl, tmpl_off, buf) != size:  # not expected
        raise RuntimeError("encode_predictions: record buffer size mismatch")
    # A record never holds a raw newline (JSON escapes it inside strings, and the encoders
    # write no whitespace), so splitting at b"\n" gives exactly the n records.
    out = buf.tobytes().split(b"\n")
    out.pop()  # after the last newline
    return out


# Word-at-a-time scanning (SWAR): 8 bytes are loaded as one little-endian uint64 and the
# bytes equal to a given value found with the "has a zero byte" trick: the lowest flagged
# byte of ``_zero_bytes(w ^ broadcast(v))`` is the first byte equal to ``v`` (flags above it
# may be false positives, which the scan never uses).
_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_QUOTES = np.uint64(0x2222222222222222)  # "
_BACKSLASHES = np.uint64(0x5C5C5C5C5C5C5C5C)  # \
_COMMAS = np.uint64(0x2C2C2C2C2C2C2C2C)  # ,


@intrinsic
def _load_u64(typingctx: Any, arr: Any, i: Any) -> Any:  # pragma: no cover - numba
    """``arr[i:i + 8]`` (uint8 array) read as one little-endian uint64, unaligned; the
    caller guarantees ``i + 8 <= arr.size``."""
    sig = types.uint64(arr, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        a = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(a.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return sig, codegen


@intrinsic
def _copy_bytes(
    typingctx: Any, dst: Any, dst_at: Any, src: Any, src_at: Any, n: Any
) -> Any:  # pragma: no cover - numba
    """``dst[dst_at:dst_at + n] = src[src_at:src_at + n]`` (uint8 arrays, not overlapping)
    as one ``memcpy``: numba's loops and slice assignments copy byte by byte, 5-10x slower
    on the short pieces of a record. The caller guarantees the bounds."""
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        d = context.make_array(signature.args[0])(context, builder, args[0])
        s = context.make_array(signature.args[2])(context, builder, args[2])
        cgutils.raw_memcpy(
            builder, builder.gep(d.data, [args[1]]), builder.gep(s.data, [args[3]]), args[4], 1
        )
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _zero_bytes(w: np.uint64) -> np.uint64:  # pragma: no cover - numba
    return (w - _ONES) & ~w & _HIGH


@njit(cache=True, nogil=True)
def _json_array_seps(
    src: np.ndarray, lo: int, hi: int, seps: np.ndarray
) -> int:  # pragma: no cover - numba
    """Element boundaries of the compact JSON array ``src[lo:hi]`` (no whitespace).

    ``src`` (m,) uint8 holds the array at ``[lo, hi)``: ``src[lo]`` is ``[`` and
    ``src[hi - 1]`` is ``]``. Writes into ``seps`` (k + 1,) int64 the position of ``[``, of
    each separating ``,`` and of ``]``, so that element ``j`` is
    ``src[seps[j] + 1 : seps[j + 1]]``. Elements are JSON scalars (strings with ``\\``
    escapes, numbers, ``null``, ``true``, ``false``), scanned 8 bytes at a time, or nested
    arrays and objects (byte by byte). Never reads outside ``src[lo:hi]``. Returns the
    number of elements k, or -1 when ``seps`` is too short or the text is not such an array.
    """
    if hi - lo < 2 or src[lo] != 91 or src[hi - 1] != 93:  # [ ]
        return -1
    cap = seps.shape[0]
    seps[0] = lo
    end = hi - 1
    if end == lo + 1:
        return 0
    k = 0
    i = lo + 1
    while True:
        c = src[i]
        if c == 34:  # a string: to its closing quote, skipping escaped bytes
            i += 1
            while True:
                if i + 8 <= end:
                    w = _load_u64(src, i)
                    m = _zero_bytes(w ^ _QUOTES) | _zero_bytes(w ^ _BACKSLASHES)
                    if m == 0:
                        i += 8
                        continue
                    i += trailing_zeros(m) >> 3
                elif i >= end:
                    return -1
                c = src[i]
                if c == 34:
                    break
                i += 2 if c == 92 else 1
            i += 1
        elif c == 91 or c == 123:  # a nested [ or {: to its closing bracket
            depth = 0
            while i < end:
                c = src[i]
                if c == 34:
                    i += 1
                    while i < end and src[i] != 34:
                        i += 2 if src[i] == 92 else 1
                elif c == 91 or c == 123:
                    depth += 1
                elif c == 93 or c == 125:
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
            if depth != 0:
                return -1
        else:  # a number, null, true or false: to the next comma or the closing ]
            while True:
                if i + 8 <= end:
                    m = _zero_bytes(_load_u64(src, i) ^ _COMMAS)
                    if m == 0:
                        i += 8
                        continue
                    i += trailing_zeros(m) >> 3
                    break
                if i >= end or src[i] == 44:
                    break
                i += 1
        if i > end or (i < end and src[i] != 44):
            return -1
        k += 1
        if k >= cap:
            return -1
        seps[k] = i
        if i == end:
            return k
        i += 1


@njit(cache=True, nogil=True)
def _element_seps(
    src: np.ndarray, src_off: np.ndarray, seps: np.ndarray
) -> int:  # pragma: no cover - numba
    """Element boundaries of C JSON arrays of n elements each (see :func:`_json_array_seps`).

    ``src`` (m,) uint8 holds the arrays one after another, array ``c`` at
    ``src[src_off[c]:src_off[c + 1]]`` (``src_off`` (C + 1,) int64). Fills ``seps``
    (C, n + 1) int64 and returns the total length of the elements (without brackets and
    commas), or ``-1 - c`` when array ``c`` does not hold n elements.
    """
    n = seps.shape[1] - 1
    size = 0
    for c in range(seps.shape[0]):
        if _json_array_seps(src, src_off[c], src_off[c + 1], seps[c]) != n:
            return -1 - c
        size += seps[c, n] - seps[c, 0] - n
    return size


@njit(cache=True, nogil=True)
def _write_records(
    src: np.ndarray, seps: np.ndarray, tmpl: np.ndarray, tmpl_off: np.ndarray, out: np.ndarray
) -> int:  # pragma: no cover - numba
    """Interleave the elements of C JSON arrays with C + 1 template pieces, record by record.

    ``src`` (m,) uint8 holds the arrays, element ``i`` of array ``c`` at
    ``src[seps[c, i] + 1 : seps[c, i + 1]]`` (``seps`` (C, n + 1) int64 from
    :func:`_element_seps`); ``tmpl`` (t,) uint8 holds the pieces, piece ``c`` at
    ``tmpl[tmpl_off[c]:tmpl_off[c + 1]]`` (``tmpl_off`` (C + 2,) int64). Record ``i`` is
    piece 0, element i of array 0, piece 1, ..., element i of array C - 1, piece C; the n
    records are written one after another from ``out[0]`` (``out`` (size,) uint8, size at
    least n * t plus the elements' total length). Returns the number of bytes written, or
    -1 (nothing written) when ``out`` is too small.
    """
    n_cols, n = seps.shape[0], seps.shape[1] - 1
    size = n * (tmpl_off[n_cols + 1] - tmpl_off[0])
    for c in range(n_cols):
        size += seps[c, n] - seps[c, 0] - n
    if out.shape[0] < size:
        return -1
    p = 0
    for i in range(n):
        for c in range(n_cols):
            a, b = tmpl_off[c], tmpl_off[c + 1]
            _copy_bytes(out, p, tmpl, a, b - a)
            p += b - a
            a, b = seps[c, i] + 1, seps[c, i + 1]
            _copy_bytes(out, p, src, a, b - a)
            p += b - a
        a, b = tmpl_off[n_cols], tmpl_off[n_cols + 1]
        _copy_bytes(out, p, tmpl, a, b - a)
        p += b - a
    return p


class _Scratch(threading.local):
    """Work arrays of the columnar encoder, kept per thread between batches.

    A fresh 8 MB buffer per 20,000-event batch costs more in page faults (the allocator
    gives the pages back to the OS between batches) than the kernel that fills it; arrays
    up to :attr:`max_bytes` are kept and reused instead.
    """

    max_bytes = 64 << 20

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, size: int, dtype: type) -> np.ndarray:
        """An uninitialised 1-d array of ``size`` elements of ``dtype``."""
        a = self.arrays.get(name)
        if a is None or a.size < size:
            a = np.empty(size, dtype=dtype)
            if a.nbytes <= self.max_bytes:
                self.arrays[name] = a
        return a[:size]


_SCRATCH = _Scratch()


# ------------------------------------------------------------------ per-record encoding
def _encode_structs(
    event_ids: Sequence[Any],
    scores: Mapping[str, np.ndarray],
    event_time_text: Sequence[Any],
    *,
    model: str,
    bundle_id: str,
    interval_mass: float,
    scored_at: str,
    contribution_names: Sequence[str] | None,
    family: str = "gaussian",
    threshold: float | None = None,
) -> list[bytes]:
    """:func:`encode_predictions` with one msgspec Struct per record (contributions, or
    score columns of dtypes the columnar path does not take)."""
    cols: list[Any] = [
        event_ids,
        scores["segment"].tolist(),
        scores["fallback_level"].tolist(),
        scores["prediction"].tolist(),
        scores["interval_low"].tolist(),
        scores["interval_high"].tolist(),
        scores["pattern"].tolist(),
        scores["pattern_proba"].tolist(),
        event_time_text,
    ]
    cols += [np.asarray(scores[k]).tolist() for k in _FAMILY_COLUMNS[family]]
    if contribution_names is not None:
        names = list(contribution_names)
        contrib = np.asarray(scores["contributions"], dtype=np.float64).tolist()
        cols.append([dict(zip(names, c, strict=True)) for c in contrib])
    struct = _STRUCTS[(family, contribution_names is not None)]
    # msgspec Structs encode the same JSON as orjson on dicts (field order, NaN -> null;
    # floats of magnitude >= 1e16 spelled 1e16 where orjson writes 1e+16); all of them in
    # one call as JSON lines (a record never holds a raw newline: JSON escapes it in
    # strings), split into records.
    records = []
    for row in zip(*cols, strict=True):
        e, s, f, p, lo, hi, pt, pp, et = row[:9]
        head: tuple[Any, ...] = (
            e,
            model,
            bundle_id,
            s,
            f,
            p,
            (lo, hi),
            interval_mass,
            pt,
            pp,
            et,
            scored_at,
        )
        rest = row[9:]
        if family == "binomial":  # probability, label, [contributions]
            head += ("binomial", rest[0], rest[1], threshold)
            rest = rest[2:]
        elif family == "poisson":
            head += ("poisson",)
        records.append(struct(*head, *rest))
    if not records:
        return []
    out = _ENCODER.encode_lines(records).split(b"\n")
    out.pop()  # after the last newline
    return out


_PREDICTION_FIELDS: list[tuple[str, Any]] = [
    ("event_id", Any),
    ("model", str),
    ("bundle_id", str),
    ("segment", int),
    ("fallback_level", int),
    ("prediction", float),
    ("interval", tuple),
    ("interval_mass", float),
    ("pattern", int),
    ("pattern_proba", float),
    ("event_time", Any),
    ("scored_at", str),
]
#: The fields each family adds after ``scored_at`` (see :func:`_family_tail`).
_FAMILY_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "gaussian": [],
    "binomial": [("family", str), ("probability", float), ("label", int), ("threshold", Any)],
    "poisson": [("family", str)],
}
#: Record Structs by (family, with contributions); scalars only without (gc=False).
_STRUCTS = {
    (fam, with_c): msgspec.defstruct(
        f"Prediction{fam.capitalize()}{'WithContributions' if with_c else ''}",
        [*_PREDICTION_FIELDS, *extra, *([("contributions", dict)] if with_c else [])],
        gc=with_c,
    )
    for fam, extra in _FAMILY_FIELDS.items()
    for with_c in (False, True)
}
_Prediction = _STRUCTS[("gaussian", False)]
_PredictionWithContributions = _STRUCTS[("gaussian", True)]
_ENCODER = msgspec.json.Encoder()


#: librdkafka's framing of one record beyond its key, value and headers
#: (``RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD``, 36 bytes), with room to spare: a record is refused
#: at ``produce()`` (``MSG_SIZE_TOO_LARGE``) when framing + key + value + headers exceed the
#: producer's ``message.max.bytes``.
RECORD_OVERHEAD_BYTES = 64
#: Room kept for the ``segstream.dlq.*truncated*`` headers a bounded copy may get.
_TRUNCATION_HEADERS_BYTES = 256


def header_bytes(headers: Sequence[tuple[str, Any]] | None) -> int:
    """Bytes the headers take in a record (each: two varints of at most 5 bytes, its key and
    its value), as librdkafka counts them against ``message.max.bytes`` (or a little more)."""
    if not headers:
        return 0
    return sum(
        10 + len(k.encode("utf-8", "replace")) + (len(v) if v is not None else 0)
        for k, v in headers
    )


def record_bytes(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, Any]] | None
) -> int:
    """The size librdkafka checks against ``message.max.bytes`` (or a little more)."""
    return (
        RECORD_OVERHEAD_BYTES
        + (len(key) if key is not None else 0)
        + (len(value) if value is not None else 0)
        + header_bytes(headers)
    )


def exception_name(exc: BaseException) -> str:
    """``ValueError`` for built-in exceptions, ``module.Qualified`` for the others."""
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _fair_shares(sizes: Sequence[int], budget: int) -> list[int]:
    """Max-min fair split of ``budget`` among parts of ``sizes``: a part that needs less than
    an equal share keeps all of it and leaves the rest to the others.

    >>> _fair_shares([10, 500, 40], 200)
    [10, 150, 40]
    """
    shares = [0] * len(sizes)
    left = max(budget, 0)
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for rank, i in enumerate(order):
        share = min(sizes[i], left // (len(sizes) - rank))
        shares[i] = share
        left -= share
    return shares


def dlq_record(
    value: bytes | None,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    *,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    worker: str,
    max_value_bytes: int,
    max_record_bytes: int,
    exception: str | None = None,
    extra: Sequence[tuple[str, bytes]] | None = None,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]:
    """The DLQ copy of a rejected event, bounded to fit the producer's ``message.max.bytes``.

    The copy has the event's value, key and headers followed by the ``segstream.dlq.*``
    headers (reason, detail, source topic/partition/offset, worker, and for ``scoring_error``
    the exception type). The value is cut to ``max_value_bytes``. When the key, the original
    headers and the value together still exceed what is left of ``max_record_bytes`` after
    the framing and the ``segstream.dlq.*`` headers, that room is shared max-min fairly
    between them (a small part keeps all of it): the value and the key are cut to their
    share, and the original headers that do not fit theirs are dropped whole, in order.
    Headers say what was cut: ``segstream.dlq.truncated_from_bytes`` (value),
    ``segstream.dlq.key_truncated_from_bytes`` and ``segstream.dlq.headers_dropped`` (how
    many original headers).

    Parameters
    ----------
    value, key : bytes or None
        The event's value and key as consumed.
    headers : sequence of (str, bytes or None), or None
        The event's headers.
    reason : str
        The DLQ reason (see ``docs/dlq.md``).
    detail : str
        Why (cut to 500 bytes of UTF-8).
    topic, partition, offset, worker : str, int, int, str
        Where the event came from, and which worker rejected it.
    max_value_bytes : int
        ``worker.dlq_max_value_bytes``.
    max_record_bytes : int
        The producer's ``message.max.bytes`` (bytes; at least ~2 KB for the DLQ headers).
    exception : str, optional
        Exception type (``segstream.dlq.exception``) of a ``scoring_error``.
    extra : sequence of (str, bytes), optional
        More ``segstream.dlq.*`` headers (each value at most 200 bytes kept), e.g. the
        watermark and limit of an ``event_time_out_of_range``.

    Returns
    -------
    value, key : bytes or None
    headers : list of (str, bytes or None)
        :func:`record_bytes` of the three is at most ``max_record_bytes``.

    Examples
    --------
    >>> v, k, h = dlq_record(b"v" * 5000, b"k" * 5000, [("trace", b"t")], reason="invalid_json",
    ...                      detail="bad", topic="events", partition=0, offset=7, worker="w",
    ...                      max_value_bytes=4000, max_record_bytes=6000)
    >>> len(v), len(k), dict(h)["segstream.dlq.key_truncated_from_bytes"]
    (2729, 2729, b'5000')
    >>> record_bytes(k, v, h) <= 6000
    True
    """
    own: list[tuple[str, bytes | None]] = [
        (DLQ_HEADER_REASON, reason.encode()),
        # at most 500 bytes of whole UTF-8 characters (a cut inside one is dropped)
        (
            DLQ_HEADER_DETAIL,
            detail.encode("utf-8", "replace")[:500].decode("utf-8", "ignore").encode(),
        ),
        (DLQ_HEADER_TOPIC, topic.encode()),
        (DLQ_HEADER_PARTITION, str(partition).encode()),
        (DLQ_HEADER_OFFSET, str(offset).encode()),
        (DLQ_HEADER_WORKER, worker.encode()),
    ]
    if exception is not None:
        own.append((DLQ_HEADER_EXCEPTION, exception.encode("utf-8", "replace")[:200]))
    for name, v in extra or ():
        own.append((name, v[:200]))
    original = list(headers or [])
    marks: list[tuple[str, bytes | None]] = []
    if value is not None and len(value) > max_value_bytes:
        marks.append((DLQ_HEADER_TRUNCATED, str(len(value)).encode()))
        value = value[:max_value_bytes]
    budget = (
        max_record_bytes - RECORD_OVERHEAD_BYTES - header_bytes(own) - _TRUNCATION_HEADERS_BYTES
    )
    sizes = [
        len(value) if value is not None else 0,
        len(key) if key is not None else 0,
        header_bytes(original),
    ]
    if sum(sizes) > budget:
        v_share, k_share, h_share = _fair_shares(sizes, budget)
        if value is not None and len(value) > v_share:
            if not any(name == DLQ_HEADER_TRUNCATED for name, _ in marks):
                marks.append((DLQ_HEADER_TRUNCATED, str(len(value)).encode()))
            value = value[:v_share]
        if key is not None and len(key) > k_share:
            marks.append((DLQ_HEADER_KEY_TRUNCATED, str(len(key)).encode()))
            key = key[:k_share]
        kept: list[tuple[str, bytes | None]] = []
        used = 0
        for h in original:
            size = header_bytes([h])
            if used + size <= h_share:
                kept.append(h)
                used += size
        if len(kept) < len(original):
            marks.append((DLQ_HEADER_HEADERS_DROPPED, str(len(original) - len(kept)).encode()))
        original = kept
    return value, key, original + own + marks
