"""Compile fastmask's Triton kernels ahead of time for a CUDA target, with or without a GPU.

Triton (>= 3.3, with its NVIDIA backend) lowers a kernel to PTX and assembles it with the
``ptxas`` it ships, for any compute capability, on a machine without a GPU. This module
describes every kernel variant the launchers compile (:func:`variants`: the dtypes, the
constexpr branches, the launchers' own ``BLOCK`` and ``num_warps`` choices), compiles them
(:func:`compile_variant`) and reads what the assembler reports: registers per thread, spills
and the stack frame, plus the shared memory Triton reserves (``metadata.shared``).

The same numbers feed the tests (``tests/test_kernels_masking.py``,
``tests/test_kernels_cross_entropy.py``: every variant compiles for sm_80 and sm_90 with 0
spills), ``fastmask bench --suite kernels`` and ``benchmarks/gpu_check.py`` (which compiles
for the GPU's own capability and adds the driver's view of the loaded kernel).

Compiling needs a process in which the kernels are real ``@triton.jit`` functions, i.e.
``TRITON_INTERPRET`` is not ``1`` when triton is first imported. :func:`compile_report` starts
such processes itself (``python -m fastmask.kernels.offline --worker JOBS``), so it can be called
from anywhere, also from a test run under the interpreter.

Not checked here: speed, and the integer specialisations Triton makes at launch time for
arguments divisible by 16 (pointers are compiled as 16-byte aligned, as torch allocates them;
integers as not divisible by 16, the general case).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Optional

# Capabilities the tests compile for: A100 (sm_80) and H100 / H200 (sm_90, assembled as sm_90a).
TARGETS = (80, 90)
KERNELS = (
    "masking",
    "cross_entropy",
    "ngrams",
    "infilling",
    "sentinel_spans",
    "completion_labels",
    "token_loss_tracker",
)
# The block sizes the tests compile (the launchers pick BLOCK from the row length / vocabulary),
# each with the launcher's num_warps: masking: a BERT-length row (512, 2 warps) and the largest
# block without spills (2048, 8 warps); cross-entropy: the block every vocabulary above 8192
# classes gets (16384, 16 warps) and the largest block at 8 warps (8192: as many classes per
# thread). Every variant at the first block; at the others only the first
# EXTRA_BLOCK_VARIANTS of the list (the variants with the most registers come first).
TEST_BLOCKS = {
    "masking": (512, 2048),
    "cross_entropy": (16384, 8192),
    "ngrams": (512,),
    "infilling": (512,),
    "sentinel_spans": (1024,),  # T5's 568-token rows
    "completion_labels": (1024,),
    "token_loss_tracker": (1024,),  # its launcher's one BLOCK
}
EXTRA_BLOCK_VARIANTS = {
    "masking": 2,
    "cross_entropy": 1,
    "ngrams": 2,
    "infilling": 0,
    "sentinel_spans": 0,
    "completion_labels": 0,
    "token_loss_tracker": 0,
}
# Blocks at which some variants spill and no num_warps avoids it (measured with Triton 3.9's
# ptxas, docs/kernels.md). The masking kernel holds a whole row in one block: at BLOCK_L 4096 a
# few variants spill 4-56 bytes per thread with 8, 16 or 32 warps; at 8192 and 16384 even 32
# warps (1024 threads, the most a block can have, so at most 64 registers per thread) leave 8
# or 16 positions per thread and the span / whole-word variants (at 16384 all) spill. At 128
# (1 warp) ptxas spills 4 bytes in one variant for sm_80 (with 2 warps, in another one).
# Reported (``known_spill``), not failures; the tests do not compile these blocks (one such
# compile takes up to a minute); ``fastmask bench --suite kernels`` and gpu_check do.
KNOWN_SPILLS = {"masking": (128, 4096, 8192, 16384)}
# What ``fastmask bench --suite kernels`` (and gpu_check) compiles: the tests' blocks, then the
# known-spill blocks up to 8192 (so that a GPU run records the driver's count of a spill too).
REPORT_BLOCKS = {
    "masking": TEST_BLOCKS["masking"] + (128, 4096, 8192),
    "cross_entropy": TEST_BLOCKS["cross_entropy"],
    "ngrams": TEST_BLOCKS["ngrams"] + (2048,),
    "infilling": TEST_BLOCKS["infilling"],
    "sentinel_spans": TEST_BLOCKS["sentinel_spans"],
    "completion_labels": TEST_BLOCKS["completion_labels"],
    "token_loss_tracker": TEST_BLOCKS["token_loss_tracker"],
}

EXIT_UNAVAILABLE = 77  # exit status of the worker when this triton cannot compile offline


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compilation of one kernel: the launcher's signature, constexprs and ``num_warps``."""

    kernel: str  # one of KERNELS
    label: str  # the variant within the kernel (dtypes and constexpr branches), for reports
    block: int
    num_warps: int
    signature: dict  # argument name -> Triton type ("*fp32", "i32", "constexpr", ...)
    constexprs: dict

    @property
    def key(self) -> str:
        return f"{self.kernel}[{self.block}/{self.num_warps}w] {self.label}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- variants
