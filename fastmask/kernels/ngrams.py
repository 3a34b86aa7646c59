"""Triton PMI unit kernel, bit-identical to :func:`fastmask.reference.ngrams.reference_ngram_units`
(which defines the semantics; hashes as in :mod:`fastmask.reference.ngrams`).

One program handles one row in two sequential passes (a word's hash chains ``mix64`` over its
tokens and the greedy match chases words left to right, neither of which is a parallel scan):

1. walk the tokens: eligibility and word starts as whole-word masking has them, each word's
   first position, segment and code (its token id, or its hash with the top bit set when it has
   several tokens) go to per-row scratch (indexed by word), the output row is cleared;
2. walk the words: at word ``w`` extend the n-gram key over the next ``max_n - 1`` words of the
   segment while the table holds it (an n-gram, or a prefix of one), mark ``w``'s first token
   as a unit start and jump past the longest n-gram found.

The passes are ordered by ``tl.debug_barrier()``. Speed on a GPU is bounded by the serial walk
(about ``L`` dependent loads per row, all rows in parallel); it has not been tuned.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..ngram_units_plan import NgramUnitsPlan
from ..reference.ngrams import MULTI_TOKEN_CODE, WORD_SEED

_WORD_SEED = tl.constexpr(WORD_SEED)
_MULTI_TOKEN_CODE = tl.constexpr(MULTI_TOKEN_CODE)


@triton.jit
def _mix64(x):
    x = x ^ (x >> 30)
    x = x * 0xBF58476D1CE4E5B9
    x = x ^ (x >> 27)
    x = x * 0x94D049BB133111EB
    return x ^ (x >> 31)


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
    word_pos_ptr,
    word_seg_ptr,
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
):
    row = tl.program_id(0).to(tl.int64)
    base = row * L
    words = tl.zeros((), tl.int32)
    segment = tl.zeros((), tl.int32)
    previous = tl.zeros((), tl.int32)
    h = tl.zeros((), tl.uint64)
    for i in range(0, L):
        token = tl.load(ids_ptr + base + i).to(tl.int64)
        if HAS_FLAGS:
            inside = (token >= 0) & (token < n_flags)
            f = tl.load(flags_ptr + tl.where(inside, token, 0)).to(tl.int32)
            f = tl.where(inside, f, 2)
        else:
            f = tl.full((), 2, tl.int32)
        if HAS_SPECIAL_MASK:
            eligible = (tl.load(special_ptr + base + i) == 0).to(tl.int32)
        else:
            eligible = ((f & 1) == 0).to(tl.int32)
        if HAS_ATTENTION:
            eligible = eligible & (tl.load(attention_ptr + base + i) != 0).to(tl.int32)
        if HAS_PAD:
            eligible = eligible & (token != pad_token_id).to(tl.int32)
        if HAS_WORD_STARTS:
            starts = (tl.load(word_starts_ptr + base + i) != 0).to(tl.int32)
        else:
            starts = ((f & 2) != 0).to(tl.int32)
        new_word = eligible & (starts | (previous == 0).to(tl.int32))
        segment += eligible & (previous == 0).to(tl.int32)
        tl.store(word_pos_ptr + base + words, i, mask=new_word != 0)
        tl.store(word_seg_ptr + base + words, segment, mask=new_word != 0)
        words += new_word
        # the word's hash so far, and its code: the token id for a word's first token
        bits = token.to(tl.uint64, bitcast=True)
        h = _mix64(tl.where(new_word != 0, tl.full((), _WORD_SEED, tl.uint64), h) ^ bits)
        code = tl.where(new_word != 0, bits, h | _MULTI_TOKEN_CODE)
        tl.store(word_code_ptr + base + words - 1, code.to(tl.int64, bitcast=True), mask=eligible != 0)
        previous = eligible
        tl.store(out_ptr + base + i, tl.zeros((), tl.uint8))
    tl.debug_barrier()

    mask = table_mask.to(tl.uint64)
    w = tl.zeros((), tl.int32)
    while w < words:
        g = tl.load(word_code_ptr + base + w).to(tl.uint64, bitcast=True)
        seg = tl.load(word_seg_ptr + base + w)
        best = tl.full((), 1, tl.int32)
        alive = w >= 0  # the words so far start some vocabulary n-gram
        for k in tl.static_range(1, MAX_N):
            alive = alive & (w + k < words)
            ck = tl.load(word_code_ptr + base + w + k, mask=alive, other=0).to(tl.uint64, bitcast=True)
            sk = tl.load(word_seg_ptr + base + w + k, mask=alive, other=-1)
            alive = alive & (sk == seg)
            g = _mix64(((g << 32) | (g >> 32)) ^ ck)
            key = g | 1
            slot = (key >> 1) & mask
            at = tl.load(table_ptr + slot.to(tl.int64), mask=alive, other=0).to(tl.uint64, bitcast=True)
            while (at != 0) & ((at | 1) != key):
                slot = (slot + 1) & mask
                at = tl.load(table_ptr + slot.to(tl.int64)).to(tl.uint64, bitcast=True)
            alive = alive & (at != 0)
            best = tl.where(alive & ((at & 1) == 1), k + 1, best)
        position = tl.load(word_pos_ptr + base + w)
        tl.store(out_ptr + base + position, tl.full((), 1, tl.uint8))
        w += best


def triton_call_reason(length: int) -> Optional[str]:
    """The kernel walks rows serially: any length works."""
    return None


def _as_buffer(t: Optional[torch.Tensor], dummy: torch.Tensor) -> torch.Tensor:
    if t is None:
        return dummy
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def triton_ngram_units(plan: NgramUnitsPlan) -> torch.Tensor:
    """Bool ``[B, L]`` unit starts of a validated :class:`~fastmask.ngram_units_plan.NgramUnitsPlan`."""
    ids, table = plan.input_ids, plan.table
    batch, length = ids.shape
    device = ids.device
    out = torch.empty((batch, length), dtype=torch.uint8, device=device)
    word_code = torch.empty((batch, length), dtype=torch.int64, device=device)
    word_pos = torch.empty((batch, length), dtype=torch.int32, device=device)
    word_seg = torch.empty((batch, length), dtype=torch.int32, device=device)
    flags = plan.vocab_flags
    _ngram_units_kernel[(batch,)](
        ids,
        _as_buffer(plan.special_mask, out),
        _as_buffer(plan.attention_mask, out),
        _as_buffer(plan.word_starts, out),
        _as_buffer(flags, out),
        table,
        out,
        word_code,
        word_pos,
        word_seg,
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
        num_warps=1,
    )
    return out.view(torch.bool)
