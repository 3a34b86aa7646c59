"""PMI n-gram vocabularies and the n-gram unit op of PMI masking (Levine et al., ICLR 2021).

Building (:func:`build_ngram_vocabulary`): the corpus is tokenized (texts without special
tokens), split into words by the tokenizer's per-vocabulary word-start table
(:func:`fastmask.word_start_table`: WordPiece ``##``, byte-level BPE ``Ġ``, SentencePiece ``▁``;
special tokens end a segment) and every n-gram of 1..``max_n`` words is counted in C++
(``csrc/ngrams.cpp``: hashed word sequences, no Python per token). An n-gram with at least
``min_count`` occurrences is scored by its PMI against its *least surprising* segmentation::

    score(x) = log p(x) - max over segmentations of x into >= 2 contiguous parts of sum log p(part)

with ``p(y) = count(y) / positions(|y|)`` (``positions(k)``: the k-word windows counted). Only
n-grams with a positive score are kept, ranked per length by score (then count, then key).

Budget: ``size`` is split evenly across the lengths ``2..max_n`` (the remainder to the shortest
lengths); a length with fewer candidates than its share hands what it leaves over, again evenly,
to the lengths that still have candidates.

Sharded counting (``num_proc > 1``): the corpus is a ``datasets.Dataset`` (texts and id rows are
wrapped in one), cut into shards of at most ``shard_size`` rows that ``datasets.map`` counts in
``num_proc`` processes; each shard exports the n-grams it saw at least ``min_count`` times and
the main process adds them up. With ``min_count=1`` this is exactly single-process counting.
With ``min_count > 1`` it is an approximation that bounds memory (each shard's counter holds one
shard; the merged counts hold only pruned entries): an n-gram's count is the sum over the
shards where it reached ``min_count``, a lower bound of its true count, so n-grams spread thinly
over many shards can be missed. Scores then use these counts (and the exact window totals).

Units (:func:`ngram_unit_starts`): in each row, from the first word on, a unit is the longest
vocabulary n-gram (2..``max_n`` words, inside one run of eligible tokens) that starts at the
current word, else the word alone; the next unit starts after it (greedy longest match, left to
right). The unit starts ``[B, L]`` bool then replace the word starts of whole-word masking, so
budget, weights and 80/10/10 replacement are whole-word masking's. Matching uses 63-bit keys of
the word sequences (:mod:`fastmask.reference.ngrams`: a one-token word enters by its id, a longer
one by its hash); two distinct n-grams sharing a key (never for bigrams of one-token words, else
probability about ``2**-63`` per pair) would match each other.

File format (:meth:`NgramVocabulary.save`): JSON, ``{"format": "fastmask-ngram-vocabulary",
"version": 1, "tokenizer": {"fingerprint", "class", "vocab_size", "scheme"}, "max_n",
"min_count", "measure", "size", "positions": [windows of 1..max_n words], "ngrams": {"2": [...],
...}}``, each entry ``{"words": [[token ids of word 1], ...], "text", "count", "score"}``, best
first. ``fingerprint`` is the SHA-256 of the tokenizer's vocabulary (token -> id, sorted), its
word-boundary scheme and special ids; using a vocabulary with another tokenizer raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import numbers
import os
import sys
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from . import _backend
from .masking_plan import FLAG_SPECIAL, FLAG_WORD_START, MaskingPlan
from .ngram_units_plan import NgramUnitsPlan
from .reference import ngrams as _ref

__all__ = [
    "NgramVocabulary",
    "build_ngram_vocabulary",
    "ngram_unit_starts",
    "ngram_unit_ids",
    "tokenizer_fingerprint",
    "embedded_ngram_vocabulary",
    "MEASURES",
    "MIN_N",
    "MAX_N",
]

FORMAT = "fastmask-ngram-vocabulary"
VERSION = 1
MEASURES = ("pmi",)
MIN_N, MAX_N = 2, 8
DEFAULT_SIZE = 50_000


# ----------------------------------------------------------------------------- tokenizer facts
def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 (hex) of the tokenizer's vocabulary (sorted token -> id), word-boundary scheme and
    special ids: equal for the same vocabulary wherever it is loaded."""
    from .words import _vocab, detect_word_boundary_scheme

    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(_vocab(tokenizer).items()), ensure_ascii=False).encode())
    digest.update(detect_word_boundary_scheme(tokenizer).encode())
    digest.update(json.dumps(sorted(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])).encode())
    return digest.hexdigest()


