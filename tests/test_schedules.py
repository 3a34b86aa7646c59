"""Masking-rate schedules (fastmask/schedules.py): bad input regressions."""

from __future__ import annotations

import pickle

import pytest

from fastmask import MaskingSchedule


@pytest.mark.parametrize("step,error", [(-1, ValueError), (1.5, TypeError), (None, TypeError)])
def test_schedule_rejects_bad_steps(step, error):
    """Regression: step=-1 was clamped to the start rate."""
    with pytest.raises(error, match="step"):
        MaskingSchedule("linear", start=0.3, end=0.1, total_steps=10)(step)


def test_masking_schedule_shapes():
    linear = MaskingSchedule("linear", start=0.3, end=0.1, total_steps=100, warmup_steps=20)
    assert linear(0) == linear(20) == 0.3 and linear(60) == pytest.approx(0.2) and linear(100) == linear(10**6) == 0.1
    cosine = MaskingSchedule("cosine", start=0.3, end=0.1, total_steps=100)
    assert cosine(0) == pytest.approx(0.3) and cosine(50) == pytest.approx(0.2) and cosine(100) == pytest.approx(0.1)
    assert MaskingSchedule("constant", start=0.2)(10**9) == 0.2
    for kwargs in (
        dict(start=1.2, end=0.1, total_steps=5),
        dict(start=0.2),
        dict(start=0.2, end=0.1, total_steps=5, warmup_steps=5),
    ):
        with pytest.raises(ValueError):
            MaskingSchedule("linear", **kwargs)
    assert pickle.loads(pickle.dumps(linear)) == linear
