"""Reference (pure torch) masked-position cross-entropy: the oracle for the C++ and Triton kernels.

Inputs arrive validated by :mod:`fastmask.cross_entropy`. Every backend implements the same
row-level contract, :func:`reference_cross_entropy_rows`; for labelled row ``i`` with logits
``x`` (``V`` classes, fp32 math), target ``y``, label smoothing ``eps`` and z-loss weight ``z``::

    lse     = log(sum_j exp(x_j))
    loss_i  = lse - (1 - eps) * x_y - eps / V * sum_j x_j + z * lse**2
    dloss_i / dx_j = (1 + 2 z lse) * softmax(x)_j - eps / V - (1 - eps) * [j == y]

which is ``F.cross_entropy(x, y, label_smoothing=eps)`` plus PaLM's z-loss. The gradient is
multiplied by ``grad_scale`` (times ``row_scale[i]`` when given) and either returned as a
compact ``[M, V]`` tensor or written over the logits rows in place.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._loss_common import work_dtype

GRAD_MODES = ("none", "compact", "inplace")


def reference_cross_entropy_rows(
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
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Loss (and gradient) of the labelled rows of ``logits``.

    Args:
        logits: ``[N, V]`` fp16/bf16/fp32/fp64.
        rows: ``[M]`` int64 row indices, or None for rows ``0..M-1``.
        targets: ``[M]`` int64 classes in ``[0, V)``.
        grad_mode: ``"none"``; ``"compact"`` (a new ``[M, V]`` tensor in logits' dtype);
            ``"inplace"`` (gradient written over ``logits[rows]``, ``logits`` returned).
        row_scale: optional ``[M]`` fp32 per-row factor on the gradient.
        feedback: optional ``(ce [M] fp32 (fp64 for fp64), correct [M] uint8)`` buffers, filled
            from the same row statistics: ``ce_i = lse - x_y`` (the plain cross-entropy, no
            smoothing or z-loss) and ``correct_i = (x_y == max_j x_j)``.

    Returns:
        ``(loss [M] in fp32 (fp64 for fp64 logits), gradient or None)``.
    """
    vocab = logits.shape[1]
    selected = logits if rows is None else logits.index_select(0, rows)
    x = selected.to(work_dtype(logits.dtype))
    lse = torch.logsumexp(x, dim=1)
    x_target = x.gather(1, targets.unsqueeze(1)).squeeze(1)
    eps = label_smoothing
    loss = lse - (1.0 - eps) * x_target + z_loss * lse * lse
    if eps:  # skipped at 0: sum(x) may be -inf (masked classes)
        loss = loss - (eps / vocab) * x.sum(dim=1)
    if feedback is not None:  # before the gradient: in place, it overwrites the logits x may alias
        feedback[0].copy_(lse - x_target)
        feedback[1].copy_(x_target == x.max(dim=1).values)
    if grad_mode == "none":
        return loss, None
    scale = torch.full_like(lse, grad_scale)
    if row_scale is not None:
        scale = scale * row_scale.to(scale.dtype)
    grad = torch.exp(x - lse.unsqueeze(1)) * ((1.0 + 2.0 * z_loss * lse) * scale).unsqueeze(1)
    grad = grad - (scale * (eps / vocab)).unsqueeze(1)
    grad.scatter_add_(1, targets.unsqueeze(1), -(scale * (1.0 - eps)).unsqueeze(1))
    grad = grad.to(logits.dtype)
    if grad_mode == "compact":
        return loss, grad
    if rows is None:
        logits[: grad.shape[0]].copy_(grad)
    else:
        logits.index_copy_(0, rows, grad)
    return loss, logits
