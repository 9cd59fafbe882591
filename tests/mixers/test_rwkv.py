"""RWKV-4: the parallel WKV equals the plain recurrence; stability; token-by-token; decay and shift hooks."""
import pytest
import torch

import probe
from conftest import randomise


def _model(seed=0, d_attn=None):
    torch.manual_seed(seed)
    cfg = probe.ModelConfig(d_model=32, layout=["rwkv"], d_mlp=48, norm="layernorm", positional="none",
                            mixer_options={"rwkv": {"d_attn": d_attn}})
    model = randomise(probe.HookedLM(cfg), 0.2)
    return model, model.blocks[0].mixer


def reference(mx, x, prev, a0, b0):
    """WKV with the true sums a, b (no stabiliser), float64: a_t = e^-w a_{t-1} + e^{k_t} v_t."""
    d = lambda t: t.double()
    x, prev = d(x), d(prev)
    shifted = torch.cat([prev, x[:, :-1]], 1)
    mix = lambda mu: x * d(mu) + shifted * (1 - d(mu))
    r = torch.sigmoid(mix(mx.mix_r) @ d(mx.W_r.weight).T)
    k = mix(mx.mix_k) @ d(mx.W_k.weight).T
    v = mix(mx.mix_v) @ d(mx.W_v.weight).T
    w, u = torch.exp(d(mx.time_decay)), d(mx.time_first)
    a, b = d(a0), d(b0)
    out = []
    for t in range(x.shape[1]):
        ek = torch.exp(k[:, t])
        out.append((a + torch.exp(u) * ek * v[:, t]) / (b + torch.exp(u) * ek))
        a, b = torch.exp(-w) * a + ek * v[:, t], torch.exp(-w) * b + ek
    return (r * torch.stack(out, 1)) @ d(mx.W_o.weight).T, a, b


@pytest.mark.parametrize("hooked", [False, True])
def test_parallel_wkv_equals_the_recurrence(hooked):
    model, mx = _model(d_attn=24)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 19, 32, generator=g)
    prev = torch.randn(2, 1, 32, generator=g)
    a0, b0 = torch.rand(2, 24, generator=g), torch.rand(2, 24, generator=g) + 0.5
    init = {"state_shift": prev, "state_num": a0, "state_den": b0, "state_max": torch.zeros(2, 24)}
    hooks = [("blocks.0.mixer.hook_state_num", lambda t, hook: None)] if hooked else []
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        y, st = mx(x, init)
    y_ref, a, b = reference(mx, x, prev, a0, b0)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-4)
    scale = torch.exp(st["state_max"].double())  # stored stabilised: num = a e^{-max}
    torch.testing.assert_close(st["state_num"].double() * scale, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(st["state_den"].double() * scale, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(st["state_shift"], x[:, -1:])


def test_token_by_token_equals_parallel():
    model, mx = _model()
    x = torch.randn(1, 12, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, st_whole = mx(x)
        st, ys = None, []
        for t in range(12):
            y, st = mx(x[:, t:t + 1], st)
            ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), whole, atol=2e-5, rtol=1e-4)
    for key in st:
        torch.testing.assert_close(st[key], st_whole[key], atol=2e-5, rtol=1e-4)


def test_huge_keys_do_not_overflow():
    """Adding a constant to every key scales numerator and denominator alike: the output must not move,
    even where exp(k) overflows (e^500 is inf even in float64). Exact in float64; in float32 the keys
    themselves round at that magnitude (ulp 6e-5), so the tolerance is looser there."""
    model, _ = _model()
    toks = torch.randint(0, 256, (1, 2000), generator=torch.Generator().manual_seed(3))
    shift = [("blocks.0.mixer.hook_k", lambda t, hook: t + 500.0)]
    for dtype, tol in ((torch.float32, 3e-3), (torch.float64, 1e-9)):
        model.to(dtype)
        clean = model(toks)
        shifted = model.run_with_hooks(toks, fwd_hooks=shift)
        assert torch.isfinite(shifted).all()
        torch.testing.assert_close(shifted, clean, atol=tol, rtol=tol)


def test_decay_hook_is_the_decay_the_recurrence_uses():
    model, mx = _model()
    toks = torch.randint(0, 256, (2, 15))
    _, cache = model.run_with_cache(toks)
    torch.testing.assert_close(cache["blocks.0.mixer.hook_decay"][0, 3], torch.exp(-torch.exp(mx.time_decay)))
    # decay edited to 1 everywhere == a model whose decay is 1 (w -> 0)
    edited = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.mixer.hook_decay", lambda t, hook: torch.ones_like(t))])
    with torch.no_grad():
        mx.time_decay.fill_(-60.0)  # w = e^-60: exp(-w) == 1 in float32
    torch.testing.assert_close(edited, model(toks), atol=1e-5, rtol=1e-5)


def test_channel_mix_carries_its_own_shift_state():
    model, _ = _model()
    assert model.cfg.mlp_layout == ["rwkv_channel_mix"]
    toks = torch.randint(0, 256, (2, 10))
    _, cache = model.run_with_cache(toks)
    shift, mlp_in = cache["blocks.0.mlp.hook_state_shift"], cache["blocks.0.hook_mlp_in"]
    assert shift.shape == (2, 10, 1, 32)
    torch.testing.assert_close(shift[:, :, 0], mlp_in)  # the state after t is the input at t
    torch.testing.assert_close(cache["blocks.0.mixer.hook_state_shift"][:, :, 0], cache["blocks.0.hook_mixer_in"])
    assert "blocks.0.mlp.hook_state_shift" in model.state_hook_names()