def _masking_function():
    from .masking import _mask_tokens_kernel

    return _mask_tokens_kernel


def _cross_entropy_function():
    from .cross_entropy import _cross_entropy_rows_kernel

    return _cross_entropy_rows_kernel


def _ngrams_function():
    from .ngrams import _ngram_units_kernel

    return _ngram_units_kernel


def _infilling_function():
    from .infilling import _text_infilling_kernel

    return _text_infilling_kernel


def _sentinel_spans_function():
    from .sentinel_spans import _span_corruption_kernel

    return _span_corruption_kernel


def _completion_labels_function():
    from .completion_labels import _completion_mask_kernel

    return _completion_mask_kernel


def _token_loss_tracker_function():
    from .token_loss_tracker import _tracker_update_kernel

    return _tracker_update_kernel


_FUNCTIONS = {
    "masking": _masking_function,
    "cross_entropy": _cross_entropy_function,
    "ngrams": _ngrams_function,
    "infilling": _infilling_function,
    "sentinel_spans": _sentinel_spans_function,
    "completion_labels": _completion_labels_function,
    "token_loss_tracker": _token_loss_tracker_function,
}


def _arg_names(kernel: str) -> list:
    return list(_FUNCTIONS[kernel]().arg_names)  # also on the interpreter's functions


def masking_variants(block: int) -> list:
    """The masking kernel for rows that take ``BLOCK_L = block``: the three strategies, each with
    the Bernoulli and the exact budget, each in two argument sets that between them take every
    constexpr branch: (a) int64 ids, a special-tokens mask and word starts given per token, a
    seed >= 2**31; (b) int32 ids, attention mask, the vocabulary flag table, token weights
    (Bernoulli only), a pad id, a seed < 2**31."""
    from ..masking_plan import STRATEGY_SPAN, STRATEGY_TOKEN, STRATEGY_WHOLE_WORD
    from .masking import _num_warps

    names = _arg_names("masking")
    out = []
    for (strategy, strategy_name), exact, variant in itertools.product(
        ((STRATEGY_TOKEN, "token"), (STRATEGY_WHOLE_WORD, "whole_word"), (STRATEGY_SPAN, "span")), (False, True), (0, 1)
    ):
        constexprs = dict(
            HAS_SPECIAL_MASK=variant == 0,
            HAS_ATTENTION=variant == 1,
            HAS_WORD_STARTS=variant == 0,
            HAS_FLAGS=variant == 1,
            HAS_WEIGHTS=not exact and variant == 1,
            HAS_PAD=variant == 1,
            STRATEGY=strategy,
            EXACT=exact,
            BLOCK_L=block,
            LOG2_BLOCK_L=block.bit_length() - 1,
        )
        ids = "*i64" if variant == 0 else "*i32"
        pointers = {
            "special_ptr": "*u8",
            "attention_ptr": "*u8",
            "word_starts_ptr": "*u8",
            "flags_ptr": "*u8",
            "weights_ptr": "*i32",
            "row_keys_ptr": "*i64",
            "span_thresholds_ptr": "*i32",
            "budget_table_ptr": "*i32",
            "ids_ptr": ids,
            "out_ids_ptr": ids,
            "labels_ptr": "*i64",
        }
        seed = "i64" if variant == 0 else "i32"  # seed mixes >= 2**31 arrive as i64
        signature = {
            name: "constexpr" if name in constexprs else pointers.get(name, seed if name.startswith("seed") else "i32")
            for name in names
        }
        label = f"{strategy_name} {'exact' if exact else 'bernoulli'} " + (
            "i64 ids, special mask, word starts"
            if variant == 0
            else "i32 ids, attention, flags" + (", weights" if not exact else "") + ", pad"
        )
        out.append(Variant("masking", label, block, _num_warps(block), signature, constexprs))
    # the most registers first (measured): span, then whole word, then token; the int32-id
    # argument set (flags, weights, attention, pad) before the other; Bernoulli before exact
    rank = {STRATEGY_SPAN: 0, STRATEGY_WHOLE_WORD: 1, STRATEGY_TOKEN: 2}
    return sorted(
        out, key=lambda v: (rank[v.constexprs["STRATEGY"]], v.signature["ids_ptr"] != "*i32", v.constexprs["EXACT"])
    )


