"""Gated DeltaNet and Kimi Delta Attention layers (the delta-rule kernel is tested in
tests/ops/test_delta_rule.py, whole Qwen3-Next models in tests/io/test_qwen3_next.py): the implicit
attention against the product formula, and one-layer parity with transformers' Qwen3NextGatedDeltaNet
and KimiLinearDeltaAttention (output, recurrent and conv state, one-token decode)."""
import pytest
import torch

import probe
from conftest import randomise
from probe.errors import CheckpointError, ConfigError
from probe.methods import implicit_attention

transformers = pytest.importorskip("transformers")
from probe.io.convert_gdn import gdn_mixer_from_hf, kda_mixer_from_hf  # noqa: E402

# -- implicit attention --------------------------------------------------------------------------------


def _tiny(**options):
    torch.manual_seed(0)
    opts = {"n_k_heads": 2, "n_v_heads": 4, "d_k": 8, "d_v": 4, **options}
    cfg = probe.ModelConfig(vocab_size=257, d_model=32, n_heads=2, layout=["gdn", "gdn"], mlp="swiglu", d_mlp=64,
                            positional="none", mixer_options={"gdn": opts})
    return randomise(probe.HookedLM(cfg)).eval()


def test_implicit_attention_is_the_product_formula():
    """A[h, t, s] = K^-1/2 beta_s q_t^T prod_{s<r<=t} a_r (I - beta_r k_r k_r^T) k_s, with grouped heads."""
    model, toks = _tiny(), torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    ia, errors = implicit_attention(model, toks, 1)
    assert errors["output"] < 1e-5 and errors["signal"] < 1e-5
    _, cache = model.run_with_cache(toks)
    hook = lambda n: cache[f"blocks.1.mixer.hook_{n}"][0]
    mixer = model.blocks[1].mixer
    q, k = (mixer.expand_heads(torch.nn.functional.normalize(hook(n)[None], dim=-1, eps=0))[0] for n in "qk")
    a, beta = hook("log_decay").exp(), hook("beta")
    for h in (0, 3):
        for t, s in ((0, 0), (5, 2), (8, 0), (8, 8)):
            P = torch.eye(8)
            for r in range(s + 1, t + 1):
                P = a[r, h] * (torch.eye(8) - beta[r, h] * torch.outer(k[r, h], k[r, h])) @ P
            want = 8 ** -0.5 * beta[s, h] * q[t, h] @ P @ k[s, h]
            torch.testing.assert_close(ia.matrix[0, h, t, s], want, rtol=1e-3, atol=1e-5)


# -- parity with transformers' Qwen3-Next ----------------------------------------------------------------


def _qwen3_next(layer_types=("linear_attention",) * 2, **overrides):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    torch.manual_seed(0)
    kw = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=len(layer_types),
              layer_types=list(layer_types), num_experts=0, linear_num_key_heads=2, linear_num_value_heads=4,
              linear_key_head_dim=8, linear_value_head_dim=4, linear_conv_kernel_dim=4, num_attention_heads=2,
              num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)
    kw.update(overrides)
    return randomise(Qwen3NextForCausalLM(Qwen3NextConfig(**kw)), 0.15).eval()


