"""The objectives of ``fastmask train``: what a run learns, one object each.

An :class:`Objective` says everything that differs between objectives: the tokenizer, how the
text becomes training and held-out examples, the model (and how fastmask patches it), the
collator of each pipeline (fastmask's, and the stock one that ``--compare`` runs) and the
held-out batches the two pipelines are scored on. The loop, timing, metrics, loss curve and
``torchrun`` support in :mod:`fastmask.train` are shared by all.

:data:`OBJECTIVES` is the one list (``fastmask train --objective`` takes its names):

* ``mlm``: continued masked-language-model pre-training of MiniLM-L6 (or a small random BERT);
  fastmask's ``DataCollatorForLanguageModeling`` + ``apply_fastmask`` vs transformers'
  collator and the unpatched model.
* ``span-corruption``: T5 span corruption with a small random ``T5ForConditionalGeneration``;
  the default tokenizer with T5's 100 sentinels added, rows packed to the expanded length of
  :func:`fastmask.span_corruption_lengths`; fastmask's ``DataCollatorForSpanCorruption`` vs the
  numpy reimplementation of the Flax example's collator from :mod:`fastmask.bench.seq2seq`.
  transformers' T5 has no fastmask head patch: the two pipelines differ in the collator only.
* ``text-infilling``: BART text infilling with a small random ``BartForConditionalGeneration``;
  the default tokenizer's mask token (MiniLM's ``[MASK]``) as BART's ``<mask>``, its ``[CLS]`` /
  ``[SEP]`` as BOS / EOS when it has none; rows ``BOS + packed text + EOS`` of ``--seq-len``
  tokens; fastmask's ``DataCollatorForTextInfilling`` vs the numpy reimplementation of the Flax
  BART example's collator from :mod:`fastmask.bench.seq2seq`. The two pipelines differ in the
  collator only; note the stock collator labels only the masked positions (as the Flax example
  does), fastmask's the whole row (fairseq's and transformers' BART pre-training).
* ``sft``: completion-only fine-tuning of a small random ``LlamaForCausalLM`` on question /
  answer pairs built from the docstring corpus (:func:`fastmask.data.instruction_texts`);
  ``DataCollatorForCompletionOnlyLM`` + ``apply_fastmask`` vs :class:`PythonCompletionCollator`
  (transformers' ``DataCollatorForLanguageModeling(mlm=False)`` with the prompt labels set to
  -100 by a per-row Python search for the template, as TRL's former collator did) and the
  unpatched model.

An encoder-decoder denoising objective is one :class:`Seq2SeqObjective` entry: the model kind
(``"t5"`` or ``"bart"``), how the tokenizer is prepared, the row length (and whether rows are
framed by BOS / EOS), and the two collator factories (see ``TEXT_INFILLING``).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from . import data
from ._constants import IGNORE_INDEX

MIN_ROWS = 4


@dataclass
class Examples:
    """Token-id rows for training and held-out scoring, where they came from, what a row is."""

    train: list
    held_out: list
    source: str
    unit: str  # e.g. "rows of 128 tokens"


# ----------------------------------------------------------------------------- text sources
def dataset_texts(config) -> list[str]:
    """The texts of ``--dataset`` (a folder saved with ``save_to_disk``, or a streamed name)."""
    try:
        import datasets
    except ImportError:
        raise ValueError("--dataset needs the `datasets` package: pip install datasets") from None
    try:
        if os.path.isdir(config.dataset) and os.path.exists(os.path.join(config.dataset, "dataset_info.json")):
            ds = datasets.load_from_disk(config.dataset)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[config.dataset_split]
        else:
            ds = datasets.load_dataset(config.dataset, split=config.dataset_split, streaming=True)
    except Exception as exc:
        raise ValueError(f"--dataset {config.dataset!r} could not be loaded ({type(exc).__name__}: {exc})") from None
    texts = []
    limit = config.max_texts or 20000
    for record in ds:
        if config.text_column not in record:
            raise ValueError(f"--dataset {config.dataset!r} has no column {config.text_column!r}; pass --text-column")
        texts.append(str(record[config.text_column]))
        if len(texts) >= limit:
            break
    return texts


def split_rows(rows: list, eval_fraction: float) -> tuple[list, list]:
    """(train, held-out): a fixed split (whatever ``--seed`` is), at least two held-out rows."""
    generator = torch.Generator().manual_seed(1234)
    order = torch.randperm(len(rows), generator=generator).tolist()
    n_eval = max(2, int(round(len(rows) * eval_fraction)))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def packed_rows(tokenizer, texts: Sequence[str], length: int, end_id: int) -> list[list[int]]:
    """The texts' ids, each text followed by ``end_id``, concatenated and cut into rows of exactly
    ``length`` tokens (T5's pre-training packing: its tokenizer ends every text with ``</s>``)."""
    out, buffer = [], []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        buffer.extend(ids)
        buffer.append(end_id)
        while len(buffer) >= length:
            out.append(buffer[:length])
            buffer = buffer[length:]
    return out


# ----------------------------------------------------------------------------- the interface
class Objective:
    """What one ``--objective`` is; subclasses override what differs (see the module docstring).

    ``options``: the ``TrainConfig`` fields only this objective reads (the CLI rejects them for
    the others). ``shift_labels``: causal LM, position t is scored against the label of t + 1.
    """

    name: str = ""
    summary: str = ""
    options: tuple = ()
    shift_labels: bool = False
    patches_model: bool = True  # fastmask's run calls apply_fastmask on the model
    loss_label: str = "training loss"
    accuracy_label: str = "accuracy"
    stock_description: str = ""

    # -- data
    def tokenizer(self, config):
        return data.default_tokenizer(config.tokenizer)

    def default_texts(self) -> tuple[list[str], str]:
        return data.corpus_texts(), "embedded corpus (Python standard-library docstrings)"

    def texts(self, config) -> tuple[list[str], str]:
        if config.texts:
            return data.read_texts(config.texts), ", ".join(config.texts)
        if config.dataset:
            return dataset_texts(config), f"dataset {config.dataset}"
        return self.default_texts()

    def rows(self, config, tokenizer, texts: list[str]) -> tuple[list, str]:
        """(token-id rows, what a row is)."""
        raise NotImplementedError

    def examples(self, config, tokenizer) -> Examples:
        texts, source = self.texts(config)
        rows, unit = self.rows(config, tokenizer, texts)
        if len(rows) < MIN_ROWS:
            raise ValueError(f"the text gives only {len(rows)} {unit}; give more text or a smaller --seq-len")
        train, held_out = split_rows(rows, config.eval_fraction)
        return Examples(train, held_out, source, unit)

    def features(self, rows: list, config, tokenizer, kind: str) -> list[dict]:
        """The DataLoader's examples for pipeline ``kind``."""
        return [{"input_ids": row} for row in rows]

    # -- model
    def describe_model(self, config) -> str:
        raise NotImplementedError

    def build_model(self, config, tokenizer):
        """The model, randomly initialised from torch's current seed (the caller seeds it)."""
        raise NotImplementedError

    def default_lr(self, config) -> float:
        return 5e-4  # from scratch

    def patch(self, model, world: int) -> None:
        if self.patches_model:
            from .integrations.transformers import apply_fastmask

            # under torchrun: normalise by the global count of labelled tokens (DDP then averages
            # gradients into exactly the single-process gradient)
            apply_fastmask(model, global_normalization=world > 1)

    # -- collators and scoring
    def collator(self, kind: str, config, tokenizer, seed: int):
        """``kind``: ``"fastmask"`` or ``"stock"`` (the pipeline ``--compare`` runs)."""
        raise NotImplementedError

    def eval_batches(self, rows: list, config, tokenizer) -> list[dict]:
        """The held-out rows made into batches once (fixed seed, row keys = row index): both
        pipelines are scored on the same batches."""
        raise NotImplementedError


def _batches(rows: list, config, make) -> list[dict]:
    rows = rows[: config.eval_batches * config.batch_size]
    return [make(rows[i : i + config.batch_size], i) for i in range(0, len(rows), config.batch_size)]


# ----------------------------------------------------------------------------- mlm
class MaskedLM(Objective):
    name = "mlm"
    summary = "continued masked-language-model pre-training of MiniLM-L6 (or a small random BERT)"
    options = ("strategy", "mlm_probability", "model", "adaptive")
    loss_label = "training loss (masked tokens)"
    accuracy_label = "masked-token accuracy"
    stock_description = (
        "transformers' DataCollatorForLanguageModeling and the unpatched model (--strategy pmi: its whole-word "
        "masking, as transformers has no PMI masking)"
    )

    def tokenizer(self, config):
        tokenizer = data.default_tokenizer(config.tokenizer)
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token; masked-language modelling needs one")
        return tokenizer

    def rows(self, config, tokenizer, texts):
        return data.tokenized_rows(tokenizer, texts, config.seq_len), f"rows of {config.seq_len} tokens"

    def _pretrained_path(self, config) -> Optional[str]:
        """``--model``, else MiniLM-L6 when installed and the default tokenizer is used, else None."""
        if config.model:
            return config.model
        if config.tokenizer is None and data.minilm_path() is not None:
            return str(data.minilm_path())
        return None

    def describe_model(self, config) -> str:
        path = self._pretrained_path(config)
        if path:
            return f"{path} (BertForMaskedLM, MLM head from the tied embeddings)"
        return "randomly initialised BertForMaskedLM (4 layers, hidden 256)"

    def default_lr(self, config) -> float:
        return 5e-5 if self._pretrained_path(config) is not None else 5e-4

    def build_model(self, config, tokenizer):
        """MiniLM-L6 as BertForMaskedLM (head from the tied embeddings) when available, else a
        small randomly initialised BERT."""
        from transformers import BertConfig, BertForMaskedLM

        path = self._pretrained_path(config)
        if path:
            try:
                model = data.load_minilm_masked_lm(path)
            except Exception as exc:
                raise ValueError(
                    f"--model {path!r} could not be loaded as BertForMaskedLM ({type(exc).__name__})"
                ) from None
            if model.config.vocab_size < len(tokenizer):
                raise ValueError(
                    f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                    f"({len(tokenizer)})"
                )
            if config.seq_len > model.config.max_position_embeddings:
                raise ValueError(
                    f"--seq-len {config.seq_len} exceeds the model's {model.config.max_position_embeddings} positions"
                )
            return model
        bert_config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            max_position_embeddings=max(512, config.seq_len),
            pad_token_id=tokenizer.pad_token_id,
        )
        return BertForMaskedLM(bert_config)

    def collator(self, kind, config, tokenizer, seed):
        whole_word = config.strategy == "whole_word"
        if kind == "stock":
            from transformers import DataCollatorForLanguageModeling as StockCollator

            if config.strategy == "span":
                raise ValueError("--compare with --strategy span: transformers has no span masking to compare against")
            # transformers has no PMI masking: --compare runs its whole-word masking (the nearest it has)
            return StockCollator(
                tokenizer,
                mlm_probability=config.mlm_probability,
                whole_word_mask=config.strategy in ("whole_word", "pmi"),
                seed=seed,
            )
        from .collator import DataCollatorForLanguageModeling

        extra = {}
        if config.strategy == "span":
            extra = {"strategy": "span"}
        elif config.strategy == "pmi":
            extra = {"strategy": "pmi", "ngram_vocabulary": self.ngram_vocabulary(tokenizer)}
        return DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=config.mlm_probability, whole_word_mask=whole_word, seed=seed, **extra
        )

    @staticmethod
    def ngram_vocabulary(tokenizer):
        """``--strategy pmi``'s vocabulary: built from the embedded corpus for ``tokenizer`` (cached
        on disk, :func:`fastmask.ngrams.embedded_ngram_vocabulary`)."""
        from .ngrams import embedded_ngram_vocabulary

        return embedded_ngram_vocabulary(tokenizer)

    def features(self, rows, config, tokenizer, kind):
        special = set(tokenizer.all_special_ids)
        # transformers' whole-word masking needs offsets: rebuild word-level offsets from the
        # vocabulary's word starts so both pipelines see the same words
        pseudo_offsets = kind == "stock" and config.strategy in ("whole_word", "pmi")
        if pseudo_offsets:
            from .words import word_start_table

            table = word_start_table(tokenizer).tolist()
        features = []
        for row in rows:
            feature = {"input_ids": row, "special_tokens_mask": [int(t in special) for t in row]}
            if pseudo_offsets:
                feature["offset_mapping"] = _pseudo_offsets(row, table)
            features.append(feature)
        return features

    def eval_batches(self, rows, config, tokenizer):
        """Held-out rows masked once (seed fixed, row keys = row index)."""
        from .masking import mask_tokens

        ids = torch.tensor(rows[: config.eval_batches * config.batch_size])
        special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
        kwargs = {}
        if config.strategy != "token":
            from .words import word_start_table

            kwargs["word_start_table"] = word_start_table(tokenizer)
        if config.strategy == "pmi":
            kwargs["ngram_vocabulary"] = self.ngram_vocabulary(tokenizer)
        masked, labels = mask_tokens(
            ids,
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            mlm_probability=config.mlm_probability,
            special_tokens_mask=special,
            strategy=config.strategy,
            seed=10_000 + config.seed,
            row_keys=torch.arange(ids.shape[0]),
            **kwargs,
        )
        return [
            {"input_ids": masked[i : i + config.batch_size], "labels": labels[i : i + config.batch_size]}
            for i in range(0, ids.shape[0], config.batch_size)
        ]


