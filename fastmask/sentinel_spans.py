"""T5 span corruption (the op): noise spans of a row become sentinels in ``inputs``; ``targets``
hold each sentinel followed by its span.

``span_corruption`` is two steps, each public: :func:`plan_span_corruption` validates the
arguments into a :class:`~fastmask.sentinel_spans_plan.SpanCorruptionPlan` (count tables, output
widths, seeds), and :func:`run_span_corruption` hands the plan to one of three implementations
that return bit-identical results: the pure-torch reference
(:mod:`fastmask.reference.sentinel_spans`, which documents the exact semantics), the C++ kernel
(``csrc/sentinel_spans.cpp``) and the Triton kernel (:mod:`fastmask.kernels.sentinel_spans`).

The op's files share the stem ``sentinel_spans`` rather than ``span_corruption``: a submodule
named like the exported function would replace ``fastmask.span_corruption`` (the function) by
the module as soon as it is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np
import torch

from . import _backend, _rng
from ._op_rows import as_batch, checked_rows, real_positions, unbatch
from ._validation import check_int, check_real, check_tensor, check_token_id, check_token_rows
from .masking import _check_ids, _row_keys
from .reference.sentinel_spans import reference_span_corruption
from .sentinel_spans_plan import SpanCorruptionPlan

__all__ = [
    "span_corruption",
    "plan_span_corruption",
    "run_span_corruption",
    "with_new_rows",
    "SpanCorruptionRunner",
    "span_corruption_lengths",
    "span_counts",
]


# ----------------------------------------------------------------------------- counts
def _check_density(noise_density) -> float:
    value = check_real("noise_density", noise_density, "a float in (0, 1)")
    if not (0.0 < value < 1.0):
        raise ValueError(
            f"noise_density={noise_density!r} is outside (0, 1); pass the fraction of tokens to corrupt, "
            "e.g. 0.15 (T5's default)"
        )
    return value


def _check_mean_span(mean_noise_span_length) -> float:
    value = check_real("mean_noise_span_length", mean_noise_span_length, "a number >= 1")
    if not (value >= 1.0) or math.isinf(value):
        raise ValueError(
            f"mean_noise_span_length={mean_noise_span_length!r} must be a finite number >= 1 (tokens per span), "
            "e.g. 3.0 (T5's default)"
        )
    return value


def span_counts(units: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``(noise units, spans)`` of a row of ``units`` (>= 2) units: T5's counts
    (``round`` half-to-even, like numpy's), with ``noise`` clipped to ``[1, units - 1]`` and
    ``spans`` to ``[1, units - noise]`` so every segment is non-empty."""
    noise = min(max(round(units * noise_density), 1), units - 1)
    spans = max(1, round(noise / mean_noise_span_length))
    return noise, min(spans, units - noise)