def vocab_flags(tokenizer) -> np.ndarray:
    """uint8 ``[V]``: bit 0 special, bit 1 starts a word (``masking_plan``'s ``vocab_flags``)."""
    from .words import word_start_table

    starts = word_start_table(tokenizer).numpy()
    flags = np.where(starts, FLAG_WORD_START, 0).astype(np.uint8)
    for index in getattr(tokenizer, "all_special_ids", []) or []:
        if index is not None and 0 <= int(index) < flags.size:
            flags[int(index)] |= FLAG_SPECIAL
    return flags


# ----------------------------------------------------------------------------- the vocabulary
@dataclasses.dataclass
class NgramVocabulary:
    """A ranked PMI n-gram vocabulary: ``ngrams[n]`` lists entries of ``n`` words, best first,
    each ``{"words": [[ids], ...], "text": str, "count": int, "score": float}``."""

    ngrams: dict
    max_n: int
    min_count: int
    measure: str
    size: int
    positions: list
    tokenizer: dict  # fingerprint, class, vocab_size, scheme

    def __post_init__(self):
        self._table: Optional[torch.Tensor] = None
        self._tables_on: dict = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.ngrams.values())

    def __repr__(self) -> str:
        lengths = ", ".join(f"{n}: {len(v)}" for n, v in sorted(self.ngrams.items()))
        return f"NgramVocabulary({len(self)} n-grams {{{lengths}}}, max_n={self.max_n}, measure={self.measure!r})"

    def top(self, n: int, k: int = 20) -> list[tuple[str, float, int]]:
        """The best ``k`` n-grams of ``n`` words: ``(text, score, count)``."""
        n = _check_int("n", n, MIN_N, self.max_n)
        k = _check_int("k", k, 0, None)
        return [(e["text"], e["score"], e["count"]) for e in self.ngrams.get(n, [])[:k]]

    def keys(self) -> list[int]:
        """Every n-gram's 63-bit key (unsigned ints; :func:`fastmask.reference.ngrams.ngram_key`)."""
        return [_ref.ngram_key(e["words"]) for entries in self.ngrams.values() for e in entries]

    def probe_table(self, device="cpu") -> torch.Tensor:
        """int64 open-addressing table of the n-grams' keys and prefixes
        (:func:`fastmask.reference.ngrams.probe_table`; built once, cached per device)."""
        if self._table is None:
            self._table = _ref.probe_table([e["words"] for entries in self.ngrams.values() for e in entries])
        table = self._tables_on.get(device)  # keyed by the argument as given: no conversion per call
        if table is None:
            table = self._tables_on.get(str(torch.device(device)))
            if table is None:
                table = self._table.to(device)
                self._tables_on[str(torch.device(device))] = table
            self._tables_on[device] = table
        return table

    def check_tokenizer(self, tokenizer) -> None:
        """Raises ValueError when ``tokenizer`` is not the one the vocabulary was built with."""
        fingerprint = tokenizer_fingerprint(tokenizer)
        if fingerprint != self.tokenizer.get("fingerprint"):
            raise ValueError(
                f"ngram_vocabulary was built with another tokenizer ({self.tokenizer.get('class')}, "
                f"{self.tokenizer.get('vocab_size')} ids, fingerprint {str(self.tokenizer.get('fingerprint'))[:12]}…) "
                f"than {type(tokenizer).__name__} ({len(tokenizer)} ids, fingerprint {fingerprint[:12]}…); "
                "build the vocabulary with this tokenizer (fastmask.build_ngram_vocabulary / `fastmask ngrams`)"
            )

    # -- files
    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": self.tokenizer,
            "max_n": self.max_n,
            "min_count": self.min_count,
            "measure": self.measure,
            "size": self.size,
            "positions": list(self.positions),
            "ngrams": {str(n): entries for n, entries in sorted(self.ngrams.items())},
        }

    def save(self, path) -> None:
        """Write the vocabulary as JSON (the format in the module docstring)."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_json(), handle, ensure_ascii=False)

    @classmethod
    def load(cls, path) -> NgramVocabulary:
        """Read a file written by :meth:`save`; raises ValueError on another format or version."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not an n-gram vocabulary file (not JSON: {exc.msg})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a fastmask n-gram vocabulary (no format={FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(
                f"{path} has n-gram vocabulary format version {data.get('version')!r}; this fastmask reads "
                f"version {VERSION}: rebuild it with `fastmask ngrams`"
            )
        ngrams = {int(n): entries for n, entries in data["ngrams"].items()}
        return cls(
            ngrams=ngrams,
            max_n=int(data["max_n"]),
            min_count=int(data["min_count"]),
            measure=data["measure"],
            size=int(data["size"]),
            positions=list(data["positions"]),
            tokenizer=dict(data["tokenizer"]),
        )


