"""Argument checks shared by the public entry points: each error names the argument and the fix."""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_int(name: str, value, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} is above the maximum {maximum}")
    return value


def check_probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
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
    """``(min, max)`` of a non-empty integer tensor as Python ints (numpy on CPU: torch's
    reduction starts intra-op threads for large tensors and is ~100x slower there)."""
    if values.device.type == "cpu":
        array = values.detach().numpy()
        return int(array.min()), int(array.max())
    lo, hi = torch.aminmax(values)
    return int(lo), int(hi)
