"""The collator in training pipelines: DataLoader workers, shared step, callback, Trainer."""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch
from collator_support import batch_labels, collator, data_loader, features, tokenizer
from tiny_models import tiny_bert, trainer_args

from fastmask.collator import DataCollatorForLanguageModeling, MaskingSchedule, MaskingScheduleCallback


def test_dataloader_workers_reproducible_and_different_per_worker():
    row = features(rows=1, max_length=64, offsets=False)[0]
    dataset = [dict(row) for _ in range(8)]  # identical examples
    first = batch_labels(data_loader(dataset, collator(seed=3), workers=2))
    again = batch_labels(data_loader(dataset, collator(seed=3), workers=2))
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "not reproducible for a fixed seed"
    # batch 0 comes from worker 0, batch 1 from worker 1: same inputs, different masks
    assert not torch.equal(first[0], first[1])
    # each worker's consecutive batches differ too
    assert not torch.equal(first[0], first[2])
    other_seed = batch_labels(data_loader(dataset, collator(seed=4), workers=2))
    assert not torch.equal(first[0], other_seed[0])


def test_row_key_column_masks_do_not_depend_on_workers():
    dataset = features(rows=8, max_length=64, offsets=False)
    for i, f in enumerate(dataset):
        f["idx"] = i

    def per_example(workers, batch_size):
        loader = data_loader(dataset, collator(seed=5, row_key_column="idx"), workers=workers, batch_size=batch_size)
        rows = [row for labels in batch_labels(loader) for row in labels]
        return [row[: len(f["input_ids"])] for row, f in zip(rows, dataset)]

    serial = per_example(0, 2)
    assert any(row.ne(-100).any() for row in serial)
    for workers, batch_size in ((2, 2), (2, 4), (0, 3)):
        assert all(torch.equal(a, b) for a, b in zip(serial, per_example(workers, batch_size)))


def test_set_step_reaches_persistent_workers():
    dataset = features(rows=8, max_length=48, offsets=False)
    c = collator(seed=0, mlm_probability=MaskingSchedule("linear", start=0.0, end=1.0, total_steps=1))
    c.set_step(0)  # shares the step before the workers start
    loader = data_loader(dataset, c, workers=2, persistent_workers=True)
    assert all(labels.eq(-100).all() for labels in batch_labels(loader))
    c.set_step(1)
    for batch in loader:  # rate 1: every eligible token selected
        selected = batch["labels"] != -100
        original = torch.where(selected, batch["labels"], batch["input_ids"])
        special = torch.isin(original, torch.tensor(tokenizer().all_special_ids))
        assert torch.equal(selected, batch["attention_mask"].bool() & ~special)


@pytest.mark.slow
def test_shared_step_survives_spawned_workers():
    """Under the spawn start method the collator is pickled into the workers: the shared
    memory travels with it (pickling outside a process start detaches instead)."""
    dataset = features(rows=4, max_length=32, offsets=False)
    c = collator(seed=0, mlm_probability=MaskingSchedule("linear", start=0.0, end=1.0, total_steps=1))
    c.set_step(0)
    loader = data_loader(dataset, c, workers=1, persistent_workers=True, multiprocessing_context="spawn")
    assert all(labels.eq(-100).all() for labels in batch_labels(loader))
    c.set_step(1)
    assert all(labels.ne(-100).any() for labels in batch_labels(loader))


def test_schedule_reaches_workers_without_any_call():
    """The state is shared from construction: a step set after the first epoch reaches new workers."""
    dataset = features(rows=4, max_length=32, offsets=False)
    c = collator(seed=0, mlm_probability=MaskingSchedule("linear", start=0.0, end=1.0, total_steps=1))
    assert all(labels.eq(-100).all() for labels in batch_labels(data_loader(dataset, c, workers=1)))
    c.set_step(1)
    assert all(labels.ne(-100).any() for labels in batch_labels(data_loader(dataset, c, workers=1)))


# ----------------------------------------------------------------------------- dynamic masking across epochs


def test_schedule_callback_drives_step_and_epoch():
    c = collator(seed=0, mlm_probability=MaskingSchedule("cosine", start=0.3, end=0.1, total_steps=10))
    callback = MaskingScheduleCallback(c)
    state = types.SimpleNamespace(global_step=0, epoch=0.0)
    callback.on_train_begin(None, state, None)
    callback.on_epoch_begin(None, state, None)
    assert (c.step, c.epoch) == (0, 0)
    state.global_step, state.epoch = 10, 1.0
    callback.on_step_end(None, state, None)
    callback.on_epoch_begin(None, state, None)
    assert (c.step, c.epoch) == (10, 1)
    assert c.current_mlm_probability() == pytest.approx(0.1)
    with pytest.raises(TypeError):
        MaskingScheduleCallback(object())


class _KeyRecorder(DataCollatorForLanguageModeling):
    def torch_call(self, examples):
        self.keys_seen = sorted(examples[0].keys())
        self.__dict__.setdefault("rates", []).append(self.current_mlm_probability())
        return super().torch_call(examples)


def test_trainer_runs_with_whole_word_masking_after_column_removal(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    import transformers

    tok = tokenizer()
    model = tiny_bert(len(tok), layers=2)
    train = features(rows=16, max_length=64)  # with offset_mapping and special_tokens_mask
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = _KeyRecorder(
            tok,
            whole_word_mask=True,
            seed=0,
            mlm_probability=MaskingSchedule("linear", start=0.3, end=0.15, total_steps=3),
        )
    args = trainer_args(tmp_path, max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=train, data_collator=c, callbacks=[MaskingScheduleCallback(c)]
    )
    result = trainer.train()
    assert math.isfinite(result.training_loss) and result.training_loss > 0
    assert "offset_mapping" not in c.keys_seen and "special_tokens_mask" not in c.keys_seen
    assert c.step == 3  # set when the last of the 3 steps ended
    # the schedule advances with the steps (lagging by the loader's look-ahead: accelerate
    # collates one batch ahead)
    schedule = c.mlm_probability
    assert c.rates[0] == schedule(0) and c.rates[-1] == pytest.approx(schedule(2))
    assert all(any(rate == pytest.approx(schedule(k)) for k in range(i + 1)) for i, rate in enumerate(c.rates))
    assert c.rates == sorted(c.rates, reverse=True)
    assert not any(tmp_path.glob("checkpoint-*"))
