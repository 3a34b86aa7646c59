"""AdaptiveRate: converges on a simulated noisy accuracy-vs-rate (and loss-vs-rate) curve without
oscillating, respects min / max and schedule bounds, restores from state_dict, rejects bad input."""

from __future__ import annotations

import numpy as np
import pytest

import fastmask
from fastmask import AdaptiveRate, MaskingSchedule


def _simulate(rate: AdaptiveRate, steps: int, *, noise=0.05, seed=0, kind="accuracy"):
    """Accuracy falls linearly with the rate: 0.9 - 0.8 * p (p* = 0.375 for a 0.6 target);
    loss rises: 1.5 + 4 * p. Returns the rate after every observation."""
    rng = np.random.default_rng(seed)
    history = []
    for step in range(steps):
        p = rate(step)
        if kind == "accuracy":
            rate.observe(accuracy=float(np.clip(0.9 - 0.8 * p + rng.normal(0, noise), 0, 1)), step=step)
        else:
            rate.observe(loss=float(max(0.0, 1.5 + 4 * p + rng.normal(0, noise * 5))), step=step)
        history.append(rate.rate)
    return np.array(history)


def test_converges_on_noisy_accuracy_curve():
    rate = AdaptiveRate(0.15, target_accuracy=0.6)
    history = _simulate(rate, 1200)
    tail = history[-600:]
    assert abs(tail.mean() - 0.375) < 0.01
    assert tail.std() < 0.025  # noise std 0.05 in accuracy = 0.0625 in rate: filtered, not amplified
    assert np.argmax(np.abs(history - 0.375) < 0.02) < 100  # reaches the target within 100 observations
    # no oscillation: after reaching it, never swings more than 0.07 away
    assert np.abs(history[100:] - 0.375).max() < 0.07


def test_converges_on_noisy_loss_curve():
    rate = AdaptiveRate(0.4, target_loss=2.3)  # p* = 0.2
    tail = _simulate(rate, 1200, kind="loss")[-600:]
    assert abs(tail.mean() - 0.2) < 0.01 and tail.std() < 0.025


def test_respects_bounds():
    easy = AdaptiveRate(0.15, target_accuracy=0.05, min=0.1, max=0.3)  # target needs p > 1: pinned at max
    history = _simulate(easy, 300)
    assert history.max() <= 0.3 + 1e-12 and history[-1] == pytest.approx(0.3)
    hard = AdaptiveRate(0.15, target_accuracy=0.99, min=0.1, max=0.3)  # needs p < 0: pinned at min
    history = _simulate(hard, 300)
    assert history.min() >= 0.1 - 1e-12 and history[-1] == pytest.approx(0.1)
    # no wind-up: from the bound it comes back as soon as the target is reachable
    hard.target_accuracy = 0.6
    assert abs(_simulate(hard, 400)[-100:].mean() - 0.3) < 0.01  # p* = 0.375 is above max: at max now


def test_schedule_as_bound():
    ceiling = MaskingSchedule("linear", start=0.45, end=0.2, total_steps=400)
    rate = AdaptiveRate(0.15, target_accuracy=0.6, max=ceiling)
    history = _simulate(rate, 800)
    for step in (150, 399, 500, 799):
        assert history[step] <= ceiling(step) + 1e-12
        assert rate(step) <= ceiling(step) + 1e-12
    assert history[-1] == pytest.approx(0.2)  # p* = 0.375 above the final ceiling
    assert abs(history[150] - 0.375) < 0.05  # below the ceiling early on: the controller's own rate


def test_state_dict_resumes_exactly():
    a = AdaptiveRate(0.2, target_accuracy=0.6)
    _simulate(a, 50, seed=1)
    b = AdaptiveRate(0.2, target_accuracy=0.6)
    b.load_state_dict(a.state_dict())
    assert b(0) == a(0)
    assert np.array_equal(_simulate(a, 30, seed=2), _simulate(b, 30, seed=2))


def test_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        AdaptiveRate(0.15)
    with pytest.raises(ValueError, match="exactly one"):
        AdaptiveRate(0.15, target_accuracy=0.5, target_loss=2.0)
    with pytest.raises(ValueError, match="target_accuracy"):
        AdaptiveRate(0.15, target_accuracy=1.5)
    with pytest.raises(ValueError, match="target_loss"):
        AdaptiveRate(0.15, target_loss=-1.0)
    with pytest.raises(ValueError, match="start"):
        AdaptiveRate(1.0, target_accuracy=0.5)
    with pytest.raises(ValueError, match="min"):
        AdaptiveRate(0.15, target_accuracy=0.5, min=0.4, max=0.3)
    with pytest.raises(ValueError, match="smoothing"):
        AdaptiveRate(0.15, target_accuracy=0.5, smoothing=1.0)
    rate = AdaptiveRate(0.15, target_accuracy=0.5)
    with pytest.raises(ValueError, match="accuracy"):
        rate.observe(accuracy=float("nan"))
    with pytest.raises(ValueError, match="observe\\(accuracy"):
        rate.observe(loss=2.0)
    assert rate.observations == 0
    assert fastmask.AdaptiveRate is AdaptiveRate
