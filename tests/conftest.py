"""Test configuration: run the Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, before any
test module imports fastmask.
"""

import os


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# ----------------------------------------------------------------------------- CI budget
# Tests marked ``slow`` (long training runs, multi-process and very large inputs; each has a
# quick counterpart in the default run) are deselected unless FASTMASK_SLOW_TESTS=1. Deselected
# tests are reported as such, never as passed.
SLOW_TESTS_VARIABLE = "FASTMASK_SLOW_TESTS"


def _run_slow_tests() -> bool:
    return os.environ.get(SLOW_TESTS_VARIABLE, "0").strip().lower() in ("1", "true", "yes", "on")


def pytest_collection_modifyitems(config, items):
    if _run_slow_tests() or config.getoption("-m"):
        return  # an explicit -m selection decides on its own
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
        config.hook.pytest_deselected(items=slow)


def pytest_report_header(config):
    if _run_slow_tests() or config.getoption("-m"):
        return f"{SLOW_TESTS_VARIABLE}: slow tests included"
    return f"{SLOW_TESTS_VARIABLE} unset: tests marked slow are deselected (set {SLOW_TESTS_VARIABLE}=1 to run them)"
