r"""How integrated gradients integrates along its path: fixed rules and an adaptive Gauss-Kronrod rule.

Integrated gradients needs, per token ``s``, ``a_s = int_0^1 g_s(alpha) d alpha`` with the
vector-valued integrand ``g_s(alpha) = (x_s - x'_s) . dF/dx_s (x' + alpha (x - x'))``. Its sum over
tokens is ``f'(alpha)`` (``f``: the metric along the path), so on any panel ``[a, b]``
``sum_s int_a^b g_s = f(b) - f(a)``, which forward passes give exactly.

**Stretch near a zero baseline.** A pre-norm model's first norm reads a zero vector at ``alpha = 0``
and jumps to its full output while ``alpha`` is still tiny, so ``f`` has steps near 0 that are smooth
in ``log alpha``. :func:`path_stretch` probes ``f`` at ``alpha = 10^-1 .. 10^-15`` and returns a
stretch ``A``; every rule then integrates in ``u`` with ``alpha = sinh(A u) / sinh(A)`` (geometric
towards 0), ``int g d alpha = int g(alpha(u)) alpha'(u) du``.

**Fixed rules** (:func:`quadrature`): Gauss-Legendre, trapezoid, midpoint, left, right in ``u``.

**The adaptive rule** (:func:`adaptive_integral`), a vector-valued form of QUADPACK's ``qag``.
Each panel ``[a, b]`` (in ``u``) carries the 15-point Gauss-Kronrod estimate ``K_s`` of every
token's integral and the 7-point Gauss estimate ``G_s`` (its nodes are among the 15), and a
per-token error estimate::

    e_s = |K_s - G_s|  +  |sum_t K_t - (f(b) - f(a))|

The first term is the classic embedded estimate (an overestimate of K15's error where the
integrand is smooth: it is G7's error). The second, the panel's *completeness mismatch*, sees what
falls between all 15 nodes: a spike or step of ``f`` narrower than the node spacing (the zoo's
xLSTM has 1.9-logit changes within 2.4e-4 of ``alpha``) leaves ``K`` and ``G`` agreeing on a wrong
value, but ``f(b) - f(a)`` does not miss it. It is added to every token, since which tokens the
missed part belongs to is unknown. A step narrower than the path's precision resolves (a float32
path rounds its embeddings at ~1e-7 of ``alpha``; the xLSTM has such steps) is a jump of the
computed ``f``: its mismatch stays however narrow the panel, and the estimate keeps it (run the
model in float64 to resolve it). A sequence's estimate is ``A_s = sum_panels K_s`` with error
estimate ``E_s = sum_panels e_s``; it is accepted when ``max_s E_s <= tol max_s |A_s|``.
Otherwise each panel whose ``max_s e_s`` exceeds ``tol max_s |A_s| / n_panels`` is bisected (if
every panel were below that share, the sum would meet the target), all chosen panels of all
sequences in one batch of gradient evaluations, until every sequence is accepted or its budget of
gradient evaluations is spent (its estimate is reported either way).

Everything here is bookkeeping in float64 on the CPU: the functions it is given may compute on any
device and return values on it; they are brought to the CPU once, here, and the nodes handed to them
are CPU tensors (the caller moves them to the model's device).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from probe.errors import InputError

FIXED = ("gausslegendre", "trapezoid", "midpoint", "left", "right")
QUADRATURES = ("adaptive", *FIXED)

#: probe points alpha = 10^-k used by the "auto" spacing to find how close to the baseline f changes
PROBE_DECADES = 15
#: the share of f(x) - f(x') allowed to happen below the geometric part of the "auto" spacing
#: (chosen on random, default-initialised and briefly trained models of every architecture: 3e-2 gave
#: the smallest completeness errors at 64 steps; 1e-4 stretched too far and wasted nodes)
PROBE_TOLERANCE = 3e-2
#: the adaptive rule's default target: every token's error estimate below 1 % of the largest attribution
TOLERANCE = 0.01
#: panels narrower than this (in u) are not bisected further (float64 resolution of their nodes)
MIN_PANEL_WIDTH = 1e-12

#: 15-point Kronrod nodes on [-1, 1] (non-negative half, descending) and weights; the 7-point Gauss
#: rule uses the odd-indexed nodes (QUADPACK qk15)
_XK = (0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
       0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
       0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
       0.207784955007898467600689403773245, 0.0)
_WK = (0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
       0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
       0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
       0.204432940075298892414161999234649, 0.209482141084727828012999174891714)
_WG = (0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
       0.381830050505118944950369775488975, 0.417959183673469387755102040816327)
KRONROD_POINTS = 15

#: ``value(seq [m], alpha [m]) -> f [m]``: the metric of sequence ``seq[i]`` at ``alpha[i]`` (forward only)
Value = Callable[[Tensor, Tensor], Tensor]
#: ``integrand(seq [m], alpha [m]) -> g [m, pos]``: the per-token integrand ``g_s`` at those points
Integrand = Callable[[Tensor, Tensor], Tensor]


def _host(t: Tensor) -> Tensor:
    """A value computed on any device, as a CPU float64 tensor (the one place values cross devices)."""
    return t.detach().to("cpu", torch.float64)


def check_steps(steps) -> int:
    """``steps`` if it is a positive integer, else an ``InputError``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}.")
    return steps


