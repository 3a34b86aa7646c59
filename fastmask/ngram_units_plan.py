"""``NgramUnitsPlan``: one validated batch for the PMI unit op (:func:`fastmask.ngrams.ngram_unit_starts`),
handed whole to every backend.

It holds the fields of a whole-word :class:`~fastmask.masking_plan.MaskingPlan` that define the
words (already validated there) and the vocabulary's probe table. The reference
(:func:`fastmask.reference.ngrams.reference_ngram_units`), the C++ kernel (``csrc/ngrams.cpp``,
which reads the fields by name) and the Triton kernel (:mod:`fastmask.kernels.ngrams`) all take
the plan and return the same unit starts.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._plan import OpPlan, op_plan
from .masking_plan import MaskingPlan

__all__ = ["NgramUnitsPlan"]


@op_plan
class NgramUnitsPlan(OpPlan):
    """The words of a batch and an n-gram probe table. Tensors are contiguous, on one device.

    Buffers: ``input_ids`` ``[B, L]`` int32/int64; ``special_mask``, ``attention_mask``,
    ``word_starts`` ``[B, L]`` bool or None; ``vocab_flags`` ``[V]`` uint8 or None (bit 0
    special, bit 1 word start), at least one of ``word_starts`` / ``vocab_flags``; ``table``
    int64 ``[C]``, ``C`` a power of two (:func:`fastmask.reference.ngrams.probe_table`).

    Scalars: ``pad_token_id`` (-1: none), ``max_n`` (the longest n-gram, 2..8).

    Result of every backend: bool ``[B, L]``, True at the first token of each unit.
    """

    input_ids: torch.Tensor
    special_mask: Optional[torch.Tensor]
    attention_mask: Optional[torch.Tensor]
    word_starts: Optional[torch.Tensor]
    vocab_flags: Optional[torch.Tensor]
    table: torch.Tensor
    pad_token_id: int
    max_n: int

    @classmethod
    def of(cls, plan: MaskingPlan, table: torch.Tensor, max_n: int) -> NgramUnitsPlan:
        """The unit op's plan for the words of a validated masking ``plan``."""
        if plan.word_starts is None and plan.vocab_flags is None:
            raise ValueError("PMI masking needs word boundaries: pass word_starts or word_start_table")
        return cls(**{name: getattr(plan, name) for name in _WORD_FIELDS}, table=table, max_n=max_n)


# the masking plan's fields that define the words
_WORD_FIELDS = ("input_ids", "special_mask", "attention_mask", "word_starts", "vocab_flags", "pad_token_id")
