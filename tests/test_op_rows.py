"""The row ops' shared single-row handling (fastmask._op_rows): an [L] row is a batch of one, its
masks must be [L] too (a [B, L] mask with [L] ids is refused, not reshaped)."""

from __future__ import annotations

import pytest
import torch

import fastmask

ROW = torch.tensor([101, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 102], dtype=torch.int64)

OPS = {
    "mask_tokens": lambda ids, mask: fastmask.mask_tokens(
        ids, mask_token_id=103, vocab_size=200, mlm_probability=0.4, attention_mask=mask, seed=3
    ),
    "span_corruption": lambda ids, mask: fastmask.span_corruption(
        ids, first_sentinel_id=199, eos_token_id=102, pad_token_id=0, attention_mask=mask, seed=3
    ),
    "text_infilling": lambda ids, mask: fastmask.text_infilling(
        ids, mask_token_id=103, pad_token_id=0, vocab_size=200, attention_mask=mask, seed=3
    ),
}


@pytest.mark.parametrize("op", OPS)
def test_one_row_is_a_batch_of_one(op):
    mask = torch.ones_like(ROW, dtype=torch.bool)
    single = OPS[op](ROW, mask)
    batched = OPS[op](ROW[None], mask[None])
    assert len(single) == len(batched)
    for one, batch in zip(single, batched):
        assert one.dim() == 1 and torch.equal(one, batch[0])


@pytest.mark.parametrize("op", OPS)
def test_a_batch_mask_with_one_row_of_ids_is_refused(op):
    mask = torch.ones((1, ROW.numel()), dtype=torch.bool)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 13\) but input_ids is 1-D"):
        OPS[op](ROW, mask)
