"""RWKV-7: the layer against a plain loop of the paper's equations, the generalised delta rule
against flash-linear-attention's reference (``dplr_recurrence``), every-state form against the
sequential one, and the channel mixing against its definition.

fla's reference is loaded by file path from the installed ``fla-core`` (a dev dependency; see
``tests/fla_reference.py``); only where fla-core is absent do those tests skip, and the paper loop
still proves the recurrence.
"""
from __future__ import annotations

import pytest
import torch

import probe
from conftest import make_model, randomise, tokens
from fla_reference import fla_naive
from probe.errors import ConfigError
from probe.mixers.rwkv7 import RWKV7, RWKV7ChannelMix
from probe.ops.delta_rule import dplr_sequential, dplr_states

NAIVE = "ops/generalized_delta_rule/dplr/naive.py"


def _fla_naive():
    """fla's ``naive`` module of the generalised delta rule (``dplr_recurrence``)."""
    return fla_naive(NAIVE)


def _rule_inputs(b=2, T=7, H=2, K=4, V=3, seed=0, dtype=torch.float64):
    """Random inputs of the RWKV-7 rule: ``r, k, v, log_w, kk, a`` (``kk`` unit per head)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    kk = torch.nn.functional.normalize(rnd(b, T, H, K), dim=-1)
    log_w = -0.6065 * torch.rand(b, T, H, K, generator=g, dtype=dtype)
    a = torch.rand(b, T, H, K, generator=g, dtype=dtype)
    return rnd(b, T, H, K), rnd(b, T, H, K), rnd(b, T, H, V), log_w, kk, a


def paper_layer(m: RWKV7, x: torch.Tensor, v_first: torch.Tensor | None = None) -> torch.Tensor:
    """RWKV-7 time mixing one token at a time, as the paper's reference code writes it
    (state ``S [V, K]`` per head, ``S <- S diag(w) + S (-kk)(kk a)^T + v k^T``, ``o = S r``); with
    ``v_first [b, T, H, V]`` the values move toward it: ``v <- v + sigmoid(v_lora(x^v)) (v_first - v)``."""
    b, T, d = x.shape
    H, K, V = m.H, m.K, m.V
    S, prev, ys = x.new_zeros(b, H, V, K), x.new_zeros(b, d), []
    for t in range(T):
        xt = x[:, t]
        dx, prev = prev - xt, xt
        lerp = lambda mu: xt + dx * mu.view(d)  # noqa: E731
        r = m.r_proj(lerp(m.x_r)).view(b, H, K)
        w = torch.exp(-torch.exp(torch.tensor(-0.5, dtype=x.dtype)) * torch.sigmoid(m.w_lora(lerp(m.x_w))))
        k = m.k_proj(lerp(m.x_k)).view(b, H, K)
        v = m.v_proj(lerp(m.x_v)).view(b, H, V)
        if v_first is not None:
            v = v + torch.sigmoid(m.v_lora(lerp(m.x_v))).view(b, H, V) * (v_first[:, t] - v)
        a = torch.sigmoid(m.a_lora(lerp(m.x_a))).view(b, H, K)
        g = m.g_lora(lerp(m.x_g))
        kk = k * m.k_k.view(H, K)
        kk = kk / kk.norm(dim=-1, keepdim=True)
        k = k * (1 + (a - 1) * m.k_a.view(H, K))
        ab = (-kk)[..., :, None] @ (kk * a)[..., None, :]  # [b, H, K, K]
        S = S * w.view(b, H, 1, K) + S @ ab + v[..., :, None] * k[..., None, :]
        o = (S @ r[..., None])[..., 0]  # [b, H, V]
        mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
        eps = m.g_norm.eps
        o = (o - mean) / torch.sqrt(var + eps) * m.g_norm.weight.view(H, V) + m.g_norm.bias.view(H, V)
        bonus = (r * k * m.r_k).sum(-1, keepdim=True) * v
        ys.append(m.o_proj((o + bonus).reshape(b, H * V) * g))
    return torch.stack(ys, dim=1)


def _tiny_cfg(**opts):
    return probe.ModelConfig(vocab_size=257, d_model=32, n_heads=4, layout=["rwkv7"] * 2, d_mlp=64,
                             mixer_options={"rwkv7": opts} if opts else {})


@pytest.mark.numerical
@pytest.mark.parametrize("layer", [0, 1])
def test_mixer_is_the_paper_recurrence(layer):
    """Layer 0 is plain RWKV-7 time mixing; layer 1 also mixes its values toward layer 0's."""
    torch.manual_seed(0)
    m = randomise(RWKV7(_tiny_cfg(), layer), 0.3).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    v_first = torch.randn(2, 9, 4, 8, dtype=torch.float64) if layer else None
    assert m.mixes_first_value == bool(layer) and hasattr(m, "v_lora") == bool(layer)
    y, state = m(x, cross={RWKV7.V_FIRST: v_first}) if layer else m(x)
    ref = paper_layer(m, x, v_first)
    assert (y - ref).abs().max() < 1e-10 * ref.abs().max()
    assert state["state_shift"].equal(x[:, -1:])


