"""Adaptive masking: ``mlm_probability`` as a function of the training step.

A collator's ``mlm_probability`` may be a float, any callable ``step -> float``, or a
:class:`MaskingSchedule` (linear / cosine from a start rate to an end rate, with optional warm-up
at the start rate). The collator reads the step it was last given by ``set_step(step)``;
:class:`MaskingScheduleCallback` calls it from ``transformers.Trainer``. How the step reaches
DataLoader worker processes is described in :mod:`fastmask.collator`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Union

from ._validation import check_choice, check_int, check_probability

try:  # the callback needs transformers; the schedules do not
    from transformers.trainer_callback import TrainerCallback as _CallbackBase
except ImportError:  # pragma: no cover - exercised only without transformers
    _CallbackBase = object

__all__ = ["MaskingSchedule", "MaskingScheduleCallback", "is_schedule", "probability_at"]

SCHEDULE_KINDS = ("constant", "linear", "cosine")


class MaskingSchedule:
    """A masking rate that moves from ``start`` to ``end`` over ``total_steps`` steps.

    ``kind``: ``"constant"`` (always ``start``), ``"linear"`` or ``"cosine"`` (half-cosine
    from ``start`` to ``end``). The first ``warmup_steps`` steps use ``start``; steps at or
    beyond ``total_steps`` use ``end``. Instances are plain picklable objects, so they travel to
    DataLoader workers with the collator.

    Example::

        MaskingSchedule("linear", start=0.30, end=0.15, total_steps=10_000)
    """

    def __init__(
        self,
        kind: str = "linear",
        *,
        start: float,
        end: float | None = None,
        total_steps: int | None = None,
        warmup_steps: int = 0,
    ):
        self.kind = check_choice("kind", kind, SCHEDULE_KINDS)
        self.start = check_probability("start", start)
        if kind == "constant":
            self.end = self.start if end is None else check_probability("end", end)
            self.total_steps = 1 if total_steps is None else check_int("total_steps", total_steps, minimum=1)
        else:
            if end is None or total_steps is None:
                raise ValueError(f"a {kind!r} schedule needs end= and total_steps=, e.g. end=0.15, total_steps=10_000")
            self.end = check_probability("end", end)
            self.total_steps = check_int("total_steps", total_steps, minimum=1)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        if self.warmup_steps >= self.total_steps and kind != "constant":
            raise ValueError(
                f"warmup_steps={warmup_steps} must be below total_steps={self.total_steps}; "
                "lower warmup_steps or raise total_steps"
            )

    def __call__(self, step: int) -> float:
        step = check_int("step", step, minimum=0)
        if self.kind == "constant":
            return self.start
        span = self.total_steps - self.warmup_steps
        frac = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        if self.kind == "linear":
            return self.start + (self.end - self.start) * frac
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def __repr__(self) -> str:
        return (
            f"MaskingSchedule({self.kind!r}, start={self.start}, end={self.end}, "
            f"total_steps={self.total_steps}, warmup_steps={self.warmup_steps})"
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, MaskingSchedule) and vars(self) == vars(other)


Probability = Union[float, Callable[[int], float]]


def is_schedule(value) -> bool:
    """True for a callable rate (a schedule), False for a plain number."""
    return callable(value) and not isinstance(value, numbers.Real)


def probability_at(value: Probability, step: int, name: str = "mlm_probability") -> float:
    """The rate ``value`` gives at ``step``, validated to lie in [0, 1]."""
    if is_schedule(value):
        return check_probability(f"{name} (schedule {value!r} at step {step})", value(step))
    return check_probability(name, value)


class MaskingScheduleCallback(_CallbackBase):
    """A ``transformers.TrainerCallback`` that keeps a fastmask collator in step with training.

    At the start of training and at the end of every optimizer step it calls
    ``collator.set_step(state.global_step)`` (``Trainer`` fetches a step's batches before
    ``on_step_begin``, so the step advances when the previous one ends). Batches collated
    ahead of use (accelerate's data loader looks one batch ahead, DataLoader workers prefetch)
    see the step at the time they are collated, so a scheduled rate lags by that look-ahead.
    At the start of every epoch it calls ``collator.set_epoch(epoch)`` (masks differ per epoch
    while staying reproducible) unless ``set_epoch=False``. It shares the collator's step and epoch
    with DataLoader worker processes (``collator.share_state()``) when created, so create it
    before training starts.
    """

    def __init__(self, collator, *, set_epoch: bool = True):
        for method in ("set_step", "set_epoch", "share_state"):
            if not callable(getattr(collator, method, None)):
                raise TypeError(f"collator must be a fastmask collator with {method}(); got {type(collator).__name__}")
        self.collator = collator
        self.update_epoch = set_epoch
        collator.share_state()

    def on_train_begin(self, args, state, control, **kwargs):
        self.collator.set_step(state.global_step)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.update_epoch:
            self.collator.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))

    def on_step_end(self, args, state, control, **kwargs):
        self.collator.set_step(state.global_step)
