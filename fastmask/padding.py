"""Padding of tokenized features into numpy arrays, for every key a batch carries.

Features (a list of dicts, lists, tuples, numpy arrays or tensors) are padded by
``fastmask._C.pad_rows`` (``csrc/collate.cpp``), which reads the Python lists / buffers directly
and writes preallocated numpy arrays; without the extension a numpy loop does the same. Every key
is kept: sequences aligned with ``input_ids`` are padded with it (``input_ids`` with the pad id,
``attention_mask`` 0, ``token_type_ids`` the pad type id, ``special_tokens_mask`` 1,
``labels`` -100, ``offset_mapping`` (0, 0), ``word_ids`` -1, anything else 0), other sequences
to their own longest row, scalars are stacked, strings and other objects are returned as lists.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import _backend
from ._validation import check_int
from .reference.masking import IGNORE_INDEX

__all__ = ["PaddedBatch", "pad_features", "read_fixed_length_ids"]

# keys that hold one entry per token of input_ids: a row of another length is an error
TOKEN_KEYS = frozenset(
    {"attention_mask", "token_type_ids", "special_tokens_mask", "offset_mapping", "word_ids", "position_ids"}
)


def pad_value(key: str, tokenizer, label_pad_token_id: int):
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


def round_up(length: int, multiple: Optional[int]) -> int:
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
    if pad_to_multiple_of is not None:
        check_int("pad_to_multiple_of", pad_to_multiple_of, minimum=1)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    first = features[0]
    from_mappings = isinstance(first, Mapping)
    mixed = next((i for i, f in enumerate(features) if isinstance(f, Mapping) != from_mappings), None)
    if mixed is not None:
        kinds = ("a dict", "a sequence of ids")
        raise TypeError(
            f"features mixes kinds: row 0 is {kinds[not from_mappings]} but row {mixed} is "
            f"{type(features[mixed]).__name__}; pass all rows as dicts or all as sequences of ids"
        )
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
    length = round_up(max(longest, max_length or 0), pad_to_multiple_of)
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
        if (
            value is None
            or isinstance(value, (str, bytes))
            or not (_is_scalar(value) or isinstance(value, (list, tuple, np.ndarray, torch.Tensor)))
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
        elif key in TOKEN_KEYS:
            bad = int(np.argmax(key_lengths != lengths))
            raise ValueError(
                f"{key!r} of row {bad} has {int(key_lengths[bad])} items but its input_ids has {int(lengths[bad])}; "
                f"{key} holds one entry per token: tokenize them together (or drop {key})"
            )
        else:
            key_length = int(key_lengths.max())
        shape = (batch, key_length) if width is None else (batch, key_length, width)
        out = np.empty(shape, dtype=dtype)
        pad = pad_value(key, tokenizer, label_pad_token_id)
        if dtype == np.bool_:
            pad = bool(pad)
        _pad_key(features, key, out, pad, left, -1 if key == "word_ids" else None)
        data[key] = out
    if (
        add_attention_mask
        and "attention_mask" not in data
        and "attention_mask" in getattr(tokenizer, "model_input_names", ("attention_mask",))
    ):
        positions = np.arange(length)
        if left:
            mask = positions[None, :] >= (length - lengths)[:, None]
        else:
            mask = positions[None, :] < lengths[:, None]
        data["attention_mask"] = mask.astype(np.int64)
        aligned.add("attention_mask")
    return PaddedBatch(data, lengths, aligned, True)


def read_fixed_length_ids(features, length: int) -> Optional[np.ndarray]:
    """int64 ``[B, length]``: the ``input_ids`` of ``features`` (a list of dicts, or of sequences
    of ids) read straight into one array by one C++ call — nothing else is read — when every row
    holds exactly ``length`` ids. None when that does not hold or the rows need
    :func:`pad_features`' general path (no C++ extension, mixed kinds of rows, no ``input_ids``
    key): callers then use it, which also names what is wrong. Features are never modified."""
    module = _collate_module()
    if module is None or not isinstance(features, list) or not features or not hasattr(module, "fixed_length_rows"):
        return None
    key = "input_ids" if isinstance(features[0], Mapping) else None
    if key is not None and key not in features[0]:
        return None
    return module.fixed_length_rows(features, key, length)


def _feature(feature, key, row):
    try:
        return feature[key]
    except KeyError:
        raise ValueError(
            f"{key!r} of row {row}: missing (row 0 has this key; every feature needs the same keys)"
        ) from None


def to_torch(value):
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(value)
    return value
