r"""Token streams: the form every corpus takes for training and evaluation.

A :class:`TokenStream` is one long array of token ids (documents joined by the
tokenizer's end-of-text id) plus the number of *bytes* of text it encodes, so that
bits-per-byte is defined for any tokenizer::

    bpb = (sum of next-token losses in nats) / (ln 2 * number of bytes predicted)

For the byte tokenizer one token is one byte and bpb is the loss in bits per token.

Sampling is a pure function of a ``numpy.random.Generator``: the trainer derives one
generator per step from ``(seed, step)``, so a batch never depends on what ran before it
(this is what makes resumed training identical to training straight through).

Streams are saved as safetensors (``tokens``) plus a JSON sidecar (``meta``), no pickle.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe.errors import InputError


@dataclass
class TokenStream:
    """A corpus as one array of token ids.

    Attributes:
        tokens: ``int64`` array ``[n_tokens]`` (documents separated by ``eos_id``).
        n_bytes: UTF-8 bytes of text the tokens encode (separators excluded).
        eos_id: the separator id between documents (also used as BOS).
        name: where the stream came from (shown in errors and cards).
        meta: free-form facts (file counts, Python version, ...), JSON-serialisable.
    """

    tokens: np.ndarray
    n_bytes: int
    eos_id: int = 256
    name: str = "corpus"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = np.asarray(self.tokens, dtype=np.int64)
        if self.tokens.ndim != 1:
            raise InputError(f"{self.name}: token stream must be 1-D, got shape {self.tokens.shape}.")
        if self.tokens.size == 0:
            raise InputError(f"{self.name} is empty: it holds no text to train or evaluate on.")

    def __len__(self) -> int:
        return int(self.tokens.size)

    @property
    def bytes_per_token(self) -> float:
        """Average bytes per token, a separator counting as one byte (1.0 for the byte tokenizer).
        Bits-per-byte = bits-per-token / bytes_per_token."""
        return (self.n_bytes + int(np.count_nonzero(self.tokens == self.eos_id))) / len(self)

    def check_length(self, seq_len: int) -> None:
        """Raise a clear error if the stream cannot fill one window of ``seq_len + 1`` tokens."""
        if len(self) < seq_len + 1:
            raise InputError(f"{self.name} has only {len(self)} tokens, shorter than one training sequence "
                             f"of {seq_len + 1} tokens; use more text or a smaller seq_len.")

    def sample(self, rng: np.random.Generator, batch: int, seq_len: int) -> np.ndarray:
        """``[batch, seq_len + 1]`` windows at uniformly random offsets."""
        self.check_length(seq_len)
        starts = rng.integers(0, len(self) - seq_len, size=batch)
        return np.stack([self.tokens[s : s + seq_len + 1] for s in starts])

    def windows(self, seq_len: int, max_windows: int | None = None) -> np.ndarray:
        """Consecutive non-overlapping ``[n, seq_len + 1]`` windows from the start (for evaluation)."""
        self.check_length(seq_len)
        n = (len(self) - 1) // seq_len
        if max_windows is not None:
            n = min(n, max_windows)
        return np.stack([self.tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])

    def head(self, n_tokens: int) -> "TokenStream":
        """The first ``n_tokens`` tokens as a new stream (``n_bytes`` scaled proportionally)."""
        n = min(n_tokens, len(self))
        return TokenStream(self.tokens[:n], int(round(self.n_bytes * n / len(self))), self.eos_id,
                           f"{self.name}[:{n}]", dict(self.meta))

    def split_tail(self, fraction: float, min_tokens: int = 2) -> tuple["TokenStream", "TokenStream"]:
        """``(head, tail)`` with the last ``fraction`` of the tokens held out (e.g. for validation);
        both must keep at least ``min_tokens`` tokens."""
        if not 0 < fraction < 1:
            raise InputError(f"The held-out fraction must be in (0, 1), got {fraction}.")
        cut = int(round(len(self) * (1 - fraction)))
        if cut < min_tokens or len(self) - cut < min_tokens:
            raise InputError(f"{self.name} has {len(self)} tokens: too short to hold out {fraction:.0%} and keep "
                             f"{min_tokens} tokens (one sequence) on each side; add text or lower seq_len.")
        parts = []
        for lo, hi, tag in ((0, cut, "train"), (cut, len(self), "val")):
            n = hi - lo
            parts.append(TokenStream(self.tokens[lo:hi], int(round(self.n_bytes * n / len(self))), self.eos_id,
                                     f"{self.name}[{tag}]", dict(self.meta)))
        return parts[0], parts[1]

    # -- persistence --------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors, the tokens) and ``path.json`` (everything else)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        small = np.int16 if int(self.tokens.max()) < 2**15 else np.int32  # byte streams fit in int16
        save_file({"tokens": torch.from_numpy(self.tokens.astype(small))}, str(path))
        info = {"n_bytes": self.n_bytes, "eos_id": self.eos_id, "name": self.name, "meta": self.meta}
        Path(f"{path}.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TokenStream":
        from safetensors.torch import load_file

        path = Path(path)
        side = Path(f"{path}.json")
        if not path.is_file() or not side.is_file():
            raise InputError(f"No saved token stream at {str(path)!r} (expects the file and {side.name}).")
        info = json.loads(side.read_text())
        tokens = load_file(str(path))["tokens"].numpy().astype(np.int64)
        return cls(tokens, int(info["n_bytes"]), int(info["eos_id"]), info["name"], info.get("meta", {}))


def encode_fast(tokenizer, text: str) -> np.ndarray:
    """``tokenizer.encode(text)`` as an int64 array (a zero-copy byte view for the byte tokenizer)."""
    from probe.tokenizers import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def join_documents(docs: list, eos_id: int, n_bytes: int, name: str, meta: dict | None = None) -> TokenStream:
    """Concatenate tokenised documents, each followed by ``eos_id``."""
    docs = [d for d in docs if len(d)]
    if not docs:
        raise InputError(f"{name} is empty: no document has any text.")
    total = sum(len(d) + 1 for d in docs)
    out = np.empty(total, dtype=np.int64)
    i = 0
    for d in docs:
        out[i : i + len(d)] = d
        out[i + len(d)] = eos_id
        i += len(d) + 1
    return TokenStream(out, n_bytes, eos_id, name, meta or {})


def unigram_bpb(train: TokenStream, val: TokenStream, vocab_size: int) -> float:
    """Bits-per-byte of the add-one-smoothed unigram model fitted on ``train``, scored on ``val``
    (the baseline every model must clearly beat). Counts the same targets as :func:`probe.train.evaluate_bpb`
    would: every token of ``val`` after the first."""
    counts = np.bincount(train.tokens, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = val.tokens[1:]
    nats = -logp[targets].sum()
    return float(nats / math.log(2) / (len(targets) * val.bytes_per_token))
