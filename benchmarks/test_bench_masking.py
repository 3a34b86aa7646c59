"""pytest-benchmark suite for the masking op (small shapes; run with ``pytest benchmarks/``).

The same real-text batch as :mod:`fastmask.bench.masking` (stdlib docstrings, MiniLM WordPiece), masked
by each fastmask backend and by transformers' ``torch_mask_tokens``; compare the rows of one
group (``--benchmark-group-by=group``, the default here groups by strategy and shape).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import fastmask
from fastmask import _backend
from fastmask.bench import common, masking

SHAPES = [(8, 128), (4, 512)]
STRATEGIES = ["token", "whole_word", "span"]


@pytest.fixture(scope="module")
def corpus():
    tokenizer, _ = common.load_tokenizer()
    return tokenizer, common.token_stream(tokenizer)


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def batch(request, corpus):
    tokenizer, stream = corpus
    batch_size, length = request.param
    data = masking.make_batch(tokenizer, stream, batch_size, length)
    data["word_starts"] = fastmask.word_starts_from_offsets(data["offset_mapping"], data["special_tokens_mask"])
    return tokenizer, data


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_fastmask(benchmark, batch, backend, strategy):
    reason = _backend.unavailable_reason(backend, torch.device("cpu"))
    if reason:
        pytest.skip(reason)
    tokenizer, data = batch
    ids = data["input_ids"]
    benchmark.group = f"{strategy} {tuple(ids.shape)}"
    benchmark.extra_info["positions"] = ids.numel()
    masked, labels = benchmark(
        fastmask.mask_tokens,
        ids,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_tokens_mask=data["special_tokens_mask"],
        word_starts=data["word_starts"],
        strategy=strategy,
        backend=backend,
    )
    assert masked.shape == ids.shape and (labels != -100).any()


@pytest.mark.parametrize("strategy", ["token", "whole_word"])
def test_transformers(benchmark, batch, strategy):
    transformers = pytest.importorskip("transformers")
    tokenizer, data = batch
    ids, special = data["input_ids"], data["special_tokens_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collator = transformers.DataCollatorForLanguageModeling(tokenizer, whole_word_mask=strategy == "whole_word")
    extra = {"offset_mapping": data["offset_mapping"]} if strategy == "whole_word" else {}
    benchmark.group = f"{strategy} {tuple(ids.shape)}"
    benchmark.extra_info["positions"] = ids.numel()

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special, **extra)

    masked, labels = benchmark(call)
    assert masked.shape == ids.shape and (labels != -100).any()
