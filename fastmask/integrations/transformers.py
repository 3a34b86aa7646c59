"""Sparse masked-LM head for transformers models: ``apply_fastmask(model)``.

``apply_fastmask(model)`` replaces ``model.forward`` on that one instance (other instances and
the class are untouched). A call **with** ``labels`` while the model is **training**
(``model.training``, i.e. after ``model.train()``) then runs the encoder as usual, gathers the
labelled positions (``labels != -100``), runs only those rows through the head's transform
(dense, activation, LayerNorm) and computes the loss with :func:`fastmask.fused_masked_lm_loss`
on the decoder's own ``weight`` (tied to the input embeddings, so the gradient reaches the
shared tensor) and ``bias``. No ``(batch, seq_len, vocab)`` logits are built. Every other call
is the unpatched forward: a call **without** ``labels``, and a labelled call in **eval** mode
(after ``model.eval()``, as ``Trainer.evaluate``/``predict`` do), which returns the stock logits
and the stock loss, so ``preprocess_logits_for_metrics``/``compute_metrics`` (transformers'
``run_mlm.py`` masked accuracy) work unchanged. That is Liger-Kernel's default rule for its
``skip_logits``: skip the logits iff ``training and labels is not None``.

Extra keyword for the patched forward: ``skip_logits`` (the name Liger-Kernel and ``Trainer``
use) overrides that rule for one call: ``None`` (default) = the rule above; ``True`` = fused
loss without logits in either mode (labels required), e.g. for a loss-only evaluation, which
``Trainer`` cannot ask for here (it passes ``skip_logits=True`` only with ``use_liger_kernel``),
or to train in eval mode; ``False`` = the unpatched forward, logits included, in either mode.

What a fused call (training, or ``skip_logits=True``) returns, compared with the unpatched model:

* ``logits`` is ``None`` (the point is not to compute them). With ``return_dict=False`` the
  tuple therefore has no logits entry: ``(loss, [hidden_states], [attentions])``.
  ``Trainer`` reads ``outputs["loss"]``, so training works; ``Trainer.prediction_step`` called
  on a model still in train mode (outside ``evaluate``/``predict``) gets no logits either.
* ``num_items_in_batch`` (passed by ``Trainer``), when given, normalises the summed loss like
  transformers' ``ForMaskedLMLoss`` (what ModernBERT does). The BERT-family forwards ignore it
  and return the per-batch mean, so the two differ when it is not this batch's count of labels
  (gradient accumulation, ``average_tokens_across_devices``); fastmask's value is the correct
  token-level mean over the accumulated batch.
* A batch with no labelled position gives loss 0 with zero gradients (the unpatched model
  returns NaN).
* Under ``torch.autocast`` the decoder inputs are cast to the autocast dtype, as the
  unpatched ``nn.Linear`` would be; the loss math itself is fp32.

A labelled call in eval mode is the unpatched forward, so none of these differences apply to it:
it returns the stock model's loss (its ``num_items_in_batch`` handling, NaN for a batch with no
labels included) and builds the full logits, as the stock model does.

Forms: ``apply_fastmask(model)`` / ``unapply_fastmask(model)`` (both return the model, both
idempotent; applying again only updates ``chunk_size``/``backend``), and the context manager
``with fastmask_patched(model): ...`` which restores the previous state on exit.
Apply the patch to the transformers model itself, before wrapping it (DDP, PEFT, compile,
accelerate hooks): a forward set on the instance before ``apply_fastmask`` still serves
unlabelled calls, but labelled calls go straight to the encoder. The patched model deep-copies
and pickles patched; ``state_dict``/``save_pretrained`` are unaffected. ``nn.DataParallel`` is
not supported (its replicas share the instance's forward, which holds the original model): use
DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Optional

import torch
from torch import nn

from .._backend import check_backend_name
from .._constants import IGNORE_INDEX
from .._validation import check_int
from ..loss_feedback import check_feedback
from ._head_loss import flat_labels, gather_rows, head_loss

_STATE_ATTR = "_fastmask_patch"


def _bert_transform(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return model.cls.predictions.transform(rows)


def _roberta_transform(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    # RobertaLMHead / XLMRobertaLMHead apply the `gelu` of their modeling module inline.
    head = model.lm_head
    gelu = sys.modules[type(head).__module__].gelu
    return head.layer_norm(gelu(head.dense(rows)))


def _distilbert_transform(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return model.vocab_layer_norm(model.activation(model.vocab_transform(rows)))


def _electra_transform(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return model.generator_predictions(rows)


def _modernbert_transform(model: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    return model.head(rows)


@dataclasses.dataclass(frozen=True)
class _HeadSpec:
    """How one supported class computes its MLM head (read from its transformers modeling file)."""

    module: str  # where the class is defined
    encoder: str  # attribute holding the base model
    encoder_args: tuple  # named forward arguments the stock forward hands to the encoder
    encoder_return_dict: bool  # whether the stock forward passes return_dict=True to it
    transform: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]]  # rows (N, H) -> (N, E)
    # named forward arguments that are not handed to the encoder (causal LMs: logits_to_keep)
    head_args: tuple = ()
    # the fused call (model, state, arguments, encoder outputs, extra kwargs) -> ModelOutput;
    # None: the masked-LM head below. fastmask/integrations/causal_lm.py supplies the causal one.
    fused_output: Optional[Callable] = None
    # whether the labelled call may take the fused path (arguments -> bool); None: always
    accepts: Optional[Callable[[nn.Module, dict], bool]] = None


_BERT_ARGS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "inputs_embeds",
    "encoder_hidden_states",
    "encoder_attention_mask",
)
_SUPPORTED = {
    "BertForMaskedLM": _HeadSpec("transformers.models.bert.modeling_bert", "bert", _BERT_ARGS, True, _bert_transform),
    "RobertaForMaskedLM": _HeadSpec(
        "transformers.models.roberta.modeling_roberta", "roberta", _BERT_ARGS, True, _roberta_transform
    ),
    "XLMRobertaForMaskedLM": _HeadSpec(
        "transformers.models.xlm_roberta.modeling_xlm_roberta", "roberta", _BERT_ARGS, True, _roberta_transform
    ),
    "DistilBertForMaskedLM": _HeadSpec(
        "transformers.models.distilbert.modeling_distilbert",
        "distilbert",
        ("input_ids", "attention_mask", "inputs_embeds", "position_ids"),
        True,
        _distilbert_transform,
    ),
    "ElectraForMaskedLM": _HeadSpec(
        "transformers.models.electra.modeling_electra",
        "electra",
        ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds"),
        True,
        _electra_transform,
    ),
    "ModernBertForMaskedLM": _HeadSpec(
        "transformers.models.modernbert.modeling_modernbert",
        "model",
        ("input_ids", "attention_mask", "position_ids", "inputs_embeds"),
        False,
        _modernbert_transform,
    ),
}
_MASKED_LM_CLASSES = tuple(_SUPPORTED)

SUPPORTED_CLASSES = _MASKED_LM_CLASSES  # + the causal-LM classes, registered at the end of this module


@dataclasses.dataclass
class _PatchState:
    base_class: type  # the supported transformers class whose forward is replaced
    spec: _HeadSpec
    chunk_size: Optional[int]
    backend: str
    global_normalization: bool
    previous_forward: Optional[Callable]  # an instance-level forward that was there before, if any
    feedback: object = None  # gets update(labels, losses, correct) from every fused loss (fastmask.loss_feedback)


def _unsupported(model, why: str) -> TypeError:
    return TypeError(
        f"apply_fastmask does not support {type(model).__module__}.{type(model).__qualname__}: {why}. "
        f"Supported classes (transformers): {', '.join(SUPPORTED_CLASSES)}. Pass the transformers model "
        "itself (not a DDP/PEFT/compiled wrapper), before wrapping it."
    )


def _find_base_class(model) -> tuple[type, _HeadSpec]:
    if not isinstance(model, nn.Module):
        raise _unsupported(model, "it is not a torch.nn.Module")
    for cls in type(model).__mro__:
        spec = _SUPPORTED.get(cls.__name__)
        if spec is not None and cls.__module__ == spec.module:
            break
    else:
        raise _unsupported(model, "it is not one of the supported masked-LM / causal-LM classes")
    if type(model).forward is not cls.forward:
        raise _unsupported(model, f"it overrides {cls.__name__}.forward, so its loss is not known")
    params = inspect.signature(cls.forward).parameters
    named = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD} - {"self", "labels"}
    expected = set(spec.encoder_args) | set(spec.head_args)
    if named != expected or "labels" not in params:
        raise RuntimeError(
            f"{cls.__name__}.forward in this transformers version takes {sorted(named)}, but fastmask "
            f"was written for {sorted(expected)} (+ labels); please report this version"
        )
    return cls, spec


@functools.cache
def _signature(base_class: type) -> tuple[inspect.Signature, Optional[str]]:
    """The stock forward's signature and the name of its ``**kwargs`` parameter."""
    signature = inspect.signature(base_class.forward)
    var_kw = [n for n, p in signature.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD]
    return signature, (var_kw[0] if var_kw else None)


