"""Statistics of the masking op on real text under three tokenizer families.

Rates are measured over >= 200k eligible tokens; the equality tests in test_masking.py make
these results hold for every backend.
"""

from __future__ import annotations

import math

import pytest
import torch
from text_fixtures import encoded_batch, packed_batch

import fastmask
from fastmask import _rng
from fastmask.masking import _span_tables
from fastmask.reference.masking import eligibility_and_units, span_lengths

KINDS = ["minilm", "bpe", "unigram"]
MIN_TOKENS = 200_000
P = 0.15


def _mask(batch, **kwargs):
    tok = batch["tokenizer"]
    args = dict(
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        special_tokens_mask=batch["special_tokens_mask"],
        word_start_table=fastmask.word_start_table(tok),
        seed=1234,
    )
    args.update(kwargs)
    return fastmask.mask_tokens(batch["input_ids"], **args)


def _units(batch, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ``(eligible, unit_start)`` of the batch, words from the tokenizer's table."""
    return eligibility_and_units(
        batch["input_ids"],
        special_mask=batch["special_tokens_mask"],
        attention_mask=None,
        word_starts=None,
        vocab_flags=torch.where(fastmask.word_start_table(batch["tokenizer"]), 2, 0).to(torch.uint8),
        pad_token_id=-1,
        strategy=strategy,
    )


def _word_ids(batch) -> torch.Tensor:
    """Per-token word index under the table's boundaries (-1 at special tokens)."""
    eligible, unit_start = _units(batch, "whole_word")
    words = torch.cumsum(unit_start.flatten().to(torch.int64), 0).view_as(unit_start) - 1
    return torch.where(eligible, words, torch.full_like(words, -1)), eligible


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
def test_rate_and_replacement_split(kind, strategy):
    batch = packed_batch(kind, 512, MIN_TOKENS)
    ids = batch["input_ids"]
    masked, labels = _mask(batch, strategy=strategy, mlm_probability=P)
    selected = labels != -100
    eligible = ~batch["special_tokens_mask"]
    assert eligible.sum() >= MIN_TOKENS
    assert not selected[batch["special_tokens_mask"]].any(), "a special token was selected"
    assert torch.equal(labels[selected], ids[selected])
    rate = selected.sum().item() / eligible.sum().item()
    assert abs(rate - P) <= 0.01, f"{kind}/{strategy}: selected {rate:.4f} of eligible tokens, want {P} +- 0.01"
    n = selected.sum().item()
    to_mask = (masked[selected] == batch["tokenizer"].mask_token_id).sum().item() / n
    kept = (masked[selected] == ids[selected]).sum().item() / n
    assert abs(to_mask - 0.8) <= 0.02 and abs(kept - 0.1) <= 0.02, (to_mask, kept)
    assert torch.equal(masked[~selected], ids[~selected]), "an unselected token was changed"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", ["whole_word", "span"])
@pytest.mark.parametrize("budget", ["bernoulli", "exact"])
def test_whole_words_only(kind, strategy, budget):
    batch = packed_batch(kind, 512, MIN_TOKENS // 4)
    _, labels = _mask(batch, strategy=strategy, budget=budget, mlm_probability=0.3)
    selected = (labels != -100).flatten()
    words, _ = _word_ids(batch)
    words = words.flatten()
    inside = words >= 0
    per_word_selected = torch.zeros(int(words.max()) + 1, dtype=torch.int64).index_add_(
        0, words[inside], selected[inside].long()
    )
    per_word_size = torch.bincount(words[inside])
    partial = (per_word_selected > 0) & (per_word_selected < per_word_size)
    assert not partial.any(), f"{int(partial.sum())} words were partly selected"
    assert (per_word_size > 1).sum() > 1000, "the corpus should have many multi-token words"


@pytest.mark.parametrize("kind", KINDS)
def test_whole_words_from_offsets(kind):
    batch = encoded_batch(kind, 128, 1500)
    starts = fastmask.word_starts_from_offsets(batch["offset_mapping"], batch["special_tokens_mask"])
    tok = batch["tokenizer"]
    _, labels = fastmask.mask_tokens(
        batch["input_ids"],
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        mlm_probability=0.3,
        special_tokens_mask=batch["special_tokens_mask"],
        attention_mask=batch["attention_mask"],
        word_starts=starts,
        strategy="whole_word",
    )
    selected = labels != -100
    assert not selected[batch["attention_mask"] == 0].any(), "padding was selected"
    offsets = batch["offset_mapping"]
    # a token glued to its predecessor (start == previous end) shares its fate
    glued = (
        (offsets[:, 1:, 0] == offsets[:, :-1, 1])
        & (batch["special_tokens_mask"][:, 1:] == 0)
        & (batch["special_tokens_mask"][:, :-1] == 0)
    )
    assert glued.sum() > 1000
    assert torch.equal(selected[:, 1:][glued], selected[:, :-1][glued])


@pytest.mark.parametrize("distribution,max_words", [("geometric", 10), ("uniform", 5)])
def test_span_lengths_follow_distribution(distribution, max_words):
    batch = packed_batch("minilm", 512, MIN_TOKENS)
    span_p = 0.2
    _, labels = _mask(batch, strategy="span", span_distribution=distribution, span_p=span_p, max_span_words=max_words)
    thresholds, probs = _span_tables(distribution, span_p, max_words)
    ids = batch["input_ids"]
    eligible, unit_start = _units(batch, "span")
    # Reconstruct the anchors and their drawn lengths from the documented generator.
    positions = torch.arange(ids.shape[1])
    mix1, mix2 = _rng.seed_mix(1234)
    s1, s2 = (s[:, None] for s in _rng.row_states(torch.arange(ids.shape[0]), mix1, mix2))
    q = _rng.span_anchor_probability(P, probs)
    anchors = unit_start & ((_rng.draw(s1, s2, positions, _rng.STREAM_SELECT) >> 8) < _rng.probability_threshold(q))
    lengths = span_lengths(_rng.draw(s1, s2, positions, _rng.STREAM_SPAN_LENGTH) >> 8, thresholds)[anchors].double()
    expected_mean = sum((n + 1) * w for n, w in enumerate(probs))
    assert anchors.sum() > 3000
    assert abs(lengths.mean().item() - expected_mean) <= 0.05 * expected_mean
    for n in range(1, max_words + 1):  # each length's frequency within 5 standard errors
        freq = (lengths == n).double().mean().item()
        stderr = math.sqrt(probs[n - 1] * (1 - probs[n - 1]) / lengths.numel())
        assert abs(freq - probs[n - 1]) <= 5 * stderr + 1e-4, (n, freq, probs[n - 1])
    # every anchor's first word is selected, and the selection is a union of whole spans
    selected = labels != -100
    assert selected[anchors].all()
    assert abs(selected.sum().item() / eligible.sum().item() - P) <= 0.01


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", ["token", "whole_word", "span"])
def test_exact_budget(kind, strategy):
    batch = packed_batch(kind, 128, 40_000)
    special = batch["special_tokens_mask"].clone()
    special[::3, 64:] = True  # rows with fewer eligible tokens
    batch = dict(batch, special_tokens_mask=special)
    _, labels = _mask(batch, strategy=strategy, budget="exact", mlm_probability=P)
    eligible = (~special).sum(dim=1)
    want = torch.floor(eligible.double() * P + 0.5).long()
    got = (labels != -100).sum(dim=1)
    if strategy == "token":
        assert torch.equal(got, want)
    else:  # BERT's greedy whole-word rule: never over, and exact unless no remaining word fits
        assert (got <= want).all()
        assert (got == want).double().mean() >= 0.98, f"only {(got == want).double().mean():.3f} of rows exact"


def test_token_weights_shift_selection_but_keep_rate():
    batch = packed_batch("minilm", 512, MIN_TOKENS)
    tok = batch["tokenizer"]
    ids = batch["input_ids"]
    weights = torch.ones(len(tok))
    heavy = torch.arange(len(tok)) % 2 == 0
    weights[heavy] = 3.0
    _, labels = _mask(batch, token_weights=weights, mlm_probability=P)
    selected = labels != -100
    eligible = ~batch["special_tokens_mask"]
    rate = selected.sum().item() / eligible.sum().item()
    assert abs(rate - P) <= 0.01
    heavy_pos = heavy[ids] & eligible
    light_pos = ~heavy[ids] & eligible
    ratio = (selected[heavy_pos].double().mean() / selected[light_pos].double().mean()).item()
    assert 2.6 <= ratio <= 3.4, f"weight 3 vs 1 gave selection ratio {ratio:.2f}"
