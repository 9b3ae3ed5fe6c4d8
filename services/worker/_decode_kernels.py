"""numba kernels of the flat-event fast path of :mod:`segstream.services.worker.decode`.

:func:`parse_flat_objects` reads a micro-batch of JSON event values, concatenated into one
byte buffer, in one GIL-free pass: per event, the numbers of the schema's numeric and bool
fields, the byte spans of its string fields and the time field as nanoseconds since the epoch.
It accepts only the plain form that producers write (an object of scalar values; ASCII strings
without escapes; numbers in JSON grammar; the time field in the fixed ISO 8601 forms of
:func:`segstream.services.worker.decode._fast_iso`) and sends every other event back to the general
decoder (``status`` 1), which decides what it is. So this path changes speed, never outcomes:
an event it accepts decodes to the same values as through msgspec.

Numbers are converted exactly where the conversion is one correctly rounded IEEE operation
(Clinger's fast path: an integer mantissa below 2**53 times or divided by an exact power of ten
up to 1e22). Other numbers (17 significant digits, large exponents, ``-0``) are reported as
*hard* byte spans that the caller converts with msgspec, the general decoder's own parser.

The parser works a word (8 bytes) at a time where it can (SWAR): a key is compared with the
expected field's name in whole words, a string scanned for its end 8 bytes per step, up to 8
digits of a number read by one multiply-shift sequence, an ISO time checked and read from a
few words. Word loads never leave the buffer; near its end the byte-at-a-time code runs
instead, so both give the same results. The helpers read the buffer through its data pointer
(:func:`_data`), which keeps numba's reference counting out of the loop.

References
----------
W. D. Clinger, "How to read floating point numbers accurately", PLDI 1990.
H. Hinnant, "chrono-Compatible Low-Level Date Algorithms" (``days_from_civil``).
D. Lemire, "Number Parsing at a Gigabyte per Second", Software: Practice and Experience 51
(2021) (eight digits at a time, ``parse_eight_digits_unrolled`` of fast_float).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

#: Field kinds of :func:`parse_flat_objects`.
KIND_NUMBER, KIND_BOOL, KIND_STRING, KIND_TIME = 0, 1, 2, 3

_POW10 = np.array([10.0**k for k in range(23)], dtype=np.float64)
_POW10_INT = np.array([10**k for k in range(9)], dtype=np.uint64)
_TWO53 = 1 << 53
_TWO53_U = np.uint64(_TWO53)
_NAT = np.iinfo(np.int64).min

# Word-at-a-time (SWAR) constants. A word is 8 bytes of the text loaded as a little-endian
# uint64: byte j of the text is bits 8j..8j+7, and "flags" are bit 7 of each byte.
_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_QUOTES = np.uint64(0x2222222222222222)  # "
_BACKSLASHES = np.uint64(0x5C5C5C5C5C5C5C5C)  # \
_SPACES = np.uint64(0x2020202020202020)  # bytes below are control bytes
_ZEROS = np.uint64(0x3030303030303030)  # '0'
_SIXES = np.uint64(0x0606060606060606)
_THREES = np.uint64(0x3333333333333333)
_HIGH_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
_BYTES_0_4 = np.uint64(0x000000FF000000FF)
_MUL1 = np.uint64(100 + (1_000_000 << 32))
_MUL2 = np.uint64(1 + (10_000 << 32))
_LOW32 = np.uint64(0xFFFFFFFF)
# The ISO 8601 forms of _iso_ns, per word: which bytes are digits; which are fixed, and their
# values.
_ISO_DIGITS0 = np.uint64(0x00FFFF00FFFFFFFF)  # YYYY-MM-
_ISO_FIXED0 = np.uint64(0xFF0000FF00000000)
_ISO_DASHES0 = np.uint64(0x2D00002D00000000)
_ISO_DIGITS1 = np.uint64(0xFFFF00FFFF00FFFF)  # DD?HH:MM, HH:MM:SS and SS?HH:MM
_ISO_FIXED2 = np.uint64(0x0000FF0000FF0000)  # HH:MM:SS
_ISO_COLONS2 = np.uint64(0x00003A00003A0000)
_ISO_FIXED3 = np.uint64(0x0000FF0000000000)  # SS?HH:MM
_ISO_COLON3 = np.uint64(0x00003A0000000000)


# ---------------------------------------------------------------------------- byte access
@intrinsic
def _data(typingctx: Any, arr: Any) -> Any:  # pragma: no cover - numba
    """The data pointer of a contiguous 1-d uint8 array, as a ``CPointer(uint8)`` that numba
    indexes (``bp[i]``) with a plain load: no wraparound of negative indices, no bounds check
    (as for arrays), and no reference counting.

    That last point is why the parser's helpers take this pointer rather than the array:
    around every inlined call that takes an array, numba increments and decrements its
    reference count (atomically), and in a loop with as many exits as this parser its pruning
    pass leaves most of those pairs in place; they cost more than the parsing. The caller
    keeps the array alive and every index within it."""
    if not (
        isinstance(arr, types.Array)
        and arr.ndim == 1
        and arr.layout == "C"
        and arr.dtype == types.uint8
    ):
        raise TypingError(f"_data takes a contiguous 1-d uint8 array, not {arr}")
    sig = types.CPointer(types.uint8)(arr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return context.make_array(signature.args[0])(context, builder, args[0]).data

    return sig, codegen


@intrinsic
def _load_u64(typingctx: Any, bp: Any, i: Any) -> Any:  # pragma: no cover - numba
    """``bp[i:i + 8]`` (``bp`` from :func:`_data`) read as one little-endian uint64,
    unaligned; the caller guarantees that the 8 bytes are within the array (the load of
    :mod:`segstream.services.worker.records`, on a pointer)."""
    sig = types.uint64(bp, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = builder.bitcast(builder.gep(args[0], [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)

    return sig, codegen


# ---------------------------------------------------------------------------- SWAR
@njit(cache=True, nogil=True, inline="always")
def _zero_bytes(w: np.uint64) -> np.uint64:  # pragma: no cover - numba
    """Flags the bytes of ``w`` that are 0: exact up to the lowest flag (a borrow only runs
    upward from a 0 byte), which is all the scans use."""
    return (w - _ONES) & ~w & _HIGH


@njit(cache=True, nogil=True, inline="always")
def _first_flag(m: np.uint64) -> int:  # pragma: no cover - numba
    """Index of the lowest flagged byte of ``m`` (``m`` not 0)."""
    return np.int64(trailing_zeros(m)) >> 3


@njit(cache=True, nogil=True, inline="always")
def _nondigits(w: np.uint64) -> np.uint64:  # pragma: no cover - numba
    """``w`` with its ASCII digit bytes made 0 and all other bytes not 0.

    A byte 0x3d gives 0x33 ^ 0x33 (its high nibble, and that of the byte plus 6); no other
    byte does. ``+ _SIXES`` carries out of a byte only when it is >= 0xFA, not a digit, and
    the carry can only make the byte above look like a non-digit too: exact up to the first
    non-digit."""
    return ((w & _HIGH_NIBBLES) | (((w + _SIXES) & _HIGH_NIBBLES) >> np.uint64(4))) ^ _THREES


@njit(cache=True, nogil=True, inline="always")
def _digit_run(w: np.uint64) -> int:  # pragma: no cover - numba
    """How many bytes of ``w``, from its first, are ASCII digits (0..8)."""
    t = _nondigits(w)
    nz = (((t & _LOW7) + _LOW7) | t) & _HIGH  # flags the bytes of t that are not 0, exactly
    if nz == 0:
        return 8
    return _first_flag(nz)


@njit(cache=True, nogil=True, inline="always")
def _digits_value(w: np.uint64, k: int) -> np.uint64:  # pragma: no cover - numba
    """The number written by the first ``k`` (1..8) bytes of ``w``, all ASCII digits.

    fast_float's ``parse_eight_digits_unrolled`` on the digits moved to the top of the word,
    0 bytes (leading zeros) before them. Subtracting ``'0'`` first is exact on the digits:
    they borrow nothing, and a borrow from the bytes after them runs upward, out of the
    shift."""
    v = (w - _ZEROS) << np.uint64(64 - 8 * k)
    v = v * np.uint64(10) + (v >> np.uint64(8))  # byte j: 10 d_j + d_j+1
    v = ((v & _BYTES_0_4) * _MUL1 + ((v >> np.uint64(16)) & _BYTES_0_4) * _MUL2) >> np.uint64(32)
    return v & _LOW32


@njit(cache=True, nogil=True, inline="always")
def _pairs(w: np.uint64) -> np.uint64:  # pragma: no cover - numba
    """Byte ``j`` of the result is the two-digit number written by bytes ``j, j + 1`` of
    ``w``, where both are digits (read with :func:`_pair`)."""
    d = w & _LOW_NIBBLES
    return d * np.uint64(10) + (d >> np.uint64(8))  # each byte <= 15 * 10 + 15: no carries


@njit(cache=True, nogil=True, inline="always")
def _pair(v: np.uint64, j: int) -> int:  # pragma: no cover - numba
    return np.int64((v >> np.uint64(8 * j)) & np.uint64(0xFF))


# ---------------------------------------------------------------------------- tokens
@njit(cache=True, nogil=True, inline="always")
def _ws(bp: Any, p: int, end: int) -> int:  # pragma: no cover - numba
    while p < end:
        c = bp[p]
        if c != 32 and c != 10 and c != 13 and c != 9:
            break
        p += 1
    return p


@njit(cache=True, nogil=True, inline="always")
def _skip_ws(bp: Any, p: int, end: int) -> int:  # pragma: no cover - numba
    """:func:`_ws`, with one test when the byte at ``p`` cannot be whitespace (compact JSON
    has none)."""
    if p < end and bp[p] <= 32:
        return _ws(bp, p, end)
    return p


@njit(cache=True, nogil=True, inline="always")
def _string_end(bp: Any, p: int, end: int) -> int:  # pragma: no cover - numba
    """Index of the closing quote of a plain string starting at ``p`` (after its opening
    quote), or -1 when it has an escape, a control or non-ASCII byte, or no end."""
    while p < end:
        c = bp[p]
        if c == 34:
            return p
        if c == 92 or c < 32 or c >= 128:
            return -1
        p += 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _string_end_w(bp: Any, p: int, end: int, nbuf: int) -> int:  # pragma: no cover - numba
    """:func:`_string_end`, 8 bytes a step while the buffer (``nbuf`` bytes) has them; bytes
    past ``end`` may be read, never used."""
    while p + 8 <= nbuf:
        w = _load_u64(bp, p)
        # The first quote, backslash, control byte (< 0x20) or byte >= 0x80 (its own bit 7,
        # or the borrow of ``- _SPACES``; a borrow only runs upward from a control byte).
        m = _zero_bytes(w ^ _QUOTES) | _zero_bytes(w ^ _BACKSLASHES) | (((w - _SPACES) | w) & _HIGH)
        if m != 0:
            q = p + _first_flag(m)
            if q < end and bp[q] == 34:
                return q
            return -1
        p += 8
        if p >= end:
            return -1
    return _string_end(bp, p, end)


@njit(cache=True, nogil=True, inline="always")
def _days_in_month(y: int, m: int) -> int:  # pragma: no cover - numba
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return 29 if leap else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


@njit(cache=True, nogil=True, inline="always")
def _iso_ns(bp: Any, s: int, e: int) -> tuple[bool, int]:  # pragma: no cover - numba
    """``YYYY-MM-DD[T ]HH:MM:SS`` [``Z`` | ``±HH:MM``] at ``bp[s:e]`` to ns since the epoch
    (UTC; no offset means UTC), the forms and bounds of ``decode._fast_iso``. The digits and
    fixed bytes are checked, and the fields read, a word at a time (all within ``bp[s:e]``)."""
    w = e - s
    if w != 19 and w != 20 and w != 25:
        return False, 0
    w0 = _load_u64(bp, s)  # YYYY-MM-
    w1 = _load_u64(bp, s + 8)  # DD?HH:MM
    w2 = _load_u64(bp, s + 11)  # HH:MM:SS
    if (
        (_nondigits(w0) & _ISO_DIGITS0)
        | (_nondigits(w1) & _ISO_DIGITS1)
        | (_nondigits(w2) & _ISO_DIGITS1)
    ) != 0:
        return False, 0
    if (w0 & _ISO_FIXED0) != _ISO_DASHES0 or (w2 & _ISO_FIXED2) != _ISO_COLONS2:
        return False, 0
    if bp[s + 10] != 84 and bp[s + 10] != 32:
        return False, 0
    v0 = _pairs(w0)
    v1 = _pairs(w1)
    year = _pair(v0, 0) * 100 + _pair(v0, 2)
    month = _pair(v0, 5)
    day = _pair(v1, 0)
    hh = _pair(v1, 3)
    mm = _pair(v1, 6)
    ss = _pair(_pairs(w2), 6)
    if (
        year < 1678
        or year > 2261
        or month < 1
        or month > 12
        or day < 1
        or hh > 23
        or mm > 59
        or ss > 59
    ):
        return False, 0
    if day > _days_in_month(year, month):
        return False, 0
    off = 0
    if w == 20:
        if bp[s + 19] != 90:
            return False, 0
    elif w == 25:
        sign = bp[s + 19]
        w3 = _load_u64(bp, s + 17)  # SS?HH:MM
        if (
            (sign != 43 and sign != 45)
            or (w3 & _ISO_FIXED3) != _ISO_COLON3
            or (_nondigits(w3) & _ISO_DIGITS1) != 0
        ):
            return False, 0
        v3 = _pairs(w3)
        oh = _pair(v3, 3)
        om = _pair(v3, 6)
        if oh > 23 or om > 59:
            return False, 0
        off = oh * 60 + om
        if sign == 45:
            off = -off
    # days_from_civil (Hinnant); year >= 1678 here, so the era is never negative.
    y = year - (1 if month <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    mp = month - 3 if month > 2 else month + 9
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    secs = days * 86400 + hh * 3600 + mm * 60 + ss - off * 60
    return True, secs * 1_000_000_000


@njit(cache=True, nogil=True, inline="always")
def _exponent(bp: Any, p: int, end: int) -> tuple[int, int]:  # pragma: no cover - numba
    """The exponent of a JSON number, ``p`` just after its ``e``/``E``: ``(next p, signed
    value)`` (magnitude capped at 100 000, far beyond any double), or ``(-p, 0)`` when no
    digit follows."""
    eneg = False
    if p < end and (bp[p] == 43 or bp[p] == 45):
        eneg = bp[p] == 45
        p += 1
    if p >= end or not 48 <= bp[p] <= 57:
        return -p, 0
    ev = 0
    while p < end and 48 <= bp[p] <= 57:
        if ev < 100_000:
            ev = ev * 10 + (bp[p] - 48)
        p += 1
    return p, -ev if eneg else ev


@njit(cache=True, nogil=True, inline="always")
def _scaled(
    mant: int, exp10: int, is_int: bool, neg: bool
) -> tuple[int, float]:  # pragma: no cover - numba
    """``±mant * 10**exp10`` for ``0 <= mant < 2**53``: ``(0, value)`` when that is one
    correctly rounded operation (Clinger's fast path), else ``(1, 0.0)`` (hard)."""
    v = float(mant)
    if mant == 0:
        return 0, 0.0
    if is_int and exp10 == 0:
        return 0, -v if neg else v
    if exp10 > 22 or exp10 < -22:
        return 1, 0.0
    if exp10 >= 0:
        v = v * _POW10[exp10]
    else:
        v = v / _POW10[-exp10]
    return 0, -v if neg else v


@njit(cache=True, nogil=True)
def _number(bp: Any, p: int, end: int) -> tuple[int, int, float]:  # pragma: no cover - numba
    """Parse a JSON number at ``p``, a byte at a time. Returns ``(state, next p, value)``:
    state 0 exact value, 1 valid but hard (convert the text elsewhere), -1 not a JSON
    number. (The rare case of :func:`_number_w`: called, not inlined at its three places.)"""
    neg = False
    if p < end and bp[p] == 45:
        neg = True
        p += 1
    if p >= end:
        return -1, p, 0.0
    c = bp[p]
    mant = 0
    nd = 0  # significant digits in mant
    exp10 = 0
    if c == 48:
        p += 1
        if p < end and 48 <= bp[p] <= 57:
            return -1, p, 0.0  # leading zero
    elif 49 <= c <= 57:
        while p < end and 48 <= bp[p] <= 57:
            if nd < 18:  # 18 digits fit in int64
                mant = mant * 10 + (bp[p] - 48)
                nd += 1
            else:
                nd += 1
                exp10 += 1
            p += 1
    else:
        return -1, p, 0.0
    is_int = True
    if p < end and bp[p] == 46:
        is_int = False
        p += 1
        if p >= end or not 48 <= bp[p] <= 57:
            return -1, p, 0.0
        while p < end and 48 <= bp[p] <= 57:
            d = bp[p] - 48
            if nd < 18:
                if mant != 0 or d != 0:
                    mant = mant * 10 + d
                    nd += 1
                exp10 -= 1
            else:
                nd += 1
            p += 1
    if p < end and (bp[p] == 101 or bp[p] == 69):
        is_int = False
        p, ev = _exponent(bp, p + 1, end)
        if p < 0:
            return -1, -p, 0.0
        exp10 += ev
    if nd > 18 or mant >= _TWO53 or (mant == 0 and neg):
        return 1, p, 0.0
    state, v = _scaled(mant, exp10, is_int, neg)
    return state, p, v


@njit(cache=True, nogil=True, inline="always")
def _number_w(
    bp: Any, p: int, end: int, nbuf: int
) -> tuple[int, int, float]:  # pragma: no cover - numba
    """:func:`_number`, reading the integer and fraction digits up to 8 at a time.

    For a number of at most 18 digits this gives the same mantissa (leading zeros add
    nothing) and the same power of ten as :func:`_number`, hence the same result; a longer
    one, or one too near the end of the buffer (``nbuf`` bytes) for a word load, is left to
    :func:`_number` itself."""
    s = p
    neg = False
    if p < end and bp[p] == 45:
        neg = True
        p += 1
    if p >= end:
        return -1, p, 0.0
    c = bp[p]
    mant = np.uint64(0)
    nd = 0  # digits in mant, leading zeros of a fraction included
    exp10 = 0
    if c == 48:
        p += 1
        if p < end and 48 <= bp[p] <= 57:
            return -1, p, 0.0  # leading zero
    elif 49 <= c <= 57:
        while True:
            if p + 8 > nbuf:
                return _number(bp, s, end)
            w = _load_u64(bp, p)
            k = min(_digit_run(w), end - p)
            if k == 0:
                break
            mant = mant * _POW10_INT[k] + _digits_value(w, k)
            nd += k
            p += k
            if k < 8:
                break
    else:
        return -1, p, 0.0
    is_int = True
    if p < end and bp[p] == 46:
        is_int = False
        p += 1
        first = True
        while True:
            if p + 8 > nbuf:
                return _number(bp, s, end)
            w = _load_u64(bp, p)
            k = min(_digit_run(w), end - p)
            if k == 0:
                if first:
                    return -1, p, 0.0  # no digit after the point
                break
            first = False
            mant = mant * _POW10_INT[k] + _digits_value(w, k)
            nd += k
            exp10 -= k
            p += k
            if k < 8:
                break
    if nd > 18:
        return _number(bp, s, end)
    if p < end and (bp[p] == 101 or bp[p] == 69):
        is_int = False
        p, ev = _exponent(bp, p + 1, end)
        if p < 0:
            return -1, -p, 0.0
        exp10 += ev
    if mant >= _TWO53_U or (mant == 0 and neg):
        return 1, p, 0.0
    state, v = _scaled(np.int64(mant), exp10, is_int, neg)
    return state, p, v


@njit(cache=True, nogil=True, inline="always")
def _match(
    bp: Any, ks: int, ke: int, names: np.ndarray, name_off: np.ndarray, guess: int
) -> int:  # pragma: no cover - numba
    """Index of the field named ``bp[ks:ke]`` (trying ``guess`` first), or -1."""
    nf = len(name_off) - 1
    klen = ke - ks
    for t in range(nf):
        f = guess + t
        if f >= nf:
            f -= nf
        a = name_off[f]
        if name_off[f + 1] - a != klen:
            continue
        same = True
        for j in range(klen):
            if names[a + j] != bp[ks + j]:
                same = False
                break
        if same:
            return f
    return -1


# ---------------------------------------------------------------------------- kernels
@njit(cache=True, nogil=True)
def parse_flat_objects(
    buf: np.ndarray,
    offsets: np.ndarray,
    names: np.ndarray,
    name_off: np.ndarray,
    kinds: np.ndarray,
    slots: np.ndarray,
    required: np.ndarray,
    num_out: np.ndarray,
    str_start: np.ndarray,
    str_end: np.ndarray,
    time_ns: np.ndarray,
    hard: np.ndarray,
    status: np.ndarray,
) -> int:  # pragma: no cover - numba
    """Parse ``n`` flat JSON objects; see the module docstring.

    Parameters
    ----------
    buf : uint8 (total,)
        The values, concatenated; value ``i`` is ``buf[offsets[i]:offsets[i + 1]]``.
    offsets : int64 (n + 1,)
    names, name_off : uint8, int64 (n_fields + 1,)
        The field names (UTF-8), concatenated; field ``f`` is ``names[name_off[f]:name_off[f+1]]``.
    kinds, slots, required : int64 (n_fields,)
        Per field: its kind (``KIND_*``), its row in ``num_out`` (numbers, bools) or in
        ``str_start``/``str_end`` (strings and the time field), and whether it is required.
    num_out : float64 (n_numeric, n)
        Filled with NaN by the caller; receives the numbers (bools as 1.0 / 0.0).
    str_start, str_end : int64 (n_strings, n)
        Filled with -1 by the caller; receive the byte span of each string's content (without
        quotes) in ``buf``; -1 stays for null or absent.
    time_ns : int64 (n,)
        Receives the time field in ns since the epoch UTC (``KIND_TIME``; int64 min for null).
    hard : int64 (n * n_numeric, 4)
        Receives ``(row, slot, start, end)`` of each number to be converted by the caller.
    status : uint8 (n,)
        Receives 0 for an event parsed here, 1 for one to be decoded by the general decoder.

    Returns
    -------
    int
        The number of rows used in ``hard``.

    Notes
    -----
    Fields are expected in the schema's order: the key after field ``f`` is first compared
    with the name of field ``f + 1`` (and its closing quote) in place, in words, and only
    when that fails scanned and looked up among all names.
    """
    n = len(offsets) - 1
    nf = len(kinds)
    nbuf = len(buf)
    bp = _data(buf)  # for the helpers, see _data
    # Each field's name and closing quote as little-endian words, with masks of the bytes
    # used in the last one (for comparing a key in place), and the count of required fields.
    n_words = np.zeros(nf, np.int64)
    for f in range(nf):
        n_words[f] = (name_off[f + 1] - name_off[f] + 8) // 8
    pat = np.zeros((nf, max(n_words.max() if nf else 0, 1)), np.uint64)
    msk = np.zeros_like(pat)
    n_required = 0
    for f in range(nf):
        a = name_off[f]
        length = name_off[f + 1] - a
        for j in range(length + 1):
            b = np.uint64(names[a + j] if j < length else 34)
            sh = np.uint64(8 * (j % 8))
            pat[f, j // 8] |= b << sh
            msk[f, j // 8] |= np.uint64(0xFF) << sh
        if required[f]:
            n_required += 1
    seen = np.zeros(nf, np.int64)  # the row (+ 1) where a field was last seen
    n_hard = 0
    for i in range(n):
        p = offsets[i]
        end = offsets[i + 1]
        h0 = n_hard
        row = i + 1
        n_req = 0
        ok = False
        guess = 0
        p = _skip_ws(bp, p, end)
        if p < end and bp[p] == 123:
            p = _skip_ws(bp, p + 1, end)
            if p < end and bp[p] == 125:
                p += 1
                ok = True
            while not ok:
                # key
                if p >= end or bp[p] != 34:
                    break
                ks = p + 1
                # Producers write the fields in one order: try the field after the last one
                # first, comparing its name and closing quote in place (names are plain ASCII,
                # see the caller), before scanning the key. Word by word, or near the end of
                # the buffer byte by byte.
                f = -1
                if guess < nf:
                    ke = ks + name_off[guess + 1] - name_off[guess]
                    if ke < end:
                        nw = n_words[guess]
                        if ks + 8 * nw <= nbuf:
                            f = guess
                            for k in range(nw):
                                if (
                                    (_load_u64(bp, ks + 8 * k) ^ pat[guess, k]) & msk[guess, k]
                                ) != 0:
                                    f = -1
                                    break
                        elif bp[ke] == 34:
                            f = guess
                            a = name_off[guess]
                            for j in range(ke - ks):
                                if names[a + j] != bp[ks + j]:
                                    f = -1
                                    break
                if f < 0:
                    ke = _string_end_w(bp, ks, end, nbuf)
                    if ke < 0:
                        break
                    f = _match(bp, ks, ke, names, name_off, guess)
                p = _skip_ws(bp, ke + 1, end)
                if p >= end or bp[p] != 58:
                    break
                p = _skip_ws(bp, p + 1, end)
                if p >= end:
                    break
                if f >= 0:
                    if seen[f] == row:
                        break  # duplicated key: the general decoder's rules
                    seen[f] = row
                    if required[f]:
                        n_req += 1
                    guess = f + 1 if f + 1 < nf else 0
                    kind = kinds[f]
                    slot = slots[f]
                else:
                    kind = -1
                    slot = -1
                c = bp[p]
                if c == 34:  # string
                    vs = p + 1
                    ve = _string_end_w(bp, vs, end, nbuf)
                    if ve < 0:
                        break
                    p = ve + 1
                    if kind == KIND_STRING:
                        str_start[slot, i] = vs
                        str_end[slot, i] = ve
                    elif kind == KIND_TIME:
                        good, t = _iso_ns(bp, vs, ve)
                        if not good:
                            break
                        str_start[slot, i] = vs
                        str_end[slot, i] = ve
                        time_ns[i] = t
                    elif kind >= 0:
                        break  # a string in a numeric or bool field
                elif c == 45 or 48 <= c <= 57:  # number
                    ns = p
                    state, p, v = _number_w(bp, p, end, nbuf)
                    if state < 0:
                        break
                    if kind == KIND_NUMBER:
                        if state == 0:
                            num_out[slot, i] = v
                        else:
                            hard[n_hard, 0] = i
                            hard[n_hard, 1] = slot
                            hard[n_hard, 2] = ns
                            hard[n_hard, 3] = p
                            n_hard += 1
                    elif kind >= 0:
                        break  # a number in a string, time or bool field
                elif c == 110:  # null
                    if end - p < 4 or bp[p + 1] != 117 or bp[p + 2] != 108 or bp[p + 3] != 108:
                        break
                    p += 4
                    if kind >= 0:
                        if required[f]:
                            break
                        if kind == KIND_TIME:
                            time_ns[i] = _NAT
                elif c == 116 or c == 102:  # true / false
                    if c == 116:
                        if end - p < 4 or bp[p + 1] != 114 or bp[p + 2] != 117 or bp[p + 3] != 101:
                            break
                        p += 4
                        bv = 1.0
                    else:
                        if (
                            end - p < 5
                            or bp[p + 1] != 97
                            or bp[p + 2] != 108
                            or bp[p + 3] != 115
                            or bp[p + 4] != 101
                        ):
                            break
                        p += 5
                        bv = 0.0
                    if kind == KIND_BOOL:
                        num_out[slot, i] = bv
                    elif kind >= 0:
                        break
                else:
                    break  # an object or array (or not JSON)
                p = _skip_ws(bp, p, end)
                if p >= end:
                    break
                if bp[p] == 44:
                    p = _skip_ws(bp, p + 1, end)
                    continue
                if bp[p] == 125:
                    p += 1
                    ok = True
                    break
                break
        if ok:
            p = _skip_ws(bp, p, end)
            # and every required field seen (once: a duplicated key ends the row above)
            if p != end or n_req != n_required:
                ok = False
        if ok:
            status[i] = 0
        else:
            status[i] = 1
            n_hard = h0  # forget this row's hard numbers
    return n_hard


@njit(cache=True, nogil=True)
def join_spans(
    buf: np.ndarray, start: np.ndarray, end: np.ndarray, rows: np.ndarray
) -> np.ndarray:  # pragma: no cover - numba
    """``buf[start[r]:end[r]]`` for each ``r`` in ``rows`` joined by ``\\n`` (an empty piece
    where ``start[r] < 0``).

    Parameters
    ----------
    buf : uint8 (total,)
    start, end : int64 (n,)
    rows : int64 (m,)

    Returns
    -------
    numpy.ndarray
        uint8 ``(sum of lengths + m - 1,)``.
    """
    total = 0
    for r in rows:
        if start[r] >= 0:
            total += end[r] - start[r]
    m = len(rows)
    out = np.empty(total + max(m - 1, 0), np.uint8)
    q = 0
    for k in range(m):
        r = rows[k]
        if k:
            out[q] = 10
            q += 1
        s = start[r]
        if s >= 0:
            for j in range(s, end[r]):
                out[q] = buf[j]
                q += 1
    return out


@njit(cache=True, nogil=True)
def join_hard(buf: np.ndarray, hard: np.ndarray, n_hard: int) -> np.ndarray:  # pragma: no cover
    """The texts of the first ``n_hard`` hard numbers as one JSON array (``[a,b,...]``)."""
    total = 2
    for k in range(n_hard):
        total += hard[k, 3] - hard[k, 2] + 1
    out = np.empty(total - (1 if n_hard else 0), np.uint8)
    out[0] = 91
    q = 1
    for k in range(n_hard):
        if k:
            out[q] = 44
            q += 1
        for j in range(hard[k, 2], hard[k, 3]):
            out[q] = buf[j]
            q += 1
    out[q] = 93
    return out


@njit(cache=True, nogil=True)
def code_spans(
    buf: np.ndarray, start: np.ndarray, end: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Dictionary-code the byte strings ``buf[start[r]:end[r]]`` for ``r`` in ``rows``
    (an open-addressing hash table, FNV-1a, grown at half load).

    Parameters
    ----------
    buf : uint8 (total,)
    start, end : int64 (n,)
        ``start[r] < 0`` means null.
    rows : int64 (m,)

    Returns
    -------
    codes : int64 (m,)
        Index of each string among the distinct ones in order of first appearance; -1 for
        null (``pandas.factorize``'s convention).
    first_start, first_end : int64 (k,)
        The span of each distinct string's first occurrence.
    """
    m = len(rows)
    codes = np.empty(m, np.int64)
    size = 256
    table = np.full(size, -1, np.int64)  # slot -> code
    hashes = np.empty(16, np.uint64)
    ustart = np.empty(16, np.int64)
    uend = np.empty(16, np.int64)
    k = 0
    for t in range(m):
        r = rows[t]
        s = start[r]
        if s < 0:
            codes[t] = -1
            continue
        e = end[r]
        h = np.uint64(14695981039346656037)
        for j in range(s, e):
            h = (h ^ np.uint64(buf[j])) * np.uint64(1099511628211)
        mask = size - 1
        slot = np.int64(h & np.uint64(mask))
        code = -1
        while True:
            c = table[slot]
            if c < 0:
                break
            if hashes[c] == h and uend[c] - ustart[c] == e - s:
                same = True
                a = ustart[c]
                for j in range(e - s):
                    if buf[a + j] != buf[s + j]:
                        same = False
                        break
                if same:
                    code = c
                    break
            slot = (slot + 1) & mask
        if code < 0:
            if k == len(hashes):  # grow the distinct-value arrays
                hashes = np.concatenate((hashes, np.empty(k, np.uint64)))
                ustart = np.concatenate((ustart, np.empty(k, np.int64)))
                uend = np.concatenate((uend, np.empty(k, np.int64)))
            code = k
            hashes[k] = h
            ustart[k] = s
            uend[k] = e
            k += 1
            table[slot] = code
            if 2 * k > size:  # rehash into a table twice the size
                size *= 2
                mask = size - 1
                table = np.full(size, -1, np.int64)
                for c2 in range(k):
                    sl = np.int64(hashes[c2] & np.uint64(mask))
                    while table[sl] >= 0:
                        sl = (sl + 1) & mask
                    table[sl] = c2
        codes[t] = code
    return codes, ustart[:k].copy(), uend[:k].copy()


@njit(cache=True, nogil=True)
def json_string_array(
    buf: np.ndarray, start: np.ndarray, end: np.ndarray, rows: np.ndarray
) -> np.ndarray:  # pragma: no cover - numba
    """The strings ``buf[start[r]:end[r]]`` for ``r`` in ``rows`` as one JSON array
    (``["a","b",null]``; null where ``start[r] < 0``). The spans must hold JSON string
    content that needs no escaping, as :func:`parse_flat_objects` guarantees.

    Returns
    -------
    numpy.ndarray
        uint8, the JSON text.
    """
    m = len(rows)
    total = 2 + max(m - 1, 0)
    for r in rows:
        total += end[r] - start[r] + 2 if start[r] >= 0 else 4
    out = np.empty(total, np.uint8)
    out[0] = 91
    q = 1
    for k in range(m):
        r = rows[k]
        if k:
            out[q] = 44
            q += 1
        s = start[r]
        if s < 0:
            out[q] = 110
            out[q + 1] = 117
            out[q + 2] = 108
            out[q + 3] = 108
            q += 4
            continue
        out[q] = 34
        q += 1
        for j in range(s, end[r]):
            out[q] = buf[j]
            q += 1
        out[q] = 34
        q += 1
    out[q] = 93
    return out
