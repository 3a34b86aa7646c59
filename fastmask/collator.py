"""Drop-in data collators for transformers, built on :func:`fastmask.mask_tokens`.

* :class:`DataCollatorForLanguageModeling` subclasses ``transformers.DataCollatorForLanguageModeling``
  (same fields, defaults, validation and output) and adds keyword-only extensions: span masking,
  an exact budget, conditional (token-weighted) masking, scheduled masking rates, GPU masking,
  deterministic row keys and a resumable mask stream.
* :class:`DataCollatorForWholeWordMask` keeps the transformers 4.x class API (gone from v5).
* :class:`DataCollatorForMaskedAugmentation` corrupts inputs (mask / random replace / delete)
  while fine-tuning a classifier, keeping the task's labels aligned.

Padding (every key a batch carries, in C++) is :mod:`fastmask.padding`; the mask stream (seed,
epoch, step, row keys; dynamic across epochs and DataLoader workers; resumable) is
:mod:`fastmask.mask_stream`; token weights for conditional masking are
:mod:`fastmask.token_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling as _HFDataCollatorForLanguageModeling
from transformers.data.data_collator import DataCollatorMixin
from transformers.tokenization_utils_base import BatchEncoding

from . import _backend
from ._validation import check_choice, check_int, check_probability
from .mask_stream import MaskStream
from .masking import (
    BUDGETS,
    IGNORE_INDEX,
    MASK_STRATEGIES,
    MAX_SPAN_WORDS,
    SPAN_DISTRIBUTIONS,
    _check_ids,
    plan_masking,
    run_masking,
)
from .padding import PaddedBatch, pad_features, pad_value, round_up, to_torch
from .schedules import MaskingSchedule, MaskingScheduleCallback, is_schedule
from .token_noise import check_noise_probabilities, compact_rows, noise_tokens
from .token_weights import count_token_frequencies, token_weights_from_counts
from .words import word_start_table, word_starts_from_offsets, word_starts_from_word_ids

RETURN_TENSORS = ("pt", "np")  # transformers 5 dropped "tf"; fastmask collates to torch or numpy

__all__ = [
    "DataCollatorForLanguageModeling",
    "DataCollatorForWholeWordMask",
    "DataCollatorForMaskedAugmentation",
    # re-exported from their own modules (fastmask.collator kept them before)
    "MaskingSchedule",
    "MaskingScheduleCallback",
    "count_token_frequencies",
    "token_weights_from_counts",
    "pad_features",
    "PaddedBatch",
]


# ----------------------------------------------------------------------------- tokenizer tables


class _TokenizerTables:
    """Per-tokenizer lookups cached on a collator: word-start table, special ids."""

    def __init__(self):
        self._word_table = None  # (len(tokenizer), tensor)

    def word_table(self, tokenizer) -> torch.Tensor:
        """Bool ``[len(tokenizer)]`` word-start table, built once per vocabulary size."""
        size = len(tokenizer)
        cached = self._word_table
        if cached is None or cached[0] != size:
            cached = self._word_table = (size, word_start_table(tokenizer))
        return cached[1]

    def word_starts(self, tokenizer, ids: torch.Tensor) -> dict:
        """Word boundaries of ``ids`` by the table, as :func:`fastmask.mask_tokens` keywords; an
        id past the table starts a word (like transformers' collators, which accept such ids).

        CPU: looked up with numpy (one pass, no torch intra-op threads); other devices: on the device.
        """
        table = self.word_table(tokenizer)
        last = table.numel() - 1
        if ids.device.type != "cpu":
            table = table.to(ids.device)
            return {"word_starts": torch.where(ids > last, True, table[ids.clamp(0, last)])}
        ids_np = ids.numpy()
        starts = np.take(table.numpy(), ids_np, mode="clip")
        starts[ids_np > last] = True
        return {"word_starts": torch.from_numpy(starts)}

    @staticmethod
    def special_ids(tokenizer) -> tuple:
        return tuple(sorted({int(i) for i in (tokenizer.all_special_ids or ()) if i is not None and int(i) >= 0}))


def _collator_noise(
    collator, ids: torch.Tensor, ineligible: torch.Tensor, offsets, row_keys: torch.Tensor, probabilities: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~fastmask.token_noise.noise_tokens` of a token-noise collator's padded ``ids``
    ``[B, L]`` (``ineligible`` bool ``[B, L]``) with its tokenizer, seed and backend, and
    ``probabilities`` (mask, random, delete); with ``collator.whole_word``, per word, the words
    from ``offsets`` (an offset mapping ``[B, L, 2]``) when given, else from the word-start table."""
    tokenizer = collator.tokenizer
    word_starts = None
    if collator.whole_word:
        if offsets is not None:
            word_starts = word_starts_from_offsets(offsets, ineligible)
        else:
            word_starts = collator._tables.word_starts(tokenizer, ids)["word_starts"]
    mask, random, delete = probabilities
    return noise_tokens(
        ids,
        ineligible,
        vocab_size=len(tokenizer),
        mask_token_id=tokenizer.mask_token_id,
        mask_probability=mask,
        random_probability=random,
        delete_probability=delete,
        word_starts=word_starts,
        seed=collator._effective_seed(),
        row_keys=row_keys,
        backend=collator.backend,
    )


def _special_mask(ids: torch.Tensor, special_ids: tuple) -> torch.Tensor:
    if ids.device.type == "cpu":
        return torch.from_numpy(np.isin(ids.numpy(), np.asarray(special_ids, dtype=np.int64)))
    return torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype, device=ids.device))


