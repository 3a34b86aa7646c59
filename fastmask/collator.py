"""Drop-in data collators for transformers, built on :func:`fastmask.mask_tokens`.

* :class:`DataCollatorForLanguageModeling` subclasses ``transformers.DataCollatorForLanguageModeling``
  (same fields, defaults, validation and output) and adds keyword-only extensions: span masking,
  an exact budget, conditional (token-weighted) masking, scheduled masking rates, GPU masking,
  deterministic row keys and a resumable mask stream.
* :class:`DataCollatorForWholeWordMask` keeps the transformers 4.x class API (gone from v5).
* :class:`DataCollatorForMaskedAugmentation` corrupts inputs (mask / random replace / delete)
  while fine-tuning a classifier, keeping the task's labels aligned.

**Padding.** Features (a list of dicts, lists, tuples, numpy arrays or tensors) are padded by
``fastmask._C.pad_rows`` (``csrc/collate.cpp``), which reads the Python lists / buffers directly
and writes preallocated numpy arrays; without the extension a numpy loop does the same. Every key
is kept: sequences aligned with ``input_ids`` are padded with it (``input_ids`` with the pad id,
``attention_mask`` 0, ``token_type_ids`` the pad type id, ``special_tokens_mask`` 1,
``labels`` -100, ``offset_mapping`` (0, 0), ``word_ids`` -1, anything else 0), other sequences
to their own longest row, scalars are stacked, strings and other objects are returned as lists.

**Masks are reproducible.** A mask is a pure function of ``(seed, epoch, row key, position)``.
Row keys default to a running example counter (advanced per batch) mixed with the DataLoader
worker id and the distributed rank, so workers and ranks draw different masks;
``row_key_column="idx"`` takes the keys from a feature column instead, so an example gets the
same mask wherever it lands. ``seed=None`` draws the seed from torch's global RNG on first use
(``torch.manual_seed`` makes runs reproducible). ``set_epoch(e)`` changes all masks per epoch.
``state_dict()`` / ``load_state_dict()`` resume the exact stream after a checkpoint.

**Step and epoch across DataLoader workers.** Workers hold copies of the collator. The first
``set_step`` / ``set_epoch`` in the main process (or ``share_state()``, or creating a
:class:`MaskingScheduleCallback`) moves the step and epoch into shared memory
(``multiprocessing.RawArray``) that worker copies made afterwards read on every batch, also
with ``persistent_workers=True``. Call it before the DataLoader starts its workers. A batch
sees the step current when it is collated: workers prefetch up to ``num_workers *
prefetch_factor`` batches (and accelerate's loader, used by ``Trainer``, one), so a scheduled
rate lags by that look-ahead, and with workers the lag depends on timing (use
``num_workers=0`` when scheduled masks must be reproducible). Pickling the collator outside a
worker start-up (``copy.deepcopy``, ``pickle``) detaches the copy with the current values.
"""
from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.context import get_spawning_popen
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling as _HFDataCollatorForLanguageModeling
from transformers.data.data_collator import DataCollatorMixin
from transformers.tokenization_utils_base import BatchEncoding

from . import _backend
from ._validation import check_choice, check_int, check_probability
from .masking import BUDGETS, IGNORE_INDEX, MAX_SPAN_WORDS, SPAN_DISTRIBUTIONS, STRATEGIES, mask_tokens
from .schedules import MaskingSchedule, MaskingScheduleCallback, is_schedule, probability_at
from .words import word_start_table, word_starts_from_offsets, word_starts_from_word_ids

__all__ = [
    "DataCollatorForLanguageModeling",
    "DataCollatorForWholeWordMask",
    "DataCollatorForMaskedAugmentation",
    "MaskingSchedule",
    "MaskingScheduleCallback",
    "count_token_frequencies",
    "token_weights_from_counts",
    "pad_features",
]

_MASK64 = (1 << 64) - 1
_EPOCH_MIX = 0x9E3779B97F4A7C15
_COUNTER_BITS = 40
_MAX_WORKER_SLOTS = 1 << 11  # worker id + 1 (0 = the main process)
_MAX_RANKS = 1 << 13
_STATE_FORMAT = "fastmask.collator/1"

# ----------------------------------------------------------------------------- padding


def _pad_value(key: str, tokenizer, label_pad_token_id: int):
    if key == "input_ids":
        return tokenizer.pad_token_id
    if key == "attention_mask":
        return 0
    if key == "token_type_ids":
        return getattr(tokenizer, "pad_token_type_id", 0) or 0
    if key == "special_tokens_mask":
        return 1
    if key in ("labels", "label", "label_ids"):
        return label_pad_token_id
    if key == "word_ids":
        return -1
    return 0


def _is_scalar(value) -> bool:
    if isinstance(value, (numbers.Number, np.generic)):
        return True
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0


def _element_dtype(value, key: str) -> Optional[np.dtype]:
    """numpy dtype for a number, None when ``value`` is not a number."""
    if isinstance(value, (bool, np.bool_)):
        return np.dtype(bool)
    if isinstance(value, (numbers.Integral, np.integer)):
        return np.dtype(np.int64)
    if isinstance(value, (numbers.Real, np.floating)):
        return np.dtype(np.float64)
    if value is None and key == "word_ids":
        return np.dtype(np.int64)
    return None


