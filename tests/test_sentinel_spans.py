"""The span-corruption op: T5's semantics (reconstruction, exact counts, sentinels, lengths,
span statistics), bit-identity of the reference, C++ and Triton backends, and bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from backends import assert_compiles_offline, assert_matches_reference, backend_cases, require_backend
from sentinel_spans_samples import EOS, FIRST_SENTINEL, PAD, VOCAB, sample_inputs

import fastmask
from fastmask import _backend
from fastmask.sentinel_spans import plan_span_corruption, span_corruption, span_corruption_lengths, span_counts

SAMPLES = list(sample_inputs())
SMALL = list(sample_inputs(small=True, seed=1))[::3]  # every variant, fewer shapes (the interpreter is slow)


def _real(kwargs) -> torch.Tensor:
    if kwargs.get("attention_mask") is not None:
        return kwargs["attention_mask"].bool()
    return kwargs["input_ids"] != PAD


def _split(inputs_row: list, targets_row: list):
    """``(inputs without EOS/padding, {sentinel: span})`` of one row, checking the EOS."""
    n_in = inputs_row.index(EOS)
    n_out = targets_row.index(EOS)
    assert all(x == PAD for x in inputs_row[n_in + 1 :]) and all(x == PAD for x in targets_row[n_out + 1 :])
    spans, current = {}, None
    for x in targets_row[:n_out]:
        if x >= VOCAB:  # a sentinel
            current = x
            spans[current] = []
        else:
            spans[current].append(x)
    return inputs_row[:n_in], spans


@pytest.mark.parametrize("name,kwargs", SAMPLES, ids=[n for n, _ in SAMPLES])
def test_reference_semantics(name, kwargs):
    inputs, targets = span_corruption(**kwargs, backend="reference")
    ids, real = kwargs["input_ids"], _real(kwargs)
    assert inputs.dtype == ids.dtype and targets.dtype == ids.dtype
    words = kwargs.get("word_starts")
    widths_in, widths_out = [], []
    for b in range(ids.shape[0]):
        row = ids[b][real[b]].tolist()
        kept, spans = _split(inputs[b].tolist(), targets[b].tolist())
        # sentinel order: first_sentinel_id, first_sentinel_id - 1, ... in both outputs
        sentinels = [x for x in kept if x in spans]
        assert sentinels == list(spans) == [FIRST_SENTINEL - k for k in range(len(spans))]
        # interleaving inputs and targets gives the row back
        rebuilt = [t for x in kept for t in (spans[x] if x in spans else [x])]
        assert rebuilt == row
        assert all(len(s) > 0 for s in spans.values())
        assert kept[-1] in spans  # a row ends with a span (kept segments come first)
        assert all(kept[i] not in spans or kept[i + 1] not in spans for i in range(len(kept) - 1))
        noise_tokens = sum(len(s) for s in spans.values())
        if words is None:
            noise, n_spans = span_counts(len(row), kwargs["noise_density"], kwargs["mean_noise_span_length"])
            assert (noise_tokens, len(spans)) == (noise, n_spans)
        else:
            starts = words[b][real[b]].clone()
            starts[0] = True
            n_words = int(starts.sum())
            noise_words, n_spans = span_counts(n_words, kwargs["noise_density"], kwargs["mean_noise_span_length"])
            assert len(spans) == n_spans
            # every span covers whole words: it starts at a word start and the next token starts one
            position, noise_word_count = 0, 0
            for x in kept:
                if x in spans:
                    assert bool(starts[position])
                    noise_word_count += int(starts[position : position + len(spans[x])].sum())
                    position += len(spans[x])
                    assert position == len(row) or bool(starts[position])
                else:
                    position += 1
            assert noise_word_count == noise_words
        widths_in.append(len(kept) + 1)
        widths_out.append(noise_tokens + len(spans) + 1)
    if words is None:
        assert inputs.shape[1] == max(widths_in) and targets.shape[1] == max(widths_out)
    else:
        assert inputs.shape[1] >= max(widths_in) and targets.shape[1] >= max(widths_out)


@pytest.mark.parametrize("backend,kwargs", backend_cases(SAMPLES, SMALL))
def test_backend_matches_reference(backend, kwargs):
    assert_matches_reference(span_corruption, kwargs, backend)


def _t5_lengths(input_length, density, mean):
    """T5's rule, written out plainly: grow the row while its inputs (kept + sentinels + EOS) fit."""

    def sizes(tokens):
        noise = int(np.round(tokens * density))
        spans = int(np.round(noise / mean))
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = input_length
    while sizes(tokens + 1)[0] <= input_length:
        tokens += 1
    target = sizes(tokens)[1]
    if density == 0.5 and target > input_length:
        tokens, target = tokens - 1, target - 1
    return tokens, target


