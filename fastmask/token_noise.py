"""Token noise on a padded batch: mask, random-replace or delete tokens, then close rows up.

Shared by :class:`fastmask.DataCollatorForMaskedAugmentation` (classifier fine-tuning) and
:class:`fastmask.DataCollatorForSeq2Seq` (source-side noise). One :func:`fastmask.mask_tokens`
call selects the noised positions and splits them into mask / random / delete: the selection
rate is ``mask + random + delete``, the op's replacement split ``mask / total`` and
``random / total``, and the share the op leaves unchanged is the deleted one. Deletion then
compacts rows with prefix sums and one scatter (no Python loop over tokens or rows).
"""

from __future__ import annotations

from typing import Optional

import torch

from ._constants import IGNORE_INDEX
from ._validation import check_probability
from .masking import plan_masking, run_masking

__all__ = ["check_noise_probabilities", "noise_tokens", "compact_rows"]


def check_noise_probabilities(**probabilities: float) -> float:
    """Each value a probability in [0, 1], their sum at most 1 (errors name the arguments).
    Returns the sum."""
    total = sum(check_probability(name, value) for name, value in probabilities.items())
    if total > 1.0 + 1e-12:
        names = " + ".join(probabilities)
        raise ValueError(f"{names} = {total} exceeds 1; lower them so that a token gets at most one kind of noise")
    return total


def noise_tokens(
    ids: torch.Tensor,
    ineligible: torch.Tensor,
    *,
    vocab_size: int,
    mask_token_id: Optional[int],
    mask_probability: float,
    random_probability: float,
    delete_probability: float,
    word_starts: Optional[torch.Tensor],
    seed: int,
    row_keys: torch.Tensor,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noised_ids, deleted)`` for a padded batch.

    ``ids``: int64 ``[B, L]`` (ids at or past ``vocab_size`` are allowed and noised like the
    others); ``ineligible``: bool ``[B, L]``, True at special tokens and padding (never noised).
    Each eligible token (each word when ``word_starts`` — bool ``[B, L]`` — is given: one decision
    per word, the one drawn for its first token) becomes ``mask_token_id`` with probability
    ``mask_probability``, a random id in ``[0, vocab_size)`` with ``random_probability``, or is
    marked ``deleted`` (bool ``[B, L]``; its id is left in ``noised_ids``) with
    ``delete_probability``. Reproducible: a function of ``(seed, row_keys, position)``.
    """
    batch, length = ids.shape
    total = mask_probability + random_probability + delete_probability
    common = dict(
        vocab_size=vocab_size,
        special_tokens_mask=ineligible,
        seed=seed,
        row_keys=row_keys,
        ids_beyond_vocab=True,
    )
    mask_id = mask_token_id if mask_token_id is not None and mask_probability > 0 else 0
    # Ids are shifted past the vocabulary, so the selected tokens that mask_tokens leaves
    # unchanged (its "keep" share, here the deletion share) are the ones still >= vocab_size.
    noised, labels = run_masking(
        plan_masking(
            ids + vocab_size,
            mask_token_id=mask_id,
            mlm_probability=min(1.0, total),
            mask_replace_prob=min(1.0, mask_probability / total),
            random_replace_prob=min(1.0, random_probability / total),
            strategy="token" if word_starts is None else "whole_word",
            word_starts=word_starts,
            **common,
        ),
        backend,
    )
    selected = labels != IGNORE_INDEX
    to_delete = selected & (noised >= vocab_size)
    to_mask = selected & (noised == mask_id) if mask_probability > 0 else torch.zeros_like(selected)
    to_random = selected & ~to_mask & ~to_delete
    random_ids = noised
    if word_starts is not None:
        # one decision per word: the one drawn for its first token
        eligible = ~ineligible
        positions = torch.arange(length, device=ids.device).expand(batch, length)
        previous = torch.cat([torch.zeros_like(eligible[:, :1]), eligible[:, :-1]], dim=1)
        unit_start = eligible & (word_starts | ~previous)
        first = torch.cummax(torch.where(unit_start, positions, torch.full_like(positions, -1)), dim=1).values
        first = first.clamp(min=0)
        to_mask, to_delete, to_random = (selected & torch.gather(m, 1, first) for m in (to_mask, to_delete, to_random))
        if to_random.any():  # the per-position random ids (the op's stream 2) of every eligible token
            random_ids, _ = run_masking(
                plan_masking(
                    ids, mask_token_id=0, mlm_probability=1.0, mask_replace_prob=0.0, random_replace_prob=1.0, **common
                ),
                backend,
            )
    out = torch.where(to_random, random_ids, ids)
    if mask_probability > 0:
        out = torch.where(to_mask, torch.full_like(ids, mask_token_id), out)
    return out, to_delete


def compact_rows(value: torch.Tensor, keep: torch.Tensor, width: int, pad, *, left: bool) -> torch.Tensor:
    """The kept items of each row, in order, padded with ``pad`` to ``width``.

    ``value``: ``[B, L]`` or ``[B, L, W]`` (e.g. offset pairs); ``keep``: bool ``[B, L]``, at
    most ``width`` True per row. Right-aligned when ``left`` (left padding). Kept item ``j`` of a
    row goes to slot ``j`` (``j + width - kept`` when left-aligned): a per-row prefix sum gives
    the slots, one scatter writes them (dropped items go to a spare column, cut off after).
    """
    batch = value.shape[0]
    slot = torch.cumsum(keep, dim=1) - 1
    if left:
        slot += width - keep.sum(dim=1, keepdim=True)
    slot = torch.where(keep, slot, torch.full_like(slot, width))  # the spare column
    fill = bool(pad) if value.dtype == torch.bool else pad
    out = torch.full((batch, width + 1) + tuple(value.shape[2:]), fill, dtype=value.dtype, device=value.device)
    if value.dim() == 3:
        slot = slot[..., None].expand(-1, -1, value.shape[2])
    out.scatter_(1, slot, value)
    return out[:, :width]
