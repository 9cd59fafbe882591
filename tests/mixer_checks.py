"""Checks shared by the mixer tests: a run in two segments equals one pass, and the scan forms of a
mixer give the same gradients."""
from __future__ import annotations

import torch


def assert_segments_match(model, toks: torch.Tensor, cut: int, atol: float = 1e-4, rtol: float = 1e-4):
    """``toks[:, :cut]`` then ``toks[:, cut:]`` from the carried state gives the logits of one pass
    over ``toks``; returns those logits ``[batch, pos, vocab]``."""
    with torch.no_grad():
        whole = model(toks)
        first, state = model(toks[:, :cut], return_states=True)
        rest = model(toks[:, cut:], states=state)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=atol, rtol=rtol)
    return whole


def assert_gradients_match(model, toks: torch.Tensor, methods, rtol: float = 1e-3, atol: float = 1e-5) -> None:
    """With every block's ``mixer.method`` set to each of ``methods`` in turn, the loss's gradient
    with respect to every parameter is finite and the same."""
    grads = []
    for method in methods:
        for block in model.blocks:
            block.mixer.method = method
        model.zero_grad()
        model(toks, return_type="loss").backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.isfinite(grads[0][name]).all(), name
        for other in grads[1:]:
            torch.testing.assert_close(grads[0][name], other[name], rtol=rtol, atol=atol)
