"""Global normalisation of the masked-LM loss under ``torch.distributed``.

With ``global_normalization=True`` the mean loss of rank ``r`` is
``world_size * sum_{i in r} loss_i / global_count``, where ``global_count`` is the number of
labelled tokens summed over all ranks. DDP averages gradients over ranks, so the result is
exactly the gradient of ``sum_{all i} loss_i / global_count``: single-process training on the
concatenated batch, however unevenly the masked tokens fall on the ranks. The mean of the
per-rank loss values over ranks equals the global mean loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_initialized", "global_normalizer"]


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def global_normalizer(local_count: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(global count of labelled tokens, world size)``; ``(local_count, 1)`` outside torch.distributed.

    ``local_count`` is a 0-dim integer tensor on the device the process group communicates on.
    """
    if not is_initialized():
        return local_count, 1
    total = local_count.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total, dist.get_world_size()
