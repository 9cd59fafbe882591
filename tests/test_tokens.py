"""Tokenizers and the TransformerLens-style token helpers."""
import pytest
import torch

import probe
from probe.tokenizers import ByteTokenizer, HFTokenizer, get_tokenizer
from conftest import make_model


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return 'é' + x  # ünïcode"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([256] + tok.encode("ab")) == "<|endoftext|>ab"


def test_model_token_helpers():
    model = make_model("qrnn")
    toks = model.to_tokens("hi")
    assert toks.tolist() == [[256, ord("h"), ord("i")]]
    assert model.to_tokens("hi", prepend_bos=False).tolist() == [[104, 105]]
    assert model.to_str_tokens("hi") == ["<|endoftext|>", "h", "i"]
    assert model.to_string(toks[0]) == "<|endoftext|>hi"
    assert model.to_single_token("a") == 97
    batch = model.to_tokens(["a", "abc"])
    assert batch.shape == (2, 4) and batch[0, 2] == 256  # right-padded
    with pytest.raises(probe.InputError, match="not one"):
        model.to_single_token("ab")
    text = model.generate("ab", max_new_tokens=3)
    assert isinstance(text, str) and text.startswith("<|endoftext|>ab")


def test_hf_tokenizer_object_is_accepted():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, "<eos>": 1, "hello": 2, "world": 3}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="[UNK]")
    model = probe.HookedLM(probe.ModelConfig(vocab_size=4, d_model=16, layout=["qrnn"]), tokenizer=hf)
    assert isinstance(model.tokenizer, HFTokenizer)
    assert model.to_tokens("hello world").tolist() == [[1, 2, 3]]
    assert model(model.to_tokens("hello world")).shape == (1, 3, 4)
    assert isinstance(get_tokenizer(hf), HFTokenizer)
