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

import dataclasses
from collections.abc import Sequence
from typing import Optional, Union

import torch

from . import _backend
from ._validation import check_tensor
from .reference.completion_labels import MISSING_INSTRUCTION, MISSING_RESPONSE, reference_completion_mask

__all__ = ["completion_mask", "CompletionPlan", "MISSING_RESPONSE", "MISSING_INSTRUCTION"]

_ID_DTYPES = (torch.int32, torch.int64)


@dataclasses.dataclass(frozen=True)
class CompletionPlan:
    """One validated call: ``input_ids [B, L]`` int32/int64 contiguous; ``response_ids [R]`` and
    ``instruction_ids [I]`` (or None) int64 contiguous, on the same device; ``attention_mask``
    None or ``[B, L]`` bool."""

    input_ids: torch.Tensor
    response_ids: torch.Tensor
    instruction_ids: Optional[torch.Tensor]
    attention_mask: Optional[torch.Tensor]

    def to_op_args(self) -> tuple[list[Optional[torch.Tensor]], list[int]]:
        return [self.input_ids, self.response_ids, self.instruction_ids, self.attention_mask], []

    @classmethod
    def from_op_args(cls, buffers: list, scalars: list) -> CompletionPlan:
        return cls(*buffers)


def _cpp_impl(plan: CompletionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length = plan.input_ids.shape
    keep = torch.empty((batch, length), dtype=torch.bool)
    missing = torch.empty(batch, dtype=torch.int32)
    fields = {
        "input_ids": plan.input_ids.numpy(),
        "response_ids": plan.response_ids.numpy(),
        "instruction_ids": None if plan.instruction_ids is None else plan.instruction_ids.numpy(),
        "attention_mask": None if plan.attention_mask is None else plan.attention_mask.view(torch.uint8).numpy(),
    }
    _backend.cpp_kernels().completion_mask(fields, keep.view(torch.uint8).numpy(), missing.numpy())
    return keep, missing


def _triton_impl(plan: CompletionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    from .kernels.completion_labels import triton_completion_mask

    return triton_completion_mask(plan)


_IMPLS = {"reference": reference_completion_mask, "cpp": _cpp_impl, "triton": _triton_impl}


@torch.library.custom_op("fastmask::completion_mask", mutates_args=())
def _completion_mask_op(
    buffers: list[Optional[torch.Tensor]], scalars: list[int], backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return _IMPLS[backend](CompletionPlan.from_op_args(buffers, scalars))


@_completion_mask_op.register_fake
def _completion_mask_fake(buffers, scalars, backend):
    ids = buffers[0]
    return (
        torch.empty(ids.shape, dtype=torch.bool, device=ids.device),
        torch.empty(ids.shape[0], dtype=torch.int32, device=ids.device),
    )


def _template(name: str, value, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        check_tensor(name, value, dtypes=_ID_DTYPES + (torch.int16, torch.int8, torch.uint8))
        ids = value.reshape(-1).to(device=device, dtype=torch.int64)
    else:
        try:
            ids = torch.tensor(list(value), dtype=torch.int64, device=device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a sequence of token ids, got {value!r} ({exc})") from None
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"{name} is empty; pass the token ids of a non-empty template")
    return ids.contiguous()


def _triton_limits(device_type: str, length: int) -> tuple:
    if device_type == "cpu" and not _backend.triton_interpreting():
        return ()
    try:
        from .kernels.completion_labels import triton_call_reason
    except ImportError:
        return ()
    reason = triton_call_reason(length)
    return (("triton", reason),) if reason else ()


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
    check_tensor("input_ids", input_ids, dtypes=_ID_DTYPES, dim=2)
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
    plan = CompletionPlan(input_ids.contiguous(), response, instruction, mask)
    chosen = _backend.choose_backend(
        "completion_mask", backend, device.type, "completion_mask", _triton_limits(device.type, input_ids.shape[1])
    )
    return _backend.call_op(_completion_mask_op, _IMPLS, chosen, plan)
