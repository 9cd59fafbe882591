r"""Panels for a composite Gauss-Legendre rule, chosen from forward values alone.

Integrated gradients integrates ``g(u) = d f / d u`` along the path, and every gradient
evaluation is costly, while the metric ``f`` itself is cheap (forward passes only). Given a scan
of ``f`` at points ``u_0 < ... < u_M`` (refined where ``f`` bends, see
:func:`probe.methods.path_quadrature.refine_scan`), this module decides where the gradient
nodes go:

1. **A surrogate of ``f``**: the monotone piecewise-cubic Hermite interpolant ``H`` of the scan
   (Fritsch-Carlson slopes: on each interval ``H`` stays between its end values, so a steep
   step stays a step and does not ring). ``H'`` stands in for the unknown ``g``.
2. **The error of a panel** ``[a, b]`` with a ``p``-point Gauss-Legendre rule is estimated as
   ``|(b - a) sum_j w_j H'(a + (b - a) x_j) - (H(b) - H(a))|``: the rule applied to the surrogate
   against the surrogate's exact integral.
3. **Greedy hp refinement** (:func:`hp_panels`): start from one panel on ``[0, 1]``; repeatedly
   take the panel with the largest estimated error and replace it by two panels, choosing the
   cut (among the scan points inside it and a uniform grid) and the two orders (from
   ``ORDERS``) that reduce the estimated error most per added node, while the nodes fit the
   budget. Narrow transitions end up in small low-order panels, smooth stretches in wide
   high-order ones.

Why not fixed panels: xLSTM's mLSTM normalises by ``max(|n_t^T q_t|, exp(-m_t))``; where
``n_t^T q_t`` crosses zero along the path, ``h_t`` flips sign over a window of width about
``exp(-m_t)``, so the metric has near-steps 1e-6 to 1e-4 wide, several per path. Equal-size
panels of 8 points left 25-80 % completeness errors at 64 steps there; panels fitted to the steps
bring it near 1 % (see the issue notes for the measurements).
"""
from __future__ import annotations

import numpy as np

#: Gauss-Legendre orders a panel may have (points per panel)
ORDERS = (2, 4, 8)
#: cut positions tried per split, besides the scan points inside the panel (a uniform grid)
GRID_CUTS = 31
#: at most this many cut candidates per split (spread evenly over the sorted candidates)
MAX_CUTS = 256


def gauss_legendre(p: int) -> tuple[np.ndarray, np.ndarray]:
    """``p``-point Gauss-Legendre nodes and weights on ``[0, 1]`` (weights sum to 1)."""
    x, w = np.polynomial.legendre.leggauss(p)
    return (x + 1) / 2, w / 2


