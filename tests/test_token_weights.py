"""Token weights for conditional masking (fastmask/token_weights.py): bad input regressions; the
weights' effect on masks is tested through the collator (test_collator.py)."""

from __future__ import annotations

import pytest

import fastmask


@pytest.mark.parametrize("counts", [[1.0, float("nan")], [1.0, float("inf")], [-1, 2]])
def test_token_weights_from_counts_rejects_non_finite_counts(counts):
    with pytest.raises(ValueError, match="counts must be finite non-negative"):
        fastmask.token_weights_from_counts(counts)
