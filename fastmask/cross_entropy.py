"""The masked-position cross-entropy op: ``masked_cross_entropy`` and its backends.

The op layer validates, selects the labelled rows (``labels != ignore_index``), checks their
labels, and hands the kernels plain tensors: the logits as ``[N, V]`` with unit stride along V,
the labelled row indices, their targets and the gradient's scale. Each backend implements one
row-level contract (documented with the math in :mod:`fastmask.reference.cross_entropy`):
per-row losses plus the gradient of the logits, computed in the forward pass (Liger-style).
Backward then only scales that gradient by ``grad_output`` and places it: a compact ``[M, V]``
gradient of the ``M`` labelled rows is expanded into a zero ``[N, V]`` tensor, or, with
``inplace_backward=True``, the gradient was written over the logits themselves.

On CPU the gradient buffers come from the extension's allocator, which keeps the last two freed
blocks of 2 MiB or more for reuse: the first-touch page faults of a fresh ``[N, V]`` buffer cost
several times the kernel itself, and a training loop asks for the same sizes every step.
:func:`release_cached_buffers` frees them; ``FASTMASK_CACHE_BUFFERS=0`` turns the cache off.

``fastmask::masked_cross_entropy`` (functional, with ``register_autograd``) and
``fastmask::masked_cross_entropy_inplace`` (mutates the logits; wrapped in an
``autograd.Function``) are ``torch.library`` custom ops with fake implementations, so
``torch.compile(fullgraph=True)`` treats them as opaque.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from . import _backend
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
from ._validation import check_bool, check_not_leaf_for_inplace, check_tensor
from .loss_feedback import check_feedback, deliver_feedback
from .reference.cross_entropy import reference_cross_entropy_rows

__all__ = ["masked_cross_entropy", "release_cached_buffers", "REDUCTIONS"]

_KERNEL_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


# ----------------------------------------------------------------------------- backends
def _cpp_buffer(t: torch.Tensor):
    """A numpy view of a CPU tensor; fp16/bf16 as int16 bits."""
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy()


def release_cached_buffers() -> int:
    """Free the gradient blocks the C++ backend keeps for reuse; returns the bytes freed."""
    module = _backend.cpp_module()
    if module is None or not hasattr(module, "ce_cache_clear"):
        return 0
    return int(module.ce_cache_clear())


def cpp_empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor from the extension's allocator (recycles large blocks)."""
    count = 1
    for size in shape:
        count *= size
    itemsize = torch.empty((), dtype=dtype).element_size()
    buf = torch.from_numpy(_backend.cpp_module().ce_alloc(count * itemsize))
    return buf.view(dtype).view(shape)


def _cpp_rows(logits, rows, targets, *, grad_scale, label_smoothing, z_loss, grad_mode, row_scale=None, feedback=None):
    count, vocab = targets.shape[0], logits.shape[1]
    loss = torch.empty(count, dtype=torch.float32)
    grad = None
    if grad_mode == "compact":
        grad = cpp_empty((count, vocab), logits.dtype)
    elif grad_mode == "inplace":
        grad = logits
    _backend.cpp_kernels().ce_forward(
        _cpp_buffer(logits),
        _KERNEL_DTYPES[logits.dtype],
        None if rows is None else rows.contiguous().numpy(),
        targets.contiguous().numpy(),
        loss.numpy(),
        None,
        None if grad is None else _cpp_buffer(grad),
        grad_mode == "inplace",
        float(grad_scale),
        None if row_scale is None else row_scale.to(torch.float32).contiguous().numpy(),
        float(label_smoothing),
        float(z_loss),
        None if feedback is None else feedback[0].numpy(),
        None if feedback is None else feedback[1].numpy(),
    )
    return loss, grad


def _scale_rows_torch(buf, rows, factors):
    work = work_dtype(buf.dtype)
    scaled = buf.index_select(0, rows).to(work) * factors.to(work).unsqueeze(1)
    buf.index_copy_(0, rows, scaled.to(buf.dtype))


_ROW_IMPLS = {
    "reference": reference_cross_entropy_rows,
    "cpp": _cpp_rows,
    "triton": _backend.deferred("fastmask.kernels.cross_entropy", "triton_cross_entropy_rows"),
}


