"""``MaskingPlan``: the masking contract, validated once and handed whole to every backend.

:func:`fastmask.masking.plan_masking` builds a plan from the public keywords (checks, tables,
integer thresholds); the reference (:mod:`fastmask.reference.masking`), the C++ kernel
(``csrc/masking.cpp``, which reads the fields by name) and the Triton kernel
(:mod:`fastmask.kernels.masking`, whose parameters carry the same names) all take the plan.
A new option is a new field here, read by those three and set by ``plan_masking``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._plan import OpPlan, op_plan

__all__ = [
    "MaskingPlan",
    "STRATEGIES",
    "BUDGETS",
    "STRATEGY_TOKEN",
    "STRATEGY_WHOLE_WORD",
    "STRATEGY_SPAN",
    "FLAG_SPECIAL",
    "FLAG_WORD_START",
    "DEFAULT_FLAGS",
]

STRATEGIES = ("token", "whole_word", "span")
BUDGETS = ("bernoulli", "exact")
# strategy codes (the index in STRATEGIES); csrc/masking.cpp names the same codes kToken, ...
STRATEGY_TOKEN, STRATEGY_WHOLE_WORD, STRATEGY_SPAN = range(len(STRATEGIES))
# bits of vocab_flags (csrc/masking.cpp: kFlagSpecial, kFlagWordStart); an id past the table has
# DEFAULT_FLAGS: not special, starts a word
FLAG_SPECIAL = 1
FLAG_WORD_START = 2
DEFAULT_FLAGS = FLAG_WORD_START


@op_plan
class MaskingPlan(OpPlan):
    """One validated ``mask_tokens`` call. Tensors are contiguous, on ``input_ids``' device.

    Buffers: ``input_ids`` ``[B, L]`` int32/int64; ``row_keys`` ``[B]`` int64;
    ``span_thresholds`` ``[S]`` int32 (span-length table, 24-bit cumulative thresholds);
    optional ``special_mask`` / ``attention_mask`` / ``word_starts`` ``[B, L]`` bool,
    ``vocab_flags`` ``[F]`` uint8 (bit 0 special, bit 1 word start), ``weights_q`` ``[W]`` int32
    (token weights quantised to 16 bits), ``budget_table`` ``[L + 1]`` int32 (exact budget only).

    Scalars: the generator's ``seed_mix1`` / ``seed_mix2`` (uint32), the ``strategy`` code,
    ``exact`` budget, ``pad_token_id`` (-1: none), the 24-bit ``select_threshold``,
    ``mask_token_id``, ``vocab_size`` (random ids are drawn from ``[0, vocab_size)``), and the
    24-bit replacement thresholds ``replace_mask_threshold`` <= ``replace_random_threshold``.
    """

    input_ids: torch.Tensor
    row_keys: torch.Tensor
    span_thresholds: torch.Tensor
    special_mask: Optional[torch.Tensor]
    attention_mask: Optional[torch.Tensor]
    word_starts: Optional[torch.Tensor]
    vocab_flags: Optional[torch.Tensor]
    weights_q: Optional[torch.Tensor]
    budget_table: Optional[torch.Tensor]
    seed_mix1: int
    seed_mix2: int
    strategy: int
    exact: bool
    pad_token_id: int
    select_threshold: int
    mask_token_id: int
    vocab_size: int
    replace_mask_threshold: int
    replace_random_threshold: int

    @property
    def strategy_name(self) -> str:
        return STRATEGIES[self.strategy]

    @property
    def budget_name(self) -> str:
        return BUDGETS[int(self.exact)]
