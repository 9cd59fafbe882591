"""A checkpoint folder as the hub holds one, written offline: a small tokenizer beside the model files.

``save_tokenizer(folder, vocab_size)`` writes a WordLevel tokenizer (``tokenizer.json``,
``tokenizer_config.json``, ...) whose ids fit a model of ``vocab_size`` ids: ``w0 .. w{n-3}``, then
``<unk>`` and ``<eos>``; text splits on whitespace.
"""
from __future__ import annotations

from pathlib import Path


def save_tokenizer(folder: Path, vocab_size: int):
    """Write a tokenizer of ``vocab_size`` ids into ``folder``; returns it (``PreTrainedTokenizerFast``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 2)} | {"<unk>": vocab_size - 2, "<eos>": vocab_size - 1}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    tok.save_pretrained(folder)
    return tok


def text(n: int = 12, vocab_size: int = 60) -> str:
    """``n`` words of that tokenizer, a fixed pseudo-random sequence."""
    return " ".join(f"w{(7 * i + 3) % (vocab_size - 2)}" for i in range(n))
