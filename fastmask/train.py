"""``fastmask train``: a short training run of one objective with fastmask, and with the stock
pipeline next to it (``--compare``).

The objectives (``--objective``: MLM continued pre-training, T5 span corruption, completion-only
SFT) are the objects of :mod:`fastmask.train_objectives`; this module is what they share: a
plain PyTorch loop (not ``Trainer``: it keeps the timing honest, no logging/callback overhead in
the measured steps), which runs the same on CPU, one GPU or under ``torchrun``, and makes
``--compare`` an apples-to-apples run of the stock pipeline — the same model initialisation,
rows, order, optimiser and schedule, with the objective's stock collator and the unpatched
model. Both pipelines are scored on one fixed copy of the held-out batches (masks keyed by row
index), so their eval losses and accuracies are directly comparable.
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

from .train_objectives import Objective, check_options, get_objective

DEFAULT_OUTPUT_DIR = "fastmask-output/train"


@dataclass
class TrainConfig:
    objective: str = "mlm"  # a name of fastmask.train_objectives.OBJECTIVES
    max_steps: int = 50
    seq_len: int = 128
    batch_size: int = 16
    strategy: str = "token"
    mlm_probability: float = 0.15
    noise_density: float = 0.15  # span-corruption
    mean_noise_span_length: float = 3.0  # span-corruption
    mask_ratio: float = 0.3  # text-infilling
    poisson_lambda: float = 3.0  # text-infilling
    adaptive: Optional[str] = None  # mlm: "content", "rate" or "both" (fastmask.adaptive_experiment)
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
    model: Optional[str] = None  # mlm: a BERT checkpoint folder
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


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, batches, device, *, shift_labels: bool = False) -> tuple[float, float]:
    """(mean cross-entropy over labelled tokens, their accuracy), from full logits of a call
    without labels (every field of the batch but ``labels`` goes to the model). ``shift_labels``:
    a causal LM, position t is scored against the label of t + 1."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches:
        labels = batch["labels"].to(device)
        logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits
        if shift_labels:
            logits, labels = logits[:, :-1], labels[:, 1:]
        selected = labels != -100
        chosen = logits[selected].float()
        total_loss += torch.nn.functional.cross_entropy(chosen, labels[selected], reduction="sum").item()
        correct += (chosen.argmax(-1) == labels[selected]).sum().item()
        count += int(selected.sum())
    model.train()
    return total_loss / max(count, 1), correct / max(count, 1)


def _batch_tokens(batch: dict) -> int:
    """The model-input tokens of a batch that are not padding."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


# ----------------------------------------------------------------------------- one run
def run_pipeline(
    kind: str, config: TrainConfig, objective: Objective, tokenizer, train_rows, eval_batches, device
) -> RunResult:
    """Train from the same initial weights with the fastmask (``kind="fastmask"``) or the stock
    pipeline (``"stock"``) of ``objective``; return throughput and losses."""
    from transformers import get_linear_schedule_with_warmup

    rank, world, _ = _dist_info()
    torch.manual_seed(config.seed)  # the same initial weights for both pipelines
    model = objective.build_model(config, tokenizer)
    model.to(device)
    if kind == "fastmask":
        objective.patch(model, world)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    lr = config.lr if config.lr is not None else objective.default_lr(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * config.max_steps), config.max_steps)
    collator = objective.collator(kind, config, tokenizer, seed=config.seed)
    features = objective.features(train_rows, config, tokenizer, kind)
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
            tokens += _batch_tokens(batch) * world
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
            if len(losses) >= config.max_steps:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    progress.close()
    eval_loss, eval_accuracy = evaluate(model, eval_batches, device, shift_labels=objective.shift_labels)
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


def plot_losses(results: list[RunResult], path: Path, objective: Optional[Objective] = None) -> Optional[Path]:
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
    ax.set_ylabel(objective.loss_label if objective else "training loss")
    ax.set_title(f"fastmask train --objective {objective.name}" if objective else "fastmask train")
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


# ----------------------------------------------------------------------------- --adaptive
# the mlm pieces fastmask.adaptive_experiment runs on (its data, model and held-out batches)
def load_rows(config: TrainConfig, tokenizer) -> tuple[list, list, str]:
    """(training rows, held-out rows, where they came from) of the mlm objective."""
    examples = get_objective("mlm").examples(config, tokenizer)
    return examples.train, examples.held_out, examples.source


def build_model(config: TrainConfig, tokenizer, *, seed: int):
    """The mlm objective's model, its random parts seeded with ``seed``."""
    torch.manual_seed(seed)
    return get_objective("mlm").build_model(config, tokenizer)


def make_eval_batches(rows: list, tokenizer, config: TrainConfig) -> list[dict]:
    """The held-out rows masked once, uniformly at ``config.mlm_probability`` (fixed seed)."""
    return get_objective("mlm").eval_batches(rows, config, tokenizer)


