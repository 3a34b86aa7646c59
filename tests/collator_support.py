"""Shared pieces of the collator tests: tokenizers, real-text features, word groups, checks."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import text_fixtures
import torch
import transformers

from fastmask import data

FAMILIES = ("minilm", "bpe", "unigram")


def tokenizer(kind: str = "minilm"):
    """MiniLM's WordPiece, or byte-level BPE / Unigram-Metaspace trained on the corpus."""
    return text_fixtures.tokenizer(kind)


@functools.cache
def _texts() -> tuple:
    return tuple(data.corpus_texts(max_chars=200_000))


def features(
    kind: str = "minilm",
    rows: int = 8,
    *,
    start: int = 0,
    max_length: int = 64,
    offsets: bool = True,
    special: bool = True,
    token_type_ids: bool = True,
) -> list:
    """Ragged tokenized features (lists), one dict per paragraph of the stdlib corpus."""
    tok = tokenizer(kind)
    texts = list(_texts()[start : start + rows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = tok(
            texts,
            truncation=True,
            max_length=max_length,
            return_special_tokens_mask=special,
            return_offsets_mapping=offsets,
        )
    keys = [k for k in enc.keys() if token_type_ids or k != "token_type_ids"]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def collator(tok=None, **kwargs):
    """fastmask's ``DataCollatorForLanguageModeling`` (default: the MiniLM tokenizer), its
    construction warnings silenced."""
    import fastmask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fastmask.DataCollatorForLanguageModeling(tok if tok is not None else tokenizer(), **kwargs)


def data_loader(dataset, collate, *, workers, batch_size=2, **kwargs):
    """A DataLoader in order over ``dataset``; ``workers`` forked worker processes."""
    if workers:
        kwargs.setdefault("multiprocessing_context", "fork")
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers, shuffle=False, **kwargs
    )


def batch_labels(batches):
    """The ``labels`` of every batch."""
    return [batch["labels"] for batch in batches]


def stock_collator(tok, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.DataCollatorForLanguageModeling(tok, **kwargs)


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def padded(rows, length: int, pad, left: bool = False) -> np.ndarray:
    """Reference padding of ragged rows (for expected values)."""
    out = np.full((len(rows), length) + np.asarray(rows[0]).shape[1:], pad, dtype=np.int64)
    for i, row in enumerate(rows):
        row = np.asarray(row, dtype=np.int64)
        if len(row):
            if left:
                out[i, length - len(row) :] = row
            else:
                out[i, : len(row)] = row
    return out


def offset_word_ids(offsets: np.ndarray, special: np.ndarray) -> np.ndarray:
    """Word indices by transformers' own offset rule (its whole-word helper), -1 at special."""
    word_ids, _ = transformers.DataCollatorForLanguageModeling._calc_word_ids_and_prob_mask(
        np.asarray(offsets), np.asarray(special).astype(np.int64)
    )
    return word_ids


def table_word_ids(ids: np.ndarray, eligible: np.ndarray, table) -> np.ndarray:
    """Word indices from a word-start table: a word starts at a table start or after an ineligible token."""
    table = np.asarray(table)
    starts = np.array([[table[i] if i < len(table) else True for i in row] for row in ids])
    previous = np.zeros_like(eligible)
    previous[:, 1:] = eligible[:, :-1]
    new_word = eligible & (starts | ~previous)
    word_ids = np.cumsum(new_word, axis=1)
    word_ids[~eligible] = -1
    return word_ids


def assert_whole_words(selected: np.ndarray, word_ids: np.ndarray) -> int:
    """Every word is selected entirely or not at all; returns the number of selected words."""
    count = 0
    for b in range(selected.shape[0]):
        for word in np.unique(word_ids[b][word_ids[b] >= 0]):
            inside = selected[b][word_ids[b] == word]
            assert inside.all() or not inside.any(), f"row {b}: word {word} is partly selected: {inside}"
            count += int(inside.all())
    return count


def assert_mlm_invariants(
    original: np.ndarray, masked: np.ndarray, labels: np.ndarray, *, ineligible: np.ndarray, mask_id: int, vocab: int
) -> np.ndarray:
    """Labels hold the original id where selected and -100 elsewhere; unselected ids are unchanged;
    ineligible positions are never selected. Returns the selected mask."""
    selected = labels != -100
    assert not (selected & ineligible).any(), "a special or padding position was selected"
    np.testing.assert_array_equal(labels[selected], original[selected])
    np.testing.assert_array_equal(masked[~selected], original[~selected])
    changed = masked[selected]
    assert ((changed == mask_id) | ((changed >= 0) & (changed < vocab))).all()
    return selected


def assert_same_batch(a, b):
    """Two batches with the same keys, each the same type, dtype and values."""
    assert list(a.keys()) == list(b.keys())
    for key in a:
        assert type(a[key]) is type(b[key]), key
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(as_numpy(a[key]), as_numpy(b[key]), err_msg=key)


def check_mask_stream(make, features, *, seed: int):
    """The mask stream of the collators ``make(**kwargs)`` builds, on ``features`` (>= 3 rows): one
    ``seed`` gives one batch and the next batch new noise; ``state_dict`` resumes the stream;
    with ``row_key_column`` a row alone gets the noise it gets in the batch (the column is
    dropped) and a new epoch changes it. Returns the first batch."""

    def differ(x, y):  # in the columns both batches have (deletions change the width)
        width = min(x.shape[1], y.shape[1])
        return not torch.equal(x[:, :width], y[:, :width])

    a, b = make(seed=seed), make(seed=seed)
    first = a(features)
    assert_same_batch(first, b(features))
    assert differ(first["input_ids"], a(features)["input_ids"])  # a new batch draws new noise
    state = a.state_dict()
    third = a(features)
    resumed = make(seed=seed)
    resumed.load_state_dict(state)
    assert_same_batch(resumed(features), third)
    keyed = [dict(f, idx=i) for i, f in enumerate(features)]
    by_key = make(seed=seed, row_key_column="idx")
    full = by_key(keyed)
    assert "idx" not in full
    part = make(seed=seed, row_key_column="idx")(keyed[2:3])
    n = int(part["attention_mask"][0].sum())
    assert torch.equal(part["input_ids"][0, :n], full["input_ids"][2, :n])
    by_key.set_epoch(1)
    assert differ(by_key(keyed)["input_ids"], full["input_ids"])
    return first


def check_workers_draw_new_noise_every_epoch(make, features, *, seed: int):
    """With 2 DataLoader workers (the stream lives in shared memory) every epoch of the collators
    ``make(seed)`` builds draws new noise, and the run is reproducible under the same seed."""

    def epochs():
        loader = data_loader(features, make(seed), workers=2, batch_size=4)
        return [torch.cat([b["input_ids"] for b in loader]) for _ in range(2)]

    first, second = epochs()
    assert first.shape == second.shape and not torch.equal(first, second)
    again = epochs()
    assert torch.equal(again[0], first) and torch.equal(again[1], second)
