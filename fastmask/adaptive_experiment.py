"""The adaptive-masking experiment behind ``fastmask train --adaptive {content,rate,both}``
(issue 11): uniform vs adaptive masking from the same weights, on the same data, batches and
number of input tokens; held-out masked-token accuracy and loss, overall and per frequency bucket.

* ``content``: ``token_weights`` = a :class:`~fastmask.TokenLossTracker` fed with every step's
  per-token loss and correct bits (ids with a higher running loss are masked more; the rate is
  unchanged).
* ``rate``: ``mlm_probability`` = an :class:`~fastmask.AdaptiveRate` holding the training
  batches' masked-token accuracy at ``target_accuracy`` (default: the uniform run's mean
  training accuracy over its last 10% of steps — the difficulty uniform masking ends at; the
  rate then starts lower while the model is weak and rises as it improves).
* ``both``: the two together.

The evaluation does not depend on the method: the held-out rows are masked once, uniformly at
the base rate with a fixed seed (:func:`fastmask.train.make_eval_batches`), and both runs are
scored on exactly those masks. Frequency buckets (:func:`~fastmask.frequency_buckets`, 3 buckets
of equal token mass) come from the training rows' counts. Every step's loss and feedback come
from the logits the training step computes anyway (no second forward pass).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

import torch

from . import data
from .adaptive_rate import AdaptiveRate
from .collator import DataCollatorForLanguageModeling
from .token_loss_tracker import FREQUENCY_BUCKET_NAMES, TokenLossTracker, frequency_buckets
from .token_weights import count_token_frequencies
from .train import TrainConfig, build_model, load_rows, make_eval_batches

__all__ = ["ADAPTIVE_MODES", "run_adaptive_experiment", "evaluate_by_bucket", "format_adaptive_results"]

ADAPTIVE_MODES = ("content", "rate", "both")


@torch.no_grad()
def evaluate_by_bucket(model, batches, buckets: torch.Tensor, device, num_buckets: int = 3) -> dict:
    """Masked-token loss and accuracy on ``batches``, overall and per frequency bucket of the label."""
    model.eval()
    loss_sum = torch.zeros(num_buckets + 1, dtype=torch.float64)
    correct = torch.zeros(num_buckets + 1, dtype=torch.float64)
    count = torch.zeros(num_buckets + 1, dtype=torch.float64)
    for batch in batches:
        labels = batch["labels"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device)).logits
        selected = labels != -100
        chosen, target = logits[selected].float(), labels[selected]
        per = torch.nn.functional.cross_entropy(chosen, target, reduction="none").double().cpu()
        hit = (chosen.argmax(-1) == target).double().cpu()
        bucket = buckets[target.cpu()]
        for index, mask in [(num_buckets, torch.ones_like(bucket, dtype=torch.bool))] + [
            (b, bucket == b) for b in range(num_buckets)
        ]:
            loss_sum[index] += per[mask].sum()
            correct[index] += hit[mask].sum()
            count[index] += mask.sum()
    model.train()
    names = list(FREQUENCY_BUCKET_NAMES if num_buckets == 3 else range(num_buckets)) + ["overall"]
    safe = count.clamp_min(1)
    return {
        str(name): {
            "loss": float(loss_sum[i] / safe[i]),
            "accuracy": float(correct[i] / safe[i]),
            "tokens": int(count[i]),
        }
        for i, name in enumerate(names)
    }


def _train_one(
    name: str,
    mode: Optional[str],
    config: TrainConfig,
    tokenizer,
    train_rows,
    eval_batches,
    buckets,
    counts,
    target_accuracy: float,
    device,
    log: Callable,
    record_every: int,
) -> dict:
    model = build_model(config, tokenizer, seed=config.seed).to(device)
    lr = config.lr if config.lr is not None else 5e-5
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    vocab = len(tokenizer)
    tracker = TokenLossTracker(vocab, decay=0.98) if mode in ("content", "both") else None
    rate = (
        AdaptiveRate(config.mlm_probability, target_accuracy=target_accuracy, min=0.05, max=0.5)
        if mode in ("rate", "both")
        else None
    )
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=rate if rate is not None else config.mlm_probability,
        token_weights=tracker,
        seed=config.seed,
    )
    special = set(tokenizer.all_special_ids)
    features = [{"input_ids": r, "special_tokens_mask": [int(t in special) for t in r]} for r in train_rows]
    loader = torch.utils.data.DataLoader(
        features,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collator,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),  # the same batches in every run
    )
    bucket_mass = [(buckets == b) & (counts > 0) for b in range(3)]
    history, losses, accuracies, masked_tokens, step, epoch = [], [], [], 0, 0, 0
    start = time.perf_counter()
    model.train()
    while step < config.max_steps:
        collator.set_epoch(epoch)
        for batch in loader:
            labels = batch["labels"].to(device)
            logits = model(input_ids=batch["input_ids"].to(device)).logits
            selected = labels != -100
            chosen, target = logits[selected].float(), labels[selected]
            per = torch.nn.functional.cross_entropy(chosen, target, reduction="none")
            loss = per.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            correct = chosen.detach().argmax(-1) == target
            if tracker is not None:
                tracker.update(target, per.detach(), correct)
            if rate is not None:
                rate.observe(accuracy=float(correct.float().mean()), step=step)
            collator.set_step(step + 1)
            losses.append(loss.item())
            accuracies.append(float(correct.float().mean()))
            masked_tokens += int(selected.sum())
            if step % record_every == 0 or step + 1 == config.max_steps:
                entry = {
                    "step": step,
                    "loss": losses[-1],
                    "accuracy": accuracies[-1],
                    "rate": collator.current_mlm_probability(),
                }
                if tracker is not None:
                    weights = tracker.token_weights().double()
                    entry["weights"] = {
                        FREQUENCY_BUCKET_NAMES[b]: float((weights[m] * counts[m]).sum() / counts[m].sum().clamp_min(1))
                        for b, m in enumerate(bucket_mass)
                    }
                history.append(entry)
            step += 1
            if step >= config.max_steps:
                break
        epoch += 1
    seconds = time.perf_counter() - start
    result = {
        "name": name,
        "steps": step,
        "seconds": seconds,
        "input_tokens": step * config.batch_size * config.seq_len,
        "masked_tokens": masked_tokens,
        "final_train_loss": sum(losses[-max(1, len(losses) // 10) :])
        / max(1, len(losses[-max(1, len(losses) // 10) :])),
        "final_train_accuracy": sum(accuracies[-max(1, len(accuracies) // 10) :])
        / max(1, len(accuracies[-max(1, len(accuracies) // 10) :])),
        "eval": evaluate_by_bucket(model, eval_batches, buckets, device),
        "history": history,
    }
    log(f"{name}: {step} steps in {seconds:.0f} s; held-out {result['eval']['overall']}")
    return result


def run_adaptive_experiment(
    config: TrainConfig,
    adaptive: str = "both",
    *,
    target_accuracy: Optional[float] = None,
    record_every: int = 10,
    log: Callable = print,
) -> dict:
    """Uniform vs adaptive (``adaptive`` in :data:`ADAPTIVE_MODES`) masking; returns
    ``{"config", "target_accuracy", "initial", "runs": [uniform, adaptive]}`` where each run holds
    its held-out ``eval`` (overall and per bucket: loss, accuracy, tokens), its token counts and
    its ``history`` of rate and mean weight per bucket over the steps. Single process."""
    if adaptive not in ADAPTIVE_MODES:
        raise ValueError(f"adaptive={adaptive!r} is not one of {ADAPTIVE_MODES}")
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else "cpu")
    if config.device not in ("auto", "cpu"):
        device = torch.device(config.device)
    tokenizer = data.default_tokenizer(config.tokenizer)
    train_rows, eval_rows, source = load_rows(config, tokenizer)
    eval_batches = make_eval_batches(eval_rows, tokenizer, config)
    counts = count_token_frequencies(train_rows, vocab_size=len(tokenizer))[: len(tokenizer)]
    buckets = frequency_buckets(counts, 3)
    log(f"data: {source}: {len(train_rows)} training rows, {len(eval_rows)} held-out rows of {config.seq_len} tokens")
    initial = evaluate_by_bucket(
        build_model(config, tokenizer, seed=config.seed).to(device), eval_batches, buckets, device
    )
    log(f"initial held-out: {initial['overall']}")
    common = (config, tokenizer, train_rows, eval_batches, buckets, counts)
    uniform = _train_one("uniform", None, *common, 0.5, device, log, record_every)
    if target_accuracy is None:
        target_accuracy = uniform["final_train_accuracy"]
    log(f"rate target accuracy: {target_accuracy:.4f}")
    runs = [uniform, _train_one(f"adaptive-{adaptive}", adaptive, *common, target_accuracy, device, log, record_every)]
    return {
        "config": vars(config).copy(),
        "adaptive": adaptive,
        "target_accuracy": target_accuracy,
        "initial": initial,
        "runs": runs,
    }


def format_adaptive_results(result: dict) -> str:
    """A Markdown table of the held-out results of :func:`run_adaptive_experiment`."""
    names = list(FREQUENCY_BUCKET_NAMES) + ["overall"]
    header = "| run | " + " | ".join(f"{n} acc / loss" for n in names) + " | masked tokens |"
    lines = [header, "|" + " --- |" * (len(names) + 2)]
    rows = [("initial", result["initial"], "")] + [
        (r["name"], r["eval"], str(r["masked_tokens"])) for r in result["runs"]
    ]
    for name, evaluation, masked in rows:
        cells = [f"{evaluation[n]['accuracy']:.4f} / {evaluation[n]['loss']:.3f}" for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {masked} |")
    tokens = " / ".join(str(result["initial"][n]["tokens"]) for n in names)
    lines.append(f"\nheld-out masked tokens per bucket ({', '.join(names)}): {tokens}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m fastmask.adaptive_experiment MODE STEPS SEQ_LEN BATCH OUT.json
    import json
    import sys

    mode, steps, seq_len, batch, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    cfg = TrainConfig(max_steps=steps, seq_len=seq_len, batch_size=batch, eval_batches=16, progress=False, save=False)
    outcome = run_adaptive_experiment(cfg, mode)
    print(format_adaptive_results(outcome))
    with open(out, "w") as fh:
        json.dump(outcome, fh, indent=1)
