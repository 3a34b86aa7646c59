"""The token-row handling the row ops' public functions share (span corruption, text infilling):
a single ``[L]`` row as a batch of one and back, and a plan's checked rows."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ._validation import ID_DTYPES, check_tensor


def as_batch(input_ids, **row_masks: Optional[torch.Tensor]) -> tuple:
    """``(one_row, input_ids [B, L], *row_masks)``: ``input_ids`` checked to be an id tensor; a
    single row ``[L]`` (``one_row`` True) becomes ``[1, L]`` and so does each mask given (keyword
    name -> tensor or None, returned in that order; None stays None), which must then be ``[L]``
    too. :func:`unbatch` undoes it on the outputs."""
    check_tensor("input_ids", input_ids, dtypes=ID_DTYPES)
    if input_ids.dim() != 1:
        return (False, input_ids, *row_masks.values())
    for name, t in row_masks.items():
        if isinstance(t, torch.Tensor) and t.dim() != 1:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but input_ids is 1-D; pass [L] masks with [L] ids")
    return (
        True,
        input_ids.unsqueeze(0),
        *(t.reshape(1, -1) if isinstance(t, torch.Tensor) else t for t in row_masks.values()),
    )


def unbatch(one_row: bool, outputs: tuple) -> tuple:
    """``outputs`` (each ``[1, ...]``) as a single row's when ``one_row`` (see :func:`as_batch`)."""
    return tuple(t[0] for t in outputs) if one_row else outputs


def checked_rows(input_ids: torch.Tensor, row_keys, **row_masks) -> tuple:
    """``(input_ids, row_keys, *row_masks)`` for a plan: the ``[B, L]`` ids contiguous and checked
    to be >= 0, each mask (keyword name -> ``[B, L]`` tensor or None) as a bool tensor on the ids'
    device, in the order given, and the ``[B]`` int64 row keys (default ``0 .. B-1``)."""
    from .masking import _as_mask, _check_ids, _row_keys  # masking imports this module

    input_ids = input_ids.contiguous()
    _check_ids(input_ids, None)
    masks = [_as_mask(name, value, input_ids) for name, value in row_masks.items()]
    return (input_ids, _row_keys(row_keys, input_ids.shape[0], input_ids.device), *masks)


def real_positions(input_ids: torch.Tensor, attention: Optional[torch.Tensor], pad_token_id: int) -> np.ndarray:
    """``[B, L]`` numpy bool, True at each row's tokens: where ``attention`` (bool) is set, or
    without it, where the id is not ``pad_token_id``."""
    return attention.cpu().numpy() if attention is not None else input_ids.cpu().numpy() != pad_token_id
