"""The mask stream (fastmask/mask_stream.py) through the collators: seed, epochs, DataLoader
workers, state_dict / resume, pickling, bad input."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from collator_support import batch_labels, collator, data_loader, features, tokenizer


def _epochs(loader, epochs):
    return [torch.cat([labels.flatten() for labels in batch_labels(loader)]) for _ in range(epochs)]


@pytest.mark.parametrize("seed", [None, 0])
@pytest.mark.parametrize("workers,persistent", [(0, False), (2, False), (2, True)])
def test_every_epoch_draws_new_masks(workers, persistent, seed):
    """Regression: with non-persistent workers every epoch repeated the first epoch's masks."""
    row = features(rows=1, max_length=64, offsets=False)[0]
    dataset = [dict(row) for _ in range(8)]
    c = collator(seed=seed)
    kwargs = {"persistent_workers": True} if persistent else {}
    first, second, third = _epochs(data_loader(dataset, c, workers=workers, **kwargs), 3)
    assert first.ne(-100).any()
    assert not torch.equal(first, second) and not torch.equal(second, third) and not torch.equal(first, third)


@pytest.mark.parametrize("seed", [None, 7])
@pytest.mark.parametrize("workers", [0, 2])
def test_multi_epoch_run_is_reproducible(workers, seed):
    """Same seed and the same torch.manual_seed before the loader: the same masks for a whole run."""
    dataset = features(rows=12, max_length=48, offsets=False)

    def run():
        torch.manual_seed(123)
        c = collator(seed=seed)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=3,
            collate_fn=c,
            num_workers=workers,
            shuffle=True,
            **({"multiprocessing_context": "fork"} if workers else {}),
        )
        return _epochs(loader, 3)

    first, again = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])


def test_state_dict_after_worker_epochs_counts_every_process():
    """Regression: after epochs in workers, state_dict reported examples: 0."""
    dataset = features(rows=8, max_length=32, offsets=False)
    c = collator(seed=1)
    _epochs(data_loader(dataset, c, workers=2), 2)
    state = c.state_dict()
    assert state["examples"] == 0 and state["worker_examples"] == [8, 8]
    assert state["seed"] == 1 and state["format"] == "fastmask.collator/2"


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_an_epoch_boundary_continues_the_stream(workers):
    dataset = features(rows=8, max_length=32, offsets=False)
    uninterrupted = _epochs(data_loader(dataset, collator(seed=2), workers=workers), 3)
    first = collator(seed=2)
    _epochs(data_loader(dataset, first, workers=workers), 2)
    resumed = collator(seed=2)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(_epochs(data_loader(dataset, resumed, workers=workers), 1)[0], uninterrupted[2])


def test_drawn_seed_is_shared_and_restored():
    dataset = features(rows=4, max_length=32, offsets=False)
    torch.manual_seed(5)
    c = collator(seed=None)
    _epochs(data_loader(dataset, c, workers=2), 1)  # the workers draw the seed from the loader's base seed
    seed = c.state_dict()["seed"]
    assert c.resolved_seed() == seed and 0 <= seed < 2**62
    other = collator(seed=None)
    other.load_state_dict(c.state_dict())
    assert other.resolved_seed() == seed


def _keyed(rows=8):
    dataset = features(rows=rows, max_length=48, offsets=False)
    for i, f in enumerate(dataset):
        f["idx"] = i
    return dataset


