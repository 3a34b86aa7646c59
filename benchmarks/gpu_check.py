"""The GPU check: Triton correctness on CUDA tensors, the kernels' registers and spills, and the
GPU benchmarks, bounded in time.

    python benchmarks/gpu_check.py OUTDIR [--time-limit 450] [--no-build] [--dry-run]

On the project's device machine: ``python3 benchmarks/gpu_check.py "$OUT"`` with a 540 s
command limit (the default overall limit, 450 s, leaves room for the machine's own start).

Run from anywhere on a CUDA machine (no network needed, fastmask need not be installed: the
children get this checkout on PYTHONPATH). Steps, each a child process with its own time
limit inside the overall one (a child that overruns is killed with its process group):

1. probe: GPU name, versions, whether the C++ extension loads, Triton on CUDA;
2. build: ``setup.py build_ext --inplace`` when the extension does not load and pybind11 is
   there (skipped with ``--no-build``; without pybind11 the check goes on without C++ and
   says so);
3. tests: the Triton tests of ``tests/test_kernels_masking.py``, ``test_cross_entropy.py``,
   ``test_fused_linear_cross_entropy.py``, ``test_loss.py``, ``test_ngrams_masking.py`` (``-m triton``: on a GPU they run
   the compiled kernels on CUDA tensors against the reference) and the collator's
   ``device="cuda"`` test, one pytest per file, ``TRITON_INTERPRET`` removed from the
   environment. Results are read from pytest's JUnit XML (``--junitxml``), not its text
   output. A file passes when pytest exits 0, ran at least one test, and skipped none for a
   reason other than those expected on a GPU (:data:`EXPECTED_SKIPS`). A pytest that runs
   past its limit gets SIGINT first, so it still writes the XML of the tests that ran;
4. kernels: every Triton kernel variant the launchers use, compiled for this GPU's compute
   capability and loaded (``python -m fastmask.bench.kernels``, through
   :mod:`fastmask.kernels.offline`): registers, spills and shared memory per variant, the
   assembler's and the driver's counts; a variant that spills (other than the known spills of
   ``fastmask.kernels.offline.KNOWN_SPILLS``, which are reported) fails the check;
5. benchmarks through ``fastmask bench --device cuda``: masking (reference, cpp, triton;
   L = 128..8192), the collator (with ``device="cuda"``), the loss suite (Liger when
   importable; GB/s against a device copy), then, if time is left, PMI masking against
   whole-word masking (``python -m fastmask.bench.ngrams --quick``) and the loss suite in bfloat16.

OUTDIR receives four flat files, rewritten after every step so a failure or a kill keeps
what ran: ``gpu_check.json`` (everything), ``gpu_check.md`` (the report: GPU, versions, test
counts, kernel resources, benchmark tables), ``pytest.log`` (raw pytest output) and
``steps.log`` (the other children's output). Exit status: 0 all passed; 1 something failed or
timed out; 3 no CUDA.

Without CUDA, or with ``--dry-run``, the plumbing is checked on the CPU instead (one small
test selection, one cross-entropy variant compiled offline for sm_80 and sm_90, one quick
masking benchmark, the same files) and, without CUDA, the exit status is 3 with a "no CUDA"
message.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 3
LENGTHS = ["128", "512", "2048", "8192"]
# (name, pytest arguments, seconds)
TEST_STEPS = [
    ("kernels-masking", ["tests/test_kernels_masking.py", "-m", "triton"], 150),
    ("cross-entropy", ["tests/test_cross_entropy.py", "-m", "triton"], 150),
    ("fused-linear-cross-entropy", ["tests/test_fused_linear_cross_entropy.py", "-m", "triton"], 120),
    ("loss", ["tests/test_loss.py", "-m", "triton"], 60),
    ("ngram-units", ["tests/test_ngrams_masking.py", "-m", "triton"], 60),
    ("collator-cuda", ["tests/test_collator.py", "-k", "device_moves_the_padded_batch and cuda"], 60),
]
DRY_TEST_STEPS = [("kernels-masking-dry", ["tests/test_kernels_masking.py", "-m", "triton", "-k", "row_limit"], 120)]
# (name, command after `python -m`, seconds, optional: run only with this many seconds left)
BENCH_STEPS = [
    ("bench-masking", ["fastmask", "bench", "--suite", "masking", "--quick", "--lengths", *LENGTHS], 150, None),
    ("bench-collator", ["fastmask", "bench", "--suite", "collator", "--quick", "--lengths", *LENGTHS], 180, None),
    ("bench-loss", ["fastmask", "bench", "--suite", "loss"], 180, None),
    ("bench-ngrams", ["fastmask.bench.ngrams", "--quick"], 120, 150),
    ("bench-loss-bf16", ["fastmask.bench.loss", "--dtype", "bfloat16"], 120, 150),
]
DRY_BENCH_STEPS = [
    ("bench-masking-dry", ["fastmask", "bench", "--suite", "masking", "--quick", "--lengths", "128"], 120, None)
]
# (command after `python -m`, seconds): the kernels' registers / spills / shared memory
KERNELS_STEP = (["fastmask.bench.kernels"], 150)
DRY_KERNELS_STEP = (["fastmask.bench.kernels", "--kernel", "cross_entropy", "--blocks", "1024", "--limit", "1"], 150)
# Skips that are right on a GPU: the offline compile checks run only without one.
EXPECTED_SKIPS = ("a GPU is present",)
PYTEST_OPTIONS = [
    "-v",
    "-rfEs",
    "-p",
    "no:cacheprovider",
    "--color=no",
    "-o",
    "timeout=90",
    "-o",
    "junit_family=xunit2",
    "-o",
    "junit_logging=no",
]
# A child past its time limit gets these signals in turn (seconds to wait after each): SIGINT
# lets pytest finish its JUnit XML with the tests that ran.
KILL_SEQUENCE = ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5))
RESERVE_S = 10  # kept for writing the report
MIN_STEP_S = 20  # a step with less time left is not started
BENCH_SHARE_S = 200  # the tests stop in time to leave this much to the kernels step and the benchmarks

PROBE = r"""
import json, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
        info["cuda_runtime"] = torch.version.cuda
