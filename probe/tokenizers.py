r"""Tokenizers: the byte-level default and an adapter for Hugging Face tokenizers.

Both expose the small interface :class:`probe.HookedLM` needs::

    encode(text) -> list[int]        decode(ids) -> str        token_str(id) -> str
    vocab_size, bos_token_id, eos_token_id, pad_token_id
"""
from __future__ import annotations

from typing import Any

from probe.errors import InputError


def utf8(text: str) -> bytes:
    """``text`` as UTF-8, or an :class:`InputError` for a lone surrogate (U+D800..U+DFFF, e.g. from bytes
    decoded with ``errors="surrogateescape"``), which is not valid Unicode and has no UTF-8 bytes.
    Refused rather than replaced: a silent replacement would change what the model reads."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"The text holds a lone surrogate {text[exc.start]!r} at character {exc.start}: it is not "
                         "valid Unicode and has no UTF-8 encoding. Read files with errors='replace' (or "
                         "text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')).") from None


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 plus one special ``<|endoftext|>`` (id 256) used as BOS/EOS/PAD."""

    vocab_size = 257
    bos_token_id = eos_token_id = pad_token_id = 256
    name = "byte"

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"Expected text (str) to tokenize, got {type(text).__name__}.")
        return list(utf8(text))

    def decode(self, ids) -> str:
        out, run = [], []
        for i in (int(i) for i in ids):
            if 0 <= i < 256:
                run.append(i)
                continue
            out.append(bytes(run).decode("utf-8", errors="replace"))
            run = []
            out.append(self.token_str(i))
        out.append(bytes(run).decode("utf-8", errors="replace"))
        return "".join(out)

    def token_str(self, i: int) -> str:
        i = int(i)
        if i == 256:
            return "<|endoftext|>"
        if not 0 <= i < 256:
            raise InputError(f"Token id {i} is outside the byte tokenizer's range 0..256.")
        # a byte past ASCII is part of a multi-byte character: shown as its escape (\xe8), never as the
        # Latin-1 letter it would spell on its own ("计" is \xe8 \xae \xa1, not "è®¡")
        return chr(i) if i < 128 else f"\\x{i:02x}"

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """Adapter around a Hugging Face tokenizer object (``transformers`` / ``tokenizers``)."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.name = getattr(tok, "name_or_path", type(tok).__name__)
        self.vocab_size = len(tok)
        self.bos_token_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.eos_token_id = tok.eos_token_id
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_id

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"Expected text (str) to tokenize, got {type(text).__name__}.")
        utf8(text)
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def token_str(self, i: int) -> str:
        return self.tok.decode([int(i)])

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r})"


def get_tokenizer(spec: Any = "byte"):
    """``"byte"`` -> :class:`ByteTokenizer`; a tokenizer object -> itself (wrapped if from HF);
    any other string -> ``transformers.AutoTokenizer.from_pretrained(spec)`` (needs the ``hf`` extra)."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    if isinstance(spec, (ByteTokenizer, HFTokenizer)):
        return spec
    if isinstance(spec, str):
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise InputError(f"Tokenizer {spec!r} needs the 'hf' extra: pip install 'probe[hf]'.") from exc
        try:
            return HFTokenizer(AutoTokenizer.from_pretrained(spec))
        except Exception as exc:  # offline / unknown id
            raise InputError(f"Could not load the Hugging Face tokenizer {spec!r}: {exc}") from exc
    if hasattr(spec, "encode") and hasattr(spec, "decode"):
        return HFTokenizer(spec)
    raise InputError(f"Cannot use {type(spec).__name__} as a tokenizer: pass 'byte', a Hugging Face "
                     "tokenizer or its name.")
