"""Reference (pure torch) masking: the oracle the C++ and Triton kernels must equal bit for bit.

Inputs arrive as a :class:`~fastmask.masking_plan.MaskingPlan`, validated and normalised by
:func:`fastmask.masking.plan_masking`; see :mod:`fastmask.masking` for the public API and
:mod:`fastmask._rng` for the generator. The semantics, per row:

1. ``eligible[i]``: not special (``special_mask``, else bit 0 of ``vocab_flags[id]``), inside
   the attention mask, and not ``pad_token_id``.
2. ``unit_start[i]``: the first token of a unit. Strategy ``token``: every eligible token.
   ``whole_word`` / ``span``: an eligible token that starts a word (``word_starts``, else bit 1
   of ``vocab_flags[id]``) or follows an ineligible position (a special token, padding or the
   row's start). A *segment* is a maximal run of eligible positions; words never cross one.
3. Selection.

   * ``bernoulli``: a unit starting at ``i`` is drawn when ``draw(i, 0) >> 8 < t``; for
     ``token`` / ``whole_word`` the unit is selected, for ``span`` it anchors a span of
     ``n`` words (``n`` from ``draw(i, 3)`` and the span-length table), clipped at the
     segment's end; overlapping spans merge. With ``token_weights`` the threshold of a unit is
     ``min(2**24, t * w[id] * units // sum_w)`` (integers, ``w`` quantised to 16 bits, sums
     over the row's units), so the expected number of drawn units stays ``t / 2**24 * units``.
   * ``exact``: ``k = budget_table[eligible tokens]`` tokens. Units are visited in order of
     ``key = (draw(i, 0) >> 1) << 32 | i``; a unit already covered, or longer than the budget
     left, is skipped; otherwise its span (one unit for ``token`` / ``whole_word``) covers
     its uncovered words in order while they fit and stops at the first that does not. This
     is BERT's greedy whole-word rule; for ``token`` it picks the ``k`` smallest keys.
4. Replacement of each selected token: ``r = draw(i, 1) >> 8``; ``r < t_mask`` gives the mask
   id, else ``r < t_mask_or_random`` gives the random id ``(draw(i, 2) * vocab_size) >> 32``,
   else the token is kept. ``labels`` hold the original id where selected, -100 elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from .. import _rng
from .._constants import IGNORE_INDEX
from ..masking_plan import DEFAULT_FLAGS, FLAG_SPECIAL, FLAG_WORD_START, MaskingPlan


def _lookup(table: torch.Tensor, ids: torch.Tensor, default: int) -> torch.Tensor:
    inside = (ids >= 0) & (ids < table.numel())
    values = table.to(torch.int64).index_select(0, ids.clamp(0, table.numel() - 1).flatten()).view(ids.shape)
    return torch.where(inside, values, torch.full_like(values, default))


def _shift_right(x: torch.Tensor, fill: bool) -> torch.Tensor:
    """``x[:, i - 1]`` with ``fill`` at ``i = 0``."""
    pad = torch.full_like(x[:, :1], fill)
    return torch.cat([pad, x[:, :-1]], dim=1)


def eligibility_and_units(
    ids: torch.Tensor,
    *,
    special_mask: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor],
    word_starts: Optional[torch.Tensor],
    vocab_flags: Optional[torch.Tensor],
    pad_token_id: int,
    strategy: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eligible, unit_start)``, bool ``[B, L]``."""
    flags = _lookup(vocab_flags, ids, DEFAULT_FLAGS) if vocab_flags is not None else None
    if special_mask is not None:
        special = special_mask.bool()
    elif flags is not None:
        special = (flags & FLAG_SPECIAL) != 0
    else:
        special = torch.zeros_like(ids, dtype=torch.bool)
    eligible = ~special
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    if pad_token_id >= 0:
        eligible &= ids != pad_token_id
    if strategy == "token":
        return eligible, eligible.clone()
    if word_starts is not None:
        starts = word_starts.bool()
    else:
        starts = (flags & FLAG_WORD_START) != 0
    unit_start = eligible & (starts | ~_shift_right(eligible, False))
    return eligible, unit_start


def span_lengths(u24: torch.Tensor, span_thresholds: Sequence[int]) -> torch.Tensor:
    """``1 + #{j : u24 >= span_thresholds[j]}``."""
    length = torch.ones_like(u24)
    for threshold in span_thresholds:
        length += (u24 >= threshold).to(length.dtype)
    return length


def _unit_thresholds(
    ids: torch.Tensor, unit_start: torch.Tensor, threshold: int, weights_q: Optional[torch.Tensor]
) -> torch.Tensor:
    if weights_q is None:
        return torch.full_like(ids, threshold, dtype=torch.int64)
    w = _lookup(weights_q, ids, 0) * unit_start
    units = unit_start.sum(dim=1, keepdim=True)
    total = w.sum(dim=1, keepdim=True)
    scaled = (threshold * w * units) // total.clamp_min(1)
    return torch.where(total > 0, scaled.clamp_max(_rng.PROB_ONE), torch.zeros_like(scaled))


def _exact_row(
    keys: list[int],
    unit_positions: list[int],
    word_lengths: list[int],
    segment_last_unit: list[int],
    span_words: list[int],
    budget: int,
) -> list[bool]:
    """BERT-style greedy: units in key order, each adding its span's uncovered words that fit."""
    covered = [False] * len(unit_positions)
    left = budget
    for unit in sorted(range(len(keys)), key=keys.__getitem__):
        if left == 0:
            break
        if covered[unit] or word_lengths[unit] > left:
            continue
        end = min(unit + span_words[unit], segment_last_unit[unit] + 1)
        for word in range(unit, end):
            if covered[word]:
                continue
            if word_lengths[word] > left:
                break
            covered[word] = True
            left -= word_lengths[word]
    return covered


