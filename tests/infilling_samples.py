"""``sample_inputs``: one generator of text_infilling calls, shared by every text-infilling test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

VOCAB = 500
PAD, BOS, EOS, MASK = 0, 1, 2, 3  # ids of the rows are >= 5


def sample_inputs(*, small: bool = False, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """Yields ``(name, kwargs)`` for ``fastmask.text_infilling`` covering every option: the three
    replace lengths, inserts, random ids, word starts, specials (BOS / EOS and one in the middle),
    padding by id or by attention mask (right and left), both id dtypes, row keys.

    ``small=True``: only tiny shapes (for the Triton interpreter)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 3), (4, 12), (2, 24)] if small else [(3, 3), (4, 12), (5, 40), (3, 128), (2, 600)]
    configs = [
        dict(mask_ratio=0.3, poisson_lambda=3.0, random_ratio=0.1, insert_ratio=0.0),
        dict(mask_ratio=0.9, poisson_lambda=0.7, random_ratio=0.5, insert_ratio=0.3),
        dict(mask_ratio=1.0, poisson_lambda=5.0, random_ratio=0.0, insert_ratio=1.0),
    ]
    for (batch, length), config, replace_length in itertools.product(shapes, configs, (1, -1, 0)):
        dtype = torch.int64 if replace_length != 0 else torch.int32
        ids = torch.randint(5, VOCAB, (batch, length), generator=g)
        lengths = torch.randint(min(2, length), length + 1, (batch,), generator=g)
        lengths[0] = length
        columns = torch.arange(length)[None, :]
        attention = (columns < lengths[:, None]).to(torch.int64)
        ids[:, 0] = BOS
        ids[torch.arange(batch), lengths - 1] = EOS
        if length >= 12:
            ids[1, length // 3] = EOS  # a special token inside a row: no span crosses it
        padded = torch.where(attention.bool(), ids, torch.full_like(ids, PAD))
        special = (padded == BOS) | (padded == EOS)
        word_starts = torch.rand(batch, length, generator=g) < 0.6
        left = torch.flip(attention, dims=[1])
        base = dict(
            mask_token_id=MASK,
            pad_token_id=PAD,
            vocab_size=VOCAB,
            replace_length=replace_length,
            seed=int(torch.randint(0, 2**62, (1,), generator=g)),
            **config,
        )
        name = f"{batch}x{length}-r{config['mask_ratio']}-l{config['poisson_lambda']}-rl{replace_length}"
        yield name + "-padded", dict(base, input_ids=padded.to(dtype), special_tokens_mask=special)
        yield (
            name + "-words-left",
            dict(
                base,
                input_ids=torch.flip(padded, dims=[1]).to(dtype),
                attention_mask=left,
                special_tokens_mask=torch.flip(special, dims=[1]),
                word_starts=word_starts,
                row_keys=torch.randint(-(2**62), 2**62, (batch,), generator=g),
            ),
        )
        yield name + "-plain", dict(base, input_ids=ids.to(dtype), attention_mask=attention, word_starts=word_starts)