@pytest.mark.numerical
def test_value_width_and_head_width_options():
    torch.manual_seed(1)
    m = randomise(RWKV7(_tiny_cfg(d_head=16, d_value=64), 0), 0.3).double()
    assert (m.H, m.K, m.V) == (2, 16, 32)
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    assert (m(x)[0] - paper_layer(m, x)).abs().max() < 1e-10


def test_bad_head_width_is_a_config_error():
    with pytest.raises(ConfigError, match="d_head=5 must divide d_model=32"):
        RWKV7(_tiny_cfg(d_head=5), 0)
    with pytest.raises(ConfigError, match="d_value=6 must be a multiple of the 4 heads"):
        RWKV7(_tiny_cfg(d_head=8, d_value=6), 0)


def test_dplr_states_are_the_sequential_states_and_carry_forced_ones():
    r, k, v, log_w, kk, a = _rule_inputs()
    h0 = torch.randn(2, 2, 4, 3, dtype=torch.float64)
    S = dplr_states(k, v, log_w, kk * a, -kk, h0)
    for t in range(k.shape[1]):
        _, h_t = dplr_sequential(r[:, : t + 1], k[:, : t + 1], v[:, : t + 1], log_w[:, : t + 1],
                                 (kk * a)[:, : t + 1], -kk[:, : t + 1], h0)
        torch.testing.assert_close(S[:, t], h_t, rtol=0, atol=1e-12)
    mask = torch.zeros_like(S, dtype=torch.bool)
    mask[:, 3] = True
    forced = dplr_states(k, v, log_w, kk * a, -kk, h0, (mask, torch.zeros_like(S)))
    assert forced[:, :3].equal(S[:, :3]) and forced[:, 3].eq(0).all()
    _, tail = dplr_sequential(r[:, 4:], k[:, 4:], v[:, 4:], log_w[:, 4:], (kk * a)[:, 4:], -kk[:, 4:])
    torch.testing.assert_close(forced[:, -1], tail, rtol=0, atol=1e-12)  # restarted from zero at 3


@pytest.mark.numerical
def test_dplr_sequential_matches_fla_dplr_recurrence():
    naive = _fla_naive()
    r, k, v, log_w, kk, a = _rule_inputs(dtype=torch.float32, K=8)
    h0 = torch.randn(2, 2, 8, 3)
    o, h = dplr_sequential(r, k, v, log_w, kk * a, -kk, h0)
    heads_first = lambda t: t.transpose(1, 2)  # noqa: E731  fla's naive is [B, H, L, D]
    # fla scales q by K^-0.5 inside; RWKV-7 uses scale 1
    o_ref, h_ref = naive.dplr_recurrence(heads_first(r) * 8 ** 0.5, heads_first(k), heads_first(v),
                                         heads_first(-kk), heads_first(kk * a), heads_first(log_w), h0)
    # measured: 1.9e-6 of max |o| = 13 (float32, every ATEN_CPU_CAPABILITY)
    torch.testing.assert_close(o, heads_first(o_ref), rtol=0, atol=1e-5 * float(o.abs().max()))
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-5 * float(h.abs().max()))


