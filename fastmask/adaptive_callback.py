"""Closing the loop under ``transformers.Trainer``: :class:`AdaptiveMaskingCallback`.

The callback watches the model's training forward passes (a forward hook: the labels the loss saw
and the logits it was computed from), turns every labelled position into feedback — its
cross-entropy and a "predicted correctly" bit (the label's logit equals the row max) — and at the
end of every optimizer step feeds a :class:`~fastmask.TokenLossTracker` (``tracker.update``) and
an :class:`~fastmask.AdaptiveRate` (``rate.observe`` with the step's masked-token accuracy or
loss), then calls ``collator.set_step``. The collator reads the new weights and rate from shared
memory on its next batch (lag: :class:`fastmask.DataCollatorForLanguageModeling`).

Where the feedback comes from:

- a model patched with :func:`fastmask.apply_fastmask` (the fused head, no logits): the loss
  kernels hand it out from their own forward pass (:mod:`fastmask.loss_feedback`); the callback
  installs its collector as the patch's ``feedback`` (replacing any set before; :meth:`remove`
  puts that back). Patch the model *before* creating the callback.
- any other model: a forward hook computes it from the logits of the masked rows only (a
  log-softmax over them, no second forward pass).
"""

from __future__ import annotations

from typing import Optional

import torch

from .collator import _is_live_weights
from .integrations.transformers import is_fastmask_applied, set_loss_feedback
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
        rate: an :class:`~fastmask.AdaptiveRate` (default: the collator's, when one of its rates
            is one: ``mlm_probability``, a source-noise / augmentation probability, ``mask_ratio``).
        set_epoch: as :class:`~fastmask.MaskingScheduleCallback`.
    """

    def __init__(self, collator, model, *, tracker=None, rate=None, set_epoch: bool = True):
        super().__init__(collator, set_epoch=set_epoch)
        if tracker is None and _is_live_weights(getattr(collator, "token_weights", None)):
            tracker = collator.token_weights
        if rate is None:
            rate = _collator_rate(collator)
        if tracker is None and rate is None:
            raise ValueError("AdaptiveMaskingCallback needs tracker= and/or rate= (or a collator using them)")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be the torch.nn.Module that Trainer trains, got {type(model).__name__}")
        self.tracker, self.rate = tracker, rate
        self._pending: list = []
        patched = getattr(model, "module", model)  # DDP and similar wrappers keep the model in .module
        self._patched = patched if is_fastmask_applied(patched) else None
        self._previous_feedback = None
        if self._patched is not None:
            self._previous_feedback = set_loss_feedback(self._patched, _Collector(self._pending))
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        labels = kwargs.get("labels")
        if not module.training or labels is None:
            return
        logits = getattr(output, "logits", None)
        if self._patched is not None and is_fastmask_applied(self._patched):
            if logits is None:
                return  # the fused loss delivered this forward's feedback
            raise ValueError(
                "AdaptiveMaskingCallback: the apply_fastmask-patched model computed logits in training "
                "(skip_logits=False?), so its fused loss gave no feedback; let it skip the logits"
            )
        if logits is None:
            raise ValueError(
                "AdaptiveMaskingCallback needs the model's logits or an apply_fastmask-patched model; this model "
                "returns no logits and was not patched when the callback was created: call apply_fastmask(model) "
                "before creating the callback"
            )
        self._pending.append(token_feedback(logits.detach(), labels))

    def on_step_end(self, args, state, control, **kwargs):
        pending = list(self._pending)
        self._pending.clear()  # in place: the patched model's collector appends to this list
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
        """Detach the forward hook from the model (and give a patched model its previous feedback)."""
        self._handle.remove()
        if self._patched is not None and is_fastmask_applied(self._patched):
            set_loss_feedback(self._patched, self._previous_feedback)
            self._patched = None


def _collator_rate(collator):
    """The collator's one live rate with ``observe`` (an AdaptiveRate), or None; several: an error."""
    rates = getattr(collator, "LIVE_RATES", ("mlm_probability",))
    found = {}
    for name in rates:
        value = getattr(collator, name, None)
        if callable(getattr(value, "observe", None)):
            found.setdefault(id(value), (name, value))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found.values())
        raise ValueError(f"the collator has several AdaptiveRates ({names}); pass the one to feed as rate=")
    return next(iter(found.values()))[1] if found else None


class _Collector:
    """The loss feedback of a patched model, appended to the callback's pending list."""

    def __init__(self, pending: list):
        self.pending = pending

    def update(self, labels, losses, correct):
        self.pending.append((labels, losses.float(), correct))