def gauss_legendre(points: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``points``-point Gauss-Legendre nodes and weights on [0, 1] (weights sum to 1)."""
    x, w = np.polynomial.legendre.leggauss(points)
    return (x + 1) / 2, w / 2


def gauss_kronrod() -> tuple[Tensor, Tensor, Tensor]:
    """The 15-point Kronrod nodes on [0, 1] (ascending), their weights, and the embedded 7-point
    Gauss weights at the same nodes (zero at the 8 Kronrod-only nodes); both weight sets sum to 1."""
    xk = torch.tensor(_XK, dtype=torch.float64)
    wk = torch.tensor(_WK, dtype=torch.float64)
    wg = torch.zeros(8, dtype=torch.float64)
    wg[1::2] = torch.tensor(_WG, dtype=torch.float64)
    x = torch.cat([-xk[:-1], xk.flip(0)])
    return (x + 1) / 2, torch.cat([wk[:-1], wk.flip(0)]) / 2, torch.cat([wg[:-1], wg.flip(0)]) / 2


def quadrature(steps: int, method: str = "gausslegendre", stretch: float = 0.0) -> tuple[Tensor, Tensor]:
    """Nodes ``alpha`` in [0, 1] and weights (summing to 1) of a fixed rule, ``[steps]`` each (float64).

    ``method`` is the rule in the variable ``u`` in [0, 1]; with ``stretch = A > 0`` the nodes are
    mapped by ``alpha = sinh(A u) / sinh(A)`` (weights times ``d alpha / d u``). The integral is
    the same; only where it is sampled changes.
    """
    check_steps(steps)
    if method == "gausslegendre":
        u, w = map(torch.tensor, gauss_legendre(steps))
    elif method == "trapezoid":
        if steps < 2:
            raise InputError("The trapezoid rule needs steps >= 2.")
        u = torch.linspace(0, 1, steps, dtype=torch.float64)
        w = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (steps - 1)
    elif method in ("midpoint", "left", "right"):
        offset = {"midpoint": 0.5, "left": 0.0, "right": 1.0}[method]
        u = (torch.arange(steps, dtype=torch.float64) + offset) / steps
        w = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    else:
        raise InputError(f"Unknown quadrature {method!r}; use one of {', '.join(QUADRATURES)}.")
    return stretch_map(u, stretch), w * stretch_slope(u, stretch)


def stretch_map(u: Tensor, A: float) -> Tensor:
    """``alpha(u) = sinh(A u) / sinh(A)`` (the identity for ``A = 0``)."""
    return u if A <= 0 else torch.sinh(A * u) / np.sinh(A)


def stretch_slope(u: Tensor, A: float) -> Tensor:
    """``d alpha / d u``."""
    return torch.ones_like(u) if A <= 0 else A * torch.cosh(A * u) / np.sinh(A)


def path_stretch(value: Value, batch: int, spacing="auto") -> float:
    """The stretch ``A`` for a path (see the module docstring).

    ``"auto"`` probes ``f`` at ``alpha = 0, 1, 10^-1 .. 10^-15``; if ``f`` changes anomalously fast
    near the baseline (``|f(alpha) - f(0)| > 10 alpha |f(1) - f(0)|`` for some probe) the nodes are
    spaced geometrically down to the largest probe ``alpha_lo`` below which less than 3% of the
    change happens (``A = asinh(1 / alpha_lo)``); otherwise linearly (``A = 0``). ``"linear"`` forces
    0; a number is used as ``A``.
    """
    if spacing == "linear":
        return 0.0
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        if spacing < 0:
            raise InputError(f"spacing must be >= 0, got {spacing}.")
        return float(spacing)
    if spacing != "auto":
        raise InputError(f"spacing must be 'auto', 'linear' or a number >= 0, got {spacing!r}.")
    alphas = torch.tensor([0.0, 1.0] + [10.0 ** -k for k in range(1, PROBE_DECADES + 1)], dtype=torch.float64)
    seq = torch.arange(batch).repeat(len(alphas))
    f = _host(value(seq, alphas.repeat_interleave(batch))).view(len(alphas), batch)
    share = ((f[2:] - f[0]).abs() / (f[1] - f[0]).abs().clamp_min(1e-30)).max(-1).values  # worst sequence
    probes = alphas[2:]
    if bool((share <= 10 * probes).all()):
        return 0.0
    below = probes[share < PROBE_TOLERANCE]
    alpha_lo = float(below.max()) if below.numel() else float(probes.min())
    return float(np.arcsinh(1.0 / alpha_lo))


def fixed_nodes(steps: int, method: str, stretch: float, batch: int) -> tuple[Tensor, Tensor]:
    """A fixed rule's nodes and weights, the same for every sequence: ``[steps, batch]``."""
    a, w = quadrature(steps, method, stretch)
    return a[:, None].expand(-1, batch), w[:, None].expand(-1, batch)


@dataclass
class AdaptiveIntegral:
    """The adaptive rule's result for ``batch`` sequences of ``pos`` tokens.

    Attributes:
        estimate: ``[batch, pos]`` float64, ``A_s``; error: ``[batch, pos]``, its estimate ``E_s``.
        mismatch: ``[batch]``, ``|sum_s A_s - (f(1) - f(0))|`` (the completeness gap of the estimate).
        evaluations: ``[batch]`` gradient evaluations used; panels: ``[batch]`` panels at the end.
        converged: ``[batch]`` bool, ``max_s E_s <= tol max_s |A_s|``.
    """

    estimate: Tensor
    error: Tensor
    mismatch: Tensor
    evaluations: Tensor
    panels: Tensor
    converged: Tensor


class _Panels:
    """Every sequence's panels, flat: sequence index, ends in ``u``, and per-panel estimates."""

    def __init__(self, seq: Tensor, lo: Tensor, hi: Tensor, f_lo: Tensor, f_hi: Tensor):
        self.seq, self.lo, self.hi, self.f_lo, self.f_hi = seq, lo, hi, f_lo, f_hi
        self.K = self.err = None

    def evaluate(self, integrand: Integrand, stretch: float) -> None:
        """``K``, ``G`` and the error estimate ``e`` (module docstring) of every panel: 15 gradient
        evaluations per panel, all in one call of ``integrand``."""
        x, wk, wg = gauss_kronrod()
        width = (self.hi - self.lo)[:, None]
        u = self.lo[:, None] + width * x  # [P, 15]
        g = _host(integrand(self.seq.repeat_interleave(KRONROD_POINTS), stretch_map(u, stretch).reshape(-1)))
        g = g.view(*u.shape, -1) * (width * stretch_slope(u, stretch))[..., None]  # [P, 15, pos]
        self.K = torch.einsum("pnt,n->pt", g, wk)
        G = torch.einsum("pnt,n->pt", g, wg)
        self.err = (self.K - G).abs() + (self.K.sum(-1) - (self.f_hi - self.f_lo)).abs()[:, None]

    def keep(self, mask: Tensor) -> "_Panels":
        out = _Panels(self.seq[mask], self.lo[mask], self.hi[mask], self.f_lo[mask], self.f_hi[mask])
        out.K, out.err = self.K[mask], self.err[mask]
        return out

    def extend(self, other: "_Panels") -> None:
        for name in ("seq", "lo", "hi", "f_lo", "f_hi", "K", "err"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))

    def per_sequence(self, values: Tensor, batch: int) -> Tensor:
        """Sum ``values [P, ...]`` over each sequence's panels: ``[batch, ...]``."""
        return values.new_zeros(batch, *values.shape[1:]).index_add_(0, self.seq, values)


