"""fastmask.DataCollatorForSeq2Seq: transformers' batches with the noise off, source noise
(mask / random / delete, whole words) at the requested rates on real text, labels and decoder
inputs untouched, the mask stream (seed, epoch, state, DataLoader workers), bad input, and a
tiny BartForConditionalGeneration that trains on the batches."""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import pytest
import torch
import transformers
from backends import require_backend
from collator_support import (
    as_numpy,
    assert_same_batch,
    check_mask_stream,
    check_workers_draw_new_noise_every_epoch,
    table_word_ids,
)
from tiny_models import tiny_bart, train_losses

import fastmask
from fastmask import data

Seq2Seq = fastmask.DataCollatorForSeq2Seq
NOISE = dict(source_mask_probability=0.1, source_random_probability=0.05, source_delete_probability=0.1)


@functools.cache
def _base_tokenizer():
    return data.default_tokenizer()


def _tok(side: str = "right"):
    tok = copy.copy(_base_tokenizer())
    tok.padding_side = side
    return tok


@functools.cache
def _texts() -> tuple:
    return tuple(data.corpus_texts(max_chars=200_000))


def _features(rows: int = 8, start: int = 0, max_length: int = 40, **encode) -> list:
    """Ragged source / target pairs of real text (the target: the paragraph's words reversed)."""
    texts = list(_texts()[start : start + rows])
    targets = [" ".join(t.split()[::-1][:20]) for t in texts]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = _base_tokenizer()(texts, text_target=targets, truncation=True, max_length=max_length, **encode)
    return [{k: enc[k][i] for k in enc} for i in range(rows)]


@functools.cache
def _packed(rows: int, length: int) -> tuple:
    """Rows of exactly ``length`` tokens ([CLS] ... [SEP]) of real text."""
    return tuple(tuple(r) for r in data.tokenized_rows(_base_tokenizer(), list(_texts()), length, rows=rows))


def _indexed_features(rows: int, length: int) -> list:
    """Packed rows with a per-token ``token_index`` (closed up with the row: aligns the output)."""
    packed = _packed(rows, length)
    return [{"input_ids": list(r), "token_index": list(range(length)), "labels": list(r[1:11])} for r in packed]


@functools.cache
def _bart(vocab: int, pad: int, start: int):
    return tiny_bart(vocab, pad=pad, bos=start, eos=start)


def _model():
    tok = _base_tokenizer()
    return _bart(len(tok), tok.pad_token_id, tok.sep_token_id)


# ----------------------------------------------------------------------------- noise off
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(return_tensors="np", label_pad_token_id=0),
        dict(model=True, pad_to_multiple_of=8, label_pad_token_id=-7),
        dict(pad_to_multiple_of=16, return_tensors="np", side="left"),
        dict(padding="max_length", max_length=48, model=True),
    ],
    ids=["plain", "np", "model-multiple-of-8", "np-left", "max-length"],
)
def test_noise_off_gives_transformers_batches(kwargs):
    kwargs = dict(kwargs)
    tok = _tok(kwargs.pop("side", "right"))
    if kwargs.pop("model", False):
        kwargs["model"] = _model()
    features = _features()
    expected = transformers.DataCollatorForSeq2Seq(tok, **kwargs)(copy.deepcopy(features))
    assert_same_batch(Seq2Seq(tok, **kwargs)(features), expected)
    if "model" in kwargs:
        assert "decoder_input_ids" in expected
    noisy = Seq2Seq(tok, **kwargs, **NOISE, seed=0)
    assert noisy.adds_noise and not Seq2Seq(tok, **kwargs).adds_noise
    assert_same_batch(noisy.eval()(features), expected)  # eval: no noise
    assert not noisy.adds_noise
    got = noisy.train()(features)
    assert not np.array_equal(as_numpy(got["input_ids"]), as_numpy(expected["input_ids"]))
    for key in ("labels", "decoder_input_ids"):  # never touched
        if key in expected:
            assert type(got[key]) is type(expected[key])
            np.testing.assert_array_equal(as_numpy(got[key]), as_numpy(expected[key]), err_msg=key)
    assert features == _features(), "features were modified"


