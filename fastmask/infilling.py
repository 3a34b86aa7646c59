"""BART text infilling (the op): whole-word spans with Poisson lengths become one mask each (or a
mask per token, or nothing), zero-length spans and ``insert_ratio`` insert masks — fairseq's
``DenoisingDataset`` noise, as a kernel.

``text_infilling`` is two steps, each public: :func:`plan_text_infilling` validates the
arguments into a :class:`~fastmask.infilling_plan.TextInfillingPlan` (word counts, the
span lengths drawn on the host from the counter-based generator, tables, the output width), and
:func:`run_text_infilling` hands the plan to one of three implementations that return
bit-identical results: the pure-torch reference (:mod:`fastmask.reference.infilling`,
which documents the exact semantics), the C++ kernel (``csrc/infilling.cpp``) and the
Triton kernel (:mod:`fastmask.kernels.infilling`).

The op's files share the stem ``infilling`` rather than ``text_infilling``: a submodule named
like the exported function would replace ``fastmask.text_infilling`` (the function) by the
module as soon as it is imported.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch

from . import _backend, _rng
from ._op_rows import as_batch, checked_rows, real_positions, unbatch
from ._validation import check_int, check_probability, check_real, check_token_id, check_token_rows
from .infilling_plan import TextInfillingPlan
from .reference.infilling import (
    ceil_ratio,
    draw_spans,
    poisson_thresholds,
    reference_text_infilling,
)

__all__ = ["text_infilling", "plan_text_infilling", "run_text_infilling"]

REPLACE_LENGTHS = (-1, 0, 1)
MAX_ROW_LENGTH = _rng.INFILL_INSERT_OFFSET // 4  # insertion slots draw at INFILL_INSERT_OFFSET + p


# ----------------------------------------------------------------------------- checks
def check_mask_ratio(mask_ratio) -> float:
    return check_probability("mask_ratio", mask_ratio)


def check_poisson_lambda(poisson_lambda) -> float:
    value = check_real("poisson_lambda", poisson_lambda, "a positive float")
    if not (value > 0.0) or math.isinf(value):
        raise ValueError(
            f"poisson_lambda={poisson_lambda!r} must be a finite number > 0 (the mean span length in words), "
            "e.g. 3.0 (BART's default)"
        )
    if _thresholds(value)[0] >= _rng.PROB_ONE:
        raise ValueError(
            f"poisson_lambda={poisson_lambda!r} is so small that every span has length 0 at the generator's "
            "24-bit resolution; pass poisson_lambda >= 1e-6"
        )
    return value


def check_replace_length(replace_length) -> int:
    if isinstance(replace_length, bool) or not isinstance(replace_length, numbers.Integral):
        raise TypeError(f"replace_length must be -1, 0 or 1, got {type(replace_length).__name__} {replace_length!r}")
    if int(replace_length) not in REPLACE_LENGTHS:
        raise ValueError(
            f"replace_length={replace_length!r} is not one of (-1, 0, 1): 1 replaces a span by one mask, "
            "-1 masks each of its tokens, 0 deletes it"
        )
    return int(replace_length)


@functools.lru_cache(maxsize=64)
def _thresholds(poisson_lambda: float) -> tuple:
    return tuple(poisson_thresholds(poisson_lambda))


@functools.lru_cache(maxsize=64)
def _budget_table(size: int, mask_ratio: float) -> np.ndarray:
    return np.array([ceil_ratio(w, mask_ratio) for w in range(size + 1)], dtype=np.int64)


def _span_lengths(keys: torch.Tensor, mix1: int, mix2: int, budgets: np.ndarray, thresholds: tuple, cap: int):
    """:func:`fastmask.reference.infilling.draw_spans` (the oracle) for int64 ``budgets`` ``[B]``,
    by the C++ extension when it is built: the same arrays, without numpy's passes over
    ``[B, cap]`` draws."""
    module = _backend.cpp_module()
    spans = getattr(module, "infilling_span_lengths", None)
    if spans is None:
        return draw_spans(keys, mix1, mix2, torch.from_numpy(budgets), list(thresholds), cap)
    lengths, count, inserts = spans(keys.cpu().numpy(), mix1, mix2, budgets, _thresholds_array(thresholds), cap)
    return torch.from_numpy(lengths), torch.from_numpy(count), torch.from_numpy(inserts)


@functools.lru_cache(maxsize=64)
def _thresholds_array(thresholds: tuple) -> np.ndarray:
    return np.asarray(thresholds, dtype=np.int64)  # read only


def _insert_table(size: int, insert_ratio: float) -> torch.Tensor:
    """``[size + 1]`` int32: ``ceil_ratio(x, insert_ratio)`` (a slice of a table cached per power of two)."""
    return _insert_table_pow2(1 << max(4, size.bit_length()), insert_ratio)[: size + 1]


@functools.lru_cache(maxsize=64)
def _insert_table_pow2(size: int, insert_ratio: float) -> torch.Tensor:
    return torch.tensor([ceil_ratio(x, insert_ratio) for x in range(size + 1)], dtype=torch.int32)


# ----------------------------------------------------------------------------- backends
def _cpp_impl(plan: TextInfillingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    B = plan.input_ids.shape[0]
    out = torch.empty((B, plan.width), dtype=plan.input_ids.dtype)
    attention = torch.empty((B, plan.width), dtype=torch.int64)
    _backend.cpp_kernels().text_infilling(plan.cpp_fields(), out.numpy(), attention.numpy())
    return out, attention


def _text_infilling_fake(plan: TextInfillingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    ids = plan.input_ids
    return ids.new_empty((ids.shape[0], plan.width)), ids.new_empty((ids.shape[0], plan.width), dtype=torch.int64)


_TEXT_INFILLING = _backend.PlanOp(
    "text_infilling",
    TextInfillingPlan,
    _text_infilling_fake,
    reference=reference_text_infilling,
    cpp=_cpp_impl,
    triton=("infilling", "triton_text_infilling"),
    row_length=lambda plan: max(plan.input_ids.shape[1], plan.width),
)


def run_text_infilling(plan: TextInfillingPlan, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(noised_input_ids, attention_mask)`` for a plan from :func:`plan_text_infilling`, on ``backend``."""
    return _TEXT_INFILLING(plan, backend)


