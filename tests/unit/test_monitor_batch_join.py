"""The batch join: add_pairs gives exactly the state of add_pair one pair at a time (any
cut into batches), and the join agent routes each record by its topic."""

from __future__ import annotations

import random
from typing import Any

import pytest

from segstream.services.monitor.loop import split_batch
from segstream.services.monitor.performance import add_pair, add_pairs, empty_state


def random_pairs(rng: random.Random, k: int) -> tuple[list[Any], list[Any], list[bool]]:
    preds, outs, tracked = [], [], []
    for i in range(k):
        lo = None if rng.random() < 0.1 else rng.uniform(-50, 0)
        hi = None if rng.random() < 0.1 else rng.uniform(0, 80)
        mass = None if rng.random() < 0.1 else rng.choice([0.8, 0.9])
        seg = None if rng.random() < 0.05 else rng.randrange(5)
        bundle = rng.choice(["a" * 64, "b" * 64])
        preds.append([0, i, rng.uniform(-30, 60), lo, hi, seg, bundle, mass])
        y = None if rng.random() < 0.15 else rng.choice([rng.uniform(-60, 300), 0.1, 1e-9])
        outs.append([0, i, y, i])
        tracked.append(rng.random() < 0.5)
    return preds, outs, tracked


@pytest.mark.parametrize("seed", range(6))
def test_add_pairs_equals_add_pair_one_by_one_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    preds, outs, tracked = random_pairs(rng, 400)
    one = {**empty_state(), "sum_sq": 0.0}
    for p, o, t in zip(preds, outs, tracked, strict=True):
        one = add_pair(one, p, o, t)
    # cut at random points: the state must not depend on the batching
    batched = {**empty_state(), "sum_sq": 0.0}
    i = 0
    while i < len(preds):
        j = min(len(preds), i + rng.randrange(1, 90))
        batched = add_pairs(batched, preds[i:j], outs[i:j], tracked[i:j])
        i = j
    assert batched == one  # floats compared exactly
    assert one["n"] + one["n_nan"] == 400


def family_pairs(rng: random.Random, k: int) -> tuple[list[Any], list[Any], list[bool]]:
    """Binomial and Poisson predictions (the family is the entry's 9th element) with
    outcomes of the family, outside it (0.5 for binomial, -1 and 2.5 for Poisson), and null."""
    preds, outs, tracked = [], [], []
    for i in range(k):
        fam = rng.choice(["binomial", "poisson"])
        mu = rng.random() if fam == "binomial" else rng.uniform(0.1, 9.0)
        bundle = rng.choice(["a" * 64, "b" * 64])
        preds.append([0, i, mu, None, None, rng.randrange(4), bundle, None, fam])
        if rng.random() < 0.1:
            y = None
        elif rng.random() < 0.15:
            y = 0.5 if fam == "binomial" else rng.choice([-1.0, 2.5])
        else:
            y = float(rng.randrange(2) if fam == "binomial" else rng.randrange(12))
        outs.append([0, i, y, i])
        tracked.append(rng.random() < 0.5)
    return preds, outs, tracked


@pytest.mark.parametrize("seed", range(4))
def test_add_pairs_keeps_the_family_sums_of_add_pair(seed: int) -> None:
    """A batch with binomial/Poisson pairs: the family sub-states (counts, histograms, sums,
    n_invalid) and the common sums equal add_pair's one pair at a time; an outcome that is
    not of its family stays out of the common sums."""
    rng = random.Random(seed)
    preds, outs, tracked = family_pairs(rng, 300)
    one = {**empty_state(), "sum_sq": 0.0}
    for p, o, t in zip(preds, outs, tracked, strict=True):
        one = add_pair(one, p, o, t)
    batched = {**empty_state(), "sum_sq": 0.0}
    i = 0
    while i < len(preds):
        j = min(len(preds), i + rng.randrange(1, 70))
        batched = add_pairs(batched, preds[i:j], outs[i:j], tracked[i:j])
        i = j
    assert batched == one  # floats compared exactly: both fold left to right
    invalid = sum(st["n_invalid"] for fam in ("binomial", "poisson") if (st := one.get(fam)))
    assert invalid > 0 and one["n"] + one["n_nan"] + invalid == 300


def test_add_pairs_of_only_null_outcomes_and_of_nothing() -> None:
    p = [0, 0, 1.0, 0.0, 2.0, 1, "a" * 64, 0.8]
    st = add_pairs(empty_state(), [p, p], [[0, 0, None, 0], [0, 0, None, 0]], [True, True])
    assert (st["n"], st["n_nan"], st["bundles"], st["segments"]) == (0, 2, {}, {})
    assert add_pairs(st, [], [], []) == st
    with pytest.raises(ValueError, match="add_pairs"):
        add_pairs(st, [p], [], [True])


class Msg:
    """The part of a ``confluent_kafka.Message`` the loop uses."""

    def __init__(self, topic: str, partition: int, offset: int, error: Any = None) -> None:
        self._t, self._p, self._o, self._e = topic, partition, offset, error

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def error(self) -> Any:
        return self._e

    def value(self) -> bytes:
        return f"{self._t}:{self._p}:{self._o}".encode()


def test_the_loop_routes_each_record_by_its_topic() -> None:
    msgs = [
        Msg("out", 1, 7),
        Msg("pred", 1, 3),
        Msg("st", 0, 9),
        Msg("pred", 0, 5),
        Msg("out", 1, 8),
        Msg("pp", 0, 2),
        Msg("pred", 1, 4),
        Msg("pred", 1, 99, error="broken"),  # skipped, offset not taken
        Msg("st", 0, 10),
    ]
    sources = {"st": "stats", "pred": "predictions", "out": "outcomes", "pp": "partials"}
    b = split_batch(msgs, sources)
    assert [(o, p, [r[2] for r in recs]) for o, p, recs in b.join] == [
        (False, 0, [5]),
        (False, 1, [3, 4]),
        (True, 1, [7, 8]),
    ]
    for is_outcome, partition, recs in b.join:
        for value, p, off in recs:
            topic = value.decode().split(":")[0]
            assert (topic == "out") is is_outcome and p == partition
            assert value == f"{topic}:{p}:{off}".encode()
    assert [r[2] for r in b.stats] == [9, 10] and b.partials == [(b"pp:0:2", 0)]
    assert b.offsets == {("out", 1): 8, ("pred", 1): 4, ("st", 0): 10, ("pred", 0): 5, ("pp", 0): 2}
