"""Argument checks shared by the public entry points: each error names the argument and the fix."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import torch

INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ID_DTYPES = (torch.int32, torch.int64)  # token ids


def check_int(name: str, value, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} is above the maximum {maximum}")
    return value


def check_token_id(name: str, value, dtype: torch.dtype) -> int:
    """``value`` as an int id that ``dtype`` (the ids' integer dtype) holds: ``0 .. iinfo(dtype).max``."""
    return check_int(name, value, minimum=0, maximum=torch.iinfo(dtype).max)


def check_real(name: str, value, expected: str) -> float:
    """``value`` as a float; TypeError naming ``name`` and what was ``expected`` for a bool or a non-number."""
    if type(value) is float:  # the common case, without the numbers.Real ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    return float(value)


def check_probability(name: str, value) -> float:
    value = check_real(name, value, "a float in [0, 1]")
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name}={value} is outside [0, 1]; pass a probability between 0 and 1")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}")
    return value


def check_tensor(name: str, value, *, dtypes=None, dim: Optional[int] = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(value.dtype).replace('torch.', '')}; expected one of: {names}")
    if dim is not None and value.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(value.shape)}")
    return value


def check_same_shape(name: str, value: torch.Tensor, reference_name: str, reference: torch.Tensor) -> None:
    if tuple(value.shape) != tuple(reference.shape):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but {reference_name} has shape "
            f"{tuple(reference.shape)}; they must match"
        )


def value_range(values: torch.Tensor) -> tuple[int, int]:
    """``(min, max)`` of a non-empty integer tensor as Python ints. On CPU one pass of the C++
    extension for contiguous int32 / int64 (else numpy): torch's reduction starts intra-op
    threads for large tensors and is ~100x slower there."""
    if values.device.type == "cpu":
        array = values.detach().numpy()
        one_pass = _one_pass_range()
        if one_pass is not None and values.dtype in _ONE_PASS_DTYPES and values.is_contiguous():
            return one_pass(array)
        return int(array.min()), int(array.max())
    lo, hi = torch.aminmax(values)
    return int(lo), int(hi)


_ONE_PASS_DTYPES = (torch.int32, torch.int64)


@functools.cache
def _one_pass_range():
    """The extension's ``value_range``, or None (not built, disabled, or a stale build)."""
    from ._backend import cpp_module  # _backend imports this module's users

    return getattr(cpp_module(), "value_range", None)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_nonnegative_float(name: str, value) -> float:
    value = check_real(name, value, "a float >= 0")
    if not (value >= 0.0 and value != float("inf")):
        raise ValueError(f"{name}={value} must be finite and >= 0")
    return value


# ----------------------------------------------------------------------------- loss arguments
def check_ignore_index(value) -> int:
    """An int in int64's range (labels are compared as int64)."""
    return check_int("ignore_index", value, minimum=-(2**63), maximum=2**63 - 1)


def check_label_smoothing(value) -> float:
    """A probability, as torch's ``label_smoothing``."""
    return check_probability("label_smoothing", value)


def check_items_value(value) -> float:
    """``num_items_in_batch`` as a float: finite and >= 0 (0 only works for a batch without
    labels; :func:`fastmask._loss_common.normalization` checks that), else ValueError naming it."""
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        value = float("inf")
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"num_items_in_batch={value:g}: the summed loss is divided by it, so it must be a finite "
            "number > 0 (the number of labelled tokens the loss is averaged over, e.g. over all "
            "gradient-accumulation steps); pass that count, or None to average over this batch's labels"
        )
    return value


def check_label_range(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """ValueError naming an offending label (the smallest or largest) outside ``[0, vocab)``."""
    if targets.numel() == 0:
        return
    lo, hi = value_range(targets)
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"labels contains {bad}, outside the {vocab} classes [0, {vocab}) of the logits and not "
            f"ignore_index={ignore_index}; every label must be a class id or ignore_index "
            "(check the vocabulary size of the head and the collator's ignore value)"
        )


def check_not_leaf_for_inplace(logits: torch.Tensor) -> None:
    """``inplace_backward=True`` overwrites the logits: torch forbids that for a leaf that
    requires grad (a parameter, or an input created with ``requires_grad=True``) and its views."""
    base = logits if logits._base is None else logits._base
    if base.is_leaf and base.requires_grad:
        what = "a leaf tensor that requires grad" if base is logits else "a view of a leaf tensor that requires grad"
        raise ValueError(
            f"inplace_backward=True would overwrite logits with its gradient, but logits is {what} "
            "(torch forbids in-place changes to such tensors, and its .grad would alias the "
            "destroyed values); pass the output of an operation (a non-leaf, e.g. a model's "
            "logits) or use inplace_backward=False"
        )


def check_token_rows(input_ids, *, max_length: int, what: str = "tokens") -> tuple[int, int]:
    """``(batch, length)`` of ``input_ids``, checked to be an int32 / int64 ``[B, L]`` tensor with at
    least one row of ``what`` and rows shorter than ``max_length``; errors name the argument."""
    check_tensor("input_ids", input_ids, dtypes=ID_DTYPES)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length] (or [length]), got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if batch == 0 or length == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); pass at least one row of {what}")
    if length >= max_length:
        raise ValueError(f"input_ids rows have {length} tokens; at most {max_length - 1} are supported")
    return batch, length
