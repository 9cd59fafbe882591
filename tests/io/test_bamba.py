"""Bamba (Mamba-2 + grouped-query attention with half-rotary RoPE, SwiGLU MLPs): parity with
transformers' BambaForCausalLM (logits, the Mamba-2 states and KV caches, greedy generation, a
saved folder), and checkpoints the converter must refuse."""
import pytest
import torch

from conftest import randomise
from hf_parity import (assert_decode_matches, assert_from_hf_matches, assert_greedy_generation_matches, assert_kv_close,
                       assert_logits_match, assert_recurrent_state_close, hf_tokens)
from mixer_checks import assert_segments_match
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_bamba import bamba_from_hf

transformers = pytest.importorskip("transformers")

VOCAB = 97


def hf_bamba(seed=0, **kw):
    """A tiny random ``BambaForCausalLM``: 4 layers, attention at 1 and 3 (4 heads, 2 kv heads of 16),
    Mamba-2 with 8 heads of 16 (64 * expand 2), chunk 16."""
    from transformers import BambaConfig, BambaForCausalLM

    torch.manual_seed(seed)
    args = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4, attn_layer_indices=[1, 3],
                num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1,
                mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16, pad_token_id=0,
                bos_token_id=1, eos_token_id=2)
    args.update(kw)
    return randomise(BambaForCausalLM(BambaConfig(**args)).eval(), 0.05)  # every weight off its init


VARIANTS = {
    "gqa": {},
    "groups2_bias_tied_k3_dtlimit": {"mamba_n_groups": 2, "mamba_proj_bias": True, "mamba_conv_bias": False,
                                     "attention_bias": True, "tie_word_embeddings": True, "mamba_d_conv": 3,
                                     "time_step_limit": (0.0, 0.05), "attn_layer_indices": [0]},
}


@pytest.mark.numerical
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_final_states_match_transformers(variant):
    hf = hf_bamba(**VARIANTS[variant])
    model = bamba_from_hf(hf)
    attn = hf.config.attn_layer_indices
    assert model.cfg.layout == ["attn" if i in attn else "mamba2" for i in range(4)]
    assert model.cfg.mlp_layout == ["swiglu"] * 4 and model.blocks[attn[0]].mixer.rotary_dim == 8
    toks = hf_tokens(VOCAB, 40)  # 2.5 chunks of 16
    states, cache = assert_logits_match(model, hf, toks)
    for i, layer in enumerate(cache.layers):
        mine = states.layers[i]["mixer"]
        if i in attn:
            assert mine["k"].shape == (2, 40, 2, 16)
            assert_kv_close(mine, layer)
        else:
            assert_recurrent_state_close(mine, layer)
    assert_segments_match(model, toks, 23)


@pytest.mark.numerical
def test_one_token_decode_matches_transformers_cache():
    """The next token from probe's carried states equals transformers' one-token step from its cache
    (position ids passed: transformers' Bamba would restart RoPE at 0 otherwise)."""
    hf = hf_bamba(seed=3)
    model = bamba_from_hf(hf)
    assert_decode_matches(model, hf, hf_tokens(VOCAB, 21, seed=3), position_ids=torch.full((2, 1), 20))


def test_generation_matches_transformers_greedy():
    hf = hf_bamba(seed=1, mamba_n_groups=2)
    hf.generation_config.eos_token_id = None  # generate all 8 tokens (probe's generate has no stop token)
    model = bamba_from_hf(hf)
    assert_greedy_generation_matches(model, hf, hf_tokens(VOCAB, 9, seed=1, batch=1))


@pytest.mark.numerical
def test_from_hf_loads_a_saved_object_and_folder(tmp_path):
    assert_from_hf_matches(hf_bamba(seed=2), tmp_path, hf_tokens(VOCAB, 20, seed=2, batch=1),
                           ["mamba2", "attn", "mamba2", "attn"])


def test_bad_checkpoints_and_configs_are_named():
    hf = hf_bamba()
    hf.model.layers[1].self_attn.register_buffer("extra_scale", torch.ones(3))
    with pytest.raises(CheckpointError, match="extra_scale"):
        bamba_from_hf(hf)
    hf = hf_bamba()
    hf.model.layers[0].mamba.A_log = torch.nn.Parameter(torch.zeros(5))
    with pytest.raises(CheckpointError, match="A_log"):
        bamba_from_hf(hf)
    hf = hf_bamba()
    hf.config.attn_layer_indices = [1, 7]
    with pytest.raises(ConfigError, match=r"attn_layer_indices \[7\]"):
        bamba_from_hf(hf)
    hf = hf_bamba()
    hf.config.mlp_bias = True
    with pytest.raises(ConfigError, match="mlp_bias"):
        bamba_from_hf(hf)
    with pytest.raises(ConfigError, match="BambaForCausalLM"):
        bamba_from_hf(object())
