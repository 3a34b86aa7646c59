"""DataCollatorForTextInfilling: BART batches from ragged rows (labels are the originals, decoder
inputs, shapes), feature kinds, sentence permutation, the mask stream (seed, epoch, state,
DataLoader workers), backends, bad input, and a tiny BartForConditionalGeneration that trains on
its batches."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from backends import require_backend
from collator_support import check_mask_stream, check_workers_draw_new_noise_every_epoch
from tiny_models import tiny_bart, train_losses

import fastmask
from fastmask import data
from fastmask.infilling_collator import DataCollatorForTextInfilling


@functools.cache
def _base_tokenizer():
    return data.default_tokenizer()  # MiniLM's WordPiece: [CLS] / [SEP] as BOS / EOS, [MASK]


def _tokenizer():
    return copy.deepcopy(_base_tokenizer())


@functools.cache
def _encoded(rows: int, max_length: int) -> tuple:
    texts = data.corpus_texts()[: rows * 2]
    encoded = _base_tokenizer()(texts, truncation=True, max_length=max_length)["input_ids"]
    return tuple(tuple(r) for r in encoded if len(r) >= 4)[:rows]


def _features(rows: int = 6, max_length: int = 48):
    return [{"input_ids": list(r)} for r in _encoded(rows, max_length)]


def test_batch_labels_decoder_inputs_and_specials():
    tok = _tokenizer()
    collator = DataCollatorForTextInfilling(tok, seed=0, decoder_start_token_id=tok.sep_token_id)
    features = _features()
    batch = collator(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_input_ids"}
    longest = max(len(f["input_ids"]) for f in features)
    assert batch["labels"].shape == (6, longest) and batch["input_ids"].dtype == torch.int64
    for b, f in enumerate(features):
        row = f["input_ids"]
        assert batch["labels"][b, : len(row)].tolist() == row  # labels are the original rows
        assert bool((batch["labels"][b, len(row) :] == -100).all())
        n = int(batch["attention_mask"][b].sum())
        noised = batch["input_ids"][b, :n].tolist()
        assert noised[0] == tok.cls_token_id and noised[-1] == tok.sep_token_id  # specials stay, at the ends
        assert tok.mask_token_id in noised and n < len(row)  # spans became single masks
        assert bool((batch["input_ids"][b, n:] == tok.pad_token_id).all())
    assert int(batch["attention_mask"].sum(dim=1).max()) == batch["input_ids"].shape[1]  # trimmed to the longest
    assert torch.equal(
        batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1].masked_fill(batch["labels"][:, :-1] == -100, 0)
    )
    assert bool((batch["decoder_input_ids"][:, 0] == tok.sep_token_id).all())


def test_replace_lengths_whole_words_and_padding_multiple():
    tok = _tokenizer()
    features = _features(4)
    lengths = [len(f["input_ids"]) for f in features]
    keep_all = DataCollatorForTextInfilling(tok, seed=1, replace_length=-1, poisson_lambda=20.0, random_ratio=0.0)(
        features
    )
    # lambda 20: no zero-length spans at 24 bits, so every row keeps its length, masks in place
    assert keep_all["attention_mask"].sum(dim=1).tolist() == lengths
    for b, f in enumerate(features):
        noised = keep_all["input_ids"][b, : lengths[b]]
        source = torch.tensor(f["input_ids"])
        changed = noised != source
        assert bool((noised[changed] == tok.mask_token_id).all())
        starts = fastmask.word_start_table(tok)[source]
        starts[1] = True  # the first token after [CLS] starts a word
        covered_words = int((changed & starts).sum())
        words = int(starts[1:-1].sum())
        assert 0 < covered_words <= -(-3 * words // 10)  # at most ceil(0.3 * words)
    deleted = DataCollatorForTextInfilling(tok, seed=1, replace_length=0, pad_to_multiple_of=8)(features)
    assert deleted["input_ids"].shape[1] % 8 == 0 and deleted["labels"].shape[1] % 8 == 0
    assert all(int(n) < length for n, length in zip(deleted["attention_mask"].sum(dim=1), lengths))
    tokens = DataCollatorForTextInfilling(tok, seed=1, whole_word=False, mask_ratio=0.5)(features)
    assert tokens["input_ids"].shape[0] == 4


def test_feature_kinds_and_numpy():
    tok = _tokenizer()
    features = _features(4)
    expected = DataCollatorForTextInfilling(tok, seed=2)(features)
    kinds = [
        [f["input_ids"] for f in features],
        [np.asarray(f["input_ids"], dtype=np.int32) for f in features],
        [torch.tensor(f["input_ids"]) for f in features],
    ]
    for kind in kinds:
        got = DataCollatorForTextInfilling(tok, seed=2)(kind)
        assert torch.equal(got["input_ids"], expected["input_ids"]) and torch.equal(got["labels"], expected["labels"])
    np_batch = DataCollatorForTextInfilling(tok, seed=2, return_tensors="np")(features)
    assert isinstance(np_batch["input_ids"], np.ndarray)
    assert np.array_equal(np_batch["input_ids"], expected["input_ids"].numpy())


def test_left_padding_side():
    tok = _tokenizer()
    tok.padding_side = "left"
    features = _features(4)
    right = DataCollatorForTextInfilling(_tokenizer(), seed=3)(features)
    left = DataCollatorForTextInfilling(tok, seed=3)(features)
    for b in range(4):
        n = int(left["attention_mask"][b].sum())
        assert left["attention_mask"][b, -n:].tolist() == [1] * n
        assert torch.equal(left["input_ids"][b, -n:], right["input_ids"][b, :n])


def test_sentence_permutation():
    tok = _tokenizer()
    texts = [" ".join(data.corpus_texts()[i : i + 4]) for i in range(0, 16, 4)]
    features = [tok(t, truncation=True, max_length=120)["input_ids"] for t in texts]
    full_stop = tok.convert_tokens_to_ids(".")
    permuted = DataCollatorForTextInfilling(tok, seed=4, permute_sentences=1.0, mask_ratio=0.0)(features)
    moved = 0
    for b, row in enumerate(features):
        got = permuted["input_ids"][b, : len(row)].tolist()
        assert sorted(got) == sorted(row) and got[0] == row[0] and got[-1] == row[-1]
        assert permuted["labels"][b, : len(row)].tolist() == row  # labels keep the original order

        def sentences(tokens):
            out, current = [], []
            for i, x in enumerate(tokens[1:-1]):
                current.append(x)
                if x == full_stop and (i + 2 >= len(tokens) - 1 or tokens[i + 2] != full_stop):
                    out.append(tuple(current))
                    current = []
            return out + ([tuple(current)] if current else [])

        # whole sentences move: the permuted body is the original sentences in some order
        remaining, body, at = sentences(row), got[1:-1], 0
        while at < len(body):
            match = next(s for s in remaining if tuple(body[at : at + len(s)]) == s)
            remaining.remove(match)
            at += len(match)
        assert not remaining
        moved += got != row
    assert moved >= 2
    still = DataCollatorForTextInfilling(tok, seed=4, permute_sentences=0.0, mask_ratio=0.0)(features)
    assert all(still["input_ids"][b, : len(r)].tolist() == r for b, r in enumerate(features))


def test_stream_seed_epoch_state_and_row_keys():
    tok = _tokenizer()
    check_mask_stream(lambda **kw: DataCollatorForTextInfilling(tok, **kw), _features(4), seed=3)


def test_backends_agree_in_the_collator():
    require_backend("cpp")
    tok = _tokenizer()
    features = _features(4)
    kw = dict(seed=5, insert_ratio=0.2, random_ratio=0.3, permute_sentences=0.5)
    ref = DataCollatorForTextInfilling(tok, **kw, backend="reference")(features)
    cpp = DataCollatorForTextInfilling(tok, **kw, backend="cpp")(features)
    assert all(torch.equal(ref[k], cpp[k]) for k in ref)


def test_decoder_start_from_model():
    from transformers import BartConfig

    class _Model:
        config = BartConfig(decoder_start_token_id=7)

    tok = _tokenizer()
    batch = DataCollatorForTextInfilling(tok, seed=0, model=_Model())(_features(2))
    assert bool((batch["decoder_input_ids"][:, 0] == 7).all())
    assert "decoder_input_ids" not in DataCollatorForTextInfilling(tok, seed=0)(_features(2))


def test_bad_input():
    tok = _tokenizer()
    for ratio in (-0.1, 1.5):
        with pytest.raises(ValueError, match="mask_ratio"):
            DataCollatorForTextInfilling(tok, mask_ratio=ratio)
    with pytest.raises(ValueError, match="poisson_lambda"):
        DataCollatorForTextInfilling(tok, poisson_lambda=0.0)
    with pytest.raises(ValueError, match="replace_length"):
        DataCollatorForTextInfilling(tok, replace_length=2)
    with pytest.raises(ValueError, match="permute_sentences"):
        DataCollatorForTextInfilling(tok, permute_sentences=2.0)
    with pytest.raises(ValueError, match="return_tensors"):
        DataCollatorForTextInfilling(tok, return_tensors="tf")
    no_mask = _tokenizer()
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="no mask token.*add_special_tokens"):
        DataCollatorForTextInfilling(no_mask)
    with pytest.raises(ValueError, match="empty"):
        DataCollatorForTextInfilling(tok, seed=0)([])


def test_tiny_bart_trains_on_the_batches():
    tok = _tokenizer()
    model = tiny_bart(len(tok), pad=tok.pad_token_id, bos=tok.cls_token_id, eos=tok.sep_token_id)
    collator = DataCollatorForTextInfilling(tok, seed=0, model=model)
    batch = collator(_features(4, 32))
    assert "decoder_input_ids" in batch
    losses = train_losses(model, [batch] * 6)
    assert losses[-1] < losses[0] * 0.9, losses


def test_dataloader_workers_draw_new_masks_every_epoch():
    tok = _tokenizer()
    check_workers_draw_new_noise_every_epoch(
        lambda seed: DataCollatorForTextInfilling(tok, seed=seed, replace_length=-1, poisson_lambda=20.0),
        _features(8),
        seed=11,
    )
