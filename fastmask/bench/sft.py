"""SFT benchmark: the fused head of a decoder LLM on completion-only labels vs torch.

One forward + backward of the LM head and loss, ``hidden [N, H] @ weight.T -> cross-entropy``,
with 30% of the rows labelled (completion tokens after prompt masking; the rest ``-100``), at a
Llama-3-sized head: H = 1024, V = 128256, N = 4096, fp32. Variants (the loss suite's):
naive ``F.linear`` + ``F.cross_entropy`` on all rows; gather the labelled rows, then linear +
cross-entropy; ``F.linear_cross_entropy`` when this torch has it (reference path, and the
chunked path when ``torch.nn.LinearCrossEntropyOptions`` exists);
``fastmask.fused_masked_lm_loss``. Timing (median of the timed rounds after a warm-up, variants
round-robin) and peak extra memory are measured as in :mod:`fastmask.bench.loss`.

Targets of issue 13, reported as measured (pass or not): fused >= 3x faster than
``F.linear_cross_entropy`` and at most 1/4 of its peak extra memory.

``quick``: H = 128, V = 8192, N = 512, 1 round, without the chunked ``F.linear_cross_entropy``
(seconds on a 2-core CPU).

    fastmask bench --suite sft [--quick] [--device cpu|cuda]
    python -m fastmask.bench.sft [--quick] [--device cpu|cuda] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import gc
from typing import Optional

import torch

from . import common
from .loss import (
    HEAD_SUBJECT,
    _excl,
    _head_step,
    _measure,
    head_variants,
    make_head,
    make_labels,
    pin_malloc_mmap_threshold,
)

NAIVE = "naive linear + F.cross_entropy"
LCE_NAMES = ("F.linear_cross_entropy (chunked)", "F.linear_cross_entropy (reference path)")
LABEL_RATE = 0.30


def run(
    *,
    quick: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeat: Optional[int] = None,
    progress=True,
    width: Optional[int] = None,
    vocab: Optional[int] = None,
    n: Optional[int] = None,
    skip: tuple = (),
) -> dict:
    """One case; ``skip``: variant names not to run (the chunked ``F.linear_cross_entropy`` takes
    about 14x the naive head's time on CPU)."""
    if device == "cpu":
        pin_malloc_mmap_threshold()
    repeat = repeat or (1 if quick else 2)
    if quick:  # the chunked F.linear_cross_entropy path alone takes tens of seconds on CPU
        skip = tuple(skip) + LCE_NAMES[:1]
    width = width or (128 if quick else 1024)
    vocab = vocab or (8192 if quick else 128256)
    n = n or (512 if quick else 4096)
    bar = common.Progress(progress, "sft")
    bar.start(1)
    labels = make_labels(n, vocab, LABEL_RATE, device)
    hidden, weight = make_head(n, width, vocab, dtype, device)
    steps = [
        (name, _head_step(fn, hidden, weight, labels, device)) for name, fn in head_variants(device) if name not in skip
    ]
    measured = _measure(steps, repeat, device)
    for m in measured.values():
        m["tokens_per_s"] = n / m["seconds"]
    del hidden, weight, steps
    gc.collect()
    bar.step(
        f"SFT head N={n} H={width} V={vocab}: x{measured[NAIVE]['seconds'] / measured[HEAD_SUBJECT]['seconds']:.1f} naive"
    )
    bar.close()
    return dict(
        skipped=list(skip),
        device=device,
        dtype=str(dtype).replace("torch.", ""),
        repeat=repeat,
        label_rate=LABEL_RATE,
        n=n,
        width=width,
        vocab=vocab,
        labelled=int((labels != -100).sum()),
        **common.machine_fields(device),
        results=measured,
    )


def targets(result: dict) -> list:
    """``(what, value, goal, met)`` for the issue's two targets against each measured
    ``F.linear_cross_entropy`` path."""
    rows = []
    mine = result["results"][HEAD_SUBJECT]
    for name in LCE_NAMES:
        theirs = result["results"].get(name)
        if theirs is None:
            continue
        speed = theirs["seconds"] / mine["seconds"]
        rows.append((f"speed-up over {name}", speed, ">= 3", speed >= 3))
        if mine["peak_extra_bytes"] and theirs["peak_extra_bytes"]:
            ratio = mine["peak_extra_bytes"] / theirs["peak_extra_bytes"]
            rows.append((f"peak extra memory / {name}'s", ratio, "<= 0.25", ratio <= 0.25))
    return rows


def _shape(result: dict) -> str:
    return f"N={result['n']} H={result['width']} V={result['vocab']} ({100 * result['label_rate']:.0f}% labelled)"


def table_rows(result: dict) -> list:
    return common.measured_rows(
        "sft", "LM head", _shape(result), result["results"], baseline=NAIVE, tokens=result["n"], device=result["device"]
    )


def headlines(result: dict) -> list:
    r = result["results"]
    mine = r[HEAD_SUBJECT]
    line = (
        f"SFT head {_shape(result)}: {common.format_speedup(r[NAIVE]['seconds'] / mine['seconds'])} naive "
        f"linear + cross-entropy"
    )
    for what, value, goal, met in targets(result):
        line += f"; {what} {value:.2f} (target {goal}: {'met' if met else 'NOT met'})"
    return [line]


def to_markdown(result: dict) -> str:
    lines = [
        f"# SFT head: {_shape(result)}",
        "",
        f"- device: {result['device']} ({result['device_name']}), dtype {result['dtype']}, torch {result['torch']}, "
        f"{result['threads']} threads, median of {result['repeat']} timed round(s) after a warm-up",
        "- peak extra memory measured as in the loss suite (CPU: rise of peak RSS; CUDA: max_memory_allocated)",
        "",
        "| variant | fwd+bwd (ms) | tokens/s | peak extra (MiB) | excl. grads (MiB) | fastmask speed-up | "
        "fastmask memory ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    mine = result["results"][HEAD_SUBJECT]
    for name, m in result["results"].items():
        lines.append(
            f"| {name} | {1e3 * m['seconds']:.1f} | {m['tokens_per_s']:.0f} | {common.mib(m['peak_extra_bytes'])} | "
            f"{common.mib(_excl(m))} | {m['seconds'] / mine['seconds']:.2f}x | "
            f"{common.format_ratio(mine['peak_extra_bytes'], m['peak_extra_bytes'])} |"
        )
    if result.get("skipped"):
        lines += ["", f"Not run: {', '.join(result['skipped'])}."]
    checks = targets(result)
    if checks:
        lines += ["", "Targets (issue 13):", ""]
        lines += [
            f"- {what}: {value:.2f} (target {goal}): {'met' if met else 'NOT met'}" for what, value, goal, met in checks
        ]
    else:
        lines += ["", "F.linear_cross_entropy is not in this torch: the issue's targets cannot be checked here."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="H=128, V=8192, N=512, 1 round")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 2, quick 1)")
    parser.add_argument("--n", type=int, default=None, help="rows N (default 4096, quick 512)")
    parser.add_argument(
        "--no-chunked", action="store_true", help="skip F.linear_cross_entropy's chunked path (slow on CPU)"
    )
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        device=common.resolve_device(args.device),
        repeat=args.repeat,
        progress=not args.no_progress,
        n=args.n,
        skip=LCE_NAMES[:1] if args.no_chunked else (),
    )
    common.emit(result, to_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