# ----------------------------------------------------------------------------- building
def _check_int(name, value, lo, hi):
    from ._validation import check_int

    return check_int(name, value, minimum=lo, maximum=hi)


def _counter_class():
    module = _backend.cpp_module()
    if module is None or not hasattr(module, "NgramCounter"):
        reason = _backend.cpp_symbol_reason("NgramCounter") or "the C++ extension fastmask._C is not built"
        raise RuntimeError(f"build_ngram_vocabulary counts n-grams in C++: {reason}")
    return module.NgramCounter


def _source_kind(source) -> str:
    """``"dataset"``, ``"texts"`` or ``"ids"``."""
    datasets = sys.modules.get("datasets")  # not imported: source cannot be a Dataset (and the import costs ~1 s)
    if datasets is not None and isinstance(source, datasets.Dataset):
        return "dataset"
    if isinstance(source, (str, bytes)):
        raise TypeError("source is one string; pass a list of texts (e.g. [text]) or token-id rows")
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return "ids"
    return "sequence"


def _dataset_column(dataset) -> str:
    for column in ("input_ids", "text"):
        if column in dataset.column_names:
            return column
    raise ValueError(
        f"source is a datasets.Dataset with columns {dataset.column_names}; it needs an 'input_ids' or a 'text' column"
    )


