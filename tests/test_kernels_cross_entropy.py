"""The Triton cross-entropy kernel through the real compiler: every dtype and constexpr branch
its callers use compiles for sm_80 and sm_90 without a GPU, at the launcher's BLOCK_V /
num_warps, with 0 spills. (Its numbers against the reference: tests/test_cross_entropy.py.)"""

from __future__ import annotations

import pytest
import torch
from backends import assert_compiles_offline

pytestmark = pytest.mark.triton

pytest.importorskip("triton")


def test_launcher_defaults():
    """The block and warps of the launcher, which the compile test below compiles."""
    from fastmask.kernels.cross_entropy import MAX_BLOCK_V, block_size, num_warps

    assert [block_size(v) for v in (2, 1000, 2048, 8192, 8193, 30522, 128256)] == [
        16,
        1024,
        2048,
        8192,
        16384,
        16384,
        MAX_BLOCK_V,
    ]
    assert [num_warps(b) for b in (16, 2048, 4096, 8192, 16384)] == [4, 4, 8, 8, 16]


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="a GPU is present: the other tests compile and run the kernel on it, and gpu_check's "
    "kernels step reports its registers and spills for this GPU",
)
def test_kernel_compiles_for_cuda_without_spills():
    from fastmask.kernels import offline
    from fastmask.kernels.cross_entropy import block_size, num_warps

    chosen = offline.variants("cross_entropy")
    assert chosen[0].block == block_size(30522)  # every vocabulary above 8192 classes
    assert all(v.num_warps == num_warps(v.block) for v in chosen)
    default = [v for v in chosen if v.block == chosen[0].block]
    assert {v.signature["logits_ptr"] for v in default} == {"*fp32", "*fp16", "*bf16"}
    assert_compiles_offline(chosen)
