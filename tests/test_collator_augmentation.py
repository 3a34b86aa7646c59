"""DataCollatorForMaskedAugmentation: padding like transformers' fine-tuning collators, corruption
that keeps token labels aligned."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from collator_support import as_numpy, features, table_word_ids, tokenizer

import fastmask

Augment = fastmask.DataCollatorForMaskedAugmentation


def _tok(side="right", kind="minilm"):
    tok = copy.copy(tokenizer(kind))
    tok.padding_side = side
    return tok


def _classification(rows=6):
    feats = features(rows=rows, max_length=40, offsets=False, special=False)
    for i, f in enumerate(feats):
        f["label"] = i % 3
    return feats


def _token_classification(rows=6, kind="minilm"):
    """Token labels = token positions: alignment is checkable after deletions."""
    feats = features(kind, rows=rows, max_length=40, offsets=False, special=False, token_type_ids=False)
    for f in feats:
        f["labels"] = list(range(len(f["input_ids"])))
    return feats


def _check_aligned(out, feats, tok, *, whole_word, side="right"):
    """Every kept token sits with its own label, in order; returns the number of deleted tokens."""
    ids, labels, attention = out["input_ids"], out["labels"], out["attention_mask"]
    special_ids = set(tok.all_special_ids)
    table = fastmask.word_start_table(tok).numpy()
    deleted = 0
    for row, f in enumerate(feats):
        real = attention[row].bool()
        n, width = int(real.sum()), ids.shape[1]
        block = torch.arange(width) >= width - n if side == "left" else torch.arange(width) < n
        assert torch.equal(real, block), "attention is not one contiguous block"
        assert labels[row][~real].eq(-100).all() and ids[row][~real].eq(tok.pad_token_id).all()
        kept = labels[row][real].tolist()
        assert kept == sorted(set(kept)), "labels out of order"
        original = torch.tensor(f["input_ids"])[kept]
        token = ids[row][real]
        state = torch.where(token == original, 0, torch.where(token == tok.mask_token_id, 1, 2))  # keep / mask / random
        removed = sorted(set(range(len(f["input_ids"]))) - set(kept))
        assert not any(f["input_ids"][p] in special_ids for p in removed), "a special token was deleted"
        assert not any(f["input_ids"][p] in special_ids for p, s in zip(kept, state.tolist()) if s), (
            "a special token changed"
        )
        deleted += len(removed)
        if whole_word:
            source = np.array([f["input_ids"]])
            words = table_word_ids(source, ~np.isin(source, list(special_ids)), table)[0]
            fate = np.full(len(words), 3)  # 3 = deleted
            fate[kept] = state.numpy()
            for word in np.unique(words[words >= 0]):
                fates = set(fate[words == word].tolist())
                assert len(fates) == 1 or fates <= {0, 2}, f"word {word} got mixed treatment {fates}"
    return deleted


def _same(a, b):
    assert list(a.keys()) == list(b.keys())
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(as_numpy(a[key]), as_numpy(b[key]), err_msg=key)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("fmt", ["pt", "np"])
def test_eval_mode_pads_like_transformers(side, fmt):
    tok = _tok(side)
    feats = _classification()
    kwargs = dict(pad_to_multiple_of=8, return_tensors=fmt)
    _same(Augment(tok, training=False, **kwargs)(feats), transformers.DataCollatorWithPadding(tok, **kwargs)(feats))
    token_feats = _token_classification()
    _same(
        Augment(tok, **kwargs).eval()(token_feats),
        transformers.DataCollatorForTokenClassification(tok, **kwargs)(token_feats),
    )


def test_constructor_validation():
    tok = _tok()
    for kwargs in (
        dict(mask_probability=1.5),
        dict(mask_probability=0.6, delete_probability=0.6),
        dict(padding=False),
        dict(padding="max_length"),
        dict(backend="x"),
    ):
        with pytest.raises(ValueError):
            Augment(tok, **kwargs)
    no_mask = copy.deepcopy(tokenizer("bpe"))
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="mask token"):
        Augment(no_mask)
    assert Augment(no_mask, mask_probability=0.0, delete_probability=0.1).training


def test_masking_keeps_labels_and_never_touches_special_tokens():
    tok = _tok()
    feats = _classification(rows=32)
    clean = Augment(tok, training=False)(feats)
    out = Augment(tok, seed=0, mask_probability=0.2, random_replace_probability=0.1)(feats)
    assert torch.equal(out["labels"], clean["labels"]) and torch.equal(out["attention_mask"], clean["attention_mask"])
    changed = out["input_ids"] != clean["input_ids"]
    special = torch.isin(clean["input_ids"], torch.tensor(tok.all_special_ids))
    assert not (changed & special).any()
    eligible = int((clean["attention_mask"].bool() & ~special).sum())
    to_mask = out["input_ids"] == tok.mask_token_id
    assert abs(int(to_mask.sum()) / eligible - 0.2) < 0.04
    assert abs(int((changed & ~to_mask).sum()) / eligible - 0.1) < 0.03


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("whole_word", [False, True])
def test_deletion_keeps_token_labels_aligned(side, whole_word):
    tok = _tok(side)
    feats = _token_classification(rows=24)
    before = copy.deepcopy(feats)
    c = Augment(
        tok,
        seed=1,
        mask_probability=0.1,
        random_replace_probability=0.05,
        delete_probability=0.25,
        whole_word=whole_word,
        pad_to_multiple_of=4,
    )
    out = c(feats)
    assert feats == before
    assert out["input_ids"].shape[1] % 4 == 0
    assert out["input_ids"].shape[1] <= max(len(f["input_ids"]) for f in feats) + 3
    deleted = _check_aligned(out, feats, tok, whole_word=whole_word, side=side)
    eligible = sum(sum(t not in set(tok.all_special_ids) for t in f["input_ids"]) for f in feats)
    assert 0.15 < deleted / eligible < 0.35


def test_deletion_with_sequence_labels_and_max_length():
    tok = _tok()
    feats = _classification(rows=8)
    c = Augment(tok, seed=2, mask_probability=0.0, delete_probability=0.5, padding="max_length", max_length=48)
    out = c(feats)
    assert out["input_ids"].shape == (8, 48) and out["labels"].tolist() == [i % 3 for i in range(8)]
    assert (out["attention_mask"].sum(1) < torch.tensor([len(f["input_ids"]) for f in feats])).all()
    assert torch.equal(
        out["token_type_ids"][out["attention_mask"] == 0],
        torch.zeros_like(out["token_type_ids"][out["attention_mask"] == 0]),
    )


def test_augmentation_is_reproducible_and_eval_is_clean():
    tok = _tok()
    feats = _token_classification(rows=8)
    a = Augment(tok, seed=3, delete_probability=0.2)(feats)
    b = Augment(tok, seed=3, delete_probability=0.2)(feats)
    _same(a, b)
    c = Augment(tok, seed=3, delete_probability=0.2)
    c.set_epoch(1)
    other = c(feats)["labels"]
    assert other.shape != a["labels"].shape or not torch.equal(other, a["labels"])
    c.eval()
    clean = c(feats)
    _same(clean, transformers.DataCollatorForTokenClassification(tok)(feats))
    assert c.train() is c and c.training


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_other_tokenizer_families(kind):
    tok = _tok(kind=kind)
    feats = _token_classification(rows=8, kind=kind)
    out = Augment(
        tok, seed=4, mask_probability=0.1, random_replace_probability=0.1, delete_probability=0.2, whole_word=True
    )(feats)
    assert _check_aligned(out, feats, tok, whole_word=True) > 0