def _flatten(rows) -> tuple[np.ndarray, np.ndarray]:
    lengths = [len(r) for r in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
    if ids.size and ids.min() < 0:
        raise ValueError(f"source holds the negative token id {int(ids.min())}; pass token ids >= 0")
    return ids, offsets


def _rows_of(batch, tokenizer, is_text: bool):
    if is_text:
        for text in batch:
            if not isinstance(text, str):
                raise TypeError(f"source mixes texts and {type(text).__name__}; pass only texts or only id rows")
        return tokenizer(list(batch), add_special_tokens=False)["input_ids"]
    rows = []
    for row in batch:
        if isinstance(row, torch.Tensor):
            row = row.tolist()
        elif isinstance(row, np.ndarray):
            row = row.tolist()
        if isinstance(row, str) or not all(isinstance(t, numbers.Integral) for t in row):
            raise TypeError("source id rows must hold integer token ids (or pass only texts)")
        rows.append(row)
    return rows


def _count_batch(counter, batch, tokenizer, flags: np.ndarray, is_text: bool) -> None:
    ids, offsets = _flatten(_rows_of(batch, tokenizer, is_text))
    counter.add_rows(ids, offsets, flags)


def _export(counter, min_count: int) -> dict:
    counts, offsets, tokens, _ = counter.words(min_count)
    out = {"word_counts": counts.tolist(), "word_offsets": offsets.tolist(), "word_tokens": tokens.tolist()}
    for n in range(2, counter.max_n + 1):
        idx, c = counter.entries(n, min_count)
        out[f"ngrams_{n}"] = idx.reshape(-1).tolist()
        out[f"counts_{n}"] = c.tolist()
    out["positions"] = list(counter.positions())
    return out


def _absorb(counter, exported: dict) -> None:
    ngrams = []
    for n in range(2, counter.max_n + 1):
        counts = np.asarray(exported[f"counts_{n}"], dtype=np.int64)
        ngrams.append((np.asarray(exported[f"ngrams_{n}"], dtype=np.int64).reshape(len(counts), n), counts))
    counter.absorb(
        np.asarray(exported["word_offsets"], dtype=np.int64),
        np.asarray(exported["word_tokens"], dtype=np.int64),
        np.asarray(exported["word_counts"], dtype=np.int64),
        ngrams,
    )


def _shard_map(batch, *, column, tokenizer, flags, max_n, min_count, is_text, chunk):
    """``datasets.map`` function: count one shard (a batch) and return its pruned export as one row."""
    counter = _counter_class()(max_n)
    values = batch[column]
    for start in range(0, len(values), chunk):
        _count_batch(counter, values[start : start + chunk], tokenizer, flags, is_text)
    exported = _export(counter, min_count)
    return {key: [value] for key, value in exported.items()}


def count_ngrams(
    source,
    tokenizer,
    *,
    max_n: int = 5,
    min_count: int = 1,
    num_proc: Optional[int] = None,
    shard_size: int = 100_000,
    batch_size: int = 1000,
    progress: bool = False,
):
    """A C++ ``NgramCounter`` holding the corpus' counts (see the module docstring for sources
    and sharding). ``min_count`` prunes only per shard, and only when ``num_proc > 1``."""
    kind = _source_kind(source)
    flags = vocab_flags(tokenizer)
    Counter = _counter_class()
    counter = Counter(max_n)
    if num_proc is not None and num_proc > 1:
        dataset, column, is_text = _as_dataset(source, kind)
        rows = len(dataset)
        if rows == 0:
            return counter, [0] * max_n
        shard_rows = max(1, min(shard_size, math.ceil(rows / num_proc)))
        exports = dataset.map(
            _shard_map,
            batched=True,
            batch_size=shard_rows,
            num_proc=min(num_proc, math.ceil(rows / shard_rows)),
            remove_columns=dataset.column_names,
            fn_kwargs=dict(
                column=column,
                tokenizer=tokenizer,
                flags=flags,
                max_n=max_n,
                min_count=min_count,
                is_text=is_text,
                chunk=batch_size,
            ),
            load_from_cache_file=False,
            new_fingerprint=f"fastmask-ngrams-{os.getpid()}-{id(counter)}",
            desc="counting n-grams" if progress else None,
        )
        positions = np.zeros(max_n, dtype=np.int64)
        for row in exports:
            _absorb(counter, row)
            positions += np.asarray(row["positions"], dtype=np.int64)
        return counter, positions.tolist()
    if kind == "dataset":
        column = _dataset_column(source)
        is_text = column == "text"
        total = len(source)
        batches = (source[start : start + batch_size][column] for start in range(0, total, batch_size))
    else:
        items = source if isinstance(source, Sequence) or kind == "ids" else list(source)
        total = len(items)
        is_text = total > 0 and isinstance(items[0], str)
        batches = (items[start : start + batch_size] for start in range(0, total, batch_size))
    bar = _progress(total, progress)
    for batch in batches:
        _count_batch(counter, batch, tokenizer, flags, is_text)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return counter, list(counter.positions())


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="counting n-grams", unit="rows")


def _as_dataset(source, kind: str):
    import datasets

    if kind == "dataset":
        column = _dataset_column(source)
        return source, column, column == "text"
    items = source if kind == "ids" else list(source)
    if kind == "ids":
        items = [list(map(int, row)) for row in (items.tolist() if hasattr(items, "tolist") else items)]
        return datasets.Dataset.from_dict({"input_ids": items}), "input_ids", False
    if items and isinstance(items[0], str):
        return datasets.Dataset.from_dict({"text": list(items)}), "text", True
    rows = [list(map(int, r)) for r in items]
    return datasets.Dataset.from_dict({"input_ids": rows}), "input_ids", False


def _budgets(size: int, available: dict) -> dict:
    """``size`` split evenly across the lengths (remainder to the shortest), leftovers passed on."""
    quota = {n: 0 for n in available}
    left = size
    open_lengths = sorted(n for n in available if available[n] > 0)
    while left > 0 and open_lengths:
        share, extra = divmod(left, len(open_lengths))
        for i, n in enumerate(open_lengths):
            quota[n] += share + (1 if i < extra else 0)
        left = 0
        for n in open_lengths:
            if quota[n] > available[n]:
                left += quota[n] - available[n]
                quota[n] = available[n]
        open_lengths = [n for n in open_lengths if quota[n] < available[n]]
    return quota


def _mix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def build_ngram_vocabulary(
    source,
    tokenizer,
    *,
    max_n: int = 5,
    min_count: int = 10,
    size: int = DEFAULT_SIZE,
    measure: str = "pmi",
    num_proc: Optional[int] = None,
    shard_size: int = 100_000,
    batch_size: int = 1000,
    progress: bool = False,
) -> NgramVocabulary:
    """Count the corpus' n-grams and keep the ``size`` best by PMI (see the module docstring).

    Args:
        source: texts (a list or iterable of str), token-id rows (lists, a 2-D tensor or array;
            special ids in them end a segment) or a ``datasets.Dataset`` with an ``input_ids``
            or a ``text`` column.
        tokenizer: a transformers tokenizer: tokenizes texts, defines words, fingerprints the file.
        max_n: longest n-gram in words, 2..8.
        min_count: fewest occurrences for an n-gram to be scored (and, with ``num_proc``, kept
            by a shard).
        size: n-grams kept in all, split across lengths (module docstring).
        measure: ``"pmi"`` (the paper's measure).
        num_proc: count shards of ``shard_size`` rows in that many processes (``datasets.map``).
        batch_size: texts tokenized (rows counted) per C++ call.
        progress: show a progress bar (tqdm).
    """
    max_n = _check_int("max_n", max_n, MIN_N, MAX_N)
    min_count = _check_int("min_count", min_count, 1, None)
    size = _check_int("size", size, 1, None)
    shard_size = _check_int("shard_size", shard_size, 1, None)
    batch_size = _check_int("batch_size", batch_size, 1, None)
    if measure not in MEASURES:
        raise ValueError(f"measure={measure!r} is not one of {MEASURES}")
    if num_proc is not None:
        num_proc = _check_int("num_proc", num_proc, 1, None)
    counter, positions = count_ngrams(
        source,
        tokenizer,
        max_n=max_n,
        min_count=min_count,
        num_proc=num_proc,
        shard_size=shard_size,
        batch_size=batch_size,
        progress=progress,
    )
    if positions[0] == 0:
        raise ValueError(
            "the corpus is empty: source produced no words (no texts, empty texts, or only special tokens); "
            "pass a non-empty corpus"
        )
    return _rank(counter, positions, tokenizer, max_n=max_n, min_count=min_count, size=size, measure=measure)


def _rank(counter, positions, tokenizer, *, max_n, min_count, size, measure) -> NgramVocabulary:
    counts_w, offsets_w, tokens_w, hashes_w = counter.words(min_count)
    word_hashes = hashes_w.astype(np.uint64)
    candidates = {}
    for n in range(2, max_n + 1):
        idx, counts = counter.entries(n, min_count)
        scores = counter.pmi_scores(n, min_count)
        keep = scores > 0
        idx, counts, scores = idx[keep], counts[keep], scores[keep]
        g = word_hashes[idx[:, 0]] if len(idx) else np.zeros(0, dtype=np.uint64)
        for j in range(1, n):
            g = _mix64(_mix64(g) ^ word_hashes[idx[:, j]])
        keys = g | np.uint64(1)
        # best first: score, then count, then key (a total order: the same on any machine)
        order = np.lexsort((keys, -counts, -scores))
        candidates[n] = (idx[order], counts[order], scores[order])
    quota = _budgets(size, {n: len(c[1]) for n, c in candidates.items()})
    offsets_w, tokens_w = offsets_w.tolist(), tokens_w.tolist()

    def word(i: int) -> list:
        return tokens_w[offsets_w[i] : offsets_w[i + 1]]

    ngrams = {}
    for n, (idx, counts, scores) in candidates.items():
        entries = []
        for row, count, score in zip(idx[: quota[n]].tolist(), counts.tolist(), scores.tolist()):
            words = [word(i) for i in row]
            text = tokenizer.decode([t for w in words for t in w])
            entries.append({"words": words, "text": text, "count": int(count), "score": round(float(score), 6)})
        ngrams[n] = entries
    return NgramVocabulary(
        ngrams=ngrams,
        max_n=max_n,
        min_count=min_count,
        measure=measure,
        size=size,
        positions=[int(p) for p in positions],
        tokenizer={
            "fingerprint": tokenizer_fingerprint(tokenizer),
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "scheme": _scheme(tokenizer),
        },
    )


def _scheme(tokenizer) -> str:
    from .words import detect_word_boundary_scheme

    return detect_word_boundary_scheme(tokenizer)


# ----------------------------------------------------------------------------- the unit op
def _cpp_units(plan: NgramUnitsPlan) -> torch.Tensor:
    out = torch.empty(plan.input_ids.shape, dtype=torch.uint8)
    _backend.cpp_kernels().ngram_units(plan.cpp_fields(), out.numpy())
    return out.view(torch.bool)


def _units_fake(plan: NgramUnitsPlan) -> torch.Tensor:
    return torch.empty(plan.input_ids.shape, dtype=torch.bool, device=plan.input_ids.device)


_NGRAM_UNITS = _backend.PlanOp(
    "ngram_units",
    NgramUnitsPlan,
    _units_fake,
    reference=_ref.reference_ngram_units,
    cpp=_cpp_units,
    triton=("ngrams", "triton_ngram_units"),
    returns=torch.Tensor,
)


def ngram_unit_starts(plan: MaskingPlan, vocabulary: NgramVocabulary, backend: str = "auto") -> torch.Tensor:
    """Bool ``[B, L]``: the first token of each PMI unit of a whole-word masking plan (module
    docstring: greedy longest vocabulary match, left to right)."""
    table = vocabulary.probe_table(plan.input_ids.device)
    return _NGRAM_UNITS(NgramUnitsPlan.of(plan, table, vocabulary.max_n), backend)


def _check_is_vocabulary(vocabulary) -> None:
    if not isinstance(vocabulary, NgramVocabulary):
        raise TypeError(
            f"ngram_vocabulary must be a fastmask.NgramVocabulary (build_ngram_vocabulary / NgramVocabulary.load), "
            f"got {type(vocabulary).__name__}"
        )


def check_vocabulary(vocabulary, tokenizer) -> None:
    """Raises TypeError for a non-vocabulary, ValueError for one built with another tokenizer."""
    _check_is_vocabulary(vocabulary)
    vocabulary.check_tokenizer(tokenizer)


def pmi_plan(plan: MaskingPlan, vocabulary, backend: str = "auto") -> MaskingPlan:
    """A whole-word plan whose words are the vocabulary's units (what ``strategy="pmi"`` runs)."""
    _check_is_vocabulary(vocabulary)
    return dataclasses.replace(plan, word_starts=ngram_unit_starts(plan, vocabulary, backend))


