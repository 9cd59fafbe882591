"""Memory maps on every architecture: exact implicit attention (rebuilt outputs), gradient
influence, state size versus position."""
import pytest
import torch

from conftest import ARCHS, layouts, make_model, tokens
from method_checks import assert_untouched, failing_hook, snapshot
from probe.errors import InputError, ProbeError
from probe.methods import MemoryMapResult, gradient_influence, implicit_attention, memory_map
from probe.methods.implicit import REGISTRY, decay_products, segment_sums, supported, unrolling
from probe.mixers import MIXERS

EXACT = sorted(name for name in MIXERS if name in REGISTRY)


def test_every_registered_mixer_has_a_memory_map():
    """A new mixer must get an unrolling (linear), or declare itself nonlinear / position-wise."""
    missing = [m for m, cls in MIXERS.items() if m not in REGISTRY and not cls.nonlinear_state
               and cls.mixes_positions]
    assert not missing, f"mixers with no memory map: {missing}; add probe/methods/implicit/<name>.py"



def test_capability_flags_say_what_each_mixer_is():
    """The flags methods read instead of names: attention, position-wise, nonlinear state."""
    assert sorted(m for m, cls in MIXERS.items() if cls.is_attention) == ["attn", "mla"]
    assert [m for m, cls in MIXERS.items() if not cls.mixes_positions] == ["ff"]
    assert sorted(m for m, cls in MIXERS.items() if cls.nonlinear_state) == ["lstm", "slstm"]
    assert not any(cls.nonlinear_state and name in REGISTRY for name, cls in MIXERS.items())


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("T", [7, 70])
def test_implicit_attention_rebuilds_the_mixer_output(name, T):
    model = make_model(name)
    toks = tokens(2, T)
    before = snapshot(model)
    for layer in range(model.cfg.n_layers):
        ia, errs = implicit_attention(model, toks, layer)
        assert ia.matrix.shape[0] == 2 and ia.matrix.shape[-2:] == (T, T)
        assert errs["output"] < 1e-4, (layer, errs)
        if "signal" in errs:
            assert errs["signal"] < 1e-4, (layer, errs)
        upper = torch.ones(T, T, dtype=torch.bool).triu(1)
        assert float(ia.matrix[..., upper].abs().max()) == 0.0  # causal: nothing read from the future
    assert_untouched(model, before)


@pytest.mark.parametrize("name, options", [
    ("mlstm", {"layer": "paper", "chunk": 4}), ("qrnn", {"window": 1}), ("attn", {"bias": True}),
    ("mamba", {"d_conv": 1, "d_state": 4}), ("lmu", {"order": 4, "theta": 8.0}), ("hgrn2", {"expand_ratio": 4}),
    ("rwkv", {"d_attn": 16})])
def test_implicit_attention_rebuilds_other_mixer_variants(name, options):
    model = make_model(name, mixer_options={name: options})
    for layer in range(model.cfg.n_layers):
        _, errs = implicit_attention(model, tokens(2, 12), layer)
        assert errs["output"] < 1e-4, (layer, errs)


def test_qrnn_implicit_attention_is_the_sequential_unrolling():
    model = make_model("qrnn")
    toks = tokens(1, 9)
    ia, _ = implicit_attention(model, toks, 0)
    _, cache = model.run_with_cache(toks)
    f, o = cache["blocks.0.mixer.hook_forget"][0], cache["blocks.0.mixer.hook_output"][0]  # [T, C]
    T = f.shape[0]
    expect = torch.zeros_like(ia.matrix[0])  # [C, t, s]
    for t in range(T):
        for s in range(t + 1):
            prod = torch.ones_like(f[0])
            for r in range(s + 1, t + 1):
                prod = prod * f[r]
            expect[:, t, s] = o[t] * prod * (1 - f[s])
    torch.testing.assert_close(ia.matrix[0], expect, atol=1e-6, rtol=1e-5)


def test_rwkv_implicit_attention_rows_are_a_softmax_times_r():
    model = make_model("rwkv")
    toks = tokens(1, 12)
    ia, _ = implicit_attention(model, toks, 1)
    _, cache = model.run_with_cache(toks)
    r = cache["blocks.1.mixer.hook_r"][0].T  # [D, T]
    torch.testing.assert_close(ia.matrix[0].sum(-1), r, atol=1e-5, rtol=1e-5)


def test_segment_sums_and_decay_products():
    x = torch.tensor([0.5, -1.0, 2.0, float("-inf"), 0.25])
    S = segment_sums(x)
    for t in range(5):
        for s in range(t + 1):
            assert S[t, s] == x[s + 1 : t + 1].sum() if t > s else S[t, s] == 0
    a = torch.rand(2, 6) + 0.1
    P = decay_products(a.log())
    for t in range(6):
        for s in range(6):
            want = torch.prod(a[:, s + 1 : t + 1], dim=-1) if s <= t else torch.zeros(2)
            torch.testing.assert_close(P[:, t, s], want)


