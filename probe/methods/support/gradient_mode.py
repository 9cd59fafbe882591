r"""Gradient methods work inside ``torch.no_grad()`` and ``torch.inference_mode()``.

Analysis code is usually written inside one of them. A method that differentiates (gradient x
input, integrated gradients, attribution patching, gradient influence, fitting a tuned lens)
turns autograd back on for its own work with :func:`needs_gradients`:

* ``torch.inference_mode(False)`` and ``torch.enable_grad()`` around the call, so the tensors it
  makes are ordinary ones that autograd records;
* tensor arguments made under inference mode (tokens, baselines) are copied into ordinary
  tensors first, and so are the parameters and buffers of module arguments (a model loaded, or a
  tuned lens built, under inference mode): autograd cannot save an inference tensor for
  backward. The copies hold the same values; modules made outside inference mode are untouched.

The caller's grad mode is restored on return, and what the method returns is detached.
"""
from __future__ import annotations

import functools

import torch
from torch import nn


def _ordinary(value):
    """``value``, with an inference tensor copied into an ordinary one; a module's inference
    parameters and buffers are replaced by ordinary copies in place. Other values unchanged."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, nn.Module):
        for module in value.modules():
            for name, p in module._parameters.items():
                if p is not None and p.is_inference():
                    module._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
            for name, b in module._buffers.items():
                if b is not None and b.is_inference():
                    module._buffers[name] = b.clone()
    return value


def needs_gradients(fn):
    """Decorator: run ``fn`` with autograd on, whatever grad / inference mode the caller is in."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            args = tuple(_ordinary(a) for a in args)
            kwargs = {k: _ordinary(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapper
