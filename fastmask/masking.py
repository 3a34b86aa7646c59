"""The masking op: selection (token / whole word / span), budget, and 80/10/10 replacement.

``mask_tokens`` is two steps, each public: :func:`plan_masking` validates and normalises the
arguments into a :class:`~fastmask.masking_plan.MaskingPlan` (tables, integer thresholds,
seeds), and :func:`run_masking` hands the plan to one of three implementations that return
bit-identical results: the pure-torch reference (:mod:`fastmask.reference.masking`, which
documents the exact semantics), the C++ kernel (``csrc/masking.cpp``) and the Triton kernel
(:mod:`fastmask.kernels.masking`). The kernels see contiguous buffers, tables and integer
thresholds only.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch

from . import _backend, _rng
from ._constants import IGNORE_INDEX
from ._op_rows import as_batch, unbatch
from ._validation import (
    check_choice,
    check_int,
    check_probability,
    check_same_shape,
    check_tensor,
    check_token_rows,
    value_range,
)
from .masking_plan import BUDGETS, FLAG_SPECIAL, FLAG_WORD_START, STRATEGIES, MaskingPlan
from .reference.masking import reference_mask_tokens

SPAN_DISTRIBUTIONS = ("geometric", "uniform")
# what mask_tokens accepts: the kernels' strategies and "pmi" (whole-word masking over the units
# of an n-gram vocabulary, fastmask.ngrams)
MASK_STRATEGIES = STRATEGIES + ("pmi",)
MAX_SPAN_WORDS = 256
WEIGHT_BITS = 16
# Integer thresholds with token weights stay below 2**63: 2**24 * 2**16 * units.
MAX_WEIGHTED_LENGTH = 1 << 22
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

__all__ = ["mask_tokens", "plan_masking", "run_masking", "STRATEGIES", "BUDGETS", "SPAN_DISTRIBUTIONS", "IGNORE_INDEX"]


# ----------------------------------------------------------------------------- backends
def _cpp_impl(plan: MaskingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    masked = torch.empty_like(plan.input_ids)
    labels = torch.empty(plan.input_ids.shape, dtype=torch.int64)
    _backend.cpp_kernels().mask_tokens(plan.cpp_fields(), masked.numpy(), labels.numpy())
    return masked, labels


def _mask_tokens_fake(plan: MaskingPlan) -> tuple[torch.Tensor, torch.Tensor]:
    ids = plan.input_ids
    return torch.empty_like(ids), torch.empty(ids.shape, dtype=torch.int64, device=ids.device)


_MASK_TOKENS = _backend.PlanOp(
    "mask_tokens",
    MaskingPlan,
    _mask_tokens_fake,
    reference=reference_mask_tokens,
    cpp=_cpp_impl,
    triton=("masking", "triton_mask_tokens"),
)
_mask_tokens_op = _MASK_TOKENS.custom_op


# ----------------------------------------------------------------------------- tables
@functools.lru_cache(maxsize=64)
def _span_tables(distribution: str, span_p: float, max_span_words: int) -> tuple[tuple[int, ...], list[float]]:
    probs = _rng.span_length_distribution(distribution, span_p, max_span_words)
    return tuple(_rng.span_length_thresholds(probs)), probs


@functools.lru_cache(maxsize=256)
def _span_anchor_threshold(p: float, distribution: str, span_p: float, max_span_words: int) -> int:
    probs = _span_tables(distribution, span_p, max_span_words)[1]
    return _rng.probability_threshold(_rng.span_anchor_probability(p, probs))


@functools.lru_cache(maxsize=64)
def _budget_table_cpu(p: float, length: int) -> torch.Tensor:
    return _rng.exact_budget_table(p, length)


class _TableCache:
    """Derived per-vocabulary tables (flags, quantised weights), memoised per source tensor.

    An entry holds a weak reference to its source tensor and the tensor's ``_version``, and is
    used only while that very tensor is alive and unmodified: a new tensor allocated at a freed
    one's address, or an in-place edit, never reuses an old table. Not used while
    ``torch.compile`` traces (the graph then builds the table itself).
    """

    MAX_ENTRIES = 32

    def __init__(self):
        self._entries: dict = {}

    def get(self, kind: str, source: Optional[torch.Tensor], extra, build):
        if torch.compiler.is_compiling():
            return build()
        key = (kind, None if source is None else id(source), extra)
        version = None if source is None else source._version
        entry = self._entries.get(key)
        if entry is not None:
            ref, cached_version, table = entry
            if (source is None or ref() is source) and cached_version == version:
                return table
        table = build()
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {k: e for k, e in self._entries.items() if e[0] is None or e[0]() is not None}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        self._entries[key] = (None if source is None else weakref.ref(source), version, table)
        return table

    def clear(self) -> None:
        self._entries.clear()


_TABLE_CACHE = _TableCache()


def _vocab_flags(
    word_start_table: Optional[torch.Tensor], special_token_ids: Optional[tuple[int, ...]], device
) -> Optional[torch.Tensor]:
    if word_start_table is None and not special_token_ids:
        return None

    def build():
        size = 0 if word_start_table is None else word_start_table.numel()
        if special_token_ids:
            size = max(size, max(special_token_ids) + 1)
        flags = torch.full((size,), FLAG_WORD_START, dtype=torch.uint8)
        if word_start_table is not None:
            starts = word_start_table.detach().to("cpu", torch.bool)
            flags[: starts.numel()] = torch.where(starts, FLAG_WORD_START, 0).to(torch.uint8)
        if special_token_ids:
            flags[list(special_token_ids)] |= FLAG_SPECIAL
        return flags.to(device)

    return _TABLE_CACHE.get("flags", word_start_table, (special_token_ids, str(device)), build)


def quantize_token_weights(token_weights: torch.Tensor) -> torch.Tensor:
    """Weights as int32 in [0, 2**16], relative to the largest (the kernels' integer form)."""
    weights = token_weights.detach().to(torch.float64)
    top = weights.max()
    if top <= 0:
        return torch.zeros(weights.shape, dtype=torch.int32, device=weights.device)
    return torch.round(weights / top * (1 << WEIGHT_BITS)).to(torch.int32)


def remember_quantized_weights(token_weights: torch.Tensor, quantized: torch.Tensor) -> None:
    """Records ``quantized`` (``quantize_token_weights(token_weights)``, computed elsewhere, e.g.
    by a :class:`fastmask.TokenLossTracker` when it publishes) as the CPU table of the CPU tensor
    ``token_weights``, so masking with it skips the quantisation."""
    _TABLE_CACHE.get("weights", token_weights, "cpu", lambda: quantized)


def _weights_q(token_weights: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
    if token_weights is None:
        return None
    return _TABLE_CACHE.get(
        "weights", token_weights, str(device), lambda: quantize_token_weights(token_weights).to(device)
    )


# ----------------------------------------------------------------------------- validation
def _as_mask(name: str, value, input_ids: torch.Tensor) -> Optional[torch.Tensor]:
    if value is None:
        return None
    check_tensor(name, value, dtypes=_MASK_DTYPES)
    check_same_shape(name, value, "input_ids", input_ids)
    if value.dtype != torch.bool:
        # numpy on CPU: torch's elementwise ops spin up intra-op threads for large batches
        value = torch.from_numpy(value.numpy() != 0) if value.device.type == "cpu" else value != 0
    return value.to(input_ids.device).contiguous()


def _check_ids(input_ids: torch.Tensor, vocab_size: Optional[int]) -> Optional[tuple[int, int]]:
    """``(min, max)`` of the ids, checked to lie in ``[0, vocab_size)`` (only ``>= 0`` when
    ``vocab_size`` is None). None while ``torch.compile`` traces: the check is data-dependent,
    and the kernels still bound every table lookup."""
    if torch.compiler.is_compiling():
        return None
    lo, hi = value_range(input_ids)
    if lo < 0:
        raise ValueError(
            f"input_ids contains the negative id {lo}; ids must be >= 0 (pad with the pad token's id, "
            "not -100: labels use -100, input_ids do not)"
        )
    if vocab_size is not None and hi >= vocab_size:
        raise ValueError(
            f"input_ids contains id {hi}, outside [0, vocab_size={vocab_size}); pass ids of this vocabulary "
            "or the vocab_size that covers them"
        )
    return lo, hi


def _check_ids_in_table(name: str, table_size: int, id_range: Optional[tuple[int, int]]) -> None:
    if id_range is not None and id_range[1] >= table_size:
        raise ValueError(
            f"input_ids contains id {id_range[1]}, outside {name} (size {table_size}); pass a table "
            f"that covers every id in input_ids (ids 0..{table_size - 1})"
        )


@functools.lru_cache(maxsize=64)
def _default_row_keys(batch: int, device: torch.device) -> torch.Tensor:
    return torch.arange(batch, dtype=torch.int64, device=device)  # plans only read it


@functools.lru_cache(maxsize=64)
def _int32_constant(values: tuple, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)  # plans only read it


def _row_keys(row_keys, batch: int, device) -> torch.Tensor:
    if row_keys is None:
        if torch.compiler.is_compiling():
            return torch.arange(batch, dtype=torch.int64, device=device)
        return _default_row_keys(batch, device)
    if not isinstance(row_keys, torch.Tensor):
        try:
            array = np.asarray(row_keys)
            if array.dtype.kind not in "iu":
                raise TypeError(f"got dtype {array.dtype}")
            row_keys = torch.as_tensor(array.astype(np.int64))
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"row_keys must be a sequence of ints or an integer tensor ({exc})") from None
    check_tensor("row_keys", row_keys, dtypes=(torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8))
    row_keys = row_keys.reshape(-1)
    if row_keys.numel() != batch:
        raise ValueError(
            f"row_keys has {row_keys.numel()} entries but input_ids has {batch} rows; give one key per row"
        )
    return row_keys.to(device=device, dtype=torch.int64).contiguous()


# ----------------------------------------------------------------------------- plan / run
def run_masking(plan: MaskingPlan, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked_input_ids, labels)`` for a plan from :func:`plan_masking`, on ``backend``
    (``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``)."""
    return _MASK_TOKENS(plan, backend)


def plan_masking(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    special_tokens_mask: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    word_starts: Optional[torch.Tensor] = None,
    word_start_table: Optional[torch.Tensor] = None,
    special_token_ids: Optional[Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    strategy: str = "token",
    budget: str = "bernoulli",
    span_distribution: str = "geometric",
    span_p: float = 0.2,
    max_span_words: int = 10,
    token_weights: Optional[torch.Tensor] = None,
    seed: int = 0,
    row_keys: Union[torch.Tensor, Sequence[int], None] = None,
    ids_beyond_vocab: bool = False,
) -> MaskingPlan:
    """Validate :func:`mask_tokens`' arguments (``input_ids`` ``[B, L]``) into a plan.

    ``ids_beyond_vocab=True`` (what the collators pass, like transformers' collators) accepts
    ids at or past ``vocab_size``: they are masked like any other, random ids still come from
    ``[0, vocab_size)``. Negative ids are always an error.
    """
    batch, length = check_token_rows(input_ids, max_length=_rng.MAX_SEQUENCE_LENGTH)
    device = input_ids.device
    id_max = torch.iinfo(input_ids.dtype).max
    # random ids are (draw * vocab_size) >> 32 in int64: vocab_size must stay below 2**31
    vocab_size = check_int("vocab_size", vocab_size, minimum=1, maximum=min(id_max + 1, 2**31))
    mask_token_id = check_int("mask_token_id", mask_token_id, minimum=0, maximum=vocab_size - 1)
    mlm_probability = check_probability("mlm_probability", mlm_probability)
    t_mask, t_mask_or_random = _replacement_thresholds(mask_replace_prob, random_replace_prob)
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("budget", budget, BUDGETS)
    check_choice("span_distribution", span_distribution, SPAN_DISTRIBUTIONS)
    max_span_words = check_int("max_span_words", max_span_words, minimum=1, maximum=MAX_SPAN_WORDS)
    span_p = check_probability("span_p", span_p)
    if span_p == 0.0 and strategy == "span" and span_distribution == "geometric":
        raise ValueError("span_p=0 gives no geometric span length; pass span_p in (0, 1]")
    seed = check_int("seed", seed)
    if pad_token_id is not None:
        pad_token_id = check_int("pad_token_id", pad_token_id, minimum=-(1 << 63), maximum=(1 << 63) - 1)
    if special_token_ids is not None:
        special_token_ids = tuple(
            check_int("special_token_ids[]", i, minimum=0, maximum=vocab_size - 1) for i in special_token_ids
        )

    input_ids = input_ids.contiguous()
    id_range = _check_ids(input_ids, None if ids_beyond_vocab else vocab_size)
    special_mask = _as_mask("special_tokens_mask", special_tokens_mask, input_ids)
    starts = _as_mask("word_starts", word_starts, input_ids)
    if word_start_table is not None:
        check_tensor("word_start_table", word_start_table, dtypes=_MASK_DTYPES, dim=1)
        if starts is None and strategy != "token":
            _check_ids_in_table("word_start_table", word_start_table.numel(), id_range)
        else:
            word_start_table = None  # not consulted
    if strategy != "token" and starts is None and word_start_table is None:
        raise ValueError(
            f"strategy={strategy!r} needs word boundaries: pass word_starts=[B, L] bool "
            "(see fastmask.words) or word_start_table=fastmask.word_start_table(tokenizer)"
        )
    if special_mask is not None:
        special_token_ids = None  # the mask wins
    if token_weights is not None:
        _check_token_weights(token_weights, budget, length, id_range)

    if strategy == "span":  # span lengths matter only for spans
        span_thresholds, _ = _span_tables(span_distribution, span_p, max_span_words)
        select_threshold = _span_anchor_threshold(mlm_probability, span_distribution, span_p, max_span_words)
    else:
        span_thresholds = ()
        select_threshold = _rng.probability_threshold(mlm_probability)
    exact = budget == "exact"
    mix1, mix2 = _rng.seed_mix(seed)
    return MaskingPlan(
        input_ids=input_ids,
        row_keys=_row_keys(row_keys, batch, device),
        span_thresholds=(
            torch.tensor(span_thresholds, dtype=torch.int32, device=device)
            if torch.compiler.is_compiling()
            else _int32_constant(tuple(span_thresholds), device)
        ),
        special_mask=special_mask,
        attention_mask=_as_mask("attention_mask", attention_mask, input_ids),
        word_starts=starts,
        vocab_flags=_vocab_flags(word_start_table, special_token_ids, device),
        weights_q=_weights_q(token_weights, device),
        budget_table=_budget_table_cpu(mlm_probability, length).to(device) if exact else None,
        seed_mix1=mix1,
        seed_mix2=mix2,
        strategy=STRATEGIES.index(strategy),
        exact=exact,
        pad_token_id=-1 if pad_token_id is None else pad_token_id,
        select_threshold=select_threshold,
        mask_token_id=mask_token_id,
        vocab_size=vocab_size,
        replace_mask_threshold=t_mask,
        replace_random_threshold=t_mask_or_random,
    )


def _replacement_thresholds(mask_replace_prob, random_replace_prob) -> tuple[int, int]:
    mask_replace_prob = check_probability("mask_replace_prob", mask_replace_prob)
    random_replace_prob = check_probability("random_replace_prob", random_replace_prob)
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-12:
        raise ValueError(
            f"mask_replace_prob + random_replace_prob = {mask_replace_prob + random_replace_prob} "
            "exceeds 1; lower one of them"
        )
    return (
        _rng.probability_threshold(mask_replace_prob),
        _rng.probability_threshold(mask_replace_prob + random_replace_prob),
    )


def _check_token_weights(token_weights, budget: str, length: int, id_range) -> None:
    check_tensor("token_weights", token_weights, dtypes=_WEIGHT_DTYPES, dim=1)
    if budget != "bernoulli":
        raise ValueError("token_weights works with budget='bernoulli' only; drop token_weights or the exact budget")
    if not torch.compiler.is_compiling() and (
        not bool(torch.isfinite(token_weights).all()) or bool((token_weights < 0).any())
    ):
        raise ValueError("token_weights must be finite and non-negative")
    if length > MAX_WEIGHTED_LENGTH:
        raise ValueError(f"token_weights supports rows of at most {MAX_WEIGHTED_LENGTH} tokens, got {length}")
    _check_ids_in_table("token_weights", token_weights.numel(), id_range)


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    special_tokens_mask: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    word_starts: Optional[torch.Tensor] = None,
    word_start_table: Optional[torch.Tensor] = None,
    special_token_ids: Optional[Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    strategy: str = "token",
    budget: str = "bernoulli",
    span_distribution: str = "geometric",
    span_p: float = 0.2,
    max_span_words: int = 10,
    token_weights: Optional[torch.Tensor] = None,
    seed: int = 0,
    row_keys: Union[torch.Tensor, Sequence[int], None] = None,
    backend: str = "auto",
    ngram_vocabulary=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select tokens for masked-language modelling and corrupt them (80/10/10).

    Args:
        input_ids: ``[B, L]`` (or ``[L]``) int64 or int32 token ids, CPU or CUDA; not modified.
        mask_token_id: id written at ``mask_replace_prob`` of the selected positions.
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)``.
        mlm_probability: fraction of eligible tokens to select (per unit for ``bernoulli``).
        mask_replace_prob, random_replace_prob: replacement split; the rest stay unchanged.
        special_tokens_mask: ``[B, L]``, nonzero at tokens never to select.
        attention_mask: ``[B, L]``, zero at padding (never selected).
        word_starts: ``[B, L]`` bool, True where a token starts a word (see
            :mod:`fastmask.words` for building it from ``offset_mapping`` or ``word_ids``).
        word_start_table: ``[V]`` bool, per vocabulary id (:func:`fastmask.word_start_table`);
            used when ``word_starts`` is None. Every id must lie inside it.
        special_token_ids: ids treated as special when ``special_tokens_mask`` is None.
        pad_token_id: id never selected.
        strategy: ``"token"``, ``"whole_word"``, ``"span"`` (spans of whole words) or ``"pmi"``
            (whole-word masking whose units are ``ngram_vocabulary``'s n-grams, greedy longest
            match left to right, and single words elsewhere; :mod:`fastmask.ngrams`).
        budget: ``"bernoulli"`` (each unit independently) or ``"exact"``
            (``floor(p * eligible + 0.5)`` tokens per row, BERT's greedy rule for words).
        span_distribution, span_p, max_span_words: span lengths in words, geometric(span_p)
            or uniform, over 1..max_span_words.
        token_weights: ``[V]`` non-negative floats scaling each unit's probability (conditional
            masking), renormalised per row so the expected number of units stays
            ``mlm_probability`` of them; ``bernoulli`` budget only.
        seed, row_keys: the generator's key; ``row_keys`` (``[B]`` ints) default to 0..B-1.
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``.
        ngram_vocabulary: a :class:`fastmask.NgramVocabulary` (``strategy="pmi"`` only), built
            with the tokenizer of ``input_ids``.

    Returns:
        ``(masked_input_ids, labels)``: ids with ``input_ids``' shape, dtype and device, and
        int64 labels holding the original id at selected positions and -100 elsewhere.
    """
    _backend.check_backend_name(backend)
    check_choice("strategy", strategy, MASK_STRATEGIES)
    pmi = strategy == "pmi"
    if pmi and ngram_vocabulary is None:
        raise ValueError(
            "strategy='pmi' needs ngram_vocabulary= (fastmask.build_ngram_vocabulary or NgramVocabulary.load)"
        )
    if ngram_vocabulary is not None and not pmi:
        raise ValueError(f"ngram_vocabulary is used by strategy='pmi' only, got strategy={strategy!r}")
    one_row, input_ids, special_tokens_mask, attention_mask, word_starts = as_batch(
        input_ids, special_tokens_mask=special_tokens_mask, attention_mask=attention_mask, word_starts=word_starts
    )
    plan = plan_masking(
        input_ids,
        mask_token_id=mask_token_id,
        vocab_size=vocab_size,
        mlm_probability=mlm_probability,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
        special_tokens_mask=special_tokens_mask,
        attention_mask=attention_mask,
        word_starts=word_starts,
        word_start_table=word_start_table,
        special_token_ids=special_token_ids,
        pad_token_id=pad_token_id,
        strategy="whole_word" if pmi else strategy,
        budget=budget,
        span_distribution=span_distribution,
        span_p=span_p,
        max_span_words=max_span_words,
        token_weights=token_weights,
        seed=seed,
        row_keys=row_keys,
    )
    if pmi:
        from .ngrams import pmi_plan

        plan = pmi_plan(plan, ngram_vocabulary, backend)
    return unbatch(one_row, run_masking(plan, backend))
