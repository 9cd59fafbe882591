"""Multi-head latent attention: parity with transformers' Kimi Linear attention (NoPE; full-rank and
low-rank queries) and DeepSeek-V3's (RoPE on the rotary parts): output, the latent cache after a
prefix equal to transformers' cache, a one-token decode from it; the pattern and the decompressed
values reproduce the output; a malformed cache is refused; a sliding window trims the latent cache."""
import pytest
import torch

import probe
from conftest import make_model, randomise, tokens
from probe.errors import InputError

transformers = pytest.importorskip("transformers")

H, R, NOPE, ROPE, DV = 4, 12, 8, 4, 6


def _mixer(positional="none", q_rank=None):
    from probe.mixers.mla import MultiHeadLatentAttention

    opts = {"kv_rank": R, "d_nope": NOPE, "d_rope": ROPE, "d_v": DV, "q_rank": q_rank}
    cfg = probe.ModelConfig(vocab_size=1, d_model=32, n_heads=H, layout=["mla"], d_mlp=0, positional=positional,
                            mixer_options={"mla": opts})
    return MultiHeadLatentAttention(cfg, 0).eval()


def _reference(kind, q_rank=None):
    """A bare transformers MLA module (torch's default init, then noise) and its config."""
    shared = dict(hidden_size=32, num_attention_heads=H, num_key_value_heads=H, kv_lora_rank=R, q_lora_rank=q_rank,
                  qk_rope_head_dim=ROPE, qk_nope_head_dim=NOPE, v_head_dim=DV, vocab_size=10, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    if kind == "kimi":
        from transformers import KimiLinearConfig
        from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearAttention

        config = KimiLinearConfig(num_hidden_layers=1, layer_types=["full_attention"], **shared)
        module = KimiLinearAttention(config, 0)
    else:
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention

        config = DeepseekV3Config(num_hidden_layers=1, rope_interleave=False, **shared)
        module = DeepseekV3Attention(config, 0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "layernorm" in name:
                p.fill_(1.0)
    return randomise(module, 0.15).eval(), config


def _load(mixer, module):
    """The module's weights through the Kimi Linear converter's mapping (DeepSeek-V3 names them alike)."""
    from probe.io.convert_kimi_linear import mla_weights

    sd, used = module.state_dict(), set()
    mixer.load_state_dict(mla_weights(sd, "", used))
    assert used == set(sd)


def _run_reference(kind, module, config, x, cache, start):
    """transformers' forward of ``x`` at positions ``start..`` with an explicit causal mask."""
    T = x.shape[1]
    mask = torch.full((T, start + T), float("-inf")).triu(start + 1)[None, None]
    kwargs = {}
    if kind == "deepseek":
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding

        kwargs["position_embeddings"] = DeepseekV3RotaryEmbedding(config)(x, torch.arange(start, start + T)[None])
    return module(x, attention_mask=mask, cache=cache, **kwargs)[0]


@pytest.mark.numerical
@pytest.mark.parametrize("kind,q_rank", [("kimi", None), ("kimi", 10), ("deepseek", None)])
def test_parity_output_cache_and_decode(kind, q_rank):
    from transformers import DynamicCache

    module, config = _reference(kind, q_rank)
    mixer = _mixer("rope" if kind == "deepseek" else "none", q_rank)
    _load(mixer, module)
    x = torch.randn(2, 13, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = DynamicCache()
        want = _run_reference(kind, module, config, x[:, :12], cache, 0)
        y, state = mixer(x[:, :12])
        assert float((y - want).abs().max()) < 1e-5
        # transformers caches the latent as "keys" and the shared (rotated) key part as "values", [B, 1, P, width]
        torch.testing.assert_close(state["kv_latent"], cache.layers[0].keys[:, 0])
        torch.testing.assert_close(state["k_rot"], cache.layers[0].values[:, 0])
        step_want = _run_reference(kind, module, config, x[:, 12:], cache, 12)
        step, after = mixer(x[:, 12:], state)
        assert float((step - step_want).abs().max()) < 1e-5
        torch.testing.assert_close(after["kv_latent"], cache.layers[0].keys[:, 0])


@pytest.mark.parametrize("positional", ["none", "rope"])
def test_pattern_and_decompressed_values_give_the_output(positional):
    mixer = randomise(_mixer(positional))
    x = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(1))
    seen = {}
    mixer.hook_pattern.add_hook(lambda t, hook: seen.__setitem__("pattern", t))
    mixer.hook_z.add_hook(lambda t, hook: seen.__setitem__("z", t))
    try:
        with torch.no_grad():
            y, state = mixer(x)
            _, v = mixer.decompress(state["kv_latent"], state["k_rot"])
    finally:
        mixer.hook_pattern.remove_hooks()
        mixer.hook_z.remove_hooks()
    torch.testing.assert_close(torch.einsum("bhts,bshd->bthd", seen["pattern"], v), seen["z"])
    torch.testing.assert_close(mixer.W_o(seen["z"].flatten(2)), y)
    assert torch.allclose(seen["pattern"].sum(-1), torch.ones(1, H, 9))


def test_malformed_cache_is_refused():
    mixer = _mixer()
    x = torch.randn(1, 3, 32)
    _, state = mixer(x)
    with pytest.raises(InputError, match="kv_latent"):
        mixer(x, {"k": state["kv_latent"], "v": state["k_rot"]})
    with pytest.raises(InputError, match="same P"):
        mixer(x, {"kv_latent": state["kv_latent"], "k_rot": state["k_rot"][:, :2]})


def test_sliding_window_trims_the_latent_cache():
    """ModelState.kv_length counts the latent cache's positions and keep_last cuts it (long_context's
    sliding window), as for attention's keys and values."""
    model = make_model("mla")
    _, states = model(tokens(1, 10), return_states=True)
    assert states.kv_length() == 10
    kept = states.keep_last(4)
    assert kept.kv_length() == 4 and kept.position == 10
    for layer, before in zip(kept.layers, states.layers):
        assert torch.equal(layer["mixer"]["kv_latent"], before["mixer"]["kv_latent"][:, -4:])
        assert torch.equal(layer["mixer"]["k_rot"], before["mixer"]["k_rot"][:, -4:])
