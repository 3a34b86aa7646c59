"""PMI n-gram benchmark: vocabulary counting speed and the cost of PMI masking.

* counting: the C++ ``NgramCounter`` over the embedded corpus (tokenized once, not timed),
  n-grams of 1..5 words; words per second of wall time and of the calling thread's CPU time
  (the second is what the counter costs on a machine shared with other work). Then where the
  wall time of :func:`fastmask.build_ngram_vocabulary` from texts goes: tokenization, the
  conversion of the rows to one id array, counting, and the scoring and ranking;
* masking: ``mask_tokens`` on a 64 x 512 batch of packed real text with the word-start table,
  ``strategy="pmi"`` (the unit op, then whole-word masking) against ``strategy="whole_word"``
  on the same batch and backend, the unit op alone, and whole-word masking over units computed
  beforehand (what :func:`fastmask.ngram_unit_ids` at tokenization gives). The cases alternate call by call in
  one process (so load on a shared machine hits them alike): wall time with the default
  threads, then CPU time of the calling thread with one thread (``torch.set_num_threads(1)``,
  so that the kernels' work is all on the timed thread); medians and fastest calls. The
  vocabulary is the corpus' (``min_count=5``, up to 20000 n-grams of 2..5 words);
* the collator: ``DataCollatorForLanguageModeling`` on the same rows as features (lists of
  ids), ``strategy="whole_word"`` against ``"pmi"`` and against whole-word over ``word_ids``
  from ``ngram_unit_ids``, timed the same way.

On ``--device cuda`` the masking (and the collators' masking) runs on the GPU (Triton), each
call timed to its ``torch.cuda.synchronize``, wall time only; counting stays on the CPU.

    fastmask bench --suite ngrams [--quick] [--device cpu|cuda]
    python -m fastmask.bench.ngrams [--quick] [--device ...] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

from . import common

MAX_N = 5
BATCH, LENGTH = 64, 512


def _alternating(cases: dict, *, min_time: float, min_reps: int, clock) -> dict:
    """Seconds per call of each case by ``clock`` (``time.perf_counter`` or ``time.thread_time``),
    the cases called in turn (one warm-up round first) until ``min_time`` seconds of wall time
    have passed and each case ran ``min_reps`` times."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    start = time.perf_counter()
    while len(times[next(iter(cases))]) < min_reps or time.perf_counter() - start < min_time:
        for name, fn in cases.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return times


def _timed(cases: dict, baseline: str, device, *, min_time: float, min_reps: int) -> tuple:
    """``(wall, cpu)`` summaries of ``cases`` (:func:`_summary`): wall time with the default
    threads (each call to its synchronize on a GPU), then, on the CPU only, the calling thread's
    CPU time with one thread (``None`` on a GPU: its cost is its wall time)."""
    import torch

    sync = common.device_sync(device)
    if sync:
        cases = {name: (lambda fn=fn: (fn(), sync())) for name, fn in cases.items()}
    wall = _summary(_alternating(cases, min_time=min_time, min_reps=min_reps, clock=time.perf_counter), baseline)
    if torch.device(device).type != "cpu":
        return wall, None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = _summary(_alternating(cases, min_time=min_time, min_reps=min_reps, clock=time.thread_time), baseline)
    finally:
        torch.set_num_threads(threads)
    return wall, cpu


def _summary(times: dict, baseline: str) -> dict:
    """Per case: median and fastest ms; the ratios of both to the baseline case."""
    out = {}
    for name, calls in times.items():
        median, best = 1e3 * statistics.median(calls), 1e3 * min(calls)
        out[name] = dict(ms=median, best_ms=best, calls=len(calls))
    for name in out:
        out[name]["ratio"] = out[name]["ms"] / out[baseline]["ms"]
        out[name]["ratio_best"] = out[name]["best_ms"] / out[baseline]["best_ms"]
    return out