# ----------------------------------------------------------------------------- LM collator


@dataclass
class DataCollatorForLanguageModeling(MaskStream, _HFDataCollatorForLanguageModeling):
    """transformers' ``DataCollatorForLanguageModeling`` with fastmask's masking and padding.

    The positional fields, their defaults, validation, warnings and output (keys, shapes, dtypes,
    padding, labels) are transformers 5's; masks are drawn by :func:`fastmask.mask_tokens`
    (reproducible, see the module docstring) and padding runs in C++. ``mlm_probability`` may
    also be a schedule (a callable of the step or a :class:`MaskingSchedule`).

    Keyword-only extensions (defaults reproduce transformers):
        strategy: ``"token"``, ``"whole_word"`` (same as ``whole_word_mask=True``),
            ``"span"`` (SpanBERT spans of whole words) or ``"pmi"`` (PMI masking: the n-grams of
            ``ngram_vocabulary`` as units, see :mod:`fastmask.ngrams`).
        budget: ``"bernoulli"`` (each unit independently) or ``"exact"`` (round(p * eligible)
            tokens per row).
        span_distribution, span_p, max_span_words: span lengths in words (geometric / uniform).
        token_weights: ``[V]`` non-negative per-id weights for conditional masking
            (:func:`token_weights_from_counts`), covering every id the batches hold;
            bernoulli budget only. A :class:`fastmask.TokenLossTracker` gives live weights
            (adaptive masking, below).
        row_key_column: a feature column (e.g. ``"idx"``) of per-example integer keys; it is
            removed from the batch.
        device: e.g. ``"cuda"``: pad on the CPU, move the batch there, mask there.
        keep_replace_probs: with ``whole_word_mask=True`` transformers forces
            ``mask_replace_prob=1, random_replace_prob=0`` (with a warning); True keeps the
            given split (BERT's original whole-word masking).
        backend: the masking op's backend (``"auto"``, ``"cpp"``, ``"triton"``, ``"reference"``).
        ngram_vocabulary: with ``strategy="pmi"``, the :class:`fastmask.NgramVocabulary` whose
            n-grams are masked as units (PMI masking); built with this collator's tokenizer.

    Word boundaries (whole words and spans) come from ``offset_mapping`` when the features
    carry it, else ``word_ids``, else a word-start table built once from the tokenizer's
    vocabulary (WordPiece, byte-level BPE, SentencePiece), so whole-word masking works after
    ``Trainer`` drops unused columns. Special tokens come from ``special_tokens_mask`` when
    present, else from the tokenizer's special ids.

    Adaptive masking: ``token_weights=tracker`` (a :class:`fastmask.TokenLossTracker`) and
    ``mlm_probability=rate`` (a :class:`fastmask.AdaptiveRate`) are read per batch from shared
    memory that the main process writes (``tracker.update``, ``rate.observe``). A batch uses the
    values current when it is collated: with ``num_workers=0`` the next batch; with ``W``
    workers and ``prefetch_factor=F`` the batches already collated are not re-masked, so an
    update reaches the batches consumed from ``W * F + 1`` batches after it at the latest
    (``Trainer``'s accelerate loader looks one batch further ahead). Given the same sequence of
    updates and ``num_workers=0``, masks are reproducible; :meth:`state_dict` includes the
    tracker's and the rate's states, so loading it restores a run.
    """

    LIVE_RATES = ("mlm_probability",)
    LIVE_INPUTS = ("token_weights", "mlm_probability")  # their states ride in state_dict

    _: KW_ONLY
    strategy: str = "token"
    budget: str = "bernoulli"
    span_distribution: str = "geometric"
    span_p: float = 0.2
    max_span_words: int = 10
    token_weights: Optional[torch.Tensor] = None
    row_key_column: Optional[str] = None
    device: Optional[Union[str, torch.device]] = None
    keep_replace_probs: bool = False
    backend: str = "auto"
    ngram_vocabulary: Optional[Any] = None

    def __post_init__(self):
        schedule = self.mlm_probability if is_schedule(self.mlm_probability) else None
        if schedule is not None:
            self.mlm_probability = schedule(0)  # transformers validates the rate at step 0
        skip_forcing = self.keep_replace_probs and self.whole_word_mask and self.mlm
        if skip_forcing:
            self.whole_word_mask = False
        try:
            super().__post_init__()
        finally:
            if skip_forcing:
                self.whole_word_mask = True
            if schedule is not None:
                self.mlm_probability = schedule
        self._check_extensions()
        self._init_stream()
        self._tables = _TokenizerTables()

    def _check_extensions(self) -> None:
        check_choice("strategy", self.strategy, MASK_STRATEGIES)
        if (self.strategy == "pmi") != (self.ngram_vocabulary is not None):
            raise ValueError(
                "strategy='pmi' needs ngram_vocabulary= (fastmask.build_ngram_vocabulary), and ngram_vocabulary is "
                f"used by strategy='pmi' only (got strategy={self.strategy!r})"
            )
        if self.ngram_vocabulary is not None:
            from .ngrams import check_vocabulary

            check_vocabulary(self.ngram_vocabulary, self.tokenizer)
        check_choice("budget", self.budget, BUDGETS)
        check_choice("span_distribution", self.span_distribution, SPAN_DISTRIBUTIONS)
        check_probability("span_p", self.span_p)
        check_int("max_span_words", self.max_span_words, minimum=1, maximum=MAX_SPAN_WORDS)
        _backend.check_backend_name(self.backend)
        if self.seed is not None:
            check_int("seed", self.seed)
        if self.pad_to_multiple_of is not None:
            check_int("pad_to_multiple_of", self.pad_to_multiple_of, minimum=1)
        check_choice("return_tensors", self.return_tensors, RETURN_TENSORS)
        if not self.mlm and self.strategy != "token":
            raise ValueError(f"strategy={self.strategy!r} needs mlm=True (causal LM has no masking)")
        if _is_live_weights(self.token_weights):
            self.token_weights.share()
            if self.budget != "bernoulli":
                raise ValueError("token_weights works with budget='bernoulli' only; drop one of them")
        elif self.token_weights is not None:
            if not isinstance(self.token_weights, torch.Tensor):
                try:
                    self.token_weights = torch.as_tensor(np.asarray(self.token_weights, dtype=np.float32))
                except (TypeError, ValueError) as exc:
                    raise TypeError(f"token_weights must be a [V] tensor or sequence of numbers ({exc})") from None
            if self.budget != "bernoulli":
                raise ValueError("token_weights works with budget='bernoulli' only; drop one of them")
        if self.row_key_column is not None and not isinstance(self.row_key_column, str):
            raise TypeError(f"row_key_column must be a feature name (str), got {self.row_key_column!r}")
        if self.device is not None:
            try:
                device = torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(
                    f"device={self.device!r} is not a torch device ({exc}); pass e.g. 'cpu' or 'cuda'"
                ) from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(
                    f"device={self.device!r} but CUDA is not available (torch.cuda.is_available() is False); "
                    "drop device= to mask on the CPU"
                )
            self.device = device

    @property
    def masking_strategy(self) -> str:
        """The unit actually masked: ``strategy``, with ``whole_word_mask=True`` upgrading ``"token"``."""
        return "whole_word" if self.whole_word_mask and self.strategy == "token" else self.strategy

    # -- rates
    def current_mlm_probability(self) -> float:
        """The masking rate for the next batch (the schedule evaluated at :attr:`step`)."""
        return self.current_rates()["mlm_probability"]

    def current_token_weights(self) -> Optional[torch.Tensor]:
        """The per-id weights for the next batch (a live tracker's last published weights)."""
        if _is_live_weights(self.token_weights):
            return self.token_weights.current_token_weights()
        return self.token_weights

    # -- collation
    def torch_call(self, examples) -> dict:
        return self._collate(examples, "pt")

    def numpy_call(self, examples) -> dict:
        return self._collate(examples, "np")

    def _collate(self, examples, fmt: str):
        if fmt == "np" and self.device is not None:
            raise ValueError("device= moves tensors to an accelerator; it needs return_tensors='pt'")
        padded = pad_features(
            examples,
            self.tokenizer,
            pad_to_multiple_of=self.pad_to_multiple_of,
            float_dtype=np.float32 if fmt == "pt" else np.float64,
            keep_dtype_of=(torch.Tensor,) if fmt == "pt" else (np.ndarray, torch.Tensor),
        )
        data = padded.data
        special = data.pop("special_tokens_mask", None)
        offsets = data.pop("offset_mapping", None)
        word_ids = data.pop("word_ids", None)
        word_starts = None
        if word_ids is not None and offsets is None and self.mlm and self.masking_strategy != "token":
            word_starts = word_starts_from_word_ids(word_ids)
        key_values = None
        if self.row_key_column is not None:
            if self.row_key_column not in data:
                raise ValueError(
                    f"row_key_column={self.row_key_column!r} is not among the features' keys {list(data)}; "
                    "keep the column (Trainer: remove_unused_columns=False) or drop row_key_column"
                )
            key_values = data.pop(self.row_key_column)
        if not self.mlm:  # causal LM: labels are the ids with padding ignored (in numpy: one pass)
            labels = np.copy(data["input_ids"])
            if self.tokenizer.pad_token_id is not None:
                labels[labels == self.tokenizer.pad_token_id] = IGNORE_INDEX
            data["labels"] = labels
        if fmt == "pt":
            data = {k: to_torch(v) for k, v in data.items()}
            special, offsets = to_torch(special), to_torch(offsets)
            if self.device is not None:
                data = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
                special = None if special is None else special.to(self.device)
        ids = data["input_ids"]
        if self.mlm:
            batch = len(ids)
            keys = self._batch_row_keys(key_values, batch)
            data["input_ids"], data["labels"] = self._mask_batch(fmt, ids, special, offsets, keys, word_starts)
        return BatchEncoding(data) if padded.from_mappings else data

    # -- masking
    def _mask_batch(self, fmt: str, ids, special, offsets, row_keys: torch.Tensor, word_starts):
        """Masks a collated batch through ``torch_mask_tokens`` / ``numpy_mask_tokens``, so a
        subclass overriding them keeps working; an override with transformers' signature (no
        ``row_keys`` / ``word_starts`` keywords) is called with that signature and draws counter
        keys (``row_key_column`` then has no effect)."""
        name = "torch_mask_tokens" if fmt == "pt" else "numpy_mask_tokens"
        method = getattr(self, name)
        if getattr(type(self), name) is not getattr(DataCollatorForLanguageModeling, name):
            return method(ids, special_tokens_mask=special, offset_mapping=offsets)
        return method(
            ids, special_tokens_mask=special, offset_mapping=offsets, row_keys=row_keys, word_starts=word_starts
        )

    def torch_mask_tokens(
        self,
        inputs: Any,
        special_tokens_mask: Any = None,
        offset_mapping: Any = None,
        *,
        row_keys: Optional[torch.Tensor] = None,
        word_starts: Optional[torch.Tensor] = None,
    ):
        """``(masked_inputs, labels)`` for a padded ``[B, L]`` batch; ``inputs`` is not modified.

        transformers' signature plus keyword-only ``row_keys`` (``[B]`` int64; default: the
        next keys of the collator's example counter) and ``word_starts`` (``[B, L]`` bool;
        default: from ``offset_mapping`` or the tokenizer's word-start table). Masking runs
        through :func:`fastmask.mask_tokens`.
        """
        ids = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
        if row_keys is None:
            row_keys = self._next_row_keys(ids.shape[0])
        return self._mask(ids, special_tokens_mask, offset_mapping, word_starts, row_keys)

    def numpy_mask_tokens(self, inputs: Any, special_tokens_mask: Any = None, offset_mapping: Any = None, **keys):
        """numpy version of :meth:`torch_mask_tokens` (same masks, same keywords)."""
        ids = torch.from_numpy(np.ascontiguousarray(inputs))
        special = None if special_tokens_mask is None else torch.from_numpy(np.asarray(special_tokens_mask))
        masked, labels = self.torch_mask_tokens(ids, special_tokens_mask=special, offset_mapping=offset_mapping, **keys)
        return masked.numpy(), labels.numpy()

    def _mask(self, ids: torch.Tensor, special, offsets, word_starts, row_keys):
        tokenizer = self.tokenizer
        work_ids = ids if ids.dtype in (torch.int32, torch.int64) else ids.to(torch.int64)
        kwargs = {}
        if special is not None:
            if not isinstance(special, torch.Tensor):
                special = torch.from_numpy(np.asarray(special) != 0)
            elif special.dtype != torch.bool and special.device.type == "cpu":
                special = torch.from_numpy(special.numpy() != 0)  # numpy: no intra-op thread start-up
            kwargs["special_tokens_mask"] = special.to(work_ids.device)
        else:
            kwargs["special_token_ids"] = self._tables.special_ids(tokenizer)
        strategy = self.masking_strategy
        if strategy != "token":
            if offsets is not None:
                if special is None:
                    special = _special_mask(work_ids, kwargs["special_token_ids"])
                kwargs["word_starts"] = word_starts_from_offsets(offsets, special).to(work_ids.device)
            elif word_starts is not None:
                kwargs["word_starts"] = word_starts.to(work_ids.device)
            else:
                kwargs.update(self._tables.word_starts(tokenizer, work_ids))
        plan = plan_masking(
            work_ids,
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            mlm_probability=self.current_mlm_probability(),
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            pad_token_id=tokenizer.pad_token_id,
            strategy="whole_word" if strategy == "pmi" else strategy,
            budget=self.budget,
            span_distribution=self.span_distribution,
            span_p=self.span_p,
            max_span_words=self.max_span_words,
            token_weights=self.current_token_weights(),
            seed=self._effective_seed(),
            row_keys=row_keys,
            ids_beyond_vocab=True,  # like transformers' collator (such ids start words)
            **kwargs,
        )
        if strategy == "pmi":
            from .ngrams import pmi_plan

            plan = pmi_plan(plan, self.ngram_vocabulary, self.backend)
        masked, labels = run_masking(plan, self.backend)
        if masked.dtype != ids.dtype:
            masked = masked.to(ids.dtype)
        if ids.dtype != torch.int64:
            labels = labels.to(ids.dtype)  # transformers' labels are a clone of the inputs
        return masked, labels


