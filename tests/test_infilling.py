"""The text-infilling op: fairseq's DenoisingDataset semantics (whole words, span budget, Poisson
lengths, replace lengths, inserts, random ids, specials), bit-identity of the reference, C++ and
Triton backends, the custom op under opcheck / torch.compile, and bad input."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from backends import assert_compiles_offline, assert_matches_reference, backend_cases, require_backend
from infilling_samples import BOS, EOS, MASK, PAD, VOCAB, sample_inputs

import fastmask
from fastmask import _backend, data
from fastmask.infilling import plan_text_infilling, run_text_infilling, text_infilling
from fastmask.reference.infilling import ceil_ratio, poisson_thresholds
from fastmask.words import word_start_table

SAMPLES = list(sample_inputs())
# the interpreter is slow: 9 of the small samples, between them every shape, config, replace length and variant
SMALL = [
    s
    for i, s in enumerate(sample_inputs(small=True, seed=1))
    if i in {27 * (k // 3) + 9 * (k % 3) + 3 * ((k + k // 3) % 3) + (k + 2 * (k // 3)) % 3 for k in range(9)}
]


def _real(kwargs) -> torch.Tensor:
    if kwargs.get("attention_mask") is not None:
        return kwargs["attention_mask"].bool()
    return kwargs["input_ids"] != PAD


# ----------------------------------------------------------------------------- backends agree
@pytest.mark.parametrize("backend,kwargs", backend_cases(SAMPLES, SMALL))
def test_backend_matches_reference(backend, kwargs):
    assert_matches_reference(text_infilling, kwargs, backend)


@pytest.mark.parametrize("poisson_lambda", [0.5, 3.0, 12.0])
def test_cpp_span_lengths_equal_the_reference_draw(poisson_lambda):
    """The plan's step 3 on the C++ extension equals reference draw_spans (its oracle), budgets
    from none to past the span cap included."""
    require_backend("cpp")
    from fastmask._rng import seed_mix
    from fastmask.infilling import _span_lengths, _thresholds
    from fastmask.reference.infilling import draw_spans

    generator = torch.Generator().manual_seed(int(poisson_lambda * 10))
    thresholds = _thresholds(poisson_lambda)
    for trial in range(12):
        batch = int(torch.randint(1, 40, (1,), generator=generator))
        keys = torch.randint(-(2**62), 2**62, (batch,), generator=generator)
        budgets = torch.randint(0, 300, (batch,), generator=generator)
        budgets[0] = 0
        cap = 4 * 64 + 64 if trial % 3 else 5  # a cap small enough that budgets outrun it
        mix1, mix2 = seed_mix(trial)
        expected = draw_spans(keys, mix1, mix2, budgets, list(thresholds), cap)
        got = _span_lengths(keys, mix1, mix2, budgets.numpy(), thresholds, cap)
        for e, g in zip(expected, got):
            assert g.dtype == e.dtype and torch.equal(g, e)
    module = _backend.cpp_module()
    with pytest.raises(ValueError, match="thresholds must be non-decreasing"):
        module.infilling_span_lengths(np.zeros(1, np.int64), 1, 2, np.ones(1, np.int64), np.array([5, 3]), 8)
    with pytest.raises(ValueError, match="budgets"):
        module.infilling_span_lengths(np.zeros(2, np.int64), 1, 2, np.ones(3, np.int64), np.array([3, 5]), 8)


# ----------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("name,kwargs", SAMPLES[::2], ids=[n for n, _ in SAMPLES[::2]])
def test_layout_and_special_tokens(name, kwargs):
    """Rows are left-aligned and padded; special tokens keep their order and are never masked;
    with a special first and last token, nothing is inserted before or after them."""
    noised, attention = text_infilling(**kwargs, backend="cpp")
    ids, real = kwargs["input_ids"], _real(kwargs)
    special = kwargs.get("special_tokens_mask")
    assert noised.dtype == ids.dtype and attention.dtype == torch.int64
    plan = plan_text_infilling(**kwargs)
    assert noised.shape == (ids.shape[0], plan.width)
    for b in range(ids.shape[0]):
        n = int(attention[b].sum())
        assert bool((attention[b, :n] == 1).all()) and bool((noised[b, n:] == PAD).all())
        row = noised[b, :n].tolist()
        source = ids[b][real[b]].tolist()
        if special is not None:
            kept = [x for x in source if x in (BOS, EOS)]
            if kwargs["random_ratio"] == 0:  # (a random id may equal BOS or EOS)
                assert [x for x in row if x in (BOS, EOS)] == kept
            if len(row) >= 2 and source[0] == BOS and source[-1] == EOS:
                assert row[0] == BOS and row[-1] == EOS
        if kwargs["replace_length"] == -1:
            grown = len(source) + int(plan.insert_count[b])
            assert n == grown + ceil_ratio(grown, kwargs["insert_ratio"])  # exact: every token stays


def _unique_rows(batch: int, length: int, seed: int):
    """Rows of distinct ids (so an output aligns with its input by id): BOS, body, EOS; word
    starts at random."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(VOCAB * 20, generator=g)[:length] + 5 for _ in range(batch)])
    ids[:, 0], ids[:, -1] = BOS, EOS
    special = (ids == BOS) | (ids == EOS)
    word_starts = torch.rand(batch, length, generator=g) < 0.6
    return ids, special, word_starts


