"""mLSTM: the chunked and the materialised forms equal the paper's recurrence written out step by step."""
import pytest
import torch
import torch.nn.functional as F

import probe
import probe.mixers.mlstm as mlstm_mod
from conftest import randomise
from mixer_checks import assert_segments_match


def _mixer(seed=0, **options):
    torch.manual_seed(seed)
    opts = {"chunk": 5, **options}
    model = randomise(probe.HookedLM(probe.ModelConfig(d_model=32, n_heads=4, layout=["mlstm"], d_mlp=0,
                                                       mixer_options={"mlstm": opts})), 0.2)
    return model, model.blocks[0].mixer


def reference(mx, x, C0, n0, m0):
    """The paper's equations with the *true* (unstabilised) memory, in float64, one step at a time."""
    d = lambda t: t.double()
    lin = lambda layer, u: F.linear(u, d(layer.weight), None if layer.bias is None else d(layer.bias))
    b, T, _ = x.shape
    H, K, V = mx.n_heads, mx.d_qk, mx.d_v
    x = d(x)
    cap = mx.options["gate_soft_cap"]
    q, k, v = lin(mx.W_q, x).view(b, T, H, K), lin(mx.W_k, x).view(b, T, H, K), lin(mx.W_v, x).view(b, T, H, V)
    log_i = cap * torch.tanh(lin(mx.W_igate, x) / cap)
    f = torch.sigmoid(cap * torch.tanh(lin(mx.W_fgate, x) / cap))
    o = torch.sigmoid(lin(mx.W_ogate, x))
    scale = torch.exp(d(m0))
    C, n = d(C0) * scale[..., None, None], d(n0) * scale[..., None]
    hs = []
    for t in range(T):
        i = torch.exp(log_i[:, t])
        C = f[:, t, :, None, None] * C + i[:, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        n = f[:, t, :, None] * n + i[:, :, None] * k[:, t]
        num = torch.einsum("bhk,bhkv->bhv", q[:, t], C) / K ** 0.5
        den = torch.einsum("bhk,bhk->bh", q[:, t], n).abs() / K ** 0.5
        hs.append(num / den.clamp(min=1.0)[..., None])
    h = F.layer_norm(torch.stack(hs, 1), (V,), eps=mx.options["norm_eps"]).reshape(b, T, H * V) * d(mx.head_norm_w)
    return lin(mx.out_proj, o * h), C, n


def _state(mx, b, g):
    H, K, V = mx.n_heads, mx.d_qk, mx.d_v
    return {"state": torch.randn(b, H, K, V, generator=g) * 0.3, "state_n": torch.randn(b, H, K, generator=g) * 0.3,
            "state_m": torch.randn(b, H, generator=g)}


@pytest.mark.parametrize("T", [1, 7, 23])
@pytest.mark.parametrize("hooked", [False, True])
def test_mixer_equals_paper_recurrence(T, hooked):
    model, mx = _mixer(eps=0.0)  # eps only guards a zero denominator; without it the forms are equal exactly
    g = torch.Generator().manual_seed(T)
    x = torch.randn(2, T, 32, generator=g)
    init = _state(mx, 2, g)
    hooks = [("blocks.0.mixer.hook_state", lambda t, hook: None)] if hooked else []
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        y, final = mx(x, {k: v.clone() for k, v in init.items()})
    y_ref, C_ref, n_ref = reference(mx, x, init["state"], init["state_n"], init["state_m"])
    torch.testing.assert_close(y.double(), y_ref, atol=2e-5, rtol=1e-4)
    scale = torch.exp(final["state_m"].double())  # the state is stored stabilised: C~ = C exp(-m)
    torch.testing.assert_close(final["state"].double() * scale[..., None, None], C_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final["state_n"].double() * scale[..., None], n_ref, atol=1e-4, rtol=1e-4)


def test_cached_states_satisfy_the_stabilised_recurrence():
    model, mx = _mixer()
    toks = torch.randint(0, 256, (2, 13))
    _, cache = model.run_with_cache(toks)
    C, n, m = (cache[f"blocks.0.mixer.hook_{k}"] for k in ("state", "state_n", "state_m"))
    k, v = cache["blocks.0.mixer.hook_k"], cache["blocks.0.mixer.hook_v"]
    log_i, log_f = cache["blocks.0.mixer.hook_input"], cache["blocks.0.mixer.hook_forget"]
    assert C.shape == (2, 13, mx.n_heads, mx.d_qk, mx.d_v) and m.shape == (2, 13, mx.n_heads)
    Cp, np_, mp = torch.zeros_like(C[:, 0]), torch.zeros_like(n[:, 0]), torch.zeros_like(m[:, 0])
    for t in range(13):
        mt = torch.maximum(log_f[:, t] + mp, log_i[:, t])
        fb, ib = torch.exp(log_f[:, t] + mp - mt), torch.exp(log_i[:, t] - mt)
        Cp = fb[..., None, None] * Cp + ib[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        np_ = fb[..., None] * np_ + ib[..., None] * k[:, t]
        mp = mt
        torch.testing.assert_close(m[:, t], mt, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(C[:, t], Cp, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(n[:, t], np_, atol=1e-5, rtol=1e-4)


def test_per_position_memory_is_built_only_for_state_hooks(monkeypatch):
    model, _ = _mixer()
    toks = torch.randint(0, 256, (1, 11))
    expected = model(toks)

    def refuse(*args, **kwargs):
        raise AssertionError("per-position C was materialised without a state hook")

    monkeypatch.setattr(mlstm_mod, "gla_states", refuse)
    torch.testing.assert_close(model(toks), expected)
    logits, cache = model.run_with_cache(toks, names_filter=lambda n: not n.endswith(("hook_state", "hook_state_n")))
    torch.testing.assert_close(logits, expected)
    assert "blocks.0.mixer.hook_state_m" in cache and "blocks.0.mixer.hook_q" in cache
    with pytest.raises(AssertionError, match="materialised"):
        model.run_with_cache(toks, names_filter="blocks.0.mixer.hook_state")


def test_long_sequences_with_huge_input_gates_stay_finite_and_agree():
    model, mx = _mixer(gate_soft_cap=None, chunk=64)
    with torch.no_grad():
        mx.W_igate.bias.fill_(120.0)  # exp(120) overflows float32: only the stabiliser keeps this finite
    x = torch.randn(1, 3000, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, st_fast = mx(x)
        with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_state", lambda t, hook: None)]):
            slow, st_slow = mx(x)
    assert torch.isfinite(fast).all() and all(torch.isfinite(v).all() for v in st_fast.values())
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    for key in st_fast:
        torch.testing.assert_close(st_fast[key], st_slow[key], atol=1e-4, rtol=1e-4)


def test_bad_widths_are_named():
    with pytest.raises(probe.ConfigError, match="multiples of the number of heads"):
        probe.HookedLM(probe.ModelConfig(d_model=30, n_heads=4, d_head=8, layout=["mlstm"]))


def _paper_model(seed=0, d_inner=None):
    torch.manual_seed(seed)
    opts = {"layer": "paper", "chunk": 4, "d_inner": d_inner}
    return randomise(probe.HookedLM(probe.ModelConfig(d_model=16, n_heads=2, layout=["mlstm", "mlstm"], d_mlp=0,
                                                        mixer_options={"mlstm": opts})), 0.2).eval()


def test_paper_layer_keeps_the_contract():
    """The paper layer (up-projection, conv state, learnable skip): segments, state patching, conv edits."""
    model = _paper_model()
    assert model.blocks[0].mixer.state_shapes()["state_conv"] == (3, 32)
    toks = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(0))
    whole = assert_segments_match(model, toks, 8, atol=2e-5, rtol=1e-4)
    # patching every hook_state* at the end of a prefix transfers the run
    other = toks.clone()
    other[:, :8] = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(toks)

    def patch(t, hook):
        t = t.clone()
        t[:, 7] = cache[hook.name][:, 7]
        return t

    patched = model.run_with_hooks(other, fwd_hooks=[(n, patch) for n in model.state_hook_names()])
    torch.testing.assert_close(patched[:, 8:], whole[:, 8:], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(model(other)[:, 8:], whole[:, 8:])


def test_paper_layer_equals_the_xlstm_package_layer():
    pytest.importorskip("xlstm")
    from xlstm.blocks.mlstm.layer import mLSTMLayer, mLSTMLayerConfig

    torch.manual_seed(0)
    layer = mLSTMLayer(mLSTMLayerConfig(embedding_dim=16, num_heads=2, conv1d_kernel_size=4, qkv_proj_blocksize=4,
                                        proj_factor=2.0, context_length=32)).eval()
    randomise(layer, 0.3)
    model = _paper_model(d_inner=64)  # the package rounds the up-projection up to a multiple of 64
    mx = model.blocks[0].mixer
    sd = layer.state_dict()
    with torch.no_grad():
        mx.W_up.weight.copy_(sd["proj_up.weight"])
        mx.out_proj.weight.copy_(sd["proj_down.weight"])
        mx.W_conv.copy_(sd["conv1d.conv.weight"][:, 0])
        mx.b_conv.copy_(sd["conv1d.conv.bias"])
        for ours, theirs in (("Wq_blocks", "q_proj"), ("Wk_blocks", "k_proj"), ("Wv_blocks", "v_proj")):
            getattr(mx, ours).copy_(sd[f"{theirs}.weight"])
        for ours, theirs in (("W_igate", "igate"), ("W_fgate", "fgate")):
            getattr(mx, ours).weight.copy_(sd[f"mlstm_cell.{theirs}.weight"])
            getattr(mx, ours).bias.copy_(sd[f"mlstm_cell.{theirs}.bias"])
        mx.head_norm_w.copy_(1 + sd["mlstm_cell.outnorm.weight"])  # the package stores weight - 1
        mx.skip.copy_(sd["learnable_skip"])
    mx.options["norm_eps"] = 1e-5
    x = torch.randn(2, 23, 16)
    with torch.no_grad():
        torch.testing.assert_close(mx(x)[0], layer(x), atol=2e-5, rtol=1e-4)
    with pytest.raises(probe.ConfigError, match="layer='huge' is not one of large, paper"):
        probe.HookedLM(probe.ModelConfig(d_model=32, layout=["mlstm"], mixer_options={"mlstm": {"layer": "huge"}}))