def _is_live_weights(value) -> bool:
    """A live weight source (:class:`fastmask.TokenLossTracker`), not a tensor of weights."""
    return callable(getattr(value, "current_token_weights", None))


# ----------------------------------------------------------------------------- v4 whole-word API


@dataclass(init=False)
class DataCollatorForWholeWordMask(DataCollatorForLanguageModeling):
    """The transformers 4.x ``DataCollatorForWholeWordMask`` API (removed in transformers 5).

    Whole words (WordPiece ``##``, or the tokenizer's own scheme for byte-level BPE and
    SentencePiece), an exact budget of ``round(mlm_probability * eligible tokens)`` per row
    (greedy over shuffled words, BERT's rule), 80/10/10 replacement per token. Like v4 it reads
    only ``input_ids`` (and ``chinese_ref``: positions that continue a word) from dict
    features, always masks, and returns ``input_ids`` and ``labels``. ``tf_experimental_compile``
    is accepted and ignored. Keyword-only extensions of :class:`DataCollatorForLanguageModeling`
    (``strategy``, ``row_key_column``, ``device``, ...) are accepted too.
    """

    tf_experimental_compile: bool = False

    def __init__(
        self,
        tokenizer,
        mlm: bool = True,
        mlm_probability=0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: Optional[int] = None,
        tf_experimental_compile: bool = False,
        return_tensors: str = "pt",
        seed: Optional[int] = None,
        **extensions,
    ):
        self.tf_experimental_compile = tf_experimental_compile
        extensions.setdefault("budget", "exact")
        extensions.setdefault("keep_replace_probs", True)
        super().__init__(
            tokenizer,
            mlm=True,
            whole_word_mask=True,
            mlm_probability=mlm_probability,
            mask_replace_prob=mask_replace_prob,
            random_replace_prob=random_replace_prob,
            pad_to_multiple_of=pad_to_multiple_of,
            return_tensors=return_tensors,
            seed=seed,
            **extensions,
        )
        self.mlm = mlm

    def _collate(self, examples, fmt: str):
        if len(examples) == 0:
            raise ValueError("examples is empty; pass at least one example")
        chinese_ref = None
        if isinstance(examples[0], Mapping):
            if "chinese_ref" in examples[0]:
                chinese_ref = [e["chinese_ref"] for e in examples]
            columns = ["input_ids"] + ([self.row_key_column] if self.row_key_column else [])
            for row, example in enumerate(examples):
                if not isinstance(example, Mapping):
                    raise TypeError(
                        f"features mixes kinds: row 0 is a dict but row {row} is {type(example).__name__}; "
                        "pass all rows as dicts or all as sequences of ids"
                    )
                missing = [k for k in columns if k not in example]
                if missing:
                    raise ValueError(f"row {row} of features has no {missing[0]!r} (row_key_column / input_ids)")
            examples = [{k: e[k] for k in columns} for e in examples]
        padded = pad_features(
            examples,
            self.tokenizer,
            pad_to_multiple_of=self.pad_to_multiple_of,
            add_attention_mask=False,
            keep_dtype_of=(torch.Tensor,) if fmt == "pt" else (np.ndarray, torch.Tensor),
        )
        ids = torch.from_numpy(padded.data["input_ids"])
        batch = len(ids)
        if self.row_key_column:
            keys = self._column_row_keys(padded.data[self.row_key_column], batch)
        else:
            keys = self._next_row_keys(batch)
        word_starts = None
        if chinese_ref is not None:
            word_starts = self._word_starts_with_refs(ids, padded, chinese_ref)
        if self.device is not None and fmt == "pt":
            ids = ids.to(self.device)
        masked, labels = self._mask_batch("pt", ids, None, None, keys, word_starts)
        if fmt == "np":
            return {"input_ids": masked.cpu().numpy(), "labels": labels.cpu().numpy()}
        return {"input_ids": masked, "labels": labels}

    def _word_starts_with_refs(self, ids: torch.Tensor, padded: PaddedBatch, chinese_ref) -> torch.Tensor:
        """The table's word starts, except at ``chinese_ref`` positions (they continue a word)."""
        starts = self._tables.word_starts(self.tokenizer, ids)["word_starts"]
        rows = starts.numpy()  # a fresh array: np.take's output
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for row, refs in enumerate(chinese_ref):
            length = int(padded.lengths[row])
            offset = ids.shape[1] - length if left else 0
            for position in refs:
                if 0 <= int(position) < length:
                    rows[row, offset + int(position)] = False
        return starts