def _words(special_row, starts_row) -> list:
    """Word number of each eligible position of a row (None for specials)."""
    out, word, prev = [], -1, False
    for s, w in zip(special_row.tolist(), starts_row.tolist()):
        if s:
            out.append(None)
            prev = False
            continue
        if w or not prev:
            word += 1
        out.append(word)
        prev = True
    return out


@pytest.mark.parametrize("replace_length", [1, -1, 0])
def test_whole_words_budget_and_exact_lengths(replace_length):
    """No random ids, no extra inserts: the kept tokens are the input in order, the masked tokens
    are whole words (at most ceil(W * mask_ratio) of them), and the output length is exact:
    n + I (replace_length=-1), n - covered + heads + I (1), n - covered + I (0)."""
    ids, special, word_starts = _unique_rows(16, 80, seed=replace_length + 5)
    kw = dict(
        mask_token_id=MASK,
        pad_token_id=PAD,
        vocab_size=VOCAB,
        random_ratio=0.0,
        replace_length=replace_length,
        special_tokens_mask=special,
        word_starts=word_starts,
        seed=9,
    )
    plan = plan_text_infilling(ids, **kw)
    noised, attention = text_infilling(ids, **kw, backend="cpp")
    for b in range(ids.shape[0]):
        row = noised[b, : int(attention[b].sum())].tolist()
        source = ids[b].tolist()
        words = _words(special[b], word_starts[b])
        n_words = max(w for w in words if w is not None) + 1
        masks = row.count(MASK)
        kept = [x for x in row if x != MASK]
        position = {x: i for i, x in enumerate(source)}
        at = [position[x] for x in kept]
        assert at == sorted(at)  # the kept tokens are the input's, in order
        if replace_length == -1:
            assert len(row) == len(source) + int(plan.insert_count[b])
            covered = {i for i, x in enumerate(row) if x == MASK}  # no inserts at masked positions...
            covered = set(range(len(source))) - set(at)
            assert masks == len(covered) + int(plan.insert_count[b])
        else:
            covered = set(range(len(source))) - set(at)
        covered_words = {words[i] for i in covered}
        assert None not in covered_words  # specials are never masked
        # whole words: every token of a covered word is covered
        assert all(words[i] not in covered_words or i in covered for i in range(len(source)))
        assert len(covered_words) <= ceil_ratio(n_words, 0.3)
        assert int(plan.span_lengths[b].sum()) == ceil_ratio(n_words, 0.3)  # spans meet the budget exactly
        runs = sum(1 for i in covered if i - 1 not in covered)
        heads = masks - int(plan.insert_count[b])
        if replace_length == 0:
            assert masks == int(plan.insert_count[b]) and len(row) == len(source) - len(covered) + masks
        elif replace_length == 1:
            assert runs <= heads <= len(covered_words)
            assert len(row) == len(source) - len(covered) + heads + int(plan.insert_count[b])


