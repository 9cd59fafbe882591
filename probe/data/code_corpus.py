r"""The Python standard library's own source as a corpus, with per-byte syntax labels.

Every machine with Python has it, so it is the zoo's offline "real" corpus. Files are
the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (``site-packages`` and
``dist-packages`` excluded), in sorted relative-path order, split by a hash of the
relative path::

    bucket = int(sha256(relpath)[:8], 16) / 2**32     train: bucket < 0.9, val: < 0.95, test: rest

so the split is the same on every machine with the same Python version (the files
themselves differ between versions; the CI machine runs Python 3.11).

Labels (one value per UTF-8 byte of a file, from the :mod:`tokenize` module):

==================  ======================================================================
``token_type``      index into :data:`TOKEN_TYPES` of the token covering the byte
                    (``other`` = whitespace between tokens)
``bracket_depth``   number of open ``( [ {`` after reading the byte (an opener counts itself)
``in_string``       1 inside a string literal (f-string parts included), else 0
``in_comment``      1 inside a ``#`` comment, else 0
``indent``          indentation level: INDENT minus DEDENT tokens seen, counted from the
                    start of the line where tokenize emits them
``column``          byte offset of the byte within its physical line
==================  ======================================================================

Files that fail to decode or tokenize are skipped and counted (:attr:`CodeCorpus.skipped`).
"""
from __future__ import annotations

import hashlib
import io
import keyword
import sys
import sysconfig
import tokenize
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from probe.data.corpus import TokenStream, encode_fast, join_documents
from probe.errors import InputError

SPLITS = ("train", "val", "test")
#: cumulative bucket bounds of the train / val / test split
SPLIT_BOUNDS = (0.90, 0.95, 1.0)
TOKEN_TYPES = ("other", "name", "keyword", "number", "string", "comment", "op", "newline", "indent")
LABELS = ("token_type", "bracket_depth", "in_string", "in_comment", "indent", "column")
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_STRING_KINDS = {"STRING", "FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END", "TSTRING_START",
                 "TSTRING_MIDDLE", "TSTRING_END"}
_OPENERS, _CLOSERS = set("([{"), set(")]}")


