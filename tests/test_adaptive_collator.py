"""Live adaptive inputs of DataCollatorForLanguageModeling: a TokenLossTracker as token_weights and
an AdaptiveRate as mlm_probability — high-loss ids masked more at an unchanged budget, updates
reaching DataLoader workers within the documented lag, reproducibility and state_dict resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from collator_support import tokenizer

from fastmask import AdaptiveRate, DataCollatorForLanguageModeling, TokenLossTracker

POOL = range(1000, 1100)  # ordinary WordPiece ids of MiniLM's vocabulary
HIGH = range(1000, 1005)


def _rows(n: int, length: int, seed: int, pool=POOL) -> list:
    rng = np.random.default_rng(seed)
    return [{"input_ids": [101, *rng.choice(list(pool), size=length).tolist(), 102]} for _ in range(n)]


def _feedback(labels: torch.Tensor, seed: int):
    """Losses 6 for the HIGH ids, 1 for the others (plus noise); correct for the easy ids."""
    g = torch.Generator().manual_seed(seed)
    high = (labels >= HIGH.start) & (labels < HIGH.stop)
    losses = torch.where(high, 6.0, 1.0) + 0.1 * torch.rand(labels.shape, generator=g)
    return losses, ~high & (labels % 2 == 0)


def _masked_counts(collator, rows, batch=32):
    """(selected HIGH tokens, HIGH tokens, selected tokens, eligible tokens)."""
    sel_high = high = sel = eligible = 0
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        out = collator(chunk)
        original = torch.tensor([r["input_ids"] for r in chunk])
        selected = out["labels"] != -100
        is_high = (original >= HIGH.start) & (original < HIGH.stop)
        sel_high += int((selected & is_high).sum())
        high += int(is_high.sum())
        sel += int(selected.sum())
        eligible += int((original != 101).sum() - (original == 102).sum())
    return sel_high, high, sel, eligible


def test_high_loss_ids_masked_more_at_the_same_rate():
    tok = tokenizer("minilm")
    tracker = TokenLossTracker(len(tok), decay=0.5)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, token_weights=tracker, seed=3)
    rows = _rows(256, 126, seed=0)
    before = _masked_counts(collator, rows)
    for step in range(3):  # a few updates from training batches
        out = collator(_rows(32, 126, seed=10 + step))
        losses, correct = _feedback(out["labels"], step)
        tracker.update(out["labels"], losses, correct)
    after = _masked_counts(collator, rows)
    rate_before = before[0] / before[1]
    rate_after = after[0] / after[1]
    assert abs(rate_before - 0.15) < 0.03  # neutral weights before any feedback
    assert rate_after >= 3 * rate_before, (rate_before, rate_after)
    for _, _, sel, eligible in (before, after):
        assert abs(sel / eligible - 0.15) <= 0.01  # weights move positions, not the budget


def test_workers_see_updates_within_the_prefetch_lag():
    tok = tokenizer("minilm")
    tracker = TokenLossTracker(len(tok), decay=0.5, floor=1e-9)
    rate = AdaptiveRate(0.15, target_accuracy=0.5, min=0.05, max=0.5)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=rate, token_weights=tracker, seed=1)
    rows = _rows(8 * 24, 62, seed=5, pool=range(1000, 1020))
    workers, prefetch = 2, 1
    lag = workers * prefetch  # batches collated before an update may not see it
    loader = torch.utils.data.DataLoader(
        rows, batch_size=8, collate_fn=collator, num_workers=workers, prefetch_factor=prefetch
    )
    rate_update, weight_update = 4, 12
    masked_per_batch, only_1000 = [], []
    for index, batch in enumerate(loader):
        selected = batch["labels"] != -100
        masked_per_batch.append(int(selected.sum()))
        only_1000.append(bool((batch["labels"][selected] == 1000).all()) and bool(selected.any()))
        if index == rate_update:  # the model finds the task easy: the rate climbs to its max
            for _ in range(300):
                rate.observe(accuracy=1.0, step=index)
            assert rate.rate == pytest.approx(0.5)
        if index == weight_update:  # id 1000 is hard, every other id trivial
            labels = torch.arange(1000, 1020)
            tracker.update(labels, torch.where(labels == 1000, 5.0, 0.0))
    assert len(masked_per_batch) == 24
    rates = [m / (8 * 62) for m in masked_per_batch]
    assert max(rates[: rate_update + 1]) < 0.3  # collated at 0.15
    assert min(rates[rate_update + lag + 1 : weight_update + 1]) > 0.35  # at 0.5 from lag + 1 batches on
    assert not any(only_1000[: weight_update + 1])
    assert all(only_1000[weight_update + lag + 1 :])


def _run(collator, tracker, rate, batches, start=0):
    masks = []
    for step, rows in enumerate(batches, start):
        out = collator(rows)
        masks.append(out["input_ids"].clone())
        losses, correct = _feedback(out["labels"], step)
        tracker.update(out["labels"], losses, correct)
        rate.observe_tracker(tracker, step=step)
    return masks


def _fresh():
    tok = tokenizer("minilm")
    tracker = TokenLossTracker(len(tok), decay=0.8)
    rate = AdaptiveRate(0.2, target_accuracy=0.3, gain=5.0, max_step=0.5, smoothing=0.0)
    return DataCollatorForLanguageModeling(tok, mlm_probability=rate, token_weights=tracker, seed=7), tracker, rate


def test_reproducible_given_the_same_feedback_and_resumable():
    batches = [_rows(16, 40, seed=100 + k) for k in range(6)]
    first = _run(*_fresh(), batches)
    second = _run(*_fresh(), batches)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # the feedback changed the masks (compared with a static collator of the same seed)
    tok = tokenizer("minilm")
    static = DataCollatorForLanguageModeling(tok, mlm_probability=0.2, seed=7)
    assert not all(torch.equal(static(rows)["input_ids"], m) for rows, m in zip(batches, first))
    # resume after 3 batches from the collator's state_dict (tracker and rate included)
    collator, tracker, rate = _fresh()
    _run(collator, tracker, rate, batches[:3])
    state = copy.deepcopy(collator.state_dict())
    assert "token_weights" in state and "mlm_probability" in state
    resumed = _fresh()
    resumed[0].load_state_dict(state)
    assert resumed[1].updates == 3 and resumed[2].observations == 3
    rest = _run(*resumed, batches[3:], start=3)
    assert all(torch.equal(a, b) for a, b in zip(first[3:], rest))


def test_bad_live_input():
    tok = tokenizer("minilm")
    with pytest.raises(ValueError, match="bernoulli"):
        DataCollatorForLanguageModeling(tok, token_weights=TokenLossTracker(len(tok)), budget="exact")
    collator = DataCollatorForLanguageModeling(tok, seed=1)
    state = collator.state_dict()
    state["token_weights"] = TokenLossTracker(len(tok)).state_dict()
    with pytest.raises(ValueError, match="live token_weights"):
        collator.load_state_dict(state)
