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
from collections.abc import Callable, Mapping
from typing import Optional

import torch

BACKENDS = ("reference", "cpp", "triton")
BACKEND_CHOICES = ("auto",) + BACKENDS


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call."""


@functools.cache
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


# ----------------------------------------------------------------------------- C++ threads
# The C++ core does not link libtorch, so this layer decides its thread count:
# FASTMASK_NUM_THREADS (a positive integer) if set, else torch.get_num_threads() at call time
# (1 in DataLoader workers; OMP_NUM_THREADS, torch.set_num_threads), bounded by the CPUs in the
# process's affinity mask (taskset, cpusets). The environment and the affinity are read once
# per process (again in a forked child, so a worker_init_fn that pins a worker counts).
_threads_env: Optional[int] = None  # None: not read yet; 0: no override
_threads_env_note = ""
_threads_cpus = 1
_threads_set = 0  # the count last given to the module's set_num_threads
_torch_num_threads = torch.get_num_threads  # bound once: cpp_kernels runs on every call


def _read_thread_limits() -> None:
    global _threads_env, _threads_env_note, _threads_cpus
    raw = os.environ.get("FASTMASK_NUM_THREADS", "").strip()
    env, note = 0, ""
    if raw:
        try:
            env = int(raw)
        except ValueError:
            env = 0
        if not 0 < env <= 1_000_000:
            env, note = 0, f"FASTMASK_NUM_THREADS={raw!r} ignored (not a positive integer); "
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        cpus = os.cpu_count() or 1
    _threads_env, _threads_env_note, _threads_cpus = env, note, max(cpus, 1)


def _forget_thread_limits() -> None:
    global _threads_env
    _threads_env = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_thread_limits)


def cpp_thread_count() -> tuple[int, str]:
    """The C++ kernels' thread count for this call and the rule that gave it."""
    if _threads_env is None:
        _read_thread_limits()
    if _threads_env:
        return _threads_env, f"FASTMASK_NUM_THREADS={_threads_env}"
    requested = torch.get_num_threads()
    cpus = f"{_threads_cpus} CPU{'' if _threads_cpus == 1 else 's'}"
    if requested > _threads_cpus:
        rule = f"torch.get_num_threads() = {requested}, bounded by CPU affinity ({cpus})"
        return _threads_cpus, _threads_env_note + rule
    return requested, _threads_env_note + f"torch.get_num_threads(), within CPU affinity ({cpus})"


def cpp_kernels():
    """The compiled extension (None if not built), its thread count synced to
    :func:`cpp_thread_count`: use it, not :func:`cpp_module`, to call a C++ kernel.

    The module's ``set_num_threads`` restarts its pool, so it is called only when the count
    changed since the last call. This runs before every kernel call: one cached lookup, one
    ``torch.get_num_threads()`` and two comparisons.
    """
    global _threads_set
    module = _cpp_module_reason()[0]
    n = _threads_env
    if not n:
        if n is None:
            _read_thread_limits()
            n = _threads_env
        if not n:
            n = _torch_num_threads()
            if n > _threads_cpus:
                n = _threads_cpus
    if n != _threads_set and module is not None:
        module.set_num_threads(n)
        _threads_set = n
    return module


def cpp_symbol_reason(symbol: str) -> Optional[str]:
    """Why the C++ extension cannot serve ``symbol`` (a stale build), or None."""
    module = cpp_module()
    if module is not None and not hasattr(module, symbol):
        return f"fastmask._C has no {symbol} (a stale build?); rebuild with `pip install -e .`"
    return None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
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


def triton_limits(kernels_module: str, device_type: str, length: int) -> tuple:
    """``(("triton", reason),)`` when ``fastmask.kernels.<kernels_module>``'s kernel cannot take
    rows of ``length`` (its ``triton_call_reason``), else ``()``; Triton is imported only where
    it could run (CUDA tensors, or the interpreter)."""
    if device_type == "cpu" and not triton_interpreting():
        return ()
    try:
        module = importlib.import_module(f"fastmask.kernels.{kernels_module}")
    except ImportError:
        return ()
    reason = module.triton_call_reason(length)
    return (("triton", reason),) if reason else ()


@torch.compiler.assume_constant_result
def choose_backend(
    op: str,
    backend: str,
    device_type: str,
    cpp_symbol: str,
    limits: tuple = (),
    triton_kernels: str = "",
    length: int = 0,
) -> str:
    """The concrete backend for one call of ``op`` (a constant under ``torch.compile``).

    ``cpp_symbol``: the extension function the op calls (a stale build may lack it);
    ``limits``: ``((backend, reason), ...)`` for backends that cannot take this call's shape
    or dtype; ``triton_kernels``, ``length``: the op's Triton kernel module and row length, for
    its :func:`triton_limits`. Every op dispatches through here.
    """
    environment = (os.environ.get("FASTMASK_BACKEND", ""), triton_interpreting())
    if device_type == "cpu" and not environment[1]:
        length = 0  # Triton cannot run here, so its length limits do not matter
    return _choose_backend_cached(
        op, backend, device_type, cpp_symbol, tuple(limits), triton_kernels, length, environment
    )