except Exception as exc:
    info["torch_error"] = repr(exc)
for name in ("triton", "transformers", "tokenizers", "numpy", "pybind11", "liger_kernel", "pytest", "tqdm", "matplotlib"):
    try:
        info[name] = getattr(__import__(name), "__version__", "installed")
    except Exception:
        info[name] = None
try:
    import fastmask
    from fastmask import _backend
    info["fastmask"] = fastmask.__version__
    info["fastmask_path"] = fastmask.__file__
    info["cpp_extension"] = _backend.unavailable_reason("cpp", torch.device("cpu")) or "built"
    info["triton_interpret"] = _backend.triton_interpreting()
    info["triton_on_cuda"] = (_backend.unavailable_reason("triton", torch.device("cuda")) or "available"
                              if torch.cuda.is_available() else "no CUDA device")
except Exception as exc:
    info["fastmask_error"] = repr(exc)
print("PROBE " + json.dumps(info))
"""


def parse_junit(path: str, *, expected_skips=EXPECTED_SKIPS) -> dict:
    """Counts, failures (with their messages) and skip reasons from a pytest ``--junitxml`` file.

    ``complete`` is False when the file is missing or unreadable (pytest killed before it
    wrote it); the counts are then zero and ``error`` says why. ``interrupted`` counts the
    tests that were running when pytest was interrupted (SIGINT at the time limit): pytest
    writes them without a name or an outcome."""
    counts = dict(passed=0, failed=0, errors=0, skipped=0, xfailed=0)
    empty = dict(counts, ran=0, interrupted=0, complete=False, failures=[], skips=[], unexpected_skips=[])
    try:
        root = ElementTree.parse(path).getroot()
    except FileNotFoundError:
        return dict(empty, error="no JUnit XML: pytest did not finish writing it")
    except ElementTree.ParseError as exc:
        return dict(empty, error=f"unreadable JUnit XML: {exc}")
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    failures, skips, interrupted = [], {}, 0
    for case in (c for suite in suites for c in suite.iter("testcase")):
        if not case.get("name"):  # the test running when pytest was interrupted (no name, no outcome)
            interrupted += 1
            continue
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        error, failure, skipped = case.find("error"), case.find("failure"), case.find("skipped")
        if error is not None or failure is not None:
            element = error if error is not None else failure
            counts["errors" if error is not None else "failed"] += 1
            message = (element.get("message") or element.text or "").strip()
            failures.append(
                dict(
                    test=test,
                    outcome="error" if error is not None else "failed",
                    message=message.splitlines()[0][:500] if message else "",
                )
            )
        elif skipped is not None and skipped.get("type") == "pytest.xfail":
            counts["xfailed"] += 1
        elif skipped is not None:
            counts["skipped"] += 1
            reason = (skipped.get("message") or "").strip()
            where = (skipped.text or "").split(": ", 1)[0].strip() or test
            key = (where, reason)
            skips[key] = skips.get(key, 0) + 1
        else:
            counts["passed"] += 1
    skip_list = [dict(count=n, where=where, reason=reason) for (where, reason), n in skips.items()]
    unexpected = [s for s in skip_list if not any(e in s["reason"] for e in expected_skips)]
    ran = sum(counts.values())
    return dict(
        counts,
        ran=ran,
        interrupted=interrupted,
        complete=True,
        failures=failures,
        skips=skip_list,
        unexpected_skips=unexpected,
    )


def test_status(record: dict, parsed: dict) -> str:
    """The status of one pytest step from its run record and its parsed JUnit XML."""
    if record["timed_out"]:
        return "timed out"
    if not parsed["complete"]:
        return f"FAILED: {parsed.get('error', 'no JUnit XML')} (exit {record['rc']})"
    if record["rc"] == 5 or parsed["ran"] == 0:
        return "FAILED: the selection ran no test"
    if record["rc"] != 0 or parsed["failed"] or parsed["errors"]:
        return "FAILED"
    if parsed["unexpected_skips"]:
        return "FAILED: unexpected skips"
    return "ok"


def _child_env(cuda: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", COLUMNS="200")
    if cuda:
        env.pop("TRITON_INTERPRET", None)  # the compiled kernels, never the interpreter
    return env


def stop(proc: subprocess.Popen) -> None:
    """Stop ``proc``'s process group (started with ``start_new_session``): the signals of
    :data:`KILL_SEQUENCE` in turn, each followed by its grace time, until it has exited."""
    for sig, grace in KILL_SEQUENCE:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def interruptible() -> None:
    """``preexec_fn`` of every child: SIGINT back to its default action. A shell starts a
    background job (``gpu_check.py ... &``) with SIGINT ignored, children inherit that through
    exec, and a Python started so installs no KeyboardInterrupt handler, so pytest would sleep
    through the first signal of :data:`KILL_SEQUENCE` and never write its XML."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(cmd: list, log_path: str, limit: float, env: dict) -> dict:
    """Run ``cmd`` in ROOT with output appended to ``log_path``; at ``limit``, stop its process
    group (:data:`KILL_SEQUENCE`)."""
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {' '.join(cmd)}  (limit {limit:.0f} s)\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=interruptible,
        )
        timed_out = False
        try:
            rc: Optional[int] = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            stop(proc)
            rc = None
        seconds = time.monotonic() - start
        log.write(f"===== exit {rc}{' (killed: time limit)' if timed_out else ''} after {seconds:.1f} s\n")
    return dict(cmd=" ".join(cmd), rc=rc, timed_out=timed_out, seconds=round(seconds, 1))


