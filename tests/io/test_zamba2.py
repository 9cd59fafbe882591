"""Zamba2: parity with transformers' Zamba2ForCausalLM (logits, final Mamba-2 states and shared-block KV
caches equal to transformers' cache, greedy generation, a save_pretrained folder), the hooks of each
shared-block use following transformers' shared transformer, and clear errors."""
import warnings

import pytest
import torch

import probe
from conftest import randomise
from hf_parity import (assert_from_hf_matches, assert_greedy_generation_matches, assert_kv_close, assert_logits_match,
                       assert_recurrent_state_close, hf_run, hf_tokens)
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_zamba2 import zamba2_from_hf

transformers = pytest.importorskip("transformers")

VOCAB = 97


def hf_zamba2(seed=0, **kw):
    """A tiny random ``Zamba2ForCausalLM``: 6 layers, 3 hybrid (uses 0, 1, 2 of 2 shared blocks, so block
    0 serves layers 1 and 5), 4 attention heads of 2 * 32 / 4 = 16, Mamba-2 with 4 heads of 16, chunk 8."""
    from transformers import Zamba2Config, Zamba2ForCausalLM

    torch.manual_seed(seed)
    args = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=6, max_position_embeddings=128,
                layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid"],
                mamba_d_state=8, n_mamba_heads=4, mamba_ngroups=2, chunk_size=8, num_attention_heads=4,
                intermediate_size=48, num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=4,
                use_mem_rope=True)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return randomise(Zamba2ForCausalLM(Zamba2Config(**args)).eval(), 0.05)  # every weight off its init


VARIANTS = {
    "adapters_rope_2blocks": {},
    "no_attn_adapters_no_rope_1block_silu": {"use_shared_attention_adapter": False, "use_mem_rope": False,
                                             "num_mem_blocks": 1, "hidden_act": "silu", "mamba_ngroups": 1},
    "gqa": {"use_shared_attention_adapter": False, "num_key_value_heads": 2, "num_mem_blocks": 1},
}


@pytest.mark.numerical
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_final_states_match_transformers(variant):
    hf = hf_zamba2(**VARIANTS[variant])
    model = zamba2_from_hf(hf)
    c = hf.config
    assert model.cfg.shared_layout == [None, 0, None, 1 % c.num_mem_blocks, None, 2 % c.num_mem_blocks]
    toks = hf_tokens(VOCAB, 29)  # 3.6 chunks of 8
    states, cache = assert_logits_match(model, hf, toks)
    # states after six layers of chunked scans: 5e-6 + 5e-5 |x| (measured within 0.14 of it under the
    # default, avx2 and avx512 CPU paths)
    tol = dict(rtol=5e-5, atol=5e-6)
    for i, layer in enumerate(cache.layers):
        mine = states.layers[i]
        assert_recurrent_state_close(mine["mixer"], layer, **tol)
        if c.layers_block_type[i] == "hybrid":
            assert_kv_close(mine["shared"], layer, **tol)
        else:
            assert "shared" not in mine


def test_shared_weights_are_held_once_and_the_parameters_match():
    hf = hf_zamba2()
    model = zamba2_from_hf(hf)
    assert len(model.shared_blocks) == 2
    shared = [k for k in model.state_dict() if k.startswith("shared_blocks.")]
    assert len(shared) == 2 * 8  # 8 tensors per block, once each
    assert model.blocks[1].shared.block is model.blocks[5].shared.block is model.shared_blocks[0]
    ours = sum(p.numel() for p in model.parameters()) - model.b_U.numel()  # probe's unembedding bias (zero)
    theirs = sum(p.numel() for p in hf.parameters())  # transformers also counts each tied tensor once
    assert ours == theirs


@pytest.mark.numerical
def test_hooks_of_each_use_follow_transformers_shared_transformer():
    """Each use's hooks hold what transformers' shared transformer computes at that layer: its output
    ``hook_mlp_out`` and the projected contribution ``hook_out`` (captured from the reference's modules)."""
    hf = hf_zamba2(seed=3)
    model = zamba2_from_hf(hf)
    toks = hf_tokens(VOCAB, 12, seed=3, batch=1)
    seen = {}
    handles = [hf.model.layers[i].shared_transformer.register_forward_hook(
                   lambda m, a, kw, out, i=i: seen.__setitem__(("block", i), out), with_kwargs=True)
               for i in (1, 3, 5)]
    handles += [hf.model.layers[i].linear.register_forward_hook(
                    lambda m, a, out, i=i: seen.__setitem__(("out", i), out)) for i in (1, 3, 5)]
    try:
        hf_run(hf, toks)
    finally:
        for h in handles:
            h.remove()
    _, cache = model.run_with_cache(toks)
    for i in (1, 3, 5):
        torch.testing.assert_close(cache[f"blocks.{i}.shared.hook_mlp_out"], seen["block", i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cache[f"blocks.{i}.shared.hook_out"], seen["out", i], rtol=1e-4, atol=1e-5)
    # block 0 serves layers 1 and 5 with different inputs and adapters: different outputs
    assert not torch.allclose(cache["blocks.1.shared.hook_out"], cache["blocks.5.shared.hook_out"])


def test_generation_matches_transformers_greedy():
    hf = hf_zamba2(seed=1)
    model = probe.from_hf(hf)  # dispatched on model_type "zamba2"
    assert_greedy_generation_matches(model, hf, hf_tokens(VOCAB, 9, seed=1, batch=1))


@pytest.mark.numerical
def test_from_hf_loads_a_saved_folder_and_probe_saves_it_back(tmp_path):
    toks = hf_tokens(VOCAB, 20, seed=2, batch=1)
    model = assert_from_hf_matches(hf_zamba2(seed=2), tmp_path / "hf", toks, ["mamba2"] * 6)
    with torch.no_grad():
        ours = model(toks)
    model.save(tmp_path / "probe")
    again = probe.load(tmp_path / "probe")
    assert again.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(again(toks), ours)


def test_bad_config_and_checkpoints_are_named():
    with pytest.raises(ConfigError, match="rms_norm_eps"):
        zamba2_from_hf(hf_zamba2(rms_norm_eps=1e-6))
    with pytest.raises(ConfigError, match="add_bias_linear"):
        zamba2_from_hf(hf_zamba2(add_bias_linear=True))
    with pytest.raises(ConfigError, match="hidden_act='relu'"):
        zamba2_from_hf(hf_zamba2(hidden_act="relu"))
    with pytest.raises(ConfigError, match="no hybrid layer"):
        zamba2_from_hf(hf_zamba2(layers_block_type=["mamba"] * 6))
    hf = hf_zamba2()
    with torch.no_grad():  # untie one copy of a shared weight
        layer5 = hf.model.layers[5].shared_transformer
        layer5.pre_ff_layernorm.weight = torch.nn.Parameter(layer5.pre_ff_layernorm.weight + 1)
    with pytest.raises(CheckpointError, match="should be tied"):
        zamba2_from_hf(hf)
    with pytest.raises(CheckpointError, match="tie_word_embeddings"):  # transformers then unties the blocks
        zamba2_from_hf(hf_zamba2(tie_word_embeddings=False))
    hf = hf_zamba2()
    hf.register_buffer("stray", torch.zeros(2))
    with pytest.raises(CheckpointError, match="stray"):
        zamba2_from_hf(hf)
    with pytest.raises(ConfigError, match="Zamba2ForCausalLM"):
        zamba2_from_hf(object())
