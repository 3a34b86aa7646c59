"""Triton kernel of the tracker's scatter (semantics: :mod:`fastmask.reference.token_loss_tracker`).

One program per ``BLOCK`` positions: labelled positions add their fixed-point loss, correct bit
and a count to their group's int64 slots with atomics (integer atomics: the order of the
additions does not change the result).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..tracker_update_plan import LOSS_FIXED_POINT_BITS, TrackerUpdatePlan

__all__ = ["triton_tracker_update", "triton_call_reason"]

BLOCK = 1024


@triton.jit
def _tracker_update_kernel(
    labels_ptr,
    losses_ptr,
    correct_ptr,
    groups_ptr,
    sums_ptr,
    n,
    num_groups,
    ignore_index,
    SCALE: tl.constexpr,
    HAS_CORRECT: tl.constexpr,
    HAS_GROUPS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    label = tl.load(labels_ptr + offs, mask=inside, other=ignore_index)
    keep = inside & (label != ignore_index)
    safe = tl.where(keep, label, 0)
    if HAS_GROUPS:
        group = tl.load(groups_ptr + safe, mask=keep, other=0)
    else:
        group = safe
    loss = tl.load(losses_ptr + offs, mask=keep, other=0.0)
    scaled = (loss * SCALE).to(tl.int64)
    tl.atomic_add(sums_ptr + group, scaled, mask=keep)
    if HAS_CORRECT:
        hit = tl.load(correct_ptr + offs, mask=keep, other=0).to(tl.int64)
        tl.atomic_add(sums_ptr + num_groups + group, hit, mask=keep & (hit != 0))
    tl.atomic_add(sums_ptr + 2 * num_groups + group, tl.full([BLOCK], 1, tl.int64), mask=keep)


def triton_call_reason(length: int):
    """Every length is supported (the op's dispatch protocol)."""
    return None


def triton_tracker_update(plan: TrackerUpdatePlan) -> torch.Tensor:
    labels = plan.labels
    sums = torch.zeros((3, plan.num_groups), dtype=torch.int64, device=labels.device)
    n = labels.numel()
    if n == 0:
        return sums
    correct = plan.correct.view(torch.uint8) if plan.correct is not None else labels
    groups = plan.groups if plan.groups is not None else labels
    _tracker_update_kernel[(triton.cdiv(n, BLOCK),)](
        labels,
        plan.losses,
        correct,
        groups,
        sums,
        n,
        plan.num_groups,
        plan.ignore_index,
        SCALE=float(1 << LOSS_FIXED_POINT_BITS),
        HAS_CORRECT=plan.correct is not None,
        HAS_GROUPS=plan.groups is not None,
        BLOCK=BLOCK,
        num_warps=4,
    )
    return sums