def test_lengths_match_t5():
    # values of transformers' run_t5_mlm_flax.compute_input_and_target_lengths
    assert span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
    for input_length in (16, 64, 128, 512, 1024):
        for density, mean in ((0.15, 3.0), (0.3, 2.0), (0.5, 3.0)):
            expanded, target = span_corruption_lengths(input_length, density, mean)
            assert (expanded, target) == _t5_lengths(input_length, density, mean)
            ids = torch.randint(2, 400, (3, expanded))
            inputs, targets = span_corruption(
                ids,
                noise_density=density,
                mean_noise_span_length=mean,
                first_sentinel_id=FIRST_SENTINEL,
                eos_token_id=EOS,
                pad_token_id=PAD,
                seed=0,
            )
            assert inputs.shape == (3, input_length)
            assert targets.shape[1] <= target if density == 0.5 else targets.shape == (3, target)


def test_mean_span_length_and_uniform_compositions():
    """On many rows: the mean span length is within 5% of the request, and the first span's
    length follows a uniform composition (P(length 1) = (S - 1) / (N - 1))."""
    require_backend("cpp")
    rows, length = 4000, 568
    ids = torch.randint(2, 400, (rows, length))
    inputs, targets = span_corruption(
        ids, first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD, seed=7, backend="cpp"
    )
    is_sentinel = (targets <= FIRST_SENTINEL) & (targets > FIRST_SENTINEL - 200)
    n_spans = int(is_sentinel.sum())
    n_noise = int(((targets != PAD) & (targets != EOS) & ~is_sentinel).sum())
    assert abs(n_noise / n_spans / 3.0 - 1) < 0.05
    noise, spans = span_counts(length, 0.15, 3.0)
    first_len = (is_sentinel[:, 2] == 1).to(torch.float64)  # the first span has length 1
    expected = (spans - 1) / (noise - 1)
    assert abs(float(first_len.mean()) - expected) < 4 * math.sqrt(expected * (1 - expected) / rows)
    # the first kept segment's length 1 (the second input is the first sentinel): (S - 1) / (K - 1)
    keep = length - noise
    p_keep = (spans - 1) / (keep - 1)
    got = float((inputs[:, 1] == FIRST_SENTINEL).to(torch.float64).mean())
    assert abs(got - p_keep) < 4 * math.sqrt(p_keep * (1 - p_keep) / rows)


def test_row_keys_and_seed():
    ids = torch.randint(2, 400, (6, 50))
    common = dict(first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD)
    a = span_corruption(ids, seed=3, row_keys=[10, 11, 12, 13, 14, 15], **common)
    b = span_corruption(ids[[2]], seed=3, row_keys=[12], **common)
    assert torch.equal(a[0][2], b[0][0]) and torch.equal(a[1][2], b[1][0])
    c = span_corruption(ids, seed=4, row_keys=[10, 11, 12, 13, 14, 15], **common)
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(5)
    d = span_corruption(ids, **common)
    torch.manual_seed(5)
    e = span_corruption(ids, **common)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])
    one = span_corruption(ids[0], seed=3, row_keys=[10], **common)
    assert torch.equal(one[0], a[0][0]) and torch.equal(one[1], a[1][0])


def test_auto_backend_and_export():
    assert fastmask.span_corruption is span_corruption
    assert fastmask.span_corruption_lengths is span_corruption_lengths
    ids = torch.randint(2, 400, (2, 20))
    kw = dict(first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD, seed=1)
    for e, g in zip(span_corruption(ids, **kw, backend="reference"), span_corruption(ids, **kw)):
        assert torch.equal(e, g)


