"""The scripts in examples/ run offline and do what they say."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    """Import ``examples/<name>.py`` by its own name (datasets pickles its functions by reference)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@pytest.mark.slow
def test_trainer_collator_swap():
    loss = load("trainer_collator_swap").main(["--max-steps", "3", "--tiny"])
    assert 0 < loss < 20


def test_plain_loop_masked_lm_loss_learns():
    losses = load("plain_loop_masked_lm_loss").main(["--steps", "12"])
    assert len(losses) == 12 and losses[-1] < losses[0]


def test_static_masking_is_independent_of_num_proc():
    assert load("static_masking_datasets").main(["--num-proc", "2"]) is True


def test_augmentation_classification_runs():
    accuracy = load("augmentation_classification").main(["--examples", "128"])
    assert 0.0 <= accuracy <= 1.0
