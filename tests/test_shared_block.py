"""Shared blocks (probe.shared_block): weights held once and used by several layers, each use its own
adapters, hooks and KV cache; the use's output equals the block's math written out by hand; edits of a
use's keys / values propagate like a carried cache; clear errors for malformed configs and states."""
import copy
import math

import pytest
import torch

import probe
from conftest import make_model, tokens
from probe.errors import ConfigError, InputError
from probe.mixers.attention import rope

ARCH = "hybrid_zamba2"  # conftest: mamba2 x 3, shared_layout [0, 1, 0], rank-4 adapters, 2 kv heads


def _cfg(**kw):
    args = dict(d_model=32, n_heads=4, layout=["mamba2"] * 3, d_mlp=64, shared_layout=[0, None, 0])
    args.update(kw)
    return probe.ModelConfig(**args)


@pytest.mark.parametrize("kw, match", [
    ({"shared_layout": [0, None]}, "one entry per layer"),
    ({"shared_layout": [0, -1, None]}, "integers >= 0"),
    ({"shared_layout": [0, True, None]}, "integers >= 0"),
    ({"shared_layout": [0, "0", None]}, "integers >= 0"),
    ({"shared_layout": [0, 2, 0]}, r"uses blocks \[0, 2\]"),
    ({"shared_layout": [None, None, None]}, "names no shared block"),
    ({"shared_layout": None, "shared_options": {"adapter_rank": 2}}, "no layer uses a shared block"),
    ({"shared_options": {"n_heads": 5}}, "must divide its input width"),
    ({"shared_options": {"n_kv_heads": 3}}, "n_kv_heads=3 must divide n_heads=4"),
    ({"shared_options": {"adapter_rank": -1}}, "adapter_rank"),
    ({"shared_options": {"attn_adapters": True}}, "needs adapter_rank"),
    ({"shared_options": {"mlp": "gelu"}}, "mlp='gelu' is not one of"),
    ({"shared_options": {"ranks": 2}}, "ranks"),
    ({"d_mlp": 0}, "shared_options\\['d_mlp'\\]"),
])
def test_malformed_shared_configs_are_named(kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**kw)


def test_weights_are_held_once_and_shared_by_reference():
    model = make_model(ARCH)
    sd = model.state_dict()
    assert sorted(k for k in sd if k.startswith("shared_blocks.0.")) == [
        f"shared_blocks.0.{n}" for n in sorted(["W_down.weight", "W_gate_up.weight", "W_k.weight", "W_o.weight",
                                                "W_q.weight", "W_v.weight", "ln_in.w", "ln_mlp.w"])]
    assert not any(k.startswith("blocks.") and ".shared." in k and ".W_q" in k for k in sd)  # no copies per use
    assert model.blocks[0].shared.block is model.blocks[2].shared.block is model.shared_blocks[0]
    twin = copy.deepcopy(model)  # a copy shares within itself, not with the original
    assert twin.blocks[0].shared.block is twin.blocks[2].shared.block is twin.shared_blocks[0]
    assert twin.shared_blocks[0] is not model.shared_blocks[0]
    toks = tokens(1, 9)
    with torch.no_grad():
        before = model.run_with_cache(toks)[1]
        model.shared_blocks[0].W_down.weight.mul_(2)  # one edit of the shared weights reaches both uses
        after = model.run_with_cache(toks)[1]
    out = lambda cache, i: cache[f"blocks.{i}.shared.hook_mlp_out"]
    torch.testing.assert_close(out(after, 0), 2 * out(before, 0))  # layer 0's input is unchanged
    assert not torch.allclose(out(after, 2), out(before, 2))


@pytest.mark.numerical
@pytest.mark.parametrize("name", ["W_q.weight", "W_down.weight", "ln_in.w"])
def test_gradient_of_a_shared_weight_is_the_derivative_through_every_use(name):
    """Autograd's gradient of a shared weight matches a central finite difference of the loss (float64):
    every use contributes, none twice."""
    model = make_model(ARCH).double()
    toks = tokens(1, 8)
    w = dict(model.named_parameters())[f"shared_blocks.0.{name}"]
    g = torch.Generator().manual_seed(0)
    readout = torch.randn(1, 8, model.cfg.vocab_size, generator=g, dtype=torch.float64)
    metric = lambda: (model(toks) * readout).sum()  # float64 throughout (the loss is computed in float32)
    metric().backward()
    direction = torch.randn(w.shape, generator=g, dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        w.add_(eps * direction)
        up = metric()
        w.sub_(2 * eps * direction)
        down = metric()
        w.add_(eps * direction)
    # central differences: O(eps^2) truncation, measured <= 1.1e-6 relative here
    torch.testing.assert_close((w.grad * direction).sum(), (up - down) / (2 * eps), rtol=1e-5, atol=1e-9)


def _by_hand(model, layer, cache):
    """The use's output from its cached input ``hook_in``, written out: norms, projections with
    adapters, RoPE, per-head causal softmax attention (kv head h // groups), gated MLP, W_out."""
    use, blk = model.blocks[layer].shared, model.blocks[layer].shared.block
    h = cache[f"blocks.{layer}.shared.hook_in"][0].double()  # [T, 2d]
    rms = lambda x, w: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps) * w.double()
    lin = lambda x, m: x @ m.weight.double().T
    ada = lambda x, a: lin(lin(x, a.down), a.up) if a is not None else 0
    a = rms(h, blk.ln_in.w)
    T, H, G, dh = h.shape[0], blk.n_heads, blk.n_kv_heads, blk.d_head
    q = (lin(a, blk.W_q) + ada(a, use.adapter_q)).view(1, T, H, dh)
    k = (lin(a, blk.W_k) + ada(a, use.adapter_k)).view(1, T, G, dh)
    v = (lin(a, blk.W_v) + ada(a, use.adapter_v)).view(T, G, dh)
    q, k = rope(q, 0, model.cfg.rope_base)[0], rope(k, 0, model.cfg.rope_base)[0]
    z = torch.zeros(T, H, dh, dtype=torch.float64)
    for head in range(H):
        g = head // (H // G)
        for t in range(T):
            w = torch.softmax(torch.stack([q[t, head] @ k[s, g] * blk.scale for s in range(t + 1)]), 0)
            z[t, head] = sum(w[s] * v[s, g] for s in range(t + 1))
    o = lin(z.reshape(T, H * dh), blk.W_o)
    m = rms(o, blk.ln_mlp.w)
    gate, up = (lin(m, blk.W_gate_up) + ada(m, use.adapter_gate_up)).chunk(2, -1)
    s = lin(blk.act(gate) * up, blk.W_down)
    return lin(s, use.W_out)


