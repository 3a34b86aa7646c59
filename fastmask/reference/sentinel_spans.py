"""Reference (pure torch) T5 span corruption: the oracle the C++ and Triton kernels must equal bit
for bit.

Inputs arrive as a :class:`~fastmask.sentinel_spans_plan.SpanCorruptionPlan`, validated by
:func:`fastmask.sentinel_spans.plan_span_corruption`; the generator is :mod:`fastmask._rng`
(``draw(position, stream)`` of the row's key). The semantics, per row:

1. *Real* tokens: ``attention_mask != 0`` when an attention mask is given, else
   ``id != pad_token_id``; taken in order, wherever they sit (left or right padding).
2. *Units*: every real token, or with ``word_starts`` whole words: a unit starts at the first
   real token and at every real token with ``word_starts`` set. ``U`` units in the row.
3. Counts: ``N = noise_table[U]`` noise units in ``S = spans_table[U]`` spans, ``K = U - N``
   kept units (host side: ``N = round(U * noise_density)`` clipped to ``[1, U - 1]``,
   ``S = max(1, round(N / mean_noise_span_length))`` clipped to ``<= K``; ``round`` is
   half-to-even, as numpy's in T5).
4. Random compositions. The noise units are cut into ``S`` non-empty segments at the ``S - 1``
   gaps ``g`` in ``1 .. N - 1`` (gap ``g`` lies before the ``g``-th noise unit) with the
   smallest keys ``(draw(g, STREAM_NOISE_CUT) >> 1, g)`` (lexicographic, so no ties); every
   composition is equally likely up to the hash. The kept units are cut the same way at gaps in
   ``1 .. K - 1`` ranked by ``(draw(g, STREAM_KEEP_CUT) >> 1, g)``. Sorted, the cuts give
   segment starts ``NS_0 = 0 < NS_1 < ... < NS_{S-1}`` (``NS_S = N``) and ``KS_0 .. KS_S``
   (``KS_S = K``).
5. Interleaving, kept first: kept segment ``j`` covers units ``[KS_j + NS_j, KS_{j+1} + NS_j)``,
   noise segment (span) ``j`` covers ``[KS_{j+1} + NS_j, KS_{j+1} + NS_{j+1})``. So a row always
   ends with a span. Every token takes its unit's status.
6. Outputs. ``inputs``: the row's real tokens in order, each span replaced by one sentinel
   ``first_sentinel_id - j``, then ``eos_token_id`` (``K + S + 1`` ids). ``targets``: for each
   span ``j`` in order, its sentinel then its tokens, then ``eos_token_id`` (``N' + S + 1`` ids,
   ``N'`` the noise tokens). Both are padded with ``pad_token_id`` to the plan's
   ``inputs_length`` / ``targets_length`` (the batch's longest rows).

Interleaving a row's ``inputs`` and ``targets`` (each sentinel of ``inputs`` replaced by what
follows the same sentinel in ``targets``) gives back the row's real tokens exactly.
"""

from __future__ import annotations

import torch

from .. import _rng
from ..sentinel_spans_plan import SpanCorruptionPlan

__all__ = ["reference_span_corruption", "row_units", "composition_starts"]


def row_units(plan: SpanCorruptionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, unit_start)``, bool ``[B, L]`` (steps 1-2)."""
    ids = plan.input_ids
    if plan.attention_mask is not None:
        real = plan.attention_mask.bool()
    else:
        real = ids != plan.pad_token_id
    first = real & (torch.cumsum(real.to(torch.int64), dim=1) == 1)
    if plan.word_starts is None:
        return real, real.clone()
    return real, real & (plan.word_starts.bool() | first)


def composition_starts(s1: torch.Tensor, s2: torch.Tensor, items: int, segments: int, stream: int) -> list[int]:
    """Starts ``0 = c_0 < c_1 < ... < c_{segments-1}`` of a random composition of ``items`` into
    ``segments`` non-empty parts: the gaps in ``1 .. items - 1`` with the smallest keys
    ``(draw(g, stream) >> 1, g)`` (step 4). ``s1``, ``s2``: the row's state, 0-d tensors."""
    if segments <= 1:
        return [0]
    gaps = torch.arange(1, items, dtype=torch.int64)
    keys = ((_rng.draw(s1, s2, gaps, stream) >> 1) << 32) | gaps
    chosen = torch.sort(keys).values[: segments - 1] & 0xFFFFFFFF
    return [0] + sorted(chosen.tolist())


def reference_span_corruption(plan: SpanCorruptionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs [B, inputs_length], targets [B, targets_length])`` in ``input_ids``' dtype."""
    ids = plan.input_ids
    B, L = ids.shape
    real, unit_start = row_units(plan)
    s1, s2 = _rng.row_states(plan.row_keys.cpu(), plan.seed_mix1, plan.seed_mix2)
    noise_table = plan.noise_table.cpu().tolist()
    spans_table = plan.spans_table.cpu().tolist()
    inputs = torch.full((B, plan.inputs_length), plan.pad_token_id, dtype=torch.int64)
    targets = torch.full((B, plan.targets_length), plan.pad_token_id, dtype=torch.int64)
    ids_cpu, real_cpu, starts_cpu = ids.cpu().to(torch.int64), real.cpu(), unit_start.cpu()
    for b in range(B):
        tokens = ids_cpu[b][real_cpu[b]]
        starts = starts_cpu[b][real_cpu[b]]
        units = int(starts.sum())
        noise, spans = noise_table[units], spans_table[units]
        keep = units - noise
        ns = composition_starts(s1[b], s2[b], noise, spans, _rng.STREAM_NOISE_CUT) + [noise]
        ks = composition_starts(s1[b], s2[b], keep, spans, _rng.STREAM_KEEP_CUT) + [keep]
        # segment starts over units (step 5): kept segment j (j >= 1), noise segment j
        marker = torch.zeros(units + 1, dtype=torch.int64)
        for j in range(spans):
            if j > 0:
                marker[ks[j] + ns[j]] = 1
            marker[ks[j + 1] + ns[j]] = 1
        unit_of_token = torch.cumsum(starts.to(torch.int64), dim=0) - 1
        segment = torch.cumsum(marker[:units], dim=0)[unit_of_token]
        token_marker = marker[unit_of_token] * starts.to(torch.int64)
        is_noise = (segment & 1) == 1
        span = segment >> 1
        span_first = is_noise & (token_marker == 1)
        sentinels = plan.first_sentinel_id - span
        # inputs: kept tokens, one sentinel per span, EOS
        row_in = torch.where(span_first, sentinels, tokens)[~is_noise | span_first]
        inputs[b, : row_in.numel()] = row_in
        inputs[b, row_in.numel()] = plan.eos_token_id
        # targets: per span its sentinel, then its tokens; EOS
        pieces = torch.stack([sentinels, tokens], dim=1).reshape(-1)
        keep_piece = torch.stack([span_first, is_noise], dim=1).reshape(-1)
        row_out = pieces[keep_piece]
        targets[b, : row_out.numel()] = row_out
        targets[b, row_out.numel()] = plan.eos_token_id
    return inputs.to(ids.dtype).to(ids.device), targets.to(ids.dtype).to(ids.device)