def stdlib_root() -> Path:
    """The directory of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(root: str | Path | None = None) -> list[str]:
    """Relative paths (POSIX, sorted) of every ``.py`` file under ``root`` (default: the stdlib)."""
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise InputError(f"Code corpus root {str(root)!r} is not a directory.")
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS.intersection(rel.parts[:-1]) or not path.is_file():
            continue
        out.append(rel.as_posix())
    return sorted(out)


def split_of(relpath: str) -> str:
    """``"train"``, ``"val"`` or ``"test"``: a deterministic function of the relative path."""
    bucket = int(hashlib.sha256(relpath.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    for name, bound in zip(SPLITS, SPLIT_BOUNDS):
        if bucket < bound:
            return name
    return SPLITS[-1]


def read_source(path: str | Path) -> str:
    """Decode a Python file the way Python does (PEP 263 coding cookie, UTF-8 default)."""
    with tokenize.open(path) as f:
        return f.read()


def byte_labels(text: str) -> dict[str, np.ndarray]:
    """Per-byte labels of Python source ``text`` (see the module docstring); each array has
    one entry per byte of ``text.encode("utf-8")``. Raises ``SyntaxError`` /
    ``tokenize.TokenError`` when the text does not tokenize."""
    data = text.encode("utf-8")
    n = len(data)
    lines = text.split("\n")
    line_start = np.zeros(len(lines) + 1, dtype=np.int64)  # byte offset of each line (1-based rows)
    for i, line in enumerate(lines[:-1]):
        line_start[i + 1] = line_start[i] + len(line.encode("utf-8")) + 1

    def offset(row: int, col: int) -> int:
        if row - 1 >= len(lines):
            return n
        line = lines[row - 1]
        width = col if line.isascii() else len(line[:col].encode("utf-8"))
        return int(min(line_start[row - 1] + width, n))

    token_type = np.zeros(n, dtype=np.int8)
    in_string = np.zeros(n, dtype=np.int8)
    in_comment = np.zeros(n, dtype=np.int8)
    depth_delta = np.zeros(n + 1, dtype=np.int16)
    indent_delta = np.zeros(n + 1, dtype=np.int16)
    tid = {name: i for i, name in enumerate(TOKEN_TYPES)}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        kind = tokenize.tok_name[tok.type]
        s, e = offset(*tok.start), offset(*tok.end)
        if kind == "NAME":
            cls = "keyword" if keyword.iskeyword(tok.string) else "name"
        elif kind in _STRING_KINDS:
            cls = "string"
            in_string[s:e] = 1
        elif kind == "COMMENT":
            cls = "comment"
            in_comment[s:e] = 1
        elif kind == "NUMBER":
            cls = "number"
        elif kind == "OP":
            cls = "op"
            if tok.string in _OPENERS:
                depth_delta[s] += 1
            elif tok.string in _CLOSERS:
                depth_delta[s] -= 1
        elif kind in ("NEWLINE", "NL"):
            cls = "newline"
        elif kind == "INDENT":
            cls = "indent"
            indent_delta[line_start[tok.start[0] - 1]] += 1
        elif kind == "DEDENT":
            indent_delta[line_start[min(tok.start[0], len(lines)) - 1]] -= 1
            continue
        else:  # ENDMARKER, ENCODING, ERRORTOKEN...
            continue
        if e > s:
            token_type[s:e] = tid[cls]
    arr = np.frombuffer(data, dtype=np.uint8)
    newline = np.concatenate([[0], (arr[:-1] == 10).astype(np.int64)]) if n else np.zeros(0, np.int64)
    line_id = np.cumsum(newline)
    starts = np.flatnonzero(np.concatenate([[1], newline[1:]])) if n else np.zeros(0, np.int64)
    column = np.arange(n) - starts[line_id] if n else np.zeros(0, np.int64)
    return {
        "token_type": token_type,
        "bracket_depth": np.maximum(np.cumsum(depth_delta[:n]), 0).astype(np.int16),
        "in_string": in_string,
        "in_comment": in_comment,
        "indent": np.maximum(np.cumsum(indent_delta[:n]), 0).astype(np.int16),
        "column": column.astype(np.int32),
    }


@dataclass
class CodeFile:
    """One source file of the corpus: its relative path, split and text; labels on demand."""

    relpath: str
    split: str
    text: str

    @cached_property
    def labels(self) -> dict[str, np.ndarray]:
        return byte_labels(self.text)

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


class CodeCorpus:
    """The ``split`` files of a Python source tree (default: the running Python's stdlib).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: directory of ``.py`` files (default :func:`stdlib_root`).
        max_files: keep only the first ``max_files`` files of the split (sorted order).
        max_bytes: stop adding files once this many bytes are collected.

    Attributes:
        files: the :class:`CodeFile` objects that decoded and tokenised.
        skipped: ``[(relpath, reason)]`` of the files left out.
    """

    def __init__(self, split: str = "train", root: str | Path | None = None, max_files: int | None = None,
                 max_bytes: int | None = None):
        if split not in SPLITS:
            raise InputError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
        self.split = split
        self.root = Path(root) if root is not None else stdlib_root()
        self.files: list[CodeFile] = []
        self.skipped: list[tuple[str, str]] = []
        total = 0
        for rel in list_files(self.root):
            if split_of(rel) != split:
                continue
            if (max_files is not None and len(self.files) >= max_files) or (max_bytes is not None and total >= max_bytes):
                break
            try:
                text = read_source(self.root / rel)
                # tokenising here (not lazily) decides membership: a file that fails is skipped
                for _ in tokenize.generate_tokens(io.StringIO(text).readline):
                    pass
            except (SyntaxError, tokenize.TokenError, UnicodeDecodeError, LookupError, OSError, ValueError) as exc:
                self.skipped.append((rel, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]))
                continue
            if not text:
                continue
            self.files.append(CodeFile(rel, split, text))
            total += len(text.encode("utf-8"))
        if not self.files:
            raise InputError(f"No Python files of split {split!r} could be read under {str(self.root)!r} "
                             f"({len(self.skipped)} failed to tokenize).")

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def n_bytes(self) -> int:
        return sum(f.n_bytes for f in self.files)

    def stream(self, tokenizer=None) -> TokenStream:
        """All files' tokens, each file followed by the end-of-text id (byte tokenizer by default)."""
        from probe.tokenizers import get_tokenizer

        tok = get_tokenizer(tokenizer if tokenizer is not None else "byte")
        docs = [encode_fast(tok, f.text) for f in self.files]
        meta = {"source": "python-stdlib", "python": sys.version.split()[0], "split": self.split,
                "files": len(self.files), "skipped": self.n_skipped, "tokenizer": getattr(tok, "name", "?")}
        return join_documents(docs, tok.eos_token_id, self.n_bytes, f"stdlib-{self.split}", meta)

    def labelled(self, max_bytes: int | None = None):
        """Yield ``(tokens [n], labels {name: [n]})`` per file (byte tokenizer: one label per token),
        up to ``max_bytes`` bytes in total. Token ids are the file's UTF-8 bytes."""
        total = 0
        for f in self.files:
            if max_bytes is not None and total >= max_bytes:
                return
            data = np.frombuffer(f.text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
            total += len(data)
            yield data, f.labels

    def __repr__(self) -> str:
        return (f"CodeCorpus(split={self.split!r}, files={len(self.files)}, bytes={self.n_bytes:,}, "
                f"skipped={self.n_skipped})")


def stdlib_stream(split: str, cache_dir: str | Path | None = None) -> TokenStream:
    """The byte-token stream of one stdlib split, built once and cached as safetensors.

    The cache lives in ``cache_dir`` (default ``$PROBE_CACHE`` or ``~/.cache/probe``) under
    ``stdlib-<python version>-<split>.safetensors``. ``$PROBE_STDLIB_STREAMS`` names a folder
    holding ready-made ``stdlib-<split>.safetensors`` streams that are used as they are, whatever
    the running Python: this is how a model is trained elsewhere on exactly the corpus of the
    Python the tests run (the stream's ``meta["python"]`` records which one it came from).
    """
    import os

    fixed = os.environ.get("PROBE_STDLIB_STREAMS")
    if fixed:
        path = Path(fixed) / f"stdlib-{split}.safetensors"
        if not path.is_file():
            raise InputError(f"PROBE_STDLIB_STREAMS={fixed!r} has no {path.name}; write it with "
                             "`probe data export-stdlib DIR` on the machine whose Python you want.")
        return TokenStream.load(path)
    cache = Path(cache_dir or os.environ.get("PROBE_CACHE") or Path.home() / ".cache" / "probe")
    path = cache / f"stdlib-{sys.version.split()[0]}-{split}.safetensors"
    if path.is_file() and Path(f"{path}.json").is_file():
        try:
            return TokenStream.load(path)
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    stream = CodeCorpus(split).stream()
    try:
        stream.save(path)
    except OSError:
        pass  # read-only home: work without a cache
    return stream
