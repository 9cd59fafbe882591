"""Kimi Linear (transformers' ``KimiLinearForCausalLM``: Kimi Delta Attention + NoPE latent attention,
dense and mixture-of-experts MLPs with a sigmoid, bias-corrected, grouped router): converted logits,
every layer's final cache (KDA recurrent and conv states, the latent attention's compressed cache) and a
one-token decode equal transformers'; greedy generation equal; a save_pretrained folder loads through
``probe.from_hf``; configs and tensors probe cannot express are refused by name."""
import warnings

import pytest
import torch

import probe
from conftest import randomise
from probe.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers")
from probe.io.convert_kimi_linear import kimi_linear_from_hf  # noqa: E402

LAYERS = ("linear_attention", "full_attention", "linear_attention")


def hf_kimi_linear(seed=0, **overrides):
    """A tiny random KimiLinearForCausalLM; the router's e_score_correction_bias (zeros at init) is drawn at
    random so that it changes which experts are chosen."""
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    torch.manual_seed(seed)
    # the default special-token ids (163584 ...) exceed a tiny vocabulary
    kw = dict(vocab_size=100, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
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


def _toks(T, seed=0, batch=2):
    return torch.randint(0, 100, (batch, T), generator=torch.Generator().manual_seed(seed))


def _check_cache(model, states, cache):
    """probe's last-position states against transformers' ``DynamicCache`` layer by layer."""
    for i, name in enumerate(model.cfg.layout):
        ours, theirs = states.layers[i]["mixer"], cache.layers[i]
        if name == "kda":
            torch.testing.assert_close(ours["state"], theirs.recurrent_states[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ours["state_conv"], theirs.conv_states[0][..., 1:].transpose(1, 2),
                                       rtol=1e-4, atol=1e-5)
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
    toks = _toks(40)
    with torch.no_grad():
        ref = hf(toks, use_cache=True)
        ours, states = model(toks, return_states=True)
    assert float((ours - ref.logits).abs().max()) <= 1e-4
    assert float(ref.logits.abs().max()) > 0.1
    _check_cache(model, states, ref.cache)


@pytest.mark.numerical
def test_one_token_decode_from_a_carried_state_matches_transformers():
    hf = hf_kimi_linear(seed=1)
    model = kimi_linear_from_hf(hf)
    toks = _toks(21, seed=1)
    with torch.no_grad():
        prefix = hf(toks[:, :-1], use_cache=True)
        step = hf(toks[:, -1:], cache=prefix.cache, use_cache=True)
        _, states = model(toks[:, :-1], return_states=True)
        ours, states = model(toks[:, -1:], states=states, return_states=True)
    assert float((ours - step.logits).abs().max()) <= 1e-4
    _check_cache(model, states, step.cache)


def test_generation_matches_transformers_greedy():
    hf = hf_kimi_linear(seed=2)
    model = kimi_linear_from_hf(hf)
    prompt = _toks(7, seed=2, batch=1)
    ours = model.generate(prompt, max_new_tokens=8, return_type="tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, ref)


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
    hf = hf_kimi_linear(seed=4)
    hf.save_pretrained(tmp_path)  # with a tokenizer beside it: tests/io/test_hub_folders.py
    toks = _toks(15, seed=4, batch=1)
    with torch.no_grad():
        ref = hf(toks).logits
    for source in (hf, str(tmp_path)):
        model = probe.from_hf(source, tokenizer="byte")
        assert model.cfg.layout == ["kda", "mla", "kda"]
        with torch.no_grad():
            assert float((model(toks) - ref).abs().max()) <= 1e-4


def test_unmapped_tensors_and_unsupported_configs_are_named():
    hf = hf_kimi_linear()
    hf.model.layers[1].self_attn.register_buffer("extra", torch.zeros(3))
    with pytest.raises(CheckpointError, match="extra"):
        kimi_linear_from_hf(hf)
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        kimi_linear_from_hf(hf_kimi_linear(num_key_value_heads=2))
    with pytest.raises(ConfigError, match="KimiLinearForCausalLM"):
        kimi_linear_from_hf(torch.nn.Linear(2, 2))