@pytest.mark.parametrize("workers,persistent", [(0, False), (1, True)])
def test_row_key_column_repeats_without_set_epoch_and_warns_once(workers, persistent):
    dataset = _keyed()
    c = collator(seed=0, row_key_column="idx")
    kwargs = {"persistent_workers": True} if persistent else {}
    loader = data_loader(dataset, c, workers=workers, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = _epochs(loader, 2)
    assert torch.equal(first, second)  # a row's mask follows its key: static until set_epoch
    if workers == 0:  # a worker's warnings go to its stderr
        assert sum("came round again" in str(w.message) for w in caught) == 1


def test_row_key_column_changes_with_set_epoch_without_warning():
    dataset = _keyed()
    c = collator(seed=0, row_key_column="idx")
    loader = data_loader(dataset, c, workers=0)
    epochs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(3):
            c.set_epoch(epoch)
            epochs += _epochs(loader, 1)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    again = collator(seed=0, row_key_column="idx")
    again.set_epoch(1)
    assert torch.equal(_epochs(data_loader(dataset, again, workers=2), 1)[0], epochs[1])


def test_seed_none_draws_from_torch_global_rng():
    tok = tokenizer()
    feats = features(rows=8)
    torch.manual_seed(123)
    a = collator(tok)(feats)
    torch.manual_seed(123)
    b = collator(tok)(feats)
    torch.manual_seed(124)
    c = collator(tok)(feats)
    assert torch.equal(a["labels"], b["labels"]) and not torch.equal(a["labels"], c["labels"])


def test_set_epoch_changes_masks_reproducibly():
    tok = tokenizer()
    feats = features(rows=8)

    def first_batch(epoch):
        c = collator(tok, seed=5)
        c.set_epoch(epoch)
        return c(feats)["labels"]

    assert torch.equal(first_batch(0), first_batch(0))
    assert torch.equal(first_batch(3), first_batch(3))
    assert not torch.equal(first_batch(0), first_batch(1))


def test_state_dict_resumes_the_exact_stream():
    tok = tokenizer()
    batches = [features(rows=4, start=4 * i) for i in range(6)]
    for seed in (9, None):
        torch.manual_seed(0)
        c = collator(tok, seed=seed, strategy="whole_word")
        c.set_epoch(2)
        for batch in batches[:3]:
            c(batch)
        state = pickle.loads(pickle.dumps(c.state_dict()))
        expected = [c(batch) for batch in batches[3:]]
        torch.manual_seed(999)  # a resumed process has another global RNG state
        resumed = collator(tok, seed=seed, strategy="whole_word")
        resumed.load_state_dict(state)
        assert resumed.epoch == 2
        for want, batch in zip(expected, batches[3:]):
            got = resumed(batch)
            assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])
    with pytest.raises(ValueError, match="seed"):
        collator(tok, seed=1).load_state_dict(dict(state, seed=2))
    with pytest.raises(ValueError, match="format"):
        collator(tok).load_state_dict({"seed": 1})


def test_pickling_outside_worker_startup_detaches_shared_state():
    c = collator(seed=0)
    c.set_step(7)
    c.set_epoch(2)
    for copied in (copy.deepcopy(c), pickle.loads(pickle.dumps(c))):
        assert copied._shared is not c._shared and copied.step == 7 and copied.epoch == 2
        c.set_step(8)
        assert copied.step == 7
        copied.set_epoch(3)
        assert c.epoch == 2
        c.set_step(7)


@pytest.mark.parametrize(
    "epoch,error", [(2**64, ValueError), (2**63 + 5, ValueError), (-1, ValueError), (1.0, TypeError)]
)
def test_set_epoch_and_step_reject_values_that_would_wrap(epoch, error):
    c = collator(tokenizer(), seed=0)
    with pytest.raises(error, match="epoch"):
        c.set_epoch(epoch)
    with pytest.raises(error, match="step"):
        c.set_step(epoch)
    assert (c.epoch, c.step) == (0, 0)


def test_load_state_dict_names_missing_fields():
    c = collator(tokenizer(), seed=0)
    state = c.state_dict()
    for field in ("seed", "epoch", "step", "examples"):
        with pytest.raises(ValueError, match=f"missing \\['{field}'\\]"):
            c.load_state_dict({k: v for k, v in state.items() if k != field})
    with pytest.raises(ValueError, match="worker_examples"):
        c.load_state_dict(dict(state, worker_examples=5))
    old = {"format": "fastmask.collator/1", "seed": 0, "epoch": 1, "step": 2, "examples": 3}
    c.load_state_dict(old)  # the previous format still loads
    assert c.state_dict()["examples"] == 3 and c.state_dict()["worker_examples"] == []
