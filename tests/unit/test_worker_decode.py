"""Decoding and validation of event values (no broker)."""

from __future__ import annotations

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.simulator.replay import MALFORMED_KINDS, malformed_event
from services.worker.decode import DLQ_REASONS, EventDecoder, _parse_times
from services.worker.records import (
    _element_seps,
    _encode_structs,
    _json_array_seps,
    _write_records,
    encode_predictions,
    warm_up_records,
)
from shared.settings import load_settings
from tests.conftest import FLIGHTS_CONFIG
from tests.fakes import load_fake_bundle, write_fake_bundle

SCHEMA = load_settings(FLIGHTS_CONFIG).event_schema
GOOD = {
    "event_id": "20130901-UA1-EWR-0600", "event_time": "2013-09-01T06:00:00-04:00",
    "carrier": "UA", "origin": "EWR", "dest": "IAH", "distance": 1400.0,
    "sched_dep_hour": 6.0, "day_of_week": 6, "dep_delay": None, "temp": 60.1, "dewp": 50.0,
    "humid": 70.0, "wind_speed": 10.0, "precip": 0.0, "pressure": 1012.0, "visib": 10.0,
}


def _event(**changes: object) -> bytes:
    d = dict(GOOD)
    for k, v in changes.items():
        if v is KeyError:
            d.pop(k)
        else:
            d[k] = v
    return orjson.dumps(d)


@pytest.fixture(scope="module")
def decoder() -> EventDecoder:
    return EventDecoder(SCHEMA, max_event_bytes=4096)


def _check_total(out, n: int) -> None:
    """Every input is exactly one of: a valid row, a DLQ reason."""
    rejected = [i for i, _, _ in out.rejected]
    assert sorted(rejected + out.valid.tolist()) == list(range(n))
    assert all(r in DLQ_REASONS for _, r, _ in out.rejected)
    for col in out.columns.values():
        assert len(col) == out.n_valid
    assert len(out.event_time_text) == out.n_valid


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=20))
def test_arbitrary_bytes_never_raise(decoder: EventDecoder, values: list) -> None:
    out = decoder.decode(values)
    _check_total(out, len(values))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {}, optional={k: json_values for k in GOOD}), max_size=6), st.data())
def test_arbitrary_objects_never_raise(decoder: EventDecoder, docs: list, data) -> None:
    merged = []
    for d in docs:
        base = dict(GOOD) if data.draw(st.booleans()) else {}
        base.update(d)
        try:
            merged.append(orjson.dumps(base))
        except (TypeError, orjson.JSONEncodeError):
            merged.append(b"{}")
    out = decoder.decode(merged)
    _check_total(out, len(merged))


@pytest.mark.parametrize(("value", "reason"), [
    (b"", "empty"),
    (None, "empty"),
    (b"x" * 5000, "too_large"),
    (b'{"event_id": "a", ', "invalid_json"),
    (b"\xff\xfe garbage \x00", "invalid_json"),
    (b'{"distance": NaN}', "invalid_json"),
    (b'{"distance": Infinity}', "invalid_json"),
    (b"[" * 2000, "invalid_json"),
    (b"[1, 2]", "not_object"),
    (b'"just a string"', "not_object"),
    (b"42", "not_object"),
    (b"null", "not_object"),
    (_event(carrier=KeyError), "missing_field"),
    (_event(event_id=None), "missing_field"),
    (_event(distance="NaN"), "wrong_type"),
    (_event(distance="inf"), "wrong_type"),
    (_event(distance=True), "wrong_type"),
    (_event(distance={"not": "a number"}), "wrong_type"),
    (_event(carrier=7), "wrong_type"),
    (_event(event_time=1378000000), "wrong_type"),
    (_event(event_time="yesterday"), "bad_time"),
    (_event(event_time="2013-02-30T00:00:00+00:00"), "bad_time"),
    (_event(event_time="9999-01-01T00:00:00+00:00"), "bad_time"),
])
def test_bad_inputs_get_their_reason(decoder: EventDecoder, value: bytes | None,
                                     reason: str) -> None:
    out = decoder.decode([_event(), value, _event(event_id="other")])
    assert out.n_valid == 2
    assert [(i, r) for i, r, _ in out.rejected] == [(1, reason)]
    assert out.columns["event_id"].tolist() == [GOOD["event_id"], "other"]


