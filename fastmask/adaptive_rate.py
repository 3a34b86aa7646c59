"""An accuracy- (or loss-) driven masking rate: :class:`AdaptiveRate`.

The controller raises ``mlm_probability`` when the model finds the task easy (masked-token
accuracy above ``target_accuracy``, or loss below ``target_loss``) and lowers it when the model
struggles. Its update rule, once per :meth:`AdaptiveRate.observe`:

1. error ``e = accuracy - target_accuracy`` (or ``e = (target_loss - loss) / target_loss``);
2. a low-pass filter against batch noise: ``f = smoothing * f + (1 - smoothing) * e``
   (``f`` starts at 0, so the first observations move the rate gently);
3. integral action in logit space, bounded per step:
   ``z = z + clip(gain * f, -max_step, max_step)``, then ``z`` is clamped to
   ``[logit(min), logit(max)]`` at the current step (no wind-up at a bound);
4. the rate is ``sigmoid(z)``.

Integral action removes the steady-state error on any accuracy-vs-rate curve that falls as the
rate rises; the filter and the step bound keep noise from making the rate oscillate; logit
space keeps the rate inside (0, 1) and makes steps relative near the bounds.

``min`` / ``max`` may be numbers or schedules (any callable ``step -> rate``, such as
:class:`fastmask.MaskingSchedule`): e.g. ``max=MaskingSchedule("linear", start=0.4, end=0.15,
total_steps=...)`` lets the controller choose the rate below a decaying ceiling.

The object is itself a schedule (``rate(step) -> float``): pass it as a collator's
``mlm_probability``, or as another collator's rate (the source-noise probabilities of
:class:`fastmask.DataCollatorForSeq2Seq`, ``mask_ratio`` of
:class:`fastmask.DataCollatorForTextInfilling`, the noise probabilities of
:class:`fastmask.DataCollatorForMaskedAugmentation`; not span corruption's ``noise_density``, which
fixes the packed row length). Its current value lives in shared memory written by the main process
(:meth:`observe`), so DataLoader workers read every update (lag: the loader's prefetch, see
:class:`fastmask.DataCollatorForLanguageModeling`), and the collator's ``state_dict`` holds its state.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Optional

import numpy as np

from ._shared_values import SharedArray
from ._validation import check_int
from .schedules import is_schedule

__all__ = ["AdaptiveRate"]

_STATE_FORMAT = "fastmask.adaptive_rate/1"


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _check_real(name: str, value, lo: float, hi: float, *, open_interval: bool = False, hint: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number{hint}")
    value = float(value)
    inside = lo < value < hi if open_interval else lo <= value <= hi
    if not inside:
        bounds = f"({lo}, {hi})" if open_interval else f"[{lo}, {hi}]"
        raise ValueError(f"{name}={value!r} is outside {bounds}{hint}")
    return value


class AdaptiveRate:
    """A masking rate steered toward a target accuracy or loss (update rule: module docstring).

    Args:
        start: the initial rate, in ``(0, 1)``.
        target_accuracy: masked-token accuracy to hold, in ``[0, 1]``; or
        target_loss: masked-token loss (nats) to hold, > 0. Exactly one of the two.
        min, max: bounds of the rate (numbers in ``(0, 1)`` or schedules of the step).
        gain: integral gain (logit units per unit of filtered error).
        smoothing: the error filter's decay in ``[0, 1)`` (0: no filter).
        max_step: the largest change of the logit per observation.
    """

    def __init__(
        self,
        start: float,
        *,
        target_accuracy: Optional[float] = None,
        target_loss: Optional[float] = None,
        min=0.05,  # noqa: A002 - the issue's public name
        max=0.5,  # noqa: A002
        gain: float = 0.5,
        smoothing: float = 0.9,
        max_step: float = 0.05,
    ):
        if (target_accuracy is None) == (target_loss is None):
            raise ValueError("pass exactly one of target_accuracy= (e.g. 0.55) or target_loss= (e.g. 2.5)")
        self.target_accuracy = (
            None if target_accuracy is None else _check_real("target_accuracy", target_accuracy, 0.0, 1.0)
        )
        self.target_loss = (
            None if target_loss is None else _check_real("target_loss", target_loss, 0.0, math.inf, open_interval=True)
        )
        self.min = self._check_bound("min", min)
        self.max = self._check_bound("max", max)
        if not is_schedule(self.min) and not is_schedule(self.max) and self.min > self.max:
            raise ValueError(f"min={self.min} is above max={self.max}")
        start = _check_real("start", start, 0.0, 1.0, open_interval=True)
        self.gain = _check_real("gain", gain, 0.0, math.inf, open_interval=True)
        self.smoothing = _check_real("smoothing", smoothing, 0.0, 1.0)
        if self.smoothing == 1.0:
            raise ValueError("smoothing=1.0 would ignore every observation; pass a value in [0, 1)")
        self.max_step = _check_real("max_step", max_step, 0.0, math.inf, open_interval=True)
        self.step = 0
        self.observations = 0
        self.filtered_error = 0.0
        self._z = self._clamped(_logit(start))
        self._shared = SharedArray(np.array([_sigmoid(self._z)], dtype=np.float64))

    @staticmethod
    def _check_bound(name: str, value):
        if is_schedule(value):
            return value
        return _check_real(name, value, 0.0, 1.0, open_interval=True, hint=" (a rate in (0, 1) or a schedule)")

    def bounds(self, step: Optional[int] = None) -> tuple[float, float]:
        """``(min, max)`` at ``step`` (default: the last observed step)."""
        step = self.step if step is None else step
        lo = self.min(step) if is_schedule(self.min) else self.min
        hi = self.max(step) if is_schedule(self.max) else self.max
        lo = _check_real(f"min (at step {step})", lo, 0.0, 1.0, open_interval=True)
        hi = _check_real(f"max (at step {step})", hi, 0.0, 1.0, open_interval=True)
        return lo, max(lo, hi)

    def _clamped(self, z: float) -> float:
        lo, hi = self.bounds()
        return min(max(z, _logit(lo)), _logit(hi))

    @property
    def rate(self) -> float:
        """The controller's current rate (the main process' view; workers read :meth:`__call__`)."""
        return _sigmoid(self._z)

    def __call__(self, step: int) -> float:
        """The rate for a batch at ``step``: the last published rate, within the bounds at ``step``."""
        value = float(self._shared.read()[0][0])
        lo, hi = self.bounds(step)
        return min(max(value, lo), hi)

    def observe(self, accuracy: Optional[float] = None, loss: Optional[float] = None, *, step=None) -> float:
        """Feed one measurement (of the batches masked at the current rate); returns the new rate.

        Pass ``accuracy`` (fraction of masked tokens predicted correctly) with ``target_accuracy``,
        ``loss`` (mean masked-token loss) with ``target_loss``. ``step``: the training step (for
        schedule bounds).
        """
        if step is not None:
            self.step = check_int("step", step, minimum=0)
        if self.target_accuracy is not None:
            if accuracy is None:
                raise ValueError("this controller targets accuracy; pass observe(accuracy=...)")
            error = _check_real("accuracy", accuracy, 0.0, 1.0) - self.target_accuracy
        else:
            if loss is None:
                raise ValueError("this controller targets loss; pass observe(loss=...)")
            loss = _check_real("loss", loss, 0.0, math.inf)
            error = (self.target_loss - loss) / self.target_loss
        self.filtered_error = self.smoothing * self.filtered_error + (1.0 - self.smoothing) * error
        move = min(max(self.gain * self.filtered_error, -self.max_step), self.max_step)
        self._z = self._clamped(self._z + move)
        self.observations += 1
        self._shared.write(np.array([self.rate], dtype=np.float64))
        return self.rate

    def observe_tracker(self, tracker, *, step=None) -> Optional[float]:
        """:meth:`observe` with the last batch of a :class:`fastmask.TokenLossTracker`
        (``last_accuracy`` / ``last_loss``); None (nothing observed) when it has none."""
        value = tracker.last_accuracy if self.target_accuracy is not None else tracker.last_loss
        if value is None:
            return None
        if self.target_accuracy is not None:
            return self.observe(accuracy=value, step=step)
        return self.observe(loss=value, step=step)

    # -- state
    def state_dict(self) -> dict:
        return {
            "format": _STATE_FORMAT,
            "z": self._z,
            "filtered_error": self.filtered_error,
            "observations": self.observations,
            "step": self.step,
        }

    def load_state_dict(self, state: Mapping) -> None:
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"not an AdaptiveRate state (expected a dict from state_dict() with format {_STATE_FORMAT!r})"
            )
        self._z = float(state["z"])
        self.filtered_error = float(state["filtered_error"])
        self.observations = int(state["observations"])
        self.step = int(state["step"])
        self._shared.write(np.array([self.rate], dtype=np.float64))

    def __repr__(self) -> str:
        target = (
            f"target_accuracy={self.target_accuracy}"
            if self.target_accuracy is not None
            else f"target_loss={self.target_loss}"
        )
        return f"AdaptiveRate(rate={self.rate:.4f}, {target}, min={self.min!r}, max={self.max!r})"
