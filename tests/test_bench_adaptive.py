"""The ``adaptive`` bench suite: rows, markdown and headlines from a tiny run."""

from __future__ import annotations

from fastmask.bench import SUITES, adaptive


def test_quick_adaptive_suite():
    result = adaptive.run(quick=True, n=64)
    assert [r["impl"] for r in result["collator"]][0] == "static weights, float rate"
    assert all(r["ms"] > 0 and r["head_ms"] > 0 for r in result["tracker"])
    assert {r["impl"].split(" (")[1].split(",")[0].rstrip(")") for r in result["tracker"]} == {"cpp", "reference"}
    rows = adaptive.table_rows(result)
    assert len(rows) == len(result["tracker"]) + len(result["collator"]) and all(r["suite"] == "adaptive" for r in rows)
    text = adaptive.to_markdown(result)
    assert "share of the head" in text and "vs static" in text
    assert len(adaptive.headlines(result)) == 2
    assert SUITES["adaptive"].load() is adaptive
