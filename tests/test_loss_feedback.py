"""Per-token feedback from the loss ops (``feedback=``): the kernels' ``ce`` / ``correct`` outputs
against a pure-torch computation on every backend, bit-identical ``correct`` bits across backends,
unchanged losses, torch.compile, ``apply_fastmask(model, feedback=...)`` and the callback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backends import require_backend

import fastmask
from fastmask import cross_entropy as ce_ops
from fastmask import fused_linear_cross_entropy as fused_ops

BACKENDS = ["reference", "cpp", pytest.param("triton", marks=pytest.mark.triton)]


def _inputs(dtype=torch.float32, n=37, vocab=53, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=gen).to(dtype)
    logits[3, 5] = 40.0  # a confident row, and a tie for the max (ties count as correct)
    logits[4, :] = 0.0
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.3] = -100
    labels[3], labels[4] = 5, 7
    labels[0] = -100
    return logits, labels


def _expected(logits, labels):
    keep = labels != -100
    x = logits[keep].double()
    target = labels[keep]
    ce = F.cross_entropy(x, target, reduction="none")
    correct = x.gather(1, target.unsqueeze(1)).squeeze(1) == x.max(dim=1).values
    return target, ce, correct


def _check(fb: fastmask.LossFeedback, logits, labels, rtol=1e-5):
    target, ce, correct = _expected(logits, labels)
    assert torch.equal(fb.labels, target)
    assert fb.losses.dtype == torch.float32 and fb.correct.dtype == torch.bool
    assert not fb.losses.requires_grad
    torch.testing.assert_close(fb.losses.double(), ce, rtol=rtol, atol=1e-5)
    assert torch.equal(fb.correct, correct)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "sum"}])
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_cross_entropy_feedback(backend, options, inplace):
    require_backend(backend)
    logits, labels = _inputs()
    x = logits.clone().requires_grad_()
    fb = fastmask.LossFeedback()
    loss = fastmask.masked_cross_entropy(
        x * 1.0, labels, backend=backend, feedback=fb, inplace_backward=inplace, **options
    )
    _check(fb, logits, labels)
    position = int((labels[:3] != -100).sum())
    assert bool(fb.correct[position]) and bool(fb.correct[position + 1])  # the confident row, and a tie
    # the loss and its gradient are what they are without feedback, bit for bit
    y = logits.clone().requires_grad_()
    plain = fastmask.masked_cross_entropy(y * 1.0, labels, backend=backend, inplace_backward=inplace, **options)
    assert torch.equal(loss, plain)
    loss.backward()
    plain.backward()
    assert torch.equal(x.grad, y.grad)
    if not options:  # without smoothing / z-loss the feedback loss is the per-row loss itself
        rows = fastmask.masked_cross_entropy(logits, labels, backend=backend, reduction="none")
        assert torch.equal(fb.losses, rows[labels != -100])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_correct_bits_identical_across_backends(dtype):
    for backend in ("cpp", "triton"):
        require_backend(backend)
    logits, labels = _inputs(dtype, n=64, vocab=40, seed=3)
    # make about half the labels the argmax, so both bit values occur
    keep = (labels != -100).nonzero().squeeze(1)
    labels[keep[::2]] = logits[keep[::2]].float().argmax(dim=1)
    got = {}
    for backend in ("reference", "cpp", "triton"):
        fb = fastmask.LossFeedback()
        fastmask.masked_cross_entropy(logits, labels, backend=backend, feedback=fb)
        got[backend] = fb
    assert 0 < int(got["reference"].correct.sum()) < keep.numel()
    for backend in ("cpp", "triton"):
        assert torch.equal(got[backend].correct, got["reference"].correct), backend
        assert torch.equal(got[backend].labels, got["reference"].labels)
        torch.testing.assert_close(got[backend].losses, got["reference"].losses, rtol=1e-5, atol=1e-5)
    _check(got["cpp"], logits.float(), labels)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_head_feedback(backend, reduction):
    require_backend(backend)
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 19, 8, generator=gen)
    weight = torch.randn(45, 8, generator=gen)
    bias = torch.randn(45, generator=gen)
    labels = torch.randint(0, 45, (2, 19), generator=gen)
    labels[torch.rand(2, 19, generator=gen) < 0.4] = -100
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    fb = fastmask.LossFeedback()
    loss = fastmask.fused_masked_lm_loss(
        h, w, labels, bias, chunk_size=5, reduction=reduction, backend=backend, feedback=fb
    )
    logits = (hidden @ weight.T + bias).reshape(-1, 45)
    _check(fb, logits, labels.reshape(-1), rtol=1e-4)
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    plain = fastmask.fused_masked_lm_loss(h2, w2, labels, bias, chunk_size=5, reduction=reduction, backend=backend)
    assert torch.equal(loss, plain)
    loss.sum().backward()
    plain.sum().backward()
    assert torch.equal(h.grad, h2.grad) and torch.equal(w.grad, w2.grad)


def test_tracker_gets_feedback():
    logits, labels = _inputs()
    tracker = fastmask.TokenLossTracker(53, decay=0.5)
    fastmask.masked_cross_entropy(logits, labels, feedback=tracker)
    target, ce, correct = _expected(logits, labels)
    reference = fastmask.TokenLossTracker(53, decay=0.5)
    reference.update(target, ce.float(), correct)
    assert tracker.updates == 1
    torch.testing.assert_close(tracker.loss, reference.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tracker.accuracy, reference.accuracy)


@pytest.mark.parametrize("backend", ["cpp"])  # the op is opaque to the compiler: one backend shows the graph break
def test_torch_compile(backend):
    require_backend(backend)
    torch._dynamo.reset()
    logits, labels = _inputs()
    fb = fastmask.LossFeedback()

    def step(base, labels):
        return fastmask.masked_cross_entropy(base * 1.5, labels, backend=backend, feedback=fb)

    compiled = torch.compile(step, dynamic=False)
    x = logits.clone().requires_grad_()
    loss = compiled(x, labels)
    loss.backward()
    _check(fb, logits * 1.5, labels)
    y = logits.clone().requires_grad_()
    eager = fastmask.masked_cross_entropy(y * 1.5, labels, backend=backend)
    eager.backward()
    assert torch.equal(loss, eager)
    torch.testing.assert_close(x.grad, y.grad)
    compiled(x, labels)  # a second call feeds it again
    assert fb.count == 2 * int((labels != -100).sum())


@pytest.mark.parametrize("backend", ["cpp", pytest.param("triton", marks=pytest.mark.triton)])
def test_opcheck_with_feedback(backend):
    require_backend(backend)
    logits, labels = _inputs()
    args = (logits.clone().requires_grad_(), labels, -100, 1, 0.1, 1e-3, None, 1.0)
    torch.library.opcheck(ce_ops._masked_ce_op, args + (True, backend, True))
    torch.library.opcheck(ce_ops._masked_ce_inplace_op, (logits.clone(),) + args[1:] + (backend, True))
    hidden, weight = torch.randn(10, 4), torch.randn(9, 4)
    fused_labels = torch.tensor([1, -100, 3, 8, -100, 0, 2, 2, -100, 5])
    torch.library.opcheck(
        fused_ops._fused_op,
        (hidden.requires_grad_(), weight, fused_labels, None, -100, 1, 0.0, 0.0, 4, None, 1.0)
        + (True, False, False, backend, True),
    )


def test_bad_feedback():
    logits, labels = _inputs()
    with pytest.raises(TypeError, match="feedback must have an update"):
        fastmask.masked_cross_entropy(logits, labels, feedback=object())
    with pytest.raises(TypeError, match="feedback must have an update"):
        fastmask.fused_masked_lm_loss(torch.randn(3, 4), torch.randn(5, 4), torch.tensor([1, 2, 3]), feedback=3)


def _tiny_model(kind: str):
    pytest.importorskip("transformers")
    from tiny_models import tiny_bert, tiny_llama

    if kind == "mlm":
        return tiny_bert(61, hidden=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    return tiny_llama(61, pad=0, bos=1, eos=2, hidden=16).train()


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_apply_fastmask_routes_feedback(kind):
    from fastmask.adaptive_callback import token_feedback

    model = _tiny_model(kind)
    gen = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, 61, (2, 12), generator=gen)
    labels = input_ids.clone()
    labels[torch.rand(2, 12, generator=gen) < 0.5] = -100
    labels[0, 1] = 7
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits  # unpatched: the logits the feedback comes from
    targets = labels if kind == "mlm" else F.pad(labels, (0, 1), value=-100)[:, 1:]
    expected = token_feedback(logits, targets)
    fb = fastmask.LossFeedback()
    fastmask.apply_fastmask(model, feedback=fb)
    try:
        out = model(input_ids=input_ids, labels=labels)
        assert out.logits is None and fb.count == int((targets != -100).sum())
        assert torch.equal(fb.labels, expected[0])
        torch.testing.assert_close(fb.losses, expected[1], rtol=1e-4, atol=1e-5)
        assert torch.equal(fb.correct, expected[2])
        other = fastmask.LossFeedback()
        assert fastmask.set_loss_feedback(model, other) is fb
        model(input_ids=input_ids, labels=labels)
        assert other.count == fb.count and fb.count == int((targets != -100).sum())
    finally:
        fastmask.unapply_fastmask(model)
    with pytest.raises(ValueError, match="not patched"):
        fastmask.set_loss_feedback(model, fb)