@pytest.mark.numerical
@pytest.mark.parametrize("layer", [0, 2])
def test_each_use_computes_the_shared_block_by_hand(layer):
    model = make_model(ARCH)
    _, cache = model.run_with_cache(tokens(1, 7))
    expected = _by_hand(model, layer, cache)
    torch.testing.assert_close(cache[f"blocks.{layer}.shared.hook_out"][0].double(), expected, atol=1e-5, rtol=1e-4)
    # hook_in is [resid_pre ; embedding], and the mixer reads ln1(resid_pre + out)
    d = model.cfg.d_model
    assert torch.equal(cache[f"blocks.{layer}.shared.hook_in"][..., :d], cache["resid_pre", layer])
    assert torch.equal(cache[f"blocks.{layer}.shared.hook_in"][..., d:], cache["hook_embed"])


@pytest.mark.numerical
def test_a_use_without_its_hooks_scored_uses_sdpa_with_the_same_result():
    model = make_model(ARCH)
    toks = tokens(2, 11)
    with torch.no_grad():
        plain = model(toks)  # scaled_dot_product_attention with the scale folded into q
        scored = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.shared.hook_pattern", lambda t, hook: None)])
    # two float32 softmax kernels through three layers: measured within 0.17 of this under every CPU path
    torch.testing.assert_close(plain, scored, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("site", ["k", "v"])
def test_edits_of_a_use_kv_propagate_like_a_carried_cache(site):
    """Editing layer 2's shared keys / values at positions 3 and 8 in one run equals running three
    segments with the edit at each segment's last position, the cache carried across."""
    model = make_model(ARCH)
    toks = tokens(2, 12)
    name = f"blocks.2.shared.hook_{site}"

    def edit(positions, offset=0):
        def hook(t, hook):
            for p in positions:
                g = torch.Generator().manual_seed(offset + p)
                t[:, p] = torch.rand(t[:, p].shape, generator=g)
        return [(name, hook)]

    with torch.no_grad():
        whole = model.run_with_hooks(toks, fwd_hooks=edit([3, 8]))
        pieces, st, start = [], None, 0
        for end, local in ((4, [3]), (9, [4]), (12, [])):
            with model.hooks(fwd_hooks=edit(local, offset=start)):
                out, st = model(toks[:, start:end], states=st, return_states=True)
            pieces.append(out)
            start = end
        torch.testing.assert_close(whole, torch.cat(pieces, 1), atol=2e-5, rtol=1e-4)
        assert not torch.allclose(whole[:, 4:], model(toks)[:, 4:])
        torch.testing.assert_close(whole[:, :3], model(toks)[:, :3], atol=1e-6, rtol=0)


def test_state_carries_each_use_cache_and_is_checked():
    model = make_model(ARCH)
    toks = tokens(2, 10)
    with torch.no_grad():
        _, st = model(toks, return_states=True)
    assert [sorted(layer) for layer in st.layers] == [["mixer", "mlp", "shared"]] * 3
    assert st.layers[0]["shared"]["k"].shape == (2, 10, 2, 16)  # [b, pos, kv heads, 2 d_model / n_heads]
    assert "blocks.2.shared.cache_v" in st.hook_items()
    assert st.kv_length() == 10 and st.keep_last(4).kv_length() == 4
    bad = copy.deepcopy(st)
    bad.layers[2]["shared"]["k"] = bad.layers[2]["shared"]["k"][..., :8]
    with pytest.raises(InputError, match="shared block 0"):
        model(toks[:, :1], states=bad)
    with pytest.raises(InputError, match="context"):  # the shared attention makes n_ctx a limit
        probe.HookedLM(_cfg(n_ctx=8))(tokens(1, 9))


@pytest.mark.numerical
def test_scale_option_is_the_softmax_temperature():
    base = _cfg(shared_options={"n_heads": 2})
    model = probe.HookedLM(base).eval()
    d_head = 2 * base.d_model // 2
    assert math.isclose(model.shared_blocks[0].scale, 1 / math.sqrt(d_head))
    sharp = probe.HookedLM(_cfg(shared_options={"n_heads": 2, "scale": 3.0})).eval()
    sharp.load_state_dict(model.state_dict())
    toks = tokens(1, 6)
    _, a = model.run_with_cache(toks, names_filter=["blocks.0.shared.hook_attn_scores"])
    _, b = sharp.run_with_cache(toks, names_filter=["blocks.0.shared.hook_attn_scores"])
    mask = torch.isfinite(a["blocks.0.shared.hook_attn_scores"])  # the same q k^T, scaled twice
    plain, sharp = a["blocks.0.shared.hook_attn_scores"][mask], b["blocks.0.shared.hook_attn_scores"][mask]
    torch.testing.assert_close(sharp, plain * 3.0 * math.sqrt(d_head), rtol=1e-5, atol=1e-6)
