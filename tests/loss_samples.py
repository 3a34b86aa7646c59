"""Shared by the loss tests: the oracles (``reference_*``), ONE ``sample_inputs`` generator per op,
and the per-dtype tolerances.

Oracles compute on a float64 copy through ``torch.nn.functional.cross_entropy`` (plus the z-loss
formula ``z * logsumexp(logits)**2`` per labelled row), so they share no code with fastmask.

Tolerances (``|got - want| <= atol + rtol * |want|``, element-wise; gradient ``atol`` is relative
to the largest reference gradient):

============  ==========  ==========  ===========================  ============================
dtype         loss rtol   loss atol   grad rtol                    grad atol (x max |grad|)
============  ==========  ==========  ===========================  ============================
fp32          1e-5        1e-5        1e-4                         1e-6
bf16          1e-5        1e-5        1e-2 (two roundings to 8b)   1e-5
fp16          1e-5        1e-5        2e-3 (two roundings to 11b)  1e-3 (subnormals at 6e-8)
============  ==========  ==========  ===========================  ============================

The loss is computed in fp32 from the exact input values, so its tolerance does not depend on
the input dtype; the gradient is rounded to the input dtype once in the forward and once when
scaled by ``grad_output``. The fused head's logits are themselves rounded to the input dtype
by the matmul, so its fp16/bf16 comparisons use the relaxed ``FUSED_TOLERANCES``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn.functional as F

IGNORE = -100

TOLERANCES = {
    torch.float32: dict(loss_rtol=1e-5, loss_atol=1e-5, grad_rtol=1e-4, grad_atol=1e-6),
    torch.bfloat16: dict(loss_rtol=1e-5, loss_atol=1e-5, grad_rtol=1e-2, grad_atol=1e-5),
    torch.float16: dict(loss_rtol=1e-5, loss_atol=1e-5, grad_rtol=2e-3, grad_atol=1e-3),
    torch.float64: dict(loss_rtol=1e-10, loss_atol=1e-10, grad_rtol=1e-9, grad_atol=1e-12),
}
# Fused head vs the float64 oracle: fp16/bf16 logits are rounded by the matmul (relative 2^-8
# for bf16, 2^-11 for fp16 on logits of size ~5), which moves the loss by about that much.
FUSED_TOLERANCES = {
    torch.float32: dict(loss_rtol=1e-5, loss_atol=1e-5, grad_rtol=1e-3, grad_atol=1e-5),
    torch.bfloat16: dict(loss_rtol=2e-2, loss_atol=2e-2, grad_rtol=5e-2, grad_atol=2e-2),
    torch.float16: dict(loss_rtol=3e-3, loss_atol=3e-3, grad_rtol=1e-2, grad_atol=3e-3),
    torch.float64: dict(loss_rtol=1e-10, loss_atol=1e-10, grad_rtol=1e-9, grad_atol=1e-12),
}


def assert_close(got: torch.Tensor, want: torch.Tensor, *, rtol: float, atol: float, what: str) -> None:
    got64, want64 = got.detach().to(torch.float64).cpu(), want.detach().to(torch.float64).cpu()
    assert got64.shape == want64.shape, f"{what}: shape {tuple(got64.shape)} != {tuple(want64.shape)}"
    assert not torch.isnan(got64).any(), f"{what}: NaN"
    err = (got64 - want64).abs()
    bound = atol + rtol * want64.abs()
    if not bool((err <= bound).all()):
        worst = int((err - bound).argmax())
        raise AssertionError(
            f"{what}: max error {float(err.max()):.3g}; worst element {worst}: got {float(got64.flatten()[worst]):.9g}, "
            f"want {float(want64.flatten()[worst]):.9g} (rtol={rtol}, atol={atol:.3g})"
        )


# ----------------------------------------------------------------------------- oracles
def reference_masked_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    num_items_in_batch=None,
) -> torch.Tensor:
    """Differentiable float64 oracle (pass a float64 leaf to get its gradient).

    ``F.cross_entropy`` where torch is defined; an all-ignored batch gives 0 (torch: NaN for mean).
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1).long()
    keep = flat_labels != ignore_index
    per_token = F.cross_entropy(
        flat, flat_labels, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )
    if z_loss:
        per_token = per_token + torch.where(keep, z_loss * torch.logsumexp(flat, dim=-1) ** 2, 0.0)
    if reduction == "none":
        return per_token.reshape(labels.shape)
    total = per_token.sum()
    if reduction == "sum":
        return total
    if num_items_in_batch is not None:
        return total / float(num_items_in_batch)
    count = int(keep.sum())
    if count == 0:
        return total * 0.0
    # torch's own mean, where it is defined (checks the oracle against torch itself).
    if not z_loss:
        return F.cross_entropy(flat, flat_labels, ignore_index=ignore_index, label_smoothing=label_smoothing)
    return total / count


