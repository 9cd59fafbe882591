"""Checks shared by the method tests: a method leaves no hook behind and changes no weight,
even when it raises."""
from __future__ import annotations

import contextlib
import hashlib

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


def tensor_hashes(model) -> dict[str, str]:
    """sha256 of every parameter and buffer (non-persistent ones too) with its dtype, shape and
    ``requires_grad``, plus the module's training flag: equal hashes mean an unchanged model."""
    out = {"<training>": str(model.training)}
    for kind, items in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            meta = f"{t.dtype}|{tuple(t.shape)}|{t.requires_grad}".encode()
            out[f"{kind}:{name}"] = hashlib.sha256(meta + data).hexdigest()
    return out


def assert_clean(model, hashes: dict[str, str], kept_hooks: int = 0) -> None:
    """The model is as :func:`tensor_hashes` saw it: no weight, buffer or flag changed, no gradient
    on a parameter, no hook context open, and only the ``kept_hooks`` hooks the caller attached itself."""
    after = tensor_hashes(model)
    changed = sorted(k for k in hashes.keys() | after.keys() if hashes.get(k) != after.get(k))
    assert not changed, f"the model changed: {changed[:5]}"
    hooks = sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())
    assert hooks == kept_hooks, f"{hooks} hooks attached, expected {kept_hooks}"
    assert model.context_level == 0, "a hook context was left open"
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert not grads, f"gradients left on {grads[:5]}"
    assert torch.is_grad_enabled(), "grad mode was left off"


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