class Check:
    """The state of one gpu_check run and its report files."""

    def __init__(self, outdir: str, time_limit: float, dry_run: bool):
        self.outdir = outdir
        self.start = time.monotonic()
        self.deadline = self.start + time_limit
        self.work = tempfile.mkdtemp(prefix="fastmask-gpu-check-")
        self.steps_log = os.path.join(outdir, "steps.log")
        self.pytest_log = os.path.join(outdir, "pytest.log")
        for path in (self.steps_log, self.pytest_log):
            open(path, "w").close()
        self.report = dict(
            started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            time_limit_s=time_limit,
            mode="dry-run" if dry_run else "cuda",
            result="running",
            message="",
            probe={},
            steps=[],
            tests={},
            kernels={},
            bench={},
        )
        self.bench_markdown: dict = {}
        self.kernels_markdown = ""

    def left(self, until: Optional[float] = None) -> float:
        return min(self.deadline, until or self.deadline) - time.monotonic() - RESERVE_S

    def step(
        self,
        name: str,
        cmd: list,
        limit: float,
        env: dict,
        *,
        log: Optional[str] = None,
        until: Optional[float] = None,
        needs: float = MIN_STEP_S,
    ) -> Optional[dict]:
        """Run one step if enough time is left; record it; rewrite the report."""
        left = self.left(until)
        if left < needs:
            record = dict(
                name=name,
                status=f"not run: {max(left, 0):.0f} s left of the time limit, {needs:.0f} s needed",
                seconds=0,
            )
            self.report["steps"].append(record)
            self.write()
            return None
        # the limit leaves room for the first, gentle signal's grace before the overall deadline
        record = dict(name=name, **_run(cmd, log or self.steps_log, min(limit, left - KILL_SEQUENCE[0][1]), env))
        record["status"] = "timed out" if record["timed_out"] else "ok" if record["rc"] == 0 else f"exit {record['rc']}"
        self.report["steps"].append(record)
        self.write()
        return record

    def probe(self, env: dict) -> dict:
        log = os.path.join(self.work, "probe.log")
        open(log, "w").close()
        self.step("probe", [sys.executable, "-c", PROBE], 90, env, log=log, needs=5)
        text = open(log, encoding="utf-8").read()
        with open(self.steps_log, "a", encoding="utf-8") as handle:
            handle.write(text)
        found = [line[6:] for line in text.splitlines() if line.startswith("PROBE ")]
        self.report["probe"] = (
            json.loads(found[-1]) if found else {"error": "the probe printed nothing (see steps.log)"}
        )
        self.write()
        return self.report["probe"]

    def tests(self, steps: list, env: dict, *, expected_skips, until: Optional[float] = None) -> None:
        for name, selection, limit in steps:
            log, junit = (os.path.join(self.work, f"{name}.{ext}") for ext in ("log", "xml"))
            cmd = [sys.executable, "-m", "pytest", *selection, *PYTEST_OPTIONS, f"--junitxml={junit}"]
            record = self.step(name, cmd, limit, env, log=log, until=until)
            if record is None:
                self.report["tests"][name] = dict(
                    selection=" ".join(selection), status=self.report["steps"][-1]["status"]
                )
                self.write()
                continue
            with open(log, encoding="utf-8") as source, open(self.pytest_log, "a", encoding="utf-8") as handle:
                handle.write(source.read())
            parsed = parse_junit(junit, expected_skips=expected_skips)
            self.report["tests"][name] = dict(
                selection=" ".join(selection), status=test_status(record, parsed), seconds=record["seconds"], **parsed
            )
            self.write()

    def module_command(self, name: str, command, device: str) -> tuple[list, str, str]:
        """``(argv, json path, markdown path)``: ``python -m <command>`` on ``device``, writing its
        JSON and markdown under the work folder as ``<name>.json`` / ``<name>.md``."""
        json_path, md_path = (os.path.join(self.work, f"{name}.{ext}") for ext in ("json", "md"))
        argv = [sys.executable, "-m", *command, "--device", device, "--no-progress"]
        return argv + ["--json", json_path, "--markdown", md_path], json_path, md_path

    def kernels(self, step: tuple, env: dict, device: str) -> None:
        """Compile the Triton kernel variants; their registers / spills / shared memory go to
        ``report["kernels"]`` and the markdown."""
        command, limit = step
        cmd, json_path, md_path = self.module_command("kernels", command, device)
        record = self.step("kernels", cmd, limit, env)
        entry = dict(status=self.report["steps"][-1]["status"], command=" ".join(command))
        if record is not None and os.path.exists(json_path):
            with open(json_path, encoding="utf-8") as handle:
                result = json.load(handle)
            entry.update(
                targets=result["targets"],
                unavailable=result["unavailable"],
                rows=result["rows"],
                seconds=result["seconds"],
            )
            spills = [
                r
                for r in result["rows"]
                if r.get("error")
                or (
                    (r.get("n_spills") or r.get("spill_stores") or r.get("spill_loads") or r.get("driver_n_spills"))
                    and r["block"] not in result.get("known_spills", {}).get(r["kernel"], ())
                )
            ]
            entry["failures"] = [
                f"{r['kernel']} [{r['block']}/{r['num_warps']}w] {r['variant']} {r['target']}: "
                + (r["error"].splitlines()[0][:300] if r.get("error") else f"{r['n_spills']} spills")
                for r in spills
            ]
            if result["unavailable"] and device == "cuda":
                entry["failures"].append(f"cannot compile for this GPU: {result['unavailable']}")
            if entry["status"] == "exit 1" and entry["failures"]:
                entry["status"] = "FAILED: " + ("spills" if spills else "no compiler")
        if record is not None and os.path.exists(md_path):
            with open(md_path, encoding="utf-8") as handle:
                self.kernels_markdown = handle.read()
        self.report["kernels"] = entry
        self.write()

    def bench(self, steps: list, env: dict, device: str) -> None:
        for name, command, limit, needs in steps:
            cmd, json_path, md_path = self.module_command(name, command, device)
            record = self.step(name, cmd, limit, env, needs=needs or MIN_STEP_S)
            entry = dict(status=self.report["steps"][-1]["status"], command=" ".join(command))
            if record is not None and os.path.exists(json_path):
                with open(json_path, encoding="utf-8") as handle:
                    document = json.load(handle)
                if "rows" not in document:  # a suite module's own JSON: keep it as it is
                    entry.update(result=document)
                else:
                    entry.update(
                        rows=document["rows"],
                        summary=document["summary"],
                        failures=document["failures"],
                        machine=document["machine"],
                        suites=document["suites"],
                    )
            if record is not None and os.path.exists(md_path):
                with open(md_path, encoding="utf-8") as handle:
                    self.bench_markdown[name] = handle.read()
            self.report["bench"][name] = entry
            self.write()

    # ------------------------------------------------------------------------- report
    def write(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.start, 1)
        _write(os.path.join(self.outdir, "gpu_check.json"), json.dumps(self.report, indent=2) + "\n")
        _write(os.path.join(self.outdir, "gpu_check.md"), self.markdown())

    def markdown(self) -> str:
        r, p = self.report, self.report["probe"]
        gpu = (
            f"{p['gpu']} (capability {p.get('capability')}, {p.get('gpu_memory_gib')} GiB; CUDA runtime "
            f"{p.get('cuda_runtime')})"
            if p.get("gpu")
            else "none (torch.cuda.is_available() is False)"
        )
        lines = [
            "# fastmask GPU check",
            "",
            f"- result: **{r['result']}**" + (f": {r['message']}" if r["message"] else ""),
            f"- mode: {r['mode']}; started {r['started']}; {r.get('elapsed_s', 0):.0f} s of {r['time_limit_s']:.0f} s",
            f"- GPU: {gpu}",
            "- versions: "
            + ", ".join(
                f"{k} {p.get(k)}"
                for k in ("python", "torch", "triton", "transformers", "tokenizers", "numpy", "fastmask")
            ),
            f"- C++ extension: {p.get('cpp_extension', 'unknown')}"
            + (" (built by this run)" if r.get("built_extension") else ""),
            f"- pybind11: {p.get('pybind11') or 'not installed'}; Liger-Kernel: {p.get('liger_kernel') or 'not importable'}"
            + (f"; build: {r['build']}" if r.get("build") else ""),
            f"- Triton on CUDA: {p.get('triton_on_cuda', 'unknown')}; TRITON_INTERPRET in the children: "
            + ("unset" if r["mode"] == "cuda" else "as tests/conftest.py sets it"),
            "",
            "## Tests (pytest)",
            "",
            "| step | selection | passed | failed | errors | skipped | unexpected skips | seconds | status |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, t in r["tests"].items():
            lines.append(
                f"| {name} | `{t['selection']}` | {t.get('passed', '-')} | {t.get('failed', '-')} | "
                f"{t.get('errors', '-')} | {t.get('skipped', '-')} | "
                f"{sum(s['count'] for s in t.get('unexpected_skips', [])) if 'ran' in t else '-'} | "
                f"{t.get('seconds', '-')} | {t['status']} |"
            )
        for name, t in r["tests"].items():
            for failure in t.get("failures", [])[:20]:
                lines.append(f"- {name}: {failure['outcome'].upper()} `{failure['test']}`: {failure['message']}")
            for skip in t.get("skips", []):
                lines.append(f"- {name}: skipped {skip['count']} ({skip['where']}): {skip['reason']}")
        k = r["kernels"]
        lines += ["", "## Triton kernels (registers, spills, shared memory)", ""]
        if k:
            lines.append(f"- `{k['command']}`: {k['status']}")
            lines += [f"  - FAILED: {line}" for line in k.get("failures", [])]
        else:
            lines.append("- not run")
        if self.kernels_markdown:
            lines += [""] + [
                ("##" + line if line.startswith("#") else line) for line in self.kernels_markdown.splitlines()
            ]
        lines += ["", "## Benchmarks", ""]
        for name, b in r["bench"].items():
            lines.append(f"- {name} (`{b['command']}`): {b['status']}")
            lines += [f"  - {line}" for line in b.get("summary", [])]
            lines += [f"  - FAILED: {line}" for line in b.get("failures", [])]
        for name, text in self.bench_markdown.items():
            lines += ["", f"### {name}", ""]
            lines += [("##" + line if line.startswith("#") else line) for line in text.splitlines()]
        lines += ["", "## Steps", "", "| step | status | seconds |", "| --- | --- | ---: |"]
        lines += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in r["steps"]]
        return "\n".join(lines) + "\n"

    def finish(self, result: str, message: str, code: int) -> int:
        self.report.update(result=result, message=message, exit_status=code)
        self.write()
        shutil.rmtree(self.work, ignore_errors=True)
        print(
            f"gpu_check: {result}: {message}" if message else f"gpu_check: {result}",
            file=sys.stderr if code else sys.stdout,
        )
        print(
            f"gpu_check: report in {os.path.join(self.outdir, 'gpu_check.md')}", file=sys.stderr if code else sys.stdout
        )
        return code


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _problems(report: dict) -> list:
    problems = [f"tests {name}: {t['status']}" for name, t in report["tests"].items() if t["status"] != "ok"]
    kernels = report.get("kernels") or {}
    if kernels and kernels["status"] != "ok":
        problems.append(f"kernels: {kernels['status']}")
    problems += [f"kernels: {f}" for f in kernels.get("failures", [])[:5]]
    problems += [f"{name}: {b['status']}" for name, b in report["bench"].items() if b["status"] != "ok"]
    problems += [f"{name}: {f}" for name, b in report["bench"].items() for f in b.get("failures", [])]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="folder for gpu_check.json, gpu_check.md, pytest.log, steps.log")
    parser.add_argument("--time-limit", type=float, default=450, help="overall seconds (default 450)")
    parser.add_argument("--no-build", action="store_true", help="do not try to build the C++ extension")
    parser.add_argument("--dry-run", action="store_true", help="check the plumbing on the CPU (small selections)")
    args = parser.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    check = Check(args.outdir, args.time_limit, args.dry_run)
    try:
        return _check(check, args)
    except Exception as exc:  # a bug here still leaves a report of what ran
        return check.finish("FAILED", f"gpu_check itself failed: {type(exc).__name__}: {exc}", EXIT_FAILED)


