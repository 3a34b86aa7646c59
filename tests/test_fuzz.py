"""Fuzz suite (hypothesis) over every public entry point.

Entries: ``fastmask.mask_tokens`` (reference, cpp, triton), ``masked_cross_entropy`` and
``MaskedLMLoss`` (reference, cpp, triton), ``fused_masked_lm_loss`` (reference, cpp, triton), the
three collators (``DataCollatorForLanguageModeling``, ``DataCollatorForWholeWordMask``,
``DataCollatorForMaskedAugmentation``) on the real MiniLM WordPiece tokenizer, and the helpers
(``word_starts_from_*``, ``count_token_frequencies``, ``token_weights_from_counts``,
``MaskingSchedule``, a collator's ``set_epoch`` / ``set_step`` / ``load_state_dict``). Each test
checks one of:

1. **invariants on valid generated input**: labels are -100 or the original id; unselected
   positions are unchanged; special tokens and padding are never selected; replaced ids are the
   mask id or lie in ``[0, vocab)``; whole words are selected whole; budgets hold; the inputs are
   not modified; the loss and its gradients equal ``torch.nn.functional.cross_entropy`` (float64
   oracles of ``loss_samples``) within the per-dtype tolerances;
2. **bit-identity of the backends** on the same input (masks; collators through ``backend=``);
3. **a clear error or a correct result on generated bad input** (wrong dtypes, out-of-range or
   negative ids, mismatched shapes, probabilities outside [0, 1], NaN / inf scalars, huge ints,
   floats where ints belong, ragged per-token keys, ...): the call raises ``ValueError`` or
   ``TypeError`` whose message names the offending argument, or returns a result satisfying the
   invariants above. Corruptions that have no meaningful result are marked ``must_raise``. Any
   other exception type, a crash, or a result that breaks an invariant fails the test.

Budget: every test runs a fixed number of examples (``fuzz(default)`` below), sized so that the
whole file adds about a minute to the suite on 2 CPU cores (Triton runs through its interpreter
on tiny shapes). ``FASTMASK_FUZZ_EXAMPLES=N`` runs N examples per test instead (long runs, e.g.
``FASTMASK_FUZZ_EXAMPLES=1000 python -m pytest tests/test_fuzz.py``). Generation is
derandomized (seeded by the test's name), there is no example database and no deadline, so a
CI run is reproducible. A failing example is reported as generated (no shrinking, which can take
minutes); ``FASTMASK_FUZZ_SHRINK=1`` shrinks it. ``FASTMASK_FUZZ_REPORT=path`` writes the number
of cases each test ran (JSON) when the module finishes. Bad-input tests are parametrized by the
kind of corruption, so every kind gets its share of examples.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Optional

import collator_support
import numpy as np
import pytest
import torch
from backends import kernel_device, require_backend
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from loss_samples import FUSED_TOLERANCES, TOLERANCES, reference_fused_masked_lm_loss, reference_masked_cross_entropy
from masking_samples import MASK_ID, SPECIAL_IDS

import fastmask

ERRORS = (ValueError, TypeError)
IGNORE = -100
CASES: Counter = Counter()
# Triton runs on CUDA tensors where there is a GPU, else on CPU tensors through its interpreter
# (conftest sets TRITON_INTERPRET); results are compared on the CPU.
TRITON_DEVICE = kernel_device()


# ----------------------------------------------------------------------------- budget
def _examples(default: int) -> int:
    value = os.environ.get("FASTMASK_FUZZ_EXAMPLES", "").strip()
    if not value:
        return default
    count = int(value)
    if count < 1:
        raise ValueError(f"FASTMASK_FUZZ_EXAMPLES={value!r} must be a positive int")
    return count


def fuzz(default: int):
    """Hypothesis settings for one test: ``default`` examples (FASTMASK_FUZZ_EXAMPLES overrides).

    No shrinking unless ``FASTMASK_FUZZ_SHRINK=1``: a failing example is reported as generated
    (each test notes the call it made), so a failure cannot blow the CI budget by shrinking."""
    phases = [Phase.explicit, Phase.generate]
    if os.environ.get("FASTMASK_FUZZ_SHRINK", "").strip() not in ("", "0"):
        phases.append(Phase.shrink)
    return settings(
        max_examples=_examples(default),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
        phases=phases,
    )


@pytest.fixture(scope="module", autouse=True)
def _case_report():
    yield
    path = os.environ.get("FASTMASK_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"total": sum(CASES.values()), "per_test": dict(sorted(CASES.items()))}, f, indent=1)


def _count(name: str) -> None:
    CASES[name] += 1


def clear_error_or(call: Callable, names, must_raise: bool, check: Callable) -> None:
    """``call()`` raises ValueError/TypeError naming one of ``names``, or returns a result that
    ``check`` accepts (not allowed when ``must_raise``). Anything else propagates (a failure)."""
    names = tuple(names)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except ERRORS as exc:
        message = str(exc)
        note(f"raised {type(exc).__name__}: {message}")
        assert any(name in message for name in names), (
            f"{type(exc).__name__} does not name the offending argument (one of {names}): {message}"
        )
        return
    assert not must_raise, f"bad input accepted silently (expected ValueError/TypeError naming one of {names})"
    check(result)


def _quiet(call: Callable):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


def _seeded(draw) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))


def _on_device(kwargs: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _cpu(result):
    return tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in result) if isinstance(result, tuple) else result


def _snapshot(kwargs: dict) -> dict:
    return {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and values, NaN equal to NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point() or a.is_complex():
        nan = torch.isnan(a)
        return torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan])
    return torch.equal(a, b)


def _assert_unmodified(kwargs: dict, snapshot: dict) -> None:
    for key, before in snapshot.items():
        assert _same_values(kwargs[key], before), f"{key} was modified in place"


# ============================================================================= mask_tokens
MASK_VOCABS = (8, 1000, 30522, 2**31 - 1)
MASK_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.int64)
TABLE_VOCAB_LIMIT = 30522  # per-vocabulary tables (word starts, weights) only for vocabularies up to this


def _probability(draw, low: float = 0.0, high: float = 1.0) -> float:
    return draw(st.one_of(st.sampled_from([low, high]), st.floats(low, high)))


@st.composite
def mask_calls(draw, max_batch: int = 5, max_length: int = 40):
    """Valid ``mask_tokens`` kwargs covering every option (``input_ids`` first)."""
    batch, length = draw(st.integers(1, max_batch)), draw(st.integers(1, max_length))
    vocab = draw(st.sampled_from(MASK_VOCABS))
    g = _seeded(draw)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    special_rate = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    specials = torch.tensor(SPECIAL_IDS)[torch.randint(0, len(SPECIAL_IDS), (batch, length), generator=g)]
    ids = torch.where(torch.rand(batch, length, generator=g) < special_rate, specials, ids)
    kw: dict = {}
    if draw(st.booleans()):  # right padding, ragged rows (a row may be all padding)
        lengths = torch.randint(0, length + 1, (batch,), generator=g)
        attention = torch.arange(length)[None, :] < lengths[:, None]
        ids = torch.where(attention, ids, torch.zeros_like(ids))
        kw["attention_mask"] = attention.to(draw(st.sampled_from(MASK_DTYPES)))
    if draw(st.booleans()):
        kw["pad_token_id"] = 0
    special_source = draw(st.sampled_from(["mask", "ids", "none"]))
    if special_source == "mask":
        extra = torch.rand(batch, length, generator=g) < draw(st.sampled_from([0.0, 0.2]))
        kw["special_tokens_mask"] = (torch.isin(ids, torch.tensor(SPECIAL_IDS)) | extra).to(
            draw(st.sampled_from(MASK_DTYPES))
        )
    elif special_source == "ids":
        chosen = draw(st.lists(st.sampled_from(SPECIAL_IDS), min_size=1, max_size=5, unique=True))
        kw["special_token_ids"] = draw(st.sampled_from([list, tuple]))(chosen)
    strategy = draw(st.sampled_from(["token", "whole_word", "span"]))
    budget = draw(st.sampled_from(["bernoulli", "exact"]))
    if strategy != "token" or draw(st.booleans()):
        density = draw(st.sampled_from([0.1, 0.6, 1.0]))
        if vocab <= TABLE_VOCAB_LIMIT and draw(st.booleans()):
            table = torch.rand(vocab + draw(st.sampled_from([0, 3])), generator=g) < density
            kw["word_start_table"] = table.to(draw(st.sampled_from([torch.bool, torch.uint8])))
        else:
            kw["word_starts"] = (torch.rand(batch, length, generator=g) < density).to(
                draw(st.sampled_from(MASK_DTYPES))
            )
    if budget == "bernoulli" and vocab <= TABLE_VOCAB_LIMIT and draw(st.integers(0, 3)) == 0:
        weights = torch.rand(vocab, generator=g) * 3
        weights[torch.rand(vocab, generator=g) < 0.2] = 0.0
        kw["token_weights"] = weights.to(draw(st.sampled_from([torch.float32, torch.float64, torch.float16])))
    mask_replace = _probability(draw)
    kw.update(
        mask_token_id=MASK_ID,
        vocab_size=vocab,
        strategy=strategy,
        budget=budget,
        mlm_probability=_probability(draw),
        mask_replace_prob=mask_replace,
        random_replace_prob=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0 - mask_replace))),
        seed=draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(-(2**70), 2**70))),
    )
    if strategy == "span" or draw(st.booleans()):
        kw["span_distribution"] = draw(st.sampled_from(["geometric", "uniform"]))
        kw["span_p"] = draw(st.floats(0.01, 1.0))
        kw["max_span_words"] = draw(st.one_of(st.integers(1, 12), st.just(256)))
    keys = draw(st.sampled_from(["none", "list", "tensor", "range"]))
    if keys == "list":
        kw["row_keys"] = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=batch, max_size=batch))
    elif keys == "tensor":
        kw["row_keys"] = torch.randint(-(2**31), 2**31 - 1, (batch,), generator=g).to(
            draw(st.sampled_from([torch.int32, torch.int64]))
        )
    elif keys == "range":
        start = draw(st.integers(0, 2**40))
        kw["row_keys"] = range(start, start + batch)
    ids = ids.to(draw(st.sampled_from([torch.int64, torch.int32])))
    layout = draw(st.sampled_from(["contiguous", "transposed", "1d"]))
    if layout == "transposed":  # same values, column-major strides
        ids = ids.t().contiguous().t()
    elif layout == "1d" and batch == 1:
        ids = ids[0]
        for key in ("attention_mask", "special_tokens_mask", "word_starts"):
            if key in kw:
                kw[key] = kw[key][0]
    return {"input_ids": ids, **kw}


def _rows(t) -> torch.Tensor:
    t = t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))
    return t.reshape(1, -1) if t.dim() == 1 else t


def _mask_eligible(kw: dict) -> torch.Tensor:
    """Independent oracle: not special (mask, else ids), not padding, not the pad id."""
    ids = _rows(kw["input_ids"]).long()
    if kw.get("special_tokens_mask") is not None:
        special = _rows(kw["special_tokens_mask"]) != 0
    elif kw.get("special_token_ids"):
        special = torch.isin(ids, torch.tensor([int(i) for i in kw["special_token_ids"]], dtype=torch.int64))
    else:
        special = torch.zeros_like(ids, dtype=torch.bool)
    eligible = ~special
    if kw.get("attention_mask") is not None:
        eligible &= _rows(kw["attention_mask"]) != 0
    if kw.get("pad_token_id") is not None:
        eligible &= ids != kw["pad_token_id"]
    return eligible


def _word_consistent(selected: torch.Tensor, eligible: torch.Tensor, starts: torch.Tensor) -> None:
    """A word (a start, then eligible non-starts) is selected entirely or not at all."""
    previous_eligible = torch.cat([torch.zeros_like(eligible[:, :1]), eligible[:, :-1]], 1)
    starts = starts | ~previous_eligible
    same_word = eligible[:, 1:] & ~starts[:, 1:]
    assert torch.equal(selected[:, 1:][same_word], selected[:, :-1][same_word]), "a word was partly selected"


def check_mask_result(kw: dict, result) -> None:
    """Every invariant of a ``mask_tokens`` result for the call ``kw``."""
    masked, labels = result
    source = kw["input_ids"]
    source = source if isinstance(source, torch.Tensor) else torch.as_tensor(np.asarray(source))
    assert isinstance(masked, torch.Tensor) and isinstance(labels, torch.Tensor)
    assert masked.shape == source.shape and labels.shape == source.shape, "output shape differs from input_ids"
    assert masked.dtype == source.dtype, f"masked ids are {masked.dtype}, input_ids {source.dtype}"
    assert labels.dtype == torch.int64
    ids, masked, labels = _rows(source).long(), _rows(masked).long(), _rows(labels)
    vocab = int(kw["vocab_size"])
    eligible = _mask_eligible(kw)
    selected = labels != IGNORE
    assert not (selected & ~eligible).any(), "a special / padding / pad-id position was selected"
    assert torch.equal(labels[selected], ids[selected]), "labels must hold the original id"
    assert torch.equal(masked[~selected], ids[~selected]), "an unselected position changed"
    changed = masked[selected]
    original = ids[selected]
    mask_id = int(kw["mask_token_id"])
    assert ((changed == mask_id) | ((changed >= 0) & (changed < vocab))).all(), "a replaced id is out of range"
    p, p_mask, p_random = (
        float(kw.get(k, d))
        for k, d in (("mlm_probability", 0.15), ("mask_replace_prob", 0.8), ("random_replace_prob", 0.1))
    )
    if p_mask == 1.0:
        assert (changed == mask_id).all(), "mask_replace_prob=1 must write the mask id at every selected position"
    if p_random == 0.0:
        assert ((changed == mask_id) | (changed == original)).all(), "random ids with random_replace_prob=0"
        if p_mask == 0.0:
            assert torch.equal(changed, original), "selected ids changed with no replacement probability"
    if p == 0.0:
        assert not selected.any(), "mlm_probability=0 selected tokens"
    strategy, budget = kw.get("strategy", "token"), kw.get("budget", "bernoulli")
    if strategy != "token":
        if kw.get("word_starts") is not None:
            starts = _rows(kw["word_starts"]) != 0
        else:
            table = kw["word_start_table"].to(torch.bool)
            starts = table[ids]
        _word_consistent(selected, eligible, starts)
    if budget == "exact":
        k = torch.floor(eligible.sum(1).double() * p + 0.5).long()
        count = selected.sum(1)
        assert (count <= k).all(), f"exact budget exceeded: {count.tolist()} > {k.tolist()}"
        if strategy == "token":
            assert torch.equal(count, k), f"exact token budget missed: {count.tolist()} != {k.tolist()}"
    elif p == 1.0 and strategy in ("token", "whole_word") and kw.get("token_weights") is None:
        assert torch.equal(selected, eligible), "mlm_probability=1 must select every eligible token"


def _call_mask(kw: dict, backend: str):
    return fastmask.mask_tokens(**kw, backend=backend)


@fuzz(100)
@given(mask_calls())
def test_mask_tokens_valid_invariants_and_cpp_bit_identity(kw):
    _count("mask_tokens_valid")
    require_backend("cpp")
    before = _snapshot(kw)
    expected = _call_mask(kw, "reference")
    check_mask_result(kw, expected)
    got = _call_mask(kw, "cpp")
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), "cpp differs from the reference"
    again = _call_mask(kw, "cpp")
    assert torch.equal(again[0], got[0]) and torch.equal(again[1], got[1]), "not deterministic"
    _assert_unmodified(kw, before)


@pytest.mark.triton
@fuzz(12)
@given(mask_calls(max_batch=3, max_length=24))
def test_mask_tokens_triton_bit_identity(kw):
    _count("mask_tokens_triton")
    require_backend("triton", TRITON_DEVICE)
    before = _snapshot(kw)
    expected = _call_mask(kw, "reference")
    got = _cpu(_call_mask(_on_device(kw, TRITON_DEVICE), "triton"))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), "triton differs from the reference"
    check_mask_result(kw, got)
    _assert_unmodified(kw, before)


# ----------------------------------------------------------------------------- mask_tokens: bad input
BAD_PROBABILITIES = [-0.1, 1.5, float("nan"), float("inf"), -float("inf"), "0.1", None, True, 1 + 1e-9]
BAD_INTS = [1.5, 2.0, "3", None, True, float("nan")]


def _ids_tensor(kw) -> torch.Tensor:
    return _rows(kw["input_ids"])


def _set_position(ids: torch.Tensor, value: int, data) -> torch.Tensor:
    out = ids.clone()
    flat = out.view(-1) if out.is_contiguous() else None
    if flat is None:
        out = out.contiguous()
        flat = out.view(-1)
    flat[data.draw(st.integers(0, flat.numel() - 1), label="position")] = value
    return out


MASK_CORRUPTIONS = (
    "ids_float",
    "ids_small_int",
    "ids_list",
    "ids_3d",
    "ids_empty",
    "ids_negative",
    "ids_too_large",
    "mask_token_id",
    "vocab_size",
    "vocab_below_ids",
    "probability",
    "replace_sum",
    "choice",
    "max_span_words",
    "special_tokens_mask",
    "attention_mask",
    "word_starts",
    "word_start_table",
    "special_token_ids",
    "pad_token_id",
    "token_weights",
    "seed",
    "row_keys",
    "backend",
)
# Corruptions of scalar arguments only: safe to apply on top of any other one.
MASK_SCALAR_CORRUPTIONS = (
    "mask_token_id",
    "vocab_size",
    "probability",
    "replace_sum",
    "choice",
    "max_span_words",
    "special_token_ids",
    "pad_token_id",
    "seed",
    "backend",
)


def _corrupt_mask_call(kw: dict, data, kind: str) -> tuple[dict, tuple, bool]:
    """Corruption ``kind`` of a valid call: ``(kwargs, names any of which the error must contain, must_raise)``."""
    kw = dict(kw)
    ids = kw["input_ids"]
    vocab = kw["vocab_size"]
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        vocab = 1000  # already corrupted: a stand-in for the values derived from it
    if kind == "ids_float":
        kw["input_ids"] = ids.to(data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16])))
        return kw, ("input_ids",), True
    if kind == "ids_small_int":
        kw["input_ids"] = ids.clamp(0, 127).to(
            data.draw(st.sampled_from([torch.int16, torch.int8, torch.uint8, torch.bool]))
        )
        return kw, ("input_ids",), False
    if kind == "ids_list":
        kw["input_ids"] = ids.tolist()
        return kw, ("input_ids",), False
    if kind == "ids_3d":
        kw["input_ids"] = ids.reshape(1, 1, -1)
        return kw, ("input_ids",), True
    if kind == "ids_empty":
        kw["input_ids"] = ids.reshape(-1)[:0].reshape(data.draw(st.sampled_from([(0,), (0, 3), (2, 0)])))
        for key in ("attention_mask", "special_tokens_mask", "word_starts", "row_keys"):
            kw.pop(key, None)
        return kw, ("input_ids",), True
    if kind == "ids_negative":
        value = data.draw(st.sampled_from([-1, -100, -(2**31)]))
        kw["input_ids"] = _set_position(_ids_tensor(kw), value, data).reshape(ids.shape).to(ids.dtype)
        return kw, ("input_ids",), True
    if kind == "ids_too_large":
        top = torch.iinfo(ids.dtype).max
        value = data.draw(st.sampled_from([vocab, vocab + 7, top]))
        if value > top:
            value = top
        if value < vocab:
            return kw, ("input_ids",), False
        kw["input_ids"] = _set_position(_ids_tensor(kw), value, data).reshape(ids.shape).to(ids.dtype)
        return kw, ("input_ids", "vocab_size"), True
    if kind == "mask_token_id":
        kw["mask_token_id"] = data.draw(st.sampled_from([-1, vocab, vocab + 1, 2**31, 2**63, 2**70] + BAD_INTS))
        return kw, ("mask_token_id",), True
    if kind == "vocab_size":
        kw["vocab_size"] = data.draw(st.sampled_from([0, -5, 2**40, 2**70] + BAD_INTS))
        return kw, ("vocab_size",), True
    if kind == "vocab_below_ids":  # ids and the mask id past a too-small vocabulary
        kw["vocab_size"] = data.draw(st.sampled_from([1, 3]))
        return kw, ("vocab_size", "input_ids", "mask_token_id"), True
    if kind == "probability":
        name = data.draw(st.sampled_from(["mlm_probability", "mask_replace_prob", "random_replace_prob", "span_p"]))
        kw[name] = data.draw(st.sampled_from(BAD_PROBABILITIES + ([0.0] if name == "span_p" else [])))
        if name == "mask_replace_prob" and kw[name] == 1 + 1e-9:
            kw["random_replace_prob"] = 0.0
        if kw[name] == 0.0:  # span_p=0: no geometric span length, but unused by the other strategies
            return (
                kw,
                (name,),
                kw.get("strategy", "token") == "span" and kw.get("span_distribution", "geometric") == "geometric",
            )
        return kw, (name,), True
    if kind == "replace_sum":
        kw["mask_replace_prob"], kw["random_replace_prob"] = data.draw(
            st.sampled_from([(0.7, 0.5), (1.0, 0.01), (0.5, 0.6)])
        )
        return kw, ("mask_replace_prob", "random_replace_prob"), True
    if kind == "choice":
        name = data.draw(st.sampled_from(["strategy", "budget", "span_distribution"]))
        kw[name] = data.draw(st.sampled_from(["words", "TOKEN", "", None, 3]))
        return kw, (name,), True
    if kind == "max_span_words":
        kw["max_span_words"] = data.draw(st.sampled_from([0, -1, 257, 2**70] + BAD_INTS))
        return kw, ("max_span_words",), True
    batch_shape = tuple(_ids_tensor(kw).shape)
    if kind in ("special_tokens_mask", "attention_mask", "word_starts"):
        how = data.draw(st.sampled_from(["longer", "shorter", "float", "list", "3d"]))
        b, n = batch_shape
        if how == "shorter" and n == 1:
            how = "longer"
        base = torch.ones(b, n, dtype=torch.bool)
        bad = {
            "longer": torch.ones(b, n + 1, dtype=torch.bool),
            "shorter": torch.ones(b, n - 1, dtype=torch.bool) if n > 1 else None,
            "float": base.float(),
            "list": base.tolist(),
            "3d": base[None],
        }[how]
        kw[kind] = bad
        return kw, (kind,), how != "list"
    if kind == "word_start_table":
        how = data.draw(st.sampled_from(["short", "2d", "float", "empty"]))
        kw["strategy"] = data.draw(st.sampled_from(["whole_word", "span"]))
        kw.pop("word_starts", None)
        if kw["strategy"] == "span":
            kw["span_p"] = max(kw.get("span_p", 0.2), 0.01)
        # "short": a table without the largest id (at most 2**20 entries: ids reach 2**31)
        size = min(int(_ids_tensor(kw).max()), 2**20) if how == "short" else vocab
        bad = {
            "short": torch.ones(max(size, 0), dtype=torch.bool),
            "2d": torch.ones(1, min(vocab, 2**20), dtype=torch.bool),
            "float": torch.ones(min(vocab, 2**20)),
            "empty": torch.ones(0, dtype=torch.bool),
        }[how]
        kw["word_start_table"] = bad
        return kw, ("word_start_table",), True
    if kind == "special_token_ids":
        kw.pop("special_tokens_mask", None)
        # No id in [2**20, 2**31]: the op may build (and cache, several at a time) a per-id table
        # reaching the largest special id, GiBs each: an out-of-memory risk for CI.
        beyond = [vocab, vocab + 3] if vocab <= TABLE_VOCAB_LIMIT else []
        value = data.draw(st.sampled_from([-1, -(2**40), 2**40, 2**70, 1.5, "1", None] + beyond))
        kw["special_token_ids"] = [1, value]
        must = not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31)
        return kw, ("special_token_ids",), must
    if kind == "pad_token_id":
        value = data.draw(st.sampled_from([1.5, "0", 2**63, 2**70, -(2**70), -5, vocab + 2]))
        kw["pad_token_id"] = value
        return kw, ("pad_token_id",), not isinstance(value, int)
    if kind == "token_weights":
        kw["budget"] = "bernoulli"
        how = data.draw(st.sampled_from(["short", "negative", "nan", "inf", "int", "2d", "exact"]))
        size = min(vocab, 2**20)
        weights = torch.ones(size)
        if how == "short":
            weights = torch.ones(max(min(int(_ids_tensor(kw).max()), 2**20), 0))  # misses the largest id
        elif how == "negative":
            weights[data.draw(st.integers(0, size - 1))] = -1.0
        elif how == "nan":
            weights[data.draw(st.integers(0, size - 1))] = float("nan")
        elif how == "inf":
            weights[data.draw(st.integers(0, size - 1))] = float("inf")
        elif how == "int":
            weights = weights.long()
        elif how == "2d":
            weights = weights[None]
        elif how == "exact":
            kw["budget"] = "exact"
        kw["token_weights"] = weights
        if how == "exact":
            return kw, ("token_weights", "budget"), True
        return kw, ("token_weights",), True
    if kind == "seed":
        value = data.draw(st.sampled_from([1.5, "1", None, float("nan"), True, 2**200, -(2**200)]))
        kw["seed"] = value
        return kw, ("seed",), not (isinstance(value, int) and not isinstance(value, bool))
    if kind == "row_keys":
        b = batch_shape[0]
        how = data.draw(st.sampled_from(["count", "floats", "float_tensor", "strings", "huge", "2d"]))
        bad = {
            "count": list(range(b + 1)),
            "floats": [0.5 + i for i in range(b)],
            "float_tensor": torch.arange(b, dtype=torch.float32),
            "strings": [str(i) for i in range(b)],
            "huge": [2**64 + i for i in range(b)],
            "2d": torch.arange(b).reshape(b, 1),
        }[how]
        kw["row_keys"] = bad
        return kw, ("row_keys",), how != "2d"
    if kind == "backend":
        kw["backend"] = data.draw(st.sampled_from(["cuda", "", None, 3, "CPP"]))
        return kw, ("backend",), True
    raise AssertionError(kind)


def _note_call(kw: dict) -> None:
    """Hypothesis' note of a corrupted call: its values, tensors as dtype and shape."""
    note(
        f"corrupted call: { {k: (v if not isinstance(v, torch.Tensor) else (v.dtype, tuple(v.shape))) for k, v in kw.items()} }"
    )


