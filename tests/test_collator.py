"""fastmask.DataCollatorForLanguageModeling against transformers' collator on the same inputs."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch
import transformers
from collator_support import (
    FAMILIES,
    as_numpy,
    assert_mlm_invariants,
    assert_whole_words,
    collator,
    features,
    offset_word_ids,
    padded,
    stock_collator,
    table_word_ids,
    tokenizer,
)

import fastmask
from fastmask.collator import DataCollatorForLanguageModeling, MaskingSchedule

HF_FIELDS = [f.name for f in dataclasses.fields(transformers.DataCollatorForLanguageModeling)]


# ----------------------------------------------------------------------------- class contract


def test_subclass_fields_and_defaults_match_transformers():
    c = collator(seed=0)
    assert isinstance(c, transformers.DataCollatorForLanguageModeling)
    ours = dataclasses.fields(c)
    assert [f.name for f in ours[: len(HF_FIELDS)]] == HF_FIELDS
    hf_defaults = {f.name: f.default for f in dataclasses.fields(transformers.DataCollatorForLanguageModeling)}
    for field in ours[: len(HF_FIELDS)]:
        assert field.default == hf_defaults[field.name], field.name
    # positional order is transformers'
    tok = tokenizer()
    c = DataCollatorForLanguageModeling(tok, True, False, 0.2, 0.7, 0.2, 8, "np", 3)
    assert (
        c.mlm,
        c.whole_word_mask,
        c.mlm_probability,
        c.mask_replace_prob,
        c.random_replace_prob,
        c.pad_to_multiple_of,
        c.return_tensors,
        c.seed,
    ) == (True, False, 0.2, 0.7, 0.2, 8, "np", 3)
    with pytest.raises(TypeError):  # extensions are keyword-only
        DataCollatorForLanguageModeling(tok, True, False, 0.15, 0.8, 0.1, None, "pt", None, "span")


def _no_mask_tokenizer():
    tok = copy.deepcopy(tokenizer("bpe"))
    tok.mask_token = None
    return tok


BAD_ARGUMENTS = [
    dict(mlm_probability=1.5),
    dict(mlm_probability=-0.1),
    dict(mlm_probability=None),
    dict(mask_replace_prob=0.95, random_replace_prob=0.1),
    dict(mask_replace_prob=-0.5),
    dict(random_replace_prob=-0.5),
    dict(mask_replace_prob=1.5, random_replace_prob=-0.6),
    dict(mlm=False, whole_word_mask=True),
    dict(tokenizer="no-mask"),
]


@pytest.mark.parametrize("kwargs", BAD_ARGUMENTS, ids=[str(k) for k in BAD_ARGUMENTS])
def test_constructor_errors_match_transformers(kwargs):
    kwargs = dict(kwargs)
    tok = _no_mask_tokenizer() if kwargs.pop("tokenizer", None) == "no-mask" else tokenizer()
    with pytest.raises(Exception) as theirs:
        transformers.DataCollatorForLanguageModeling(tok, **kwargs)
    with pytest.raises(Exception) as ours:
        DataCollatorForLanguageModeling(tok, **kwargs)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(strategy="words"),
        dict(budget="fixed"),
        dict(span_p=1.5),
        dict(max_span_words=0),
        dict(span_distribution="poisson"),
        dict(backend="gpu"),
        dict(seed="x"),
        dict(mlm=False, strategy="span"),
        dict(budget="exact", token_weights=torch.ones(30522)),
        dict(row_key_column=3),
    ],
)
def test_extension_arguments_are_validated(kwargs):
    with pytest.raises((ValueError, TypeError)):
        collator(**kwargs)


def test_whole_word_forcing_warning_matches_transformers_and_can_be_kept():
    tok = tokenizer()
    with pytest.warns(UserWarning) as theirs:
        hf = transformers.DataCollatorForLanguageModeling(tok, whole_word_mask=True)
    with pytest.warns(UserWarning) as ours:
        c = DataCollatorForLanguageModeling(tok, whole_word_mask=True)
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert (c.mask_replace_prob, c.random_replace_prob) == (hf.mask_replace_prob, hf.random_replace_prob) == (1.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = DataCollatorForLanguageModeling(tok, whole_word_mask=True, keep_replace_probs=True)
    assert (kept.mask_replace_prob, kept.random_replace_prob) == (0.8, 0.1)
    assert kept.masking_strategy == "whole_word" and kept.strategy == "token"


def test_device_cuda_without_cuda_errors_clearly():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the error path cannot be reached")
    with pytest.raises(ValueError, match="CUDA is not available"):
        collator(device="cuda")


# ----------------------------------------------------------------------------- output compatibility


def _check_against_stock(ours, theirs, source_features, tok, *, fmt):
    assert list(ours.keys()) == list(theirs.keys())
    assert type(ours) is type(theirs)
    for key in ours:
        a, b = ours[key], theirs[key]
        assert type(a) is type(b), key
        assert a.shape == b.shape and a.dtype == b.dtype, (key, a.shape, b.shape, a.dtype, b.dtype)
        if key not in ("input_ids", "labels"):
            np.testing.assert_array_equal(as_numpy(a), as_numpy(b), err_msg=key)
    # unmasked content equals the stock padding of input_ids
    stock_ids = as_numpy(theirs["input_ids"]).copy()
    stock_labels = as_numpy(theirs["labels"])
    stock_ids[stock_labels != -100] = stock_labels[stock_labels != -100]
    ids, labels = as_numpy(ours["input_ids"]), as_numpy(ours["labels"])
    special = np.isin(stock_ids, tok.all_special_ids)
    assert_mlm_invariants(stock_ids, ids, labels, ineligible=special, mask_id=tok.mask_token_id, vocab=len(tok))


def _input_forms(feats):
    ids = [f["input_ids"] for f in feats]
    return {
        "dicts": feats,
        "dicts_without_special_mask": [{k: v for k, v in f.items() if k != "special_tokens_mask"} for f in feats],
        "dicts_of_arrays": [{k: np.asarray(v) for k, v in f.items()} for f in feats],
        "dicts_of_tensors": [{k: torch.tensor(v) for k, v in f.items()} for f in feats],
        "lists": ids,
        "tuples": [tuple(r) for r in ids],
        "arrays": [np.asarray(r) for r in ids],
        "tensors": [torch.tensor(r) for r in ids],
        "int32_tensors": [torch.tensor(r, dtype=torch.int32) for r in ids],
    }


# transformers' numpy path does not take tensors, and its MLM path fails on int32 tensors
# (random replacement writes int64 into them); those pairs are compared in causal mode only.
FORMS = [
    (fmt, form)
    for fmt in ("pt", "np")
    for form in _input_forms(features(rows=2))
    if form != "int32_tensors" and not (fmt == "np" and form.endswith("tensors"))
]


@pytest.mark.parametrize("fmt,form", FORMS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_outputs_match_transformers_for_every_input_form(fmt, form, padding_side):
    tok = copy.copy(tokenizer())
    tok.padding_side = padding_side
    feats = features(rows=6, offsets=False)
    inputs = _input_forms(feats)[form]
    before = copy.deepcopy(inputs)
    for multiple in (None, 8):
        ours = collator(tok, seed=0, pad_to_multiple_of=multiple, return_tensors=fmt)(inputs)
        theirs = stock_collator(tok, seed=0, pad_to_multiple_of=multiple, return_tensors=fmt)(copy.deepcopy(inputs))
        _check_against_stock(ours, theirs, feats, tok, fmt=fmt)
    for a, b in zip(before, inputs):  # features are never modified
        if isinstance(a, dict):
            for key in a:
                np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


CAUSAL_FORMS = [
    (fmt, form)
    for fmt in ("pt", "np")
    for form in _input_forms(features(rows=2))
    if not (fmt == "np" and form.endswith("tensors"))
]


@pytest.mark.parametrize("fmt,form", CAUSAL_FORMS)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_causal_lm_labels_identical_to_transformers(fmt, form, padding_side):
    tok = copy.copy(tokenizer())
    tok.padding_side = padding_side
    inputs = _input_forms(features(rows=5, offsets=False))[form]
    for multiple in (None, 16):
        ours = collator(tok, mlm=False, pad_to_multiple_of=multiple, return_tensors=fmt)(inputs)
        theirs = stock_collator(tok, mlm=False, pad_to_multiple_of=multiple, return_tensors=fmt)(inputs)
        assert list(ours.keys()) == list(theirs.keys()) and type(ours) is type(theirs)
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype
            np.testing.assert_array_equal(as_numpy(ours[key]), as_numpy(theirs[key]), err_msg=key)


def test_causal_lm_without_pad_token_on_equal_lengths():
    tok = copy.deepcopy(tokenizer("bpe"))
    tok.pad_token = None
    rows = [[5, 6, 7, 8], [9, 10, 11, 12]]
    ours = collator(tok, mlm=False)(rows)
    theirs = stock_collator(tok, mlm=False)(rows)
    torch.testing.assert_close(ours["labels"], theirs["labels"])
    with pytest.raises(ValueError, match="does not have a pad token"):
        collator(tok, mlm=False)([[5, 6], [7]])


def test_extra_keys_are_kept_padded_or_stacked():
    tok = tokenizer()
    feats = features(rows=4)  # ragged offset_mapping: transformers cannot pad it
    for i, f in enumerate(feats):
        f["next_sentence_label"] = i % 2
        f["weights"] = [0.5] * len(f["input_ids"])
        f["source"] = f"doc-{i}"
    out = collator(tok, seed=0)(feats)
    lengths = [len(f["input_ids"]) for f in feats]
    assert list(out.keys()) == [
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "next_sentence_label",
        "weights",
        "source",
        "labels",
    ]
    assert out["next_sentence_label"].tolist() == [0, 1, 0, 1] and out["next_sentence_label"].dtype == torch.int64
    assert out["weights"].dtype == torch.float32
    for row, n in enumerate(lengths):
        assert out["weights"][row, :n].eq(0.5).all() and out["weights"][row, n:].eq(0).all()
    assert out["source"] == ["doc-0", "doc-1", "doc-2", "doc-3"]
    with pytest.raises(ValueError):
        stock_collator(tok, seed=0)(feats)


@dataclasses.dataclass
class _UserCollator(DataCollatorForLanguageModeling):
    """A user's dataclass subclass adding a field (its generated __init__ replaces ours)."""

    extra_rate: float = 0.5


