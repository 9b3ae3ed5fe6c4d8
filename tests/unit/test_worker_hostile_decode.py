"""Hostile event values: the decoder never raises, and every value is one row or one DLQ reason.

The documents are generated as JSON *text* (not through a JSON encoder), so they can nest
thousands of levels deep, repeat keys, carry numbers no double holds, megabyte-long strings
and bytes that are not UTF-8.
"""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import segstream.services.worker.decode as decode_mod
from segstream.services.worker.decode import DLQ_REASONS, EventDecoder
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
    "dep_delay": None,
    "temp": 60.1,
    "dewp": 50.0,
    "humid": 70.0,
    "wind_speed": 10.0,
    "precip": 0.0,
    "pressure": 1012.0,
    "visib": 10.0,
}
MAX_EVENT_BYTES = 65_536


@pytest.fixture(scope="module")
def decoder() -> EventDecoder:
    return EventDecoder(SCHEMA, max_event_bytes=MAX_EVENT_BYTES)


def _deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _doc(members: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(b'"' + k + b'":' + v for k, v in members) + b"}"


def _good_members() -> list[tuple[bytes, bytes]]:
    return [(k.encode(), orjson.dumps(v)) for k, v in GOOD.items()]


# ------------------------------------------------------------------------- strategies
def _finite(v: object) -> object:
    """``v`` with non-finite floats as None (JSON has no NaN; orjson writes null too)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _json_text(v: object) -> bytes:
    """JSON text of any drawn value, integers beyond 64 bits included (orjson cannot encode
    them; the standard library writes their digits), so no drawn case becomes ``null``."""
    return json.dumps(_finite(v), ensure_ascii=False, separators=(",", ":")).encode()


deep_values = st.builds(_deep, st.integers(1, 4000), st.sampled_from(["array", "object"]))
huge_numbers = st.one_of(
    st.sampled_from(
        [
            b"1e400",
            b"-1e400",
            b"1E-400",
            b"18446744073709551616",
            b"-9223372036854775809",
            b"123456789012345678901234567890",
            b"0.000000000000000000000000000000000000000000000001",
            b"-0",
            b"1.7976931348623157e309",
            b"4.9e-325",
        ]
    ),
    st.integers(1, 3000).map(lambda k: b"1" + b"0" * k),
    st.integers(1, 3000).map(lambda k: b"0." + b"0" * k + b"1"),
    st.integers(-(10**60), 10**60).map(lambda i: str(i).encode()),
)
long_strings = st.one_of(
    st.integers(0, 40_000).map(lambda k: b'"' + b"x" * k + b'"'),
    st.text(max_size=200).map(orjson.dumps),
    st.sampled_from(
        [
            b'"\\ud800"',
            b'"\xff\xfe"',
            b'"\xc3"',
            b'"a\\u0000b"',
            b'"\\"',
            b'"\x01"',
            b'"\\uZZZZ"',
            b'"2013-09-01T06:00:00-04:00\\u0000"',
        ]
    ),
)
plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=6,
).map(_json_text)
hostile_values = st.one_of(deep_values, huge_numbers, long_strings, plain_values)
field_names = st.sampled_from([k.encode() for k in GOOD])
unknown_names = st.one_of(
    st.sampled_from([b"junk", b"a", b"", b"event_id ", b"\\u0065vent_id"]),
    st.text(max_size=20).map(lambda t: orjson.dumps(t)[1:-1]),
)


@st.composite
def hostile_documents(draw: st.DrawFn) -> bytes:
    """A flights event (or what is left of it) after a few hostile edits."""
    members = _good_members() if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["replace", "unknown", "duplicate", "delete", "shuffle"]))
        if op == "replace" and members:
            i = draw(st.integers(0, len(members) - 1))
            members[i] = (members[i][0], draw(hostile_values))
        elif op == "unknown":
            at = draw(st.integers(0, len(members)))
            members.insert(at, (draw(unknown_names), draw(hostile_values)))
        elif op == "duplicate":
            at = draw(st.integers(0, len(members)))
            value = draw(
                st.one_of(hostile_values, st.sampled_from([orjson.dumps(v) for v in GOOD.values()]))
            )
            members.insert(at, (draw(field_names), value))
        elif op == "delete" and members:
            members.pop(draw(st.integers(0, len(members) - 1)))
        elif op == "shuffle":
            members = draw(st.permutations(members))
    text = _doc(members)
    if draw(st.booleans()):  # whitespace around the tokens
        text = text.replace(b",", b" ,\n ").replace(b":", b"\t: ")
    return text


batches = st.lists(
    st.one_of(hostile_documents(), st.binary(max_size=200), st.none(), st.just(orjson.dumps(GOOD))),
    max_size=8,
)


# ------------------------------------------------------------------------- checks
def _outcomes(out, n: int) -> list[tuple[str, object]]:
    """Per input: ("row", its column values) or ("dlq", reason); exactly one each."""
    rejected = [i for i, _, _ in out.rejected]
    assert sorted(rejected + out.valid.tolist()) == list(range(n)), "not one outcome each"
    assert len(set(rejected)) == len(rejected)
    assert all(r in DLQ_REASONS for _, r, _ in out.rejected)
    for col in out.columns.values():
        assert len(col) == out.n_valid
    assert len(out.event_time_text) == out.n_valid
    result: list[tuple[str, object]] = [("", None)] * n
    for i, r, _ in out.rejected:
        result[i] = ("dlq", r)
    names = sorted(out.columns)
    for row, i in enumerate(out.valid.tolist()):
        vals = []
        for name in names:
            v = out.columns[name][row]
            vals.append("nan" if isinstance(v, float) and np.isnan(v) else str(v))
        result[i] = ("row", (tuple(vals), out.event_time_text[row]))
    return result


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batches)
def test_hostile_documents_are_each_one_row_or_one_dlq_record(
    decoder: EventDecoder, values: list
) -> None:
    out = decoder.decode(values)  # never raises
    together = _outcomes(out, len(values))
    # Each value's outcome is its own: decoding it alone gives the same.
    for i, v in enumerate(values):
        assert _outcomes(decoder.decode([v]), 1)[0] == together[i], v[:200] if v else v


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=400)), max_size=12))
def test_arbitrary_bytes_are_each_one_row_or_one_dlq_record(
    decoder: EventDecoder, values: list
) -> None:
    _outcomes(decoder.decode(values), len(values))


@pytest.mark.parametrize("depth", [1100, 3000, 6000])
@pytest.mark.parametrize("kind", ["junk_array", "junk_object", "top_object", "field_array"])
def test_deep_nesting_is_invalid_json_and_the_batch_is_decoded(
    decoder: EventDecoder, depth: int, kind: str
) -> None:
    """The 6 KB ``{"junk": [[[[...]]]]}`` of the issue made msgspec raise RecursionError out
    of ``decode``; now it is that value's ``invalid_json`` and its neighbours are scored."""
    if kind == "junk_array":
        bad = _doc([*_good_members(), (b"junk", _deep(depth, "array"))])
    elif kind == "junk_object":
        bad = _doc([(b"junk", _deep(depth, "object")), *_good_members()])
    elif kind == "top_object":
        bad = _deep(depth, "object")
    else:
        bad = _doc(
            [(k, _deep(depth, "array") if k == b"carrier" else v) for k, v in _good_members()]
        )
    good = orjson.dumps({**GOOD, "event_id": "next"})
    for batch in ([bad], [good, bad, good], [None, bad, good]):
        out = decoder.decode(batch)
        i = batch.index(bad)
        assert [(j, r) for j, r, _ in out.rejected if j == i] == [(i, "invalid_json")]
        assert out.n_valid == batch.count(good)


def test_deep_nesting_within_orjsons_limit_in_an_extra_field_is_ignored(
    decoder: EventDecoder,
) -> None:
    """900 levels (msgspec may refuse them for the recursion limit; orjson takes them): an
    extra field's value is skipped, the event is scored, on either path."""
    value = _doc([*_good_members(), (b"junk", _deep(900, "array"))])
    out = decoder.decode([value, orjson.dumps(GOOD)])
    assert out.n_valid == 2 and out.rejected == []


class Boom(Exception):
    pass


def test_any_exception_while_decoding_is_that_values_undecodable_record(
    decoder: EventDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoding bug triggered by one value (here: time parsing raising an exception of a
    type nobody catches) rejects that value alone, naming the exception type."""
    poison = "2013-09-01T06:00:00.5-04:00"  # not the flat path's fixed form: parsed by pandas
    real = decode_mod._pandas_times

    def parse(strings: list[str]) -> np.ndarray:
        if poison in strings:
            raise Boom("time parser bug")
        return real(strings)

    monkeypatch.setattr(decode_mod, "_pandas_times", parse)
    values = [
        orjson.dumps({**GOOD, "event_id": "a"}),
        orjson.dumps({**GOOD, "event_id": "b", "event_time": poison}),
        b"[1]",
        orjson.dumps({**GOOD, "event_id": "c", "carrier": "\u00e9"}),
        None,
    ]
    out = decoder.decode(values)
    assert [(i, r) for i, r, _ in out.rejected] == [
        (1, "undecodable"),
        (2, "not_object"),
        (4, "empty"),
    ]
    assert out.rejected[0][2] == "Boom: time parser bug"
    assert out.columns["event_id"].tolist() == ["a", "c"]
    assert out.columns["carrier"].tolist() == ["UA", "\u00e9"]
    assert out.event_time_text == [GOOD["event_time"]] * 2
    assert not out.columns["event_id"].flags.writeable


def test_a_kernel_failure_on_every_value_rejects_every_value(
    decoder: EventDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> int:
        raise MemoryError("kernel")

    monkeypatch.setattr(decode_mod, "parse_flat_objects", broken)
    out = decoder.decode([orjson.dumps(GOOD)] * 3)
    assert out.n_valid == 0
    assert [(i, r) for i, r, _ in out.rejected] == [
        (0, "undecodable"),
        (1, "undecodable"),
        (2, "undecodable"),
    ]
    assert out.rejected[0][2] == "MemoryError: kernel"
    assert set(out.columns) == {f.name for f in SCHEMA.event_fields}
    assert out.columns["event_time"].dtype == np.dtype("datetime64[ns]")