def cross_entropy_rows(backend, logits, rows, targets, **contract):
    """Dispatch the row-level contract: :func:`fastmask.reference.cross_entropy.reference_cross_entropy_rows`
    (its keywords: ``grad_scale``, ``label_smoothing``, ``z_loss``, ``grad_mode``, ``row_scale``,
    ``feedback``: optional ``(ce [M], correct [M] uint8)`` buffers the kernel fills in the same pass,
    :func:`feedback_buffers`) on ``backend``; fp64 logits always take the reference."""
    if logits.dtype == torch.float64:
        backend = "reference"
    return _ROW_IMPLS[backend](logits, rows, targets, **contract)


def feedback_buffers(count: int, logits: torch.Tensor, want: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ce, correct)``: empty ``[count]`` work-dtype and uint8 buffers for the kernels' feedback
    outputs, or two ``[0]`` tensors when ``want`` is False."""
    count = count if want else 0
    ce = torch.empty(count, dtype=work_dtype(logits.dtype), device=logits.device)
    return ce, torch.empty(count, dtype=torch.uint8, device=logits.device)


def _use_cpp(backend: str, t: torch.Tensor) -> bool:
    return backend == "cpp" and t.dtype in _KERNEL_DTYPES and t.device.type == "cpu"


def _expand_grad(backend, grad_rows, rows, grad_output, n_rows, per_row):
    """``out[rows[i]] = grad_output * grad_rows[i]``, zero elsewhere: ``[n_rows, V]``."""
    vocab = grad_rows.shape[1]
    work = work_dtype(grad_rows.dtype)
    go = grad_output.detach().to(work).reshape(-1).contiguous()
    if _use_cpp(backend, grad_rows):
        out = cpp_empty((n_rows, vocab), grad_rows.dtype)
        _backend.cpp_kernels().ce_expand_grad(
            _cpp_buffer(grad_rows), _KERNEL_DTYPES[grad_rows.dtype], rows.numpy(), _cpp_buffer(out), go.numpy(), per_row
        )
        return out
    out = grad_rows.new_zeros((n_rows, vocab))
    factor = go.index_select(0, rows).unsqueeze(1) if per_row else go
    out.index_copy_(0, rows, (grad_rows.to(work) * factor).to(grad_rows.dtype))
    return out


def _scale_rows(backend, buf, rows, grad_output, per_row):
    """In place: ``buf[rows[i]] *= grad_output`` (``grad_output[rows[i]]`` when ``per_row``)."""
    go = grad_output.detach().to(work_dtype(buf.dtype)).reshape(-1).contiguous()
    if _use_cpp(backend, buf):
        _backend.cpp_kernels().ce_scale_rows(
            _cpp_buffer(buf), _KERNEL_DTYPES[buf.dtype], rows.numpy(), go.numpy(), per_row
        )
        return
    factor = go.index_select(0, rows) if per_row else go.expand(rows.shape[0])
    _scale_rows_torch(buf, rows, factor)


def _zero_rows(backend, buf, rows):
    if _use_cpp(backend, buf):
        _backend.cpp_kernels().ce_zero_rows(_cpp_buffer(buf), rows.numpy())
    elif rows.numel():
        buf.index_fill_(0, rows, 0)


# ----------------------------------------------------------------------------- custom ops
def _labelled_forward(
    logits,
    labels,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss,
    denominator,
    loss_scale,
    backend,
    *,
    grad_mode,
    feedback=False,
):
    """``(loss in the reduction, gradient per ``grad_mode`` or None, labelled rows [M], feedback
    ce [M], feedback correct [M] uint8)`` of the custom ops' ``[N, V]`` logits and ``[N]`` int64
    labels; the feedback outputs are ``[0]`` unless ``feedback``."""
    rows, targets = select_rows(labels, ignore_index, logits.shape[1])
    grad_scale, divisor = normalization(reduction, rows.shape[0], denominator, loss_scale)
    fb = feedback_buffers(rows.shape[0], logits, feedback)
    loss_rows, grad = cross_entropy_rows(
        backend,
        logits,
        rows,
        targets,
        grad_scale=grad_scale,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        grad_mode=grad_mode,
        feedback=fb if feedback else None,
    )
    loss = reduce_losses(loss_rows, rows, logits.shape[0], reduction, divisor, loss_scale, work_dtype(logits.dtype))
    return loss, grad, rows, fb[0], fb[1]


@torch.library.custom_op("fastmask::masked_cross_entropy", mutates_args=())
def _masked_ce_op(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    reduction: int,
    label_smoothing: float,
    z_loss: float,
    denominator: Optional[torch.Tensor],
    loss_scale: float,
    compute_grad: bool,
    backend: str,
    feedback: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, gradient of the labelled rows [M, V] (scaled for the reduction), rows [M],
    feedback ce [M], feedback correct [M] uint8)``; the feedback outputs are ``[0]`` unless asked."""
    options = (ignore_index, reduction, label_smoothing, z_loss, denominator, loss_scale, backend)
    grad_mode = "compact" if compute_grad else "none"
    loss, grad, rows, fb_ce, fb_correct = _labelled_forward(
        logits, labels, *options, grad_mode=grad_mode, feedback=feedback
    )
    if grad is None:
        grad = logits.new_empty((0, logits.shape[1]))
    return loss, grad, rows, fb_ce, fb_correct


