"""LMU: the Legendre system, the mixer against the recurrence read back from its hooks, edits in
the FFT regime, long inputs and bad options (the LTI memory's forms: tests/ops/test_lti.py)."""
import math

import pytest
import torch

import probe
from conftest import randomise
from mixer_checks import assert_gradients_match, assert_segments_match
from probe.errors import ConfigError
from probe.ops.lti import LTIMemory, zoh
from probe.mixers.lmu import LMU, legendre_matrices, shifted_legendre


def test_legendre_matrices_are_the_published_ones():
    A, B = legendre_matrices(3, theta=2.0)
    expected_A = torch.tensor([[-1.0, -1.0, -1.0], [3.0, -3.0, -3.0], [-5.0, 5.0, -5.0]], dtype=torch.float64)
    torch.testing.assert_close(A, expected_A / 2)
    torch.testing.assert_close(B, torch.tensor([1.0, -3.0, 5.0], dtype=torch.float64) / 2)


def test_memory_decodes_the_delayed_input():
    """The state holds a sliding window: u_{t - r theta} ~= sum_i P_i(2r - 1) m_t[i]."""
    q, theta = 12, 50.0
    memory = LTIMemory(*zoh(*legendre_matrices(q, theta)))
    t = torch.arange(600, dtype=torch.float64)
    u = torch.sin(2 * math.pi * t / 300) + 0.5 * torch.sin(2 * math.pi * t / 170)
    m = memory.recurrent(u[None, :, None])[0, :, 0]
    for r in (0.0, 0.5, 1.0):
        decoded = m @ shifted_legendre(q, torch.tensor(r))
        delay = int(r * theta)
        assert (decoded[200:] - u[200 - delay : 600 - delay]).abs().max() < 0.03, r


def _model(layout=("lmu", "lmu"), **opts):
    torch.manual_seed(0)
    cfg = probe.ModelConfig(vocab_size=50, d_model=16, layout=list(layout), d_mlp=32,
                            mixer_options={"lmu": {"order": 6, "theta": 12.0, **opts}})
    return randomise(probe.HookedLM(cfg).eval(), 0.2)


def test_hooks_follow_the_recurrence():
    model = _model()
    toks = torch.randint(0, 50, (2, 90), generator=torch.Generator().manual_seed(3))  # FFT regime
    _, cache = model.run_with_cache(toks)
    mixer = model.blocks[1].mixer
    u, m = cache["blocks.1.mixer.hook_input"], cache["blocks.1.mixer.hook_state"]
    assert m.shape == (2, 90, 4, 6)
    Abar, Bbar = (t.float() for t in zoh(*legendre_matrices(6, 12.0)))
    prev = torch.zeros_like(m[:, 0])
    for t in range(90):
        expected = prev @ Abar.T + u[:, t, :, None] * Bbar
        torch.testing.assert_close(m[:, t], expected, rtol=1e-4, atol=1e-5)
        prev = m[:, t]
    x = cache["blocks.1.hook_mixer_in"]
    with torch.no_grad():
        y = torch.nn.functional.gelu(mixer.W_m(m.flatten(2)) + mixer.W_x(x))
    torch.testing.assert_close(y, cache["blocks.1.hook_mixer_out"], rtol=1e-4, atol=1e-5)


