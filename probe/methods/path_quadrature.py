r"""Where integrated gradients samples its path: quadrature rules for ``int_0^1 f'(alpha) d alpha``.

Integrated gradients needs ``int_0^1 grad f(x' + alpha (x - x')) d alpha``; its completeness error
is the error of the same rule applied to ``f'(alpha)``, whose integral ``f(1) - f(0)`` is known.
Language models make this integrand hard in two ways, both visible from forward passes alone:

1. **Near a zero baseline** a pre-norm model is degenerate: the first norm reads a zero vector at
   ``alpha = 0`` and jumps to its full output while ``alpha`` is still tiny (below ``sqrt(eps)``
   over the stream's gain), so ``f`` has steps near 0 that are smooth in ``log alpha``.
   :func:`path_stretch` detects this by probing ``f`` at ``alpha = 10^-1 .. 10^-15`` and returns
   a stretch ``A``: nodes are placed in ``u`` with ``alpha = sinh(A u) / sinh(A)``, geometric
   towards 0 (uniform in ``asinh(alpha sinh A)``).
2. **Along the path** trained models have narrow transitions (a norm whose input passes near
   zero, a gate that flips). :func:`adaptive_nodes` scans ``f`` (forward only, ``scan * steps``
   points, per sequence), bisects it where it is least linear for a few rounds (:func:`refine_scan`:
   a transition far narrower than the scan spacing is otherwise seen only as one big step), and
   cuts ``[0, 1]`` into panels that share the variation of ``f'`` (the change of the scan's
   slope) equally (with 30% of the weight spread uniformly), then puts ``panel``-point Gauss-Legendre
   rules on every panel: dense nodes where ``f'`` changes, sparse where ``f`` is near linear.
3. **Rough paths.** Some metrics are rough below any scan's spacing: the zoo's xLSTM, whose mLSTM
   readout ``C q / max(|n.q|, 1)`` flips sign wherever ``n.q`` crosses zero, has dips and steps
   1e-4 wide and wiggles between them, and the panels of point 2 then miss by up to 80 %. Because
   ``int_a^b f' = f(b) - f(a)`` is known from forward passes, a plan can be judged before any
   gradient: :func:`probe.methods.panel_plan.predicted_error` applies it to the derivative of an
   interpolant of the scan. Where the plan of point 2 is predicted to miss by more than
   ``PLAN_TOLERANCE`` (by both a PCHIP and a cubic-spline interpolant),
   :func:`probe.methods.panel_plan.optimal_panels` chooses the 4-point panels that minimise the
   predicted error (edges, which cost no gradient, go where ``f'`` is rough), ``f`` is evaluated at
   their nodes and the plan re-chosen (up to ``VERIFY_ROUNDS`` times), and it replaces the panel
   plan if it is predicted to do better. On smooth paths nothing changes, so per-token accuracy
   is kept (completeness checks only the sum; a plan fitted to the sum can get single tokens wrong).

All functions return ``(alphas, weights)``, both ``[n, batch]`` (a sequence may get its own
nodes), weights summing to 1 per sequence, for ``int_0^1 g(alpha) d alpha ~ sum_i w_i g(alpha_i)``.
``f_at(alphas [n, batch]) -> [n, batch]`` evaluates the metric along the path (forward only).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from probe.errors import InputError
from probe.methods import panel_plan

FIXED = ("gausslegendre", "trapezoid", "midpoint", "left", "right")
QUADRATURES = ("adaptive", *FIXED)

#: probe points alpha = 10^-k used by the "auto" spacing to find how close to the baseline f changes
PROBE_DECADES = 15
#: the share of f(x) - f(x') allowed to happen below the geometric part of the "auto" spacing
#: (chosen on random, default-initialised and briefly trained models of every architecture: 3e-2 gave
#: the smallest completeness errors at 64 steps; 1e-4 stretched too far and wasted nodes)
PROBE_TOLERANCE = 3e-2
#: adaptive rule: Gauss-Legendre points per panel, forward scan points per step, uniform share of the mass
PANEL_POINTS = 8
SCAN_PER_STEP = 4
UNIFORM_SHARE = 0.3
#: bisection rounds where the scan is least linear (refine_scan), each halving steps // 4 intervals
REFINE_ROUNDS = 12
#: a panel plan predicted (from the scan) to miss completeness by more than this is re-planned
PLAN_TOLERANCE = 1e-3
#: the re-planned rule: 4-point panels (twice as many edges, which cost no gradient) at most 1/4 long,
#: chosen by panel_plan.optimal_panels, checked against f at their own nodes up to 4 times
ROUGH_PANEL_POINTS = 4
ROUGH_PANEL_WIDTH = 0.25
VERIFY_ROUNDS = 4

FAt = Callable[[Tensor], Tensor]


def check_steps(steps) -> int:
    """``steps`` if it is a positive integer, else an ``InputError``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}.")
    return steps


