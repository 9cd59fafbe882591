"""Checks shared by the method tests: a method leaves no hook behind and changes no weight,
even when it raises."""
from __future__ import annotations

import contextlib

import torch


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before: dict[str, torch.Tensor]) -> None:
    """No hook left on any hook point, no weight changed, no gradient left on a parameter."""
    live = [name for name, hp in model.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]
    assert not live, f"hooks left behind on {live[:5]}"
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"weights changed: {changed[:5]}"
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert not grads, f"gradients left on {grads[:5]}"


@contextlib.contextmanager
def failing_hook(model, name: str):
    """A user hook (added outside any method) that raises when ``name`` fires; removed on exit."""
    def boom(x, hook):
        raise RuntimeError("boom from a user hook")

    hp = model.hook_dict[name]
    handle = hp.add_hook(boom)
    try:
        yield
    finally:
        handle.hook.remove()
        hp.fwd_hooks = [h for h in hp.fwd_hooks if h is not handle]
