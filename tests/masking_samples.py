"""``sample_inputs``: one generator of mask_tokens calls, shared by every masking test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from fastmask.masking import BUDGETS, STRATEGIES

VOCAB = 1000
MASK_ID = 4
SPECIAL_IDS = (0, 1, 2, 3, 4)  # pad, cls, sep, unk, mask


def _batch(generator: torch.Generator, batch: int, length: int, dtype: torch.dtype, *, pad_rows: bool = True):
    ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    attention = torch.ones(batch, length, dtype=torch.int64)
    if length >= 2:
        ids[:, 0] = 1
        lengths = (
            torch.randint(1, length + 1, (batch,), generator=generator) if pad_rows else torch.full((batch,), length)
        )
        for b, n in enumerate(lengths.tolist()):
            ids[b, n - 1] = 2
            ids[b, n:] = 0
            attention[b, n:] = 0
    special = torch.isin(ids, torch.tensor(SPECIAL_IDS))
    if batch > 2:
        special[1] = True  # a row that is all special tokens
        ids[1] = 1
    return ids.to(dtype), special, attention


def sample_inputs(*, long_rows: bool = True, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """Yields ``(name, kwargs)`` for ``fastmask.mask_tokens`` covering every option."""
    g = torch.Generator().manual_seed(seed)
    table = torch.rand(VOCAB, generator=g) < 0.7
    table[list(SPECIAL_IDS)] = True
    weights = torch.rand(VOCAB, generator=g) * 3
    shapes = [(4, 1), (3, 2), (5, 17), (6, 64), (2, 300)]
    options = list(itertools.product(STRATEGIES, BUDGETS))
    for (batch, length), (strategy, budget), dtype in itertools.product(shapes, options, (torch.int64, torch.int32)):
        ids, special, attention = _batch(g, batch, length, dtype)
        word_starts = torch.rand(batch, length, generator=g) < 0.6
        base = dict(
            input_ids=ids,
            mask_token_id=MASK_ID,
            vocab_size=VOCAB,
            strategy=strategy,
            budget=budget,
            seed=int(torch.randint(0, 2**62, (1,), generator=g)),
        )
        name = f"{strategy}-{budget}-{batch}x{length}-{str(dtype)[6:]}"
        yield name + "-specialmask", dict(base, special_tokens_mask=special, word_starts=word_starts)
        yield (
            name + "-table",
            dict(
                base,
                attention_mask=attention,
                special_token_ids=SPECIAL_IDS,
                word_start_table=table,
                mlm_probability=0.4,
                row_keys=torch.randint(-(2**62), 2**62, (batch,), generator=g),
            ),
        )
        if budget == "bernoulli":
            yield (
                name + "-weights",
                dict(base, special_tokens_mask=special, word_start_table=table, token_weights=weights),
            )
        if strategy == "span":
            yield (
                name + "-uniform",
                dict(
                    base,
                    special_tokens_mask=special,
                    word_starts=word_starts,
                    span_distribution="uniform",
                    max_span_words=4,
                    mlm_probability=0.5,
                ),
            )
    for budget in BUDGETS:  # many short segments and long spans: the segment clip matters
        ids, special, _ = _batch(g, 4, 120, torch.int64, pad_rows=False)
        special |= torch.rand(4, 120, generator=g) < 0.15
        yield (
            f"short-segments-span-{budget}",
            dict(
                input_ids=ids,
                mask_token_id=MASK_ID,
                vocab_size=VOCAB,
                strategy="span",
                budget=budget,
                special_tokens_mask=special,
                word_starts=torch.rand(4, 120, generator=g) < 0.8,
                mlm_probability=0.5,
                span_distribution="uniform",
                max_span_words=12,
                seed=11,
            ),
        )
    for p, (strategy, budget) in itertools.product((0.0, 1.0), options):
        ids, special, attention = _batch(g, 3, 40, torch.int64)
        yield (
            f"p{p}-{strategy}-{budget}",
            dict(
                input_ids=ids,
                mask_token_id=MASK_ID,
                vocab_size=VOCAB,
                mlm_probability=p,
                strategy=strategy,
                budget=budget,
                special_tokens_mask=special,
                word_starts=torch.rand(3, 40, generator=g) < 0.5,
                mask_replace_prob=1.0 - p,
                random_replace_prob=p,
                pad_token_id=0,
            ),
        )
    if long_rows:
        for strategy, budget in options:
            ids, special, attention = _batch(g, 2, 8192, torch.int64, pad_rows=False)
            yield (
                f"L8192-{strategy}-{budget}",
                dict(
                    input_ids=ids,
                    mask_token_id=MASK_ID,
                    vocab_size=VOCAB,
                    strategy=strategy,
                    budget=budget,
                    special_tokens_mask=special,
                    word_start_table=table,
                    seed=7,
                ),
            )