def _select_exact(
    eligible: torch.Tensor,
    unit_start: torch.Tensor,
    key_draws: torch.Tensor,
    span_words: torch.Tensor,
    budget_table: torch.Tensor,
) -> torch.Tensor:
    B, L = eligible.shape
    positions = torch.arange(L, device=eligible.device)
    keys = ((key_draws >> 1) << 32) | positions
    unit_index = torch.cumsum(unit_start.to(torch.int64), dim=1) - 1
    segment_start = eligible & ~_shift_right(eligible, False)
    segment = torch.cumsum(segment_start.to(torch.int64), dim=1)
    budgets = budget_table.to(torch.int64)[eligible.sum(dim=1)].tolist()
    selected = torch.zeros_like(eligible)
    for b in range(B):
        starts = unit_start[b].nonzero().flatten()
        if starts.numel() == 0 or budgets[b] == 0:
            continue
        units_of_tokens = unit_index[b][eligible[b]]
        lengths = torch.bincount(units_of_tokens, minlength=starts.numel())
        unit_segment = segment[b][starts]
        # last unit of each unit's segment: the largest unit index with the same segment id
        last_in_segment = torch.zeros(int(unit_segment.max()) + 1, dtype=torch.int64, device=starts.device)
        last_in_segment.scatter_reduce_(0, unit_segment, torch.arange(starts.numel(), device=starts.device), "amax")
        covered = _exact_row(
            keys[b][starts].tolist(),
            starts.tolist(),
            lengths.tolist(),
            last_in_segment[unit_segment].tolist(),
            span_words[b][starts].tolist(),
            budgets[b],
        )
        covered_units = torch.tensor(covered, dtype=torch.bool, device=eligible.device)
        row_selected = torch.zeros(L, dtype=torch.bool, device=eligible.device)
        row_selected[eligible[b]] = covered_units[units_of_tokens]
        selected[b] = row_selected
    return selected


def plan_units(plan: MaskingPlan, strategy: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`eligibility_and_units` of a plan's tokens: ``(eligible, unit_start)``, bool ``[B, L]``,
    for ``strategy`` (default: the plan's). Any plan with a masking plan's word fields will do
    (:class:`~fastmask.ngram_units_plan.NgramUnitsPlan` too)."""
    return eligibility_and_units(
        plan.input_ids,
        special_mask=plan.special_mask,
        attention_mask=plan.attention_mask,
        word_starts=plan.word_starts,
        vocab_flags=plan.vocab_flags,
        pad_token_id=plan.pad_token_id,
        strategy=plan.strategy_name if strategy is None else strategy,
    )


def reference_select(plan: MaskingPlan) -> torch.Tensor:
    """Bool ``[B, L]``: the positions selected for prediction (step 1-3 above)."""
    ids = plan.input_ids
    strategy = plan.strategy_name
    B, L = ids.shape
    eligible, unit_start = plan_units(plan)
    positions = torch.arange(L, device=ids.device)
    s1, s2 = (s[:, None] for s in _rng.row_states(plan.row_keys.to(ids.device), plan.seed_mix1, plan.seed_mix2))
    select_draws = _rng.draw(s1, s2, positions, _rng.STREAM_SELECT)
    if strategy == "span":
        span_draws = _rng.draw(s1, s2, positions, _rng.STREAM_SPAN_LENGTH) >> 8
        span_words = span_lengths(span_draws, plan.span_thresholds.tolist())
    else:
        span_words = torch.ones_like(select_draws)
    if plan.exact:
        return _select_exact(eligible, unit_start, select_draws, span_words, plan.budget_table)

    thresholds = _unit_thresholds(ids, unit_start, plan.select_threshold, plan.weights_q)
    drawn = unit_start & ((select_draws >> 8) < thresholds)
    if strategy == "span":
        unit_index = torch.cumsum(unit_start.to(torch.int64), dim=1) - 1
        segment = torch.cumsum((eligible & ~_shift_right(eligible, False)).to(torch.int64), dim=1)
        reach = torch.where(drawn, (segment << 32) + unit_index + span_words, torch.full_like(segment, -1))
        return eligible & (torch.cummax(reach, dim=1).values > (segment << 32) + unit_index)
    # token / whole_word: every token takes the decision of its unit's first token
    code = torch.where(unit_start, 2 * positions + drawn.to(torch.int64), torch.full_like(select_draws, -1))
    latest = torch.cummax(code, dim=1).values
    return eligible & (latest >= 0) & ((latest & 1) == 1)


def reference_mask_tokens(plan: MaskingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked_input_ids, labels)``: selection, then 80/10/10 replacement (step 4)."""
    selected = reference_select(plan)
    ids = plan.input_ids.to(torch.int64)
    B, L = ids.shape
    positions = torch.arange(L, device=ids.device)
    s1, s2 = (s[:, None] for s in _rng.row_states(plan.row_keys.to(ids.device), plan.seed_mix1, plan.seed_mix2))
    choice = _rng.draw(s1, s2, positions, _rng.STREAM_REPLACE) >> 8
    random_ids = (_rng.draw(s1, s2, positions, _rng.STREAM_RANDOM_ID) * plan.vocab_size) >> 32
    masked = torch.where(
        selected & (choice < plan.replace_mask_threshold),
        torch.full_like(ids, plan.mask_token_id),
        torch.where(selected & (choice < plan.replace_random_threshold), random_ids, ids),
    )
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return masked.to(plan.input_ids.dtype), labels
