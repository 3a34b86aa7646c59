"""The fused sparse MLM head: ``fused_masked_lm_loss(hidden, weight, labels, bias)``.

Same loss and gradients as ``masked_cross_entropy(hidden @ weight.T + bias, labels)``, without
the ``[N, V]`` logits: the labelled rows of ``hidden`` are gathered first (``M`` of ``N``, ~15% in
MLM), then logits are formed ``chunk_size`` rows at a time (matmul through torch). On each chunk
the cross-entropy kernel (C++ on CPU, Triton on CUDA) writes the loss and, in place over the
chunk's logits, their gradient; the chunk's contributions to ``grad_hidden`` (rows ``M``),
``grad_weight`` and ``grad_bias`` (accumulated in fp32 for fp16/bf16) are taken at once and the
chunk is dropped (Liger-Kernel's fused-linear-cross-entropy pattern); ``grad_hidden`` is
scattered back to all ``N`` rows (zero at unlabelled rows). Backward only multiplies the stored
gradients by ``grad_output``, in place, so it runs once per forward. With ``reduction="none"``
the per-row ``grad_output`` is unknown in the forward, so the forward keeps only the losses and
backward recomputes the chunks.

Peak extra memory: the gathered rows and their gradient (``2 M H``), the fp32 weight (and bias)
gradient accumulator, and one chunk of logits.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ._loss_common import (
    LABEL_DTYPES,
    LOGITS_DTYPES,
    NONE,
    REDUCTIONS,
    check_loss_options,
    choose_backend,
    loss_normalizer,
    normalization,
    reduce_losses,
    select_rows,
    work_dtype,
)
from ._validation import check_int, check_tensor
from .cross_entropy import cpp_empty, cross_entropy_rows, feedback_buffers
from .loss_feedback import check_feedback, deliver_feedback

__all__ = ["fused_masked_lm_loss", "default_chunk_size", "CHUNK_ELEMENTS"]

# Default chunk: the most rows whose logits hold at most max(2**24, V * H) elements, i.e. 64 MiB
# of fp32 or the size of the weight gradient, which exists anyway, whichever is larger: 549 rows
# for V = 30522, H = 384; 768 for BERT-base (V = 30522, H = 768); 1024 for V = 128256, H = 1024.
# Each chunk reads and writes the whole [V, H] weight gradient with an update of rank = its
# rows, so at a large V many small chunks are memory-bound: on 2 CPU cores (H = 1024,
# V = 128256, 30% of N = 4096 rows labelled) one chunk of 1229 rows ran 2.3x and chunks of 512
# rows 1.6x faster than chunks of 130 (the 2**24 rule alone). At V = 30522, H = 384, 2**24 gave
# 8.0x naive linear + CE and 2**23 gave 7.4x.
CHUNK_ELEMENTS = 1 << 24


def default_chunk_size(vocab: int, width: int = 0) -> int:
    """Rows per chunk when ``chunk_size=None``: ``max(1, 2**24 // vocab, width)`` for a head of
    ``vocab`` rows of ``width`` (the chunk's logits stay within 64 MiB of fp32 or the weight's
    own size)."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab), width)


def _accumulate(acc: Optional[torch.Tensor], update: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return update.to(dtype) if acc is None else acc.add_(update)


def chunked_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    rows: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float,
    z_loss: float,
    chunk_size: int,
    grad_scale: float,
    row_scale: Optional[torch.Tensor],
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
    feedback: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
):
    """Per-row losses of ``hidden[rows] @ weight.T + bias`` and, if asked, their gradients.

    Returns ``(loss [M], grad of hidden[rows] [M, H] or None, grad_weight [V, H] in fp32
    (fp64 for fp64) or None, grad_bias [V] likewise or None)``; gradients are scaled by
    ``grad_scale`` and ``row_scale`` (``[M]``) as in the row-level cross-entropy contract;
    ``feedback``: optional ``(ce [M], correct [M] uint8)`` buffers the kernel fills chunk by chunk.
    """
    count = rows.shape[0]
    vocab, width = weight.shape
    work = work_dtype(hidden.dtype)
    want_grad = need_hidden or need_weight or need_bias
    loss = torch.empty(count, dtype=work, device=hidden.device)
    grad_rows = hidden.new_empty((count, width)) if need_hidden else None
    grad_weight = grad_bias = None
    selected = hidden.index_select(0, rows)
    weight_t = weight.t()
    # Equal chunks of at most chunk_size rows (no small remainder chunk), all in one buffer.
    n_chunks = max(1, -(-count // chunk_size))
    step = -(-count // n_chunks) if count else 1
    if backend == "cpp" and hidden.device.type == "cpu" and hidden.dtype != torch.float64:
        buffer = cpp_empty((min(step, count), vocab), hidden.dtype)  # recycled across calls
    else:
        buffer = hidden.new_empty((min(step, count), vocab))
    for start in range(0, count, step):
        end = min(count, start + step)
        h = selected[start:end]
        logits = buffer[: end - start]
        if bias is not None:
            torch.addmm(bias, h, weight_t, out=logits)
        else:
            torch.mm(h, weight_t, out=logits)
        chunk_loss, _ = cross_entropy_rows(
            backend,
            logits,
            None,
            targets[start:end],
            grad_scale=grad_scale,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            grad_mode="inplace" if want_grad else "none",
            row_scale=None if row_scale is None else row_scale[start:end],
            feedback=None if feedback is None else (feedback[0][start:end], feedback[1][start:end]),
        )
        loss[start:end] = chunk_loss
        if not want_grad:
            continue
        # `logits` now holds d loss / d logits of the chunk.
        if need_hidden:
            torch.mm(logits, weight, out=grad_rows[start:end])
        if need_weight:
            if grad_weight is None and weight.dtype == work:
                grad_weight = torch.mm(logits.t(), h)
            elif weight.dtype == work:
                grad_weight.addmm_(logits.t(), h)
            else:  # fp16/bf16: one low-precision product per chunk, summed in fp32
                grad_weight = _accumulate(grad_weight, torch.mm(logits.t(), h), work)
        if need_bias:
            grad_bias = _accumulate(grad_bias, logits.sum(0, dtype=work), work)
    if need_weight and grad_weight is None:
        grad_weight = torch.zeros((vocab, width), dtype=work, device=weight.device)
    if need_bias and grad_bias is None:
        grad_bias = torch.zeros(vocab, dtype=work, device=weight.device)
    return loss, grad_rows, grad_weight, grad_bias


def _gradients(hidden, weight, bias, rows, grad_rows, grad_weight, grad_bias) -> tuple:
    """The ops' ``(grad_hidden [N, H], grad_weight [V, H], grad_bias [V])`` from
    :func:`chunked_head`'s: ``grad_rows`` scattered back to all ``N`` rows (zero at unlabelled
    ones), the accumulators cast to the parameters' dtype; an empty tensor for one not computed."""
    if grad_rows is None:
        grad_hidden = hidden.new_empty((0,))
    else:
        grad_hidden = grad_rows.new_zeros((hidden.shape[0], grad_rows.shape[1])).index_copy_(0, rows, grad_rows)
    return (
        grad_hidden,
        weight.new_empty((0,)) if grad_weight is None else grad_weight.to(weight.dtype),
        hidden.new_empty((0,)) if grad_bias is None else grad_bias.to(bias.dtype),
    )


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("fastmask::fused_masked_lm_loss", mutates_args=())
def _fused_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor],
    ignore_index: int,
    reduction: int,
    label_smoothing: float,
    z_loss: float,
    chunk_size: int,
    denominator: Optional[torch.Tensor],
    loss_scale: float,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
    feedback: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad_hidden [N, H], grad_weight [V, H], grad_bias [V], feedback ce [M], feedback
    correct [M] uint8)``; a gradient not asked for (or any, with reduction none) is an empty
    tensor, so is the feedback unless asked."""
    n_rows = hidden.shape[0]
    rows, targets = select_rows(labels, ignore_index, weight.shape[0])
    grad_scale, divisor = normalization(reduction, rows.shape[0], denominator, loss_scale)
    fb = feedback_buffers(rows.shape[0], hidden, feedback)
    in_forward = reduction != NONE
    loss_rows, grad_rows, grad_weight, grad_bias = chunked_head(
        hidden,
        weight,
        bias,
        rows,
        targets,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        chunk_size=chunk_size,
        grad_scale=grad_scale,
        row_scale=None,
        need_hidden=need_hidden and in_forward,
        need_weight=need_weight and in_forward,
        need_bias=need_bias and in_forward and bias is not None,
        backend=backend,
        feedback=fb if feedback else None,
    )
    loss = reduce_losses(loss_rows, rows, n_rows, reduction, divisor, loss_scale, work_dtype(hidden.dtype))
    return (loss,) + _gradients(hidden, weight, bias, rows, grad_rows, grad_weight, grad_bias) + fb


@_fused_op.register_fake
def _fused_fake(
    hidden,
    weight,
    labels,
    bias,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss,
    chunk_size,
    denominator,
    loss_scale,
    need_hidden,
    need_weight,
    need_bias,
    backend,
    feedback=False,
):
    in_forward = reduction != NONE
    loss = hidden.new_empty((hidden.shape[0],) if reduction == NONE else (), dtype=work_dtype(hidden.dtype))
    grad_hidden = hidden.new_empty(hidden.shape if need_hidden and in_forward else (0,))
    grad_weight = weight.new_empty(weight.shape if need_weight and in_forward else (0,))
    has_bias = need_bias and in_forward and bias is not None
    grad_bias = bias.new_empty(bias.shape) if has_bias else hidden.new_empty((0,))
    fb = feedback_buffers(torch.library.get_ctx().new_dynamic_size() if feedback else 0, hidden, feedback)
    return loss, grad_hidden, grad_weight, grad_bias, fb[0], fb[1]


@torch.library.custom_op("fastmask::fused_masked_lm_loss_backward", mutates_args=())
def _fused_backward_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor],
    grad_output: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    chunk_size: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for reduction="none" (per-row ``grad_output [N]``), recomputing the chunks."""
    rows, targets = select_rows(labels, ignore_index, weight.shape[0])
    row_scale = grad_output.reshape(-1).index_select(0, rows).to(work_dtype(hidden.dtype))  # fp64 stays fp64
    _, grad_rows, grad_weight, grad_bias = chunked_head(
        hidden,
        weight,
        bias,
        rows,
        targets,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        chunk_size=chunk_size,
        grad_scale=1.0,
        row_scale=row_scale,
        need_hidden=need_hidden,
        need_weight=need_weight,
        need_bias=need_bias and bias is not None,
        backend=backend,
    )
    return _gradients(hidden, weight, bias, rows, grad_rows, grad_weight, grad_bias)


@_fused_backward_op.register_fake
def _fused_backward_fake(
    hidden,
    weight,
    labels,
    bias,
    grad_output,
    ignore_index,
    label_smoothing,
    z_loss,
    chunk_size,
    need_hidden,
    need_weight,
    need_bias,
    backend,
):
    return (
        hidden.new_empty(hidden.shape if need_hidden else (0,)),
        weight.new_empty(weight.shape if need_weight else (0,)),
        bias.new_empty(bias.shape) if need_bias and bias is not None else hidden.new_empty((0,)),
    )


def _fused_setup_context(ctx, inputs, output):
    (
        hidden,
        weight,
        labels,
        bias,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        chunk_size,
        _denominator,
        _loss_scale,
        need_hidden,
        need_weight,
        need_bias,
        backend,
    ) = inputs[:15]
    ctx.reduction = reduction
    ctx.needs = (need_hidden, need_weight, need_bias and bias is not None)
    # Only the loss is differentiable: no zero gradients get materialised for the stored ones.
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    if reduction == NONE:
        ctx.save_for_backward(hidden, weight, labels, bias)
        ctx.options = (ignore_index, label_smoothing, z_loss, chunk_size)
        ctx.backend = backend
    else:
        ctx.save_for_backward(*output[1:4])


def _fused_backward(ctx, grad_loss, *_unused):
    if grad_loss is None:  # grads are not materialised: the loss did not reach the output
        return (None,) * 16
    need_hidden, need_weight, need_bias = ctx.needs
    if ctx.reduction == NONE:
        hidden, weight, labels, bias = ctx.saved_tensors
        grads = _fused_backward_op(
            hidden, weight, labels, bias, grad_loss, *ctx.options, need_hidden, need_weight, need_bias, ctx.backend
        )
    else:
        # Eager: the stored gradients are scaled in place and handed on (no second weight-sized
        # buffer), so backward can run once per forward. Traced (torch.compile, AOT): out of place.
        if type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling():
            if getattr(ctx, "consumed", False):
                raise RuntimeError(
                    "fused_masked_lm_loss: backward ran twice through the same forward (retain_graph=True); "
                    "its stored gradients are scaled in place, so recompute the loss for a second backward"
                )
            ctx.consumed = True
            grads = tuple(g.mul_(grad_loss) for g in ctx.saved_tensors)
        else:
            grads = tuple(g * grad_loss for g in ctx.saved_tensors)
    grad_hidden, grad_weight, grad_bias = (g if need else None for g, need in zip(grads, ctx.needs))
    return (grad_hidden, grad_weight, None, grad_bias) + (None,) * 12


_fused_op.register_autograd(_fused_backward, setup_context=_fused_setup_context)


# ----------------------------------------------------------------------------- public API
def fused_masked_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: Optional[int] = None,
    num_items_in_batch: Union[int, torch.Tensor, None] = None,
    global_normalization: bool = False,
    backend: str = "auto",
    feedback=None,
) -> torch.Tensor:
    """Masked-LM loss of a linear head without materialising ``[N, V]`` logits.

    Equals ``masked_cross_entropy(hidden @ weight.T + bias, labels, ...)`` with the same
    gradients for ``hidden``, ``weight`` and ``bias``.

    Args:
        hidden: ``[N, H]`` or ``[B, L, H]`` fp32/fp16/bf16 (fp64 on the reference backend),
            the input of the decoder (after any transform / layer norm).
        weight: ``[V, H]`` decoder weight, same dtype and device (may be tied to embeddings).
        labels: ``hidden.shape[:-1]`` int64/int32 class ids or ``ignore_index``.
        bias: optional ``[V]`` decoder bias.
        chunk_size: labelled rows per chunk of logits; None: :func:`default_chunk_size`,
            ``max(2**24 // V, H)`` (the chunk's logits stay within 64 MiB of fp32 or the size of
            the weight, whichever is larger).
        ignore_index, reduction, label_smoothing, z_loss, num_items_in_batch,
        global_normalization, backend: as :func:`fastmask.masked_cross_entropy`; ``backend``
            picks the cross-entropy kernel run on each chunk.
        feedback: None or an object with ``update(labels, losses, correct)``, as in
            :func:`fastmask.masked_cross_entropy`: each chunk's kernel writes the labelled rows'
            plain cross-entropy and argmax == label bit (see :mod:`fastmask.loss_feedback`).

    Returns:
        fp32 loss (fp64 for fp64 inputs): a scalar, or ``labels``-shaped for ``"none"``.
    """
    check_tensor("hidden", hidden, dtypes=LOGITS_DTYPES)
    if hidden.dim() < 1:
        raise ValueError("hidden must be [N, H] or [B, L, H], got a 0-d tensor")
    check_tensor("weight", weight, dtypes=LOGITS_DTYPES, dim=2)
    check_tensor("labels", labels, dtypes=LABEL_DTYPES)
    vocab, width = weight.shape
    if hidden.shape[-1] != width:
        raise ValueError(
            f"hidden has {hidden.shape[-1]} features but weight {tuple(weight.shape)} expects {width}; "
            "weight must be [vocab_size, hidden_size]"
        )
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"labels has shape {tuple(labels.shape)} but hidden {tuple(hidden.shape)} needs labels of shape "
            f"{tuple(hidden.shape[:-1])}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"weight is {weight.dtype} but hidden is {hidden.dtype}; cast one of them (as F.linear requires)"
        )
    if bias is not None:
        check_tensor("bias", bias, dtypes=LOGITS_DTYPES, dim=1)
        if bias.shape[0] != vocab:
            raise ValueError(f"bias has {bias.shape[0]} entries but weight has {vocab} rows; pass a [{vocab}] bias")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"bias is {bias.dtype} but hidden is {hidden.dtype}; cast one of them")
    for name, tensor in (("weight", weight), ("labels", labels), ("bias", bias)):
        if tensor is not None and tensor.device != hidden.device:
            raise ValueError(f"{name} is on {tensor.device} but hidden on {hidden.device}; move them to one device")
    if vocab == 0 or width == 0 or labels.numel() == 0:
        raise ValueError(
            f"empty input: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}; pass at least one row and class"
        )
    ignore_index, reduction, label_smoothing, z_loss = check_loss_options(
        ignore_index, reduction, label_smoothing, z_loss
    )
    check_feedback(feedback)
    chunk_size = (
        default_chunk_size(vocab, width) if chunk_size is None else check_int("chunk_size", chunk_size, minimum=1)
    )
    chunk_size = min(chunk_size, labels.numel())  # more rows than the batch has is the whole batch
    flat_labels = labels.reshape(-1).to(torch.int64)
    denominator, loss_scale = loss_normalizer(
        flat_labels, ignore_index, reduction, num_items_in_batch, global_normalization
    )
    chosen = choose_backend(backend, hidden.device.type, hidden.dtype == torch.float64, "fused_masked_lm_loss")
    grad_on = torch.is_grad_enabled()
    outputs = _fused_op(
        hidden.reshape(-1, width),
        weight,
        flat_labels,
        bias,
        ignore_index,
        REDUCTIONS.index(reduction),
        label_smoothing,
        z_loss,
        chunk_size,
        denominator,
        loss_scale,
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
        chosen,
        *((True,) if feedback is not None else ()),  # without feedback, the call stays what it was
    )
    loss = outputs[0]
    if feedback is not None:
        deliver_feedback(feedback, flat_labels, ignore_index, outputs[4], outputs[5])
    if reduction == "none":
        loss = loss.view(labels.shape)
    return loss
