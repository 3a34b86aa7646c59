"""masked_cross_entropy: every backend against the float64 ``F.cross_entropy`` oracle on ONE
``sample_inputs`` generator (loss, gradient, in-place backward, opcheck, torch.compile), plus
the kernels' own pieces and argument checking. Tolerances per dtype: see ``loss_samples``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from backends import kernel_device, require_backend
from loss_samples import TOLERANCES, assert_close, leaf, reference_masked_cross_entropy, sample_inputs

import fastmask
from fastmask import _backend
from fastmask import _loss_common as loss_common
from fastmask import cross_entropy as ce_ops
from fastmask.reference.cross_entropy import reference_cross_entropy_rows

BACKENDS = ["reference", "cpp", pytest.param("triton", marks=pytest.mark.triton)]
SAMPLES = list(sample_inputs())
SAMPLE_IDS = [name for name, _ in SAMPLES]
# Subsets for the slower checks (opcheck, compile): one per kind of input.
QUICK = [
    s
    for s in SAMPLES
    if s[0].startswith("37x1000-mean-ign0.15")
    or s[0]
    in (
        "3x423x257-float32",
        "37x1000-none-ign0.99-float16-ls0.1-z0.001",
        "37x1000-sum-ign1.0-bfloat16-ls0.0-z0.0",
        "permuted-3d",
        "num-items-tensor",
        "ignore0-int32",
        "5x1",
    )
]


def _on_device(kwargs: dict) -> dict:
    device = kernel_device()
    return {
        k: v.to(device) if isinstance(v, torch.Tensor) and k in ("logits", "labels") else v for k, v in kwargs.items()
    }


def _oracle_options(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in ("logits", "labels")}


def _check_against_oracle(backend: str, kwargs: dict, *, inplace: bool = False) -> None:
    kwargs = _on_device(kwargs)
    logits, labels = kwargs["logits"], kwargs["labels"]
    options = _oracle_options(kwargs)
    tol = TOLERANCES[logits.dtype]
    # Oracle on a float64 copy.
    want_input = leaf(logits, torch.float64)
    want = reference_masked_cross_entropy(want_input, labels, **options)
    grad_output = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(
        want.device
    )
    want.backward(grad_output)
    # fastmask on a non-leaf view of a leaf, so in-place backward may overwrite it.
    base = leaf(logits)
    x = base * 1 if inplace else base
    before = logits.clone()
    got = fastmask.masked_cross_entropy(x, labels, inplace_backward=inplace, backend=backend, **options)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert_close(got, want, rtol=tol["loss_rtol"], atol=tol["loss_atol"], what=f"{backend} loss")
    got.backward(grad_output.to(torch.float32))
    scale = float(want_input.grad.abs().max()) or 1.0
    assert base.grad.dtype == logits.dtype and base.grad.shape == logits.shape
    assert_close(
        base.grad, want_input.grad, rtol=tol["grad_rtol"], atol=tol["grad_atol"] * scale, what=f"{backend} grad"
    )
    ignored = labels == options.get("ignore_index", -100)
    assert bool((base.grad[ignored] == 0).all()), "ignored rows must get a zero gradient"
    assert torch.equal(logits, before), "the input tensor was modified"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", SAMPLES, ids=SAMPLE_IDS)
def test_matches_torch(backend, name, kwargs):
    require_backend(backend, kernel_device())
    _check_against_oracle(backend, kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", QUICK, ids=[n for n, _ in QUICK])
def test_inplace_backward_matches_torch(backend, name, kwargs):
    require_backend(backend, kernel_device())
    _check_against_oracle(backend, kwargs, inplace=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_backward_overwrites_logits(backend):
    """The gradient reaching the logits is the logits' own buffer (no second N x V buffer)."""
    require_backend(backend, kernel_device())
    g = torch.Generator().manual_seed(3)
    base = torch.randn(30, 200, generator=g).to(kernel_device()).requires_grad_()
    labels = torch.randint(0, 200, (30,), generator=g).to(kernel_device())
    labels[::2] = -100
    logits = base * 2
    seen = []
    logits.register_hook(lambda grad: seen.append(grad))
    loss = fastmask.masked_cross_entropy(logits, labels, inplace_backward=True, backend=backend)
    want = torch.nn.functional.cross_entropy(base.detach().double() * 2, labels)
    assert abs(float(loss.detach()) - float(want)) < 1e-5
    loss.backward()
    assert seen[0].data_ptr() == logits.data_ptr(), "in-place backward allocated a new gradient buffer"
    assert bool((logits.detach()[::2] == 0).all()), "ignored rows of the destroyed logits must hold a zero gradient"


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_reach_the_kernel_without_a_copy(backend, monkeypatch):
    """Rows with a stride larger than V are read in place; a non-unit class stride is copied."""
    require_backend(backend, kernel_device())
    strides = []
    original = ce_ops.cross_entropy_rows

    def spy(backend_name, logits, *args, **kwargs):
        strides.append(logits.stride())
        return original(backend_name, logits, *args, **kwargs)

    monkeypatch.setattr(ce_ops, "cross_entropy_rows", spy)
    wide = torch.randn(20, 700, device=kernel_device())
    labels = torch.randint(0, 600, (20,), device=kernel_device())
    got = fastmask.masked_cross_entropy(wide[:, 50:650], labels, backend=backend)
    assert strides == [(700, 1)]
    fastmask.masked_cross_entropy(torch.randn(300, 20, device=kernel_device()).t(), labels % 300, backend=backend)
    assert strides[-1] == (300, 1)
    want = torch.nn.functional.cross_entropy(wide[:, 50:650].double(), labels)
    assert_close(got, want, rtol=1e-5, atol=1e-6, what="strided loss")


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_gives_zero_loss_and_gradient(backend):
    require_backend(backend, kernel_device())
    for reduction in ("mean", "sum", "none"):
        for inplace in (False, True):
            x = torch.randn(6, 50, device=kernel_device()).requires_grad_()
            labels = torch.full((6,), -100, device=kernel_device())
            loss = fastmask.masked_cross_entropy(
                x * 1, labels, reduction=reduction, inplace_backward=inplace, backend=backend
            )
            assert not torch.isnan(loss).any()
            assert bool((loss == 0).all())
            loss.sum().backward()
            assert x.grad is not None and bool((x.grad == 0).all())


