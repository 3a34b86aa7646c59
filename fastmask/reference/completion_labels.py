"""Reference (pure torch) completion-only label mask: the oracle for the C++ and Triton kernels.

Input: a :class:`~fastmask.completion_labels.CompletionPlan`. Per row of ``input_ids`` ``[B, L]``
(TRL's former ``DataCollatorForCompletionOnlyLM`` rule, restated on counts so that it needs no
loop over tokens):

* a *response end* is ``p + len(response)`` for every ``p`` where ``input_ids[p : p + len]`` equals
  the response template (matches may overlap; an end may equal ``L``); an *instruction start*
  is every ``p`` where the instruction template matches;
* ``cR(l)`` = response ends ``<= l``, ``cH(l)`` = instruction starts ``<= l``; ``nR``, ``nH`` the totals;
* without an instruction template, position ``l`` keeps its label iff ``cR(l) >= 1`` (it comes
  after the end of the first response template);
* with one, let ``pre = 1`` if the first instruction start lies after the first response end
  (TRL then prepends a turn starting at 0), else 0; ``nH' = nH + pre``, ``K = min(nH', nR)``,
  ``k(l) = max(0, cH(l) + pre - 1)``. Turn ``k`` masks ``[H'[k], R[k])`` (turn 0 from 0), so ``l``
  is masked iff ``cR(l) <= min(k(l), K - 1)``, or ``nR < nH'`` and ``cH(l) == nH`` (the last
  instruction has no response: masked to the row's end);
* a row without a response end (or, with an instruction template, without an instruction start)
  keeps nothing; ``missing[b]`` says why: bit 0 no response template, bit 1 no instruction
  template;
* ``attention_mask`` (optional): positions where it is 0 keep nothing (matching still reads the
  whole row, as TRL did).

Output ``(keep [B, L] bool, missing [B] int32)``.
"""

from __future__ import annotations

import torch

MISSING_RESPONSE = 1
MISSING_INSTRUCTION = 2


def template_hits(input_ids: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: the template starts at this position (all of it inside the row)."""
    batch, length = input_ids.shape
    width = template.numel()
    hits = torch.zeros((batch, length), dtype=torch.bool, device=input_ids.device)
    if width == 0 or width > length:
        return hits
    windows = input_ids.unfold(1, width, 1)  # [B, L - width + 1, width]
    hits[:, : length - width + 1] = (windows == template.to(input_ids.dtype)).all(-1)
    return hits


def reference_completion_mask(plan) -> tuple[torch.Tensor, torch.Tensor]:
    ids = plan.input_ids
    batch, length = ids.shape
    width = plan.response_ids.numel()
    starts = template_hits(ids, plan.response_ids).to(torch.int64)
    # response ends <= l: starts at positions <= l - width
    ends_le = torch.zeros((batch, length), dtype=torch.int64, device=ids.device)
    if width <= length:
        ends_le[:, width:] = starts.cumsum(1)[:, : length - width]
    n_resp = starts.sum(1)
    missing = (n_resp == 0).to(torch.int32) * MISSING_RESPONSE
    if plan.instruction_ids is None:
        keep = ends_le >= 1
    else:
        inst = template_hits(ids, plan.instruction_ids).to(torch.int64)
        inst_le = inst.cumsum(1)
        n_inst = inst.sum(1)
        missing = missing | (n_inst == 0).to(torch.int32) * MISSING_INSTRUCTION
        positions = torch.arange(length, device=ids.device)
        big = torch.full_like(starts, length + width + 1)
        first_inst = torch.where(inst.bool(), positions, big).amin(1)
        first_end = torch.where(starts.bool(), positions + width, big).amin(1)
        pre = (first_inst > first_end).to(torch.int64)
        n_turns = n_inst + pre
        pairs = torch.minimum(n_turns, n_resp)
        turn = (inst_le + pre[:, None] - 1).clamp(min=0)
        masked = ends_le <= torch.minimum(turn, (pairs - 1)[:, None])
        masked |= (n_resp < n_turns)[:, None] & (inst_le == n_inst[:, None])
        keep = ~masked
    keep &= (missing == 0)[:, None]
    if plan.attention_mask is not None:
        keep &= plan.attention_mask
    return keep, missing