def _bad_mask_call(kw, data, backend, kind, device="cpu"):
    kw, names, must_raise = _corrupt_mask_call(kw, data, kind)
    if data.draw(st.integers(0, 3), label="second corruption?") == 0:
        second = data.draw(st.sampled_from(MASK_SCALAR_CORRUPTIONS), label="second corruption")
        kw, names2, must2 = _corrupt_mask_call(kw, data, second)
        names, must_raise = names + names2, must_raise or must2
    kw.setdefault("backend", backend)
    _note_call(kw)
    snapshot = _snapshot(kw)
    clear_error_or(
        lambda: _cpu(fastmask.mask_tokens(**_on_device(kw, device))),
        names,
        must_raise,
        lambda result: check_mask_result(kw, result),
    )
    _assert_unmodified(kw, snapshot)


@pytest.mark.parametrize("kind", MASK_CORRUPTIONS)
@fuzz(8)
@given(kw=mask_calls(), data=st.data(), backend=st.sampled_from(["reference", "cpp"]))
def test_mask_tokens_bad_input(kind, kw, data, backend):
    _count("mask_tokens_bad")
    require_backend("cpp")
    _bad_mask_call(kw, data, backend, kind)


@pytest.mark.triton
@fuzz(10)
@given(mask_calls(max_batch=3, max_length=24), st.data())
def test_mask_tokens_triton_bad_input(kw, data):
    _count("mask_tokens_triton_bad")
    require_backend("triton", TRITON_DEVICE)
    _bad_mask_call(kw, data, "triton", data.draw(st.sampled_from(MASK_CORRUPTIONS), label="corruption"), TRITON_DEVICE)