def _array_dtype(row) -> np.dtype:
    dtype = row.numpy().dtype if isinstance(row, torch.Tensor) else row.dtype
    if dtype == np.bool_:
        return np.dtype(bool)
    if dtype.kind in "iu":
        return np.dtype(np.int64)
    if dtype.kind == "f":
        return np.dtype(np.float64)
    raise TypeError(f"unsupported array dtype {dtype}")


def _sequence_layout(rows: Iterable, key: str) -> tuple[np.dtype, Optional[int]]:
    """``(dtype, width)`` of a key's rows, read from the first item of the first non-empty row:
    width is None for ``[L]`` rows and W for ``[L, W]`` rows (e.g. offset pairs)."""
    for row in rows:
        if len(row) == 0:
            continue
        if isinstance(row, (np.ndarray, torch.Tensor)):
            return _array_dtype(row), (None if row.ndim == 1 else int(row.shape[1]))
        item, width = row[0], None
        if isinstance(item, (list, tuple, np.ndarray, torch.Tensor)) and not _is_scalar(item):
            width = len(item)
            item = item[0] if width else 0
        if isinstance(item, (np.ndarray, torch.Tensor)):
            item = item.item()
        dtype = _element_dtype(item, key)
        if dtype is None:
            raise TypeError(f"{key!r} holds non-numeric items ({type(item).__name__}); sequences must hold numbers")
        return dtype, width
    return np.dtype(np.int64), None


def _pad_python(rows, out: np.ndarray, pad_value, left: bool, none_value) -> None:
    """The numpy fallback of ``_C.pad_rows`` (same layout, same errors for common cases)."""
    out.fill(pad_value)
    length = out.shape[1]
    for i, row in enumerate(rows):
        if isinstance(row, torch.Tensor):
            row = row.numpy()
        if none_value is not None and not isinstance(row, np.ndarray):
            row = [none_value if v is None else v for v in row]
        values = np.asarray(row)
        n = len(values)
        if n > length:
            raise ValueError(f"row {i} has {n} items, more than the padded length {length}")
        if n == 0:
            continue
        if out.dtype.kind in "iub" and values.dtype.kind == "f":
            raise TypeError(f"row {i}: float values in an integer sequence")
        if out.dtype.kind in "iu":
            info = np.iinfo(out.dtype)
            if values.min() < info.min or values.max() > info.max:
                raise ValueError(f"row {i}: a value does not fit in {out.dtype}")
        target = out[i, length - n :] if left else out[i, :n]
        target[...] = values


def _collate_module():
    """The C++ extension when it has the collation functions (a stale build may not), else None."""
    module = _backend.cpp_kernels()
    return module if hasattr(module, "pad_rows") else None


def _pad_key(features, key, out: np.ndarray, pad_value, left: bool, none_value=None) -> None:
    module = _collate_module()
    if module is not None:
        module.pad_rows(features, key, out, pad_value, left, none_value)
        return
    rows = features if key is None else [_feature(f, key, i) for i, f in enumerate(features)]
    _pad_python(rows, out, pad_value, left, none_value)


def _row_lengths(features, key) -> np.ndarray:
    module = _collate_module()
    if module is not None:
        return module.row_lengths(features, key)
    rows = features if key is None else [_feature(f, key, i) for i, f in enumerate(features)]
    return np.array([-1 if (v is None or _is_scalar(v)) else len(v) for v in rows], dtype=np.int64)


