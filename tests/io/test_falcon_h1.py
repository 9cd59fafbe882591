"""Falcon-H1 (attention and Mamba-2 side by side in every layer, muP multipliers): parity with
transformers' FalconH1ForCausalLM (logits, the Mamba-2 states and KV caches, greedy generation, a saved
folder), every multiplier folded, and checkpoints the converter must refuse."""
import pytest
import torch

from conftest import randomise
from hf_parity import (assert_decode_matches, assert_from_hf_matches, assert_greedy_generation_matches, assert_kv_close,
                       assert_logits_match, assert_recurrent_state_close, hf_run, hf_tokens)
from mixer_checks import assert_segments_match
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_falcon_h1 import falcon_h1_from_hf

transformers = pytest.importorskip("transformers")

VOCAB = 97
#: every muP multiplier away from 1, so a multiplier folded wrongly (or not at all) shows in the logits
MULTIPLIERS = dict(embedding_multiplier=1.7, lm_head_multiplier=0.6, mlp_multipliers=[1.3, 0.7], key_multiplier=0.8,
                   attention_in_multiplier=1.2, attention_out_multiplier=0.9, ssm_in_multiplier=1.1,
                   ssm_out_multiplier=0.75, ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.4])


def hf_falcon_h1(seed=0, **kw):
    """A tiny random ``FalconH1ForCausalLM``: 2 layers of 32, attention 4 heads / 2 kv heads of 8,
    Mamba-2 of width mamba_d_ssm = 48 (not expand * hidden = 64) in 6 heads of 8, 2 groups, chunk 8."""
    from transformers import FalconH1Config, FalconH1ForCausalLM

    torch.manual_seed(seed)
    args = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, mamba_d_ssm=48, mamba_n_heads=6, mamba_n_groups=2, mamba_d_state=8,
                mamba_d_conv=4, mamba_chunk_size=8, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, **MULTIPLIERS)
    args.update(kw)
    return randomise(FalconH1ForCausalLM(FalconH1Config(**args)).eval(), 0.1)  # every weight off its init


VARIANTS = {  # the three Mamba-2 readouts before out_proj; a head_dim of its own (the released checkpoints
    # set one); biases / tied embeddings / a dt clamp
    "no_norm": {"mamba_rms_norm": False},
    "norm_before_gate_head_dim": {"mamba_rms_norm": True, "mamba_norm_before_gate": True, "head_dim": 16},
    "gated_norm_bias_tied": {"mamba_rms_norm": True, "mamba_norm_before_gate": False, "mamba_proj_bias": True,
                             "projectors_bias": True, "attention_bias": True, "mamba_conv_bias": False,
                             "tie_word_embeddings": True, "time_step_limit": (0.0, 0.05), "mamba_n_groups": 1},
}


@pytest.mark.numerical
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_final_states_match_transformers(variant):
    hf = hf_falcon_h1(**VARIANTS[variant])
    model = falcon_h1_from_hf(hf)
    assert model.cfg.layout == ["attn+mamba2"] * 2 and model.cfg.mlp_layout == ["swiglu"] * 2
    toks = hf_tokens(VOCAB, 20)  # 2.5 chunks of 8
    states, cache = assert_logits_match(model, hf, toks, min_logit=1.0)
    for i, layer in enumerate(cache.layers):
        attn, ssm = states.layers[i]["mixer.attn"], states.layers[i]["mixer.mamba2"]
        assert attn["k"].shape == (2, 20, 2, getattr(hf.config, "head_dim", 8)) and ssm["state"].shape == (2, 6, 8, 8)
        assert_kv_close(attn, layer)  # k after key_multiplier
        assert ssm["state"].abs().max() > 1e-3  # (dt clamped to 0.05: small increments)
        assert_recurrent_state_close(ssm, layer)
    assert_segments_match(model, toks, 13)


@pytest.mark.numerical
def test_hooks_show_what_transformers_computes():
    """With the multipliers folded, the embedding, each part's output and the MLP output are
    transformers' own (multipliers included)."""
    hf = hf_falcon_h1(seed=4)
    model = falcon_h1_from_hf(hf)
    toks = hf_tokens(VOCAB, 12, seed=4, batch=1)
    seen = {}
    layer = hf.model.layers[0]
    handles = [layer.mamba.register_forward_hook(lambda m, a, out: seen.__setitem__("mamba", out)),
               layer.self_attn.register_forward_hook(lambda m, a, out: seen.__setitem__("attn", out[0])),
               layer.feed_forward.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp", out))]
    hf_run(hf, toks)
    for h in handles:
        h.remove()
    _, cache = model.run_with_cache(toks)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    close(cache["hook_embed"], hf.model.embed_tokens(toks) * hf.config.embedding_multiplier)
    close(cache["blocks.0.mixer.hook_mamba2_out"], seen["mamba"] * hf.config.ssm_out_multiplier)
    close(cache["blocks.0.mixer.hook_attn_out"], seen["attn"] * hf.config.attention_out_multiplier)
    close(cache["blocks.0.hook_mlp_out"], seen["mlp"])


@pytest.mark.numerical
def test_one_token_decode_matches_transformers_cache():
    hf = hf_falcon_h1(seed=3)
    model = falcon_h1_from_hf(hf)
    assert_decode_matches(model, hf, hf_tokens(VOCAB, 17, seed=3))


def test_generation_matches_transformers_greedy():
    hf = hf_falcon_h1(seed=1)
    hf.generation_config.eos_token_id = None  # generate all 8 tokens (probe's generate has no stop token)
    model = falcon_h1_from_hf(hf)
    assert_greedy_generation_matches(model, hf, hf_tokens(VOCAB, 9, seed=1, batch=1))


@pytest.mark.numerical
def test_from_hf_loads_a_saved_object_and_folder(tmp_path):
    assert_from_hf_matches(hf_falcon_h1(seed=2), tmp_path, hf_tokens(VOCAB, 15, seed=2, batch=1), ["attn+mamba2"] * 2)


def test_bad_checkpoints_and_configs_are_named():
    hf = hf_falcon_h1()
    hf.model.layers[1].self_attn.register_buffer("extra_scale", torch.ones(3))
    with pytest.raises(CheckpointError, match="extra_scale"):
        falcon_h1_from_hf(hf)
    hf = hf_falcon_h1()
    hf.model.layers[0].mamba.A_log = torch.nn.Parameter(torch.zeros(5))
    with pytest.raises(CheckpointError, match="A_log"):
        falcon_h1_from_hf(hf)
    for change, match in (({"mlp_bias": True}, "mlp_bias"), ({"projectors_bias": True}, "projectors_bias"),
                          ({"mamba_n_heads": 4}, "mamba_n_heads \\* mamba_d_head = 32")):
        hf = hf_falcon_h1()
        for k, v in change.items():
            setattr(hf.config, k, v)
        with pytest.raises(ConfigError, match=match):
            falcon_h1_from_hf(hf)
    with pytest.raises(ConfigError, match="FalconH1ForCausalLM"):
        falcon_h1_from_hf(object())