# ----------------------------------------------------------------------------- plan
def plan_text_infilling(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    pad_token_id: int,
    vocab_size: int,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    random_ratio: float = 0.1,
    replace_length: int = 1,
    insert_ratio: float = 0.0,
    word_starts: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    special_tokens_mask: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    row_keys: Union[torch.Tensor, Sequence[int], None] = None,
) -> TextInfillingPlan:
    """Validate :func:`text_infilling`'s arguments (``input_ids`` ``[B, L]``) into a plan."""
    _, length = check_token_rows(input_ids, max_length=MAX_ROW_LENGTH)
    mask_ratio = check_mask_ratio(mask_ratio)
    poisson_lambda = check_poisson_lambda(poisson_lambda)
    random_ratio = check_probability("random_ratio", random_ratio)
    replace_length = check_replace_length(replace_length)
    insert_ratio = check_probability("insert_ratio", insert_ratio)
    mask_token_id = check_token_id("mask_token_id", mask_token_id, input_ids.dtype)
    pad_token_id = check_token_id("pad_token_id", pad_token_id, input_ids.dtype)
    id_max = torch.iinfo(input_ids.dtype).max
    vocab_size = check_int("vocab_size", vocab_size, minimum=1, maximum=min(id_max, 2**31 - 1) + 1)
    seed = _rng.resolve_seed(seed)

    input_ids, keys, attention, special, starts = checked_rows(
        input_ids,
        row_keys,
        attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask,
        word_starts=word_starts,
    )
    device = input_ids.device

    # host side (numpy): words per row -> budgets -> span lengths (step 3), and the output width
    real = real_positions(input_ids, attention, pad_token_id)
    eligible = real & ~special.cpu().numpy() if special is not None else real
    previous = np.zeros_like(eligible)
    previous[:, 1:] = eligible[:, :-1]
    word_start = eligible & ~previous
    word_start |= eligible if starts is None else eligible & starts.cpu().numpy()
    words = word_start.sum(axis=1)
    budgets = _budget_table(length, mask_ratio)[words]  # int64 [B]
    mix1, mix2 = _rng.seed_mix(seed)
    span_lengths, span_count, insert_count = _span_lengths(
        keys, mix1, mix2, budgets, _thresholds(poisson_lambda), 4 * length + 64
    )
    grown = real.sum(axis=1) + insert_count.numpy()  # m + I is at most this
    table = _insert_table(length + int(insert_count.max()), insert_ratio)  # any row of L tokens
    width = max(1, int((grown + table.numpy()[grown]).max()))
    return TextInfillingPlan(
        input_ids=input_ids,
        row_keys=keys,
        attention_mask=attention,
        special_tokens_mask=special,
        word_starts=starts,
        span_lengths=span_lengths.to(device),
        span_count=span_count.to(device),
        insert_count=insert_count.to(device),
        insert_table=table.to(device),
        seed_mix1=mix1,
        seed_mix2=mix2,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        vocab_size=vocab_size,
        random_threshold=_rng.probability_threshold(random_ratio),
        replace_length=replace_length,
        width=width,
    )