def test_simulator_malformed_kinds_all_go_to_the_dlq(decoder: EventDecoder) -> None:
    rng = np.random.default_rng(0)
    good = _event()
    expected = {"invalid_json": "invalid_json", "wrong_type": "wrong_type",
                "missing_field": "missing_field", "huge_payload": "too_large",
                "not_object": "not_object", "empty": "empty", "garbage": "invalid_json"}
    for kind in MALFORMED_KINDS:
        _, v = malformed_event(good, b"k", kind, rng, SCHEMA, huge_bytes=10_000)
        out = decoder.decode([v])
        assert [r for _, r, _ in out.rejected] == [expected[kind]], kind


def test_valid_columns_have_the_scorer_dtypes(decoder: EventDecoder) -> None:
    out = decoder.decode([_event(), _event(temp=None, dep_delay=KeyError, extra="ignored"),
                          _event(event_time="2013-09-01T10:00:00Z")])
    assert out.rejected == []
    assert out.columns["distance"].dtype == np.float64
    assert out.columns["carrier"].dtype == object
    assert out.columns["event_time"].dtype == np.dtype("datetime64[ns]")
    assert np.isnan(out.columns["temp"][1]) and np.isnan(out.columns["dep_delay"][1])
    assert (out.columns["event_time"] == np.datetime64("2013-09-01T10:00:00", "ns")).all()
    assert out.event_time_text[0] == GOOD["event_time"]


def test_duplicated_event_ids_are_each_scored(decoder: EventDecoder) -> None:
    out = decoder.decode([_event(), _event()])
    assert out.n_valid == 2 and out.rejected == []


def test_10mb_value_is_rejected_without_parsing(decoder: EventDecoder) -> None:
    out = decoder.decode([b"{" * 10_000_000])
    assert [r for _, r, _ in out.rejected] == ["too_large"]


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=__import__("datetime").datetime(1700, 1, 1),
                    max_value=__import__("datetime").datetime(2200, 1, 1)),
       st.integers(-14 * 60, 14 * 60))
def test_fast_time_parser_matches_pandas(t, offset_min: int) -> None:
    import datetime as dt

    import pandas as pd

    tz = dt.timezone(dt.timedelta(minutes=offset_min))
    s = t.replace(microsecond=0, tzinfo=tz).isoformat()
    got = _parse_times([s, s[:19], s[:19] + "Z"])
    want = pd.to_datetime([s, s[:19], s[:19] + "Z"], utc=True, format="ISO8601")
    assert got.tolist() == want.tz_convert(None).as_unit("ns").to_numpy().tolist()


def test_scoring_the_decoded_batch_equals_the_scorers_score(tmp_path, decoder) -> None:
    scorer = load_fake_bundle(write_fake_bundle(tmp_path, SCHEMA))
    values = [_event(event_id=f"e{i}", distance=100.0 + i, carrier=c)
              for i, c in enumerate(["UA", "AA", "ZZ", "DL"])]
    out = decoder.decode(values)
    got = scorer.score(out.columns)
    direct = scorer.score({
        "distance": np.array([100.0, 101.0, 102.0, 103.0]),
        "sched_dep_hour": np.full(4, 6.0),
        "carrier": np.array(["UA", "AA", "ZZ", "DL"], dtype=object),
        "origin": np.array(["EWR"] * 4, dtype=object),
        "dest": np.array(["IAH"] * 4, dtype=object)})
    for k in ("prediction", "segment", "fallback_level", "interval_low"):
        np.testing.assert_array_equal(got[k], direct[k])
    recs = [orjson.loads(b) for b in encode_predictions(
        out.columns["event_id"].tolist(), got, out.event_time_text, model="flights",
        bundle_id=scorer.bundle_id, interval_mass=0.8, scored_at="2024-01-01T00:00:00Z",
        contribution_names=scorer.contribution_names)]
    assert [r["event_id"] for r in recs] == ["e0", "e1", "e2", "e3"]
    assert [r["prediction"] for r in recs] == got["prediction"].tolist()
    assert recs[2]["fallback_level"] == 1
    assert set(recs[0]) == {"event_id", "model", "bundle_id", "segment", "fallback_level",
                            "prediction", "interval", "interval_mass", "pattern",
                            "pattern_proba", "event_time", "scored_at", "contributions"}
    assert sum(recs[0]["contributions"].values()) == pytest.approx(recs[0]["prediction"])