def test_bad_input():
    ids = torch.randint(2, 400, (2, 20))
    kw = dict(first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD, seed=0)
    for density in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="noise_density"):
            span_corruption(ids, noise_density=density, **kw)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        span_corruption(ids, mean_noise_span_length=0.5, **kw)
    short = ids.clone()
    short[1, 1:] = PAD
    with pytest.raises(ValueError, match="row 1 .* 1 real tokens.*at least 2"):
        span_corruption(short, **kw)
    with pytest.raises(ValueError, match="first_sentinel_id"):
        span_corruption(
            ids,
            first_sentinel_id=1,
            eos_token_id=EOS,
            pad_token_id=PAD,
            seed=0,
            noise_density=0.5,
            mean_noise_span_length=1.0,
        )
    with pytest.raises(TypeError, match="input_ids"):
        span_corruption(ids.float(), **kw)
    with pytest.raises(ValueError, match="attention_mask"):
        span_corruption(ids, attention_mask=torch.ones(2, 19, dtype=torch.int64), **kw)
    with pytest.raises(ValueError, match="negative"):
        span_corruption(-ids, **kw)
    with pytest.raises(ValueError, match="input_length"):
        span_corruption_lengths(2)
    with pytest.raises(ValueError, match="backend"):
        span_corruption(ids, backend="gpu", **kw)