def _fairseq_coverage(words: int, budget: int, lam: float, rng: np.random.Generator) -> int:
    """Words covered by fairseq's add_whole_word_mask on one segment of ``words`` words (its
    sequential algorithm, written out with numpy), for the distribution test."""
    lengths = rng.poisson(lam, size=budget)
    while lengths.sum() < budget:
        lengths = np.concatenate([lengths, rng.poisson(lam, size=budget)])
    cum = np.cumsum(lengths)
    i = int(np.argmax(cum >= budget))
    lengths = lengths[: i + 1].copy()
    lengths[i] = budget - (cum[i - 1] if i > 0 else 0)
    lengths = lengths[lengths > 0]
    starts = rng.permutation(words)[: lengths.size]
    covered = np.zeros(words, dtype=bool)
    for s, n in zip(starts, lengths):
        covered[s : s + n] = True
    return int(covered.sum())


@functools.cache
def _real_text_batch(rows: int, length: int):
    tok = data.default_tokenizer()
    ids = torch.tensor(data.tokenized_rows(tok, data.corpus_texts()[:600], length, rows=rows))
    special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id)
    starts = word_start_table(tok)[ids]
    return tok, ids, special, starts


def test_masked_word_fraction_and_random_share_on_real_text():
    """On real text (the embedded corpus, MiniLM's WordPiece words), replace_length=-1 and a
    lambda with no zero-length spans at 24 bits: every output position is its input's or a
    mask / random id; the covered fraction of words matches fairseq's algorithm, the random
    share matches random_ratio, and masked tokens are whole words."""
    require_backend("cpp")
    tok, ids, special, starts = _real_text_batch(400, 128)
    kw = dict(
        mask_token_id=tok.mask_token_id,
        pad_token_id=tok.pad_token_id,
        vocab_size=len(tok),
        poisson_lambda=3.0,
        random_ratio=0.2,
        replace_length=-1,
        special_tokens_mask=special,
        word_starts=starts,
        seed=21,
    )
    plan = plan_text_infilling(ids, **kw)
    noised, attention = run_text_infilling(plan, "cpp")
    aligned = plan.insert_count == 0  # rows without inserts line up position by position
    changed = (noised[:, : ids.shape[1]] != ids) & aligned[:, None]
    assert not bool((changed & special).any())
    masked = changed & (noised[:, : ids.shape[1]] == tok.mask_token_id)
    share = float((changed & ~masked).sum()) / float(changed.sum())
    assert abs(share - 0.2) < 0.03, share
    # covered words: a changed token that starts a word (a random id equal to the input is 1 in 30k)
    words_per_row = (starts & ~special).sum(dim=1)
    covered = (changed & starts).sum(dim=1)
    fraction = float(covered[aligned].sum()) / float(words_per_row[aligned].sum())
    rng = np.random.default_rng(0)
    expected = [
        _fairseq_coverage(int(w), ceil_ratio(int(w), 0.3), 3.0, rng) / int(w) for w in words_per_row[aligned][:200]
    ]
    assert abs(fraction - float(np.mean(expected))) < 0.01, (fraction, float(np.mean(expected)))
    assert 0.24 < fraction <= 0.3
    # whole words: a changed word-start's continuation tokens changed too
    continuation = ~starts & ~special
    continuation[:, 1:] &= ~special[:, :-1]  # the first token after a special starts a word
    follows = torch.zeros_like(changed)
    follows[:, 1:] = changed[:, :-1]
    assert not bool((continuation & aligned[:, None] & (follows != changed)).any())


def test_poisson_span_length_histogram_on_real_text():
    """Span lengths drawn for real rows (zero-length spans included) follow Poisson(lambda); only
    each row's last, cut span can be shorter."""
    tok, ids, special, starts = _real_text_batch(400, 128)
    for lam in (3.0, 1.0):
        plan = plan_text_infilling(
            ids,
            mask_token_id=tok.mask_token_id,
            pad_token_id=tok.pad_token_id,
            vocab_size=len(tok),
            poisson_lambda=lam,
            special_tokens_mask=special,
            word_starts=starts,
            seed=4,
        )
        lengths = plan.span_lengths[plan.span_lengths > 0]
        zeros = int(plan.insert_count.sum())
        total = lengths.numel() + zeros
        rows = ids.shape[0]
        counts = torch.bincount(lengths.to(torch.int64), minlength=12)[:12].to(torch.float64)
        counts[0] = zeros
        for k in range(8):
            p = math.exp(-lam) * lam**k / math.factorial(k)
            sd = math.sqrt(total * p * (1 - p))
            assert abs(float(counts[k]) - total * p) < 4 * sd + rows, (lam, k, float(counts[k]), total * p)
        mean = float((counts * torch.arange(12)).sum()) / total
        assert abs(mean / lam - 1) < 0.05


