"""Triton kernel resources: registers, spills and shared memory of every compiled variant.

Not a timing: each Triton kernel variant the launchers use (masking: strategies x budgets x
argument sets; cross-entropy: fp32 / fp16 / bf16 x constexpr branches; at the launchers' own
``BLOCK`` and ``num_warps``) is compiled through :mod:`fastmask.kernels.offline`, and the
assembler's registers per thread, spills and the shared memory are reported. With
``device="cuda"`` the variants are compiled for that GPU's compute capability and also
loaded, so the driver's register and spill counts sit next to the assembler's; on the CPU they
are compiled offline for sm_80 and sm_90 (no GPU needed; Triton with its NVIDIA backend is).
A variant that spills or does not compile is a failure of the suite, except the known spills of
the masking kernel at BLOCK_L 8192 / 16384 (:data:`fastmask.kernels.offline.KNOWN_SPILLS`),
which are reported.

    fastmask bench --suite kernels [--quick] [--device cpu|cuda]
    python -m fastmask.bench.kernels [--quick] [--device ...] [--kernel K ...] [--blocks B ...] [--limit N]
                                     [--json PATH] [--markdown PATH]

Without ``--quick``: the blocks of :data:`fastmask.kernels.offline.REPORT_BLOCKS` (the tests'
blocks and one known-spill block); ``--quick`` compiles every variant at the default block size
only (the largest, for a real vocabulary, for the cross-entropy; a 512-token row for masking).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Optional

from . import common


def _kernel_names() -> tuple:
    from ..kernels.offline import KERNELS  # imports no Triton

    return KERNELS


def _capabilities(device: str) -> tuple:
    if device == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability(0)
        return (major * 10 + minor,)
    from ..kernels.offline import TARGETS

    return TARGETS


def run(
    *,
    quick: bool = False,
    device: str = "cpu",
    progress=False,
    jobs: Optional[int] = None,
    kernels: Optional[Sequence[str]] = None,
    blocks: Optional[Sequence[int]] = None,
    limit: Optional[int] = None,
) -> dict:
    """Compile the variants; ``{"device", "targets", "quick", "rows", "unavailable",
    "known_spills", "seconds"}`` (``unavailable``: why nothing could be compiled here, else
    None). ``kernels``, ``blocks`` and ``limit`` (variants per block) narrow the selection
    (default: :data:`~fastmask.kernels.offline.REPORT_BLOCKS`)."""
    from ..kernels import offline

    targets = _capabilities(device)
    chosen = []
    for kernel in kernels or offline.KERNELS:
        found = offline.variants(kernel, blocks or offline.REPORT_BLOCKS[kernel], extra_limit=0 if quick else None)
        if limit is not None:
            found = [
                v
                for block in dict.fromkeys(v.block for v in found)
                for v in [v for v in found if v.block == block][:limit]
            ]
        chosen += found
    jobs = jobs or max(1, min(8, os.cpu_count() or 1))
    if progress:
        print(
            f"kernels: compiling {len(chosen)} variants for {', '.join(f'sm_{c}' for c in targets)} ({jobs} processes)",
            flush=True,
        )
    start = time.perf_counter()
    try:
        rows = offline.compile_report(chosen, targets, jobs=jobs, load=device == "cuda")
        unavailable = None
    except offline.OfflineCompileUnavailable as exc:
        rows, unavailable = [], str(exc)
    return dict(
        device=device,
        targets=[f"sm_{c}" for c in targets],
        quick=quick,
        rows=rows,
        unavailable=unavailable,
        known_spills={k: list(v) for k, v in offline.KNOWN_SPILLS.items()},
        seconds=round(time.perf_counter() - start, 1),
    )


def failures(result: dict) -> list:
    """Variants that spill (other than :data:`~fastmask.kernels.offline.KNOWN_SPILLS`) or do not
    compile; on CUDA also a compiler that cannot run."""
    from ..kernels.offline import spilled

    out = [
        f"triton {r['kernel']} [{r['block']}/{r['num_warps']}w] {r['variant']} {r['target']}: "
        + (
            f"does not compile: {r['error'].splitlines()[0][:300]}"
            if r.get("error")
            else f"spills ({r['n_spills']} spills, {r['spill_stores']}/{r['spill_loads']} bytes stored/loaded)"
        )
        for r in spilled(result["rows"], known=False)
    ]
    if result["unavailable"] and result["device"] == "cuda":
        out.append(f"triton kernels: cannot compile for this GPU: {result['unavailable']}")
    return out


def headlines(result: dict) -> list:
    from ..kernels.offline import summary_lines

    if result["unavailable"]:
        return [f"triton kernels: not compiled ({result['unavailable']})"]
    return summary_lines(result["rows"])


def table_rows(result: dict) -> list:
    """No timing rows: the suite's table is its markdown (:func:`to_markdown`)."""
    return []


def to_markdown(result: dict) -> str:
    from ..kernels.offline import markdown_table

    lines = ["# Triton kernels: registers, spills, shared memory", ""]
    where = "compiled and loaded on this GPU" if result["device"] == "cuda" else "compiled offline (no GPU used)"
    lines.append(
        f"- targets: {', '.join(result['targets'])}, {where}; {len(result['rows'])} compilations in "
        f"{result['seconds']:.0f} s" + ("; quick: the default block sizes only" if result["quick"] else "")
    )
    lines.append(
        "- registers: per thread; spills: as Triton counts them on a device (local memory bytes / 4); "
        "spill st/ld: bytes of spill stores / loads (ptxas); shared: `metadata.shared` bytes"
    )
    lines += [f"- {line}" for line in headlines(result)]
    lines += [f"- FAILED: {line}" for line in failures(result)]
    if result["rows"]:
        lines += ["", markdown_table(result["rows"])]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the default block sizes only")
    parser.add_argument("--device", default="auto", help="cuda (this GPU's capability), cpu (sm_80 and sm_90) or auto")
    parser.add_argument("--jobs", type=int, help="compiler processes (default: the cores, at most 8)")
    parser.add_argument("--kernel", nargs="+", choices=_kernel_names(), help="only these kernels")
    parser.add_argument("--blocks", nargs="+", type=int, help="block sizes (default: the tests' block sizes)")
    parser.add_argument("--limit", type=int, help="at most this many variants per block size")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        device=common.resolve_device(args.device),
        progress=not args.no_progress,
        jobs=args.jobs,
        kernels=args.kernel,
        blocks=args.blocks,
        limit=args.limit,
    )
    common.emit(result, to_markdown(result), args)
    return 1 if failures(result) else 0


if __name__ == "__main__":
    raise SystemExit(main())
