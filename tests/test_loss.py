"""MaskedLMLoss: a drop-in for nn.CrossEntropyLoss(ignore_index=-100), and global normalisation
under DDP (two gloo processes) giving exactly the single-process gradients."""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from backends import kernel_device, require_backend
from loss_samples import assert_close
from torch import nn

import fastmask

BACKENDS = ["reference", "cpp", pytest.param("triton", marks=pytest.mark.triton)]


class TinyMLM(nn.Module):
    def __init__(self, vocab: int = 50, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.decoder = nn.Linear(width, vocab)

    def forward(self, ids):
        return self.decoder(torch.tanh(self.mix(self.embed(ids))))


def _batches(steps: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, vocab, (4, 12), generator=g)
        labels = torch.where(torch.rand(4, 12, generator=g) < 0.3, ids, -100)
        yield ids, labels


def _train(loss_fn, *, three_d: bool, steps: int = 6, vocab: int = 50):
    torch.manual_seed(0)
    model = TinyMLM(vocab).to(kernel_device())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for ids, labels in _batches(steps, vocab):
        ids, labels = ids.to(kernel_device()), labels.to(kernel_device())
        logits = model(ids)
        loss = loss_fn(logits, labels) if three_d else loss_fn(logits.view(-1, vocab), labels.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("inplace", [False, True])
def test_drop_in_replacement_for_cross_entropy_loss(backend, inplace):
    """Same training trajectory as nn.CrossEntropyLoss(ignore_index=-100), 2-D or 3-D call."""
    require_backend(backend, kernel_device())
    want_model, want_losses = _train(nn.CrossEntropyLoss(ignore_index=-100), three_d=False)
    for three_d in (False, True):
        got_model, got_losses = _train(
            fastmask.MaskedLMLoss(inplace_backward=inplace, backend=backend), three_d=three_d
        )
        assert_close(torch.tensor(got_losses), torch.tensor(want_losses), rtol=1e-5, atol=1e-6, what="losses")
        for (name, got), want in zip(got_model.named_parameters(), want_model.parameters()):
            assert_close(got, want, rtol=1e-4, atol=1e-6, what=name)


def test_options_and_repr():
    loss_fn = fastmask.MaskedLMLoss(label_smoothing=0.1, z_loss=1e-4, reduction="sum")
    assert "label_smoothing=0.1" in repr(loss_fn) and "reduction='sum'" in repr(loss_fn)
    assert loss_fn.state_dict() == {}, "swapping the loss must not change checkpoints"
    logits, labels = torch.randn(10, 30), torch.randint(0, 30, (10,))
    labels[:4] = -100
    want = F.cross_entropy(logits.double(), labels, reduction="sum", label_smoothing=0.1)
    want = want + 1e-4 * (torch.logsumexp(logits.double(), -1)[4:] ** 2).sum()
    assert_close(loss_fn(logits, labels), want, rtol=1e-5, atol=1e-5, what="options")
    mean = fastmask.MaskedLMLoss()(logits, labels, num_items_in_batch=20)
    assert_close(
        mean, F.cross_entropy(logits.double(), labels, reduction="sum") / 20, rtol=1e-5, atol=1e-6, what="items"
    )


@pytest.mark.parametrize("value", [float("nan"), torch.tensor(float("nan")), torch.tensor(float("inf")), -4])
def test_bad_num_items_in_batch_raises(value):
    logits = torch.randn(6, 30, requires_grad=True)
    labels = torch.tensor([1, -100, 2, 3, -100, 4])
    with pytest.raises(ValueError, match="num_items_in_batch"):
        fastmask.MaskedLMLoss()(logits * 1, labels, num_items_in_batch=value)


def test_inplace_backward_on_a_leaf_raises():
    logits = torch.randn(6, 30, requires_grad=True)
    with pytest.raises(ValueError, match="inplace_backward"):
        fastmask.MaskedLMLoss(inplace_backward=True)(logits, torch.tensor([1, -100, 2, 3, -100, 4]))


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(reduction="batchmean"), ValueError),
        (dict(label_smoothing=-0.1), ValueError),
        (dict(z_loss="big"), TypeError),
        (dict(ignore_index=None), TypeError),
        (dict(ignore_index=2**70), ValueError),
        (dict(backend="cuda"), ValueError),
        (dict(inplace_backward="yes"), TypeError),
    ],
)
def test_bad_options_fail_at_construction(kwargs, error):
    with pytest.raises(error):
        fastmask.MaskedLMLoss(**kwargs)


# ----------------------------------------------------------------------------- DDP
H, V, WORLD = 8, 13, 2


def _rank_data(rank: int):
    """Rank 0 gets few labels, rank 1 many, so local and global means differ."""
    g = torch.Generator().manual_seed(100 + rank)
    hidden = torch.randn(3, 7, H, generator=g)
    labels = torch.randint(0, V, (3, 7), generator=g)
    keep = torch.rand(3, 7, generator=g) < (0.15 if rank == 0 else 0.8)
    return hidden, torch.where(keep, labels, -100)


class _FusedHead(nn.Linear):
    def forward(self, hidden, labels, *, global_normalization=True):
        return fastmask.fused_masked_lm_loss(
            hidden, self.weight, labels, self.bias, global_normalization=global_normalization
        )


def _ddp_worker(rank: int, init_file: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = [_rank_data(r) for r in range(WORLD)]
        all_hidden = torch.cat([h for h, _ in data])
        all_labels = torch.cat([y for _, y in data])
        hidden, labels = data[rank]
        for mode in ("loss", "fused", "local"):
            torch.manual_seed(0)
            model = _FusedHead(H, V) if mode == "fused" else nn.Linear(H, V)
            single = copy.deepcopy(model)
            ddp = DDP(model)
            if mode == "fused":
                loss = ddp(hidden, labels)
            else:
                loss_fn = fastmask.MaskedLMLoss(global_normalization=mode == "loss")
                loss = loss_fn(ddp(hidden).view(-1, V), labels.view(-1))
            loss.backward()
            want = F.cross_entropy(F.linear(all_hidden, single.weight, single.bias).view(-1, V), all_labels.view(-1))
            want.backward()
            same = all(
                torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)
                for p, q in zip(model.parameters(), single.parameters())
            )
            if mode == "local":
                assert not same, "the check cannot fail: local means already match (uneven labels expected)"
                continue
            assert same, f"rank {rank} {mode}: DDP gradients differ from single-process training"
            mean_over_ranks = loss.detach().clone()
            dist.all_reduce(mean_over_ranks)
            mean_over_ranks /= WORLD
            assert torch.allclose(mean_over_ranks, want.detach(), rtol=1e-5), (float(mean_over_ranks), float(want))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_normalization_matches_single_process_under_ddp():
    """2 gloo ranks with uneven label counts: DDP-averaged gradients of the globally normalised
    loss (MaskedLMLoss and the fused head) equal single-process gradients on the whole batch."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(os.path.join(tmp, "init"),), nprocs=WORLD, join=True)