def _dump(d: dict) -> bytes:
    try:
        return orjson.dumps(d)
    except (TypeError, orjson.JSONEncodeError):
        return b"{}"


def _same(a, b) -> None:
    assert a.valid.tolist() == b.valid.tolist()
    assert a.rejected == b.rejected
    assert a.event_time_text == b.event_time_text
    for k in a.columns:
        x, y = a.columns[k], b.columns[k]
        assert x.dtype == y.dtype, k
        if x.dtype.kind in "fM":
            np.testing.assert_array_equal(x, y)
        else:
            assert x.tolist() == y.tolist(), k


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.just(_event()),
    st.fixed_dictionaries({}, optional={k: json_values for k in GOOD}).map(
        lambda d: _dump({**GOOD, **d})),
    st.binary(max_size=60), st.none()), max_size=12))
def test_fast_path_equals_slow_path(decoder: EventDecoder, values: list) -> None:
    """The msgspec fast path changes speed, never outcomes: same rows, reasons, values."""
    _same(decoder.decode(values), decoder._decode_slow(values))


def test_fast_path_mixed_batch_keeps_input_order(decoder: EventDecoder) -> None:
    values = [_event(event_id="a"), b"[1]", _event(event_id="b", distance="far"),
              _event(event_id="c"), None, _event(event_id="d", event_time="yesterday")]
    out = decoder.decode(values)
    assert out.columns["event_id"].tolist() == ["a", "c"]
    assert out.valid.tolist() == [0, 3]
    assert [(i, r) for i, r, _ in out.rejected] == [
        (1, "not_object"), (2, "wrong_type"), (4, "empty"), (5, "bad_time")]
    _same(out, decoder._decode_slow(values))


# --------------------------------------------------------------------- prediction records
#: Strings that stress the encoders and the tokeniser: quotes, backslashes (also right before
#: a closing quote and across 8-byte words), newlines, control characters, multi-byte UTF-8.
NASTY_TEXT = ["", '"', "\\", '\\"', '"\\', "\\\\", "a\nb", "\r\n\t", "\x00\x01\x1f\x7f",
              "\u2028\u2029", "é", "ü" * 9, "日本語", "\U0001F600x", "\ufeff", ',"]}[{',
              "null", "1e16", "x" * 7 + '"', "x" * 8 + "\\", "y" * 15 + '\\"' + "z" * 9,
              "20130901-UA1545-EWR-0516", "2013-09-01T05:16:00-04:00"]
#: Floats whose spelling differs between encoders or that JSON cannot hold (null).
NASTY_FLOATS = [0.0, -0.0, 1e16, -1e16, 1e22, 5e-324, -5e-324, 1.7976931348623157e308,
                -1.7976931348623157e308, 2.2250738585072014e-308, 1e-7, 0.1, 123456.789,
                9007199254740993.0, float("nan"), float("inf"), float("-inf")]
texts = st.one_of(st.text(), st.sampled_from(NASTY_TEXT))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.sampled_from([f for f in NASTY_FLOATS if np.isfinite(f)]), texts)