# ----------------------------------------------------------------------------- opcheck / compile
def _op_args(kwargs: dict, backend: str, *, compute_grad: bool = True):
    kwargs = _on_device(kwargs)
    logits, labels = kwargs["logits"], kwargs["labels"]
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    if vocab > 1 and flat.stride(1) != 1:
        flat = flat.contiguous()
    denominator, scale = loss_common.loss_normalizer(
        labels.reshape(-1).long(),
        kwargs.get("ignore_index", -100),
        kwargs.get("reduction", "mean"),
        kwargs.get("num_items_in_batch"),
        False,
    )
    return (
        flat.detach().requires_grad_(compute_grad),
        labels.reshape(-1).long(),
        kwargs.get("ignore_index", -100),
        loss_common.REDUCTIONS.index(kwargs.get("reduction", "mean")),
        kwargs.get("label_smoothing", 0.0),
        kwargs.get("z_loss", 0.0),
        denominator,
        scale,
    )


# opcheck runs each op a dozen times; through the Triton interpreter that costs seconds per
# sample. CI runs the Triton opcheck on QUICK but for the multi-block shape and four of the six
# dtype / smoothing variants of the mean reduction (float32 with smoothing + z-loss and bfloat16
# without stay); the rest run with FASTMASK_SLOW_TESTS=1 and in the GPU check (-m triton).
def _triton_opcheck_is_slow(name: str) -> bool:
    kept = ("37x1000-mean-ign0.15-float32-ls0.1-z0.001", "37x1000-mean-ign0.15-bfloat16-ls0.0-z0.0")
    return name == "3x423x257-float32" or (name.startswith("37x1000-mean-ign0.15") and name not in kept)


def _opcheck_case(backend: str, name: str, kwargs: dict):
    marks = []
    if backend == "triton":
        marks = [pytest.mark.triton] + ([pytest.mark.slow] if _triton_opcheck_is_slow(name) else [])
    return pytest.param(backend, name, kwargs, id=f"{name}-{backend}", marks=marks)


