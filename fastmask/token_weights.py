"""Per-vocabulary token weights for conditional masking: counts and weights from counts."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch

from ._validation import check_choice, check_int

__all__ = ["count_token_frequencies", "token_weights_from_counts"]


def count_token_frequencies(data, *, vocab_size: Optional[int] = None, key: str = "input_ids") -> torch.Tensor:
    """int64 ``[V]`` counts of every id in ``data``.

    ``data``: a list of dicts (``key`` column), a list of id sequences, or a ``datasets.Dataset``
    (read in column batches). ``V`` is ``vocab_size`` (e.g. ``len(tokenizer)``), grown to the
    largest id seen when smaller.
    """
    counts = np.zeros(0 if vocab_size is None else check_int("vocab_size", vocab_size, minimum=1), dtype=np.int64)

    def add(rows):
        nonlocal counts
        items = list(itertools.chain.from_iterable(r.tolist() if hasattr(r, "tolist") else r for r in rows))
        flat = np.asarray(items) if items else np.zeros(0, dtype=np.int64)
        if flat.dtype.kind not in "iu" or flat.ndim != 1:
            raise TypeError(f"{key} must hold sequences of integer ids, got {flat.dtype} values")
        flat = flat.astype(np.int64)
        if flat.size == 0:
            return
        if flat.min() < 0:
            raise ValueError(f"{key} holds a negative id ({int(flat.min())}); ids must be >= 0")
        binned = np.bincount(flat, minlength=counts.size)
        if binned.size > counts.size:
            counts = np.concatenate([counts, np.zeros(binned.size - counts.size, dtype=np.int64)])
        counts[: binned.size] += binned

    if hasattr(data, "column_names") and hasattr(data, "iter"):  # datasets.Dataset
        for chunk in data.iter(batch_size=1024):
            add(chunk[key])
        return torch.from_numpy(counts)
    chunk = []
    for item in data:
        chunk.append(item[key] if isinstance(item, Mapping) else item)
        if len(chunk) == 1024:
            add(chunk)
            chunk = []
    add(chunk)
    return torch.from_numpy(counts)


def token_weights_from_counts(
    counts, *, mode: str = "rare", alpha: float = 0.5, smoothing: float = 1.0
) -> torch.Tensor:
    """float32 ``[V]`` weights for conditional masking from token counts.

    ``mode="rare"``: ``(count + smoothing) ** -alpha`` (rare tokens are masked more often,
    e.g. PMI-style masking); ``"frequent"``: ``(count + smoothing) ** alpha``. Scaled so the
    largest weight is 1 (the masking op renormalises per row, so the expected rate stays
    ``mlm_probability``).
    """
    check_choice("mode", mode, ("rare", "frequent"))
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha={alpha!r} must be a finite number >= 0")
    if isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Real) or not 0 < smoothing < float("inf"):
        raise ValueError(f"smoothing={smoothing!r} must be a finite number > 0 (it keeps unseen ids finite)")
    values = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {values.shape}")
    if values.dtype.kind not in "iuf" or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("counts must be finite non-negative numbers (no NaN or inf)")
    exponent = -alpha if mode == "rare" else alpha
    weights = np.power(values.astype(np.float64) + smoothing, exponent)
    return torch.from_numpy((weights / weights.max()).astype(np.float32))