@pytest.mark.numerical
def test_model_recurrence_matches_fla_from_its_hooks():
    naive = _fla_naive()
    model = make_model("rwkv7")
    _, cache = model.run_with_cache(tokens(T=12))
    m = model.blocks[1].mixer
    hook = lambda n: cache[f"blocks.1.mixer.hook_{n}"]  # noqa: E731
    kk, k_write = m.keys(hook("k"), hook("iclr"))
    a = hook("iclr")
    o_ref, h_ref = naive.dplr_recurrence(*(t.transpose(1, 2) for t in (
        hook("r") * m.K ** 0.5, k_write, hook("v"), -kk, kk * a, hook("log_decay"))))
    torch.testing.assert_close(hook("recurrence_out"), o_ref.transpose(1, 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(hook("state")[:, -1], h_ref, rtol=0, atol=1e-5)


def test_channel_mix_is_token_shift_and_squared_relu():
    torch.manual_seed(2)
    mlp = randomise(RWKV7ChannelMix(_tiny_cfg(), 1), 0.3).double()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    prev = torch.cat([x.new_zeros(2, 1, 32), x[:, :-1]], dim=1)
    expected = mlp.value(torch.relu(mlp.key(x + (prev - x) * mlp.x_k)) ** 2)
    y, state = mlp(x)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    assert state["state_shift"].equal(x[:, -1:])


def test_rwkv7_blocks_default_to_its_channel_mix():
    model = make_model("rwkv7")
    assert model.cfg.mlp_layout == ["rwkv7_channel_mix"] * 2
    assert isinstance(model.blocks[0].mlp, RWKV7ChannelMix)


# -- the value residual: layer 0's values reach the later layers -------------------------------------


@pytest.mark.numerical
def test_later_layers_read_the_first_layers_values_from_the_forward():
    """Layer 1 run alone on its cached input, with layer 0's cached ``hook_v`` as ``v_first``, gives
    its cached output; its ``hook_v`` is the lerp of its own projection toward layer 0's values."""
    model = make_model("rwkv7")
    _, cache = model.run_with_cache(tokens(2, 10))
    m = model.blocks[1].mixer
    v_first = cache["blocks.0.mixer.hook_v"]
    x = cache["mixer_in", 1]
    previous = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    with torch.no_grad():
        y, _ = m(x, cross={RWKV7.V_FIRST: v_first})
        own = m.v_proj(x + (previous - x) * m.x_v).unflatten(-1, (m.H, m.V))
    torch.testing.assert_close(y, cache["mixer_out", 1], rtol=0, atol=1e-6)
    nu = cache["blocks.1.mixer.hook_value_residual"]
    torch.testing.assert_close(cache["blocks.1.mixer.hook_v"], own + nu * (v_first - own), rtol=0, atol=1e-6)
    assert "blocks.0.mixer.hook_value_residual" not in model.hook_dict


@pytest.mark.numerical
def test_an_edit_of_the_first_layers_values_reaches_the_later_layers():
    """Zeroing layer 0's values at position 4 changes layer 1's values at position 4 only, exactly as
    running layer 1 on the edited values does; layer 1's own ``hook_value_residual`` edit stays local."""
    model = make_model("rwkv7")
    toks = tokens(1, 9)

    def zero_at_4(v, hook):
        v[:, 4] = 0

    _, clean = model.run_with_cache(toks)
    with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_v", zero_at_4)]):
        _, edited = model.run_with_cache(toks)
    changed = (edited["blocks.1.mixer.hook_v"] - clean["blocks.1.mixer.hook_v"]).abs().amax((0, 2, 3))
    assert changed[4] > 1e-3 and changed[:4].max() < 1e-6
    # later positions of layer 1 differ only through its residual input (layer 0's output changed from 4 on)
    m, v_first = model.blocks[1].mixer, clean["blocks.0.mixer.hook_v"].clone()
    v_first[:, 4] = 0
    with torch.no_grad():
        y, _ = m(edited["mixer_in", 1], cross={RWKV7.V_FIRST: v_first})
    torch.testing.assert_close(y, edited["mixer_out", 1], rtol=0, atol=1e-6)
    with model.hooks(fwd_hooks=[("blocks.1.mixer.hook_value_residual", lambda nu, hook: torch.ones_like(nu))]):
        _, pinned = model.run_with_cache(toks)
    torch.testing.assert_close(pinned["blocks.1.mixer.hook_v"], clean["blocks.0.mixer.hook_v"], rtol=0, atol=0)


def test_a_later_layer_without_the_first_layers_values_is_an_input_error():
    m = make_model("rwkv7").blocks[1].mixer
    with pytest.raises(probe.errors.InputError, match="value residual.*got none.*hook_v"):
        m(torch.randn(1, 5, 32))
    with pytest.raises(probe.errors.InputError, match=r"got shape \(1, 4, 4, 8\), expected \(1, 5, 4, 8\)"):
        m(torch.randn(1, 5, 32), cross={RWKV7.V_FIRST: torch.randn(1, 4, 4, 8)})


@pytest.mark.numerical
def test_value_residual_off_makes_every_layer_independent():
    model = make_model("rwkv7", mixer_options={"rwkv7": {"value_residual": False}})
    m = model.blocks[1].mixer
    assert not m.mixes_first_value and not hasattr(m, "v_lora")
    assert "blocks.1.mixer.hook_value_residual" not in model.hook_dict
    _, cache = model.run_with_cache(tokens(1, 6))
    with torch.no_grad():
        torch.testing.assert_close(m(cache["mixer_in", 1])[0], cache["mixer_out", 1], rtol=0, atol=1e-6)
