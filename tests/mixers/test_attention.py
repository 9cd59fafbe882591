"""Attention: the explicit pattern path equals SDPA, KV-cache continuation, positions, limits."""
import pytest
import torch

import probe
from conftest import make_model, tokens


@pytest.mark.parametrize("positional", ["rope", "learned", "none"])
def test_pattern_path_equals_sdpa_and_cache_continuation(positional):
    model = make_model("attn", positional=positional)
    toks = tokens(2, 16)
    with torch.no_grad():
        fast = model(toks)
        slow, cache = model.run_with_cache(toks)
        a, st = model(toks[:, :10], return_states=True)
        b = model(toks[:, 10:], states=st)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([a, b], 1), fast, atol=1e-5, rtol=1e-4)
    pattern = cache["blocks.0.mixer.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 16))
    assert torch.all(pattern.triu(1) == 0)  # causal
    assert st.layers[0]["mixer"]["k"].shape == (2, 10, 4, 8)


def test_pattern_times_values_is_z():
    model = make_model("attn", positional="none")
    _, cache = model.run_with_cache(tokens(1, 9))
    z = torch.einsum("bhqk,bkhd->bqhd", cache["blocks.1.mixer.hook_pattern"], cache["blocks.1.mixer.hook_v"])
    torch.testing.assert_close(z, cache["blocks.1.mixer.hook_z"], atol=1e-6, rtol=1e-5)


def test_context_limit_is_a_clear_error():
    model = make_model("attn", n_ctx=8)
    with pytest.raises(probe.InputError, match="longer than this model's context n_ctx=8"):
        model(tokens(1, 9))
    _, st = model(tokens(1, 6), return_states=True)
    with pytest.raises(probe.InputError, match="n_ctx=8"):
        model(tokens(1, 3), states=st)
    make_model("qrnn", n_ctx=8)(tokens(1, 20))  # recurrent models have no limit