@pytest.mark.parametrize(
    "backend,name,kwargs", [_opcheck_case(b, n, k) for n, k in QUICK for b in ("reference", "cpp", "triton")]
)
def test_opcheck(backend, name, kwargs):
    require_backend(backend, kernel_device())
    args = _op_args(kwargs, backend)
    torch.library.opcheck(ce_ops._masked_ce_op, args + (True, backend))
    torch.library.opcheck(ce_ops._masked_ce_op, (args[0].detach(),) + args[1:] + (False, backend))
    torch.library.opcheck(ce_ops._masked_ce_inplace_op, (args[0].detach().clone(),) + args[1:] + (backend,))
    rows = (args[1] != args[2]).nonzero().squeeze(1)
    grad_rows = torch.randn(rows.shape[0], args[0].shape[1], device=rows.device).to(args[0].dtype)
    torch.library.opcheck(
        ce_ops._expand_grad_op,
        (grad_rows, rows, torch.tensor(0.5, device=rows.device), args[0].shape[0], False, backend),
    )
    torch.library.opcheck(
        ce_ops._scale_rows_op,
        (args[0].detach().clone(), args[1], args[2], torch.rand(args[0].shape[0], device=rows.device), True, backend),
    )


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kwargs", QUICK[:4], ids=[n for n, _ in QUICK[:4]])
def test_torch_compile_fullgraph(backend, name, kwargs, inplace):
    require_backend(backend, kernel_device())
    torch._dynamo.reset()
    kwargs = _on_device(kwargs)
    options = _oracle_options(kwargs)

    def step(base, labels):
        return fastmask.masked_cross_entropy(base * 1.5, labels, inplace_backward=inplace, backend=backend, **options)

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    eager_x, compiled_x = leaf(kwargs["logits"]), leaf(kwargs["logits"])
    eager = step(eager_x, kwargs["labels"])
    got = compiled(compiled_x, kwargs["labels"])
    assert torch.equal(got, eager)
    grad_output = torch.rand_like(eager)
    eager.backward(grad_output)
    got.backward(grad_output)
    tol = TOLERANCES[kwargs["logits"].dtype]
    assert_close(compiled_x.grad, eager_x.grad, rtol=tol["grad_rtol"], atol=1e-7, what="compiled grad")


# ----------------------------------------------------------------------------- kernel pieces
@pytest.mark.triton
def test_triton_multi_block_online_softmax():
    """Small blocks force the online max/sum across many blocks (and a partial last block)."""
    require_backend("triton", kernel_device())
    from fastmask.kernels.cross_entropy import triton_cross_entropy_rows

    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(9, 1000, generator=g) * 4).to(kernel_device())
    logits[2, :700] = float("-inf")  # the first blocks of a row hold no finite value
    rows = torch.tensor([0, 2, 3, 8], device=kernel_device())
    targets = torch.tensor([5, 999, 0, 640], device=kernel_device())
    for block in (16, 64, 128):
        for mode in ("compact", "inplace"):
            x = logits.clone()
            got_loss, got_grad = triton_cross_entropy_rows(
                x, rows, targets, grad_scale=0.25, label_smoothing=0.0, z_loss=1e-3, grad_mode=mode, block_v=block
            )
            want_loss, want_grad = reference_cross_entropy_rows(
                logits.clone(), rows, targets, grad_scale=0.25, label_smoothing=0.0, z_loss=1e-3, grad_mode="compact"
            )
            assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5, what=f"loss block {block}")
            got_rows = got_grad if mode == "compact" else got_grad.index_select(0, rows)
            assert_close(got_rows, want_grad, rtol=1e-4, atol=1e-7, what=f"grad block {block} {mode}")


def test_cpp_exp_accuracy():
    require_backend("cpp")
    module = _backend.cpp_module()
    x = torch.cat([torch.linspace(-87.3, 1.0, 400_003), torch.tensor([0.0, -1e-30, 1e-7, -0.34657, 0.34657])])
    out = torch.empty_like(x)
    module.ce_exp(x.numpy(), out.numpy())
    want = torch.exp(x.double())
    spacing = torch.nextafter(want.float(), torch.tensor(float("inf"))).double() - want.float().double()
    ulps = ((out.double() - want).abs() / spacing).max()
    assert float(ulps) <= 1.5, f"exp error {float(ulps):.2f} ulp"
    special = torch.tensor([-87.6, -100.0, -1e30, float("-inf"), float("nan")])
    out = torch.empty_like(special)
    module.ce_exp(special.numpy(), out.numpy())
    assert torch.equal(out[:4], torch.zeros(4)) and bool(torch.isnan(out[4]))


