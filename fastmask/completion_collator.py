"""``DataCollatorForCompletionOnlyLM``: TRL's former completion-only collator, on fastmask kernels.

Train a causal LM on the answers only: every label before the response template (and, in
multi-turn rows, between an instruction template and the next response template) is
``ignore_index``. A drop-in for ``trl.DataCollatorForCompletionOnlyLM`` (removed from TRL 0.20):

    from fastmask import DataCollatorForCompletionOnlyLM            # was: from trl import ...
    collator = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tokenizer)

Templates are matched on token ids by :func:`fastmask.completion_labels` (C++ on CPU, Triton on
CUDA, a pure-torch reference; identical outputs), not by a Python loop over tokens. A template
given as a string is encoded with ``tokenizer.encode(template, add_special_tokens=False)``; when
a tokenizer encodes it differently in context (byte-level BPE after a newline, SentencePiece's
leading ``▁``), pass the ids as they appear in context instead, as with TRL.

A row in which the response template (or, given an instruction template, the instruction
template) is not found gets all labels ignored and a ``UserWarning`` naming the template and
the decoded row, as TRL did: never silently.

Features carrying ``assistant_masks`` (``tokenizer.apply_chat_template(...,
return_assistant_tokens_mask=True, return_dict=True)``) use that mask as the label mask instead
of template matching (``response_template`` may then be None).

``padding_free=True`` follows transformers' ``DataCollatorWithFlattening``: the batch becomes one
row ``[1, total_tokens]`` (``input_ids``, ``labels``, ``position_ids`` restarting at 0 per
example, the first label of each example ignored, no ``attention_mask``);
``return_flash_attn_kwargs=True`` adds ``cu_seq_lens_q/k`` (int32) and ``max_length_q/k``.
The model must honour packed ``position_ids`` (transformers' flash-attention / SDPA paths do
with ``cu_seq_lens`` / position-derived masks; see the README for what was tested on CPU).

Labels before template masking are ``input_ids`` with the pad id ignored, exactly as
transformers' ``DataCollatorForLanguageModeling(mlm=False)`` (so with ``pad_token == eos_token``
the eos labels are ignored too, as in TRL).

``input_noise`` (optional, default 0): replace that fraction of the *completion* input tokens
(label kept) with ``tokenizer.mask_token_id`` / a random id (``noise_mask_prob`` of them the mask
id when the tokenizer has one), while ``labels`` keep the original ids; drawn by
:func:`fastmask.masking.run_masking`, so reproducible from ``seed`` like fastmask's MLM masks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Optional, Union

import torch

from . import _backend
from ._constants import IGNORE_INDEX
from ._validation import check_int, check_probability
from .completion_labels import MISSING_INSTRUCTION, MISSING_RESPONSE, completion_mask
from .padding import pad_features, to_torch

__all__ = ["DataCollatorForCompletionOnlyLM"]

Template = Union[str, Sequence[int], None]


def _template_ids(name: str, template: Template, tokenizer) -> Optional[list[int]]:
    if template is None:
        return None
    if isinstance(template, str):
        if template == "":
            raise ValueError(f"{name} is an empty string; pass the text (or token ids) that marks the turn")
        if tokenizer is None:
            raise ValueError(f"{name} is a string, which needs a tokenizer to encode it; pass tokenizer= or token ids")
        ids = list(tokenizer.encode(template, add_special_tokens=False))
        if not ids:
            raise ValueError(f"{name}={template!r} encodes to no tokens with this tokenizer")
        return ids
    if isinstance(template, torch.Tensor):
        template = template.reshape(-1).tolist()
    try:
        ids = [int(t) for t in template]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a string or a sequence of token ids, got {template!r}") from None
    if any(isinstance(t, bool) for t in template):
        raise TypeError(f"{name} must hold token ids (ints), got {template!r}")
    if not ids:
        raise ValueError(f"{name} is empty; pass the text (or token ids) that marks the turn")
    return ids


class DataCollatorForCompletionOnlyLM:
    """Completion-only causal-LM collator (TRL's former API); see the module docstring.

    Args:
        response_template: string or token ids marking the start of an answer (the template
            itself is not trained on). None only with ``assistant_masks`` features.
        tokenizer: the tokenizer (padding side, pad id, decoding for warnings).
        instruction_template: string or token ids marking the start of a user turn, for
            multi-turn rows.
        mlm: must be False (TRL's argument; completion-only training is causal).
        ignore_index: the ignored label value (default -100).
        padding_free: concatenate the batch into one row (see the module docstring).
        return_flash_attn_kwargs: with ``padding_free``, add ``cu_seq_lens_q/k`` and
            ``max_length_q/k``.
        pad_to_multiple_of: pad the row length up to a multiple (ignored with ``padding_free``).
        input_noise, noise_mask_prob, seed: decoder-input noise on completion tokens (off by
            default).
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"`` for the template matching
            and the noise.
        return_tensors: ``"pt"`` (the only format).
    """

    def __init__(
        self,
        response_template: Template,
        tokenizer=None,
        *,
        instruction_template: Template = None,
        mlm: bool = False,
        ignore_index: int = IGNORE_INDEX,
        padding_free: bool = False,
        return_flash_attn_kwargs: bool = False,
        pad_to_multiple_of: Optional[int] = None,
        input_noise: float = 0.0,
        noise_mask_prob: float = 1.0,
        seed: Optional[int] = None,
        backend: str = "auto",
        return_tensors: str = "pt",
    ):
        if isinstance(tokenizer, (str, list, tuple)):
            raise TypeError(
                "the second positional argument is the tokenizer; pass instruction_template= by keyword "
                "(TRL's positional order was response_template, instruction_template)"
            )
        if mlm:
            raise ValueError("mlm=True is not supported: completion-only training is causal (mlm=False)")
        if tokenizer is None and (isinstance(response_template, str) or isinstance(instruction_template, str)):
            raise ValueError("string templates need a tokenizer to encode them; pass tokenizer=")
        self.tokenizer = tokenizer
        self.response_template = response_template
        self.instruction_template = instruction_template
        self.response_token_ids = _template_ids("response_template", response_template, tokenizer)
        self.instruction_token_ids = _template_ids("instruction_template", instruction_template, tokenizer)
        if self.instruction_token_ids is not None and self.response_token_ids is None:
            raise ValueError("instruction_template needs a response_template")
        self.mlm = False
        self.ignore_index = check_int("ignore_index", ignore_index)
        for name, value in (("padding_free", padding_free), ("return_flash_attn_kwargs", return_flash_attn_kwargs)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        self.padding_free = padding_free
        self.return_flash_attn_kwargs = return_flash_attn_kwargs
        self.pad_to_multiple_of = (
            None if pad_to_multiple_of is None else check_int("pad_to_multiple_of", pad_to_multiple_of, minimum=1)
        )
        self.input_noise = check_probability("input_noise", input_noise)
        self.noise_mask_prob = check_probability("noise_mask_prob", noise_mask_prob)
        # seed None: drawn from torch's generator (torch.manual_seed reproduces it), as fastmask's collators
        self.seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else check_int("seed", seed)
        self._noise_step = 0
        self.backend = _backend.check_backend_name(backend)
        if return_tensors != "pt":
            raise ValueError(
                f"return_tensors={return_tensors!r}: DataCollatorForCompletionOnlyLM returns torch tensors ('pt')"
            )
        self.return_tensors = return_tensors
        if (
            self.instruction_token_ids is not None
            and tokenizer is not None
            and tokenizer.pad_token_id is not None
            and tokenizer.pad_token_id == tokenizer.eos_token_id
        ):
            warnings.warn(
                "The tokenizer's pad_token_id equals its eos_token_id, so eos labels are ignored with the padding; "
                "in multi-turn training the model may then never learn to stop. Set a distinct pad token.",
                UserWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ collation
    def __call__(self, features, return_tensors: Optional[str] = None) -> dict:
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        if self.tokenizer is None:
            raise ValueError("DataCollatorForCompletionOnlyLM needs a tokenizer to pad the batch; pass tokenizer=")
        features = [dict(f) if not isinstance(f, dict) and hasattr(f, "keys") else f for f in features]
        padded = pad_features(
            features, self.tokenizer, pad_to_multiple_of=None if self.padding_free else self.pad_to_multiple_of
        )
        data = {k: to_torch(v) for k, v in padded.data.items()}
        ids = data["input_ids"]
        if "attention_mask" not in data:  # rows given as bare id sequences
            length = ids.shape[1]
            lengths = torch.as_tensor(padded.lengths)[:, None]
            positions = torch.arange(length)[None, :]
            left = getattr(self.tokenizer, "padding_side", "right") == "left"
            data["attention_mask"] = (positions >= length - lengths if left else positions < lengths).long()
        labels = ids.clone()
        pad_id = self.tokenizer.pad_token_id
        if pad_id is not None:
            labels[labels == pad_id] = self.ignore_index
        assistant = data.pop("assistant_masks", None)
        if assistant is not None:
            keep = (assistant != 0) & (data["attention_mask"] != 0)
        else:
            if self.response_token_ids is None:
                raise ValueError(
                    "response_template is None and the features carry no 'assistant_masks'; pass a response "
                    "template or tokenize with apply_chat_template(..., return_assistant_tokens_mask=True)"
                )
            keep, missing = completion_mask(
                ids, self.response_token_ids, self.instruction_token_ids, backend=self.backend
            )
            self._warn_missing(missing, ids)
        labels[~keep] = self.ignore_index
        data.pop("labels", None)
        if self.input_noise > 0:
            data["input_ids"] = self._noise(ids, keep & (labels != self.ignore_index))
        data["labels"] = labels
        if self.padding_free:
            data = self._flatten(data)
        return data

    def _warn_missing(self, missing: torch.Tensor, ids: torch.Tensor) -> None:
        flagged = missing.nonzero().flatten().tolist()  # rows only, never tokens
        for row in flagged:
            code = int(missing[row])
            text = self.tokenizer.decode(ids[row]) if self.tokenizer is not None else ids[row].tolist()
            if code & MISSING_RESPONSE:
                warnings.warn(
                    f"Could not find response key `{self.response_template}` (token ids {self.response_token_ids}) "
                    f"in the following instance: {text}. This instance will be ignored in loss calculation "
                    "(all labels set to ignore_index). If this happens often, check how the template tokenises in "
                    "context (pass its token ids) or increase the maximum sequence length.",
                    UserWarning,
                    stacklevel=3,
                )
            if code & MISSING_INSTRUCTION:
                warnings.warn(
                    f"Could not find instruction key `{self.instruction_template}` (token ids "
                    f"{self.instruction_token_ids}) in the following instance: {text}. This instance will be ignored "
                    "in loss calculation (all labels set to ignore_index). If this happens often, check how the "
                    "template tokenises in context (pass its token ids) or increase the maximum sequence length.",
                    UserWarning,
                    stacklevel=3,
                )

    def _noise(self, ids: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        from .masking import plan_masking, run_masking

        tok = self.tokenizer
        mask_id = getattr(tok, "mask_token_id", None)
        mask_prob = self.noise_mask_prob if mask_id is not None else 0.0
        plan = plan_masking(
            ids,
            mlm_probability=self.input_noise,
            mask_token_id=mask_id if mask_id is not None else 0,
            vocab_size=len(tok),
            special_tokens_mask=~eligible,
            mask_replace_prob=mask_prob,
            random_replace_prob=1.0 - mask_prob,
            seed=self.seed,
            row_keys=self._next_noise_keys(ids.shape[0]),
            ids_beyond_vocab=True,
        )
        noisy, _ = run_masking(plan, self.backend)
        return noisy

    def _next_noise_keys(self, batch: int) -> torch.Tensor:
        keys = torch.arange(self._noise_step, self._noise_step + batch, dtype=torch.int64)
        self._noise_step += batch
        return keys

    def _flatten(self, data: dict) -> dict:
        attention = data.pop("attention_mask").bool()
        position = attention.long().cumsum(1) - 1
        out = {
            "input_ids": data["input_ids"][attention].unsqueeze(0),
            "labels": data["labels"][attention].unsqueeze(0),
            "position_ids": position[attention].unsqueeze(0),
        }
        out["labels"][out["position_ids"] == 0] = self.ignore_index
        if self.return_flash_attn_kwargs:
            lengths = attention.sum(1)
            lengths = lengths[lengths > 0]
            cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32)
            cu[1:] = lengths.cumsum(0)
            longest = int(lengths.max()) if lengths.numel() else 0
            out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=longest, max_length_k=longest)
        return out
