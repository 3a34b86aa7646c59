"""Reference (pure torch) BART text infilling: the oracle the C++ and Triton kernels must equal bit
for bit.

fairseq's ``DenoisingDataset.add_whole_word_mask`` / ``add_insertion_noise`` draw span lengths
one after another and place spans with a random permutation; this op keeps their distribution
(the masked-word budget, Poisson span lengths, uniformly placed distinct start words, inserted
masks) with a rule that a parallel kernel can follow. Inputs arrive as a
:class:`~fastmask.infilling_plan.TextInfillingPlan`; every random decision is a draw of
:mod:`fastmask._rng` (``draw(position, stream)`` of the row's key). Per row:

1. *Real* tokens: ``attention_mask != 0`` when given, else ``id != pad_token_id``. *Eligible*:
   real and not special (``special_tokens_mask``). Special tokens are never masked and no span
   crosses one: the eligible tokens between two ineligible ones form a *segment*.
2. *Words*: an eligible token starts a word when ``word_starts`` marks it (every eligible token
   without ``word_starts``) or when the token before it is not eligible. ``W`` words, numbered
   ``0 .. W - 1`` in row order; a token belongs to the last word start at or before it.
3. Budget and span lengths (host side, :func:`draw_spans`, in the plan):
   ``N = ceil(W * mask_ratio)`` (the product rounded to 9 decimals first, so ``10 * 0.3`` is
   3). Span ``k = 0, 1, ...`` has length ``#{j : draw(k, STREAM_SPAN_LENGTH) >> 8 >=
   thresholds[j]}``, the 24-bit inverse CDF of Poisson(``poisson_lambda``) truncated where the
   probability falls below 1e-7 past the mean (and at 127), as fairseq's table. Spans are drawn until their
   lengths sum to ``>= N`` (at most ``4 L + 64`` spans, a limit only a ``poisson_lambda`` far
   below ``mask_ratio`` reaches), the last one is cut so they sum to ``N`` exactly. The
   ``I`` zero-length spans among them become inserted masks (step 7); the ``S`` others keep
   their draw order, rotated by ``draw(INFILL_INSERT_OFFSET, STREAM_SPAN_LENGTH) % S`` (so the
   cut span lands on a uniformly chosen start): ``span_lengths[r]``, ``r < S``.
4. Start words: the ``S`` words ``w`` with the smallest keys ``(draw(w, STREAM_INFILL_START) >>
   1, w)`` (a uniformly random set of distinct words, as fairseq's ``randperm``); the ``r``-th of them in row order starts a span of
   ``span_lengths[r]`` words: words ``w .. w + span_lengths[r] - 1``, cut at the segment's end.
5. Coverage: an eligible token is *covered* when a span covers its word; a start word's first
   token is a *head* when no span from an earlier start covers it (overlapping spans merge,
   as in fairseq; adjacent ones do not). A head of word ``w`` draws ``draw(w,
   STREAM_INFILL_RANDOM) >> 8 < random_threshold``: its span is *random*. With ``replace_length=-1`` every covered token
   takes the choice of the last head at or before it.
6. Replacement, by ``replace_length``: ``1``: a head becomes one token (``mask_token_id``, or
   when random the id ``(draw(i, STREAM_RANDOM_ID) * vocab_size) >> 32``, ``i`` the token's
   index among the row's real tokens), its other covered
   tokens are deleted; ``-1``: each covered token becomes a mask (or, random, its own random
   id); ``0``: covered tokens are deleted. Uncovered real tokens (specials too) stay. The
   surviving ``m`` tokens, in order, are the row ``T``.
7. Insertion: ``n = I + insert_table[m + I]`` tokens (``insert_table[x] = ceil(x *
   insert_ratio)``) are inserted. The output has ``m + n`` tokens; with ``m >= 2`` its first
   and last are ``T``'s (fairseq never inserts at either end), the ``m + n - 2`` slots between
   (all ``m + n`` when ``m < 2``) take the ``n`` inserts at the slots ``p`` with the smallest
   keys ``(draw(INFILL_INSERT_OFFSET + p, STREAM_INFILL_INSERT_KEY) >> 1, p)`` (every placement
   equally likely, as fairseq's) and ``T``'s other tokens in order. An insert is a random id
   ``(draw(INFILL_INSERT_OFFSET + p, STREAM_RANDOM_ID) * vocab_size) >> 32`` when
   ``draw(INFILL_INSERT_OFFSET + p, STREAM_INFILL_INSERT_RANDOM) >> 8 < random_threshold``,
   else ``mask_token_id``.
8. Output: the row left-aligned, padded with ``pad_token_id`` to the plan's ``width``;
   ``attention_mask`` is 1 on the row's tokens.

Every draw is keyed by a word, a real-token index, a span or a slot number, never by a padded
position: a row gets the same noise wherever its padding sits (left, right, batch width).

Deviations from fairseq (documented, distribution kept): spans are paired with start words by
row order after a random rotation rather than by a second permutation; with
``replace_length=-1`` a merged run takes its heads' choices (fairseq: the leftmost covering
start's); inserted tokens are random each with probability ``random_ratio`` (fairseq: exactly
``ceil(n * random_ratio)`` of them); zero-length spans and ``insert_ratio`` inserts are placed
in one pass (fairseq: two, which gives the same placement law); random ids are uniform over
``[0, vocab_size)`` as in fastmask's masking op (fairseq: ``[1, len(vocab))``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _rng
from ..infilling_plan import TextInfillingPlan

__all__ = ["reference_text_infilling", "row_words", "draw_spans", "poisson_thresholds", "ceil_ratio"]

MAX_SPAN_LENGTH = 127
POISSON_CUTOFF = 1e-7


def ceil_ratio(count: int, ratio: float) -> int:
    """``ceil(count * ratio)`` with the product rounded to 9 decimals (``10 * 0.3`` gives 3)."""
    return int(math.ceil(round(count * ratio, 9)))


def poisson_thresholds(poisson_lambda: float) -> list[int]:
    """24-bit CDF thresholds of Poisson(``poisson_lambda``) span lengths: a draw ``d`` gives the
    length ``#{j : d >> 8 >= thresholds[j]}`` (fairseq's truncated, renormalised table; fairseq
    stops at the first probability below 1e-7 even before the mode, which leaves only length 0
    for ``poisson_lambda`` above ~16: here the cut comes past the mean)."""
    probs, log_p = [], -poisson_lambda
    for k in range(MAX_SPAN_LENGTH + 1):
        probs.append(math.exp(log_p))
        if probs[-1] < POISSON_CUTOFF and k >= poisson_lambda:
            break
        log_p += math.log(poisson_lambda) - math.log(k + 1)
    return _rng.span_length_thresholds([p / math.fsum(probs) for p in probs])


def row_words(
    real: torch.Tensor, special: torch.Tensor, word_starts
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(eligible, word_start, segment)`` for ``[B, L]`` bool ``real`` / ``special`` and optional
    ``word_starts`` (steps 1-2); ``segment`` (int64) counts the ineligible tokens up to each token."""
    eligible = real & ~special
    previous = torch.zeros_like(eligible)
    previous[:, 1:] = eligible[:, :-1]
    starts = eligible & ~previous
    starts = starts | eligible if word_starts is None else starts | (eligible & word_starts.bool())
    segment = torch.cumsum((~eligible).to(torch.int64), dim=1)
    return eligible, starts, segment


