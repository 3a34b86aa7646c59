"""Word boundaries (fastmask/words.py): bad input regressions; the tables are tested through masking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmask.words import word_starts_from_word_ids


def test_word_ids_lists_and_arrays_agree():
    rows = [[None, 0, 0, 1, 2, 2, None], [None, 0, 1, 1, None, -1, -1]]
    expected = [[False, True, False, True, True, False, False], [False, True, True, False, False, False, False]]
    assert word_starts_from_word_ids(rows).tolist() == expected
    as_array = np.array([[-1 if w is None else w for w in r] for r in rows])
    assert word_starts_from_word_ids(as_array).tolist() == expected
    assert word_starts_from_word_ids(torch.from_numpy(as_array)).tolist() == expected


@pytest.mark.parametrize("word_ids", [[["a", "b"]], [[0, 1.5]], np.array([["a", "b"]]), np.array([[0.0, 1.0]])])
def test_non_integer_word_ids_are_rejected(word_ids):
    """Regression: [["a", "b"]] gave True starts."""
    with pytest.raises(TypeError, match="word_ids"):
        word_starts_from_word_ids(word_ids)
