"""The mask stream of fastmask's collators: seed, epoch, step and row keys, shared with
DataLoader workers and resumable.

**Masks are dynamic and reproducible.** A mask is a pure function of ``(seed, epoch, row key,
position)``. Row keys default to a running example counter mixed with the DataLoader worker id
and the distributed rank, so workers and ranks draw different masks, and every pass over a
DataLoader draws new masks — with 0 or N workers, persistent or not, ``seed=None`` or an int:
the counters live in shared memory (``multiprocessing.RawArray``) that workers inherit, so a
worker of the next epoch continues where its predecessor stopped. With an int ``seed`` a run is
reproducible given the same order of batches (for a shuffled loader: the same
``torch.manual_seed`` before it is built, which ``Trainer``'s ``set_seed`` does);
``seed=None`` draws the seed from torch's global RNG on first use (in a worker: from the
loader's base seed), so ``torch.manual_seed`` makes that reproducible too. Which masks an
example gets depends on which process collates it, and so on ``num_workers``.

``row_key_column="idx"`` takes the keys from a feature column instead: an example gets the same
mask wherever it lands, whatever the number of workers or the batch size, and its mask changes
only with ``set_epoch(e)`` (:class:`MaskingScheduleCallback` calls it at every epoch under
``Trainer``; in a plain loop call it yourself). Without that, every epoch repeats the first
epoch's masks — static masking — and the collator warns once when it sees a key come round
again in the same epoch (it can see that with ``num_workers=0`` or persistent workers).

``state_dict()`` / ``load_state_dict()`` save and restore the stream's position (seed, epoch,
step, and the example counter of the main process and of every worker); see
:meth:`~_MaskStream.load_state_dict` for when resuming with workers is exact.

**Step and epoch across DataLoader workers.** ``set_step`` / ``set_epoch`` write the same
shared memory, which workers read on every batch, also with ``persistent_workers=True``. A
batch sees the step current when it is collated: workers prefetch up to ``num_workers *
prefetch_factor`` batches (and accelerate's loader, used by ``Trainer``, one), so a scheduled
rate lags by that look-ahead, and with workers the lag depends on timing (use
``num_workers=0`` when scheduled masks must be reproducible). Pickling the collator outside a
worker start-up (``copy.deepcopy``, ``pickle``, ``datasets.map``) gives the copy a shared block
of its own with the current values.

**Live inputs.** The rates a collator names in ``LIVE_RATES`` (``mlm_probability``; the
source-noise, augmentation and text-infilling rates) may be a number, a schedule of the step
(any callable, e.g. :class:`fastmask.MaskingSchedule`) or a live controller
(:class:`fastmask.AdaptiveRate`, whose value the main process publishes to shared memory):
:meth:`~MaskStream.current_rates` reads them per batch at the current step, so DataLoader workers
see a controller's updates after the prefetch lag above. Every live input (those rates, and the
LM collator's ``token_weights`` tracker) with a ``state_dict`` is saved and restored with the
stream's state.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import warnings
from collections.abc import Mapping
from multiprocessing.context import get_spawning_popen

import numpy as np
import torch

from . import _rng
from ._validation import check_int
from .schedules import is_schedule, probability_at

__all__ = ["MaskStream"]

_MASK64 = (1 << 64) - 1
_EPOCH_MIX = 0x9E3779B97F4A7C15
_COUNTER_BITS = 40
_MAX_WORKER_SLOTS = 1 << 11  # worker id + 1 (0 = the main process)
_MAX_RANKS = 1 << 13
_MAX_INT64 = (1 << 63) - 1
_MAX_TRACKED_KEYS = 1 << 22  # keys remembered per epoch to notice repeats (then no more checks)
# the shared stream block: a header, then one example counter per worker slot
_STEP, _EPOCH, _SEED_IS_SET, _SEED, _HEADER = 0, 1, 2, 3, 4
_STATE_FORMAT = "fastmask.collator/2"
_STATE_FORMATS = ("fastmask.collator/1", _STATE_FORMAT)


def _worker_slot() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id + 1


def _rank() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


class MaskStream:
    """Seed, epoch, step and example counters shared by fastmask's collators (module docstring).

    The state lives in one small block of shared memory (``multiprocessing.RawArray``) made when
    the collator is built: ``[step, epoch, seed_is_set, seed, examples of slot 0, 1, ...]``, a
    slot per process that collates (0: the main process, ``k + 1``: DataLoader worker ``k``).
    DataLoader workers inherit it (fork) or receive it (spawn), so every worker continues its own
    counter across epochs — with persistent workers or not — and the main process can report and
    restore the true position of the stream.

    ``LIVE_RATES``: the collator's fields that may hold a schedule or a live rate (module
    docstring); ``LIVE_INPUTS``: every field whose live value's state rides in :meth:`state_dict`.
    """

    LIVE_RATES: tuple = ()
    LIVE_INPUTS: tuple = ()

    # -- live rates
    def current_rates(self, step: int | None = None) -> dict:
        """``{name: float}`` for every field of ``LIVE_RATES``: a number as it is, a schedule or an
        :class:`fastmask.AdaptiveRate` evaluated at ``step`` (default: :attr:`step`), each checked
        to lie in [0, 1]. Read once per batch."""
        step = self.step if step is None else step
        return {name: probability_at(getattr(self, name), step, name) for name in self.LIVE_RATES}

    def may_be_positive(self, name: str) -> bool:
        """Whether the rate field ``name`` can be above 0 in some batch: a positive number, or any
        schedule / live rate (its value may change)."""
        value = getattr(self, name)
        return is_schedule(value) or value > 0

    def live_inputs(self) -> dict:
        """``{name: value}`` of the fields of ``LIVE_INPUTS`` holding a live input with a state
        (an :class:`fastmask.AdaptiveRate`, a :class:`fastmask.TokenLossTracker`)."""
        out = {}
        for name in self.LIVE_INPUTS:
            value = getattr(self, name, None)
            if not isinstance(value, torch.Tensor) and callable(getattr(value, "state_dict", None)):
                out[name] = value
        return out

    def _init_stream(self) -> None:
        self._shared = _new_shared_state()
        self._seen_keys: set = set()
        self._seen_epoch = 0
        self._warned_repeated_keys = False

    # -- seed
    def resolved_seed(self) -> int:
        """The seed in use: ``seed``, or one drawn once when ``seed`` is None.

        The drawn seed comes from torch's global RNG in the main process, or — when a DataLoader
        worker collates first — from the loader's base seed (``get_worker_info().seed - id``,
        itself drawn from torch's global RNG when the loader's iterator was made), so every
        worker agrees on it. Either way ``torch.manual_seed`` makes it reproducible, and it is
        stored in the shared state, so later workers, epochs and :meth:`state_dict` see it.
        """
        if self.seed is not None:
            return check_int("seed", self.seed)
        shared = self._shared
        if not shared[_SEED_IS_SET]:
            info = torch.utils.data.get_worker_info()
            if info is None:
                seed = _rng.draw_seed()
            else:
                mix1, mix2 = _rng.seed_mix(info.seed - info.id)  # the loader's base seed, hashed
                seed = ((mix1 << 32) | mix2) >> 2
            shared[_SEED], shared[_SEED_IS_SET] = seed, 1
        return int(shared[_SEED])

    def _effective_seed(self) -> int:
        return (self.resolved_seed() & _MASK64) ^ ((self.epoch * _EPOCH_MIX) & _MASK64)

    # -- step / epoch
    @property
    def step(self) -> int:
        """The step last given to :meth:`set_step` (shared with DataLoader workers)."""
        return int(self._shared[_STEP])

    @property
    def epoch(self) -> int:
        """The epoch last given to :meth:`set_epoch` (shared with DataLoader workers)."""
        return int(self._shared[_EPOCH])

    def share_state(self):
        """Kept for compatibility: the state is always shared with DataLoader workers. Returns ``self``."""
        return self

    def set_step(self, step: int) -> None:
        """Set the training step (drives a scheduled ``mlm_probability``)."""
        self._shared[_STEP] = check_int("step", step, minimum=0, maximum=_MAX_INT64)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch: every mask changes with it, reproducibly (dynamic masking)."""
        self._shared[_EPOCH] = check_int("epoch", epoch, minimum=0, maximum=_MAX_INT64)

    # -- row keys
    def _batch_row_keys(self, key_values, batch: int) -> torch.Tensor:
        """A batch's ``[batch]`` int64 row keys: from its ``row_key_column`` values, or the
        stream's next default keys when ``key_values`` is None."""
        return self._next_row_keys(batch) if key_values is None else self._column_row_keys(key_values, batch)

    def _next_row_keys(self, batch: int) -> torch.Tensor:
        slot, rank = _worker_slot(), _rank()
        if slot >= _MAX_WORKER_SLOTS or rank >= _MAX_RANKS:
            raise ValueError(
                f"default row keys support {_MAX_WORKER_SLOTS - 1} DataLoader workers and {_MAX_RANKS} ranks "
                f"(got worker slot {slot}, rank {rank}); pass row_key_column= to key rows by a dataset column"
            )
        stream = rank * _MAX_WORKER_SLOTS + slot
        start = self._advance(slot, batch) & ((1 << _COUNTER_BITS) - 1)
        # numpy: a few small torch ops cost more than the whole key computation
        keys = (np.arange(start, start + batch, dtype=np.int64)) & ((1 << _COUNTER_BITS) - 1)
        # stream < 2**24, so the key stays below 2**64; fold it into int64's range.
        offset = stream << _COUNTER_BITS
        if offset >= 1 << 63:
            offset -= 1 << 64
        return torch.from_numpy(keys + np.int64(offset))

    def _advance(self, slot: int, batch: int) -> int:
        """Counts ``batch`` examples in ``slot``'s counter; returns the count before them."""
        index = _HEADER + min(slot, _MAX_WORKER_SLOTS - 1)
        start = int(self._shared[index])
        self._shared[index] = start + batch
        return start

    def _column_row_keys(self, values, batch: int) -> torch.Tensor:
        if isinstance(values, (list, np.ndarray)):
            array = np.asarray(values)
            if array.dtype.kind not in "iu":
                raise TypeError(f"row_key_column {self.row_key_column!r} must hold integers, got {array.dtype} values")
            try:
                values = array.astype(np.int64)
            except (TypeError, ValueError, OverflowError):
                raise TypeError(f"row_key_column {self.row_key_column!r} must hold integers") from None
        keys = torch.as_tensor(values)
        if keys.dtype.is_floating_point or keys.dtype == torch.bool or keys.dtype.is_complex or keys.numel() != batch:
            raise TypeError(
                f"row_key_column {self.row_key_column!r} must hold one integer per example, got {keys.dtype} "
                f"with {keys.numel()} values for {batch} examples"
            )
        keys = keys.reshape(-1).to(torch.int64)
        self._advance(_worker_slot(), batch)
        self._check_repeated_keys(keys)
        return keys

    def _check_repeated_keys(self, keys: torch.Tensor) -> None:
        """Warns once when a key comes round again in the same epoch of this process: its row
        then gets the very mask it had before (masks are a function of seed, epoch and key)."""
        if self._warned_repeated_keys:
            return
        epoch = self.epoch
        if epoch != self._seen_epoch:
            self._seen_keys, self._seen_epoch = set(), epoch
        if len(self._seen_keys) >= _MAX_TRACKED_KEYS:
            return
        values = keys.tolist()
        repeated = not self._seen_keys.isdisjoint(values) or len(set(values)) < len(values)
        self._seen_keys.update(values)
        if repeated:
            self._warned_repeated_keys = True
            warnings.warn(
                f"row_key_column={self.row_key_column!r}: a key came round again in epoch {epoch}, and a row's mask "
                "is a function of (seed, epoch, key), so it gets the same mask as before. Call collator.set_epoch(e) "
                "at the start of every epoch (MaskingScheduleCallback does under Trainer) for new masks each epoch, "
                "or drop row_key_column for a running example counter.",
                RuntimeWarning,
                stacklevel=4,
            )

    # -- state
    def state_dict(self) -> dict:
        """The position of the mask stream: seed, epoch, step and every process's example counter.

        ``examples`` counts the rows collated in the main process, ``worker_examples[k]`` those of
        DataLoader worker ``k`` (the counters live in shared memory, so they include batches a
        worker prefetched but the training loop has not consumed yet).
        """
        counters = [int(v) for v in self._shared[_HEADER:]]
        while len(counters) > 1 and counters[-1] == 0:
            counters.pop()
        state = {
            "format": _STATE_FORMAT,
            "seed": self.resolved_seed(),
            "epoch": self.epoch,
            "step": self.step,
            "examples": counters[0],
            "worker_examples": counters[1:],
        }
        for name, value in self.live_inputs().items():
            state[name] = value.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` (e.g. after loading a checkpoint).

        Resuming is exact — the masks an uninterrupted run would have drawn — when the resumed
        loader hands the same batches to the same processes: always with ``num_workers=0``, and
        with workers when resuming at an epoch boundary. Resuming mid-epoch with workers (a
        loader that skips the consumed batches deals the rest to workers from worker 0 again,
        and counters include prefetched batches) gives fresh, reproducible masks that differ
        from the uninterrupted run's.
        """
        if not isinstance(state, Mapping) or state.get("format") not in _STATE_FORMATS:
            raise ValueError(
                f"not a fastmask collator state (expected a dict from state_dict() with format {_STATE_FORMAT!r}); "
                f"got {type(state).__name__}"
            )
        missing = [k for k in ("seed", "epoch", "step", "examples") if k not in state]
        if missing:
            raise ValueError(f"collator state is missing {missing}; pass the whole dict that state_dict() returned")
        seed = check_int("state['seed']", state["seed"], minimum=0, maximum=_MAX_INT64)
        if self.seed is not None and int(self.seed) != seed:
            raise ValueError(
                f"state was saved with seed={seed} but this collator has seed={self.seed}; "
                "construct it with the same seed (or seed=None to adopt the saved one)"
            )
        counters = [check_int("state['examples']", state["examples"], minimum=0, maximum=_MAX_INT64)]
        workers = state.get("worker_examples", [])
        if not isinstance(workers, (list, tuple)) or len(workers) >= _MAX_WORKER_SLOTS:
            raise ValueError(f"state['worker_examples'] must be a list of at most {_MAX_WORKER_SLOTS - 1} counts")
        counters += [
            check_int(f"state['worker_examples'][{k}]", v, minimum=0, maximum=_MAX_INT64) for k, v in enumerate(workers)
        ]
        step = check_int("state['step']", state["step"], minimum=0, maximum=_MAX_INT64)
        epoch = check_int("state['epoch']", state["epoch"], minimum=0, maximum=_MAX_INT64)
        live = self.live_inputs()
        for name in self.LIVE_INPUTS:
            if name in state and name not in live:
                raise ValueError(
                    f"state holds a live {name} state but this collator's {name} is "
                    f"{type(getattr(self, name, None)).__name__}; construct it with the same kind of {name}"
                )
        shared = self._shared
        shared[_STEP], shared[_EPOCH], shared[_SEED], shared[_SEED_IS_SET] = step, epoch, seed, 1
        shared[_HEADER:] = counters + [0] * (_MAX_WORKER_SLOTS - len(counters))
        for name, value in live.items():
            if name in state:
                value.load_state_dict(state[name])

    # -- pickling: the shared block travels to processes being started (DataLoader workers under
    # spawn); any other copy (deepcopy, pickle, datasets.map) gets a block of its own.
    def __getstate__(self):
        state = self.__dict__.copy()
        if get_spawning_popen() is None:
            state["_shared"] = list(self._shared)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self._shared, list):
            self._shared = _new_shared_state(self._shared)


def _new_shared_state(values=None):
    shared = multiprocessing.RawArray(ctypes.c_int64, _HEADER + _MAX_WORKER_SLOTS)
    if values is not None:
        shared[:] = values
    return shared
