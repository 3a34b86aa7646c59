"""``OpPlan``: what every op's contract object shares (``MaskingPlan``, ``SpanCorruptionPlan``,
``CompletionPlan``).

A plan is a frozen dataclass of tensor fields (annotated ``torch.Tensor`` or
``Optional[torch.Tensor]``) and int / bool scalar fields. It travels through the op's
``torch.library`` custom op as two lists (tensors, ints) and reaches the C++ binding as one dict
of numpy buffers and ints by field name, which the binding reads with ``plan_field`` /
``plan_int`` (``csrc/checks.h``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

_TENSOR_TYPES = ("torch.Tensor", "Optional[torch.Tensor]")


def op_plan(cls):
    """Class decorator: ``cls`` (a subclass of :class:`OpPlan`) as a frozen dataclass, with its
    tensor, scalar and bool field names recorded once (plain class attributes, which
    ``torch.compile`` traces)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    cls._tensor_fields = tuple(f.name for f in fields if f.type in _TENSOR_TYPES)
    cls._scalar_fields = tuple(f.name for f in fields if f.type not in _TENSOR_TYPES)
    cls._bool_fields = frozenset(f.name for f in fields if f.type == "bool")
    return cls


class OpPlan:
    """Base of the plans made with :func:`op_plan` (see the module docstring)."""

    _tensor_fields: tuple = ()
    _scalar_fields: tuple = ()
    _bool_fields: frozenset = frozenset()

    def buffers(self) -> dict[str, Optional[torch.Tensor]]:
        """The tensor fields by name, in declaration order."""
        return {name: getattr(self, name) for name in self._tensor_fields}

    def scalars(self) -> dict[str, int]:
        """The scalar fields by name (bools as 0/1), in declaration order."""
        return {name: int(getattr(self, name)) for name in self._scalar_fields}

    def to_op_args(self) -> tuple[list[Optional[torch.Tensor]], list[int]]:
        """The plan as a custom op's arguments: ``(tensors, ints)``."""
        return list(self.buffers().values()), list(self.scalars().values())

    @classmethod
    def from_op_args(cls, buffers: list, scalars: list):
        """The plan back from :meth:`to_op_args`' lists."""
        values = dict(zip(cls._tensor_fields, buffers))
        values.update(
            (name, bool(v) if name in cls._bool_fields else v) for name, v in zip(cls._scalar_fields, scalars)
        )
        return cls(**values)

    def cpp_fields(self, names: Optional[tuple] = None) -> dict:
        """The dict a C++ binding takes: numpy views of the (CPU) tensors, bool as uint8, and ints;
        only the fields in ``names`` when given (a binding that reads a few skips converting the rest)."""
        fields = {}
        for name in self._tensor_fields if names is None else names:
            if name in self._tensor_fields:
                t = getattr(self, name)
                fields[name] = None if t is None else (t.view(torch.uint8) if t.dtype == torch.bool else t).numpy()
            else:
                fields[name] = int(getattr(self, name))
        if names is None:
            fields.update(self.scalars())
        return fields
