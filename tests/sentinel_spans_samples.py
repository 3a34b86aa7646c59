"""``sample_inputs``: one generator of span_corruption calls, shared by every span-corruption test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

VOCAB = 500
PAD, EOS, FIRST_SENTINEL = 0, 1, VOCAB + 999  # sentinels above the ids of the rows, as in T5


def sample_inputs(*, small: bool = False, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """Yields ``(name, kwargs)`` for ``fastmask.span_corruption`` covering every option.

    ``small=True``: only tiny shapes (for the Triton interpreter)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 2), (4, 9), (2, 16)] if small else [(3, 2), (4, 9), (5, 40), (3, 128), (2, 600)]
    densities = [(0.15, 3.0), (0.5, 1.0), (0.3, 2.5)]
    for (batch, length), (density, mean), dtype in itertools.product(shapes, densities, (torch.int64, torch.int32)):
        ids = torch.randint(2, VOCAB, (batch, length), generator=g)
        lengths = torch.randint(min(2, length), length + 1, (batch,), generator=g)
        lengths[0] = length
        attention = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.int64)
        padded = torch.where(attention.bool(), ids, torch.full_like(ids, PAD))
        word_starts = torch.rand(batch, length, generator=g) < 0.5
        word_starts[:, 1] = True  # at least two words in every row of >= 2 tokens
        base = dict(
            first_sentinel_id=FIRST_SENTINEL,
            eos_token_id=EOS,
            pad_token_id=PAD,
            noise_density=density,
            mean_noise_span_length=mean,
            seed=int(torch.randint(0, 2**62, (1,), generator=g)),
        )
        name = f"{batch}x{length}-d{density}-m{mean}-{str(dtype)[6:]}"
        yield name + "-full", dict(base, input_ids=ids.to(dtype))
        yield name + "-padded", dict(base, input_ids=padded.to(dtype))
        yield (
            name + "-attention",
            dict(
                base,
                input_ids=ids.to(dtype),
                attention_mask=attention,
                row_keys=torch.randint(-(2**62), 2**62, (batch,), generator=g),
            ),
        )
        yield name + "-words", dict(base, input_ids=padded.to(dtype), word_starts=word_starts)
