"""fused_masked_lm_loss: every backend against the float64 oracle (linear + F.cross_entropy) and
against masked_cross_entropy on materialised logits, on ONE ``fused_sample_inputs`` generator
(loss, gradients of hidden/weight/bias, opcheck, torch.compile); chunking bounds the logits held."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backends import kernel_device, require_backend
from loss_samples import (
    FUSED_TOLERANCES,
    TOLERANCES,
    assert_close,
    fused_sample_inputs,
    leaf,
    reference_fused_masked_lm_loss,
)

import fastmask
from fastmask import _loss_common as loss_common
from fastmask import fused_linear_cross_entropy as fused_ops

BACKENDS = ["reference", "cpp", pytest.param("triton", marks=pytest.mark.triton)]
SAMPLES = list(fused_sample_inputs())
SAMPLE_IDS = [name for name, _ in SAMPLES]
QUICK = [
    s
    for s in SAMPLES
    if s[0]
    in (
        "40x32x300-mean-ign0.85-float32-chunk7",
        "40x32x300-none-ign0.85-bfloat16-chunk7",
        "40x32x300-sum-ign1.0-float16-chunkNone",
        "3x50-3d-ls-z",
        "nobias-chunk1",
        "num-items",
    )
]
_TENSORS = ("hidden", "weight", "bias", "labels")


def _split(kwargs: dict):
    device = kernel_device()
    tensors = {k: (None if kwargs.get(k) is None else kwargs[k].to(device)) for k in _TENSORS}
    options = {k: v for k, v in kwargs.items() if k not in _TENSORS}
    return tensors, options


def _oracle_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "chunk_size"}


def _grads(tensors):
    return [None if tensors[k] is None else tensors[k].grad for k in ("hidden", "weight", "bias")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", SAMPLES, ids=SAMPLE_IDS)
def test_matches_float64_oracle(backend, name, kwargs):
    require_backend(backend, kernel_device())
    tensors, options = _split(kwargs)
    dtype = tensors["hidden"].dtype
    tol = FUSED_TOLERANCES[dtype]
    want_in = {k: (v if k == "labels" else leaf(v, torch.float64)) for k, v in tensors.items()}
    want = reference_fused_masked_lm_loss(
        want_in["hidden"], want_in["weight"], want_in["labels"], want_in["bias"], **_oracle_options(options)
    )
    grad_output = (
        torch.rand(want.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(want.device) + 0.5
    )
    want.backward(grad_output)
    got_in = {k: (v if k == "labels" else leaf(v)) for k, v in tensors.items()}
    before = {k: v.clone() for k, v in tensors.items() if v is not None}
    got = fastmask.fused_masked_lm_loss(
        got_in["hidden"], got_in["weight"], got_in["labels"], got_in["bias"], backend=backend, **options
    )
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert_close(got, want, rtol=tol["loss_rtol"], atol=tol["loss_atol"], what=f"{backend} loss")
    got.backward(grad_output.to(torch.float32))
    for label, g, w in zip(("hidden", "weight", "bias"), _grads(got_in), _grads(want_in)):
        if w is None:
            continue
        assert g.dtype == dtype and g.shape == w.shape
        scale = float(w.abs().max()) or 1.0
        assert_close(g, w, rtol=tol["grad_rtol"], atol=tol["grad_atol"] * scale, what=f"{backend} grad {label}")
    ignored = tensors["labels"] == options.get("ignore_index", -100)
    assert bool((got_in["hidden"].grad[ignored] == 0).all()), "unlabelled rows of hidden must get a zero gradient"
    for k, v in before.items():
        assert torch.equal(tensors[k], v), f"{k} was modified"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", QUICK, ids=[n for n, _ in QUICK])
def test_matches_masked_cross_entropy_on_full_logits(backend, name, kwargs):
    """Same dtype path as the unfused head (logits rounded by the same matmul): tight tolerances."""
    require_backend(backend, kernel_device())
    tensors, options = _split(kwargs)
    tol = TOLERANCES[tensors["hidden"].dtype]
    ce_options = _oracle_options(options)
    full = {k: (v if k == "labels" else leaf(v)) for k, v in tensors.items()}
    logits = F.linear(full["hidden"], full["weight"], full["bias"])
    want = fastmask.masked_cross_entropy(logits, full["labels"], backend=backend, **ce_options)
    fused = {k: (v if k == "labels" else leaf(v)) for k, v in tensors.items()}
    got = fastmask.fused_masked_lm_loss(
        fused["hidden"], fused["weight"], fused["labels"], fused["bias"], backend=backend, **options
    )
    # The matmul of a chunk and of the whole batch may round differently in low precision.
    loss_tol = dict(rtol=1e-5, atol=1e-5) if tensors["hidden"].dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    assert_close(got, want, what="loss", **loss_tol)
    grad_output = torch.rand_like(want) + 0.5
    want.backward(grad_output)
    got.backward(grad_output)
    for label, g, w in zip(("hidden", "weight", "bias"), _grads(fused), _grads(full)):
        if w is not None:
            # Low precision: bf16/fp16 products with cancellation, so atol scales with the largest entry.
            fp32 = tensors["hidden"].dtype == torch.float32
            rtol, atol = (1e-4, 1e-6) if fp32 else (3 * tol["grad_rtol"], tol["grad_rtol"])
            assert_close(g, w, rtol=rtol, atol=atol * (float(w.abs().max()) or 1.0), what=f"grad {label}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunks_bound_the_logits(backend, monkeypatch):
    """The kernel never sees more than chunk_size rows of logits, and only labelled rows."""
    require_backend(backend, kernel_device())
    seen = []
    original = fused_ops.cross_entropy_rows

    def spy(backend_name, logits, rows, targets, **kw):
        seen.append(tuple(logits.shape))
        return original(backend_name, logits, rows, targets, **kw)

    monkeypatch.setattr(fused_ops, "cross_entropy_rows", spy)
    hidden = torch.randn(200, 16, device=kernel_device(), requires_grad=True)
    weight = torch.randn(500, 16, device=kernel_device(), requires_grad=True)
    labels = torch.randint(0, 500, (200,), device=kernel_device())
    labels[torch.rand(200) < 0.85] = -100
    count = int((labels != -100).sum())
    fastmask.fused_masked_lm_loss(hidden, weight, labels, chunk_size=9, backend=backend).backward()
    assert seen and all(rows <= 9 and vocab == 500 for rows, vocab in seen)
    assert sum(rows for rows, _ in seen) == count


def test_default_chunk_size():
    assert fused_ops.default_chunk_size(30522) == 2**24 // 30522 == 549
    assert fused_ops.default_chunk_size(128256) == 130
    assert fused_ops.default_chunk_size(2**25) == 1
    # at least the head's width: the chunk's logits may be as large as the weight
    assert fused_ops.default_chunk_size(30522, 384) == 549
    assert fused_ops.default_chunk_size(30522, 768) == 768
    assert fused_ops.default_chunk_size(128256, 1024) == 1024


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_weight_and_no_grad(backend):
    require_backend(backend, kernel_device())
    hidden = torch.randn(30, 8, device=kernel_device(), requires_grad=True)
    weight = torch.randn(40, 8, device=kernel_device())
    bias = torch.randn(40, device=kernel_device(), requires_grad=True)
    labels = torch.randint(0, 40, (30,), device=kernel_device())
    loss = fastmask.fused_masked_lm_loss(hidden, weight, labels, bias, backend=backend)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None and bias.grad is not None
    with torch.no_grad():
        again = fastmask.fused_masked_lm_loss(hidden, weight, labels, bias, backend=backend)
    assert again.grad_fn is None and torch.equal(again, loss.detach())


def test_second_backward_through_the_same_forward_raises():
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    loss = fastmask.fused_masked_lm_loss(hidden, weight, torch.randint(0, 30, (10,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


# ----------------------------------------------------------------------------- opcheck / compile
def _op_args(kwargs: dict, backend: str):
    tensors, options = _split(kwargs)
    hidden, weight, labels, bias = (tensors[k] for k in ("hidden", "weight", "labels", "bias"))
    flat_labels = labels.reshape(-1).long()
    reduction = options.get("reduction", "mean")
    denominator, scale = loss_common.loss_normalizer(
        flat_labels, options.get("ignore_index", -100), reduction, options.get("num_items_in_batch"), False
    )
    chunk = options.get("chunk_size") or fused_ops.default_chunk_size(*weight.shape)
    return (
        hidden.reshape(-1, hidden.shape[-1]).detach().requires_grad_(),
        weight.detach().requires_grad_(),
        flat_labels,
        None if bias is None else bias.detach().requires_grad_(),
        options.get("ignore_index", -100),
        loss_common.REDUCTIONS.index(reduction),
        options.get("label_smoothing", 0.0),
        options.get("z_loss", 0.0),
        chunk,
        denominator,
        scale,
        True,
        True,
        bias is not None,
        backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", QUICK, ids=[n for n, _ in QUICK])
def test_opcheck(backend, name, kwargs):
    require_backend(backend, kernel_device())
    args = _op_args(kwargs, backend)
    torch.library.opcheck(fused_ops._fused_op, args)
    hidden, weight, labels, bias = args[:4]
    grad_output = torch.rand(labels.shape[0], device=labels.device)
    torch.library.opcheck(
        fused_ops._fused_backward_op,
        (
            hidden.detach(),
            weight.detach(),
            labels,
            None if bias is None else bias.detach(),
            grad_output,
            args[4],
            args[6],
            args[7],
            args[8],
            True,
            True,
            bias is not None,
            backend,
        ),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", QUICK[:3], ids=[n for n, _ in QUICK[:3]])
def test_torch_compile_fullgraph(backend, name, kwargs):
    require_backend(backend, kernel_device())
    torch._dynamo.reset()
    tensors, options = _split(kwargs)

    def step(hidden, weight, labels, bias):
        return fastmask.fused_masked_lm_loss(torch.tanh(hidden), weight, labels, bias, backend=backend, **options)

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    eager_in = {k: (v if k == "labels" else leaf(v)) for k, v in tensors.items()}
    compiled_in = {k: (v if k == "labels" else leaf(v)) for k, v in tensors.items()}
    eager = step(eager_in["hidden"], eager_in["weight"], eager_in["labels"], eager_in["bias"])
    got = compiled(compiled_in["hidden"], compiled_in["weight"], compiled_in["labels"], compiled_in["bias"])
    tol = TOLERANCES[tensors["hidden"].dtype]
    assert_close(got, eager, rtol=1e-3 if tensors["hidden"].dtype != torch.float32 else 1e-6, atol=1e-6, what="loss")
    grad_output = torch.rand_like(eager) + 0.5
    eager.backward(grad_output)
    got.backward(grad_output)
    for label, g, w in zip(("hidden", "weight", "bias"), _grads(compiled_in), _grads(eager_in)):
        if w is not None:
            assert_close(g, w, rtol=tol["grad_rtol"], atol=1e-3 * (float(w.abs().max()) or 1.0), what=f"grad {label}")


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("backend", BACKENDS)
def test_label_out_of_range_raises(backend):
    require_backend(backend, kernel_device())
    hidden, weight = torch.randn(4, 8, device=kernel_device()), torch.randn(20, 8, device=kernel_device())
    with pytest.raises(ValueError, match="labels contains 20"):
        fastmask.fused_masked_lm_loss(
            hidden, weight, torch.tensor([1, 20, -100, 3], device=kernel_device()), backend=backend
        )


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w[:, :5], y, b), ValueError, "hidden has 8 features"),
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y[:3], b), ValueError, "labels has shape"),
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w.double(), y, b), TypeError, "weight is torch.float64"),
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b[:5]), ValueError, "bias has 5 entries"),
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y.float(), b), TypeError, "labels has dtype"),
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, chunk_size=0), ValueError, "chunk_size=0"),
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, reduction="max"), ValueError, "reduction"),
        (
            lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, label_smoothing=2),
            ValueError,
            "label_smoothing",
        ),
        (
            lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, num_items_in_batch=2, reduction="sum"),
            ValueError,
            "num_items_in_batch",
        ),
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w.unsqueeze(0), y, b), ValueError, "weight must be 2-D"),
        (lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, ignore_index=2**63), ValueError, "ignore_index"),
        (
            lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, num_items_in_batch=float("nan")),
            ValueError,
            "num_items_in_batch=nan",
        ),
        (
            lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, num_items_in_batch=torch.tensor(float("nan"))),
            ValueError,
            "num_items_in_batch=nan",
        ),
        (
            lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, num_items_in_batch=torch.tensor(float("inf"))),
            ValueError,
            "num_items_in_batch=inf",
        ),
        (
            lambda h, w, y, b: fastmask.fused_masked_lm_loss(h, w, y, b, num_items_in_batch=-1.5),
            ValueError,
            "num_items_in_batch=-1.5",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    hidden, weight, labels, bias = torch.randn(4, 8), torch.randn(20, 8), torch.tensor([1, 2, -100, 3]), torch.randn(20)
    with pytest.raises(error, match=match):
        call(hidden, weight, labels, bias)


def test_chunk_size_larger_than_int64_is_one_chunk():
    """Any positive chunk_size is accepted: beyond the number of rows it means one chunk (it
    reached the op as an int64 before and raised RuntimeError past 2**63)."""
    g = torch.Generator().manual_seed(4)
    hidden, weight = torch.randn(6, 8, generator=g), torch.randn(20, 8, generator=g)
    labels = torch.tensor([1, -100, 5, 19, -100, 0])
    want = fastmask.fused_masked_lm_loss(hidden, weight, labels)
    for chunk in (6, 2**62, 2**70):
        assert torch.equal(fastmask.fused_masked_lm_loss(hidden, weight, labels, chunk_size=chunk), want)


def test_float64_reduction_none_gradients_stay_float64():
    """reduction="none" recomputes the gradient in backward with the per-row grad_output; for
    float64 inputs that factor was rounded to float32 (relative error ~1e-8)."""
    g = torch.Generator().manual_seed(5)
    tensors = dict(
        hidden=torch.randn(2, 7, 5, generator=g, dtype=torch.float64),
        weight=torch.randn(11, 5, generator=g, dtype=torch.float64),
        bias=torch.randn(11, generator=g, dtype=torch.float64),
    )
    labels = torch.randint(0, 11, (2, 7), generator=g)
    labels[0, ::3] = -100
    grad_output = torch.randn(2, 7, generator=g, dtype=torch.float64) * 3 + 1.0 / 3.0
    want_in = {k: leaf(v) for k, v in tensors.items()}
    reference_fused_masked_lm_loss(
        want_in["hidden"], want_in["weight"], labels, want_in["bias"], reduction="none", z_loss=1e-2
    ).backward(grad_output)
    got_in = {k: leaf(v) for k, v in tensors.items()}
    fastmask.fused_masked_lm_loss(
        got_in["hidden"], got_in["weight"], labels, got_in["bias"], reduction="none", z_loss=1e-2, chunk_size=3
    ).backward(grad_output)
    tol = FUSED_TOLERANCES[torch.float64]
    for name in tensors:
        scale = float(want_in[name].grad.abs().max())
        assert_close(
            got_in[name].grad,
            want_in[name].grad,
            rtol=tol["grad_rtol"],
            atol=tol["grad_atol"] * scale,
            what=f"grad {name}",
        )
