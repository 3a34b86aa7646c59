"""The padding fast path (csrc/collate.cpp) against its numpy fallback, and its errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from collator_support import features, padded, tokenizer
from transformers import BatchEncoding

import fastmask
from fastmask import _backend
from fastmask import padding as padding_module
from fastmask.collator import DataCollatorForLanguageModeling
from fastmask.padding import pad_features

CPP = _backend.cpp_module()
needs_cpp = pytest.mark.skipif(not hasattr(CPP, "pad_rows"), reason="fastmask._C is not built with pad_rows")


@pytest.fixture
def no_extension(monkeypatch):
    monkeypatch.setattr(padding_module, "_collate_module", lambda: None)


def _feature_sets():
    base = features(rows=5, max_length=40)
    for i, f in enumerate(base):
        f["score"] = 0.5 * i
        f["flag"] = bool(i % 2)
        f["word_ids"] = [None] + list(range(len(f["input_ids"]) - 2)) + [None]
        f["ragged"] = list(range(i + 1))
    return {
        "lists": base,
        "arrays": [
            {k: (np.asarray(v) if isinstance(v, list) and k != "word_ids" else v) for k, v in f.items()} for f in base
        ],
        "int32_arrays": [
            {
                **f,
                "input_ids": np.asarray(f["input_ids"], dtype=np.int32),
                "offset_mapping": np.asarray(f["offset_mapping"], dtype=np.int32),
            }
            for f in base
        ],
        "tensors": [
            {**f, "input_ids": torch.tensor(f["input_ids"]), "attention_mask": torch.tensor(f["attention_mask"])}
            for f in base
        ],
        "batch_encodings": [BatchEncoding(f) for f in base],
        "sequences": [f["input_ids"] for f in base],
        "tensor_rows": [torch.tensor(f["input_ids"], dtype=torch.int16) for f in base],
    }


@needs_cpp
@pytest.mark.parametrize("name", list(_feature_sets()))
@pytest.mark.parametrize("side", ["right", "left"])
def test_cpp_padding_equals_numpy_fallback(name, side, monkeypatch):
    tok = copy.copy(tokenizer())
    tok.padding_side = side
    feats = _feature_sets()[name]
    fast = pad_features(feats, tok, pad_to_multiple_of=8)
    monkeypatch.setattr(padding_module, "_collate_module", lambda: None)
    slow = pad_features(feats, tok, pad_to_multiple_of=8)
    assert list(fast.data) == list(slow.data) and fast.aligned == slow.aligned
    for key in fast.data:
        a, b = fast.data[key], slow.data[key]
        assert type(a) is type(b), key
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, key
        np.testing.assert_array_equal(a, b, err_msg=key)
    np.testing.assert_array_equal(fast.lengths, slow.lengths)


def test_padding_values_and_layout():
    tok = tokenizer()
    feats = _feature_sets()["lists"]
    out = pad_features(feats, tok).data
    length = max(len(f["input_ids"]) for f in feats)
    np.testing.assert_array_equal(out["input_ids"], padded([f["input_ids"] for f in feats], length, tok.pad_token_id))
    np.testing.assert_array_equal(
        out["special_tokens_mask"], padded([f["special_tokens_mask"] for f in feats], length, 1)
    )
    np.testing.assert_array_equal(out["offset_mapping"], padded([f["offset_mapping"] for f in feats], length, 0))
    assert out["offset_mapping"].shape == (5, length, 2)
    word_ids = [[-1 if w is None else w for w in f["word_ids"]] for f in feats]
    np.testing.assert_array_equal(out["word_ids"], padded(word_ids, length, -1))
    assert out["score"].dtype == np.float32 and out["flag"].dtype == np.bool_
    assert out["ragged"].shape == (5, 5)  # not aligned with input_ids: padded to its own longest row


def test_features_without_attention_mask_get_one():
    tok = tokenizer()
    rows = [{"input_ids": [101, 7, 102]}, {"input_ids": [101, 102]}]
    out = DataCollatorForLanguageModeling(tok, mlm=False)(rows)
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert list(out.keys()) == ["input_ids", "attention_mask", "labels"]


def test_numpy_output_from_ragged_tensor_rows():
    tok = tokenizer()
    rows = [torch.tensor([101, 2000, 102]), torch.tensor([101, 102])]
    out = DataCollatorForLanguageModeling(tok, seed=0, return_tensors="np")(rows)
    assert isinstance(out["input_ids"], np.ndarray) and out["input_ids"].shape == (2, 3)
    assert out["input_ids"][1, 2] == tok.pad_token_id and out["labels"][:, [0]].tolist() == [[-100], [-100]]


def test_whole_batch_tensor_and_2d_array_inputs():
    tok = tokenizer()
    batch = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 2003, 102]])
    out = DataCollatorForLanguageModeling(tok, seed=0)(batch)
    assert out["input_ids"].shape == (2, 4)
    out = DataCollatorForLanguageModeling(tok, seed=0, return_tensors="np")(batch.numpy())
    assert out["input_ids"].shape == (2, 4)


@needs_cpp
@pytest.mark.parametrize(
    "rows,message,error",
    [
        ([{"input_ids": [1, None]}], "'input_ids' of row 0, position 1: None is not a number", TypeError),
        ([{"input_ids": [1, 2.5]}], "float value", TypeError),
        ([{"input_ids": [1, "a"]}], "expected a number, got str", TypeError),
        ([{"input_ids": [1, 2]}, {"mask": [1]}], "'input_ids' of row 1: missing", ValueError),
        ([{"input_ids": [1, 2**70]}], "does not fit in 64 bits", ValueError),
        ([{"input_ids": 5}], "expected a list, tuple, array or tensor", TypeError),
    ],
)
def test_cpp_errors_name_key_row_and_position(rows, message, error):
    out = np.zeros((len(rows), 2), dtype=np.int64)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        CPP.pad_rows(rows, "input_ids", out, 0, False, None)


@needs_cpp
def test_cpp_range_and_shape_checks():
    with pytest.raises(ValueError, match="does not fit in uint8"):
        CPP.pad_rows([[1, 300]], None, np.zeros((1, 2), np.uint8), 0, False, None)
    with pytest.raises(ValueError, match="more than the padded length"):
        CPP.pad_rows([[1, 2, 3]], None, np.zeros((1, 2), np.int64), 0, False, None)
    with pytest.raises(ValueError, match="expected 2"):
        CPP.pad_rows([[(1, 2, 3)]], None, np.zeros((1, 1, 2), np.int64), 0, False, None)
    with pytest.raises(ValueError, match="C-contiguous"):
        CPP.pad_rows([[1], [2]], None, np.zeros((3, 2), np.int64).T, 0, False, None)
    with pytest.raises(ValueError, match="rows"):
        CPP.pad_rows([[1]], None, np.zeros((2, 1), np.int64), 0, False, None)
    out = np.zeros((2, 3), np.float32)
    CPP.pad_rows([[1, 2.5], np.array([3.0], dtype=np.float64)], None, out, -1.0, True, None)
    np.testing.assert_array_equal(out, [[-1, 1, 2.5], [-1, -1, 3]])
    assert CPP.row_lengths([[1, 2], (3,), np.zeros(4), torch.zeros(5), 7, None], None).tolist() == [2, 1, 4, 5, -1, -1]


def test_collator_errors_for_bad_features():
    tok = tokenizer()
    c = DataCollatorForLanguageModeling(tok, seed=0)
    with pytest.raises(ValueError, match="input_ids"):
        c([{"text": "a"}])
    with pytest.raises(ValueError, match="empty"):
        c([])
    with pytest.raises((TypeError, ValueError)):
        c([{"input_ids": [101, None, 102]}])


def test_fallback_collates_like_the_extension(no_extension):
    tok = tokenizer()
    feats = features(rows=4)
    out = DataCollatorForLanguageModeling(tok, seed=0, whole_word_mask=True, keep_replace_probs=True)(feats)
    assert out["input_ids"].shape == (4, max(len(f["input_ids"]) for f in feats))


# ----------------------------------------------------------------------------- bad input (regressions: accepted or unclear before)


@pytest.mark.parametrize(
    "feats,error,pattern",
    [
        ([{"input_ids": [101, 7, 102], "attention_mask": [1, 1]}], ValueError, "'attention_mask' of row 0 has 2 items"),
        ([{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1, 1]}], ValueError, "attention_mask"),
        (
            [
                {"input_ids": [101, 102], "token_type_ids": [0, 0]},
                {"input_ids": [101, 7, 102], "token_type_ids": [0, 0]},
            ],
            ValueError,
            "'token_type_ids' of row 1",
        ),
        ([{"input_ids": [101, 102], "special_tokens_mask": [1, 0, 1]}], ValueError, "special_tokens_mask"),
        ([{"input_ids": [101, 102]}, [101, 102]], TypeError, "features mixes kinds: row 0 is a dict but row 1 is list"),
        ([[101, 102], {"input_ids": [101, 102]}], TypeError, "row 0 is a sequence of ids but row 1 is dict"),
        ([{"input_ids": [101, -5, 102]}], ValueError, "negative id -5"),
    ],
)
def test_collator_rejects_inconsistent_features(feats, error, pattern):
    c = DataCollatorForLanguageModeling(tokenizer(), seed=0)
    with pytest.raises(error, match=pattern):
        c(feats)


@pytest.mark.parametrize("value,error", [(-4, ValueError), (0, ValueError), (2.5, TypeError), ("8", TypeError)])
def test_pad_to_multiple_of_is_checked_by_name(value, error):
    for cls in (DataCollatorForLanguageModeling, fastmask.DataCollatorForMaskedAugmentation):
        with pytest.raises(error, match="pad_to_multiple_of"):
            cls(tokenizer(), pad_to_multiple_of=value)
    with pytest.raises(error, match="pad_to_multiple_of"):
        pad_features([[1, 2]], tokenizer(), pad_to_multiple_of=value)


def test_augmentation_rejects_negative_ids():
    """Regression: a negative id was shifted into the vocabulary and came back as id 30520."""
    c = fastmask.DataCollatorForMaskedAugmentation(tokenizer(), mask_probability=0, delete_probability=1.0, seed=0)
    with pytest.raises(ValueError, match="negative id -2"):
        c([{"input_ids": [101, -2, 7, 102]}])


def test_read_fixed_length_ids():
    """The lean reader of fixed-length rows: exactly pad_features' ids, or None for the general path."""
    from fastmask.padding import read_fixed_length_ids

    tok = tokenizer()
    rows = [[101, 5, 6, 102], [101, 7, 8, 102]]
    expected = np.asarray(rows, dtype=np.int64)
    kinds = [
        [{"input_ids": r, "attention_mask": [1] * 4} for r in rows],
        rows,
        [tuple(r) for r in rows],
        [np.asarray(r, dtype=np.int32) for r in rows],
        [torch.tensor(r) for r in rows],
    ]
    for kind in kinds:
        got = read_fixed_length_ids(kind, 4)
        assert got.dtype == np.int64 and np.array_equal(got, expected)
        assert np.array_equal(got, padding_module.pad_features(kind, tok, keep_dtype_of=()).data["input_ids"])
    assert read_fixed_length_ids(rows, 5) is None  # a length mismatch
    assert read_fixed_length_ids([rows[0], rows[1][:3]], 4) is None
    assert read_fixed_length_ids([{"input_ids": rows[0]}, rows[1]], 4) is None  # mixed kinds
    assert read_fixed_length_ids([{"ids": rows[0]}], 4) is None
    assert read_fixed_length_ids([], 4) is None
    with pytest.raises(ValueError, match="'input_ids' of row 1: missing"):
        read_fixed_length_ids([{"input_ids": rows[0]}, {"ids": rows[1]}], 4)


def test_read_fixed_length_ids_reads_every_kind_of_int():
    """Ints of one digit are read straight from the object, others through the C API: both exact,
    at the digit boundary and beyond 64 bits (an error, as pad_rows)."""
    from fastmask.padding import read_fixed_length_ids

    values = [0, 1, -1, 2**30 - 1, 2**30, -(2**30) + 1, -(2**30), 2**62, -(2**63), 2**63 - 1, np.int64(-5), True]
    rows = [values, list(reversed(values))]
    got = read_fixed_length_ids([{"input_ids": r} for r in rows], len(values))
    assert got.dtype == np.int64 and got.tolist() == [[int(v) for v in r] for r in rows]
    with pytest.raises(ValueError, match="row 1, position 2: integer does not fit in 64 bits"):
        read_fixed_length_ids([[1, 2, 3], [4, 5, 2**64]], 3)
    with pytest.raises(TypeError, match="row 0, position 1: float value"):
        read_fixed_length_ids([[1, 2.5, 3]], 3)


def test_read_fixed_length_ids_without_the_extension(no_extension):
    from fastmask.padding import read_fixed_length_ids

    assert read_fixed_length_ids([[101, 5, 102]], 3) is None
