"""The Triton masking kernel's pieces: its generator equals :mod:`fastmask._rng` bit for bit, and
the whole kernel equals the reference on random and adversarial calls (long words, budgets
near the row's size, long spans). Runs through the interpreter without a GPU."""

from __future__ import annotations

import pytest
import torch
from backends import assert_compiles_offline, kernel_device, require_backend
from masking_samples import MASK_ID, SPECIAL_IDS, VOCAB

import fastmask
from fastmask import _rng

pytestmark = pytest.mark.triton

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from fastmask.kernels.masking import MAX_BLOCK_L, _draw, _lowbias32, _row_state, triton_call_reason  # noqa: E402


@pytest.fixture(autouse=True)
def _triton_backend():
    require_backend("triton", kernel_device())


# ----------------------------------------------------------------------------- generator
@triton.jit
def _hash_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0).to(tl.uint32)
    tl.store(y_ptr + offs, _lowbias32(x).to(tl.int64), mask=offs < n)


@triton.jit
def _draw_kernel(keys_ptr, out_ptr, length, seed_mix1, seed_mix2, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    s1, s2 = _row_state(tl.load(keys_ptr + row), seed_mix1, seed_mix2)
    pos = tl.arange(0, BLOCK)
    base = out_ptr + row.to(tl.int64) * 4 * length + pos
    tl.store(base, _draw(s1, s2, pos, 0).to(tl.int64), mask=pos < length)
    tl.store(base + length, _draw(s1, s2, pos, 1).to(tl.int64), mask=pos < length)
    tl.store(base + 2 * length, _draw(s1, s2, pos, 2).to(tl.int64), mask=pos < length)
    tl.store(base + 3 * length, _draw(s1, s2, pos, 3).to(tl.int64), mask=pos < length)


def test_lowbias32_matches_generator():
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.arange(0, 70000),
            torch.randint(0, 2**32, (20000,), generator=g),
            torch.tensor([2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]),
        ]
    ).to(kernel_device())
    y = torch.empty_like(x)
    _hash_kernel[(triton.cdiv(x.numel(), 8192),)](x, y, x.numel(), BLOCK=8192)
    expected = _rng.lowbias32(x.cpu())
    assert torch.equal(y.cpu(), expected)
    assert [_rng.lowbias32_int(v) for v in x[-4:].tolist()] == expected[-4:].tolist()


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 2**32 + 5, 2**64 - 1, 0x9E3779B97F4A7C15])
def test_row_states_and_draws_match_generator(seed):
    mix1, mix2 = _rng.seed_mix(seed)
    keys = torch.tensor([0, 1, -1, 2**31, -(2**63), 2**63 - 1, 123456789012345, -987654321], dtype=torch.int64)
    length = 300
    out = torch.empty(keys.numel(), 4, length, dtype=torch.int64, device=kernel_device())
    _draw_kernel[(keys.numel(),)](keys.to(kernel_device()), out, length, mix1, mix2, BLOCK=512)
    s1, s2 = (s[:, None] for s in _rng.row_states(keys, mix1, mix2))
    positions = torch.arange(length)
    for stream in range(_rng.NUM_STREAMS):
        assert torch.equal(out[:, stream].cpu(), _rng.draw(s1, s2, positions, stream)), f"stream {stream}"


