"""PMI n-gram benchmark: vocabulary counting speed and the cost of PMI masking.

* counting: the C++ ``NgramCounter`` over the embedded corpus (tokenized once, not timed),
  n-grams of 1..5 words; words per second of wall time and of the calling thread's CPU time
  (the second is what the counter costs on a machine shared with other work), then the
  scoring and ranking (:func:`fastmask.ngrams.build_ngram_vocabulary`'s last step);
* masking: ``mask_tokens`` on a 64 x 512 batch of packed real text with the word-start table,
  ``strategy="pmi"`` (the unit op, then whole-word masking) against ``strategy="whole_word"``
  on the same batch and backend, and the unit op alone. The vocabulary is the corpus'
  (``min_count=5``, 20000 n-grams of 2..5 words).

    fastmask bench --suite ngrams [--quick]
    python -m fastmask.bench.ngrams [--quick] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import numpy as np

from . import common

MAX_N = 5
BATCH, LENGTH = 64, 512


def _times_ms(fn, min_time, min_reps) -> tuple[float, float]:
    """(median, fastest) ms per call: the fastest is less sensitive to other load on the machine."""
    calls = common.time_calls(fn, min_time=min_time, min_reps=min_reps)
    return 1e3 * statistics.median(calls), 1e3 * min(calls)


def run(
    *, quick: bool = False, device: str = "cpu", tokenizer: Optional[str] = None, progress=True, lengths=None
) -> dict:
    """Time counting and PMI masking on the embedded corpus (CPU)."""
    import torch

    import fastmask
    from fastmask import _backend, data
    from fastmask.masking import plan_masking
    from fastmask.ngrams import _rank, build_ngram_vocabulary, ngram_unit_starts, vocab_flags

    min_time, min_reps = (0.3, 3) if quick else (2.0, 5)
    tok, source = common.load_tokenizer(tokenizer)
    bar = common.Progress(progress, "ngrams")
    bar.start(4)
    texts = data.corpus_texts()
    rows = tok(texts, add_special_tokens=False)["input_ids"]
    ids = np.fromiter((t for r in rows for t in r), dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    flags = vocab_flags(tok)
    counter_class = _backend.cpp_module().NgramCounter

    walls, cpus, counter = [], [], None
    for _ in range(2 if quick else 5):
        counter = counter_class(MAX_N)
        wall, cpu = time.perf_counter(), time.thread_time()
        counter.add_rows(ids, offsets, flags)
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    words = int(counter.positions()[0])
    bar.step(f"counting {words / statistics.median(walls) / 1e6:.2f}M words/s")
    start = time.perf_counter()
    _rank(counter, counter.positions(), tok, max_n=MAX_N, min_count=5, size=20_000, measure="pmi")
    rank_s = time.perf_counter() - start
    bar.step(f"ranking {rank_s:.2f} s")

    vocabulary = build_ngram_vocabulary(rows, tok, max_n=MAX_N, min_count=5, size=20_000)
    batch = torch.tensor(data.tokenized_rows(tok, texts, LENGTH, rows=BATCH))
    table = fastmask.word_start_table(tok)
    common_kwargs = dict(
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        word_start_table=table,
        special_token_ids=tok.all_special_ids,
        pad_token_id=tok.pad_token_id,
        seed=0,
    )
    backend = _backend.resolve_backend("auto", torch.device("cpu"), op="mask_tokens")
    plan = plan_masking(batch, strategy="whole_word", **common_kwargs)
    units = ngram_unit_starts(plan, vocabulary, backend)
    cases = {
        "whole_word": lambda: fastmask.mask_tokens(batch, strategy="whole_word", backend=backend, **common_kwargs),
        "pmi": lambda: fastmask.mask_tokens(
            batch, strategy="pmi", ngram_vocabulary=vocabulary, backend=backend, **common_kwargs
        ),
        "units only": lambda: ngram_unit_starts(plan, vocabulary, backend),
    }
    masking_ms, best_ms = {}, {}
    for name, fn in cases.items():
        masking_ms[name], best_ms[name] = _times_ms(fn, min_time, min_reps)
    bar.step(f"pmi {masking_ms['pmi']:.3f} ms vs whole_word {masking_ms['whole_word']:.3f} ms")
    word_count = int(plan_words(plan))
    bar.close()
    return dict(
        tokenizer=source,
        quick=quick,
        machine=common.machine_info(),
        backend=backend,
        counting=dict(
            words=words,
            tokens=int(ids.size),
            max_n=MAX_N,
            wall_s=statistics.median(walls),
            cpu_s=statistics.median(cpus),
            words_per_s=words / statistics.median(walls),
            words_per_cpu_s=words / statistics.median(cpus),
            distinct=[int(counter.distinct(n)) for n in range(1, MAX_N + 1)],
            rank_s=rank_s,
        ),
        masking=dict(
            batch=BATCH,
            length=LENGTH,
            vocabulary=len(vocabulary),
            words=word_count,
            units=int(units.sum()),
            ms=masking_ms,
            best_ms=best_ms,
            ratio=masking_ms["pmi"] / masking_ms["whole_word"],
            ratio_best=best_ms["pmi"] / best_ms["whole_word"],
        ),
    )


def plan_words(plan) -> int:
    from fastmask.reference.masking import eligibility_and_units

    _, starts = eligibility_and_units(
        plan.input_ids,
        special_mask=plan.special_mask,
        attention_mask=plan.attention_mask,
        word_starts=plan.word_starts,
        vocab_flags=plan.vocab_flags,
        pad_token_id=plan.pad_token_id,
        strategy="whole_word",
    )
    return int(starts.sum())


def headlines(result: dict) -> list:
    c, m = result["counting"], result["masking"]
    return [
        f"ngrams: counting {c['words_per_s'] / 1e6:.2f}M words/s wall ({c['words_per_cpu_s'] / 1e6:.2f}M per CPU "
        f"second), n <= {c['max_n']}",
        f"ngrams: PMI masking {m['batch']}x{m['length']} {m['ms']['pmi']:.3f} ms = {m['ratio']:.2f}x whole-word "
        f"({m['ms']['whole_word']:.3f} ms; units {m['ms']['units only']:.3f} ms); fastest calls {m['ratio_best']:.2f}x",
    ]


def table_rows(result: dict) -> list:
    m = result["masking"]
    tokens = m["batch"] * m["length"]
    base = m["ms"]["whole_word"]
    return [
        common.table_row(
            "ngrams",
            f"masking {name}",
            f"{m['batch']}x{m['length']}",
            f"fastmask {result['backend']}",
            ms=ms,
            tokens=tokens,
            baseline="whole_word",
            baseline_ms=base,
            length=m["length"],
            batch=m["batch"],
        )
        for name, ms in m["ms"].items()
    ]


def to_markdown(result: dict) -> str:
    c, m = result["counting"], result["masking"]
    lines = [
        "# PMI n-grams: counting and masking",
        "",
        f"Tokenizer {result['tokenizer']}; backend {result['backend']}. Machine: "
        f"{common.machine_line(result['machine'])}.",
        "",
        "| counting (embedded corpus) | value |",
        "| --- | ---: |",
        f"| words (tokens) | {c['words']} ({c['tokens']}) |",
        f"| n-grams counted, n = 1..{c['max_n']} | {', '.join(map(str, c['distinct']))} distinct |",
        f"| words/s (wall, median) | {c['words_per_s'] / 1e6:.2f}M |",
        f"| words/s (thread CPU time) | {c['words_per_cpu_s'] / 1e6:.2f}M |",
        f"| scoring + ranking (min_count 5, 20000 kept) | {c['rank_s']:.2f} s |",
        "",
        f"| masking {m['batch']} x {m['length']} ({m['words']} words -> {m['units']} units, "
        f"{m['vocabulary']} n-grams) | ms (median) | vs whole_word | ms (fastest) | vs whole_word |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, ms in m["ms"].items():
        best = m["best_ms"][name]
        lines.append(
            f"| {name} | {ms:.3f} | {ms / m['ms']['whole_word']:.2f}x | {best:.3f} | "
            f"{best / m['best_ms']['whole_word']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmask.bench.ngrams", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokenizer")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, tokenizer=args.tokenizer, progress=not args.no_progress)
    common.emit(result, to_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
