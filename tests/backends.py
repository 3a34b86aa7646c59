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


def kernel_device() -> str:
    """Where the Triton tests run the kernels: the GPU when there is one, else the CPU (through
    the interpreter, which conftest.py turns on there)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def require_backend(name: str, device: str = "cpu") -> None:
    reason = _backend.unavailable_reason(name, torch.device(device))
    if reason is None:
        return
    required = {b.strip() for b in os.environ.get("FASTMASK_REQUIRE_BACKENDS", "cpp,triton").split(",") if b.strip()}
    if name in required:
        pytest.fail(f"backend {name!r} is required here (FASTMASK_REQUIRE_BACKENDS) but unavailable: {reason}")
    pytest.skip(f"backend {name!r} unavailable: {reason}")


def backend_cases(samples: list, small: list) -> list:
    """``(backend, kwargs)`` pytest params for :func:`assert_matches_reference`: C++ on each of
    ``samples`` (``(name, kwargs)`` pairs), Triton (slow in the interpreter) on each of ``small``."""
    return [
        pytest.param(backend, kwargs, id=f"{backend}-{name}")
        for backend, cases in (("cpp", samples), ("triton", small))
        for name, kwargs in cases
    ]


def assert_matches_reference(op, kwargs: dict, backend: str) -> None:
    """``op(**kwargs)``'s outputs on ``backend`` equal the reference backend's (dtype and values);
    fails, or skips, like :func:`require_backend` when ``backend`` cannot run here."""
    require_backend(backend)
    expected = op(**kwargs, backend="reference")
    got = op(**kwargs, backend=backend)
    for e, g in zip(expected, got, strict=True):
        assert e.dtype == g.dtype and torch.equal(e, g)


def assert_compiles_offline(variants) -> list[dict]:
    """Compiles Triton kernel ``variants`` (:func:`fastmask.kernels.offline.variants`) for every
    offline target and checks each compiled, in order, with 0 spills and registers that fit its
    warps; skips when no offline compiler is installed. Returns the report rows."""
    from fastmask.kernels import offline

    try:
        rows = offline.compile_report(variants, offline.TARGETS, jobs=min(2, os.cpu_count() or 1))
    except offline.OfflineCompileUnavailable as exc:
        pytest.skip(str(exc))
    assert [(r["variant"], r["block"], r["target"]) for r in rows] == [
        (v.label, v.block, f"sm_{c}") for c in offline.TARGETS for v in variants
    ]
    bad = offline.spilled(rows)
    assert not bad, "spills or compile errors:\n" + offline.markdown_table(bad)
    assert all(0 < r["n_regs"] <= 65536 // (32 * r["num_warps"]) for r in rows)
    return rows
