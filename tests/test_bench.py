"""``fastmask bench`` (one quick suite end to end, option errors, the kernels suite's plumbing)
and the plumbing of ``benchmarks/gpu_check.py`` (dry run, JUnit XML parsing, non-empty test
selections)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from fastmask import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_CHECK = os.path.join(ROOT, "benchmarks", "gpu_check.py")
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_masking_suite_writes_rows_tables_and_plot(tmp_path, capsys):
    out, md, png = tmp_path / "bench.json", tmp_path / "bench.md", tmp_path / "plot.png"
    options = "bench --quick --suite masking --lengths 128 --device cpu --no-progress".split()
    code = cli.main(options + ["--json", str(out), "--markdown", str(md), "--plot", str(png)])
    assert code == 0
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert rows and all(r["suite"] == "masking" and r["length"] == 128 for r in rows)
    assert all(r["tokens_per_s"] > 0 and r["ms"] > 0 for r in rows)
    assert {r["case"] for r in rows} == {"token", "whole_word (offsets)", "whole_word (table)", "span (offsets)"}
    baseline_ms = {(r["case"], r["shape"]): r["ms"] for r in rows if r["impl"].startswith("transformers")}
    compared = [r for r in rows if r["impl"].startswith("fastmask") and r["baseline"] == "transformers"]
    assert {r["case"] for r in compared} == {"token", "whole_word (offsets)", "whole_word (table)"}
    for row in compared:
        assert row["speedup"] == pytest.approx(baseline_ms[(row["case"], row["shape"])] / row["ms"])
    assert all(r["speedup"] is None for r in rows if r["case"] == "span (offsets)")  # transformers has no spans
    assert document["machine"]["torch"] == torch.__version__ and "masking" in document["suites"]
    assert document["options"]["lengths"] == [128] and document["failures"] == []

    stdout = capsys.readouterr().out
    assert "speed-up vs transformers" in stdout
    assert re.search(r"masking token 64x128: .*\d+(\.\d+)?x transformers", stdout)
    text = md.read_text()
    assert text.startswith("# fastmask bench") and "## Masking op" in text and "| token | - | 64 x 128 |" in text
    if importlib.util.find_spec("matplotlib") is None:
        assert "--plot skipped: matplotlib is not installed" in stdout
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


@pytest.mark.parametrize("spill", [False, True])
def test_kernels_suite_reports_resources_and_fails_on_spills(tmp_path, capsys, monkeypatch, spill):
    """`fastmask bench --suite kernels`: the variants of fastmask.kernels.offline, compiled for
    sm_80 / sm_90 without a GPU (the compiler is stubbed here; the kernel tests compile for real)."""
    from fastmask.kernels import offline

    calls = []

    def fake_compile_report(variants, capabilities, *, jobs=1, load=False, timeout=900):
        calls.append((len(variants), tuple(capabilities), load))
        return [
            dict(
                kernel=v.kernel,
                variant=v.label,
                block=v.block,
                num_warps=v.num_warps,
                target=f"sm_{c}",
                n_regs=40,
                n_spills=8 if spill and i == 0 else 0,
                spill_stores=32 if spill and i == 0 else 0,
                spill_loads=0,
                stack_frame=0,
                shared=128,
                seconds=0.1,
            )
            for c in capabilities
            for i, v in enumerate(variants)
        ]

    monkeypatch.setattr(offline, "compile_report", fake_compile_report)
    out, md = tmp_path / "k.json", tmp_path / "k.md"
    options = "bench --suite kernels --quick --device cpu --no-progress".split()
    code = cli.main(options + ["--json", str(out), "--markdown", str(md)])
    quick = [v for k in offline.KERNELS for v in offline.variants(k) if v.block == offline.TEST_BLOCKS[k][0]]
    assert calls == [(len(quick), offline.TARGETS, False)]
    document = json.loads(out.read_text())
    assert document["rows"] == [] and len(document["suites"]["kernels"]["rows"]) == 2 * len(quick)
    assert any(line.startswith("triton masking sm_90:") for line in document["summary"])
    assert code == (1 if spill else 0) and bool(document["failures"]) == spill
    if spill:
        assert "spills (8 spills, 32/0 bytes stored/loaded)" in document["failures"][0]
    text = md.read_text()
    assert "# Triton kernels: registers, spills, shared memory" in text and "| masking | " in text
    assert "| registers | spills |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--suite", "masking", "--lengths", "4"], "--lengths: 4 is out of range"),
        (["--suite", "loss", "--lengths", "128"], "--lengths applies to the collator and masking suites"),
        (["--device", "tpu"], "--device 'tpu' is not one of auto, cpu, cuda"),
        (["--suite", "masking", "--tokenizer", "/no/such/tokenizer"], "could not be loaded"),
        pytest.param(
            ["--device", "cuda"],
            "CUDA is not available on this machine",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
    ],
)
def test_bad_options_are_one_line_errors(args, message, capsys):
    assert cli.main(["bench", "--no-progress", *args]) == cli.EXIT_USAGE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fastmask: error:") and message in lines[0], lines


SAMPLE_TESTS = textwrap.dedent("""\
    import time
    import pytest

    @pytest.mark.parametrize("x", ["triton-x"])
    def test_one(x):
        pass

    def test_two():
        assert 1 == 2, "triton labels differ from the reference"

    def test_three():
        pytest.skip("a GPU is present: compiled there")

    def test_four():
        pytest.skip("backend 'triton' unavailable: no CUDA")

    @pytest.mark.xfail(reason="known")
    def test_five():
        assert False

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture broke")

    def test_six(broken):
        pass

    def test_slow():
        import os

        if os.environ.get("SAMPLE_MARKER"):
            open(os.environ["SAMPLE_MARKER"], "w").close()
        time.sleep(float(os.environ.get("SAMPLE_SLEEP", "0")))
    """)


def _sample_pytest(tmp_path, *extra, env=None):
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    junit = tmp_path / "junit.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(tmp_path / "test_sample.py"),
        "-p",
        "no:cacheprovider",
        "-q",
        "-o",
        "junit_family=xunit2",
        f"--junitxml={junit}",
        *extra,
    ]
    return cmd, junit


def test_parse_junit_counts_failures_and_skips(tmp_path):
    """gpu_check reads pytest's JUnit XML: counts, failures with their messages, skip reasons."""
    gpu_check = _gpu_check_module()
    cmd, junit = _sample_pytest(tmp_path)
    result = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout
    parsed = gpu_check.parse_junit(str(junit))
    assert (
        parsed["passed"],
        parsed["failed"],
        parsed["errors"],
        parsed["skipped"],
        parsed["xfailed"],
        parsed["ran"],
    ) == (2, 1, 1, 2, 1, 7)
    assert parsed["complete"] and parsed["interrupted"] == 0
    failures = {f["test"]: f for f in parsed["failures"]}
    assert set(failures) == {"test_sample::test_two", "test_sample::test_six"}
    assert "triton labels differ from the reference" in failures["test_sample::test_two"]["message"]
    assert failures["test_sample::test_six"]["outcome"] == "error"
    assert "fixture broke" in failures["test_sample::test_six"]["message"]
    assert sorted(s["reason"] for s in parsed["skips"]) == [
        "a GPU is present: compiled there",
        "backend 'triton' unavailable: no CUDA",
    ]
    assert all(s["where"].endswith("test_sample.py") or "test_sample.py:" in s["where"] for s in parsed["skips"])
    assert [s["reason"] for s in parsed["unexpected_skips"]] == ["backend 'triton' unavailable: no CUDA"]
    assert gpu_check.test_status(dict(timed_out=False, rc=1), parsed) == "FAILED"
    passing = dict(parsed, failed=0, errors=0)
    assert gpu_check.test_status(dict(timed_out=False, rc=0), passing) == "FAILED: unexpected skips"
    assert gpu_check.test_status(dict(timed_out=False, rc=0), dict(passing, unexpected_skips=[])) == "ok"
    assert (
        gpu_check.test_status(dict(timed_out=False, rc=5), dict(passing, unexpected_skips=[], ran=0))
        == "FAILED: the selection ran no test"
    )