def _choose(panels: _Panels, batch: int, tol: float, budget: Tensor) -> Tensor:
    """A mask of the panels to bisect this round (module docstring): in every sequence whose
    estimate is not accepted, the panels whose largest per-token error exceeds their share of the
    target, worst first, as many as its remaining ``budget`` (gradient evaluations) pays for."""
    estimate, error = panels.per_sequence(panels.K, batch), panels.per_sequence(panels.err, batch)
    target = tol * estimate.abs().amax(-1)  # [batch]
    count = torch.bincount(panels.seq, minlength=batch).double()
    score = panels.err.amax(-1)
    wide = (panels.hi - panels.lo) > MIN_PANEL_WIDTH
    open_ = (error.amax(-1) > target)[panels.seq]
    chosen = open_ & wide & (score > (target / count)[panels.seq])
    affordable = (budget // (2 * KRONROD_POINTS)).clamp_min(0)  # [batch] panels each sequence can split
    order = torch.argsort(torch.where(chosen, score, torch.full_like(score, -1.0)), descending=True)
    rank = torch.zeros_like(panels.seq)
    for b in range(batch):  # rank of each chosen panel among its sequence's chosen panels
        mine = order[panels.seq[order] == b]
        rank[mine] = torch.arange(len(mine))
    return chosen & (rank < affordable[panels.seq])


def adaptive_integral(integrand: Integrand, value: Value, batch: int, stretch: float = 0.0, tol: float = 0.01,
                      initial_panels: int = 4, max_evaluations: int = 4096) -> AdaptiveIntegral:
    """The adaptive Gauss-Kronrod rule of the module docstring on ``int_0^1 g_s(alpha) d alpha``.

    ``integrand`` and ``value`` take flat ``(seq [m], alpha [m])`` points (CPU, ``alpha`` float64)
    and may return on any device. Every sequence starts from ``initial_panels`` equal panels in ``u``
    (``alpha = stretch_map(u, stretch)``) and gets at most ``max_evaluations`` gradient evaluations
    (at least one panel's 15); forward passes: one per panel edge.
    """
    u = torch.linspace(0, 1, initial_panels + 1, dtype=torch.float64)
    seq = torch.arange(batch).repeat_interleave(initial_panels + 1)
    f_edge = _host(value(seq, stretch_map(u, stretch).repeat(batch))).view(batch, -1)
    panels = _Panels(torch.arange(batch).repeat_interleave(initial_panels), u[:-1].repeat(batch),
                     u[1:].repeat(batch), f_edge[:, :-1].reshape(-1), f_edge[:, 1:].reshape(-1))
    panels.evaluate(integrand, stretch)
    used = torch.full((batch,), KRONROD_POINTS * initial_panels, dtype=torch.long)
    while True:
        split = _choose(panels, batch, tol, max_evaluations - used)
        if not bool(split.any()):
            break
        old = panels.keep(split)
        mid = (old.lo + old.hi) / 2
        f_mid = _host(value(old.seq, stretch_map(mid, stretch)))
        children = _Panels(old.seq.repeat(2), torch.cat([old.lo, mid]), torch.cat([mid, old.hi]),
                           torch.cat([old.f_lo, f_mid]), torch.cat([f_mid, old.f_hi]))
        children.evaluate(integrand, stretch)
        used += 2 * KRONROD_POINTS * torch.bincount(old.seq, minlength=batch)
        panels = panels.keep(~split)
        panels.extend(children)
    estimate, error = panels.per_sequence(panels.K, batch), panels.per_sequence(panels.err, batch)
    delta = f_edge[:, -1] - f_edge[:, 0]
    return AdaptiveIntegral(estimate=estimate, error=error, mismatch=(estimate.sum(-1) - delta).abs(),
                            evaluations=used, panels=torch.bincount(panels.seq, minlength=batch),
                            converged=error.amax(-1) <= tol * estimate.abs().amax(-1))
