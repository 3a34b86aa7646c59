"""Seq2seq pre-training collators: T5 span corruption (:class:`DataCollatorForSpanCorruption`).

Built on :func:`fastmask.span_corruption` (the op, three bit-identical backends); the seed,
epoch, row keys and ``state_dict`` come from :class:`~fastmask.mask_stream.MaskStream` (dynamic
across epochs and DataLoader workers, resumable), padding of features from
:mod:`fastmask.padding`.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, Optional

import numpy as np
import torch
from transformers.data.data_collator import DataCollatorMixin
from transformers.tokenization_utils_base import BatchEncoding

from . import _backend
from ._constants import IGNORE_INDEX
from ._validation import check_int
from .mask_stream import MaskStream
from .padding import pad_features, read_fixed_length_ids
from .schedules import is_schedule
from .sentinel_spans import (
    SpanCorruptionRunner,
    _check_density,
    _check_mean_span,
    plan_span_corruption,
    span_corruption_lengths,
    span_counts,
)

__all__ = ["DataCollatorForSpanCorruption", "add_sentinel_tokens", "sentinel_token_id"]

SENTINEL = "<extra_id_{}>"


def add_sentinel_tokens(tokenizer, count: int = 100, *, eos_token: str = "</s>") -> int:
    """Add T5's sentinels ``<extra_id_0> .. <extra_id_{count-1}>`` to a tokenizer that lacks
    them, with T5's id order (``<extra_id_k>`` = ``<extra_id_0>`` - k), and an EOS token when it
    has none. Returns the number of tokens added (resize the model's embeddings to
    ``len(tokenizer)``)."""
    count = check_int("count", count, minimum=1)
    added = 0
    if tokenizer.eos_token_id is None:
        added += tokenizer.add_special_tokens({"eos_token": eos_token})
    tokens = [SENTINEL.format(k) for k in reversed(range(count))]  # highest id for <extra_id_0>
    added += (
        tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
        if _accepts_replace(tokenizer)
        else tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    )
    return added


def _accepts_replace(tokenizer) -> bool:
    import inspect

    try:
        return "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters
    except (TypeError, ValueError):
        return False


def sentinel_token_id(tokenizer, spans: int = 1) -> int:
    """The id of ``<extra_id_0>``, checked to lead ``spans`` sentinels in T5's order
    (``<extra_id_k>`` = ``<extra_id_0>`` - k). Raises ValueError naming the fix otherwise."""
    vocab = tokenizer.get_vocab()
    first = vocab.get(SENTINEL.format(0))
    if first is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no sentinel token '<extra_id_0>'; span corruption "
            "replaces each span with T5's sentinels <extra_id_0>, <extra_id_1>, ...: use a T5 tokenizer or "
            "call fastmask.seq2seq.add_sentinel_tokens(tokenizer) (then resize the model's embeddings)"
        )
    for k in range(1, spans):
        if vocab.get(SENTINEL.format(k)) != first - k:
            raise ValueError(
                f"tokenizer: '<extra_id_{k}>' has id {vocab.get(SENTINEL.format(k))}, not <extra_id_0> - {k} = "
                f"{first - k}; rows need {spans} sentinels in T5's order (ids falling from <extra_id_0>): "
                "add them with fastmask.seq2seq.add_sentinel_tokens(tokenizer)"
            )
    return first


class _EncoderDecoderCollator:
    """What the encoder-decoder pre-training collators share (:class:`DataCollatorForSpanCorruption`,
    :class:`~fastmask.infilling_collator.DataCollatorForTextInfilling`): the checks of their
    common fields, the row-key column, the decoder inputs and the return format. Needs the fields
    ``model``, ``decoder_start_token_id``, ``pad_token_id``, ``row_key_column``,
    ``return_tensors``, ``seed``, ``backend`` and a ``_collate(features, fmt)``."""

    def _check_common_fields(self) -> None:
        """``decoder_start_token_id`` (default: ``model.config``'s), ``return_tensors``, ``seed``,
        ``backend``."""
        if self.decoder_start_token_id is None and self.model is not None:
            config = getattr(self.model, "config", None)
            self.decoder_start_token_id = getattr(config, "decoder_start_token_id", None)
        if self.decoder_start_token_id is not None:
            check_int("decoder_start_token_id", self.decoder_start_token_id, minimum=0)
        if self.return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors={self.return_tensors!r}: pass 'pt' or 'np'")
        if self.seed is not None:
            check_int("seed", self.seed)
        _backend.check_backend_name(self.backend)

    def torch_call(self, features):
        return self._collate(features, "pt")

    def numpy_call(self, features):
        return self._collate(features, "np")

    def _pop_row_key_column(self, data: dict):
        """The ``row_key_column`` values, removed from the padded features ``data`` (None without
        the column)."""
        if self.row_key_column is None:
            return None
        if self.row_key_column not in data:
            raise ValueError(f"row_key_column={self.row_key_column!r} is not among the features' keys {list(data)}")
        return data.pop(self.row_key_column)

    def _batch(self, out: dict, fmt: str, *, pad_ignored: bool) -> BatchEncoding:
        """``out`` (numpy ``input_ids``, ``attention_mask``, ``labels``), with ``decoder_input_ids``
        when a decoder start id is known: the labels shifted right behind it, ``IGNORE_INDEX``
        replaced by the pad id when ``pad_ignored``; torch tensors when ``fmt`` is ``"pt"``."""
        if self.decoder_start_token_id is not None:
            labels = out["labels"]
            shifted = np.empty_like(labels)
            shifted[:, 0] = self.decoder_start_token_id
            shifted[:, 1:] = labels[:, :-1]
            if pad_ignored:
                shifted[shifted == IGNORE_INDEX] = self.pad_token_id
            out["decoder_input_ids"] = shifted
        if fmt == "pt":
            out = {k: torch.from_numpy(v) for k, v in out.items()}
        return BatchEncoding(out)


@dataclass
class DataCollatorForSpanCorruption(MaskStream, _EncoderDecoderCollator, DataCollatorMixin):
    """T5 span corruption of pre-tokenized rows (the collator of transformers'
    ``run_t5_mlm_flax.py``, with fastmask's reproducible, resumable mask stream).

    Features (dicts with ``input_ids``, or sequences of ids: lists, arrays or tensors) must hold
    exactly ``expanded_input_length`` tokens, from
    ``fastmask.span_corruption_lengths(input_length, noise_density, mean_noise_span_length)``
    (568 for T5's 512): pack the corpus into rows of that length. Per row, the noise spans
    become sentinels ``<extra_id_0>, <extra_id_1>, ...`` (see :func:`fastmask.span_corruption`).

    Returns ``input_ids`` ``[B, input_length]`` (kept tokens, sentinels, EOS),
    ``attention_mask`` (ones), ``labels`` ``[B, target_length]`` (sentinels and spans, EOS;
    ``IGNORE_INDEX`` past a row's end when ``target_length`` is longer than the targets) and,
    when a decoder start id is known (``decoder_start_token_id=``, else
    ``model.config.decoder_start_token_id``), ``decoder_input_ids``: the labels shifted right
    behind the start id, ``IGNORE_INDEX`` as the pad id.

    Keyword-only: ``model``, ``eos_token_id`` / ``pad_token_id`` (default: the tokenizer's),
    ``row_key_column`` (a feature column of per-example integer keys, removed from the batch),
    ``return_tensors`` (``"pt"`` or ``"np"``) and ``backend`` (the op's).

    ``noise_density`` is a number, never a schedule or a live rate (:class:`fastmask.AdaptiveRate`):
    with ``mean_noise_span_length`` it fixes ``expanded_input_length``, the length every row is
    packed to, and ``target_length``, so it cannot change between batches (the text-infilling and
    source-noise collators take live rates).
    """

    tokenizer: Any
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    input_length: int = 512
    target_length: Optional[int] = None
    decoder_start_token_id: Optional[int] = None
    seed: Optional[int] = None
    _: KW_ONLY
    model: Any = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    row_key_column: Optional[str] = None
    return_tensors: str = "pt"
    backend: str = "auto"

    def __post_init__(self):
        if is_schedule(self.noise_density):
            raise TypeError(
                f"noise_density={self.noise_density!r}: span corruption takes a fixed density, not a schedule or a "
                "live rate, because the density fixes the expanded input length every row is packed to "
                "(fastmask.span_corruption_lengths); pass a float such as 0.15, or use DataCollatorForTextInfilling "
                "(its mask_ratio may be live)"
            )
        self.noise_density = _check_density(self.noise_density)
        self.mean_noise_span_length = _check_mean_span(self.mean_noise_span_length)
        check_int("input_length", self.input_length, minimum=2)
        self.expanded_input_length, needed = span_corruption_lengths(
            self.input_length, self.noise_density, self.mean_noise_span_length
        )
        if self.target_length is None:
            self.target_length = needed
        elif check_int("target_length", self.target_length, minimum=1) < needed:
            raise ValueError(
                f"target_length={self.target_length} is shorter than the {needed} target tokens of rows of "
                f"{self.expanded_input_length}; pass target_length=None (or >= {needed}), see "
                "fastmask.span_corruption_lengths"
            )
        spans = span_counts(self.expanded_input_length, self.noise_density, self.mean_noise_span_length)[1]
        self.first_sentinel_id = sentinel_token_id(self.tokenizer, spans)
        if self.eos_token_id is None:
            self.eos_token_id = self.tokenizer.eos_token_id
        if self.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no eos_token_id; pass eos_token_id= or add one "
                "(fastmask.seq2seq.add_sentinel_tokens adds '</s>')"
            )
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has no pad_token_id; pass pad_token_id= or add a pad token")
        check_int("eos_token_id", self.eos_token_id, minimum=0)
        check_int("pad_token_id", self.pad_token_id, minimum=0)
        self._check_common_fields()
        self._init_stream()
        self._runners = {}  # batch size -> SpanCorruptionRunner (see _runner_for)

    def _collate(self, features, fmt: str):
        expected = self.expanded_input_length
        ids = read_fixed_length_ids(features, expected) if self.row_key_column is None else None
        key_values = None
        if ids is None:  # the general path: any kind of features, a row key column, named errors
            padded = pad_features(features, self.tokenizer, keep_dtype_of=())
            data = padded.data
            bad = np.flatnonzero(padded.lengths != expected)
            if bad.size:
                row = int(bad[0])
                raise ValueError(
                    f"row {row} has {int(padded.lengths[row])} tokens, but span corruption to input_length="
                    f"{self.input_length} needs rows of exactly {expected} (fastmask.span_corruption_lengths("
                    f"{self.input_length}, {self.noise_density}, {self.mean_noise_span_length}) = "
                    f"{(expected, self.target_length)}); pack the tokenized corpus into rows of {expected} tokens"
                )
            key_values = self._pop_row_key_column(data)
            ids = data["input_ids"]
        batch = ids.shape[0]
        keys = self._batch_row_keys(key_values, batch)
        inputs, labels = self._runner_for(batch)(ids, seed=self._effective_seed(), row_keys=keys)
        widened = labels.shape[1] < self.target_length
        if widened:
            wide = np.full((batch, self.target_length), IGNORE_INDEX, dtype=labels.dtype)
            wide[:, : labels.shape[1]] = labels
            labels = wide
        out = {"input_ids": inputs, "attention_mask": np.ones(inputs.shape, dtype=np.int64), "labels": labels}
        return self._batch(out, fmt, pad_ignored=widened)

    def _runner_for(self, batch: int) -> SpanCorruptionRunner:
        """The op for batches of ``batch`` rows, with its plan validated once: every row is
        ``expanded_input_length`` real tokens (pad ids too), so the counts and widths depend only
        on the shape, and each batch only swaps in its ids, seed and row keys."""
        runner = self._runners.get(batch)
        if runner is None:
            plan = plan_span_corruption(
                torch.zeros((batch, self.expanded_input_length), dtype=torch.int64),
                first_sentinel_id=self.first_sentinel_id,
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
                noise_density=self.noise_density,
                mean_noise_span_length=self.mean_noise_span_length,
                # every token is real (numpy-made: no torch kernel, whose intra-op threads
                # contend with the C++ pool on small machines)
                attention_mask=torch.from_numpy(np.ones((batch, self.expanded_input_length), dtype=bool)),
                seed=0,
            )
            runner = self._runners[batch] = SpanCorruptionRunner(plan, self.backend)
        return runner
