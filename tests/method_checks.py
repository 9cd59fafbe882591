"""Checks shared by the method tests: a method leaves no hook behind and changes no weight,
even when it raises; one run of every public method (``METHOD_RUNS``) and the tensors a result reports."""
from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch

from conftest import tokens
from probe.methods import (TunedLens, activation_patching, attribution_patching, collect_activations,
                           direct_logit_attribution, gradient_x_input, integrated_gradients, logit_lens,
                           memory_map, steer, steering_vector)

TEXT = "def f(x): return x"


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


def numbers(result, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors a result reports, also inside its lists, dicts and dataclasses (one level)."""
    if isinstance(result, torch.Tensor):
        return {prefix: result}
    if isinstance(result, dict):
        items = result.items()
    elif isinstance(result, list):
        items = enumerate(result)
    elif hasattr(result, "__dict__"):
        items = vars(result).items()
    else:
        return {}
    out = {}
    for k, v in items:
        if isinstance(v, (torch.Tensor, dict, list)) or (hasattr(v, "__dict__") and prefix.count(".") < 2):
            out.update(numbers(v, f"{prefix}.{k}"))
    return out


def _pairs():
    clean = tokens(1, 10, seed=1)
    corrupted = clean.clone()
    corrupted[0, 3] = (corrupted[0, 3] + 1) % 256
    return clean, corrupted, 1, 2  # answer and contrast token ids


def _tuned_lens(model):
    torch.manual_seed(0)
    return TunedLens(model).fit(model, tokens(1, 64, seed=3)[0], steps=2, batch_size=2, seq_len=16)


def _features(model) -> dict[str, torch.Tensor]:
    data = collect_activations(model, tokens(3, 8, seed=4), seq_len=None, dtype="float32")
    return {k: torch.from_numpy(np.asarray(v)) for k, v in data.features.items()}


def _steering(model):
    vec = steering_vector(model, ["def f(x):"], ["x = [1, 2]"])
    return steer(model, TEXT, vec, coefficients=(0.0, 2.0), answer=" ", contrast="x")


#: one run of every public method on a model (shared by the grad-mode and device tests)
METHOD_RUNS = {
    "gradient_x_input": lambda m: gradient_x_input(m, TEXT, target=" "),
    "integrated_gradients": lambda m: integrated_gradients(m, TEXT, target=" ", method="gausslegendre", steps=8),
    "memory_map": lambda m: memory_map(m, TEXT),
    "logit_lens": lambda m: logit_lens(m, TEXT),
    "tuned_lens_fit": lambda m: {k: p.detach() for k, p in _tuned_lens(m).state_dict().items()},
    "direct_logit_attribution": lambda m: direct_logit_attribution(m, TEXT, target=" "),
    "activation_patching": lambda m: activation_patching(m, *_pairs()),
    "attribution_patching": lambda m: attribution_patching(m, *_pairs()),
    "steering": _steering,
    "collect_activations": lambda m: _features(m),
}
