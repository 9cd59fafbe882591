"""Gated linear attention (probe.ops.gla): the chunked form and the state form against the
sequential definition, including extreme decays, long inputs, forced states and gradients."""
import pytest
import torch

from probe.ops.gla import gla_chunked, gla_readout, gla_sequential, gla_states


def _inputs(T, kind="uniform", heads=3, K=4, V=5, scalar=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, T, heads, K, generator=g), torch.randn(2, T, heads, K, generator=g)
    v = torch.randn(2, T, heads, V, generator=g)
    shape = (2, T, heads, 1 if scalar else K)
    if kind == "near0":  # decays in [0, 1e-4]
        decay = 1e-4 * torch.rand(shape, generator=g)
    elif kind == "near1":  # decays in [0.999, 1]
        decay = 1 - 1e-3 * torch.rand(shape, generator=g)
    elif kind == "exact0and1":
        decay = (torch.rand(shape, generator=g) > 0.5).float()
    else:
        decay = torch.rand(shape, generator=g)
    h0 = torch.randn(2, heads, K, V, generator=g)
    return q, k, v, decay.log(), h0


@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("kind", ["uniform", "near0", "near1", "exact0and1"])
@pytest.mark.parametrize("T", [1, 15, 16, 17, 100])
def test_chunked_equals_sequential(T, kind, scalar):
    q, k, v, g, h0 = _inputs(T, kind, scalar=scalar)
    o_ref, h_ref = gla_sequential(q, k, v, g, h0, scale=0.5)
    for chunk in (1, 7, 16):
        o, h = gla_chunked(q, k, v, g, h0, scale=0.5, chunk=chunk)
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    S = gla_states(k, v, g.exp(), h0)
    torch.testing.assert_close(gla_readout(q, S, 0.5), o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S[:, -1], h_ref, rtol=1e-4, atol=1e-4)


def test_sequential_is_the_recurrence():
    q, k, v, g, h0 = _inputs(6)
    S, outs = h0.clone(), []
    for t in range(6):
        for h in range(3):
            S[:, h] = torch.diag_embed(g[:, t, h].exp()) @ S[:, h] + k[:, t, h, :, None] * v[:, t, h, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o, hT = gla_sequential(q, k, v, g, h0)
    torch.testing.assert_close(o, torch.stack(outs, 1))
    torch.testing.assert_close(hT, S)


def test_long_sequence_is_stable():
    q, k, v, g, h0 = _inputs(8192, "uniform", heads=2, K=2, V=2)
    g = torch.where(torch.arange(8192)[None, :, None, None] % 2 == 0, g, torch.full_like(g, -1e-5))  # near 1 too
    o_ref, h_ref = gla_sequential(q, k, v, g, h0)
    o, h = gla_chunked(q, k, v, g, h0)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)


def test_forced_state_restarts_the_recurrence():
    q, k, v, g, h0 = _inputs(12)
    mask = torch.zeros(2, 12, 3, 4, 5, dtype=torch.bool)
    mask[:, 5, 1] = True
    values = torch.full((2, 12, 3, 4, 5), 3.0)
    S = gla_states(k, v, g.exp(), h0, force=(mask, values))
    assert torch.equal(S[:, 5, 1], values[:, 5, 1])
    _, after = gla_sequential(q[:, 6:], k[:, 6:], v[:, 6:], g[:, 6:], S[:, 5])
    torch.testing.assert_close(S[:, -1], after, rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_named():
    q, k, v, g, h0 = _inputs(4)
    with pytest.raises(ValueError, match="log_decay"):
        gla_chunked(q, k, v, g[..., :2], h0)
    with pytest.raises(ValueError, match="initial state"):
        gla_chunked(q, k, v, g, h0[:, :1])


def test_gradients_of_chunked_and_sequential_forms_match():
    q, k, v, g, h0 = _inputs(37)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, g, h0)]
    grads = []
    for fn in (gla_chunked, gla_sequential):
        o, h = fn(*leaves, scale=0.5)
        (o.square().sum() + h.sum()).backward()
        grads.append([t.grad.clone() for t in leaves])
        for t in leaves:
            t.grad = None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
