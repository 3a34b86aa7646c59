"""Triton masking kernel: selection (token / whole word / span, bernoulli or exact budget) and
80/10/10 replacement, bit-identical to :mod:`fastmask.reference.masking` (which defines the
semantics) with the generator of :mod:`fastmask._rng`.

One program handles one row, the whole row in one block of ``BLOCK_L`` (a power of two).
Eligibility, unit starts, hashes and thresholds are elementwise (the neighbours at ``i - 1`` and
``i + 1`` are recomputed from their own loads); unit and segment indices are cumsums; a unit's
decision reaches its tokens through a cummax of ``2 * pos + decision`` over unit starts; spans
use the reference's segmented cummax of ``(segment << 32) + unit_index + n_words``; word
lengths and segment ends come from one reverse min-scan.

The exact budget (BERT's greedy rule, units in key order ``(draw >> 1, position)``) runs as:

* ``token`` / ``whole_word``: rounds. Among the *candidates* (uncovered units that fit the
  budget left), the longest key-order prefix whose lengths sum to at most the budget left is
  accepted at once (a bitwise binary search on the key, one block sum per bit). The first
  candidate past that prefix no longer fits, nor will it ever, so the next round starts over
  the remaining candidates. ``token`` always finishes in one round; ``whole_word`` needs at
  most ``1 + longest word`` rounds.
* ``span``: one anchor per iteration: the smallest key among candidates (its key also
  carries its unit index and clipped span end), then a cumsum of the word lengths inside its
  span decides which of its uncovered words fit.

APIs relied on (all in Triton 3.1): ``tl.cumsum``, ``tl.associative_scan`` (with
``reverse=True``, tuple inputs), ``tl.sum`` / ``tl.min`` / ``tl.max``, uint32 arithmetic.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _rng
from ..masking_plan import (
    FLAG_SPECIAL,
    FLAG_WORD_START,
    STRATEGY_SPAN,
    STRATEGY_TOKEN,
    STRATEGY_WHOLE_WORD,
    MaskingPlan,
)

# Longest row one program handles (one block holds the whole row); the packed span keys
# below need 31 + 2 * log2(BLOCK_L) + 1 <= 63 bits, i.e. BLOCK_L <= 2**15.
MAX_BLOCK_L = 16384

# the names of fastmask._rng and fastmask.masking_plan, as compile-time constants
_FLAG_SPECIAL = tl.constexpr(FLAG_SPECIAL)
_FLAG_WORD_START = tl.constexpr(FLAG_WORD_START)
_TOKEN = tl.constexpr(STRATEGY_TOKEN)
_WHOLE_WORD = tl.constexpr(STRATEGY_WHOLE_WORD)
_SPAN = tl.constexpr(STRATEGY_SPAN)
_STREAM_SELECT = tl.constexpr(_rng.STREAM_SELECT)
_STREAM_REPLACE = tl.constexpr(_rng.STREAM_REPLACE)
_STREAM_RANDOM_ID = tl.constexpr(_rng.STREAM_RANDOM_ID)
_STREAM_SPAN_LENGTH = tl.constexpr(_rng.STREAM_SPAN_LENGTH)
_NUM_STREAMS = tl.constexpr(_rng.NUM_STREAMS)
_HASH_MUL1 = tl.constexpr(_rng.HASH_MUL1)
_HASH_MUL2 = tl.constexpr(_rng.HASH_MUL2)
_PROB_BITS = tl.constexpr(_rng.PROB_BITS)
_PROB_ONE = tl.constexpr(_rng.PROB_ONE)
_INT64_MAX = tl.constexpr(2**63 - 1)


# ----------------------------------------------------------------------------- helpers
@triton.jit
def _lowbias32(x):
    """lowbias32 on uint32 values (arithmetic modulo 2**32)."""
    x ^= x >> 16
    x *= _HASH_MUL1
    x ^= x >> 15
    x *= _HASH_MUL2
    x ^= x >> 16
    return x


@triton.jit
def _row_state(row_key, seed_mix1, seed_mix2):
    """``(s1, s2)`` uint32 of one row from its int64 key (``fastmask._rng.row_states``)."""
    key_lo = row_key.to(tl.uint32)
    key_hi = (row_key >> 32).to(tl.uint32)
    mix1 = seed_mix1.to(tl.int64).to(tl.uint32)
    mix2 = seed_mix2.to(tl.int64).to(tl.uint32)
    s1 = _lowbias32(_lowbias32(key_lo ^ mix1) ^ key_hi)
    s2 = _lowbias32(_lowbias32(key_hi ^ mix2) ^ key_lo)
    return s1, s2


@triton.jit
def _draw(s1, s2, pos, STREAM: tl.constexpr):
    """uint32 draws at int32 positions ``pos`` of one row (state ``s1``, ``s2``: uint32)."""
    counter = pos.to(tl.uint32) * _NUM_STREAMS + STREAM
    return _lowbias32(_lowbias32(counter ^ s1) ^ s2)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


@triton.jit
def _min2_combine(a1, b1, a2, b2):
    return tl.minimum(a1, a2), tl.minimum(b1, b2)


@triton.jit
def _tokens_at(
    ids_ptr,
    special_ptr,
    attention_ptr,
    word_starts_ptr,
    flags_ptr,
    row_off,
    pos,
    length,
    n_flags,
    pad_token_id,
    HAS_SPECIAL_MASK: tl.constexpr,
    HAS_ATTENTION: tl.constexpr,
    HAS_WORD_STARTS: tl.constexpr,
    HAS_FLAGS: tl.constexpr,
    HAS_PAD: tl.constexpr,
):
    """``(ids int64, eligible, starts_word)`` at positions ``pos`` (False outside the row)."""
    inside = (pos >= 0) & (pos < length)
    ids = tl.load(ids_ptr + row_off + pos, mask=inside, other=0).to(tl.int64)
    if HAS_FLAGS:
        known = inside & (ids >= 0) & (ids < n_flags)
        flags = tl.load(flags_ptr + ids, mask=known, other=_FLAG_WORD_START).to(tl.int32)
    if HAS_SPECIAL_MASK:
        eligible = inside & (tl.load(special_ptr + row_off + pos, mask=inside, other=1) == 0)
    elif HAS_FLAGS:
        eligible = inside & ((flags & _FLAG_SPECIAL) == 0)
    else:
        eligible = inside
    if HAS_ATTENTION:
        eligible = eligible & (tl.load(attention_ptr + row_off + pos, mask=inside, other=0) != 0)
    if HAS_PAD:
        eligible = eligible & (ids != pad_token_id)
    if HAS_WORD_STARTS:
        starts = tl.load(word_starts_ptr + row_off + pos, mask=inside, other=0) != 0
    elif HAS_FLAGS:
        starts = (flags & _FLAG_WORD_START) != 0
    else:
        starts = inside
    return ids, eligible, starts


@triton.jit
def _spread_units(unit_start, decision, pos, eligible):
    """Each eligible token takes the ``decision`` of the latest unit start at or before it."""
    code = tl.where(unit_start, 2 * pos + decision.to(tl.int32), -1)
    latest = tl.associative_scan(code, 0, _max_combine)
    return eligible & (latest >= 0) & ((latest & 1) == 1)


# ----------------------------------------------------------------------------- kernel
@triton.jit(
    do_not_specialize=[
        "n_flags",
        "n_weights",
        "n_span_thresholds",
        "seed_mix1",
        "seed_mix2",
        "pad_token_id",
        "select_threshold",
        "mask_token_id",
        "vocab_size",
        "replace_mask_threshold",
        "replace_random_threshold",
    ]
)
def _mask_tokens_kernel(
    ids_ptr,
    out_ids_ptr,
    labels_ptr,
    special_ptr,
    attention_ptr,
    word_starts_ptr,
    flags_ptr,
    weights_ptr,
    row_keys_ptr,
    span_thresholds_ptr,
    budget_table_ptr,
    length,
    n_flags,
    n_weights,
    n_span_thresholds,
    stride_row,
    seed_mix1,
    seed_mix2,
    pad_token_id,
    select_threshold,
    mask_token_id,
    vocab_size,
    replace_mask_threshold,
    replace_random_threshold,
    HAS_SPECIAL_MASK: tl.constexpr,
    HAS_ATTENTION: tl.constexpr,
    HAS_WORD_STARTS: tl.constexpr,
    HAS_FLAGS: tl.constexpr,
    HAS_WEIGHTS: tl.constexpr,
    HAS_PAD: tl.constexpr,
    STRATEGY: tl.constexpr,
    EXACT: tl.constexpr,
    BLOCK_L: tl.constexpr,
    LOG2_BLOCK_L: tl.constexpr,
):
    """One row per program. ids ``[B, L]`` int32/int64 -> masked ids (same dtype), labels int64.
    STRATEGY: a strategy code of :mod:`fastmask.masking_plan`."""
    row = tl.program_id(0)
    row_off = row.to(tl.int64) * stride_row
    pos = tl.arange(0, BLOCK_L)
    in_row = pos < length

    ids, eligible, starts = _tokens_at(
        ids_ptr,
        special_ptr,
        attention_ptr,
        word_starts_ptr,
        flags_ptr,
        row_off,
        pos,
        length,
        n_flags,
        pad_token_id,
        HAS_SPECIAL_MASK,
        HAS_ATTENTION,
        HAS_WORD_STARTS,
        HAS_FLAGS,
        HAS_PAD,
    )

    s1, s2 = _row_state(tl.load(row_keys_ptr + row), seed_mix1, seed_mix2)
    select_draw = _draw(s1, s2, pos, _STREAM_SELECT)

    if STRATEGY == _TOKEN:
        unit_start = eligible
    else:
        _, prev_eligible, _ = _tokens_at(
            ids_ptr,
            special_ptr,
            attention_ptr,
            word_starts_ptr,
            flags_ptr,
            row_off,
            pos - 1,
            length,
            n_flags,
            pad_token_id,
            HAS_SPECIAL_MASK,
            HAS_ATTENTION,
            HAS_WORD_STARTS,
            HAS_FLAGS,
            HAS_PAD,
        )
        unit_start = eligible & (starts | ~prev_eligible)
    if STRATEGY == _SPAN:
        n_words = tl.full([BLOCK_L], 1, tl.int32)
        span_u24 = (_draw(s1, s2, pos, _STREAM_SPAN_LENGTH) >> (32 - _PROB_BITS)).to(tl.int32)
        for j in range(0, n_span_thresholds):
            n_words += (span_u24 >= tl.load(span_thresholds_ptr + j)).to(tl.int32)
        unit_index = tl.cumsum(unit_start.to(tl.int32), 0) - 1

    if not EXACT:
        if HAS_WEIGHTS:
            known = unit_start & (ids >= 0) & (ids < n_weights)
            w = tl.load(weights_ptr + ids, mask=known, other=0).to(tl.int64)
            units = tl.sum(unit_start.to(tl.int64), 0)
            total = tl.sum(w, 0)
            scaled = (select_threshold * w * units) // tl.maximum(total, 1)
            threshold = tl.where(total > 0, tl.minimum(scaled, _PROB_ONE), 0)
        else:
            threshold = select_threshold
        drawn = unit_start & ((select_draw >> (32 - _PROB_BITS)).to(tl.int64) < threshold)
        if STRATEGY == _TOKEN:
            selected = drawn
        elif STRATEGY == _WHOLE_WORD:
            selected = _spread_units(unit_start, drawn, pos, eligible)
        else:
            segment = tl.cumsum((eligible & ~prev_eligible).to(tl.int32), 0)
            code = (segment.to(tl.int64) << 32) + unit_index
            reach = tl.where(drawn, code + n_words, -1)
            selected = eligible & (tl.associative_scan(reach, 0, _max_combine) > code)
    else:
        n_eligible = tl.sum(eligible.to(tl.int32), 0)
        left = tl.load(budget_table_ptr + n_eligible)
        if STRATEGY == _TOKEN:
            word_len = tl.full([BLOCK_L], 1, tl.int32)
        else:
            # a word ends where the next position is ineligible or starts a word
            _, next_eligible, next_starts = _tokens_at(
                ids_ptr,
                special_ptr,
                attention_ptr,
                word_starts_ptr,
                flags_ptr,
                row_off,
                pos + 1,
                length,
                n_flags,
                pad_token_id,
                HAS_SPECIAL_MASK,
                HAS_ATTENTION,
                HAS_WORD_STARTS,
                HAS_FLAGS,
                HAS_PAD,
            )
            word_last = eligible & (~next_eligible | next_starts)
            if STRATEGY == _SPAN:
                segment_last = eligible & ~next_eligible
                word_end, segment_last_unit = tl.associative_scan(
                    (tl.where(word_last, pos, BLOCK_L), tl.where(segment_last, unit_index, BLOCK_L)),
                    0,
                    _min2_combine,
                    reverse=True,
                )
            else:
                word_end = tl.associative_scan(tl.where(word_last, pos, BLOCK_L), 0, _min_combine, reverse=True)
            word_len = word_end - pos + 1
        covered = pos < 0
        if STRATEGY == _SPAN:
            # key order of the reference ((draw >> 1), position) equals ((draw >> 1), unit index)
            # over unit starts; the low bits carry the unit index and its clipped span end.
            span_end = tl.minimum(unit_index + n_words, segment_last_unit + 1)
            key = (
                ((select_draw >> 1).to(tl.int64) << (2 * LOG2_BLOCK_L + 1))
                | (unit_index.to(tl.int64) << (LOG2_BLOCK_L + 1))
                | span_end
            )
            best = tl.min(tl.where(unit_start & (word_len <= left), key, _INT64_MAX), 0)
            while best < _INT64_MAX:
                first = ((best >> (LOG2_BLOCK_L + 1)) & (BLOCK_L - 1)).to(tl.int32)
                end = (best & (2 * BLOCK_L - 1)).to(tl.int32)
                in_span = unit_start & ~covered & (unit_index >= first) & (unit_index < end)
                used = tl.cumsum(tl.where(in_span, word_len, 0), 0)
                take = in_span & (used <= left)
                covered = covered | take
                left -= tl.sum(tl.where(take, word_len, 0), 0)
                best = tl.min(tl.where(unit_start & ~covered & (word_len <= left), key, _INT64_MAX), 0)
        else:
            key = ((select_draw >> 1).to(tl.int64) << LOG2_BLOCK_L) | pos
            candidate = unit_start & (word_len <= left)
            n_candidates = tl.sum(candidate.to(tl.int32), 0)
            while n_candidates > 0:
                # largest bound with sum(word_len of candidates with key < bound) <= left
                bound = tl.full([], 0, tl.int64)
                bit = tl.full([], 1 << (31 + LOG2_BLOCK_L), tl.int64)
                for _bit in range(32 + LOG2_BLOCK_L):
                    trial = bound | bit
                    below = tl.sum(tl.where(candidate & (key < trial), word_len, 0), 0)
                    bound = tl.where(below <= left, trial, bound)
                    bit = bit >> 1
                take = candidate & (key < bound)
                covered = covered | take
                left -= tl.sum(tl.where(take, word_len, 0), 0)
                candidate = unit_start & ~covered & (word_len <= left)
                n_candidates = tl.sum(candidate.to(tl.int32), 0)
        if STRATEGY == _TOKEN:
            selected = covered
        else:
            selected = _spread_units(unit_start, covered, pos, eligible)

    # replacement (step 4)
    choice = (_draw(s1, s2, pos, _STREAM_REPLACE) >> (32 - _PROB_BITS)).to(tl.int32)
    random_id = (_draw(s1, s2, pos, _STREAM_RANDOM_ID).to(tl.int64) * vocab_size) >> 32
    masked = tl.where(selected & (choice < replace_random_threshold), random_id, ids)
    masked = tl.where(selected & (choice < replace_mask_threshold), mask_token_id, masked)
    labels = tl.where(selected, ids, -100)
    tl.store(out_ids_ptr + row_off + pos, masked, mask=in_row)
    tl.store(labels_ptr + row_off + pos, labels, mask=in_row)


# ----------------------------------------------------------------------------- launcher
def triton_call_reason(length: int) -> Optional[str]:
    """None when the kernel can take rows of ``length`` tokens, else why not."""
    if triton.next_power_of_2(length) > MAX_BLOCK_L:
        return f"rows of {length} tokens exceed the Triton masking kernel's one-block limit of {MAX_BLOCK_L} tokens"
    return None


def block_size(length: int) -> int:
    """The launcher's ``BLOCK_L`` for rows of ``length`` tokens: the next power of two, at least 16."""
    return max(16, triton.next_power_of_2(length))


