"""DataCollatorForSpanCorruption: T5 batches from packed rows (shapes, reconstruction, decoder
inputs), the mask stream (seed, epoch, state), feature kinds, bad input, and a tiny
T5ForConditionalGeneration that trains on its batches."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from backends import require_backend
from collator_support import check_mask_stream, check_workers_draw_new_noise_every_epoch
from tiny_models import tiny_t5, train_losses

import fastmask
from fastmask import data
from fastmask.seq2seq import DataCollatorForSpanCorruption, add_sentinel_tokens

INPUT_LENGTH = 32


@functools.cache
def _t5_tokenizer():
    tok = copy.deepcopy(data.default_tokenizer())
    add_sentinel_tokens(tok)
    return tok


def _tokenizer():
    return copy.deepcopy(_t5_tokenizer())


@functools.cache
def _rows(length: int, rows: int) -> tuple:
    return tuple(tuple(r) for r in data.tokenized_rows(_t5_tokenizer(), data.corpus_texts()[:400], length, rows=rows))


def _features(rows: int = 6, start: int = 0):
    expanded, _ = fastmask.span_corruption_lengths(INPUT_LENGTH)
    return [{"input_ids": list(r)} for r in _rows(expanded, rows + start)[start:]]


def _rebuild(inputs: list, labels: list, first: int, eos: int) -> list:
    spans, current = {}, None
    for x in labels:
        if x == eos or x == -100:
            break
        if first - 200 < x <= first:
            current = x
            spans[x] = []
        else:
            spans[current].append(x)
    out = []
    for x in inputs:
        if x == eos:
            break
        out.extend(spans[x] if x in spans else [x])
    return out


def test_batch_shapes_and_reconstruction():
    tok = _tokenizer()
    collator = DataCollatorForSpanCorruption(
        tok, input_length=INPUT_LENGTH, seed=0, decoder_start_token_id=tok.pad_token_id
    )
    expanded, target = fastmask.span_corruption_lengths(INPUT_LENGTH)
    assert (collator.expanded_input_length, collator.target_length) == (expanded, target)
    features = _features()
    batch = collator(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_input_ids"}
    assert batch["input_ids"].shape == (6, INPUT_LENGTH) and batch["labels"].shape == (6, target)
    assert batch["input_ids"].dtype == torch.int64 and bool((batch["attention_mask"] == 1).all())
    first = tok.convert_tokens_to_ids("<extra_id_0>")
    for b, f in enumerate(features):
        assert (
            _rebuild(batch["input_ids"][b].tolist(), batch["labels"][b].tolist(), first, tok.eos_token_id)
            == f["input_ids"]
        )
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    assert bool((batch["decoder_input_ids"][:, 0] == tok.pad_token_id).all())
    assert bool((batch["labels"][:, 0] == first).all())  # targets open with <extra_id_0>


def test_feature_kinds_numpy_and_longer_targets():
    tok = _tokenizer()
    features = _features(4)
    kinds = [
        features,
        [f["input_ids"] for f in features],
        [np.asarray(f["input_ids"], dtype=np.int32) for f in features],
        [torch.tensor(f["input_ids"]) for f in features],
    ]
    expected = DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=1)(features)
    for kind in kinds[1:]:
        got = DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=1)(kind)
        assert torch.equal(got["input_ids"], expected["input_ids"]) and torch.equal(got["labels"], expected["labels"])
    np_batch = DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=1, return_tensors="np")(features)
    assert isinstance(np_batch["input_ids"], np.ndarray)
    assert np.array_equal(np_batch["labels"], expected["labels"].numpy())
    wide = DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=1, target_length=20)(features)
    assert wide["labels"].shape == (4, 20)
    assert torch.equal(wide["labels"][:, : expected["labels"].shape[1]], expected["labels"])
    assert bool((wide["labels"][:, expected["labels"].shape[1] :] == -100).all())


def test_decoder_start_from_model():
    from transformers import T5Config

    class _Model:
        config = T5Config(decoder_start_token_id=7)

    tok = _tokenizer()
    batch = DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=0, model=_Model())(_features(2))
    assert bool((batch["decoder_input_ids"][:, 0] == 7).all())
    assert "decoder_input_ids" not in DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=0)(
        _features(2)
    )


def test_stream_seed_epoch_state_and_row_keys():
    tok = _tokenizer()
    check_mask_stream(
        lambda **kw: DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, **kw), _features(4), seed=3
    )


def test_backends_agree_in_the_collator():
    require_backend("cpp")
    tok = _tokenizer()
    features = _features(4)
    ref = DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=5, backend="reference")(features)
    cpp = DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=5, backend="cpp")(features)
    assert all(torch.equal(ref[k], cpp[k]) for k in ref)


def test_bad_input():
    tok = _tokenizer()
    plain = copy.deepcopy(data.default_tokenizer())
    with pytest.raises(ValueError, match="<extra_id_0>.*add_sentinel_tokens"):
        DataCollatorForSpanCorruption(plain, input_length=INPUT_LENGTH)
    for density in (0.0, 1.0):
        with pytest.raises(ValueError, match="noise_density"):
            DataCollatorForSpanCorruption(tok, noise_density=density)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        DataCollatorForSpanCorruption(tok, mean_noise_span_length=0.9)
    with pytest.raises(ValueError, match="target_length"):
        DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, target_length=3)
    collator = DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=0)
    features = _features(3)
    features[1] = {"input_ids": features[1]["input_ids"][:-1]}
    with pytest.raises(ValueError, match=r"row 1 has .*span_corruption_lengths"):
        collator(features)
    with pytest.raises(ValueError, match="at least 2"):
        fastmask.span_corruption(torch.tensor([[5]]), first_sentinel_id=100, eos_token_id=1, pad_token_id=0, seed=0)


@pytest.mark.parametrize("target_length", [None, 12], ids=["exact-targets", "padded-targets"])
def test_tiny_t5_trains_on_the_batches(target_length):
    """A small random T5ForConditionalGeneration takes the batches as they come (decoder inputs
    from model=, T5's own shift; labels padded with -100 when target_length is longer) and
    learns: finite losses that fall over a few steps, each step on a fresh batch."""
    tok = _tokenizer()
    model = tiny_t5(len(tok), pad=tok.pad_token_id, eos=tok.eos_token_id)
    collator = DataCollatorForSpanCorruption(
        tok, input_length=INPUT_LENGTH, target_length=target_length, seed=0, model=model
    )
    features = _features(8)

    def batches():
        for _ in range(8):
            batch = collator(features)  # new spans every step
            assert torch.equal(batch["decoder_input_ids"], model._shift_right(batch["labels"]))
            if target_length is not None:
                assert batch["labels"].shape[1] == target_length and bool((batch["labels"] == -100).any())
            yield batch

    losses = train_losses(model, batches())
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses


def test_dataloader_workers_draw_new_spans_every_epoch():
    tok = _tokenizer()
    check_workers_draw_new_noise_every_epoch(
        lambda seed: DataCollatorForSpanCorruption(tok, input_length=INPUT_LENGTH, seed=seed), _features(8), seed=11
    )
