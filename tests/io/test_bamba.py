"""Bamba (Mamba-2 + grouped-query attention with half-rotary RoPE, SwiGLU MLPs): parity with
transformers' BambaForCausalLM (logits, the Mamba-2 states and KV caches, greedy generation, a
saved folder), and checkpoints the converter must refuse."""
import warnings

import pytest
import torch

import probe
from conftest import randomise
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


def _hf_run(hf, toks, **kw):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # "falling back to its reference PyTorch implementation"
        return hf(toks, **kw)


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
    toks = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))  # 2.5 chunks of 16
    ref = _hf_run(hf, toks, use_cache=True)
    with torch.no_grad():
        ours, states = model(toks, return_states=True)
    assert (ours - ref.logits).abs().max() < 1e-4, (ours - ref.logits).abs().max()
    for i, layer in enumerate(ref.cache.layers):
        mine = states.layers[i]["mixer"]
        if i in attn:  # transformers: [b, kv heads, P, d_head], normed and rotated
            assert mine["k"].shape == (2, 40, 2, 16)
            torch.testing.assert_close(mine["k"], layer.keys.transpose(1, 2), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(mine["v"], layer.values.transpose(1, 2), rtol=1e-5, atol=1e-5)
        else:  # recurrent [b, heads, head_dim, d_state]; conv [b, conv_dim, k] (the last k inputs)
            torch.testing.assert_close(mine["state"], layer.recurrent_states[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(mine["state_conv"], layer.conv_states[0][..., 1:].transpose(1, 2),
                                       rtol=1e-5, atol=1e-6)
    assert_segments_match(model, toks, 23)


@pytest.mark.numerical
def test_one_token_decode_matches_transformers_cache():
    """The next token from probe's carried states equals transformers' one-token step from its cache
    (position ids passed: transformers' Bamba would restart RoPE at 0 otherwise)."""
    hf = hf_bamba(seed=3)
    model = bamba_from_hf(hf)
    toks = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(3))
    ref = _hf_run(hf, toks[:, :20], use_cache=True)
    step = _hf_run(hf, toks[:, 20:], cache=ref.cache, use_cache=True, position_ids=torch.full((2, 1), 20))
    with torch.no_grad():
        _, states = model(toks[:, :20], return_states=True)
        ours = model(toks[:, 20:], states=states)
    assert (ours - step.logits).abs().max() < 1e-4, (ours - step.logits).abs().max()


def test_generation_matches_transformers_greedy():
    hf = hf_bamba(seed=1, mamba_n_groups=2)
    hf.generation_config.eos_token_id = None  # generate all 8 tokens (probe's generate has no stop token)
    model = bamba_from_hf(hf)
    prompt = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    ours = model.generate(prompt, max_new_tokens=8, return_type="tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, ref)


@pytest.mark.numerical
def test_from_hf_loads_a_saved_object_and_folder(tmp_path):
    hf = hf_bamba(seed=2)
    toks = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(2))
    ref = _hf_run(hf, toks).logits
    hf.save_pretrained(tmp_path)
    for source in (hf, str(tmp_path)):
        model = probe.from_hf(source, tokenizer="byte")
        assert model.cfg.layout == ["mamba2", "attn", "mamba2", "attn"]
        with torch.no_grad():
            assert (model(toks) - ref).abs().max() < 1e-4


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
