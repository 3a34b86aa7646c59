"""Word boundaries for whole-word and span masking.

Three sources, in the order the collators prefer them:

* ``offset_mapping`` (transformers v5 rule): a token starts a new word when its start offset
  differs from the previous token's end offset; the token after a special token always starts
  one (the masking op treats every token after an ineligible position as a word start).
* ``word_ids`` from a fast tokenizer's ``BatchEncoding.word_ids(i)``.
* a per-vocabulary table built once from the tokenizer's vocabulary
  (:func:`word_start_table`): WordPiece marks continuations with ``##``; byte-level BPE
  (GPT-2, RoBERTa) marks word starts with ``Ġ``; SentencePiece / Metaspace (T5, XLM-R,
  Llama) with ``▁``. This works when ``offset_mapping`` is gone (``Trainer`` drops unused
  columns), at the cost of treating punctuation as the tokenizer's vocabulary does.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import numpy as np
import torch

SCHEMES = ("wordpiece", "byte_level", "metaspace")
BYTE_LEVEL_WORD_START = "\u0120"  # Ġ: a space
BYTE_LEVEL_WHITESPACE = ("\u0120", "\u010a", "\u0109", "\u010d")  # Ġ space, Ċ \n, ĉ \t, č \r
METASPACE = "\u2581"  # ▁


def _backend_components(tokenizer) -> tuple[Optional[Any], Optional[Any], Optional[Any]]:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None, None, None
    return getattr(backend, "model", None), getattr(backend, "pre_tokenizer", None), getattr(backend, "decoder", None)


def _component_names(component) -> str:
    """Class names inside a (possibly Sequence) tokenizers component, e.g. 'Sequence ByteLevel'."""
    if component is None:
        return ""
    text = type(component).__name__ + " " + repr(component)
    return text


def _vocab(tokenizer) -> dict[str, int]:
    if hasattr(tokenizer, "get_vocab"):
        return tokenizer.get_vocab()
    raise TypeError(f"cannot read the vocabulary of {type(tokenizer).__name__}: it has no get_vocab()")


def detect_word_boundary_scheme(tokenizer) -> str:
    """``"wordpiece"``, ``"byte_level"`` or ``"metaspace"`` for a transformers/tokenizers tokenizer."""
    model, pre_tokenizer, decoder = _backend_components(tokenizer)
    model_name = type(model).__name__ if model is not None else ""
    if model_name == "WordPiece":
        return "wordpiece"
    components = _component_names(pre_tokenizer) + " " + _component_names(decoder)
    if "Metaspace" in components or model_name == "Unigram":
        return "metaspace"
    if "ByteLevel" in components:
        return "byte_level"
    # Slow tokenizers, or unusual pipelines: vote by vocabulary markers.
    vocab = _vocab(tokenizer)
    counts = {
        "wordpiece": sum(t.startswith("##") for t in vocab),
        "byte_level": sum(t.startswith(BYTE_LEVEL_WORD_START) for t in vocab),
        "metaspace": sum(t.startswith(METASPACE) for t in vocab),
    }
    scheme = max(counts, key=counts.get)
    if counts[scheme] == 0:
        raise ValueError(
            f"cannot tell word boundaries from the vocabulary of {type(tokenizer).__name__}: no '##', "
            "'Ġ' or '▁' markers; pass offset_mapping or word_starts instead"
        )
    return scheme


def word_start_table(tokenizer, scheme: Optional[str] = None) -> torch.Tensor:
    """Bool ``[len(tokenizer)]``: True where a vocabulary entry starts a word.

    Special and added tokens count as word starts (they are never masked anyway). ``scheme``
    overrides :func:`detect_word_boundary_scheme`.
    """
    scheme = scheme or detect_word_boundary_scheme(tokenizer)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not one of {SCHEMES}")
    vocab = _vocab(tokenizer)
    size = max(len(tokenizer) if hasattr(tokenizer, "__len__") else 0, max(vocab.values()) + 1)
    table = np.ones(size, dtype=bool)
    if scheme == "wordpiece":
        model, _, _ = _backend_components(tokenizer)
        prefix = getattr(model, "continuing_subword_prefix", None) or "##"
        for token, index in vocab.items():
            table[index] = not token.startswith(prefix)
    elif scheme == "byte_level":
        for token, index in vocab.items():
            table[index] = token.startswith(BYTE_LEVEL_WHITESPACE)
    else:
        for token, index in vocab.items():
            table[index] = token.startswith(METASPACE)
    for index in getattr(tokenizer, "all_special_ids", []) or []:
        if 0 <= index < size:
            table[index] = True
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for index in added:
        if 0 <= int(index) < size:
            table[int(index)] = True
    return torch.from_numpy(table)


def _as_numpy(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be an array, tensor or equal-length nested lists ({exc})") from None


def word_starts_from_offsets(offset_mapping, special_tokens_mask=None) -> torch.Tensor:
    """Bool ``[B, L]`` word starts from ``[B, L, 2]`` character offsets (transformers v5 rule).

    A token starts a word when its start differs from the previous token's end, or when the
    previous token is special. Special tokens themselves are marked False.
    """
    offsets = _as_numpy(offset_mapping, "offset_mapping")
    if offsets.ndim != 3 or offsets.shape[-1] != 2:
        raise ValueError(f"offset_mapping must be [batch, length, 2], got shape {offsets.shape}")
    starts, ends = offsets[..., 0].astype(np.int64), offsets[..., 1].astype(np.int64)
    previous_end = np.empty_like(ends)
    previous_end[:, 0] = -1
    previous_end[:, 1:] = ends[:, :-1]
    new_word = starts != previous_end
    if special_tokens_mask is not None:
        special = _as_numpy(special_tokens_mask, "special_tokens_mask").astype(bool)
        if special.shape != starts.shape:
            raise ValueError(
                f"special_tokens_mask has shape {special.shape} but offset_mapping has {offsets.shape[:2]}"
            )
        previous_special = np.zeros_like(special)
        previous_special[:, 1:] = special[:, :-1]
        new_word = ~special & (new_word | previous_special)
    return torch.from_numpy(new_word)


def word_starts_from_word_ids(word_ids) -> torch.Tensor:
    """Bool ``[B, L]`` word starts from per-token word indices (``None`` or -1 for special tokens)."""
    if isinstance(word_ids, (str, bytes)) or not hasattr(word_ids, "__iter__"):
        raise TypeError(f"word_ids must be [B, L] (or [L]) word indices, got {type(word_ids).__name__}")
    if isinstance(word_ids, (torch.Tensor, np.ndarray)):
        ids = _as_numpy(word_ids, "word_ids")
        if ids.ndim > 2:
            raise ValueError(f"word_ids must be [B, L] or [L], got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"word_ids must hold integer word indices (or None / -1), got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        previous = np.full_like(ids, -1)
        previous[:, 1:] = ids[:, :-1]
        return torch.from_numpy((ids >= 0) & (ids != previous))
    rows = list(word_ids)
    if rows and not isinstance(rows[0], (list, tuple)):
        rows = [rows]
    length = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), length), dtype=bool)
    for b, row in enumerate(rows):
        previous = None
        for i, word in enumerate(row):
            if word is None or word == -1:
                previous = None
                continue
            if isinstance(word, bool) or not isinstance(word, numbers.Integral):
                raise TypeError(
                    f"word_ids[{b}][{i}] is {word!r}; word_ids must hold integer word indices (or None / -1 for "
                    "special tokens), as tokenizers' word_ids() returns"
                )
            out[b, i] = word != previous
            previous = word
    return torch.from_numpy(out)