@pytest.mark.parametrize("code,dtype", [(1, torch.bfloat16), (2, torch.float16)])
def test_cpp_conversions_match_torch(code, dtype):
    """Every 16-bit pattern widens exactly; fp32 -> 16 bit rounds to nearest even like torch."""
    require_backend("cpp")
    module = _backend.cpp_module()
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    widened = torch.empty(65536)
    module.ce_convert(bits.numpy(), code, widened.numpy(), 0)
    want = bits.view(dtype).float()
    same = (widened.view(torch.int32) == want.view(torch.int32)) | (widened.isnan() & want.isnan())
    assert bool(same.all())
    g = torch.Generator().manual_seed(0)
    values = torch.cat(
        [
            torch.randn(200_000, generator=g) * torch.exp(torch.randn(200_000, generator=g) * 8),
            want[~want.isnan()],
            (want[~want.isnan()].double() * (1 + 2.0**-12)).float(),  # just past halfway points
            torch.tensor(
                [float("inf"), float("-inf"), 65519.99, 65520.0, 65504.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 1e-45]
            ),
        ]
    )
    narrowed = torch.empty(values.numel(), dtype=torch.int16)
    module.ce_convert(values.numpy(), 0, narrowed.numpy(), code)
    assert torch.equal(narrowed, values.to(dtype).view(torch.int16))
    nan = torch.tensor([float("nan")] * 17)
    narrowed = torch.empty(17, dtype=torch.int16)
    module.ce_convert(nan.numpy(), 0, narrowed.numpy(), code)
    assert bool(narrowed.view(dtype).isnan().all())