def _scores(x: np.ndarray, seg: np.ndarray) -> dict[str, np.ndarray]:
    n = len(x)
    return {"segment": seg, "fallback_level": (seg % 4).astype(np.int8), "prediction": x,
            "interval_low": x - 1, "interval_high": x + 1, "pattern": seg % 3,
            "pattern_proba": np.full(n, 0.25), "contributions": np.stack([x, -x], axis=1)}


def _contracts(ids, scores, times, **consts) -> list[dict]:
    """The DESIGN.md prediction records, as the dicts ``orjson.dumps`` takes."""
    cols = {k: v.tolist() for k, v in scores.items()}
    return [{"event_id": ids[i], "model": consts["model"], "bundle_id": consts["bundle_id"],
             "segment": cols["segment"][i], "fallback_level": cols["fallback_level"][i],
             "prediction": cols["prediction"][i],
             "interval": [cols["interval_low"][i], cols["interval_high"][i]],
             "interval_mass": consts["interval_mass"], "pattern": cols["pattern"][i],
             "pattern_proba": cols["pattern_proba"][i], "event_time": times[i],
             "scored_at": consts["scored_at"]} for i in range(len(ids))]


CONSTS = {"model": "m\n\"q\"", "bundle_id": "b\\", "interval_mass": 0.8, "scored_at": "now"}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    texts, st.one_of(st.none(), texts),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NASTY_FLOATS)),
    st.integers(-2**31, 2**31 - 1)), max_size=20),
    st.booleans())
def test_prediction_records_equal_one_orjson_dump_each(rows, with_contributions) -> None:
    """Record for record, the bytes of ``orjson.dumps`` of the contract's dict (field order,
    NaN/±inf as null, float spelling): ids and times with quotes, backslashes, newlines,
    control characters and any unicode, None times, extreme floats and ints.

    With contributions (msgspec Structs, one per record) the bytes are the same except that
    msgspec spells floats of magnitude >= 1e16 without the exponent's ``+`` (``1e16`` where
    orjson writes ``1e+16``): there the parsed records are compared.
    """
    n = len(rows)
    ids = [r[0] for r in rows]
    times = [r[1] for r in rows]
    x = np.array([r[2] for r in rows], dtype=np.float64)
    seg = np.array([r[3] for r in rows], dtype=np.int32)
    scores = _scores(x, seg)
    names = ["intercept", "distance"] if with_contributions else None
    got = encode_predictions(ids, scores, times, contribution_names=names, **CONSTS)
    assert len(got) == n
    for i, (rec, want) in enumerate(zip(got, _contracts(ids, scores, times, **CONSTS),
                                        strict=True)):
        if names:
            want["contributions"] = {"intercept": float(x[i]), "distance": float(-x[i])}
            assert list(orjson.loads(rec).items()) == list(orjson.loads(orjson.dumps(want)).items())
            assert rec.replace(b"e+", b"e") == orjson.dumps(want).replace(b"e+", b"e")
        else:
            assert rec == orjson.dumps(want)
    if not names:  # the same values as the per-record (Struct) encoding used before
        old = _encode_structs(ids, scores, times, contribution_names=None, **CONSTS)
        assert [orjson.loads(r) for r in got] == [orjson.loads(r) for r in old]


@pytest.mark.parametrize("n", [0, 1, 50_000])
def test_prediction_records_batch_sizes(n: int) -> None:
    rng = np.random.default_rng(n)
    ids = [f"20130901-UA{i}-EWR-0516" for i in range(n)]
    times = [None if i % 7 == 0 else "2013-09-01T05:16:00-04:00" for i in range(n)]
    x = rng.normal(size=n) * 20
    x[::11] = np.nan
    scores = _scores(x, rng.integers(0, 2000, n).astype(np.int32))
    got = encode_predictions(ids, scores, times, **CONSTS)
    assert got == [orjson.dumps(d) for d in _contracts(ids, scores, times, **CONSTS)]