# ----------------------------------------------------------------------------- rates and alignment
def _fates(out, features, tok) -> np.ndarray:
    """Per original token: 0 kept, 1 masked, 2 random, 3 deleted, -1 special (aligned through
    ``token_index``); checks that every row is closed up and padded correctly."""
    ids, index, attention = (as_numpy(out[k]) for k in ("input_ids", "token_index", "attention_mask"))
    special_ids = set(tok.all_special_ids)
    fates = []
    for row, feature in enumerate(features):
        original = np.asarray(feature["input_ids"])
        n = int(attention[row].sum())
        assert attention[row][:n].all() and not attention[row][n:].any()
        assert (ids[row][n:] == tok.pad_token_id).all() and (index[row][n:] == 0).all()
        kept = index[row][:n]
        assert (np.diff(kept) > 0).all(), "kept tokens out of order"
        fate = np.full(len(original), 3)
        token = ids[row][:n]
        fate[kept] = np.where(token == original[kept], 0, np.where(token == tok.mask_token_id, 1, 2))
        special = np.isin(original, list(special_ids))
        assert (fate[special] == 0).all(), "a special token was noised"
        fate[special] = -1
        fates.append(fate)
    return np.stack(fates)


def _within(observed: float, p: float, n: int) -> bool:
    return abs(observed - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_rates_on_real_text_and_rows_close_up():
    tok = _tok()
    features = _indexed_features(48, 128)
    out = Seq2Seq(tok, **NOISE, seed=1)(features)
    assert out["labels"].tolist() == [f["labels"] for f in features]
    fates = _fates(out, features, tok)
    eligible = fates >= 0
    n = int(eligible.sum())
    for fate, p in ((1, 0.1), (2, 0.05), (3, 0.1)):
        observed = float((fates[eligible] == fate).sum()) / n
        assert _within(observed, p, n), (fate, observed, p, n)
    deleted = (fates == 3).sum(axis=1)
    assert out["attention_mask"].sum(dim=1).tolist() == (128 - deleted).tolist()  # exact lengths
    assert out["input_ids"].shape[1] == 128 - int(deleted.min())  # re-padded to the longest row


def test_whole_words_share_one_fate_at_the_requested_rate():
    tok = _tok()
    features = _indexed_features(48, 128)
    noise = dict(source_mask_probability=0.1, source_random_probability=0.1, source_delete_probability=0.1)
    out = Seq2Seq(tok, **noise, whole_word=True, seed=2)(features)
    fates = _fates(out, features, tok)
    ids = np.asarray([f["input_ids"] for f in features])
    special = np.isin(ids, tok.all_special_ids)
    words = table_word_ids(ids, ~special, fastmask.word_start_table(tok).numpy())
    word_fates = []
    for row in range(len(features)):
        for word in np.unique(words[row][words[row] >= 0]):
            fate = fates[row][words[row] == word]
            noised = fate[fate != 0]
            # a random id may equal the original token, so a randomised word can show kept tokens
            assert len(set(noised.tolist())) <= 1 and (len(noised) == len(fate) or set(noised.tolist()) <= {2}), fate
            word_fates.append(int(noised[0]) if len(noised) else 0)
    word_fates = np.asarray(word_fates)
    for fate in (1, 2, 3):
        assert _within(float((word_fates == fate).mean()), 0.1, len(word_fates)), fate


@pytest.mark.parametrize("side", ["right", "left"])
def test_deletion_with_ragged_rows_keeps_specials_and_pads(side):
    tok = _tok(side)
    features = _features(rows=8, max_length=40)
    out = Seq2Seq(tok, source_delete_probability=0.3, pad_to_multiple_of=8, seed=3)(features)
    ids, attention, types = out["input_ids"], out["attention_mask"], out["token_type_ids"]
    assert ids.shape[1] % 8 == 0
    lengths = attention.sum(dim=1)
    assert ids.shape[1] == -(-int(lengths.max()) // 8) * 8
    total_deleted = 0
    for row, feature in enumerate(features):
        n, width = int(lengths[row]), ids.shape[1]
        block = torch.arange(width) >= width - n if side == "left" else torch.arange(width) < n
        assert torch.equal(attention[row].bool(), block)
        assert bool((ids[row][~block] == tok.pad_token_id).all()) and bool((types[row][~block] == 0).all())
        kept, source = ids[row][block].tolist(), feature["input_ids"]
        assert [kept[0], kept[-1]] == [tok.cls_token_id, tok.sep_token_id]
        it = iter(source)
        assert all(any(token == s for s in it) for token in kept), "not a subsequence of the source"
        total_deleted += len(source) - n
    assert total_deleted > 0
    assert out["labels"].tolist() == transformers.DataCollatorForSeq2Seq(tok)(features)["labels"].tolist()


def test_special_tokens_and_language_codes_are_never_noised():
    tok = copy.deepcopy(_base_tokenizer())
    tok.add_special_tokens({"additional_special_tokens": [">>fr<<"]})
    code = tok.convert_tokens_to_ids(">>fr<<")
    features = [
        dict(f, input_ids=[code] + f["input_ids"], attention_mask=[1] + f["attention_mask"]) for f in _features(rows=6)
    ]
    for f in features:
        f.pop("token_type_ids")
    everything = dict(source_mask_probability=0.4, source_random_probability=0.3, source_delete_probability=0.3)
    out = Seq2Seq(tok, **everything, seed=4)(features)
    for row, f in enumerate(features):
        kept = out["input_ids"][row][out["attention_mask"][row].bool()].tolist()
        assert kept[:2] == [code, tok.cls_token_id] and kept[-1] == tok.sep_token_id
        assert tok.mask_token_id in kept[2:-1] or len(kept) == 3
        assert len(kept) < len(f["input_ids"])


# ----------------------------------------------------------------------------- stream
def test_seed_epoch_state_and_row_keys():
    tok = _tok()
    features = _features()
    make = lambda **kw: Seq2Seq(tok, **NOISE, **kw)  # noqa: E731
    first = check_mask_stream(make, features, seed=5)
    assert not torch.equal(make(seed=6)(features)["input_ids"][:, :10], first["input_ids"][:, :10])


def test_dataloader_workers_draw_new_noise_every_epoch():
    tok = _tok()
    check_workers_draw_new_noise_every_epoch(
        lambda seed: Seq2Seq(tok, **NOISE, seed=seed, padding="max_length", max_length=40), _features(rows=8), seed=7
    )


def test_backends_agree_in_the_collator():
    require_backend("cpp")
    tok = _tok()
    features = _features()
    ref = Seq2Seq(tok, **NOISE, whole_word=True, seed=8, backend="reference")(features)
    assert_same_batch(Seq2Seq(tok, **NOISE, whole_word=True, seed=8, backend="cpp")(features), ref)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    tok = _tok()
    for name in ("source_mask_probability", "source_random_probability", "source_delete_probability"):
        for value in (-0.1, 1.5):
            with pytest.raises(ValueError, match=f"{name}={value} is outside"):
                Seq2Seq(tok, **{name: value})
        with pytest.raises(TypeError, match=name):
            Seq2Seq(tok, **{name: "0.1"})
    with pytest.raises(ValueError, match="source_mask_probability \\+ .* exceeds 1"):
        Seq2Seq(tok, source_mask_probability=0.6, source_delete_probability=0.5)
    no_mask = copy.deepcopy(tok)
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="source_mask_probability=0.1 needs a tokenizer with a mask token"):
        Seq2Seq(no_mask, source_mask_probability=0.1)
    Seq2Seq(no_mask, source_random_probability=0.1, source_delete_probability=0.1)  # Marian-like: fine
    with pytest.raises(ValueError, match="source_delete_probability=0.1 .* padding=False"):
        Seq2Seq(tok, source_delete_probability=0.1, padding=False)
    with pytest.raises(ValueError, match="backend"):
        Seq2Seq(tok, backend="cuda-magic")
    with pytest.raises(TypeError, match="seed"):
        Seq2Seq(tok, seed=1.5)
    with pytest.raises(TypeError, match="positional argument"):
        Seq2Seq(tok, None, True, None, None, -100, "pt", 0.1)  # the noise arguments are keyword-only
    with pytest.raises(ValueError, match="row_key_column='idx'"):
        Seq2Seq(tok, **NOISE, row_key_column="idx")(_features(2))


# ----------------------------------------------------------------------------- training
def test_tiny_bart_trains_on_the_batches():
    tok = _tok()
    model = copy.deepcopy(_model())
    collator = Seq2Seq(tok, model=model, **NOISE, whole_word=True, seed=0)
    features = _features(rows=8, max_length=32)

    def batches():
        for _ in range(8):
            batch = collator(features)  # new noise every step
            assert batch["input_ids"].shape[1] <= 32 and torch.equal(
                batch["decoder_input_ids"], model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
            )
            yield batch

    losses = train_losses(model, batches())
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses
