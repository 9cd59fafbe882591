"""What a user meets when loading and reading tokens: a transformers folder given to ``probe.load`` points
to ``probe.from_hf``; a transformers folder without tokenizer files is an error, not a model that turns
every text into the BOS token; byte tokens past ASCII read as ``\\xe8``, not as Latin-1 letters."""
from __future__ import annotations

import pytest
import torch

import probe
from probe.errors import CheckpointError


@pytest.fixture()
def transformers_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2-tiny")
    return tmp_path / "gpt2-tiny"


def test_probe_load_on_a_transformers_folder_points_to_from_hf(transformers_folder):
    with pytest.raises(CheckpointError, match=r"transformers folder .*probe\.from_hf"):
        probe.load(transformers_folder)


def test_a_transformers_folder_without_tokenizer_files_is_an_error(transformers_folder):
    with pytest.raises(CheckpointError, match="holds no tokenizer files"):
        probe.from_hf(str(transformers_folder))


def test_a_tokenizer_that_yields_no_tokens_is_refused():
    from probe.io.convert_common import resolve_tokenizer

    class Empty:  # a tokenizer object that tokenizes everything to nothing
        vocab_size, bos_token_id, eos_token_id, pad_token_id = 10, 0, 0, 0

        def __len__(self):
            return self.vocab_size

        def encode(self, text, **kw):
            return []

        def decode(self, ids, **kw):
            return ""

    with pytest.raises(CheckpointError, match="turns 'hello world' into no tokens"):
        resolve_tokenizer(probe.ModelConfig(d_model=16, n_heads=2, layout=["attn"]), Empty(), "")


def test_byte_tokens_past_ascii_read_as_escapes():
    model = probe.HookedLM(probe.ModelConfig(d_model=16, n_heads=2, layout=["attn"]))
    assert model.to_str_tokens("计a") == ["<|endoftext|>", "\\xe8", "\\xae", "\\xa1", "a"]
    assert model.to_string(model.to_tokens("计a")[0, 1:]) == "计a"  # decoding is unchanged