@pytest.mark.parametrize("dtypes", [
    (np.int32, np.int8, np.float64, np.int32, np.float64),     # Scorer.score's dtypes
    (np.int64, np.int16, np.float32, np.uint8, np.float32),
    (np.uint64, np.uint32, np.float16, np.bool_, np.float64),
    (np.int8, np.bool_, np.int64, np.uint16, np.uint64),       # ints where floats belong
    (object, np.int8, np.float64, np.int32, np.float64),       # object: per-record path
    (np.int32, np.int8, np.complex128, np.int32, np.float64),  # complex: per-record path
])
def test_prediction_records_of_other_dtypes_spell_tolist(dtypes) -> None:
    """Whatever the score dtypes, a record holds the values of ``.tolist()``: float32 as
    its exact float64 value (not its shortest float32 spelling), extreme ints exactly."""
    seg_t, lvl_t, pred_t, pat_t, proba_t = dtypes
    big = {np.int64: [-2**63, 2**63 - 1], np.uint64: [0, 2**64 - 1]}
    seg = np.array(big.get(seg_t, [1, 0]) + [7], dtype=seg_t)
    pred = np.array([0.1, -2.5, 3], dtype=pred_t) if pred_t is not np.complex128 else \
        np.array([0.1, -2.5, 3], dtype=np.float64)
    low = pred.astype(np.complex128) if pred_t is np.complex128 else pred
    scores = {"segment": seg, "fallback_level": np.array([0, 1, 1]).astype(lvl_t),
              "prediction": pred, "interval_low": low, "interval_high": pred,
              "pattern": np.array([2, 0, 1]).astype(pat_t),
              "pattern_proba": np.array([1, 0, 1]).astype(proba_t)}
    ids, times = ["a", "b", "c"], ["t", None, "t"]
    if pred_t is np.complex128:  # not JSON: the per-record path raises as before
        with pytest.raises(TypeError):
            encode_predictions(ids, scores, times, **CONSTS)
        return
    got = encode_predictions(ids, scores, times, **CONSTS)
    assert got == [orjson.dumps(d) for d in _contracts(ids, scores, times, **CONSTS)]
    if pred_t is np.float32:
        assert b'"prediction":0.10000000149011612,' in got[0]


def test_prediction_records_contributions_path_unchanged() -> None:
    """With contribution names each record is a msgspec Struct ending in ``contributions``
    (the encoding used before for every record): same bytes as ``orjson.dumps``."""
    x = np.array([1.5, -0.0, np.nan, 2e-7])
    scores = _scores(x, np.arange(4, dtype=np.int32))
    ids, times = ["a", 'b"\n', "c", "d"], ["t", None, "t\\", "t"]
    got = encode_predictions(ids, scores, times, contribution_names=["intercept", "dist"],
                             **CONSTS)
    for i, (rec, want) in enumerate(zip(got, _contracts(ids, scores, times, **CONSTS),
                                        strict=True)):
        want["contributions"] = {"intercept": x.tolist()[i], "dist": (-x).tolist()[i]}
        assert rec == orjson.dumps(want)
    assert list(orjson.loads(got[0]))[-1] == "contributions"
    assert encode_predictions([], _scores(np.empty(0), np.empty(0, np.int32)), [],
                              contribution_names=["intercept", "dist"], **CONSTS) == []


def test_prediction_records_lengths_must_match() -> None:
    scores = _scores(np.zeros(3), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="event_time_text"):
        encode_predictions(["a", "b", "c"], scores, ["t", "t"], **CONSTS)
    with pytest.raises(ValueError, match="segment"):
        encode_predictions(["a", "b"], scores, ["t", "t"], **CONSTS)


def test_prediction_records_accept_tuples_and_arrays_of_ids() -> None:
    scores = _scores(np.zeros(2), np.zeros(2, np.int32))
    ids = np.array(["a", "b"], dtype=object)
    want = encode_predictions(["a", "b"], scores, ["t", None], **CONSTS)
    assert encode_predictions(ids, scores, ("t", None), **CONSTS) == want
    assert encode_predictions(np.array(["a", "b"]), scores, ["t", None], **CONSTS) == want


