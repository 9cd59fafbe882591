"""Methods I through a TransformerLens 4 bridge: the same numbers as on the converted HookedLM
of the same GPT-2 (DLA with the attention output bias, IG, memory maps, lenses)."""
import pytest
import torch

pytest.importorskip("transformers")
from test_transformer_lens_interop import TEXT, pair  # noqa: E402,F401  (the shared GPT-2 fixture)

from probe.methods import (  # noqa: E402
    TunedLens, direct_logit_attribution, integrated_gradients, logit_lens, memory_map,
)


def test_methods_agree_through_the_bridge(pair):
    adapter, ours = pair
    bridge = adapter.bridge  # a raw bridge is accepted too (wrapped on entry)
    a, o = direct_logit_attribution(bridge, TEXT, contrast=5), direct_logit_attribution(ours, TEXT, contrast=5)
    assert a.components == o.components and float(a.rel_error.max()) < 1e-4
    torch.testing.assert_close(a.contributions, o.contributions, atol=1e-4, rtol=1e-4)
    for i in (0, 1):  # GPT-2's attention has an output bias: heads + bias = the layer's part
        torch.testing.assert_close(a.head_contributions[i], o.head_contributions[i], atol=1e-4, rtol=1e-4)
        assert float(a.head_bias[i].abs().max()) > 0
        part = a.contributions[a.components.index(f"L{i} attn")]
        torch.testing.assert_close(a.head_contributions[i].sum(0) + a.head_bias[i], part, atol=1e-6, rtol=1e-5)
    ig_a, ig_o = integrated_gradients(bridge, TEXT, steps=32), integrated_gradients(ours, TEXT, steps=32)
    torch.testing.assert_close(ig_a.attributions, ig_o.attributions, atol=1e-4, rtol=1e-3)
    assert float(ig_a.completeness_error.max()) < 0.01
    mm_a, mm_o = memory_map(bridge, TEXT), memory_map(ours, TEXT)
    for la, lo in zip(mm_a.layers, mm_o.layers):
        assert la.kind == lo.kind == "attention" and la.reconstruction_error < 1e-4
        torch.testing.assert_close(la.matrix, lo.matrix, atol=1e-5, rtol=1e-4)
    assert mm_a.state_sizes["elements"].tolist() == mm_o.state_sizes["elements"].tolist()
    torch.testing.assert_close(TunedLens(bridge).run(bridge, TEXT).kl, logit_lens(ours, TEXT).kl, atol=1e-5, rtol=1e-4)