def test_inserts_never_at_the_ends():
    ids, special, word_starts = _unique_rows(8, 40, seed=3)
    noised, attention = text_infilling(
        ids,
        mask_token_id=MASK,
        pad_token_id=PAD,
        vocab_size=VOCAB,
        mask_ratio=0.0,
        random_ratio=0.0,
        insert_ratio=0.5,
        special_tokens_mask=special,
        seed=2,
    )
    assert bool((attention.sum(dim=1) == 40 + 20).all())
    for b in range(8):
        row = noised[b].tolist()
        assert row[0] == BOS and row[59] == EOS and row.count(MASK) == 20
        assert [x for x in row if x != MASK] == ids[b].tolist()


def test_poisson_table_matches_fairseq():
    """fairseq's table: pmf up to the first value below 1e-7, renormalised (24-bit CDF)."""
    for lam in (3.0, 0.5, 12.0):
        ps, k = [], 0
        while True:  # fairseq's loop: append, stop after the first pmf below 1e-7
            ps.append(math.exp(-lam) * lam**k / math.factorial(k))
            if (ps[-1] < 1e-7 and k >= lam) or k == 127:  # (fairseq: not only past the mean)
                break
            k += 1
        thresholds = poisson_thresholds(lam)
        assert len(thresholds) == len(ps) - 1  # lengths 0 .. len(ps) - 1
        cdf = np.cumsum(ps)[:-1] / sum(ps)
        assert np.abs(np.asarray(thresholds) / 2**24 - cdf).max() < 1e-6


def test_row_keys_seed_and_one_dimensional_input():
    ids = torch.randint(5, VOCAB, (6, 50))
    common = dict(mask_token_id=MASK, pad_token_id=PAD, vocab_size=VOCAB, insert_ratio=0.1)
    a = text_infilling(ids, seed=3, row_keys=[10, 11, 12, 13, 14, 15], **common)
    b = text_infilling(ids[[2]], seed=3, row_keys=[12], **common)
    n = int(b[1][0].sum())
    assert torch.equal(a[0][2, :n], b[0][0, :n]) and int(a[1][2].sum()) == n
    c = text_infilling(ids, seed=4, row_keys=[10, 11, 12, 13, 14, 15], **common)
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(5)
    d = text_infilling(ids, **common)
    torch.manual_seed(5)
    assert torch.equal(d[0], text_infilling(ids, **common)[0])
    one = text_infilling(ids[0], seed=3, row_keys=[10], **common)
    assert one[0].dim() == 1 and torch.equal(one[0][: int(one[1].sum())], a[0][0, : int(one[1].sum())])


def test_auto_backend_and_export():
    assert fastmask.text_infilling is text_infilling
    ids = torch.randint(5, VOCAB, (2, 20))
    kw = dict(mask_token_id=MASK, pad_token_id=PAD, vocab_size=VOCAB, seed=1)
    for e, g in zip(text_infilling(ids, **kw, backend="reference"), text_infilling(ids, **kw)):
        assert torch.equal(e, g)


