"""The C++ masking kernel at its own boundary: ``fastmask._C.mask_tokens`` on raw buffers.

``test_masking.py`` checks the op end to end on ``sample_inputs``; this file drives the kernel
directly, so it also reaches inputs the op layer never produces (ids outside the lookup
tables, long words against a small budget, very long spans), and checks the thread count and
the instruction set do not change a single bit, and that bad buffers are rejected.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmask import _backend, _rng
from fastmask.masking_plan import MaskingPlan
from fastmask.reference.masking import reference_mask_tokens

_C = _backend.cpp_module()
pytestmark = pytest.mark.skipif(_C is None, reason=str(_backend.unavailable_reason("cpp", torch.device("cpu"))))

STRATEGIES = ("token", "whole_word", "span")


def _random_case(rng: np.random.Generator, *, batch=None, length=None) -> dict:
    """Raw kernel arguments (torch tensors / ints) for one random call."""
    B = int(batch or rng.integers(1, 7))
    L = int(length or rng.choice([1, 2, 3, 17, 64, 65, 130, 257]))
    vocab = int(rng.integers(20, 200))
    dtype = [torch.int32, torch.int64][int(rng.integers(2))]
    # ids partly outside [0, vocab) and (sometimes) negative, to exercise the table guards
    ids = torch.from_numpy(rng.integers(-3, vocab + 20, (B, L))).to(dtype)
    strategy = int(rng.integers(3))
    exact = bool(rng.integers(2))
    p = float(rng.choice([0.0, 0.05, 0.15, 0.5, 0.9, 1.0]))
    start_rate = float(rng.choice([0.05, 0.3, 0.7, 1.0]))
    flags_size = int(rng.integers(1, vocab + 1))
    flags = torch.from_numpy(rng.integers(0, 4, flags_size)).to(torch.uint8)

    def maybe_mask(rate):
        return torch.from_numpy(rng.random((B, L)) < rate).to(torch.uint8) if rng.integers(2) else None

    max_span = int(rng.choice([1, 3, 10, 256]))
    probs = _rng.span_length_distribution(["geometric", "uniform"][int(rng.integers(2))], 0.2, max_span)
    weights = None
    if not exact and rng.integers(2):
        w = rng.integers(0, (1 << 16) + 1, int(rng.integers(1, vocab + 1)))
        w[rng.random(w.size) < 0.3] = 0
        weights = torch.from_numpy(w).to(torch.int32)
    t_mask = int(rng.integers(0, _rng.PROB_ONE + 1))
    select = _rng.span_anchor_probability(p, probs) if strategy == 2 else p
    return dict(
        input_ids=ids,
        special_mask=maybe_mask(0.1),
        attention_mask=maybe_mask(0.9),
        word_starts=torch.from_numpy(rng.random((B, L)) < start_rate).to(torch.uint8) if rng.integers(2) else None,
        vocab_flags=flags if (rng.integers(2) or strategy != 0) else None,
        weights_q=weights,
        row_keys=torch.from_numpy(rng.integers(-(2**62), 2**62, B)),
        span_thresholds=torch.tensor(_rng.span_length_thresholds(probs), dtype=torch.int32),
        budget_table=_rng.exact_budget_table(p, L) if exact else None,
        seed_mix1=int(rng.integers(0, 2**32)),
        seed_mix2=int(rng.integers(0, 2**32)),
        strategy=strategy,
        exact=exact,
        pad_token_id=int(rng.choice([-1, 0, 5])),
        select_threshold=_rng.probability_threshold(select),
        mask_token_id=int(rng.integers(0, vocab)),
        vocab_size=vocab,
        replace_mask_threshold=t_mask,
        replace_random_threshold=int(rng.integers(t_mask, _rng.PROB_ONE + 1)),
    )


def _reference(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    c = dict(case)
    if c["strategy"] != 0 and c["word_starts"] is None and c["vocab_flags"] is None:
        c["vocab_flags"] = torch.full((1,), 2, dtype=torch.uint8)  # as no table: every id starts a word
    return reference_mask_tokens(MaskingPlan(**c))


def _plan_fields(case: dict) -> dict:
    """The plan as the binding takes it: numpy buffers and ints by field name."""
    return {
        k: v.numpy() if isinstance(v, torch.Tensor) else (int(v) if isinstance(v, bool) else v) for k, v in case.items()
    }


def _run_cpp(case: dict) -> tuple[np.ndarray, np.ndarray]:
    ids = case["input_ids"].numpy()
    masked = np.full_like(ids, 12345)
    labels = np.full(ids.shape, 777, dtype=np.int64)
    _C.mask_tokens(_plan_fields(case), masked, labels)
    return masked, labels


@pytest.fixture(params=["default", "avx2"])
def isa(request):
    before = _C._masking_isa()
    got = _C._masking_isa(request.param)
    if got != request.param:
        _C._masking_isa(before)
        pytest.skip(f"this CPU has no {request.param}")
    yield got
    _C._masking_isa(before)


@pytest.mark.parametrize("chunk", range(6))
def test_random_raw_calls_match_reference(isa, chunk):
    rng = np.random.default_rng(1000 + chunk)
    selected_total = 0
    for _ in range(50):
        case = _random_case(rng)
        before = case["input_ids"].clone()
        expected_ids, expected_labels = _reference(case)
        masked, labels = _run_cpp(case)
        assert torch.equal(case["input_ids"], before), "input_ids was modified"
        assert np.array_equal(labels, expected_labels.numpy()), (isa, STRATEGIES[case["strategy"]], case["exact"])
        assert np.array_equal(masked, expected_ids.numpy()), (isa, STRATEGIES[case["strategy"]], case["exact"])
        selected_total += int((labels != -100).sum())
    assert selected_total > 0  # the cases do select something


@pytest.mark.parametrize("strategy", range(3))
@pytest.mark.parametrize("exact", [False, True])
def test_long_words_against_small_budget(strategy, exact):
    """Few word starts and a tiny budget: BERT's rule skips words longer than what is left."""
    rng = np.random.default_rng(7 + strategy)
    for p in (0.02, 0.1, 0.3):
        case = _random_case(rng, batch=4, length=300)
        case.update(
            strategy=strategy,
            exact=exact,
            weights_q=None,
            word_starts=torch.from_numpy(rng.random((4, 300)) < 0.08).to(torch.uint8),
            budget_table=_rng.exact_budget_table(p, 300) if exact else None,
            select_threshold=_rng.probability_threshold(p),
        )
        expected_ids, expected_labels = _reference(case)
        masked, labels = _run_cpp(case)
        assert np.array_equal(labels, expected_labels.numpy())
        assert np.array_equal(masked, expected_ids.numpy())


