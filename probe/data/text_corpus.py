r"""Plain-text corpora: a file, a folder of files, or a Hugging Face ``datasets`` dataset.

Each returns a :class:`~probe.data.corpus.TokenStream` (documents joined by the end-of-text
id). Bad input gets a clear error: a missing path, an empty file or folder, an unreadable
file, a file that is not UTF-8 (with the byte offset of the first bad byte), a dataset
without the text column, or a corpus shorter than one training sequence (``min_tokens``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from probe.data.corpus import TokenStream, encode_fast, join_documents
from probe.errors import InputError

#: file suffixes read from a folder (others are ignored, so a folder may hold a README.pdf)
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text", ".json", ".jsonl", ".csv", ".tsv", ".html", ".xml",
                 ".c", ".h", ".js", ".ts", ".rs", ".go", ".java", ".tex", ".yaml", ".yml", ".toml", ".cfg", ".ini")


def read_text_file(path: str | Path) -> str:
    """The UTF-8 text of ``path``; errors name the file and the problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"Cannot read {str(path)!r}: {exc.strerror or exc}.") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{str(path)!r} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}); convert it, e.g. `iconv -f latin1 -t utf-8`.") from exc


def text_files(path: str | Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES) -> list[Path]:
    """``[path]`` for a file; the sorted text files below ``path`` for a folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"Corpus path {str(path)!r} does not exist.")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise InputError(f"Folder {str(path)!r} holds no text files (looked for {', '.join(suffixes[:6])}, ...).")
    return files


def text_corpus(path: str | Path, tokenizer: Any = None, min_tokens: int = 2) -> TokenStream:
    """A text file or a folder of text files as a token stream.

    Args:
        path: a file, or a folder searched recursively for :data:`TEXT_SUFFIXES` files.
        tokenizer: ``"byte"`` (default) or any tokenizer :func:`probe.data.get_tokenizer` accepts.
        min_tokens: fail unless the stream has at least this many tokens (``seq_len + 1`` for training).
    """
    from probe.tokenizers import get_tokenizer

    tok = get_tokenizer(tokenizer if tokenizer is not None else "byte")
    files = text_files(path)
    texts = [read_text_file(f) for f in files]
    if not any(t.strip() for t in texts):
        what = "file" if len(files) == 1 else f"{len(files)} files"
        raise InputError(f"Corpus {str(path)!r} is empty (the {what} hold no text).")
    stream = join_documents([encode_fast(tok, t) for t in texts], tok.eos_token_id,
                            sum(len(t.encode("utf-8")) for t in texts), str(path),
                            {"source": "text", "files": len(files), "tokenizer": getattr(tok, "name", "?")})
    _check_min(stream, min_tokens)
    return stream


def hf_corpus(dataset: Any, text_field: str = "text", tokenizer: Any = None, split: str | None = None,
              max_documents: int | None = None, min_tokens: int = 2, **load_kwargs) -> TokenStream:
    """A Hugging Face dataset as a token stream.

    Args:
        dataset: a ``datasets.Dataset`` (or ``DatasetDict`` with ``split``), or a hub name
            passed to ``datasets.load_dataset(dataset, split=split, **load_kwargs)`` (needs network).
        text_field: the column holding the text.
        max_documents: use only the first rows.
    """
    from probe.tokenizers import get_tokenizer

    if isinstance(dataset, str):
        try:
            import datasets
        except ImportError as exc:
            raise InputError("Loading a hub dataset needs the `datasets` package: pip install datasets.") from exc
        try:
            dataset = datasets.load_dataset(dataset, split=split or "train", **load_kwargs)
        except Exception as exc:  # offline, unknown name, ...
            raise InputError(f"Could not load the dataset {dataset!r}: {exc}") from exc
    elif split is not None and hasattr(dataset, "keys"):
        if split not in dataset:
            raise InputError(f"The dataset has no split {split!r}; it has {', '.join(dataset.keys())}.")
        dataset = dataset[split]
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, dict):
        raise InputError(f"Got a dataset with splits {', '.join(columns)}; pass split=NAME.")
    if columns is not None and text_field not in columns:
        raise InputError(f"The dataset has no column {text_field!r}; its columns are {', '.join(columns)}. "
                         "Pass text_field=NAME.")
    tok = get_tokenizer(tokenizer if tokenizer is not None else "byte")
    rows = dataset[text_field] if max_documents is None else dataset[:max_documents][text_field]
    texts = [t for t in rows if isinstance(t, str)]
    if not texts or not any(t.strip() for t in texts):
        raise InputError(f"The dataset's {text_field!r} column holds no text.")
    name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "hf-dataset"
    stream = join_documents([encode_fast(tok, t) for t in texts], tok.eos_token_id,
                            sum(len(t.encode("utf-8")) for t in texts), name,
                            {"source": "datasets", "documents": len(texts), "tokenizer": getattr(tok, "name", "?")})
    _check_min(stream, min_tokens)
    return stream


def _check_min(stream: TokenStream, min_tokens: int) -> None:
    if len(stream) < min_tokens:
        raise InputError(f"Corpus {stream.name!r} has only {len(stream)} tokens, shorter than one sequence of "
                         f"{min_tokens} tokens; add text or use a smaller seq_len.")