# ----------------------------------------------------------------------------- custom op
def test_opcheck_and_compile():
    from fastmask.infilling import _TEXT_INFILLING

    name, kwargs = SAMPLES[13]
    for backend in ("reference", "cpp"):
        plan = plan_text_infilling(**{k: v for k, v in kwargs.items()})
        torch.library.opcheck(
            _TEXT_INFILLING.custom_op,
            (*plan.to_op_args(), backend),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )
    # planning reads the data on the host (word counts, span lengths, width): it runs eagerly;
    # the planned op compiles as an opaque custom op with its fake impl
    plan = plan_text_infilling(**kwargs)
    buffers, scalars = plan.to_op_args()

    def step(tensors):
        noised, attention = run_text_infilling(type(plan).from_op_args(tensors, scalars), "cpp")
        return noised * 2, attention

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, expected = compiled(buffers), step(buffers)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_plan_is_frozen_and_cpp_rejects_bad_buffers():
    require_backend("cpp")
    ids = torch.randint(5, VOCAB, (2, 20))
    plan = plan_text_infilling(ids, mask_token_id=MASK, pad_token_id=PAD, vocab_size=VOCAB, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed_mix1 = 3
    fields = plan.cpp_fields()
    out = torch.empty(2, plan.width, dtype=torch.int64).numpy()
    with pytest.raises(ValueError, match="attention_out"):
        _backend.cpp_module().text_infilling(fields, out, torch.empty(2, 3, dtype=torch.int64).numpy())
    narrow = dict(fields, width=1)
    with pytest.raises(ValueError, match="width"):
        _backend.cpp_module().text_infilling(
            narrow, torch.empty(2, 1, dtype=torch.int64).numpy(), torch.empty(2, 1, dtype=torch.int64).numpy()
        )
    bad_count = dict(fields, span_count=np.full(2, 10**6, dtype=np.int32))
    with pytest.raises(ValueError, match="span_count"):
        _backend.cpp_module().text_infilling(bad_count, out, torch.empty(2, plan.width, dtype=torch.int64).numpy())


# ----------------------------------------------------------------------------- bad input
def _call(**overrides):
    kwargs = dict(input_ids=torch.randint(5, VOCAB, (2, 8)), mask_token_id=MASK, pad_token_id=PAD, vocab_size=VOCAB)
    kwargs.update(overrides)
    return text_infilling(**kwargs)


@pytest.mark.parametrize(
    "overrides,error,pattern",
    [
        (dict(mask_ratio=-0.1), ValueError, "mask_ratio"),
        (dict(mask_ratio=1.5), ValueError, "mask_ratio"),
        (dict(poisson_lambda=0.0), ValueError, "poisson_lambda"),
        (dict(poisson_lambda=-1.0), ValueError, "poisson_lambda"),
        (dict(poisson_lambda=1e-12), ValueError, "poisson_lambda.*too small|so small"),
        (dict(poisson_lambda="3"), TypeError, "poisson_lambda"),
        (dict(replace_length=2), ValueError, r"replace_length=2 is not one of \(-1, 0, 1\)"),
        (dict(replace_length=1.0), TypeError, "replace_length"),
        (dict(random_ratio=1.1), ValueError, "random_ratio"),
        (dict(insert_ratio=-0.5), ValueError, "insert_ratio"),
        (dict(vocab_size=0), ValueError, "vocab_size"),
        (dict(input_ids=torch.rand(2, 3)), TypeError, "input_ids"),
        (dict(input_ids=torch.zeros(0, 3, dtype=torch.int64)), ValueError, "empty"),
        (dict(input_ids=-torch.ones(2, 3, dtype=torch.int64)), ValueError, "negative"),
        (dict(attention_mask=torch.ones(2, 7, dtype=torch.int64)), ValueError, "attention_mask"),
        (dict(special_tokens_mask=torch.ones(2, 7, dtype=torch.bool)), ValueError, "special_tokens_mask"),
        (dict(row_keys=[1]), ValueError, "row_keys"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_bad_input(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        _call(**overrides)


def test_inputs_are_not_modified():
    ids = torch.randint(5, VOCAB, (3, 30))
    before = ids.clone()
    special = torch.zeros(3, 30, dtype=torch.bool)
    text_infilling(ids, mask_token_id=MASK, pad_token_id=PAD, vocab_size=VOCAB, special_tokens_mask=special, seed=0)
    assert torch.equal(ids, before) and not bool(special.any())


_ON_GPU = pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is present: the other tests compile and run the kernel on it"
)


@_ON_GPU
def test_triton_kernel_compiles_offline_without_spills():
    """The Triton kernel compiles for sm_80 and sm_90 at rows of 512 tokens (outputs up to 1024)
    with 0 spills, at the launcher's num_warps (:mod:`fastmask.kernels.offline`, worker processes
    without the interpreter): the variants with the most registers of each argument set (measured
    with Triton 3.x: 56-80 registers); every variant in the slow test below."""
    from fastmask.kernels import offline
    from fastmask.kernels.infilling import num_warps

    chosen = offline.variants("infilling")
    assert len(chosen) == 6 and all(v.num_warps == num_warps(2 * v.block) for v in chosen)
    assert_compiles_offline([chosen[0], chosen[3]])  # replace_length 1 (i64, masks), -1 (i32, none)


@_ON_GPU
@pytest.mark.slow
def test_every_triton_variant_compiles_offline_without_spills():
    from fastmask.kernels import offline

    assert_compiles_offline(offline.variants("infilling"))
