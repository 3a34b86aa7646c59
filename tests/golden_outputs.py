"""Digests of masks drawn by fixed calls, frozen in ``tests/golden/masks.json``.

Masks are a pure function of their inputs (seed, row keys, positions), so a refactoring or a new
option must leave these digests unchanged; ``test_golden.py`` checks them. Regenerate (only for an
intended change of the masking semantics, with a note saying why) with
``python tests/golden_outputs.py > tests/golden/masks.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings

import numpy as np
import torch
from collator_support import features, tokenizer
from masking_samples import sample_inputs

import fastmask


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def collator_cases():
    """``(name, collator, features)``: the collators on real text, two batches each."""
    tok = tokenizer()
    feats = features(rows=16, max_length=96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield "lm-token", fastmask.DataCollatorForLanguageModeling(tok, seed=3), feats
        yield (
            "lm-whole-word-offsets",
            fastmask.DataCollatorForLanguageModeling(tok, whole_word_mask=True, seed=4),
            feats,
        )
        no_offsets = [{k: v for k, v in f.items() if k != "offset_mapping"} for f in feats]
        yield (
            "lm-span-exact-table",
            fastmask.DataCollatorForLanguageModeling(tok, strategy="span", budget="exact", seed=5),
            no_offsets,
        )
        yield "wwm-v4", fastmask.DataCollatorForWholeWordMask(tok, seed=6), no_offsets
        yield (
            "augmentation",
            fastmask.DataCollatorForMaskedAugmentation(
                tok, mask_probability=0.15, random_replace_probability=0.05, delete_probability=0.1, seed=7
            ),
            no_offsets,
        )


def compute() -> dict:
    out = {}
    for name, kwargs in sample_inputs(long_rows=False):
        out["op/" + name] = digest(*fastmask.mask_tokens(**kwargs, backend="reference"))
    for name, collator, feats in collator_cases():
        for batch in range(2):
            result = collator(feats[8 * batch : 8 * batch + 8])
            out[f"collator/{name}/{batch}"] = digest(*(result[k] for k in sorted(result.keys())))
    return out


if __name__ == "__main__":
    json.dump(compute(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
