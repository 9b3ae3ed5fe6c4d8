"""numba kernels of the flat-event fast path of :mod:`services.worker.decode`.

:func:`parse_flat_objects` reads a micro-batch of JSON event values, concatenated into one
byte buffer, in one GIL-free pass: per event, the numbers of the schema's numeric and bool
fields, the byte spans of its string fields and the time field as nanoseconds since the epoch.
It accepts only the plain form that producers write (an object of scalar values; ASCII strings
without escapes; numbers in JSON grammar; the time field in the fixed ISO 8601 forms of
:func:`services.worker.decode._fast_iso`) and sends every other event back to the general
decoder (``status`` 1), which decides what it is. So this path changes speed, never outcomes:
an event it accepts decodes to the same values as through msgspec.

Numbers are converted exactly where the conversion is one correctly rounded IEEE operation
(Clinger's fast path: an integer mantissa below 2**53 times or divided by an exact power of ten
up to 1e22). Other numbers (17 significant digits, large exponents, ``-0``) are reported as
*hard* byte spans that the caller converts with msgspec, the general decoder's own parser.

References
----------
W. D. Clinger, "How to read floating point numbers accurately", PLDI 1990.
H. Hinnant, "chrono-Compatible Low-Level Date Algorithms" (``days_from_civil``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Field kinds of :func:`parse_flat_objects`.
KIND_NUMBER, KIND_BOOL, KIND_STRING, KIND_TIME = 0, 1, 2, 3

_POW10 = np.array([10.0 ** k for k in range(23)], dtype=np.float64)
_TWO53 = 1 << 53
_NAT = np.iinfo(np.int64).min


@njit(cache=True, nogil=True, inline="always")
def _ws(buf: np.ndarray, p: int, end: int) -> int:  # pragma: no cover - numba
    while p < end:
        c = buf[p]
        if c != 32 and c != 10 and c != 13 and c != 9:
            break
        p += 1
    return p


@njit(cache=True, nogil=True, inline="always")
def _string_end(buf: np.ndarray, p: int, end: int) -> int:  # pragma: no cover - numba
    """Index of the closing quote of a plain string starting at ``p`` (after its opening
    quote), or -1 when it has an escape, a control or non-ASCII byte, or no end."""
    while p < end:
        c = buf[p]
        if c == 34:
            return p
        if c == 92 or c < 32 or c >= 128:
            return -1
        p += 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _days_in_month(y: int, m: int) -> int:  # pragma: no cover - numba
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return 29 if leap else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


@njit(cache=True, nogil=True, inline="always")
def _digits(buf: np.ndarray, s: int, k: int) -> int:  # pragma: no cover - numba
    """The value of the ``k`` ASCII digits at ``s``, or -1."""
    v = 0
    for j in range(s, s + k):
        d = buf[j] - 48
        if d < 0 or d > 9:
            return -1
        v = v * 10 + d
    return v


@njit(cache=True, nogil=True, inline="always")
def _iso_ns(buf: np.ndarray, s: int, e: int) -> tuple[bool, int]:  # pragma: no cover - numba
    """``YYYY-MM-DD[T ]HH:MM:SS`` [``Z`` | ``±HH:MM``] at ``buf[s:e]`` to ns since the epoch
    (UTC; no offset means UTC), the forms and bounds of ``decode._fast_iso``."""
    w = e - s
    if w != 19 and w != 20 and w != 25:
        return False, 0
    if buf[s + 4] != 45 or buf[s + 7] != 45 or buf[s + 13] != 58 or buf[s + 16] != 58:
        return False, 0
    if buf[s + 10] != 84 and buf[s + 10] != 32:
        return False, 0
    year = _digits(buf, s, 4)
    month = _digits(buf, s + 5, 2)
    day = _digits(buf, s + 8, 2)
    hh = _digits(buf, s + 11, 2)
    mm = _digits(buf, s + 14, 2)
    ss = _digits(buf, s + 17, 2)
    if year < 1678 or year > 2261 or month < 1 or month > 12 or day < 1 or hh < 0 \
            or hh > 23 or mm < 0 or mm > 59 or ss < 0 or ss > 59:
        return False, 0
    if day > _days_in_month(year, month):
        return False, 0
    off = 0
    if w == 20:
        if buf[s + 19] != 90:
            return False, 0
    elif w == 25:
        sign = buf[s + 19]
        if (sign != 43 and sign != 45) or buf[s + 22] != 58:
            return False, 0
        oh = _digits(buf, s + 20, 2)
        om = _digits(buf, s + 23, 2)
        if oh < 0 or oh > 23 or om < 0 or om > 59:
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
def _number(buf: np.ndarray, p: int, end: int,
            pow10: np.ndarray) -> tuple[int, int, float]:  # pragma: no cover - numba
    """Parse a JSON number at ``p``. Returns ``(state, next p, value)``: state 0 exact value,
    1 valid but hard (convert the text elsewhere), -1 not a JSON number."""
    neg = False
    if p < end and buf[p] == 45:
        neg = True
        p += 1
    if p >= end:
        return -1, p, 0.0
    c = buf[p]
    mant = 0
    nd = 0  # significant digits in mant
    exp10 = 0
    if c == 48:
        p += 1
        if p < end and 48 <= buf[p] <= 57:
            return -1, p, 0.0  # leading zero
    elif 49 <= c <= 57:
        while p < end and 48 <= buf[p] <= 57:
            if nd < 18:  # 18 digits fit in int64
                mant = mant * 10 + (buf[p] - 48)
                nd += 1
            else:
                nd += 1
                exp10 += 1
            p += 1
    else:
        return -1, p, 0.0
    is_int = True
    if p < end and buf[p] == 46:
        is_int = False
        p += 1
        if p >= end or not 48 <= buf[p] <= 57:
            return -1, p, 0.0
        while p < end and 48 <= buf[p] <= 57:
            d = buf[p] - 48
            if nd < 18:
                if mant != 0 or d != 0:
                    mant = mant * 10 + d
                    nd += 1
                exp10 -= 1
            else:
                nd += 1
            p += 1
    if p < end and (buf[p] == 101 or buf[p] == 69):
        is_int = False
        p += 1
        eneg = False
        if p < end and (buf[p] == 43 or buf[p] == 45):
            eneg = buf[p] == 45
            p += 1
        if p >= end or not 48 <= buf[p] <= 57:
            return -1, p, 0.0
        ev = 0
        while p < end and 48 <= buf[p] <= 57:
            if ev < 100_000:
                ev = ev * 10 + (buf[p] - 48)
            p += 1
        exp10 += -ev if eneg else ev
    if nd > 18 or mant >= _TWO53 or (mant == 0 and neg):
        return 1, p, 0.0
    v = float(mant)
    if mant == 0:
        return 0, p, 0.0
    if is_int and exp10 == 0:
        return 0, p, -v if neg else v
    if exp10 > 22 or exp10 < -22:
        return 1, p, 0.0
    if exp10 >= 0:
        v = v * pow10[exp10]
    else:
        v = v / pow10[-exp10]
    return 0, p, -v if neg else v


@njit(cache=True, nogil=True, inline="always")
def _match(buf: np.ndarray, ks: int, ke: int, names: np.ndarray, name_off: np.ndarray,
           guess: int) -> int:  # pragma: no cover - numba
    """Index of the field named ``buf[ks:ke]`` (trying ``guess`` first), or -1."""
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
            if names[a + j] != buf[ks + j]:
                same = False
                break
        if same:
            return f
    return -1


@njit(cache=True, nogil=True)
def parse_flat_objects(buf: np.ndarray, offsets: np.ndarray, names: np.ndarray,
                       name_off: np.ndarray, kinds: np.ndarray, slots: np.ndarray,
                       required: np.ndarray, num_out: np.ndarray, str_start: np.ndarray,
                       str_end: np.ndarray, time_ns: np.ndarray, hard: np.ndarray,
                       status: np.ndarray) -> int:  # pragma: no cover - numba
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
    """
    n = len(offsets) - 1
    nf = len(kinds)
    seen = np.zeros(nf, np.uint8)
    n_hard = 0
    for i in range(n):
        p = offsets[i]
        end = offsets[i + 1]
        h0 = n_hard
        seen[:] = 0
        ok = False
        guess = 0
        p = _ws(buf, p, end)
        if p < end and buf[p] == 123:
            p = _ws(buf, p + 1, end)
            if p < end and buf[p] == 125:
                p += 1
                ok = True
            while not ok:
                # key
                if p >= end or buf[p] != 34:
                    break
                ks = p + 1
                # Producers write the fields in one order: try the field after the last one
                # first, comparing its name and closing quote in place (names are plain ASCII,
                # see the caller), before scanning the key.
                f = -1
                if guess < nf:
                    a = name_off[guess]
                    ke = ks + name_off[guess + 1] - a
                    if ke < end and buf[ke] == 34:
                        f = guess
                        for j in range(ke - ks):
                            if names[a + j] != buf[ks + j]:
                                f = -1
                                break
                if f < 0:
                    ke = _string_end(buf, ks, end)
                    if ke < 0:
                        break
                    f = _match(buf, ks, ke, names, name_off, guess)
                p = _ws(buf, ke + 1, end)
                if p >= end or buf[p] != 58:
                    break
                p = _ws(buf, p + 1, end)
                if p >= end:
                    break
                if f >= 0:
                    if seen[f]:
                        break  # duplicated key: the general decoder's rules
                    seen[f] = 1
                    guess = f + 1 if f + 1 < nf else 0
                    kind = kinds[f]
                    slot = slots[f]
                else:
                    kind = -1
                    slot = -1
                c = buf[p]
                if c == 34:  # string
                    vs = p + 1
                    ve = _string_end(buf, vs, end)
                    if ve < 0:
                        break
                    p = ve + 1
                    if kind == KIND_STRING:
                        str_start[slot, i] = vs
                        str_end[slot, i] = ve
                    elif kind == KIND_TIME:
                        good, t = _iso_ns(buf, vs, ve)
                        if not good:
                            break
                        str_start[slot, i] = vs
                        str_end[slot, i] = ve
                        time_ns[i] = t
                    elif kind >= 0:
                        break  # a string in a numeric or bool field
                elif c == 110:  # null
                    if end - p < 4 or buf[p + 1] != 117 or buf[p + 2] != 108 \
                            or buf[p + 3] != 108:
                        break
                    p += 4
                    if kind >= 0:
                        if required[f]:
                            break
                        if kind == KIND_TIME:
                            time_ns[i] = _NAT
                elif c == 116 or c == 102:  # true / false
                    if c == 116:
                        if end - p < 4 or buf[p + 1] != 114 or buf[p + 2] != 117 \
                                or buf[p + 3] != 101:
                            break
                        p += 4
                        bv = 1.0
                    else:
                        if end - p < 5 or buf[p + 1] != 97 or buf[p + 2] != 108 \
                                or buf[p + 3] != 115 or buf[p + 4] != 101:
                            break
                        p += 5
                        bv = 0.0
                    if kind == KIND_BOOL:
                        num_out[slot, i] = bv
                    elif kind >= 0:
                        break
                elif c == 45 or 48 <= c <= 57:  # number
                    ns = p
                    state, p, v = _number(buf, p, end, _POW10)
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
                else:
                    break  # an object or array (or not JSON)
                p = _ws(buf, p, end)
                if p >= end:
                    break
                if buf[p] == 44:
                    p = _ws(buf, p + 1, end)
                    continue
                if buf[p] == 125:
                    p += 1
                    ok = True
                    break
                break
        if ok:
            p = _ws(buf, p, end)
            if p != end:
                ok = False
        if ok:
            for f in range(nf):
                if required[f] and not seen[f]:
                    ok = False
                    break
        if ok:
            status[i] = 0
        else:
            status[i] = 1
            n_hard = h0  # forget this row's hard numbers
    return n_hard


@njit(cache=True, nogil=True)
def join_spans(buf: np.ndarray, start: np.ndarray, end: np.ndarray,
               rows: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
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
def code_spans(buf: np.ndarray, start: np.ndarray, end: np.ndarray,
               rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
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
def json_string_array(buf: np.ndarray, start: np.ndarray, end: np.ndarray,
                      rows: np.ndarray) -> np.ndarray:  # pragma: no cover - numba
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
