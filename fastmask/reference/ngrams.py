"""Reference (pure Python / torch) n-gram hashing, counting, scoring and unit segmentation: the
oracle for ``csrc/ngrams.cpp`` and :mod:`fastmask.kernels.ngrams`.

Hashes (64-bit, wrapping):

* ``mix64(x)``: the splitmix64 finaliser.
* a word's hash: ``h = WORD_SEED``, then ``h = mix64(h ^ t)`` for each of its token ids ``t``.

Counting keys (``csrc/ngrams.cpp``'s counter): an n-gram's key is ``g = hash(word_0)``, then
``g = mix64(mix64(g) ^ hash(word_j))`` for each next word, and ``g | 1`` (never 0, which marks an
empty slot); a unigram's key is ``hash | 1``.

Matching keys (the probe table and the unit kernels, which hash every word of every batch, so they
are cheaper): a word's *code* is its token id when it has one token, else its hash with the top
bit set (``code | 2**63``); an n-gram's key is ``g = code(word_0)``, then
``g = mix64(rotl32(g) ^ code(word_j))`` for each next word (``rotl32``: rotate the 64 bits left by
32), and ``g | 1``. A bigram of two one-token words is ``mix64(id_0 << 32 | id_1) | 1`` (ids below
``2**32``): distinct such bigrams never share ``mix64``'s output; other distinct n-grams share a key
with probability about ``2**-63`` per pair.

Words (counting): a row is split at special tokens into *segments*; inside one, a word starts at
a token flagged as a word start (bit 1 of the flag table; ids past the table start words) and
takes the following tokens up to the next word start or special token. n-grams of 1..max_n
consecutive words are counted inside segments, never across them.

Units (masking), per row of a :class:`~fastmask.masking_plan.MaskingPlan`: the words are those of
whole-word masking (:func:`fastmask.reference.masking.eligibility_and_units`); from the first word
on, the unit at word ``w`` is the longest run of ``2..max_n`` words starting at ``w``, inside
its segment, whose key is in the vocabulary's table, else the word alone; the next unit starts
after it. ``unit_starts[b, i]`` is True at a unit's first token. The table also marks every
prefix of a vocabulary n-gram, so the search stops at the first run of words that no vocabulary
n-gram starts with (the same result, fewer probes).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

MASK64 = (1 << 64) - 1
WORD_SEED = 0x9E3779B97F4A7C15
MULTI_TOKEN_CODE = 1 << 63  # set in the code of a word of several tokens
FLAG_SPECIAL, FLAG_WORD_START = 1, 2


def mix64(x: int) -> int:
    x &= MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    x ^= x >> 31
    return x


def word_hash(tokens: Sequence[int]) -> int:
    h = WORD_SEED
    for t in tokens:
        h = mix64(h ^ (int(t) & MASK64))
    return h


def extend_key(g: int, next_word_hash: int) -> int:
    return mix64(mix64(g) ^ next_word_hash)


def word_code(tokens: Sequence[int]) -> int:
    """A word's code in matching keys: its token id (one token), else its hash | 2**63."""
    if len(tokens) == 1:
        return int(tokens[0]) & MASK64
    return word_hash(tokens) | MULTI_TOKEN_CODE


def extend_ngram_key(g: int, next_word_code: int) -> int:
    """The matching key's state after one more word (``g``: the state so far, or the first code)."""
    return mix64(((g << 32) | (g >> 32)) & MASK64 ^ next_word_code)


def ngram_key(words: Sequence[Sequence[int]]) -> int:
    """The 63-bit matching key (as an unsigned int, odd) of an n-gram given as its words' token ids."""
    g = word_code(words[0])
    for word in words[1:]:
        g = extend_ngram_key(g, word_code(word))
    return g | 1


def signed(key: int) -> int:
    """A 64-bit unsigned key as the int64 value with the same bits."""
    return key - (1 << 64) if key >= 1 << 63 else key


def split_words(ids: Sequence[int], flags: Sequence[int]) -> list[list[tuple[int, ...]]]:
    """A row's segments, each a list of words (tuples of token ids)."""
    segments: list[list[tuple[int, ...]]] = []
    current: list[list[int]] = []
    for token in ids:
        f = flags[token] if 0 <= token < len(flags) else FLAG_WORD_START
        if f & FLAG_SPECIAL:
            if current:
                segments.append([tuple(w) for w in current])
            current = []
            continue
        if f & FLAG_WORD_START or not current:
            current.append([token])
        else:
            current[-1].append(token)
    if current:
        segments.append([tuple(w) for w in current])
    return segments


