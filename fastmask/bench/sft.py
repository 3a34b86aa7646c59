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

A second case, :func:`run_step`: one training step (forward + backward) of a small Llama
(2 layers, hidden 256, Llama-3's vocabulary of 128,256, untied head; batch 4 x 256, the last
30% of every row labelled), the stock ``LlamaForCausalLM`` against ``apply_fastmask``, steps
alternating, and the head's share of each step: the same head alone (stock: ``lm_head`` on every
position + cross-entropy on the shifted labels; fastmask: the fused head on the labelled rows),
timed on the step's shapes, over the step's time (as the MLM step benchmark reports the logits
the stock head materialises). ``quick``: hidden 64, V = 8192, batch 2 x 64.

    fastmask bench --suite sft [--quick] [--device cpu|cuda]
    python -m fastmask.bench.sft [--quick] [--device cpu|cuda] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
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


STEP_LLAMA = dict(
    hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
QUICK_LLAMA = dict(STEP_LLAMA, hidden_size=64, intermediate_size=172)


def _completion_batch(batch: int, length: int, vocab: int, device: str, seed: int = 0) -> dict:
    """Random ids; each row's first 70% is the prompt (labels -100), the rest the completion."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    labels = ids.clone()
    labels[:, : int(round(length * (1 - LABEL_RATE)))] = -100
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).items()}


def run_step(
    *,
    quick: bool = False,
    device: str = "cpu",
    batch: Optional[int] = None,
    seq_len: Optional[int] = None,
    vocab: Optional[int] = None,
    steps: Optional[int] = None,
    llama: Optional[dict] = None,
    progress=True,
) -> dict:
    """One fwd + bwd step of a small Llama, stock vs ``apply_fastmask``, and the head's share of it
    (see the module docstring). Returns times (median over ``steps`` after a warm-up), the losses
    of both (equal within fp32 tolerance) and the shares."""
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    import fastmask
    from fastmask.integrations.causal_lm import shifted_targets

    batch = batch or (2 if quick else 4)
    seq_len = seq_len or (64 if quick else 256)
    vocab = vocab or (8192 if quick else 128256)
    steps = steps or (1 if quick else 3)
    shape = dict(QUICK_LLAMA if quick else STEP_LLAMA, **(llama or {}))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, max_position_embeddings=max(512, seq_len), tie_word_embeddings=False, **shape
    )
    stock = LlamaForCausalLM(config).to(device).train()
    models = {"stock": stock, "fastmask": fastmask.apply_fastmask(copy.deepcopy(stock))}
    data = _completion_batch(batch, seq_len, vocab, device)
    sync = common.device_sync(device)

    targets = shifted_targets(data["labels"], None).reshape(-1)
    labelled = (targets != -100).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(batch * seq_len, shape["hidden_size"], generator=g).to(device)
    weight = stock.lm_head.weight.detach()

    def stock_head(h, w):
        return F.cross_entropy(F.linear(h, w).float(), targets, ignore_index=-100)

    def fused_head(h, w):
        return fastmask.fused_masked_lm_loss(h.index_select(0, labelled), w, targets.index_select(0, labelled))

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        return time.perf_counter() - start

    def model_step(name, model):
        model.zero_grad(set_to_none=True)
        loss = model(**data).loss
        loss.backward()
        losses[name].append(loss.item())

    def head_step(fn):
        fn(hidden.detach().requires_grad_(), weight.detach().clone().requires_grad_()).backward()

    heads = {"stock": stock_head, "fastmask": fused_head}
    step_s = {k: [] for k in models}
    head_s = {k: [] for k in models}
    losses = {k: [] for k in models}
    bar = common.Progress(progress, "sft step")
    bar.start((steps + 1) * 2)
    for rep in range(steps + 1):  # the first round is a warm-up
        for name, model in models.items():
            t_step = timed(lambda: model_step(name, model))
            t_head = timed(lambda name=name: head_step(heads[name]))
            if rep:
                step_s[name].append(t_step)
                head_s[name].append(t_head)
            bar.step(f"{name} step {t_step:.2f} s, head {t_head:.2f} s")
    bar.close()
    out = dict(
        batch=batch,
        seq_len=seq_len,
        vocab=vocab,
        llama=shape,
        steps=steps,
        device=device,
        labelled=int(labelled.numel()),
        tokens=batch * seq_len,
        losses=losses,
        losses_equal=all(abs(a - b) <= 1e-4 * abs(a) + 1e-5 for a, b in zip(losses["stock"], losses["fastmask"])),
        machine=common.machine_info(),
    )
    for name in models:
        step, head = statistics.median(step_s[name]), statistics.median(head_s[name])
        out[name] = dict(step_s=step, all_steps_s=step_s[name], head_s=head, head_share=head / step)
    out["speedup"] = out["stock"]["step_s"] / out["fastmask"]["step_s"]
    return out


def step_markdown(result: dict) -> str:
    r = result
    lines = [
        f"## SFT step: LlamaForCausalLM ({r['llama']['num_hidden_layers']} layers, hidden {r['llama']['hidden_size']}, "
        f"V={r['vocab']}), batch {r['batch']} x {r['seq_len']}, {r['labelled']} labelled targets",
        "",
        "| variant | fwd+bwd step (s) | head alone (s) | head's share of the step |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, label in (("stock", "stock LlamaForCausalLM"), ("fastmask", "apply_fastmask")):
        v = r[name]
        lines.append(f"| {label} | {v['step_s']:.3f} | {v['head_s']:.3f} | {100 * v['head_share']:.0f}% |")
    lines += [
        "",
        f"Step speed-up: **{r['speedup']:.2f}x** (median of {r['steps']} step(s) after a warm-up, stock and fastmask "
        f"alternating); losses equal (rel 1e-4): **{'yes' if r['losses_equal'] else 'NO'}**.",
    ]
    return "\n".join(lines) + "\n"


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
    step: bool = True,
    step_options: Optional[dict] = None,
) -> dict:
    """The head case; ``skip``: variant names not to run (the chunked ``F.linear_cross_entropy``
    takes about 14x the naive head's time on CPU). ``step``: also :func:`run_step` (with
    ``step_options``)."""
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
    step_result = run_step(quick=quick, device=device, progress=progress, **(step_options or {})) if step else None
    return dict(
        step=step_result,
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
    return _step_rows(result.get("step")) + common.measured_rows(
        "sft", "LM head", _shape(result), result["results"], baseline=NAIVE, tokens=result["n"], device=result["device"]
    )


def _step_rows(step: Optional[dict]) -> list:
    if not step:
        return []
    shape = f"{step['batch']}x{step['seq_len']} V={step['vocab']}"
    return common.step_rows(
        "sft", "Llama SFT step", shape, step, model="LlamaForCausalLM", tokens=step["tokens"], device=step["device"]
    )


def failures(result: dict) -> list:
    """Correctness problems the run found (the stock and patched Llama's losses differ)."""
    step = result.get("step")
    return ["sft: stock and apply_fastmask Llama losses differ"] if step and not step["losses_equal"] else []


def headlines(result: dict) -> list:
    r = result["results"]
    mine = r[HEAD_SUBJECT]
    line = (
        f"SFT head {_shape(result)}: {common.format_speedup(r[NAIVE]['seconds'] / mine['seconds'])} naive "
        f"linear + cross-entropy"
    )
    for what, value, goal, met in targets(result):
        line += f"; {what} {value:.2f} (target {goal}: {'met' if met else 'NOT met'})"
    step = result.get("step")
    if not step:
        return [line]
    return [
        line,
        f"SFT step (small Llama, V={step['vocab']}): apply_fastmask {common.format_speedup(step['speedup'])} stock; "
        f"head's share {100 * step['stock']['head_share']:.0f}% -> {100 * step['fastmask']['head_share']:.0f}%",
    ]


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
    if result.get("step"):
        lines += ["", step_markdown(result["step"])]
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
    parser.add_argument("--no-step", action="store_true", help="skip the small-Llama SFT step case")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        device=common.resolve_device(args.device),
        repeat=args.repeat,
        progress=not args.no_progress,
        n=args.n,
        skip=LCE_NAMES[:1] if args.no_chunked else (),
        step=not args.no_step,
    )
    common.emit(result, to_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