def test_parse_junit_without_a_file(tmp_path):
    gpu_check = _gpu_check_module()
    missing = gpu_check.parse_junit(str(tmp_path / "none.xml"))
    assert not missing["complete"] and missing["ran"] == 0 and "no JUnit XML" in missing["error"]
    assert gpu_check.test_status(dict(timed_out=False, rc=2), missing).startswith("FAILED: no JUnit XML")
    (tmp_path / "cut.xml").write_text("<testsuites><testsuite><testcase name='a'")
    assert "unreadable JUnit XML" in gpu_check.parse_junit(str(tmp_path / "cut.xml"))["error"]


@pytest.mark.parametrize("parent_ignores_sigint", [False, True])
def test_a_pytest_past_its_limit_still_writes_junit(tmp_path, parent_ignores_sigint):
    """gpu_check stops a child past its limit with SIGINT first: pytest stops and writes the XML
    of the tests that ran (the one interrupted is counted apart). Also when this process ignores
    SIGINT, as a shell's background job does (children inherit that through exec)."""
    gpu_check = _gpu_check_module()
    cmd, junit = _sample_pytest(tmp_path, "-k", "one or slow")
    marker = tmp_path / "slow-started"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if parent_ignores_sigint else signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env=dict(ENV, SAMPLE_SLEEP="600", SAMPLE_MARKER=str(marker)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=gpu_check.interruptible,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the sample test did not start"
        started = time.monotonic()
        gpu_check.stop(proc)
        assert proc.poll() is not None and time.monotonic() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    parsed = gpu_check.parse_junit(str(junit))
    assert parsed["complete"] and (parsed["passed"], parsed["interrupted"], parsed["ran"]) == (1, 1, 1)
    assert gpu_check.KILL_SEQUENCE[0][0] == signal.SIGINT


def test_gpu_check_test_selections_are_not_empty():
    """Every pytest selection of the GPU check collects tests (names or markers may drift)."""
    gpu_check = _gpu_check_module()
    script = textwrap.dedent("""
        import json, sys
        import pytest

        class Count:
            def pytest_collection_finish(self, session):
                self.n = len(session.items)

        counts = {}
        for name, selection in json.loads(sys.argv[1]):
            plugin = Count()
            pytest.main([*selection, "--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[plugin])
            counts[name] = getattr(plugin, "n", 0)
        print("COUNTS " + json.dumps(counts))
        """)
    steps = [(name, selection) for name, selection, _ in gpu_check.TEST_STEPS + gpu_check.DRY_TEST_STEPS]
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(steps)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("COUNTS "))
    counts = json.loads(line[len("COUNTS ") :])
    assert set(counts) == {name for name, _ in steps}
    assert all(n > 0 for n in counts.values()), counts


