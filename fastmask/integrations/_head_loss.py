"""The loss of a patched model's output head on its labelled rows only, shared by the masked-LM
patch (:mod:`fastmask.integrations.transformers`) and the causal-LM one
(:mod:`fastmask.integrations.causal_lm`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch

from .._constants import IGNORE_INDEX
from ..fused_linear_cross_entropy import fused_masked_lm_loss


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast runs ``nn.Linear`` in on ``device_type``, or None when it is off."""
    try:  # torch >= 2.4
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    except (TypeError, AttributeError):
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        return None


def flat_labels(labels: torch.Tensor, hidden: torch.Tensor, name: str, producer: str) -> torch.Tensor:
    """``labels`` flattened onto ``hidden``'s device, one per token position of ``hidden`` ``[..., H]``;
    ValueError naming ``name`` and what returned ``hidden`` (``producer``) otherwise."""
    width = hidden.shape[-1]
    positions = hidden.numel() // width if width else 0
    if labels.numel() != positions:
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)} ({labels.numel()} entries) but the {producer} returned "
            f"{positions} token positions (hidden {tuple(hidden.shape)}); pass one label per input token, -100 "
            "where there is no target"
        )
    return labels.to(hidden.device).reshape(-1)


def gather_rows(hidden: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows [M, H], targets [M])``: the rows of ``hidden`` ``[..., H]`` and entries of the flat
    ``labels`` where ``keep`` is True."""
    index = keep.nonzero().squeeze(1)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, index), labels.index_select(0, index)


def head_loss(
    model,
    state,
    rows: torch.Tensor,
    targets: torch.Tensor,
    num_items_in_batch,
    loss_fn: Optional[Callable] = None,
) -> torch.Tensor:
    """The loss of ``model``'s output embeddings (weight, bias if any) on the labelled ``rows``:
    :func:`fastmask.fused_masked_lm_loss`, or ``loss_fn(rows, weight, bias, targets)`` when given.

    Under autocast the inputs are cast as the unpatched ``nn.Linear`` head would run; a batch
    without labelled rows gives 0 with zero (not missing) gradients for the head.
    """
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    dtype = autocast_dtype(rows.device.type)
    if dtype is not None:
        rows, weight = rows.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    if targets.numel() == 0:
        loss = rows.float().sum() * 0.0 + weight.float().sum() * 0.0
        return loss if bias is None else loss + bias.float().sum() * 0.0
    if loss_fn is not None:
        return loss_fn(rows, weight, bias, targets)
    return fused_masked_lm_loss(
        rows,
        weight,
        targets,
        bias,
        ignore_index=IGNORE_INDEX,
        chunk_size=state.chunk_size,
        num_items_in_batch=num_items_in_batch,  # divides the sum, as transformers' fixed_cross_entropy
        global_normalization=state.global_normalization and num_items_in_batch is None,
        backend=state.backend,
        feedback=state.feedback,
    )