def test_warm_up_records_compiles_the_signature_of_a_real_batch() -> None:
    warm_up_records()
    before = (len(_element_seps.signatures), len(_write_records.signatures))
    rng = np.random.default_rng(0)
    x = rng.normal(size=100)
    encode_predictions([f"e{i}" for i in range(100)], _scores(x, np.zeros(100, np.int32)),
                       ["t"] * 100, **CONSTS)
    assert (len(_element_seps.signatures), len(_write_records.signatures)) == before


def _spans(text: bytes, pad: bytes = b"") -> tuple[int, list[bytes]]:
    """Run the tokeniser on ``text`` placed between junk bytes (it must stay inside)."""
    src = np.frombuffer(pad + text + pad, dtype=np.uint8)
    seps = np.full(len(text) + 1, -7, dtype=np.int64)
    k = _json_array_seps(src, len(pad), len(pad) + len(text), seps)
    return k, [bytes(src[seps[j] + 1:seps[j + 1]]) for j in range(max(k, 0))]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(json_scalars, st.lists(json_scalars, max_size=3),
                          st.dictionaries(texts, json_scalars, max_size=3)), max_size=30),
       st.booleans(), st.sampled_from([b"", b'"\\,]', b"[1,2]" * 3]))
def test_json_array_tokeniser_matches_orjson_loads(values, use_msgspec, pad) -> None:
    """Reference test of the tokeniser kernel: the spans of a compact JSON array (orjson's
    or msgspec's) are its elements, as ``orjson.loads`` of the whole array sees them."""
    text = msgspec.json.encode(values) if use_msgspec else orjson.dumps(values)
    k, elements = _spans(text, pad)
    assert k == len(values)
    assert [orjson.loads(e) for e in elements] == orjson.loads(text)
    assert b",".join(elements) == text[1:-1]


def test_json_array_tokeniser_escapes_at_every_word_offset() -> None:
    """Quotes and backslashes at each position of the 8-byte words the scan reads."""
    values = [a * i + c + a * j for i in range(20) for j in range(3)
              for c in ['"', "\\", '\\"', '"\\', "\n", "é"] for a in ("x", "\\")]
    text = orjson.dumps(values)
    k, elements = _spans(text)
    assert k == len(values)
    assert [orjson.loads(e) for e in elements] == values


@pytest.mark.parametrize("text", [b"", b"[", b"]", b"{}", b'["a]', b'["a\\"]', b'["a\\', b"[[1]",
                                  b'["a"x]', b"[[1],{]"])
def test_json_array_tokeniser_rejects_what_it_cannot_split(text: bytes) -> None:
    assert _spans(text, b'"]')[0] == -1


def test_json_array_tokeniser_respects_the_capacity() -> None:
    src = np.frombuffer(b"[1,2,3]", dtype=np.uint8)
    assert _json_array_seps(src, 0, 7, np.empty(4, np.int64)) == 3
    assert _json_array_seps(src, 0, 7, np.empty(3, np.int64)) == -1
    assert _json_array_seps(np.frombuffer(b"[]", dtype=np.uint8), 0, 2,
                            np.empty(1, np.int64)) == 0


