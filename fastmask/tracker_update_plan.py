"""``TrackerUpdatePlan``: one validated batch of per-token feedback for
:class:`fastmask.TokenLossTracker` (the scatter op), handed whole to every backend.

:func:`fastmask.token_loss_tracker.plan_tracker_update` builds it; the reference
(:mod:`fastmask.reference.token_loss_tracker`), the C++ kernel (``csrc/token_loss_tracker.cpp``,
which reads the fields by name) and the Triton kernel (:mod:`fastmask.kernels.token_loss_tracker`)
all take the plan and return the same integer sums.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._plan import OpPlan, op_plan

__all__ = ["TrackerUpdatePlan", "LOSS_FIXED_POINT_BITS", "MAX_TRACKED_LOSS", "MAX_UPDATE_POSITIONS"]

# Losses are summed as fixed-point integers: trunc(loss * 2**20) (exact: a power-of-two scale,
# then truncation of a non-negative float32). Integer sums do not depend on the order of the
# additions, so every backend (and every atomic schedule on a GPU) gives the same bits.
LOSS_FIXED_POINT_BITS = 20
# A loss above 2**16 nats is not a cross-entropy; with it, one term fits in 2**36 and a batch of
# up to 2**27 labelled positions sums below 2**63.
MAX_TRACKED_LOSS = float(1 << 16)
MAX_UPDATE_POSITIONS = 1 << 27


@op_plan
class TrackerUpdatePlan(OpPlan):
    """One validated ``TokenLossTracker.update`` batch. Tensors are contiguous, on one device.

    Buffers: ``labels`` ``[N]`` int64 (``ignore_index`` or an id in ``[0, vocab_size)``);
    ``losses`` ``[N]`` float32 (finite, in ``[0, MAX_TRACKED_LOSS]`` where labelled);
    ``correct`` ``[N]`` bool or None; ``groups`` ``[vocab_size]`` int64 in ``[0, num_groups)``
    or None (then a group is an id and ``num_groups == vocab_size``).

    Scalars: ``vocab_size``, ``num_groups``, ``ignore_index``.

    Result of every backend: int64 ``[3, num_groups]``: per group, the sum of
    ``trunc(loss * 2**LOSS_FIXED_POINT_BITS)``, the number of correct predictions and the
    number of labelled positions.
    """

    labels: torch.Tensor
    losses: torch.Tensor
    correct: Optional[torch.Tensor]
    groups: Optional[torch.Tensor]
    vocab_size: int
    num_groups: int
    ignore_index: int