@_masked_ce_op.register_fake
def _masked_ce_fake(
    logits,
    labels,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss,
    denominator,
    loss_scale,
    compute_grad,
    backend,
    feedback=False,
):
    n_rows, vocab = logits.shape
    count = torch.library.get_ctx().new_dynamic_size()
    loss = logits.new_empty((n_rows,) if reduction == NONE else (), dtype=work_dtype(logits.dtype))
    grad = logits.new_empty((count if compute_grad else 0, vocab))
    fb = feedback_buffers(count, logits, feedback)
    return loss, grad, labels.new_empty((count,), dtype=torch.int64), fb[0], fb[1]


@torch.library.custom_op("fastmask::masked_cross_entropy_backward", mutates_args=())
def _expand_grad_op(
    grad_rows: torch.Tensor, rows: torch.Tensor, grad_output: torch.Tensor, n_rows: int, per_row: bool, backend: str
) -> torch.Tensor:
    """``[n_rows, V]``: ``grad_output`` times the saved gradient at ``rows``, zero elsewhere."""
    return _expand_grad(backend, grad_rows, rows, grad_output, n_rows, per_row)


@_expand_grad_op.register_fake
def _expand_grad_fake(grad_rows, rows, grad_output, n_rows, per_row, backend):
    return grad_rows.new_empty((n_rows, grad_rows.shape[1]))


def _masked_ce_setup_context(ctx, inputs, output):
    logits, _, _, reduction, _, _, _, _, compute_grad, backend = inputs[:10]
    _, grad, rows, fb_ce, fb_correct = output
    # Only the loss is differentiable: no zero gradients get materialised for the other outputs.
    ctx.mark_non_differentiable(grad, rows, fb_ce, fb_correct)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad, rows)
    ctx.n_rows = logits.shape[0]
    ctx.per_row = reduction == NONE
    ctx.compute_grad = compute_grad
    ctx.backend = backend


def _masked_ce_backward(ctx, grad_loss, *_unused):
    if grad_loss is None:  # grads are not materialised: the loss did not reach the output
        return (None,) * 11
    if not ctx.compute_grad:
        raise RuntimeError(
            "masked_cross_entropy: the forward ran without computing the gradient (grad mode was "
            "off or logits did not require grad); run the forward with torch.enable_grad()"
        )
    grad, rows = ctx.saved_tensors
    grad_logits = _expand_grad_op(grad, rows, grad_loss, ctx.n_rows, ctx.per_row, ctx.backend)
    return (grad_logits,) + (None,) * 10


_masked_ce_op.register_autograd(_masked_ce_backward, setup_context=_masked_ce_setup_context)