# ============================================================================= losses
LOSS_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_NO_INT64 = (2**70, 2**63, -(2**63) - 1)  # ignore_index values outside int64: no label can equal them


def _loss_options(draw, labels: torch.Tensor, ignore_index: int) -> dict:
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    options = dict(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0.0, 1.0))),
        z_loss=draw(st.sampled_from([0.0, 1e-4, 1e-2])),
    )
    if reduction == "mean" and draw(st.integers(0, 2)) == 0:
        count = max(1, int((labels != ignore_index).sum())) + draw(st.integers(0, 5))
        options["num_items_in_batch"] = draw(
            st.sampled_from(
                [
                    count,
                    float(count),
                    torch.tensor(count),
                    torch.tensor(float(count)),
                    np.int64(count),
                ]
            )
        )
    return options


def _labels(draw, g, batch_shape, vocab: int, ignore_index: int) -> torch.Tensor:
    labels = torch.randint(0, vocab, batch_shape, generator=g)
    rate = draw(st.sampled_from([0.0, 0.5, 0.85, 1.0]))
    labels[torch.rand(batch_shape, generator=g) < rate] = ignore_index
    return labels.to(draw(st.sampled_from([torch.int64, torch.int32])))


def _batch_shape(draw, max_rows: int) -> tuple:
    if draw(st.booleans()):
        return (draw(st.integers(1, 3)), draw(st.integers(1, 5)))
    return (draw(st.integers(1, max_rows)),)


@st.composite
def ce_calls(draw, max_rows: int = 12, max_vocab: int = 40, dtypes=LOSS_DTYPES):
    """Valid ``masked_cross_entropy`` kwargs (``logits`` does not require grad yet)."""
    g = _seeded(draw)
    batch_shape = _batch_shape(draw, max_rows)
    vocab = draw(st.integers(1, max_vocab))
    dtype = draw(st.sampled_from(dtypes))
    ignore_index = draw(st.sampled_from([-100, -1, 0, vocab - 1, 2**31 - 1]))
    labels = _labels(draw, g, batch_shape, vocab, ignore_index)
    options = _loss_options(draw, labels, ignore_index)
    values = torch.randn(*batch_shape, vocab, generator=g) * draw(st.sampled_from([0.1, 3.0, 30.0]))
    if options["label_smoothing"] == 0.0 and vocab > 1 and draw(st.integers(0, 3)) == 0:
        # -inf entries (a vocabulary mask), never at a target nor a whole row
        keep = torch.where(labels.long() == ignore_index, 0, labels.long()).clamp(0, vocab - 1)
        drop = torch.rand(values.shape, generator=g) < 0.4
        drop.scatter_(-1, keep.unsqueeze(-1), False)
        values[drop] = float("-inf")
    layout = draw(st.sampled_from(["contiguous", "class_strided", "row_strided"]))
    if layout == "class_strided":  # classes not contiguous: a copy is made
        logits = values.to(dtype).movedim(-1, 0).contiguous().movedim(0, -1)
    elif layout == "row_strided":  # rows further apart than V: read in place
        wide = torch.zeros(*batch_shape, vocab + 5, dtype=dtype)
        wide[..., 2 : 2 + vocab] = values.to(dtype)
        logits = wide[..., 2 : 2 + vocab]
    else:
        logits = values.to(dtype)
    return dict(logits=logits, labels=labels, **options)


def _oracle_ignore(options: dict) -> dict:
    """The oracle's options: an ignore_index outside int64 matches no label."""
    options = dict(options)
    if options.get("ignore_index", IGNORE) in _NO_INT64 or not -(2**63) <= options.get("ignore_index", IGNORE) < 2**63:
        options["ignore_index"] = -(2**63)
    return options


def _close(got: torch.Tensor, want: torch.Tensor, *, rtol: float, atol: float, what: str) -> None:
    """``|got - want| <= atol + rtol |want|`` where finite; NaN and +-inf in the same places."""
    got64, want64 = got.detach().to(torch.float64).cpu(), want.detach().to(torch.float64).cpu()
    assert got64.shape == want64.shape, f"{what}: shape {tuple(got64.shape)} != {tuple(want64.shape)}"
    nan_got, nan_want = torch.isnan(got64), torch.isnan(want64)
    assert torch.equal(nan_got, nan_want), (
        f"{what}: NaN at {nan_got.nonzero().tolist()[:5]}, torch at {nan_want.nonzero().tolist()[:5]}"
    )
    finite = torch.isfinite(want64)
    infinite = ~finite & ~nan_want
    assert torch.equal(got64[infinite], want64[infinite]), f"{what}: infinities differ from torch's"
    assert torch.isfinite(got64[finite]).all(), f"{what}: non-finite where torch is finite"
    got_f, want_f = got64[finite], want64[finite]
    excess = (got_f - want_f).abs() - (atol + rtol * want_f.abs())
    if excess.numel() and float(excess.max()) > 0:
        worst = int(excess.argmax())
        raise AssertionError(
            f"{what}: over tolerance (rtol={rtol}, atol={atol:.3g}) by {float(excess.max()):.3g}; worst finite element "
            f"{worst}: got {float(got_f[worst]):.9g}, want {float(want_f[worst]):.9g}"
        )


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gradient_unit(kw: dict, grad_output: torch.Tensor) -> float:
    """The size of the terms a row's logit gradient is the difference of (``softmax - onehot``,
    times the reduction's scale): fp32 math rounds relative to it, not to the (possibly tiny,
    e.g. V=1) difference, so the gradient's absolute tolerance scales with it too."""
    scale = float(grad_output.abs().max()) if grad_output.numel() else 0.0
    if kw.get("reduction", "mean") == "mean":
        labels = kw["labels"].long()
        divisor = kw.get("num_items_in_batch")
        divisor = float(divisor) if divisor is not None else float((labels != kw.get("ignore_index", IGNORE)).sum())
        scale = scale / divisor if divisor > 0 else 0.0
    return scale * (1.0 + 2.0 * float(kw.get("z_loss", 0.0)) * 100.0)


def check_ce(
    kw: dict, backend: str, *, inplace: bool, with_grad: bool, module: bool = False, device: str = "cpu"
) -> None:
    """fastmask (functional or MaskedLMLoss) against the float64 oracle: loss and gradient."""
    logits, labels = kw["logits"], kw["labels"]
    options = {k: v for k, v in kw.items() if k not in ("logits", "labels")}
    tol = TOLERANCES[logits.dtype]
    want_in = logits.detach().to(torch.float64).requires_grad_()
    want = reference_masked_cross_entropy(want_in, labels, **_oracle_ignore(options))
    before = _snapshot(kw)
    base = logits.detach().clone().to(device).requires_grad_(with_grad)
    x = base * 1 if inplace and with_grad else base  # in-place backward needs a non-leaf
    on_device = labels.to(device)
    if module:
        num_items = options.pop("num_items_in_batch", None)
        loss_fn = fastmask.MaskedLMLoss(inplace_backward=inplace, backend=backend, **options)
        call = lambda: loss_fn(x, on_device, num_items_in_batch=num_items)  # noqa: E731
    else:
        call = lambda: fastmask.masked_cross_entropy(x, on_device, inplace_backward=inplace, backend=backend, **options)  # noqa: E731
    if with_grad:
        got = call()
    else:
        with torch.no_grad():
            got = call()
        assert got.grad_fn is None
    assert got.dtype == _loss_dtype(logits.dtype) and got.shape == want.shape, f"loss {got.dtype} {tuple(got.shape)}"
    _close(got, want, rtol=tol["loss_rtol"], atol=tol["loss_atol"], what=f"{backend} loss")
    if with_grad:
        grad_output = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        want.backward(grad_output)
        got.backward(grad_output.to(got.dtype).to(device))
        assert base.grad is not None and base.grad.dtype == logits.dtype and base.grad.shape == logits.shape
        scale = max(float(want_in.grad.abs().max()), _gradient_unit(kw, grad_output)) or 1.0
        grad = base.grad.cpu()
        _close(grad, want_in.grad, rtol=tol["grad_rtol"], atol=tol["grad_atol"] * scale, what=f"{backend} grad")
        ignored = labels.long() == options.get("ignore_index", IGNORE)
        assert bool((grad[ignored] == 0).all()), "ignored rows must get a zero gradient"
    _assert_unmodified(kw, before)


