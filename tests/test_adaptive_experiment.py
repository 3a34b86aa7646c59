"""The adaptive-masking experiment (uniform vs adaptive from the same weights): a tiny smoke run."""

from __future__ import annotations

import pytest

from fastmask.adaptive_experiment import format_adaptive_results, run_adaptive_experiment
from fastmask.train import TrainConfig


@pytest.mark.slow
def test_tiny_experiment_reports_both_runs_per_bucket():
    config = TrainConfig(max_steps=2, seq_len=32, batch_size=4, eval_batches=2, progress=False, save=False)
    result = run_adaptive_experiment(config, "both", record_every=1, log=lambda *a: None)
    uniform, adaptive = result["runs"]
    assert uniform["name"] == "uniform" and adaptive["name"] == "adaptive-both"
    assert uniform["input_tokens"] == adaptive["input_tokens"] == 2 * 4 * 32  # the same token budget
    for run in (uniform, adaptive):
        assert set(run["eval"]) == {"rare", "mid", "frequent", "overall"}
        assert sum(run["eval"][b]["tokens"] for b in ("rare", "mid", "frequent")) == run["eval"]["overall"]["tokens"]
    assert "weights" in adaptive["history"][0] and "weights" not in uniform["history"][0]
    assert "overall acc / loss" in format_adaptive_results(result)
    with pytest.raises(ValueError, match="adaptive="):
        run_adaptive_experiment(config, "everything")
