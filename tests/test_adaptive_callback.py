"""AdaptiveMaskingCallback under transformers.Trainer: every optimizer step feeds the tracker and
the rate from the training forward's logits (or, on an apply_fastmask-patched model, from the fused loss); token_feedback equals torch's cross-entropy."""

from __future__ import annotations

import warnings

import pytest
import torch
from collator_support import features, tokenizer
from tiny_models import tiny_bert, trainer_args

from fastmask import (
    AdaptiveMaskingCallback,
    AdaptiveRate,
    DataCollatorForLanguageModeling,
    TokenLossTracker,
    apply_fastmask,
    set_loss_feedback,
)
from fastmask.adaptive_callback import token_feedback


def test_token_feedback_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, :2] = -100
    logits[1, 1, labels[1, 1]] = 50.0  # certainly correct
    ids, losses, correct = token_feedback(logits, labels)
    keep = labels != -100
    assert torch.equal(ids, labels[keep])
    torch.testing.assert_close(losses, torch.nn.functional.cross_entropy(logits[keep], ids, reduction="none"))
    assert torch.equal(correct, logits[keep].argmax(-1) == ids)
    assert bool(correct[int(keep[0].sum()) + 1])  # labels[1, 1], made certain above


@pytest.mark.parametrize("patched", [False, True], ids=["hook", "fused-head-feedback"])
def test_trainer_feeds_tracker_and_rate(tmp_path, patched):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    import transformers

    tok = tokenizer()
    model = tiny_bert(len(tok))
    if patched:  # no logits in training: the feedback comes from the fused loss's kernels
        apply_fastmask(model)
    tracker = TokenLossTracker(len(tok), decay=0.9)
    rate = AdaptiveRate(0.15, target_accuracy=0.5, gain=2.0, max_step=0.3, smoothing=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collator = DataCollatorForLanguageModeling(tok, mlm_probability=rate, token_weights=tracker, seed=0)
    args = trainer_args(tmp_path, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3)
    callback = AdaptiveMaskingCallback(collator, model)
    assert callback.tracker is tracker and callback.rate is rate
    assert (callback._patched is model) == patched
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=features(rows=16, max_length=64),
        data_collator=collator,
        callbacks=[callback],
    )
    trainer.train()
    assert tracker.updates == 4 and rate.observations == 4 and collator.step == 4
    assert int(tracker.counts.sum()) > 0 and tracker.last_accuracy is not None
    assert rate.rate < 0.15  # a random model's accuracy is far below 0.5: the rate went down
    assert not torch.equal(tracker.token_weights(), torch.ones(len(tok)))
    callback.remove()
    if patched:
        assert set_loss_feedback(model, None) is None  # remove() gave the patch its previous feedback back


def test_bad_arguments():
    tok = tokenizer()
    collator = DataCollatorForLanguageModeling(tok, seed=0)
    with pytest.raises(ValueError, match="tracker= and/or rate="):
        AdaptiveMaskingCallback(collator, torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        AdaptiveMaskingCallback(collator, object(), tracker=TokenLossTracker(len(tok)))
