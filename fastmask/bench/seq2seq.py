"""Seq2seq benchmark: fastmask's ``DataCollatorForSpanCorruption`` vs the collator of
transformers' Flax T5 example (``run_t5_mlm_flax.py``'s ``DataCollatorForT5MLM``).

The baseline is a numpy reimplementation of that collator's algorithm, written for this
benchmark (the example is not importable): per row a random noise mask from two random
segmentations (``random_spans_noise_mask``: shuffle of the cut indicators, ``cumsum``, counts),
then per batch sentinel ids (``create_sentinel_ids``) and the filtering of masked positions
(``filter_input_ids``) for inputs and labels, and ``decoder_input_ids`` shifted right. Both
collators take the same features: 64 dicts of Python lists of real text, packed to the
expanded length of ``input_length`` 512 (568 tokens with T5's defaults), tokenized by MiniLM's
WordPiece with T5's sentinels added. Median time per batch (wall clock, and thread CPU time),
one process.

    fastmask bench --suite seq2seq [--quick]
    python -m fastmask.bench.seq2seq [--quick] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Optional

import numpy as np

from . import common

BATCH = 64
INPUT_LENGTH = 512
NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


class NumpyT5Collator:
    """The Flax example's span-corruption collator, reimplemented with numpy (see the module
    docstring): the baseline. ``first_sentinel_id``: the id of ``<extra_id_0>``; sentinel ``k``
    is ``first_sentinel_id - k``, as in the example (which uses ``len(tokenizer) - 1 - k``)."""

    def __init__(
        self,
        *,
        noise_density,
        mean_noise_span_length,
        input_length,
        target_length,
        first_sentinel_id,
        eos_token_id,
        pad_token_id,
        decoder_start_token_id,
        seed=0,
    ):
        self.noise_density, self.mean = noise_density, mean_noise_span_length
        self.input_length, self.target_length = input_length, target_length
        self.first_sentinel_id, self.eos, self.pad = first_sentinel_id, eos_token_id, pad_token_id
        self.decoder_start = decoder_start_token_id
        np.random.seed(seed)

    @staticmethod
    def _segments(items: int, segments: int) -> np.ndarray:
        """Lengths of a uniformly random composition of ``items`` into ``segments`` parts."""
        cuts = np.arange(items - 1) < segments - 1
        np.random.shuffle(cuts)
        segment_of = np.cumsum(np.concatenate([[0], cuts]))
        return np.bincount(segment_of, minlength=segments)

    def noise_mask(self, length: int) -> np.ndarray:
        noise = int(np.round(length * self.noise_density))
        noise = min(max(noise, 1), length - 1)
        spans = max(int(np.round(noise / self.mean)), 1)
        noise_lengths = self._segments(noise, spans)
        keep_lengths = self._segments(length - noise, spans)
        runs = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)
        starts = np.cumsum(runs)[:-1]
        indicator = np.zeros(length, dtype=np.int8)
        indicator[starts] = 1
        return np.cumsum(indicator) % 2 == 1

    def _sentinels(self, mask: np.ndarray) -> np.ndarray:
        """Per position: a sentinel id at a span's first token, -1 on its other tokens, else 0."""
        mask = mask.astype(np.int64)
        starts = mask - np.concatenate([np.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1) * mask
        numbers = np.cumsum(starts, axis=1) * starts
        ids = np.where(numbers != 0, self.first_sentinel_id + 1 - numbers, 0)
        return ids - (mask - starts)

    def _filter(self, input_ids: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
        full = np.where(sentinels != 0, sentinels, input_ids)
        kept = full[full >= 0].reshape(input_ids.shape[0], -1)
        return np.concatenate([kept, np.full((input_ids.shape[0], 1), self.eos, dtype=kept.dtype)], axis=1)

    def __call__(self, examples: list) -> dict:
        input_ids = np.array([e["input_ids"] for e in examples])
        batch, length = input_ids.shape
        mask = np.asarray([self.noise_mask(length) for _ in range(batch)])
        inputs = self._filter(input_ids, self._sentinels(mask))
        labels = self._filter(input_ids, self._sentinels(~mask))
        if inputs.shape[1] != self.input_length or labels.shape[1] != self.target_length:
            raise ValueError(f"baseline produced {inputs.shape} / {labels.shape}")
        decoder = np.empty_like(labels)
        decoder[:, 0] = self.decoder_start
        decoder[:, 1:] = labels[:, :-1]
        return {"input_ids": inputs, "labels": labels, "decoder_input_ids": decoder}


def t5_style_tokenizer(name_or_path: Optional[str] = None):
    """``(tokenizer with T5's sentinels and an EOS, its source)``: a copy of the bench tokenizer."""
    from fastmask.seq2seq import add_sentinel_tokens

    tokenizer, source = common.load_tokenizer(name_or_path)
    tokenizer = copy.deepcopy(tokenizer)
    add_sentinel_tokens(tokenizer)
    return tokenizer, source


def make_features(tokenizer, batch: int, length: int, *, seed: int = 0) -> list:
    """``batch`` dicts of Python lists of exactly ``length`` tokens of real text."""
    ids, _ = common.token_stream(tokenizer)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - length, size=batch)
    return [{"input_ids": ids[s : s + length].tolist()} for s in starts]


def _check(batch: dict, first: int, eos: int, features: list) -> Optional[str]:
    """Why a batch does not give its rows back (inputs with sentinels + labels), or None."""
    for row, feature in enumerate(features):
        inputs, labels = np.asarray(batch["input_ids"][row]).tolist(), np.asarray(batch["labels"][row]).tolist()
        spans, current = {}, None
        for x in labels[: labels.index(eos)]:
            if first - 1000 < x <= first:
                current = spans.setdefault(x, [])
            else:
                current.append(x)
        rebuilt = [t for x in inputs[: inputs.index(eos)] for t in (spans[x] if x in spans else [x])]
        if rebuilt != feature["input_ids"]:
            return f"row {row} does not rebuild"
    return None


def run(
    *,
    quick: bool = False,
    batch: int = BATCH,
    input_length: int = INPUT_LENGTH,
    device: str = "cpu",
    tokenizer: Optional[str] = None,
    seed: int = 0,
    progress=True,
) -> dict:
    """Time both collators on the same features; ``device`` is accepted for the CLI (CPU only)."""
    import fastmask
    from fastmask import _backend

    min_time, min_reps = (0.3, 3) if quick else (2.0, 10)
    tok, source = t5_style_tokenizer(tokenizer)
    expanded, target = fastmask.span_corruption_lengths(input_length, NOISE_DENSITY, MEAN_NOISE_SPAN_LENGTH)
    features = make_features(tok, batch, expanded, seed=seed)
    first = tok.convert_tokens_to_ids("<extra_id_0>")
    ours = {
        fmt: fastmask.DataCollatorForSpanCorruption(
            tok,
            NOISE_DENSITY,
            MEAN_NOISE_SPAN_LENGTH,
            input_length,
            decoder_start_token_id=tok.pad_token_id,
            seed=seed,
            return_tensors=fmt,
        )
        for fmt in ("np", "pt")
    }
    theirs = NumpyT5Collator(
        noise_density=NOISE_DENSITY,
        mean_noise_span_length=MEAN_NOISE_SPAN_LENGTH,
        input_length=input_length,
        target_length=target,
        first_sentinel_id=first,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        decoder_start_token_id=tok.pad_token_id,
        seed=seed,
    )
    failures = []
    for name, collate in (("fastmask", ours["np"]), ("flax-numpy", theirs)):
        reason = _check(collate(features), first, tok.eos_token_id, features)
        if reason:
            failures.append(f"seq2seq {name}: {reason}")
    bar = common.Progress(progress, "seq2seq")
    bar.start(3)
    times, best, cpu = {}, {}, {}
    for name, collate in (("fastmask np", ours["np"]), ("fastmask pt", ours["pt"]), ("flax numpy", theirs)):
        calls = common.time_calls(lambda: collate(features), min_time=min_time, min_reps=min_reps)
        times[name], best[name] = statistics.median(calls), min(calls)
        cpu[name] = statistics.median(_cpu_times(lambda: collate(features), min_reps))
        bar.step(f"{name} {1e3 * times[name]:.3f} ms")
    bar.close()
    tokens = batch * expanded
    row = dict(
        strategy="span_corruption",
        words="",
        length=expanded,
        input_length=input_length,
        target_length=target,
        batch=batch,
        tokens=tokens,
        fastmask_ms=1e3 * times["fastmask np"],
        fastmask_pt_ms=1e3 * times["fastmask pt"],
        flax_numpy_ms=1e3 * times["flax numpy"],
    )
    row.update(fastmask_best_ms=1e3 * best["fastmask np"], flax_numpy_best_ms=1e3 * best["flax numpy"])
    row.update(fastmask_cpu_ms=1e3 * cpu["fastmask np"], flax_numpy_cpu_ms=1e3 * cpu["flax numpy"])
    row["speedup_cpu"] = row["flax_numpy_cpu_ms"] / row["fastmask_cpu_ms"]
    row["speedup"] = row["flax_numpy_ms"] / row["fastmask_ms"]
    row["speedup_best"] = row["flax_numpy_best_ms"] / row["fastmask_best_ms"]
    row["speedup_pt"] = row["flax_numpy_ms"] / row["fastmask_pt_ms"]
    return dict(
        rows=[row],
        tokenizer=source,
        failures=failures,
        quick=quick,
        machine=common.machine_info(),
        backend=_backend.resolve_backend("auto", __import__("torch").device("cpu"), op="span_corruption"),
    )


def _cpu_times(fn, reps: int) -> list:
    """Thread CPU seconds of ``reps`` calls. At the default batch both collators run on the calling
    thread only, so on a shared machine this approximates a quiet machine's wall time."""
    out = []
    for _ in range(reps):
        start = time.thread_time()
        fn()
        out.append(time.thread_time() - start)
    return out


def failures(result: dict) -> list:
    return list(result.get("failures", []))


def to_markdown(result: dict) -> str:
    lines = [
        "# Span-corruption collator: fastmask vs the Flax T5 example's collator (numpy)",
        "",
        f"Batch of {result['rows'][0]['batch']} packed rows of real text ({result['tokenizer']} with T5 sentinels); noise density "
        f"{NOISE_DENSITY}, mean span {MEAN_NOISE_SPAN_LENGTH}. Median time per batch; same features; op backend "
        f"{result['backend']}. Machine: {common.machine_line(result['machine'])}.",
        "",
        "| rows x expanded length -> inputs, labels | fastmask ms (np) | fastmask ms (pt) | Flax numpy ms | speed-up (np) | speed-up (pt) | best-of speed-up (np) | CPU-time speed-up (np) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['batch']} x {r['length']} -> {r['input_length']}, {r['target_length']} | {r['fastmask_ms']:.3f} | "
            f"{r['fastmask_pt_ms']:.3f} | {r['flax_numpy_ms']:.2f} | {r['speedup']:.1f}x | {r['speedup_pt']:.1f}x | "
            f"{r['speedup_best']:.1f}x ({r['fastmask_best_ms']:.3f} vs {r['flax_numpy_best_ms']:.2f} ms) | "
            f"{r['speedup_cpu']:.1f}x ({r['fastmask_cpu_ms']:.3f} vs {r['flax_numpy_cpu_ms']:.2f} ms) |"
        )
    lines += [
        "",
        "Speed-ups are ratios of median wall times; best-of compares the fastest calls; the last column "
        "compares median thread CPU times (at this size both collators run on the calling thread only; larger "
        "batches may use the C++ thread pool, which this does not count), which other load on a small "
        "shared machine distorts least.",
    ]
    return "\n".join(lines) + "\n"


def table_rows(result: dict) -> list:
    out = []
    for r in result["rows"]:
        keys = dict(
            case="span corruption",
            shape=f"{r['batch']}x{r['length']}",
            length=r["length"],
            batch=r["batch"],
            tokens=r["tokens"],
            baseline="flax numpy",
            baseline_ms=r["flax_numpy_ms"],
        )
        out.append(common.table_row("seq2seq", impl="fastmask collator (np)", ms=r["fastmask_ms"], **keys))
        out.append(common.table_row("seq2seq", impl="fastmask collator (pt)", ms=r["fastmask_pt_ms"], **keys))
        out.append(common.table_row("seq2seq", impl="Flax example collator (numpy)", ms=r["flax_numpy_ms"], **keys))
    return out


def headlines(result: dict) -> list:
    return [
        f"span corruption {r['batch']}x{r['length']}: {common.format_speedup(r['speedup'])} the Flax example's "
        f"numpy collator (fastest calls: {common.format_speedup(r['speedup_best'])}; CPU time: "
        f"{common.format_speedup(r['speedup_cpu'])})"
        for r in result["rows"]
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"rows per batch (default: {BATCH})")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer (default: MiniLM's WordPiece)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, batch=args.batch, tokenizer=args.tokenizer, progress=not args.no_progress)
    common.emit(result, to_markdown(result), args)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