# the row-level launcher's constexpr branches, as its callers use them (fastmask.cross_entropy,
# fastmask.fused_linear_cross_entropy); between them every branch takes both values
_CE_BRANCHES = (
    (
        "rows, compact grad, smoothing, feedback",
        dict(
            HAS_ROWS=True, HAS_GRAD=True, GRAD_AT_ROW=False, HAS_ROW_SCALE=False, HAS_SMOOTHING=True, HAS_FEEDBACK=True
        ),
    ),
    (
        "fused chunk, in-place grad, row scale",
        dict(
            HAS_ROWS=False, HAS_GRAD=True, GRAD_AT_ROW=True, HAS_ROW_SCALE=True, HAS_SMOOTHING=False, HAS_FEEDBACK=False
        ),
    ),
    (
        "rows, loss only",
        dict(
            HAS_ROWS=True,
            HAS_GRAD=False,
            GRAD_AT_ROW=False,
            HAS_ROW_SCALE=False,
            HAS_SMOOTHING=False,
            HAS_FEEDBACK=False,
        ),
    ),
)
_CE_DTYPES = (("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"))


def cross_entropy_variants(block: int) -> list:
    """The cross-entropy row kernel at ``BLOCK_V = block``: fp32, fp16 and bf16 logits (the
    gradient in the logits' dtype), each with the branch sets of :data:`_CE_BRANCHES`."""
    from .cross_entropy import num_warps

    names = _arg_names("cross_entropy")
    out = []
    for (branches, flags), (dtype_name, dtype) in itertools.product(_CE_BRANCHES, _CE_DTYPES):
        constexprs = dict(BLOCK_V=block, **flags)
        types = {
            "logits_ptr": f"*{dtype}",
            "grad_ptr": f"*{dtype}",
            "loss_ptr": "*fp32",
            "rows_ptr": "*i64",
            "targets_ptr": "*i64",
            "row_scale_ptr": "*fp32",
            "ce_ptr": "*fp32",
            "correct_ptr": "*u8",
            "V": "i32",
            "logits_row_stride": "i32",
            "grad_row_stride": "i32",
            "grad_scale": "fp32",
            "label_smoothing": "fp32",
            "z_loss": "fp32",
        }
        signature = {name: "constexpr" if name in constexprs else types[name] for name in names}
        out.append(Variant("cross_entropy", f"{dtype_name} {branches}", block, num_warps(block), signature, constexprs))
    return out