@pytest.mark.parametrize("strategy", range(3))
def test_long_row_exact(strategy):
    """20000 units in a row: the key buckets reach their cap (4096 buckets)."""
    rng = np.random.default_rng(strategy)
    case = _random_case(rng, batch=1, length=20000)
    case.update(
        strategy=strategy,
        exact=True,
        weights_q=None,
        special_mask=None,
        attention_mask=None,
        word_starts=torch.ones(1, 20000, dtype=torch.uint8) if strategy else None,
        budget_table=_rng.exact_budget_table(0.15, 20000),
    )
    expected_ids, expected_labels = _reference(case)
    masked, labels = _run_cpp(case)
    assert np.array_equal(labels, expected_labels.numpy())
    assert np.array_equal(masked, expected_ids.numpy())


@pytest.mark.parametrize("strategy", range(3))
@pytest.mark.parametrize("exact", [False, True])
def test_thread_count_does_not_change_the_result(strategy, exact):
    rng = np.random.default_rng(strategy + 10 * exact)
    # 256 rows of 128 tokens: the row grain (16384 tokens per chunk) gives two chunks or more
    case = _random_case(rng, batch=256, length=128)
    case.update(
        strategy=strategy,
        exact=exact,
        weights_q=None,
        select_threshold=_rng.probability_threshold(0.15),
        budget_table=_rng.exact_budget_table(0.15, 128) if exact else None,
    )
    before = _C.num_threads()
    try:
        results = []
        for threads in (1, 2, 3, 4):
            _C.set_num_threads(threads)
            results.append(_run_cpp(case))
    finally:
        _C.set_num_threads(before)
    for masked, labels in results[1:]:
        assert np.array_equal(masked, results[0][0])
        assert np.array_equal(labels, results[0][1])
    assert (results[0][1] != -100).any()


