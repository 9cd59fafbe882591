"""from_hf: converted models give the reference's logits (tiny random configs built in memory, no download)."""
import importlib.util

import pytest
import torch

import probe

transformers = pytest.importorskip("transformers")

VOCAB = 100
TOL = 1e-4


def _noisy(model, scale=0.2, seed=0):
    """Random weights of a visible size (the default inits leave some paths near zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _ids(T=37, batch=2, seed=1):
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def gpt2(**kw):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return _noisy(GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                             bos_token_id=0, eos_token_id=0, **kw)))


def rwkv(**kw):
    from transformers import RwkvConfig, RwkvForCausalLM
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, intermediate_size=96, attention_hidden_size=64,
               rescale_every=0, context_length=128, bos_token_id=0, eos_token_id=0)
    return _noisy(RwkvForCausalLM(RwkvConfig(**{**cfg, **kw})))


def xlstm_hf():
    from transformers import xLSTMConfig, xLSTMForCausalLM
    torch.manual_seed(0)
    cfg = xLSTMConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_heads=4, qk_dim_factor=0.5,
                      mode="inference", chunk_size=16, autocast_kernel_dtype="float32", use_cache=False,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return _noisy(xLSTMForCausalLM(cfg))


def test_gpt2_parity():
    ref = gpt2()
    model = probe.from_hf(ref)
    assert model.cfg.layout == ["attn", "attn"] and model.cfg.mlp == "gelu_tanh" and model.cfg.tie_embeddings
    ids = _ids()
    with torch.no_grad():
        assert _max_diff(model(ids), ref(ids).logits) < TOL
        # the KV-cache continuation equals the reference too
        first, st = model(ids[:, :20], return_states=True)
        assert _max_diff(model(ids[:, 20:], states=st), ref(ids).logits[:, 20:]) < TOL


def test_gpt2_from_a_saved_directory(tmp_path):
    ref = gpt2()
    ref.save_pretrained(tmp_path / "tiny-gpt2")
    model = probe.from_hf(str(tmp_path / "tiny-gpt2"), tokenizer="byte")  # the folder holds no tokenizer files
    with torch.no_grad():
        assert _max_diff(model(_ids()), ref(_ids()).logits) < TOL


@pytest.mark.parametrize("d_attn", [64, 48])
def test_rwkv_parity(d_attn):
    ref = rwkv(attention_hidden_size=d_attn)
    model = probe.from_hf(ref)
    assert model.cfg.layout == ["rwkv"] * 3 and model.cfg.mlp_layout == ["rwkv_channel_mix"] * 3
    ids = _ids()
    with torch.no_grad():
        expected = ref(ids, use_cache=False).logits  # transformers' cache is mis-sized when d_attn != d_model
        assert _max_diff(model(ids), expected) < TOL
        _, st = model(ids[:, :11], return_states=True)  # generation from the carried state
        assert _max_diff(model(ids[:, 11:], states=st), expected[:, 11:]) < TOL


def test_rwkv_conversion_undoes_the_eval_rescaling():
    """transformers halves output weights in place on its first eval forward (rescale_every): the converter
    must read the true weights whatever the model's history."""
    ref = rwkv(rescale_every=1)
    before = probe.from_hf(ref)
    ids = _ids()
    with torch.no_grad():
        ref_logits = ref(ids).logits  # rescales block weights in place
    assert ref.rwkv.layers_are_rescaled
    after = probe.from_hf(ref)
    for name, tensor in before.state_dict().items():
        torch.testing.assert_close(after.state_dict()[name], tensor)
    with torch.no_grad():  # the rescaled reference equals the true model up to the LayerNorm epsilon
        assert _max_diff(after(ids), ref_logits) < 1e-3


def test_xlstm_transformers_parity():
    ref = xlstm_hf()
    model = probe.from_hf(ref)
    assert model.cfg.layout == ["mlstm", "mlstm"] and model.cfg.logit_soft_cap == 30.0
    for T in (32, 37):  # a multiple of the reference's chunk size and not (its recurrent tail)
        ids = _ids(T)
        with torch.no_grad():
            assert _max_diff(model(ids), ref(ids).logits) < TOL
    with torch.no_grad():
        _, st = model(ids[:, :9], return_states=True)
        assert _max_diff(model(ids[:, 9:], states=st), ref(ids).logits[:, 9:]) < TOL


def test_xlstm_fused_weight_layout_maps_like_the_single_one():
    """weight_mode="fused" packs q/k/v/o and the i/f gates into single matrices. transformers cannot build a
    tiny fused model (its init fails), so the fused tensors are packed here from a single-mode model."""
    import copy
    import types

    ref = xlstm_hf()
    sd, fused = ref.state_dict(), {}
    for name, t in sd.items():
        L = name.rsplit("mlstm_layer.", 1)[0] + "mlstm_layer."
        if name.endswith("mlstm_layer.q.weight"):
            fused[L + "qkv_opreact.weight"] = torch.cat([sd[L + k + ".weight"] for k in ("q", "k", "v", "ogate_preact")])
            for kind in ("weight", "bias"):
                fused[L + f"ifgate_preact.{kind}"] = torch.cat([sd[L + f"igate_preact.{kind}"],
                                                                sd[L + f"fgate_preact.{kind}"]])
        elif name.endswith("ffn.proj_up_gate.weight"):
            p = name.rsplit("proj_up_gate.weight", 1)[0]
            fused[p + "proj_up_gate_z.weight"] = torch.cat([t, sd[p + "proj_up.weight"]])
        elif not any(k in name for k in ("mlstm_layer.k.", "mlstm_layer.v.", "ogate_preact", "igate_preact",
                                         "fgate_preact", "ffn.proj_up.")):
            fused[name] = t
    config = copy.deepcopy(ref.config)
    config.weight_mode = "fused"
    model = probe.from_hf(types.SimpleNamespace(config=config, state_dict=lambda: fused))
    ids = _ids(21)
    with torch.no_grad():
        assert _max_diff(model(ids), ref(ids).logits) < TOL