def ngrams_variants(block: int) -> list:
    """The n-gram unit kernel at the launcher's warps for ``block`` in two argument sets that
    between them take every constexpr branch, at ``MAX_N`` 8 (the most unrolled probes, the most
    registers): (a) int64 ids, special-tokens mask, word starts; (b) int32 ids, attention mask,
    the vocabulary flag table, a pad id."""
    from .ngrams import num_warps

    names = _arg_names("ngrams")
    out = []
    for variant, max_n in itertools.product((0, 1), (8,)):
        constexprs = dict(
            HAS_SPECIAL_MASK=variant == 0,
            HAS_ATTENTION=variant == 1,
            HAS_WORD_STARTS=variant == 0,
            HAS_FLAGS=variant == 1,
            HAS_PAD=variant == 1,
            MAX_N=max_n,
            BLOCK_L=block,
        )
        ids = "*i64" if variant == 0 else "*i32"
        types = {
            "ids_ptr": ids,
            "special_ptr": "*u8",
            "attention_ptr": "*u8",
            "word_starts_ptr": "*u8",
            "flags_ptr": "*u8",
            "table_ptr": "*i64",
            "out_ptr": "*u8",
            "word_code_ptr": "*i64",
            "word_seg_ptr": "*i32",
            "word_state_ptr": "*i32",
            "L": "i32",
            "n_flags": "i32",
            "pad_token_id": "i64",
            "table_mask": "i64",
        }
        signature = {name: "constexpr" if name in constexprs else types[name] for name in names}
        label = f"max_n {max_n} " + (
            "i64 ids, special mask, word starts" if variant == 0 else "i32 ids, attention, flags, pad"
        )
        out.append(Variant("ngrams", label, block, num_warps(block), signature, constexprs))
    return out


def _row_op_types(present: bool) -> tuple[str, str, str]:
    """``(ids, optional mask, seed mix)`` types of a row op's two argument sets: int64 ids, uint8
    masks and seed mixes >= 2**31 (``present``); or int32 ids, which the launcher also passes as
    the absent masks' dummy pointer, and seed mixes < 2**31."""
    ids = "*i64" if present else "*i32"
    return ids, "*u8" if present else ids, "i64" if present else "i32"


def infilling_variants(block: int) -> list:
    """The text-infilling kernel for rows that take ``BLOCK_L = block`` and outputs up to twice
    as long (``BLOCK_W = 2 * block``: a row of ``block`` tokens with inserts), at the launcher's
    ``num_warps``: the three replace lengths, each in two argument sets that between them take
    every constexpr branch: (a) int64 ids, attention and special-tokens masks and word starts, seed
    mixes >= 2**31; (b) int32 ids, none of the optional masks (the launcher passes the ids as
    the dummy pointer), seed mixes < 2**31."""
    from .infilling import num_warps

    names = _arg_names("infilling")
    block_w = 2 * block
    out = []
    for replace_length, variant in itertools.product((1, -1, 0), (0, 1)):
        present = variant == 0
        constexprs = dict(
            REPLACE_LENGTH=replace_length,
            HAS_ATTENTION=present,
            HAS_SPECIAL=present,
            HAS_WORD_STARTS=present,
            BLOCK_L=block,
            LOG2_BLOCK_L=block.bit_length() - 1,
            BLOCK_W=block_w,
            LOG2_BLOCK_W=block_w.bit_length() - 1,
        )
        ids, optional, seed = _row_op_types(present)
        types = {
            "ids_ptr": ids,
            "attention_ptr": optional,
            "special_ptr": optional,
            "word_starts_ptr": optional,
            "row_keys_ptr": "*i64",
            "span_lengths_ptr": "*i32",
            "span_count_ptr": "*i32",
            "insert_count_ptr": "*i32",
            "insert_table_ptr": "*i32",
            "out_ptr": ids,
            "attention_out_ptr": "*i64",
            "reach_ptr": "*i64",
            "tokens_ptr": "*i64",
            "seed_mix1": seed,
            "seed_mix2": seed,
        }
        signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in names}
        label = f"replace_length {replace_length} " + (
            "i64 ids, attention, special, word starts" if present else "i32 ids, no masks"
        )
        out.append(Variant("infilling", label, block, num_warps(block_w), signature, constexprs))
    return out


