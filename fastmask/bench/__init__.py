"""``fastmask bench``: the benchmark suites, run in one process on the same data.

Each suite module (``collator``, ``masking``, ``loss``, ``train_step``, ``sft``, ``seq2seq``,
``ngrams``, ``adaptive``, ``kernels``) has
``run(*, quick=False, ...) -> dict``, ``to_markdown(result)``, ``table_rows(result)`` (flat
rows: ms, tokens/s, GB/s and peak memory where measured, speed-up against what fastmask
replaces; none for ``kernels``, which reports compiled resources, not times),
``headlines(result)`` and ``main(argv)``, optionally ``failures(result)``. :data:`SUITES` is
the one list of suites: ``fastmask bench --suite`` takes its names. :func:`run_cli` runs the
selected suites and prints, writes and plots their results.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from typing import Optional

from . import common


@dataclasses.dataclass(frozen=True)
class Suite:
    """A benchmark suite: its ``fastmask bench --suite`` name, module and the options it takes."""

    name: str
    module: str
    title: str
    default: bool
    options: tuple  # which of lengths / tokenizer its run() accepts

    def load(self):
        return importlib.import_module(f"{__name__}.{self.module}")


SUITES = {
    "collator": Suite(
        "collator",
        "collator",
        "collator: fastmask vs transformers' DataCollatorForLanguageModeling",
        True,
        ("lengths", "tokenizer"),
    ),
    "masking": Suite(
        "masking",
        "masking",
        "masking op: fastmask backends vs transformers' torch_mask_tokens",
        True,
        ("lengths", "tokenizer"),
    ),
    "loss": Suite(
        "loss", "loss", "loss: masked cross-entropy and fused MLM head vs torch (and Liger on CUDA)", True, ()
    ),
    "train-step": Suite(
        "train-step", "train_step", "training step: BertForMaskedLM stock vs apply_fastmask", False, ()
    ),
    "sft": Suite("sft", "sft", "SFT: fused LM head on 30% labelled rows (H=1024, V=128256) vs torch", False, ()),
    "seq2seq": Suite(
        "seq2seq",
        "seq2seq",
        "seq2seq: span-corruption and text-infilling collators vs the Flax T5 / BART examples' (numpy)",
        False,
        ("tokenizer",),
    ),
    "ngrams": Suite(
        "ngrams", "ngrams", "PMI n-grams: vocabulary counting words/s, PMI vs whole-word masking", False, ("tokenizer",)
    ),
    "adaptive": Suite(
        "adaptive",
        "adaptive",
        "adaptive masking: feedback + tracker update vs the fused head, live vs static collator inputs",
        False,
        ("tokenizer",),
    ),
    "kernels": Suite(
        "kernels", "kernels", "Triton kernels: registers, spills and shared memory per compiled variant", False, ()
    ),
}
# Series of the --plot: (suite, case) pairs, drawn for every fastmask implementation.
PLOT_CASES = (
    ("collator", "token"),
    ("collator", "whole_word (offsets)"),
    ("masking", "token"),
    ("masking", "whole_word (offsets)"),
)


def default_suite_names() -> list:
    """The suites ``fastmask bench`` runs without ``--suite``."""
    return [s.name for s in SUITES.values() if s.default]


def selected_suites(names) -> list:
    """The suites to run, in the order given (default: every suite marked default)."""
    if not names:
        return [s for s in SUITES.values() if s.default]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"--suite {unknown[0]!r} is not one of {', '.join(SUITES)}")
    return [SUITES[n] for n in dict.fromkeys(names)]


def _suite_kwargs(suite: Suite, args, device: str, lengths) -> dict:
    kwargs = dict(quick=args.quick, device=device, progress=False if args.no_progress else "bar")
    if "lengths" in suite.options:
        kwargs["lengths"] = lengths
    if "tokenizer" in suite.options:
        kwargs["tokenizer"] = args.tokenizer
    return kwargs


def report(results: dict, machine: dict, options: dict) -> dict:
    """The JSON document: machine, options, every flat row, the headlines and each suite's raw result."""
    rows, summary, failures = [], [], []
    for name, result in results.items():
        module = SUITES[name].load()
        rows += module.table_rows(result)
        summary += module.headlines(result)
        failures += getattr(module, "failures", lambda r: [])(result)
    return dict(machine=machine, options=options, rows=rows, summary=summary, failures=failures, suites=results)


