"""What every loss op shares: accepted dtypes and reductions, the working dtype, the labelled-row
selection, the ``mean`` normalisation (``num_items_in_batch`` / global) and the final reduction.

Used by :mod:`fastmask.cross_entropy`, :mod:`fastmask.fused_linear_cross_entropy` and the
reference row contract; argument checks live in :mod:`fastmask._validation`.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from . import _backend
from ._validation import (
    check_bool,
    check_choice,
    check_ignore_index,
    check_items_value,
    check_label_range,
    check_label_smoothing,
    check_nonnegative_float,
)
from .distributed import global_normalizer, is_initialized

REDUCTIONS = ("none", "mean", "sum")  # index = the ops' reduction code (as torch's Reduction enum)
NONE, MEAN, SUM = range(3)
LOGITS_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LABEL_DTYPES = (torch.int32, torch.int64)


def check_loss_options(ignore_index, reduction, label_smoothing, z_loss) -> tuple[int, str, float, float]:
    """The options every loss takes, checked: ``(ignore_index, reduction, label_smoothing, z_loss)``."""
    return (
        check_ignore_index(ignore_index),
        check_choice("reduction", reduction, REDUCTIONS),
        check_label_smoothing(label_smoothing),
        check_nonnegative_float("z_loss", z_loss),
    )


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype losses and gradient math use for ``dtype`` inputs: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def select_rows(labels: torch.Tensor, ignore_index: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, targets)``: int64 indices of the labelled entries of 1-D ``labels``, and their labels."""
    rows = (labels != ignore_index).nonzero().squeeze(1)
    targets = labels.index_select(0, rows)
    check_label_range(targets, vocab, ignore_index)
    return rows, targets


def normalization(
    reduction: int, count: int, denominator: Optional[torch.Tensor], loss_scale: float
) -> tuple[float, float]:
    """``(gradient scale, divisor of the summed loss)`` for ``count`` labelled rows.

    ``mean`` divides by ``denominator`` (num_items_in_batch or the global count) or else by
    ``count``, and multiplies by ``loss_scale`` (the world size under global normalisation).
    A zero divisor with nothing labelled gives a zero loss and zero gradient.
    """
    if reduction != MEAN:
        return 1.0, 1.0
    divisor = float(denominator) if denominator is not None else float(count)
    if denominator is not None:
        # The value is read here anyway (the kernels take the scale as a number), so a CUDA
        # tensor that the public entry points did not inspect is checked too, at no extra sync.
        check_items_value(divisor)
    if divisor <= 0:
        if count > 0:
            raise ValueError(
                f"num_items_in_batch={divisor:g} but the batch has {count} labelled tokens; pass the "
                "(positive) number of labelled tokens the loss should be averaged over"
            )
        return 0.0, 0.0
    return loss_scale / divisor, divisor


def reduce_losses(loss_rows, rows, n_rows, reduction, divisor, loss_scale, dtype):
    """Per-row losses of the labelled rows -> the requested reduction, in ``dtype``."""
    if reduction == NONE:
        out = torch.zeros(n_rows, dtype=dtype, device=loss_rows.device)
        return out.index_copy_(0, rows, loss_rows.to(dtype))
    total = loss_rows.to(torch.float64).sum()
    if reduction == MEAN:
        total = total * (loss_scale / divisor) if divisor > 0 else total * 0.0
    return total.to(dtype)


def loss_normalizer(
    labels: torch.Tensor,
    ignore_index: int,
    reduction: str,
    num_items_in_batch,
    global_normalization: bool,
) -> tuple[Optional[torch.Tensor], float]:
    """``(denominator tensor or None, loss scale)`` from ``num_items_in_batch`` / ``global_normalization``."""
    check_bool("global_normalization", global_normalization)
    if num_items_in_batch is None and not global_normalization:
        return None, 1.0
    if reduction != "mean":
        option = "num_items_in_batch" if num_items_in_batch is not None else "global_normalization"
        raise ValueError(
            f"{option} changes the denominator of reduction='mean'; it has no meaning for reduction={reduction!r}"
        )
    if num_items_in_batch is not None and global_normalization:
        raise ValueError(
            "pass num_items_in_batch or global_normalization=True, not both: num_items_in_batch is "
            "already the count the loss is averaged over"
        )
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            if (
                num_items_in_batch.numel() != 1
                or num_items_in_batch.dtype == torch.bool
                or num_items_in_batch.is_complex()
            ):
                raise ValueError(
                    f"num_items_in_batch must be a number or a one-element real tensor, got a "
                    f"{num_items_in_batch.dtype} tensor of shape {tuple(num_items_in_batch.shape)}"
                )
            value = num_items_in_batch.detach().reshape(())
            # A CUDA value is checked where the op reads it (no extra sync); so is any value
            # under torch.compile, where .item() would break the graph.
            if value.device.type == "cpu" and not torch.compiler.is_compiling():
                check_items_value(value.item())
            return value, 1.0
        if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, numbers.Real):
            raise TypeError(
                f"num_items_in_batch must be an int, a float or a one-element tensor, got "
                f"{type(num_items_in_batch).__name__} {num_items_in_batch!r}"
            )
        value = check_items_value(num_items_in_batch)
        return torch.tensor(value, dtype=torch.float64), 1.0
    if not is_initialized():
        return None, 1.0
    count, world_size = global_normalizer((labels != ignore_index).sum())
    return count, float(world_size)


_FLOAT64_REASON = "float64 runs on the reference backend only (the kernels compute in fp32)"


def choose_backend(backend: str, device_type: str, float64: bool, op: str) -> str:
    """The concrete backend for one loss call, through the one dispatch every op uses
    (:func:`fastmask._backend.choose_backend`): fp64 runs on the reference only."""
    limits = (("cpp", _FLOAT64_REASON), ("triton", _FLOAT64_REASON)) if float64 else ()
    return _backend.choose_backend(op, backend, device_type, "ce_forward", limits)