def sentinel_spans_variants(block: int) -> list:
    """The span-corruption kernel for rows that take ``BLOCK_L = block`` (outputs as wide), at the
    launcher's ``num_warps``, in two argument sets that between them take every constexpr branch:
    (a) int64 ids, attention mask and word starts, seed mixes >= 2**31; (b) int32 ids, neither mask
    (the launcher passes the ids as the dummy pointer), seed mixes < 2**31."""
    from .masking import _num_warps

    names = _arg_names("sentinel_spans")
    out = []
    for present in (True, False):
        constexprs = dict(
            HAS_ATTENTION=present,
            HAS_WORD_STARTS=present,
            BLOCK_L=block,
            LOG2_BLOCK_L=block.bit_length() - 1,
            BLOCK_OUT=block,
        )
        ids, optional, seed = _row_op_types(present)
        types = {
            "ids_ptr": ids,
            "attention_ptr": optional,
            "word_starts_ptr": optional,
            "row_keys_ptr": "*i64",
            "noise_table_ptr": "*i32",
            "spans_table_ptr": "*i32",
            "inputs_ptr": ids,
            "targets_ptr": ids,
            "scratch_ptr": "*i32",
            "seed_mix1": seed,
            "seed_mix2": seed,
        }
        signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in names}
        label = "i64 ids, attention, word starts" if present else "i32 ids, no masks"
        out.append(Variant("sentinel_spans", label, block, _num_warps(block), signature, constexprs))
    return out


def completion_labels_variants(block: int) -> list:
    """The completion-mask kernel for rows that take ``BLOCK_L = block``, at the launcher's
    ``num_warps``: with and without an instruction template, each in one argument set: (a) int64
    ids and an attention mask; (b) int32 ids, no attention mask (the launcher passes the output as
    the dummy pointer)."""
    from .completion_labels import num_warps

    names = _arg_names("completion_labels")
    out = []
    for has_inst, present in itertools.product((True, False), (True, False)):
        constexprs = dict(HAS_INST=has_inst, HAS_ATTENTION=present, BLOCK_L=block)
        types = {
            "ids_ptr": "*i64" if present else "*i32",
            "resp_ptr": "*i64",
            "inst_ptr": "*i64",
            "attn_ptr": "*u8",
            "keep_ptr": "*u8",
            "missing_ptr": "*i32",
        }
        signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in names}
        label = ("instruction, " if has_inst else "") + ("i64 ids, attention" if present else "i32 ids, no attention")
        out.append(Variant("completion_labels", label, block, num_warps(block), signature, constexprs))
    return out


def token_loss_tracker_variants(block: int) -> list:
    """The tracker's scatter kernel (int64 labels and groups, fp32 losses, uint8 correct bits, int64
    sums) at its launcher's ``BLOCK`` and 4 warps, in two argument sets that between them take
    every constexpr branch: (a) correct bits and groups; (b) neither (the launcher passes the
    labels as the dummy pointers)."""
    from ..tracker_update_plan import LOSS_FIXED_POINT_BITS

    names = _arg_names("token_loss_tracker")
    out = []
    for present in (True, False):
        constexprs = dict(SCALE=float(1 << LOSS_FIXED_POINT_BITS), HAS_CORRECT=present, HAS_GROUPS=present, BLOCK=block)
        types = {
            "labels_ptr": "*i64",
            "losses_ptr": "*fp32",
            "correct_ptr": "*u8" if present else "*i64",
            "groups_ptr": "*i64",
            "sums_ptr": "*i64",
            "n": "i32",
            "num_groups": "i32",
            "ignore_index": "i32",
        }
        signature = {name: "constexpr" if name in constexprs else types[name] for name in names}
        label = "correct bits, groups" if present else "no correct bits, no groups"
        out.append(Variant("token_loss_tracker", label, block, 4, signature, constexprs))
    return out


