"""Kimi Linear (transformers' ``KimiLinearForCausalLM``: Kimi Delta Attention + NoPE latent attention,
dense and mixture-of-experts MLPs with a sigmoid, bias-corrected, grouped router): converted logits,
every layer's final cache (KDA recurrent and conv states, the latent attention's compressed cache) and a
one-token decode equal transformers'; greedy generation equal; a save_pretrained folder loads through
``probe.from_hf``; configs and tensors probe cannot express are refused by name."""
from functools import partial

import pytest
import torch

from conftest import randomise
from hf_parity import (assert_decode_matches, assert_from_hf_matches, assert_greedy_generation_matches,
                       assert_logits_match, assert_recurrent_state_close, hf_tokens)
from probe.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers")
from probe.io.convert_kimi_linear import kimi_linear_from_hf  # noqa: E402

VOCAB = 100
LAYERS = ("linear_attention", "full_attention", "linear_attention")


def hf_kimi_linear(seed=0, **overrides):
    """A tiny random KimiLinearForCausalLM; the router's e_score_correction_bias (zeros at init) is drawn at
    random so that it changes which experts are chosen."""
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    torch.manual_seed(seed)
    # the default special-token ids (163584 ...) exceed a tiny vocabulary
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
              num_hidden_layers=len(LAYERS), layer_types=list(LAYERS), mlp_layer_types=["dense", "sparse", "sparse"],
              num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=12, q_lora_rank=None, qk_rope_head_dim=4,
              qk_nope_head_dim=8, v_head_dim=6, num_local_experts=4, num_experts_per_tok=2, n_shared_experts=1,
              n_group=2, topk_group=1, routed_scaling_factor=2.5, linear_num_heads=2, linear_head_dim=8,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    hf = randomise(KimiLinearForCausalLM(KimiLinearConfig(**kw)), 0.15).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(kw["num_local_experts"]) * 0.5)
    return hf


_toks = partial(hf_tokens, VOCAB)


def _check_cache(model, states, cache):
    """probe's last-position states against transformers' ``DynamicCache`` layer by layer."""
    for i, name in enumerate(model.cfg.layout):
        ours, theirs = states.layers[i]["mixer"], cache.layers[i]
        if name == "kda":
            assert_recurrent_state_close(ours, theirs, rtol=1e-4, atol=1e-5)
        else:  # the latent cache: transformers' keys / values [B, 1, P, width]
            torch.testing.assert_close(ours["kv_latent"], theirs.keys[:, 0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ours["k_rot"], theirs.values[:, 0], rtol=1e-4, atol=1e-5)


def test_config_places_layers_experts_and_options():
    cfg = kimi_linear_from_hf(hf_kimi_linear()).cfg
    assert cfg.layout == ["kda", "mla", "kda"] and cfg.mlp_layout == ["swiglu", "moe", "moe"]
    assert cfg.positional == "none"
    moe, mla = cfg.options("moe"), cfg.options("mla")
    assert moe["router"] == "sigmoid" and moe["selection_bias"] and (moe["n_group"], moe["topk_group"]) == (2, 1)
    assert moe["d_shared"] == 16 and moe["routed_scaling_factor"] == 2.5 and moe["renormalize"]
    assert (mla["kv_rank"], mla["d_nope"], mla["d_rope"], mla["d_v"], mla["q_rank"]) == (12, 8, 4, 6, None)


@pytest.mark.numerical
@pytest.mark.parametrize("variant", [{}, {"q_lora_rank": 10, "tie_word_embeddings": True, "n_group": 1,
                                          "norm_topk_prob": False, "attention_bias": True}])
def test_logits_and_final_states_match_transformers(variant):
    hf = hf_kimi_linear(**variant)
    model = kimi_linear_from_hf(hf)
    states, cache = assert_logits_match(model, hf, _toks(40))
    _check_cache(model, states, cache)


@pytest.mark.numerical
def test_one_token_decode_from_a_carried_state_matches_transformers():
    hf = hf_kimi_linear(seed=1)
    model = kimi_linear_from_hf(hf)
    states, cache = assert_decode_matches(model, hf, _toks(21, seed=1))
    _check_cache(model, states, cache)


def test_generation_matches_transformers_greedy():
    hf = hf_kimi_linear(seed=2)
    model = kimi_linear_from_hf(hf)
    assert_greedy_generation_matches(model, hf, _toks(7, seed=2, batch=1))


@pytest.mark.numerical
def test_router_hooks_show_transformers_routing():
    """hook_router_logits is transformers' router logits and hook_expert_weights its top-k weights (the
    correction bias chooses, never weights)."""
    hf = hf_kimi_linear(seed=3)
    model = kimi_linear_from_hf(hf)
    toks = _toks(12, seed=3)
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.startswith("blocks.1."))
    with torch.no_grad():
        logits, weights, chosen = hf.model.layers[1].mlp.gate(cache["blocks.1.hook_mlp_in"])
    torch.testing.assert_close(cache["blocks.1.mlp.hook_router_logits"].reshape(logits.shape), logits)
    dense = torch.zeros_like(logits).scatter(1, chosen, weights)
    torch.testing.assert_close(cache["blocks.1.mlp.hook_expert_weights"].reshape(dense.shape), dense)


@pytest.mark.numerical
def test_from_hf_dispatches_objects_and_loads_a_saved_folder(tmp_path):
    # (a saved folder with its tokenizer beside it: tests/io/test_hub_folders.py)
    assert_from_hf_matches(hf_kimi_linear(seed=4), tmp_path, _toks(15, seed=4, batch=1), ["kda", "mla", "kda"])


def test_unmapped_tensors_and_unsupported_configs_are_named():
    hf = hf_kimi_linear()
    hf.model.layers[1].self_attn.register_buffer("extra", torch.zeros(3))
    with pytest.raises(CheckpointError, match="extra"):
        kimi_linear_from_hf(hf)
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        kimi_linear_from_hf(hf_kimi_linear(num_key_value_heads=2))
    with pytest.raises(ConfigError, match="KimiLinearForCausalLM"):
        kimi_linear_from_hf(torch.nn.Linear(2, 2))
