"""``SpanCorruptionPlan``: the span-corruption contract, validated once and handed whole to every
backend.

:func:`fastmask.sentinel_spans.plan_span_corruption` builds a plan from the public keywords
(checks, count tables, output widths); the reference (:mod:`fastmask.reference.sentinel_spans`),
the C++ kernel (``csrc/sentinel_spans.cpp``, which reads the fields by name) and the Triton
kernel (:mod:`fastmask.kernels.sentinel_spans`) all take the plan.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._plan import OpPlan, op_plan

__all__ = ["SpanCorruptionPlan"]


@op_plan
class SpanCorruptionPlan(OpPlan):
    """One validated ``span_corruption`` call. Tensors are contiguous, on ``input_ids``' device.

    Buffers: ``input_ids`` ``[B, L]`` int32/int64; ``row_keys`` ``[B]`` int64; optional
    ``attention_mask`` / ``word_starts`` ``[B, L]`` bool; ``noise_table`` and ``spans_table``
    ``[L + 1]`` int32: for a row of ``U`` units, ``noise_table[U]`` noise units in
    ``spans_table[U]`` spans (computed on the host, so no backend rounds a float).

    Scalars: the generator's ``seed_mix1`` / ``seed_mix2`` (uint32), ``first_sentinel_id``,
    ``eos_token_id``, ``pad_token_id`` (also marks padding when ``attention_mask`` is None), and
    the output widths ``inputs_length`` / ``targets_length`` (the longest row of each).
    """

    input_ids: torch.Tensor
    row_keys: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    word_starts: Optional[torch.Tensor]
    noise_table: torch.Tensor
    spans_table: torch.Tensor
    seed_mix1: int
    seed_mix2: int
    first_sentinel_id: int
    eos_token_id: int
    pad_token_id: int
    inputs_length: int
    targets_length: int
