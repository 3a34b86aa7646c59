"""Triton masked-position cross-entropy: one program per labelled row, online softmax over V.

Same row-level contract as :func:`fastmask.reference.cross_entropy.reference_cross_entropy_rows`
(which documents the math). Each program reads its row twice: pass 1 keeps a running max ``m``
and rescaled sum ``s`` of ``exp(x - m)`` over blocks of ``BLOCK_V`` classes (plus ``sum x``
for label smoothing); pass 2 writes the gradient (in place over the logits row, or into row
``i`` of a compact buffer). Ignored rows get no program at all. Row offsets are int64.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# Classes per block on a GPU: large blocks keep the loop short; the interpreter (CPU tests)
# takes the same default.
MAX_BLOCK_V = 16384


@triton.jit
def _cross_entropy_rows_kernel(
    logits_ptr,
    grad_ptr,
    loss_ptr,
    rows_ptr,
    targets_ptr,
    row_scale_ptr,
    ce_ptr,
    correct_ptr,
    V,
    logits_row_stride,
    grad_row_stride,
    grad_scale,
    label_smoothing,
    z_loss,
    BLOCK_V: tl.constexpr,
    HAS_ROWS: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    GRAD_AT_ROW: tl.constexpr,
    HAS_ROW_SCALE: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_FEEDBACK: tl.constexpr,
):
    item = tl.program_id(0).to(tl.int64)
    if HAS_ROWS:
        row = tl.load(rows_ptr + item).to(tl.int64)
    else:
        row = item
    target = tl.load(targets_ptr + item).to(tl.int64)
    x_row = logits_ptr + row * logits_row_stride

    # Pass 1: online max / sum of exp, and sum of logits.
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    sum_x = tl.full((), 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < V
        x = tl.load(x_row + cols, mask=valid, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that start with -inf
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
        sum_x += tl.sum(tl.where(valid, x, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(s)
    x_target = tl.load(x_row + target).to(tl.float32)
    eps = label_smoothing
    loss = lse - (1.0 - eps) * x_target + z_loss * lse * lse
    if HAS_SMOOTHING:  # sum_x may be -inf (masked classes), so the term is skipped at eps = 0
        loss -= eps / V * sum_x
    tl.store(loss_ptr + item, loss)
    if HAS_FEEDBACK:  # the plain cross-entropy and whether the label is the row max
        tl.store(ce_ptr + item, lse - x_target)
        tl.store(correct_ptr + item, (x_target == m).to(tl.uint8))

    if HAS_GRAD:
        scale = grad_scale
        if HAS_ROW_SCALE:
            scale = scale * tl.load(row_scale_ptr + item)
        if GRAD_AT_ROW:
            g_row = grad_ptr + row * grad_row_stride
        else:
            g_row = grad_ptr + item * grad_row_stride
        a = scale * (1.0 + 2.0 * z_loss * lse)
        b = -scale * eps / V
        target_term = scale * (1.0 - eps)
        # Pass 2: gradient; reads every block before writing it, so g_row may be x_row.
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V
            x = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32)
            g = a * tl.exp(x - lse) + b
            g = tl.where(cols == target, g - target_term, g)
            tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=valid)


def block_size(vocab: int) -> int:
    """The launcher's ``BLOCK_V`` for ``vocab`` classes: the next power of two, 16 to
    :data:`MAX_BLOCK_V` (a row of a real vocabulary, >= 8193 classes, takes 16384)."""
    return max(16, min(MAX_BLOCK_V, triton.next_power_of_2(vocab)))


def num_warps(block: int) -> int:
    """The launcher's ``num_warps`` for a block of ``block`` classes: 4 up to 2048, 8 up to
    8192, 16 above (at most 32 classes per thread; 0 spills for sm_80 / sm_90, checked by
    ``tests/test_kernels_cross_entropy.py`` through :mod:`fastmask.kernels.offline`)."""
    return 4 if block <= 2048 else (8 if block <= 8192 else 16)


def triton_cross_entropy_rows(
    logits: torch.Tensor,
    rows: Optional[torch.Tensor],
    targets: torch.Tensor,
    *,
    grad_scale: float,
    label_smoothing: float,
    z_loss: float,
    grad_mode: str,
    row_scale: Optional[torch.Tensor] = None,
    feedback: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    block_v: Optional[int] = None,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Launcher: see :func:`fastmask.reference.cross_entropy.reference_cross_entropy_rows`.

    ``logits`` is ``[N, V]`` with unit stride along V; ``block_v`` (a power of two) overrides
    the block size (tests use small blocks to exercise the multi-block path). ``feedback``:
    optional ``(ce [M] fp32, correct [M] uint8)`` buffers written in pass 1 (``lse - x_y`` and
    ``x_y == row max``).
    """
    count = targets.shape[0]
    vocab = logits.shape[1]
    loss = torch.empty(count, dtype=torch.float32, device=logits.device)
    if grad_mode == "compact":
        grad = torch.empty((count, vocab), dtype=logits.dtype, device=logits.device)
    elif grad_mode == "inplace":
        grad = logits
    else:
        grad = None
    if count == 0:
        return loss, grad
    block = block_v or block_size(vocab)
    _cross_entropy_rows_kernel[(count,)](
        logits,
        grad if grad is not None else logits,
        loss,
        rows if rows is not None else targets,
        targets,
        row_scale if row_scale is not None else loss,
        feedback[0] if feedback is not None else loss,
        feedback[1] if feedback is not None else loss,
        vocab,
        logits.stride(0),
        grad.stride(0) if grad is not None else 0,
        float(grad_scale),
        float(label_smoothing),
        float(z_loss),
        BLOCK_V=block,
        HAS_ROWS=rows is not None,
        HAS_GRAD=grad is not None,
        GRAD_AT_ROW=grad_mode == "inplace",
        HAS_ROW_SCALE=row_scale is not None,
        HAS_SMOOTHING=label_smoothing != 0.0,
        HAS_FEEDBACK=feedback is not None,
        num_warps=num_warps(block),
    )
    return loss, grad
