"""Masking-rate schedules (fastmask/schedules.py): bad input regressions."""
from __future__ import annotations

import pytest

from fastmask import MaskingSchedule


@pytest.mark.parametrize("step,error", [(-1, ValueError), (1.5, TypeError), (None, TypeError)])
def test_schedule_rejects_bad_steps(step, error):
    """Regression: step=-1 was clamped to the start rate."""
    with pytest.raises(error, match="step"):
        MaskingSchedule("linear", start=0.3, end=0.1, total_steps=10)(step)
