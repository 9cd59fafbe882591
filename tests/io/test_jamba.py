"""Jamba: parity with transformers' JambaForCausalLM built from a tiny random config (Mamba-1 layers with
inner dt / B / C norms, grouped-query attention without positions, MoE and dense SwiGLU MLPs): logits on
whole sequences, every Mamba layer's final state against transformers' cache after a whole-sequence
forward, one-token decode from a carried state, greedy generation, router logits, folder loading, and
clear errors. transformers' Jamba drops the SSM state when continuing with several tokens at once
(REFERENCES.md), so its multi-token continuation is never the reference: probe's own segmented run is
compared with its whole run instead."""
from functools import partial

import pytest
import torch

from conftest import randomise
from hf_parity import (assert_decode_matches, assert_from_hf_matches, assert_greedy_generation_matches,
                       assert_logits_match, assert_recurrent_state_close, hf_run, hf_tokens)
from mixer_checks import assert_segments_match
from probe.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers")
from probe.io.convert_jamba import jamba_from_hf  # noqa: E402

VOCAB = 97


def hf_jamba(seed=0, **kw):
    """4 layers: attention at 1 and 3 (4 query heads, 2 key-value heads), Mamba at 0 and 2; MoE (4 experts,
    top 2) at 0 and 2 when ``expert_layer_offset=0``, dense SwiGLU elsewhere."""
    from transformers import JambaConfig, JambaForCausalLM

    torch.manual_seed(seed)
    args = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                expert_layer_offset=0, num_experts=4, num_experts_per_tok=2, mamba_d_state=8, mamba_d_conv=4,
                mamba_expand=2, pad_token_id=0)
    args.update(kw)
    hf = JambaForCausalLM(JambaConfig(**args)).eval()
    with torch.no_grad():  # the inner norms start at ones: move them so a missed norm shows
        for name, p in hf.named_parameters():
            if "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return randomise(hf, 0.05)


_toks = partial(hf_tokens, VOCAB, low=1)


def test_config_places_layers_experts_and_options():
    model = jamba_from_hf(hf_jamba())
    cfg = model.cfg
    assert cfg.layout == ["mamba", "attn", "mamba", "attn"]
    assert cfg.mlp_layout == ["moe", "swiglu", "moe", "swiglu"]
    assert cfg.positional == "none"
    assert cfg.options("attn")["n_kv_heads"] == 2
    assert cfg.options("mamba")["inner_norms"] and cfg.options("mamba")["dt_rank"] == 2
    assert cfg.options("moe") | {} == {**cfg.options("moe"), "n_experts": 4, "top_k": 2, "router": "softmax",
                                       "renormalize": False, "d_expert": 48}


@pytest.mark.numerical
@pytest.mark.parametrize("variant", [{}, {"expert_layer_offset": 1, "tie_word_embeddings": True,
                                          "mamba_conv_bias": False, "num_key_value_heads": 4}])
def test_logits_and_final_states_match_transformers(variant):
    hf = hf_jamba(**variant)
    model = jamba_from_hf(hf)
    toks = _toks(40)
    states, cache = assert_logits_match(model, hf, toks)
    for i, name in enumerate(model.cfg.layout):
        if name != "mamba":
            continue
        assert_recurrent_state_close(states.layers[i]["mixer"], cache.layers[i])  # state [b, d_inner, d_state]
    assert_segments_match(model, toks, 23)


@pytest.mark.numerical
def test_one_token_decode_from_a_carried_state_matches_transformers():
    """transformers' one-token step (its recurrent form) continues its whole-sequence cache correctly:
    probe carrying its own state gives the same next logits and the same states after the step."""
    hf = hf_jamba(seed=1)
    model = jamba_from_hf(hf)
    states, cache = assert_decode_matches(model, hf, _toks(17, seed=1))
    for i, name in enumerate(model.cfg.layout):
        if name == "mamba":
            torch.testing.assert_close(states.layers[i]["mixer"]["state"], cache.layers[i].recurrent_states[0],
                                       rtol=1e-5, atol=1e-6)


def test_generation_matches_transformers_greedy():
    hf = hf_jamba(seed=2)
    model = jamba_from_hf(hf)
    assert_greedy_generation_matches(model, hf, _toks(9, seed=2, batch=1))


@pytest.mark.numerical
def test_router_logits_hook_shows_transformers_router_logits():
    hf = hf_jamba(seed=3)
    model = jamba_from_hf(hf)
    toks = _toks(12, seed=3)
    ref = hf_run(hf, toks, output_router_logits=True)
    moe_layers = [i for i, kind in enumerate(model.cfg.mlp_layout) if kind == "moe"]
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_router_logits"))
    assert len(ref.router_logits) == len(moe_layers)
    for i, theirs in zip(moe_layers, ref.router_logits):
        torch.testing.assert_close(cache[f"blocks.{i}.mlp.hook_router_logits"].reshape(theirs.shape), theirs,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
def test_from_hf_dispatches_objects_and_loads_a_saved_folder(tmp_path):
    assert_from_hf_matches(hf_jamba(seed=4), tmp_path, _toks(15, seed=4, batch=1), ["mamba", "attn", "mamba", "attn"])


def test_unmapped_tensors_and_unsupported_configs_are_named():
    hf = hf_jamba()
    hf.model.layers[0].mamba.register_buffer("extra", torch.zeros(3))
    with pytest.raises(CheckpointError, match=r"does not map: \['model.layers.0.mamba.extra'\]"):
        jamba_from_hf(hf)
    with pytest.raises(ConfigError, match="hidden_act='gelu'"):
        jamba_from_hf(hf_jamba(hidden_act="gelu"))