def _counting(tok, texts, rows, quick: bool) -> dict:
    """The counter alone (wall and thread CPU), then build_ngram_vocabulary's parts from texts."""
    from fastmask import _backend
    from fastmask.ngrams import _flatten, _rank, count_ngrams, vocab_flags

    ids, offsets = _flatten(rows)
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

    def timed(fn):
        # process CPU time: the tokenizer runs threads of its own
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        return result, dict(wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)

    parts = {}
    _, parts["word_start_flags"] = timed(lambda: vocab_flags(tok))
    tokenized, parts["tokenize"] = timed(lambda: tok(list(texts), add_special_tokens=False)["input_ids"])
    _, parts["to_id_array"] = timed(lambda: _flatten(tokenized))
    (_, positions), parts["count_ngrams (texts, 1000 per call)"] = timed(lambda: count_ngrams(texts, tok, max_n=MAX_N))
    _, parts["score and rank"] = timed(
        lambda: _rank(counter, counter.positions(), tok, max_n=MAX_N, min_count=5, size=20_000, measure="pmi")
    )
    return dict(
        words=words,
        tokens=int(ids.size),
        max_n=MAX_N,
        wall_s=statistics.median(walls),
        cpu_s=statistics.median(cpus),
        words_per_s=words / statistics.median(walls),
        words_per_cpu_s=words / statistics.median(cpus),
        best_words_per_s=words / min(walls),
        distinct=[int(counter.distinct(n)) for n in range(1, MAX_N + 1)],
        rank_s=parts["score and rank"]["wall_s"],
        parts=parts,
        end_to_end_words_per_s=words / parts["count_ngrams (texts, 1000 per call)"]["wall_s"],
        end_to_end_words_per_cpu_s=words / parts["count_ngrams (texts, 1000 per call)"]["cpu_s"],
    )


def run(
    *, quick: bool = False, device: str = "cpu", tokenizer: Optional[str] = None, progress=True, lengths=None
) -> dict:
    """Time counting (CPU) and PMI masking (on ``device``) on the embedded corpus."""
    import torch

    import fastmask
    from fastmask import _backend, data
    from fastmask.masking import plan_masking
    from fastmask.ngrams import build_ngram_vocabulary, ngram_unit_starts

    on = torch.device(common.resolve_device(device))
    min_time, min_reps = (0.3, 10) if quick else (2.0, 20)
    tok, source = common.load_tokenizer(tokenizer)
    bar = common.Progress(progress, "ngrams")
    bar.start(4)
    texts = data.corpus_texts()
    rows = tok(texts, add_special_tokens=False)["input_ids"]
    counting = _counting(tok, texts, rows, quick)
    bar.step(f"counting {counting['words_per_s'] / 1e6:.2f}M words/s")

    vocabulary = build_ngram_vocabulary(rows, tok, max_n=MAX_N, min_count=5, size=20_000)
    bar.step(f"vocabulary {len(vocabulary)} n-grams")
    batch = torch.tensor(data.tokenized_rows(tok, texts, LENGTH, rows=BATCH)).to(on)
    table = fastmask.word_start_table(tok).to(on)
    common_kwargs = dict(
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        word_start_table=table,
        special_token_ids=tok.all_special_ids,
        pad_token_id=tok.pad_token_id,
        seed=0,
    )
    backend = _backend.resolve_backend("auto", on, op="mask_tokens")
    plan = plan_masking(batch, strategy="whole_word", **common_kwargs)
    units = ngram_unit_starts(plan, vocabulary, backend)
    precomputed_kwargs = {k: v for k, v in common_kwargs.items() if k != "word_start_table"}
    cases = {
        "whole_word": lambda: fastmask.mask_tokens(batch, strategy="whole_word", backend=backend, **common_kwargs),
        "pmi": lambda: fastmask.mask_tokens(
            batch, strategy="pmi", ngram_vocabulary=vocabulary, backend=backend, **common_kwargs
        ),
        "units only": lambda: ngram_unit_starts(plan, vocabulary, backend),
        # units computed once at tokenization (fastmask.ngram_unit_ids), then whole-word masking
        "pmi, units precomputed": lambda: fastmask.mask_tokens(
            batch, strategy="whole_word", word_starts=units, backend=backend, **precomputed_kwargs
        ),
    }
    timing = dict(min_time=min_time, min_reps=min_reps)
    wall, cpu = _timed(cases, "whole_word", on, **timing)
    bar.step(f"pmi {wall['pmi']['ratio']:.2f}x whole_word (wall)")
    collator = _collator_cases(tok, vocabulary, batch, backend, on)
    collator_wall, collator_cpu = _timed(collator, "collator whole_word", on, **timing)
    word_count = int(plan_words(plan))
    bar.close()
    return dict(
        tokenizer=source,
        quick=quick,
        machine=common.machine_info(),
        device=on.type,
        backend=backend,
        counting=counting,
        masking=dict(
            batch=BATCH,
            length=LENGTH,
            vocabulary=len(vocabulary),
            words=word_count,
            units=int(units.sum()),
            threads=torch.get_num_threads(),
            wall=wall,
            cpu_one_thread=cpu,
            # the headline figures (wall, default threads)
            ms={name: v["ms"] for name, v in wall.items()},
            best_ms={name: v["best_ms"] for name, v in wall.items()},
            ratio=wall["pmi"]["ratio"],
            ratio_best=wall["pmi"]["ratio_best"],
            cpu_ratio=cpu and cpu["pmi"]["ratio"],
            cpu_ratio_best=cpu and cpu["pmi"]["ratio_best"],
            precomputed_ratio=wall["pmi, units precomputed"]["ratio"],
            precomputed_cpu_ratio=cpu and cpu["pmi, units precomputed"]["ratio"],
        ),
        collator=dict(
            wall=collator_wall,
            cpu_one_thread=collator_cpu,
            ratio=collator_wall["collator pmi"]["ratio"],
            cpu_ratio=collator_cpu and collator_cpu["collator pmi"]["ratio"],
        ),
    )


