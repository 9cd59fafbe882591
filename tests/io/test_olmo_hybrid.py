"""OLMo hybrid (transformers' ``OlmoHybridForCausalLM``: Gated DeltaNet layers with pre-norm blocks,
attention layers with post-norm blocks): converted logits, every layer's final cache (Gated DeltaNet
recurrent and conv states, attention keys and values) and a one-token decode equal transformers';
greedy generation equal; RoPE and NoPE configs, allow_neg_eigval on and off; a save_pretrained folder
loads through ``probe.from_hf``; configs and tensors probe cannot express are refused by name."""
from functools import partial

import pytest
import torch

from conftest import randomise
from hf_parity import (assert_decode_matches, assert_from_hf_matches, assert_greedy_generation_matches,
                       assert_kv_close, assert_logits_match, assert_recurrent_state_close, hf_tokens)
from probe.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers")
from probe.io.convert_olmo_hybrid import olmo_hybrid_from_hf  # noqa: E402

VOCAB = 100
LAYERS = ("linear_attention", "full_attention", "linear_attention")
#: the released checkpoints' positional encoding: none (transformers builds no rotary embedding)
NOPE = {"rope_type": "default", "rope_theta": None}


def hf_olmo_hybrid(seed=0, **overrides):
    """A tiny random OlmoHybridForCausalLM (GQA attention, grouped GDN value heads, RoPE)."""
    from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

    torch.manual_seed(seed)
    # the default special-token ids (100257, 100277) exceed a tiny vocabulary
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=len(LAYERS),
              layer_types=list(LAYERS), num_attention_heads=4, num_key_value_heads=2, linear_num_key_heads=2,
              linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=4, linear_conv_kernel_dim=4,
              pad_token_id=0, eos_token_id=1, max_position_embeddings=256)
    kw.update(overrides)
    hf = OlmoHybridForCausalLM(OlmoHybridConfig(**kw))
    return randomise(hf, 0.15).eval()


_toks = partial(hf_tokens, VOCAB)


def _check_cache(model, states, cache):
    """probe's last-position states against transformers' ``DynamicCache`` layer by layer."""
    for i, name in enumerate(model.cfg.layout):
        ours, theirs = states.layers[i]["mixer"], cache.layers[i]
        if name == "gdn":
            assert_recurrent_state_close(ours, theirs, rtol=1e-4, atol=1e-5)
        else:  # transformers' keys / values [B, H_kv, P, d] (normed, rotated) against [B, P, H_kv, d]
            assert_kv_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_config_places_layers_norms_and_options():
    cfg = olmo_hybrid_from_hf(hf_olmo_hybrid()).cfg
    assert cfg.layout == ["gdn", "attn", "gdn"] and cfg.norm_placement == ["pre", "post", "pre"]
    assert cfg.mlp_layout == ["swiglu"] * 3 and cfg.positional == "rope" and cfg.rope_base == 10000.0
    gdn, attn = cfg.options("gdn"), cfg.options("attn")
    assert gdn["allow_neg_eigval"] and gdn["norm_eps"] == 1e-5 and (gdn["n_k_heads"], gdn["n_v_heads"]) == (2, 4)
    assert attn["qk_norm"] == "projection" and attn["n_kv_heads"] == 2
    nope = olmo_hybrid_from_hf(hf_olmo_hybrid(rope_parameters=NOPE)).cfg
    assert nope.positional == "none"


@pytest.mark.numerical
@pytest.mark.parametrize("variant", [{}, {"rope_parameters": NOPE, "linear_allow_neg_eigval": False,
                                          "tie_word_embeddings": True, "attention_bias": True}])
def test_logits_and_final_states_match_transformers(variant):
    hf = hf_olmo_hybrid(**variant)
    model = olmo_hybrid_from_hf(hf)
    states, cache = assert_logits_match(model, hf, _toks(40))
    _check_cache(model, states, cache)


@pytest.mark.numerical
def test_one_token_decode_from_a_carried_state_matches_transformers():
    """transformers' one-token step (its recurrent GDN form, the attention cache) from its prefix cache, against
    probe carrying its own states: next logits and every cache after the step."""
    hf = hf_olmo_hybrid(seed=1)
    model = olmo_hybrid_from_hf(hf)
    states, cache = assert_decode_matches(model, hf, _toks(21, seed=1))
    _check_cache(model, states, cache)


def test_generation_matches_transformers_greedy():
    hf = hf_olmo_hybrid(seed=2)
    model = olmo_hybrid_from_hf(hf)
    assert_greedy_generation_matches(model, hf, _toks(7, seed=2, batch=1))


def test_beta_hook_shows_the_doubled_write_strength():
    """With allow_neg_eigval, hook_beta is 2 sigmoid(W_b x) (in (0, 2)), as transformers feeds its kernel."""
    model = olmo_hybrid_from_hf(hf_olmo_hybrid(seed=3))
    _, cache = model.run_with_cache(_toks(9, seed=3), names_filter=lambda n: n.startswith("blocks.0."))
    mixer = model.blocks[0].mixer
    torch.testing.assert_close(cache["blocks.0.mixer.hook_beta"],
                               2 * torch.sigmoid(mixer.b_proj(cache["blocks.0.hook_mixer_in"])))
    assert float(cache["blocks.0.mixer.hook_beta"].max()) > 1.0


@pytest.mark.numerical
def test_from_hf_dispatches_objects_and_loads_a_saved_folder(tmp_path):
    # (a saved folder with its tokenizer beside it: tests/io/test_hub_folders.py)
    assert_from_hf_matches(hf_olmo_hybrid(seed=4), tmp_path, _toks(15, seed=4, batch=1), ["gdn", "attn", "gdn"])


def test_unmapped_tensors_and_unsupported_configs_are_named():
    hf = hf_olmo_hybrid()
    hf.model.layers[1].self_attn.register_buffer("extra", torch.zeros(3))
    with pytest.raises(CheckpointError, match="extra"):
        olmo_hybrid_from_hf(hf)
    tied = hf_olmo_hybrid(tie_word_embeddings=True)
    tied.lm_head.weight = torch.nn.Parameter(tied.lm_head.weight.detach() + 1)
    with pytest.raises(CheckpointError, match="tie_word_embeddings=True but lm_head.weight differs"):
        olmo_hybrid_from_hf(tied)
    with pytest.raises(ConfigError, match="hidden_act"):
        olmo_hybrid_from_hf(hf_olmo_hybrid(hidden_act="gelu"))
    with pytest.raises(ConfigError, match="rope_type"):
        olmo_hybrid_from_hf(hf_olmo_hybrid(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}))
    with pytest.raises(ConfigError, match="OlmoHybridForCausalLM"):
        olmo_hybrid_from_hf(torch.nn.Linear(2, 2))
