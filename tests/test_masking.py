"""The masking op: every backend equals the reference bit for bit on ``sample_inputs``."""

from __future__ import annotations

import pytest
import torch
from backends import require_backend
from masking_samples import sample_inputs

import fastmask

SAMPLES = list(sample_inputs())


@pytest.mark.parametrize("backend", ["cpp", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("name,kwargs", SAMPLES, ids=[name for name, _ in SAMPLES])
def test_backend_matches_reference(backend, name, kwargs):
    require_backend(backend)
    before = kwargs["input_ids"].clone()
    expected_ids, expected_labels = fastmask.mask_tokens(**kwargs, backend="reference")
    got_ids, got_labels = fastmask.mask_tokens(**kwargs, backend=backend)
    assert torch.equal(kwargs["input_ids"], before), "input_ids was modified"
    assert got_ids.dtype == kwargs["input_ids"].dtype and got_labels.dtype == torch.int64
    assert torch.equal(got_labels, expected_labels), f"{backend} labels differ from the reference"
    assert torch.equal(got_ids, expected_ids), f"{backend} masked ids differ from the reference"


# ----------------------------------------------------------------------------- invariants
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from masking_samples import MASK_ID, SPECIAL_IDS, VOCAB  # noqa: E402


@st.composite
def masking_calls(draw):
    batch = draw(st.integers(1, 5))
    length = draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**64 - 1))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    ids[torch.rand(batch, length, generator=g) < 0.2] = 1
    kwargs = dict(
        input_ids=ids.to(draw(st.sampled_from([torch.int64, torch.int32]))),
        mask_token_id=MASK_ID,
        vocab_size=VOCAB,
        seed=seed,
        mlm_probability=draw(st.floats(0, 1)),
        strategy=draw(st.sampled_from(["token", "whole_word", "span"])),
        budget=draw(st.sampled_from(["bernoulli", "exact"])),
        special_token_ids=SPECIAL_IDS,
        pad_token_id=0,
        word_starts=torch.rand(batch, length, generator=g) < draw(st.floats(0.1, 1.0)),
        attention_mask=(torch.rand(batch, length, generator=g) < 0.9).long(),
    )
    replace = draw(st.floats(0, 1))
    kwargs["mask_replace_prob"] = replace
    kwargs["random_replace_prob"] = draw(st.floats(0, 1 - replace))
    if kwargs["strategy"] == "span":
        kwargs["span_distribution"] = draw(st.sampled_from(["geometric", "uniform"]))
        kwargs["max_span_words"] = draw(st.integers(1, 12))
    return kwargs


def _eligible(kwargs):
    ids = kwargs["input_ids"].long()
    return ~torch.isin(ids, torch.tensor(SPECIAL_IDS)) & (kwargs["attention_mask"] != 0) & (ids != 0)


