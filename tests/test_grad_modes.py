"""Analysis code is usually written inside ``torch.no_grad()`` or ``torch.inference_mode()``.

Every method family runs in both contexts and gives what it gives with autograd on: the gradient
methods turn gradients on for themselves, and hooked runs of recurrent mixers detect in-place
edits without the version counter inference tensors lack.
"""
import contextlib

import pytest
import torch

from conftest import make_model, tokens
from probe.methods import (TunedLens, activation_patching, attribution_patching, direct_logit_attribution,
                           gradient_x_input, integrated_gradients, logit_lens, memory_map, steer,
                           steering_vector)

CONTEXTS = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
TEXT = "def f(x): return x"


def _numbers(result, prefix: str = "") -> dict[str, torch.Tensor]:
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
            out.update(_numbers(v, f"{prefix}.{k}"))
    return out


def _run(context, fn):
    """``fn()`` with autograd on, then inside ``context``: the reported tensors agree."""
    expected = _numbers(fn())
    with CONTEXTS[context]():
        got = _numbers(fn())
    assert torch.is_grad_enabled()
    assert expected and got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k].clone(), expected[k], msg=k, atol=1e-6, rtol=1e-5, equal_nan=True)


def _pairs():
    clean = tokens(1, 10, seed=1)
    corrupted = clean.clone()
    corrupted[0, 3] = (corrupted[0, 3] + 1) % 256
    return clean, corrupted, 1, 2  # answer and contrast token ids


def _tuned_lens(model):
    torch.manual_seed(0)
    return TunedLens(model).fit(model, tokens(1, 64, seed=3)[0], steps=2, batch_size=2, seq_len=16)


def _steering(model):
    vec = steering_vector(model, ["def f(x):"], ["x = [1, 2]"])
    return steer(model, TEXT, vec, coefficients=(0.0, 2.0), answer=" ", contrast="x")


METHODS = {
    "gradient_x_input": lambda m: gradient_x_input(m, TEXT, target=" "),
    "integrated_gradients": lambda m: integrated_gradients(m, TEXT, target=" ", method="gausslegendre", steps=8),
    "memory_map": lambda m: memory_map(m, TEXT, with_state_sizes=False),
    "logit_lens": lambda m: logit_lens(m, TEXT),
    "tuned_lens_fit": lambda m: {k: p.detach() for k, p in _tuned_lens(m).state_dict().items()},
    "direct_logit_attribution": lambda m: direct_logit_attribution(m, TEXT, target=" "),
    "activation_patching": lambda m: activation_patching(m, *_pairs()),
    "attribution_patching": lambda m: attribution_patching(m, *_pairs()),
    "steering": _steering,
}


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", ["hybrid_qrnn_attn_ff", "lstm"])
def test_method_runs_in_context(arch, method, context):
    model = make_model(arch)
    _run(context, lambda: METHODS[method](model))


def test_gradient_method_on_a_model_made_in_inference_mode():
    """A model built under inference mode holds inference parameters; a gradient method still runs
    (on ordinary copies of them, same values) and agrees with the ordinary model."""
    expected = gradient_x_input(make_model("qrnn"), TEXT, target=" ").attributions
    with torch.inference_mode():
        model = make_model("qrnn")
        got = gradient_x_input(model, TEXT, target=" ").attributions
    torch.testing.assert_close(got.clone(), expected)
