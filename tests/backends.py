"""``require_backend``: a test whose backend cannot run here fails, rather than passing as a skip.

The C++ and Triton (interpreter on CPU) backends are required by default, so a broken build
or a missing Triton install fails the suite. ``FASTMASK_REQUIRE_BACKENDS`` lists the required
backends instead (e.g. ``FASTMASK_REQUIRE_BACKENDS=`` after a ``FASTMASK_NO_EXT=1`` build);
the others are then skipped, with the reason.
"""

from __future__ import annotations

import os

import pytest
import torch

from fastmask import _backend


def require_backend(name: str, device: str = "cpu") -> None:
    reason = _backend.unavailable_reason(name, torch.device(device))
    if reason is None:
        return
    required = {b.strip() for b in os.environ.get("FASTMASK_REQUIRE_BACKENDS", "cpp,triton").split(",") if b.strip()}
    if name in required:
        pytest.fail(f"backend {name!r} is required here (FASTMASK_REQUIRE_BACKENDS) but unavailable: {reason}")
    pytest.skip(f"backend {name!r} unavailable: {reason}")
