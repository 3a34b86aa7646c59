"""Triton BART text-infilling kernel, bit-identical to :mod:`fastmask.reference.infilling`
(which defines the semantics) with the generator of :mod:`fastmask._rng`.

One program handles one row: the row in one block of ``BLOCK_L`` positions, its output in one
block of ``BLOCK_W`` (both powers of two):

* eligible tokens, word starts (the previous token is reloaded, no shifts), word numbers and
  segments are elementwise tests and cumsums;
* the ``S`` start words are the smallest rank keys, found by the bitwise binary search of the
  span-corruption kernel (``_smallest``); the ``r``-th takes ``span_lengths[r]`` (``r`` a cumsum);
* coverage is a running maximum (``tl.associative_scan``) of the spans' packed
  ``segment << 32 | end``; the maximum *before* each token goes through a per-row scratch;
* surviving tokens are written to a second scratch row at the prefix sums of what each token
  emits; the insertion slots are picked like the start words, and the output takes the inserts
  and the scratch row's tokens (the prefix sums of the kept slots), then padding.

The scratch round trips are ordered by ``tl.debug_barrier()`` (one CTA per row).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _rng
from ..infilling_plan import TextInfillingPlan
from .masking import _as_buffer, _draw, _max_combine, _row_state, block_size
from .masking import _num_warps as num_warps  # the masking kernel's rule: about 8 positions per thread
from .sentinel_spans import _smallest

MAX_BLOCK = 16384

_STREAM_START = tl.constexpr(_rng.STREAM_INFILL_START)
_STREAM_RANDOM = tl.constexpr(_rng.STREAM_INFILL_RANDOM)
_STREAM_RANDOM_ID = tl.constexpr(_rng.STREAM_RANDOM_ID)
_STREAM_INSERT_KEY = tl.constexpr(_rng.STREAM_INFILL_INSERT_KEY)
_STREAM_INSERT_RANDOM = tl.constexpr(_rng.STREAM_INFILL_INSERT_RANDOM)
_INSERT_OFFSET = tl.constexpr(_rng.INFILL_INSERT_OFFSET)
_PROB_SHIFT = tl.constexpr(32 - _rng.PROB_BITS)


@triton.jit
def _random_id(s1, s2, pos, vocab_size):
    # as the masking kernel: a draw < 2**32 times vocab_size <= 2**31 fits in int64
    return (_draw(s1, s2, pos, _STREAM_RANDOM_ID).to(tl.int64) * vocab_size) >> 32


@triton.jit
def _text_infilling_kernel(
    ids_ptr,
    attention_ptr,
    special_ptr,
    word_starts_ptr,
    row_keys_ptr,
    span_lengths_ptr,
    span_count_ptr,
    insert_count_ptr,
    insert_table_ptr,
    out_ptr,
    attention_out_ptr,
    reach_ptr,
    tokens_ptr,
    length,
    width,
    max_spans,
    seed_mix1,
    seed_mix2,
    mask_token_id,
    pad_token_id,
    vocab_size,
    random_threshold,
    REPLACE_LENGTH: tl.constexpr,
    HAS_ATTENTION: tl.constexpr,
    HAS_SPECIAL: tl.constexpr,
    HAS_WORD_STARTS: tl.constexpr,
    BLOCK_L: tl.constexpr,
    LOG2_BLOCK_L: tl.constexpr,
    BLOCK_W: tl.constexpr,
    LOG2_BLOCK_W: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    pos = tl.arange(0, BLOCK_L)
    in_row = pos < length
    has_prev = in_row & (pos >= 1)
    row_off = row * length
    ids = tl.load(ids_ptr + row_off + pos, mask=in_row, other=0).to(tl.int64)
    prev_ids = tl.load(ids_ptr + row_off + pos - 1, mask=has_prev, other=0).to(tl.int64)
    if HAS_ATTENTION:
        real = in_row & (tl.load(attention_ptr + row_off + pos, mask=in_row, other=0) != 0)
        prev_real = has_prev & (tl.load(attention_ptr + row_off + pos - 1, mask=has_prev, other=0) != 0)
    else:
        real = in_row & (ids != pad_token_id)
        prev_real = has_prev & (prev_ids != pad_token_id)
    if HAS_SPECIAL:
        eligible = real & (tl.load(special_ptr + row_off + pos, mask=in_row, other=0) == 0)
        prev_eligible = prev_real & (tl.load(special_ptr + row_off + pos - 1, mask=has_prev, other=0) == 0)
    else:
        eligible = real
        prev_eligible = prev_real
    if HAS_WORD_STARTS:
        marked = tl.load(word_starts_ptr + row_off + pos, mask=in_row, other=0) != 0
        word_start = eligible & (marked | ~prev_eligible)
    else:
        word_start = eligible
    word = (tl.cumsum(word_start.to(tl.int32), 0) - 1).to(tl.int64)
    segment = tl.cumsum((~eligible).to(tl.int32), 0).to(tl.int64)
    words = tl.sum(word_start.to(tl.int32), 0)
    spans = tl.minimum(tl.load(span_count_ptr + row), words)
    s1, s2 = _row_state(tl.load(row_keys_ptr + row), seed_mix1, seed_mix2)

    # start words: the S smallest keys (draw >> 1, word); the r-th takes span_lengths[r]
    start_key = ((_draw(s1, s2, word, _STREAM_START) >> 1).to(tl.int64) << LOG2_BLOCK_L) | word
    chosen = _smallest(word_start, start_key, spans, 32 + LOG2_BLOCK_L)
    rank = tl.cumsum(chosen.to(tl.int32), 0) - 1
    span_length = tl.load(span_lengths_ptr + row * max_spans + rank, mask=chosen, other=0).to(tl.int64)
    packed_end = tl.where(chosen, (segment << 32) | (word + span_length), 0)
    reach = tl.associative_scan(packed_end, 0, _max_combine)
    reach_row = reach_ptr + row * BLOCK_L
    tl.store(reach_row + pos, reach)
    tl.debug_barrier()
    earlier = tl.load(reach_row + pos - 1, mask=pos >= 1, other=0)
    covered = eligible & ((reach >> 32) == segment) & ((reach & 0xFFFFFFFF) > word)
    head = chosen & ~(((earlier >> 32) == segment) & ((earlier & 0xFFFFFFFF) > word))

    # replacement: a head's span is random by its draw; with -1, covered tokens take their head's
    random_head = head & ((_draw(s1, s2, word, _STREAM_RANDOM) >> _PROB_SHIFT).to(tl.int32) < random_threshold)
    if REPLACE_LENGTH == -1:
        group = tl.associative_scan(tl.where(head, (pos << 1) | random_head.to(tl.int32), 0), 0, _max_combine)
        random_token = covered & ((group & 1) == 1)
        keep = real
    elif REPLACE_LENGTH == 1:
        random_token = random_head
        keep = real & (~covered | head)
    else:
        random_token = random_head
        keep = real & ~covered
    mask_id = tl.full([BLOCK_L], 0, tl.int64) + mask_token_id
    real_index = tl.cumsum(real.to(tl.int32), 0) - 1
    value = tl.where(covered, tl.where(random_token, _random_id(s1, s2, real_index, vocab_size), mask_id), ids)
    at = tl.cumsum(keep.to(tl.int32), 0) - 1
    m = tl.sum(keep.to(tl.int32), 0)
    tokens_row = tokens_ptr + row * BLOCK_W
    tl.store(tokens_row + at, value, mask=keep)
    tl.debug_barrier()

    # insertion: n inserts at the slots with the smallest keys, T's tokens in the others
    inserts_zero = tl.load(insert_count_ptr + row)
    inserts = inserts_zero + tl.load(insert_table_ptr + m + inserts_zero)
    lead = (m >= 2).to(tl.int32)
    total = m + inserts
    slot = tl.arange(0, BLOCK_W)
    valid = slot < total - 2 * lead
    slot_pos = slot + _INSERT_OFFSET
    slot_key = ((_draw(s1, s2, slot_pos, _STREAM_INSERT_KEY) >> 1).to(tl.int64) << LOG2_BLOCK_W) | slot
    inserted = _smallest(valid, slot_key, inserts, 32 + LOG2_BLOCK_W)
    kept_slot = valid & ~inserted
    source = lead + tl.cumsum(kept_slot.to(tl.int32), 0) - 1
    from_row = tl.load(tokens_row + source, mask=kept_slot, other=0)
    random_insert = (_draw(s1, s2, slot_pos, _STREAM_INSERT_RANDOM) >> _PROB_SHIFT).to(tl.int32) < random_threshold
    mask_w = tl.full([BLOCK_W], 0, tl.int64) + mask_token_id
    insert_id = tl.where(random_insert, _random_id(s1, s2, slot_pos, vocab_size), mask_w)
    out_row = out_ptr + row * width
    tl.store(out_row + lead + slot, tl.where(inserted, insert_id, from_row), mask=valid)
    first = tl.load(tokens_row + slot * 0, mask=slot == 0, other=0)
    last = tl.load(tokens_row + tl.maximum(m - 1, 0) + slot * 0, mask=slot == 0, other=0)
    has_ends = (slot == 0) & (slot + 1 < m)  # m >= 2 (a vector test: the interpreter widens scalar bools)
    tl.store(out_row + slot, first, mask=has_ends)
    tl.store(out_row + total - 1 + slot, last, mask=has_ends)
    pad = tl.full([BLOCK_W], 0, tl.int64) + pad_token_id
    in_width = slot < width
    tl.store(out_row + slot, pad, mask=in_width & (slot >= total))
    tl.store(attention_out_ptr + row * width + slot, (slot < total).to(tl.int64), mask=in_width)


def triton_call_reason(length: int) -> Optional[str]:
    """None when the kernel can take rows (and outputs) of ``length`` tokens, else why not."""
    if triton.next_power_of_2(length) > MAX_BLOCK:
        return (
            f"rows of {length} tokens exceed the Triton text-infilling kernel's one-block limit of {MAX_BLOCK} tokens"
        )
    return None


def triton_text_infilling(plan: TextInfillingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noised, attention_mask)`` for a validated plan (see the module docstring)."""
    input_ids = plan.input_ids
    batch, length = input_ids.shape
    device = input_ids.device
    out = torch.empty((batch, plan.width), dtype=input_ids.dtype, device=device)
    attention = torch.empty((batch, plan.width), dtype=torch.int64, device=device)
    block_l, block_w = block_size(length), block_size(plan.width)
    reach = torch.empty((batch, block_l), dtype=torch.int64, device=device)
    tokens = torch.empty((batch, block_w), dtype=torch.int64, device=device)
    _text_infilling_kernel[(batch,)](
        input_ids,
        _as_buffer(plan.attention_mask, input_ids),
        _as_buffer(plan.special_tokens_mask, input_ids),
        _as_buffer(plan.word_starts, input_ids),
        plan.row_keys,
        plan.span_lengths,
        plan.span_count,
        plan.insert_count,
        plan.insert_table,
        out,
        attention,
        reach,
        tokens,
        length,
        plan.width,
        plan.span_lengths.shape[1],
        plan.seed_mix1,
        plan.seed_mix2,
        plan.mask_token_id,
        plan.pad_token_id,
        plan.vocab_size,
        plan.random_threshold,
        REPLACE_LENGTH=plan.replace_length,
        HAS_ATTENTION=plan.attention_mask is not None,
        HAS_SPECIAL=plan.special_tokens_mask is not None,
        HAS_WORD_STARTS=plan.word_starts is not None,
        BLOCK_L=block_l,
        LOG2_BLOCK_L=block_l.bit_length() - 1,
        BLOCK_W=block_w,
        LOG2_BLOCK_W=block_w.bit_length() - 1,
        num_warps=num_warps(max(block_l, block_w)),
    )
    return out, attention
