"""``python -m fastmask.info``: versions and which backends can run, with reasons."""

from __future__ import annotations

import importlib
import platform
import sys
from typing import Optional

import torch

from . import __version__, _backend


def availability(device: Optional[str] = None) -> dict[str, Optional[str]]:
    """``{backend: None if usable else the reason}`` for ``device`` (default: cpu)."""
    return _backend.availability(torch.device(device or "cpu"))


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:
        return "not installed"


def report() -> str:
    lines = [
        f"fastmask {__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}",
        f"triton {_version('triton')}",
        f"transformers {_version('transformers')}",
        f"numpy {_version('numpy')}",
    ]
    module = _backend.cpp_module()
    if module is not None:
        threads, rule = _backend.cpp_thread_count()
        line = f"C++ extension: built, {threads} thread{'' if threads == 1 else 's'} ({rule})"
        if hasattr(module, "_pool_state") and module._pool_state()["creation_failed"]:
            line += "; its threads could not be started, so the kernels run serially"
        lines.append(line)
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        lines.append(f"CUDA: {torch.cuda.get_device_name(0)}")
    else:
        lines.append("CUDA: not available")
    if _backend.triton_interpreting():
        lines.append("TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter")
    for device in devices:
        lines.append(f"backends for {device} tensors:")
        for name, reason in availability(device).items():
            lines.append(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
        lines.append(f"  auto       -> {_backend.resolve_backend('auto', torch.device(device), op='info')}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
