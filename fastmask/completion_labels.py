"""Completion-only label mask: which positions of a chat / instruction row are trained on.

``completion_mask(input_ids, response_ids, instruction_ids=None, attention_mask=None)`` finds the
response (and instruction) template token ids in every row and returns ``(keep, missing)``:
``keep [B, L]`` bool, True where the label is kept (after a response template, up to the next
instruction template), and ``missing [B]`` int32 flags for rows where a template was not found
(bit 0: response, bit 1: instruction; such rows keep nothing). The rule is TRL's former
``DataCollatorForCompletionOnlyLM``, stated exactly in :mod:`fastmask.reference.completion_labels`.

Backends as every fastmask op: ``reference`` (pure torch, the oracle), ``cpp``
(``csrc/completion_labels.cpp``) and ``triton`` (:mod:`fastmask.kernels.completion_labels`), which
return identical outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch

from . import _backend
from ._plan import OpPlan, op_plan
from ._validation import ID_DTYPES, check_tensor
from .reference.completion_labels import MISSING_INSTRUCTION, MISSING_RESPONSE, reference_completion_mask

__all__ = ["completion_mask", "CompletionPlan", "MISSING_RESPONSE", "MISSING_INSTRUCTION"]


@op_plan
class CompletionPlan(OpPlan):
    """One validated call: ``input_ids [B, L]`` int32/int64 contiguous; ``response_ids [R]`` and
    ``instruction_ids [I]`` (or None) int64 contiguous, on the same device; ``attention_mask``
    None or ``[B, L]`` bool."""

    input_ids: torch.Tensor
    response_ids: torch.Tensor
    instruction_ids: Optional[torch.Tensor]
    attention_mask: Optional[torch.Tensor]


def _cpp_impl(plan: CompletionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length = plan.input_ids.shape
    keep = torch.empty((batch, length), dtype=torch.bool)
    missing = torch.empty(batch, dtype=torch.int32)
    _backend.cpp_kernels().completion_mask(plan.cpp_fields(), keep.view(torch.uint8).numpy(), missing.numpy())
    return keep, missing


def _completion_mask_fake(plan: CompletionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    ids = plan.input_ids
    return (
        torch.empty(ids.shape, dtype=torch.bool, device=ids.device),
        torch.empty(ids.shape[0], dtype=torch.int32, device=ids.device),
    )


_COMPLETION_MASK = _backend.PlanOp(
    "completion_mask",
    CompletionPlan,
    _completion_mask_fake,
    reference=reference_completion_mask,
    cpp=_cpp_impl,
    triton=("completion_labels", "triton_completion_mask"),
)


def _template(name: str, value, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        check_tensor(name, value, dtypes=ID_DTYPES + (torch.int16, torch.int8, torch.uint8))
        ids = value.reshape(-1).to(device=device, dtype=torch.int64)
    else:
        try:
            ids = torch.tensor(list(value), dtype=torch.int64, device=device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a sequence of token ids, got {value!r} ({exc})") from None
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"{name} is empty; pass the token ids of a non-empty template")
    return ids.contiguous()


def completion_mask(
    input_ids: torch.Tensor,
    response_ids: Union[Sequence[int], torch.Tensor],
    instruction_ids: Union[Sequence[int], torch.Tensor, None] = None,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep [B, L] bool, missing [B] int32)``: the completion-only label mask (see module doc).

    Args:
        input_ids: ``[B, L]`` int32/int64 token ids.
        response_ids: token ids of the response template (non-empty).
        instruction_ids: token ids of the instruction template for multi-turn rows, or None.
        attention_mask: optional ``[B, L]``; positions where it is 0 keep nothing.
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``.
    """
    _backend.check_backend_name(backend)
    check_tensor("input_ids", input_ids, dtypes=ID_DTYPES, dim=2)
    device = input_ids.device
    response = _template("response_ids", response_ids, device)
    instruction = None if instruction_ids is None else _template("instruction_ids", instruction_ids, device)
    mask = None
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}"
            )
        mask = (attention_mask.to(device) != 0).contiguous()
    return _COMPLETION_MASK(CompletionPlan(input_ids.contiguous(), response, instruction, mask), backend)
