"""Adaptive-masking overheads (issue 11): what the closed loop adds to a training step.

1. ``TokenLossTracker.update`` (the scatter op + the EMA step + publishing the weights to shared
   memory) on ``N`` labelled positions of a ``V = 30522`` vocabulary, against the fused MLM head's
   forward + backward (``fastmask.fused_masked_lm_loss``, hidden width 384) on the same ``N``
   rows: the target is <= 3%. The per-token feedback itself (loss and correct bit from the loss
   kernel) is not part of this measurement.
2. ``DataCollatorForLanguageModeling`` with live inputs (``token_weights=tracker``,
   ``mlm_probability=AdaptiveRate``) against the same collator with a static weight tensor and a
   float rate, 64 rows x 128 tokens of real text: live weights unchanged between batches, and
   republished before every batch (each batch then re-reads and re-quantises them); target
   within 10%.

Median time per call, one process; all variants on the same data.

    fastmask bench --suite adaptive [--quick]
    python -m fastmask.bench.adaptive [--quick] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Optional

import torch

from . import common

VOCAB = 30522
WIDTH = 384
ROWS, LENGTH = 64, 128


def _median_ms(fn, *, quick: bool, sync=None) -> float:
    min_time, min_reps = (0.2, 3) if quick else (1.0, 5)
    return 1e3 * statistics.median(common.time_calls(fn, min_time=min_time, min_reps=min_reps, sync=sync))


def _tracker_rows(n: int, device: str, quick: bool) -> list:
    import fastmask

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(1000, VOCAB, (n,), generator=g).to(device)
    losses = (torch.rand(n, generator=g) * 8).to(device)
    correct = (torch.rand(n, generator=g) < 0.5).to(device)
    hidden = torch.randn(n, WIDTH, generator=g).to(device).requires_grad_()
    weight = (torch.randn(VOCAB, WIDTH, generator=g) * 0.02).to(device).requires_grad_()
    sync = common.device_sync(device)

    def head():
        loss = fastmask.fused_masked_lm_loss(hidden, weight, labels)
        loss.backward()
        hidden.grad = weight.grad = None

    head_ms = _median_ms(head, quick=quick, sync=sync)
    rows = []
    backends = ("cpp", "reference") if device == "cpu" else ("triton", "reference")
    for backend in backends:
        for check in (True, False):
            tracker = fastmask.TokenLossTracker(VOCAB, backend=backend, device=device).share()
            ms = _median_ms(
                lambda t=tracker, c=check: t.update(labels, losses, correct, check=c), quick=quick, sync=sync
            )
            rows.append(
                dict(
                    case="tracker update",
                    impl=f"tracker.update ({backend}{', checked' if check else ''})",
                    n=n,
                    ms=ms,
                    head_ms=head_ms,
                    fraction=ms / head_ms,
                )
            )
    return rows


def _collator_rows(tokenizer_name: Optional[str], quick: bool) -> tuple:
    import fastmask

    tok, source = common.load_tokenizer(tokenizer_name)
    ids, _ = common.token_stream(tok)
    vocab = len(tok)
    features = [
        {"input_ids": [tok.cls_token_id, *ids[i * (LENGTH - 2) : (i + 1) * (LENGTH - 2)].tolist(), tok.sep_token_id]}
        for i in range(ROWS)
    ]
    tracker = fastmask.TokenLossTracker(vocab)
    g = torch.Generator().manual_seed(1)
    labels = torch.as_tensor(ids[:8192], dtype=torch.int64)
    tracker.update(labels, torch.rand(labels.shape, generator=g) * 6, torch.rand(labels.shape, generator=g) < 0.5)
    static_weights = tracker.token_weights()
    rate = fastmask.AdaptiveRate(0.15, target_accuracy=0.5)
    static = fastmask.DataCollatorForLanguageModeling(tok, mlm_probability=0.15, token_weights=static_weights, seed=0)
    live = fastmask.DataCollatorForLanguageModeling(tok, mlm_probability=rate, token_weights=tracker, seed=0)
    published = tracker._published_values()

    def live_republished():
        tracker._shared.write(published)  # what an update in the main process does to the shared block
        live(features)

    static_ms = _median_ms(lambda: static(features), quick=quick)
    rows = [dict(case="collator", impl="static weights, float rate", ms=static_ms, baseline_ms=static_ms)]
    rows.append(dict(case="collator", impl="live weights + rate", ms=_median_ms(lambda: live(features), quick=quick)))
    rows.append(
        dict(case="collator", impl="live, republished every batch", ms=_median_ms(live_republished, quick=quick))
    )
    for row in rows:
        row["baseline_ms"] = static_ms
        row["ratio"] = row["ms"] / static_ms
    return rows, source


def run(*, quick: bool = False, device: str = "cpu", tokenizer: Optional[str] = None, progress=True, n=None) -> dict:
    """Times the tracker against the fused head and the live collator against the static one
    (``n``: labelled positions, default 4096, 1024 with ``quick``)."""
    n = n or (1024 if quick else 4096)
    tracker_rows = _tracker_rows(n, device, quick)
    collator_rows, source = _collator_rows(tokenizer, quick)
    return dict(
        tracker=tracker_rows,
        collator=collator_rows,
        tokenizer=source,
        device=device,
        quick=quick,
        machine=common.machine_info(),
    )


def to_markdown(result: dict) -> str:
    t = result["tracker"]
    lines = [
        "# Adaptive masking overheads",
        "",
        f"Machine: {common.machine_line(result['machine'])}; device {result['device']}.",
        "",
        f"Tracker update vs the fused MLM head (forward + backward, N={t[0]['n']}, V={VOCAB}, H={WIDTH}: "
        f"{t[0]['head_ms']:.1f} ms); target <= 3%:",
        "",
        "| implementation | ms | share of the head |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {r['impl']} | {r['ms']:.3f} | {100 * r['fraction']:.2f}% |" for r in t]
    lines += [
        "",
        f"Collator, {ROWS} x {LENGTH} tokens ({result['tokenizer']}); target: live within 10% of static:",
        "",
        "| variant | ms | vs static |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {r['impl']} | {r['ms']:.3f} | {r['ratio']:.3f}x |" for r in result["collator"]]
    return "\n".join(lines) + "\n"


def table_rows(result: dict) -> list:
    out = []
    for r in result["tracker"]:
        out.append(
            common.table_row(
                "adaptive",
                "tracker update",
                f"N={r['n']}",
                r["impl"],
                ms=r["ms"],
                tokens=r["n"],
                baseline=None,
                baseline_ms=None,
                device=result["device"],
            )
        )
    for r in result["collator"]:
        out.append(
            common.table_row(
                "adaptive",
                "collator live vs static",
                f"{ROWS}x{LENGTH}",
                r["impl"],
                ms=r["ms"],
                tokens=ROWS * LENGTH,
                baseline="static weights",
                baseline_ms=r["baseline_ms"],
                length=LENGTH,
                batch=ROWS,
            )
        )
    return out


def headlines(result: dict) -> list:
    best = min(result["tracker"], key=lambda r: r["ms"])
    checked = [r for r in result["tracker"] if "checked" in r["impl"]]
    worst_live = max(r["ratio"] for r in result["collator"])
    return [
        f"tracker update (N={best['n']}, V={VOCAB}): {100 * best['fraction']:.2f}% of the fused head's time "
        f"({best['impl']}); with value checks {100 * min(r['fraction'] for r in checked):.2f}%",
        f"collator with live weights + rate: {worst_live:.3f}x the static collator's time (worst variant)",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, N=1024 (smoke run)")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer (default: MiniLM's WordPiece)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    result = run(quick=args.quick, tokenizer=args.tokenizer, progress=not args.no_progress)
    common.emit(result, to_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
