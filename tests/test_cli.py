"""The ``fastmask`` command: help, one-line errors, info, train (also under torchrun), bench;
the error policy: usage errors are one line, bugs show their traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastmask import cli

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


# `fastmask train` options of a two-step run on tiny batches.
TINY_TRAIN = ("--max-steps", "2", "--seq-len", "32", "--batch-size", "4")


def run(*args, timeout=600, module=("-m", "fastmask")):
    return subprocess.run([sys.executable, *module, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # cli.main sets these with setdefault; the fixture keeps them out of the other tests' env
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def main_in_process(*args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``fastmask ARGS`` run by ``cli.main`` in this process
    (argparse's own exits included); the subprocess tests cover the ``python -m`` entry point."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_help_documents_every_option():
    parser = cli.build_parser()
    for name in ("info", "bench", "train"):
        sub = parser._subparsers._group_actions[0].choices[name]
        for action in sub._actions:
            assert action.help, f"`fastmask {name}` option {action.option_strings} has no help"
    code, out, _ = main_in_process("train", "--help")
    assert code == 0
    for option in (
        "--max-steps",
        "--seq-len",
        "--batch-size",
        "--strategy",
        "--mlm-probability",
        "--seed",
        "--output-dir",
        "--compare",
        "--text",
        "--dataset",
        "--tokenizer",
        "--mask-ratio",
        "--poisson-lambda",
        "--adaptive",
    ):
        assert option in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--text", "/no/such/file.txt"], "no such file: /no/such/file.txt"),
        (["train", "--strategy", "words"], "invalid choice: 'words'"),
        (["train", "--max-steps", "0", "--no-save"], "--max-steps must be at least 1"),
        (["train", "--tokenizer", "no-such-org/no-such-tokenizer", "--no-save"], "could not be loaded"),
        (["bench", "--suite", "nothing"], "invalid choice: 'nothing'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_errors_are_one_line(args, message):
    code, _, err = main_in_process(*args)
    assert code == 2
    assert_one_line_error(err, message)


def test_errors_are_one_line_from_the_command():
    """The same through `python -m fastmask`: exit status 2, one line, no traceback."""
    result = run("train", "--max-steps", "0", "--no-save", timeout=120)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--max-steps must be at least 1")


def assert_one_line_error(stderr: str, message: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastmask: error:") and message in lines[0]
    assert "Traceback" not in stderr


def test_suite_choices_are_the_bench_suites():
    """One list: `fastmask bench --suite` offers exactly fastmask.bench.SUITES."""
    from fastmask.bench import SUITES, default_suite_names

    bench = cli.build_parser()._subparsers._group_actions[0].choices["bench"]
    (suite,) = [a for a in bench._actions if "--suite" in a.option_strings]
    assert list(suite.choices) == list(SUITES)
    assert f"default: {', '.join(default_suite_names())}" in suite.help


def test_help_names_the_traceback_variable():
    code, out, _ = main_in_process("bench", "--help")
    assert code == 0 and f"{cli.TRACEBACK_ENV}=1" in out
    assert cli.TRACEBACK_ENV == "FASTMASK_TRACEBACK"  # FASTMASK_DEBUG is setup.py's debug build


def _validation_type_error():
    from fastmask import _validation

    _validation.check_int("--max-steps", 1.5)  # a `raise TypeError(...)` in fastmask's validation


def _missing_optional_package():
    raise ModuleNotFoundError("No module named 'datasets'", name="datasets")


def _unavailable_backend():
    import torch

    fastmask_mask = __import__("fastmask").mask_tokens
    fastmask_mask(torch.zeros(1, 4, dtype=torch.long), mask_token_id=1, vocab_size=8, backend="triton")


@pytest.mark.parametrize(
    "raiser,message",
    [
        (_validation_type_error, "--max-steps must be an int, got float 1.5"),
        (lambda: open("/no/such/folder/file.txt"), "No such file or directory"),
        (_missing_optional_package, "No module named 'datasets' (an optional package: install it)"),
    ],
)
def test_usage_errors_from_the_library_are_one_line(monkeypatch, capsys, raiser, message):
    from fastmask import info

    monkeypatch.setattr(info, "report", raiser)
    assert cli.main(["info"]) == cli.EXIT_USAGE
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"fastmask: error: {lines[0][len('fastmask: error: ') :]}"] and message in lines[0]


def test_unavailable_backend_is_a_usage_error(monkeypatch, capsys):
    import torch

    from fastmask import info

    if torch.cuda.is_available():
        pytest.skip("triton can run on CUDA tensors here")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton on CPU tensors: unavailable, with the reason
    monkeypatch.setattr(info, "report", _unavailable_backend)
    assert cli.main(["info"]) == cli.EXIT_USAGE
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("fastmask: error:") and "triton" in line


def _library_type_error():
    from fastmask import _rng

    return _rng.lowbias32_int(None)  # Python raises inside fastmask: no `raise` statement of ours


def _torch_runtime_error():
    import torch

    return torch.zeros(2) @ torch.zeros(3)


def _value_error_outside_validation():
    return int("not a number")


def _missing_fastmask_module():
    import fastmask.no_such_module  # noqa: F401


@pytest.mark.parametrize(
    "raiser,kind",
    [
        (_library_type_error, TypeError),
        (_torch_runtime_error, RuntimeError),
        (_value_error_outside_validation, ValueError),
        (_missing_fastmask_module, ModuleNotFoundError),
    ],
)
def test_bugs_are_not_usage_errors(monkeypatch, capsys, raiser, kind):
    """A TypeError / RuntimeError from inside the library (or any error no validation raised)
    propagates: the command shows the traceback and exits 1 (see the subprocess test)."""
    from fastmask import info

    monkeypatch.setattr(info, "report", raiser)
    with pytest.raises(kind):
        cli.main(["info"])
    assert "fastmask: error:" not in capsys.readouterr().err


BUG_SCRIPT = """
import sys
from fastmask import _rng, cli, info
info.report = lambda: _rng.lowbias32_int(None)
raise SystemExit(cli.main(["info"]))
"""


def test_a_bug_shows_its_traceback():
    result = run(BUG_SCRIPT, timeout=120, module=("-c",))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "_rng.py" in result.stderr
    assert "TypeError" in result.stderr.splitlines()[-1] and "fastmask: error:" not in result.stderr


def test_traceback_variable_shows_usage_errors_in_full():
    env = dict(ENV, FASTMASK_TRACEBACK="1")
    result = subprocess.run(
        [sys.executable, "-m", "fastmask", "train", "--max-steps", "0", "--no-save"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1] == "ValueError: --max-steps must be at least 1, got 0"


def test_info_lists_backends():
    code, out, _ = main_in_process("info")
    assert code == 0
    assert "backends for cpu tensors:" in out and "cpp" in out and "reference" in out


@pytest.mark.slow
def test_train_compare(tmp_path):
    out = tmp_path / "run"
    result = run(
        "train",
        "--max-steps",
        "3",
        "--seq-len",
        "64",
        "--batch-size",
        "4",
        "--compare",
        "--no-progress",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "fastmask" in result.stdout and "stock" in result.stdout and "speed-up" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    names = [r["name"] for r in metrics["results"]]
    assert names == ["fastmask", "stock"]
    for r in metrics["results"]:
        assert r["steps"] == 3 and r["tokens_per_second"] > 0 and 0 < r["eval_loss"] < 20
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "model" / "config.json").exists()


@pytest.mark.slow
def test_train_on_own_text_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text(
        "\n\n".join(f"Paragraph {i} talks about masked language models and tokens." * 5 for i in range(200))
    )
    result = run("train", "--text", str(text), *TINY_TRAIN, "--strategy", "whole_word", "--no-progress", "--no-save")
    assert result.returncode == 0, result.stderr
    assert str(text) in result.stdout


@pytest.mark.slow
def test_train_under_torchrun_two_processes(tmp_path):
    result = run(
        *"--standalone --nproc_per_node=2 -m fastmask train".split(),
        *TINY_TRAIN,
        *"--device cpu --no-progress --output-dir".split(),
        str(tmp_path / "ddp"),
        module=("-m", "torch.distributed.run"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["results"][0]["steps"] == 2
