"""Closing the loop under ``transformers.Trainer``: :class:`AdaptiveMaskingCallback`.

The callback watches the model's training forward passes (a forward hook: the labels the loss saw
and the logits it was computed from), turns every labelled position into feedback — its
cross-entropy and a "predicted correctly" bit (the label's logit equals the row max) — and at the
end of every optimizer step feeds a :class:`~fastmask.TokenLossTracker` (``tracker.update``) and
an :class:`~fastmask.AdaptiveRate` (``rate.observe`` with the step's masked-token accuracy or
loss), then calls ``collator.set_step``. The collator reads the new weights and rate from shared
memory on its next batch (lag: :class:`fastmask.DataCollatorForLanguageModeling`).

The feedback is computed from the logits of the masked rows only (a log-softmax over them, no
second forward pass). Models whose forward returns no logits (``apply_fastmask``'s fused head)
are not supported yet: the loss kernels do not hand per-token feedback out yet.
"""

from __future__ import annotations

from typing import Optional

import torch

from .collator import _is_live_weights
from .schedules import MaskingScheduleCallback

__all__ = ["AdaptiveMaskingCallback", "token_feedback"]


@torch.no_grad()
def token_feedback(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """``(labels, losses, correct)`` of the labelled positions: int64 ``[M]``, float32 ``[M]``
    cross-entropy, bool ``[M]`` (label logit equals the row max)."""
    selected = labels != ignore_index
    target = labels[selected]
    chosen = logits[selected].float()
    log_z = torch.logsumexp(chosen, dim=-1)
    label_logit = chosen.gather(1, target.unsqueeze(1)).squeeze(1)
    return target, log_z - label_logit, label_logit >= chosen.max(dim=-1).values


class AdaptiveMaskingCallback(MaskingScheduleCallback):
    """A ``TrainerCallback`` feeding per-token feedback back into the masking (module docstring).

    Args:
        collator: the fastmask collator of the run (its ``token_weights`` / ``mlm_probability``
            are normally ``tracker`` / ``rate``).
        model: the model ``Trainer`` trains (the hook goes on it; wrappers such as DDP are fine).
        tracker: a :class:`~fastmask.TokenLossTracker` (default: the collator's live weights).
        rate: an :class:`~fastmask.AdaptiveRate` (default: the collator's, when it is one).
        set_epoch: as :class:`~fastmask.MaskingScheduleCallback`.
    """

    def __init__(self, collator, model, *, tracker=None, rate=None, set_epoch: bool = True):
        super().__init__(collator, set_epoch=set_epoch)
        if tracker is None and _is_live_weights(getattr(collator, "token_weights", None)):
            tracker = collator.token_weights
        if rate is None and callable(getattr(getattr(collator, "mlm_probability", None), "observe", None)):
            rate = collator.mlm_probability
        if tracker is None and rate is None:
            raise ValueError("AdaptiveMaskingCallback needs tracker= and/or rate= (or a collator using them)")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be the torch.nn.Module that Trainer trains, got {type(model).__name__}")
        self.tracker, self.rate = tracker, rate
        self._pending: list = []
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        labels = kwargs.get("labels")
        if not module.training or labels is None:
            return
        logits = getattr(output, "logits", None)
        if logits is None:
            raise ValueError(
                "AdaptiveMaskingCallback needs the model's logits; this model returns none (apply_fastmask's fused "
                "head?): train without the fused head for now"
            )
        self._pending.append(token_feedback(logits.detach(), labels))

    def on_step_end(self, args, state, control, **kwargs):
        pending, self._pending = self._pending, []
        if pending:
            labels, losses, correct = (torch.cat(parts) for parts in zip(*pending))
            if self.tracker is not None:
                self.tracker.update(labels, losses, correct)
            if self.rate is not None and labels.numel():
                if self.rate.target_accuracy is not None:
                    self.rate.observe(accuracy=float(correct.float().mean()), step=state.global_step)
                else:
                    self.rate.observe(loss=float(losses.mean()), step=state.global_step)
        super().on_step_end(args, state, control, **kwargs)

    def remove(self) -> Optional[None]:
        """Detach the forward hook from the model."""
        self._handle.remove()