@settings(max_examples=150, deadline=None)
@given(masking_calls())
def test_invariants(kwargs):
    ids = kwargs["input_ids"].clone()
    masked, labels = fastmask.mask_tokens(**kwargs, backend="reference")
    assert torch.equal(kwargs["input_ids"], ids), "input modified"
    selected = labels != -100
    assert not (selected & ~_eligible(kwargs)).any(), "an ineligible token was selected"
    assert torch.equal(labels[selected], ids.long()[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    assert ((masked >= 0) & (masked < VOCAB)).all()
    if kwargs["mask_replace_prob"] == 1.0:
        assert (masked[selected] == MASK_ID).all()
    if kwargs["budget"] == "exact":
        k = torch.floor(_eligible(kwargs).sum(1).double() * kwargs["mlm_probability"] + 0.5).long()
        count = selected.sum(1)
        assert (count <= k).all()
        if kwargs["strategy"] == "token":
            assert torch.equal(count, k)
    if kwargs["strategy"] != "token":  # whole words: a word is all in or all out
        starts = kwargs["word_starts"] | ~torch.cat([torch.zeros_like(selected[:, :1]), _eligible(kwargs)[:, :-1]], 1)
        same_word = _eligible(kwargs)[:, 1:] & ~starts[:, 1:]
        assert torch.equal(selected[:, 1:][same_word], selected[:, :-1][same_word])
    again = fastmask.mask_tokens(**kwargs, backend="reference")
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels), "not deterministic"


@settings(max_examples=100, deadline=None)
@given(masking_calls())
def test_cpp_matches_reference_on_random_calls(kwargs):
    require_backend("cpp")
    expected = fastmask.mask_tokens(**kwargs, backend="reference")
    got = fastmask.mask_tokens(**kwargs, backend="cpp")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@settings(max_examples=60, deadline=None)
@given(masking_calls(), st.data())
def test_masks_depend_only_on_seed_row_key_and_position(kwargs, data):
    """Any batch composition or padding gives each row the same mask (given its row key)."""
    batch = kwargs["input_ids"].shape[0]
    keys = torch.tensor(data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=batch, max_size=batch)))
    masked, labels = fastmask.mask_tokens(**kwargs, row_keys=keys, backend="reference")
    perm = torch.randperm(batch)
    per_row = lambda t: None if t is None else t[perm]  # noqa: E731
    shuffled = dict(
        kwargs,
        input_ids=kwargs["input_ids"][perm],
        word_starts=per_row(kwargs["word_starts"]),
        attention_mask=per_row(kwargs["attention_mask"]),
    )
    masked_p, labels_p = fastmask.mask_tokens(**shuffled, row_keys=keys[perm], backend="reference")
    assert torch.equal(masked_p, masked[perm]) and torch.equal(labels_p, labels[perm])
    extra = data.draw(st.integers(1, 9))  # right padding changes nothing
    pad = lambda t, v: torch.cat([t, torch.full((batch, extra), v, dtype=t.dtype)], 1)  # noqa: E731
    padded = dict(
        kwargs,
        input_ids=pad(kwargs["input_ids"], 0),
        word_starts=pad(kwargs["word_starts"], True),
        attention_mask=pad(kwargs["attention_mask"], 0),
    )
    masked_x, labels_x = fastmask.mask_tokens(**padded, row_keys=keys, backend="reference")
    assert torch.equal(masked_x[:, : masked.shape[1]], masked) and torch.equal(labels_x[:, : labels.shape[1]], labels)
    assert (labels_x[:, masked.shape[1] :] == -100).all()


def test_seeds_and_row_keys_change_masks():
    ids = torch.randint(5, VOCAB, (8, 256))
    base = fastmask.mask_tokens(ids, mask_token_id=MASK_ID, vocab_size=VOCAB, seed=1)[1]
    other_seed = fastmask.mask_tokens(ids, mask_token_id=MASK_ID, vocab_size=VOCAB, seed=2)[1]
    other_keys = fastmask.mask_tokens(ids, mask_token_id=MASK_ID, vocab_size=VOCAB, seed=1, row_keys=range(8, 16))[1]
    assert not torch.equal(base, other_seed) and not torch.equal(base, other_keys)
    # rows with different keys get different masks
    assert len({tuple((row != -100).nonzero().flatten().tolist()) for row in base}) == 8


def test_one_dimensional_input():
    ids = torch.randint(5, VOCAB, (300,))
    masked, labels = fastmask.mask_tokens(ids, mask_token_id=MASK_ID, vocab_size=VOCAB, seed=3)
    masked2, labels2 = fastmask.mask_tokens(ids[None], mask_token_id=MASK_ID, vocab_size=VOCAB, seed=3)
    assert masked.shape == ids.shape and torch.equal(masked, masked2[0]) and torch.equal(labels, labels2[0])