def _check_adaptive(config: TrainConfig) -> None:
    from .adaptive_experiment import ADAPTIVE_MODES

    if config.adaptive not in ADAPTIVE_MODES:
        raise ValueError(f"--adaptive {config.adaptive!r} is not one of {', '.join(ADAPTIVE_MODES)}")
    if config.objective != "mlm":
        raise ValueError(f"--adaptive applies to --objective mlm only, not {config.objective}; drop it")
    if config.compare:
        raise ValueError("--adaptive runs its own comparison (uniform vs adaptive masking); drop --compare")
    if config.strategy != "token":
        raise ValueError(f"--adaptive masks single tokens; drop --strategy {config.strategy}")
    if _dist_info()[1] > 1:
        raise ValueError("--adaptive runs in one process; run it without torchrun")


def plot_adaptive(result: dict, path: Path) -> Optional[Path]:
    """The two runs' training loss (left) and the adaptive run's masking rate and mean token
    weight per frequency bucket (right), over the steps of ``result['runs'][i]['history']``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run in result["runs"]:
        steps = [e["step"] + 1 for e in run["history"]]
        left.plot(steps, [e["loss"] for e in run["history"]], label=run["name"])
    left.set_xlabel("step")
    left.set_ylabel("training loss (masked tokens)")
    left.legend()
    adaptive = result["runs"][-1]["history"]
    steps = [e["step"] + 1 for e in adaptive]
    right.plot(steps, [e["rate"] for e in adaptive], color="black", label="mlm_probability")
    right.set_xlabel("step")
    right.set_ylabel("masking rate")
    handles = right.get_lines()
    if adaptive and "weights" in adaptive[0]:
        weights = right.twinx()
        for bucket in adaptive[0]["weights"]:
            weights.plot(steps, [e["weights"][bucket] for e in adaptive], linestyle="--", label=f"weight: {bucket}")
        weights.set_ylabel("mean token weight (by token mass)")
        handles = handles + weights.get_lines()
    right.legend(handles=handles, fontsize="small")
    fig.suptitle(f"fastmask train --adaptive {result['adaptive']}: uniform vs adaptive masking")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def train_adaptive(config: TrainConfig, log=print) -> dict:
    """``fastmask train --adaptive MODE``: :func:`fastmask.adaptive_experiment.run_adaptive_experiment`
    (uniform vs adaptive masking of the mlm objective from the same weights, data and token
    budget); prints its table and saves ``metrics.json`` and ``loss_curve.png`` (loss, rate and
    weights over the steps). Returns the experiment's result."""
    _check_adaptive(config)
    from .adaptive_experiment import format_adaptive_results, run_adaptive_experiment

    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    result = run_adaptive_experiment(config, config.adaptive, record_every=max(1, config.max_steps // 50), log=log)
    log(format_adaptive_results(result))
    if config.save:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        plot = plot_adaptive(result, out / "loss_curve.png")
        log(f"saved: {out / 'metrics.json'}" + (f", {plot}" if plot else ""))
    return result


def train(config: TrainConfig, log=print, *, given: tuple = ()) -> list[RunResult]:
    """Run ``fastmask train`` (and the stock pipeline with ``compare``); returns the results.
    ``given``: the option fields the user set (an option of another objective is an error).
    With ``config.adaptive`` set use :func:`train_adaptive`."""
    objective = get_objective(config.objective)
    check_options(objective, given)
    if config.adaptive is not None:
        raise ValueError("config.adaptive is set: call fastmask.train.train_adaptive (fastmask train --adaptive)")
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
    tokenizer = objective.tokenizer(config)
    examples = objective.examples(config, tokenizer)
    say(f"data: {examples.source}: {len(examples.train)} training + {len(examples.held_out)} held-out {examples.unit}")
    say(f"objective: {objective.name}; model: {objective.describe_model(config)}; device: {device}; processes: {world}")
    if config.compare:
        say(f"stock pipeline (--compare): {objective.stock_description}")
    eval_batches = objective.eval_batches(examples.held_out, config, tokenizer)
    results = [run_pipeline("fastmask", config, objective, tokenizer, examples.train, eval_batches, device)]
    if config.compare:
        results.append(run_pipeline("stock", config, objective, tokenizer, examples.train, eval_batches, device))
    say(format_results(results))
    say(f"eval: held-out loss and {objective.accuracy_label}")
    if rank == 0 and config.save:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot = plot_losses(results, out / "loss_curve.png", objective)
        metrics = {
            "config": {k: v for k, v in asdict(config).items()},
            "objective": {"name": objective.name, "model": objective.describe_model(config)},
            "eval_accuracy": objective.accuracy_label,
            "results": [asdict(r) for r in results],
        }
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        say(f"saved: {out / 'model'}, {out / 'metrics.json'}" + (f", {plot}" if plot else ""))
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return results