def _valid_case() -> dict:
    return _random_case(np.random.default_rng(0), batch=3, length=17) | dict(exact=False, budget_table=None, strategy=0)


def _call_with(**changes):
    fields = _plan_fields(_valid_case())
    ids = fields["input_ids"]
    fields["masked_out"], fields["labels_out"] = np.empty_like(ids), np.empty(ids.shape, dtype=np.int64)
    for name, value in changes.items():
        fields[name] = value(fields) if callable(value) else value
    masked, labels = fields.pop("masked_out"), fields.pop("labels_out")
    return _C.mask_tokens(fields, masked, labels)


def test_valid_call_runs():
    _call_with()


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(input_ids=lambda k: k["input_ids"].astype(np.int16)), "input_ids must be int32 or int64"),
        (dict(input_ids=lambda k: np.asfortranarray(np.tile(k["input_ids"], (1, 1)))[:, ::2]), "input_ids must"),
        (dict(input_ids=lambda k: k["input_ids"][:, 0]), "input_ids must have shape"),
        (dict(input_ids=[[1, 2]]), "input_ids must be a numpy array"),
        (dict(masked_out=lambda k: k["masked_out"].astype(np.float32)), "masked_out must have input_ids' dtype"),
        (dict(masked_out=lambda k: k["masked_out"][:, :-1]), "masked_out must have shape"),
        (dict(masked_out=lambda k: np.asfortranarray(k["masked_out"])), "masked_out must be C-contiguous"),
        (dict(labels_out=lambda k: k["labels_out"].astype(np.int32)), "labels_out must be int64"),
        (dict(labels_out=lambda k: _read_only(k["labels_out"])), "labels_out must be writable"),
        (dict(special_mask=lambda k: np.zeros(k["input_ids"].shape, np.int32)), "special_mask must be uint8"),
        (dict(attention_mask=np.ones((3, 16), np.uint8)), "attention_mask must have shape"),
        (dict(word_starts=lambda k: np.ones((17, 3), np.uint8).T), "word_starts must be C-contiguous"),
        (dict(vocab_flags=np.zeros((2, 2), np.uint8)), "vocab_flags must have shape"),
        (dict(weights_q=np.zeros(10, np.int64)), "weights_q must be int32"),
        (dict(row_keys=np.zeros(2, np.int64)), "row_keys must have shape"),
        (dict(row_keys=None), "row_keys must be an int64 array"),
        (dict(span_thresholds=np.zeros(3, np.int64)), "span_thresholds must be int32"),
        (dict(exact=True), "exact=True needs budget_table"),
        (dict(exact=True, budget_table=np.zeros(17, np.int32)), "budget_table has 17 entries"),
        (dict(strategy=3), "strategy = 3 is outside"),
        (dict(seed_mix1=2**32), "seed_mix1"),
        (dict(select_threshold=(1 << 24) + 1), "select_threshold"),
        (dict(replace_random_threshold=-1), "replace_random_threshold"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(vocab_size=None), "vocab_size must be an int"),
        (dict(seed_mix1=2**70), "seed_mix1 = .* does not fit in int64"),
        (
            dict(
                input_ids=lambda k: k["input_ids"].astype(np.int32),
                masked_out=lambda k: k["masked_out"].astype(np.int32),
                mask_token_id=2**31,
            ),
            "mask_token_id",
        ),
    ],
)
def test_bad_buffers_raise_value_error(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _call_with(**changes)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


def test_isa_switch_rejects_unknown_names():
    with pytest.raises(ValueError, match="isa must be"):
        _C._masking_isa("sse9")


def test_a_missing_plan_field_is_named():
    fields = _plan_fields(_valid_case())
    del fields["replace_mask_threshold"]
    ids = fields["input_ids"]
    with pytest.raises(ValueError, match="plan is missing the field 'replace_mask_threshold'"):
        _C.mask_tokens(fields, np.empty_like(ids), np.empty(ids.shape, dtype=np.int64))