# ----------------------------------------------------------------------------- custom op
def test_opcheck_and_compile():
    name, kwargs = SAMPLES[10]
    from fastmask.masking import _mask_tokens_op  # the registered torch.library op

    ids = kwargs["input_ids"]
    for backend in ("reference", "cpp"):
        plan = fastmask.masking.plan_masking(**kwargs)
        buffers, scalars = plan.to_op_args()
        torch.library.opcheck(
            _mask_tokens_op,
            (buffers, scalars, backend),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )

    def step(x):
        masked, labels = fastmask.mask_tokens(x, mask_token_id=MASK_ID, vocab_size=VOCAB, seed=5)
        return masked * 2, labels

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, expected = compiled(ids), step(ids)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_plan_round_trips_through_the_op_arguments():
    for _, kwargs in SAMPLES[:40]:
        plan = fastmask.masking.plan_masking(**kwargs)
        again = type(plan).from_op_args(*plan.to_op_args())
        assert again.scalars() == plan.scalars()
        assert all(
            (a is None and b is None) or torch.equal(a, b)
            for a, b in zip(plan.buffers().values(), again.buffers().values())
        )
        masked, labels = fastmask.masking.run_masking(plan, "reference")
        assert all(torch.equal(a, b) for a, b in zip((masked, labels), fastmask.mask_tokens(**kwargs, backend="cpp")))


# ----------------------------------------------------------------------------- bad input
def _call(**overrides):
    kwargs = dict(input_ids=torch.randint(5, VOCAB, (2, 8)), mask_token_id=MASK_ID, vocab_size=VOCAB)
    kwargs.update(overrides)
    return fastmask.mask_tokens(**kwargs)


