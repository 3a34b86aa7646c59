"""The masking op: selection (token / whole word / span), budget, and 80/10/10 replacement.

``mask_tokens`` validates and normalises its arguments, then dispatches to one of three
implementations that return bit-identical results: the pure-torch reference
(:mod:`fastmask.reference.masking`, which documents the exact semantics), the C++ kernel
(``csrc/masking.cpp``) and the Triton kernel (:mod:`fastmask.kernels.masking`). The kernels see
contiguous buffers, tables and integer thresholds only.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import _backend, _rng
from ._validation import check_choice, check_int, check_probability, check_same_shape, check_tensor, value_range
from .reference.masking import FLAG_SPECIAL, FLAG_WORD_START, IGNORE_INDEX, reference_mask_tokens

STRATEGIES = ("token", "whole_word", "span")
BUDGETS = ("bernoulli", "exact")
SPAN_DISTRIBUTIONS = ("geometric", "uniform")
MAX_SPAN_WORDS = 256
WEIGHT_BITS = 16
# Integer thresholds with token weights stay below 2**63: 2**24 * 2**16 * units.
MAX_WEIGHTED_LENGTH = 1 << 22
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_ID_DTYPES = (torch.int32, torch.int64)

__all__ = ["mask_tokens", "STRATEGIES", "BUDGETS", "SPAN_DISTRIBUTIONS", "IGNORE_INDEX"]


# ----------------------------------------------------------------------------- backends
def _cpp_impl(
    input_ids, special_mask, attention_mask, word_starts, vocab_flags, weights_q, row_keys,
    span_thresholds, budget_table, seed_mix1, seed_mix2, strategy, exact, pad_token_id,
    select_threshold, mask_token_id, vocab_size, replace_mask_threshold, replace_random_threshold,
):
    module = _backend.cpp_kernels()
    masked = torch.empty_like(input_ids)
    labels = torch.empty(input_ids.shape, dtype=torch.int64, device=input_ids.device)

    def buffer(t):
        if t is None:
            return None
        return (t.view(torch.uint8) if t.dtype == torch.bool else t).numpy()

    module.mask_tokens(
        buffer(input_ids), buffer(masked), buffer(labels),
        buffer(special_mask), buffer(attention_mask), buffer(word_starts),
        buffer(vocab_flags), buffer(weights_q), buffer(row_keys),
        buffer(span_thresholds), buffer(budget_table),
        seed_mix1, seed_mix2, strategy, exact, pad_token_id, select_threshold,
        mask_token_id, vocab_size, replace_mask_threshold, replace_random_threshold,
    )
    return masked, labels


def _triton_impl(*args):
    from .kernels.masking import triton_mask_tokens

    return triton_mask_tokens(*args)


def _reference_impl(
    input_ids, special_mask, attention_mask, word_starts, vocab_flags, weights_q, row_keys,
    span_thresholds, budget_table, seed_mix1, seed_mix2, strategy, exact, pad_token_id,
    select_threshold, mask_token_id, vocab_size, replace_mask_threshold, replace_random_threshold,
):
    return reference_mask_tokens(
        input_ids,
        mask_token_id=mask_token_id,
        vocab_size=vocab_size,
        replace_mask_threshold=replace_mask_threshold,
        replace_random_threshold=replace_random_threshold,
        special_mask=special_mask,
        attention_mask=attention_mask,
        word_starts=word_starts,
        vocab_flags=vocab_flags,
        weights_q=weights_q,
        row_keys=row_keys,
        seed_mix1=seed_mix1,
        seed_mix2=seed_mix2,
        strategy=STRATEGIES[strategy],
        budget="exact" if exact else "bernoulli",
        pad_token_id=pad_token_id,
        select_threshold=select_threshold,
        span_thresholds=span_thresholds.tolist(),
        budget_table=budget_table,
    )


_IMPLS = {"reference": _reference_impl, "cpp": _cpp_impl, "triton": _triton_impl}


@torch.library.custom_op("fastmask::mask_tokens", mutates_args=())
def _mask_tokens_op(
    input_ids: torch.Tensor,
    special_mask: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor],
    word_starts: Optional[torch.Tensor],
    vocab_flags: Optional[torch.Tensor],
    weights_q: Optional[torch.Tensor],
    row_keys: torch.Tensor,
    span_thresholds: torch.Tensor,
    budget_table: Optional[torch.Tensor],
    seed_mix1: int,
    seed_mix2: int,
    strategy: int,
    exact: bool,
    pad_token_id: int,
    select_threshold: int,
    mask_token_id: int,
    vocab_size: int,
    replace_mask_threshold: int,
    replace_random_threshold: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _IMPLS[backend](
        input_ids, special_mask, attention_mask, word_starts, vocab_flags, weights_q, row_keys,
        span_thresholds, budget_table, seed_mix1, seed_mix2, strategy, exact, pad_token_id,
        select_threshold, mask_token_id, vocab_size, replace_mask_threshold, replace_random_threshold,
    )


@_mask_tokens_op.register_fake
def _mask_tokens_fake(input_ids, *args):
    return torch.empty_like(input_ids), torch.empty(input_ids.shape, dtype=torch.int64, device=input_ids.device)


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


_TABLE_CACHE: dict = {}


def _cached_table(key, build):
    """Small memo for per-vocabulary tables, keyed by tensor identity and version (not used
    while torch.compile traces: the graph then builds the table itself)."""
    if torch.compiler.is_compiling():
        return build()
    table = _TABLE_CACHE.get(key)
    if table is None:
        if len(_TABLE_CACHE) > 32:
            _TABLE_CACHE.clear()
        table = _TABLE_CACHE[key] = build()
    return table


def _tensor_key(t: Optional[torch.Tensor]):
    if t is None or torch.compiler.is_compiling():
        return None
    return (t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device)


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

    return _cached_table(("flags", _tensor_key(word_start_table), special_token_ids, str(device)), build)


def quantize_token_weights(token_weights: torch.Tensor) -> torch.Tensor:
    """Weights as int32 in [0, 2**16], relative to the largest (the kernels' integer form)."""
    weights = token_weights.detach().to(torch.float64)
    top = weights.max()
    if top <= 0:
        return torch.zeros(weights.shape, dtype=torch.int32, device=weights.device)
    return torch.round(weights / top * (1 << WEIGHT_BITS)).to(torch.int32)


def _weights_q(token_weights: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
    if token_weights is None:
        return None
    return _cached_table(
        ("weights", _tensor_key(token_weights), str(device)),
        lambda: quantize_token_weights(token_weights).to(device),
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


def _check_ids_in_table(name: str, table_size: int, ids: torch.Tensor) -> None:
    if torch.compiler.is_compiling():
        return  # data-dependent; the kernels still bounds-guard every table lookup
    lo, hi = value_range(ids)
    if lo < 0 or hi >= table_size:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"input_ids contains id {bad}, outside {name} (size {table_size}); pass a table "
            f"that covers every id in input_ids (ids 0..{table_size - 1})"
        )


def _row_keys(row_keys, batch: int, device) -> torch.Tensor:
    if row_keys is None:
        return torch.arange(batch, dtype=torch.int64, device=device)
    if not isinstance(row_keys, torch.Tensor):
        try:
            row_keys = torch.as_tensor(np.asarray(row_keys, dtype=np.int64))
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"row_keys must be a sequence of ints or an integer tensor ({exc})") from None
    check_tensor("row_keys", row_keys, dtypes=(torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8))
    row_keys = row_keys.reshape(-1)
    if row_keys.numel() != batch:
        raise ValueError(f"row_keys has {row_keys.numel()} entries but input_ids has {batch} rows; give one key per row")
    return row_keys.to(device=device, dtype=torch.int64).contiguous()


@torch.compiler.assume_constant_result
def _choose_backend(backend: str, device_type: str, batch: int, length: int, strategy: str, exact: bool) -> str:
    call_reasons = {"cpp": _backend.cpp_symbol_reason("mask_tokens")}
    if device_type != "cpu" or _backend.triton_interpreting():
        try:
            from .kernels.masking import triton_call_reason

            call_reasons["triton"] = triton_call_reason(batch, length, strategy, exact)
        except ImportError:
            pass
    return _backend.resolve_backend(backend, torch.device(device_type), op="mask_tokens", call_reasons=call_reasons)


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
        strategy: ``"token"``, ``"whole_word"`` or ``"span"`` (spans of whole words).
        budget: ``"bernoulli"`` (each unit independently) or ``"exact"``
            (``floor(p * eligible + 0.5)`` tokens per row, BERT's greedy rule for words).
        span_distribution, span_p, max_span_words: span lengths in words, geometric(span_p)
            or uniform, over 1..max_span_words.
        token_weights: ``[V]`` non-negative floats scaling each unit's probability (conditional
            masking), renormalised per row so the expected number of units stays
            ``mlm_probability`` of them; ``bernoulli`` budget only.
        seed, row_keys: the generator's key; ``row_keys`` (``[B]`` ints) default to 0..B-1.
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``.

    Returns:
        ``(masked_input_ids, labels)``: ids with ``input_ids``' shape, dtype and device, and
        int64 labels holding the original id at selected positions and -100 elsewhere.
    """
    check_tensor("input_ids", input_ids, dtypes=_ID_DTYPES)
    squeeze = input_ids.dim() == 1
    if squeeze:
        input_ids = input_ids.unsqueeze(0)
        special_tokens_mask = None if special_tokens_mask is None else special_tokens_mask.reshape(1, -1)
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
        word_starts = None if word_starts is None else word_starts.reshape(1, -1)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length] (or [length]), got shape {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if batch == 0 or length == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); pass at least one token")
    if length >= _rng.MAX_SEQUENCE_LENGTH:
        raise ValueError(f"input_ids rows have {length} tokens; at most {_rng.MAX_SEQUENCE_LENGTH - 1} are supported")
    device = input_ids.device
    id_max = torch.iinfo(input_ids.dtype).max
    # random ids are (draw * vocab_size) >> 32 in int64: vocab_size must stay below 2**31
    vocab_size = check_int("vocab_size", vocab_size, minimum=1, maximum=min(id_max + 1, 2**31))
    mask_token_id = check_int("mask_token_id", mask_token_id, minimum=0, maximum=id_max)
    mlm_probability = check_probability("mlm_probability", mlm_probability)
    mask_replace_prob = check_probability("mask_replace_prob", mask_replace_prob)
    random_replace_prob = check_probability("random_replace_prob", random_replace_prob)
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-12:
        raise ValueError(
            f"mask_replace_prob + random_replace_prob = {mask_replace_prob + random_replace_prob} "
            "exceeds 1; lower one of them"
        )
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("budget", budget, BUDGETS)
    check_choice("span_distribution", span_distribution, SPAN_DISTRIBUTIONS)
    max_span_words = check_int("max_span_words", max_span_words, minimum=1, maximum=MAX_SPAN_WORDS)
    span_p = check_probability("span_p", span_p)
    if span_p == 0.0 and strategy == "span" and span_distribution == "geometric":
        raise ValueError("span_p=0 gives no geometric span length; pass span_p in (0, 1]")
    seed = check_int("seed", seed)
    _backend.check_backend_name(backend)
    if pad_token_id is not None:
        pad_token_id = check_int("pad_token_id", pad_token_id)
    if special_token_ids is not None:
        special_token_ids = tuple(
            check_int("special_token_ids[]", i, minimum=0, maximum=1 << 31) for i in special_token_ids
        )

    input_ids = input_ids.contiguous()
    special_mask = _as_mask("special_tokens_mask", special_tokens_mask, input_ids)
    attention = _as_mask("attention_mask", attention_mask, input_ids)
    starts = _as_mask("word_starts", word_starts, input_ids)
    if word_start_table is not None:
        check_tensor("word_start_table", word_start_table, dtypes=_MASK_DTYPES, dim=1)
        if starts is None and strategy != "token":
            _check_ids_in_table("word_start_table", word_start_table.numel(), input_ids)
        else:
            word_start_table = None  # not consulted
    if strategy != "token" and starts is None and word_start_table is None:
        raise ValueError(
            f"strategy={strategy!r} needs word boundaries: pass word_starts=[B, L] bool "
            "(see fastmask.words) or word_start_table=fastmask.word_start_table(tokenizer)"
        )
    if special_mask is not None:
        special_token_ids = None  # the mask wins
    vocab_flags = _vocab_flags(word_start_table, special_token_ids, device)
    if token_weights is not None:
        check_tensor("token_weights", token_weights, dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64), dim=1)
        if budget != "bernoulli":
            raise ValueError("token_weights works with budget='bernoulli' only; drop token_weights or the exact budget")
        if not torch.compiler.is_compiling() and (
            not bool(torch.isfinite(token_weights).all()) or bool((token_weights < 0).any())
        ):
            raise ValueError("token_weights must be finite and non-negative")
        if length > MAX_WEIGHTED_LENGTH:
            raise ValueError(f"token_weights supports rows of at most {MAX_WEIGHTED_LENGTH} tokens, got {length}")
        _check_ids_in_table("token_weights", token_weights.numel(), input_ids)
    weights_q = _weights_q(token_weights, device)
    keys = _row_keys(row_keys, batch, device)

    span_thresholds, _ = _span_tables(span_distribution, span_p, max_span_words)
    if strategy == "span":
        select_threshold = _span_anchor_threshold(mlm_probability, span_distribution, span_p, max_span_words)
    else:
        select_threshold = _rng.probability_threshold(mlm_probability)
    exact = budget == "exact"
    budget_table = _budget_table_cpu(mlm_probability, length).to(device) if exact else None
    mix1, mix2 = _rng.seed_mix(seed)
    t_mask = _rng.probability_threshold(mask_replace_prob)
    t_mask_or_random = _rng.probability_threshold(mask_replace_prob + random_replace_prob)

    chosen = _choose_backend(backend, device.type, batch, length, strategy, exact)
    args = (
        input_ids, special_mask, attention, starts, vocab_flags, weights_q, keys,
        torch.tensor(span_thresholds, dtype=torch.int32, device=device) if span_thresholds else torch.zeros(0, dtype=torch.int32, device=device),
        budget_table, mix1, mix2, STRATEGIES.index(strategy), exact,
        -1 if pad_token_id is None else pad_token_id, select_threshold, mask_token_id, vocab_size,
        t_mask, t_mask_or_random,
    )
    if torch.compiler.is_compiling():
        masked, labels = _mask_tokens_op(*args, chosen)
    else:  # eager: skip the dispatcher's overhead, same implementation
        masked, labels = _IMPLS[chosen](*args)
    if squeeze:
        return masked[0], labels[0]
    return masked, labels
