"""The LTI memory (probe.ops.lti): zero-order-hold discretisation, and its three forms (recurrent,
Toeplitz, FFT) against each other on the LMU's Legendre system, long inputs, extreme windows and
the automatic choice of form."""
import pytest
import torch

from probe.mixers.lmu import legendre_matrices
from probe.ops.lti import LTIMemory, zoh


def test_zero_order_hold():
    A, B = legendre_matrices(6, theta=10.0)
    Abar, Bbar = zoh(A, B)
    torch.testing.assert_close(Abar, torch.linalg.matrix_exp(A))
    torch.testing.assert_close(A @ Bbar, (Abar - torch.eye(6, dtype=torch.float64)) @ B)  # Bbar = A^-1 (Abar - I) B
    # a constant input held for one step, integrated finely, lands on the same state
    m0 = torch.randn(6, dtype=torch.float64)
    m, n = m0.clone(), 20000
    for _ in range(n):
        m = m + (A @ m + B * 0.7) / n
    torch.testing.assert_close(Abar @ m0 + Bbar * 0.7, m, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1, 5, 63, 64, 65, 300])
def test_forms_agree(T, dtype):
    memory = LTIMemory(*zoh(*legendre_matrices(8, 20.0)))
    g = torch.Generator().manual_seed(T)
    u = torch.randn(2, T, 3, generator=g).to(dtype)
    m0 = torch.randn(2, 3, 8, generator=g).to(dtype)
    ref = memory.recurrent(u, m0)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for method in ("direct", "fft", "auto"):
        out = memory.states(u, m0, method)
        assert out.dtype == dtype
        assert (out - ref).abs().max() / ref.abs().max() < tol, method


def test_long_sequence_is_stable():
    memory = LTIMemory(*zoh(*legendre_matrices(16, 256.0)))
    u = torch.randn(1, 8192, 4, generator=torch.Generator().manual_seed(0))
    m0 = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(1))
    fft, ref = memory.states(u, m0, "fft"), memory.recurrent(u, m0)
    assert torch.isfinite(fft).all()
    assert (fft - ref).abs().max() / ref.abs().max() < 1e-5
    assert torch.linalg.eigvals(memory.Abar).abs().max() < 1  # a stable memory: nothing grows


def test_extreme_windows():
    """A window of a fraction of a token (decays ~0) and one far longer than the input (~1)."""
    for theta in (0.05, 1e6):
        memory = LTIMemory(*zoh(*legendre_matrices(6, theta)))
        u = torch.randn(1, 500, 2, generator=torch.Generator().manual_seed(2))
        ref = memory.recurrent(u)
        out = memory.states(u, None, "fft")
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-12


def test_auto_form_follows_length_batch_and_gradients():
    """``"auto"``: the recurrence for a few positions; under gradients the Toeplitz form up to 256
    positions, then the recurrence; without, FFT for few sequences or short inputs, else the recurrence."""
    mem = LTIMemory(*zoh(*legendre_matrices(6, 20.0)))
    assert mem.resolve("auto", 3) == "recurrent"
    assert mem.resolve("auto", 256, 16, grad=True) == "direct"
    assert mem.resolve("auto", 1024, 1, grad=True) == "recurrent"
    assert mem.resolve("auto", 32, 1) == "direct"
    assert mem.resolve("auto", 4096, 1) == "fft"
    assert mem.resolve("auto", 256, 32) == "fft"
    assert mem.resolve("auto", 1024, 8) == "recurrent"
    assert mem.resolve("fft", 3, 64, grad=True) == "fft"  # an explicit form is kept
    with pytest.raises(ValueError, match="Unknown LTI method"):
        mem.resolve("fast", 10)