_VARIANTS = {
    "masking": masking_variants,
    "cross_entropy": cross_entropy_variants,
    "ngrams": ngrams_variants,
    "infilling": infilling_variants,
    "sentinel_spans": sentinel_spans_variants,
    "completion_labels": completion_labels_variants,
    "token_loss_tracker": token_loss_tracker_variants,
}


def variants(kernel: str, blocks: Optional[Iterable[int]] = None, *, extra_limit: Optional[int] = None) -> list:
    """Every variant of ``kernel`` at the first of ``blocks`` (default :data:`TEST_BLOCKS`), and
    the first ``extra_limit`` variants (default :data:`EXTRA_BLOCK_VARIANTS`; ``0`` none, a
    negative number all) at the other block sizes."""
    if kernel not in _VARIANTS:
        raise ValueError(f"kernel {kernel!r} is not one of {', '.join(KERNELS)}")
    blocks = list(TEST_BLOCKS[kernel] if blocks is None else blocks)
    limit = EXTRA_BLOCK_VARIANTS[kernel] if extra_limit is None else extra_limit
    out = []
    for i, block in enumerate(blocks):
        found = _VARIANTS[kernel](block)
        out += found if i == 0 or limit < 0 else found[:limit]
    return out


# ----------------------------------------------------------------------------- compiling
def unavailable_reason() -> Optional[str]:
    """None when this process can compile the kernels for CUDA, else why not."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "TRITON_INTERPRET=1: the kernels are interpreter functions in this process"
    try:
        import inspect

        import triton
        from triton.backends.compiler import GPUTarget

        triton.compiler.make_backend(GPUTarget("cuda", 90, 32))
    except Exception as exc:  # no triton, or no NVIDIA backend in this build
        return f"no Triton CUDA compiler backend here ({type(exc).__name__}: {exc})"
    if "constexprs" not in inspect.signature(triton.compiler.ASTSource).parameters:
        return f"offline compilation uses the ASTSource API of Triton >= 3.3 (this is {triton.__version__})"
    return None


_FUNCTION_PROPERTIES = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads"
)
_REGISTERS = re.compile(r"Used (?P<regs>\d+) registers")


def parse_ptxas_log(text: str) -> dict:
    """Registers, stack frame and spill bytes from ``ptxas -v`` output (one kernel)."""
    props, regs = _FUNCTION_PROPERTIES.search(text), _REGISTERS.search(text)
    if props is None or regs is None:
        raise RuntimeError(f"no register / spill lines in the ptxas log: {text.strip()[:500]!r}")
    stack = int(props["stack"])
    return dict(
        n_regs=int(regs["regs"]), stack_frame=stack, spill_stores=int(props["stores"]), spill_loads=int(props["loads"])
    )


def _report_keys(variant: Variant, capability: int) -> dict:
    """The keys that name a report row: kernel, variant, block, warps and ``sm_<capability>``."""
    return dict(
        kernel=variant.kernel,
        variant=variant.label,
        block=variant.block,
        num_warps=variant.num_warps,
        target=f"sm_{capability}",
    )


def compile_variant(variant: Variant, capability: int, *, load: bool = False) -> dict:
    """Compile ``variant`` for ``sm_<capability>`` (e.g. 80, 90) in this process; returns its row:
    ``n_regs`` (registers per thread), ``n_spills`` (as Triton counts them on a device: local
    memory bytes / 4, here the stack frame / 4), ``spill_stores`` / ``spill_loads`` (bytes),
    ``shared`` (bytes of shared memory, ``metadata.shared``) and the compile ``seconds``.

    ``load=True`` (needs that GPU) also loads the cubin and adds the driver's ``driver_n_regs``,
    ``driver_n_spills`` and ``max_threads``."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    fn = _FUNCTIONS[variant.kernel]()
    target = GPUTarget("cuda", capability, 32)
    options = triton.compiler.make_backend(target).parse_options({"num_warps": variant.num_warps}).__dict__
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if variant.signature[name].startswith("*")
    }
    source = triton.compiler.ASTSource(fn=fn, signature=variant.signature, constexprs=variant.constexprs, attrs=attrs)
    log = io.StringIO()
    start = time.perf_counter()
    # always_compile: the assembler's report is printed only when ptxas runs (not on a cache hit)
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        compiled = triton.compile(source, target=target, options=options)
    seconds = time.perf_counter() - start
    row = dict(_report_keys(variant, capability), **parse_ptxas_log(log.getvalue()))
    row["n_spills"] = row["stack_frame"] // 4
    row["shared"] = int(compiled.metadata.shared)
    row["seconds"] = round(seconds, 2)
    if load:
        try:
            compiled._init_handles()  # the driver's numbers for the loaded cubin
            row.update(
                driver_n_regs=compiled.n_regs, driver_n_spills=compiled.n_spills, max_threads=compiled.n_max_threads
            )
        except Exception as exc:
            row["load_error"] = f"{type(exc).__name__}: {exc}"
    return row