def reference_fused_masked_lm_loss(hidden, weight, labels, bias=None, **options) -> torch.Tensor:
    """The fused head's oracle: the linear layer, then :func:`reference_masked_cross_entropy`."""
    return reference_masked_cross_entropy(F.linear(hidden, weight, bias), labels, **options)


# ----------------------------------------------------------------------------- inputs
def _labels(
    g: torch.Generator, shape, vocab: int, ignore_rate: float, ignore_index: int = IGNORE, dtype=torch.int64
) -> torch.Tensor:
    labels = torch.randint(0, vocab, shape, generator=g)
    if ignore_rate >= 1.0:
        labels.fill_(ignore_index)
    elif ignore_rate > 0:
        drop = torch.rand(shape, generator=g) < ignore_rate
        flat_drop = drop.reshape(-1)
        if bool(flat_drop.all()):
            flat_drop[0] = False  # keep at least one label when the rate is below 100%
        labels[drop] = ignore_index
    return labels.to(dtype)


def _logits(g: torch.Generator, shape, dtype, scale: float = 3.0) -> torch.Tensor:
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def sample_inputs(*, seed: int = 0, large: bool = True) -> Iterator[tuple[str, dict]]:
    """``(name, kwargs)`` for ``fastmask.masked_cross_entropy(**kwargs)``; the tensors are fresh
    leaves (``logits`` does not require grad: tests opt in)."""
    g = torch.Generator().manual_seed(seed)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    # Every reduction x ignore rate x dtype on a small odd shape, with smoothing / z-loss.
    for (reduction, rate, dtype), (smoothing, z) in itertools.product(
        itertools.product(("mean", "sum", "none"), (0.0, 0.15, 0.99, 1.0), dtypes), [(0.0, 0.0), (0.1, 1e-3)]
    ):
        yield (
            f"37x1000-{reduction}-ign{rate}-{str(dtype)[6:]}-ls{smoothing}-z{z}",
            dict(
                logits=_logits(g, (37, 1000), dtype),
                labels=_labels(g, (37,), 1000, rate),
                reduction=reduction,
                label_smoothing=smoothing,
                z_loss=z,
            ),
        )
    # Odd 3-D shape, V not a multiple of any block.
    for dtype in dtypes:
        yield (
            f"3x423x257-{str(dtype)[6:]}",
            dict(
                logits=_logits(g, (3, 423, 257), dtype),
                labels=_labels(g, (3, 423), 257, 0.85),
                reduction="mean",
            ),
        )
    yield (
        "3x423x257-none-ls",
        dict(
            logits=_logits(g, (3, 423, 257), torch.float32),
            labels=_labels(g, (3, 423), 257, 0.85),
            reduction="none",
            label_smoothing=0.2,
            z_loss=1e-4,
        ),
    )
    # Real vocabularies.
    yield "16x30522-bf16", dict(logits=_logits(g, (16, 30522), torch.bfloat16), labels=_labels(g, (16,), 30522, 0.15))
    yield (
        "4x50265-fp32-sum",
        dict(logits=_logits(g, (4, 50265), torch.float32), labels=_labels(g, (4,), 50265, 0.0), reduction="sum"),
    )
    if large:
        yield (
            "3x128256-fp32",
            dict(
                logits=_logits(g, (3, 128256), torch.float32),
                labels=_labels(g, (3,), 128256, 0.0),
                label_smoothing=0.1,
                z_loss=1e-4,
            ),
        )
        yield (
            "2x128256-bf16-none",
            dict(
                logits=_logits(g, (2, 128256), torch.bfloat16), labels=_labels(g, (2,), 128256, 0.0), reduction="none"
            ),
        )
    # Tiny vocabularies and rows.
    yield "5x1", dict(logits=_logits(g, (5, 1), torch.float32), labels=_labels(g, (5,), 1, 0.4), label_smoothing=0.3)
    yield "1x2-sum", dict(logits=_logits(g, (1, 2), torch.float16), labels=_labels(g, (1,), 2, 0.0), reduction="sum")
    # Non-contiguous logits: a row stride larger than V, a transposed class dim, a permuted 3-D.
    wide = _logits(g, (20, 700), torch.float32)
    yield "rowstride", dict(logits=wide[:, 50:650], labels=_labels(g, (20,), 600, 0.3))
    yield (
        "transposed",
        dict(logits=_logits(g, (300, 24), torch.bfloat16).t(), labels=_labels(g, (24,), 300, 0.3), reduction="sum"),
    )
    yield (
        "permuted-3d",
        dict(
            logits=_logits(g, (9, 4, 130), torch.float32).transpose(0, 1),
            labels=_labels(g, (4, 9), 130, 0.5),
            reduction="none",
        ),
    )
    # Other ignore values, int32 labels, num_items_in_batch, large logits and -inf entries.
    yield (
        "ignore0-int32",
        dict(
            logits=_logits(g, (25, 90), torch.float32),
            labels=_labels(g, (25,), 90, 0.5, ignore_index=0, dtype=torch.int32),
            ignore_index=0,
        ),
    )
    yield (
        "num-items-int",
        dict(logits=_logits(g, (25, 90), torch.float32), labels=_labels(g, (25,), 90, 0.5), num_items_in_batch=40),
    )
    yield (
        "num-items-tensor",
        dict(
            logits=_logits(g, (25, 90), torch.bfloat16),
            labels=_labels(g, (25,), 90, 0.5),
            num_items_in_batch=torch.tensor(13),
        ),
    )
    yield (
        "large-logits",
        dict(logits=_logits(g, (12, 500), torch.float32, scale=60.0), labels=_labels(g, (12,), 500, 0.2)),
    )
    masked_vocab = _logits(g, (10, 2000), torch.float32)
    masked_vocab[:, :1500] = float("-inf")  # e.g. a vocabulary mask; the first blocks are all -inf
    labels = _labels(g, (10,), 500, 0.3)
    yield "neg-inf-prefix", dict(logits=masked_vocab, labels=torch.where(labels == IGNORE, labels, labels + 1500))


