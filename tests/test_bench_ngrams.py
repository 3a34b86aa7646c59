"""``fastmask bench --suite ngrams``: the suite runs end to end on a small batch and reports
every case; a GPU-shaped result (wall time only) renders without the CPU-time columns."""

from __future__ import annotations

import copy

import pytest
from test_ngrams import needs_cpp

from fastmask import bench
from fastmask.bench import ngrams

pytestmark = needs_cpp

CASES = ("whole_word", "pmi", "units only", "pmi, units precomputed")
COLLATOR_CASES = ("collator whole_word", "collator pmi", "collator, units precomputed")


@pytest.fixture(scope="module")
def result():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ngrams, "BATCH", 4)
        patch.setattr(ngrams, "LENGTH", 64)
        return ngrams.run(quick=True, progress=False)


def test_ngrams_suite_runs_and_reports_every_case(result):
    c, m = result["counting"], result["masking"]
    assert result["device"] == "cpu" and result["backend"] == "cpp"
    assert c["words"] > 100_000 and c["words_per_s"] > 0 and len(c["distinct"]) == ngrams.MAX_N
    assert (m["batch"], m["length"]) == (4, 64) and 0 < m["units"] < m["words"]
    for timing in (m["wall"], m["cpu_one_thread"]):
        assert set(timing) == set(CASES) and all(t["ms"] > 0 and t["calls"] >= 10 for t in timing.values())
        assert timing["whole_word"]["ratio"] == 1.0
    assert m["ratio"] == m["wall"]["pmi"]["ratio"] and m["cpu_ratio"] == m["cpu_one_thread"]["pmi"]["ratio"]
    k = result["collator"]
    for timing in (k["wall"], k["cpu_one_thread"]):
        assert set(timing) == set(COLLATOR_CASES) and timing["collator whole_word"]["ratio"] == 1.0
    assert k["ratio"] == k["wall"]["collator pmi"]["ratio"] > 0
    rows = ngrams.table_rows(result)
    assert [r["case"] for r in rows] == [f"masking {name}" for name in CASES] + list(COLLATOR_CASES)
    text = ngrams.to_markdown(result)
    assert "CPU ms, 1 thread (median)" in text and all(f"| {name} |" in text for name in CASES + COLLATOR_CASES)
    assert "| vs collator whole_word |" in text
    lines = ngrams.headlines(result)
    assert len(lines) == 4 and "the collator on 4 rows of 64: PMI" in lines[3]
    assert all("one thread, CPU time" in line for line in lines[1:])
    assert "ngrams" in bench.SUITES and not bench.SUITES["ngrams"].default


def test_a_result_without_cpu_time_renders_wall_time_only(result):
    """What --device cuda returns: no one-thread CPU timing (a GPU's cost is its wall time)."""
    gpu = copy.deepcopy(result)
    gpu.update(device="cuda", backend="triton")
    gpu["masking"].update(cpu_one_thread=None, cpu_ratio=None, cpu_ratio_best=None, precomputed_cpu_ratio=None)
    gpu["collator"].update(cpu_one_thread=None, cpu_ratio=None)
    text = ngrams.to_markdown(gpu)
    assert "masking on cuda, backend triton" in text and "wall ms to synchronize (median)" in text
    assert "CPU ms" not in text and all(f"| {name} |" in text for name in CASES + COLLATOR_CASES)
    lines = ngrams.headlines(gpu)
    assert len(lines) == 4 and "(cuda, triton)" in lines[1] and "PMI masking 4x64" in lines[1]
    assert not any("CPU time" in line for line in lines[1:])


def test_device_cuda_without_cuda_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
        ngrams.run(quick=True, device="cuda", progress=False)
