"""BART denoising collator: text infilling (:class:`DataCollatorForTextInfilling`).

Built on :func:`fastmask.text_infilling` (the op, three bit-identical backends) with fairseq's
``DenoisingDataset`` options; the seed, epoch, row keys and ``state_dict`` come from
:class:`~fastmask.mask_stream.MaskStream` (dynamic across epochs and DataLoader workers,
resumable), padding of features from :mod:`fastmask.padding`, word starts from the tokenizer's
vocabulary (:mod:`fastmask.words`) as in the LM collator's whole-word path.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, Optional

import numpy as np
import torch
from transformers.data.data_collator import DataCollatorMixin

from . import _rng
from ._constants import IGNORE_INDEX
from ._validation import check_int, check_probability
from .collator import _TokenizerTables
from .infilling import (
    check_mask_ratio,
    check_poisson_lambda,
    check_replace_length,
    plan_text_infilling,
    run_text_infilling,
)
from .mask_stream import MaskStream
from .padding import pad_features, round_up
from .schedules import is_schedule
from .seq2seq import _EncoderDecoderCollator

__all__ = ["DataCollatorForTextInfilling", "permute_sentences"]

# sentence permutation draws at PERMUTE_OFFSET + sentence (streams 0 and 1), past every position
# the text-infilling op draws at for the same row key
PERMUTE_OFFSET = 3 * _rng.INFILL_INSERT_OFFSET
STREAM_PERMUTE_SELECT = 0
STREAM_PERMUTE_ORDER = 1


def permute_sentences(
    ids: np.ndarray,
    body: np.ndarray,
    full_stop_token_id: int,
    ratio: float,
    seed: int,
    row_keys: torch.Tensor,
) -> np.ndarray:
    """fairseq's ``permute_sentences`` on every row at once: ``ids`` ``[B, L]`` with the row's
    sentences (runs of ``body`` tokens, each ending after a run of ``full_stop_token_id``;
    the body's last sentence needs no full stop) shuffled. ``ceil(S * ratio)`` of a row's ``S``
    sentences, those with the smallest keys ``draw(PERMUTE_OFFSET + j, 0)``, trade places in the
    order of ``draw(PERMUTE_OFFSET + j, 1)``; tokens outside the body (specials, padding) stay.
    Returns a new array."""
    B, L = ids.shape
    previous_body = np.zeros_like(body)
    previous_body[:, 1:] = body[:, :-1]
    stop = ids == full_stop_token_id
    after_stop = np.zeros_like(body)
    after_stop[:, 1:] = stop[:, :-1] & ~stop[:, 1:]
    starts = body & (~previous_body | after_stop)
    sentence = np.cumsum(starts, axis=1) - 1  # valid on body tokens
    count = starts.sum(axis=1)
    width = max(1, int(count.max()))
    rows = np.broadcast_to(np.arange(B)[:, None], (B, L))
    lengths = np.zeros((B, width), dtype=np.int64)
    np.add.at(lengths, (rows[body], sentence[body]), 1)
    # choose and reorder: selected sentences (smallest select keys) take one another's places
    s1, s2 = _rng.row_states(row_keys.cpu(), *_rng.seed_mix(seed))
    positions = torch.arange(width, dtype=torch.int64) + PERMUTE_OFFSET
    select = _rng.draw(s1[:, None], s2[:, None], positions, STREAM_PERMUTE_SELECT).numpy()
    order = _rng.draw(s1[:, None], s2[:, None], positions, STREAM_PERMUTE_ORDER).numpy()
    j = np.arange(width)[None, :]
    exists = j < count[:, None]
    chosen_count = np.ceil(np.round(count * ratio, 9)).astype(np.int64)
    select_rank = np.argsort(
        np.argsort(np.where(exists, ((select >> 1) << 32) | j, np.iinfo(np.int64).max), axis=1), axis=1
    )
    chosen = exists & (select_rank < chosen_count[:, None])
    # the r-th chosen slot (row order) gets the chosen sentence with the r-th smallest order key
    slot_order = np.argsort(np.where(chosen, j, width + j), axis=1, kind="stable")
    sentence_order = np.argsort(
        np.where(chosen, ((order >> 1) << 32) | j, np.iinfo(np.int64).max), axis=1, kind="stable"
    )
    source = np.broadcast_to(j, (B, width)).copy()
    r = np.arange(width)[None, :]
    take = r < chosen_count[:, None]
    source[np.broadcast_to(np.arange(B)[:, None], (B, width))[take], slot_order[take]] = sentence_order[take]
    # new start (within the body) of every source sentence
    new_lengths = np.take_along_axis(lengths, source, axis=1)
    new_starts = np.cumsum(new_lengths, axis=1) - new_lengths
    start_of = np.zeros_like(new_starts)
    np.put_along_axis(start_of, source, new_starts, axis=1)
    body_rank = np.cumsum(body, axis=1) - 1
    old_starts = np.cumsum(lengths, axis=1) - lengths
    sentence_c = np.where(body, sentence, 0)
    target_rank = (
        np.take_along_axis(start_of, sentence_c, axis=1)
        + body_rank
        - np.take_along_axis(old_starts, sentence_c, axis=1)
    )
    # body rank -> position
    body_positions = np.full((B, L), 0, dtype=np.int64)
    body_positions[rows[body], body_rank[body]] = np.broadcast_to(np.arange(L)[None, :], (B, L))[body]
    out = ids.copy()
    out[rows[body], body_positions[rows[body], target_rank[body]]] = ids[body]
    return out


@dataclass
class DataCollatorForTextInfilling(MaskStream, _EncoderDecoderCollator, DataCollatorMixin):
    """BART text infilling of tokenized rows (fairseq's ``DenoisingDataset`` noise, the collator
    of transformers' ``run_bart_dlm_flax.py``), with fastmask's reproducible, resumable mask
    stream.

    Features (dicts with ``input_ids``, or sequences of ids: lists, arrays or tensors; ragged
    rows are padded) are noised by :func:`fastmask.text_infilling`: whole-word spans of
    Poisson(``poisson_lambda``) words cover ``ceil(words * mask_ratio)`` words of each row;
    ``replace_length`` 1 turns a span into one mask token, -1 masks each token, 0 deletes the
    span; zero-length spans insert a mask; ``random_ratio`` of the masks become random ids;
    ``insert_ratio`` inserts more. Special tokens (BOS, EOS, ...) are never masked.
    ``whole_word=False`` makes every token a word. ``permute_sentences`` (a ratio in [0, 1]) first
    shuffles that share of each row's sentences (ended by ``full_stop_token_id``, default the
    tokenizer's ``"."``), as fairseq's ``permute_sentence_ratio``.

    Returns ``input_ids`` (noised, padded to the longest noised row and ``pad_to_multiple_of``),
    ``attention_mask``, ``labels`` (the original rows, ``IGNORE_INDEX`` at padding) and, when a
    decoder start id is known (``decoder_start_token_id=``, else
    ``model.config.decoder_start_token_id``), ``decoder_input_ids``: the labels shifted right
    behind the start id, padding as the pad id.

    Keyword-only: ``model``, ``full_stop_token_id``, ``row_key_column`` (a feature column of
    per-example integer keys, removed from the batch), ``return_tensors`` (``"pt"`` or ``"np"``)
    and ``backend`` (the op's).

    ``mask_ratio`` may also be a schedule of the step (:class:`fastmask.MaskingSchedule`, any
    callable; ``set_step`` advances it) or a live rate (:class:`fastmask.AdaptiveRate`, steered by
    the model's feedback), read per batch: DataLoader workers see a rate's updates after the
    loader's prefetch (lag: :class:`fastmask.DataCollatorForLanguageModeling`), and
    :meth:`state_dict` includes the rate's state.
    """

    LIVE_RATES = ("mask_ratio",)
    LIVE_INPUTS = LIVE_RATES

    tokenizer: Any
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    random_ratio: float = 0.1
    replace_length: int = 1
    insert_ratio: float = 0.0
    whole_word: bool = True
    permute_sentences: float = 0.0
    decoder_start_token_id: Optional[int] = None
    pad_to_multiple_of: Optional[int] = None
    seed: Optional[int] = None
    _: KW_ONLY
    model: Any = None
    full_stop_token_id: Optional[int] = None
    row_key_column: Optional[str] = None
    return_tensors: str = "pt"
    backend: str = "auto"

    def __post_init__(self):
        if not is_schedule(self.mask_ratio):
            self.mask_ratio = check_mask_ratio(self.mask_ratio)
        self.current_rates(step=0)  # a schedule / live rate: checked at step 0
        self.poisson_lambda = check_poisson_lambda(self.poisson_lambda)
        self.random_ratio = check_probability("random_ratio", self.random_ratio)
        self.replace_length = check_replace_length(self.replace_length)
        self.insert_ratio = check_probability("insert_ratio", self.insert_ratio)
        self.permute_sentences = check_probability("permute_sentences", self.permute_sentences)
        if not isinstance(self.whole_word, bool):
            raise TypeError(f"whole_word must be True or False, got {self.whole_word!r}")
        self.mask_token_id = getattr(self.tokenizer, "mask_token_id", None)
        if self.mask_token_id is None:
            raise ValueError(
                f"tokenizer {type(self.tokenizer).__name__} has no mask token; text infilling replaces spans with "
                "it: use a BART tokenizer or add one with tokenizer.add_special_tokens({'mask_token': '<mask>'}) "
                "(then resize the model's embeddings)"
            )
        self.pad_token_id = getattr(self.tokenizer, "pad_token_id", None)
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has no pad_token_id; add a pad token (tokenizer.pad_token = ...)")
        if self.permute_sentences > 0 and self.full_stop_token_id is None:
            self.full_stop_token_id = self.tokenizer.convert_tokens_to_ids(".")
            unknown = getattr(self.tokenizer, "unk_token_id", None)
            if self.full_stop_token_id is None or self.full_stop_token_id == unknown:
                raise ValueError(
                    "permute_sentences needs a full-stop token and the tokenizer has no '.'; pass full_stop_token_id="
                )
        if self.full_stop_token_id is not None:
            check_int("full_stop_token_id", self.full_stop_token_id, minimum=0)
        if self.pad_to_multiple_of is not None:
            check_int("pad_to_multiple_of", self.pad_to_multiple_of, minimum=1)
        self._check_common_fields()
        self.vocab_size = len(self.tokenizer)
        self._tables = _TokenizerTables()
        special_ids = _TokenizerTables.special_ids(self.tokenizer)
        self._special_table = np.zeros(max(special_ids, default=0) + 2, dtype=bool)  # the last entry: ids past it
        self._special_table[list(special_ids)] = True
        self._init_stream()

    def _collate(self, features, fmt: str):
        padded = pad_features(features, self.tokenizer, keep_dtype_of=())
        data = padded.data
        key_values = self._pop_row_key_column(data)
        ids_np = np.ascontiguousarray(data["input_ids"], dtype=np.int64)
        batch, length = ids_np.shape
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        columns = np.arange(length)[None, :]
        lengths = padded.lengths[:, None]
        real = columns >= length - lengths if left else columns < lengths
        special = np.take(self._special_table, ids_np, mode="clip")  # ids past the table clip to False
        if "special_tokens_mask" in data:
            special |= np.asarray(data["special_tokens_mask"]).astype(bool)
        special &= real
        keys = self._batch_row_keys(key_values, batch)
        seed = self._effective_seed()
        source = ids_np
        if self.permute_sentences > 0:
            source = permute_sentences(
                ids_np, real & ~special, self.full_stop_token_id, self.permute_sentences, seed, keys
            )
        ids = torch.from_numpy(source)
        word_starts = self._tables.word_starts(self.tokenizer, ids)["word_starts"] if self.whole_word else None
        plan = plan_text_infilling(
            ids,
            mask_token_id=self.mask_token_id,
            pad_token_id=self.pad_token_id,
            vocab_size=self.vocab_size,
            mask_ratio=self.current_rates()["mask_ratio"],
            poisson_lambda=self.poisson_lambda,
            random_ratio=self.random_ratio,
            replace_length=self.replace_length,
            insert_ratio=self.insert_ratio,
            word_starts=word_starts,
            attention_mask=torch.from_numpy(real),
            special_tokens_mask=torch.from_numpy(special),
            seed=seed,
            row_keys=keys,
        )
        noised, attention = run_text_infilling(plan, self.backend)
        if noised.device.type != "cpu":
            noised, attention = noised.cpu(), attention.cpu()
        noised, attention = noised.numpy(), attention.numpy()
        out_lengths = attention.sum(axis=1)
        width = round_up(max(1, int(out_lengths.max())), self.pad_to_multiple_of)
        inputs = np.full((batch, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        keep = min(width, noised.shape[1])
        inputs[:, :keep] = noised[:, :keep]
        mask[:, :keep] = attention[:, :keep]
        if left:  # the op left-aligns every row: move rows right, as the tokenizer pads
            shift = width - out_lengths
            src = np.arange(width)[None, :] - shift[:, None]
            rows = np.arange(batch)[:, None]
            inputs = np.where(src >= 0, inputs[rows, src.clip(0)], self.pad_token_id)
            mask = (src >= 0).astype(np.int64)
        label_width = round_up(length, self.pad_to_multiple_of)
        labels = np.full((batch, label_width), IGNORE_INDEX, dtype=np.int64)
        labels[:, :length] = np.where(real, ids_np, IGNORE_INDEX)
        return self._batch({"input_ids": inputs, "attention_mask": mask, "labels": labels}, fmt, pad_ignored=True)
