"""TEMPORARY STUB (to be replaced by the loss work): the public signature of the fused head.

Computes the same loss as the final implementation, naively (gather + linear + cross_entropy),
so code written against the API can be developed and tested meanwhile.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def fused_masked_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: Optional[int] = None,
    num_items_in_batch=None,
    global_normalization: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    logits = F.linear(hidden[keep], weight, bias).float()
    loss = F.cross_entropy(logits, labels[keep], reduction="sum", label_smoothing=label_smoothing)
    if reduction == "sum":
        return loss
    count = keep.sum()
    return loss / count.clamp_min(1)
