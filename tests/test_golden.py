"""Masks are frozen: fixed calls give the digests recorded in tests/golden/masks.json."""

from __future__ import annotations

import json
from pathlib import Path

import golden_outputs

GOLDEN = json.loads((Path(__file__).parent / "golden" / "masks.json").read_text())


def test_masks_match_the_frozen_digests():
    got = golden_outputs.compute()
    assert sorted(got) == sorted(GOLDEN), "the set of golden cases changed"
    changed = [name for name in GOLDEN if got[name] != GOLDEN[name]]
    assert not changed, f"masks changed for {len(changed)} cases, e.g. {changed[:5]}"