class _PatchedForward:
    """``model.forward`` while patched: holds its model like a bound method, but pickles and
    deep-copies with it. ``__func__``/``__self__`` are there for code that rebinds forwards
    (accelerate's mixed-precision wrapper); ``__signature__`` is the stock one (``Trainer``
    selects dataset columns and loss kwargs from it)."""

    __name__ = "forward"

    def __init__(self, model: nn.Module):
        self.__self__ = model

    @property
    def __func__(self) -> Callable:
        return _forward

    @property
    def __signature__(self) -> inspect.Signature:
        signature, _ = _signature(self.__self__.__dict__[_STATE_ATTR].base_class)
        return signature.replace(parameters=list(signature.parameters.values())[1:])

    def __call__(self, *args, **kwargs):
        return _forward(self.__self__, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<fastmask forward of {type(self.__self__).__name__} at {id(self.__self__):#x}>"


def _is_our_forward(model) -> bool:
    forward = model.__dict__.get("forward")
    return isinstance(forward, _PatchedForward) and forward.__self__ is model


def _sparse_head_loss(
    model, state: _PatchState, sequence_output: torch.Tensor, labels: torch.Tensor, num_items_in_batch
) -> torch.Tensor:
    """Loss of the MLM head on the labelled rows only. sequence_output: (B, L, H); labels: (B, L)."""
    flat = flat_labels(labels, sequence_output, "labels", "encoder")
    keep = flat != IGNORE_INDEX
    sparse_ignore = getattr(model, "sparse_pred_ignore_index", IGNORE_INDEX)
    if getattr(model, "sparse_prediction", False) and sparse_ignore != IGNORE_INDEX:
        keep &= flat != sparse_ignore  # ModernBERT drops these rows before its loss
    rows, targets = gather_rows(sequence_output, flat, keep)
    rows = state.spec.transform(model, rows)
    return head_loss(model, state, rows, targets, num_items_in_batch)


def _forward(model, *args, **kwargs):
    state: Optional[_PatchState] = model.__dict__.get(_STATE_ATTR)
    skip_logits = kwargs.pop("skip_logits", None)
    if state is None:  # a stale reference to the patched method after unapply
        return type(model).forward(model, *args, **kwargs)
    signature, var_kw = _signature(state.base_class)
    bound = signature.bind(model, *args, **kwargs)
    labels = bound.arguments.get("labels")
    if skip_logits and labels is None:
        raise ValueError("skip_logits=True needs labels: the fused loss is the only output it computes")
    if skip_logits is None:  # as Liger-Kernel: skip the logits only while training (eval metrics need them)
        skip_logits = labels is not None and model.training
    if (
        labels is None
        or not skip_logits
        or (state.spec.accepts is not None and not state.spec.accepts(model, bound.arguments))
    ):
        if state.previous_forward is not None:
            return state.previous_forward(*args, **kwargs)
        return state.base_class.forward(model, *args, **kwargs)

    spec = state.spec
    extra = dict(bound.arguments.get(var_kw, {})) if var_kw else {}
    return_dict = getattr(model.config, "return_dict", True)
    passed = extra.pop("return_dict", None)
    if passed is not None:
        return_dict = passed
    encoder_kwargs = {name: bound.arguments[name] for name in spec.encoder_args if name in bound.arguments}
    if spec.encoder_return_dict:
        encoder_kwargs["return_dict"] = True
    outputs = getattr(model, spec.encoder)(**encoder_kwargs, **extra)
    if spec.fused_output is not None:
        output = spec.fused_output(model, state, bound.arguments, outputs, extra)
        return output if return_dict else output.to_tuple()

    loss = _sparse_head_loss(model, state, outputs[0], labels, extra.get("num_items_in_batch"))

    from transformers.modeling_outputs import MaskedLMOutput

    output = MaskedLMOutput(loss=loss, logits=None, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
    return output if return_dict else output.to_tuple()


def apply_fastmask(
    model,
    *,
    chunk_size: Optional[int] = None,
    backend: str = "auto",
    global_normalization: bool = False,
    feedback=None,
):
    """Give ``model`` (one instance) the sparse fused MLM head; returns ``model``.

    Args:
        model: one of ``SUPPORTED_CLASSES`` (transformers ``*ForMaskedLM``).
        chunk_size: rows per chunk for :func:`fastmask.fused_masked_lm_loss` (None = its default).
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``, as for the fused loss.
        global_normalization: under ``torch.distributed`` (DDP), normalise the loss by the
            global number of labelled tokens so gradients equal single-process training (see
            :func:`fastmask.masked_cross_entropy`); ignored for calls given ``num_items_in_batch``.
        feedback: None, or an object with ``update(labels, losses, correct)`` (a
            :class:`fastmask.TokenLossTracker`, a :class:`fastmask.LossFeedback`) that every
            fused loss of the patched forward feeds with the labelled positions' label ids, plain
            cross-entropy and argmax == label bits, from the loss kernel's own pass
            (:mod:`fastmask.loss_feedback`). Not given for Gemma-style soft-capped causal LMs,
            whose loss runs through torch. :func:`set_loss_feedback` changes it later.

    Raises ``TypeError`` (listing the supported classes) for any other model. Applying twice
    keeps one patch and takes the new ``chunk_size``/``backend``/``global_normalization``/``feedback``.
    """
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    check_backend_name(backend)
    if not isinstance(global_normalization, bool):
        raise TypeError(f"global_normalization must be a bool, got {global_normalization!r}")
    check_feedback(feedback)
    base_class, spec = _find_base_class(model)
    state = model.__dict__.get(_STATE_ATTR)
    if state is not None:
        state.chunk_size, state.backend, state.global_normalization = chunk_size, backend, global_normalization
        state.feedback = feedback
        return model
    decoder = model.get_output_embeddings()
    if not isinstance(getattr(decoder, "weight", None), torch.Tensor) or decoder.weight.dim() != 2:
        raise _unsupported(model, f"its output embeddings {type(decoder).__name__} have no 2-D weight")
    state = _PatchState(
        base_class, spec, chunk_size, backend, global_normalization, model.__dict__.get("forward"), feedback
    )
    model.__dict__[_STATE_ATTR] = state
    model.__dict__["forward"] = _PatchedForward(model)
    return model


def unapply_fastmask(model):
    """Restore the forward ``model`` had before :func:`apply_fastmask`; returns ``model``.

    A model that is not patched is returned unchanged.
    """
    state = model.__dict__.get(_STATE_ATTR) if isinstance(model, nn.Module) else None
    if state is None:
        return model
    if not _is_our_forward(model):
        raise RuntimeError(
            "model.forward was replaced after apply_fastmask (by another patch or hook); remove that "
            "one first, then call unapply_fastmask"
        )
    if state.previous_forward is None:
        del model.__dict__["forward"]
    else:
        model.__dict__["forward"] = state.previous_forward
    del model.__dict__[_STATE_ATTR]
    return model


def set_loss_feedback(model, feedback):
    """Route the patched model's loss feedback to ``feedback`` (None stops it); returns the
    previous one. Raises ``ValueError`` when :func:`apply_fastmask` is not in effect on ``model``."""
    check_feedback(feedback)
    state = model.__dict__.get(_STATE_ATTR) if isinstance(model, nn.Module) else None
    if state is None:
        raise ValueError(
            f"{type(model).__name__} is not patched by apply_fastmask; call apply_fastmask(model, feedback=...) first"
        )
    previous, state.feedback = state.feedback, feedback
    return previous


def is_fastmask_applied(model) -> bool:
    """Whether :func:`apply_fastmask` is in effect on ``model``."""
    return isinstance(model, nn.Module) and _STATE_ATTR in model.__dict__


@contextlib.contextmanager
def fastmask_patched(
    model,
    *,
    chunk_size: Optional[int] = None,
    backend: str = "auto",
    global_normalization: bool = False,
    feedback=None,
) -> Iterator:
    """``with fastmask_patched(model) as m:`` — :func:`apply_fastmask` for the block only.

    On exit the model is unpatched, or, if it was already patched before, gets its previous
    options back.
    """
    previous = model.__dict__.get(_STATE_ATTR) if isinstance(model, nn.Module) else None
    previous_options = None if previous is None else dataclasses.replace(previous)
    apply_fastmask(
        model, chunk_size=chunk_size, backend=backend, global_normalization=global_normalization, feedback=feedback
    )
    try:
        yield model
    finally:
        if previous_options is None:
            unapply_fastmask(model)
        else:
            previous.chunk_size = previous_options.chunk_size
            previous.backend = previous_options.backend
            previous.global_normalization = previous_options.global_normalization
            previous.feedback = previous_options.feedback


def _register_causal_lm() -> None:
    global SUPPORTED_CLASSES
    from .causal_lm import causal_lm_specs

    _SUPPORTED.update(causal_lm_specs(_HeadSpec))
    SUPPORTED_CLASSES = tuple(_SUPPORTED)


_register_causal_lm()