@functools.lru_cache(maxsize=4096)
def _choose_backend_cached(op, backend, device_type, cpp_symbol, limits, triton_kernels, length, environment) -> str:
    # one decision per distinct call signature and environment: every argument above is in the
    # key (errors are raised, never cached), so eager calls skip the environment and import checks
    call_reasons = {"cpp": cpp_symbol_reason(cpp_symbol)}
    if triton_kernels:
        limits = limits + triton_limits(triton_kernels, device_type, length)
    for name, reason in limits:
        call_reasons[name] = call_reasons.get(name) or reason
    return resolve_backend(backend, torch.device(device_type), op=op, call_reasons=call_reasons)


def call_op(custom_op, impls: Mapping, backend: str, plan):
    """Runs ``plan`` on ``backend``: through the registered ``torch.library`` custom op while
    ``torch.compile`` traces (an opaque op with a fake impl), directly in eager mode (the same
    implementation without the dispatcher's overhead).

    The policy for every op: an op is a custom op with a fake impl; eager calls skip the
    dispatcher unless the op needs it — the loss ops register their autograd on the custom op,
    so they always call it (:mod:`fastmask.cross_entropy`)."""
    if torch.compiler.is_compiling():
        buffers, scalars = plan.to_op_args()
        return custom_op(buffers, scalars, backend)
    return impls[backend](plan)


class PlanOp:
    """One plan-based op (a plan from :mod:`fastmask._plan`): its implementation per backend, its
    ``torch.library`` custom op ``fastmask::<name>`` and the one dispatch. Calling it runs a plan
    on a backend (``"auto"`` or a name).

    ``reference``, ``cpp``: ``fn(plan) -> outputs`` (``returns``: their type, a tensor or a
    tuple of tensors); ``triton``: ``(module in fastmask.kernels, launcher name)``, imported at
    the first Triton call; ``fake(plan)``: the outputs' fake (shape-only) values under
    ``torch.compile``; ``cpp_symbol``: the extension function the C++ implementation calls
    (default: ``name``); ``on``: the plan's tensor field whose device picks the backend (default
    ``input_ids``, ``[B, L]``); ``row_length(plan)``: the length the Triton kernel's one-block
    limit is checked against (default: ``input_ids``' rows).
    """

    def __init__(
        self,
        name: str,
        plan_type: type,
        fake: Callable,
        *,
        reference: Callable,
        cpp: Callable,
        triton: tuple[str, str],
        cpp_symbol: Optional[str] = None,
        on: str = "input_ids",
        row_length: Optional[Callable] = None,
        returns=tuple[torch.Tensor, torch.Tensor],
    ):
        self.name, self.cpp_symbol, self.triton_kernels = name, cpp_symbol or name, triton[0]
        self.on = on
        self.row_length = row_length or (lambda plan: plan.input_ids.shape[1])
        self.impls = impls = {
            "reference": reference,
            "cpp": cpp,
            "triton": deferred(f"fastmask.kernels.{triton[0]}", triton[1]),
        }

        def run(buffers: list[Optional[torch.Tensor]], scalars: list[int], backend: str):
            return impls[backend](plan_type.from_op_args(buffers, scalars))

        run.__annotations__["return"] = returns  # torch.library reads the schema from annotations

        def run_fake(buffers, scalars, backend):
            return fake(plan_type.from_op_args(buffers, scalars))

        self.custom_op = torch.library.custom_op(f"fastmask::{name}", mutates_args=())(run)
        self.custom_op.register_fake(run_fake)

    def backend_for(self, plan, backend: str = "auto") -> str:
        """The concrete backend a call of ``plan`` on ``backend`` runs on (:func:`choose_backend`)."""
        check_backend_name(backend)
        device_type, length = getattr(plan, self.on).device.type, self.row_length(plan)
        return choose_backend(self.name, backend, device_type, self.cpp_symbol, (), self.triton_kernels, length)

    def __call__(self, plan, backend: str = "auto"):
        return call_op(self.custom_op, self.impls, self.backend_for(plan, backend), plan)


def deferred(module: str, name: str) -> Callable:
    """``module.name`` as a function that imports ``module`` at its first call (the Triton
    launchers: importing triton is slow, and only a Triton call needs it)."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call
