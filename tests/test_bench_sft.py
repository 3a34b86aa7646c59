"""``fastmask bench --suite sft``: the suite runs end to end on tiny shapes and reports its targets."""

from __future__ import annotations

import torch.nn.functional as F

from fastmask import bench
from fastmask.bench import sft


def test_sft_suite_runs_on_tiny_shapes_and_reports():
    result = sft.run(width=16, vocab=64, n=32, repeat=1, progress=False, skip=sft.LCE_NAMES[:1])
    names = set(result["results"])
    assert {sft.NAIVE, sft.HEAD_SUBJECT} <= names
    assert result["labelled"] > 0 and result["label_rate"] == 0.30
    rows = sft.table_rows(result)
    assert len(rows) == len(names) and all(r["suite"] == "sft" for r in rows)
    text = sft.to_markdown(result)
    assert "fastmask fused_masked_lm_loss" in text
    if hasattr(F, "linear_cross_entropy"):
        assert [t[2] for t in sft.targets(result)][:1] == [">= 3"]
        assert "target >= 3" in sft.headlines(result)[0]
    assert "sft" in bench.SUITES and not bench.SUITES["sft"].default
