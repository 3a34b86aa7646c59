"""apply_fastmask on transformers causal LMs: the loss of transformers' ``ForCausalLMLoss`` and the
same gradients for every parameter, computed from the labelled rows only.

Tolerances (fp32) as in test_integrations_transformers.py: loss rtol=1e-5, atol=1e-6;
gradients rtol=1e-4, atol=1e-6. Tiny random-init configs (hidden 32, 2 layers, vocab 97), every
dropout 0, attention "eager" (CPU).
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastmask import apply_fastmask, unapply_fastmask  # noqa: E402
from fastmask.integrations import causal_lm  # noqa: E402
from fastmask.integrations.transformers import SUPPORTED_CLASSES  # noqa: E402

LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
VOCAB = 97
_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# name -> (model class, config class, config kwargs)
FAMILIES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", _DECODER),
    "mistral": ("MistralForCausalLM", "MistralConfig", _DECODER),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", _DECODER),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(_DECODER, head_dim=8)),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", dict(_DECODER, head_dim=8, final_logit_softcapping=5.0)),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(_DECODER, head_dim=8)),
    "gemma3-softcap": (
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        dict(_DECODER, head_dim=8, final_logit_softcapping=3.0),
    ),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", _DECODER),
    "gpt2": (
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
    ),
}


def make(family: str, **overrides):
    cls_name, cfg_name, kwargs = FAMILIES[family]
    if not hasattr(transformers, cls_name):
        pytest.skip(f"transformers {transformers.__version__} has no {cls_name}")
    torch.manual_seed(0)
    config = getattr(transformers, cfg_name)(**dict(kwargs, **overrides))
    config._attn_implementation = "eager"
    model = getattr(transformers, cls_name)(config)
    return model.train()


def completion_batch(seed=0, batch=3, length=12, pad=True):
    """Prompt tokens labelled -100, completion tokens labelled, right padding (attention 0, -100)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    attention = torch.ones_like(ids)
    labels = ids.clone()
    for row in range(batch):
        prompt = 2 + row
        labels[row, :prompt] = -100
        if pad and row:
            ids[row, length - 2 * row :] = 0
            attention[row, length - 2 * row :] = 0
            labels[row, length - 2 * row :] = -100
    return ids, attention, labels


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(patched, stock):
    g1, g2 = grads(patched), grads(stock)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], **GRAD_TOL, msg=name)


def assert_matches_stock(patched, stock, call):
    """``call(model)`` on both models, then backward: the same loss and the same gradients.
    Returns both outputs."""
    out_p, out_s = call(patched), call(stock)
    out_p.loss.backward()
    out_s.loss.backward()
    torch.testing.assert_close(out_p.loss, out_s.loss, **LOSS_TOL)
    assert_same_grads(patched, stock)
    return out_p, out_s


def run_both(family, call, **overrides):
    """:func:`assert_matches_stock` of a ``family`` model (config ``overrides``) and its patched
    copy: ``(patched, stock, patched output, stock output)``."""
    stock = make(family, **overrides)
    patched = apply_fastmask(copy.deepcopy(stock))
    return (patched, stock, *assert_matches_stock(patched, stock, call))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_loss_and_gradients_match_stock(family):
    ids, attention, labels = completion_batch()
    _, _, out_p, out_s = run_both(family, lambda m: m(input_ids=ids, attention_mask=attention, labels=labels))
    assert out_p.logits is None and out_s.logits is not None


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_num_items_in_batch_gradient_accumulation(family):
    """Two micro-batches with Trainer's num_items_in_batch: summed losses and gradients match."""
    batches = [completion_batch(seed) for seed in (1, 2)]
    total = sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in batches)
    stock = make(family)
    patched = apply_fastmask(copy.deepcopy(stock))
    for model in (patched, stock):
        losses = []
        for ids, attention, labels in batches:
            loss = model(
                input_ids=ids, attention_mask=attention, labels=labels, num_items_in_batch=torch.tensor(total)
            ).loss
            loss.backward()
            losses.append(loss.detach())
        model.summed = sum(losses)
    torch.testing.assert_close(patched.summed, stock.summed, **LOSS_TOL)
    assert_same_grads(patched, stock)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_shift_labels_keyword_is_used_as_given(family):
    ids, attention, labels = completion_batch(3)
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()
    shift[0, 5] = -100  # differs from labels shifted: the stock loss reads shift_labels
    run_both(family, lambda m: m(input_ids=ids, attention_mask=attention, labels=labels, shift_labels=shift))