def spilled(rows: Sequence[dict], *, known: bool = True) -> list:
    """The rows that spill (a stack frame, spill stores or loads, or the driver's count) or did
    not compile; ``known=False`` leaves out the spills at :data:`KNOWN_SPILLS` blocks."""
    return [
        r
        for r in rows
        if r.get("error")
        or (
            (r["n_spills"] or r["spill_stores"] or r["spill_loads"] or r.get("driver_n_spills"))
            and (known or not known_spill(r))
        )
    ]


def known_spill(row: dict) -> bool:
    """Whether ``row`` is at a block of :data:`KNOWN_SPILLS` for its kernel."""
    return row["block"] in KNOWN_SPILLS.get(row["kernel"], ())


# ----------------------------------------------------------------------------- many, in workers
def _worker(args) -> int:
    reason = unavailable_reason()
    if reason:
        print(json.dumps(dict(unavailable=reason)), flush=True)
        return EXIT_UNAVAILABLE
    with open(args.worker, encoding="utf-8") as handle:
        jobs = json.load(handle)
    for job in jobs:
        variant = Variant(**job["variant"])
        try:
            row = compile_variant(variant, job["capability"], load=job.get("load", False))
        except Exception as exc:  # a compile error is a result too (the tests fail on it)
            row = dict(
                _report_keys(variant, job["capability"]), error=f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
            )
        print("ROW " + json.dumps(row), flush=True)
    return 0


class OfflineCompileUnavailable(RuntimeError):
    """This triton cannot compile for CUDA here (no NVIDIA backend, or too old)."""


def compile_report(
    variant_list: Sequence[Variant],
    capabilities: Sequence[int] = TARGETS,
    *,
    jobs: int = 1,
    load: bool = False,
    timeout: float = 900,
) -> list:
    """Compile every variant for every capability, in ``jobs`` worker processes without
    ``TRITON_INTERPRET``; returns one row per (variant, capability) in that order (a row with
    ``error`` when it did not compile). Raises :class:`OfflineCompileUnavailable` when triton
    cannot compile for CUDA here, RuntimeError when a worker dies."""
    work = [dict(variant=v.to_json(), capability=int(c), load=load) for c in capabilities for v in variant_list]
    if not work:
        return []
    jobs = max(1, min(jobs, len(work)))
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launch default; set so triton does not warn
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    shards = [work[i::jobs] for i in range(jobs)]
    outputs = []
    with tempfile.TemporaryDirectory(prefix="fastmask-offline-") as folder:
        procs = []
        try:
            for i, shard in enumerate(shards):
                path = os.path.join(folder, f"jobs-{i}.json")
                with open(path, "w", encoding="utf-8") as handle:
                    json.dump(shard, handle)
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "fastmask.kernels.offline", "--worker", path],
                        env=env,
                        text=True,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                )
            deadline = time.monotonic() + timeout
            for proc in procs:
                stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                outputs.append((proc.returncode, stdout, stderr))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    rows_by_shard = []
    for rc, stdout, stderr in outputs:
        if rc == EXIT_UNAVAILABLE:
            raise OfflineCompileUnavailable(json.loads(stdout.splitlines()[-1])["unavailable"])
        rows = [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("ROW ")]
        if rc != 0:
            raise RuntimeError(f"an offline compile worker exited with {rc}: {stderr.strip()[-3000:]}")
        rows_by_shard.append(rows)
    rows = [None] * len(work)
    for i, shard_rows in enumerate(rows_by_shard):
        for j, row in enumerate(shard_rows):
            rows[i + j * jobs] = row
    return rows


