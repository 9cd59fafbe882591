"""Methods II through a TransformerLens 4 bridge: patching, attribution patching, probes and steering
give the same numbers on the bridge as on the converted HookedLM of the same GPT-2."""
import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
from test_transformer_lens_interop import pair  # noqa: E402,F401  (the shared GPT-2 fixture)

from probe.methods import (  # noqa: E402
    activation_patching, attribution_patching, collect_activations, steer, steering_vector,
)


def test_methods2_agree_through_the_bridge(pair):
    adapter, ours = pair
    bridge = adapter.bridge
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 98, (2, 8), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = (corrupted[:, 2] + 5) % 98
    kw = dict(answer=[3, 4], contrast=[5, 6])
    for method in (activation_patching, attribution_patching):
        a, o = method(bridge, clean, corrupted, **kw), method(ours, clean, corrupted, **kw)
        assert a.sites == o.sites == ["resid_pre", "mixer_out", "mlp_out", "state"]
        torch.testing.assert_close(a.scores, o.scores, atol=1e-4, rtol=1e-4)
    da = collect_activations(bridge, clean, {"y": clean.numpy() % 2}, dtype="float32")
    do = collect_activations(ours, clean, {"y": clean.numpy() % 2}, dtype="float32")
    assert da.keys == do.keys
    for k in da.keys:
        np.testing.assert_allclose(da.features[k], do.features[k], atol=1e-4, rtol=1e-4)
    va = steering_vector(bridge, clean[:1], corrupted[:1], layers=[1])
    vo = steering_vector(ours, clean[:1], corrupted[:1], layers=[1])
    torch.testing.assert_close(va.vectors[1], vo.vectors[1], atol=1e-5, rtol=1e-4)
    sa = steer(bridge, clean, va, [1.5], answer=3, contrast=4, max_new_tokens=3)
    so = steer(ours, clean, vo, [1.5], answer=3, contrast=4, max_new_tokens=3)
    torch.testing.assert_close(sa.metric, so.metric, atol=1e-4, rtol=1e-4)
    assert torch.equal(sa.generated_tokens[1, 1.5], so.generated_tokens[1, 1.5])
