"""TokenLossTracker: the scatter op on every backend equals the pure-torch reference (bit for bit),
the tracker equals a plain EMA written out here, weights follow losses, groups / frequency
buckets, state_dict, all_reduce over a 2-process gloo group, and bad input."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from backends import require_backend

import fastmask
from fastmask.reference.token_loss_tracker import reference_tracker_update
from fastmask.token_loss_tracker import TokenLossTracker, frequency_buckets, plan_tracker_update, run_tracker_update

V = 50


def _feedback(seed: int, n: int = 300, vocab: int = V, ignore_frac: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = -100
    losses = torch.rand(n, generator=g) * 8
    losses[labels == -100] = float("nan")  # never read where unlabelled
    correct = torch.rand(n, generator=g) < 0.4
    return labels, losses, correct


def _plain_ema(batches, decay, num_groups, groups=None):
    """The documented rule, one group at a time in Python floats."""
    loss, acc, seen = [0.0] * num_groups, [0.0] * num_groups, [False] * num_groups
    for labels, losses, correct in batches:
        stats = {}
        for label, value, hit in zip(labels.tolist(), losses.tolist(), correct.tolist()):
            if label == -100:
                continue
            gid = label if groups is None else int(groups[label])
            s = stats.setdefault(gid, [0, 0, 0])
            s[0] += int(torch.tensor(value, dtype=torch.float32).item() * 2**20)
            s[1] += int(hit)
            s[2] += 1
        for gid, (ls, cs, n) in stats.items():
            mean_l, mean_a = ls / 2**20 / n, cs / n
            if seen[gid]:
                loss[gid] = decay * loss[gid] + (1 - decay) * mean_l
                acc[gid] = decay * acc[gid] + (1 - decay) * mean_a
            else:
                loss[gid], acc[gid], seen[gid] = mean_l, mean_a, True
    return torch.tensor(loss, dtype=torch.float64), torch.tensor(acc, dtype=torch.float64), torch.tensor(seen)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("with_groups", [False, True])
def test_scatter_bit_identical_to_reference(backend, with_groups):
    require_backend(backend)
    groups = torch.arange(V) % 7 if with_groups else None
    for seed in range(3):
        labels, losses, correct = _feedback(seed, n=257)
        for corr in (correct, None):
            plan = plan_tracker_update(
                labels, losses, corr, vocab_size=V, groups=groups, num_groups=7 if with_groups else None
            )
            expected = reference_tracker_update(plan)
            assert expected[2].sum() == (labels != -100).sum()
            assert torch.equal(run_tracker_update(plan, backend), expected)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_tracker_equals_plain_ema(backend):
    require_backend(backend)
    batches = [_feedback(seed) for seed in range(4)]
    tracker = TokenLossTracker(V, decay=0.9, backend=backend)
    for batch in batches:
        tracker.update(*batch)
    loss, acc, seen = _plain_ema(batches, 0.9, V)
    assert torch.equal(tracker.seen, seen)
    torch.testing.assert_close(tracker.loss, loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(tracker.accuracy, acc, rtol=0, atol=1e-12)
    assert int(tracker.counts.sum()) == sum(int((b[0] != -100).sum()) for b in batches)
    assert tracker.updates == 4 and 0 < tracker.last_loss < 8


def test_groups_and_frequency_buckets():
    counts = torch.tensor([1000, 0, 3, 500, 2, 1, 490, 4, 0, 0])
    buckets = frequency_buckets(counts)
    # an id's bucket: the share of tokens held by more frequent ids (0 -> frequent, 1000/2000 -> mid,
    # 1500/2000 and beyond -> rare); unseen ids rare
    assert buckets.tolist() == [2, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    equal = frequency_buckets(torch.tensor([100] * 6 + [0] * 4))  # ties broken by id
    assert equal.tolist() == [2, 2, 1, 1, 0, 0, 0, 0, 0, 0]
    assert frequency_buckets(counts, num_buckets=1).tolist() == [0] * 10
    batches = [_feedback(seed, vocab=10) for seed in range(3)]
    tracker = TokenLossTracker(10, groups=buckets, decay=0.8)
    for batch in batches:
        tracker.update(*batch)
    loss, acc, _ = _plain_ema(batches, 0.8, 3, groups=buckets)
    torch.testing.assert_close(tracker.loss, loss, rtol=0, atol=1e-12)
    weights = tracker.token_weights()
    assert weights.shape == (10,) and torch.equal(weights[buckets == 0], weights[1].expand(int((buckets == 0).sum())))


def test_weights_follow_losses():
    tracker = TokenLossTracker(V, decay=0.5, temperature=1.0, floor=0.1, ceiling=10.0)
    assert torch.equal(tracker.token_weights(), torch.ones(V))  # nothing seen: neutral
    labels = torch.arange(40)  # ids 40..49 never seen
    losses = torch.full((40,), 2.0)
    losses[:5] = 8.0
    tracker.update(labels, losses, torch.zeros(40, dtype=torch.bool))
    w = tracker.token_weights()
    reference = (5 * 8.0 + 35 * 2.0) / 40
    torch.testing.assert_close(w[:5], torch.full((5,), 8.0 / reference))
    torch.testing.assert_close(w[5:40], torch.full((35,), 2.0 / reference))
    assert torch.equal(w[40:], torch.ones(10))
    sharp = tracker.token_weights(temperature=0.5)
    torch.testing.assert_close(sharp[:5], (w[:5] ** 2).clamp_max(10.0))
    assert float(tracker.token_weights(ceiling=1.5)[0]) == pytest.approx(1.5)


def test_state_dict_round_trip():
    tracker = TokenLossTracker(V, decay=0.9)
    for seed in range(2):
        tracker.update(*_feedback(seed))
    state = tracker.state_dict()
    other = TokenLossTracker(V, decay=0.9)
    other.load_state_dict(state)
    batch = _feedback(7)
    tracker.update(*batch)
    other.update(*batch)
    for name in ("loss", "accuracy", "count_ema", "counts", "seen"):
        assert torch.equal(getattr(tracker, name), getattr(other, name)), name
    assert torch.equal(tracker.token_weights(), other.token_weights())
    with pytest.raises(ValueError, match="vocab_size=50"):
        TokenLossTracker(V + 1).load_state_dict(state)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_reduce_worker(rank: int, port: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        tracker = TokenLossTracker(V, decay=0.9, backend="reference")
        tracker.update(*_feedback(10 + rank))
        tracker.all_reduce()
        out[rank] = tracker.state_dict()
    finally:
        torch.distributed.destroy_process_group()


def test_all_reduce_two_ranks():
    manager = mp.Manager()
    out = manager.dict()
    port = _free_port()
    mp.start_processes(_all_reduce_worker, args=(port, out), nprocs=2, join=True, start_method="fork")
    a, b = out[0], out[1]
    for name in ("loss", "accuracy", "count_ema", "counts", "seen"):
        assert torch.equal(a[name], b[name]), name
    # expected: count-weighted means of the two single-rank trackers
    singles = []
    for rank in range(2):
        t = TokenLossTracker(V, decay=0.9, backend="reference")
        t.update(*_feedback(10 + rank))
        singles.append(t)
    mass = [torch.where(t.seen, t.count_ema, torch.zeros_like(t.count_ema)) for t in singles]
    total = mass[0] + mass[1]
    expected = (mass[0] * singles[0].loss + mass[1] * singles[1].loss) / total.clamp_min(1e-300)
    seen = singles[0].seen | singles[1].seen
    torch.testing.assert_close(a["loss"][seen], expected[seen])
    assert torch.equal(a["seen"], seen)
    assert torch.equal(a["counts"], singles[0].counts + singles[1].counts)


def test_bad_input():
    labels, losses, correct = _feedback(0)
    with pytest.raises(ValueError, match="decay"):
        TokenLossTracker(V, decay=1.0)
    with pytest.raises(ValueError, match="decay"):
        TokenLossTracker(V, decay=0.0)
    with pytest.raises(ValueError, match="groups must be"):
        TokenLossTracker(V, groups=torch.zeros(V - 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="negative class"):
        TokenLossTracker(V, groups=torch.full((V,), -1))
    tracker = TokenLossTracker(V)
    with pytest.raises(ValueError, match="losses has"):
        tracker.update(labels, losses[:-1], correct)
    with pytest.raises(ValueError, match="correct must"):
        tracker.update(labels, losses, correct[:-1])
    bad = losses.clone()
    bad[labels != -100] = -1.0
    with pytest.raises(ValueError, match="not a loss"):
        tracker.update(labels, bad, correct)
    bad[labels != -100] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tracker.update(labels, bad, correct)
    with pytest.raises(ValueError, match="outside"):
        tracker.update(torch.tensor([V]), torch.tensor([1.0]))
    with pytest.raises(TypeError):
        tracker.update(labels.float(), losses)
    with pytest.raises(ValueError, match="floor"):
        tracker.token_weights(floor=2.0)
    assert tracker.updates == 0  # rejected batches change nothing
    assert fastmask.TokenLossTracker is TokenLossTracker


def test_cpp_rejects_out_of_range_without_checks():
    require_backend("cpp")
    plan = plan_tracker_update(torch.tensor([V + 3]), torch.tensor([1.0]), vocab_size=V, check=False)
    with pytest.raises(ValueError, match="outside"):
        run_tracker_update(plan, "cpp")


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_opcheck(backend):
    require_backend(backend)
    from fastmask.token_loss_tracker import _TRACKER_UPDATE

    labels, losses, correct = _feedback(3)
    plan = plan_tracker_update(labels, losses, correct, vocab_size=V)
    buffers, scalars = plan.to_op_args()
    torch.library.opcheck(_TRACKER_UPDATE.custom_op, (buffers, scalars, backend))


@pytest.mark.slow
def test_compile():
    labels, losses, correct = _feedback(3)

    def step(labels, losses, correct):
        p = plan_tracker_update(labels, losses, correct, vocab_size=V, check=False)
        return run_tracker_update(p, "reference")

    compiled = torch.compile(step, fullgraph=False)
    assert torch.equal(compiled(labels, losses, correct), step(labels, losses, correct))


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="a GPU is present: the other tests compile and run the kernel on it"
)
def test_kernel_compiles_for_cuda_without_spills():
    from fastmask.kernels import offline

    chosen = offline.variants("token_loss_tracker")
    try:
        rows = offline.compile_report(chosen, offline.TARGETS, jobs=min(2, os.cpu_count() or 1))
    except offline.OfflineCompileUnavailable as exc:
        pytest.skip(str(exc))
    assert [(r["variant"], r["target"]) for r in rows] == [
        (v.label, f"sm_{c}") for c in offline.TARGETS for v in chosen
    ]
    bad = offline.spilled(rows)
    assert not bad, "spills or compile errors:\n" + offline.markdown_table(bad)
    assert all(0 < r["n_regs"] <= 65536 // (32 * r["num_warps"]) for r in rows)