@pytest.mark.parametrize(
    "overrides,error,pattern",
    [
        (dict(input_ids=[[1, 2]]), TypeError, "input_ids"),
        (dict(input_ids=torch.rand(2, 3)), TypeError, "input_ids has dtype float32"),
        (dict(input_ids=torch.zeros(0, 5, dtype=torch.long)), ValueError, "input_ids is empty"),
        (dict(input_ids=torch.zeros(2, 3, 4, dtype=torch.long)), ValueError, r"input_ids must be \[batch, length\]"),
        (dict(mlm_probability=1.5), ValueError, "mlm_probability=1.5 is outside"),
        (dict(mlm_probability=-0.1), ValueError, "mlm_probability"),
        (dict(mlm_probability="0.1"), TypeError, "mlm_probability"),
        (dict(mask_replace_prob=0.8, random_replace_prob=0.3), ValueError, "mask_replace_prob \\+ random_replace_prob"),
        (dict(random_replace_prob=2.0), ValueError, "random_replace_prob"),
        (dict(mask_token_id=None), TypeError, "mask_token_id must be an int"),
        (dict(mask_token_id=-1), ValueError, "mask_token_id=-1"),
        (dict(vocab_size=0), ValueError, "vocab_size=0"),
        (dict(vocab_size=2**40, input_ids=torch.zeros(1, 3, dtype=torch.int32)), ValueError, "vocab_size"),
        (dict(strategy="words"), ValueError, "strategy='words'"),
        (dict(budget="fixed"), ValueError, "budget='fixed'"),
        (dict(strategy="whole_word"), ValueError, "needs word boundaries"),
        (
            dict(strategy="span", span_distribution="poisson", word_starts=torch.ones(2, 8, dtype=torch.bool)),
            ValueError,
            "span_distribution",
        ),
        (dict(max_span_words=0), ValueError, "max_span_words=0"),
        (dict(special_tokens_mask=torch.zeros(2, 9, dtype=torch.bool)), ValueError, "special_tokens_mask has shape"),
        (dict(attention_mask=torch.ones(3, 8)), TypeError, "attention_mask has dtype float32"),
        (
            dict(word_starts=torch.ones(2, 7, dtype=torch.bool), strategy="whole_word"),
            ValueError,
            "word_starts has shape",
        ),
        (
            dict(word_start_table=torch.ones(10, dtype=torch.bool), strategy="whole_word"),
            ValueError,
            "outside word_start_table",
        ),
        (dict(token_weights=torch.ones(10)), ValueError, "outside token_weights"),
        (dict(token_weights=-torch.ones(VOCAB)), ValueError, "non-negative"),
        (
            dict(token_weights=torch.ones(VOCAB), budget="exact"),
            ValueError,
            "token_weights works with budget='bernoulli'",
        ),
        (dict(row_keys=[1, 2, 3]), ValueError, "row_keys has 3 entries"),
        (dict(seed=1.5), TypeError, "seed must be an int"),
        (dict(backend="cuda"), ValueError, "backend='cuda'"),
        # regressions: accepted silently before
        (dict(input_ids=torch.tensor([[5, VOCAB, 7]])), ValueError, f"input_ids contains id {VOCAB}, outside"),
        (dict(input_ids=torch.tensor([[5, -100, 7]])), ValueError, "input_ids contains the negative id -100"),
        (dict(mask_token_id=VOCAB), ValueError, f"mask_token_id={VOCAB} is above"),
        (dict(row_keys=[1.9, 2.2]), TypeError, "row_keys must be a sequence of ints"),
        (dict(row_keys=torch.tensor([1.9, 2.2])), TypeError, "row_keys has dtype float32"),
        (dict(special_token_ids=[2**31]), ValueError, "special_token_ids"),
        (dict(special_token_ids=[VOCAB]), ValueError, "special_token_ids"),
    ],
)
def test_bad_input_is_named(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        _call(**overrides)


def test_explicit_backend_that_cannot_run_raises_with_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(fastmask.BackendUnavailableError, match="triton.*cannot run this call: Triton runs on CUDA"):
        _call(backend="triton")
    monkeypatch.setenv("FASTMASK_BACKEND", "reference")
    _call()  # the environment override is honoured


def test_auto_falls_back_to_reference_without_extension(monkeypatch):
    from fastmask import _backend as backend_module

    monkeypatch.setattr(backend_module, "_cpp_module_reason", lambda: (None, "not built"))
    assert backend_module.resolve_backend("auto", torch.device("cpu"), op="t") == "reference"
    with pytest.raises(fastmask.BackendUnavailableError, match="not built"):
        backend_module.resolve_backend("cpp", torch.device("cpu"), op="t")


# ----------------------------------------------------------------------------- table cache


def test_fresh_token_weights_never_reuse_a_freed_tables_cache_entry():
    """Regression: tables were cached by data_ptr(); a new tensor at a freed one's address
    silently reused the old table (32 of 40 calls wrong)."""
    ids = torch.arange(1, 11).repeat(4, 1)
    for i in range(1000):
        target = 1 + i % 10
        weights = fastmask.token_weights_from_counts([0 if k == target else 10**9 for k in range(11)], alpha=4.0)
        _, labels = fastmask.mask_tokens(
            ids, mask_token_id=0, vocab_size=11, mlm_probability=0.9, token_weights=weights, seed=i
        )
        assert set(ids[labels != -100].tolist()) <= {target}, f"call {i}: a stale weights table was used"


def test_fresh_word_start_tables_agree_with_per_position_starts():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (4, 24), generator=generator)
    for i in range(1000):
        table = torch.rand(50, generator=generator) < 0.5
        options = dict(mask_token_id=0, vocab_size=50, strategy="whole_word", seed=i, mlm_probability=0.3)
        by_table = fastmask.mask_tokens(ids, word_start_table=table, **options)
        by_starts = fastmask.mask_tokens(ids, word_starts=table[ids], **options)
        assert all(torch.equal(a, b) for a, b in zip(by_table, by_starts)), f"call {i}"


def test_in_place_edits_of_a_table_are_seen():
    ids = torch.arange(1, 11).repeat(4, 1)
    weights = torch.zeros(11)
    for target in range(1, 11):
        weights.zero_()
        weights[target] = 1.0
        _, labels = fastmask.mask_tokens(
            ids, mask_token_id=0, vocab_size=11, mlm_probability=0.9, token_weights=weights
        )
        assert set(ids[labels != -100].tolist()) <= {target}
    table = torch.ones(11, dtype=torch.bool)
    first = fastmask.mask_tokens(ids, mask_token_id=0, vocab_size=11, strategy="whole_word", word_start_table=table)
    table[1::2] = False
    second = fastmask.mask_tokens(ids, mask_token_id=0, vocab_size=11, strategy="whole_word", word_start_table=table)
    expected = fastmask.mask_tokens(ids, mask_token_id=0, vocab_size=11, strategy="whole_word", word_starts=table[ids])
    assert all(torch.equal(a, b) for a, b in zip(second, expected))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))
