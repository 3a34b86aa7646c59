"""Loss-aware token weights: :class:`TokenLossTracker`, a running loss / accuracy per vocabulary
id (or per group of ids) fed by the model's per-token feedback.

The tracker's ``update(labels, losses, correct)`` is a scatter op with three implementations
that return the same integer sums (:func:`plan_tracker_update` validates, :func:`run_tracker_update`
dispatches): the pure-torch reference (:mod:`fastmask.reference.token_loss_tracker`), the C++
kernel (``csrc/token_loss_tracker.cpp``) and the Triton kernel
(:mod:`fastmask.kernels.token_loss_tracker`).

**How a batch updates the state (sum, then EMA).** The batch's labelled positions are summed
per group ``g``: ``n_g`` positions, ``c_g`` correct, and the losses as fixed-point integers
(``trunc(loss * 2**20)``, so the sums are exact and independent of the order, hence identical
on every backend). A group present in the batch (``n_g > 0``) then moves its running values
toward the batch means ``L_g = loss_sum_g / n_g`` and ``A_g = c_g / n_g`` — once per update,
however many times it occurs — ``ema = decay * ema + (1 - decay) * mean`` (float64), and the
first batch that holds a group sets ``ema = mean``. Groups absent from a batch keep their
values. ``count_ema`` (every group, every update) tracks ``n_g``; ``counts`` is the lifetime
count.

**Weights.** :meth:`TokenLossTracker.token_weights` gives each id
``clamp((L_g / L_ref) ** (1 / temperature), floor, ceiling)`` where ``L_ref`` is the
``count_ema``-weighted mean running loss of the seen groups: an id as hard as the average gets
1, twice as hard (with ``temperature=1``) 2; ids of unseen groups get 1 (neutral). The masking
op renormalises weights per row, so they move positions, not the budget. Special tokens are
never masked, so their weights do not matter.

**Live weights in DataLoader workers.** Pass the tracker itself as a collator's
``token_weights``: each :meth:`~TokenLossTracker.update` in the main process publishes the
weights to shared memory, which the collator reads per batch (see
:class:`fastmask.DataCollatorForLanguageModeling` for the prefetch lag).

**Cost.** The scatter and the EMA step are O(N + G); computing ``last_loss`` /
``last_accuracy``, the value checks (``check=True``) and publishing the weights read values on
the host, so on a GPU an update synchronises with the device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch

from . import _backend
from ._shared_values import SharedArray
from ._validation import check_int, check_tensor
from .masking import quantize_token_weights, remember_quantized_weights
from .reference.token_loss_tracker import reference_tracker_update
from .tracker_update_plan import (
    LOSS_FIXED_POINT_BITS,
    MAX_TRACKED_LOSS,
    MAX_UPDATE_POSITIONS,
    TrackerUpdatePlan,
)

__all__ = [
    "TokenLossTracker",
    "frequency_buckets",
    "FREQUENCY_BUCKET_NAMES",
    "plan_tracker_update",
    "run_tracker_update",
]

FREQUENCY_BUCKET_NAMES = ("rare", "mid", "frequent")
_STATE_FORMAT = "fastmask.token_loss_tracker/1"
_LABEL_DTYPES = (torch.int32, torch.int64)
_LOSS_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------- backends
def _cpp_impl(plan: TrackerUpdatePlan) -> torch.Tensor:
    sums = torch.empty((3, plan.num_groups), dtype=torch.int64)
    _backend.cpp_kernels().tracker_update(plan.cpp_fields(), sums.numpy())
    return sums


def _tracker_update_fake(plan: TrackerUpdatePlan) -> torch.Tensor:
    return plan.labels.new_empty((3, plan.num_groups))


_TRACKER_UPDATE = _backend.PlanOp(
    "tracker_update",
    TrackerUpdatePlan,
    _tracker_update_fake,
    reference=reference_tracker_update,
    cpp=_cpp_impl,
    triton=("token_loss_tracker", "triton_tracker_update"),
    on="labels",
    row_length=lambda plan: plan.labels.numel(),
    returns=torch.Tensor,
)


def run_tracker_update(plan: TrackerUpdatePlan, backend: str = "auto") -> torch.Tensor:
    """int64 ``[3, num_groups]`` sums (fixed-point loss, correct, count) of a plan, on ``backend``."""
    return _TRACKER_UPDATE(plan, backend)


def plan_tracker_update(
    labels: torch.Tensor,
    losses: torch.Tensor,
    correct: Optional[torch.Tensor] = None,
    *,
    vocab_size: int,
    groups: Optional[torch.Tensor] = None,
    num_groups: Optional[int] = None,
    ignore_index: int = -100,
    check: bool = True,
) -> TrackerUpdatePlan:
    """Validate one batch of feedback into a :class:`TrackerUpdatePlan`.

    ``labels``: int ids (any shape), ``ignore_index`` where unlabelled; ``losses``: the same
    number of floats (per position; read only where labelled); ``correct``: the same number of
    bools (label logit equals the row max) or None. ``check=False`` skips the value checks
    (labels in range, losses finite and in ``[0, 2**16]``), which cost one device sync on a GPU.
    """
    check_tensor("labels", labels, dtypes=_LABEL_DTYPES)
    check_tensor("losses", losses, dtypes=_LOSS_DTYPES)
    n = labels.numel()
    if losses.numel() != n:
        raise ValueError(
            f"losses has {losses.numel()} values but labels has {n}; pass one loss per position "
            "(reduction='none') for the same positions as labels"
        )
    if losses.device != labels.device:
        raise ValueError(f"losses is on {losses.device} but labels on {labels.device}; put both on one device")
    if n > MAX_UPDATE_POSITIONS:
        raise ValueError(f"one update takes at most {MAX_UPDATE_POSITIONS} positions, got {n}; split the batch")
    if correct is not None:
        check_tensor("correct", correct, dtypes=(torch.bool,))
        if correct.numel() != n or correct.device != labels.device:
            raise ValueError(
                f"correct must hold one bool per position of labels ({n}, on {labels.device}), "
                f"got {correct.numel()} on {correct.device}"
            )
        correct = correct.reshape(-1).contiguous()
    labels = labels.reshape(-1).to(torch.int64).contiguous()
    losses = losses.detach().reshape(-1).to(torch.float32).contiguous()
    if check and n:
        keep = labels != ignore_index
        bad_label = keep & ((labels < 0) | (labels >= vocab_size))
        bad_loss = keep & ~((losses >= 0) & (losses <= MAX_TRACKED_LOSS))  # NaN fails both
        any_bad_label, any_bad_loss = torch.stack([bad_label.any(), bad_loss.any()]).tolist()
        if any_bad_label:
            i = int(bad_label.nonzero()[0, 0])
            raise ValueError(
                f"labels[{i}] = {int(labels[i])} is outside [0, {vocab_size}) and is not ignore_index={ignore_index}; "
                "pass the labels the loss saw (ids of this vocabulary, ignore_index elsewhere)"
            )
        if any_bad_loss:
            i = int(bad_loss.nonzero()[0, 0])
            raise ValueError(
                f"losses[{i}] = {float(losses[i])} at a labelled position is not a loss in [0, {MAX_TRACKED_LOSS:g}] "
                "(negative, NaN, inf or huge); pass per-token cross-entropy values (reduction='none')"
            )
    return TrackerUpdatePlan(
        labels=labels,
        losses=losses,
        correct=correct,
        groups=None if groups is None else groups.to(labels.device),
        vocab_size=vocab_size,
        num_groups=vocab_size if num_groups is None else num_groups,
        ignore_index=ignore_index,
    )


# ----------------------------------------------------------------------------- groups
def frequency_buckets(counts, num_buckets: int = 3) -> torch.Tensor:
    """int64 ``[V]`` frequency buckets of ids from their counts
    (:func:`fastmask.count_token_frequencies`): 0 = rarest, ``num_buckets - 1`` = most frequent.

    Ids are ordered by count (most frequent first, ties by id) and cut where the cumulative count
    crosses each ``k / num_buckets`` of all occurrences, so every bucket holds about the same
    share of the corpus' tokens (with 3 buckets: a few frequent ids, more mid ids, the long tail
    of rare ids; :data:`FREQUENCY_BUCKET_NAMES`). Ids never seen are in bucket 0.
    """
    num_buckets = check_int("num_buckets", num_buckets, minimum=1, maximum=1 << 16)
    values = counts.detach().cpu().numpy() if isinstance(counts, torch.Tensor) else np.asarray(counts)
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iu" or (values < 0).any():
        raise ValueError("counts must be a non-empty 1-D sequence of non-negative integer counts")
    values = values.astype(np.int64)
    order = np.lexsort((np.arange(values.size), -values))  # most frequent first
    total = int(values.sum())
    buckets = np.zeros(values.size, dtype=np.int64)
    if total == 0:
        return torch.from_numpy(buckets)
    before = np.cumsum(values[order]) - values[order]  # occurrences of more frequent ids
    rank_bucket = num_buckets - 1 - np.minimum(before * num_buckets // total, num_buckets - 1)
    buckets[order] = rank_bucket
    buckets[values == 0] = 0
    return torch.from_numpy(buckets)


# ----------------------------------------------------------------------------- the tracker
def _check_positive_float(name: str, value, *, open_unit: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    value = float(value)
    if open_unit and not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value!r} must lie in (0, 1) (e.g. 0.99: each update moves the average by 1%)")
    if not open_unit and value <= 0:
        raise ValueError(f"{name}={value!r} must be > 0")
    return value


class TokenLossTracker:
    """Running loss, accuracy and count per vocabulary id, or per group of ids (module docstring).

    Args:
        vocab_size: ``V``, the number of ids (``len(tokenizer)``).
        groups: optional ``[V]`` ints mapping ids to classes ``0 .. G-1`` (frequency buckets from
            :func:`frequency_buckets`, word classes, ...); the running values are kept per class.
        decay: the EMA's decay per update in ``(0, 1)``.
        temperature, floor, ceiling: the defaults of :meth:`token_weights` (and of the weights
            published to collators).
        ignore_index: the label of unlabelled positions.
        backend: the scatter's backend (``"auto"``, ``"reference"``, ``"cpp"``, ``"triton"``).
        device: where the state lives (default CPU; the feedback may be on any device).

    Attributes (float64 ``[G]`` tensors): ``loss``, ``accuracy``, ``count_ema``; ``counts``
    (int64 ``[G]``), ``seen`` (bool ``[G]``), ``updates`` (int), ``last_loss`` /
    ``last_accuracy`` (the previous batch's means over all its labelled positions, or None).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        groups=None,
        decay: float = 0.99,
        temperature: float = 1.0,
        floor: float = 0.1,
        ceiling: float = 10.0,
        ignore_index: int = -100,
        backend: str = "auto",
        device=None,
    ):
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=1, maximum=1 << 31)
        self.decay = _check_positive_float("decay", decay, open_unit=True)
        self.temperature, self.floor, self.ceiling = self._weight_options(temperature, floor, ceiling)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.backend = _backend.check_backend_name(backend)
        self.device = torch.device("cpu" if device is None else device)
        if groups is not None:
            groups = torch.as_tensor(groups)
            if groups.dim() != 1 or groups.numel() != self.vocab_size:
                raise ValueError(
                    f"groups must be [vocab_size] = [{self.vocab_size}] ints mapping each id to its class, "
                    f"got shape {tuple(groups.shape)}"
                )
            if groups.dtype.is_floating_point or groups.dtype in (torch.bool, torch.complex64, torch.complex128):
                raise TypeError(f"groups must hold integer class ids, got {groups.dtype}")
            if int(groups.min()) < 0:
                raise ValueError(f"groups holds a negative class ({int(groups.min())}); classes are 0 .. G-1")
            groups = groups.to(torch.int64).contiguous()
            self.num_groups = int(groups.max()) + 1
        else:
            self.num_groups = self.vocab_size
        self.groups = groups
        self._reset_state()
        self._shared: Optional[SharedArray] = None
        self._local_weights: Optional[tuple[int, torch.Tensor]] = None

    @staticmethod
    def _weight_options(temperature, floor, ceiling) -> tuple[float, float, float]:
        temperature = _check_positive_float("temperature", temperature)
        floor = _check_positive_float("floor", floor)
        ceiling = _check_positive_float("ceiling", ceiling)
        if not floor <= 1.0 <= ceiling:
            raise ValueError(f"floor={floor} and ceiling={ceiling} must bracket 1 (the weight of an average id)")
        return temperature, floor, ceiling

    def _reset_state(self) -> None:
        G, dev = self.num_groups, self.device
        self.loss = torch.zeros(G, dtype=torch.float64, device=dev)
        self.accuracy = torch.zeros(G, dtype=torch.float64, device=dev)
        self.count_ema = torch.zeros(G, dtype=torch.float64, device=dev)
        self.counts = torch.zeros(G, dtype=torch.int64, device=dev)
        self.seen = torch.zeros(G, dtype=torch.bool, device=dev)
        self._synced_counts = torch.zeros(G, dtype=torch.int64, device=dev)
        self.updates = 0
        self.last_loss: Optional[float] = None
        self.last_accuracy: Optional[float] = None

    # -- feedback
    def update(self, labels: torch.Tensor, losses: torch.Tensor, correct: Optional[torch.Tensor] = None, *, check=True):
        """Add one batch of per-token feedback (shapes and checks: :func:`plan_tracker_update`)."""
        plan = plan_tracker_update(
            labels,
            losses,
            correct,
            vocab_size=self.vocab_size,
            groups=self.groups,
            num_groups=self.num_groups,
            ignore_index=self.ignore_index,
            check=check,
        )
        self.add_sums(run_tracker_update(plan, self.backend), has_correct=correct is not None)

    def add_sums(self, sums: torch.Tensor, *, has_correct: bool = True) -> None:
        """The EMA step from a batch's int64 ``[3, G]`` sums (:func:`run_tracker_update`)."""
        sums = sums.to(self.device)
        n = sums[2].to(torch.float64)
        present = sums[2] > 0
        safe_n = n.clamp_min(1.0)
        mean_loss = sums[0].to(torch.float64) / float(1 << LOSS_FIXED_POINT_BITS) / safe_n
        first = present & ~self.seen
        keep, step = self.decay, 1.0 - self.decay
        self.loss = torch.where(first, mean_loss, torch.where(present, keep * self.loss + step * mean_loss, self.loss))
        if has_correct:
            mean_acc = sums[1].to(torch.float64) / safe_n
            self.accuracy = torch.where(
                first, mean_acc, torch.where(present, keep * self.accuracy + step * mean_acc, self.accuracy)
            )
        self.count_ema = keep * self.count_ema + step * n
        self.counts = self.counts + sums[2]
        self.seen = self.seen | present
        self.updates += 1
        totals = sums.sum(dim=1).tolist()
        if totals[2]:
            self.last_loss = totals[0] / float(1 << LOSS_FIXED_POINT_BITS) / totals[2]
            self.last_accuracy = totals[1] / totals[2] if has_correct else None
        self._publish()

    # -- weights
    def token_weights(
        self, temperature: Optional[float] = None, floor: Optional[float] = None, ceiling: Optional[float] = None
    ) -> torch.Tensor:
        """float32 ``[V]`` masking weights (rule: module docstring); None takes the tracker's defaults."""
        temperature, floor, ceiling = self._weight_options(
            self.temperature if temperature is None else temperature,
            self.floor if floor is None else floor,
            self.ceiling if ceiling is None else ceiling,
        )
        per_group = torch.ones(self.num_groups, dtype=torch.float64, device=self.device)
        if bool(self.seen.any()):
            mass = torch.where(self.seen, self.count_ema, torch.zeros_like(self.count_ema))
            if float(mass.sum()) > 0:
                reference = float((mass * self.loss).sum() / mass.sum())
            else:
                reference = float(self.loss[self.seen].mean())
            if reference > 0:
                ratio = (self.loss / reference).pow(1.0 / temperature).clamp(floor, ceiling)
                per_group = torch.where(self.seen, ratio, per_group)
        weights = per_group if self.groups is None else per_group[self.groups.to(self.device)]
        return weights.to(torch.float32).cpu()

    # -- sharing with DataLoader workers
    def share(self) -> TokenLossTracker:
        """Publish the weights to shared memory from now on (a collator calls this); returns ``self``."""
        if self._shared is None:
            self._shared = SharedArray(self._published_values())
        return self

    def _published_values(self) -> np.ndarray:
        """float32 ``[2V]``: the weights, then their quantised form (integers <= 2**16, exact in
        float32), so readers need not quantise them again."""
        weights = self.token_weights()
        return torch.cat([weights, quantize_token_weights(weights).to(torch.float32)]).numpy()

    def _publish(self) -> None:
        if self._shared is not None:
            self._shared.write(self._published_values())

    def current_token_weights(self) -> torch.Tensor:
        """The weights last published (in any process: the main process or a DataLoader worker).

        A new tensor only when the published version changed, so the masking op's per-tensor table
        cache quantises the weights once per update, not once per batch.
        """
        if self._shared is None:
            self.share()
        version = self._shared.version
        cached = self._local_weights
        if cached is not None and cached[0] == version:
            return cached[1]
        values, version = self._shared.read()
        weights = torch.from_numpy(values[: self.vocab_size])
        remember_quantized_weights(weights, torch.from_numpy(values[self.vocab_size :]).to(torch.int32))
        self._local_weights = (version, weights)
        return weights

    @property
    def published_version(self) -> int:
        """How many times the weights were published (0 before the first update)."""
        return 0 if self._shared is None else self._shared.version // 2

    # -- distributed
    def all_reduce(self, group=None) -> None:
        """Make every rank's state the same: the running loss and accuracy become the
        ``count_ema``-weighted means over ranks (a group seen on no rank stays unseen),
        ``count_ema`` the mean, and ``counts`` add what every rank counted since the last
        all-reduce. Call it on every rank (gloo or NCCL; state on a CUDA device for NCCL)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("all_reduce needs torch.distributed initialised (dist.init_process_group)")
        world = dist.get_world_size(group)
        mass = torch.where(self.seen, self.count_ema, torch.zeros_like(self.count_ema))
        # a seen group with a vanishing count_ema still counts (weight 1e-300 keeps it seen)
        mass = torch.where(self.seen, mass.clamp_min(1e-300), mass)
        packed = torch.stack([mass, mass * self.loss, mass * self.accuracy, self.count_ema])
        dist.all_reduce(packed, group=group)
        delta = self.counts - self._synced_counts
        dist.all_reduce(delta, group=group)
        total_mass = packed[0]
        seen = total_mass > 0
        safe = total_mass.clamp_min(1e-300)
        self.loss = torch.where(seen, packed[1] / safe, self.loss)
        self.accuracy = torch.where(seen, packed[2] / safe, self.accuracy)
        self.count_ema = packed[3] / world
        self.seen = seen
        self.counts = self._synced_counts + delta
        self._synced_counts = self.counts.clone()
        self._publish()

    # -- state
    def state_dict(self) -> dict:
        """The tracker's state (CPU tensors and numbers)."""
        return {
            "format": _STATE_FORMAT,
            "vocab_size": self.vocab_size,
            "num_groups": self.num_groups,
            "decay": self.decay,
            "loss": self.loss.cpu().clone(),
            "accuracy": self.accuracy.cpu().clone(),
            "count_ema": self.count_ema.cpu().clone(),
            "counts": self.counts.cpu().clone(),
            "synced_counts": self._synced_counts.cpu().clone(),
            "seen": self.seen.cpu().clone(),
            "updates": self.updates,
            "last_loss": self.last_loss,
            "last_accuracy": self.last_accuracy,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` (the vocabulary and groups must match); republishes the weights."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"not a TokenLossTracker state (expected a dict from state_dict() with format {_STATE_FORMAT!r})"
            )
        if state["vocab_size"] != self.vocab_size or state["num_groups"] != self.num_groups:
            raise ValueError(
                f"state is for vocab_size={state['vocab_size']}, num_groups={state['num_groups']}; this tracker has "
                f"vocab_size={self.vocab_size}, num_groups={self.num_groups}"
            )
        dev = self.device
        self.loss = torch.as_tensor(state["loss"], dtype=torch.float64).to(dev).clone()
        self.accuracy = torch.as_tensor(state["accuracy"], dtype=torch.float64).to(dev).clone()
        self.count_ema = torch.as_tensor(state["count_ema"], dtype=torch.float64).to(dev).clone()
        self.counts = torch.as_tensor(state["counts"], dtype=torch.int64).to(dev).clone()
        self._synced_counts = torch.as_tensor(state["synced_counts"], dtype=torch.int64).to(dev).clone()
        self.seen = torch.as_tensor(state["seen"], dtype=torch.bool).to(dev).clone()
        for name in ("loss", "accuracy", "count_ema", "counts", "seen"):
            if getattr(self, name).shape != (self.num_groups,):
                raise ValueError(f"state[{name!r}] must have {self.num_groups} values")
        self.updates = int(state["updates"])
        self.last_loss, self.last_accuracy = state.get("last_loss"), state.get("last_accuracy")
        self._publish()

    def __repr__(self) -> str:
        return (
            f"TokenLossTracker(vocab_size={self.vocab_size}, num_groups={self.num_groups}, decay={self.decay}, "
            f"updates={self.updates})"
        )
