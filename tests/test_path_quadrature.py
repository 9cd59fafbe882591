"""Panel plans judged by a forward scan (probe.methods.panel_plan) and their use by the adaptive
integrated-gradients rule (probe.methods.path_quadrature.adaptive_nodes)."""
import numpy as np
import pytest
import torch

from probe.methods import panel_plan
from probe.methods import path_quadrature as pq


def composite_error(df, edges, points):
    """The true error of a composite Gauss-Legendre rule on int f' (df: the exact derivative)."""
    x, w = np.polynomial.legendre.leggauss(points)
    x, w = (x + 1) / 2, w / 2
    a, b = edges[:-1], edges[1:]
    return float(((b - a) * (df(a[:, None] + (b - a)[:, None] * x) * w).sum(1)).sum())


def smooth(u):
    return np.sin(7 * u) + u ** 2


def smooth_slope(u):
    return 7 * np.cos(7 * u) + 2 * u


def rough(u):
    """A ramp with a narrow dip (width 2e-3) and a sharp step (width 1e-3), as the zoo xLSTM's metric
    along its path has."""
    z = np.clip(-(u - 0.71) / 1e-3, -700, 700)
    return 0.5 * u - 0.8 * np.exp(-((u - 0.3) / 2e-3) ** 2) + 1 / (1 + np.exp(z))


def rough_slope(u):
    s = 1 / (1 + np.exp(np.clip(-(u - 0.71) / 1e-3, -700, 700)))
    return 0.5 + 1.6 * (u - 0.3) / 2e-3 ** 2 * np.exp(-((u - 0.3) / 2e-3) ** 2) + s * (1 - s) / 1e-3


@pytest.mark.parametrize("edges, points", [(np.array([0, 0.2, 0.7, 1.0]), 4), (np.array([0.0, 1.0]), 2)])
def test_predicted_error_is_the_rules_error_on_a_resolved_scan(edges, points):
    u = np.linspace(0, 1, 2001)
    total = smooth(1.0) - smooth(0.0)
    actual = abs(composite_error(smooth_slope, edges, points) - total) / abs(total)
    predicted = panel_plan.predicted_error(u, smooth(u), edges, points)
    assert abs(predicted - actual) < 1e-4 + 1e-3 * actual, (predicted, actual)


def test_optimal_panels_isolate_narrow_features():
    """On a refined scan of a ramp with a dip and a step, the chosen 16 panels of 4 points integrate
    f' 100x better than 16 even panels; edges run from 0 to 1, no panel wider than asked."""
    u = np.unique(np.concatenate([np.linspace(0, 1, 257), np.linspace(0.29, 0.31, 201), np.linspace(0.70, 0.72, 201)]))
    edges = panel_plan.optimal_panels(u, rough(u), 16, 4, 0.25)
    assert edges.shape == (17,) and edges[0] == 0 and edges[-1] == 1 and bool((np.diff(edges) > 0).all())
    assert float(np.diff(edges).max()) <= 0.25 + 1e-12
    total = rough(1.0) - rough(0.0)
    chosen = abs(composite_error(rough_slope, edges, 4) - total) / total
    even = abs(composite_error(rough_slope, np.linspace(0, 1, 17), 4) - total) / total
    assert chosen < 1e-3 and even > 100 * chosen, (chosen, even)
    assert panel_plan.predicted_error(u, rough(u), edges, 4) < 1e-3


def test_optimal_panels_reject_a_plan_that_cannot_cover_the_path():
    u = np.linspace(0, 1, 65)
    with pytest.raises(ValueError, match="cannot cover"):
        panel_plan.optimal_panels(u, smooth(u), 3, 4, 0.25)


def _adaptive_error(f, df, monkeypatch, tolerance):
    monkeypatch.setattr(pq, "PLAN_TOLERANCE", tolerance)
    alphas, weights = pq.adaptive_nodes(lambda a: torch.as_tensor(f(a.numpy())), 64, 0.0, batch=2)
    assert alphas.shape == weights.shape == (64, 2)
    torch.testing.assert_close(weights.sum(0), torch.ones(2, dtype=torch.float64))
    total = f(1.0) - f(0.0)
    return [abs(float((weights[:, b] * torch.as_tensor(df(alphas[:, b].numpy()))).sum()) - total) / abs(total)
            for b in range(2)], alphas


def test_adaptive_nodes_replan_a_rough_path(monkeypatch):
    """The panel rule alone misses the rough path's integral by > 5 %; re-planned from the scan, < 0.1 %."""
    alone, _ = _adaptive_error(rough, rough_slope, monkeypatch, float("inf"))
    replanned, _ = _adaptive_error(rough, rough_slope, monkeypatch, 1e-3)
    assert min(alone) > 0.05 and max(replanned) < 1e-3, (alone, replanned)


def test_adaptive_nodes_keep_the_panel_rule_on_a_smooth_path(monkeypatch):
    """Where the panel rule is predicted to be accurate nothing is re-planned (the nodes are the same)."""
    errors, alphas = _adaptive_error(smooth, smooth_slope, monkeypatch, 1e-3)
    _, alone = _adaptive_error(smooth, smooth_slope, monkeypatch, float("inf"))
    torch.testing.assert_close(alphas, alone)
    assert max(errors) < 1e-6
