"""Loss benchmark: masked-position cross-entropy and the fused sparse MLM head vs torch (and Liger).

Two groups, each forward + backward on the same data in one process, ~15% of rows labelled:

* **cross-entropy on given logits** ``[N, V]``: ``F.cross_entropy(ignore_index=-100)`` on the
  full logits vs ``fastmask.masked_cross_entropy`` (and its ``inplace_backward`` mode); on CUDA
  also Liger-Kernel's ``LigerCrossEntropyLoss`` when importable.
* **MLM head** ``hidden [N, H] @ weight.T -> loss``: naive ``F.linear`` + ``F.cross_entropy``;
  gather the labelled rows first, then linear + cross-entropy; ``F.linear_cross_entropy``
  (torch >= 2.13, reference and chunked paths); ``fastmask.fused_masked_lm_loss``; on CUDA
  Liger's ``LigerFusedLinearCrossEntropyLoss`` when importable.

Timing: every repetition runs all variants in turn (so machine noise hits them alike); the
median over repetitions after one warm-up is reported. Peak extra memory is measured in a
separate run per variant: on CUDA ``torch.cuda.max_memory_allocated`` above the allocation
before the call; on CPU the rise of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) above the resident set before the call, with glibc's mmap threshold
pinned at 64 KiB so freed buffers leave the resident set (every buffer that matters is far
larger). Inputs are prepared before the window; the gradients the call leaves in ``.grad`` are
inside it, so the figure covers the call's intermediates plus its returned gradients.

fastmask's C++ backend keeps its last two freed gradient blocks for reuse (a training loop asks
for the same sizes every step); the timed rounds run with that cache warm, as in training, and
each memory measurement starts with the cache emptied, so fastmask's buffers count in full.

Bandwidth: ``GB/s`` counts the bytes a cross-entropy must move at least: reading the labelled
rows' logits and writing the ``N x V`` gradient; ``device GB/s`` is a large device copy
measured in the same process.

Shapes: V = 30522 and 50265, N = 4096 and 8192 for both groups; ``quick``: V = 30522,
N = 2048 (cross-entropy) and 1024 (head), 2 rounds.

    fastmask bench --suite loss [--quick] [--device cpu|cuda]
    python -m fastmask.bench.loss [--quick] [--device cpu|cuda] [--dtype float32|bfloat16]
                                  [--json PATH] [--markdown PATH]

Importable: ``ce_variants``, ``head_variants``, ``run``, ``targets``, ``to_markdown``,
``table_rows``, ``headlines``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F

import fastmask
from fastmask._constants import IGNORE_INDEX
from fastmask.cross_entropy import release_cached_buffers

from . import common

CE_BASELINE = "torch F.cross_entropy (full logits)"
CE_SUBJECT = "fastmask masked_cross_entropy"
HEAD_BASELINE = "naive linear + F.cross_entropy"
HEAD_SUBJECT = "fastmask fused_masked_lm_loss"


# ----------------------------------------------------------------------------- measurement
def _sync(device: str) -> None:
    sync = common.device_sync(device)
    if sync:
        sync()


def pin_malloc_mmap_threshold() -> bool:
    """glibc: serve every allocation >= 64 KiB by mmap (returned to the OS on free)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 64 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_extra_memory(fn: Callable[[], None], device: str) -> Optional[int]:
    """Bytes the call needs above what is resident before it (None if it cannot be measured)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if not sys.platform.startswith("linux"):
        return None
    before = _rss_bytes()
    if not _reset_peak_rss():
        return None
    fn()
    return max(0, _peak_rss_bytes() - before)


# ----------------------------------------------------------------------------- inputs
def make_labels(n: int, vocab: int, rate: float, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[torch.rand(n, generator=g) >= rate] = IGNORE_INDEX
    return labels.to(device)


def make_logits(n: int, vocab: int, dtype: torch.dtype, device: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(n, vocab, generator=g, device=device) * 2).to(dtype)


def make_head(n: int, width: int, vocab: int, dtype: torch.dtype, device: str, seed: int = 2):
    g = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, width, generator=g, device=device).to(dtype)
    weight = (torch.randn(vocab, width, generator=g, device=device) * width**-0.5).to(dtype)
    return hidden, weight


# ----------------------------------------------------------------------------- variants
# A variant is (name, make_step); make_step(inputs) returns a zero-argument callable running one
# forward + backward on freshly prepared leaves (preparation is not timed).
def _liger(name: str):
    try:
        import liger_kernel.transformers as liger  # noqa: F401
    except Exception:
        return None
    return getattr(liger, name, None)


def ce_variants(device: str) -> list:
    """Cross-entropy on given logits: [(name, fn(logits, labels) -> loss)]."""
    variants = [
        ("torch F.cross_entropy (full logits)", lambda x, y: F.cross_entropy(x, y, ignore_index=IGNORE_INDEX)),
        ("fastmask masked_cross_entropy", lambda x, y: fastmask.masked_cross_entropy(x, y)),
        (
            "fastmask masked_cross_entropy (inplace_backward)",
            lambda x, y: fastmask.masked_cross_entropy(x, y, inplace_backward=True),
        ),
    ]
    liger_ce = _liger("LigerCrossEntropyLoss") if device == "cuda" else None
    if liger_ce is not None:
        loss = liger_ce(ignore_index=IGNORE_INDEX)
        variants.append(("Liger LigerCrossEntropyLoss", lambda x, y: loss(x, y)))
    return variants


def head_variants(device: str) -> list:
    """MLM heads: [(name, fn(hidden, weight, labels) -> loss)]."""

    def naive(h, w, y):
        return F.cross_entropy(F.linear(h, w), y, ignore_index=IGNORE_INDEX)

    def gather(h, w, y):
        rows = (y != IGNORE_INDEX).nonzero().squeeze(1)
        return F.cross_entropy(F.linear(h.index_select(0, rows), w), y.index_select(0, rows))

    variants = [("naive linear + F.cross_entropy", naive), ("gather + linear + F.cross_entropy", gather)]
    if hasattr(F, "linear_cross_entropy"):
        variants.append(
            (
                "F.linear_cross_entropy (reference path)",
                lambda h, w, y: F.linear_cross_entropy(h, w, y, ignore_index=IGNORE_INDEX),
            )
        )
        if hasattr(torch.nn, "LinearCrossEntropyOptions"):
            options = torch.nn.LinearCrossEntropyOptions()
            variants.append(
                (
                    "F.linear_cross_entropy (chunked)",
                    lambda h, w, y: F.linear_cross_entropy(h, w, y, ignore_index=IGNORE_INDEX, options=options),
                )
            )
    variants.append(("fastmask fused_masked_lm_loss", lambda h, w, y: fastmask.fused_masked_lm_loss(h, w, y)))
    liger_flce = _liger("LigerFusedLinearCrossEntropyLoss") if device == "cuda" else None
    if liger_flce is not None:
        loss = liger_flce(ignore_index=IGNORE_INDEX)
        variants.append(("Liger LigerFusedLinearCrossEntropyLoss", lambda h, w, y: loss(w, h, y)))
    return variants


class _ModelOutput(torch.autograd.Function):
    """Stands for a model's logits: a non-leaf with its own storage (a leaf, or a view of one,
    may not be overwritten by ``inplace_backward``); backward hands the gradient through."""

    @staticmethod
    def forward(ctx, base):
        return base.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


def _ce_step(fn, logits, labels, device):
    def prepare():
        base = logits.detach().clone().requires_grad_()
        return base, _ModelOutput.apply(base)  # the copy is made here, outside the measured window

    def run(leaves):
        fn(leaves[1], labels).backward()
        _sync(device)

    return prepare, run


def _head_step(fn, hidden, weight, labels, device):
    def prepare():
        return hidden.detach().requires_grad_(), weight.detach().requires_grad_()

    def run(leaves):
        h, w = leaves
        fn(h, w, labels).backward()
        _sync(device)

    return prepare, run


def _measure(named_steps: list, repeat: int, device: str) -> dict:
    """Median fwd+bwd time per variant (round-robin over repetitions) and peak extra memory."""
    times = {name: [] for name, _ in named_steps}
    for rep in range(repeat + 1):  # the first round is a warm-up
        for name, (prepare, run) in named_steps:
            leaves = prepare()
            _sync(device)
            start = time.perf_counter()
            run(leaves)
            elapsed = time.perf_counter() - start
            del leaves
            if rep:
                times[name].append(elapsed)
    out = {}
    for name, (prepare, run) in named_steps:
        leaves = prepare()  # outside the measured window; their gradients are inside it
        release_cached_buffers()  # fastmask's recycled gradient blocks count as new allocations
        peak = peak_extra_memory(lambda leaves=leaves: run(leaves), device)
        tensors = leaves if isinstance(leaves, tuple) else (leaves,)
        inputs = {t.untyped_storage().data_ptr() for t in tensors}
        grads = sum(_own_grad_bytes(t, inputs) for t in tensors if t.is_leaf)
        del leaves, tensors
        out[name] = dict(
            seconds=statistics.median(times[name]), all_seconds=times[name], peak_extra_bytes=peak, grad_bytes=grads
        )
    return out


def _own_grad_bytes(leaf: torch.Tensor, input_storages: set) -> int:
    """Bytes of ``leaf.grad`` unless it lives in an input's storage (in-place backward)."""
    grad = leaf.grad
    if grad is None or grad.untyped_storage().data_ptr() in input_storages:
        return 0
    return grad.untyped_storage().nbytes()