def test_xlstm_package_slstm_parity():
    pytest.importorskip("xlstm")
    from xlstm import FeedForwardConfig, sLSTMBlockConfig, sLSTMLayerConfig, xLSTMLMModel, xLSTMLMModelConfig

    torch.manual_seed(0)
    cfg = xLSTMLMModelConfig(vocab_size=VOCAB, embedding_dim=64, num_blocks=2, context_length=64, slstm_at="all",
                             slstm_block=sLSTMBlockConfig(
                                 slstm=sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=4,
                                                        dtype="float32"),
                                 feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")))
    ref = _noisy(xLSTMLMModel(cfg))
    model = probe.from_hf(ref)
    assert model.cfg.layout == ["slstm", "slstm"] and model.cfg.mlp == "geglu"
    ids = _ids(29)
    with torch.no_grad():
        assert _max_diff(model(ids), ref(ids)) < TOL


def test_xlstm_package_mixed_stack_parity():
    """xLSTM[3:1]-style stack: the paper's mLSTM blocks (no MLP) around an sLSTM block with its FFN."""
    pytest.importorskip("xlstm")
    from xlstm import (FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig, sLSTMLayerConfig,
                       xLSTMLMModel, xLSTMLMModelConfig)

    torch.manual_seed(0)
    cfg = xLSTMLMModelConfig(
        vocab_size=VOCAB, embedding_dim=64, num_blocks=4, context_length=64, slstm_at=[1],
        mlstm_block=mLSTMBlockConfig(mlstm=mLSTMLayerConfig(num_heads=2, conv1d_kernel_size=4, qkv_proj_blocksize=4)),
        slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=4,
                                                            dtype="float32"),
                                     feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu")))
    ref = _noisy(xLSTMLMModel(cfg))
    model = probe.from_hf(ref)
    assert model.cfg.layout == ["mlstm", "slstm", "mlstm", "mlstm"]
    assert model.cfg.mlp_layout == ["none", "geglu", "none", "none"]
    assert model.cfg.options("mlstm")["layer"] == "paper"
    ids = _ids(37)
    with torch.no_grad():
        expected = ref(ids)
        assert _max_diff(model(ids), expected) < TOL
        _, st = model(ids[:, :13], return_states=True)
        assert _max_diff(model(ids[:, 13:], states=st), expected[:, 13:]) < TOL


@pytest.mark.skipif(importlib.util.find_spec("probe.io.convert_mamba") is None,
                    reason="probe/io/convert_mamba.py (the Mamba converter) has not landed yet")
def test_mamba_dispatch_parity():
    from transformers import MambaConfig, MambaForCausalLM
    torch.manual_seed(0)
    ref = _noisy(MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8,
                                              bos_token_id=0, eos_token_id=0, pad_token_id=0)), scale=0.05)
    model = probe.from_hf(ref)
    assert model.cfg.layout == ["mamba", "mamba"]
    ids = _ids(19)
    with torch.no_grad():
        assert _max_diff(model(ids), ref(ids).logits) < TOL


# -- bad input ---------------------------------------------------------------------------------
def test_unsupported_architecture_names_the_supported_ones():
    from transformers import LlamaConfig, LlamaForCausalLM
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(probe.ConfigError, match="No converter for model_type 'llama'.*GPT2LMHeadModel.*RwkvForCausalLM"):
        probe.from_hf(llama)
    with pytest.raises(probe.ConfigError, match="expects a transformers model"):
        probe.from_hf(torch.nn.Linear(2, 2))


def test_weight_shapes_that_contradict_the_config_are_named():
    ref = rwkv()
    ref.config.intermediate_size = 80  # the config now disagrees with the checkpoint
    with pytest.raises(probe.CheckpointError, match=r"feed_forward\.key\.weight.*\(96, 64\).*\(80, 64\)"):
        probe.from_hf(ref)
    g = gpt2()
    g.config.n_embd = 48
    with pytest.raises(probe.CheckpointError, match="shape"):
        probe.from_hf(g)


def test_unsupported_variants_are_refused():
    with pytest.raises(probe.ConfigError, match="scale_attn_by_inverse_layer_idx"):
        probe.from_hf(gpt2(scale_attn_by_inverse_layer_idx=True))
    from transformers import RwkvModel
    with pytest.raises(probe.ConfigError, match="bare RwkvModel"):
        probe.from_hf(RwkvModel(rwkv().config))


def test_converted_model_saves_and_reloads(tmp_path):
    model = probe.from_hf(rwkv())
    model.save(tmp_path / "m")
    again = probe.load(tmp_path / "m")
    ids = _ids(9)
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