def monotone_slopes(u: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson slopes at the scan points ``u [M + 1]`` (increasing) for values ``f [M + 1]``:
    zero at a local extremum of the data, else the weighted harmonic mean of the two secants."""
    h = np.diff(u)
    secant = np.diff(f) / h
    d = np.empty_like(f)
    d[0], d[-1] = secant[0], secant[-1]
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same_sign = secant[:-1] * secant[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (w1 + w2) / (w1 / secant[:-1] + w2 / secant[1:])
    d[1:-1] = np.where(same_sign, mean, 0.0)
    return d


class ScanSurrogate:
    """The monotone cubic Hermite interpolant ``H`` of a scan ``(u [M + 1], f [M + 1])``.

    On ``[u_k, u_{k+1}]``, with ``h = u_{k+1} - u_k``, ``t = (u - u_k) / h`` and slopes ``d``::

        H = (2t^3 - 3t^2 + 1) f_k + (t^3 - 2t^2 + t) h d_k + (3t^2 - 2t^3) f_{k+1} + (t^3 - t^2) h d_{k+1}
    """

    def __init__(self, u: np.ndarray, f: np.ndarray):
        u, f = np.asarray(u, dtype=np.float64), np.asarray(f, dtype=np.float64)
        keep = np.concatenate([[True], np.diff(u) > 0])  # drop repeated points
        self.u, self.f = u[keep], f[keep]
        if len(self.u) < 2:
            raise ValueError("a scan surrogate needs at least two distinct points")
        self.d = monotone_slopes(self.u, self.f)

    def _locate(self, x: np.ndarray):
        k = np.clip(np.searchsorted(self.u, x, side="right") - 1, 0, len(self.u) - 2)
        h = self.u[k + 1] - self.u[k]
        return k, h, (x - self.u[k]) / h

    def value(self, x: np.ndarray) -> np.ndarray:
        """``H(x)`` (any shape)."""
        k, h, t = self._locate(x)
        t2, t3 = t * t, t * t * t
        return ((2 * t3 - 3 * t2 + 1) * self.f[k] + (t3 - 2 * t2 + t) * h * self.d[k]
                + (3 * t2 - 2 * t3) * self.f[k + 1] + (t3 - t2) * h * self.d[k + 1])

    def slope(self, x: np.ndarray) -> np.ndarray:
        """``H'(x)`` (any shape)."""
        k, h, t = self._locate(x)
        t2 = t * t
        return ((6 * t2 - 6 * t) * (self.f[k] - self.f[k + 1]) / h
                + (3 * t2 - 4 * t + 1) * self.d[k] + (3 * t2 - 2 * t) * self.d[k + 1])

    def panel_error(self, lo: np.ndarray, hi: np.ndarray, p: int) -> np.ndarray:
        """Estimated error of the ``p``-point rule on panels ``[lo, hi]`` (arrays of one shape)."""
        x, w = gauss_legendre(p)
        width = hi - lo
        rule = (width[..., None] * w * self.slope(lo[..., None] + width[..., None] * x)).sum(-1)
        return np.abs(rule - (self.value(hi) - self.value(lo)))


def _cuts(s: ScanSurrogate, lo: float, hi: float) -> np.ndarray:
    inside = s.u[(s.u > lo) & (s.u < hi)]
    cuts = np.unique(np.concatenate([inside, lo + (hi - lo) * np.arange(1, GRID_CUTS + 1) / (GRID_CUTS + 1)]))
    if len(cuts) > MAX_CUTS:
        cuts = cuts[np.linspace(0, len(cuts) - 1, MAX_CUTS).round().astype(int)]
    return cuts


def hp_panels(s: ScanSurrogate, budget: int, orders=ORDERS) -> list[tuple[float, float, int]]:
    """Panels ``(lo, hi, p)`` covering ``[0, 1]`` with at most ``budget`` nodes in all (module
    docstring, point 3). Returns them in order; fewer nodes are used when no split helps."""
    orders = tuple(sorted(q for q in orders if q <= budget)) or (budget,)
    p0 = orders[-1]
    panels = [(0.0, 1.0, p0)]
    errors = [float(s.panel_error(np.array(0.0), np.array(1.0), p0))]
    done = [False]
    used = p0
    while not all(done):
        i = max((j for j in range(len(panels)) if not done[j]), key=lambda j: errors[j])
        lo, hi, p = panels[i]
        cuts = _cuts(s, lo, hi)
        left = {q: s.panel_error(np.full_like(cuts, lo), cuts, q) for q in orders}
        right = {q: s.panel_error(cuts, np.full_like(cuts, hi), q) for q in orders}
        best = None  # (gain per added node, cut index, left order, right order, added nodes)
        for ql in orders:
            for qr in orders:
                added = ql + qr - p
                if used + added > budget:
                    continue
                total = left[ql] + right[qr]
                j = int(np.argmin(total))
                gain = errors[i] - float(total[j])
                if gain > 0 and (best is None or gain / max(added, 1) > best[0]):
                    best = (gain / max(added, 1), j, ql, qr, added)
        if best is None:
            done[i] = True
            continue
        _, j, ql, qr, added = best
        cut = float(cuts[j])
        panels[i:i + 1] = [(lo, cut, ql), (cut, hi, qr)]
        errors[i:i + 1] = [float(left[ql][j]), float(right[qr][j])]
        done[i:i + 1] = [False, False]
        used += added
    return panels


def panel_nodes(panels: list[tuple[float, float, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The composite rule's nodes and weights on ``[0, 1]`` (weights sum to 1)."""
    nodes, weights = [], []
    for lo, hi, p in panels:
        x, w = gauss_legendre(p)
        nodes.append(lo + (hi - lo) * x)
        weights.append((hi - lo) * w)
    return np.concatenate(nodes), np.concatenate(weights)
