"""Live rates in the seq2seq and augmentation collators: an AdaptiveRate (or a MaskingSchedule) as
the source-noise probability, text infilling's mask_ratio and the augmentation collator's noise
probabilities — read per batch (exactly the batch a float rate of that value gives), reaching
DataLoader workers within the prefetch lag, restored by state_dict; span corruption refuses one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from collator_support import tokenizer

import fastmask
from fastmask import AdaptiveRate, MaskingSchedule

POOL = range(1000, 1100)  # ordinary WordPiece ids of MiniLM's vocabulary (single-token words)
KINDS = ("source_noise", "infilling", "augmentation")


def _tok():
    return copy.copy(tokenizer("minilm"))


def _make(kind: str, rate, tok=None, **extra):
    """A collator of ``kind`` whose masking rate is ``rate``; masks only (no random ids, no
    deletion), so a batch keeps its width and its mask tokens count the noise."""
    tok = tok or _tok()
    if kind == "source_noise":
        return fastmask.DataCollatorForSeq2Seq(tok, source_mask_probability=rate, seed=3, **extra)
    if kind == "infilling":
        return fastmask.DataCollatorForTextInfilling(
            tok, mask_ratio=rate, random_ratio=0.0, replace_length=-1, seed=3, **extra
        )
    return fastmask.DataCollatorForMaskedAugmentation(tok, mask_probability=rate, seed=3, **extra)


def _rows(n: int, length: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [{"input_ids": [101, *rng.choice(list(POOL), size=length).tolist(), 102]} for _ in range(n)]


def _masked_fraction(batch, length: int) -> float:
    ids = batch["input_ids"]
    return int((ids == 103).sum()) / (ids.shape[0] * length)  # 103: [MASK]


def _controller(start: float = 0.1) -> AdaptiveRate:
    return AdaptiveRate(start, target_accuracy=0.5, min=0.05, max=0.5, gain=5.0, max_step=0.5, smoothing=0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_live_rate_gives_each_batch_exactly_the_float_rate_of_that_moment(kind):
    rate = _controller()
    live = _make(kind, rate)
    batches = [_rows(16, 60, seed=k) for k in range(3)]
    used, outs = [], []
    for rows in batches:
        used.append(rate(live.step))
        outs.append(live(rows))
        rate.observe(accuracy=1.0)  # the model finds the task easy: the rate climbs
    assert used[0] == pytest.approx(0.1) and used[0] < used[1] < used[2]
    for index, value in enumerate(used):  # a collator with that float, at the same stream position
        static = _make(kind, value)
        for rows in batches[:index]:
            static(rows)
        expected = static(batches[index])
        assert expected.keys() == outs[index].keys() and "input_ids" in expected
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, outs[index][key]), (kind, index, key)
            else:
                assert value == outs[index][key], (kind, index, key)
    assert _masked_fraction(outs[2], 60) > _masked_fraction(outs[0], 60) + 0.1


def test_a_schedule_follows_set_step():
    schedule = MaskingSchedule("linear", start=0.0, end=0.4, total_steps=10)
    collator = _make("source_noise", schedule)
    rows = _rows(16, 60, seed=1)
    assert not collator.adds_noise  # 0 at step 0: transformers' batch
    assert _masked_fraction(collator(rows), 60) == 0.0
    collator.set_step(10)
    assert collator.adds_noise
    assert abs(_masked_fraction(collator(rows), 60) - 0.4) < 0.06


def test_workers_see_a_rate_update_within_the_prefetch_lag():
    rate = AdaptiveRate(0.15, target_accuracy=0.5, min=0.05, max=0.5)
    collator = _make("augmentation", rate)
    rows = _rows(8 * 20, 62, seed=5)
    workers, prefetch = 2, 1
    lag = workers * prefetch  # batches collated before an update may not see it
    loader = torch.utils.data.DataLoader(
        rows, batch_size=8, collate_fn=collator, num_workers=workers, prefetch_factor=prefetch
    )
    update = 4
    fractions = []
    for index, batch in enumerate(loader):
        fractions.append(_masked_fraction(batch, 62))
        if index == update:
            for _ in range(300):
                rate.observe(accuracy=1.0, step=index)
            assert rate.rate == pytest.approx(0.5)
    assert len(fractions) == 20
    assert max(fractions[: update + 1]) < 0.3  # collated at 0.15
    assert min(fractions[update + lag + 1 :]) > 0.35  # at 0.5 from lag + 1 batches on


def _run(collator, rate, batches, start=0):
    """Collate, feed an accuracy that depends on the batch (a stand-in for the model), step on."""
    outs = []
    for step, rows in enumerate(batches, start):
        out = collator(rows)
        outs.append(out["input_ids"].clone())
        rate.observe(accuracy=0.9 if step % 3 else 0.2, step=step)
        collator.set_step(step + 1)
    return outs


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_resumes_the_live_rate_exactly(kind):
    batches = [_rows(8, 40, seed=100 + k) for k in range(6)]
    first_rate = _controller(0.2)
    first = _run(_make(kind, first_rate), first_rate, batches)
    rate = _controller(0.2)
    collator = _make(kind, rate)
    _run(collator, rate, batches[:3])
    state = copy.deepcopy(collator.state_dict())
    assert set(state) >= {"format", "seed", "step"} and any(isinstance(v, dict) for v in state.values())
    resumed_rate = _controller(0.2)
    resumed = _make(kind, resumed_rate)
    resumed.load_state_dict(state)
    assert resumed_rate.observations == 3 and resumed_rate.rate == rate.rate != 0.2
    rest = _run(resumed, resumed_rate, batches[3:], start=3)
    assert all(torch.equal(a, b) for a, b in zip(first[3:], rest))
    # a collator with a float rate cannot take a live rate's state
    with pytest.raises(ValueError, match="live"):
        _make(kind, 0.2).load_state_dict(state)


def test_span_corruption_refuses_a_live_density():
    tok = _tok()  # refused before the tokenizer's sentinels are looked at
    for live in (_controller(), MaskingSchedule("linear", start=0.3, end=0.15, total_steps=10)):
        with pytest.raises(TypeError, match="noise_density.*fixed density.*expanded input length"):
            fastmask.DataCollatorForSpanCorruption(tok, noise_density=live, input_length=32)


def test_live_rates_that_sum_above_one_are_refused_per_batch():
    rate = AdaptiveRate(0.6, target_accuracy=0.5, min=0.05, max=0.9, gain=5.0, max_step=0.5, smoothing=0.0)
    collator = _make("augmentation", rate, random_replace_probability=0.3)
    collator(_rows(4, 20, seed=0))  # 0.9 in all: fine
    for _ in range(20):
        rate.observe(accuracy=1.0)
    with pytest.raises(ValueError, match="mask_probability \\+ random_replace_probability.*exceeds 1"):
        collator(_rows(4, 20, seed=0))
    with pytest.raises(ValueError, match="exceeds 1"):  # already above 1 at step 0
        _make("source_noise", _controller(0.45), source_random_probability=0.6)


def test_the_callback_finds_the_collators_live_rate():
    rate = _controller()
    collator = _make("source_noise", rate)
    callback = fastmask.AdaptiveMaskingCallback(collator, torch.nn.Linear(2, 2))
    assert callback.rate is rate and callback.tracker is None
    callback.remove()
    two = _make("augmentation", rate, delete_probability=_controller(0.05))
    with pytest.raises(ValueError, match="several AdaptiveRates"):
        fastmask.AdaptiveMaskingCallback(two, torch.nn.Linear(2, 2))