def test_cpp_gradient_buffers_are_recycled():
    """Freed blocks of >= 2 MiB are handed out again for the same size; clearing frees them."""
    require_backend("cpp")
    module = _backend.cpp_module()
    was_enabled = module.ce_cache_enabled()
    module.ce_cache_enable(True)
    try:
        ce_ops.release_cached_buffers()
        first = ce_ops.cpp_empty((1024, 1024), torch.float32)
        address = first.data_ptr()
        del first
        assert module.ce_cache_bytes() == 4 * 2**20
        again = ce_ops.cpp_empty((2048, 1024), torch.bfloat16)  # same byte size
        assert again.data_ptr() == address and module.ce_cache_bytes() == 0
        other = ce_ops.cpp_empty((3, 1024, 1024), torch.float32)
        assert other.data_ptr() != address
        del again, other
        assert module.ce_cache_bytes() == 16 * 2**20
        small = ce_ops.cpp_empty((10,), torch.float32)
        del small  # below the cache's minimum: freed at once
        assert module.ce_cache_bytes() == 16 * 2**20
        assert ce_ops.release_cached_buffers() == 16 * 2**20 and module.ce_cache_bytes() == 0
        module.ce_cache_enable(False)
        del_me = ce_ops.cpp_empty((1024, 1024), torch.float32)
        del del_me
        assert module.ce_cache_bytes() == 0
    finally:
        module.ce_cache_enable(was_enabled)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_logits_propagate(backend):
    require_backend(backend, kernel_device())
    x = torch.randn(4, 300, device=kernel_device())
    x[1, 17] = float("nan")
    labels = torch.tensor([3, 5, -100, 7], device=kernel_device())
    per_token = fastmask.masked_cross_entropy(x, labels, reduction="none", backend=backend)
    assert bool(torch.isnan(per_token[1])) and bool(torch.isfinite(per_token[[0, 3]]).all()) and per_token[2] == 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_offsets_beyond_2_31_elements(backend):
    """Rows past element 2**31 of a bf16 [65537, 32768] tensor (4 GiB, never touched except
    the labelled rows) are addressed with 64-bit offsets."""
    require_backend(backend, kernel_device())
    if backend == "triton" and kernel_device() == "cpu":
        pytest.skip(
            "the Triton interpreter copies each argument's whole storage back after a launch (4 GiB here); runs on CUDA"
        )
    rows_total, vocab = 65537, 32768
    logits = torch.empty((rows_total, vocab), dtype=torch.bfloat16, device=kernel_device())
    assert logits.numel() > 2**31
    g = torch.Generator().manual_seed(0)
    last = (torch.randn(2, vocab, generator=g) * 3).to(torch.bfloat16).to(kernel_device())
    logits[-2:] = last
    labels = torch.full((rows_total,), -100, device=kernel_device())
    labels[-2:] = torch.tensor([vocab - 1, 12345])
    with torch.no_grad():
        got = fastmask.masked_cross_entropy(logits, labels, reduction="none", backend=backend)[-2:]
    want = torch.nn.functional.cross_entropy(last.double(), labels[-2:], reduction="none")
    assert_close(got, want, rtol=1e-5, atol=1e-5, what="loss past 2**31")
    rows = torch.tensor([rows_total - 2, rows_total - 1], device=kernel_device())
    _, grad = ce_ops.cross_entropy_rows(
        backend, logits, rows, labels[-2:], grad_scale=1.0, label_smoothing=0.0, z_loss=0.0, grad_mode="compact"
    )
    want_grad = torch.softmax(last.double(), -1)
    want_grad[0, vocab - 1] -= 1
    want_grad[1, 12345] -= 1
    assert_close(grad, want_grad, rtol=1e-2, atol=1e-5, what="grad past 2**31")


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [1000, 5000, -1, -101])
def test_label_out_of_range_raises(backend, bad):
    require_backend(backend, kernel_device())
    x = torch.randn(5, 1000, device=kernel_device())
    labels = torch.tensor([1, -100, bad, 3, 4], device=kernel_device())
    with pytest.raises(ValueError, match=f"labels contains {bad}"):
        fastmask.masked_cross_entropy(x, labels, backend=backend)
    with pytest.raises(ValueError, match=f"labels contains {bad}"):
        fastmask.masked_cross_entropy(x.requires_grad_() * 1, labels, backend=backend, inplace_backward=True)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda x, y: fastmask.masked_cross_entropy(x.long(), y), TypeError, "logits has dtype int64"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y.float()), TypeError, "labels has dtype float32"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y[:-1]), ValueError, "labels has shape"),
        (lambda x, y: fastmask.masked_cross_entropy(x[0], y[0]), ValueError, "logits must be"),
        (lambda x, y: fastmask.masked_cross_entropy(x[:0], y[:0]), ValueError, "empty"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, reduction="avg"), ValueError, "reduction='avg'"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, label_smoothing=1.5), ValueError, "label_smoothing=1.5"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, z_loss=-1.0), ValueError, "z_loss=-1.0"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, z_loss=float("nan")), ValueError, "z_loss=nan"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, inplace_backward=1), TypeError, "inplace_backward"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, ignore_index=1.5), TypeError, "ignore_index"),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, ignore_index=2**63),
            ValueError,
            "ignore_index=9223372036854775808",
        ),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, ignore_index=-(2**70)), ValueError, "ignore_index"),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, reduction="sum", num_items_in_batch=3),
            ValueError,
            "num_items_in_batch",
        ),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=-3), ValueError, "num_items_in_batch=-3"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=torch.ones(2)), ValueError, "one-element"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=0), ValueError, "num_items_in_batch=0"),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=3, global_normalization=True),
            ValueError,
            "not both",
        ),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=float("nan")),
            ValueError,
            "num_items_in_batch=nan",
        ),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=float("inf")),
            ValueError,
            "num_items_in_batch=inf",
        ),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=10**400),
            ValueError,
            "num_items_in_batch=inf",
        ),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=torch.tensor(float("nan"))),
            ValueError,
            "num_items_in_batch=nan",
        ),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=torch.tensor(-float("inf"))),
            ValueError,
            "num_items_in_batch=-inf",
        ),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=torch.tensor(-2.0)),
            ValueError,
            "num_items_in_batch=-2",
        ),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch=True), TypeError, "num_items_in_batch"),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, num_items_in_batch="3"), TypeError, "num_items_in_batch"),
        (
            lambda x, y: fastmask.masked_cross_entropy(x, y, reduction="none", global_normalization=True),
            ValueError,
            "global_normalization",
        ),
        (lambda x, y: fastmask.masked_cross_entropy(x, y, backend="gpu"), ValueError, "backend='gpu'"),
    ],
)
def test_bad_arguments(call, error, match):
    x = torch.randn(4, 10)
    y = torch.tensor([1, 2, -100, 3])
    with pytest.raises(error, match=match):
        call(x, y)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_bad_num_items_in_batch_raises_even_without_labels_and_in_the_op(value):
    """A negative or non-finite count is an error even when nothing is labelled (where 0 gives
    a zero loss), and the op checks the value it reads (a CUDA tensor skips the up-front check)."""
    x = torch.randn(4, 10, requires_grad=True)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        fastmask.masked_cross_entropy(x, torch.full((4,), -100), num_items_in_batch=torch.tensor(value))
    labels = torch.tensor([1, 2, -100, 3])
    with pytest.raises(ValueError, match="num_items_in_batch"):
        ce_ops._masked_ce_op(x.detach(), labels, -100, 1, 0.0, 0.0, torch.tensor(value), 1.0, True, "reference")
    zero = fastmask.masked_cross_entropy(x, torch.full((4,), -100), num_items_in_batch=0)
    zero.backward()
    assert float(zero) == 0.0 and bool((x.grad == 0).all())
    fractional = fastmask.masked_cross_entropy(x.detach(), labels, num_items_in_batch=2.5)
    want = torch.nn.functional.cross_entropy(x.detach().double(), labels, reduction="sum") / 2.5
    assert_close(fractional, want, rtol=1e-5, atol=1e-6, what="float num_items_in_batch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_backward_on_a_leaf_raises(backend):
    """Overwriting a leaf that requires grad (or a view of one) is what torch forbids for its own
    in-place ops; the logits must stay intact and the error name the option and the fix."""
    require_backend(backend, kernel_device())
    leaf_logits = torch.randn(4, 10, device=kernel_device(), requires_grad=True)
    before = leaf_logits.detach().clone()
    labels = torch.tensor([1, 2, -100, 3], device=kernel_device())
    for logits in (leaf_logits, leaf_logits[:, :], leaf_logits.view(2, 2, 10)):
        with pytest.raises(ValueError, match="inplace_backward=True.*leaf.*non-leaf.*inplace_backward=False"):
            fastmask.masked_cross_entropy(
                logits, labels.view(logits.shape[:-1]), inplace_backward=True, backend=backend
            )
    assert torch.equal(leaf_logits.detach(), before)
    # Without grad nothing is overwritten, so a leaf is fine there; a non-leaf works as before.
    with torch.no_grad():
        fastmask.masked_cross_entropy(leaf_logits, labels, inplace_backward=True, backend=backend)
    assert torch.equal(leaf_logits.detach(), before)
    loss = fastmask.masked_cross_entropy(leaf_logits * 1, labels, inplace_backward=True, backend=backend)
    loss.backward()
    assert torch.equal(leaf_logits.detach(), before) and leaf_logits.grad is not None


def test_explicit_backend_unavailable_raises():
    require_backend("cpp")
    with pytest.raises(fastmask.BackendUnavailableError, match="float64"):
        fastmask.masked_cross_entropy(torch.randn(3, 5, dtype=torch.float64), torch.tensor([1, 2, 3]), backend="cpp")


def test_float64_runs_on_reference_and_passes_gradcheck():
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, -100, 3, 8, -100, 0])
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda t: fastmask.masked_cross_entropy(t, labels, reduction=reduction, label_smoothing=0.1, z_loss=0.01),
            (x,),
        )


