"""The generator (fastmask/_rng.py): the torch oracle against a plain-int transcription of its
documented formula, and the host-side tables. The C++ and Triton copies are compared with it in
test_masking_cpp.py and test_kernels_masking.py."""

from __future__ import annotations

import math
import random

import pytest
import torch

from fastmask import _rng

M32 = 0xFFFFFFFF


def _lowbias32(x: int) -> int:  # the module docstring's formula, written out again
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def _draw(seed: int, key: int, position: int, stream: int) -> int:
    seed, key = seed % 2**64, key % 2**64
    mix1 = _lowbias32(_lowbias32((seed & M32) ^ 0x9E3779B9) ^ (seed >> 32))
    mix2 = _lowbias32(_lowbias32((seed >> 32) ^ 0x85EBCA6B) ^ (seed & M32))
    s1 = _lowbias32(_lowbias32(mix1 ^ (key & M32)) ^ (key >> 32))
    s2 = _lowbias32(_lowbias32(mix2 ^ (key >> 32)) ^ (key & M32))
    return _lowbias32(_lowbias32(((4 * position + stream) & M32) ^ s1) ^ s2)


def test_lowbias32_tensor_and_int_agree_with_the_formula():
    values = [0, 1, 2**31, M32, 0x12345678] + [random.Random(0).getrandbits(32) for _ in range(200)]
    expected = [_lowbias32(v) for v in values]
    assert _rng.lowbias32(torch.tensor(values, dtype=torch.int64)).tolist() == expected
    assert [_rng.lowbias32_int(v) for v in values] == expected


@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1, 2**64 - 1, -5])
def test_draws_follow_the_documented_formula(seed):
    keys = torch.tensor([0, 1, -1, 2**62, -(2**63)], dtype=torch.int64)
    positions = torch.tensor([0, 1, 7, 2**20, 2**30 - 1])
    mix1, mix2 = _rng.seed_mix(seed)
    s1, s2 = (s[:, None] for s in _rng.row_states(keys, mix1, mix2))
    for stream in range(_rng.NUM_STREAMS):
        got = _rng.draw(s1, s2, positions, stream)
        expected = [[_draw(seed, k, p, stream) for p in positions.tolist()] for k in keys.tolist()]
        assert got.tolist() == expected


def test_probability_thresholds_are_24_bit_and_monotone():
    assert _rng.probability_threshold(0.0) == 0 and _rng.probability_threshold(1.0) == _rng.PROB_ONE
    values = [_rng.probability_threshold(p / 1000) for p in range(1001)]
    assert values == sorted(values) and all(0 <= v <= 2**24 for v in values)


@pytest.mark.parametrize("kind,span_p,n", [("geometric", 0.2, 10), ("geometric", 1.0, 3), ("uniform", 0.2, 7)])
def test_span_length_tables(kind, span_p, n):
    probs = _rng.span_length_distribution(kind, span_p, n)
    assert len(probs) == n and math.isclose(math.fsum(probs), 1.0)
    thresholds = _rng.span_length_thresholds(probs)
    assert len(thresholds) == n - 1 and thresholds == sorted(thresholds)
    # a span anchored with rate q covers about p of the words (away from segment ends)
    q = _rng.span_anchor_probability(0.15, probs)
    survival = [1 - math.fsum(probs[:j]) for j in range(n)]
    assert math.isclose(1 - math.prod(1 - q * s for s in survival), 0.15, abs_tol=1e-9)


def test_exact_budget_table_rounds_half_up():
    table = _rng.exact_budget_table(0.15, 100)
    assert table.dtype == torch.int32 and table.tolist() == [math.floor(0.15 * n + 0.5) for n in range(101)]
