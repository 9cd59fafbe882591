"""Analysis code is usually written inside ``torch.no_grad()`` or ``torch.inference_mode()``.

Every method family runs in both contexts and gives what it gives with autograd on: the gradient
methods turn gradients on for themselves, and hooked runs of recurrent mixers detect in-place
edits without the version counter inference tensors lack.
"""
import pytest
import torch

from conftest import make_model
from method_checks import METHOD_RUNS, TEXT, numbers
from probe.methods import gradient_x_input

CONTEXTS = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def _run(context, fn):
    """``fn()`` with autograd on, then inside ``context``: the reported tensors agree."""
    expected = numbers(fn())
    with CONTEXTS[context]():
        got = numbers(fn())
    assert torch.is_grad_enabled()
    assert expected and got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k].clone(), expected[k], msg=k, atol=1e-6, rtol=1e-5, equal_nan=True)


@pytest.mark.numerical  # grad mode can pick another scan form (Mamba): equal to 1e-6
@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("method", sorted(METHOD_RUNS))
@pytest.mark.parametrize("arch", ["hybrid_qrnn_attn_ff", "lstm"])
def test_method_runs_in_context(arch, method, context):
    model = make_model(arch)
    _run(context, lambda: METHOD_RUNS[method](model))


def test_gradient_method_on_a_model_made_in_inference_mode():
    """A model built under inference mode holds inference parameters; a gradient method still runs
    (on ordinary copies of them, same values) and agrees with the ordinary model."""
    expected = gradient_x_input(make_model("qrnn"), TEXT, target=" ").attributions
    with torch.inference_mode():
        model = make_model("qrnn")
        got = gradient_x_input(model, TEXT, target=" ").attributions
    torch.testing.assert_close(got.clone(), expected)
