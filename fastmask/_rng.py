"""fastmask's counter-based generator: one documented integer hash, three identical copies.

Every random decision of the masking op is a pure function of ``(seed, row key, position,
stream)``. The same arithmetic is written in this file (torch, the oracle), in
``csrc/common.h`` (C++) and in ``fastmask/kernels/masking.py`` (Triton); the tests check that
the three agree bit for bit.

The hash is Chris Wellons' ``lowbias32`` (a 32-bit bijection with low avalanche bias)::

    lowbias32(x): x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16

all arithmetic modulo 2**32. Keys are reduced to unsigned 64-bit and split in halves::

    seed_lo, seed_hi = seed mod 2**64 (low, high 32 bits)
    seed_mix1 = lowbias32(lowbias32(seed_lo ^ 0x9E3779B9) ^ seed_hi)       # host side, once
    seed_mix2 = lowbias32(lowbias32(seed_hi ^ 0x85EBCA6B) ^ seed_lo)
    key_lo, key_hi = row_key mod 2**64
    s1 = lowbias32(lowbias32(seed_mix1 ^ key_lo) ^ key_hi)                   # per row
    s2 = lowbias32(lowbias32(seed_mix2 ^ key_hi) ^ key_lo)
    draw(position, stream) = lowbias32(lowbias32((4 * position + stream) ^ s1) ^ s2)

Streams: 0 selects a unit (or ranks it for the exact budget), 1 picks mask / random / keep,
2 draws the random replacement id, 3 draws a span length. The span-corruption op
(:mod:`fastmask.reference.sentinel_spans`) ranks the gaps between its noise units with stream 0
and the gaps between its kept units with stream 1 (``STREAM_NOISE_CUT`` / ``STREAM_KEEP_CUT``). Probabilities are compared as
24-bit integers (``draw >> 8 < threshold``) with thresholds computed once on the host, so no
floating-point rounding can make two backends disagree.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
HASH_MUL1 = 0x7FEB352D
HASH_MUL2 = 0x846CA68B
SEED_SALT1 = 0x9E3779B9
SEED_SALT2 = 0x85EBCA6B

STREAM_SELECT = 0
STREAM_REPLACE = 1
STREAM_RANDOM_ID = 2
STREAM_SPAN_LENGTH = 3
NUM_STREAMS = 4
# span corruption (a different op: its draws may share counters with the masking op's)
STREAM_NOISE_CUT = 0
STREAM_KEEP_CUT = 1
# text infilling (fastmask.reference.infilling): per token position, a start word's rank
# key, its span's mask-or-random choice and random ids (STREAM_RANDOM_ID); span k's Poisson
# length draws (k, STREAM_SPAN_LENGTH). Insertion slot p draws at position INFILL_INSERT_OFFSET + p
# (its rank key, its mask-or-random choice, its random id); the span-length rotation draws
# (INFILL_INSERT_OFFSET, STREAM_SPAN_LENGTH). Rows are shorter than INFILL_INSERT_OFFSET / 4.
STREAM_INFILL_START = 0
STREAM_INFILL_RANDOM = 1
STREAM_INFILL_INSERT_KEY = 0
STREAM_INFILL_INSERT_RANDOM = 1
INFILL_INSERT_OFFSET = 1 << 28

PROB_BITS = 24
PROB_ONE = 1 << PROB_BITS

# Positions are counted into 32 bits as 4 * position + stream.
MAX_SEQUENCE_LENGTH = 1 << 30


def lowbias32_int(x: int) -> int:
    """``lowbias32`` on a Python int in [0, 2**32)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * HASH_MUL1) & MASK32
    x ^= x >> 15
    x = (x * HASH_MUL2) & MASK32
    x ^= x >> 16
    return x


def draw_seed() -> int:
    """A seed in ``[0, 2**62)`` from torch's global RNG (``seed=None``: reproducible under
    ``torch.manual_seed``)."""
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


def resolve_seed(seed) -> int:
    """``seed`` checked as an int, or :func:`draw_seed` when it is None."""
    from ._validation import check_int

    return draw_seed() if seed is None else check_int("seed", seed)