def _collator_cases(tok, vocabulary, batch, backend: str, device) -> dict:
    """The drop-in collator on the batch's rows as features (lists of ids, as a dataset gives
    them): whole-word, PMI on the fly, and whole-word over ``word_ids`` from
    :func:`fastmask.ngram_unit_ids` (80/10/10 in all three)."""
    from fastmask import DataCollatorForLanguageModeling, ngram_unit_ids

    rows = batch.cpu().tolist()
    features = [{"input_ids": row} for row in rows]
    with_units = [{"input_ids": row, "word_ids": ids} for row, ids in zip(rows, ngram_unit_ids(rows, vocabulary, tok))]
    options = dict(seed=0, backend=backend, device=None if device.type == "cpu" else device)
    whole_word = DataCollatorForLanguageModeling(tok, strategy="whole_word", **options)
    pmi = DataCollatorForLanguageModeling(tok, strategy="pmi", ngram_vocabulary=vocabulary, **options)
    over_units = DataCollatorForLanguageModeling(tok, strategy="whole_word", **options)
    return {
        "collator whole_word": lambda: whole_word(features),
        "collator pmi": lambda: pmi(features),
        "collator, units precomputed": lambda: over_units(with_units),
    }


def plan_words(plan) -> int:
    from fastmask.reference.masking import plan_units

    _, starts = plan_units(plan, "whole_word")
    return int(starts.sum())


def headlines(result: dict) -> list:
    c, m, k = result["counting"], result["masking"], result["collator"]

    def cpu_time(ratio: Optional[float], fastest: Optional[float] = None) -> str:
        """The one-thread CPU-time ratio (measured on the CPU only)."""
        if ratio is None:
            return ""
        return f"; one thread, CPU time {ratio:.2f}x" + (f" (fastest {fastest:.2f}x)" if fastest is not None else "")

    return [
        f"ngrams: counting {c['words_per_s'] / 1e6:.2f}M words/s wall ({c['words_per_cpu_s'] / 1e6:.2f}M per CPU "
        f"second), n <= {c['max_n']}; from texts {c['end_to_end_words_per_s'] / 1e6:.2f}M words/s wall "
        f"(tokenization included)",
        f"ngrams ({result['device']}, {result['backend']}): PMI masking {m['batch']}x{m['length']} "
        f"{m['ms']['pmi']:.3f} ms = {m['ratio']:.2f}x whole-word ({m['ms']['whole_word']:.3f} ms; units "
        f"{m['ms']['units only']:.3f} ms), fastest calls {m['ratio_best']:.2f}x"
        + cpu_time(m["cpu_ratio"], m["cpu_ratio_best"]),
        f"ngrams: PMI masking with units precomputed at tokenization (ngram_unit_ids) "
        f"{m['precomputed_ratio']:.2f}x whole-word" + cpu_time(m["precomputed_cpu_ratio"]),
        f"ngrams: the collator on {m['batch']} rows of {m['length']}: PMI {k['ratio']:.2f}x whole-word (wall)"
        + cpu_time(k["cpu_ratio"]),
    ]


