"""Backend availability and dispatch, shared by every op.

Each backend says why it cannot run a call; ``auto`` picks the best one that can (Triton for
CUDA tensors, C++ for CPU tensors, the reference otherwise) and never raises, while an
explicitly requested backend that cannot serve the call raises with the reasons.
The environment variable ``FASTMASK_BACKEND`` overrides ``auto``.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Mapping, Optional

import torch

BACKENDS = ("reference", "cpp", "triton")
BACKEND_CHOICES = ("auto",) + BACKENDS


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call."""


@functools.lru_cache(maxsize=None)
def _cpp_module_reason() -> tuple[Optional[object], Optional[str]]:
    if os.environ.get("FASTMASK_DISABLE_CPP", "0") == "1":
        return None, "disabled by FASTMASK_DISABLE_CPP=1"
    try:
        module = importlib.import_module("fastmask._C")
    except ImportError as exc:
        return None, (
            f"the C++ extension fastmask._C is not built ({exc}); reinstall without "
            "FASTMASK_NO_EXT=1, e.g. `pip install -e .`"
        )
    return module, None


def cpp_module():
    """The compiled extension module, or None."""
    return _cpp_module_reason()[0]


def cpp_symbol_reason(symbol: str) -> Optional[str]:
    """Why the C++ extension cannot serve ``symbol`` (a stale build), or None."""
    module = cpp_module()
    if module is not None and not hasattr(module, symbol):
        return f"fastmask._C has no {symbol} (a stale build?); rebuild with `pip install -e .`"
    return None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_import_reason() -> Optional[str]:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton is not importable ({type(exc).__name__}: {exc}); `pip install triton`"
    return None


def unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot run on ``device`` (None when it can)."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ kernels run on CPU tensors, got a {device.type} tensor"
        return _cpp_module_reason()[1]
    if backend == "triton":
        reason = _triton_import_reason()
        if reason:
            return reason
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            if triton_interpreting():
                return None
            return "Triton runs on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1)"
        return f"Triton kernels do not support {device.type} tensors"
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKEND_CHOICES}")


def check_backend_name(backend: str) -> str:
    if not isinstance(backend, str) or backend not in BACKEND_CHOICES:
        raise ValueError(f"backend={backend!r} is not one of {BACKEND_CHOICES}")
    return backend


def resolve_backend(
    backend: str,
    device: torch.device,
    *,
    op: str,
    call_reasons: Optional[Mapping[str, Optional[str]]] = None,
) -> str:
    """Pick the concrete backend for one call.

    ``call_reasons`` holds per-call limits of a backend (e.g. a sequence too long for one
    Triton block); they count like unavailability.
    """
    check_backend_name(backend)
    explicit = backend != "auto"
    if not explicit:
        env = os.environ.get("FASTMASK_BACKEND", "").strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"FASTMASK_BACKEND={env!r} is not one of {BACKEND_CHOICES}")
            backend, explicit = env, True
    call_reasons = call_reasons or {}

    def reason_for(name: str) -> Optional[str]:
        return unavailable_reason(name, device) or call_reasons.get(name)

    if explicit:
        reason = reason_for(backend)
        if reason:
            raise BackendUnavailableError(f"{op}: backend {backend!r} cannot run this call: {reason}")
        return backend
    preferred = ("triton", "reference") if device.type == "cuda" else ("cpp", "reference")
    for name in preferred:
        if reason_for(name) is None:
            return name
    return "reference"


def availability(device: torch.device) -> dict[str, Optional[str]]:
    """``{backend: None or the reason it is unavailable}`` for ``device``."""
    return {name: unavailable_reason(name, device) for name in BACKENDS}


@torch.compiler.assume_constant_result
def choose_backend(op: str, backend: str, device_type: str, cpp_symbol: str, limits: tuple = ()) -> str:
    """The concrete backend for one call of ``op`` (a constant under ``torch.compile``).

    ``cpp_symbol``: the extension function the op calls (a stale build may lack it);
    ``limits``: ``((backend, reason), ...)`` for backends that cannot take this call's shape
    or dtype. Every op dispatches through here.
    """
    call_reasons = {"cpp": cpp_symbol_reason(cpp_symbol)}
    for name, reason in limits:
        call_reasons[name] = call_reasons.get(name) or reason
    return resolve_backend(backend, torch.device(device_type), op=op, call_reasons=call_reasons)


def call_op(custom_op, impls: Mapping, backend: str, plan):
    """Runs ``plan`` on ``backend``: through the registered ``torch.library`` custom op while
    ``torch.compile`` traces (an opaque op with a fake impl), directly in eager mode (the same
    implementation without the dispatcher's overhead). One policy for every op."""
    if torch.compiler.is_compiling():
        buffers, scalars = plan.to_op_args()
        return custom_op(buffers, scalars, backend)
    return impls[backend](plan)