def _pseudo_offsets(row, table: list) -> list[tuple[int, int]]:
    """Character-like offsets with a one-position gap before every word start of ``table``."""
    offsets, position = [], 0
    for token in row:
        if table[token] if token < len(table) else True:
            position += 1  # a gap: a new word
        offsets.append((position, position + 1))
        position += 1
    return offsets


# ----------------------------------------------------------------------------- seq2seq
def tiny_seq2seq_model(kind: str, tokenizer, config):
    """A small randomly initialised encoder-decoder: ``"t5"`` (2 + 2 layers, d_model 128) or
    ``"bart"`` (2 + 2 layers, d_model 128); decoder start = the pad id (T5) / EOS (BART)."""
    import transformers

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if kind == "t5":
        t5 = transformers.T5Config(
            vocab_size=len(tokenizer),
            d_model=128,
            d_kv=32,
            d_ff=512,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            pad_token_id=pad,
            eos_token_id=eos,
            decoder_start_token_id=pad,
        )
        return transformers.T5ForConditionalGeneration(t5)
    if kind == "bart":
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        bart = transformers.BartConfig(
            vocab_size=len(tokenizer),
            d_model=128,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=512,
            decoder_ffn_dim=512,
            max_position_embeddings=max(512, config.seq_len + 2),
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
            decoder_start_token_id=eos,
            forced_eos_token_id=eos,
        )
        return transformers.BartForConditionalGeneration(bart)
    raise ValueError(f"model kind {kind!r} is not one of 't5', 'bart'")