def table_rows(result: dict) -> list:
    m = result["masking"]
    groups = (
        ("masking ", m["ms"], "whole_word"),
        ("", {name: v["ms"] for name, v in result["collator"]["wall"].items()}, "collator whole_word"),
    )
    return [
        common.table_row(
            "ngrams",
            prefix + name,
            f"{m['batch']}x{m['length']}",
            f"fastmask {result['backend']}",
            ms=ms,
            tokens=m["batch"] * m["length"],
            baseline=baseline,
            baseline_ms=times[baseline],
            length=m["length"],
            batch=m["batch"],
        )
        for prefix, times, baseline in groups
        for name, ms in times.items()
    ]


def to_markdown(result: dict) -> str:
    c, m, k = result["counting"], result["masking"], result["collator"]
    lines = [
        "# PMI n-grams: counting and masking",
        "",
        f"Tokenizer {result['tokenizer']}; masking on {result['device']}, backend {result['backend']}. "
        "Machine: "
        f"{common.machine_line(result['machine'])}.",
        "",
        "| counting (embedded corpus) | value |",
        "| --- | ---: |",
        f"| words (tokens) | {c['words']} ({c['tokens']}) |",
        f"| n-grams counted, n = 1..{c['max_n']} | {', '.join(map(str, c['distinct']))} distinct |",
        f"| words/s (wall, median; fastest) | {c['words_per_s'] / 1e6:.2f}M; {c['best_words_per_s'] / 1e6:.2f}M |",
        f"| words/s (thread CPU time) | {c['words_per_cpu_s'] / 1e6:.2f}M |",
        f"| words/s from texts (count_ngrams: tokenize + convert + count; wall, process CPU) | "
        f"{c['end_to_end_words_per_s'] / 1e6:.2f}M, {c['end_to_end_words_per_cpu_s'] / 1e6:.2f}M |",
        "",
        "| build_ngram_vocabulary from texts, by part | wall s | process CPU s |",
        "| --- | ---: | ---: |",
    ]
    for name, part in c["parts"].items():
        lines.append(f"| {name} | {part['wall_s']:.3f} | {part['cpu_s']:.3f} |")
    lines += [
        "",
        f"Masking {m['batch']} x {m['length']} ({m['words']} words -> {m['units']} units, {m['vocabulary']} "
        f"n-grams); the cases alternate call by call.",
        "",
        *_timing_table(m["wall"], m["cpu_one_thread"], m["threads"], "whole_word"),
        "",
        "The drop-in collator on the same rows as features (lists of ids; padding, masking and the",
        "batch's tensors), 80/10/10 in all cases:",
        "",
        *_timing_table(k["wall"], k["cpu_one_thread"], m["threads"], "collator whole_word"),
    ]
    return "\n".join(lines) + "\n"


def _timing_table(wall: dict, cpu: Optional[dict], threads: int, baseline: str) -> list:
    wall_title = f"wall ms, {threads} threads (median)" if cpu else "wall ms to synchronize (median)"
    vs = f"vs {baseline}"
    lines = [
        f"| case | {wall_title} | {vs} | fastest | {vs} |"
        + (f" CPU ms, 1 thread (median) | {vs} | fastest | {vs} |" if cpu else ""),
        "| --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: | ---: | ---: |" if cpu else ""),
    ]
    for name, w in wall.items():
        line = f"| {name} | {w['ms']:.3f} | {w['ratio']:.2f}x | {w['best_ms']:.3f} | {w['ratio_best']:.2f}x |"
        if cpu:
            u = cpu[name]
            line += f" {u['ms']:.3f} | {u['ratio']:.2f}x | {u['best_ms']:.3f} | {u['ratio_best']:.2f}x |"
        lines.append(line)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmask.bench.ngrams", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokenizer")
    parser.add_argument("--device", default="cpu", help="where the masking runs: cpu (default), cuda or auto")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, device=args.device, tokenizer=args.tokenizer, progress=not args.no_progress)
    common.emit(result, to_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
