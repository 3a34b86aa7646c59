"""Triton T5 span-corruption kernel, bit-identical to :mod:`fastmask.reference.sentinel_spans`
(which defines the semantics) with the generator of :mod:`fastmask._rng`.

One program handles one row, the whole row in one block of ``BLOCK_L`` (a power of two):

* real tokens, unit starts and unit indices are elementwise tests and cumsums;
* each random composition keeps the ``S - 1`` smallest gap keys ``(draw >> 1, gap)``, found by
  a bitwise binary search on the packed key (one block sum per bit), as the masking kernel's
  exact budget does;
* the sorted cut positions (their rank is a cumsum) go to a per-row scratch buffer, are read
  back by rank, and the segment starts ``KS_j + NS_j`` / ``KS_{j+1} + NS_j`` are marked in the
  same scratch; a cumsum of the marks at unit starts gives every token's segment;
* output offsets are cumsums of what each token emits (the per-row prefix sums); EOS and
  padding fill the rest of each output row.

The scratch round trips are ordered by ``tl.debug_barrier()`` (one CTA per row).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _rng
from ..sentinel_spans_plan import SpanCorruptionPlan
from .masking import _as_buffer, _draw, _num_warps, _row_state, block_size

MAX_BLOCK_L = 16384

_STREAM_NOISE_CUT = tl.constexpr(_rng.STREAM_NOISE_CUT)
_STREAM_KEEP_CUT = tl.constexpr(_rng.STREAM_KEEP_CUT)


@triton.jit
def _smallest(valid, key, count, KEY_BITS: tl.constexpr):
    """``valid & (key < bound)`` for the largest ``bound`` with at most ``count`` such keys
    (keys are distinct and below ``2**KEY_BITS - 1``): the ``count`` smallest valid keys."""
    bound = tl.full([], 0, tl.int64)
    bit = tl.full([], 1, tl.int64) << (KEY_BITS - 1)
    for _bit in range(KEY_BITS):
        trial = bound | bit
        below = tl.sum((valid & (key < trial)).to(tl.int32), 0)
        bound = tl.where(below <= count, trial, bound)
        bit = bit >> 1
    return valid & (key < bound)


@triton.jit
def _span_corruption_kernel(
    ids_ptr,
    attention_ptr,
    word_starts_ptr,
    row_keys_ptr,
    noise_table_ptr,
    spans_table_ptr,
    inputs_ptr,
    targets_ptr,
    scratch_ptr,
    length,
    inputs_length,
    targets_length,
    seed_mix1,
    seed_mix2,
    first_sentinel_id,
    eos_token_id,
    pad_token_id,
    HAS_ATTENTION: tl.constexpr,
    HAS_WORD_STARTS: tl.constexpr,
    BLOCK_L: tl.constexpr,
    LOG2_BLOCK_L: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    pos = tl.arange(0, BLOCK_L)
    in_row = pos < length
    row_off = row * length
    ids = tl.load(ids_ptr + row_off + pos, mask=in_row, other=0).to(tl.int64)
    if HAS_ATTENTION:
        real = in_row & (tl.load(attention_ptr + row_off + pos, mask=in_row, other=0) != 0)
    else:
        real = in_row & (ids != pad_token_id)
    if HAS_WORD_STARTS:
        first = tl.cumsum(real.to(tl.int32), 0) == 1
        starts = real & ((tl.load(word_starts_ptr + row_off + pos, mask=in_row, other=0) != 0) | first)
    else:
        starts = real
    unit_index = tl.cumsum(starts.to(tl.int32), 0) - 1
    units = tl.sum(starts.to(tl.int32), 0)
    noise = tl.load(noise_table_ptr + units)
    spans = tl.load(spans_table_ptr + units)
    keep = units - noise
    s1, s2 = _row_state(tl.load(row_keys_ptr + row), seed_mix1, seed_mix2)

    # the two compositions: S - 1 cuts each, ranked by (draw >> 1, gap)
    noise_key = ((_draw(s1, s2, pos, _STREAM_NOISE_CUT) >> 1).to(tl.int64) << LOG2_BLOCK_L) | pos
    keep_key = ((_draw(s1, s2, pos, _STREAM_KEEP_CUT) >> 1).to(tl.int64) << LOG2_BLOCK_L) | pos
    noise_cut = _smallest((pos >= 1) & (pos < noise), noise_key, spans - 1, 32 + LOG2_BLOCK_L)
    keep_cut = _smallest((pos >= 1) & (pos < keep), keep_key, spans - 1, 32 + LOG2_BLOCK_L)

    # scratch (zeroed by the host): NS[0 .. S], KS[0 .. S], then a mark per unit
    base = scratch_ptr + row * (3 * (BLOCK_L + 1))
    ns_ptr = base
    ks_ptr = base + (BLOCK_L + 1)
    mark_ptr = base + 2 * (BLOCK_L + 1)
    tl.store(ns_ptr + tl.cumsum(noise_cut.to(tl.int32), 0), pos, mask=noise_cut)
    tl.store(ks_ptr + tl.cumsum(keep_cut.to(tl.int32), 0), pos, mask=keep_cut)
    tl.store(ns_ptr + spans + pos, noise + pos * 0, mask=pos == 0)
    tl.store(ks_ptr + spans + pos, keep + pos * 0, mask=pos == 0)
    tl.debug_barrier()
    segment_ok = pos < spans
    ns_j = tl.load(ns_ptr + pos, mask=segment_ok, other=0)
    ks_j = tl.load(ks_ptr + pos, mask=segment_ok, other=0)
    ks_next = tl.load(ks_ptr + pos + 1, mask=segment_ok, other=0)
    one = tl.full([BLOCK_L], 1, tl.int32)
    tl.store(mark_ptr + ks_j + ns_j, one, mask=segment_ok & (pos > 0))  # kept segment j starts
    tl.store(mark_ptr + ks_next + ns_j, one, mask=segment_ok)  # noise segment (span) j starts
    tl.debug_barrier()
    mark = tl.load(mark_ptr + unit_index, mask=starts, other=0)
    segment = tl.cumsum(mark, 0)
    is_noise = real & ((segment & 1) == 1)
    span_first = is_noise & (mark == 1)
    sentinel = first_sentinel_id - (segment >> 1).to(tl.int64)

    # inputs: kept tokens and one sentinel per span, at the prefix sums of what they emit
    emit_in = (real & ~is_noise) | span_first
    at_in = tl.cumsum(emit_in.to(tl.int32), 0) - 1
    n_in = tl.sum(emit_in.to(tl.int32), 0)
    in_row_ptr = inputs_ptr + row * inputs_length
    tl.store(in_row_ptr + at_in, tl.where(span_first, sentinel, ids), mask=emit_in)
    # targets: per span its sentinel, then its tokens
    emit_out = is_noise.to(tl.int32) + span_first.to(tl.int32)
    at_out = tl.cumsum(emit_out, 0) - emit_out
    n_out = tl.sum(emit_out, 0)
    out_row_ptr = targets_ptr + row * targets_length
    tl.store(out_row_ptr + at_out, sentinel, mask=span_first)
    tl.store(out_row_ptr + at_out + span_first.to(tl.int32), ids, mask=is_noise)
    # EOS, then padding
    tail = tl.arange(0, BLOCK_OUT)
    eos = tl.full([BLOCK_OUT], 0, tl.int64) + eos_token_id
    pad = tl.full([BLOCK_OUT], 0, tl.int64) + pad_token_id
    tl.store(in_row_ptr + tail, tl.where(tail == n_in, eos, pad), mask=(tail >= n_in) & (tail < inputs_length))
    tl.store(out_row_ptr + tail, tl.where(tail == n_out, eos, pad), mask=(tail >= n_out) & (tail < targets_length))


def triton_call_reason(length: int) -> Optional[str]:
    """None when the kernel can take rows of ``length`` tokens, else why not."""
    if triton.next_power_of_2(length) > MAX_BLOCK_L:
        return f"rows of {length} tokens exceed the Triton span-corruption kernel's one-block limit of {MAX_BLOCK_L} tokens"
    return None


def triton_span_corruption(plan: SpanCorruptionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` for a validated plan (see the module docstring)."""
    input_ids = plan.input_ids
    batch, length = input_ids.shape
    device = input_ids.device
    inputs = torch.empty((batch, plan.inputs_length), dtype=input_ids.dtype, device=device)
    targets = torch.empty((batch, plan.targets_length), dtype=input_ids.dtype, device=device)
    block_l, block_out = block_size(length), block_size(max(plan.inputs_length, plan.targets_length))
    scratch = torch.zeros((batch, 3 * (block_l + 1)), dtype=torch.int32, device=device)
    _span_corruption_kernel[(batch,)](
        input_ids,
        _as_buffer(plan.attention_mask, input_ids),
        _as_buffer(plan.word_starts, input_ids),
        plan.row_keys,
        plan.noise_table,
        plan.spans_table,
        inputs,
        targets,
        scratch,
        length,
        plan.inputs_length,
        plan.targets_length,
        plan.seed_mix1,
        plan.seed_mix2,
        plan.first_sentinel_id,
        plan.eos_token_id,
        plan.pad_token_id,
        HAS_ATTENTION=plan.attention_mask is not None,
        HAS_WORD_STARTS=plan.word_starts is not None,
        BLOCK_L=block_l,
        LOG2_BLOCK_L=block_l.bit_length() - 1,
        BLOCK_OUT=block_out,
        num_warps=_num_warps(block_l),
    )
    return inputs, targets
