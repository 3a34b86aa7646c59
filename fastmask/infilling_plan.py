"""``TextInfillingPlan``: the text-infilling contract, validated once and handed whole to every
backend.

:func:`fastmask.infilling.plan_text_infilling` builds a plan from the public keywords
(checks, the host-side span lengths, tables, the output width); the reference
(:mod:`fastmask.reference.infilling`), the C++ kernel (``csrc/infilling.cpp``, which
reads the fields by name) and the Triton kernel (:mod:`fastmask.kernels.infilling`) all take
the plan.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._plan import OpPlan, op_plan

__all__ = ["TextInfillingPlan"]


@op_plan
class TextInfillingPlan(OpPlan):
    """One validated ``text_infilling`` call. Tensors are contiguous, on ``input_ids``' device.

    Buffers: ``input_ids`` ``[B, L]`` int32/int64; ``row_keys`` ``[B]`` int64; optional
    ``attention_mask`` / ``special_tokens_mask`` / ``word_starts`` ``[B, L]`` bool;
    ``span_lengths`` ``[B, max(1, max S)]`` int32: row ``b``'s ``S_b`` non-zero span lengths in
    words, in the order the row's chosen start words take them (already rotated, see the
    reference); ``span_count`` / ``insert_count`` ``[B]`` int32: ``S_b`` and the zero-length
    spans ``I_b`` (inserted masks); ``insert_table`` ``[L + max(I) + 1]`` int32:
    ``ceil(x * insert_ratio)`` extra inserts for a row of ``x`` tokens (host-computed, so no
    backend rounds a float).

    Scalars: the generator's ``seed_mix1`` / ``seed_mix2`` (uint32), ``mask_token_id``,
    ``pad_token_id`` (also marks padding when ``attention_mask`` is None), ``vocab_size``
    (random ids are ``(draw * vocab_size) >> 32``), ``random_threshold`` (24-bit: a span or an
    insert is random when ``draw >> 8 < random_threshold``), ``replace_length`` (-1, 0 or 1) and
    the output ``width`` (a bound on every row's output length that does not depend on the
    masking draw).
    """

    input_ids: torch.Tensor
    row_keys: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    special_tokens_mask: Optional[torch.Tensor]
    word_starts: Optional[torch.Tensor]
    span_lengths: torch.Tensor
    span_count: torch.Tensor
    insert_count: torch.Tensor
    insert_table: torch.Tensor
    seed_mix1: int
    seed_mix2: int
    mask_token_id: int
    pad_token_id: int
    vocab_size: int
    random_threshold: int
    replace_length: int
    width: int
