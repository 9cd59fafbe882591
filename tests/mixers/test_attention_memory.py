"""Attention's SDPA path without a dense causal mask: memory bounded by the activations, output
equal to the explicit masked softmax (with and without a KV cache, chunked or not)."""
import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import probe.ops.causal_attention as attention  # the kernels attention runs (MASK_ENTRIES patched there)
from conftest import make_model, tokens


def _reference(qh, kh, vh, P):
    """The definition: softmax over keys ``j <= P + i`` of ``q_i . k_j / sqrt(d)``, times values."""
    T, S = qh.shape[-2], kh.shape[-2]
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    allowed = torch.arange(S)[None, :] <= torch.arange(P, P + T)[:, None]
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ vh


@pytest.mark.numerical
@pytest.mark.parametrize("P,T", [(0, 1), (0, 9), (5, 1), (5, 9), (3, 40)])
def test_causal_sdpa_matches_the_masked_softmax(P, T, monkeypatch):
    """Every route of :func:`causal_sdpa` (is_causal, one query, chunked masks of at most 64 entries)."""
    monkeypatch.setattr(attention, "MASK_ENTRIES", 64)
    g = torch.Generator().manual_seed(P * 100 + T)
    qh = torch.randn(2, 3, T, 8, generator=g, dtype=torch.float64)
    kh, vh = (torch.randn(2, 3, P + T, 8, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(attention.causal_sdpa(qh, kh, vh, P), _reference(qh, kh, vh, P), atol=1e-12, rtol=1e-10)


def test_causal_mask_is_the_definition():
    mask = attention.causal_mask(2, 1, 4)  # queries 1..3 after 2 cached positions: absolute 3..5
    assert mask.tolist() == [[j <= 2 + i for j in range(6)] for i in range(1, 4)]


@pytest.mark.numerical
def test_chunked_continuation_equals_one_run(monkeypatch):
    """A continuation from a KV cache, its queries split into many mask chunks, equals one run over
    the whole input and the explicit pattern path (hooked scores)."""
    model = make_model("attn", n_ctx=64)
    toks = tokens(2, 40)
    with torch.no_grad():
        whole = model(toks)
        monkeypatch.setattr(attention, "MASK_ENTRIES", 50)  # chunks of 1-2 queries over 12..40 keys
        _, st = model(toks[:, :12], return_states=True)
        rest = model(toks[:, 12:], states=st)
        hooked = model.run_with_hooks(toks[:, 12:], states=st,
                                      fwd_hooks=[("blocks.0.mixer.hook_pattern", lambda t, hook: None)])
    torch.testing.assert_close(rest, whole[:, 12:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hooked, rest, atol=1e-5, rtol=1e-4)


def _largest_allocation(fn) -> int:
    """The largest CPU memory one operator allocated (bytes) while ``fn()`` ran."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.self_cpu_memory_usage for e in prof.events())


def test_no_dense_mask_on_the_sdpa_path(monkeypatch):
    """2048 tokens: a T x T boolean mask is 4 MB; q, k, v and the output are 256 kB each. No
    operator of the attention forward may allocate a quarter of the mask: without a cache none is
    built, with one (1024 cached + 1024 new positions) the masks stay within ``MASK_ENTRIES``."""
    mixer = make_model("attn", n_ctx=4096).blocks[0].mixer
    T = 2048
    x = torch.randn(1, T, 32)
    with torch.no_grad():
        mixer(x[:, :8])  # warm-up (lazy initialisations)
        assert _largest_allocation(lambda: mixer(x)) < T * T // 4
        _, cache = mixer(x[:, :1024])
        monkeypatch.setattr(attention, "MASK_ENTRIES", 1 << 16)
        assert _largest_allocation(lambda: mixer(x[:, 1024:], cache)) < T * T // 4