def run(
    *,
    quick: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeat: Optional[int] = None,
    width: int = 384,
    label_rate: float = 0.15,
    progress=True,
) -> dict:
    """Runs both groups; returns a JSON-able dict (see ``to_markdown``). ``progress``: see
    :class:`common.Progress`."""
    if device == "cpu":
        pin_malloc_mmap_threshold()
    repeat = repeat or (2 if quick else 5)
    ce_ns = (2048,) if quick else (4096, 8192)
    head_ns = (1024,) if quick else (4096, 8192)
    vocabs = (30522,) if quick else (30522, 50265)
    element = torch.empty((), dtype=dtype).element_size()
    result = dict(
        device=device,
        dtype=str(dtype).replace("torch.", ""),
        repeat=repeat,
        label_rate=label_rate,
        width=width,
        **common.machine_fields(device),
        device_gbps=common.copy_bandwidth(device),
        ce=[],
        head=[],
        liger="importable" if _liger("LigerCrossEntropyLoss") is not None else "not importable",
    )
    bar = common.Progress(progress, "loss")
    bar.start(len(vocabs) * (len(ce_ns) + len(head_ns)))
    for vocab in vocabs:
        for n in sorted(set(ce_ns) | set(head_ns)):
            labels = make_labels(n, vocab, label_rate, device)
            labelled = int((labels != IGNORE_INDEX).sum())
            if n in ce_ns:
                logits = make_logits(n, vocab, dtype, device)
                steps = [(name, _ce_step(fn, logits, labels, device)) for name, fn in ce_variants(device)]
                measured = _measure(steps, repeat, device)
                min_bytes = (labelled * vocab + n * vocab) * element
                for m in measured.values():
                    m["gbps"] = min_bytes / m["seconds"] / 1e9
                    m["tokens_per_s"] = n / m["seconds"]
                result["ce"].append(dict(n=n, vocab=vocab, labelled=labelled, results=measured))
                del logits, steps
                speed = measured[CE_BASELINE]["seconds"] / measured[CE_SUBJECT]["seconds"]
                bar.step(f"cross-entropy N={n} V={vocab}: x{speed:.1f} F.cross_entropy")
            if n in head_ns:
                hidden, weight = make_head(n, width, vocab, dtype, device)
                steps = [(name, _head_step(fn, hidden, weight, labels, device)) for name, fn in head_variants(device)]
                measured = _measure(steps, repeat, device)
                for m in measured.values():
                    m["tokens_per_s"] = n / m["seconds"]
                result["head"].append(dict(n=n, vocab=vocab, width=width, labelled=labelled, results=measured))
                del hidden, weight, steps
                speed = measured[HEAD_BASELINE]["seconds"] / measured[HEAD_SUBJECT]["seconds"]
                bar.step(f"MLM head N={n} V={vocab}: x{speed:.1f} naive")
            gc.collect()
    bar.close()
    return result