def test_plan_is_frozen_and_cpp_rejects_bad_buffers():
    require_backend("cpp")
    ids = torch.randint(2, 400, (2, 20))
    plan = plan_span_corruption(ids, first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed_mix1 = 3
    fields = {k: None if v is None else v.numpy() for k, v in plan.buffers().items()}
    fields.update(plan.scalars())
    inputs = torch.empty(2, plan.inputs_length, dtype=torch.int64).numpy()
    with pytest.raises(ValueError, match="targets_out"):
        _backend.cpp_module().span_corruption(fields, inputs, torch.empty(2, 3, dtype=torch.int64).numpy())


def test_with_new_rows_equals_a_fresh_plan():
    """A plan re-used for new ids, seed and row keys (what the collator does per batch) gives the
    plan_span_corruption plan's outputs; plans whose counts depend on the ids are refused."""
    from fastmask.sentinel_spans import run_span_corruption, with_new_rows

    ones = torch.ones(3, 24, dtype=torch.bool)
    kw = dict(first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD, attention_mask=ones)
    template = plan_span_corruption(torch.zeros(3, 24, dtype=torch.int64), seed=0, **kw)
    ids = torch.randint(0, 400, (3, 24))
    ids[1, 5] = PAD  # a pad id inside a row is a real token under the all-ones mask
    keys = torch.tensor([7, -3, 1 << 45])
    fresh = plan_span_corruption(ids, seed=11, row_keys=keys, **kw)
    reused = with_new_rows(template, ids, seed=11, row_keys=keys)
    for backend in ("reference", "cpp"):
        require_backend(backend)
        a, b = run_span_corruption(fresh, backend), run_span_corruption(reused, backend)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="negative id -4"):
        with_new_rows(template, torch.full((3, 24), -4), seed=1, row_keys=keys)
    with pytest.raises(ValueError, match="shape"):
        with_new_rows(template, ids[:2], seed=1, row_keys=keys[:2])
    with pytest.raises(TypeError, match="dtype"):
        with_new_rows(template, ids.to(torch.int32), seed=1, row_keys=keys)
    with pytest.raises(ValueError, match="row_keys has 2 entries"):
        with_new_rows(template, ids, seed=1, row_keys=keys[:2])
    unmasked = plan_span_corruption(ids, first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD, seed=0)
    with pytest.raises(ValueError, match="attention_mask"):
        with_new_rows(unmasked, ids, seed=1, row_keys=keys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the other tests compile and run the kernel")
def test_triton_kernel_compiles_offline_without_spills():
    """Every variant of the span-corruption kernel (rows up to 1023 tokens: T5's 568) compiles for sm_80 and sm_90
    with 0 spills at the launcher's num_warps (:mod:`fastmask.kernels.offline`)."""
    from fastmask.kernels import offline

    assert_compiles_offline(offline.variants("sentinel_spans"))


@pytest.fixture(params=["default", "avx2"])
def cpp_isa(request):
    """The C++ kernel at each instruction-set level this CPU has (the span-corruption kernel
    follows the masking kernel's level, ``_C._masking_isa``)."""
    require_backend("cpp")
    module = _backend.cpp_module()
    before = module._masking_isa()
    if module._masking_isa(request.param) != request.param:
        module._masking_isa(before)
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    module._masking_isa(before)


def _kernel_path_cases():
    """Rows for every path of the C++ kernel: padding inside rows (attention holes, pad ids) and
    at either end, word units, and compositions with few, many, or thousands of candidate cuts
    (several per bucket of draws)."""
    g = torch.Generator().manual_seed(7)
    base = dict(first_sentinel_id=20000, eos_token_id=EOS, pad_token_id=PAD)
    for batch, length, density, mean in [
        (6, 50, 0.15, 3.0),
        (4, 568, 0.15, 3.0),
        (3, 3000, 0.3, 2.0),
        (2, 12000, 0.5, 1.0),
    ]:
        ids = torch.randint(2, VOCAB, (batch, length), generator=g)
        holes = (torch.rand(batch, length, generator=g) < 0.2).to(torch.int64)
        holes[:, :2] = 1  # at least two real tokens
        left = (torch.arange(length)[None, :] >= torch.randint(0, length - 2, (batch, 1), generator=g)).to(torch.int64)
        with_pads = torch.where(torch.rand(batch, length, generator=g) < 0.1, torch.full_like(ids, PAD), ids)
        with_pads[:, :2] = 7
        starts = torch.rand(batch, length, generator=g) < 0.6
        kw = dict(
            base,
            noise_density=density,
            mean_noise_span_length=mean,
            seed=int(torch.randint(0, 2**62, (1,), generator=g)),
        )
        name = f"{batch}x{length}-d{density}-m{mean}"
        yield name + "-holes", dict(kw, input_ids=ids, attention_mask=1 - holes)
        yield name + "-left", dict(kw, input_ids=ids, attention_mask=left)
        yield name + "-pad-ids", dict(kw, input_ids=with_pads.to(torch.int32))
        if length <= 3000:
            yield name + "-words", dict(kw, input_ids=ids, attention_mask=1 - holes, word_starts=starts)


KERNEL_PATHS = list(_kernel_path_cases())


@pytest.mark.parametrize("name,kwargs", KERNEL_PATHS, ids=[n for n, _ in KERNEL_PATHS])
def test_cpp_kernel_paths_match_reference(cpp_isa, name, kwargs):
    assert_matches_reference(span_corruption, kwargs, "cpp")


def test_runner_equals_with_new_rows():
    """SpanCorruptionRunner (the collator's per-batch call) gives run_span_corruption(with_new_rows(...))'s
    outputs on every backend, across seeds and after pickling, and rejects what with_new_rows rejects."""
    import pickle

    from fastmask.sentinel_spans import SpanCorruptionRunner, run_span_corruption, with_new_rows

    ones = torch.ones(4, 60, dtype=torch.bool)
    kw = dict(first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD, attention_mask=ones)
    template = plan_span_corruption(torch.zeros(4, 60, dtype=torch.int64), seed=0, **kw)
    ids = torch.randint(0, 400, (4, 60))
    keys = torch.tensor([3, -9, 1 << 50, 0])
    for backend in ("reference", "cpp"):
        require_backend(backend)
        runner = SpanCorruptionRunner(template, backend)
        for seed in (5, 5, 6):  # a repeated seed and a new one
            expected = run_span_corruption(with_new_rows(template, ids, seed=seed, row_keys=keys), backend)
            got = runner(ids.numpy(), seed=seed, row_keys=keys)
            assert all(isinstance(x, np.ndarray) and np.array_equal(x, e.numpy()) for x, e in zip(got, expected))
        copy = pickle.loads(pickle.dumps(runner))
        assert all(np.array_equal(a, b) for a, b in zip(copy(ids.numpy(), seed=6, row_keys=keys.numpy()), got))
        with pytest.raises(ValueError, match="negative id -4"):
            runner(np.full((4, 60), -4), seed=1, row_keys=keys)
        with pytest.raises(ValueError, match="shape"):
            runner(ids.numpy()[:2], seed=1, row_keys=keys[:2])
        with pytest.raises(TypeError, match="dtype"):
            runner(ids.numpy().astype(np.int32), seed=1, row_keys=keys)
        with pytest.raises(ValueError, match="row_keys has 2 entries"):
            runner(ids.numpy(), seed=1, row_keys=keys[:2])
        with pytest.raises(TypeError, match="seed"):
            runner(ids.numpy(), seed=1.5, row_keys=keys)
    unmasked = plan_span_corruption(ids, first_sentinel_id=FIRST_SENTINEL, eos_token_id=EOS, pad_token_id=PAD, seed=0)
    with pytest.raises(ValueError, match="attention_mask"):
        SpanCorruptionRunner(unmasked)
