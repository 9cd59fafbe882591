"""Mamba's selective scan (probe.ops.selective_scan): the fused PyTorch form and the compiled CPU
kernel (probe/ops/native/selective_scan.cpp) against the sequential definition, in values and
gradients (gradcheck), and the state-writing form."""
import pytest
import torch

import probe.ops.selective_scan as scan_module
from probe.ops.linear_scan import linear_scan_sequential
from probe.ops.native import native
from probe.ops.selective_scan import _NativeSelectiveScan, selective_scan, selective_scan_states


def _scan_inputs(seed, b=2, T=23, D=3, N=4, dtype=torch.float64):
    """Random selective-scan inputs ``(dt, A, B, C, v, h0)``, all requiring gradients."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.rand(b, T, D, generator=g, dtype=dtype)
    A = -torch.rand(D, N, generator=g, dtype=dtype)
    B, C = (torch.randn(b, T, N, generator=g, dtype=dtype) for _ in range(2))
    v, h0 = torch.randn(b, T, D, generator=g, dtype=dtype), torch.randn(b, D, N, generator=g, dtype=dtype)
    return tuple(x.requires_grad_() for x in (dt, A, B, C, v, h0))


def _native_scan_kernel():
    kernel = native("selective_scan")
    if kernel is None:
        pytest.skip("the compiled selective-scan kernel cannot be built here (no C++ compiler or ninja)")
    return kernel


@pytest.mark.parametrize("checkpoint", [1, 5, 16, 64])
def test_fused_selective_scan_gradcheck_and_definition(checkpoint):
    """The PyTorch fused scan's hand-written backward (every input, any checkpoint spacing) against
    finite differences, and its values against the sequential definition."""
    dt, A, B, C, v, h0 = _scan_inputs(checkpoint)
    scan = lambda *xs: selective_scan(*xs, checkpoint=checkpoint, native_path=False)  # noqa: E731
    assert torch.autograd.gradcheck(scan, (dt, A, B, C, v, h0))
    y, last = scan(dt, A, B, C, v, h0)
    s = linear_scan_sequential(torch.exp(dt[..., None] * A), v[..., None] * B[:, :, None, :], h0)
    torch.testing.assert_close(y, torch.einsum("btdn,btn->btd", s, C))
    torch.testing.assert_close(last, s[:, -1])
    with pytest.raises(ValueError, match="C has shape"):
        selective_scan(dt, A, B, C[:, :-1], v, h0)


@pytest.mark.parametrize("T", [1, 2, 37])
def test_compiled_selective_scan_gradcheck_and_equals_pytorch_path(T):
    """The compiled CPU kernel (probe/ops/native/selective_scan.cpp): its backward against finite
    differences, its values against the sequential definition, and values and every gradient
    equal to the PyTorch path, with and without a gradient reaching the last state."""
    kernel = _native_scan_kernel()
    # D = 11: one full block of 8 channels and a partial one
    dt, A, B, C, v, h0 = inputs = _scan_inputs(T, b=3, T=T, D=11, N=6)
    assert torch.autograd.gradcheck(lambda *xs: _NativeSelectiveScan.apply(kernel, *xs), inputs)
    y, last = selective_scan(*inputs)
    s = linear_scan_sequential(torch.exp(dt[..., None] * A), v[..., None] * B[:, :, None, :], h0)
    torch.testing.assert_close(y, torch.einsum("btdn,btn->btd", s, C))
    torch.testing.assert_close(last, s[:, -1])
    w = torch.randn_like(y)
    for with_last in (True, False):
        grads = []
        for native_path in (True, False):
            y, last = selective_scan(*inputs, native_path=native_path)
            loss = (y * w).sum() + (last.square().sum() if with_last else 0)
            grads.append(torch.autograd.grad(loss, inputs))
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want)


def test_compiled_selective_scan_float32_and_strided_inputs():
    """float32 inputs that are views (transposed, sliced) give the PyTorch path's values and gradients."""
    _native_scan_kernel()
    dt, A, B, C, v, h0 = (x.detach().float() for x in _scan_inputs(11, b=4, T=50, D=16, N=8))
    dt = (dt.transpose(1, 2).contiguous().transpose(1, 2) * 0.2).requires_grad_()  # strided view
    wide = torch.cat([B, C], dim=-1).requires_grad_()
    B_view, C_view = wide[..., :8], wide[..., 8:]  # non-contiguous slices
    outs = []
    for native_path in (True, False):
        y, last = selective_scan(dt, A, B_view, C_view, v, h0, native_path=native_path)
        outs.append((y, last, torch.autograd.grad(y.square().sum() + last.sum(), (dt, wide))))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)
    for got, want in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


def test_compiled_selective_scan_split_over_threads_equals_one_thread():
    """A problem large enough to be split over threads (batch slices on std::threads) gives the
    single-thread result exactly, and the PyTorch path's gradients."""
    _native_scan_kernel()
    inputs = _scan_inputs(4, b=5, T=128, D=32, N=16)  # 5 * 128 * 32 * 16 > 2^18 elements: threaded
    previous = torch.get_num_threads()
    runs = []
    try:
        for threads, native_path in ((1, True), (2, True), (2, False)):
            torch.set_num_threads(threads)
            y, last = selective_scan(*inputs, native_path=native_path)
            runs.append((y, last, torch.autograd.grad(y.square().sum() + last.sum(), inputs)))
    finally:
        torch.set_num_threads(previous)
    (y1, l1, g1), (y2, l2, g2), (yp, lp, gp) = runs
    assert torch.equal(y1, y2) and torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    torch.testing.assert_close(y2, yp)
    for got, want in zip(g2, gp):
        torch.testing.assert_close(got, want)


def test_compiled_kernels_switch_off_with_environment(monkeypatch):
    """PROBE_NATIVE=0 turns the compiled kernels off; the scan then takes the PyTorch path."""
    monkeypatch.setenv("PROBE_NATIVE", "0")
    assert native("selective_scan") is None
    called = []
    monkeypatch.setattr(scan_module._SelectiveScan, "apply",
                        lambda *a: called.append(1) or torch.autograd.Function.apply.__func__(scan_module._SelectiveScan, *a))
    scan_module.selective_scan(*(x.detach() for x in _scan_inputs(1)))
    assert called == [1]


@pytest.mark.parametrize("native_path", [False, True])
def test_state_writing_scan_matches_definition_and_refuses_gradients(native_path):
    """selective_scan_states (PyTorch path, and the compiled kernel writing the states): every
    state and output equal to the sequential definition."""
    if native_path:
        _native_scan_kernel()

    g = torch.Generator().manual_seed(3)
    b, T, D, N = 3, 19, 5, 4
    dt = torch.rand(b, T, D, generator=g, dtype=torch.float64)
    A = -torch.rand(D, N, generator=g, dtype=torch.float64)
    B, C = (torch.randn(b, T, N, generator=g, dtype=torch.float64) for _ in range(2))
    v, h0 = torch.randn(b, T, D, generator=g, dtype=torch.float64), torch.randn(b, D, N, generator=g, dtype=torch.float64)
    y, last, states = selective_scan_states(dt, A, B, C, v, h0, native_path=native_path)
    s = linear_scan_sequential(torch.exp(dt[..., None] * A), v[..., None] * B[:, :, None, :], h0)
    torch.testing.assert_close(states, s)
    torch.testing.assert_close(y, torch.einsum("btdn,btn->btd", s, C))
    torch.testing.assert_close(last, s[:, -1])
    with pytest.raises(RuntimeError, match="does not track gradients"):
        selective_scan_states(dt.requires_grad_(), A, B, C, v, h0)
