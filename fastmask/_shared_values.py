"""Values the main process writes and DataLoader workers read: :class:`SharedArray`.

A ``multiprocessing.RawArray`` made in the main process, like the mask stream's block
(:mod:`fastmask.mask_stream`): workers inherit it (fork) or receive it while being started
(spawn) and so see every later write; any other copy (``copy.deepcopy``, ``pickle``,
``datasets.map``) gets a block of its own holding the current values.

:class:`SharedArray` adds a version counter written around each update (a sequence lock): a
reader that sees the counter odd, or changed while it copied, copies again, so a reader never
returns a half-written array.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from multiprocessing.context import get_spawning_popen

import numpy as np

__all__ = ["SharedArray"]

_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


class SharedArray:
    """A 1-D float array in shared memory with a version counter (see the module docstring)."""

    def __init__(self, values: np.ndarray):
        values = np.ascontiguousarray(values)
        self._dtype = values.dtype
        self._raw = multiprocessing.RawArray(_CTYPES[values.dtype], max(values.size, 1))
        self._version = multiprocessing.RawArray(ctypes.c_int64, 1)
        self._size = values.size
        self._view()[:] = values

    def _view(self) -> np.ndarray:
        return np.frombuffer(self._raw, dtype=self._dtype, count=self._size)

    @property
    def version(self) -> int:
        """Even between writes; bumped by 2 per :meth:`write`."""
        return int(self._version[0])

    def write(self, values: np.ndarray) -> None:
        """Replace the values (in the process that owns the data: the main process)."""
        self._version[0] += 1  # odd: a write is under way
        self._view()[:] = values
        self._version[0] += 1

    def read(self) -> tuple[np.ndarray, int]:
        """``(a copy of the values, the version it holds)``."""
        while True:
            before = self.version
            if before % 2 == 0:
                values = self._view().copy()
                if self.version == before:
                    return values, before

    def __getstate__(self):
        state = self.__dict__.copy()
        if get_spawning_popen() is None:  # not starting a worker: a copy of its own
            state["_raw"] = self._view().copy()
            state["_version"] = self.version
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self._raw, np.ndarray):
            values, version = self._raw, self._version
            self._raw = multiprocessing.RawArray(_CTYPES[self._dtype], max(self._size, 1))
            self._version = multiprocessing.RawArray(ctypes.c_int64, 1)
            self._view()[:] = values
            self._version[0] = version