def test_user_dataclass_subclass_works():
    tok = tokenizer()
    c = _UserCollator(tok, seed=0, extra_rate=0.25)
    assert c.extra_rate == 0.25 and isinstance(c, transformers.DataCollatorForLanguageModeling)
    out = c(features(rows=3))
    assert out["labels"].shape == out["input_ids"].shape
    with pytest.raises(ValueError, match="mlm_probability"):
        _UserCollator(tok, mlm_probability=2.0)


class _Recorder(DataCollatorForLanguageModeling):
    """A user subclass overriding torch_mask_tokens: torch_call must route through it."""

    def torch_mask_tokens(self, inputs, special_tokens_mask=None, offset_mapping=None):
        self.seen = (inputs.clone(), special_tokens_mask, offset_mapping)
        return super().torch_mask_tokens(inputs, special_tokens_mask=special_tokens_mask, offset_mapping=offset_mapping)


def test_subclass_override_sees_padded_special_mask_and_offsets():
    tok = tokenizer()
    feats = features(rows=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = _Recorder(tok, seed=0, whole_word_mask=True)
    out = c(feats)
    ids, special, offsets = c.seen
    length = ids.shape[1]
    np.testing.assert_array_equal(special.numpy(), padded([f["special_tokens_mask"] for f in feats], length, 1))
    np.testing.assert_array_equal(offsets.numpy(), padded([f["offset_mapping"] for f in feats], length, 0))
    assert "special_tokens_mask" not in out and "offset_mapping" not in out
    assert out["labels"].ne(-100).any()


# ----------------------------------------------------------------------------- masking statistics


def _selected_stats(ids, masked, labels, mask_id):
    selected = labels != -100
    changed = masked[selected]
    original = labels[selected]
    return dict(
        rate=selected.sum(),
        mask=(changed == mask_id).mean(),
        keep=(changed == original).mean(),
        random=((changed != mask_id) & (changed != original)).mean(),
    )


def test_rate_and_80_10_10_split_match_transformers():
    tok = tokenizer()
    feats = features(rows=96, max_length=256, offsets=False)
    ours = collator(tok, seed=1)(feats)
    theirs = stock_collator(tok, seed=1)(feats)
    eligible = (
        (
            ours["attention_mask"].bool()
            & ~torch.isin(
                ours["labels"].where(ours["labels"] != -100, ours["input_ids"]), torch.tensor(tok.all_special_ids)
            )
        )
        .sum()
        .item()
    )
    for batch in (ours, theirs):
        labels, masked = batch["labels"].numpy(), batch["input_ids"].numpy()
        stats = _selected_stats(None, masked, labels, tok.mask_token_id)
        assert abs(stats["rate"] / eligible - 0.15) < 0.012, stats["rate"] / eligible
        assert (
            abs(stats["mask"] - 0.8) < 0.03 and abs(stats["keep"] - 0.1) < 0.025 and abs(stats["random"] - 0.1) < 0.025
        )


@pytest.mark.parametrize("kind", FAMILIES)
def test_whole_words_from_offsets_follow_transformers_word_rule(kind):
    tok = tokenizer(kind)
    feats = features(kind, rows=24, max_length=96)
    c = collator(tok, seed=2, whole_word_mask=True, mlm_probability=0.3)
    out = c(feats)
    length = out["input_ids"].shape[1]
    special = padded([f["special_tokens_mask"] for f in feats], length, 1)
    offsets = padded([f["offset_mapping"] for f in feats], length, 0)
    original = padded([f["input_ids"] for f in feats], length, tok.pad_token_id)
    selected = assert_mlm_invariants(
        original,
        out["input_ids"].numpy(),
        out["labels"].numpy(),
        ineligible=special.astype(bool),
        mask_id=tok.mask_token_id,
        vocab=len(tok),
    )
    words = offset_word_ids(offsets, special)
    chosen = assert_whole_words(selected, words)
    total_words = sum(len(np.unique(w[w >= 0])) for w in words)
    assert 0.2 < chosen / total_words < 0.4
    # transformers' own whole-word output has the same structure on the same (pre-padded) features
    theirs = stock_collator(tok, seed=2, whole_word_mask=True, mlm_probability=0.3)(
        [
            {
                "input_ids": original[i].tolist(),
                "special_tokens_mask": special[i].tolist(),
                "offset_mapping": offsets[i].tolist(),
                "attention_mask": out["attention_mask"][i].tolist(),
            }
            for i in range(len(feats))
        ]
    )
    assert theirs["input_ids"].shape == out["input_ids"].shape and theirs["labels"].dtype == out["labels"].dtype


def _whole_word_batch(tok, feats, out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks the MLM invariants of a collated batch whose words come from the tokenizer's
    vocabulary table; ``(selected [B, L], word ids [B, L] (-1: no word), ineligible [B, L])``."""
    original = padded([f["input_ids"] for f in feats], out["input_ids"].shape[1], tok.pad_token_id)
    ineligible = np.isin(original, tok.all_special_ids)
    selected = assert_mlm_invariants(
        original,
        out["input_ids"].numpy(),
        out["labels"].numpy(),
        ineligible=ineligible,
        mask_id=tok.mask_token_id,
        vocab=len(tok),
    )
    words = table_word_ids(original, ~ineligible, fastmask.word_start_table(tok).numpy())
    return selected, words, ineligible


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_trainer_style_features_use_the_vocabulary_table(kind, strategy):
    """No offset_mapping, no special_tokens_mask (Trainer dropped them): the tokenizer's table."""
    tok = tokenizer(kind)
    feats = [
        {"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]}
        for f in features(kind, rows=24, max_length=96, offsets=False, special=False)
    ]
    c = collator(tok, seed=3, strategy=strategy, mlm_probability=0.3)
    out = c(feats)
    selected, words, _ = _whole_word_batch(tok, feats, out)
    chosen = assert_whole_words(selected, words)
    total = sum(len(np.unique(w[w >= 0])) for w in words)
    assert 0.15 < chosen / total < 0.45, chosen / total
    assert c._tables._word_table is not None  # built once, cached on the collator
    cached = c._tables._word_table[1]
    c(feats)
    assert c._tables._word_table[1] is cached


@pytest.mark.parametrize("kind", FAMILIES)
def test_word_ids_feature_gives_the_words(kind):
    tok = tokenizer(kind)
    texts = [f["input_ids"] for f in features(kind, rows=12, max_length=64, offsets=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = tok([tok.decode(t, skip_special_tokens=True) for t in texts], truncation=True, max_length=64)
    feats = [{"input_ids": enc["input_ids"][i], "word_ids": enc.word_ids(i)} for i in range(len(texts))]
    out = collator(tok, seed=7, whole_word_mask=True, mlm_probability=0.4)(feats)
    assert "word_ids" not in out
    length = out["input_ids"].shape[1]
    words = padded([[-1 if w is None else w for w in f["word_ids"]] for f in feats], length, -1)
    original = padded([f["input_ids"] for f in feats], length, tok.pad_token_id)
    selected = assert_mlm_invariants(
        original,
        out["input_ids"].numpy(),
        out["labels"].numpy(),
        ineligible=np.isin(original, tok.all_special_ids),
        mask_id=tok.mask_token_id,
        vocab=len(tok),
    )
    assert assert_whole_words(selected, words) > 0


def test_ids_beyond_the_vocabulary_start_words():
    """transformers' collators accept ids past the tokenizer's vocabulary; so do ours."""
    tok = tokenizer("unigram")
    big = len(tok) + 50
    rows = [[tok.cls_token_id, 7, big, big + 1, 9, tok.sep_token_id], [tok.cls_token_id, big + 2, tok.sep_token_id]]
    for strategy in ("token", "whole_word", "span"):
        out = collator(
            tok, seed=0, strategy=strategy, mlm_probability=1.0, mask_replace_prob=1.0, random_replace_prob=0.0
        )(rows)
        assert out["labels"][0, 1:5].tolist() == [7, big, big + 1, 9]
        assert out["input_ids"][0, 1:5].eq(tok.mask_token_id).all()


def test_exact_budget_selects_round_p_times_eligible():
    tok = tokenizer()
    feats = features(rows=16, max_length=128, offsets=False)
    out = collator(tok, seed=4, budget="exact")(feats)
    for row, f in enumerate(feats):
        eligible = sum(1 - s for s in f["special_tokens_mask"])
        assert int(out["labels"][row].ne(-100).sum()) == int(np.floor(0.15 * eligible + 0.5))


def test_token_weights_restrict_selection():
    tok = tokenizer()
    feats = features(rows=16, max_length=128, offsets=False)
    counts = fastmask.collator.count_token_frequencies(feats, vocab_size=len(tok))
    expected = np.bincount(np.concatenate([f["input_ids"] for f in feats]), minlength=len(tok))
    np.testing.assert_array_equal(counts.numpy(), expected)

    class Columns:  # duck-typed datasets.Dataset: read in column batches
        column_names = ["input_ids"]

        def iter(self, batch_size):
            for start in range(0, len(feats), batch_size):
                yield {"input_ids": [f["input_ids"] for f in feats[start : start + batch_size]]}

    assert torch.equal(fastmask.collator.count_token_frequencies(Columns(), vocab_size=len(tok)), counts)
    grown = fastmask.collator.count_token_frequencies(Columns())  # sized by the largest id seen
    assert len(grown) == max(max(f["input_ids"]) for f in feats) + 1 and torch.equal(grown, counts[: len(grown)])
    assert torch.equal(
        fastmask.collator.count_token_frequencies([f["input_ids"] for f in feats], vocab_size=len(tok)), counts
    )
    weights = fastmask.collator.token_weights_from_counts(counts, mode="rare", alpha=1.0)
    assert weights.dtype == torch.float32 and float(weights.max()) == 1.0
    assert weights[int(counts.argmax())] == weights.min()
    torch.testing.assert_close(weights, ((counts + 1.0) ** -1.0 / (counts + 1.0).pow(-1.0).max()).float())
    # weight only the frequent ids: nothing else is ever selected
    allowed = counts >= torch.quantile(counts[counts > 0].float(), 0.9)
    out = collator(tok, seed=5, token_weights=allowed.float())(feats)
    chosen = out["labels"][out["labels"] != -100]
    assert chosen.numel() > 0 and allowed[chosen].all()
    frequent = fastmask.collator.token_weights_from_counts(counts, mode="frequent", alpha=0.5, smoothing=2.0)
    torch.testing.assert_close(frequent, ((counts + 2.0) ** 0.5 / ((counts + 2.0) ** 0.5).max()).float())
    for bad in (dict(mode="x"), dict(alpha=-1), dict(smoothing=0)):
        with pytest.raises(ValueError):
            fastmask.collator.token_weights_from_counts(counts, **bad)
    with pytest.raises(ValueError, match="token_weights"):  # weights must cover every id
        collator(tok, seed=5, token_weights=torch.ones(10))(feats)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_masks_and_backends_agree():
    tok = tokenizer()
    feats = features(rows=8, max_length=64)
    runs = []
    for backend in ("cpp", "reference"):
        if fastmask._backend.unavailable_reason(backend, torch.device("cpu")):
            continue
        c = collator(tok, seed=11, backend=backend, strategy="span")
        runs.append([c(feats), c(feats)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert len(runs) >= 1
    first, second = runs[0]
    assert not torch.equal(first["labels"], second["labels"]), "consecutive batches reuse row keys"
    other_seed = collator(tok, seed=12, strategy="span")(feats)
    assert not torch.equal(first["labels"], other_seed["labels"])


@pytest.mark.triton
@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
def test_triton_backend_gives_the_same_batches(strategy):
    """The kernel device='cuda' runs, here through the Triton interpreter on CPU tensors."""
    if fastmask._backend.unavailable_reason("triton", torch.device("cpu")):
        pytest.skip(fastmask._backend.unavailable_reason("triton", torch.device("cpu")))
    tok = tokenizer()
    feats = features(rows=4, max_length=48)
    for feats_variant in (feats, [{"input_ids": f["input_ids"]} for f in feats]):
        a = collator(tok, seed=8, strategy=strategy)(feats_variant)
        b = collator(tok, seed=8, strategy=strategy, backend="triton")(feats_variant)
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_device_moves_the_padded_batch_before_masking(device):
    tok = tokenizer()
    feats = features(rows=4, max_length=48)
    for strategy in ("token", "whole_word"):
        expected = collator(tok, seed=8, strategy=strategy)(feats)
        got = collator(tok, seed=8, strategy=strategy, device=device)(feats)
        assert all(v.device.type == device for v in got.values())
        for key in expected:
            assert torch.equal(got[key].cpu(), expected[key]), key
    with pytest.raises(ValueError, match="return_tensors='pt'"):
        collator(tok, device=device, return_tensors="np")(feats)


def test_row_key_column_gives_an_example_the_same_mask_anywhere():
    tok = tokenizer()
    feats = features(rows=8, offsets=False)
    for i, f in enumerate(feats):
        f["idx"] = 1000 + i
    c = collator(tok, seed=6, row_key_column="idx")
    whole = c(feats)
    assert "idx" not in whole
    with pytest.warns(RuntimeWarning, match="came round again"):
        reordered = c(feats[4:] + feats[:4])
    pair = collator(tok, seed=6, row_key_column="idx")(feats[2:4])
    for out, rows in ((reordered, list(range(4, 8)) + list(range(4))), (pair, [2, 3])):
        for j, i in enumerate(rows):
            n = len(feats[i]["input_ids"])
            assert torch.equal(out["labels"][j, :n], whole["labels"][i, :n])
    with pytest.raises(ValueError, match="row_key_column"):
        c([{k: v for k, v in f.items() if k != "idx"} for f in feats])


def test_torch_mask_tokens_standalone_does_not_modify_inputs():
    tok = tokenizer()
    c = collator(tok, seed=0, mlm_probability=0.5)
    ids = torch.tensor([[101, 2000, 2001, 2002, 2003, 102]] * 3)
    before = ids.clone()
    masked, labels = c.torch_mask_tokens(ids)
    assert torch.equal(ids, before)
    assert labels[:, [0, 5]].eq(-100).all() and labels.ne(-100).any()
    np_masked, np_labels = c.numpy_mask_tokens(ids.numpy())
    assert isinstance(np_masked, np.ndarray) and np_labels.dtype == np.int64


def test_schedule_follows_set_step():
    tok = tokenizer()
    feats = features(rows=32, max_length=128, offsets=False)
    schedule = MaskingSchedule("linear", start=0.4, end=0.1, total_steps=10)
    c = collator(tok, seed=0, mlm_probability=schedule)
    assert c.mlm_probability is schedule
    eligible = sum(sum(1 - s for s in f["special_tokens_mask"]) for f in feats)
    rates = []
    for step in (0, 10):
        c.set_step(step)
        assert c.current_mlm_probability() == pytest.approx(schedule(step))
        rates.append(int(c(feats)["labels"].ne(-100).sum()) / eligible)
    assert abs(rates[0] - 0.4) < 0.04 and abs(rates[1] - 0.1) < 0.03
    c2 = collator(tok, seed=0, mlm_probability=lambda step: 0.0 if step < 5 else 1.0)
    assert c2(feats)["labels"].eq(-100).all()
    c2.set_step(5)
    assert c2(feats)["labels"].ne(-100).sum() == eligible
    with pytest.raises(ValueError):
        collator(tok, mlm_probability=lambda step: 2.0)
    bad = collator(tok, mlm_probability=lambda step: 0.1 if step == 0 else -1)
    bad.set_step(1)
    with pytest.raises(ValueError, match="schedule"):
        bad(feats)


# ----------------------------------------------------------------------------- v4 whole-word API


def test_whole_word_mask_collator_keeps_the_v4_api():
    tok = tokenizer()
    c = fastmask.DataCollatorForWholeWordMask(tok, True, 0.2, 0.8, 0.1, 8, False, "pt", 7)
    assert isinstance(c, transformers.DataCollatorForLanguageModeling)
    assert (c.mlm_probability, c.pad_to_multiple_of, c.tf_experimental_compile, c.seed, c.budget) == (
        0.2,
        8,
        False,
        7,
        "exact",
    )
    feats = features(rows=12, max_length=96)
    out = c(feats)
    assert list(out.keys()) == ["input_ids", "labels"] and out["input_ids"].shape[1] % 8 == 0
    selected, words, ineligible = _whole_word_batch(tok, feats, out)
    assert_whole_words(selected, words)
    for row in range(len(feats)):
        budget = int(np.floor(0.2 * (~ineligible[row]).sum() + 0.5))
        longest_word = np.bincount(words[row][words[row] >= 0]).max()
        assert budget - longest_word < selected[row].sum() <= budget
    # 80/10/10 is kept (v4 did not force mask_replace_prob=1)
    assert (c.mask_replace_prob, c.random_replace_prob) == (0.8, 0.1)
    np_out = c(feats, return_tensors="np")
    assert isinstance(np_out["input_ids"], np.ndarray)


def test_whole_word_mask_collator_chinese_ref_joins_characters():
    tok = tokenizer()
    ids = [tok.cls_token_id] + [2000 + i for i in range(8)] + [tok.sep_token_id]
    feats = [{"input_ids": ids, "chinese_ref": [2, 3, 4, 6, 7, 8]} for _ in range(16)]
    out = fastmask.DataCollatorForWholeWordMask(tok, mlm_probability=0.5, seed=0)(feats)
    selected = (out["labels"] != -100).numpy()
    words = np.array([[-1, 0, 0, 0, 0, 1, 1, 1, 1, -1]] * 16)
    assert_whole_words(selected, words)
    assert selected.any()


# ----------------------------------------------------------------------------- bad input regressions
