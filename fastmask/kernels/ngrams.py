"""Triton PMI unit kernel, bit-identical to :func:`fastmask.reference.ngrams.reference_ngram_units`
(which defines the semantics; hashes as in :mod:`fastmask.reference.ngrams`).

One program handles one row as a block of ``BLOCK_L`` lanes (the masking kernel's block size;
warps by :func:`num_warps`), in four data-parallel steps ordered by ``tl.debug_barrier()``
through per-row scratch:

1. tokens: eligibility and word starts as whole-word masking has them (``_tokens_at``), segments
   and word indices by prefix sums; each word's code (its token id, or the ``mix64`` chain over
   its tokens with the top bit set) is computed at its first token, stepping all words together
   one token at a time (as many steps as the row's longest word has tokens); codes and segments
   go to scratch, indexed by word;
2. words: lane ``w`` extends the n-gram key over words ``w + 1 .. w + max_n - 1`` of its segment
   and probes the table at each length (all words at once, linear probing in step), giving
   ``best[w]``, the length of the longest vocabulary n-gram starting at ``w`` (1 when none);
3. the greedy walk as a prefix scan: word ``w`` maps the walk's state ``s`` (words left in the
   current unit) to ``best[w] - 1`` when ``s == 0`` (``w`` starts a unit) else ``s - 1``; these
   maps of ``max_n <= 8`` states pack into 3-bit fields of an int32 and compose associatively,
   so ``tl.associative_scan`` gives the state after every word;
4. a word starts a unit when the state after the word before it is 0.

Rows longer than ``MAX_BLOCK_L`` tokens (the masking kernel's one-block limit, which PMI masking
has anyway) are refused with the reason. Speed on a GPU has not been measured.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..ngram_units_plan import NgramUnitsPlan
from ..reference.ngrams import MULTI_TOKEN_CODE, WORD_SEED
from .masking import MAX_BLOCK_L, _as_buffer, _tokens_at, block_size

_WORD_SEED = tl.constexpr(WORD_SEED)
_MULTI_TOKEN_CODE = tl.constexpr(MULTI_TOKEN_CODE)
# the walk's maps: 8 states (max_n <= 8) in 3-bit fields
_STATE_BITS = tl.constexpr(3)
_STATES = tl.constexpr(8)
_IDENTITY = tl.constexpr(sum(s << (3 * s) for s in range(8)))  # s -> s
_STEP = tl.constexpr(sum((s - 1) << (3 * s) for s in range(1, 8)))  # s -> s - 1 for s >= 1; field 0 empty


@triton.jit
def _mix64(x):
    x = x ^ (x >> 30)
    x = x * 0xBF58476D1CE4E5B9
    x = x ^ (x >> 27)
    x = x * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _compose(a, b):
    """The map ``s -> b(a(s))`` of two packed maps (``a`` first)."""
    c = a & 0
    for s in tl.static_range(_STATES):
        a_s = (a >> (_STATE_BITS * s)) & 7
        c = c | (((b >> (_STATE_BITS * a_s)) & 7) << (_STATE_BITS * s))
    return c


@triton.jit
def _ngram_units_kernel(
    ids_ptr,
    special_ptr,
    attention_ptr,
    word_starts_ptr,
    flags_ptr,
    table_ptr,
    out_ptr,
    word_code_ptr,
    word_seg_ptr,
    word_state_ptr,
    L,
    n_flags,
    pad_token_id,
    table_mask,
    HAS_SPECIAL_MASK: tl.constexpr,
    HAS_ATTENTION: tl.constexpr,
    HAS_WORD_STARTS: tl.constexpr,
    HAS_FLAGS: tl.constexpr,
    HAS_PAD: tl.constexpr,
    MAX_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    row_off = tl.program_id(0).to(tl.int64) * L
    pos = tl.arange(0, BLOCK_L)
    inside = pos < L
    # 1. tokens -> words
    ids, eligible, starts = _tokens_at(
        ids_ptr, special_ptr, attention_ptr, word_starts_ptr, flags_ptr, row_off, pos, L, n_flags, pad_token_id,
        HAS_SPECIAL_MASK, HAS_ATTENTION, HAS_WORD_STARTS, HAS_FLAGS, HAS_PAD,
    )  # fmt: skip
    _, eligible_before, _ = _tokens_at(
        ids_ptr, special_ptr, attention_ptr, word_starts_ptr, flags_ptr, row_off, pos - 1, L, n_flags, pad_token_id,
        HAS_SPECIAL_MASK, HAS_ATTENTION, HAS_WORD_STARTS, HAS_FLAGS, HAS_PAD,
    )  # fmt: skip
    new_segment = eligible & (eligible_before == 0)
    new_word = eligible & (starts | new_segment)
    segment = tl.cumsum(new_segment.to(tl.int32), 0)
    word = tl.cumsum(new_word.to(tl.int32), 0) - 1  # a token's word (eligible tokens)
    words = tl.sum(new_word.to(tl.int32), 0)
    bits = ids.to(tl.uint64, bitcast=True)
    h = _mix64(bits ^ _WORD_SEED)
    live = new_word  # the word's tokens so far all continue it
    several = pos < 0  # the word has more than one token
    step = 1
    while tl.max(live.to(tl.int32), 0) > 0:
        next_ids, next_eligible, next_starts = _tokens_at(
            ids_ptr, special_ptr, attention_ptr, word_starts_ptr, flags_ptr, row_off, pos + step, L, n_flags,
            pad_token_id, HAS_SPECIAL_MASK, HAS_ATTENTION, HAS_WORD_STARTS, HAS_FLAGS, HAS_PAD,
        )  # fmt: skip
        live = live & next_eligible & (next_starts == 0)
        h = tl.where(live, _mix64(h ^ next_ids.to(tl.uint64, bitcast=True)), h)
        several = several | live
        step += 1
    code = tl.where(several, h | _MULTI_TOKEN_CODE, bits)
    tl.store(word_code_ptr + row_off + word, code.to(tl.int64, bitcast=True), mask=new_word)
    tl.store(word_seg_ptr + row_off + word, segment, mask=new_word)
    tl.debug_barrier()

    # 2. words -> the longest vocabulary n-gram at each
    is_word = pos < words
    g = tl.load(word_code_ptr + row_off + pos, mask=is_word, other=0).to(tl.uint64, bitcast=True)
    seg = tl.load(word_seg_ptr + row_off + pos, mask=is_word, other=-1)
    mask = table_mask.to(tl.uint64)
    best = tl.full((BLOCK_L,), 1, tl.int32)
    alive = is_word  # words w .. w + k - 1 start some vocabulary n-gram
    for k in tl.static_range(1, MAX_N):
        alive = alive & (pos + k < words)
        ck = tl.load(word_code_ptr + row_off + pos + k, mask=alive, other=0).to(tl.uint64, bitcast=True)
        sk = tl.load(word_seg_ptr + row_off + pos + k, mask=alive, other=-1)
        alive = alive & (sk == seg)
        g = _mix64(((g << 32) | (g >> 32)) ^ ck)
        key = g | 1
        slot = (key >> 1) & mask
        at = tl.load(table_ptr + slot.to(tl.int64), mask=alive, other=0).to(tl.uint64, bitcast=True)
        probing = alive & (at != 0) & ((at | 1) != key)
        while tl.max(probing.to(tl.int32), 0) > 0:
            slot = tl.where(probing, (slot + 1) & mask, slot)
            again = tl.load(table_ptr + slot.to(tl.int64), mask=probing, other=0).to(tl.uint64, bitcast=True)
            at = tl.where(probing, again, at)
            probing = probing & (at != 0) & ((at | 1) != key)
        alive = alive & (at != 0)
        best = tl.where(alive & ((at & 1) == 1), k + 1, best)

    # 3. the greedy walk: states after each word
    maps = tl.where(is_word, _STEP | (best - 1), _IDENTITY)
    after = tl.associative_scan(maps, 0, _compose) & 7
    tl.store(word_state_ptr + row_off + pos, after, mask=is_word)
    tl.debug_barrier()

    # 4. a word starts a unit when the walk is at state 0 before it
    before = tl.load(word_state_ptr + row_off + word - 1, mask=new_word & (word > 0), other=0)
    tl.store(out_ptr + row_off + pos, (new_word & (before == 0)).to(tl.uint8), mask=inside)


def num_warps(block_l: int) -> int:
    """The launcher's ``num_warps``: about 2 positions per thread (a quarter of the masking
    kernel's: the probes keep several 64-bit keys per position live), 1 to 32 warps. Compiled
    offline for sm_80 / sm_90 with 0 spills at ``BLOCK_L`` 512 (8 warps) and 2048 (32); at 512
    with 2 or 4 warps ptxas spilled 4 to 8 bytes for one of the targets."""
    return max(1, min(32, block_l // 64))


def triton_call_reason(length: int) -> Optional[str]:
    """None when the kernel can take rows of ``length`` tokens, else why not."""
    if triton.next_power_of_2(length) > MAX_BLOCK_L:
        return f"rows of {length} tokens exceed the Triton n-gram unit kernel's one-block limit of {MAX_BLOCK_L} tokens"
    return None


def triton_ngram_units(plan: NgramUnitsPlan) -> torch.Tensor:
    """Bool ``[B, L]`` unit starts of a validated :class:`~fastmask.ngram_units_plan.NgramUnitsPlan`."""
    ids, table = plan.input_ids, plan.table
    batch, length = ids.shape
    device = ids.device
    out = torch.empty((batch, length), dtype=torch.uint8, device=device)
    if out.numel() == 0:
        return out.view(torch.bool)
    word_code = torch.empty((batch, length), dtype=torch.int64, device=device)
    word_seg = torch.empty((batch, length), dtype=torch.int32, device=device)
    word_state = torch.empty((batch, length), dtype=torch.int32, device=device)
    flags = plan.vocab_flags
    block = block_size(length)
    _ngram_units_kernel[(batch,)](
        ids,
        _as_buffer(plan.special_mask, out),
        _as_buffer(plan.attention_mask, out),
        _as_buffer(plan.word_starts, out),
        _as_buffer(flags, out),
        table,
        out,
        word_code,
        word_seg,
        word_state,
        length,
        0 if flags is None else flags.numel(),
        plan.pad_token_id,
        table.numel() - 1,
        HAS_SPECIAL_MASK=plan.special_mask is not None,
        HAS_ATTENTION=plan.attention_mask is not None,
        HAS_WORD_STARTS=plan.word_starts is not None,
        HAS_FLAGS=flags is not None,
        HAS_PAD=plan.pad_token_id >= 0,
        MAX_N=plan.max_n,
        BLOCK_L=block,
        num_warps=num_warps(block),
    )
    return out.view(torch.bool)