# ----------------------------------------------------------------------------- augmentation


@dataclass
class DataCollatorForMaskedAugmentation(MaskStream, DataCollatorMixin):
    """Pads for sequence / token classification and corrupts the inputs while training.

    Padding follows ``DataCollatorWithPadding`` (``label`` / ``label_ids`` renamed to
    ``labels``), with token-classification ``labels`` (one per token) padded with
    ``label_pad_token_id`` like ``DataCollatorForTokenClassification``. In training mode
    (``training=True``, :meth:`train`), each eligible token (not special, not padding) is
    replaced by the mask token with probability ``mask_probability``, by a random id with
    ``random_replace_probability``, or deleted with ``delete_probability`` (the row closes up;
    its token label, attention and type ids go with it; the batch is re-padded).
    ``whole_word=True`` applies the decision to whole words. In eval mode (:meth:`eval`) the
    batch is only padded. The task's ``labels`` are kept. Selection is
    :func:`fastmask.mask_tokens`, so the corruption is reproducible like the LM collator's.

    The three probabilities may also be schedules of the step (:class:`fastmask.MaskingSchedule`,
    any callable; ``set_step`` advances it) or live rates (:class:`fastmask.AdaptiveRate`, steered
    by the model's feedback), read per batch: DataLoader workers see a rate's updates after the
    loader's prefetch (lag: :class:`DataCollatorForLanguageModeling`), and :meth:`state_dict`
    includes the rates' states. Their sum must stay at most 1 in every batch.
    """

    LIVE_RATES = ("mask_probability", "random_replace_probability", "delete_probability")
    LIVE_INPUTS = LIVE_RATES

    tokenizer: Any
    padding: Union[bool, str] = True
    max_length: Optional[int] = None
    pad_to_multiple_of: Optional[int] = None
    label_pad_token_id: int = IGNORE_INDEX
    return_tensors: str = "pt"
    seed: Optional[int] = None
    _: KW_ONLY
    mask_probability: float = 0.1
    random_replace_probability: float = 0.0
    delete_probability: float = 0.0
    whole_word: bool = False
    training: bool = True
    row_key_column: Optional[str] = None
    backend: str = "auto"

    def __post_init__(self):
        padding = getattr(self.padding, "value", self.padding)
        if padding not in (True, "longest", "max_length"):
            raise ValueError(
                f"padding={self.padding!r}: this collator returns tensors, so it pads; use True/'longest' "
                "or 'max_length' (with max_length=)"
            )
        if padding == "max_length" and self.max_length is None:
            raise ValueError("padding='max_length' needs max_length=")
        if self.max_length is not None:
            check_int("max_length", self.max_length, minimum=1)
        if self.pad_to_multiple_of is not None:
            check_int("pad_to_multiple_of", self.pad_to_multiple_of, minimum=1)
        check_choice("return_tensors", self.return_tensors, RETURN_TENSORS)
        check_noise_probabilities(**self.current_rates(step=0))
        if self.may_be_positive("mask_probability") and self.tokenizer.mask_token_id is None:
            raise ValueError(
                "mask_probability > 0 (or a schedule / live rate) needs a tokenizer with a mask token; set "
                "mask_probability=0 (random replacement / deletion only) or add a mask token"
            )
        if self.seed is not None:
            check_int("seed", self.seed)
        _backend.check_backend_name(self.backend)
        self._init_stream()
        self._tables = _TokenizerTables()

    def train(self, mode: bool = True):
        """Corrupt inputs (training mode). Returns ``self``."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Pad only (evaluation mode). Returns ``self``."""
        return self.train(False)

    def torch_call(self, features):
        return self._collate(features, "pt")

    def numpy_call(self, features):
        return self._collate(features, "np")

    def _collate(self, features, fmt: str):
        if len(features) == 0 or not isinstance(features[0], Mapping):
            raise TypeError("DataCollatorForMaskedAugmentation takes a non-empty list of dicts (tokenized features)")
        padding = getattr(self.padding, "value", self.padding)
        padded = pad_features(
            features,
            self.tokenizer,
            pad_to_multiple_of=self.pad_to_multiple_of,
            max_length=self.max_length if padding == "max_length" else None,
            float_dtype=np.float32 if fmt == "pt" else np.float64,
            label_pad_token_id=self.label_pad_token_id,
        )
        data = {k: to_torch(v) for k, v in padded.data.items()}
        key_values = data.pop(self.row_key_column) if self.row_key_column in data else None
        if self.row_key_column is not None and key_values is None:
            raise ValueError(f"row_key_column={self.row_key_column!r} is not among the features' keys {list(data)}")
        rates = self.current_rates()
        if self.training and sum(rates.values()) > 0:
            check_noise_probabilities(**rates)  # live rates: their sum at this step
            self._corrupt(data, padded, key_values, padding, rates)
        for old in ("label", "label_ids"):
            if old in data:
                data["labels"] = data.pop(old)
        if fmt == "np":
            data = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        return BatchEncoding(data)

    def _corrupt(self, data: dict, padded: PaddedBatch, key_values, padding, rates: dict) -> None:
        ids = data["input_ids"]
        _check_ids(ids, None)  # shifted past the vocabulary below, a negative id would pass as a real one
        batch, length = ids.shape
        tokenizer = self.tokenizer
        special_ids = self._tables.special_ids(tokenizer)
        if "special_tokens_mask" in data:
            ineligible = data["special_tokens_mask"].bool()
        else:
            ineligible = _special_mask(ids, special_ids)
        positions = torch.arange(length)
        lengths = torch.from_numpy(padded.lengths)
        left = getattr(tokenizer, "padding_side", "right") == "left"
        inside = positions[None, :] >= (length - lengths)[:, None] if left else positions[None, :] < lengths[:, None]
        ineligible = ineligible | ~inside
        if tokenizer.pad_token_id is not None:
            ineligible |= ids == tokenizer.pad_token_id
        keys = self._batch_row_keys(key_values, batch)
        offsets = data["offset_mapping"] if "offset_mapping" in data else None
        probabilities = (rates["mask_probability"], rates["random_replace_probability"], rates["delete_probability"])
        out, to_delete = _collator_noise(self, ids, ineligible, offsets, keys, probabilities)
        data["input_ids"] = out
        if to_delete.any():
            self._close_up(data, padded, to_delete, inside, left, padding)

    def _close_up(self, data: dict, padded: PaddedBatch, deleted, inside, left: bool, padding) -> None:
        """Remove deleted positions from every key aligned with ``input_ids`` and re-pad.

        The new length is the longest remaining row (or ``max_length``) rounded up to
        ``pad_to_multiple_of``: never more than the old length.
        """
        keep = inside & ~deleted
        target = max(int(keep.sum(dim=1).max()), self.max_length if padding == "max_length" else 0)
        target = round_up(target, self.pad_to_multiple_of)
        for key in padded.aligned:
            if key in data:
                pad = pad_value(key, self.tokenizer, self.label_pad_token_id)
                data[key] = compact_rows(data[key], keep, target, pad, left=left)
