"""The ``adaptive`` bench suite: rows, markdown and headlines from a tiny run."""

from __future__ import annotations

import pytest

from fastmask.bench import SUITES, adaptive


def test_quick_adaptive_suite():
    result = adaptive.run(quick=True, n=64, feedback_rows=64)
    feedback = result["feedback"]
    assert feedback["n"] == 64 and 0 < feedback["labelled"] < 64 and feedback["vocab"] == 4096
    assert feedback["losses_equal"] and feedback["tracker_updates"] >= feedback["rounds"] >= 5
    assert feedback["without_ms"] > 0 and feedback["with_ms"] > 0 and feedback["outside_kernels_ms"] > 0
    assert feedback["cpu_without_ms"] > 0 and feedback["cpu_with_ms"] > 0
    assert feedback["overhead"] == pytest.approx(feedback["with_ms"] / feedback["without_ms"] - 1)
    assert [r["impl"] for r in result["collator"]][0] == "static weights, float rate"
    assert all(r["ms"] > 0 and r["head_ms"] > 0 for r in result["tracker"])
    assert {r["impl"].split(" (")[1].split(",")[0].rstrip(")") for r in result["tracker"]} == {"cpp", "reference"}
    rows = adaptive.table_rows(result)
    assert len(rows) == 2 + len(result["tracker"]) + len(result["collator"]) and all(
        r["suite"] == "adaptive" for r in rows
    )
    assert rows[0]["case"] == rows[1]["case"] == "feedback + tracker update"
    text = adaptive.to_markdown(result)
    assert "Feedback path vs the fused MLM head" in text and "small shapes" in text
    assert "share of the head" in text and "vs static" in text
    headlines = adaptive.headlines(result)
    assert len(headlines) == 3 and headlines[0].startswith("feedback + tracker update")
    assert SUITES["adaptive"].load() is adaptive