def test_parallel_and_recurrent_models_agree_and_segments_match():
    model = _model()
    toks = torch.randint(0, 50, (2, 200), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fft = model(toks)
        first, st = model(toks[:, :130], return_states=True)  # FFT, then FFT with a carried state
        second, st = model(toks[:, 130:131], states=st, return_states=True)  # one recurrent step
        third = model(toks[:, 131:], states=st)
        for b in model.blocks:
            b.mixer.method = "recurrent"
        rec = model(toks)
    torch.testing.assert_close(fft, rec, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat([first, second, third], 1), rec, rtol=1e-4, atol=1e-4)


def test_state_edits_propagate_in_the_fft_regime():
    """Edits at two positions of a 150-token run (FFT form restarted at each) equal three
    segments, each ending with the same edit and carrying the state on."""
    model = _model()
    toks = torch.randint(0, 50, (1, 150), generator=torch.Generator().manual_seed(5))
    name, edits = "blocks.0.mixer.hook_state", {40: 0.5, 99: -0.5}
    value = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(6))

    def editor(offset):
        def hook(t, hook):
            t = t.clone()
            for p, c in edits.items():
                if 0 <= p - offset < t.shape[1]:
                    t[:, p - offset] = c * value
            return t
        return hook

    with torch.no_grad():
        hooked = model.run_with_hooks(toks, fwd_hooks=[(name, editor(0))])
        pieces, st, start = [], None, 0
        for end in (41, 100, 150):
            with model.hooks(fwd_hooks=[(name, editor(start))]):
                out, st = model(toks[:, start:end], states=st, return_states=True)
            pieces.append(out)
            start = end
        clean = model(toks)
    torch.testing.assert_close(hooked, torch.cat(pieces, 1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(hooked[:, 41:], clean[:, 41:])
    torch.testing.assert_close(hooked[:, :40], clean[:, :40])


def test_hybrid_with_global_attention():
    model = _model(layout=("lmu", "lmu", "attn"))
    assert_segments_match(model, torch.randint(0, 50, (1, 70), generator=torch.Generator().manual_seed(7)), 50)


@pytest.mark.parametrize("bad", [{"order": 0}, {"order": 2.5}, {"theta": 0}, {"theta": -3.0}, {"d_u": 0}])
def test_bad_options_are_named(bad):
    cfg = probe.ModelConfig(d_model=16, layout=["lmu"], mixer_options={"lmu": bad})
    with pytest.raises(ConfigError, match=next(iter(bad))):
        probe.HookedLM(cfg)


def test_gradients_of_fft_and_recurrent_forms_match():
    model = _model()
    toks = torch.randint(0, 50, (2, 80), generator=torch.Generator().manual_seed(8))
    assert_gradients_match(model, toks, ("fft", "recurrent"))


def test_readout_without_states_equals_the_states_read_out():
    """Without a state hook the mixer never builds its states (they are read out one channel block
    at a time); outputs, the carried state and gradients equal the materialised path's."""
    mem = LTIMemory(*zoh(*legendre_matrices(6, 20.0)))
    g = torch.Generator().manual_seed(11)
    for order, batch, T, d in ((6, 2, 90, 5), (16, 12, 40, 5), (4, 3, 70, 400)):  # one block and many
        memory = LTIMemory(*zoh(*legendre_matrices(order, 20.0)))
        u, W = torch.randn(batch, T, 7, generator=g).double(), torch.randn(d, 7, order, generator=g).double()
        torch.testing.assert_close(memory.convolve_readout(u, W),
                                   torch.einsum("btcq,dcq->btd", memory.recurrent(u), W), rtol=1e-10, atol=1e-10)
    u, m0 = torch.randn(2, 90, 3, generator=g), torch.randn(2, 3, 6, generator=g)
    states = mem.states(u, m0, "fft")
    torch.testing.assert_close(mem.convolve_last(u) + mem.free_response(m0, 90)[:, -1], states[:, -1],
                               rtol=1e-4, atol=1e-4)
    model = _model()
    for block in model.blocks:  # "auto" would take the Toeplitz form under gradients at this length
        block.mixer.method = "fft"
    toks = torch.randint(0, 50, (2, 100), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, st = model(toks[:, :40], return_states=True)  # a carried (nonzero) initial state
    runs = []
    for hooked in (False, True):
        model.zero_grad()
        hooks = [(f"blocks.{i}.mixer.hook_state", lambda v, hook: None) for i in range(len(model.blocks))]
        with model.hooks(fwd_hooks=hooks if hooked else []):
            logits, last = model(toks[:, 40:], states=st, return_states=True)
        logits.square().mean().backward()
        runs.append((logits.detach(), last.layers[0]["mixer"]["state"].detach(),
                     model.blocks[0].mixer.W_m.weight.grad.clone()))
    for fast, full in zip(*runs):
        torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-5)


def _largest_allocation(fn) -> int:
    """Bytes of the largest single allocation an operator makes while ``fn`` runs (CPU profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(event.self_cpu_memory_usage for event in prof.events())


@pytest.mark.parametrize("method,hooked", [("auto", False), ("fft", True), ("direct", True), ("direct", False)])
def test_no_intermediate_outgrows_outputs_and_states(method, hooked):
    """Every form's largest allocation stays within one copy of the layer's outputs plus its states
    (batch 4, d_model 128, d_u 8, order 16, 1100 positions). An FFT of every channel at once takes
    1.9 times that, a [T, T, order] Toeplitz filter 17 times."""
    cfg = probe.ModelConfig(vocab_size=50, d_model=128, layout=["lmu"],
                            mixer_options={"lmu": {"order": 16, "theta": 32.0, "d_u": 8}})
    mixer = LMU(cfg, 0).eval()
    mixer.method = method
    b, T = 4, 1100
    x = torch.randn(b, T, 128, generator=torch.Generator().manual_seed(0))
    state = mixer.initial_state(b)
    keep = {"state"} if hooked else set()
    with torch.no_grad():
        largest = _largest_allocation(lambda: mixer.compute(x, state, {}, keep))
    bound = 4 * b * T * (128 + 8 * 16)  # float32 outputs + states
    assert largest <= bound, (largest, bound)