def text_infilling(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    pad_token_id: int,
    vocab_size: int,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    random_ratio: float = 0.1,
    replace_length: int = 1,
    insert_ratio: float = 0.0,
    word_starts: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    special_tokens_mask: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    row_keys: Union[torch.Tensor, Sequence[int], None] = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """BART text infilling of every row (semantics: :mod:`fastmask.reference.infilling`).

    Per row of ``W`` eligible words (real, non-special tokens), spans of Poisson(``poisson_lambda``)
    words cover ``ceil(W * mask_ratio)`` words from uniformly chosen distinct start words;
    ``replace_length`` 1 turns a span into one ``mask_token_id``, -1 masks each of its tokens,
    0 deletes it; ``random_ratio`` of the spans get random ids instead of masks; zero-length
    spans, and ``ceil(tokens * insert_ratio)`` more, insert masks (never first or last).

    Args:
        input_ids: ``[B, L]`` (or ``[L]``) int64/int32 ids, CPU or CUDA; not modified.
        mask_token_id, pad_token_id: the mask and padding ids. Without ``attention_mask``, tokens
            equal to ``pad_token_id`` are padding (not part of the row).
        vocab_size: random ids are uniform over ``[0, vocab_size)``.
        mask_ratio: fraction of words masked, in [0, 1]. poisson_lambda: mean span length (> 0).
        random_ratio: share of spans (and inserts) that become random ids, in [0, 1].
        replace_length: -1, 0 or 1 (see above). insert_ratio: extra inserts per token, in [0, 1].
        word_starts: ``[B, L]`` bool, True where a token starts a word (None: every token is a word).
        attention_mask: ``[B, L]``, zero at padding. special_tokens_mask: ``[B, L]``, nonzero at
            tokens never masked (BOS, EOS, ...); spans never cross them.
        seed: the generator's seed (None draws one from torch's global RNG). row_keys: ``[B]``
            ints keying each row's draws (default ``0 .. B-1``).
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``.

    Returns:
        ``(noised_input_ids, attention_mask)``, both ``[B, width]`` (``noised_input_ids`` in
        ``input_ids``' dtype, ``attention_mask`` int64), on ``input_ids``' device: each row's
        tokens left-aligned, then ``pad_token_id`` (attention 0). ``width`` bounds every row
        without depending on the masking draw (``max(n + I + ceil((n + I) * insert_ratio))``,
        ``n`` real tokens, ``I`` zero-length spans), so trailing columns may be all padding;
        trim with ``attention_mask.sum(1).max()``.
    """
    _backend.check_backend_name(backend)
    one_row, input_ids, attention_mask, word_starts, special_tokens_mask = as_batch(
        input_ids, attention_mask=attention_mask, word_starts=word_starts, special_tokens_mask=special_tokens_mask
    )
    plan = plan_text_infilling(
        input_ids,
        mask_token_id=mask_token_id,
        pad_token_id=pad_token_id,
        vocab_size=vocab_size,
        mask_ratio=mask_ratio,
        poisson_lambda=poisson_lambda,
        random_ratio=random_ratio,
        replace_length=replace_length,
        insert_ratio=insert_ratio,
        word_starts=word_starts,
        attention_mask=attention_mask,
        special_tokens_mask=special_tokens_mask,
        seed=seed,
        row_keys=row_keys,
    )
    return unbatch(one_row, run_text_infilling(plan, backend))