def test_untied_embeddings_and_lm_head_bias():
    ids, attention, labels = completion_batch(4)
    stock = make("llama", tie_word_embeddings=False)
    torch.manual_seed(1)
    stock.lm_head = torch.nn.Linear(32, VOCAB, bias=True)
    patched = apply_fastmask(copy.deepcopy(stock))
    assert patched.lm_head.weight is not patched.model.embed_tokens.weight
    assert_matches_stock(patched, stock, lambda m: m(input_ids=ids, attention_mask=attention, labels=labels))
    assert patched.lm_head.bias.grad.abs().sum() > 0


def test_tied_embeddings_share_one_gradient():
    ids, attention, labels = completion_batch(5)
    patched, _, _, _ = run_both(
        "llama", lambda m: m(input_ids=ids, attention_mask=attention, labels=labels), tie_word_embeddings=True
    )
    assert patched.lm_head.weight is patched.model.embed_tokens.weight


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_labelless_eval_and_generation_are_untouched(family):
    ids, attention, labels = completion_batch(6, pad=False)
    stock = make(family)
    patched = apply_fastmask(copy.deepcopy(stock))
    with torch.no_grad():
        torch.testing.assert_close(patched(input_ids=ids).logits, stock(input_ids=ids).logits, rtol=0, atol=0)
        patched.eval(), stock.eval()
        out_p = patched(input_ids=ids, labels=labels)
        out_s = stock(input_ids=ids, labels=labels)
        assert out_p.logits is not None
        torch.testing.assert_close(out_p.loss, out_s.loss, rtol=0, atol=0)
        gen = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(patched.generate(ids[:1], **gen), stock.generate(ids[:1], **gen))


def test_skip_logits_override_and_logits_to_keep_fall_back():
    ids, attention, labels = completion_batch(7)
    model = apply_fastmask(make("llama"))
    assert model(input_ids=ids, labels=labels, skip_logits=False).logits is not None
    model.eval()
    out = model(input_ids=ids, labels=labels, skip_logits=True)
    assert out.logits is None and torch.isfinite(out.loss)
    model.train()
    out = model(input_ids=ids, labels=labels, logits_to_keep=0)
    assert out.logits is None
    # a custom loss function: the fused path cannot know it, so the stock forward runs
    model.loss_function = lambda logits, labels, vocab_size, **kw: logits.float().mean()
    assert model(input_ids=ids, labels=labels).logits is not None


def test_return_dict_false_and_no_labelled_target():
    ids, attention, labels = completion_batch(8)
    model = apply_fastmask(make("llama"))
    loss = model(input_ids=ids, labels=labels, return_dict=False)[0]
    assert loss.dim() == 0
    empty = torch.full_like(labels, -100)
    out = model(input_ids=ids, labels=empty)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert model.lm_head.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_backends_agree(backend):
    ids, attention, labels = completion_batch(9)
    stock = make("llama")
    patched = apply_fastmask(copy.deepcopy(stock), backend=backend, chunk_size=5)
    out_p = patched(input_ids=ids, attention_mask=attention, labels=labels)
    out_s = stock(input_ids=ids, attention_mask=attention, labels=labels)
    torch.testing.assert_close(out_p.loss, out_s.loss, **LOSS_TOL)


def test_softcap_path_chunks_and_matches():
    ids, attention, labels = completion_batch(10)
    stock = make("gemma2")
    patched = apply_fastmask(copy.deepcopy(stock), chunk_size=3)
    assert_matches_stock(patched, stock, lambda m: m(input_ids=ids, attention_mask=attention, labels=labels))


def test_unsupported_family_lists_supported_classes():
    config = transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    )
    with pytest.raises(TypeError) as info:
        apply_fastmask(transformers.OPTForCausalLM(config))
    message = str(info.value)
    for name in causal_lm.CAUSAL_LM_CLASSES + ("BertForMaskedLM",):
        assert name in message
    assert set(causal_lm.CAUSAL_LM_CLASSES) <= set(SUPPORTED_CLASSES)


def test_unapply_restores_stock_forward():
    model = apply_fastmask(make("llama"))
    unapply_fastmask(model)
    ids, _, labels = completion_batch(11)
    assert model(input_ids=ids, labels=labels).logits is not None