# ----------------------------------------------------------------------------- report
def _excl(m: dict) -> Optional[int]:
    return None if m["peak_extra_bytes"] is None else max(0, m["peak_extra_bytes"] - m["grad_bytes"])


def _ratio_rows(results: dict, subject: str) -> list:
    mine = results[subject]
    rows = []
    for name, m in results.items():
        speed = m["seconds"] / mine["seconds"]
        rows.append(
            (
                name,
                m,
                speed,
                common.format_ratio(mine["peak_extra_bytes"], m["peak_extra_bytes"]),
                common.format_ratio(_excl(mine), _excl(m)),
            )
        )
    return rows


def targets(result: dict) -> list:
    """The brief's targets against this run: ``[(what, case, measured, target, met)]``."""
    rows = []
    for case in result["ce"]:
        r = case["results"]
        speed = r[CE_BASELINE]["seconds"] / r[CE_SUBJECT]["seconds"]
        rows.append(("masked CE speed-up vs full F.cross_entropy", case, speed, ">= 5x", speed >= 5))
    for case in result["head"]:
        r = case["results"]
        mine = r[HEAD_SUBJECT]
        for name, goal in (
            (HEAD_BASELINE, 8),
            ("F.linear_cross_entropy (reference path)", 5),
            ("F.linear_cross_entropy (chunked)", 5),
            ("gather + linear + F.cross_entropy", 1),
        ):
            if name in r:
                speed = r[name]["seconds"] / mine["seconds"]
                rows.append((f"fused head speed-up vs {name}", case, speed, f">= {goal}x", speed >= goal))
        gather = r["gather + linear + F.cross_entropy"]
        if mine["peak_extra_bytes"] and gather["peak_extra_bytes"]:
            ratio = mine["peak_extra_bytes"] / gather["peak_extra_bytes"]
            rows.append(("fused head peak memory / gather's", case, ratio, "<= 0.25", ratio <= 0.25))
            ratio = _excl(mine) / max(1, _excl(gather))
            rows.append(("same, excluding the returned gradients", case, ratio, "<= 0.25", ratio <= 0.25))
    return rows