@pytest.mark.parametrize("arch", ARCHS)
def test_memory_map_every_architecture(arch):
    model = make_model(arch)
    toks = tokens(1, 10)
    before = snapshot(model)
    res = memory_map(model, toks, probes=8)  # gradient influence estimated (exactness tested below)
    assert_untouched(model, before)
    assert isinstance(res, MemoryMapResult) and [lm.layer for lm in res.layers] == list(range(model.cfg.n_layers))
    for lm, name in zip(res.layers, layouts()[arch]):
        assert lm.mixer == name
        if not MIXERS[name].mixes_positions:
            assert lm.kind == "none" and lm.matrix is None
            continue
        assert lm.matrix.shape[0] == 1 and lm.matrix.shape[-2:] == (10, 10)
        if MIXERS[name].is_attention:
            assert lm.kind == "attention"
            torch.testing.assert_close(lm.matrix.sum(-1), torch.ones_like(lm.matrix.sum(-1)))
        elif MIXERS[name].nonlinear_state:
            assert lm.kind == "gradient influence" and lm.reconstruction_error is None
        else:
            assert lm.kind == "implicit attention" and lm.reconstruction_error < 1e-4
    frame = res.to_frame()
    mapped = sum(lm.matrix is not None for lm in res.layers)
    assert len(frame) == mapped * 10 * 11 // 2
    assert res.figure().layout.title.text
    assert res.layer_frame()["kind"].tolist() == [lm.kind for lm in res.layers]


@pytest.mark.parametrize("arch", ["lstm", "slstm"])
def test_gradient_influence_is_the_jacobian_norm(arch):
    model = make_model(arch, d_model=16, n_heads=2)
    toks = tokens(1, 7)
    G = gradient_influence(model, toks, 1, chunk=128)
    assert G.shape == (1, 7, 7)
    _, cache = model.run_with_cache(toks)
    x = cache["mixer_in", 1][0]
    mixer = model.blocks[1].mixer
    J = torch.autograd.functional.jacobian(lambda inp: mixer(inp.unsqueeze(0))[0][0], x, vectorize=True)
    expect = J.pow(2).sum((1, 3)).sqrt()
    torch.testing.assert_close(G[0], expect, atol=1e-5, rtol=1e-4)
    assert float(G[0].triu(1).abs().max()) == 0.0  # causal
    estimate = gradient_influence(model, toks, 1, probes=48, seed=1)
    low = torch.ones(7, 7, dtype=torch.bool).tril()
    rel = ((estimate[0] - G[0]).abs() / G[0].clamp_min(1e-12))[low]
    assert float(rel.mean()) < 0.25, rel


def test_state_size_versus_position():
    model = make_model("hybrid_qrnn_attn_ff")
    res = memory_map(model, tokens(1, 9), layers=[0, 2])
    sizes = res.state_sizes
    assert sorted(sizes["layer"].unique()) == [0, 1, 2, 3]
    qrnn = sizes[sizes["layer"] == 0]["elements"]
    assert qrnn.nunique() == 1 and int(qrnn.iloc[0]) == sum(
        torch.Size(s).numel() for s in model.blocks[0].mixer.state_shapes().values())
    attn = sizes[sizes["layer"] == 2].sort_values("position")
    per_token = 2 * model.cfg.n_heads * model.cfg.d_head
    assert attn["elements"].tolist() == [per_token * (t + 1) for t in range(9)]
    assert (sizes[sizes["layer"] == 3]["elements"] == 0).all()
    fig = res.state_size_figure()
    assert fig.layout.xaxis.title.text and len(fig.data) == 5


def test_memory_map_gradient_method_for_every_mixer():
    model = make_model("hybrid_qrnn_attn_ff")
    res = memory_map(model, tokens(1, 6), method="gradient", probes=4, with_state_sizes=False)
    assert [lm.kind for lm in res.layers] == ["gradient influence"] * 3 + ["none"]
    assert res.state_sizes is None


def test_memory_map_errors_and_hooks_removed():
    model = make_model("hybrid_lstm_attn")
    with pytest.raises(InputError, match="out of range"):
        memory_map(model, tokens(1, 5), layers=[2])
    with pytest.raises(ProbeError, match="Supported: "):
        implicit_attention(model, tokens(1, 5), 0)  # lstm is nonlinear
    with pytest.raises(ProbeError, match="gradient"):
        unrolling("lstm")
    assert "qrnn" in supported() and "lstm" not in supported()
    with pytest.raises(InputError, match="method"):
        memory_map(model, tokens(1, 5), method="exact")
    with pytest.raises(InputError, match="probes"):
        gradient_influence(model, tokens(1, 5), 0, probes=0)
    before = snapshot(model)
    with failing_hook(model, "blocks.1.hook_mixer_out"), pytest.raises(RuntimeError, match="boom"):
        memory_map(model, tokens(1, 5), layers=[1])
    with failing_hook(model, "blocks.0.hook_mixer_out"), pytest.raises(RuntimeError, match="boom"):
        gradient_influence(model, tokens(1, 5), 0)
    assert_untouched(model, before)
