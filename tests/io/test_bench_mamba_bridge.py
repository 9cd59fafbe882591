"""Mamba's full state as probe caches it equals what TransformerLens 4's bridge exposes (``eager_scan``
``hook_ssm_state``) at the same weights: the two sides of the benchmark's state-capture comparison
capture the same numbers."""
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

from benchmarks.bench_references import VOCAB, _mamba, bridge_states, mamba_bridge  # noqa: E402
from probe.io.convert_mamba import mamba_from_hf  # noqa: E402


def test_probe_hook_state_equals_bridge_hook_ssm_state():
    torch.manual_seed(0)
    hf = _mamba(32, 2).eval()
    with torch.no_grad():  # larger dt so that states differ visibly between positions
        for layer in hf.backbone.layers:
            layer.mixer.dt_proj.bias.add_(1.0)
    ours = mamba_from_hf(hf)
    toks = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = mamba_bridge(hf)
        tl_logits, tl_states = bridge_states(bridge, toks)
        logits, cache = ours.run_with_cache(toks, names_filter=lambda n: n.endswith("mixer.hook_state"))
    assert (logits - tl_logits).abs().max() < 1e-4
    for i, theirs in tl_states.items():
        mine = cache[f"blocks.{i}.mixer.hook_state"]
        assert mine.shape == theirs.shape == (2, 24, 64, 16)
        scale = theirs.abs().max()
        assert scale > 1e-3 and (theirs[:, 1:] - theirs[:, :-1]).abs().max() > 1e-4 * scale  # not trivial
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6 * float(scale))