def _num_warps(block_l: int) -> int:
    """The launcher's ``num_warps``: about 8 positions per thread (to be tuned on hardware), 1 to
    32 warps. Compiled offline for sm_80 / sm_90 (:mod:`fastmask.kernels.offline`), every variant
    has 0 spills at ``BLOCK_L`` 16 to 2048 except one 4-byte spill at 128 for sm_80; from 4096 on
    some variants spill, with any warp count (at 8192 and 16384 a block is at the 32-warp limit,
    64 registers per thread): rows that long are one block by design (docs/kernels.md)."""
    return max(1, min(32, block_l // 256))


def _as_buffer(t: Optional[torch.Tensor], dummy: torch.Tensor) -> torch.Tensor:
    if t is None or t.numel() == 0:
        return dummy
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def triton_mask_tokens(plan: MaskingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked_input_ids [B, L] input dtype, labels [B, L] int64)`` for a validated plan."""
    input_ids = plan.input_ids
    batch, length = input_ids.shape
    masked = torch.empty_like(input_ids)
    labels = torch.empty((batch, length), dtype=torch.int64, device=input_ids.device)
    block_l = block_size(length)
    _mask_tokens_kernel[(batch,)](
        input_ids,
        masked,
        labels,
        _as_buffer(plan.special_mask, input_ids),
        _as_buffer(plan.attention_mask, input_ids),
        _as_buffer(plan.word_starts, input_ids),
        _as_buffer(plan.vocab_flags, input_ids),
        _as_buffer(plan.weights_q, input_ids),
        plan.row_keys,
        _as_buffer(plan.span_thresholds, plan.row_keys),
        _as_buffer(plan.budget_table, plan.row_keys),
        length,
        0 if plan.vocab_flags is None else plan.vocab_flags.numel(),
        0 if plan.weights_q is None else plan.weights_q.numel(),
        plan.span_thresholds.numel(),
        input_ids.stride(0),
        plan.seed_mix1,
        plan.seed_mix2,
        plan.pad_token_id,
        plan.select_threshold,
        plan.mask_token_id,
        plan.vocab_size,
        plan.replace_mask_threshold,
        plan.replace_random_threshold,
        HAS_SPECIAL_MASK=plan.special_mask is not None,
        HAS_ATTENTION=plan.attention_mask is not None,
        HAS_WORD_STARTS=plan.word_starts is not None,
        HAS_FLAGS=plan.vocab_flags is not None,
        HAS_WEIGHTS=plan.weights_q is not None,
        HAS_PAD=plan.pad_token_id >= 0,
        STRATEGY=plan.strategy,
        EXACT=plan.exact,
        BLOCK_L=block_l,
        LOG2_BLOCK_L=block_l.bit_length() - 1,
        num_warps=_num_warps(block_l),
    )
    return masked, labels