def _round_up(length: int, multiple: Optional[int]) -> int:
    if multiple and length % multiple:
        return (length // multiple + 1) * multiple
    return length


def _missing_pad_error(tokenizer) -> ValueError:
    return ValueError(
        "You are attempting to pad samples but the tokenizer you are using "
        f"({tokenizer.__class__.__name__}) does not have a pad token."
    )


@dataclass
class PaddedBatch:
    """What :func:`pad_features` returns.

    ``data``: key -> numpy array (or list for non-numeric values), in the features' key order;
    ``lengths``: int64 ``[B]`` unpadded lengths of ``input_ids``; ``aligned``: the keys padded
    alongside ``input_ids`` (same row lengths); ``from_mappings``: the features were dicts.
    """

    data: dict
    lengths: np.ndarray
    aligned: set
    from_mappings: bool


def pad_features(
    features,
    tokenizer,
    *,
    pad_to_multiple_of: Optional[int] = None,
    max_length: Optional[int] = None,
    float_dtype=np.float32,
    label_pad_token_id: int = IGNORE_INDEX,
    add_attention_mask: bool = True,
    keep_dtype_of: tuple = (torch.Tensor,),
) -> PaddedBatch:
    """Pad a batch of tokenized features into numpy arrays (see the module docstring for keys).

    ``features``: a non-empty list of dicts (``input_ids`` required) or of sequences (lists,
    tuples, numpy arrays or tensors of ids). Sequences follow ``tokenizer.padding_side``; the
    length is the longest row (or ``max_length`` when larger) rounded up to
    ``pad_to_multiple_of``. Integer keys become int64, floats ``float_dtype``, bools bool;
    rows of ids given directly (not in dicts) as instances of ``keep_dtype_of`` keep their dtype
    (transformers keeps a tensor's dtype with ``return_tensors="pt"``, an array's with ``"np"``).
    ``add_attention_mask`` adds an ``attention_mask`` to dict features that lack one when the
    tokenizer's model inputs include it (as ``tokenizer.pad`` does). Features are never modified.
    """
    if not isinstance(features, list):  # tuples, a [B, L] tensor or array, other iterables
        features = list(features)
    if len(features) == 0:
        raise ValueError("features is empty; pass at least one example")
    left = getattr(tokenizer, "padding_side", "right") == "left"
    first = features[0]
    from_mappings = isinstance(first, Mapping)
    main_key = "input_ids" if from_mappings else None
    if from_mappings and "input_ids" not in first:
        raise ValueError(
            "You should supply an encoding or a list of encodings to this method that includes input_ids, "
            f"but you provided {list(first.keys())}"
        )
    lengths = _row_lengths(features, main_key)
    if (lengths < 0).any():
        bad = int(np.argmax(lengths < 0))
        raise ValueError(f"input_ids of row {bad} is not a sequence of ids")
    longest = int(lengths.max())
    length = _round_up(max(longest, max_length or 0), pad_to_multiple_of)
    needs_padding = bool((lengths != length).any())
    if needs_padding and tokenizer.pad_token_id is None:
        raise _missing_pad_error(tokenizer)

    if not from_mappings:
        if isinstance(first, torch.Tensor) and isinstance(first, keep_dtype_of):
            dtype = first.numpy().dtype
        elif isinstance(first, np.ndarray) and isinstance(first, keep_dtype_of):
            dtype = first.dtype
        else:
            dtype = np.dtype(np.int64)
        out = np.empty((len(features), length), dtype=dtype)
        _pad_key(features, None, out, tokenizer.pad_token_id if needs_padding else 0, left)
        return PaddedBatch({"input_ids": out}, lengths, {"input_ids"}, False)

    data, aligned = {}, {"input_ids"}
    batch = len(features)
    for key in list(first.keys()):
        value = first[key]
        if key == "input_ids":
            out = np.empty((batch, length), dtype=np.int64)
            _pad_key(features, key, out, tokenizer.pad_token_id if needs_padding else 0, left)
            data[key] = out
            continue
        if value is None or isinstance(value, (str, bytes)) or not (
            _is_scalar(value) or isinstance(value, (list, tuple, np.ndarray, torch.Tensor))
        ):
            data[key] = [_feature(f, key, i) for i, f in enumerate(features)]
            continue
        if _is_scalar(value):
            values = [_feature(f, key, i) for i, f in enumerate(features)]
            values = [v.item() if isinstance(v, (np.ndarray, np.generic, torch.Tensor)) else v for v in values]
            array = np.asarray(values)
            if array.dtype.kind == "f":
                array = array.astype(float_dtype)
            data[key] = array
            continue
        key_lengths = _row_lengths(features, key)
        if (key_lengths < 0).any():
            bad = int(np.argmax(key_lengths < 0))
            raise ValueError(f"{key!r} of row {bad} is a scalar but row 0 holds a sequence")
        dtype, width = _sequence_layout((_feature(f, key, i) for i, f in enumerate(features)), key)
        if dtype.kind == "f":
            dtype = np.dtype(float_dtype)
        if np.array_equal(key_lengths, lengths):
            key_length = length
            aligned.add(key)
        else:
            key_length = int(key_lengths.max())
        shape = (batch, key_length) if width is None else (batch, key_length, width)
        out = np.empty(shape, dtype=dtype)
        pad = _pad_value(key, tokenizer, label_pad_token_id)
        if dtype == np.bool_:
            pad = bool(pad)
        _pad_key(features, key, out, pad, left, -1 if key == "word_ids" else None)
        data[key] = out
    if add_attention_mask and "attention_mask" not in data and "attention_mask" in getattr(
        tokenizer, "model_input_names", ("attention_mask",)
    ):
        positions = np.arange(length)
        if left:
            mask = positions[None, :] >= (length - lengths)[:, None]
        else:
            mask = positions[None, :] < lengths[:, None]
        data["attention_mask"] = mask.astype(np.int64)
        aligned.add("attention_mask")
    return PaddedBatch(data, lengths, aligned, True)


def _feature(feature, key, row):
    try:
        return feature[key]
    except KeyError:
        raise ValueError(
            f"{key!r} of row {row}: missing (row 0 has this key; every feature needs the same keys)"
        ) from None


def _to_torch(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


# ----------------------------------------------------------------------------- mask stream state


def _worker_slot() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id + 1


def _rank() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


class _MaskStream:
    """Seed, epoch, step and row keys shared by fastmask's collators (see the module docstring).

    Not a dataclass field holder: the state lives in private attributes set by ``_init_stream``.
    """

    def _init_stream(self) -> None:
        self._drawn_seed: Optional[int] = None
        self._examples = 0
        self._local_step = 0
        self._local_epoch = 0
        self._shared = None
        self._warned_frozen_step = False

    # -- seed
    def resolved_seed(self) -> int:
        """The seed in use: ``seed``, or one drawn once from torch's global RNG when ``seed`` is None."""
        if self.seed is not None:
            return check_int("seed", self.seed)
        if self._drawn_seed is None:
            self._drawn_seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())
        return self._drawn_seed

    def _effective_seed(self) -> int:
        return (self.resolved_seed() & _MASK64) ^ ((self.epoch * _EPOCH_MIX) & _MASK64)

    # -- step / epoch
    @property
    def step(self) -> int:
        """The step last given to :meth:`set_step` (read from shared memory when shared)."""
        return int(self._shared[0]) if self._shared is not None else self._local_step

    @property
    def epoch(self) -> int:
        """The epoch last given to :meth:`set_epoch`."""
        return int(self._shared[1]) if self._shared is not None else self._local_epoch

    def share_state(self):
        """Move step and epoch into shared memory so DataLoader workers started later see updates.

        Called by the first :meth:`set_step` / :meth:`set_epoch` in the main process; a no-op
        inside a worker or when already shared. Returns ``self``.
        """
        if self._shared is None and torch.utils.data.get_worker_info() is None:
            shared = multiprocessing.RawArray(ctypes.c_int64, 2)
            shared[0], shared[1] = self._local_step, self._local_epoch
            self._shared = shared
        return self

    def set_step(self, step: int) -> None:
        """Set the training step (drives a scheduled ``mlm_probability``)."""
        step = check_int("step", step, minimum=0)
        self.share_state()
        self._local_step = step
        if self._shared is not None:
            self._shared[0] = step

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch: every mask changes with it, reproducibly (dynamic masking)."""
        epoch = check_int("epoch", epoch, minimum=0)
        self.share_state()
        self._local_epoch = epoch
        if self._shared is not None:
            self._shared[1] = epoch

    # -- row keys
    def _next_row_keys(self, batch: int) -> torch.Tensor:
        slot, rank = _worker_slot(), _rank()
        if slot >= _MAX_WORKER_SLOTS or rank >= _MAX_RANKS:
            raise ValueError(
                f"default row keys support {_MAX_WORKER_SLOTS - 1} DataLoader workers and {_MAX_RANKS} ranks "
                f"(got worker slot {slot}, rank {rank}); pass row_key_column= to key rows by a dataset column"
            )
        stream = rank * _MAX_WORKER_SLOTS + slot
        start = self._examples
        self._examples += batch
        keys = (start + torch.arange(batch, dtype=torch.int64)) & ((1 << _COUNTER_BITS) - 1)
        # stream < 2**24, so the key stays below 2**64; fold it into int64's range.
        offset = stream << _COUNTER_BITS
        if offset >= 1 << 63:
            offset -= 1 << 64
        return keys + offset

    def _column_row_keys(self, values, batch: int) -> torch.Tensor:
        if isinstance(values, list):
            try:
                values = np.asarray(values, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                raise TypeError(f"row_key_column {self.row_key_column!r} must hold integers") from None
        keys = torch.as_tensor(values)
        if keys.dtype.is_floating_point or keys.dtype == torch.bool or keys.numel() != batch:
            raise TypeError(
                f"row_key_column {self.row_key_column!r} must hold one integer per example, got {keys.dtype} "
                f"with {keys.numel()} values for {batch} examples"
            )
        self._examples += batch
        return keys.reshape(-1).to(torch.int64)

    # -- state
    def state_dict(self) -> dict:
        """Everything needed to continue the exact mask stream: seed, epoch, step, example counter."""
        return {
            "format": _STATE_FORMAT,
            "seed": self.resolved_seed(),
            "epoch": self.epoch,
            "step": self.step,
            "examples": self._examples,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` (e.g. after loading a checkpoint)."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a fastmask collator state (expected format {_STATE_FORMAT!r}): {state!r}")
        seed = check_int("state['seed']", state["seed"])
        if self.seed is not None and int(self.seed) != seed:
            raise ValueError(
                f"state was saved with seed={seed} but this collator has seed={self.seed}; "
                "construct it with the same seed (or seed=None to adopt the saved one)"
            )
        examples = check_int("state['examples']", state["examples"], minimum=0)
        step = check_int("state['step']", state["step"], minimum=0)
        epoch = check_int("state['epoch']", state["epoch"], minimum=0)
        self._drawn_seed, self._examples, self._local_step, self._local_epoch = seed, examples, step, epoch
        if self._shared is not None:
            self._shared[0], self._shared[1] = step, epoch

    # -- pickling: shared memory only travels to processes being started
    def __getstate__(self):
        state = self.__dict__.copy()
        shared = state.get("_shared")
        if shared is not None and get_spawning_popen() is None:
            state["_shared"] = None
            state["_local_step"], state["_local_epoch"] = int(shared[0]), int(shared[1])
        return state

    def _warn_frozen_step(self) -> None:
        if self._shared is None and not self._warned_frozen_step and torch.utils.data.get_worker_info() is not None:
            self._warned_frozen_step = True
            warnings.warn(
                "a scheduled mlm_probability is used in a DataLoader worker, but the collator's step was "
                "never shared: the worker keeps the step it was created with. Call collator.set_step(0) "
                "(or share_state(), or create MaskingScheduleCallback) before iterating the DataLoader.",
                RuntimeWarning,
                stacklevel=3,
            )


# ----------------------------------------------------------------------------- tokenizer tables


class _TokenizerTables:
    """Per-tokenizer lookups cached on a collator: word-start table, special ids."""

    def __init__(self):
        self._word_table = None  # (len(tokenizer), tensor)

    def word_table(self, tokenizer, max_id: int) -> torch.Tensor:
        """Bool ``[>= max_id + 1]`` word-start table; ids past the vocabulary start words."""
        size = len(tokenizer)
        cached = self._word_table
        if cached is None or cached[0] != size:
            cached = self._word_table = (size, word_start_table(tokenizer))
        table = cached[1]
        if max_id >= table.numel():
            table = torch.cat([table, torch.ones(max_id + 1 - table.numel(), dtype=torch.bool)])
            self._word_table = (size, table)
        return table

    def word_starts(self, tokenizer, ids: torch.Tensor) -> dict:
        """Word boundaries of ``ids`` by the table, as :func:`fastmask.mask_tokens` keywords.

        CPU: per-position ``word_starts`` looked up with numpy (one pass, no torch intra-op
        threads); other devices: the table itself, looked up by the kernel.
        """
        if ids.device.type != "cpu":
            top = int(ids.max()) if ids.numel() else 0
            return {"word_start_table": self.word_table(tokenizer, top)}
        ids_np = ids.numpy()
        top = int(ids_np.max()) if ids_np.size else 0
        table = self.word_table(tokenizer, top).numpy()
        return {"word_starts": torch.from_numpy(np.take(table, ids_np, mode="clip"))}

    @staticmethod
    def special_ids(tokenizer) -> tuple:
        return tuple(sorted({int(i) for i in (tokenizer.all_special_ids or ()) if i is not None and int(i) >= 0}))


def _special_mask(ids: torch.Tensor, special_ids: tuple) -> torch.Tensor:
    if ids.device.type == "cpu":
        return torch.from_numpy(np.isin(ids.numpy(), np.asarray(special_ids, dtype=np.int64)))
    return torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype, device=ids.device))


# ----------------------------------------------------------------------------- LM collator

@dataclass(init=False)
class DataCollatorForLanguageModeling(_MaskStream, _HFDataCollatorForLanguageModeling):
    """transformers' ``DataCollatorForLanguageModeling`` with fastmask's masking and padding.

    The positional fields, their defaults, validation, warnings and output (keys, shapes, dtypes,
    padding, labels) are transformers 5's; masks are drawn by :func:`fastmask.mask_tokens`
    (reproducible, see the module docstring) and padding runs in C++. ``mlm_probability`` may
    also be a schedule (a callable of the step or a :class:`MaskingSchedule`).

    Keyword-only extensions (defaults reproduce transformers):
        strategy: ``"token"``, ``"whole_word"`` (same as ``whole_word_mask=True``) or
            ``"span"`` (SpanBERT spans of whole words).
        budget: ``"bernoulli"`` (each unit independently) or ``"exact"`` (round(p * eligible)
            tokens per row).
        span_distribution, span_p, max_span_words: span lengths in words (geometric / uniform).
        token_weights: ``[V]`` non-negative per-id weights for conditional masking
            (:func:`token_weights_from_counts`), covering every id the batches hold;
            bernoulli budget only.
        row_key_column: a feature column (e.g. ``"idx"``) of per-example integer keys; it is
            removed from the batch.
        device: e.g. ``"cuda"``: pad on the CPU, move the batch there, mask there.
        keep_replace_probs: with ``whole_word_mask=True`` transformers forces
            ``mask_replace_prob=1, random_replace_prob=0`` (with a warning); True keeps the
            given split (BERT's original whole-word masking).
        backend: the masking op's backend (``"auto"``, ``"cpp"``, ``"triton"``, ``"reference"``).

    Word boundaries (whole words and spans) come from ``offset_mapping`` when the features
    carry it, else ``word_ids``, else a word-start table built once from the tokenizer's
    vocabulary (WordPiece, byte-level BPE, SentencePiece), so whole-word masking works after
    ``Trainer`` drops unused columns. Special tokens come from ``special_tokens_mask`` when
    present, else from the tokenizer's special ids.
    """

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

    def __init__(
        self,
        tokenizer,
        mlm: bool = True,
        whole_word_mask: bool = False,
        mlm_probability=0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: Optional[int] = None,
        return_tensors: str = "pt",
        seed: Optional[int] = None,
        *,
        strategy: str = "token",
        budget: str = "bernoulli",
        span_distribution: str = "geometric",
        span_p: float = 0.2,
        max_span_words: int = 10,
        token_weights: Optional[torch.Tensor] = None,
        row_key_column: Optional[str] = None,
        device: Optional[Union[str, torch.device]] = None,
        keep_replace_probs: bool = False,
        backend: str = "auto",
    ):
        self.tokenizer = tokenizer
        self.mlm = mlm
        self.whole_word_mask = whole_word_mask
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_tensors = return_tensors
        self.seed = seed
        self.strategy = strategy
        self.budget = budget
        self.span_distribution = span_distribution
        self.span_p = span_p
        self.max_span_words = max_span_words
        self.token_weights = token_weights
        self.row_key_column = row_key_column
        self.device = device
        self.keep_replace_probs = keep_replace_probs
        self.backend = backend
        self.__post_init__()

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
        self._batch_context = None

    def _check_extensions(self) -> None:
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("budget", self.budget, BUDGETS)
        check_choice("span_distribution", self.span_distribution, SPAN_DISTRIBUTIONS)
        check_probability("span_p", self.span_p)
        check_int("max_span_words", self.max_span_words, minimum=1, maximum=MAX_SPAN_WORDS)
        _backend.check_backend_name(self.backend)
        if self.seed is not None:
            check_int("seed", self.seed)
        if not self.mlm and self.strategy != "token":
            raise ValueError(f"strategy={self.strategy!r} needs mlm=True (causal LM has no masking)")
        if self.token_weights is not None:
            if not isinstance(self.token_weights, torch.Tensor):
                self.token_weights = torch.as_tensor(np.asarray(self.token_weights, dtype=np.float32))
            if self.budget != "bernoulli":
                raise ValueError("token_weights works with budget='bernoulli' only; drop one of them")
        if self.row_key_column is not None and not isinstance(self.row_key_column, str):
            raise TypeError(f"row_key_column must be a feature name (str), got {self.row_key_column!r}")
        if self.device is not None:
            device = torch.device(self.device)
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
        if is_schedule(self.mlm_probability):
            self._warn_frozen_step()
        return probability_at(self.mlm_probability, self.step)

    # -- collation
    def torch_call(self, examples) -> dict:
        return self._collate(examples, "pt")

    def numpy_call(self, examples) -> dict:
        return self._collate(examples, "np")

    def _collate(self, examples, fmt: str):
        if fmt == "np" and self.device is not None:
            raise ValueError("device= moves tensors to an accelerator; it needs return_tensors='pt'")
        padded = pad_features(
            examples, self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of,
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
            data = {k: _to_torch(v) for k, v in data.items()}
            special, offsets = _to_torch(special), _to_torch(offsets)
            if self.device is not None:
                data = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
                special = None if special is None else special.to(self.device)
        ids = data["input_ids"]
        if self.mlm:
            batch = len(ids)
            keys = self._column_row_keys(key_values, batch) if key_values is not None else self._next_row_keys(batch)
            self._batch_context = (keys, word_starts)
            try:
                if fmt == "pt":
                    data["input_ids"], data["labels"] = self.torch_mask_tokens(
                        ids, special_tokens_mask=special, offset_mapping=offsets
                    )
                else:
                    data["input_ids"], data["labels"] = self.numpy_mask_tokens(
                        ids, special_tokens_mask=special, offset_mapping=offsets
                    )
            finally:
                self._batch_context = None
        return BatchEncoding(data) if padded.from_mappings else data

    # -- masking
    def torch_mask_tokens(self, inputs: Any, special_tokens_mask: Any = None, offset_mapping: Any = None):
        """``(masked_inputs, labels)`` for a padded ``[B, L]`` batch; ``inputs`` is not modified.

        Same signature as transformers' method (so subclasses overriding it keep working);
        masking runs through :func:`fastmask.mask_tokens`.
        """
        ids = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
        context, self._batch_context = self._batch_context, None
        if context is not None and context[0].numel() == ids.shape[0]:
            row_keys, word_starts = context
        else:
            row_keys, word_starts = self._next_row_keys(ids.shape[0]), None
        return self._mask(ids, special_tokens_mask, offset_mapping, word_starts, row_keys)

    def numpy_mask_tokens(self, inputs: Any, special_tokens_mask: Any = None, offset_mapping: Any = None):
        """numpy version of :meth:`torch_mask_tokens` (same masks)."""
        ids = torch.from_numpy(np.ascontiguousarray(inputs))
        special = None if special_tokens_mask is None else torch.from_numpy(np.asarray(special_tokens_mask))
        masked, labels = self.torch_mask_tokens(ids, special_tokens_mask=special, offset_mapping=offset_mapping)
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
        masked, labels = mask_tokens(
            work_ids,
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            mlm_probability=self.current_mlm_probability(),
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
            pad_token_id=tokenizer.pad_token_id,
            strategy=strategy,
            budget=self.budget,
            span_distribution=self.span_distribution,
            span_p=self.span_p,
            max_span_words=self.max_span_words,
            token_weights=self.token_weights,
            seed=self._effective_seed(),
            row_keys=row_keys,
            backend=self.backend,
            **kwargs,
        )
        if masked.dtype != ids.dtype:
            masked = masked.to(ids.dtype)
        if ids.dtype != torch.int64:
            labels = labels.to(ids.dtype)  # transformers' labels are a clone of the inputs
        return masked, labels


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
            examples = [{k: e[k] for k in columns} for e in examples]
        padded = pad_features(
            examples, self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of, add_attention_mask=False,
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
        self._batch_context = (keys, word_starts)
        try:
            masked, labels = self.torch_mask_tokens(ids)
        finally:
            self._batch_context = None
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


@dataclass(init=False)
class DataCollatorForMaskedAugmentation(_MaskStream, DataCollatorMixin):
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
    """

    tokenizer: Any
    padding: Union[bool, str] = True
    max_length: Optional[int] = None
    pad_to_multiple_of: Optional[int] = None
    label_pad_token_id: int = IGNORE_INDEX
    return_tensors: str = "pt"
    seed: Optional[int] = None
    mask_probability: float = 0.1
    random_replace_probability: float = 0.0
    delete_probability: float = 0.0
    whole_word: bool = False
    training: bool = True
    row_key_column: Optional[str] = None
    backend: str = "auto"

    def __init__(
        self,
        tokenizer,
        padding: Union[bool, str] = True,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        label_pad_token_id: int = IGNORE_INDEX,
        return_tensors: str = "pt",
        seed: Optional[int] = None,
        *,
        mask_probability: float = 0.1,
        random_replace_probability: float = 0.0,
        delete_probability: float = 0.0,
        whole_word: bool = False,
        training: bool = True,
        row_key_column: Optional[str] = None,
        backend: str = "auto",
    ):
        self.tokenizer = tokenizer
        self.padding = padding
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_token_id = label_pad_token_id
        self.return_tensors = return_tensors
        self.seed = seed
        self.mask_probability = mask_probability
        self.random_replace_probability = random_replace_probability
        self.delete_probability = delete_probability
        self.whole_word = whole_word
        self.training = training
        self.row_key_column = row_key_column
        self.backend = backend
        self.__post_init__()

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
        total = 0.0
        for name in ("mask_probability", "random_replace_probability", "delete_probability"):
            total += check_probability(name, getattr(self, name))
        if total > 1.0 + 1e-12:
            raise ValueError(
                f"mask_probability + random_replace_probability + delete_probability = {total} exceeds 1; lower them"
            )
        if self.mask_probability > 0 and self.tokenizer.mask_token_id is None:
            raise ValueError(
                "mask_probability > 0 needs a tokenizer with a mask token; set mask_probability=0 "
                "(random replacement / deletion only) or add a mask token"
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
            features, self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of,
            max_length=self.max_length if padding == "max_length" else None,
            float_dtype=np.float32 if fmt == "pt" else np.float64,
            label_pad_token_id=self.label_pad_token_id,
        )
        data = {k: _to_torch(v) for k, v in padded.data.items()}
        key_values = data.pop(self.row_key_column) if self.row_key_column in data else None
        if self.row_key_column is not None and key_values is None:
            raise ValueError(f"row_key_column={self.row_key_column!r} is not among the features' keys {list(data)}")
        if self.training and self._corrupts():
            self._corrupt(data, padded, key_values, padding)
        for old in ("label", "label_ids"):
            if old in data:
                data["labels"] = data.pop(old)
        if fmt == "np":
            data = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        return BatchEncoding(data)

    def _corrupts(self) -> bool:
        return self.mask_probability + self.random_replace_probability + self.delete_probability > 0

    def _corrupt(self, data: dict, padded: PaddedBatch, key_values, padding) -> None:
        ids = data["input_ids"]
        batch, length = ids.shape
        tokenizer = self.tokenizer
        vocab = len(tokenizer)
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
        eligible = ~ineligible
        word_starts = None
        if self.whole_word:
            if "offset_mapping" in data:
                word_starts = word_starts_from_offsets(data["offset_mapping"], ineligible)
            else:
                word_starts = self._tables.word_starts(tokenizer, ids)["word_starts"]
        total = self.mask_probability + self.random_replace_probability + self.delete_probability
        keys = self._column_row_keys(key_values, batch) if key_values is not None else self._next_row_keys(batch)
        common = dict(vocab_size=vocab, special_tokens_mask=ineligible, seed=self._effective_seed(), row_keys=keys,
                      backend=self.backend)
        # Ids are shifted past the vocabulary, so the selected tokens that mask_tokens leaves
        # unchanged (its "keep" share, here the deletion share) are the ones still >= vocab.
        masked, labels = mask_tokens(
            ids + vocab,
            mask_token_id=tokenizer.mask_token_id if tokenizer.mask_token_id is not None else 0,
            mlm_probability=min(1.0, total),
            mask_replace_prob=min(1.0, self.mask_probability / total),
            random_replace_prob=min(1.0, self.random_replace_probability / total),
            strategy="whole_word" if self.whole_word else "token",
            word_starts=word_starts,
            **common,
        )
        selected = labels != IGNORE_INDEX
        to_mask = selected & (masked == tokenizer.mask_token_id)
        to_delete = selected & (masked >= vocab)
        to_random = selected & ~to_mask & ~to_delete
        random_ids = masked
        if self.whole_word:
            # one decision per word: the one drawn for its first token
            positions = torch.arange(length).expand(batch, length)
            previous = torch.cat([torch.zeros_like(eligible[:, :1]), eligible[:, :-1]], dim=1)
            unit_start = eligible & (word_starts | ~previous)
            first = torch.cummax(torch.where(unit_start, positions, torch.full_like(positions, -1)), dim=1).values
            first = first.clamp(min=0)
            to_mask, to_delete, to_random = (
                selected & torch.gather(m, 1, first) for m in (to_mask, to_delete, to_random)
            )
            if to_random.any():  # the per-position random ids (stream 2) of every eligible token
                random_ids, _ = mask_tokens(ids, mask_token_id=0, mlm_probability=1.0, mask_replace_prob=0.0,
                                            random_replace_prob=1.0, **common)
        out = torch.where(to_random, random_ids, ids)
        if tokenizer.mask_token_id is not None:
            out = torch.where(to_mask, torch.full_like(ids, tokenizer.mask_token_id), out)
        data["input_ids"] = out
        if to_delete.any():
            self._close_up(data, padded, to_delete, inside, left, padding)

    def _close_up(self, data: dict, padded: PaddedBatch, deleted, inside, left: bool, padding) -> None:
        """Remove deleted positions from every key aligned with ``input_ids`` and re-pad.

        The new length is the longest remaining row (or ``max_length``) rounded up to
        ``pad_to_multiple_of``: never more than the old length.
        """
        batch, length = deleted.shape
        keep = inside & ~deleted
        new_lengths = keep.sum(dim=1)
        target = max(int(new_lengths.max()), self.max_length if padding == "max_length" else 0)
        target = _round_up(target, self.pad_to_multiple_of)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept positions first, in order
        slots = torch.arange(target)[None, :]
        if left:  # right-aligned: slot j holds kept item j - (target - n)
            first = (target - new_lengths)[:, None]
            valid = slots >= first
            source = (slots - first).clamp(min=0)
        else:
            valid = slots < new_lengths[:, None]
            source = slots.expand(batch, target)
        index = torch.gather(order, 1, source)
        for key in padded.aligned:
            if key not in data:
                continue
            value = data[key]
            pad = _pad_value(key, self.tokenizer, self.label_pad_token_id)
            if value.dim() == 3:
                moved = torch.gather(value, 1, index[..., None].expand(-1, -1, value.shape[2]))
                mask = valid[..., None]
            else:
                moved = torch.gather(value, 1, index)
                mask = valid
            fill = torch.full_like(moved, bool(pad) if value.dtype == torch.bool else pad)
            data[key] = torch.where(mask, moved, fill)


# ----------------------------------------------------------------------------- token weights


def count_token_frequencies(data, *, vocab_size: Optional[int] = None, key: str = "input_ids") -> torch.Tensor:
    """int64 ``[V]`` counts of every id in ``data``.

    ``data``: a list of dicts (``key`` column), a list of id sequences, or a ``datasets.Dataset``
    (read in column batches). ``V`` is ``vocab_size`` (e.g. ``len(tokenizer)``), grown to the
    largest id seen when smaller.
    """
    counts = np.zeros(0 if vocab_size is None else check_int("vocab_size", vocab_size, minimum=1), dtype=np.int64)

    def add(rows):
        nonlocal counts
        flat = np.fromiter(
            itertools.chain.from_iterable(r.tolist() if hasattr(r, "tolist") else r for r in rows), dtype=np.int64
        )
        if flat.size == 0:
            return
        if flat.min() < 0:
            raise ValueError(f"{key} holds a negative id ({int(flat.min())}); ids must be >= 0")
        binned = np.bincount(flat, minlength=counts.size)
        if binned.size > counts.size:
            counts = np.concatenate([counts, np.zeros(binned.size - counts.size, dtype=np.int64)])
        counts[: binned.size] += binned

    if hasattr(data, "column_names") and hasattr(data, "iter"):  # datasets.Dataset
        for chunk in data.iter(batch_size=1024):
            add(chunk[key])
        return torch.from_numpy(counts)
    chunk = []
    for item in data:
        chunk.append(item[key] if isinstance(item, Mapping) else item)
        if len(chunk) == 1024:
            add(chunk)
            chunk = []
    add(chunk)
    return torch.from_numpy(counts)


def token_weights_from_counts(
    counts, *, mode: str = "rare", alpha: float = 0.5, smoothing: float = 1.0
) -> torch.Tensor:
    """float32 ``[V]`` weights for conditional masking from token counts.

    ``mode="rare"``: ``(count + smoothing) ** -alpha`` (rare tokens are masked more often,
    e.g. PMI-style masking); ``"frequent"``: ``(count + smoothing) ** alpha``. Scaled so the
    largest weight is 1 (the masking op renormalises per row, so the expected rate stays
    ``mlm_probability``).
    """
    check_choice("mode", mode, ("rare", "frequent"))
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha={alpha!r} must be a finite number >= 0")
    if isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Real) or not smoothing > 0:
        raise ValueError(f"smoothing={smoothing!r} must be > 0 (it keeps unseen ids finite)")
    values = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {values.shape}")
    if values.dtype.kind not in "iuf" or (values < 0).any():
        raise ValueError("counts must be non-negative numbers")
    exponent = -alpha if mode == "rare" else alpha
    weights = np.power(values.astype(np.float64) + smoothing, exponent)
    return torch.from_numpy((weights / weights.max()).astype(np.float32))