def _lowbias32_np(x: np.ndarray) -> np.ndarray:
    """``lowbias32`` on a uint32 numpy array (:mod:`fastmask._rng`, with numpy's wrapping uint32)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(_rng.HASH_MUL1)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(_rng.HASH_MUL2)
    return x ^ (x >> np.uint32(16))


def _draw_np(s1: np.ndarray, s2: np.ndarray, positions: np.ndarray, stream: int) -> np.ndarray:
    """:func:`fastmask._rng.draw` in numpy: uint32 ``[B, n]`` for uint32 ``[B, 1]`` states."""
    counter = (positions.astype(np.uint64) * np.uint64(_rng.NUM_STREAMS) + np.uint64(stream)).astype(np.uint32)
    return _lowbias32_np(_lowbias32_np(counter ^ s1) ^ s2)


def _row_states_np(row_keys: np.ndarray, mix1: int, mix2: int) -> tuple[np.ndarray, np.ndarray]:
    keys = row_keys.astype(np.int64).view(np.uint64)
    lo = (keys & np.uint64(_rng.MASK32)).astype(np.uint32)
    hi = (keys >> np.uint64(32)).astype(np.uint32)
    s1 = _lowbias32_np(_lowbias32_np(lo ^ np.uint32(mix1)) ^ hi)
    s2 = _lowbias32_np(_lowbias32_np(hi ^ np.uint32(mix2)) ^ lo)
    return s1[:, None], s2[:, None]


def draw_spans(
    row_keys: torch.Tensor, seed_mix1: int, seed_mix2: int, budgets: torch.Tensor, thresholds: list[int], cap: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 3 for rows with masked-word ``budgets`` ``[B]``: ``(span_lengths [B, max(1, max S)]
    int32, span_count [B] int32, insert_count [B] int32)``; at most ``cap`` spans per row.

    Host side, in numpy (the generator's arithmetic, as :mod:`fastmask._rng`): the plan calls it
    once per batch, and torch's small CPU ops would cost more than the kernels."""
    s1, s2 = _row_states_np(row_keys.cpu().numpy(), seed_mix1, seed_mix2)
    budgets = budgets.cpu().numpy().astype(np.int64)
    batch = budgets.size
    bounds = np.asarray(thresholds, dtype=np.int64)
    mean = max(0.5, _mean_length(thresholds))
    chunk = min(cap, max(16, int(int(budgets.max(initial=0)) / mean * 1.25) + 16))
    lengths = np.zeros((batch, 0), dtype=np.int64)
    while True:
        k0 = lengths.shape[1]
        positions = np.arange(k0, min(cap, k0 + chunk), dtype=np.int64)[None, :]
        draws = (_draw_np(s1, s2, positions, _rng.STREAM_SPAN_LENGTH) >> np.uint32(32 - _rng.PROB_BITS)).astype(
            np.int64
        )
        lengths = np.concatenate([lengths, np.searchsorted(bounds, draws, side="right")], axis=1)
        if bool((lengths.sum(axis=1) >= budgets).all()) or lengths.shape[1] >= cap:
            break
        chunk *= 2
    cum = np.cumsum(lengths, axis=1)
    reached = cum >= budgets[:, None]
    # spans used: up to the first that reaches the budget (all drawn when none does); none for N = 0
    first = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, lengths.shape[1])
    used = np.where(budgets > 0, first, 0)
    k = np.arange(lengths.shape[1])[None, :]
    in_use = k < used[:, None]
    last = k == (used[:, None] - 1)
    lengths = np.where(last & reached, budgets[:, None] - (cum - lengths), lengths) * in_use
    nonzero = in_use & (lengths > 0)
    span_count = nonzero.sum(axis=1)
    insert_count = (in_use & (lengths == 0)).sum(axis=1)
    width = max(1, int(span_count.max(initial=0)))
    packed = np.zeros((batch, width), dtype=np.int64)
    rank = np.cumsum(nonzero, axis=1) - 1
    rows = np.broadcast_to(np.arange(batch)[:, None], rank.shape)
    packed[rows[nonzero], rank[nonzero]] = lengths[nonzero]
    # rotate: chosen start r takes span (r + offset) % S
    rotation = _draw_np(s1, s2, np.array([[_rng.INFILL_INSERT_OFFSET]]), _rng.STREAM_SPAN_LENGTH)[:, 0]
    spans = np.maximum(span_count, 1)
    offset = rotation.astype(np.int64) % spans
    r = np.arange(width)[None, :]
    rotated = np.take_along_axis(packed, (r + offset[:, None]) % spans[:, None], axis=1) * (r < span_count[:, None])
    return (
        torch.from_numpy(rotated.astype(np.int32)),
        torch.from_numpy(span_count.astype(np.int32)),
        torch.from_numpy(insert_count.astype(np.int32)),
    )