@fuzz(80)
@given(ce_calls(), st.sampled_from(["reference", "cpp"]), st.booleans(), st.integers(0, 5), st.booleans())
def test_masked_cross_entropy_matches_torch(kw, backend, inplace, no_grad, module):
    _count("masked_cross_entropy_valid")
    require_backend(backend)
    if kw["logits"].dtype == torch.float64:
        backend = "reference" if backend == "cpp" else backend  # explicit cpp has no float64 kernel
    check_ce(kw, backend, inplace=inplace, with_grad=no_grad != 0, module=module)


@st.composite
def fused_calls(draw, max_rows: int = 10, max_width: int = 12, max_vocab: int = 40, dtypes=LOSS_DTYPES):
    """Valid ``fused_masked_lm_loss`` kwargs (no tensor requires grad yet)."""
    g = _seeded(draw)
    batch_shape = _batch_shape(draw, max_rows)
    width, vocab = draw(st.integers(1, max_width)), draw(st.integers(1, max_vocab))
    dtype = draw(st.sampled_from(dtypes))
    ignore_index = draw(st.sampled_from([-100, -1, 0, vocab - 1]))
    labels = _labels(draw, g, batch_shape, vocab, ignore_index)
    options = _loss_options(draw, labels, ignore_index)
    hidden = torch.randn(*batch_shape, width, generator=g).to(dtype)
    weight = (torch.randn(vocab, width, generator=g) / width**0.5 * 2).to(dtype)
    if draw(st.booleans()):
        weight = weight.t().contiguous().t()  # column-major weight (same values)
    bias = (torch.randn(vocab, generator=g) * 0.5).to(dtype) if draw(st.booleans()) else None
    rows = labels.numel()
    chunk = draw(st.one_of(st.none(), st.integers(1, rows + 3), st.just(2**40)))
    return dict(hidden=hidden, weight=weight, labels=labels, bias=bias, chunk_size=chunk, **options)


_FUSED_TENSORS = ("hidden", "weight", "bias")


