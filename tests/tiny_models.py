"""Tiny randomly initialised transformers models for the tests: one builder per family, sizes
small enough for CPU steps in milliseconds; keyword overrides reach the config. Also their
training loop (:func:`train_losses`) and ``Trainer`` arguments (:func:`trainer_args`)."""

from __future__ import annotations

import numpy as np
import torch
import transformers


def trainer_args(output_dir, **options) -> transformers.TrainingArguments:
    """CPU ``TrainingArguments`` for a test's ``Trainer``: no reporting, progress bar, checkpoints
    or DataLoader workers; ``options`` add to or override these."""
    quiet = dict(report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no", dataloader_num_workers=0)
    return transformers.TrainingArguments(output_dir=str(output_dir), **{**quiet, **options})


def train_losses(model, batches, *, lr: float = 1e-2) -> list[float]:
    """One Adam (``lr``) step of ``model`` on each batch of ``batches`` in turn, on one torch
    thread (a tiny model: intra-op threads only contend on a small machine); the losses, checked
    finite."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for batch in batches:
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        torch.set_num_threads(threads)
    assert all(np.isfinite(losses)), losses
    return losses


def tiny_bert(vocab_size: int, *, layers: int = 1, hidden: int = 32, **overrides) -> transformers.BertForMaskedLM:
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        **overrides,
    )
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(config)


def tiny_llama(vocab_size: int, *, pad: int, bos: int, eos: int, hidden: int = 32, **overrides):
    """A 2-layer LlamaForCausalLM with eager attention (its losses are compared across runs)."""
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        **overrides,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def tiny_t5(vocab_size: int, *, pad: int, eos: int) -> transformers.T5ForConditionalGeneration:
    """T5 with one encoder and one decoder layer; decoder start = pad, as T5's."""
    config = transformers.T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,
    )
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(config)


def tiny_bart(vocab_size: int, *, pad: int, bos: int, eos: int) -> transformers.BartForConditionalGeneration:
    """BART with one encoder and one decoder layer; decoder start = EOS, as BART's."""
    config = transformers.BartConfig(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
        decoder_start_token_id=eos,
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    return transformers.BartForConditionalGeneration(config)