def test_inputs_are_not_modified_and_int32_labels_accepted():
    x = torch.randn(8, 40)
    labels = torch.randint(0, 40, (8,), dtype=torch.int32)
    x0, l0 = x.clone(), labels.clone()
    loss = fastmask.masked_cross_entropy(x, labels)
    assert torch.equal(x, x0) and torch.equal(labels, l0)
    assert_close(loss, torch.nn.functional.cross_entropy(x.double(), labels.long()), rtol=1e-5, atol=1e-6, what="int32")


def test_global_normalization_is_a_no_op_without_process_group():
    x = torch.randn(8, 40)
    labels = torch.randint(0, 40, (8,))
    labels[:3] = -100
    assert torch.equal(
        fastmask.masked_cross_entropy(x, labels, global_normalization=True), fastmask.masked_cross_entropy(x, labels)
    )


def test_no_grad_forward_skips_the_gradient():
    x = torch.randn(8, 40, requires_grad=True)
    labels = torch.randint(0, 40, (8,))
    with torch.no_grad():
        loss = fastmask.masked_cross_entropy(x, labels)
    assert loss.grad_fn is None
    _, grad, rows, fb_ce, fb_correct = ce_ops._masked_ce_op(
        x.detach(), labels, -100, 1, 0.0, 0.0, None, 1.0, False, "reference"
    )
    assert grad.shape == (0, 40) and rows.shape == (8,)
    assert fb_ce.shape == (0,) and fb_correct.shape == (0,)  # no feedback asked for


def test_cpp_buffers_are_checked():
    require_backend("cpp")
    module = _backend.cpp_module()
    logits = np.zeros((4, 10), dtype=np.float32)

    def forward(dtype_code: int, targets: np.ndarray) -> None:
        loss = np.zeros(3, dtype=np.float32)
        module.ce_forward(logits, dtype_code, None, targets, loss, None, None, False, 1.0, None, 0.0, 0.0)

    with pytest.raises(ValueError, match="targets"):
        forward(0, np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError, match="dtype code"):
        forward(1, np.zeros(3, dtype=np.int64))
