"""``MaskedLMLoss``: a drop-in for ``nn.CrossEntropyLoss(ignore_index=-100)`` in MLM training."""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from . import _backend
from ._loss_common import check_loss_options
from ._validation import check_bool
from .cross_entropy import masked_cross_entropy

__all__ = ["MaskedLMLoss"]


class MaskedLMLoss(nn.Module):
    """Cross-entropy over the labelled positions only, through :func:`fastmask.masked_cross_entropy`.

    Replaces ``nn.CrossEntropyLoss(ignore_index=-100)`` with no other change::

        loss_fn = fastmask.MaskedLMLoss()            # was nn.CrossEntropyLoss()
        loss = loss_fn(logits.view(-1, V), labels.view(-1))

    and also accepts ``[B, L, V]`` logits with ``[B, L]`` labels (classes last, as transformers'
    heads produce; ``nn.CrossEntropyLoss`` would want ``[B, V, L]``). The forward takes an
    optional ``num_items_in_batch`` (transformers' gradient-accumulation convention; checked as
    in :func:`fastmask.masked_cross_entropy`: NaN, inf or a negative count raises ``ValueError``).

    Args:
        ignore_index, reduction, label_smoothing, z_loss, inplace_backward,
        global_normalization, backend: as :func:`fastmask.masked_cross_entropy` (with
        ``inplace_backward=True`` the logits passed in are overwritten by their gradient).

    Differences from ``nn.CrossEntropyLoss``: no class ``weight`` and no probability targets;
    a batch without labels gives 0 (torch: NaN); the loss is fp32 for fp16/bf16 logits.
    """

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        inplace_backward: bool = False,
        global_normalization: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.ignore_index, self.reduction, self.label_smoothing, self.z_loss = check_loss_options(
            ignore_index, reduction, label_smoothing, z_loss
        )
        self.inplace_backward = check_bool("inplace_backward", inplace_backward)
        self.global_normalization = check_bool("global_normalization", global_normalization)
        self.backend = _backend.check_backend_name(backend)

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        num_items_in_batch: Union[int, torch.Tensor, None] = None,
    ) -> torch.Tensor:
        return masked_cross_entropy(
            input,
            target,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            inplace_backward=self.inplace_backward,
            num_items_in_batch=num_items_in_batch,
            global_normalization=self.global_normalization,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        parts = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        for name, default in (
            ("label_smoothing", 0.0),
            ("z_loss", 0.0),
            ("inplace_backward", False),
            ("global_normalization", False),
            ("backend", "auto"),
        ):
            value = getattr(self, name)
            if value != default:
                parts.append(f"{name}={value!r}")
        return ", ".join(parts)