def quadrature(steps: int, method: str = "gausslegendre", stretch: float = 0.0) -> tuple[Tensor, Tensor]:
    """Nodes ``alpha`` in [0, 1] and weights (summing to 1) of a fixed rule, ``[steps]`` each (float64).

    ``method`` is the rule in the variable ``u`` in [0, 1]; with ``stretch = A > 0`` the nodes are
    mapped by ``alpha = sinh(A u) / sinh(A)`` (weights times ``d alpha / d u``). The integral is
    the same; only where it is sampled changes.
    """
    check_steps(steps)
    if method == "gausslegendre":
        u, w = map(torch.tensor, panel_plan.gauss_legendre(steps))
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


def path_stretch(f_at: FAt, batch: int, spacing="auto") -> float:
    """The stretch ``A`` for a path (see the module docstring, point 1).

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
    f = f_at(alphas[:, None].expand(-1, batch)).double()
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


def _slope_changes(u: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
    """``(du [M, batch], change [M - 1, batch])``: the scan's interval widths and the change of its
    slope ``|df/du|`` at each interior point (a kink, or a transition narrower than the spacing,
    shows up as a large change of slope)."""
    du = u[1:] - u[:-1]
    slope = (f[1:] - f[:-1]) / du.clamp_min(1e-300)
    return du, (slope[1:] - slope[:-1]).abs()


def _to_intervals(at_points: Tensor) -> Tensor:
    """A quantity at the ``M - 1`` interior points, added to both intervals beside each: ``[M, batch]``."""
    out = at_points.new_zeros(at_points.shape[0] + 1, *at_points.shape[1:])
    out[1:] += at_points
    out[:-1] += at_points
    return out


def refine_scan(f_at: FAt, u: Tensor, f: Tensor, rounds: int, per_round: int) -> tuple[Tensor, Tensor]:
    """Bisect, per sequence, the ``per_round`` scan intervals where ``f`` is least linear, ``rounds`` times.

    ``u: [M + 1]`` (shared) or ``[M + 1, batch]`` and ``f: [M + 1, batch]``, increasing in ``u``;
    ``f_at`` takes the scan coordinate (the caller composes the stretch). An interval's score is
    how far ``f`` departs from a straight line there: the change of slope at each of its ends
    times the shorter width beside that end, summed over the two ends. A kink, or a transition
    far narrower than the scan spacing (a gate that flips, a norm whose input passes near zero),
    scores high; a steady ramp, however steep, scores zero. Each round halves the highest-scoring
    intervals, so after ``k`` rounds such a feature is located to ``2^-k`` of the spacing. Returns the refined ``(u, f)``,
    ``[M + 1 + rounds * per_round, batch]`` each.
    """
    batch = f.shape[1]
    u = u[:, None].expand(-1, batch) if u.dim() == 1 else u
    for _ in range(rounds):
        du, change = _slope_changes(u, f)
        score = _to_intervals(change * torch.minimum(du[1:], du[:-1]))
        score = torch.where(du > 1e-12, score, torch.zeros_like(score))  # stop at float resolution
        idx = score.topk(min(per_round, score.shape[0]), dim=0).indices  # [k, batch]: intervals to halve
        mid = (u.gather(0, idx) + u.gather(0, idx + 1)) / 2
        f_mid = f_at(mid).to(f.dtype)
        u, order = torch.cat([u, mid]).sort(dim=0)
        f = torch.cat([f, f_mid]).gather(0, order)
    return u, f


def adaptive_nodes(f_at: FAt, steps: int, stretch: float, batch: int) -> tuple[Tensor, Tensor]:
    """Composite Gauss-Legendre on panels that share the variation of ``f'`` (module docstring, point 2).

    ``steps // p`` panels of ``p = min(8, steps)`` points each (so ``p * (steps // p)`` nodes).
    ``f`` is read from a uniform forward scan of ``SCAN_PER_STEP * steps`` intervals, refined by
    :func:`refine_scan` (``REFINE_ROUNDS`` rounds halving ``steps // 4`` intervals). The panels
    share the total change of the scan's slope (an estimate of the variation of ``f'``; 70 %) and
    the length of ``[0, 1]`` (30 %): panel edges crowd where ``f'`` changes (kinks, narrow
    transitions), and each panel holds a smooth piece that Gauss-Legendre integrates well; a
    steady ramp, which any rule integrates exactly, gets few. (Sharing the variation of ``f``
    itself spent the panels on steep ramps: on the zoo's xLSTM, whose metric along the path is a
    sawtooth of ramps and sudden drops, the 64-step completeness error was 0.26 that way.)
    Costs ``(SCAN_PER_STEP + REFINE_ROUNDS / 4) * steps + 1`` forward evaluations of ``f`` per
    sequence, no gradients; a sequence whose plan is predicted to miss (module docstring, point 3) is
    re-planned with up to ``VERIFY_ROUNDS * steps`` more.
    """
    check_steps(steps)
    p = min(PANEL_POINTS, steps)
    n_panels = steps // p
    M = SCAN_PER_STEP * steps
    u0 = torch.linspace(0, 1, M + 1, dtype=torch.float64)
    f = f_at(stretch_map(u0, stretch)[:, None].expand(-1, batch)).double()  # [M + 1, batch]
    u, f = refine_scan(lambda uu: f_at(stretch_map(uu, stretch)).double(), u0, f, REFINE_ROUNDS,
                       max(1, steps // 4))
    width = u[1:] - u[:-1]
    bend = _to_intervals(_slope_changes(u, f)[1] / 2)  # half of each point's change to either side
    mass = (1 - UNIFORM_SHARE) * bend / bend.sum(0).clamp_min(1e-300) + UNIFORM_SHARE * width  # [intervals, batch]
    cum = torch.cat([mass.new_zeros(1, batch), mass.cumsum(0)])
    cum = cum / cum[-1]
    levels = np.linspace(0.0, 1.0, n_panels + 1)
    edges = torch.stack([torch.from_numpy(np.interp(levels, cum[:, b].numpy(), u[:, b].numpy()))
                         for b in range(batch)], 1)
    plans = [(edges[:, b].numpy(), p) for b in range(batch)]
    rough = [b for b in range(batch)  # predicted to miss by both interpolants (the spline is exact-er where smooth)
             if min(panel_plan.predicted_error(u[:, b].numpy(), f[:, b].numpy(), plans[b][0], p, kind)
                    for kind in ("pchip", "spline")) > PLAN_TOLERANCE]
    n_nodes = p * n_panels
    if rough and n_nodes % ROUGH_PANEL_POINTS == 0 and n_nodes >= 2 * ROUGH_PANEL_POINTS:
        scan = lambda uu: f_at(stretch_map(uu, stretch)).double()
        for b, plan in _rough_path_plans(scan, u, f, plans, rough, n_nodes // ROUGH_PANEL_POINTS).items():
            plans[b] = plan
    un, wn = zip(*(_panel_nodes(torch.from_numpy(e), points) for e, points in plans))
    un, wn = torch.stack(un, 1), torch.stack(wn, 1)  # [nodes, batch]
    return stretch_map(un, stretch), wn * stretch_slope(un, stretch)


def _panel_nodes(edges: Tensor, points: int) -> tuple[Tensor, Tensor]:
    """Composite ``points``-point Gauss-Legendre nodes and weights on the panels between ``edges``."""
    x, w = (torch.tensor(v, dtype=edges.dtype) for v in panel_plan.gauss_legendre(points))
    lo, width = edges[:-1], edges[1:] - edges[:-1]
    return (lo[:, None] + width[:, None] * x).reshape(-1), (width[:, None] * w).reshape(-1)


def _rough_path_plans(scan: FAt, u: Tensor, f: Tensor, plans: list, rough: list[int], n_panels: int) -> dict:
    """Better plans for the sequences whose panel plan is predicted to miss (module docstring, point 3).

    For each sequence in ``rough``: :func:`panel_plan.optimal_panels` on its scan, then up to
    ``VERIFY_ROUNDS`` times: ``f`` at the plan's nodes is added to the scan (the plan is judged where
    it will sample) and the plan re-chosen, the better of the two kept. The result replaces the panel
    plan only where its predicted error, on the final scan, is lower. Returns ``{sequence: (edges,
    points)}``; ``scan(u [n, batch])`` evaluates ``f`` forward only.
    """
    P, width = ROUGH_PANEL_POINTS, max(ROUGH_PANEL_WIDTH, 1.0 / n_panels)
    scans = {b: (u[:, b].numpy(), f[:, b].numpy()) for b in rough}
    best = {b: panel_plan.optimal_panels(*scans[b], n_panels, P, width) for b in rough}
    todo = list(rough)
    for _ in range(VERIFY_ROUNDS):
        if not todo:
            break
        nodes = {b: _panel_nodes(torch.from_numpy(best[b]), P)[0] for b in todo}
        probe_at = torch.stack([nodes.get(b, nodes[todo[0]]) for b in range(u.shape[1])], 1)
        values = scan(probe_at)
        for b in todo:
            su, sf = np.concatenate([scans[b][0], nodes[b].numpy()]), np.concatenate([scans[b][1], values[:, b].numpy()])
            order = np.argsort(su, kind="stable")
            scans[b] = (su[order], sf[order])
            new = panel_plan.optimal_panels(*scans[b], n_panels, P, width)
            if panel_plan.predicted_error(*scans[b], new, P) < panel_plan.predicted_error(*scans[b], best[b], P):
                best[b] = new
        todo = [b for b in todo if panel_plan.predicted_error(*scans[b], best[b], P) > PLAN_TOLERANCE]
    out = {}
    for b in rough:
        edges, points = plans[b]
        if panel_plan.predicted_error(*scans[b], best[b], P) < panel_plan.predicted_error(*scans[b], edges, points):
            out[b] = (best[b], P)
    return out
