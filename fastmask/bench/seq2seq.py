"""Seq2seq benchmark: fastmask's ``DataCollatorForSpanCorruption`` vs the collator of
transformers' Flax T5 example (``run_t5_mlm_flax.py``'s ``DataCollatorForT5MLM``), and
fastmask's ``DataCollatorForTextInfilling`` vs the Flax BART example's
(``run_bart_dlm_flax.py``'s ``FlaxDataCollatorForBartDenoisingLM``).

The baseline is a numpy reimplementation of that collator's algorithm, written for this
benchmark (the example is not importable): per row a random noise mask from two random
segmentations (``random_spans_noise_mask``: shuffle of the cut indicators, ``cumsum``, counts),
then per batch sentinel ids (``create_sentinel_ids``) and the filtering of masked positions
(``filter_input_ids``) for inputs and labels, and ``decoder_input_ids`` shifted right. Both
collators take the same features: 64 dicts of Python lists of real text, packed to the
expanded length of ``input_length`` 512 (568 tokens with T5's defaults), tokenized by MiniLM's
WordPiece with T5's sentinels added. One process; the collators take turns (a few calls each per
turn, the first untimed), and each reports its median and fastest wall time per batch and its
median thread CPU time.

The text-infilling row: the baseline is a numpy reimplementation of the BART example's
collator (:class:`NumpyBartCollator`: per-row special-token masks from the tokenizer, Poisson span
lengths for the whole batch, a random permutation of the maskable tokens for the starts, spans
grown one step per loop, a per-row compaction of the masks). Both take 64 dicts of Python lists
of 512 tokens of real text (``[CLS] … [SEP]`` rows); mask ratio 0.3, lambda 3, no sentence
permutation. fastmask runs with the same token-level spans and no random ids
(``whole_word=False, random_ratio=0``), and with its defaults (whole words, 10% random ids).

    fastmask bench --suite seq2seq [--quick]
    python -m fastmask.bench.seq2seq [--quick] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import copy
import functools
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


class NumpyBartCollator:
    """The Flax BART example's denoising collator (``FlaxDataCollatorForBartDenoisingLM``),
    reimplemented with numpy from its algorithm (see the module docstring): the baseline.
    Sentence permutation is left out (the benchmark runs without it)."""

    def __init__(self, tokenizer, *, decoder_start_token_id, mask_ratio=0.3, poisson_lambda=3.0, seed=0):
        self.tokenizer = tokenizer
        self.pad, self.mask = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.decoder_start = decoder_start_token_id
        self.mask_ratio, self.poisson_lambda = mask_ratio, poisson_lambda
        np.random.seed(seed)

    def _shift_right(self, labels: np.ndarray) -> np.ndarray:
        shifted = np.zeros_like(labels)
        shifted[:, 1:] = labels[:, :-1]
        shifted[:, 0] = self.decoder_start
        return np.where(shifted == -100, self.pad, shifted)

    def _span_mask(self, input_ids: np.ndarray, labels: np.ndarray):
        tok = self.tokenizer
        special = np.array(
            [tok.get_special_tokens_mask(row, already_has_special_tokens=True) for row in input_ids.tolist()],
            dtype=bool,
        )
        maskable = (input_ids != self.pad) & ~special
        budget = int(np.ceil(maskable.astype(float).sum() * self.mask_ratio))
        if budget == 0:
            return input_ids, labels
        lengths = np.random.poisson(lam=self.poisson_lambda, size=(budget,))
        while np.cumsum(lengths)[-1] < budget:
            lengths = np.concatenate([lengths, np.random.poisson(lam=self.poisson_lambda, size=(budget,))])
        lengths = lengths[lengths > 0]  # the example drops zero-length spans (no inserts)
        lengths = lengths[: np.argmin(np.abs(np.cumsum(lengths) - budget)) + 1]
        candidates = np.argwhere(maskable)
        starts = np.array(candidates[np.random.permutation(candidates.shape[0])[: lengths.shape[0]]])
        mask = np.zeros_like(input_ids, dtype=bool)
        for index in starts:
            mask[tuple(index)] = True
        lengths -= 1
        last = input_ids.shape[1] - 1
        growing = (lengths > 0) & (starts[:, 1] < last)
        while np.any(growing):
            starts[growing, 1] += 1
            for index in starts:
                mask[tuple(index)] = True
            lengths -= 1
            growing = (lengths > 0) & (starts[:, 1] < last)
        mask[special] = False
        input_ids[mask] = self.mask
        labels[~mask] = -100  # the example's labels without sentence permutation
        repeated = mask & np.roll(mask, 1, 1)
        out = np.full_like(input_ids, self.pad)
        for i, row in enumerate(input_ids):
            kept = row[~repeated[i]]
            out[i, : kept.shape[0]] = kept
        return out, labels

    def __call__(self, examples: list) -> dict:
        batch = {key: np.array([e[key] for e in examples]) for key in examples[0]}
        batch["labels"] = batch["input_ids"].copy()
        batch["decoder_input_ids"] = self._shift_right(batch["labels"])
        if self.mask_ratio:
            batch["input_ids"], batch["labels"] = self._span_mask(batch["input_ids"], batch["labels"])
        batch["attention_mask"] = (batch["input_ids"] != self.pad).astype(int)
        batch["decoder_attention_mask"] = (batch["decoder_input_ids"] != self.pad).astype(int)
        return batch


def bracketed_features(tokenizer, batch: int, length: int, *, seed: int = 0) -> list:
    """``batch`` dicts of Python lists: ``[CLS]`` + ``length - 2`` tokens of real text + ``[SEP]``."""
    body = make_features(tokenizer, batch, length - 2, seed=seed)
    return [{"input_ids": [tokenizer.cls_token_id] + f["input_ids"] + [tokenizer.sep_token_id]} for f in body]


def _check_infilling(batch: dict, features: list, mask_id: int, ours: bool) -> Optional[str]:
    """Why an infilling batch is wrong (labels not the rows, no masks, rows grown), or None."""
    for row, feature in enumerate(features):
        ids = np.asarray(batch["input_ids"][row])
        source = feature["input_ids"]
        if ours and np.asarray(batch["labels"][row])[: len(source)].tolist() != source:
            return f"row {row}: labels are not the original row"
        if mask_id not in ids.tolist() or int((ids != 0).sum()) > len(source):
            return f"row {row}: no mask or a longer row"
        if ids[0] != source[0]:
            return f"row {row}: the first (special) token changed"
    return None


def _text_infilling_row(*, quick: bool, batch: int, input_length: int, tokenizer, seed: int, bar) -> tuple:
    import fastmask

    tok, _ = common.load_tokenizer(tokenizer)
    features = bracketed_features(tok, batch, input_length, seed=seed)
    start = tok.sep_token_id
    ours = {
        "fastmask np": fastmask.DataCollatorForTextInfilling(
            tok, whole_word=False, random_ratio=0.0, decoder_start_token_id=start, seed=seed, return_tensors="np"
        ),
        "fastmask pt": fastmask.DataCollatorForTextInfilling(
            tok, whole_word=False, random_ratio=0.0, decoder_start_token_id=start, seed=seed, return_tensors="pt"
        ),
        "fastmask words np": fastmask.DataCollatorForTextInfilling(
            tok, decoder_start_token_id=start, seed=seed, return_tensors="np"
        ),
    }
    theirs = NumpyBartCollator(tok, decoder_start_token_id=start, seed=seed)
    failures = []
    for name, collate, mine in (("fastmask", ours["fastmask np"], True), ("flax-numpy", theirs, False)):
        reason = _check_infilling(collate(features), features, tok.mask_token_id, mine)
        if reason:
            failures.append(f"seq2seq text infilling {name}: {reason}")
    timings = _time_collators(dict(ours, **{"flax numpy": theirs}), features, quick=quick, bar=bar, label="infilling ")
    row = _timed_row(
        "text_infilling",
        timings,
        batch=batch,
        length=input_length,
        input_length=input_length,
        target_length=input_length,
    )
    row["fastmask_words_ms"] = 1e3 * timings[0]["fastmask words np"]
    row["speedup_words"] = row["flax_numpy_ms"] / row["fastmask_words_ms"]
    return row, failures


def _time_collators(collators: dict, features: list, *, quick: bool, bar, label: str = "") -> tuple[dict, dict, dict]:
    """:func:`_time_in_turns` of each collator on ``features`` (``quick``: fewer repeats), one
    progress step (``label`` + name) each."""
    min_time, min_reps = (0.3, 3) if quick else (2.0, 10)
    times, best, cpu = _time_in_turns(
        {name: functools.partial(collate, features) for name, collate in collators.items()},
        min_time=min_time,
        min_reps=min_reps,
    )
    for name in collators:
        bar.step(f"{label}{name} {1e3 * times[name]:.3f} ms")
    return times, best, cpu


def _timed_row(
    strategy: str, timings: tuple, *, batch: int, length: int, input_length: int, target_length: int
) -> dict:
    """A result row of ``batch`` rows of ``length`` tokens from :func:`_time_collators`' seconds
    (collators ``"fastmask np"``, ``"fastmask pt"`` and ``"flax numpy"``): milliseconds and
    speed-ups over the Flax collator."""
    times, best, cpu = timings
    row = dict(
        strategy=strategy,
        words="",
        length=length,
        input_length=input_length,
        target_length=target_length,
        batch=batch,
        tokens=batch * length,
    )
    for key, seconds in (("ms", times), ("best_ms", best), ("cpu_ms", cpu)):
        row[f"fastmask_{key}"] = 1e3 * seconds["fastmask np"]
        row[f"flax_numpy_{key}"] = 1e3 * seconds["flax numpy"]
    row["fastmask_pt_ms"] = 1e3 * times["fastmask pt"]
    row["speedup"] = row["flax_numpy_ms"] / row["fastmask_ms"]
    row["speedup_best"] = row["flax_numpy_best_ms"] / row["fastmask_best_ms"]
    row["speedup_cpu"] = row["flax_numpy_cpu_ms"] / row["fastmask_cpu_ms"]
    row["speedup_pt"] = row["flax_numpy_ms"] / row["fastmask_pt_ms"]
    return row


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
    bar.start(7)
    collators = {"fastmask np": ours["np"], "fastmask pt": ours["pt"], "flax numpy": theirs}
    timings = _time_collators(collators, features, quick=quick, bar=bar)
    row = _timed_row(
        "span_corruption", timings, batch=batch, length=expanded, input_length=input_length, target_length=target
    )
    infilling, infilling_failures = _text_infilling_row(
        quick=quick, batch=batch, input_length=input_length, tokenizer=tokenizer, seed=seed, bar=bar
    )
    bar.close()
    failures += infilling_failures
    return dict(
        rows=[row, infilling],
        tokenizer=source,
        failures=failures,
        quick=quick,
        machine=common.machine_info(),
        backend=_backend.resolve_backend("auto", __import__("torch").device("cpu"), op="span_corruption"),
    )


def _time_in_turns(calls: dict, *, min_time: float, min_reps: int, per_turn: int = 4) -> tuple[dict, dict, dict]:
    """``(median wall, fastest wall, median thread CPU)`` seconds per call of each ``calls[name]()``.

    The calls take turns, ``per_turn`` timed calls each after one untimed call that warms the
    caches (the previous turn's collator evicted them), until each has ``min_reps`` timed calls
    and ``min_time`` seconds have passed: load that comes and goes on a shared machine then
    weighs on every collator alike. Wall and thread CPU time come from the same calls; at the
    default batch every collator runs on the calling thread only, so CPU time approximates a
    quiet machine's wall time."""
    walls = {name: [] for name in calls}
    cpus = {name: [] for name in calls}
    start = time.perf_counter()
    while min(map(len, walls.values())) < min_reps or time.perf_counter() - start < min_time:
        for name, fn in calls.items():
            fn()
            for _ in range(per_turn):
                wall, cpu = time.perf_counter(), time.thread_time()
                fn()
                cpus[name].append(time.thread_time() - cpu)
                walls[name].append(time.perf_counter() - wall)
    return (
        {name: statistics.median(v) for name, v in walls.items()},
        {name: min(v) for name, v in walls.items()},
        {name: statistics.median(v) for name, v in cpus.items()},
    )


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
    for r in _rows(result, "span_corruption"):
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
    for r in _rows(result, "text_infilling"):
        lines += [
            "",
            "# Text-infilling collator: fastmask vs the Flax BART example's collator (numpy)",
            "",
            f"Batch of {r['batch']} rows of {r['length']} tokens of real text ([CLS] ... [SEP], {result['tokenizer']}), "
            "from a list of dicts; mask ratio 0.3, Poisson lambda 3, no sentence permutation. fastmask with the "
            "example's token-level spans and no random ids (np, pt), and with its defaults (whole words, 10% random "
            "ids).",
            "",
            "| rows x length | fastmask ms (np) | fastmask ms (pt) | fastmask whole words ms (np) | Flax numpy ms "
            "| speed-up (np) | speed-up (pt) | speed-up (whole words) | best-of speed-up (np) | CPU-time speed-up (np) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {r['batch']} x {r['length']} | {r['fastmask_ms']:.3f} | {r['fastmask_pt_ms']:.3f} | "
            f"{r['fastmask_words_ms']:.3f} | {r['flax_numpy_ms']:.2f} | {r['speedup']:.1f}x | {r['speedup_pt']:.1f}x | "
            f"{r['speedup_words']:.1f}x | {r['speedup_best']:.1f}x ({r['fastmask_best_ms']:.3f} vs "
            f"{r['flax_numpy_best_ms']:.2f} ms) | {r['speedup_cpu']:.1f}x ({r['fastmask_cpu_ms']:.3f} vs "
            f"{r['flax_numpy_cpu_ms']:.2f} ms) |",
        ]
    return "\n".join(lines) + "\n"


def _rows(result: dict, strategy: str) -> list:
    return [r for r in result["rows"] if r.get("strategy", "span_corruption") == strategy]


_CASES = {"span_corruption": "span corruption", "text_infilling": "text infilling"}


def table_rows(result: dict) -> list:
    out = []
    for r in result["rows"]:
        keys = dict(
            case=_CASES[r["strategy"]],
            shape=f"{r['batch']}x{r['length']}",
            length=r["length"],
            batch=r["batch"],
            tokens=r["tokens"],
            baseline="flax numpy",
            baseline_ms=r["flax_numpy_ms"],
        )
        out.append(common.table_row("seq2seq", impl="fastmask collator (np)", ms=r["fastmask_ms"], **keys))
        out.append(common.table_row("seq2seq", impl="fastmask collator (pt)", ms=r["fastmask_pt_ms"], **keys))
        if "fastmask_words_ms" in r:
            out.append(
                common.table_row(
                    "seq2seq", impl="fastmask collator, whole words (np)", ms=r["fastmask_words_ms"], **keys
                )
            )
        out.append(common.table_row("seq2seq", impl="Flax example collator (numpy)", ms=r["flax_numpy_ms"], **keys))
    return out


def headlines(result: dict) -> list:
    return [
        f"{_CASES[r['strategy']]} {r['batch']}x{r['length']}: {common.format_speedup(r['speedup'])} the Flax example's "
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