@torch.library.custom_op("fastmask::masked_cross_entropy_inplace", mutates_args=("logits",))
def _masked_ce_inplace_op(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    reduction: int,
    label_smoothing: float,
    z_loss: float,
    denominator: Optional[torch.Tensor],
    loss_scale: float,
    backend: str,
    feedback: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, feedback ce [M], feedback correct [M] uint8)`` (feedback ``[0]`` unless asked);
    overwrites ``logits`` with the (reduction-scaled) gradient, zero at ignored rows."""
    options = (ignore_index, reduction, label_smoothing, z_loss, denominator, loss_scale, backend)
    loss, _, _, fb_ce, fb_correct = _labelled_forward(logits, labels, *options, grad_mode="inplace", feedback=feedback)
    _zero_rows(backend, logits, (labels == ignore_index).nonzero().squeeze(1))
    return loss, fb_ce, fb_correct


@_masked_ce_inplace_op.register_fake
def _masked_ce_inplace_fake(
    logits, labels, ignore_index, reduction, label_smoothing, z_loss, denominator, loss_scale, backend, feedback=False
):
    loss = logits.new_empty((logits.shape[0],) if reduction == NONE else (), dtype=work_dtype(logits.dtype))
    fb = feedback_buffers(torch.library.get_ctx().new_dynamic_size() if feedback else 0, logits, feedback)
    return loss, fb[0], fb[1]


@torch.library.custom_op("fastmask::masked_cross_entropy_scale_rows_", mutates_args=("buf",))
def _scale_rows_op(
    buf: torch.Tensor, labels: torch.Tensor, ignore_index: int, grad_output: torch.Tensor, per_row: bool, backend: str
) -> None:
    """In place: the labelled rows of ``buf`` times ``grad_output`` (its row's value when ``per_row``)."""
    rows = (labels != ignore_index).nonzero().squeeze(1)
    _scale_rows(backend, buf, rows, grad_output, per_row)


@_scale_rows_op.register_fake
def _scale_rows_fake(buf, labels, ignore_index, grad_output, per_row, backend):
    return None


class _InplaceMaskedCrossEntropy(torch.autograd.Function):
    """The gradient is written over the logits in forward; backward scales it in place."""

    @staticmethod
    def forward(
        ctx,
        logits,
        labels,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss,
        denominator,
        loss_scale,
        backend,
        feedback=False,
    ):
        loss, fb_ce, fb_correct = _masked_ce_inplace_op(
            logits, labels, ignore_index, reduction, label_smoothing, z_loss, denominator, loss_scale, backend, feedback
        )
        ctx.save_for_backward(logits, labels)
        ctx.mark_non_differentiable(fb_ce, fb_correct)
        ctx.ignore_index = ignore_index
        ctx.per_row = reduction == NONE
        ctx.backend = backend
        return loss, fb_ce, fb_correct

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        buf, labels = ctx.saved_tensors
        _scale_rows_op(buf, labels, ctx.ignore_index, grad_loss, ctx.per_row, ctx.backend)
        return (buf,) + (None,) * 9


# ----------------------------------------------------------------------------- public API
def masked_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    inplace_backward: bool = False,
    num_items_in_batch: Union[int, torch.Tensor, None] = None,
    global_normalization: bool = False,
    backend: str = "auto",
    feedback=None,
) -> torch.Tensor:
    """Cross-entropy over the labelled positions only; ignored rows cost nothing.

    Equals ``F.cross_entropy(logits.float(), labels, ignore_index=..., reduction=...,
    label_smoothing=...)`` (flattened over the leading dims), plus ``z_loss * logsumexp(logits)**2``
    per labelled row when ``z_loss > 0`` (PaLM's z-loss). The gradient is computed in the forward
    pass and stored, so backward only scales it.

    Args:
        logits: ``[N, V]`` or ``[B, L, V]`` (classes last), fp32/fp16/bf16 (fp64 on the
            reference backend); any strides (a copy is made when the class dim is not
            contiguous). Math is fp32.
        labels: ``logits.shape[:-1]`` int64 or int32 class ids in ``[0, V)``, or ``ignore_index``.
        reduction: ``"mean"`` (over labelled positions), ``"sum"`` or ``"none"`` (per-token
            losses shaped like ``labels``, 0 at ignored positions).
        label_smoothing: in ``[0, 1]``, as torch.
        z_loss: weight of ``logsumexp**2`` per labelled row (0 disables).
        inplace_backward: write the gradient over ``logits`` during the forward (no second
            ``N x V`` buffer; ignored rows are zero-filled, still never read). **The logits are
            destroyed**: do not use them after this call, and nothing else may have saved them
            for its backward (autograd's version check raises if something did). Backward may
            run once. ``logits`` must not be a leaf that requires grad (nor a view of one):
            like torch's in-place ops, that raises ``ValueError``; pass a non-leaf (a model's
            output) or use ``inplace_backward=False``.
        num_items_in_batch: ``mean`` divides the summed loss by this count instead of the local
            number of labelled tokens (transformers' convention for gradient accumulation): an
            int, a float or a one-element tensor, finite and > 0 (0 only for a batch without
            labels, which then gives 0); NaN, inf, a negative value, or 0 with labels present
            raise ``ValueError``. Python numbers and CPU tensors are checked before any work;
            a CUDA tensor is not read by the argument checks (that would force a GPU sync) but
            when the op reads it to scale the loss, where the same check raises.
        global_normalization: under an initialised ``torch.distributed``, ``mean`` divides by the
            all-reduced number of labelled tokens over all ranks and multiplies by the world
            size, so DDP's gradient averaging gives exactly the single-process gradient (the
            mean of the per-rank values is the global mean loss). A no-op otherwise.
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``.
        feedback: None, or an object with ``update(labels, losses, correct)`` (a
            :class:`fastmask.TokenLossTracker`, a :class:`fastmask.LossFeedback`): after the
            forward it gets each labelled position's label id, plain cross-entropy (fp32,
            detached, before reduction, scaling, smoothing and z-loss) and whether the label is
            the argmax, written by the kernel in its forward pass (see
            :mod:`fastmask.loss_feedback`; a graph break under torch.compile).

    Returns:
        fp32 loss (fp64 for fp64 logits): a scalar, or ``labels``-shaped for ``"none"``.

    On CPU the C++ backend recycles its large gradient buffers (see
    :func:`release_cached_buffers`).

    Differences from torch: a batch with no labelled position gives loss 0 and a zero
    gradient for every reduction (torch's ``mean`` gives NaN); the loss is fp32 for fp16/bf16
    logits (torch returns the logits' dtype); class weights and probability targets are not
    supported; labels outside ``[0, V)`` raise ``ValueError``.
    """
    check_tensor("logits", logits, dtypes=LOGITS_DTYPES)
    if logits.dim() < 2:
        raise ValueError(f"logits must be [N, V] or [B, L, V] with classes last, got shape {tuple(logits.shape)}")
    check_tensor("labels", labels, dtypes=LABEL_DTYPES)
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels has shape {tuple(labels.shape)} but logits {tuple(logits.shape)} needs labels of shape "
            f"{tuple(logits.shape[:-1])} (classes are the last dim of logits)"
        )
    if labels.device != logits.device:
        raise ValueError(f"labels is on {labels.device} but logits on {logits.device}; move them to one device")
    vocab = logits.shape[-1]
    if vocab == 0 or labels.numel() == 0:
        raise ValueError(f"logits is empty (shape {tuple(logits.shape)}); pass at least one row and one class")
    ignore_index, reduction, label_smoothing, z_loss = check_loss_options(
        ignore_index, reduction, label_smoothing, z_loss
    )
    check_bool("inplace_backward", inplace_backward)
    check_feedback(feedback)
    flat_labels = labels.reshape(-1).to(torch.int64)
    denominator, loss_scale = loss_normalizer(
        flat_labels, ignore_index, reduction, num_items_in_batch, global_normalization
    )
    chosen = choose_backend(backend, logits.device.type, logits.dtype == torch.float64, "masked_cross_entropy")
    flat = logits.reshape(-1, vocab)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    inplace = inplace_backward and compute_grad
    if inplace:
        check_not_leaf_for_inplace(logits)
    # The kernels need unit stride along V; in place, rows must not overlap either.
    if (vocab > 1 and flat.stride(1) != 1) or (inplace and flat.shape[0] > 1 and flat.stride(0) < vocab):
        flat = flat.contiguous()
    code = REDUCTIONS.index(reduction)
    args = (flat, flat_labels, ignore_index, code, label_smoothing, z_loss, denominator, loss_scale)
    if inplace:
        # feedback is passed only when asked, so the call without it stays what it was
        outputs = _InplaceMaskedCrossEntropy.apply(*args, chosen, *((True,) if feedback is not None else ()))
        loss, fb_ce, fb_correct = outputs
    else:
        outputs = _masked_ce_op(*args, compute_grad, chosen, *((True,) if feedback is not None else ()))
        loss, fb_ce, fb_correct = outputs[0], outputs[3], outputs[4]
    if feedback is not None:
        deliver_feedback(feedback, flat_labels, ignore_index, fb_ce, fb_correct)
    if reduction == "none":
        loss = loss.view(labels.shape)
    return loss