def span_corruption_lengths(
    input_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """``(expanded_input_length, target_length)``: the row length to tokenize to so that span
    corruption gives exactly ``input_length`` inputs (with EOS), and the targets' length.

    T5's ``compute_input_and_target_lengths``: the largest row length whose inputs fit in
    ``input_length`` (with the same tweak for ``noise_density=0.5``). ``(512, 0.15, 3.0)`` gives
    ``(568, 114)``.
    """
    input_length = check_int("input_length", input_length, minimum=2)
    noise_density = _check_density(noise_density)
    mean_noise_span_length = _check_mean_span(mean_noise_span_length)

    def lengths(tokens: int) -> tuple[int, int]:
        noise, spans = span_counts(tokens, noise_density, mean_noise_span_length)
        return tokens - noise + spans + 1, noise + spans + 1

    tokens = 2
    if lengths(tokens)[0] > input_length:
        raise ValueError(f"input_length={input_length} is too short for any span corruption; pass at least 3")
    while lengths(tokens + 1)[0] <= input_length:
        tokens += 1
    _, target_length = lengths(tokens)
    if noise_density == 0.5 and target_length > input_length:
        tokens -= 1
        target_length -= 1
    return tokens, target_length


@functools.lru_cache(maxsize=64)
def _count_tables(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[torch.Tensor, torch.Tensor]:
    noise, spans = [0, 0], [0, 0]
    for units in range(2, length + 1):
        n, s = span_counts(units, noise_density, mean_noise_span_length)
        noise.append(n)
        spans.append(s)
    return torch.tensor(noise[: length + 1], dtype=torch.int32), torch.tensor(spans[: length + 1], dtype=torch.int32)


# ----------------------------------------------------------------------------- backends
def _cpp_run(fields: dict, inputs_length: int, targets_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The C++ kernel on a plan's :meth:`~fastmask._plan.OpPlan.cpp_fields`: numpy
    ``(inputs, targets)`` in the ids' dtype."""
    ids = fields["input_ids"]
    inputs = np.empty((ids.shape[0], inputs_length), dtype=ids.dtype)
    targets = np.empty((ids.shape[0], targets_length), dtype=ids.dtype)
    _backend.cpp_kernels().span_corruption(fields, inputs, targets)
    return inputs, targets


def _cpp_impl(plan: SpanCorruptionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = _cpp_run(plan.cpp_fields(), plan.inputs_length, plan.targets_length)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def _span_corruption_fake(plan: SpanCorruptionPlan) -> tuple[torch.Tensor, torch.Tensor]:
    ids = plan.input_ids
    return ids.new_empty((ids.shape[0], plan.inputs_length)), ids.new_empty((ids.shape[0], plan.targets_length))


_SPAN_CORRUPTION = _backend.PlanOp(
    "span_corruption",
    SpanCorruptionPlan,
    _span_corruption_fake,
    reference=reference_span_corruption,
    cpp=_cpp_impl,
    triton=("sentinel_spans", "triton_span_corruption"),
)


def run_span_corruption(plan: SpanCorruptionPlan, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` for a plan from :func:`plan_span_corruption`, on ``backend``."""
    return _SPAN_CORRUPTION(plan, backend)


# ----------------------------------------------------------------------------- plan
def plan_span_corruption(
    input_ids: torch.Tensor,
    *,
    first_sentinel_id: int,
    eos_token_id: int,
    pad_token_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    attention_mask: Optional[torch.Tensor] = None,
    word_starts: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    row_keys: Union[torch.Tensor, Sequence[int], None] = None,
) -> SpanCorruptionPlan:
    """Validate :func:`span_corruption`'s arguments (``input_ids`` ``[B, L]``) into a plan."""
    _, length = check_token_rows(input_ids, max_length=_rng.MAX_SEQUENCE_LENGTH, what="2 tokens")
    noise_density = _check_density(noise_density)
    mean_noise_span_length = _check_mean_span(mean_noise_span_length)
    first_sentinel_id = check_token_id("first_sentinel_id", first_sentinel_id, input_ids.dtype)
    eos_token_id = check_token_id("eos_token_id", eos_token_id, input_ids.dtype)
    pad_token_id = check_token_id("pad_token_id", pad_token_id, input_ids.dtype)
    seed = _rng.resolve_seed(seed)

    input_ids, keys, attention, starts = checked_rows(
        input_ids, row_keys, attention_mask=attention_mask, word_starts=word_starts
    )
    device = input_ids.device

    # per-row unit counts (host side, numpy): the output widths and the row checks need them
    real = real_positions(input_ids, attention, pad_token_id)
    if starts is None:
        units = real.sum(axis=1)
    else:
        first = real & (np.cumsum(real, axis=1) == 1)
        units = (real & (starts.cpu().numpy() | first)).sum(axis=1)
    if int(units.min()) < 2:
        bad = int(np.argmin(units))
        what = "words" if starts is not None else "real tokens"
        raise ValueError(
            f"row {bad} of input_ids has {int(units[bad])} {what}; span corruption needs at least 2 per row "
            "(one kept, one corrupted): drop or lengthen short rows"
            + ("" if attention is not None else f" (tokens equal to pad_token_id={pad_token_id} count as padding)")
        )
    noise_table, spans_table = _count_tables(length, noise_density, mean_noise_span_length)
    noise = noise_table.numpy()[units].astype(np.int64)
    spans = spans_table.numpy()[units].astype(np.int64)
    max_spans = int(spans.max())
    if first_sentinel_id - (max_spans - 1) < 0:
        raise ValueError(
            f"first_sentinel_id={first_sentinel_id} leaves no id for {max_spans} sentinels (span k uses "
            f"first_sentinel_id - k); pass the id of <extra_id_0> of a tokenizer with enough sentinels"
        )
    real_tokens = real.sum(axis=1).astype(np.int64)
    if starts is None:
        inputs_length = int((real_tokens - noise + spans).max()) + 1
        targets_length = int((noise + spans).max()) + 1
    else:
        # word units: the tokens per word are known only after the draw, so the widths are the
        # bounds (each noise word holds >= 1 token, each kept word >= 1 token)
        inputs_length = int((real_tokens - noise + spans).max()) + 1
        targets_length = int((real_tokens - (units - noise) + spans).max()) + 1
    mix1, mix2 = _rng.seed_mix(seed)
    plan = SpanCorruptionPlan(
        input_ids=input_ids,
        row_keys=keys,
        attention_mask=attention,
        word_starts=starts,
        noise_table=noise_table.to(device),
        spans_table=spans_table.to(device),
        seed_mix1=mix1,
        seed_mix2=mix2,
        first_sentinel_id=first_sentinel_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        inputs_length=inputs_length,
        targets_length=targets_length,
    )
    return plan


def _check_reusable(plan: SpanCorruptionPlan) -> None:
    if plan.attention_mask is None or plan.word_starts is not None:
        raise ValueError(
            "with_new_rows needs a plan made with attention_mask= and without word_starts= (its unit counts "
            "must not depend on the ids); call plan_span_corruption for these rows"
        )


def with_new_rows(
    plan: SpanCorruptionPlan, input_ids: torch.Tensor, *, seed: int, row_keys: torch.Tensor
) -> SpanCorruptionPlan:
    """``plan`` for other rows: ``input_ids`` of the plan's shape, dtype and device, a new
    ``seed`` and ``row_keys`` (``[B]``). The attention mask, count tables and output widths stay
    the plan's, so this is exact when the counts do not depend on the ids — a plan with an
    ``attention_mask`` and without ``word_starts`` (e.g. a collator's packed rows) — and raises
    otherwise. It skips :func:`plan_span_corruption`'s per-batch reductions; ids are still
    checked (>= 0)."""
    _check_reusable(plan)
    check_tensor("input_ids", input_ids, dtypes=(plan.input_ids.dtype,))
    if input_ids.shape != plan.input_ids.shape or input_ids.device != plan.input_ids.device:
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)} on {input_ids.device}, the plan's rows "
            f"{tuple(plan.input_ids.shape)} on {plan.input_ids.device}; call plan_span_corruption for other shapes"
        )
    input_ids = input_ids.contiguous()
    lowest = input_ids.numpy().min() if input_ids.device.type == "cpu" else input_ids.min()
    if int(lowest) < 0:  # one pass for the common case; the op's check names the error
        _check_ids(input_ids, None)
    mix1, mix2 = _rng.seed_mix(check_int("seed", seed))
    return dataclasses.replace(
        plan,
        input_ids=input_ids,
        row_keys=_row_keys(row_keys, input_ids.shape[0], input_ids.device),
        seed_mix1=mix1,
        seed_mix2=mix2,
    )


class SpanCorruptionRunner:
    """Span corruption of batch after batch of one plan's shape, for a collator: calling it with
    numpy ``input_ids`` ``[B, L]``, ``seed`` and ``row_keys`` ``[B]`` returns numpy
    ``(inputs, targets)``, exactly ``run_span_corruption(with_new_rows(plan, ...), backend)``
    (the same conditions on ``plan``, the same checks and errors).

    On the C++ backend outside ``torch.compile`` it skips the per-call work of that route: the
    plan's constant fields are converted for the kernel once, and each call swaps in its ids,
    row keys and seed mixes (the kernel's binding still checks every buffer). Other backends take
    the route above.
    """

    def __init__(self, plan: SpanCorruptionPlan, backend: str = "auto"):
        _check_reusable(plan)
        self.plan, self.backend = plan, _backend.check_backend_name(backend)
        self._fields: Optional[dict] = None  # plan.cpp_fields(), made at the first C++ call
        self._seed: Optional[tuple[int, int, int]] = None  # (seed, mix1, mix2) of the last call

    def __getstate__(self):  # pickled without the kernel's views (rebuilt on first use)
        return dict(self.__dict__, _fields=None)

    def __call__(self, input_ids: np.ndarray, *, seed: int, row_keys) -> tuple[np.ndarray, np.ndarray]:
        plan = self.plan
        keys = row_keys.numpy() if isinstance(row_keys, torch.Tensor) else np.asarray(row_keys)
        if _SPAN_CORRUPTION.backend_for(plan, self.backend) != "cpp" or torch.compiler.is_compiling():
            return self._via_plan(input_ids, seed, keys)
        expected = plan.input_ids
        if (
            not isinstance(input_ids, np.ndarray)
            or input_ids.shape != tuple(expected.shape)
            or input_ids.dtype != expected.numpy().dtype
            or keys.dtype != np.int64
            or keys.shape != (input_ids.shape[0],)
            or int(input_ids.min()) < 0
        ):  # with_new_rows names what is wrong (or takes what it can convert)
            return self._via_plan(input_ids, seed, keys)
        if self._seed is None or self._seed[0] != seed:
            self._seed = (check_int("seed", seed), *_rng.seed_mix(seed))
        if self._fields is None:
            self._fields = plan.cpp_fields()
        fields = dict(self._fields)
        fields["input_ids"] = np.ascontiguousarray(input_ids)
        fields["row_keys"] = np.ascontiguousarray(keys)
        fields["seed_mix1"], fields["seed_mix2"] = self._seed[1], self._seed[2]
        return _cpp_run(fields, plan.inputs_length, plan.targets_length)

    def _via_plan(self, input_ids, seed: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = with_new_rows(self.plan, torch.as_tensor(input_ids), seed=seed, row_keys=torch.as_tensor(keys))
        inputs, targets = run_span_corruption(rows, self.backend)
        return inputs.cpu().numpy(), targets.cpu().numpy()


def span_corruption(
    input_ids: torch.Tensor,
    *,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    first_sentinel_id: int,
    eos_token_id: int,
    pad_token_id: int,
    attention_mask: Optional[torch.Tensor] = None,
    word_starts: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    row_keys: Union[torch.Tensor, Sequence[int], None] = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 span corruption of every row (semantics: :mod:`fastmask.reference.sentinel_spans`).

    Per row of ``n`` real tokens, ``round(n * noise_density)`` tokens (clipped to
    ``[1, n - 1]``) in ``max(1, round(noise / mean_noise_span_length))`` spans are corrupted;
    noise and kept tokens are each split into that many non-empty segments uniformly at random
    and interleaved, kept first. In ``inputs`` span ``k`` becomes the sentinel
    ``first_sentinel_id - k``; ``targets`` hold each sentinel followed by its span. Both end
    with ``eos_token_id``.

    Args:
        input_ids: ``[B, L]`` (or ``[L]``) int64/int32 ids, CPU or CUDA; not modified.
        noise_density: fraction of tokens corrupted, in (0, 1).
        mean_noise_span_length: mean span length in tokens (words with ``word_starts``), >= 1.
        first_sentinel_id: id of ``<extra_id_0>``; span ``k`` uses ``first_sentinel_id - k``.
        eos_token_id, pad_token_id: appended / padding ids. Without ``attention_mask``, tokens
            equal to ``pad_token_id`` are padding (not part of the row).
        attention_mask: ``[B, L]``, zero at padding (left, right or anywhere).
        word_starts: ``[B, L]`` bool, True where a token starts a word: spans then cover whole
            words, and the counts above are in words (``n`` = words of the row, the noise is
            ``round(words * noise_density)`` words in ``round(noise words / mean)`` spans), so
            the noise fraction holds for words and is close in tokens.
        seed: the generator's seed (an int); None draws one from torch's global RNG
            (so ``torch.manual_seed`` reproduces it).
        row_keys: ``[B]`` ints keying each row's draws (default ``0 .. B-1``).
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``.

    Returns:
        ``(inputs, targets)`` in ``input_ids``' dtype and device, padded with ``pad_token_id``.
        ``inputs`` is ``[B, max_rows(K + S) + 1]`` and ``targets`` ``[B, max_rows(N + S) + 1]``
        (``K`` kept tokens, ``N`` noise tokens, ``S`` spans of a row). With ``word_starts`` the
        widths are bounds that do not depend on the draw: ``max(n - N_w + S) + 1`` and
        ``max(n - K_w + S) + 1`` (``N_w`` / ``K_w`` noise / kept words), so trailing columns
        may be all padding.
    """
    _backend.check_backend_name(backend)
    one_row, input_ids, attention_mask, word_starts = as_batch(
        input_ids, attention_mask=attention_mask, word_starts=word_starts
    )
    plan = plan_span_corruption(
        input_ids,
        first_sentinel_id=first_sentinel_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
        attention_mask=attention_mask,
        word_starts=word_starts,
        seed=seed,
        row_keys=row_keys,
    )
    return unbatch(one_row, run_span_corruption(plan, backend))
