"""Causal-LM support for ``apply_fastmask``: decoder LLM fine-tuning loss on labelled rows only.

``apply_fastmask(model)`` on one of :data:`CAUSAL_LM_CLASSES` uses the patch machinery of
:mod:`fastmask.integrations.transformers` (same train/eval rule, same ``skip_logits`` keyword,
same unapply/pickle/deepcopy behaviour); this module only says how a causal LM's fused call
computes its loss. It follows transformers' ``ForCausalLMLoss``:

* targets are ``labels`` shifted left by one (the last position gets ``-100``), or the
  ``shift_labels`` keyword as given (then ``labels`` only switches the loss on, as in the stock
  forward);
* only positions whose target is not ``-100`` are gathered from the decoder's last hidden state,
  and :func:`fastmask.fused_masked_lm_loss` runs the ``lm_head`` (weight tied or not, bias if
  any) and the cross-entropy on those rows, a chunk at a time: no ``(batch, seq_len, vocab)``
  logits;
* ``num_items_in_batch`` (passed by ``Trainer`` under gradient accumulation) divides the summed
  loss, as ``fixed_cross_entropy`` does; without it the loss is the mean over labelled targets.

Differences from the stock forward in a fused call (as for the masked-LM patch): ``logits`` is
``None``; a batch without any labelled target gives loss 0 with zero gradients (stock: NaN).
A labelled call with ``logits_to_keep`` other than 0, or on a model given its own
``model.loss_function``, takes the stock forward.

Final-logit soft-capping (Gemma 2, and Gemma 3 when ``final_logit_softcapping`` is set):
``cap * tanh(z / cap)`` happens between the matmul and the softmax, which the fused kernel does
not do. Those models take a separate path: the labelled rows are still gathered (no
``B x L x V`` logits), then each chunk of rows runs through torch ``linear -> soft-cap ->
cross_entropy(sum)`` under activation checkpointing, so at most one chunk of logits is alive in
the forward and in the backward. It is slower per labelled row than the fused kernel, but the
loss and gradients are the stock ones.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._constants import IGNORE_INDEX
from ..fused_linear_cross_entropy import default_chunk_size
from ._head_loss import flat_labels, gather_rows, head_loss

# The forward arguments every supported decoder's stock forward hands to its base model.
_DECODER_ARGS = ("input_ids", "attention_mask", "position_ids", "cache", "inputs_embeds", "use_cache")
_GPT2_ARGS = (
    "input_ids",
    "cache",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "inputs_embeds",
    "encoder_hidden_states",
    "encoder_attention_mask",
    "use_cache",
)
_HEAD_ARGS = ("logits_to_keep",)

# class name -> (defining module, base-model attribute, encoder args, output class name)
_CAUSAL = {
    "LlamaForCausalLM": ("transformers.models.llama.modeling_llama", "model", _DECODER_ARGS, "CausalLMOutputWithPast"),
    "MistralForCausalLM": (
        "transformers.models.mistral.modeling_mistral",
        "model",
        _DECODER_ARGS,
        "CausalLMOutputWithPast",
    ),
    "Qwen2ForCausalLM": ("transformers.models.qwen2.modeling_qwen2", "model", _DECODER_ARGS, "CausalLMOutputWithPast"),
    "Qwen3ForCausalLM": ("transformers.models.qwen3.modeling_qwen3", "model", _DECODER_ARGS, "CausalLMOutputWithPast"),
    "Gemma2ForCausalLM": (
        "transformers.models.gemma2.modeling_gemma2",
        "model",
        _DECODER_ARGS,
        "CausalLMOutputWithPast",
    ),
    "Gemma3ForCausalLM": (
        "transformers.models.gemma3.modeling_gemma3",
        "model",
        _DECODER_ARGS,
        "CausalLMOutputWithPast",
    ),
    "Phi3ForCausalLM": ("transformers.models.phi3.modeling_phi3", "model", _DECODER_ARGS, "CausalLMOutputWithPast"),
    "GPT2LMHeadModel": (
        "transformers.models.gpt2.modeling_gpt2",
        "transformer",
        _GPT2_ARGS,
        "CausalLMOutputWithCrossAttentions",
    ),
}
CAUSAL_LM_CLASSES = tuple(_CAUSAL)


def _accepts(model, arguments: dict) -> bool:
    """Whether a labelled call can be fused: not with ``logits_to_keep`` != 0 (the fused path scores
    every position), nor when a custom ``model.loss_function`` was set (its loss is unknown)."""
    if "_loss_function" in model.__dict__:
        return False
    keep = arguments.get("logits_to_keep", 0)
    return isinstance(keep, int) and not isinstance(keep, bool) and keep == 0


def shifted_targets(labels: torch.Tensor, shift_labels: Optional[torch.Tensor]) -> torch.Tensor:
    """``ForCausalLMLoss``'s targets: ``shift_labels`` as given, else ``labels`` shifted left by one
    with ``-100`` appended."""
    if shift_labels is not None:
        return shift_labels
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def softcap_cross_entropy_sum(
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    cap: float,
    chunk_size: int,
) -> torch.Tensor:
    """``sum(cross_entropy(cap * tanh((rows @ weight.T + bias) / cap), targets))`` over chunks of
    rows, each under activation checkpointing (one chunk of logits alive at a time)."""

    def chunk_loss(h, w, b, t):
        logits = F.linear(h, w, b)  # the stock order: lm_head, divide, tanh, multiply, then .float()
        logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits.float(), t, reduction="sum")

    total = None
    for start in range(0, rows.shape[0], chunk_size):
        end = min(rows.shape[0], start + chunk_size)
        part = checkpoint(chunk_loss, rows[start:end], weight, bias, targets[start:end], use_reentrant=False)
        total = part if total is None else total + part
    return total


def causal_lm_loss(
    model, state, hidden: torch.Tensor, labels: torch.Tensor, shift_labels: Optional[torch.Tensor], num_items_in_batch
) -> torch.Tensor:
    """``ForCausalLMLoss(lm_head(hidden), labels, ...)`` from the labelled rows of ``hidden`` only."""
    name = "shift_labels" if shift_labels is not None else "labels"
    flat = flat_labels(shifted_targets(labels, shift_labels), hidden, name, "decoder")
    rows, targets = gather_rows(hidden, flat, flat != IGNORE_INDEX)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap is None:
        return head_loss(model, state, rows, targets, num_items_in_batch)

    def softcap_loss(rows, weight, bias, targets):
        chunk = state.chunk_size or default_chunk_size(*weight.shape)
        total = softcap_cross_entropy_sum(rows, weight, bias, targets, float(cap), chunk)
        if num_items_in_batch is None:
            return total / targets.numel()
        count = num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        return total / count

    return head_loss(model, state, rows, targets, num_items_in_batch, softcap_loss)


def _fused_output(output_class: str):
    def fused_output(model, state, arguments: dict, outputs, extra: dict):
        import transformers.modeling_outputs as modeling_outputs

        loss = causal_lm_loss(
            model, state, outputs[0], arguments["labels"], extra.get("shift_labels"), extra.get("num_items_in_batch")
        )
        cls = getattr(modeling_outputs, output_class)
        fields = {
            f.name: getattr(outputs, f.name, None) for f in dataclasses.fields(cls) if f.name not in ("loss", "logits")
        }
        return cls(loss=loss, logits=None, **fields)

    return fused_output


def causal_lm_specs(spec_class) -> dict:
    """``{class name: spec}`` for :mod:`fastmask.integrations.transformers`' registry."""
    return {
        name: spec_class(
            module,
            encoder,
            args,
            False,
            None,
            head_args=_HEAD_ARGS,
            fused_output=_fused_output(output),
            accepts=_accepts,
        )
        for name, (module, encoder, args, output) in _CAUSAL.items()
    }