def _variant_table(case: dict, shape: str, subject: str, *, gbps: bool) -> list:
    """Markdown lines: one case's variants with time, rate, memory and ratios to ``subject``."""
    lines = [
        "",
        f"{shape}, {case['labelled']} labelled",
        "",
        "| variant | fwd+bwd (ms) | tokens/s |" + (" GB/s |" if gbps else "") + " peak extra (MiB) | excl. grads "
        "(MiB) | fastmask speed-up | fastmask memory ratio | ratio excl. grads |",
        "| --- |" + " ---: |" * (8 if gbps else 7),
    ]
    for name, m, speed, mem, mem_excl in _ratio_rows(case["results"], subject):
        lines.append(
            f"| {name} | {m['seconds'] * 1e3:.1f} | {m['tokens_per_s']:,.0f} |"
            + (f" {m['gbps']:.1f} |" if gbps else "")
            + f" {common.mib(m['peak_extra_bytes'])} | {common.mib(_excl(m))} | {speed:.2f}x | {mem} | "
            f"{mem_excl} |"
        )
    return lines


def to_markdown(result: dict) -> str:
    lines = [
        "# Loss benchmark: masked cross-entropy and fused MLM head",
        "",
        f"- device: {result['device']} ({result['device_name']}), {result['threads']} threads, torch {result['torch']}, "
        f"dtype {result['dtype']}; large-copy bandwidth {result['device_gbps']:.1f} GB/s"
        + (f"; Liger-Kernel {result['liger']}" if result["device"] == "cuda" else ""),
        f"- machine: {common.machine_line(result['machine'])}",
        f"- {result['label_rate']:.0%} of rows labelled (the rest -100); forward + backward; median of "
        f"{result['repeat']} rounds after a warm-up, variants in turn each round, one process, same data",
        "- peak extra memory: "
        + (
            "CUDA max_memory_allocated above the allocation before the call"
            if result["device"] == "cuda"
            else "rise of peak RSS (VmHWM, reset via /proc/self/clear_refs) above RSS before the "
            "call, glibc mmap threshold pinned at 64 KiB; includes the returned gradients"
        ),
        "- fastmask recycles its last two freed CPU gradient blocks: timings are with that cache warm (as in a "
        "training loop); memory is measured from an empty cache",
        "- GB/s: the least traffic of a cross-entropy (read the labelled rows' logits, write the N x V gradient) / time",
        "",
        "## Targets (ratios from this run)",
        "",
        "| what | shape | measured | target | met |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for what, case, value, goal, met in targets(result):
        shape = f"N={case['n']}, V={case['vocab']}"
        unit = "" if "memory" in what or "excluding" in what else "x"
        lines.append(f"| {what} | {shape} | {value:.2f}{unit} | {goal} | {'yes' if met else '**no**'} |")
    lines += ["", "## Cross-entropy on given logits"]
    for case in result["ce"]:
        lines += _variant_table(case, f"N = {case['n']}, V = {case['vocab']}", CE_SUBJECT, gbps=True)
    lines += ["", f"## MLM head (H = {result['width']})"]
    for case in result["head"]:
        lines += _variant_table(
            case, f"N = {case['n']}, H = {case['width']}, V = {case['vocab']}", HEAD_SUBJECT, gbps=False
        )
    lines += [
        "",
        "speed-up = variant time / fastmask time; memory ratio = fastmask peak / variant peak; "
        "excl. grads = peak minus the gradients the call leaves in .grad (the same for every variant, "
        "except in-place backward, whose gradient reuses the logits).",
        "",
    ]
    return "\n".join(lines)


def table_rows(result: dict) -> list:
    """The flat rows of :func:`common.table_row`: every variant of every case, speed-up against
    full-logits ``F.cross_entropy`` (cross-entropy) or the naive head."""
    out = []
    for group, label, baseline in (("ce", "cross-entropy", CE_BASELINE), ("head", "MLM head", HEAD_BASELINE)):
        for case in result[group]:
            shape = f"N={case['n']} V={case['vocab']}" + (f" H={case['width']}" if group == "head" else "")
            out += common.measured_rows(
                "loss", label, shape, case["results"], baseline=baseline, tokens=case["n"], device=result["device"]
            )
    return out


def headlines(result: dict) -> list:
    """Masked CE vs F.cross_entropy (and its share of the copy bandwidth); fused head vs naive and
    gather, with the peak-memory ratio to gather's."""
    lines = []
    if result["ce"]:
        case = result["ce"][0]
        r = case["results"]
        mine = r[CE_SUBJECT]
        line = (
            f"masked cross-entropy N={case['n']} V={case['vocab']}: "
            f"{common.format_speedup(r[CE_BASELINE]['seconds'] / mine['seconds'])} F.cross_entropy, "
            f"{mine['gbps']:.0f} GB/s ({100 * mine['gbps'] / result['device_gbps']:.0f}% of a device copy)"
        )
        if "Liger LigerCrossEntropyLoss" in r:
            line += f", {common.format_speedup(r['Liger LigerCrossEntropyLoss']['seconds'] / mine['seconds'])} Liger"
        lines.append(line)
    if result["head"]:
        case = result["head"][-1]
        r = case["results"]
        mine = r[HEAD_SUBJECT]
        gather = r["gather + linear + F.cross_entropy"]
        line = (
            f"fused MLM head N={case['n']} V={case['vocab']}: "
            f"{common.format_speedup(r[HEAD_BASELINE]['seconds'] / mine['seconds'])} naive linear + cross-entropy, "
            f"{common.format_speedup(gather['seconds'] / mine['seconds'])} gather"
        )
        if "Liger LigerFusedLinearCrossEntropyLoss" in r:
            liger = r["Liger LigerFusedLinearCrossEntropyLoss"]
            line += f", {common.format_speedup(liger['seconds'] / mine['seconds'])} Liger"
        if mine["peak_extra_bytes"] and gather["peak_extra_bytes"]:
            line += f"; peak memory {mine['peak_extra_bytes'] / gather['peak_extra_bytes']:.2f}x gather's"
        lines.append(line)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="V = 30522 only, N = 2048 (cross-entropy) and 1024 (head), 2 rounds"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 5, quick 2)")
    parser.add_argument("--width", type=int, default=384, help="hidden size H of the head (default 384, MiniLM)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        device=common.resolve_device(args.device),
        dtype=getattr(torch, args.dtype),
        repeat=args.repeat,
        width=args.width,
        progress=not args.no_progress,
    )
    common.emit(result, to_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