def fused_sample_inputs(*, seed: int = 0) -> Iterator[tuple[str, dict]]:
    """``(name, kwargs)`` for ``fastmask.fused_masked_lm_loss(**kwargs)``; fresh leaves."""
    g = torch.Generator().manual_seed(seed)

    def head(batch_shape, width, vocab, dtype, bias=True):
        hidden = torch.randn(*batch_shape, width, generator=g).to(dtype)
        weight = (torch.randn(vocab, width, generator=g) / width**0.5 * 2).to(dtype)
        b = (torch.randn(vocab, generator=g) * 0.5).to(dtype) if bias else None
        return hidden, weight, b

    for (reduction, rate, dtype), chunk in itertools.product(
        itertools.product(("mean", "sum", "none"), (0.0, 0.85, 1.0), (torch.float32, torch.bfloat16, torch.float16)),
        (None, 7),
    ):
        hidden, weight, bias = head((40,), 32, 300, dtype)
        yield (
            f"40x32x300-{reduction}-ign{rate}-{str(dtype)[6:]}-chunk{chunk}",
            dict(
                hidden=hidden,
                weight=weight,
                bias=bias,
                labels=_labels(g, (40,), 300, rate),
                reduction=reduction,
                chunk_size=chunk,
            ),
        )
    hidden, weight, bias = head((3, 50), 24, 257, torch.float32)
    yield (
        "3x50-3d-ls-z",
        dict(
            hidden=hidden,
            weight=weight,
            bias=bias,
            labels=_labels(g, (3, 50), 257, 0.85),
            label_smoothing=0.1,
            z_loss=1e-3,
            chunk_size=5,
        ),
    )
    hidden, weight, _ = head((64,), 48, 1000, torch.float32, bias=False)
    yield (
        "nobias-chunk1",
        dict(hidden=hidden, weight=weight, bias=None, labels=_labels(g, (64,), 1000, 0.9), chunk_size=1),
    )
    hidden, weight, bias = head((30,), 16, 30522, torch.bfloat16)
    yield "30x16x30522-bf16", dict(hidden=hidden, weight=weight, bias=bias, labels=_labels(g, (30,), 30522, 0.8))
    hidden, weight, bias = head((33,), 20, 111, torch.float32)
    yield (
        "num-items",
        dict(
            hidden=hidden,
            weight=weight,
            bias=bias,
            labels=_labels(g, (33,), 111, 0.5),
            num_items_in_batch=torch.tensor(21),
            chunk_size=4,
        ),
    )
    hidden, weight, bias = head((33,), 20, 111, torch.float32)
    yield (
        "ignore-7-int32",
        dict(
            hidden=hidden,
            weight=weight,
            bias=bias,
            labels=_labels(g, (33,), 111, 0.5, ignore_index=7, dtype=torch.int32),
            ignore_index=7,
        ),
    )


def leaf(t: Optional[torch.Tensor], dtype=None, requires_grad: bool = True) -> Optional[torch.Tensor]:
    """A detached copy that requires grad: same strides (gaps included), or cast to ``dtype``."""
    if t is None:
        return None
    if dtype is None:
        out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
        out.copy_(t.detach())
    else:
        out = t.detach().to(dtype)
    return out.requires_grad_(requires_grad)
