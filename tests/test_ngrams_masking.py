"""PMI masking: the unit kernel bit-identical across backends, units never split, the rate and the
exact budget on real text, the collator."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import text_fixtures
import torch
from backends import assert_compiles_offline, kernel_device
from test_ngrams import _planted_corpus, needs_cpp

from fastmask import DataCollatorForLanguageModeling, mask_tokens, ngram_unit_ids, word_start_table
from fastmask.masking import plan_masking
from fastmask.ngrams import build_ngram_vocabulary, ngram_unit_starts
from fastmask.reference.masking import plan_units

pytestmark = needs_cpp


@functools.cache
def _setup():
    tok = text_fixtures.tokenizer("minilm")
    texts = text_fixtures.data.corpus_texts(max_chars=200_000)
    vocabulary = build_ngram_vocabulary(texts, tok, max_n=4, min_count=3, size=5000)
    return tok, vocabulary


def _plans(tok, length: int, rows: int, device: str = "cpu"):
    """Two argument sets: (a) int64 ids, the vocabulary table, special ids, a pad id;
    (b) int32 ids, word_starts, special_tokens_mask, attention_mask with padding."""
    batch = text_fixtures.packed_batch("minilm", length, rows * (length - 2))
    batch = {k: batch[k].to(device) for k in ("input_ids", "special_tokens_mask")}
    ids = batch["input_ids"][:rows]
    table = word_start_table(tok).to(device)
    a = plan_masking(
        ids,
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        strategy="whole_word",
        word_start_table=table,
        special_token_ids=tok.all_special_ids,
        pad_token_id=tok.pad_token_id,
    )
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[0, length // 2 :] = False
    b = plan_masking(
        ids.to(torch.int32),
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        strategy="whole_word",
        word_starts=table[ids],
        special_tokens_mask=batch["special_tokens_mask"][:rows],
        attention_mask=attention,
    )
    return a, b


def test_unit_starts_bit_identical_cpp_reference():
    tok, vocabulary = _setup()
    for plan in _plans(tok, 128, 8):
        expected = ngram_unit_starts(plan, vocabulary, "reference")
        assert torch.equal(ngram_unit_starts(plan, vocabulary, "cpp"), expected)
        _, words = plan_units(plan, "whole_word")
        assert not (expected & ~words).any()  # units start at words
        assert expected.sum() < 0.9 * words.sum()  # and n-grams merge some of them


@pytest.mark.triton
def test_unit_starts_bit_identical_triton():
    pytest.importorskip("triton")
    tok, vocabulary = _setup()
    for plan, on_device in zip(_plans(tok, 128, 4), _plans(tok, 128, 4, kernel_device())):
        expected = ngram_unit_starts(plan, vocabulary, "reference")
        assert torch.equal(ngram_unit_starts(on_device, vocabulary, "triton").cpu(), expected)


def _dense_rows(tok, rows: int, length: int, seed: int = 0) -> list:
    """Rows of fixed phrases of 2 to 8 words over few distinct words (three of one token, three
    of two to twelve), [SEP] now and then: most words fall inside a vocabulary n-gram, and
    hashed words are long."""
    rng = np.random.default_rng(0)
    starts = tok.convert_tokens_to_ids(["the", "value", "of", "new", "york", "city"])
    pieces = tok.convert_tokens_to_ids(["##s", "##ing", "##ed"])
    words = [[t] for t in starts[:3]]
    words += [[t] + [pieces[int(i)] for i in rng.integers(0, 3, size=n)] for t, n in zip(starts[3:], (1, 5, 11))]
    phrases = [sum((words[int(i)] for i in rng.integers(0, 6, size=n)), []) for n in range(2, 9)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        row = []
        while len(row) < length:
            row += [tok.sep_token_id] if rng.random() < 0.1 else phrases[int(rng.integers(len(phrases)))]
        out.append(row[:length])
    return out


@pytest.mark.triton
def test_unit_starts_triton_on_a_dense_vocabulary_with_long_words():
    """Where the walk is hardest for the block kernel: 8-word n-grams, most words inside one,
    words of up to 12 tokens (its hashing steps), segments cut by [SEP], a padded row."""
    pytest.importorskip("triton")
    tok = text_fixtures.tokenizer("minilm")
    vocabulary = build_ngram_vocabulary(_dense_rows(tok, 200, 64), tok, max_n=8, min_count=2, size=10**5)
    assert len(vocabulary.ngrams[8]) > 0
    rows = _dense_rows(tok, 4, 96, seed=1)
    ids = torch.tensor(rows)
    ids[1, 70:] = tok.pad_token_id

    def plan_on(device):
        return plan_masking(
            ids.to(device),
            mask_token_id=tok.mask_token_id,
            vocab_size=len(tok),
            strategy="whole_word",
            word_start_table=word_start_table(tok).to(device),
            special_token_ids=tok.all_special_ids,
            pad_token_id=tok.pad_token_id,
        )

    plan = plan_on("cpu")
    expected = ngram_unit_starts(plan, vocabulary, "reference")
    _, words = plan_units(plan, "whole_word")
    assert expected.sum() < 0.5 * words.sum()  # n-grams merge most words
    assert torch.equal(ngram_unit_starts(plan, vocabulary, "cpp"), expected)
    assert torch.equal(ngram_unit_starts(plan_on(kernel_device()), vocabulary, "triton").cpu(), expected)


@pytest.mark.triton
def test_triton_row_limit_is_reported():
    pytest.importorskip("triton")
    from fastmask.kernels import ngrams as kernels

    assert kernels.triton_call_reason(kernels.MAX_BLOCK_L) is None
    assert str(kernels.MAX_BLOCK_L) in kernels.triton_call_reason(kernels.MAX_BLOCK_L + 1)


@pytest.mark.parametrize("budget", ["bernoulli", "exact"])
def test_mask_tokens_pmi_backends_agree(budget):
    tok, vocabulary = _setup()
    ids = text_fixtures.packed_batch("minilm", 128, 16 * 126)["input_ids"][:16]
    kwargs = dict(
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        strategy="pmi",
        ngram_vocabulary=vocabulary,
        word_start_table=word_start_table(tok),
        special_token_ids=tok.all_special_ids,
        budget=budget,
        seed=7,
    )
    expected = mask_tokens(ids, backend="reference", **kwargs)
    got = mask_tokens(ids, backend="cpp", **kwargs)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert (expected[1] != -100).any()


@pytest.mark.triton
@pytest.mark.parametrize("budget", ["bernoulli", "exact"])
def test_mask_tokens_pmi_triton_matches_the_reference(budget):
    """strategy="pmi" end to end on the Triton backend (the unit kernel, then the masking kernel
    over its units, on the GPU when there is one)."""
    pytest.importorskip("triton")
    tok, vocabulary = _setup()
    ids = text_fixtures.packed_batch("minilm", 64, 4 * 62)["input_ids"][:4]
    device = kernel_device()
    kwargs = dict(
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        strategy="pmi",
        ngram_vocabulary=vocabulary,
        special_token_ids=tok.all_special_ids,
        mlm_probability=0.3,
        budget=budget,
        seed=11,
    )
    expected = mask_tokens(ids, backend="reference", word_start_table=word_start_table(tok), **kwargs)
    got = mask_tokens(ids.to(device), backend="triton", word_start_table=word_start_table(tok).to(device), **kwargs)
    assert torch.equal(got[0].cpu(), expected[0]) and torch.equal(got[1].cpu(), expected[1])
    assert (expected[1] != -100).sum() > 10


def test_masked_planted_ngram_is_never_split():
    tok = text_fixtures.tokenizer("minilm")
    rows, planted = _planted_corpus(tok, rows=200)
    vocabulary = build_ngram_vocabulary(rows, tok, max_n=5, min_count=5, size=10**6)
    length = max(len(r) for r in rows) + 2
    ids = torch.full((len(rows), length), tok.pad_token_id)
    for b, row in enumerate(rows):
        ids[b, : len(row) + 2] = torch.tensor([tok.cls_token_id] + row + [tok.sep_token_id])
    _, labels = mask_tokens(
        ids,
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        mlm_probability=0.3,
        strategy="pmi",
        ngram_vocabulary=vocabulary,
        word_start_table=word_start_table(tok),
        special_token_ids=tok.all_special_ids,
        pad_token_id=tok.pad_token_id,
    )
    selected = labels != -100
    whole, partial = 0, 0
    for b, row in enumerate(rows):
        for ngram in planted:
            n = len(ngram)
            for i in range(len(row) - n + 1):
                if tuple(row[i : i + n]) == ngram:
                    hits = int(selected[b, i + 1 : i + 1 + n].sum())
                    whole += hits == n
                    partial += 0 < hits < n
    assert whole > 20
    assert partial == 0


def test_rate_and_exact_budget_on_real_text():
    tok, vocabulary = _setup()
    batch = text_fixtures.packed_batch("minilm", 512, 64 * 510)
    ids, special = batch["input_ids"][:64], batch["special_tokens_mask"][:64]
    kwargs = dict(
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        strategy="pmi",
        ngram_vocabulary=vocabulary,
        word_start_table=word_start_table(tok),
        special_tokens_mask=special,
        mlm_probability=0.15,
    )
    eligible = ~special
    _, labels = mask_tokens(ids, **kwargs)
    rate = float((labels != -100).sum()) / float(eligible.sum())
    assert abs(rate - 0.15) < 0.01, rate
    _, labels = mask_tokens(ids, budget="exact", **kwargs)
    want = torch.floor(eligible.sum(dim=1) * 0.15 + 0.5)
    exact = ((labels != -100).sum(dim=1) == want).float().mean()
    assert exact >= 0.98, exact


def test_collator_pmi_and_its_bad_input():
    tok, vocabulary = _setup()
    ids = text_fixtures.packed_batch("minilm", 64, 4 * 62)["input_ids"][:4]
    collator = DataCollatorForLanguageModeling(tok, strategy="pmi", ngram_vocabulary=vocabulary, seed=3)
    out = collator([{"input_ids": row.tolist()} for row in ids])
    assert (out["labels"] != -100).any()
    with pytest.raises(ValueError, match="needs ngram_vocabulary"):
        DataCollatorForLanguageModeling(tok, strategy="pmi")
    with pytest.raises(ValueError, match="strategy='pmi' only"):
        DataCollatorForLanguageModeling(tok, ngram_vocabulary=vocabulary)
    with pytest.raises(ValueError, match="another tokenizer"):
        DataCollatorForLanguageModeling(text_fixtures.tokenizer("bpe"), strategy="pmi", ngram_vocabulary=vocabulary)
    with pytest.raises(ValueError, match="needs ngram_vocabulary"):
        mask_tokens(ids, mask_token_id=1, vocab_size=len(tok), strategy="pmi")


def test_triton_kernel_compiles_offline_without_spills():
    """Every variant of the unit kernel compiles for sm_80 and sm_90 with 0 spills."""
    from fastmask.kernels import offline

    assert_compiles_offline(offline.variants("ngrams"))


def test_prefix_stop_gives_the_longest_match():
    """The table's prefix marks only shorten the search: the reference equals a brute-force
    longest match over every length (no early stop) on real rows."""
    from fastmask.reference import ngrams as ref

    tok, vocabulary = _setup()
    plan = _plans(tok, 128, 4)[0]
    full = {ref.ngram_key(e["words"]) for entries in vocabulary.ngrams.values() for e in entries}
    _, starts = plan_units(plan, "whole_word")
    expected = torch.zeros_like(starts)
    for b in range(plan.input_ids.shape[0]):
        positions = starts[b].nonzero().flatten().tolist() + [None]
        row = plan.input_ids[b].tolist()
        eligible = ~torch.isin(plan.input_ids[b], torch.tensor(tok.all_special_ids))
        words = []
        for a, z in zip(positions, positions[1:]):
            end = z if z is not None else int(eligible.nonzero().max()) + 1
            words.append((a, tuple(t for i, t in enumerate(row[a:end], a) if eligible[i])))
        w = 0
        while w < len(words):
            best = 1
            for n in range(2, vocabulary.max_n + 1):
                chunk = words[w : w + n]
                contiguous = all(eligible[chunk[0][0] : chunk[-1][0] + 1])
                if len(chunk) == n and contiguous and ref.ngram_key([t for _, t in chunk]) in full:
                    best = n
            expected[b, words[w][0]] = True
            w += best
    assert torch.equal(ngram_unit_starts(plan, vocabulary, "reference"), expected)


def test_collator_pmi_in_dataloader_workers():
    """The vocabulary travels to forked DataLoader workers; every batch masks whole units."""
    tok, vocabulary = _setup()
    ids = text_fixtures.packed_batch("minilm", 64, 8 * 62)["input_ids"][:8]
    collator = DataCollatorForLanguageModeling(
        tok, strategy="pmi", ngram_vocabulary=vocabulary, seed=1, mlm_probability=0.3
    )
    loader = torch.utils.data.DataLoader(
        [{"input_ids": row.tolist()} for row in ids], batch_size=4, num_workers=2, collate_fn=collator
    )
    unit_of = ngram_unit_ids(ids, vocabulary, tok)  # -1 on special tokens
    batches = list(loader)
    assert len(batches) == 2
    for i, batch in enumerate(batches):
        selected = batch["labels"] != -100
        assert selected.any()
        for row in range(4):
            b = 4 * i + row
            for unit in unit_of[b][selected[row]].unique().tolist():
                members = unit_of[b] == unit
                assert selected[row][members].all()  # a selected unit is selected whole


def test_pmi_opcheck_and_compile():
    """The unit op passes opcheck (reference, C++), and strategy="pmi" runs inside
    torch.compile (fullgraph) with the same masks as eager, as whole-word masking does."""
    from fastmask.ngram_units_plan import NgramUnitsPlan
    from fastmask.ngrams import _NGRAM_UNITS

    tok, vocabulary = _setup()
    plan = NgramUnitsPlan.of(_plans(tok, 32, 2)[0], vocabulary.probe_table(), vocabulary.max_n)
    for backend in ("reference", "cpp"):
        buffers, scalars = plan.to_op_args()
        torch.library.opcheck(
            _NGRAM_UNITS.custom_op,
            (buffers, scalars, backend),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )
    ids = plan.input_ids
    kwargs = dict(
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        word_start_table=word_start_table(tok),
        special_token_ids=tok.all_special_ids,
        mlm_probability=0.3,
        seed=5,
    )

    def step(x):
        masked, labels = mask_tokens(x, strategy="pmi", ngram_vocabulary=vocabulary, **kwargs)
        return masked * 2, labels

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, expected = compiled(ids), step(ids)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert (expected[1] != -100).any()
    # the compiled masks are PMI masks: they differ from whole-word masking's on this batch
    whole_word = mask_tokens(ids, strategy="whole_word", **kwargs)[1]
    assert not torch.equal(expected[1], whole_word)


def test_matching_keys_of_one_token_words_are_exact():
    """A word of one token is coded by its id, so the bigram keys of one-token words are
    ``mix64(id_0 << 32 | id_1) | 1`` and never collide; a word of several tokens gets its hash
    with the top bit set, a code no token id has."""
    from fastmask.reference import ngrams as ref

    assert ref.word_code([7]) == 7
    assert ref.word_code([7, 9]) == ref.word_hash([7, 9]) | ref.MULTI_TOKEN_CODE
    assert ref.ngram_key([[5], [30521]]) == ref.mix64(5 << 32 | 30521) | 1
    ids = range(0, 1 << 31, (1 << 31) // 120)
    keys = {ref.ngram_key([[a], [b]]) for a in ids for b in ids}
    keys |= {ref.ngram_key([[a, b], [b]]) for a in ids[:20] for b in ids[:20]}
    assert len(keys) == len(ids) ** 2 + 400


@pytest.mark.parametrize("budget,num_proc", [("bernoulli", None), ("exact", 2)])
def test_units_precomputed_as_word_ids_mask_like_pmi(budget, num_proc):
    """Units stored by datasets.map (in the process, or in 2 forked ones) as a word_ids column: a
    whole-word collator then gives the PMI collator's batch bit for bit (ragged rows, padding),
    and tensors get the same ids."""
    import datasets

    tok, vocabulary = _setup()
    ids = text_fixtures.packed_batch("minilm", 48, 6 * 46)["input_ids"][:6]
    rows = [row[: 48 - 5 * b].tolist() for b, row in enumerate(ids)]  # ragged: the collator pads
    dataset = datasets.Dataset.from_dict({"input_ids": rows})
    dataset = dataset.map(
        lambda batch: {"word_ids": ngram_unit_ids(batch["input_ids"], vocabulary, tok)},
        batched=True,
        batch_size=4,
        num_proc=num_proc,
    )
    settings = dict(seed=5, budget=budget, mlm_probability=0.3)
    pmi = DataCollatorForLanguageModeling(tok, strategy="pmi", ngram_vocabulary=vocabulary, **settings)
    whole_word = DataCollatorForLanguageModeling(tok, strategy="whole_word", **settings)
    expected = pmi([{"input_ids": row} for row in rows])
    got = whole_word([dict(example) for example in dataset])
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["labels"], expected["labels"])
    assert (expected["labels"] != -100).any()
    first = dataset[0]["word_ids"]
    assert first[0] == -1 and first[1] == 0 and first[-1] == -1  # [CLS] and [SEP] are in no unit
    assert torch.equal(ngram_unit_ids(ids, vocabulary, tok)[0, : len(rows[0])], torch.tensor(first))
    with pytest.raises(ValueError, match=r"input_ids\[1\] must be a flat row of integer token ids"):
        ngram_unit_ids([[101, 102], [[101, 102]]], vocabulary, tok)
    with pytest.raises(ValueError, match="another tokenizer"):
        ngram_unit_ids(rows, vocabulary, text_fixtures.tokenizer("bpe"))
