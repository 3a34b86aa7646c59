"""The masking op: every backend equals the reference bit for bit on ``sample_inputs``."""
from __future__ import annotations

import pytest
import torch

import fastmask
from fastmask import _backend
from masking_samples import sample_inputs

SAMPLES = list(sample_inputs())


def _available(backend: str) -> bool:
    return _backend.unavailable_reason(backend, torch.device("cpu")) is None


@pytest.mark.parametrize("backend", ["cpp", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("name,kwargs", SAMPLES, ids=[name for name, _ in SAMPLES])
def test_backend_matches_reference(backend, name, kwargs):
    if not _available(backend):
        pytest.skip(_backend.unavailable_reason(backend, torch.device("cpu")))
    before = kwargs["input_ids"].clone()
    expected_ids, expected_labels = fastmask.mask_tokens(**kwargs, backend="reference")
    got_ids, got_labels = fastmask.mask_tokens(**kwargs, backend=backend)
    assert torch.equal(kwargs["input_ids"], before), "input_ids was modified"
    assert got_ids.dtype == kwargs["input_ids"].dtype and got_labels.dtype == torch.int64
    assert torch.equal(got_labels, expected_labels), f"{backend} labels differ from the reference"
    assert torch.equal(got_ids, expected_ids), f"{backend} masked ids differ from the reference"