def seed_mix(seed: int) -> tuple[int, int]:
    """The two 32-bit seed mixes that every backend receives instead of the raw seed."""
    seed &= (1 << 64) - 1
    lo, hi = seed & MASK32, seed >> 32
    mix1 = lowbias32_int(lowbias32_int(lo ^ SEED_SALT1) ^ hi)
    mix2 = lowbias32_int(lowbias32_int(hi ^ SEED_SALT2) ^ lo)
    return mix1, mix2


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) without int64 overflow."""
    lo = (x & 0xFFFF) * c
    hi = (((x >> 16) * c) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` elementwise on an int64 tensor holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, HASH_MUL1)
    x = x ^ (x >> 15)
    x = _mul32(x, HASH_MUL2)
    return x ^ (x >> 16)


def row_states(row_keys: torch.Tensor, mix1: int, mix2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row generator state ``(s1, s2)`` from :func:`seed_mix`'s output: int64 tensors of
    uint32 values, shape ``[B]``."""
    keys = row_keys.to(torch.int64)
    key_lo = keys & MASK32
    key_hi = (keys >> 32) & MASK32  # arithmetic shift, then mask: two's complement high word
    s1 = lowbias32(lowbias32(key_lo ^ mix1) ^ key_hi)
    s2 = lowbias32(lowbias32(key_hi ^ mix2) ^ key_lo)
    return s1, s2


def draw(s1: torch.Tensor, s2: torch.Tensor, positions: torch.Tensor, stream: int) -> torch.Tensor:
    """uint32 draws (int64 tensor) for ``[B, 1]`` row states and ``[L]`` or ``[B, L]`` positions."""
    counter = (positions.to(torch.int64) * NUM_STREAMS + stream) & MASK32
    return lowbias32(lowbias32(counter ^ s1) ^ s2)


def probability_threshold(p: float) -> int:
    """A probability as a 24-bit threshold: an event fires when ``draw >> 8 < threshold``."""
    return min(PROB_ONE, max(0, int(round(p * PROB_ONE))))


def span_length_distribution(kind: str, span_p: float, max_span_words: int) -> list[float]:
    """Probabilities of span lengths 1..max_span_words (in words), summing to 1."""
    if kind == "geometric":
        weights = [span_p * (1.0 - span_p) ** (n - 1) for n in range(1, max_span_words + 1)]
    else:  # uniform
        weights = [1.0] * max_span_words
    total = math.fsum(weights)
    return [w / total for w in weights]


def span_length_thresholds(probs: list[float]) -> list[int]:
    """24-bit CDF thresholds: length = 1 + #{j : (draw >> 8) >= thresholds[j]}."""
    out, acc = [], 0.0
    for p in probs[:-1]:
        acc += p
        out.append(min(PROB_ONE, int(round(acc * PROB_ONE))))
    return out


def span_anchor_probability(p: float, probs: list[float]) -> float:
    """Anchor rate q so that spans with the given length law cover a fraction p of words.

    Away from segment ends a word is uncovered when none of the anchors 0..n-1 words before it
    reaches it: ``P(uncovered) = prod_j (1 - q * P(len > j))``. Solved for ``1 - p`` by
    bisection (the product falls monotonically in q).
    """
    if p >= 1.0:
        return 1.0
    if p <= 0.0:
        return 0.0
    survival, acc = [], 1.0
    for w in probs:
        survival.append(acc)
        acc -= w

    def uncovered(q: float) -> float:
        out = 1.0
        for s in survival:
            out *= 1.0 - q * max(s, 0.0)
        return out

    lo, hi = 0.0, 1.0
    if uncovered(hi) > 1.0 - p:
        return 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if uncovered(mid) > 1.0 - p:
            lo = mid
        else:
            hi = mid
    return hi


def exact_budget_table(p: float, max_eligible: int) -> torch.Tensor:
    """``k[n] = floor(p * n + 0.5)`` in float64 for n = 0..max_eligible, as int32."""
    n = torch.arange(max_eligible + 1, dtype=torch.float64)
    return torch.floor(n * p + 0.5).to(torch.int32)
