"""The quadrature of integrated gradients (probe.methods.support.path_quadrature) on analytic integrands:
the Gauss-Kronrod pair, and the adaptive rule on vector integrands with known integrals."""
import numpy as np
import pytest
import torch

from probe.methods.support import path_quadrature as pq

WIDTH = 2e-4  # a spike / step this narrow falls between all nodes of the first panels


def spiky(centre: float):
    """A 4-token integrand and its antiderivative: a smooth oscillation, a polynomial, a Gaussian
    spike of width WIDTH at ``centre`` and a sigmoid step of width WIDTH at ``1 - centre``."""
    from math import erf, sqrt, pi

    def g(a):  # [m] -> [m, 4]
        s = torch.sigmoid((a - (1 - centre)) / WIDTH)
        return torch.stack([torch.cos(3 * a), 5 * a ** 4, -0.8 * torch.exp(-((a - centre) / WIDTH) ** 2),
                            s * (1 - s) / WIDTH], -1)

    def exact():
        spike = -0.8 * WIDTH * sqrt(pi) / 2 * (erf((1 - centre) / WIDTH) + erf(centre / WIDTH))
        step = float(torch.sigmoid(torch.tensor(centre / WIDTH)) - torch.sigmoid(torch.tensor(-(1 - centre) / WIDTH)))
        return torch.tensor([np.sin(3) / 3, 1.0, spike, step], dtype=torch.float64)

    def f(a):  # the metric: the sum of the antiderivatives (f(0) = 0 up to the step's tail)
        return (torch.sin(3 * a) / 3 + a ** 5
                - 0.8 * WIDTH * np.sqrt(np.pi) / 2 * (torch.erf((a - centre) / WIDTH) + float(erf(centre / WIDTH)))
                + torch.sigmoid((a - (1 - centre)) / WIDTH))
    return g, f, exact()


def batch_of(*centres):
    """``integrand(seq, alpha)`` and ``value(seq, alpha)`` for one ``spiky`` sequence per centre."""
    parts = [spiky(c) for c in centres]
    calls = []

    def integrand(seq, alpha):
        calls.append(len(seq))
        return torch.stack([parts[int(s)][0](a[None])[0] for s, a in zip(seq, alpha)])

    def value(seq, alpha):
        return torch.stack([parts[int(s)][1](a) for s, a in zip(seq, alpha)])
    return integrand, value, torch.stack([p[2] for p in parts]), calls


def test_gauss_kronrod_pair_is_exact_on_polynomials():
    x, wk, wg = pq.gauss_kronrod()
    assert bool((x[1:] > x[:-1]).all()) and int((wg != 0).sum()) == 7
    for degree in range(24):
        exact = 1 / (degree + 1)
        assert abs(float((wk * x ** degree).sum()) - exact) < 1e-14, degree  # Kronrod: degree <= 22 (and odd 23)
        if degree <= 13:
            assert abs(float((wg * x ** degree).sum()) - exact) < 1e-14, degree  # Gauss 7: degree <= 13
    assert abs(float((wg * x ** 14).sum()) - 1 / 15) > 1e-9  # and no higher


@pytest.mark.numerical
def test_adaptive_rule_is_right_per_token_with_spikes_between_the_nodes():
    """Two sequences with a spike and a step 2e-4 wide at different places: every token's integral
    within the target, each token's error estimate bounds its true error, the spikes found."""
    integrand, value, exact, calls = batch_of(0.3137, 0.5551)
    res = pq.adaptive_integral(integrand, value, batch=2, tol=1e-3)
    true = (res.estimate - exact).abs()
    assert bool(res.converged.all()) and bool((true <= res.error).all()), (true, res.error)
    assert float((true.amax(-1) / exact.abs().amax(-1)).max()) < 1e-3
    assert bool((res.mismatch < 1e-3).all())
    assert bool((res.evaluations % 15 == 0).all()) and bool((res.evaluations > 15 * 4).all())
    # the gradient evaluations are batched: both sequences' panels of a round go in one call
    assert len(calls) < int(res.evaluations.sum()) // 30, calls


@pytest.mark.numerical
def test_the_completeness_mismatch_is_what_sees_a_spike_between_all_nodes():
    """Without the f(b) - f(a) term a spike that no node touches is invisible: K and G agree on a wrong
    value (the spike's token misses most of its integral) and the rule stops at once."""
    integrand, value, exact, _ = batch_of(0.3137)
    blind = lambda seq, alpha: torch.zeros(len(seq), dtype=torch.float64)  # f constant: no mismatch seen

    fooled = pq.adaptive_integral(integrand, blind, batch=1, tol=1e-2)
    assert float((fooled.estimate - exact).abs()[0, 2]) > 0.2 * abs(float(exact[0, 2]))
    right = pq.adaptive_integral(integrand, value, batch=1, tol=1e-2)
    assert float((right.estimate - exact).abs().max()) < 1e-2 * float(exact.abs().max())


def test_adaptive_rule_reports_an_exhausted_budget_honestly():
    integrand, value, exact, _ = batch_of(0.3137)
    res = pq.adaptive_integral(integrand, value, batch=1, tol=1e-8, initial_panels=2, max_evaluations=120)
    assert int(res.evaluations[0]) <= 120 and not bool(res.converged[0])
    assert bool(((res.estimate - exact).abs() <= res.error).all())  # still an upper bound where it stopped
    assert float(res.error.amax()) > 1e-8 * float(res.estimate.abs().amax())


def test_quadrature_bookkeeping_is_float64_on_the_cpu_whatever_the_values_are():
    """The rule hands CPU float64 points to the model's functions and takes their values whatever their
    dtype (a float32 model), so nothing it creates meets a tensor of another device."""
    integrand, value, exact, _ = batch_of(0.3137)
    seen = []

    def f32_integrand(seq, alpha):
        seen.append((seq.device, alpha.device, alpha.dtype))
        return integrand(seq, alpha).float()

    def f32_value(seq, alpha):
        seen.append((seq.device, alpha.device, alpha.dtype))
        return value(seq, alpha).float()

    res = pq.adaptive_integral(f32_integrand, f32_value, batch=1, tol=1e-2)
    assert pq.path_stretch(f32_value, 1) == 0.0
    assert set(seen) == {(torch.device("cpu"), torch.device("cpu"), torch.float64)}
    assert res.estimate.dtype == res.error.dtype == torch.float64 and res.estimate.device.type == "cpu"