def test_gpu_check_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "gpu"
    result = subprocess.run(
        [sys.executable, GPU_CHECK, str(out), "--dry-run", "--time-limit", "240"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    cuda = torch.cuda.is_available()
    assert result.returncode == (0 if cuda else 3), result.stdout + result.stderr
    if not cuda:
        assert "gpu_check: NO CUDA: no CUDA device here" in result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.md", "pytest.log", "steps.log"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and report["probe"]["torch"] == torch.__version__
    (test,) = report["tests"].values()
    assert test["status"] == "ok" and test["passed"] >= 1 and test["failed"] == 0
    (bench,) = report["bench"].values()
    assert bench["status"] == "ok" and bench["rows"] and all(r["tokens_per_s"] > 0 for r in bench["rows"])
    assert any(line.startswith("masking token 64x128:") for line in bench["summary"])
    kernels = report["kernels"]
    assert kernels["status"] == "ok" and kernels["failures"] == []
    if kernels["unavailable"] is None:  # one cross-entropy variant, compiled offline for sm_80 and sm_90
        assert [r["target"] for r in kernels["rows"]] == ["sm_80", "sm_90"]
        assert all(r["n_regs"] > 0 and r["n_spills"] == 0 and r["shared"] >= 0 for r in kernels["rows"])
    markdown = (out / "gpu_check.md").read_text()
    assert ("NO CUDA" in markdown) != cuda and "| kernels-masking-dry |" in markdown and "## Benchmarks" in markdown
    assert "## Triton kernels (registers, spills, shared memory)" in markdown
    if kernels["unavailable"] is None:
        assert "| cross_entropy | fp32 rows, compact grad, smoothing, feedback | 1024 | 4 | sm_80 |" in markdown
    assert "passed" in (out / "pytest.log").read_text()


def test_quick_seq2seq_suite(tmp_path, capsys):
    """The span-corruption suite end to end on a small batch: both collators rebuild their rows."""
    import fastmask
    from fastmask.bench import seq2seq

    result = seq2seq.run(quick=True, batch=4, input_length=64, progress=False)
    assert result["failures"] == []
    row, infilling = result["rows"]
    assert (row["input_length"], row["length"]) == (64, fastmask.span_corruption_lengths(64)[0])
    assert row["speedup"] > 0 and row["speedup_best"] > 0
    assert "Flax" in seq2seq.to_markdown(result) and seq2seq.headlines(result)[0].startswith("span corruption 4x")
    assert [r["impl"] for r in seq2seq.table_rows(result)][-1] == "Flax example collator (numpy)"
    # text infilling: the Flax BART example's collator on the same rows
    assert (infilling["strategy"], infilling["length"], infilling["batch"]) == ("text_infilling", 64, 4)
    assert infilling["speedup"] > 0 and infilling["speedup_words"] > 0
    assert "Flax BART example" in seq2seq.to_markdown(result)
    assert seq2seq.headlines(result)[1].startswith("text infilling 4x64")
