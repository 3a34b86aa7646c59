"""``fastmask bench --suite sft``: the suite runs end to end on tiny shapes and reports its targets."""

from __future__ import annotations

import torch.nn.functional as F

from fastmask import bench
from fastmask.bench import sft


def test_sft_suite_runs_on_tiny_shapes_and_reports():
    tiny_llama = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1)
    step = dict(batch=2, seq_len=16, vocab=64, steps=1, llama=tiny_llama)
    result = sft.run(width=16, vocab=64, n=32, repeat=1, progress=False, skip=sft.LCE_NAMES[:1], step_options=step)
    names = set(result["results"])
    assert {sft.NAIVE, sft.HEAD_SUBJECT} <= names
    assert result["labelled"] > 0 and result["label_rate"] == 0.30
    rows = sft.table_rows(result)
    assert len(rows) == len(names) + 2 and all(r["suite"] == "sft" for r in rows)
    text = sft.to_markdown(result)
    assert "fastmask fused_masked_lm_loss" in text
    if hasattr(F, "linear_cross_entropy"):
        assert [t[2] for t in sft.targets(result)][:1] == [">= 3"]
        assert "target >= 3" in sft.headlines(result)[0]
    assert "sft" in bench.SUITES and not bench.SUITES["sft"].default
    # the small-Llama step case: stock and apply_fastmask give equal losses; the head's share is reported
    step = result["step"]
    assert step["losses_equal"] and len(step["losses"]["stock"]) == 2 and sft.failures(result) == []
    assert step["labelled"] == 2 * 5  # per row: 16 - round(0.7 * 16) completion labels, shifted by one
    assert all(0 < step[k]["head_share"] for k in ("stock", "fastmask"))
    assert "head's share of the step" in text and "Llama SFT step" in {r["case"] for r in rows}
    assert "head's share" in sft.headlines(result)[1]