def to_markdown(document: dict) -> str:
    """Every suite's markdown under one title, with the machine and the headline ratios first."""
    lines = [
        "# fastmask bench",
        "",
        f"- {common.machine_line(document['machine'])}",
        f"- options: {json.dumps(document['options'])}",
        "",
        "## Summary",
        "",
    ]
    lines += [f"- {line}" for line in document["summary"] + [f"FAILED: {f}" for f in document["failures"]]]
    for name, result in document["suites"].items():
        text = SUITES[name].load().to_markdown(result)
        lines += [""] + [("#" + line if line.startswith("#") else line) for line in text.splitlines()]
    return "\n".join(lines) + "\n"


def plot(rows: list, path: str) -> Optional[str]:
    """A PNG of fastmask's speed-up over transformers against L (collator and masking, token and
    whole-word). Returns None when written, else why not (matplotlib missing, nothing to plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    series: dict = {}
    for row in rows:
        if (row["suite"], row["case"]) not in PLOT_CASES or row["baseline"] != "transformers":
            continue
        if not row["impl"].startswith("fastmask") or "reference" in row["impl"] or "core" in row["impl"]:
            continue
        points = series.setdefault(f"{row['suite']} {row['case']}: {row['impl']}", {})
        if row["length"] not in points or row["batch"] == 64:  # masking times L=128 at two batches
            points[row["length"]] = row["speedup"]
    if not series:
        return "no collator or masking row has a speed-up over transformers"
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in sorted(series.items()):
        lengths = sorted(points)
        ax.plot(lengths, [points[L] for L in lengths], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ticks = sorted({L for points in series.values() for L in points})
    ax.set_xticks(ticks, [str(L) for L in ticks])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("speed-up over transformers (x)")
    ax.set_title("fastmask vs transformers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(common.ensure_folder(path), dpi=120)
    plt.close(fig)
    return None


def _write(document: dict, args) -> None:
    if args.json:
        common.write_text(args.json, json.dumps(document, indent=2) + "\n")
    if args.markdown:
        common.write_text(args.markdown, to_markdown(document))


def run_cli(args) -> int:
    """``fastmask bench``: validate the options, run the suites, print tables and headlines,
    write ``--json`` / ``--markdown`` (after every suite, so a failure keeps what ran) and
    ``--plot``. Returns 1 when a suite found a correctness problem, else 0."""
    suites = selected_suites(args.suite)
    lengths = common.check_lengths(args.lengths)
    if lengths and not any("lengths" in s.options for s in suites):
        takers = " and ".join(n for n, s in SUITES.items() if "lengths" in s.options)
        raise ValueError(f"--lengths applies to the {takers} suites; none of them is selected")
    device = common.resolve_device(args.device)
    if any("tokenizer" in s.options for s in suites):
        common.load_tokenizer(args.tokenizer)  # a bad --tokenizer fails here, before any suite starts
    options = dict(
        suites=[s.name for s in suites], quick=args.quick, device=device, lengths=lengths, tokenizer=args.tokenizer
    )
    machine = common.machine_info()
    results: dict = {}
    for suite in suites:
        print(f"== {suite.title} ({device}{', quick' if args.quick else ''})", file=sys.stderr, flush=True)
        module = suite.load()
        results[suite.name] = module.run(**_suite_kwargs(suite, args, device, lengths))
        rows = module.table_rows(results[suite.name])
        table = common.text_table(rows) if rows else module.to_markdown(results[suite.name]).rstrip()
        print(f"\n{suite.title}\n{table}\n", flush=True)
        _write(report(results, machine, options), args)
    document = report(results, machine, options)
    print("Summary")
    for line in document["summary"]:
        print(f"  {line}")
    for line in document["failures"]:
        print(f"  FAILED: {line}")
    if args.plot:
        skipped = plot(document["rows"], args.plot)
        print(f"--plot skipped: {skipped}" if skipped else f"plot: {args.plot}")
    for label, path in (("json", args.json), ("markdown", args.markdown)):
        if path:
            print(f"{label}: {path}")
    return 1 if document["failures"] else 0