def reference_count(rows: Sequence[Sequence[int]], flags: Sequence[int], max_n: int) -> dict[int, Counter]:
    """``{n: Counter({n-gram (tuple of word tuples): count})}`` for n = 1..max_n."""
    counts = {n: Counter() for n in range(1, max_n + 1)}
    for row in rows:
        for words in split_words(list(row), flags):
            for n in range(1, max_n + 1):
                for i in range(len(words) - n + 1):
                    counts[n][tuple(words[i : i + n])] += 1
    return counts


def reference_pmi(ngram: tuple, counts: dict[int, Counter]) -> float:
    """The n-gram's PMI against its least surprising segmentation, by direct enumeration of the
    ``2**(n-1) - 1`` segmentations into >= 2 contiguous parts; ``p(x) = count(x) / positions(|x|)``
    with ``positions(k)`` the number of k-word windows counted."""
    n = len(ngram)
    positions = {k: sum(c.values()) for k, c in counts.items()}

    def logp(part: tuple) -> float:
        return math.log(counts[len(part)][part]) - math.log(positions[len(part)])

    best = -math.inf
    for cuts in range(1, 1 << (n - 1)):
        bounds = [0] + [i + 1 for i in range(n - 1) if cuts >> i & 1] + [n]
        best = max(best, sum(logp(ngram[a:b]) for a, b in zip(bounds, bounds[1:])))
    return logp(ngram) - best


def reference_ngram_units(plan) -> torch.Tensor:
    """Bool ``[B, L]`` unit starts for a :class:`~fastmask.ngram_units_plan.NgramUnitsPlan`: its
    words as whole-word masking has them and its int64 probe table (power-of-two size, 0 = empty,
    linear probing from ``(key >> 1) & (size - 1)``)."""
    from .masking import plan_units

    eligible, starts = plan_units(plan, "whole_word")
    table, max_n = plan.table.cpu(), plan.max_n
    entries = {(v & MASK64) | 1: v & 1 for v in table.tolist() if v != 0}  # key -> 1 n-gram, 0 prefix only
    ids = plan.input_ids.tolist()
    eligible, starts = eligible.tolist(), starts.tolist()
    out = torch.zeros(plan.input_ids.shape, dtype=torch.bool)
    for b, row in enumerate(ids):
        # words: [first position, segment, token ids]
        words: list[tuple[int, int, list[int]]] = []
        segment, previous = 0, False
        for i, token in enumerate(row):
            if not eligible[b][i]:
                previous = False
                continue
            if not previous:
                segment += 1
            if starts[b][i]:
                words.append((i, segment, []))
            words[-1][2].append(token)
            previous = True
        codes = [word_code(tokens) for _, _, tokens in words]
        w = 0
        while w < len(words):
            best, g = 1, codes[w]
            for k in range(1, max_n):
                if w + k >= len(words) or words[w + k][1] != words[w][1]:
                    break
                g = extend_ngram_key(g, codes[w + k])
                found = entries.get(g | 1)
                if found is None:
                    break  # no vocabulary n-gram starts with these words
                if found:
                    best = k + 1
            out[b, words[w][0]] = True
            w += best
    return out.to(plan.input_ids.device)


def probe_table(ngrams: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """The int64 open-addressing table of n-grams (each a list of words, each a list of token ids):
    every n-gram's key, and the key - 1 of each of its prefixes (>= 2 words) that is not itself
    an n-gram of the list (so a search can stop at the first prefix that is absent). Size a power
    of two >= 2x the entries (at least 2), slot ``(key >> 1) & (size - 1)``, linear probing, 0 =
    empty. (A prefix whose key is 1, probability 2**-63, would read as empty.)"""
    entries: dict[int, int] = {}
    for words in ngrams:
        g = word_code(words[0])
        for m in range(2, len(words) + 1):
            g = extend_ngram_key(g, word_code(words[m - 1]))
            key = g | 1
            if m == len(words):
                entries[key] = 1
            else:
                entries.setdefault(key, 0)
    size = 2
    while size < 2 * len(entries):
        size *= 2
    slots = [0] * size
    mask = size - 1
    for key in sorted(entries):
        s = (key >> 1) & mask
        while slots[s]:
            s = (s + 1) & mask
        slots[s] = signed(key if entries[key] else key - 1)
    return torch.tensor(slots, dtype=torch.int64)
