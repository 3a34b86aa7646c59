"""Source-side noise for translation and summarisation: :class:`DataCollatorForSeq2Seq`.

transformers' ``DataCollatorForSeq2Seq`` (same arguments, same batches) that, in training mode,
masks, randomly replaces or deletes tokens of the encoder input (:mod:`fastmask.token_noise`:
one :func:`fastmask.mask_tokens` call, rows closed up with prefix sums). ``labels`` and
``decoder_input_ids`` are never touched. The seed, epoch, row keys and ``state_dict`` come from
:class:`~fastmask.mask_stream.MaskStream` (new noise every epoch and DataLoader worker,
reproducible, resumable).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Optional

import numpy as np
import torch
from transformers import DataCollatorForSeq2Seq as _HFDataCollatorForSeq2Seq

from . import _backend
from ._validation import check_int
from .collator import _collator_noise, _special_mask, _TokenizerTables
from .mask_stream import MaskStream
from .masking import _check_ids
from .padding import pad_value, round_up
from .token_noise import check_noise_probabilities, compact_rows

__all__ = ["DataCollatorForSeq2Seq"]

# batch keys that never get noise or close up (the decoder side)
_TARGET_KEYS = ("labels",)
_TARGET_PREFIX = "decoder_"


@dataclass
class DataCollatorForSeq2Seq(MaskStream, _HFDataCollatorForSeq2Seq):
    """transformers' ``DataCollatorForSeq2Seq`` with noise on the encoder input while training.

    The positional fields (``tokenizer, model, padding, max_length, pad_to_multiple_of,
    label_pad_token_id, return_tensors``) and the batches are transformers': with the noise off
    (the defaults, or :meth:`eval`) the output is identical. Keyword-only:

        source_mask_probability: share of eligible source tokens replaced by the mask token
            (needs a tokenizer with one; Marian's has none: use random replacement / deletion).
        source_random_probability: share replaced by a random id in ``[0, len(tokenizer))``.
        source_delete_probability: share deleted: the row closes up, ``attention_mask`` and
            every other per-token key with ``input_ids``' shape go with it, and the batch is
            re-padded to its longest row (rounded up to ``pad_to_multiple_of``; with
            ``padding="max_length"`` the width stays). Needs padding.
        whole_word: one decision per word (word starts from ``offset_mapping`` when the
            features carry it, else from the tokenizer's vocabulary: WordPiece ``##``,
            byte-level BPE ``Ġ``, SentencePiece ``▁``).
        seed: the noise stream's seed (None: drawn from torch's RNG once, see
            :mod:`fastmask.mask_stream`); ``row_key_column``: a feature column of per-example
            integer keys (removed from the batch); ``training``: start in training mode;
            ``backend``: :func:`fastmask.mask_tokens`' backend.

    Eligible tokens: inside ``attention_mask``, not special (``special_tokens_mask`` when the
    features carry it, and never one of ``tokenizer.all_special_ids``: EOS, language codes,
    padding). The three probabilities are per eligible token (per word with ``whole_word``) and
    sum to at most 1. ``labels`` and ``decoder_input_ids`` (from ``model``) are those of
    transformers' collator.

    Each probability may also be a schedule of the step (:class:`fastmask.MaskingSchedule`, any
    callable; ``set_step`` advances it) or a live rate (:class:`fastmask.AdaptiveRate`, steered
    by the model's feedback), read per batch: DataLoader workers see a rate's updates after the
    loader's prefetch (lag: :class:`fastmask.DataCollatorForLanguageModeling`), and
    :meth:`state_dict` includes the rates' states. Their sum must stay at most 1 in every batch.
    """

    LIVE_RATES = ("source_mask_probability", "source_random_probability", "source_delete_probability")
    LIVE_INPUTS = LIVE_RATES

    _: KW_ONLY
    source_mask_probability: float = 0.0
    source_random_probability: float = 0.0
    source_delete_probability: float = 0.0
    whole_word: bool = False
    seed: Optional[int] = None
    row_key_column: Optional[str] = None
    training: bool = True
    backend: str = "auto"

    def __post_init__(self):
        check_noise_probabilities(**self.current_rates(step=0))
        if self.may_be_positive("source_mask_probability") and self.tokenizer.mask_token_id is None:
            raise ValueError(
                f"source_mask_probability={self.source_mask_probability} needs a tokenizer with a mask token, and "
                f"{type(self.tokenizer).__name__} has none; set source_mask_probability=0 (random replacement / "
                "deletion only) or add a mask token (then resize the model's embeddings)"
            )
        if self.may_be_positive("source_delete_probability") and self._no_padding():
            raise ValueError(
                f"source_delete_probability={self.source_delete_probability} shortens rows, so the batch must be "
                f"re-padded, but padding={self.padding!r}; pass padding=True (or 'max_length')"
            )
        if self.may_be_positive("source_delete_probability") and self.tokenizer.pad_token_id is None:
            raise ValueError(
                f"source_delete_probability={self.source_delete_probability} re-pads the shortened rows, but "
                f"{type(self.tokenizer).__name__} has no pad token; add one (tokenizer.pad_token = ...)"
            )
        if self.pad_to_multiple_of is not None:
            check_int("pad_to_multiple_of", self.pad_to_multiple_of, minimum=1)
        if self.seed is not None:
            check_int("seed", self.seed)
        if self.row_key_column is not None and not isinstance(self.row_key_column, str):
            raise TypeError(f"row_key_column must be a feature name (str), got {self.row_key_column!r}")
        _backend.check_backend_name(self.backend)
        self._init_stream()
        self._tables = _TokenizerTables()

    def _no_padding(self) -> bool:
        padding = getattr(self.padding, "value", self.padding)
        return padding is False or padding == "do_not_pad"

    @property
    def adds_noise(self) -> bool:
        """Whether the next batch gets noise: training mode and a non-zero probability."""
        return self.training and sum(self.current_rates().values()) > 0

    def train(self, mode: bool = True):
        """Noise the encoder input (training mode, the default). Returns ``self``."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Collate without noise (transformers' batches). Returns ``self``."""
        return self.train(False)

    def __call__(self, features, return_tensors=None):
        key_values = None
        if self.row_key_column is not None:
            if len(features) == 0 or self.row_key_column not in features[0]:
                raise ValueError(
                    f"row_key_column={self.row_key_column!r} is not among the features' keys "
                    f"{list(features[0]) if len(features) else []}; keep the column or drop row_key_column"
                )
            key_values = [f[self.row_key_column] for f in features]
            features = [{k: v for k, v in f.items() if k != self.row_key_column} for f in features]
        batch = super().__call__(features, return_tensors)
        rates = self.current_rates()  # read once per batch (live rates may change meanwhile)
        if self.training and sum(rates.values()) > 0:
            check_noise_probabilities(**rates)  # live rates: their sum at this step
            self._noise(batch, key_values, return_tensors or self.return_tensors, rates)
        return batch

    # -- noise
    def _noise(self, batch, key_values, fmt, rates: dict) -> None:
        if fmt not in ("pt", "np"):
            raise ValueError(f"source noise needs return_tensors='pt' or 'np', got {fmt!r}")
        ids = _to_torch(batch["input_ids"])
        _check_ids(ids, None)  # shifted past the vocabulary by noise_tokens: a negative id would pass
        rows, length = ids.shape
        keys = self._batch_row_keys(key_values, rows)
        if ids.numel() == 0:
            return
        tokenizer = self.tokenizer
        attention = batch.get("attention_mask")
        inside = _to_torch(attention).bool() if attention is not None else ids != tokenizer.pad_token_id
        ineligible = _special_mask(ids, self._tables.special_ids(tokenizer)) | ~inside
        if batch.get("special_tokens_mask") is not None:
            ineligible |= _to_torch(batch["special_tokens_mask"]).bool()
        offsets = batch.get("offset_mapping")
        probabilities = (
            rates["source_mask_probability"],
            rates["source_random_probability"],
            rates["source_delete_probability"],
        )
        noised, deleted = _collator_noise(
            self, ids, ineligible, None if offsets is None else _to_torch(offsets), keys, probabilities
        )
        batch["input_ids"] = _like(noised.to(ids.dtype), batch["input_ids"])
        if bool(deleted.any()):
            self._close_up(batch, inside & ~deleted, length)

    def _close_up(self, batch, keep: torch.Tensor, length: int) -> None:
        """Compact every per-token key of the encoder input to the kept positions and re-pad."""
        padding = getattr(self.padding, "value", self.padding)
        if padding == "max_length":
            width = length
        else:
            width = round_up(max(1, int(keep.sum(dim=1).max())), self.pad_to_multiple_of)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        shape = tuple(keep.shape)
        for key in list(batch.keys()):
            value = batch[key]
            if key in _TARGET_KEYS or key.startswith(_TARGET_PREFIX) or not hasattr(value, "shape"):
                continue
            if tuple(value.shape[:2]) != shape:
                continue
            pad = pad_value(key, self.tokenizer, self.label_pad_token_id)
            batch[key] = _like(compact_rows(_to_torch(value), keep, width, pad, left=left), value)


def _to_torch(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


def _like(tensor: torch.Tensor, original):
    """``tensor`` in the kind (torch or numpy) of ``original``."""
    return tensor if isinstance(original, torch.Tensor) else tensor.numpy()
