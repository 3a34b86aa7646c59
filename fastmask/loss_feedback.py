"""Per-token feedback from the loss ops, taken from the kernels' own forward pass.

``masked_cross_entropy(..., feedback=obj)`` and ``fused_masked_lm_loss(..., feedback=obj)`` call
``obj.update(labels, losses, correct)`` once per forward, after the loss is computed, with one
entry per labelled position (row-major order of ``labels``, ignored positions left out):

- ``labels``: ``[M]`` int64 label ids;
- ``losses``: ``[M]`` fp32 (fp64 for fp64 inputs), detached: the **plain cross-entropy of the
  label**, ``logsumexp(x) - x_label``, before any reduction, ``num_items_in_batch`` / global
  scaling, label smoothing or z-loss (with ``label_smoothing = z_loss = 0`` it equals the loss
  of ``reduction="none"``);
- ``correct``: ``[M]`` bool, ``x_label == max_j x_j`` in fp32 (ties count as correct).

The kernels (reference, C++, Triton) write ``losses`` and ``correct`` in the pass that already
holds the row max and the label's logit: no second pass over the logits. ``correct`` is
bit-identical across backends for fp32 logits. Any object with that ``update`` method works:
a :class:`fastmask.TokenLossTracker`, or :class:`LossFeedback` below.

Under ``torch.compile`` the ``update`` call runs eagerly (``torch.compiler.disable``), so a
compiled function that passes ``feedback`` has a graph break there (``fullgraph=True`` raises);
the loss op itself stays in the graph.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["LossFeedback"]


class LossFeedback:
    """Keeps the feedback of the latest forward (``labels``, ``losses``, ``correct``), and running
    totals (``count``, ``loss_sum``, ``correct_sum``) over all forwards since :meth:`reset`."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.labels: Optional[torch.Tensor] = None
        self.losses: Optional[torch.Tensor] = None
        self.correct: Optional[torch.Tensor] = None
        self.count = 0
        self.loss_sum = 0.0
        self.correct_sum = 0

    def update(self, labels: torch.Tensor, losses: torch.Tensor, correct: torch.Tensor) -> None:
        """Record one forward's ``[M]`` labels, losses and correct bits."""
        self.labels, self.losses, self.correct = labels, losses, correct
        self.count += int(labels.numel())
        self.loss_sum += float(losses.sum(dtype=torch.float64))
        self.correct_sum += int(correct.sum())

    @property
    def mean_loss(self) -> Optional[float]:
        """Mean plain cross-entropy over every position seen since :meth:`reset` (None: none)."""
        return self.loss_sum / self.count if self.count else None

    @property
    def accuracy(self) -> Optional[float]:
        """Fraction of positions whose label was the argmax (None: none seen)."""
        return self.correct_sum / self.count if self.count else None


def check_feedback(feedback) -> None:
    """``feedback`` is None or has a callable ``update(labels, losses, correct)``."""
    if feedback is not None and not callable(getattr(feedback, "update", None)):
        raise TypeError(
            f"feedback must have an update(labels, losses, correct) method (e.g. a fastmask.TokenLossTracker "
            f"or fastmask.LossFeedback), got {type(feedback).__name__}"
        )


@torch.compiler.disable
def deliver_feedback(feedback, flat_labels: torch.Tensor, ignore_index: int, losses, correct) -> None:
    """``feedback.update`` with the labelled entries of 1-D ``flat_labels`` (the order of the
    kernels' rows) and the kernels' ``[M]`` feedback outputs; runs eagerly under torch.compile."""
    labels = flat_labels[flat_labels != ignore_index]
    feedback.update(labels, losses.detach(), correct.detach().bool())