def check_fused(kw: dict, backend: str, needs: tuple, device: str = "cpu") -> None:
    tensors = {k: kw[k] for k in _FUSED_TENSORS}
    options = {k: v for k, v in kw.items() if k not in _FUSED_TENSORS + ("labels",)}
    dtype = kw["hidden"].dtype
    tol = FUSED_TOLERANCES[dtype]
    want_in = {k: None if v is None else v.detach().to(torch.float64).requires_grad_() for k, v in tensors.items()}
    oracle_options = _oracle_ignore({k: v for k, v in options.items() if k != "chunk_size"})
    want = reference_fused_masked_lm_loss(
        want_in["hidden"], want_in["weight"], kw["labels"], want_in["bias"], **oracle_options
    )
    before = _snapshot(kw)
    got_in = {
        k: None if v is None else v.detach().clone().to(device).requires_grad_(need)
        for (k, v), need in zip(tensors.items(), needs)
    }
    got = fastmask.fused_masked_lm_loss(
        got_in["hidden"], got_in["weight"], kw["labels"].to(device), got_in["bias"], backend=backend, **options
    )
    assert got.dtype == _loss_dtype(dtype) and got.shape == want.shape
    _close(got, want, rtol=tol["loss_rtol"], atol=tol["loss_atol"], what=f"{backend} fused loss")
    if any(t is not None and t.requires_grad for t in got_in.values()):
        grad_output = torch.rand(want.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
        want.backward(grad_output)
        got.backward(grad_output.to(got.dtype).to(device))
        for name in _FUSED_TENSORS:
            g, w = got_in[name], want_in[name]
            if g is None or not g.requires_grad:
                continue
            assert g.grad is not None and g.grad.dtype == dtype and g.grad.shape == w.shape, f"grad {name}"
            scale = float(w.grad.abs().max()) or 1.0
            _close(
                g.grad.cpu(),
                w.grad,
                rtol=tol["grad_rtol"],
                atol=tol["grad_atol"] * scale,
                what=f"{backend} grad {name}",
            )
        if got_in["hidden"].requires_grad:
            ignored = kw["labels"].long() == options.get("ignore_index", IGNORE)
            assert bool((got_in["hidden"].grad.cpu()[ignored] == 0).all()), (
                "unlabelled rows of hidden must get a zero gradient"
            )
    _assert_unmodified(kw, before)


@fuzz(40)
@given(fused_calls(), st.sampled_from(["reference", "cpp"]), st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_fused_masked_lm_loss_matches_torch(kw, backend, needs):
    _count("fused_valid")
    require_backend(backend)
    if kw["hidden"].dtype == torch.float64:
        backend = "reference"
    check_fused(kw, backend, needs)


@pytest.mark.triton
@fuzz(8)
@given(
    ce_calls(max_rows=6, max_vocab=20, dtypes=LOSS_DTYPES[:3]),
    fused_calls(max_rows=6, max_width=8, max_vocab=20, dtypes=LOSS_DTYPES[:3]),
    st.booleans(),
)
def test_losses_triton_match_torch(ce_kw, fused_kw, inplace):
    _count("losses_triton")
    require_backend("triton", TRITON_DEVICE)
    check_ce(ce_kw, "triton", inplace=inplace, with_grad=True, device=TRITON_DEVICE)
    check_fused(fused_kw, "triton", (True, True, True), device=TRITON_DEVICE)


# ----------------------------------------------------------------------------- losses: bad input
LOSS_OPTION_CORRUPTIONS = (
    "ignore_index",
    "reduction",
    "label_smoothing",
    "z_loss",
    "num_items",
    "num_items_reduction",
    "global_normalization",
    "backend",
)


def _corrupt_loss_options(kw: dict, data, main: str, kind: Optional[str] = None) -> tuple[dict, tuple, bool]:
    """A corruption of an option shared by the losses (``main``: the logits / hidden key)."""
    kw = dict(kw)
    if kind is None:
        kind = data.draw(st.sampled_from(LOSS_OPTION_CORRUPTIONS), label="option corruption")
    if kind == "ignore_index":
        value = data.draw(st.sampled_from([1.5, "x", None, True, 2**63, 2**70, -(2**63) - 1, np.int64(-100)]))
        kw["ignore_index"] = value
        valid = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if valid and not -(2**63) <= int(value) < 2**63:
            # no label equals it: every label must then be a class id
            kw["labels"] = kw["labels"].clamp(min=0)
        return kw, ("ignore_index",), not valid
    if kind == "reduction":
        kw["reduction"] = data.draw(st.sampled_from(["avg", None, 1, "MEAN", ""]))
        kw.pop("num_items_in_batch", None)
        return kw, ("reduction",), True
    if kind == "label_smoothing":
        kw["label_smoothing"] = data.draw(st.sampled_from(BAD_PROBABILITIES))
        return kw, ("label_smoothing",), True
    if kind == "z_loss":
        kw["z_loss"] = data.draw(st.sampled_from([-1.0, -1e-9, float("nan"), float("inf"), "x", None, True]))
        return kw, ("z_loss",), True
    if kind == "num_items":
        kw["reduction"] = "mean"
        kw.pop("global_normalization", None)
        ignore = kw.get("ignore_index", IGNORE)
        in_range = (
            isinstance(ignore, (int, np.integer)) and not isinstance(ignore, bool) and -(2**63) <= int(ignore) < 2**63
        )
        labels = kw["labels"]
        labelled = int((labels.long() != int(ignore)).sum()) if in_range and isinstance(labels, torch.Tensor) else 1
        choices = [
            float("nan"),
            float("inf"),
            -float("inf"),
            -1,
            -0.5,
            "3",
            True,
            10**400,
            torch.tensor(float("nan")),
            torch.tensor(float("inf")),
            torch.tensor(-2.0),
            torch.tensor([1, 2]),
            torch.tensor(True),
            torch.tensor(3 + 0j),
        ]
        if labelled:
            choices += [0, 0.0, torch.tensor(0)]
        kw["num_items_in_batch"] = data.draw(st.sampled_from(choices))
        return kw, ("num_items_in_batch",), True
    if kind == "num_items_reduction":
        kw["reduction"] = data.draw(st.sampled_from(["sum", "none"]))
        kw["num_items_in_batch"] = 7
        return kw, ("num_items_in_batch",), True
    if kind == "global_normalization":
        if data.draw(st.booleans()):
            kw["global_normalization"] = data.draw(st.sampled_from([1, "yes", None, 0]))
            return kw, ("global_normalization",), True
        kw["reduction"], kw["global_normalization"], kw["num_items_in_batch"] = "mean", True, 5
        return kw, ("global_normalization", "num_items_in_batch"), True
    if kind == "backend":
        kw["backend"] = data.draw(st.sampled_from(["gpu", None, 3, ""]))
        return kw, ("backend",), True
    raise AssertionError(kind)


def _maybe_corrupt_loss_option(kw: dict, data, main: str, names: tuple, must_raise: bool) -> tuple[dict, tuple, bool]:
    """One time in four, a second corruption (a shared loss option) on top of a first one."""
    if data.draw(st.integers(0, 3), label="second corruption") == 0:
        kw, names2, must2 = _corrupt_loss_options(kw, data, main)
        names, must_raise = names + names2, must_raise or must2
    return kw, names, must_raise


def _corrupt_labels(kw: dict, data, main: str) -> tuple[dict, tuple, bool]:
    kw = dict(kw)
    labels = kw["labels"]
    vocab = kw[main].shape[-1] if main == "logits" else kw["weight"].shape[0]
    kind = data.draw(st.sampled_from(["dtype", "shape", "range", "list"]), label="labels corruption")
    if kind == "dtype":
        dtype = data.draw(st.sampled_from([torch.float32, torch.int16, torch.uint8, torch.bool]))
        kw["labels"] = labels.clamp(0, 1 if dtype == torch.bool else 100).to(dtype)
        return kw, ("labels",), dtype in (torch.float32, torch.bool)
    if kind == "shape":
        how = data.draw(st.sampled_from(["short", "extra_dim", "flat", "scalar"]))
        if how == "short" and labels.shape[-1] > 1:
            kw["labels"] = labels[..., :-1]
        elif how == "flat" and labels.dim() == 2:
            kw["labels"] = labels.reshape(-1)
        elif how == "scalar":
            kw["labels"] = labels.reshape(-1)[0]
        else:
            kw["labels"] = labels.unsqueeze(-1)
        return kw, ("labels",), True
    if kind == "range":
        ignore = kw.get("ignore_index", IGNORE)
        value = data.draw(
            st.sampled_from(
                [vocab, vocab + 5, 2**31 - 1, -1, -101, -(2**31)]
                + ([2**40, -(2**40)] if labels.dtype == torch.int64 else [])
            )
        )
        if value == ignore:
            value = vocab
        flat = labels.clone().reshape(-1)
        flat[data.draw(st.integers(0, flat.numel() - 1))] = value
        kw["labels"] = flat.reshape(labels.shape)
        return kw, ("labels",), True
    kw["labels"] = labels.tolist()
    return kw, ("labels",), True


CE_CORRUPTIONS = ("logits", "labels", "inplace") + LOSS_OPTION_CORRUPTIONS


def _corrupt_ce(kw: dict, data, kind: str) -> tuple[dict, tuple, bool, bool]:
    """``(kwargs, names, must_raise, logits requires grad)``."""
    if kind == "labels":
        return (*_corrupt_labels(kw, data, "logits"), False)
    if kind in LOSS_OPTION_CORRUPTIONS:
        return (*_corrupt_loss_options(kw, data, "logits", kind), False)
    kw = dict(kw)
    logits = kw["logits"]
    if kind == "inplace":
        if data.draw(st.booleans()):
            kw["inplace_backward"] = data.draw(st.sampled_from([1, "yes", None, 0]))
            return kw, ("inplace_backward",), True, False
        kw["inplace_backward"] = True  # on a leaf that requires grad
        return kw, ("inplace_backward",), True, True
    how = data.draw(
        st.sampled_from(["int", "bool", "complex", "1d", "0d", "no_classes", "no_rows", "list", "nonfinite"])
    )
    if how == "int":
        kw["logits"] = logits.to(data.draw(st.sampled_from([torch.int64, torch.int32])))
    elif how == "bool":
        kw["logits"] = logits > 0
    elif how == "complex":
        kw["logits"] = logits.to(torch.float32).to(torch.complex64)
    elif how == "1d":
        kw["logits"] = logits.reshape(-1)
    elif how == "0d":
        kw["logits"] = logits.reshape(-1)[0]
    elif how == "no_classes":
        kw["logits"] = logits[..., :0]
    elif how == "no_rows":
        kw["logits"], kw["labels"] = logits[:0], kw["labels"][:0]
    elif how == "list":
        kw["logits"] = logits.tolist()
    else:  # NaN / inf logits: torch's result (NaN / inf where torch has them)
        values = logits.clone()
        flat = values.view(-1) if values.is_contiguous() else None
        values = values.contiguous() if flat is None else values
        flat = values.view(-1)
        for _ in range(data.draw(st.integers(1, 3))):
            flat[data.draw(st.integers(0, flat.numel() - 1))] = data.draw(
                st.sampled_from([float("nan"), float("inf"), -float("inf")])
            )
        kw["logits"] = values
        return kw, ("logits",), False, data.draw(st.booleans())
    return kw, ("logits",), True, False


def check_ce_result(kw: dict, got, *, nonfinite_ok: bool = True) -> None:
    logits = kw["logits"]
    labels = kw["labels"]
    labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    options = {
        k: v
        for k, v in kw.items()
        if k not in ("logits", "labels", "inplace_backward", "backend", "global_normalization")
    }
    if isinstance(options.get("num_items_in_batch"), torch.Tensor):
        options["num_items_in_batch"] = float(options["num_items_in_batch"])
    if isinstance(options.get("ignore_index"), np.integer):
        options["ignore_index"] = int(options["ignore_index"])
    want = reference_masked_cross_entropy(logits.detach().to(torch.float64), labels.long(), **_oracle_ignore(options))
    tol = TOLERANCES[logits.dtype]
    assert isinstance(got, torch.Tensor) and got.dtype == _loss_dtype(logits.dtype)
    _close(got, want, rtol=tol["loss_rtol"], atol=tol["loss_atol"], what="loss")


def _loss_call(kw: dict, module: bool, leaf_grad: bool):
    kw = dict(kw)
    logits = kw.pop("logits")
    labels = kw.pop("labels")
    if isinstance(logits, torch.Tensor) and logits.is_floating_point() and leaf_grad:
        logits = logits.detach().clone().requires_grad_()
    elif isinstance(logits, torch.Tensor) and logits.is_floating_point():
        logits = logits.detach().clone().requires_grad_() * 1  # a non-leaf, as a model's logits
    if not module:
        return lambda: fastmask.masked_cross_entropy(logits, labels, **kw)
    num_items = kw.pop("num_items_in_batch", None)
    return lambda: fastmask.MaskedLMLoss(**kw)(logits, labels, num_items)


@pytest.mark.parametrize("kind", CE_CORRUPTIONS)
@fuzz(12)
@given(
    kw=ce_calls(max_rows=8, max_vocab=30),
    data=st.data(),
    backend=st.sampled_from(["reference", "cpp"]),
    module=st.booleans(),
)
def test_masked_cross_entropy_bad_input(kind, kw, data, backend, module):
    _count("masked_cross_entropy_bad")
    require_backend(backend)
    kw = dict(kw, backend="reference" if kw["logits"].dtype == torch.float64 else backend)
    kw, names, must_raise, leaf_grad = _corrupt_ce(kw, data, kind)
    kw, names, must_raise = _maybe_corrupt_loss_option(kw, data, "logits", names, must_raise)
    _note_call(kw)
    snapshot = _snapshot(kw)
    clear_error_or(_loss_call(kw, module, leaf_grad), names, must_raise, lambda got: check_ce_result(kw, got))
    _assert_unmodified(kw, snapshot)


FUSED_CORRUPTIONS = ("hidden", "weight", "bias", "labels", "chunk_size") + LOSS_OPTION_CORRUPTIONS


def _corrupt_fused(kw: dict, data, kind: str) -> tuple[dict, tuple, bool]:
    if kind == "labels":
        return _corrupt_labels(kw, data, "hidden")
    if kind in LOSS_OPTION_CORRUPTIONS:
        return _corrupt_loss_options(kw, data, "hidden", kind)
    kw = dict(kw)
    hidden, weight, bias = kw["hidden"], kw["weight"], kw["bias"]
    vocab, width = weight.shape
    if kind == "hidden":
        how = data.draw(st.sampled_from(["int", "0d", "no_rows", "no_features", "list", "nonfinite"]))
        if how == "int":
            kw["hidden"] = hidden.long()
        elif how == "0d":
            kw["hidden"] = hidden.reshape(-1)[0]
        elif how == "no_rows":
            kw["hidden"], kw["labels"] = hidden[:0], kw["labels"][:0]
        elif how == "no_features":
            kw["hidden"], kw["weight"] = hidden[..., :0], weight[:, :0]
            return kw, ("hidden", "weight"), True
        elif how == "list":
            kw["hidden"] = hidden.tolist()
        else:
            values = hidden.clone().contiguous()
            values.view(-1)[data.draw(st.integers(0, values.numel() - 1))] = data.draw(
                st.sampled_from([float("nan"), float("inf"), -float("inf")])
            )
            kw["hidden"] = values
            return kw, ("hidden",), False
        return kw, ("hidden",), True
    if kind == "weight":
        how = data.draw(st.sampled_from(["1d", "3d", "features", "dtype", "int", "no_classes", "list"]))
        other = torch.float64 if hidden.dtype != torch.float64 else torch.float32
        kw["weight"] = {
            "1d": weight.reshape(-1),
            "3d": weight[None],
            "features": torch.cat([weight, weight[:, :1]], 1),
            "dtype": weight.to(other),
            "int": weight.long(),
            "no_classes": weight[:0],
            "list": weight.tolist(),
        }[how]
        if how == "no_classes":
            kw["bias"] = None
        return kw, ("weight", "hidden"), True
    if kind == "bias":
        base = torch.zeros(vocab, dtype=hidden.dtype) if bias is None else bias
        how = data.draw(st.sampled_from(["short", "2d", "dtype", "int", "list"]))
        other = torch.float64 if hidden.dtype != torch.float64 else torch.float32
        kw["bias"] = {
            "short": base[:-1],
            "2d": base[None],
            "dtype": base.to(other),
            "int": base.long(),
            "list": base.tolist(),
        }[how]
        return kw, ("bias",), True
    value = data.draw(st.sampled_from([0, -1, 1.5, "4", True, None, 2**62, 2**70]))
    kw["chunk_size"] = value
    return (
        kw,
        ("chunk_size",),
        not (value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)),
    )


def check_fused_result(kw: dict, got) -> None:
    options = {k: v for k, v in kw.items() if k not in _FUSED_TENSORS + ("labels", "chunk_size", "backend")}
    if isinstance(options.get("num_items_in_batch"), torch.Tensor):
        options["num_items_in_batch"] = float(options["num_items_in_batch"])
    if isinstance(options.get("ignore_index"), np.integer):
        options["ignore_index"] = int(options["ignore_index"])
    options.pop("global_normalization", None)
    labels = kw["labels"] if isinstance(kw["labels"], torch.Tensor) else torch.as_tensor(kw["labels"])
    as64 = lambda t: None if t is None else t.detach().to(torch.float64)  # noqa: E731
    want = reference_fused_masked_lm_loss(
        as64(kw["hidden"]), as64(kw["weight"]), labels.long(), as64(kw["bias"]), **_oracle_ignore(options)
    )
    tol = FUSED_TOLERANCES[kw["hidden"].dtype]
    assert isinstance(got, torch.Tensor) and got.dtype == _loss_dtype(kw["hidden"].dtype)
    _close(got, want, rtol=tol["loss_rtol"], atol=tol["loss_atol"], what="fused loss")


@pytest.mark.parametrize("kind", FUSED_CORRUPTIONS)
@fuzz(8)
@given(
    kw=fused_calls(max_rows=8, max_width=8, max_vocab=30), data=st.data(), backend=st.sampled_from(["reference", "cpp"])
)
def test_fused_masked_lm_loss_bad_input(kind, kw, data, backend):
    _count("fused_bad")
    require_backend(backend)
    kw = dict(kw, backend="reference" if kw["hidden"].dtype == torch.float64 else backend)
    kw, names, must_raise = _corrupt_fused(kw, data, kind)
    kw, names, must_raise = _maybe_corrupt_loss_option(kw, data, "hidden", names, must_raise)
    _note_call(kw)
    snapshot = _snapshot(kw)
    call_kw = dict(kw)
    for name in ("hidden", "weight", "bias"):
        value = call_kw[name]
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            call_kw[name] = value.detach().clone().requires_grad_()
    args = [call_kw.pop(k) for k in ("hidden", "weight", "labels", "bias")]
    clear_error_or(
        lambda: fastmask.fused_masked_lm_loss(*args, **call_kw),
        names,
        must_raise,
        lambda got: check_fused_result(kw, got),
    )
    _assert_unmodified(kw, snapshot)


# ============================================================================= collators
TOKEN_KEYS = ("attention_mask", "token_type_ids", "special_tokens_mask", "offset_mapping", "word_ids")
EXTRA_TEXTS = (
    "",
    "Hello",
    "unbelievably tokenization",
    "東京 and ünïcödé naïveté",
    "1234567 ---- ... ???",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
)


@functools.cache
def _tokenizer():
    return collator_support.tokenizer("minilm")


@functools.cache
def _pool() -> tuple:
    """Tokenized rows of real text (every per-token key, plus ``word_ids``), built once."""
    tok = _tokenizer()
    texts = list(collator_support._texts()[:30]) + list(EXTRA_TEXTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = tok(texts, truncation=True, max_length=32, return_special_tokens_mask=True, return_offsets_mapping=True)
    rows = []
    for i in range(len(texts)):
        row = {k: [list(v) if isinstance(v, tuple) else v for v in enc[k][i]] for k in enc.keys()}
        row["word_ids"] = enc.word_ids(i)
        rows.append(row)
    return tuple(rows)


@functools.cache
def _word_table() -> np.ndarray:
    return fastmask.word_start_table(_tokenizer()).numpy()


@pytest.fixture(scope="module", autouse=True)
def _one_word_table_per_tokenizer():
    """Every collator builds the word-start table of its tokenizer once (0.2 s for MiniLM's 30k
    entries); the fuzz tests build thousands of collators of one tokenizer, so they share one
    table (built by the real function, and read-only to the collators)."""
    from fastmask import collator as collator_module

    original = getattr(collator_module, "word_start_table", None)
    if original is None:
        yield
        return
    cache: dict = {}

    def shared(tokenizer, *args, **kwargs):
        key = (id(tokenizer), len(tokenizer), args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(tokenizer, *args, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(collator_module, "word_start_table", shared)
        yield


def _synthetic_row(draw, g) -> dict:
    """Random ids of the vocabulary with [CLS] ... [SEP] around them; every token its own word."""
    tok = _tokenizer()
    n = draw(st.integers(0, 20))
    body = torch.randint(0, len(tok), (n,), generator=g).tolist()
    ids = [tok.cls_token_id] + body + [tok.sep_token_id]
    special = set(tok.all_special_ids)
    return {
        "input_ids": ids,
        "token_type_ids": [0] * len(ids),
        "attention_mask": [1] * len(ids),
        "special_tokens_mask": [int(i in special) for i in ids],
        "offset_mapping": [[0, 0]] + [[3 * j, 3 * j + 2] for j in range(n)] + [[0, 0]],
        "word_ids": [None] + list(range(n)) + [None],
    }


@st.composite
def collator_rows(draw, max_rows: int = 5):
    """Rows (dicts of lists) of real and synthetic text, a per-batch choice of keys, some truncated."""
    g = _seeded(draw)
    pool = _pool()
    rows = []
    for _ in range(draw(st.integers(1, max_rows))):
        if draw(st.integers(0, 3)) == 0:
            row = _synthetic_row(draw, g)
        else:
            row = copy.deepcopy(pool[draw(st.integers(0, len(pool) - 1))])
        if draw(st.integers(0, 3)) == 0:  # truncated (may drop [SEP])
            cut = draw(st.integers(1, len(row["input_ids"])))
            row = {k: v[:cut] for k, v in row.items()}
        rows.append(row)
    keys = draw(st.sets(st.sampled_from(TOKEN_KEYS)))
    rows = [{k: v for k, v in row.items() if k == "input_ids" or k in keys} for row in rows]
    if draw(st.integers(0, 4)) == 0:  # tensors instead of lists
        rows = [
            {k: (torch.tensor(v) if k in ("input_ids", "attention_mask") else v) for k, v in row.items()}
            for row in rows
        ]
    return rows


def _round_up(n: int, multiple) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _padded(rows, key: str, length: int, pad) -> np.ndarray:
    values = [np.asarray(r[key] if not isinstance(r[key], torch.Tensor) else r[key].numpy()) for r in rows]
    return collator_support.padded(values, length, pad)


def _word_starts_from_word_ids(rows, length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, row in enumerate(rows):
        previous = None
        for i, word in enumerate(row["word_ids"]):
            if word is None or word == -1:
                previous = None
                continue
            out[b, i] = word != previous
            previous = word
    return out


def _starts_of(rows, original: np.ndarray, special: np.ndarray, source: str) -> torch.Tensor:
    """Word starts the collator must respect: from offsets, word_ids, or the vocabulary table."""
    length = original.shape[1]
    if source == "offset_mapping":
        offsets = collator_support.padded([np.asarray(r["offset_mapping"]).reshape(-1, 2) for r in rows], length, 0)
        word_ids = collator_support.offset_word_ids(offsets, special)
        previous = np.full_like(word_ids, -1)
        previous[:, 1:] = word_ids[:, :-1]
        return torch.from_numpy((word_ids >= 0) & (word_ids != previous))
    if source == "word_ids":
        return _word_starts_from_word_ids(rows, length)
    table = _word_table()
    safe = np.clip(original, 0, len(table) - 1)
    return torch.from_numpy(np.where((original >= 0) & (original < len(table)), table[safe], True))


def _as_tensor(value) -> torch.Tensor:
    return value.cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def check_lm_batch(collator, rows, out, *, keys_read=TOKEN_KEYS) -> None:
    """Output of an LM / whole-word collator on ``rows``: padding, labels, selection, words, budget."""
    tok = _tokenizer()
    vocab = len(tok)
    lengths = [len(r["input_ids"]) for r in rows]
    length = _round_up(max(lengths), collator.pad_to_multiple_of)
    ids_out, labels = _as_tensor(out["input_ids"]).long(), _as_tensor(out["labels"])
    assert ids_out.shape == (len(rows), length) and labels.shape == ids_out.shape, f"shape {tuple(ids_out.shape)}"
    assert labels.dtype == torch.int64
    original = _padded(rows, "input_ids", length, tok.pad_token_id)
    orig = torch.from_numpy(original)
    inside = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    for gone in ("special_tokens_mask", "offset_mapping", "word_ids"):
        assert gone not in out, f"{gone} must not be returned"
    if "attention_mask" in out:
        assert torch.equal(_as_tensor(out["attention_mask"]).bool(), inside), "attention_mask is not the padding"
    if not collator.mlm:
        assert torch.equal(ids_out, orig), "causal LM changed input_ids"
        assert torch.equal(labels, torch.where(orig == tok.pad_token_id, IGNORE, orig)), "causal LM labels"
        return
    present = set(rows[0]) & set(keys_read)
    if "special_tokens_mask" in present:
        special = _padded(rows, "special_tokens_mask", length, 1).astype(bool)
    else:
        special = np.isin(original, tok.all_special_ids)
    eligible = inside & ~torch.from_numpy(special) & (orig != tok.pad_token_id)
    selected = labels != IGNORE
    assert not (selected & ~eligible).any(), "a special / padding position was selected"
    assert torch.equal(labels[selected], orig[selected]), "labels must hold the original id"
    assert torch.equal(ids_out[~selected], orig[~selected]), "an unselected position changed"
    changed = ids_out[selected]
    in_range = (changed >= 0) & (changed < vocab)
    assert ((changed == tok.mask_token_id) | (changed == orig[selected]) | in_range).all(), "replaced id out of range"
    if float(collator.mask_replace_prob) == 1.0:
        assert (changed == tok.mask_token_id).all()
    if float(collator.random_replace_prob) == 0.0:
        assert ((changed == tok.mask_token_id) | (changed == orig[selected])).all()
    p = collator.current_mlm_probability()
    if p == 0.0:
        assert not selected.any()
    if collator.masking_strategy != "token":
        source = next((k for k in ("offset_mapping", "word_ids") if k in present), "table")
        _word_consistent(selected, eligible, _starts_of(rows, original, special, source))
    if collator.budget == "exact":
        k = torch.floor(eligible.sum(1).double() * p + 0.5).long()
        assert (selected.sum(1) <= k).all(), "exact budget exceeded"
        if collator.masking_strategy == "token":
            assert torch.equal(selected.sum(1), k), "exact token budget missed"


def _same_batches(a, b) -> None:
    assert list(a.keys()) == list(b.keys()), f"keys {list(a.keys())} != {list(b.keys())}"
    for key in a:
        x, y = _as_tensor(a[key]), _as_tensor(b[key])
        assert x.dtype == y.dtype and torch.equal(x, y), f"{key} differs between backends / runs"


def _masking_options(draw, mask_replace: float) -> dict:
    """The collators' shared options (rate, 80/10/10 split with ``mask_replace``, padding, output
    type, seed), drawn in this order."""
    return dict(
        mlm_probability=_probability(draw),
        mask_replace_prob=mask_replace,
        random_replace_prob=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0 - mask_replace))),
        pad_to_multiple_of=draw(st.one_of(st.none(), st.integers(1, 8))),
        return_tensors=draw(st.sampled_from(["pt", "np"])),
        seed=draw(st.integers(0, 2**63 - 1)),
    )


@st.composite
def lm_options(draw):
    mlm = draw(st.integers(0, 5)) != 0
    strategy = draw(st.sampled_from(["token", "whole_word", "span"])) if mlm else "token"
    budget = draw(st.sampled_from(["bernoulli", "exact"]))
    mask_replace = _probability(draw)
    options = dict(
        mlm=mlm,
        whole_word_mask=mlm and draw(st.booleans()),
        **_masking_options(draw, mask_replace),
        strategy=strategy,
        budget=budget,
        keep_replace_probs=draw(st.booleans()),
    )
    if strategy == "span":
        options.update(
            span_distribution=draw(st.sampled_from(["geometric", "uniform"])),
            span_p=draw(st.floats(0.05, 1.0)),
            max_span_words=draw(st.integers(1, 10)),
        )
    if mlm and budget == "bernoulli" and draw(st.integers(0, 4)) == 0:
        g = _seeded(draw)
        options["token_weights"] = torch.rand(len(_tokenizer()), generator=g) * 2
    return options


def _collate(cls, rows, options, backend):
    collator = _quiet(lambda: cls(_tokenizer(), **options, backend=backend))
    return collator, _quiet(lambda: collator(rows))


def _collate_cpp_checked(cls, rows, options):
    """``(collator, batch)`` of ``cls`` on the C++ backend, checked to leave ``rows`` unmodified
    and to equal the reference backend's batch."""
    before = copy.deepcopy(rows)
    collator, out = _collate(cls, rows, options, "cpp")
    _same_features(rows, before)
    _same_batches(out, _collate(cls, rows, options, "reference")[1])
    return collator, out


@fuzz(40)
@given(collator_rows(), lm_options(), st.booleans())
def test_lm_collator_invariants_and_backends(rows, options, row_keys):
    _count("lm_collator_valid")
    require_backend("cpp")
    if row_keys:
        rows = [dict(r, idx=i * 7919 + 3) for i, r in enumerate(rows)]
        options = dict(options, row_key_column="idx")
    collator, out = _collate_cpp_checked(fastmask.DataCollatorForLanguageModeling, rows, options)
    check_lm_batch(collator, rows, out)


def _same_features(rows, before) -> None:
    """The collator did not modify its features (dicts of lists / tensors, or rows of ids)."""
    assert len(rows) == len(before)
    for row, old in zip(rows, before):
        if not isinstance(row, dict):
            assert type(row) is type(old) and row == old, "a feature row was modified"
            continue
        assert list(row) == list(old), "feature keys changed"
        for key in row:
            a, b = row[key], old[key]
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), f"feature {key} was modified"
            else:
                assert a == b, f"feature {key} was modified"


@st.composite
def wwm_options(draw):
    options = _masking_options(draw, _probability(draw))
    if draw(st.booleans()):
        options["budget"] = draw(st.sampled_from(["bernoulli", "exact"]))
    return options


@fuzz(30)
@given(collator_rows(), wwm_options(), st.booleans())
def test_whole_word_collator_invariants_and_backends(rows, options, plain_lists):
    _count("wwm_collator_valid")
    require_backend("cpp")
    if plain_lists:  # v4 also took sequences of ids
        rows = [
            list(r["input_ids"].tolist() if isinstance(r["input_ids"], torch.Tensor) else r["input_ids"]) for r in rows
        ]
    collator, out = _collate_cpp_checked(fastmask.DataCollatorForWholeWordMask, rows, options)
    assert set(out) == {"input_ids", "labels"}
    dict_rows = [{"input_ids": r} for r in rows] if plain_lists else [{"input_ids": r["input_ids"]} for r in rows]
    check_lm_batch(collator, dict_rows, out, keys_read=())


# ----------------------------------------------------------------------------- augmentation
@st.composite
def augmentation_cases(draw):
    rows = draw(collator_rows())
    rows = [
        {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items() if k != "word_ids"} for r in rows
    ]
    token_labels = draw(st.integers(0, 3)) != 0
    for i, row in enumerate(rows):
        if token_labels:
            row["labels"] = list(range(len(row["input_ids"])))
        else:
            row["label"] = i % 3
    first = _probability(draw)
    second = draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0 - first)))
    third = draw(st.one_of(st.just(0.0), st.floats(0.0, max(0.0, 1.0 - first - second))))
    names = draw(st.permutations(["mask_probability", "random_replace_probability", "delete_probability"]))
    options = dict(zip(names, (first, second, third)))
    longest = max(len(r["input_ids"]) for r in rows)
    padding = draw(st.sampled_from([True, "longest", "max_length"]))
    options.update(
        padding=padding,
        max_length=longest + draw(st.integers(0, 5)) if padding == "max_length" else None,
        pad_to_multiple_of=draw(st.one_of(st.none(), st.integers(1, 8))),
        return_tensors=draw(st.sampled_from(["pt", "np"])),
        seed=draw(st.integers(0, 2**63 - 1)),
        whole_word=draw(st.booleans()),
        training=draw(st.integers(0, 4)) != 0,
        label_pad_token_id=draw(st.sampled_from([-100, -1])),
    )
    return rows, options


