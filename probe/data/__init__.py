"""Data: tokenizers, corpora and labelled synthetic tasks."""
from probe.data.tokenizers import ByteTokenizer, HFTokenizer, get_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "get_tokenizer"]
