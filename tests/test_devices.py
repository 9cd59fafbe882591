"""Every method runs on the model's device (``PROBE_TEST_DEVICE``, default cpu).

On the CPU each method runs under :class:`device_mixing.DeviceMixing`, which fails on any op that
would mix the model's device with the host on an accelerator. On CUDA (``scripts/gpu_check.sh``)
each method runs for real and agrees with the same method on the CPU (loosely: cuDNN and TF32
matmuls round differently; see docs).
"""
import pytest
import torch

from conftest import ARCHS, DEVICE, HYBRIDS, layouts, make_model, tokens
from device_mixing import DeviceMixing
from method_checks import METHOD_RUNS, numbers
from probe.mixers import MIXERS


def covering_archs() -> list[str]:
    """The hybrids plus a model of every mixer no hybrid has: every mixer, few models."""
    in_hybrids = {m for layout in HYBRIDS.values() for m in layout}
    return sorted(HYBRIDS) + sorted(m for m in MIXERS if m not in in_hybrids and m in layouts())


@pytest.mark.parametrize("arch", covering_archs())
@pytest.mark.parametrize("method", sorted(METHOD_RUNS))
def test_method_stays_on_the_model_device(method, arch, monkeypatch):
    if DEVICE.type == "cpu":
        monkeypatch.setenv("PROBE_NATIVE", "0")  # compiled CPU kernels are invisible to the check
        model = make_model(arch)
        with DeviceMixing([*model.parameters(), *model.buffers()]) as check:
            METHOD_RUNS[method](model)
        _assert_no_mixing(check)
        return
    expected = numbers(METHOD_RUNS[method](make_model(arch)))
    got = numbers(METHOD_RUNS[method](make_model(arch, device=DEVICE)))
    assert got.keys() == expected.keys()
    for k in expected:
        value = got[k].cpu() if got[k].dtype == expected[k].dtype else got[k].cpu().to(expected[k].dtype)
        torch.testing.assert_close(value, expected[k], rtol=2e-2, atol=2e-3, equal_nan=True, msg=k)


def _assert_no_mixing(check):
    assert not check.mixes, "ops mixing devices:\n" + "\n".join(
        f"{op} with host tensors {shapes} at\n{where}" for op, shapes, where in check.mixes[:3])


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the contract tests run these paths on the device itself")
@pytest.mark.parametrize("arch", ARCHS)
def test_model_paths_stay_on_the_model_device(arch, monkeypatch):
    """Forward, cache, every state edit (the recomputation from the edit), segments and generation
    of every architecture use no host tensor."""
    monkeypatch.setenv("PROBE_NATIVE", "0")
    model = make_model(arch)
    toks = tokens(2, 9)

    def edit(t, hook):
        t[:, 4] = t[:, 4] * 0.5

    with DeviceMixing([*model.parameters(), *model.buffers(), toks]) as check, torch.no_grad():
        model.run_with_cache(toks)
        model.run_with_hooks(toks, fwd_hooks=[(lambda name: "hook_state" in name, edit)])
        _, states = model(toks[:, :5], return_states=True)
        model(toks[:, 5:], states=states)
        model.generate(toks[:1, :4], max_new_tokens=2, return_type="tokens")
    _assert_no_mixing(check)


def test_device_mixing_check_catches_a_host_tensor():
    """The check itself: a host ``torch.zeros`` added to a device tensor is caught; the same with
    ``device=`` or a 0-dim host tensor is not."""
    x = torch.randn(3)
    with DeviceMixing([x]) as check:
        x + torch.zeros(3, device=x.device)
        x + torch.tensor(1.0)
        x[torch.tensor([0, 2])]
    assert not check.mixes
    with DeviceMixing([x]) as check:
        torch.where(torch.ones(3, dtype=torch.bool), x, x)
    assert [op for op, _, _ in check.mixes] == ["where"]