# ---------------------------------------------------------------------- flat path (numba)
def _flat_status(decoder: EventDecoder, values: list[bytes]) -> np.ndarray:
    """Per value, 0 when the flat kernel parsed it itself, 1 when it left it to msgspec."""
    from services.worker._decode_kernels import parse_flat_objects
    from services.worker.decode import _NAT_INT

    lay = decoder._flat
    n = len(values)
    buf = np.frombuffer(b"".join(values), np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
    status = np.empty(n, np.uint8)
    parse_flat_objects(buf, offsets, lay.names, lay.name_off, lay.kinds, lay.slots,
                       lay.required, np.full((lay.n_num, n), np.nan),
                       np.full((lay.n_str, n), -1, np.int64),
                       np.full((lay.n_str, n), -1, np.int64), np.full(n, _NAT_INT, np.int64),
                       np.empty((n * lay.n_num, 4), np.int64), status)
    return status


def _same_bits(a, b) -> None:
    _same(a, b)
    for k in a.columns:
        if a.columns[k].dtype.kind == "f":  # -0.0 and 0.0 are equal but not the same
            assert np.array_equal(np.signbit(a.columns[k]), np.signbit(b.columns[k])), k


def test_flat_path_takes_the_simulators_events(decoder: EventDecoder) -> None:
    """Events as the simulator writes them (orjson, shortest float spellings, 17-digit
    mantissas, nulls) are parsed by the kernel itself, not handed on."""
    rng = np.random.default_rng(1)
    values = [_event(event_id=f"e{i}", sched_dep_hour=float(h), temp=float(t),
                     dep_delay=None if i % 7 == 0 else float(d), pressure=None)
              for i, (h, t, d) in enumerate(zip(rng.uniform(0, 24, 500),
                                                rng.normal(50, 20, 500),
                                                rng.normal(0, 30, 500), strict=True))]
    assert _flat_status(decoder, values).tolist() == [0] * len(values)
    _same_bits(decoder.decode(values), decoder._decode_slow(values))


_number_texts = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: orjson.dumps(x).decode()),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-2**64, 2**64).map(str),
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.sampled_from(["-0", "-0.0", "0e5", "1E400", "-1e-400", "9007199254740993",
                     "9007199254740992", "4.35", "1e22", "1e23", "123456789012345678",
                     "0.1e-22", "01", "1.", ".5", "+1", "1e", "--1", "1.5e+", "NaN"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(_number_texts, min_size=1, max_size=8))
def test_flat_path_numbers_equal_msgspecs(decoder: EventDecoder, texts: list[str]) -> None:
    """Reference: every number the kernel converts itself (Clinger's fast path) or hands to
    msgspec is bit-identical to the struct path; a non-number goes to the DLQ as before."""
    values = [_event().replace(b'"distance":1400.0', f'"distance":{t}'.encode())
              for t in texts]
    _same_bits(decoder.decode(values), decoder._decode_structs(values))


_ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=12)
_any_text = st.text(max_size=12)
_times = st.one_of(
    st.datetimes(min_value=__import__("datetime").datetime(1600, 1, 1)).map(
        lambda d: d.isoformat(timespec="seconds")),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}"
                  r"(Z|[+-][0-9]{2}:[0-9]{2})?\Z"),
    _any_text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries(
    {"event_id": st.one_of(_ascii_text, _any_text), "event_time": _times,
     "carrier": st.one_of(_ascii_text, st.none(), st.integers(0, 3)),
     "origin": st.sampled_from(["EWR", "JFK", "LGA", 'E"W', "E\\W", "\u00e9"])},
    optional={"dep_delay": st.one_of(st.none(), st.floats(), st.booleans()),
              "extra": st.one_of(st.none(), st.booleans(), st.text(max_size=5),
                                 st.lists(st.integers(), max_size=2))}),
    max_size=10),
    st.sampled_from(["", " ", "\n\t "]), st.booleans())
def test_flat_path_equals_struct_path(decoder: EventDecoder, docs: list, ws: str,
                                      shuffle: bool) -> None:
    """Keys in any order, whitespace, escapes, non-ASCII, odd times, nulls, wrong types,
    extra nested fields: the flat path gives what msgspec (and the slow path) give."""
    values = []
    for i, d in enumerate(docs):
        full = {**GOOD, **d}
        items = list(full.items())
        if shuffle:
            items = items[i % len(items):] + items[:i % len(items)]
        body = ("," + ws).join(f"{ws}{orjson.dumps(k).decode()}{ws}:{ws}"
                                f"{_dump_value(v)}" for k, v in items)
        values.append(("{" + body + ws + "}" + ws).encode())
    _same_bits(decoder.decode(values), decoder._decode_slow(values))


def _dump_value(v) -> str:
    try:
        return orjson.dumps(v).decode()
    except orjson.JSONEncodeError:
        return "null"


