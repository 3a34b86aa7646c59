"""completion_mask: the three backends are identical, and equal a direct (loop) statement of TRL's
former DataCollatorForCompletionOnlyLM rule, which the count-based kernels restate."""

from __future__ import annotations

import pytest
import torch
from backends import assert_compiles_offline, require_backend

from fastmask.completion_labels import MISSING_INSTRUCTION, MISSING_RESPONSE, completion_mask

BACKENDS = ("reference", "cpp", "triton")


def loop_rule(row, response, instruction):
    """TRL's rule, written as the loops it was: labels of a row kept (True) or ignored."""
    length = len(row)
    keep = [True] * length

    def hits(template):
        return [p for p in range(length - len(template) + 1) if row[p : p + len(template)] == template]

    ends = [p + len(response) for p in hits(response)]
    if not ends:
        return [False] * length, MISSING_RESPONSE | (
            0 if instruction is None or hits(instruction) else MISSING_INSTRUCTION
        )
    if instruction is None:
        return [p >= ends[0] for p in range(length)], 0
    starts = hits(instruction)
    if not starts:
        return [False] * length, MISSING_INSTRUCTION
    if starts[0] > ends[0]:
        starts = [0] + starts
    for turn, (start, end) in enumerate(zip(starts, ends)):
        for p in range(0 if turn == 0 else start, min(end, length)):
            keep[p] = False
    if len(ends) < len(starts):
        for p in range(starts[-1], length):
            keep[p] = False
    return keep, 0


def check(ids, response, instruction=None, attention=None, backends=None):
    expected = [loop_rule(row, response, instruction) for row in ids.tolist()]
    keep_exp = torch.tensor([k for k, _ in expected], dtype=torch.bool).reshape(ids.shape)
    missing_exp = torch.tensor([m for _, m in expected], dtype=torch.int32)
    if attention is not None:
        keep_exp &= attention.bool()
    for backend in backends or BACKENDS:
        require_backend(backend)
        keep, missing = completion_mask(ids, response, instruction, attention, backend=backend)
        assert keep.dtype == torch.bool and missing.dtype == torch.int32
        assert torch.equal(keep, keep_exp), (backend, ids, keep, keep_exp)
        assert torch.equal(missing, missing_exp), backend


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("multi_turn", [False, True])
def test_backends_equal_the_loop_rule_on_random_rows(seed, multi_turn):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 4, (6, 3 + seed), generator=g)  # a small alphabet: many (overlapping) hits
    response = torch.randint(0, 4, (1 + seed % 3,), generator=g).tolist()
    instruction = torch.randint(0, 4, (1 + seed % 2,), generator=g).tolist() if multi_turn else None
    attention = (torch.rand(ids.shape, generator=g) > 0.2).long()
    check(ids, response, instruction)
    check(ids.to(torch.int32), response, instruction, attention)


def test_hand_cases():
    ids = torch.tensor(
        [
            [9, 7, 5, 6, 1, 2, 3, 0, 0],  # response [5, 6] in the middle
            [5, 6, 1, 2, 3, 4, 4, 4, 4],  # template at the row's start
            [1, 2, 3, 4, 1, 2, 3, 5, 6],  # template ends at the row's end: found, nothing kept
            [1, 2, 3, 4, 1, 2, 3, 4, 1],  # not found
        ]
    )
    check(ids, [5, 6])
    keep, missing = completion_mask(ids, [5, 6], backend="reference")
    assert keep[0].tolist() == [False] * 4 + [True] * 5
    assert missing.tolist() == [0, 0, 0, MISSING_RESPONSE]


def test_multi_turn_hand_case():
    # instruction [8], response [5, 6]: 8 a a 5 6 b b 8 c 5 6 d 8 e
    row = [8, 1, 1, 5, 6, 2, 2, 8, 3, 5, 6, 4, 8, 7]
    ids = torch.tensor([row, row[3:] + [0, 0, 0]])  # second row: starts in a response
    check(ids, [5, 6], [8])
    keep, _ = completion_mask(ids, [5, 6], [8], backend="reference")
    kept = [t for t, k in zip(row, keep[0].tolist()) if k]
    assert kept == [2, 2, 4]  # answers only; the trailing instruction (no response) is masked


def test_bad_templates():
    ids = torch.zeros((2, 4), dtype=torch.long)
    with pytest.raises(ValueError, match="response_ids is empty"):
        completion_mask(ids, [])
    with pytest.raises(ValueError, match="instruction_ids is empty"):
        completion_mask(ids, [1], [])
    with pytest.raises(TypeError):
        completion_mask(ids.float(), [1])
    with pytest.raises(ValueError, match="attention_mask"):
        completion_mask(ids, [1], attention_mask=torch.ones(2, 5))


def test_template_longer_than_rows_is_missing_everywhere():
    check(torch.ones((2, 3), dtype=torch.long), [1, 1, 1, 1], [1, 1, 1, 1, 1])


def test_opcheck_and_torch_compile_fullgraph():
    """The registered op passes opcheck, and completion_mask compiles into a full graph with the
    eager result (templates as lists and as tensors)."""
    from fastmask.completion_labels import _COMPLETION_MASK, CompletionPlan

    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 4, (3, 11), generator=g)
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[1, 8:] = False
    for backend in ("reference", "cpp"):
        require_backend(backend)
        plan = CompletionPlan(ids, torch.tensor([1, 2]), torch.tensor([3]), attention)
        buffers, scalars = plan.to_op_args()
        torch.library.opcheck(
            _COMPLETION_MASK.custom_op,
            (buffers, scalars, backend),
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )

    def step(x, mask):
        keep, missing = completion_mask(x, [1, 2], torch.tensor([3]), mask)
        return keep & (x > 0), missing + 1

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for x, mask in ((ids, attention), (ids.to(torch.int32), attention.long())):
        got, expected = compiled(x, mask), step(x, mask)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert expected[0].any()  # the case keeps labels: the comparison is not of empty masks


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the other tests compile and run the kernel")
def test_triton_kernel_compiles_offline_without_spills():
    """Every variant of the completion-mask kernel (rows up to 1023 tokens) compiles for sm_80 and sm_90
    with 0 spills at the launcher's num_warps (:mod:`fastmask.kernels.offline`)."""
    from fastmask.kernels import offline

    assert_compiles_offline(offline.variants("completion_labels"))
