"""Falcon-H1 (attention and Mamba-2 side by side in every layer, muP multipliers): parity with
transformers' FalconH1ForCausalLM (logits, the Mamba-2 states and KV caches, greedy generation, a saved
folder), every multiplier folded, and checkpoints the converter must refuse."""
import warnings

import pytest
import torch

import probe
from conftest import randomise
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


def _hf_run(hf, toks, **kw):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # "falling back to its reference PyTorch implementation"
        return hf(toks, **kw)


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
    toks = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))  # 2.5 chunks of 8
    ref = _hf_run(hf, toks, use_cache=True)
    with torch.no_grad():
        ours, states = model(toks, return_states=True)
    assert ref.logits.abs().max() > 1.0  # a model whose logits all vanish would match anything
    assert (ours - ref.logits).abs().max() < 1e-4, (ours - ref.logits).abs().max()
    for i, layer in enumerate(ref.cache.layers):
        attn, ssm = states.layers[i]["mixer.attn"], states.layers[i]["mixer.mamba2"]
        assert attn["k"].shape == (2, 20, 2, getattr(hf.config, "head_dim", 8)) and ssm["state"].shape == (2, 6, 8, 8)
        # transformers: keys / values [b, kv heads, P, d_head] (rotated, k after key_multiplier)
        torch.testing.assert_close(attn["k"], layer.keys.transpose(1, 2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attn["v"], layer.values.transpose(1, 2), rtol=1e-5, atol=1e-5)
        # recurrent [b, heads, head_dim, d_state]; conv [b, conv_dim, k] (the last k inputs)
        assert ssm["state"].abs().max() > 1e-3  # (dt clamped to 0.05: small increments)
        torch.testing.assert_close(ssm["state"], layer.recurrent_states[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ssm["state_conv"], layer.conv_states[0][..., 1:].transpose(1, 2),
                                   rtol=1e-5, atol=1e-6)
    assert_segments_match(model, toks, 13)


@pytest.mark.numerical
def test_hooks_show_what_transformers_computes():
    """With the multipliers folded, the embedding, each part's output and the MLP output are
    transformers' own (multipliers included)."""
    hf = hf_falcon_h1(seed=4)
    model = falcon_h1_from_hf(hf)
    toks = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(4))
    seen = {}
    layer = hf.model.layers[0]
    handles = [layer.mamba.register_forward_hook(lambda m, a, out: seen.__setitem__("mamba", out)),
               layer.self_attn.register_forward_hook(lambda m, a, out: seen.__setitem__("attn", out[0])),
               layer.feed_forward.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp", out))]
    _hf_run(hf, toks)
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
    toks = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(3))
    ref = _hf_run(hf, toks[:, :16], use_cache=True)
    step = _hf_run(hf, toks[:, 16:], cache=ref.cache, use_cache=True)
    with torch.no_grad():
        _, states = model(toks[:, :16], return_states=True)
        ours = model(toks[:, 16:], states=states)
    assert (ours - step.logits).abs().max() < 1e-4, (ours - step.logits).abs().max()


def test_generation_matches_transformers_greedy():
    hf = hf_falcon_h1(seed=1)
    hf.generation_config.eos_token_id = None  # generate all 8 tokens (probe's generate has no stop token)
    model = falcon_h1_from_hf(hf)
    prompt = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    ours = model.generate(prompt, max_new_tokens=8, return_type="tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, ref)


@pytest.mark.numerical
def test_from_hf_loads_a_saved_object_and_folder(tmp_path):
    hf = hf_falcon_h1(seed=2)
    toks = torch.randint(0, VOCAB, (1, 15), generator=torch.Generator().manual_seed(2))
    ref = _hf_run(hf, toks).logits
    hf.save_pretrained(tmp_path)
    for source in (hf, str(tmp_path)):
        model = probe.from_hf(source, tokenizer="byte")
        assert model.cfg.layout == ["attn+mamba2"] * 2
        with torch.no_grad():
            assert (model(toks) - ref).abs().max() < 1e-4


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