def _assert_layer_matches(hf, module, mixer):
    """``mixer`` against ``module``, layer 0 of ``hf``: output and final states after a 36-token prefill,
    then output and state after transformers' one-token recurrent step from its cache."""
    from transformers import DynamicCache

    x = torch.randn(2, 37, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = DynamicCache(config=hf.config)
        want = module(hidden_states=x[:, :36], cache=cache)
        y, state = mixer(x[:, :36])
        assert float((y - want).abs().max()) < 1e-5
        torch.testing.assert_close(state["state"], cache.layers[0].recurrent_states[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(state["state_conv"], cache.layers[0].conv_states[0][..., 1:].transpose(1, 2))
        step_want = module(hidden_states=x[:, 36:], cache=cache)  # transformers' one-token recurrent path
        step, after = mixer(x[:, 36:], state)
        assert float((step - step_want).abs().max()) < 1e-5
        torch.testing.assert_close(after["state"], cache.layers[0].recurrent_states[0], rtol=1e-4, atol=1e-6)


@pytest.mark.numerical
def test_layer_parity_output_state_and_decode():
    hf = _qwen3_next()
    _assert_layer_matches(hf, hf.model.layers[0].linear_attn, gdn_mixer_from_hf(hf.model.layers[0].linear_attn))


def test_layer_conversion_refuses_other_modules_and_unmapped_tensors():
    hf = _qwen3_next()
    with pytest.raises(ConfigError, match="Qwen3NextGatedDeltaNet"):
        gdn_mixer_from_hf(hf.model.layers[0].mlp)
    hf.model.layers[0].linear_attn.register_buffer("extra", torch.zeros(3))
    with pytest.raises(CheckpointError, match="extra"):
        gdn_mixer_from_hf(hf.model.layers[0].linear_attn)


# -- Kimi Delta Attention (the per-channel variant) --------------------------------------------------------


def test_kda_implicit_attention_is_the_product_formula():
    """A[h, t, s] = K^-1/2 beta_s q_t^T prod_{s<r<=t} (I - beta_r k_r k_r^T) diag(alpha_r) k_s (alpha per channel)."""
    torch.manual_seed(0)
    cfg = probe.ModelConfig(vocab_size=257, d_model=32, n_heads=2, layout=["kda", "kda"], mlp="swiglu", d_mlp=64,
                            positional="none", mixer_options={"kda": {"d_k": 8, "d_v": 4, "chunk": 4}})
    model = randomise(probe.HookedLM(cfg)).eval()
    toks = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    ia, errors = implicit_attention(model, toks, 1)
    assert errors["output"] < 1e-5 and errors["signal"] < 1e-5
    _, cache = model.run_with_cache(toks)
    hook = lambda n: cache[f"blocks.1.mixer.hook_{n}"][0]  # noqa: E731
    q, k = (torch.nn.functional.normalize(hook(n), dim=-1, eps=0) for n in "qk")
    alpha, beta = hook("log_decay").exp(), hook("beta")
    assert alpha.shape == (9, 2, 8) and not torch.allclose(alpha[..., :1].expand_as(alpha), alpha)
    for h in (0, 1):
        for t, s in ((0, 0), (5, 2), (8, 0), (8, 8)):
            P = torch.eye(8)
            for r in range(s + 1, t + 1):
                P = (torch.eye(8) - beta[r, h] * torch.outer(k[r, h], k[r, h])) @ torch.diag(alpha[r, h]) @ P
            want = 8 ** -0.5 * beta[s, h] * q[t, h] @ P @ k[s, h]
            torch.testing.assert_close(ia.matrix[0, h, t, s], want, rtol=1e-3, atol=1e-5)


def _kimi_linear():
    from transformers import KimiLinearConfig, KimiLinearForCausalLM

    torch.manual_seed(0)
    cfg = KimiLinearConfig(vocab_size=100, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                           layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "dense"],
                           linear_head_dim=8, linear_num_heads=4, kv_lora_rank=8, qk_rope_head_dim=4,
                           qk_nope_head_dim=8, v_head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return randomise(KimiLinearForCausalLM(cfg), 0.15).eval()


@pytest.mark.numerical
def test_kda_layer_parity_output_state_and_decode():
    """transformers' KimiLinearDeltaAttention (chunked prefill, then its one-token recurrent path)."""
    hf = _kimi_linear()
    _assert_layer_matches(hf, hf.model.layers[0].self_attn, kda_mixer_from_hf(hf.model.layers[0].self_attn))


def test_kda_conversion_refuses_other_modules_and_unmapped_tensors():
    hf = _kimi_linear()
    with pytest.raises(ConfigError, match="KimiLinearDeltaAttention"):
        kda_mixer_from_hf(hf.model.layers[1].self_attn)
    hf.model.layers[0].self_attn.register_buffer("extra", torch.zeros(3))
    with pytest.raises(CheckpointError, match="extra"):
        kda_mixer_from_hf(hf.model.layers[0].self_attn)
