"""fastmask._validation: the shared argument checks and the id / label range helper."""

import numpy as np
import pytest
import torch

from fastmask import _validation
from fastmask._backend import cpp_module
from fastmask._validation import check_int, check_probability, value_range


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16, torch.uint8])
@pytest.mark.parametrize("shape", [(1,), (3,), (5, 7), (64, 129)])
def test_value_range_equals_torch(dtype, shape):
    info = torch.iinfo(dtype)
    values = torch.randint(max(info.min, -(2**40)), min(info.max, 2**40), shape, dtype=torch.int64).to(dtype)
    assert value_range(values) == (int(values.min()), int(values.max()))
    strided = values.reshape(-1)[::2]  # not contiguous: the numpy path
    assert value_range(strided) == (int(strided.min()), int(strided.max()))


def test_value_range_finds_the_extremes_anywhere():
    values = torch.zeros(1031, dtype=torch.int64)
    for where in (0, 1, 2, 3, 517, 1027, 1030):  # every lane of the one-pass loop and the tail
        values.zero_()
        values[where] = -(2**62)
        assert value_range(values) == (-(2**62), 0)
        values[where] = 2**62
        assert value_range(values) == (0, 2**62)


def test_cpp_value_range_rejects_bad_buffers():
    module = cpp_module()
    if module is None:
        pytest.skip("the C++ extension is not built")
    assert _validation._one_pass_range() is module.value_range
    with pytest.raises(ValueError, match="values is empty"):
        module.value_range(np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="int32 or int64, got float32"):
        module.value_range(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        module.value_range(np.zeros((4, 4), dtype=np.int64)[:, 1])


def test_check_int_and_probability_fast_paths_keep_their_errors():
    assert check_int("n", 3) == 3 and check_int("n", np.int64(4)) == 4
    with pytest.raises(TypeError, match="n must be an int, got bool"):
        check_int("n", True)
    with pytest.raises(TypeError, match="n must be an int, got float"):
        check_int("n", 3.0)
    assert check_probability("p", 0.25) == 0.25 and check_probability("p", 1) == 1.0
    assert check_probability("p", np.float32(0.5)) == 0.5
    for bad in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="p=.* is outside"):
            check_probability("p", bad)
    with pytest.raises(TypeError, match="p must be a float"):
        check_probability("p", True)