def _mean_length(thresholds: list[int]) -> float:
    """Mean of the length law the thresholds encode."""
    cdf = [t / _rng.PROB_ONE for t in thresholds] + [1.0]
    return sum(1.0 - c for c in cdf[:-1])


def _random_ids(s1, s2, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return (_rng.draw(s1, s2, positions, _rng.STREAM_RANDOM_ID) * vocab_size) >> 32


def _below(s1, s2, positions: torch.Tensor, stream: int, threshold: int) -> torch.Tensor:
    return (_rng.draw(s1, s2, positions, stream) >> (32 - _rng.PROB_BITS)) < threshold


def _smallest(s1, s2, positions: torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """Bool over ``positions``: the ``count`` smallest keys ``(draw(position, stream) >> 1, index)``."""
    out = torch.zeros(positions.numel(), dtype=torch.bool)
    if count <= 0:
        return out
    index = torch.arange(positions.numel(), dtype=torch.int64)
    keys = ((_rng.draw(s1, s2, positions, stream) >> 1) << 32) | index
    out[torch.sort(keys).values[:count] & 0xFFFFFFFF] = True
    return out


def reference_text_infilling(plan: TextInfillingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noised [B, width], attention_mask [B, width] int64)``, ``noised`` in ``input_ids``' dtype."""
    ids = plan.input_ids
    B, L = ids.shape
    ids_cpu = ids.cpu().to(torch.int64)
    real = plan.attention_mask.cpu().bool() if plan.attention_mask is not None else ids_cpu != plan.pad_token_id
    special = plan.special_tokens_mask.cpu().bool() if plan.special_tokens_mask is not None else torch.zeros_like(real)
    word_starts = None if plan.word_starts is None else plan.word_starts.cpu()
    eligible, starts, segment = row_words(real, special, word_starts)
    s1_all, s2_all = _rng.row_states(plan.row_keys.cpu(), plan.seed_mix1, plan.seed_mix2)
    lengths_all = plan.span_lengths.cpu().to(torch.int64)
    span_count, insert_count = plan.span_count.cpu().tolist(), plan.insert_count.cpu().tolist()
    insert_table = plan.insert_table.cpu().tolist()
    out = torch.full((B, plan.width), plan.pad_token_id, dtype=torch.int64)
    attention = torch.zeros((B, plan.width), dtype=torch.int64)
    positions = torch.arange(L, dtype=torch.int64)
    for b in range(B):
        s1, s2 = s1_all[b], s2_all[b]
        word = torch.cumsum(starts[b].to(torch.int64), dim=0) - 1
        # step 4: start words and their spans' ends (packed with the segment, for a running max)
        chosen = torch.zeros(L, dtype=torch.bool)
        start_positions = positions[starts[b]]
        word_numbers = torch.arange(start_positions.numel(), dtype=torch.int64)
        chosen[start_positions[_smallest(s1, s2, word_numbers, _rng.STREAM_INFILL_START, span_count[b])]] = True
        rank = torch.cumsum(chosen.to(torch.int64), dim=0) - 1
        end = word + lengths_all[b][rank.clamp(min=0, max=lengths_all.shape[1] - 1)]
        value = torch.where(chosen, (segment[b] << 32) | end, torch.zeros_like(end))
        reach = torch.cummax(value, dim=0).values
        earlier = torch.cat([torch.zeros(1, dtype=torch.int64), reach[:-1]])

        def covers(packed):
            return ((packed >> 32) == segment[b]) & ((packed & 0xFFFFFFFF) > word)

        # step 5: coverage, heads and their random choice
        covered = eligible[b] & covers(reach)
        head = chosen & ~covers(earlier)
        random_head = head & _below(s1, s2, word, _rng.STREAM_INFILL_RANDOM, plan.random_threshold)
        if plan.replace_length == -1:
            group = torch.cummax(torch.where(head, (positions << 1) | random_head.to(torch.int64), 0), dim=0).values
            random_token = covered & ((group & 1) == 1)
        else:
            random_token = random_head
        # step 6: replacement and deletion
        replaced = torch.where(
            random_token,
            _random_ids(s1, s2, torch.cumsum(real[b].to(torch.int64), dim=0) - 1, plan.vocab_size),
            torch.full_like(positions, plan.mask_token_id),
        )
        row = torch.where(covered, replaced, ids_cpu[b])
        if plan.replace_length == 1:
            keep = real[b] & (~covered | head)
        elif plan.replace_length == 0:
            keep = real[b] & ~covered
        else:
            keep = real[b]
        tokens = row[keep]
        # step 7: insertion
        m = tokens.numel()
        n = insert_count[b] + insert_table[m + insert_count[b]]
        lead = 1 if m >= 2 else 0
        slots = torch.arange(m + n - 2 * lead, dtype=torch.int64) + _rng.INFILL_INSERT_OFFSET
        inserted = _smallest(s1, s2, slots, _rng.STREAM_INFILL_INSERT_KEY, n)
        random_insert = _below(s1, s2, slots, _rng.STREAM_INFILL_INSERT_RANDOM, plan.random_threshold)
        insert_ids = torch.where(
            random_insert, _random_ids(s1, s2, slots, plan.vocab_size), torch.full_like(slots, plan.mask_token_id)
        )
        middle = torch.empty(slots.numel(), dtype=torch.int64)
        middle[inserted] = insert_ids[inserted]
        middle[~inserted] = tokens[lead : m - lead]
        full = torch.cat([tokens[:lead], middle, tokens[m - lead :]]) if lead else middle
        out[b, : full.numel()] = full
        attention[b, : full.numel()] = 1
    return out.to(ids.dtype).to(ids.device), attention.to(ids.device)
