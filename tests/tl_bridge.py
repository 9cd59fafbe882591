"""A tiny random GPT-2 and its TransformerLens 4 ``TransformerBridge``, built offline.

Offline, ``boot_transformers`` needs the model and a tokenizer saved in a directory (else it
fetches one); a small WordLevel tokenizer is enough. Booting rewrites the HF model's modules, so
anything that reads the HF model itself (``probe.from_hf``) runs before :func:`boot`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from conftest import randomise


def tiny_gpt2(directory: Path):
    """``(hf_model, tokenizer)`` of a 2-layer, d_model 64 random GPT-2 saved in ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    vocab = {f"w{i}": i for i in range(98)} | {"<unk>": 98, "<|endoftext|>": 99}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                    bos_token_id=99, eos_token_id=99)).eval()
    randomise(hf, 0.2)
    hf.save_pretrained(directory)
    tok.save_pretrained(directory)
    return hf, tok


def boot(directory: Path, hf):
    """The ``TransformerBridge`` of the model :func:`tiny_gpt2` saved in ``directory``."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(directory), hf_model=hf, device="cpu")
