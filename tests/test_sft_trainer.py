"""Completion-only SFT end to end under ``transformers.Trainer``: a small random Llama with
``apply_fastmask`` and ``DataCollatorForCompletionOnlyLM`` trains (finite, falling loss), and its
loss equals the unpatched model's, on one batch and step by step under the same Trainer run
(fp32: rtol 1e-5 on a batch; the Trainer logs losses rounded to 4 significant digits)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tiny_models import tiny_llama, trainer_args  # noqa: E402

from fastmask import DataCollatorForCompletionOnlyLM, apply_fastmask, data  # noqa: E402

STEPS = 8


def trainer_losses(model, features, collator, output_dir) -> list:
    args = trainer_args(
        output_dir,
        max_steps=STEPS,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        seed=0,
        remove_unused_columns=False,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=features, data_collator=collator)
    trainer.train()
    return [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_trains_a_patched_llama_like_the_stock_one(tmp_path):
    texts = data.instruction_texts()
    tokenizer = data.train_tokenizer("wordpiece", texts[:800], vocab_size=400)
    features = [{"input_ids": ids} for ids in tokenizer(texts[:96], truncation=True, max_length=48)["input_ids"]]
    collator = DataCollatorForCompletionOnlyLM(data.RESPONSE_TEMPLATE, tokenizer=tokenizer, seed=0)
    stock = tiny_llama(
        len(tokenizer), pad=tokenizer.pad_token_id, bos=tokenizer.cls_token_id, eos=tokenizer.sep_token_id
    ).train()
    patched = apply_fastmask(copy.deepcopy(stock))

    batch = collator(features[:8])
    assert 0 < int((batch["labels"] != -100).sum()) < int(batch["attention_mask"].sum())  # prompts ignored
    out_p, out_s = patched(**batch), stock(**batch)
    assert out_p.logits is None  # the fused head ran: no B x L x V logits
    torch.testing.assert_close(out_p.loss, out_s.loss, rtol=1e-5, atol=1e-6)

    fast = trainer_losses(patched, features, collator, tmp_path / "fastmask")
    slow = trainer_losses(stock, features, collator, tmp_path / "stock")
    assert len(fast) == STEPS and all(math.isfinite(x) for x in fast)
    assert sum(fast[-3:]) / 3 < sum(fast[:3]) / 3 - 0.2  # learning, not noise
    torch.testing.assert_close(fast, slow, rtol=0, atol=2e-3)
