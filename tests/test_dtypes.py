"""Half precision: norm statistics and recurrent states are computed in float32.

A float16 ``x.pow(2)`` overflows past 256 (65504 is float16's largest value), so a norm that
squares in float16 turns one large residual coordinate into ``inf`` and its position into
zeros; a recurrent state stored in bfloat16 (8 bits of mantissa) loses small increments
against a slowly decaying memory, an error that grows along the sequence. Outputs keep the
input's dtype.
"""
from __future__ import annotations

import math

import pytest
import torch

import probe
from probe.norm import LayerNorm, RMSNorm
from probe.ops.selective_scan import selective_scan
from tests.conftest import make_model


@pytest.mark.parametrize("norm", [RMSNorm, LayerNorm])
def test_norm_of_a_large_coordinate_in_float16(norm):
    layer = norm(64)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    x[0, 2, 7] = 300.0  # 300^2 = 90000 > 65504
    ref = layer(x)
    out = layer.half()(x.half())
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 1e-2 * ref.abs().max()


@pytest.mark.numerical
def test_zoo_qrnn_float16_with_a_large_residual_coordinate_agrees_with_float32():
    """The issue's case: zoo QRNN, one residual coordinate written to 300 by a hook."""
    model = probe.load("zoo:qrnn")
    text = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int\n"

    def write(t, hook):
        t[:, :, 3] = 300.0

    hooks = [("blocks.1.hook_resid_post", write)]
    with torch.no_grad():
        ref = model.run_with_hooks(text, fwd_hooks=hooks)
        half = model.half().run_with_hooks(text, fwd_hooks=hooks)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    agree = (half.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.9, f"top-1 agreement with float32 {agree:.2f}"


def _windows(err: torch.Tensor, n: int = 8) -> list[float]:
    """Mean of ``err [T]`` over ``n`` equal windows along the sequence."""
    return [w.mean().item() for w in err.chunk(n)]


@pytest.mark.numerical
def test_mamba_bfloat16_state_does_not_drift_along_the_sequence():
    """A slowly decaying memory (decay 0.998 per token) over 2048 tokens: the bfloat16 model's
    states stay within 3 % of float32's everywhere (a bfloat16 state drifts to 20 % after 256
    tokens and 65 % by the end)."""
    import math

    torch.manual_seed(0)
    model = probe.HookedLM(probe.ModelConfig(vocab_size=257, d_model=16, n_heads=4, layout=["mamba"],
                                             mixer_options={"mamba": {"d_state": 4}}))
    mixer = model.blocks[0].mixer
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        mixer.dt_proj.weight.zero_()
        mixer.dt_proj.bias.fill_(math.log(math.expm1(2e-3)))  # dt = 0.002
        mixer.A_log.zero_()  # A = -1
    tokens = torch.randint(0, 256, (1, 2048), generator=torch.Generator().manual_seed(0))
    name = "blocks.0.mixer.hook_state"
    with torch.no_grad():
        ref = model.run_with_cache(tokens, names_filter=name)[1][name]
        _, cache = model.to(torch.bfloat16).run_with_cache(tokens, names_filter=name)
        _, states = model(tokens, return_states=True)
    out = cache[name]
    assert out.dtype == torch.float32 and states.layers[0]["mixer"]["state"].dtype == torch.float32
    err = (out - ref).flatten(2).norm(dim=-1)[0] / ref.flatten(2).norm(dim=-1)[0]
    assert max(_windows(err)) < 0.03, _windows(err)


@pytest.mark.numerical
def test_slstm_bfloat16_error_does_not_grow_along_the_sequence():
    """sLSTM over 2048 tokens in bfloat16: the output's error against float32 stays flat (measured
    3.8e-3 in every window; with a bfloat16 cell it grew from 1.3e-2 to 1.3e-1)."""
    mixer = make_model("slstm").blocks[0].mixer
    x = torch.randn(1, 2048, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = mixer(x)
        out, state = mixer.to(torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16 and state["state"].dtype == torch.float32
    err = _windows((out.float() - ref).pow(2).mean(-1).sqrt()[0] / ref.pow(2).mean().sqrt())
    assert max(err) < 1e-2 and err[-1] < 2 * err[0], err


#: log-odds of a forget gate of 0.998 (a memory of ~500 tokens)
SLOW = math.log(0.998 / 0.002)


def _slow_memory(arch: str, mixer: torch.nn.Module) -> torch.nn.Module:
    """Give ``mixer`` a memory decaying by about 0.998 per token, whatever its input."""
    with torch.no_grad():
        if arch == "qrnn":
            h = mixer.d_hidden
            mixer.W_conv[h : 2 * h].zero_()
            mixer.b_conv[h : 2 * h].fill_(SLOW)
        elif arch == "lmu":  # the window is the memory (theta=1000 at build); the recurrence accumulates
            mixer.method = "recurrent"
        elif arch == "hgrn2":  # f = lb + (1 - lb) / 2 = 1 - 2^-9, all exactly representable
            mixer.f_proj.weight.zero_()
            mixer.lower_bound.fill_(1 - 2 ** -8)
        elif arch == "rwkv":
            mixer.time_decay.fill_(math.log(2e-3))  # w = 0.002
        elif arch == "mlstm":
            mixer.W_fgate.weight.zero_()
            mixer.W_fgate.bias.fill_(SLOW)
        elif arch == "lstm":
            n, lstm = mixer.cfg.d_model, mixer.lstm
            for w in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_hh_l0):
                w[n : 2 * n].zero_()
            lstm.bias_ih_l0[n : 2 * n].fill_(SLOW)
    return mixer


WIDE_ARCHS = ["hgrn2", "lmu", "lstm", "mlstm", "qrnn", "rwkv"]


@pytest.mark.numerical
@pytest.mark.parametrize("arch", WIDE_ARCHS)
def test_bfloat16_error_does_not_grow_along_a_slow_memory(arch):
    """2048 tokens through a memory decaying by 0.998 per token: the bfloat16 mixer's output against
    float32 (same bfloat16-rounded weights and inputs, so only the arithmetic differs) stays small and
    flat. Measured, error per window of 256 tokens, worst window (float32 state / bfloat16 state):
    hgrn2 0.0045 / 1.03 (f rounds to 1: nothing is stored), lmu (recurrent form) 0.0026 / 0.066,
    lstm 0.0017 / 0.24, mlstm 0.0051 / 0.039, qrnn 0.0029 / 0.33, rwkv 0.0061 / 0.17."""
    opts = {"mixer_options": {"lmu": {"theta": 1000.0}}} if arch == "lmu" else {}
    mixer = _slow_memory(arch, make_model(arch, **opts).blocks[0].mixer).to(torch.bfloat16)
    x = torch.randn(1, 2048, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.no_grad():
        out, state = mixer(x)
        ref, _ = mixer.float()(x.float())
    assert out.dtype == torch.bfloat16
    assert {k for k, v in state.items() if v.dtype == torch.float32} == set(mixer.WIDE_STATES) != set()
    err = _windows((out.float() - ref).pow(2).mean(-1).sqrt()[0] / ref.pow(2).mean().sqrt())
    assert max(err) < 1.5e-2 and err[-1] < 2 * err[2], err  # window 2: the memory has filled


@pytest.mark.parametrize("arch", ["mamba", "slstm", *WIDE_ARCHS])
def test_bfloat16_segments_continue_from_the_float32_state(arch):
    """A bfloat16 model run in segments carries its WIDE_STATES in float32 and matches one run."""
    model = make_model(arch).to(torch.bfloat16)
    tokens = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole = model(tokens)
        _, st = model(tokens[:, :10], return_states=True)
        rest = model(tokens[:, 10:], states=st)
    for layer, block in zip(st.layers, model.blocks):
        wide = set(block.mixer.WIDE_STATES)
        assert wide and {k for k, v in layer["mixer"].items() if v.dtype == torch.float32} == wide
    assert torch.equal(rest, whole[:, 10:])


@pytest.mark.parametrize("form", ["linear_chunked", "linear_sequential", "linear_loop", "gla_chunked",
                                  "gla_sequential", "gla_states", "max", "lti"])
def test_scans_accumulate_in_a_wider_initial_state(form):
    """Every scan given bfloat16 inputs and a float32 initial state runs in float32: exactly what the
    float32 copies of the same inputs give (a bfloat16 accumulator drops each 1e-3 step added to 1)."""
    from probe.ops.lti import LTIMemory, zoh
    from probe.mixers.lmu import legendre_matrices
    from probe.ops.linear_scan import linear_scan
    from probe.ops.gla import gla_chunked, gla_sequential, gla_states
    from probe.ops.max_scan import max_scan

    g = torch.Generator().manual_seed(0)
    a, b = torch.ones(1, 64, 4).bfloat16(), torch.full((1, 64, 4), 1e-3).bfloat16()
    q, k, v = (torch.rand(1, 64, 2, 3, generator=g).bfloat16() * 0.05 for _ in range(3))
    runs = {
        "linear_chunked": lambda *t: linear_scan(*t, torch.ones(1, 4), method="chunked"),
        "linear_sequential": lambda *t: linear_scan(*t, torch.ones(1, 4), method="sequential"),
        "linear_loop": lambda *t: linear_scan(*t, torch.ones(1, 4), method="loop"),
        "gla_chunked": lambda *t: gla_chunked(*t, torch.zeros(1, 64, 2, 1), torch.ones(1, 2, 3, 3))[0],
        "gla_sequential": lambda *t: gla_sequential(*t, torch.zeros(1, 64, 2, 1), torch.ones(1, 2, 3, 3))[0],
        "gla_states": lambda *t: gla_states(*t[1:], torch.ones(1, 64, 2, 1), torch.ones(1, 2, 3, 3)),
        "max": lambda *t: max_scan(torch.zeros(1, 64, 4), t[0], torch.full((1, 4), 1000.5))[0],
        "lti": lambda *t: LTIMemory(*zoh(*legendre_matrices(4, 8.0))).states(t[0], torch.ones(1, 4, 4), "recurrent"),
    }
    inputs = {"linear": (a, b), "gla": (q, k, v), "max": (b,), "lti": (b,)}[form.split("_")[0]]
    out = runs[form](*inputs)
    ref = runs[form](*(t.float() for t in inputs))
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-6, atol=0)
    if form.startswith("linear"):
        assert out[0, -1, 0].item() > 1.06  # 64 steps of ~1e-3 kept (a bfloat16 sum stays at 1.0)
    if form == "max":
        assert out[0, -1, 0].item() == 1000.5  # bfloat16 would round the stabiliser to 1000