# ----------------------------------------------------------------------------- reporting
def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table (the driver's columns only when loaded on a GPU)."""
    driver = any("driver_n_regs" in r for r in rows)
    head = "| kernel | variant | BLOCK | warps | target | registers | spills | spill st/ld bytes | shared bytes |"
    rule = "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"
    if driver:
        head += " driver registers | driver spills |"
        rule += " ---: | ---: |"
    lines = [head, rule]
    for r in rows:
        if r.get("error"):
            lines.append(
                f"| {r['kernel']} | {r['variant']} | {r['block']} | {r['num_warps']} | {r['target']} | "
                f"FAILED: {r['error'].splitlines()[0][:200]} | | | |" + (" | |" if driver else "")
            )
            continue
        line = (
            f"| {r['kernel']} | {r['variant']} | {r['block']} | {r['num_warps']} | {r['target']} | {r['n_regs']} | "
            f"{r['n_spills']} | {r['spill_stores']}/{r['spill_loads']} | {r['shared']} |"
        )
        if driver:
            line += f" {r.get('driver_n_regs', '-')} | {r.get('driver_n_spills', '-')} |"
        lines.append(line)
    return "\n".join(lines)


def summary_lines(rows: Sequence[dict]) -> list:
    """One line per (kernel, target): variants compiled, the most registers, spills, shared memory."""
    lines = []
    for (kernel, target), group in itertools.groupby(
        sorted(rows, key=lambda r: (r["kernel"], r["target"])), key=lambda r: (r["kernel"], r["target"])
    ):
        group = list(group)
        ok = [r for r in group if not r.get("error")]
        bad = spilled(group, known=False)
        known = [r for r in spilled(group) if r not in bad]
        line = (
            f"triton {kernel} {target}: {len(ok)}/{len(group)} variants compiled; registers "
            f"{min((r['n_regs'] for r in ok), default=0)}..{max((r['n_regs'] for r in ok), default=0)}, "
            f"shared <= {max((r['shared'] for r in ok), default=0)} bytes, "
            + (f"{len(bad)} spill or fail" if bad else "0 spills")
            + (
                f" (and {len(known)} known spills at BLOCK "
                f"{', '.join(str(b) for b in sorted({r['block'] for r in known}))})"
                if known
                else ""
            )
        )
        lines.append(line)
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastmask.kernels.offline",
        description="Compile fastmask's Triton kernels for CUDA targets (no GPU needed) and report registers, "
        "spills and shared memory per variant.",
    )
    parser.add_argument("--kernel", nargs="+", choices=KERNELS, default=list(KERNELS), help="kernels (default: all)")
    parser.add_argument(
        "--capability",
        nargs="+",
        type=int,
        default=list(TARGETS),
        help="compute capabilities as 80, 90, ... (default: 80 90)",
    )
    parser.add_argument("--blocks", nargs="+", type=int, help="block sizes (default: the tests' block sizes)")
    parser.add_argument("--all-variants", action="store_true", help="every variant at every block size")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--load", action="store_true", help="also load each cubin on this machine's GPU")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--worker", metavar="JOBS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    chosen = [v for k in args.kernel for v in variants(k, args.blocks, extra_limit=-1 if args.all_variants else None)]
    try:
        rows = compile_report(chosen, args.capability, jobs=args.jobs, load=args.load)
    except OfflineCompileUnavailable as exc:
        print(f"offline compile unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(markdown_table(rows))
    print()
    print("\n".join(summary_lines(rows)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 1 if spilled(rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