# ----------------------------------------------------------------------------- whole kernel
def _assert_matches_reference(kwargs):
    kwargs = {k: v.to(kernel_device()) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    before = kwargs["input_ids"].clone()
    expected = fastmask.mask_tokens(**kwargs, backend="reference")
    got = fastmask.mask_tokens(**kwargs, backend="triton")
    assert torch.equal(kwargs["input_ids"], before)
    assert got[0].dtype == before.dtype and got[1].dtype == torch.int64
    assert torch.equal(got[1], expected[1]), "labels differ from the reference"
    assert torch.equal(got[0], expected[0]), "masked ids differ from the reference"


def _random_call(g: torch.Generator, case: int) -> dict:
    """Rows with few word starts (long words), specials and padding inside, any budget."""
    batch = int(torch.randint(1, 5, (1,), generator=g))
    length = int(torch.randint(1, 160, (1,), generator=g))
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    ids[torch.rand(batch, length, generator=g) < 0.08] = 1  # specials anywhere
    strategy = ("token", "whole_word", "span")[case % 3]
    budget = ("exact", "bernoulli")[(case // 3) % 2]
    start_rate = float(torch.rand(1, generator=g)) * 0.9 + 0.02
    kwargs = dict(
        input_ids=ids.to(torch.int32 if case % 5 == 0 else torch.int64),
        mask_token_id=MASK_ID,
        vocab_size=VOCAB,
        strategy=strategy,
        budget=budget,
        mlm_probability=float(torch.rand(1, generator=g)),
        seed=int(torch.randint(0, 2**62, (1,), generator=g)),
        row_keys=torch.randint(-(2**62), 2**62, (batch,), generator=g),
        mask_replace_prob=0.5,
        random_replace_prob=0.3,
    )
    if case % 4 == 0:  # flags from the ids only: most ids lie outside the special-id table
        kwargs.update(special_token_ids=SPECIAL_IDS, pad_token_id=0)
        kwargs["word_starts"] = torch.rand(batch, length, generator=g) < start_rate
    elif case % 4 == 1:
        table = torch.rand(VOCAB, generator=g) < start_rate
        kwargs.update(word_start_table=table, special_token_ids=SPECIAL_IDS)
        kwargs["attention_mask"] = (torch.rand(batch, length, generator=g) < 0.85).long()
    else:
        kwargs["special_tokens_mask"] = torch.rand(batch, length, generator=g) < 0.1
        kwargs["word_starts"] = torch.rand(batch, length, generator=g) < start_rate
        if case % 4 == 3 and budget == "bernoulli":
            kwargs["token_weights"] = torch.rand(VOCAB, generator=g) * (torch.rand(VOCAB, generator=g) < 0.5)
    if strategy == "span":
        kwargs["span_distribution"] = ("geometric", "uniform")[case % 2]
        kwargs["max_span_words"] = int(torch.randint(1, 40, (1,), generator=g))
        kwargs["span_p"] = float(torch.rand(1, generator=g)) * 0.9 + 0.05
    return kwargs


@pytest.mark.parametrize("case", range(60))
def test_random_calls_match_reference(case):
    _assert_matches_reference(_random_call(torch.Generator().manual_seed(1000 + case), case))


@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
@pytest.mark.parametrize("p", [0.03, 0.5, 0.97])
def test_exact_budget_on_long_words_matches_reference(strategy, p):
    """Words of up to ~60 tokens next to one-token words: the greedy skips, then refills."""
    g = torch.Generator().manual_seed(int(p * 100) + len(strategy))
    batch, length = 3, 700
    starts = torch.rand(batch, length, generator=g) < 0.5
    long_words = torch.rand(batch, length, generator=g) < 0.02
    starts &= ~(torch.cumsum(long_words.long(), 1) % 2).bool()  # alternating long stretches
    kwargs = dict(
        input_ids=torch.randint(5, VOCAB, (batch, length), generator=g),
        mask_token_id=MASK_ID,
        vocab_size=VOCAB,
        strategy=strategy,
        budget="exact",
        mlm_probability=p,
        word_starts=starts,
        special_tokens_mask=torch.rand(batch, length, generator=g) < 0.01,
        seed=11,
    )
    if strategy == "span":
        kwargs.update(max_span_words=256, span_distribution="uniform")
    _assert_matches_reference(kwargs)


def test_sample_inputs_on_cuda():
    """On a GPU, the shared samples (rows up to 8192 tokens) run the compiled kernel on CUDA
    tensors; without one, tests/test_masking.py runs them through the interpreter."""
    if not torch.cuda.is_available():
        pytest.skip("no GPU: tests/test_masking.py runs these samples through the interpreter")
    from masking_samples import sample_inputs

    for name, kwargs in sample_inputs():
        try:
            _assert_matches_reference(kwargs)
        except AssertionError as exc:
            raise AssertionError(f"sample {name}: {exc}") from None


def test_row_limit_is_reported():
    assert triton_call_reason(MAX_BLOCK_L) is None
    reason = triton_call_reason(MAX_BLOCK_L + 1)
    assert reason is not None and str(MAX_BLOCK_L) in reason
    ids = torch.randint(5, VOCAB, (1, MAX_BLOCK_L + 1), device=kernel_device())
    with pytest.raises(fastmask.BackendUnavailableError, match="one-block limit"):
        fastmask.mask_tokens(ids, mask_token_id=MASK_ID, vocab_size=VOCAB, backend="triton")


# ----------------------------------------------------------------------------- GPU compile
@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="a GPU is present: the other tests compile and run the kernel on it, and gpu_check's "
    "kernels step reports its registers and spills for this GPU",
)
def test_kernel_compiles_for_cuda_without_spills():
    """Every constexpr branch passes the real compiler (TTIR -> PTX -> cubin) for sm_80 and
    sm_90 without a GPU (the interpreter skips the compiler's checks, e.g. loop-carried types),
    at the launcher's own BLOCK_L / num_warps, with 0 spills: every variant for 512-token rows,
    the two with the most registers for 2048 (the longest rows without spills; see
    ``offline.KNOWN_SPILLS``). The compiles run in worker processes without TRITON_INTERPRET
    (:mod:`fastmask.kernels.offline`)."""
    from fastmask.kernels import offline
    from fastmask.kernels.masking import _num_warps, block_size

    chosen = offline.variants("masking")
    assert {v.block for v in chosen} == {block_size(512), block_size(2048)}  # longer rows: known spills
    assert all(v.num_warps == _num_warps(v.block) for v in chosen)  # the launcher's choice
    assert_compiles_offline(chosen)
