"""The chunked scan equals the sequential definition, including extreme decays and long inputs."""
import pytest
import torch

from probe.ops.linear_scan import (force_states, linear_scan, linear_scan_chunked, linear_scan_loop,
                                    linear_scan_sequential)

DECAYS = {"near0": (0.0, 1e-4), "near1": (0.999, 1.0), "exact0and1": None, "uniform": (0.0, 1.0)}


def _decays(kind, shape, g):
    if kind == "exact0and1":
        return (torch.rand(shape, generator=g) > 0.5).float()
    lo, hi = DECAYS[kind]
    return lo + (hi - lo) * torch.rand(shape, generator=g)


@pytest.mark.parametrize("T", [1, 2, 17, 256, 1000, 4096])
@pytest.mark.parametrize("kind", list(DECAYS))
def test_chunked_equals_sequential(T, kind):
    g = torch.Generator().manual_seed(T)
    a = _decays(kind, (2, T, 8), g)
    b = torch.randn(2, T, 8, generator=g)
    h0 = torch.randn(2, 8, generator=g)
    ref = linear_scan_sequential(a, b, h0)
    out = linear_scan_chunked(a, b, h0)
    assert torch.isfinite(out).all()
    rel = (out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)
    assert rel < 1e-5, rel


def test_sequential_is_the_recurrence():
    a, b, h0 = torch.rand(1, 5, 3), torch.randn(1, 5, 3), torch.randn(1, 3)
    h, expected = h0, []
    for t in range(5):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(linear_scan_sequential(a, b, h0), torch.stack(expected, 1))


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_any_chunk_length_and_broadcast_decay(chunk):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 50, 3, 1, 1, generator=g)  # per-head scalar decay of a matrix state
    b = torch.randn(2, 50, 3, 4, 5, generator=g)
    torch.testing.assert_close(linear_scan_chunked(a, b, chunk=chunk), linear_scan_sequential(a, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["auto", "chunked", "sequential", "loop"])
def test_gradients_match(method):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 40, 4, generator=g).requires_grad_()
    b = torch.randn(2, 40, 4, generator=g).requires_grad_()
    linear_scan(a, b, method=method).square().sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    linear_scan_sequential(a, b).square().sum().backward()
    torch.testing.assert_close(ga, a.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gb, b.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a_shape", [(2, 30, 3, 4), (2, 30, 3, 1), (1, 30, 3, 4)])
def test_loop_gradients_pass_gradcheck(a_shape):
    """The hand-written backward of the loop form (decay, input and initial state; broadcast
    decays included) against finite differences in float64."""
    g = torch.Generator().manual_seed(1)
    a = torch.rand(a_shape, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 30, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(linear_scan_loop, (a, b, h0))
    torch.testing.assert_close(linear_scan_loop(a, b, h0), linear_scan_sequential(a, b, h0))


@pytest.mark.parametrize("kind", list(DECAYS))
def test_loop_equals_sequential_on_long_inputs(kind):
    g = torch.Generator().manual_seed(2)
    a = _decays(kind, (2, 2048, 8), g)
    b = torch.randn(2, 2048, 8, generator=g)
    torch.testing.assert_close(linear_scan_loop(a, b), linear_scan_sequential(a, b))
    assert linear_scan_loop(a[:, :0], b[:, :0]).shape == (2, 0, 8)


def test_forced_states_hold_and_propagate():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 10, 2, generator=g), torch.randn(1, 10, 2, generator=g)
    mask = torch.zeros(1, 10, 2, dtype=torch.bool)
    mask[0, 4, 0] = True
    values = torch.full((1, 10, 2), 7.0)
    h = linear_scan_chunked(*force_states(a, b, mask, values))
    assert h[0, 4, 0] == 7.0
    # position 5 follows the recurrence from the forced value; element 1 is untouched
    torch.testing.assert_close(h[0, 5, 0], a[0, 5, 0] * 7.0 + b[0, 5, 0])
    torch.testing.assert_close(h[:, :, 1], linear_scan_sequential(a, b)[:, :, 1])


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="does not broadcast"):
        linear_scan(torch.rand(1, 4, 3), torch.rand(1, 4, 5))
    with pytest.raises(ValueError, match="initial state"):
        linear_scan(torch.rand(1, 4, 3), torch.rand(1, 4, 3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="Unknown scan method"):
        linear_scan(torch.rand(1, 4, 3), torch.rand(1, 4, 3), method="fast")
