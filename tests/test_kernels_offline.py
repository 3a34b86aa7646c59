"""fastmask.kernels.offline without compiling: the variant lists cover every constexpr branch
with the launchers' types, the ptxas report is parsed, spills are found, the tables render."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("triton")

from fastmask.kernels import offline  # noqa: E402

PTXAS_LOG = """\
ptxas info    : 11 bytes gmem, 8 bytes cmem[4]
ptxas info    : Compiling entry function '_cross_entropy_rows_kernel' for 'sm_80'
ptxas info    : Function properties for _cross_entropy_rows_kernel
    {stack} bytes stack frame, {stores} bytes spill stores, {loads} bytes spill loads
ptxas info    : Used {regs} registers, used 1 barriers, 456 bytes cmem[0]
ptxas info    : Compile time = 356.999 ms
"""


def _row(**changes):
    row = dict(
        kernel="cross_entropy",
        variant="fp32 x",
        block=16384,
        num_warps=16,
        target="sm_90",
        n_regs=100,
        n_spills=0,
        spill_stores=0,
        spill_loads=0,
        stack_frame=0,
        shared=64,
        seconds=1.0,
    )
    row.update(changes)
    return row


def test_parse_ptxas_log():
    assert offline.parse_ptxas_log(PTXAS_LOG.format(stack=0, stores=0, loads=0, regs=104)) == dict(
        n_regs=104, stack_frame=0, spill_stores=0, spill_loads=0
    )
    # the name ptxas-blackwell prints for itself
    log = PTXAS_LOG.format(stack=1232, stores=2356, loads=2904, regs=64).replace("ptxas info", "ptxas-blackwell info")
    assert offline.parse_ptxas_log(log) == dict(n_regs=64, stack_frame=1232, spill_stores=2356, spill_loads=2904)
    with pytest.raises(RuntimeError, match="no register / spill lines"):
        offline.parse_ptxas_log("")


def test_spilled_and_tables():
    rows = [
        _row(),
        _row(variant="fp16 x", n_spills=308, stack_frame=1232, spill_stores=8, spill_loads=8),
        _row(variant="bf16 x", error="CompilationError: at 3:4\nmore"),
        _row(variant="fp32 y", driver_n_regs=100, driver_n_spills=2),
    ]
    assert [r["variant"] for r in offline.spilled(rows)] == ["fp16 x", "bf16 x", "fp32 y"]
    table = offline.markdown_table(rows)
    assert "| cross_entropy | fp32 x | 16384 | 16 | sm_90 | 100 | 0 | 0/0 | 64 |" in table
    assert "FAILED: CompilationError: at 3:4 |" in table and "driver spills" in table
    (line,) = offline.summary_lines(rows)
    assert (
        line.startswith("triton cross_entropy sm_90: 3/4 variants compiled; registers 100..100") and "3 spill" in line
    )


@pytest.mark.parametrize("kernel", offline.KERNELS)
def test_variants_take_every_branch(kernel):
    """At the default block, every constexpr flag takes both values (with each dtype for the
    cross-entropy), the signature names every argument, and warps are the launcher's."""
    chosen = [v for v in offline.variants(kernel) if v.block == offline.TEST_BLOCKS[kernel][0]]
    names = offline._arg_names(kernel)
    for v in chosen:
        assert list(v.signature) == names
        assert {n for n, t in v.signature.items() if t == "constexpr"} == set(v.constexprs)
    flags = {k for v in chosen for k, value in v.constexprs.items() if isinstance(value, bool)}
    if kernel == "cross_entropy":
        groups = [[v for v in chosen if v.signature["logits_ptr"] == t] for t in ("*fp32", "*fp16", "*bf16")]
    elif kernel in ("ngrams", "token_loss_tracker"):
        groups = [chosen]
    else:
        groups = [chosen]
        if kernel == "masking":
            assert {(v.constexprs["STRATEGY"], v.constexprs["EXACT"]) for v in chosen} == set(
                itertools.product((0, 1, 2), (False, True))
            )
        elif kernel == "infilling":
            assert {v.constexprs["REPLACE_LENGTH"] for v in chosen} == {-1, 0, 1}
        assert {v.signature["ids_ptr"] for v in chosen} == {"*i32", "*i64"}
    for group in groups:
        for flag in flags:
            assert {v.constexprs[flag] for v in group} == {False, True}, flag
    assert len({v.key for v in offline.variants(kernel)}) == len(offline.variants(kernel))


def test_cross_entropy_branches_are_the_callers():
    """The branch sets are those the callers pass (fastmask.cross_entropy / fused head)."""
    from fastmask.kernels.offline import _CE_BRANCHES

    used = {
        (rows, grad, at_row, scale)
        for rows, grad, at_row, scale in [
            (True, True, False, False),  # masked_cross_entropy: compact gradient
            (True, False, False, False),  # masked_cross_entropy without grad
            (True, True, True, False),  # in-place backward
            (False, True, True, True),  # fused head, backward with grad_output per row
            (False, True, True, False),  # fused head, backward
            (False, False, False, False),  # fused head, loss only
        ]
    }
    for _, flags in _CE_BRANCHES:
        key = (flags["HAS_ROWS"], flags["HAS_GRAD"], flags["GRAD_AT_ROW"], flags["HAS_ROW_SCALE"])
        assert key in used


def test_block_lists():
    """The tests compile no known-spill block; the report compiles the tests' blocks and more."""
    for kernel in offline.KERNELS:
        assert not set(offline.TEST_BLOCKS[kernel]) & set(offline.KNOWN_SPILLS.get(kernel, ()))
        assert offline.REPORT_BLOCKS[kernel][: len(offline.TEST_BLOCKS[kernel])] == offline.TEST_BLOCKS[kernel]
    assert offline.known_spill(_row(kernel="masking", block=8192)) and not offline.known_spill(_row())
    rows = [_row(), _row(kernel="masking", block=8192, n_spills=38, spill_stores=148)]
    assert offline.spilled(rows) == rows[1:] and offline.spilled(rows, known=False) == []


def test_variants_reject_an_unknown_kernel():
    with pytest.raises(ValueError, match="is not one of"):
        offline.variants("softmax")
