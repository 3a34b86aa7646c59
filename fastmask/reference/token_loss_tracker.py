"""Pure-torch oracle of the tracker's scatter (:class:`fastmask.TokenLossTracker.update`).

For every labelled position ``i`` (``labels[i] != ignore_index``), with
``g = groups[labels[i]]`` (or ``labels[i]`` without groups):

* ``sums[0, g] += trunc(losses[i] * 2**LOSS_FIXED_POINT_BITS)`` (int64, fixed point),
* ``sums[1, g] += correct[i]`` (0 without ``correct``),
* ``sums[2, g] += 1``.

Integer sums are independent of the order of the additions, so the C++ and Triton kernels
return the same bits.
"""

from __future__ import annotations

import torch

from ..tracker_update_plan import LOSS_FIXED_POINT_BITS

__all__ = ["reference_tracker_update"]


def reference_tracker_update(plan) -> torch.Tensor:
    """int64 ``[3, num_groups]`` sums of a :class:`~fastmask.tracker_update_plan.TrackerUpdatePlan`."""
    labels = plan.labels
    keep = labels != plan.ignore_index
    ids = labels[keep]
    target = ids if plan.groups is None else plan.groups[ids]
    scaled = (plan.losses[keep] * float(1 << LOSS_FIXED_POINT_BITS)).to(torch.int64)  # trunc toward 0
    sums = torch.zeros((3, plan.num_groups), dtype=torch.int64, device=labels.device)
    sums[0].index_add_(0, target, scaled)
    if plan.correct is not None:
        sums[1].index_add_(0, target, plan.correct[keep].to(torch.int64))
    sums[2].index_add_(0, target, torch.ones_like(target))
    return sums