def _check(check: Check, args) -> int:
    probe = check.probe(_child_env(cuda=True))
    cuda = bool(probe.get("cuda_available"))
    if "fastmask_error" in probe or "torch_error" in probe or "error" in probe:
        return check.finish(
            "FAILED",
            "the probe could not import torch/fastmask: "
            + str(probe.get("fastmask_error") or probe.get("torch_error") or probe.get("error")),
            EXIT_FAILED,
        )

    if args.dry_run or not cuda:
        check.report["mode"] = "dry-run"
        env = _child_env(cuda=False)
        check.tests(DRY_TEST_STEPS, env, expected_skips=("",))
        check.kernels(DRY_KERNELS_STEP, env, "cpu")
        check.bench(DRY_BENCH_STEPS, env, "cpu")
        problems = _problems(check.report)
        if not cuda:
            plumbing = "the CPU plumbing check " + ("passed" if not problems else "FAILED: " + "; ".join(problems))
            return check.finish(
                "NO CUDA",
                "no CUDA device here (torch.cuda.is_available() is False), so nothing "
                f"was checked on a GPU; {plumbing}. Run this on a CUDA machine.",
                EXIT_NO_CUDA if not problems else EXIT_FAILED,
            )
        if problems:
            return check.finish("FAILED", "dry run: " + "; ".join(problems), EXIT_FAILED)
        return check.finish("OK", "dry run only (CPU plumbing)", EXIT_OK)

    env = _child_env(cuda=True)
    if probe.get("cpp_extension") != "built":
        if args.no_build:
            check.report["build"] = "not tried (--no-build)"
        elif not probe.get("pybind11"):
            check.report["build"] = "not tried: pybind11 is not installed; running without the C++ extension"
        else:
            record = check.step(
                "build-extension", [sys.executable, "setup.py", "build_ext", "--inplace", "-q"], 180, env
            )
            check.report["built_extension"] = bool(record and record["rc"] == 0)
            check.report["build"] = "built" if check.report["built_extension"] else "failed (see steps.log)"
            probe = check.probe(env)
    if probe.get("cpp_extension") != "built":
        env["FASTMASK_REQUIRE_BACKENDS"] = "triton"  # C++-only tests skip (with the reason) instead of failing
    if probe.get("triton_on_cuda") != "available":
        return check.finish("FAILED", f"Triton cannot run on CUDA here: {probe.get('triton_on_cuda')}", EXIT_FAILED)
    check.tests(TEST_STEPS, env, expected_skips=EXPECTED_SKIPS, until=check.deadline - BENCH_SHARE_S)
    check.kernels(KERNELS_STEP, env, "cuda")
    check.bench(BENCH_STEPS, env, "cuda")
    problems = _problems(check.report)
    optional = {name for name, _, _, needs in BENCH_STEPS if needs}
    problems = [p for p in problems if not (p.split(":")[0] in optional and "not run" in p)]
    if problems:
        return check.finish("FAILED", "; ".join(problems), EXIT_FAILED)
    return check.finish("OK", "", EXIT_OK)


if __name__ == "__main__":
    raise SystemExit(main())