def test_flat_path_duplicated_key_and_bad_tokens_defer(decoder: EventDecoder) -> None:
    good = _event()
    dup = good[:-1] + b',"carrier":"AA"}'
    values = [good, dup, good[:-1] + b"} x", b" " + good, good.replace(b"null", b"nul"),
              good.replace(b'"UA"', b'"U\\u0041"'), good.replace(b"6.0", b"6.0e")]
    assert _flat_status(decoder, values).tolist() == [0, 1, 1, 0, 1, 1, 1]
    out = decoder.decode(values)
    _same_bits(out, decoder._decode_slow(values))
    assert out.columns["carrier"].tolist() == ["UA", "AA", "UA", "UA"]


def test_code_spans_matches_factorize() -> None:
    import pandas as pd

    from services.worker._decode_kernels import code_spans

    rng = np.random.default_rng(3)
    words = [f"w{i}" * (i % 4) for i in range(700)] + [""]
    picks = rng.integers(0, len(words), 5000)
    text = [words[i] for i in picks]
    raw = "".join(text).encode()
    ends = np.cumsum([len(t) for t in text]).astype(np.int64)
    starts = ends - [len(t) for t in text]
    starts[::11] = -1  # nulls
    rows = np.arange(len(text), dtype=np.int64)[::-1].copy()
    codes, fs, fe = code_spans(np.frombuffer(raw, np.uint8), starts, ends, rows)
    expect = [None if starts[r] < 0 else text[r] for r in rows]
    ref_codes, ref_uniques = pd.factorize(np.array(expect, dtype=object))
    assert codes.tolist() == ref_codes.tolist()
    assert [raw[s:e].decode() for s, e in zip(fs, fe, strict=True)] == ref_uniques.tolist()


def test_decoded_category_columns_skip_a_second_factorisation(decoder: EventDecoder) -> None:
    from shared.routing import _factorized

    out = decoder.decode([_event(carrier=c) for c in ["UA", "AA", "UA", "DL"]])
    col = out.columns["carrier"]
    assert not col.flags.writeable
    codes, uniques = _factorized(col)
    assert uniques == ["UA", "AA", "DL"] and codes.tolist() == [0, 1, 0, 2]


def test_flat_path_time_json_feeds_the_records(decoder: EventDecoder) -> None:
    """The flat path hands the record encoder the time values as one JSON array; the records
    equal those made from the Python strings, and ``event_time_text`` is built on demand."""
    values = [_event(event_id=f"e{i}", event_time=t) for i, t in enumerate(
        ["2013-09-01T06:00:00-04:00", "2013-09-01 07:00:00", "2013-09-01T08:00:00Z"])]
    out = decoder.decode(values)
    assert out.event_time_json == (b'["2013-09-01T06:00:00-04:00","2013-09-01 07:00:00",'
                                   b'"2013-09-01T08:00:00Z"]')
    assert out.event_time_text == ["2013-09-01T06:00:00-04:00", "2013-09-01 07:00:00",
                                   "2013-09-01T08:00:00Z"]
    x = np.array([1.5, np.nan, -2.0])
    scores = _scores(x, np.array([1, 2, 3], np.int32))
    ids = out.columns["event_id"].tolist()
    a = encode_predictions(ids, scores, None, event_time_json=out.event_time_json, **CONSTS)
    b = encode_predictions(ids, scores, out.event_time_text, **CONSTS)
    assert a == b
    with pytest.raises(ValueError, match="does not hold"):
        encode_predictions(ids, scores, None, event_time_json=b'["x"]', **CONSTS)
    with_c = encode_predictions(ids, {**scores, "contributions": np.zeros((3, 1))}, None,
                                event_time_json=out.event_time_json,
                                contribution_names=["intercept"], **CONSTS)
    assert [orjson.loads(r)["event_time"] for r in with_c] == out.event_time_text
    mixed = decoder.decode([*values, b"[1]"])  # merged with the struct path: lists only
    assert mixed.event_time_json is None and mixed.event_time_text == out.event_time_text
