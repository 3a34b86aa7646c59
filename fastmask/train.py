"""``fastmask train``: continued MLM pre-training (domain adaptation) of a small BERT.

A plain PyTorch loop (not ``Trainer``): it keeps the timing honest (no logging/callback
overhead in the measured steps), runs the same on CPU, one GPU or under ``torchrun``, and
makes ``--compare`` an apples-to-apples run of the stock transformers pipeline — the same
model initialisation, rows, order, optimiser and schedule, with transformers'
``DataCollatorForLanguageModeling`` and the unpatched model. Both pipelines are evaluated on
one fixed masked copy of the held-out rows (masks keyed by row index), so their eval losses
and masked-token accuracies are directly comparable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import data

DEFAULT_OUTPUT_DIR = "fastmask-output/train"


@dataclass
class TrainConfig:
    max_steps: int = 50
    seq_len: int = 128
    batch_size: int = 16
    strategy: str = "token"
    mlm_probability: float = 0.15
    seed: int = 0
    lr: Optional[float] = None  # default: 5e-5 for pretrained weights, 5e-4 from scratch
    warmup_ratio: float = 0.1
    eval_fraction: float = 0.05
    eval_batches: int = 8
    output_dir: str = DEFAULT_OUTPUT_DIR
    texts: list = field(default_factory=list)
    dataset: Optional[str] = None
    dataset_split: str = "train"
    text_column: str = "text"
    max_texts: Optional[int] = None
    tokenizer: Optional[str] = None
    model: Optional[str] = None
    device: str = "auto"
    compare: bool = False
    save: bool = True
    progress: bool = True


@dataclass
class RunResult:
    name: str
    steps: int
    seconds: float
    tokens_per_second: float
    final_train_loss: float
    eval_loss: float
    eval_accuracy: float
    losses: list


# ----------------------------------------------------------------------------- distributed
def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _setup_distributed(device: torch.device) -> None:
    _, world, _ = _dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _resolve_device(name: str) -> torch.device:
    _, _, local_rank = _dist_info()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available on this machine; use --device cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank)
    return torch.device(name)


# ----------------------------------------------------------------------------- data and model
def load_rows(config: TrainConfig, tokenizer) -> tuple[list[list[int]], list[list[int]], str]:
    """(train rows, held-out rows, description of the source)."""
    if config.texts:
        texts = data.read_texts(config.texts)
        source = ", ".join(config.texts)
    elif config.dataset:
        texts = _dataset_texts(config)
        source = f"dataset {config.dataset}"
    else:
        texts = data.corpus_texts()
        source = "embedded corpus (Python standard-library docstrings)"
    rows = data.tokenized_rows(tokenizer, texts, config.seq_len)
    if len(rows) < 4:
        raise ValueError(
            f"the text gives only {len(rows)} rows of {config.seq_len} tokens; give more text or a smaller --seq-len"
        )
    generator = torch.Generator().manual_seed(1234)  # a fixed split, whatever --seed is
    order = torch.randperm(len(rows), generator=generator).tolist()
    n_eval = max(2, int(round(len(rows) * config.eval_fraction)))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]], source


def _dataset_texts(config: TrainConfig) -> list[str]:
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


def _pretrained_path(config: TrainConfig) -> Optional[str]:
    """``--model``, else MiniLM-L6 when installed and the default tokenizer is used, else None."""
    if config.model:
        return config.model
    if config.tokenizer is None and data.minilm_path() is not None:
        return str(data.minilm_path())
    return None


def describe_model(config: TrainConfig) -> str:
    path = _pretrained_path(config)
    if path:
        return f"{path} (BertForMaskedLM, MLM head from the tied embeddings)"
    return "randomly initialised BertForMaskedLM (4 layers, hidden 256)"


def build_model(config: TrainConfig, tokenizer, seed: int):
    """MiniLM-L6 as BertForMaskedLM (head from the tied embeddings) when available, else a
    small randomly initialised BERT. The same ``seed`` gives the same weights."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    path = _pretrained_path(config)
    if path:
        try:
            model = data.load_minilm_masked_lm(path)
        except Exception as exc:
            raise ValueError(
                f"--model {path!r} could not be loaded as BertForMaskedLM ({type(exc).__name__})"
            ) from None
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(
                f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's ({len(tokenizer)})"
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


# ----------------------------------------------------------------------------- evaluation
def make_eval_batches(rows, tokenizer, config: TrainConfig) -> list[dict]:
    """Held-out rows masked once (seed fixed, row keys = row index): the same for every run."""
    from .masking import mask_tokens

    ids = torch.tensor(rows[: config.eval_batches * config.batch_size])
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    kwargs = {}
    if config.strategy != "token":
        from .words import word_start_table

        kwargs["word_start_table"] = word_start_table(tokenizer)
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


@torch.no_grad()
def evaluate(model, batches, device) -> tuple[float, float]:
    """(mean cross-entropy over masked tokens, masked-token accuracy), from full logits."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches:
        labels = batch["labels"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device)).logits
        selected = labels != -100
        chosen = logits[selected].float()
        total_loss += torch.nn.functional.cross_entropy(chosen, labels[selected], reduction="sum").item()
        correct += (chosen.argmax(-1) == labels[selected]).sum().item()
        count += int(selected.sum())
    model.train()
    return total_loss / max(count, 1), correct / max(count, 1)


# ----------------------------------------------------------------------------- one run
def _collator(kind: str, tokenizer, config: TrainConfig, seed: int):
    whole_word = config.strategy == "whole_word"
    if kind == "stock":
        from transformers import DataCollatorForLanguageModeling as StockCollator

        if config.strategy == "span":
            raise ValueError("--compare with --strategy span: transformers has no span masking to compare against")
        return StockCollator(tokenizer, mlm_probability=config.mlm_probability, whole_word_mask=whole_word, seed=seed)
    from .collator import DataCollatorForLanguageModeling

    extra = {"strategy": "span"} if config.strategy == "span" else {}
    return DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=config.mlm_probability, whole_word_mask=whole_word, seed=seed, **extra
    )


def _features(rows, tokenizer, strategy: str, kind: str) -> list[dict]:
    special = set(tokenizer.all_special_ids)
    # transformers' whole-word masking needs offsets: rebuild word-level offsets from the
    # vocabulary's word starts so both pipelines see the same words
    pseudo_offsets = kind == "stock" and strategy == "whole_word"
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


def _pseudo_offsets(row, table: list) -> list[tuple[int, int]]:
    """Character-like offsets with a one-position gap before every word start of ``table``."""
    offsets, position = [], 0
    for token in row:
        if table[token] if token < len(table) else True:
            position += 1  # a gap: a new word
        offsets.append((position, position + 1))
        position += 1
    return offsets


def run_pipeline(kind: str, config: TrainConfig, tokenizer, train_rows, eval_batches, device) -> RunResult:
    """Train from the same initial weights with the fastmask (``kind="fastmask"``) or the stock
    transformers pipeline (``"stock"``); return throughput and losses."""
    from transformers import get_linear_schedule_with_warmup

    rank, world, _ = _dist_info()
    model = build_model(config, tokenizer, seed=config.seed)
    model.to(device)
    if kind == "fastmask":
        from .integrations.transformers import apply_fastmask

        # under torchrun: normalise by the global count of masked tokens (DDP then averages
        # gradients into exactly the single-process gradient)
        apply_fastmask(model, global_normalization=world > 1)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    pretrained = _pretrained_path(config) is not None
    lr = config.lr if config.lr is not None else (5e-5 if pretrained else 5e-4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * config.max_steps), config.max_steps)
    collator = _collator(kind, tokenizer, config, seed=config.seed)
    features = _features(train_rows, tokenizer, config.strategy, kind)
    sampler = (
        torch.utils.data.DistributedSampler(features, num_replicas=world, rank=rank, seed=config.seed)
        if world > 1
        else None
    )
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(
        features,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collator,
        drop_last=True,
        generator=generator,
    )
    if len(loader) == 0:
        raise ValueError(f"--batch-size {config.batch_size} is larger than the {len(features)} training rows")
    progress = _progress(config, f"{kind:>8}", rank)
    losses, tokens, epoch = [], 0, 0
    model.train()
    start = time.perf_counter()
    while len(losses) < config.max_steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(collator, "set_epoch"):
            collator.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = train_model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            tokens += batch["input_ids"].numel() * world
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
            if len(losses) >= config.max_steps:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    progress.close()
    eval_loss, eval_accuracy = evaluate(model, eval_batches, device)
    if kind == "fastmask" and config.save and rank == 0:
        _save(model, tokenizer, config)
    tail = losses[-max(1, len(losses) // 10) :]
    return RunResult(
        kind, len(losses), seconds, tokens / seconds, sum(tail) / len(tail), eval_loss, eval_accuracy, losses
    )


def _progress(config: TrainConfig, label: str, rank: int):
    if config.progress and rank == 0:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=config.max_steps, desc=label, unit="step", leave=False)
        except ImportError:
            pass
    return _NoProgress()


class _NoProgress:
    def update(self, n):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _save(model, tokenizer, config: TrainConfig) -> None:
    from .integrations.transformers import unapply_fastmask

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):
        unapply_fastmask(model)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")


def plot_losses(results: list[RunResult], path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for result in results:
        ax.plot(
            range(1, len(result.losses) + 1),
            result.losses,
            label=f"{result.name} ({result.tokens_per_second:,.0f} tok/s)",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (masked tokens)")
    ax.set_title("fastmask train")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_results(results: list[RunResult]) -> str:
    header = f"{'pipeline':<10} {'steps':>5} {'seconds':>8} {'tokens/s':>10} {'train loss':>10} {'eval loss':>9} {'eval acc':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<10} {r.steps:>5} {r.seconds:>8.1f} {r.tokens_per_second:>10,.0f} {r.final_train_loss:>10.3f} "
            f"{r.eval_loss:>9.3f} {r.eval_accuracy:>8.3f}"
        )
    if len(results) == 2:
        fast, stock = results
        lines.append(
            f"speed-up of fastmask over the stock pipeline: {fast.tokens_per_second / stock.tokens_per_second:.2f}x"
        )
    return "\n".join(lines)


def train(config: TrainConfig, log=print) -> list[RunResult]:
    """Run ``fastmask train`` (and the stock pipeline with ``compare``); returns the results."""
    if config.max_steps < 1:
        raise ValueError(f"--max-steps must be at least 1, got {config.max_steps}")
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {config.batch_size}")
    if not 0.0 < config.mlm_probability <= 1.0:
        raise ValueError(f"--mlm-probability must be in (0, 1], got {config.mlm_probability}")
    device = _resolve_device(config.device)
    _setup_distributed(device)
    rank, world, _ = _dist_info()
    say = log if rank == 0 else (lambda *a, **k: None)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading / saving bars would interleave with ours
    tokenizer = data.default_tokenizer(config.tokenizer)
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; masked-language modelling needs one")
    train_rows, eval_rows, source = load_rows(config, tokenizer)
    say(f"data: {source}: {len(train_rows)} training rows + {len(eval_rows)} held-out rows of {config.seq_len} tokens")
    say(f"model: {describe_model(config)}; device: {device}; processes: {world}")
    eval_batches = make_eval_batches(eval_rows, tokenizer, config)
    results = [run_pipeline("fastmask", config, tokenizer, train_rows, eval_batches, device)]
    if config.compare:
        results.append(run_pipeline("stock", config, tokenizer, train_rows, eval_batches, device))
    say(format_results(results))
    if rank == 0 and config.save:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot = plot_losses(results, out / "loss_curve.png")
        metrics = {"config": {k: v for k, v in asdict(config).items()}, "results": [asdict(r) for r in results]}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        say(f"saved: {out / 'model'}, {out / 'metrics.json'}" + (f", {plot}" if plot else ""))
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return results
