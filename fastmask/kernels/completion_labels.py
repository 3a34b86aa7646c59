"""Triton completion-only label mask: one program per row, the row in one block.

Equals :func:`fastmask.reference.completion_labels.reference_completion_mask` exactly (the same
count-based rule). Response template hits are evaluated at their *end* position
(``l - len(response)``), so an inclusive cumulative sum gives "response ends <= l" directly; the
block spans ``L + 1`` positions because a template may end at the row's end.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

MAX_BLOCK_L = 1 << 15


@triton.jit
def _template_hits(row_ptr, start, hit, tpl_ptr, tpl_len, pos, big):
    """Where the template ``tpl_ptr[:tpl_len]`` stands at ``row_ptr + start`` (lanes where ``hit``
    is set may match): ``(running count of hits up to each lane, hits, first hit's pos or big)``."""
    for j in range(0, tpl_len):
        tok = tl.load(row_ptr + start + j, mask=hit, other=0).to(tl.int64)
        hit = hit & (tok == tl.load(tpl_ptr + j))
    count = hit.to(tl.int32)
    return tl.cumsum(count, 0), tl.sum(count, 0), tl.min(tl.where(hit, pos, big), 0)


@triton.jit
def _completion_mask_kernel(
    ids_ptr,
    resp_ptr,
    inst_ptr,
    attn_ptr,
    keep_ptr,
    missing_ptr,
    length,
    resp_len,
    inst_len,
    row_stride,
    HAS_INST: tl.constexpr,
    HAS_ATTENTION: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0)
    row_off = row.to(tl.int64) * row_stride
    pos = tl.arange(0, BLOCK_L)
    big = length + resp_len + 1
    # response template ending at `pos` (starting at pos - resp_len); pos may equal length
    start = pos - resp_len
    ends_le, n_resp, first_end = _template_hits(
        ids_ptr + row_off, start, (start >= 0) & (pos <= length), resp_ptr, resp_len, pos, big
    )
    missing = tl.where(n_resp == 0, 1, 0)
    in_row = pos < length
    if HAS_INST:
        inst_le, n_inst, first_inst = _template_hits(
            ids_ptr + row_off, pos, (pos + inst_len) <= length, inst_ptr, inst_len, pos, big
        )
        missing = missing | tl.where(n_inst == 0, 2, 0)
        pre = tl.where(first_inst > first_end, 1, 0)
        turns = n_inst + pre
        last_pair = tl.minimum(turns, n_resp) - 1
        turn = tl.maximum(inst_le + pre - 1, 0)
        masked = ends_le <= tl.minimum(turn, last_pair)
        masked = masked | ((n_resp < turns) & (inst_le == n_inst))
        keep = ~masked
    else:
        keep = ends_le >= 1
    keep = keep & (missing == 0)
    if HAS_ATTENTION:
        attn = tl.load(attn_ptr + row_off + pos, mask=in_row, other=0)
        keep = keep & (attn != 0)
    tl.store(keep_ptr + row_off + pos, keep.to(tl.uint8), mask=in_row)
    tl.store(missing_ptr + row, missing.to(tl.int32))


def triton_call_reason(length: int) -> Optional[str]:
    if triton.next_power_of_2(length + 1) > MAX_BLOCK_L:
        return (
            f"rows of {length} tokens exceed the Triton completion-mask kernel's one-block limit of {MAX_BLOCK_L - 1}"
        )
    return None


def triton_completion_mask(plan) -> tuple[torch.Tensor, torch.Tensor]:
    ids = plan.input_ids
    batch, length = ids.shape
    keep = torch.empty((batch, length), dtype=torch.uint8, device=ids.device)
    missing = torch.empty(batch, dtype=torch.int32, device=ids.device)
    if batch == 0 or length == 0:
        missing.fill_(1)
        return keep.bool(), missing
    block = max(16, triton.next_power_of_2(length + 1))
    inst = plan.instruction_ids if plan.instruction_ids is not None else plan.response_ids
    attn = plan.attention_mask.view(torch.uint8) if plan.attention_mask is not None else keep
    _completion_mask_kernel[(batch,)](
        ids,
        plan.response_ids,
        inst,
        attn,
        keep,
        missing,
        length,
        plan.response_ids.numel(),
        0 if plan.instruction_ids is None else inst.numel(),
        length,
        HAS_INST=plan.instruction_ids is not None,
        HAS_ATTENTION=plan.attention_mask is not None,
        BLOCK_L=block,
        num_warps=max(1, min(16, block // 256)),
    )
    return keep.view(torch.bool), missing
