"""PMI n-gram vocabularies: C++ counting against the reference, the min-over-segmentations score,
sharded counting, planted collocations, the file format and bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import text_fixtures
import torch

from fastmask import _backend
from fastmask.ngrams import NgramVocabulary, build_ngram_vocabulary, count_ngrams, vocab_flags
from fastmask.reference import ngrams as ref

needs_cpp = pytest.mark.skipif(
    _backend.cpp_module() is None or not hasattr(_backend.cpp_module(), "NgramCounter"),
    reason="the C++ extension is not built",
)
pytestmark = needs_cpp


def _random_rows(seed: int, rows: int, vocab: int = 30):
    rng = random.Random(seed)
    flags = [0 if i % 3 == 0 else 2 for i in range(vocab)]  # every third id continues a word
    flags[0] = 1 | 2  # a special id: ends a segment
    data = [
        [rng.randrange(vocab + 3) for _ in range(rng.randrange(0, 40))] for _ in range(rows)
    ]  # ids past the table start words
    return data, flags


def _counter(rows, flags, max_n):
    from fastmask._C import NgramCounter

    counter = NgramCounter(max_n)
    ids = np.array([t for r in rows for t in r], dtype=np.int64)
    offsets = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    counter.add_rows(ids, offsets, np.array(flags, dtype=np.uint8))
    return counter


def _as_dict(counter, max_n, min_count=1):
    counts, offsets, tokens, hashes = counter.words(min_count)
    words = [tuple(tokens[offsets[i] : offsets[i + 1]].tolist()) for i in range(len(counts))]
    out = {1: {(w,): c for w, c in zip(words, counts.tolist())}}
    for n in range(2, max_n + 1):
        idx, c = counter.entries(n, min_count)
        out[n] = {tuple(words[j] for j in e): k for e, k in zip(idx.tolist(), c.tolist())}
    return out, words, hashes


@pytest.mark.parametrize("seed", [0, 1])
def test_counts_match_the_reference(seed):
    rows, flags = _random_rows(seed, 60)
    counter = _counter(rows, flags, 4)
    got, words, hashes = _as_dict(counter, 4)
    expected = ref.reference_count(rows, flags, 4)
    for n in range(1, 5):
        assert got[n] == dict(expected[n]), n
        assert counter.positions()[n - 1] == sum(expected[n].values())
    assert [h & ref.MASK64 for h in hashes.tolist()] == [ref.word_hash(w) for w in words]


def test_pmi_scores_equal_a_direct_computation():
    rows, flags = _random_rows(2, 80, vocab=12)
    counter = _counter(rows, flags, 5)
    expected = ref.reference_count(rows, flags, 5)
    _, words, _ = _as_dict(counter, 5)
    checked = 0
    for n in range(2, 6):
        idx, _ = counter.entries(n, 1)
        scores = counter.pmi_scores(n, 1)
        for entry, score in zip(idx.tolist(), scores.tolist()):
            ngram = tuple(words[j] for j in entry)
            assert score == pytest.approx(ref.reference_pmi(ngram, expected), abs=1e-9)
            checked += 1
    assert checked > 100


def test_absorbing_exports_equals_counting_at_once():
    rows, flags = _random_rows(3, 90)
    whole = _counter(rows, flags, 4)
    merged = type(whole)(4)
    for part in (rows[:40], rows[40:]):
        counter = _counter(part, flags, 4)
        counts, offsets, tokens, _ = counter.words(1)
        merged.absorb(offsets, tokens, counts, [counter.entries(n, 1) for n in range(2, 5)])
    assert _as_dict(merged, 4)[0] == _as_dict(whole, 4)[0]
    assert merged.positions() == whole.positions()


# ----------------------------------------------------------------------------- vocabularies
@pytest.fixture(scope="module")
def tokenizer():
    return text_fixtures.tokenizer("minilm")


def _filler_and_planted(tokenizer, seed=0):
    """Alphabetic whole-word ids: 1500 Zipf filler words and 14 planted n-grams (lengths 2..5)
    over other words, each planted word used only inside its n-gram."""
    vocab = tokenizer.get_vocab()
    words = sorted(i for t, i in vocab.items() if t.isalpha() and t.isascii() and len(t) > 2)
    rng = random.Random(seed)
    rng.shuffle(words)
    filler = words[:1500]
    rest = iter(words[1500:])
    planted = [tuple(next(rest) for _ in range(n)) for n in (2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5)]
    return filler, planted


def _planted_corpus(tokenizer, rows=400, length=120, seed=0):
    filler, planted = _filler_and_planted(tokenizer, seed)
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(filler) + 1)
    weights /= weights.sum()
    out = []
    for _ in range(rows):
        row = [filler[i] for i in rng.choice(len(filler), size=length, p=weights)]
        for _ in range(2):  # two planted n-grams per row
            ngram = planted[rng.integers(len(planted))]
            at = int(rng.integers(0, len(row)))
            row[at:at] = list(ngram)
        out.append(row)
    return out, planted


def test_planted_collocations_rank_above_every_chance_ngram(tokenizer):
    rows, planted = _planted_corpus(tokenizer)
    vocabulary = build_ngram_vocabulary(rows, tokenizer, max_n=5, min_count=3, size=10**6)
    planted_words = {t for ngram in planted for t in ngram}
    for n in range(2, 6):
        entries = vocabulary.ngrams[n]
        as_ids = [tuple(w[0] for w in e["words"]) for e in entries]
        mine = [i for i, ids in enumerate(as_ids) if ids in set(planted)]
        chance = [i for i, ids in enumerate(as_ids) if any(t not in planted_words for t in ids)]
        assert len(mine) == sum(len(p) == n for p in planted), n
        assert chance, n  # the comparison is not empty
        assert max(mine) < min(chance), n


def test_sharded_counting_equals_single_process(tokenizer):
    texts = text_fixtures.data.corpus_texts(max_chars=30_000)
    single = build_ngram_vocabulary(texts, tokenizer, max_n=3, min_count=1, size=5000)
    sharded = build_ngram_vocabulary(texts, tokenizer, max_n=3, min_count=1, size=5000, num_proc=2, shard_size=40)
    assert sharded.to_json() == single.to_json()
    assert len(single) > 1000
    # with pruning per shard, counts are lower bounds of the true counts
    exact, _ = count_ngrams(texts, tokenizer, max_n=3)
    pruned, positions = count_ngrams(texts, tokenizer, max_n=3, min_count=2, num_proc=2, shard_size=40)
    assert positions == list(exact.positions())
    true_counts = _as_dict(exact, 3)[0]
    for n, entries in _as_dict(pruned, 3)[0].items():
        for ngram, count in entries.items():
            assert 2 <= count <= true_counts[n][ngram]


def test_save_load_top_and_fingerprint(tokenizer, tmp_path):
    texts = text_fixtures.data.corpus_texts(max_chars=60_000)
    vocabulary = build_ngram_vocabulary(texts, tokenizer, max_n=4, min_count=2, size=300)
    assert len(vocabulary) == 300
    assert sum(len(v) for v in vocabulary.ngrams.values()) == 300
    path = tmp_path / "vocab.json"
    vocabulary.save(path)
    loaded = NgramVocabulary.load(path)
    assert loaded.to_json() == vocabulary.to_json()
    top = loaded.top(2, 5)
    assert len(top) == 5 and [s for _, s, _ in top] == sorted((s for _, s, _ in top), reverse=True)
    assert top[0][0] == vocabulary.ngrams[2][0]["text"]
    loaded.check_tokenizer(tokenizer)
    other = text_fixtures.tokenizer("bpe")
    with pytest.raises(ValueError, match="another tokenizer"):
        loaded.check_tokenizer(other)
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version 99"):
        NgramVocabulary.load(path)


def test_budget_is_split_across_lengths():
    from fastmask.ngrams import _budgets

    assert _budgets(10, {2: 100, 3: 100, 4: 100}) == {2: 4, 3: 3, 4: 3}
    assert _budgets(10, {2: 100, 3: 1, 4: 0}) == {2: 9, 3: 1, 4: 0}
    assert _budgets(10, {2: 2, 3: 3}) == {2: 2, 3: 3}


@pytest.mark.parametrize(
    "kwargs, match", [({"max_n": 1}, "max_n=1"), ({"max_n": 9}, "max_n=9"), ({"measure": "t"}, "measure")]
)
def test_bad_arguments(tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_ngram_vocabulary(["some text here"], tokenizer, **kwargs)


@pytest.mark.parametrize("source", [[], ["", "  "], [[101, 102]]])
def test_empty_corpus(tokenizer, source):
    with pytest.raises(ValueError, match="corpus is empty"):
        build_ngram_vocabulary(source, tokenizer)


def test_one_string_is_not_a_corpus(tokenizer):
    with pytest.raises(TypeError, match="list of texts"):
        build_ngram_vocabulary("new york", tokenizer)


def test_flags_mark_specials_and_word_starts(tokenizer):
    flags = vocab_flags(tokenizer)
    assert flags[tokenizer.cls_token_id] & 1
    assert flags[tokenizer.convert_tokens_to_ids("##s")] == 0
    assert flags[tokenizer.convert_tokens_to_ids("york")] == 2
    assert torch.equal(torch.from_numpy(flags & 2 != 0)[:10], torch.ones(10, dtype=torch.bool))


def test_cli_ngrams(tmp_path, capsys):
    from fastmask.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(text_fixtures.data.corpus_texts(max_chars=40_000)))
    out = tmp_path / "vocab.json"
    assert (
        main(["ngrams", "--text", str(corpus), "-o", str(out), "--min-count", "3", "--max-n", "3", "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    vocabulary = NgramVocabulary.load(out)
    assert len(vocabulary) > 0 and set(vocabulary.ngrams) == {2, 3}
    assert "top 2-grams" in printed and vocabulary.ngrams[2][0]["text"] in printed
    assert main(["ngrams", "--text", str(corpus), "-o", str(out), "--max-n", "9", "--no-progress"]) == 2
    assert "max_n=9" in capsys.readouterr().err


def test_embedded_vocabulary_is_built_once_and_cached(tokenizer, tmp_path, monkeypatch):
    from fastmask import data
    from fastmask.ngrams import embedded_ngram_vocabulary

    small = data.corpus_texts(max_chars=30_000)
    calls = []
    monkeypatch.setenv("FASTMASK_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "corpus_texts", lambda: calls.append(1) or small)
    first = embedded_ngram_vocabulary(tokenizer, min_count=2, size=500)
    assert len(first) > 0 and calls == [1] and len(list(tmp_path.glob("ngrams-*.json"))) == 1
    second = embedded_ngram_vocabulary(tokenizer, min_count=2, size=500)
    assert calls == [1] and second.to_json() == first.to_json()