class TorchBatches:
    """Wrap a collator returning numpy arrays: torch tensors, and ``attention_mask`` of ones when
    it gives none (rows of the same length)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, features):
        batch = {k: torch.as_tensor(np.asarray(v)) for k, v in self.collate(features).items()}
        batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
        return batch


@dataclass(frozen=True, eq=False, kw_only=True)
class Seq2SeqObjective(Objective):
    """An encoder-decoder denoising objective (see the module docstring for adding one).

    ``prepare_tokenizer(tokenizer)`` makes a copy of the default tokenizer fit (sentinels, mask);
    ``row_length(config)``: the tokens per packed row; ``fastmask_collator(config, tokenizer, seed,
    **kwargs)`` (``kwargs``: ``row_key_column=`` for the held-out batches) and
    ``stock_collator(config, tokenizer, seed)`` return collators of torch batches with
    ``input_ids``, ``attention_mask``, ``labels`` and ``decoder_input_ids``."""

    name: str
    summary: str
    model: str
    prepare_tokenizer: Callable[[Any], None]
    row_length: Callable[[Any], int]
    fastmask_collator: Callable[..., Any]
    stock_collator: Callable[..., Any]
    stock_description: str
    options: tuple = ()
    framed: bool = False  # rows are BOS + packed text + EOS (BART), not packed text alone (T5)
    loss_label: str = "training loss (target tokens)"
    accuracy_label: str = "target-token accuracy (teacher forcing)"
    patches_model: bool = field(default=False)  # apply_fastmask has no encoder-decoder head patch

    def tokenizer(self, config):
        tokenizer = copy.deepcopy(data.default_tokenizer(config.tokenizer))
        self.prepare_tokenizer(tokenizer)
        return tokenizer

    def rows(self, config, tokenizer, texts):
        length = self.row_length(config)
        if not self.framed:
            return packed_rows(tokenizer, texts, length, tokenizer.eos_token_id), f"rows of {length} tokens"
        if length < 3:
            raise ValueError(f"--seq-len {length} leaves no text between BOS and EOS; pass at least 3")
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        body = packed_rows(tokenizer, texts, length - 2, eos)
        return [[bos, *row, eos] for row in body], f"rows of {length} tokens (BOS + text + EOS)"

    def describe_model(self, config) -> str:
        cls = {"t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration"}[self.model]
        return f"randomly initialised {cls} (2 + 2 layers, d_model 128)"

    def build_model(self, config, tokenizer):
        return tiny_seq2seq_model(self.model, tokenizer, config)

    def collator(self, kind, config, tokenizer, seed):
        if kind == "stock":
            return self.stock_collator(config, tokenizer, seed)
        return self.fastmask_collator(config, tokenizer, seed)

    def eval_batches(self, rows, config, tokenizer):
        collate = self.fastmask_collator(config, tokenizer, 10_000 + config.seed, row_key_column="row")
        return _batches(
            rows,
            config,
            lambda chunk, first: dict(
                collate([{"input_ids": row, "row": first + i} for i, row in enumerate(chunk)]).items()
            ),
        )


def _add_sentinels(tokenizer) -> None:
    from .seq2seq import add_sentinel_tokens

    add_sentinel_tokens(tokenizer)


def _span_lengths(config) -> tuple[int, int]:
    from .sentinel_spans import span_corruption_lengths

    return span_corruption_lengths(config.seq_len, config.noise_density, config.mean_noise_span_length)


def _span_corruption_collator(config, tokenizer, seed, **kwargs):
    from .seq2seq import DataCollatorForSpanCorruption

    return DataCollatorForSpanCorruption(
        tokenizer,
        noise_density=config.noise_density,
        mean_noise_span_length=config.mean_noise_span_length,
        input_length=config.seq_len,
        decoder_start_token_id=tokenizer.pad_token_id,
        seed=seed,
        **kwargs,
    )


def _flax_t5_collator(config, tokenizer, seed):
    from .bench.seq2seq import NumpyT5Collator

    return TorchBatches(
        NumpyT5Collator(
            noise_density=config.noise_density,
            mean_noise_span_length=config.mean_noise_span_length,
            input_length=config.seq_len,
            target_length=_span_lengths(config)[1],
            first_sentinel_id=tokenizer.convert_tokens_to_ids("<extra_id_0>"),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            seed=seed,
        )
    )


SPAN_CORRUPTION = Seq2SeqObjective(
    name="span-corruption",
    summary="T5 span corruption of a small random T5ForConditionalGeneration (rows packed to the expanded length)",
    model="t5",
    prepare_tokenizer=_add_sentinels,
    row_length=lambda config: _span_lengths(config)[0],
    fastmask_collator=_span_corruption_collator,
    stock_collator=_flax_t5_collator,
    stock_description="a numpy reimplementation of the Flax T5 example's DataCollatorForT5MLM (fastmask.bench.seq2seq)",
    options=("noise_density", "mean_noise_span_length"),
)


def _prepare_bart_tokenizer(tokenizer) -> None:
    """BART's specials from the tokenizer's: its mask token is BART's ``<mask>`` (required), and a
    tokenizer without BOS / EOS (BERT's WordPiece) uses ``[CLS]`` / ``[SEP]`` as them."""
    if tokenizer.mask_token_id is None:
        raise ValueError("--objective text-infilling needs a tokenizer with a mask token (spans become it)")
    if tokenizer.pad_token_id is None:
        raise ValueError("--objective text-infilling needs a tokenizer with a pad token")
    if tokenizer.bos_token_id is None:
        if tokenizer.cls_token is None:
            raise ValueError("--objective text-infilling needs a tokenizer with a BOS (or CLS) token")
        tokenizer.bos_token = tokenizer.cls_token
    if tokenizer.eos_token_id is None:
        if tokenizer.sep_token is None:
            raise ValueError("--objective text-infilling needs a tokenizer with an EOS (or SEP) token")
        tokenizer.eos_token = tokenizer.sep_token


def _text_infilling_collator(config, tokenizer, seed, **kwargs):
    from .infilling_collator import DataCollatorForTextInfilling

    return DataCollatorForTextInfilling(
        tokenizer,
        mask_ratio=config.mask_ratio,
        poisson_lambda=config.poisson_lambda,
        decoder_start_token_id=tokenizer.eos_token_id,  # BART's decoder start
        seed=seed,
        **kwargs,
    )


def _flax_bart_collator(config, tokenizer, seed):
    from .bench.seq2seq import NumpyBartCollator

    return TorchBatches(
        NumpyBartCollator(
            tokenizer,
            decoder_start_token_id=tokenizer.eos_token_id,
            mask_ratio=config.mask_ratio,
            poisson_lambda=config.poisson_lambda,
            seed=seed,
        )
    )


TEXT_INFILLING = Seq2SeqObjective(
    name="text-infilling",
    summary="BART text infilling of a small random BartForConditionalGeneration (rows BOS + text + EOS)",
    model="bart",
    prepare_tokenizer=_prepare_bart_tokenizer,
    row_length=lambda config: config.seq_len,
    framed=True,
    fastmask_collator=_text_infilling_collator,
    stock_collator=_flax_bart_collator,
    stock_description=(
        "a numpy reimplementation of the Flax BART example's denoising collator (fastmask.bench.seq2seq; "
        "token-level spans, labels at masked positions only, no inserts)"
    ),
    options=("mask_ratio", "poisson_lambda"),
)


# ----------------------------------------------------------------------------- sft
def template_ids_in_context(tokenizer, template: str = data.RESPONSE_TEMPLATE) -> list[int]:
    """The template's token ids as they appear after a newline in the examples' text (byte-level
    BPE and SentencePiece tokenizers encode a template differently at the start of a string)."""
    prefix = "Question: What does x do?\n"
    head = tokenizer.encode(prefix, add_special_tokens=False)
    whole = tokenizer.encode(prefix + template, add_special_tokens=False)
    if whole[: len(head)] == head and len(whole) > len(head):
        return whole[len(head) :]
    return tokenizer.encode(template, add_special_tokens=False)


class PythonCompletionCollator:
    """The stock pipeline's completion-only collator: transformers'
    ``DataCollatorForLanguageModeling(mlm=False)`` pads and copies ``input_ids`` to ``labels``
    (pad -> -100), then per row a Python search for the response template (each position holding
    its first id is compared with the template, as TRL's former ``DataCollatorForCompletionOnlyLM``
    did) and every label up to the template's end is set to -100; a row without the template is
    ignored entirely, with a warning."""

    def __init__(self, response_ids: Sequence[int], tokenizer):
        from transformers import DataCollatorForLanguageModeling

        self.response_ids = list(response_ids)
        self.tokenizer = tokenizer
        self.base = DataCollatorForLanguageModeling(tokenizer, mlm=False)

    def __call__(self, features):
        batch = self.base(features)
        labels = batch["labels"]
        width = len(self.response_ids)
        for i in range(labels.shape[0]):
            row = labels[i].tolist()
            end = None
            for start in np.flatnonzero(np.asarray(row) == self.response_ids[0]):
                if row[start : start + width] == self.response_ids:
                    end = int(start) + width
                    break
            if end is None:
                warnings.warn(f"response template {self.response_ids} not found in row {i}", UserWarning, stacklevel=2)
                labels[i, :] = IGNORE_INDEX
            else:
                labels[i, :end] = IGNORE_INDEX
        return batch


class CompletionOnlySFT(Objective):
    name = "sft"
    summary = (
        "completion-only fine-tuning of a small random LlamaForCausalLM on question/answer pairs "
        "from the docstring corpus"
    )
    shift_labels = True
    loss_label = "training loss (completion tokens)"
    accuracy_label = "next-token accuracy on completions"
    stock_description = (
        "transformers' DataCollatorForLanguageModeling(mlm=False) with prompt labels set to -100 by a Python "
        "template search (TRL's former collator), and the unpatched model"
    )

    def tokenizer(self, config):
        tokenizer = data.default_tokenizer(config.tokenizer)
        if tokenizer.pad_token_id is None:
            raise ValueError("--objective sft needs a tokenizer with a pad token (rows are padded per batch)")
        return tokenizer

    def default_texts(self):
        return data.instruction_texts(), (
            f"embedded question/answer pairs from the docstring corpus ('{data.RESPONSE_TEMPLATE}' before each answer)"
        )

    def rows(self, config, tokenizer, texts):
        encoded = tokenizer(list(texts), truncation=True, max_length=config.seq_len)["input_ids"]
        return [ids for ids in encoded if len(ids) >= 2], f"examples of at most {config.seq_len} tokens"

    def describe_model(self, config) -> str:
        return "randomly initialised LlamaForCausalLM (2 layers, hidden 128, tied embeddings)"

    def build_model(self, config, tokenizer):
        from transformers import LlamaConfig, LlamaForCausalLM

        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        llama = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max(512, config.seq_len),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=bos,
            eos_token_id=eos,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(llama)

    def collator(self, kind, config, tokenizer, seed):
        response = template_ids_in_context(tokenizer)
        if kind == "stock":
            return PythonCompletionCollator(response, tokenizer)
        from .completion_collator import DataCollatorForCompletionOnlyLM

        return DataCollatorForCompletionOnlyLM(response, tokenizer, seed=seed)

    def eval_batches(self, rows, config, tokenizer):
        collate = self.collator("fastmask", config, tokenizer, 10_000 + config.seed)
        return _batches(rows, config, lambda chunk, first: collate([{"input_ids": row} for row in chunk]))


OBJECTIVES = {
    objective.name: objective for objective in (MaskedLM(), SPAN_CORRUPTION, TEXT_INFILLING, CompletionOnlySFT())
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"--objective {name!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def objective_options() -> dict:
    """``{TrainConfig field: the objectives that read it}`` for the objective-specific options."""
    owners: dict = {}
    for objective in OBJECTIVES.values():
        for option in objective.options:
            owners.setdefault(option, []).append(objective.name)
    return owners


def check_options(objective: Objective, given: Sequence[str]) -> None:
    """Raise when an option of another objective was given (it would be silently ignored)."""
    owners = objective_options()
    for option in given:
        if option in owners and objective.name not in owners[option]:
            flag = "--" + option.replace("_", "-")
            raise ValueError(
                f"{flag} applies to --objective {' / '.join(owners[option])} only, not {objective.name}; drop it"
            )