def _id_row(row, b: int) -> np.ndarray:
    values = np.asarray(row)
    if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
        raise ValueError(
            f"input_ids[{b}] must be a flat row of integer token ids, got {values.ndim} dimensions of {values.dtype}; "
            "pass a list of rows (a datasets batch column) or an int [B, L] tensor"
        )
    return values.astype(np.int64)


def ngram_unit_ids(input_ids, vocabulary: NgramVocabulary, tokenizer, *, backend: str = "auto"):
    """PMI units as ``word_ids``, computed once when the data is tokenized: a unit's tokens share
    its index (0, 1, ... per row), special and padding tokens get ``-1``.

    Units depend on the token ids alone, not on the seed or the epoch. Stored as a ``word_ids``
    column (``dataset.map(lambda b: {"word_ids": ngram_unit_ids(b["input_ids"], vocabulary, tok)},
    batched=True)``), they let ``DataCollatorForLanguageModeling(tok, strategy="whole_word")`` mask
    exactly what ``strategy="pmi"`` masks on the fly, at the cost of whole-word masking.

    Args:
        input_ids: token-id rows (lists of ints, ragged allowed) or an int ``[B, L]`` tensor.
        vocabulary: built with ``tokenizer`` (checked); words come from ``tokenizer``'s word
            starts and its special ids are not part of any unit, as in the collator.

    Returns:
        The rows as lists of ints (for lists) or an int64 ``[B, L]`` tensor (for a tensor).
    """
    from . import masking
    from .reference.masking import plan_units
    from .words import word_start_table

    check_vocabulary(vocabulary, tokenizer)
    as_rows = not isinstance(input_ids, torch.Tensor)
    if as_rows:
        rows = [_id_row(row, b) for b, row in enumerate(input_ids)]
        lengths = [len(row) for row in rows]
        ids = np.zeros((len(rows), max(lengths, default=0)), dtype=np.int64)
        attention = np.zeros(ids.shape, dtype=bool)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = row
            attention[b, : len(row)] = True
        ids, attention = torch.from_numpy(ids), torch.from_numpy(attention)
    else:
        ids, attention = input_ids, None
    plan = masking.plan_masking(
        ids,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        strategy="whole_word",
        word_start_table=word_start_table(tokenizer),
        special_token_ids=tokenizer.all_special_ids,
        pad_token_id=tokenizer.pad_token_id,
        attention_mask=attention,
        ids_beyond_vocab=True,
    )
    eligible, _ = plan_units(plan)
    starts = ngram_unit_starts(plan, vocabulary, backend)
    unit_ids = torch.where(eligible, starts.to(torch.int64).cumsum(1) - 1, -1)
    if not as_rows:
        return unit_ids
    return [row[:n] for row, n in zip(unit_ids.tolist(), lengths)]


# ----------------------------------------------------------------------------- embedded corpus
def embedded_ngram_vocabulary(
    tokenizer, *, max_n: int = 5, min_count: int = 5, size: int = 20_000, cache: bool = True
) -> NgramVocabulary:
    """A PMI vocabulary of the embedded corpus (:func:`fastmask.data.corpus_texts`) for
    ``tokenizer``: loaded from the cache folder (:func:`fastmask.data.cache_dir`) when a file
    built with the same tokenizer and settings is there, else built (seconds) and saved."""
    from . import data

    fingerprint = tokenizer_fingerprint(tokenizer)
    path = data.cache_dir() / f"ngrams-{fingerprint[:16]}-n{max_n}-c{min_count}-s{size}.json"
    if cache and path.is_file():
        try:
            vocabulary = NgramVocabulary.load(path)
            vocabulary.check_tokenizer(tokenizer)
            return vocabulary
        except (ValueError, KeyError, OSError):
            pass  # a stale or broken cache file: rebuild it
    vocabulary = build_ngram_vocabulary(data.corpus_texts(), tokenizer, max_n=max_n, min_count=min_count, size=size)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        vocabulary.save(tmp)
        os.replace(tmp, path)
    return vocabulary
