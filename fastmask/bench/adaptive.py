"""Adaptive-masking overheads (issue 11): what the closed loop adds to a training step.

1. The whole feedback path against the fused MLM head it rides on: ``fastmask.fused_masked_lm_loss``
   forward + backward on ``N = 4096`` rows (15% labelled, as the loss suite), ``H = 384``,
   ``V = 30522``, without ``feedback=`` and with ``feedback=LossFeedback()`` followed by
   ``tracker.update`` (a shared tracker, as a live collator uses: the update publishes the
   weights), the two alternating in one process on the same tensors; reported as
   ``(with - without) / without`` of the median times (also of the fastest calls, of the
   process's CPU time, and the quartiles of the per-round ratio: the machine's noise), and the
   feedback's work outside the loss kernels timed alone (collecting the labelled rows' feedback
   + the update: short calls, steadier than the difference of two long ones); the target is
   <= 3%. ``--quick``: ``N = 512``, ``H = 128``, ``V = 4096``.
2. ``TokenLossTracker.update`` (the scatter op + the EMA step + publishing the weights to shared
   memory) on ``N`` labelled positions of a ``V = 30522`` vocabulary, against the fused MLM head's
   forward + backward (``fastmask.fused_masked_lm_loss``, hidden width 384) on the same ``N``
   rows (all labelled): the update alone, without the loss kernels' feedback outputs.
3. ``DataCollatorForLanguageModeling`` with live inputs (``token_weights=tracker``,
   ``mlm_probability=AdaptiveRate``) against the same collator with a static weight tensor and a
   float rate, 64 rows x 128 tokens of real text: live weights unchanged between batches, and
   republished before every batch (each batch then re-reads and re-quantises them); target
   within 10%.

Median time per call (1 and 2 on ``--device``, 3 on the CPU), one process; all variants on the same data.

    fastmask bench --suite adaptive [--quick]
    python -m fastmask.bench.adaptive [--quick] [--device D] [--json PATH] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Optional

import torch

from . import common

VOCAB = 30522
WIDTH = 384
ROWS, LENGTH = 64, 128
FEEDBACK_ROWS = 4096  # hidden rows of the feedback measurement, LABELLED of them labelled
LABELLED = 0.15
QUICK_FEEDBACK_SHAPE = (512, 128, 4096)  # N, H, V with --quick
FEEDBACK_TARGET = 0.03


def _times_ms(fn, *, quick: bool, sync=None) -> list:
    min_time, min_reps = (0.2, 3) if quick else (1.0, 5)
    return [1e3 * t for t in common.time_calls(fn, min_time=min_time, min_reps=min_reps, sync=sync)]


def _median_ms(fn, *, quick: bool, sync=None) -> float:
    return statistics.median(_times_ms(fn, quick=quick, sync=sync))


def _alternating_times(fns: dict, *, quick: bool, sync=None) -> tuple:
    """``(wall, cpu)``: dicts of seconds per call of every ``fns`` value (wall-clock time, and this
    process's CPU time, which other processes on a shared machine disturb less), called in turn
    (order reversed every round, so machine noise and drift hit all alike) after one warm-up call
    each, until both a minimum time and a minimum number of rounds have passed."""
    min_time, min_rounds = (0.5, 5) if quick else (20.0, 7)
    for fn in fns.values():
        fn()
    if sync:
        sync()
    wall, cpu = {name: [] for name in fns}, {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_time:
        order = list(fns.items()) if rounds % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if sync:
                sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        rounds += 1
    return wall, cpu


def _feedback_row(device: str, quick: bool, n_rows: Optional[int] = None) -> dict:
    """The fused head's forward + backward without and with the feedback path (feedback=
    LossFeedback, then a shared tracker's update), alternating; see the module docstring."""
    import fastmask
    from fastmask.loss_feedback import deliver_feedback

    n, width, vocab = QUICK_FEEDBACK_SHAPE if quick else (FEEDBACK_ROWS, WIDTH, VOCAB)
    n = n_rows or n
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[torch.rand(n, generator=g) >= LABELLED] = -100
    labels = labels.to(device)
    hidden = torch.randn(n, width, generator=g).to(device).requires_grad_()
    weight = (torch.randn(vocab, width, generator=g) * 0.02).to(device).requires_grad_()
    tracker = fastmask.TokenLossTracker(vocab, device=device).share()  # shared: as a live collator's
    feedback = fastmask.LossFeedback()
    losses = {}

    def without():
        loss = fastmask.fused_masked_lm_loss(hidden, weight, labels)
        loss.backward()
        hidden.grad = weight.grad = None
        losses["without"] = loss.detach()

    def with_feedback():
        loss = fastmask.fused_masked_lm_loss(hidden, weight, labels, feedback=feedback)
        loss.backward()
        hidden.grad = weight.grad = None
        tracker.update(feedback.labels, feedback.losses, feedback.correct)
        losses["with"] = loss.detach()

    sync = common.device_sync(device)
    times, cpu_times = _alternating_times({"without": without, "with": with_feedback}, quick=quick, sync=sync)
    median = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    cpu = {k: 1e3 * statistics.median(v) for k, v in cpu_times.items()}
    best = {k: 1e3 * min(v) for k, v in times.items()}
    per_round = [(w - wo) / wo for wo, w in zip(times["without"], times["with"])]
    # the work the feedback adds outside the loss kernels (their two stores per labelled row aside),
    # timed alone on the same outputs: short calls, so steadier than the difference of two heads
    kernel_losses, kernel_correct = feedback.losses, feedback.correct.to(torch.uint8)

    def outside_kernels():
        collected = fastmask.LossFeedback()
        deliver_feedback(collected, labels, -100, kernel_losses, kernel_correct)
        tracker.update(collected.labels, collected.losses, collected.correct)

    outside = _times_ms(outside_kernels, quick=quick, sync=sync)
    outside_ms, outside_best_ms = statistics.median(outside), min(outside)
    return dict(
        case="feedback + tracker update",
        n=n,
        labelled=int((labels != -100).sum()),
        width=width,
        vocab=vocab,
        rounds=len(times["without"]),
        without_ms=median["without"],
        with_ms=median["with"],
        overhead=(median["with"] - median["without"]) / median["without"],
        best_without_ms=best["without"],
        best_with_ms=best["with"],
        best_overhead=(best["with"] - best["without"]) / best["without"],
        cpu_without_ms=cpu["without"],
        cpu_with_ms=cpu["with"],
        cpu_overhead=(cpu["with"] - cpu["without"]) / cpu["without"],
        round_quartiles=statistics.quantiles(per_round, n=4) if len(per_round) > 1 else per_round * 3,
        outside_kernels_ms=outside_ms,
        outside_kernels_share=outside_ms / best["without"],
        outside_kernels_best_ms=outside_best_ms,
        target=FEEDBACK_TARGET,
        losses_equal=bool(torch.equal(losses["without"], losses["with"])),
        tracker_updates=tracker.updates,
    )


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


def run(
    *,
    quick: bool = False,
    device: str = "cpu",
    tokenizer: Optional[str] = None,
    progress=True,
    n=None,
    feedback_rows: Optional[int] = None,
) -> dict:
    """Times the feedback path and the tracker against the fused head, and the live collator
    against the static one (``n``: labelled positions of the tracker rows, default 4096, 1024 with
    ``quick``; ``feedback_rows``: hidden rows of the feedback row, default 4096, 512 with ``quick``)."""
    n = n or (1024 if quick else 4096)
    feedback = _feedback_row(device, quick, feedback_rows)
    tracker_rows = _tracker_rows(n, device, quick)
    collator_rows, source = _collator_rows(tokenizer, quick)
    return dict(
        feedback=feedback,
        tracker=tracker_rows,
        collator=collator_rows,
        tokenizer=source,
        device=device,
        quick=quick,
        machine=common.machine_info(),
    )


def _feedback_lines(f: dict) -> list:
    if (f["n"], f["vocab"]) == (FEEDBACK_ROWS, VOCAB):
        verdict = "meets the target" if f["overhead"] <= f["target"] else "misses the target"
    else:
        verdict = f"small shapes: the target is set at N={FEEDBACK_ROWS}, V={VOCAB}"
    q1, q2, q3 = f["round_quartiles"]
    return [
        f"Feedback path vs the fused MLM head (forward + backward, N={f['n']} rows, {f['labelled']} labelled, "
        f"H={f['width']}, V={f['vocab']}; {f['rounds']} calls of each, alternating): `feedback=LossFeedback()` "
        f"plus a shared tracker's `update`; target <= {100 * f['target']:.0f}%; losses equal: "
        f"{'yes' if f['losses_equal'] else '**NO**'}.",
        "",
        "| variant | median ms | fastest ms | median CPU ms |",
        "| --- | ---: | ---: | ---: |",
        f"| fused head, no feedback | {f['without_ms']:.2f} | {f['best_without_ms']:.2f} | {f['cpu_without_ms']:.2f} |",
        f"| fused head + feedback + tracker.update | {f['with_ms']:.2f} | {f['best_with_ms']:.2f} | "
        f"{f['cpu_with_ms']:.2f} |",
        f"| overhead (with - without) / without | **{100 * f['overhead']:+.2f}%** ({verdict}) | "
        f"{100 * f['best_overhead']:+.2f}% | {100 * f['cpu_overhead']:+.2f}% |",
        "",
        f"Per round (with - without) / without: quartiles {100 * q1:+.2f}% / {100 * q2:+.2f}% / {100 * q3:+.2f}% "
        "(the spread is the machine's noise). The feedback's work outside the loss kernels (collecting the "
        f"labelled rows' feedback + `tracker.update`), timed alone: {f['outside_kernels_ms']:.3f} ms median "
        f"({f['outside_kernels_best_ms']:.3f} ms fastest), {100 * f['outside_kernels_share']:.2f}% of the "
        "fastest head.",
        "",
    ]


def to_markdown(result: dict) -> str:
    t = result["tracker"]
    lines = [
        "# Adaptive masking overheads",
        "",
        f"Machine: {common.machine_line(result['machine'])}; device {result['device']}.",
        "",
        *_feedback_lines(result["feedback"]),
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
    f = result["feedback"]
    shape = f"N={f['n']} ({f['labelled']} labelled), H={f['width']}, V={f['vocab']}"
    out = [
        common.table_row(
            "adaptive",
            "feedback + tracker update",
            shape,
            impl,
            ms=ms,
            tokens=f["labelled"],
            baseline="fused head without feedback",
            baseline_ms=f["without_ms"],
            device=result["device"],
        )
        for impl, ms in (("fused head, no feedback", f["without_ms"]), ("fused head + feedback", f["with_ms"]))
    ]
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
    f = result["feedback"]
    q1, _, q3 = f["round_quartiles"]
    return [
        f"feedback + tracker update: {100 * f['overhead']:+.2f}% of the fused head's time (N={f['n']}, "
        f"{f['labelled']} labelled, V={f['vocab']}; medians of {f['rounds']} alternating calls, per-round "
        f"quartiles {100 * q1:+.1f}%..{100 * q3:+.1f}%, CPU time {100 * f['cpu_overhead']:+.2f}%; target <= "
        f"{100 * f['target']:.0f}%); its work outside "
        f"the kernels alone: {100 * f['outside_kernels_share']:.2f}%",
        f"tracker update (N={best['n']}, V={VOCAB}): {100 * best['fraction']:.2f}% of the fused head's time "
        f"({best['impl']}); with value checks {100 * min(r['fraction'] for r in checked):.2f}%",
        f"collator with live weights + rate: {worst_live:.3f}x the static collator's time (worst variant)",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats, small shapes (feedback N=512, H=128, V=4096; tracker N=1024)",
    )
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda: where the head and the tracker run")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer (default: MiniLM's WordPiece)")
    common.add_output_arguments(parser)
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    result = run(quick=args.quick, device=device, tokenizer=args.tokenizer, progress=not args.no_progress)
    common.emit(result, to_markdown(result), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
