r"""The corpus of a harvest: sequences in a fixed order, cut into shards by index.

Every source becomes one :class:`Windows`: token ids of all sequences in one flat array
with offsets (``sequence i = tokens[offsets[i] : offsets[i + 1]]``) and per-token labels in
the same layout. Shard ``k`` holds sequences ``k * shard_size .. (k + 1) * shard_size - 1``,
so the boundaries depend only on the corpus order and the shard size: a resumed harvest and
a harvest on any number of workers cut the corpus identically.

Sources (:func:`load_corpus`):

==========================  =============================================================
``"stdlib"``/``"stdlib:val"``  the running Python's standard library (split ``train`` by
                            default), one file after another, with the per-byte syntax
                            labels of :mod:`probe.data.code_corpus`
a file or folder of text    :func:`probe.data.text_corpus` (no labels)
a saved HF dataset folder   ``datasets.load_from_disk`` (``save_to_disk`` output), its
                            ``text_field`` column (no labels)
anything else               what :func:`probe.methods.support.labelled_sequences.as_sequences` accepts:
                            texts, token ids, a TokenStream, ``(tokens, labels)`` pairs
==========================  =============================================================

Streams are cut into consecutive windows of ``seq_len`` tokens (the last may be shorter);
texts given one by one stay one sequence each (up to ``seq_len`` tokens a window).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probe.errors import InputError


@dataclass
class Windows:
    """Sequences as flat arrays.

    Attributes:
        tokens: ``[n_tokens]`` int32 ids of every sequence, one after another.
        offsets: ``[n_sequences + 1]`` int64; sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.
        labels: ``{name: [n_tokens]}`` per-token labels in the same layout.
        name: where the corpus came from.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = "corpus"

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def sequence(self, i: int) -> np.ndarray:
        """Token ids of sequence ``i`` (int64)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]].astype(np.int64)

    def label(self, name: str, i: int) -> np.ndarray:
        return self.labels[name][self.offsets[i] : self.offsets[i + 1]]

    def n_shards(self, shard_size: int) -> int:
        return -(-len(self) // shard_size)

    def shard(self, k: int, shard_size: int) -> range:
        """The sequence indices of shard ``k``."""
        return range(k * shard_size, min((k + 1) * shard_size, len(self)))

    def digest(self) -> str:
        """A hash of the tokens, boundaries and label values: a resumed harvest must see the same corpus."""
        h = hashlib.sha256(self.tokens.tobytes())
        h.update(self.offsets.tobytes())
        for name in sorted(self.labels):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.labels[name]).tobytes())
        return h.hexdigest()[:16]


def from_sequences(tokens: list[np.ndarray], labels: dict[str, list[np.ndarray]], name: str) -> Windows:
    """Flatten ragged sequences (and their per-token labels) into :class:`Windows`."""
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(tokens).astype(np.int32) if tokens else np.zeros(0, np.int32)
    return Windows(flat, offsets, {k: np.concatenate(v) for k, v in labels.items()}, name)


def load_corpus(model, source, *, seq_len: int = 256, max_tokens: int | None = None, text_field: str = "text",
                prepend_bos: bool | None = None) -> Windows:
    """The corpus ``source`` (see the module docstring) as :class:`Windows` for ``model``.

    ``max_tokens`` keeps only the first sequences holding that many tokens (whole sequences)."""
    from probe.methods.support.labelled_sequences import as_sequences

    data, name = _source_data(model, source, text_field)
    seqs = as_sequences(model, data, None, seq_len=seq_len, prepend_bos=prepend_bos)
    tokens, labels = seqs.tokens, seqs.labels
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InputError(f"max_tokens must be a positive integer, got {max_tokens!r}.")
        keep = int(np.searchsorted(np.cumsum(seqs.lengths), max_tokens)) + 1
        tokens, labels = tokens[:keep], {k: v[:keep] for k, v in labels.items()}
    return from_sequences(tokens, labels, name)


def _source_data(model, source, text_field: str):
    """``(data for as_sequences, name)`` of a corpus source."""
    if isinstance(source, str) and (source == "stdlib" or source.startswith("stdlib:")):
        from probe.data.code_corpus import SPLITS, CodeCorpus

        split = source.partition(":")[2] or "train"
        if split not in SPLITS:
            raise InputError(f"Unknown stdlib split {split!r}; use stdlib:train, stdlib:val or stdlib:test.")
        return list(CodeCorpus(split).labelled()), f"stdlib-{split}"
    if isinstance(source, Path) or (isinstance(source, str) and Path(source).exists()):
        path = Path(source)
        if path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            return _saved_dataset(model, path, text_field), str(path)
        from probe.data.text_corpus import text_corpus

        return text_corpus(path, tokenizer=model.tokenizer), str(path)
    if isinstance(source, str) and ("/" in source or source.endswith((".txt", ".md", ".py"))):
        raise InputError(f"Corpus {source!r} does not exist: give a text file, a folder, a saved dataset "
                         "folder (datasets save_to_disk), 'stdlib[:split]', or texts.")
    return source, getattr(source, "name", "in-memory")


def _saved_dataset(model, path: Path, text_field: str):
    """The token stream of a dataset folder written by ``datasets.Dataset.save_to_disk``."""
    try:
        import datasets
    except ImportError as exc:
        raise InputError(f"{str(path)!r} is a saved Hugging Face dataset; reading it needs `datasets` "
                         "(pip install 'probe[hf]' datasets).") from exc
    from probe.data.text_corpus import hf_corpus

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise InputError(f"{str(path)!r} holds splits {list(ds)}; point at one split's folder.")
        ds = ds["train"]
    return hf_corpus(ds, text_field, tokenizer=model.tokenizer)
