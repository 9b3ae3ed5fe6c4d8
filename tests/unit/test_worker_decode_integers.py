"""What an ``int`` field (flights: ``day_of_week``) and a ``float`` field do with each kind of
JSON number, on every decoding path (flat kernel, msgspec struct path, orjson slow path).

The rule (``services/worker/decode.py``, ``docs/dlq.md``): numbers are read as float64; an
``int`` field takes a number whose value is an integer of magnitude below 2**53, in any
notation; anything else in an ``int`` field is a ``wrong_type`` DLQ record whose detail names
the field. A ``float`` field takes any number in float64's range.
"""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstream.services.worker.decode import EventDecoder
from segstream.shared.settings import load_settings
from tests.conftest import FLIGHTS_CONFIG

SCHEMA = load_settings(FLIGHTS_CONFIG).event_schema
GOOD = {
    "event_id": "20130901-UA1-EWR-0600",
    "event_time": "2013-09-01T06:00:00-04:00",
    "carrier": "UA",
    "origin": "EWR",
    "dest": "IAH",
    "distance": 1400.0,
    "sched_dep_hour": 6.0,
    "day_of_week": 6,
    "temp": 60.1,
}
LIMIT = 2**53


@pytest.fixture(scope="module")
def decoder() -> EventDecoder:
    return EventDecoder(SCHEMA, max_event_bytes=65_536)


def _with(field: str, literal: str) -> bytes:
    """The good event with ``field`` written as the JSON number text ``literal``."""
    doc = {k: v for k, v in GOOD.items() if k != field}
    return orjson.dumps(doc)[:-1] + f',"{field}":{literal}}}'.encode()


def _paths(decoder: EventDecoder, value: bytes) -> dict[str, tuple]:
    """The outcome of ``value`` on each path: ``("row", column value)`` or ``("dlq", reason,
    detail)``. A batch of non-empty values takes the flat kernel; ``_decode_structs`` is the
    msgspec path; ``_decode_slow`` the orjson one."""
    out = {}
    for name, fn in (
        ("flat", decoder.decode),
        ("struct", decoder._decode_structs),
        ("slow", decoder._decode_slow),
    ):
        b = fn([value])
        if b.rejected:
            (_, reason, detail) = b.rejected[0]
            out[name] = ("dlq", reason, detail)
        else:
            out[name] = ("row", b.columns)
    return out


ACCEPTED_IN_INT = [
    ("6", 6.0),
    ("6.0", 6.0),
    ("1e2", 100.0),
    ("1E+2", 100.0),
    ("600e-2", 6.0),
    ("-0", 0.0),
    ("-0.0", 0.0),
    ("-7", -7.0),
    (str(LIMIT - 1), float(LIMIT - 1)),
    (str(-(LIMIT - 1)), float(-(LIMIT - 1))),
]
REJECTED_IN_INT = [
    "6.5",
    "-0.5",
    "1e-1",
    "1e30",
    "-1e30",
    str(LIMIT),  # 2**53: exact, but the bound
    str(LIMIT + 1),  # rounds to 2**53 in float64
    str(2**63),  # beyond int64
    str(-(2**63) - 1),
    str(2**64),
    str(2**70),
    "123456789012345678901234567890",
]


@pytest.mark.parametrize(("literal", "value"), ACCEPTED_IN_INT)
def test_integral_numbers_in_an_int_field_are_accepted_on_every_path(
    decoder: EventDecoder, literal: str, value: float
) -> None:
    for path, got in _paths(decoder, _with("day_of_week", literal)).items():
        assert got[0] == "row", (path, got)
        col = got[1]["day_of_week"]
        assert col.dtype == np.float64
        # -0 is stored as 0: the sign bit is the value's
        assert col[0] == value and np.signbit(col[0]) == (value < 0), (path, col[0])


@pytest.mark.parametrize("literal", REJECTED_IN_INT)
def test_non_integral_or_out_of_range_numbers_in_an_int_field_are_wrong_type(
    decoder: EventDecoder, literal: str
) -> None:
    for path, got in _paths(decoder, _with("day_of_week", literal)).items():
        assert got[0] == "dlq" and got[1] == "wrong_type", (path, got)
        assert got[2].startswith("day_of_week: "), got[2]
        assert "not an integer" in got[2]


@pytest.mark.parametrize(
    "literal", ["6.5", "1e30", "-0", "1e2", str(2**64), str(2**70), "1e308", "-1e-300"]
)
def test_any_number_in_float64_range_is_accepted_in_a_float_field(
    decoder: EventDecoder, literal: str
) -> None:
    # The reference: the standard library's parse (an integer literal is an exact int, so
    # "-0" is 0), then Python's correctly rounded conversion to float.
    want = float(json.loads(literal))
    for path, got in _paths(decoder, _with("distance", literal)).items():
        assert got[0] == "row", (path, got)
        got_v = got[1]["distance"][0]
        assert got_v == want and np.signbit(got_v) == (math.copysign(1, want) < 0), (path, got_v)


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "1" + "0" * 400])
def test_numbers_beyond_float64_are_invalid_json_in_any_field(
    decoder: EventDecoder, literal: str
) -> None:
    for field in ("distance", "day_of_week"):
        for path, got in _paths(decoder, _with(field, literal)).items():
            assert got[:2] == ("dlq", "invalid_json"), (field, path, got)


def test_one_bad_integer_rejects_only_its_event(decoder: EventDecoder) -> None:
    values = [_with("day_of_week", x) for x in ("1", "6.5", "2", "1e30", "3")]
    out = decoder.decode(values)
    assert out.valid.tolist() == [0, 2, 4]
    assert [(i, r) for i, r, _ in out.rejected] == [(1, "wrong_type"), (3, "wrong_type")]
    assert out.columns["day_of_week"].tolist() == [1.0, 2.0, 3.0]
    assert out.event_time_text == [GOOD["event_time"]] * 3


def _expected(value: int | float) -> str | float:
    """The rule, from the Python number the literal denotes (exact integers for int literals):
    the float64 value when it is an integer below 2**53 in magnitude, else ``wrong_type``."""
    f = float(value)  # correctly rounded, like every decoding path
    if math.isfinite(f) and f == math.floor(f) and abs(f) < LIMIT:
        return f + 0.0
    return "wrong_type"


# Integers across all the interesting ranges (around 2**53, int64 and uint64 and beyond) and
# floats of every magnitude: each literal reaches the decoder as drawn (json writes integers
# of any length; no stand-in for what orjson cannot encode).
_numbers = st.one_of(
    st.integers(-(2**80), 2**80),
    st.integers(LIMIT - 3, LIMIT + 3),
    st.integers(-(LIMIT + 3), -(LIMIT - 3)),
    st.integers(2**63 - 2, 2**64 + 2),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e6, max_value=1e6).map(round).map(float),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_numbers, min_size=1, max_size=8))
def test_int_field_rule_holds_for_any_number_on_every_path(
    decoder: EventDecoder, numbers: list
) -> None:
    values = [_with("day_of_week", json.dumps(x)) for x in numbers]
    want = [_expected(x) for x in numbers]
    for fn in (decoder.decode, decoder._decode_structs, decoder._decode_slow):
        out = fn(values)
        got: list[str | float] = ["?"] * len(values)
        for i, r, detail in out.rejected:
            got[i] = r
            assert detail.startswith("day_of_week: ")
        for row, i in enumerate(out.valid.tolist()):
            got[i] = float(out.columns["day_of_week"][row])
        assert got == want, (fn.__name__, numbers)
