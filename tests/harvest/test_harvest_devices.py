"""A model spread over devices with accelerate (probe.harvest.dispatch), checked on CPU: two blocks
offloaded to disk (their weights on the 'meta' device, brought in for their forward), and an
automatic map under a memory budget. Logits, caches, state edits and carried states equal the
undispatched model's; a harvest runs on the dispatched model."""
import copy

import numpy as np
import pytest
import torch

import probe
from probe.errors import ConfigError
from probe.harvest import harvest
from probe.harvest.devices import dispatch

pytest.importorskip("accelerate")


def pair(tmp_path):
    torch.manual_seed(0)
    model = probe.HookedLM(probe.ModelConfig(d_model=32, layout=["qrnn", "attn", "lstm"], n_heads=2)).eval()
    spread = dispatch(copy.deepcopy(model), {"W_E": "cpu", "W_U": "cpu", "b_U": "cpu", "ln_final": "cpu",
                                             "blocks.0": "cpu", "blocks.1": "disk", "blocks.2": "disk"},
                      offload_dir=str(tmp_path / "offload"))
    return model, spread


def test_offloaded_blocks_run_with_hooks_caches_and_state_edits(tmp_path):
    model, spread = pair(tmp_path)
    assert {p.device.type for p in spread.blocks[2].parameters()} == {"meta"}  # not resident
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(spread(ids), model(ids), rtol=0, atol=0)
        _, cache = model.run_with_cache(ids)
        _, spread_cache = spread.run_with_cache(ids)
    assert set(cache.keys()) == set(spread_cache.keys())
    for name in ("blocks.2.mixer.hook_state", "blocks.1.mixer.hook_v", "blocks.2.hook_resid_post"):
        torch.testing.assert_close(spread_cache[name], cache[name], rtol=0, atol=0)

    def edit(state, hook):
        state[:, 4] = 0.0  # the in-place idiom: later positions must follow the edited memory
        return state

    with torch.no_grad():
        edited = model.run_with_hooks(ids, fwd_hooks=[("blocks.2.mixer.hook_state", edit)])
        spread_edited = spread.run_with_hooks(ids, fwd_hooks=[("blocks.2.mixer.hook_state", edit)])
        torch.testing.assert_close(spread_edited, edited, rtol=0, atol=0)
        assert not torch.allclose(edited[:, 5:], model(ids)[:, 5:])
        _, states = spread(ids[:, :7], return_states=True)
        torch.testing.assert_close(spread(ids[:, 7:], states=states), model(ids)[:, 7:], rtol=1e-5, atol=1e-5)


def test_auto_map_and_a_harvest_on_the_dispatched_model(tmp_path):
    model, spread = pair(tmp_path)
    block = sum(p.numel() * 4 for p in model.blocks[0].parameters())
    auto = dispatch(copy.deepcopy(model), "auto", max_memory={"cpu": 3 * block}, offload_dir=str(tmp_path / "o2"))
    assert "disk" in auto.hf_device_map.values()
    assert all(k.count(".") <= 1 for k in auto.hf_device_map)  # blocks are never split
    data = [np.arange(20) % 256, np.arange(5, 30) % 256]
    a = harvest(model, data, tmp_path / "a", sites=["state"], dtype="float32", progress=False)
    b = harvest(spread, data, tmp_path / "b", sites=["state"], dtype="float32", progress=False)
    for key in a.features:
        np.testing.assert_array_equal(b.activations().features[key][:], a.activations().features[key][:])
    with pytest.raises(ConfigError, match="offload_dir"):
        dispatch(copy.deepcopy(model), {"": "disk"})
    with pytest.raises(ConfigError, match="W_U|does not give"):
        dispatch(copy.deepcopy(model), {"W_E": "cpu", "blocks": "cpu", "ln_final": "cpu", "b_U": "cpu"})