def check_augmentation_batch(collator, rows, out) -> None:
    tok = _tokenizer()
    vocab = len(tok)
    ids, attention = _as_tensor(out["input_ids"]).long(), _as_tensor(out["attention_mask"]).bool()
    labels = _as_tensor(out["labels"])
    batch, width = ids.shape
    assert batch == len(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    longest = max(lengths)
    floor = collator.max_length if collator.padding == "max_length" else 0
    corrupting = (
        collator.training
        and (collator.mask_probability + collator.random_replace_probability + collator.delete_probability) > 0
    )
    if not corrupting or collator.delete_probability == 0:
        assert width == _round_up(max(longest, floor), collator.pad_to_multiple_of), f"width {width}"
    else:
        assert width <= _round_up(max(longest, floor), collator.pad_to_multiple_of)
    token_labels = "labels" in rows[0]
    special_ids = set(tok.all_special_ids)
    table = _word_table()
    for b, row in enumerate(rows):
        real = attention[b]
        n = int(real.sum())
        assert torch.equal(real, torch.arange(width) < n), "attention is not one block at the start"
        assert ids[b][~real].eq(tok.pad_token_id).all(), "padding holds another id than the pad id"
        source = row["input_ids"]
        special = (
            [bool(x) for x in row["special_tokens_mask"]]
            if "special_tokens_mask" in row
            else [i in special_ids for i in source]
        )
        if token_labels:
            assert labels[b][~real].eq(collator.label_pad_token_id).all()
            kept = labels[b][real].tolist()
            assert kept == sorted(set(kept)) and all(0 <= k < len(source) for k in kept), "token labels out of order"
        else:
            assert int(labels[b]) == row["label"]
            kept = list(range(n)) if collator.delete_probability == 0 or not corrupting else None
        if kept is None:  # deletions without token labels: the special tokens all remain, in order
            flagged_by_id = special == [i in special_ids for i in source]  # (else the flags decide what may go)
            if collator.random_replace_probability == 0 and flagged_by_id:  # (a random id may be a special one)
                marks = special_ids - {tok.mask_token_id}
                remaining = [i for i in ids[b][real].tolist() if i in marks]
                assert remaining == [i for i, s in zip(source, special) if s and i in marks], "special tokens lost"
            continue
        token = ids[b][real]
        original = torch.tensor(source, dtype=torch.int64)[kept]
        if not corrupting:
            assert torch.equal(token, original) and len(kept) == len(source), "eval mode changed the inputs"
            continue
        removed = sorted(set(range(len(source))) - set(kept))
        assert collator.delete_probability > 0 or not removed, "tokens deleted with delete_probability=0"
        assert not any(special[p] for p in removed), "a special token was deleted"
        state = torch.where(token == original, 0, torch.where(token == tok.mask_token_id, 1, 2))
        assert not any(special[p] and s for p, s in zip(kept, state.tolist())), "a special token changed"
        random = token[state == 2]
        assert ((random >= 0) & (random < vocab)).all(), "a random replacement is out of the vocabulary"
        if collator.random_replace_probability == 0:
            assert not (state == 2).any(), "random ids with random_replace_probability=0"
        if collator.mask_probability == 0:
            assert not (state == 1).any(), "mask ids with mask_probability=0"
        if collator.whole_word:
            src = np.array([source])
            eligible = ~np.array([special])
            if "offset_mapping" in row:
                offsets = np.asarray(row["offset_mapping"]).reshape(1, -1, 2)
                words = collator_support.offset_word_ids(offsets, ~eligible)[0]
            else:
                words = collator_support.table_word_ids(src, eligible, table)[0]
            fate = np.full(len(words), 3)  # 3 = deleted
            fate[kept] = state.numpy()
            for word in np.unique(words[words >= 0]):
                fates = set(fate[words == word].tolist())
                assert len(fates) == 1 or fates <= {0, 2}, f"row {b}: word {word} got mixed treatment {fates}"


@fuzz(40)
@given(augmentation_cases())
def test_augmentation_collator_invariants_and_backends(case):
    _count("augmentation_collator_valid")
    require_backend("cpp")
    rows, options = case
    collator, out = _collate_cpp_checked(fastmask.DataCollatorForMaskedAugmentation, rows, options)
    check_augmentation_batch(collator, rows, out)


@pytest.mark.triton
@fuzz(4)
@given(collator_rows(max_rows=3), lm_options(), augmentation_cases())
def test_collators_triton_match_cpp(rows, options, case):
    _count("collators_triton")
    require_backend("triton", TRITON_DEVICE)
    rows = [{k: (v[:24] if not isinstance(v, torch.Tensor) else v[:24]) for k, v in r.items()} for r in rows]
    on_device = dict(options, device="cuda") if TRITON_DEVICE == "cuda" else options
    if TRITON_DEVICE == "cuda":
        on_device["return_tensors"] = "pt"  # device= needs tensors
        options = dict(options, return_tensors="pt")
    collator, out = _collate(fastmask.DataCollatorForLanguageModeling, rows, on_device, "triton")
    check_lm_batch(collator, rows, out)
    _same_batches(out, _collate(fastmask.DataCollatorForLanguageModeling, rows, options, "cpp")[1])
    if TRITON_DEVICE != "cpu":
        return  # the augmentation collator masks where its (CPU) batch is: Triton runs there only interpreted
    aug_rows, aug_options = case
    aug_rows = aug_rows[:3]
    collator, out = _collate(fastmask.DataCollatorForMaskedAugmentation, aug_rows, aug_options, "triton")
    check_augmentation_batch(collator, aug_rows, out)
    _same_batches(out, _collate(fastmask.DataCollatorForMaskedAugmentation, aug_rows, aug_options, "cpp")[1])


# ----------------------------------------------------------------------------- collators: bad input
COLLATORS = {
    "lm": fastmask.DataCollatorForLanguageModeling,
    "wwm": fastmask.DataCollatorForWholeWordMask,
    "augmentation": fastmask.DataCollatorForMaskedAugmentation,
}


ROW_CORRUPTIONS = (
    "empty",
    "mixed",
    "missing_ids",
    "float_id",
    "string_id",
    "none_id",
    "nested",
    "negative_id",
    "beyond_vocab",
    "huge_id",
    "ragged_key",
    "bad_offsets",
    "bad_word_ids",
    "row_key",
    "special_values",
)
LM_OPTION_CORRUPTIONS = (
    "probability",
    "sum",
    "pad_to_multiple_of",
    "choice",
    "span",
    "seed",
    "token_weights",
    "backend",
    "return_tensors",
    "device",
    "row_key_column",
    "mlm_strategy",
)
AUGMENTATION_OPTION_CORRUPTIONS = (
    "probability",
    "sum",
    "padding",
    "max_length",
    "pad_to_multiple_of",
    "seed",
    "backend",
    "return_tensors",
)
COLLATOR_CORRUPTIONS = (
    [(which, "features:" + kind) for which in ("lm", "wwm", "augmentation") for kind in ROW_CORRUPTIONS]
    + [
        (which, "options:" + kind)
        for which in ("lm", "wwm")
        for kind in LM_OPTION_CORRUPTIONS
        if (which, kind) != ("wwm", "mlm_strategy")
    ]
    + [("augmentation", "options:" + kind) for kind in AUGMENTATION_OPTION_CORRUPTIONS]
)


def _corrupt_rows(rows: list, data, which: str, options: dict, kind: str) -> tuple[list, dict, tuple, bool]:
    """A corruption of the features: ``(rows, options, names, must_raise)``."""
    rows = copy.deepcopy(rows)
    options = dict(options)
    b = data.draw(st.integers(0, len(rows) - 1), label="row")
    row = rows[b]
    ids = row["input_ids"]
    n = len(ids)
    feature_names = ("features", "examples", "input_ids")
    position = data.draw(st.integers(0, n - 1), label="position") if n else 0
    if kind == "empty":
        return [], options, feature_names, True
    if kind == "mixed":
        rows[b] = list(ids)
        if len(rows) == 1:
            rows.append(copy.deepcopy(row))
        return rows, options, feature_names, True
    if kind == "missing_ids":
        row["ids"] = row.pop("input_ids")
        return rows, options, ("input_ids",), True
    if kind in ("float_id", "string_id", "none_id", "nested", "huge_id") and n:
        value = {
            "float_id": 1.5,
            "string_id": "a",
            "none_id": None,
            "huge_id": data.draw(st.sampled_from([2**64, -(2**64), 2**70])),
        }.get(kind)
        ids = list(ids)
        if kind == "nested":
            row["input_ids"] = [ids, ids]
        else:
            ids[position] = value
            row["input_ids"] = ids
        return rows, options, ("input_ids",), True
    if kind in ("negative_id", "beyond_vocab") and n:
        vocab = len(_tokenizer())
        # (no id in [2**20, 2**40): a word-start table covering it would take GiBs; 2**40 fails fast)
        value = data.draw(
            st.sampled_from([-1, -100, -(2**40)] if kind == "negative_id" else [vocab, vocab + 100, 2**40])
        )
        ids = list(ids)
        ids[position] = value
        row["input_ids"] = ids
        return rows, options, ("input_ids",), False
    if kind == "ragged_key":
        present = [k for k in TOKEN_KEYS if k in row]
        if not present:
            row["attention_mask"] = [1] * (n + 1)
            for other in rows:
                other.setdefault("attention_mask", [1] * len(other["input_ids"]))
            key = "attention_mask"
        else:
            key = data.draw(st.sampled_from(present))
            value = list(row[key])
            row[key] = value[:-1] if value and data.draw(st.booleans()) else value + value[-1:] if value else [0]
        # the whole-word collator reads input_ids only; word_ids are read only for words
        must = which != "wwm" and key != "word_ids"
        return rows, options, (key,), must
    if kind == "bad_offsets":
        for r in rows:
            r["offset_mapping"] = [[0, 0, 0]] * len(r["input_ids"])
        uses = which == "lm" and (options.get("whole_word_mask") or options.get("strategy", "token") != "token")
        uses = uses or (
            which == "augmentation"
            and options.get("whole_word")
            and options.get("training", True)
            and any(options.get(k, 0) for k in ("mask_probability", "random_replace_probability", "delete_probability"))
        )
        return rows, options, ("offset_mapping",), bool(uses)
    if kind == "bad_word_ids":
        for r in rows:
            r.pop("offset_mapping", None)
            r["word_ids"] = ["w"] * len(r["input_ids"])
        uses = (
            which == "lm"
            and options.get("mlm", True)
            and (options.get("whole_word_mask") or options.get("strategy", "token") != "token")
        )
        return rows, options, ("word_ids",), bool(uses)
    if kind == "row_key":
        value = data.draw(st.sampled_from([1.5, "a", None, 2**64, "missing"]))
        for i, r in enumerate(rows):
            r["idx"] = i
        if value == "missing":
            del row["idx"]
        else:
            row["idx"] = value
        options["row_key_column"] = "idx"
        used = {
            "lm": options.get("mlm", True),
            "wwm": True,
            "augmentation": options.get("training", True)
            and any(
                options.get(k, 0) for k in ("mask_probability", "random_replace_probability", "delete_probability")
            ),
        }[which]
        return rows, options, ("row_key_column", "idx"), bool(used)
    # special_values: a special_tokens_mask with values other than 0 / 1 (nonzero is special)
    for r in rows:
        r["special_tokens_mask"] = [data.draw(st.sampled_from([0, 2, -1]), label="flag") for _ in r["input_ids"]]
    return rows, options, ("special_tokens_mask",), False


def _corrupt_collator_options(options: dict, data, which: str, kind: str) -> tuple[dict, tuple, bool]:
    options = dict(options)
    if which == "augmentation":
        if kind == "probability":
            name = data.draw(st.sampled_from(["mask_probability", "random_replace_probability", "delete_probability"]))
            options[name] = data.draw(st.sampled_from(BAD_PROBABILITIES))
            return options, (name,), True
        if kind == "sum":
            options.update(mask_probability=0.6, random_replace_probability=0.3, delete_probability=0.2)
            return options, ("mask_probability", "delete_probability"), True
        if kind == "padding":
            options["padding"] = data.draw(st.sampled_from([False, "do_not_pad", "xx", None]))
            return options, ("padding",), True
        if kind == "max_length":
            options["padding"] = "max_length"
            options["max_length"] = data.draw(st.sampled_from([0, -1, 2.5, "8", None]))
            return options, ("max_length",), True
    else:
        if kind == "probability":
            name = data.draw(st.sampled_from(["mlm_probability", "mask_replace_prob", "random_replace_prob"]))
            options[name] = data.draw(st.sampled_from(BAD_PROBABILITIES))
            # A causal-LM collator (mlm=False) uses none of them; with whole_word_mask (and not
            # keep_replace_probs) transformers replaces both replacement probabilities by 1 and 0.
            used = options.get("mlm", True) and not (
                name != "mlm_probability"
                and options.get("whole_word_mask")
                and not options.get("keep_replace_probs")
                and which == "lm"
            )
            return options, (name,), bool(used)
        if kind == "sum":
            options.update(mask_replace_prob=0.8, random_replace_prob=0.3, keep_replace_probs=True)
            return options, ("mask_replace_prob", "random_replace_prob", "sum"), True
        if kind == "choice":
            name = data.draw(st.sampled_from(["strategy", "budget", "span_distribution"]))
            options[name] = data.draw(st.sampled_from(["words", None, 3]))
            return options, (name,), True
        if kind == "span":
            name = data.draw(st.sampled_from(["span_p", "max_span_words"]))
            options[name] = data.draw(st.sampled_from([-1, 0, 1.5 if name == "span_p" else 1000, float("nan"), "x"]))
            return options, (name,), not (name == "span_p" and options[name] == 0)
        if kind == "token_weights":
            options["budget"] = "bernoulli"
            options["token_weights"] = data.draw(
                st.sampled_from(
                    [
                        torch.ones(10),
                        -torch.ones(len(_tokenizer())),
                        torch.full((len(_tokenizer()),), float("nan")),
                        torch.ones(1, len(_tokenizer())),
                        ["x"] * 3,
                    ]
                )
            )
            return options, ("token_weights",), options.get("mlm", True)  # a causal LM never reads them
        if kind == "device":
            options["device"] = data.draw(st.sampled_from(["nope", "cuda:99" if torch.cuda.is_available() else "cuda"]))
            return options, ("device",), True
        if kind == "row_key_column":
            options["row_key_column"] = data.draw(st.sampled_from([5, ["idx"]]))
            return options, ("row_key_column",), True
        if kind == "mlm_strategy":
            if which == "wwm":
                kind = "seed"
            else:
                options.update(mlm=False, whole_word_mask=False, strategy="span")
                return options, ("strategy", "mlm"), True
    if kind == "pad_to_multiple_of":
        options["pad_to_multiple_of"] = data.draw(st.sampled_from([-4, 0, 2.5, "8", True]))
        return options, ("pad_to_multiple_of",), True
    if kind == "seed":
        value = data.draw(st.sampled_from([1.5, "1", float("nan"), 2**70, -1]))
        options["seed"] = value
        return options, ("seed",), not isinstance(value, int)
    if kind == "backend":
        options["backend"] = data.draw(st.sampled_from(["gpu", None, ""]))
        return options, ("backend",), True
    if kind == "return_tensors":
        options["return_tensors"] = data.draw(st.sampled_from(["xx", None, "tf"]))
        return options, ("return_tensors",), True
    raise AssertionError(kind)


def _collator_case(data, which: str):
    if which == "augmentation":
        rows, options = data.draw(augmentation_cases(), label="valid case")
    else:
        rows = data.draw(collator_rows(), label="rows")
        options = data.draw(lm_options() if which == "lm" else wwm_options(), label="options")
        rows = [{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items()} for r in rows]
    return rows, options


def _check_collated(which: str, collator, rows, out) -> None:
    if which == "augmentation":
        check_augmentation_batch(collator, rows, out)
    elif which == "wwm":
        check_lm_batch(
            collator, [{"input_ids": r["input_ids"] if isinstance(r, dict) else r} for r in rows], out, keys_read=()
        )
    else:
        check_lm_batch(collator, rows, out)


@pytest.mark.parametrize("which,kind", COLLATOR_CORRUPTIONS)
@fuzz(3)
@given(data=st.data())
def test_collators_bad_input(which, kind, data):
    _count("collators_bad")
    require_backend("cpp")
    rows, options = _collator_case(data, which)
    part, kind = kind.split(":")
    if part == "features":
        rows, options, names, must_raise = _corrupt_rows(rows, data, which, options, kind)
    else:
        options, names, must_raise = _corrupt_collator_options(options, data, which, kind)
    note(f"{which} collator, options {options}")
    before = copy.deepcopy(rows)
    state = {}

    def call():
        state["collator"] = COLLATORS[which](_tokenizer(), **options)
        return state["collator"](rows)

    clear_error_or(call, names, must_raise, lambda out: _check_collated(which, state["collator"], rows, out))
    _same_features(rows, before)


@pytest.mark.parametrize("kind", ["set_epoch", "set_step", "load_state_dict"])
@pytest.mark.parametrize("which", sorted(COLLATORS))
@fuzz(8)
@given(data=st.data())
def test_collator_state_bad_input(which, kind, data):
    """set_epoch / set_step / load_state_dict: a clear error, or a state that round-trips and a
    collator that still masks correctly."""
    _count("collator_state_bad")
    require_backend("cpp")
    rows, options = _collator_case(data, which)
    collator = _quiet(lambda: COLLATORS[which](_tokenizer(), **options))
    if kind in ("set_epoch", "set_step"):
        value = data.draw(st.sampled_from([-1, 1.5, "1", None, float("nan"), True, 2**63 - 1, 2**63, 2**70]))
        field = kind[4:]
        valid_int = isinstance(value, int) and not isinstance(value, bool) and value >= 0

        def check(_):
            assert getattr(collator, field) == value, f"{field} reads {getattr(collator, field)} after {kind}({value})"
            assert collator.state_dict()[field] == value
            _check_collated(which, collator, rows, _quiet(lambda: collator(rows)))

        clear_error_or(lambda: getattr(collator, kind)(value), (field,), not valid_int, check)
        return
    state = collator.state_dict()
    how = data.draw(
        st.sampled_from(["missing", "type", "negative", "not_mapping", "format", "huge"]), label="state corruption"
    )
    field = data.draw(st.sampled_from(["seed", "epoch", "step", "examples"]), label="field")
    bad = dict(state)
    if how == "missing":
        del bad[field]
    elif how == "type":
        bad[field] = data.draw(st.sampled_from([1.5, "3", None]))
    elif how == "negative":
        bad[field] = -1
    elif how == "not_mapping":
        bad, field = list(state.items()), "state"
    elif how == "format":
        bad["format"], field = "something/else", "format"
    else:
        bad[field] = 2**70
    fresh = _quiet(lambda: COLLATORS[which](_tokenizer(), **dict(options, seed=None)))
    must = how != "negative" or field != "seed"
    if how == "huge":
        must = False

    def check_loaded(_):
        assert fresh.state_dict() == bad, "load_state_dict did not restore the state"
        _check_collated(which, fresh, rows, _quiet(lambda: fresh(rows)))

    clear_error_or(lambda: fresh.load_state_dict(bad), (field, "state"), must, check_loaded)


# ============================================================================= helpers
@pytest.mark.parametrize("which", ["word_ids", "offsets", "counts", "weights", "schedule", "schedule_call"])
@fuzz(20)
@given(data=st.data())
def test_helpers_bad_input(which, data):
    """word_starts_from_*, count_token_frequencies, token_weights_from_counts, MaskingSchedule."""
    _count("helpers_bad")
    if which == "word_ids":
        value = data.draw(
            st.sampled_from(
                [
                    [["a", "b"]],
                    [[0.5, 1.0]],
                    np.array([[0.5, 1.5]]),
                    torch.tensor([[0.5]]),
                    "abc",
                    None,
                    [[0, None, 1], [0]],
                    [[0, 0, 1, None]],
                    np.array([[0, 0, 1, -1]]),
                    np.zeros((1, 2, 2), dtype=np.int64),
                    [[True, False]],
                ]
            )
        )
        valid = (
            value is not None
            and not isinstance(value, str)
            and (
                (isinstance(value, np.ndarray) and value.dtype.kind == "i" and value.ndim <= 2)
                or (
                    isinstance(value, list)
                    and all(w is None or (isinstance(w, int) and not isinstance(w, bool)) for r in value for w in r)
                )
            )
        )

        def check(out):
            assert isinstance(out, torch.Tensor) and out.dtype == torch.bool and out.dim() == 2

        clear_error_or(lambda: fastmask.word_starts_from_word_ids(value), ("word_ids",), not valid, check)
    elif which == "offsets":
        offsets = data.draw(
            st.sampled_from(
                [np.zeros((2, 3)), np.zeros((1, 3, 3)), "x", [[[0, 1], [1]]], np.zeros((1, 3, 2)), [[[0, 1], [1, 2]]]]
            )
        )
        special = data.draw(st.sampled_from([None, np.zeros((1, 4)), np.zeros((1, 3))]))
        ok_offsets = (isinstance(offsets, np.ndarray) and offsets.shape == (1, 3, 2)) or (
            isinstance(offsets, list) and offsets == [[[0, 1], [1, 2]]]
        )
        ok_special = special is None or (ok_offsets and special.shape[1] == np.asarray(offsets).shape[1])

        def check(out):
            assert out.dtype == torch.bool and tuple(out.shape) == np.asarray(offsets).shape[:2]

        clear_error_or(
            lambda: fastmask.word_starts_from_offsets(offsets, special),
            ("offset_mapping", "special_tokens_mask"),
            not (ok_offsets and ok_special),
            check,
        )
    elif which == "counts":
        rows = data.draw(st.sampled_from([[[1, -2]], [[1.5, 2]], [["a"]], [[2**64]], [[1, 2], [3]], [[]]]))
        vocab = data.draw(st.sampled_from([None, 0, -1, 1.5, 3, 2**20]))
        valid_rows = rows in ([[1, 2], [3]], [[]])
        valid_vocab = vocab is None or (isinstance(vocab, int) and vocab >= 1)

        def check(out):
            flat = [i for r in rows for i in r]
            assert out.dtype == torch.int64 and int(out.sum()) == len(flat)
            assert out.numel() >= max([i + 1 for i in flat] + [vocab or 0])

        clear_error_or(
            lambda: fastmask.count_token_frequencies(rows, vocab_size=vocab),
            ("vocab_size", "input_ids", "counts"),
            not (valid_rows and valid_vocab),
            check,
        )
    elif which == "weights":
        counts = data.draw(
            st.sampled_from(
                [
                    [1.0, float("nan")],
                    [1.0, float("inf")],
                    [1, -1],
                    ["a", "b"],
                    [[1, 2]],
                    [],
                    None,
                    [True, False],
                    [0, 5, 10],
                ]
            )
        )
        alpha = data.draw(st.sampled_from([0.5, float("nan"), -1.0, "x", float("inf"), 0.0]))
        smoothing = data.draw(st.sampled_from([1.0, 0.0, -1.0, float("nan"), float("inf"), "x"]))
        mode = data.draw(st.sampled_from(["rare", "frequent", "x"]))
        valid = counts == [0, 5, 10] and alpha in (0.5, 0.0) and smoothing == 1.0 and mode != "x"

        def check(out):
            assert out.dtype == torch.float32 and out.shape == (len(counts),)
            assert torch.isfinite(out).all() and float(out.max()) == 1.0 and (out >= 0).all(), f"weights {out}"

        clear_error_or(
            lambda: fastmask.token_weights_from_counts(counts, mode=mode, alpha=alpha, smoothing=smoothing),
            ("counts", "alpha", "smoothing", "mode"),
            not valid and counts != [0, 5, 10],
            check,
        )
    elif which == "schedule":
        kwargs = dict(
            kind=data.draw(st.sampled_from(["linear", "cosine", "constant", "x"])),
            start=data.draw(st.sampled_from([0.3, -0.1, 1.5, float("nan"), "x"])),
            end=data.draw(st.sampled_from([0.15, None, 2.0, float("nan")])),
            total_steps=data.draw(st.sampled_from([100, None, 0, -1, 1.5, 2**70])),
            warmup_steps=data.draw(st.sampled_from([0, 10, -1, 100, 1.5])),
        )
        kind = kwargs.pop("kind")
        end, total, warmup = kwargs["end"], kwargs["total_steps"], kwargs["warmup_steps"]
        if kind == "constant":  # end and total_steps optional; warmup has nothing to delay
            valid = end in (0.15, None) and total in (100, None, 2**70) and warmup in (0, 10, 100)
        else:
            valid = end == 0.15 and total in (100, 2**70) and warmup in (0, 10, 100) and warmup < total
        valid = valid and kind != "x" and kwargs["start"] == 0.3

        def check(schedule):
            for step in (0, 1, 50, 10**6):
                assert 0.0 <= schedule(step) <= 1.0

        clear_error_or(
            lambda: fastmask.MaskingSchedule(kind, **kwargs),
            ("kind", "start", "end", "total_steps", "warmup_steps"),
            not valid,
            check,
        )
    else:
        schedule = fastmask.MaskingSchedule(
            data.draw(st.sampled_from(["linear", "cosine", "constant"])),
            start=0.3,
            end=0.1,
            total_steps=100,
            warmup_steps=10,
        )
        step = data.draw(st.sampled_from([-1, 1.5, float("nan"), "3", None, 2**70, 0, 55]))
        valid = isinstance(step, int) and not isinstance(step, bool) and step >= 0

        def check(rate):
            assert isinstance(rate, float) and 0.1 <= rate <= 0.3 + 1e-12

        clear_error_or(lambda: schedule(step), ("step",), not valid, check)
