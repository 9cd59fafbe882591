"""TransformerLens 4 interop: a TransformerBridge through probe's adapter gives the same numbers as the
converted HookedLM of the same GPT-2 (caches, hooks, the logit lens)."""
import pytest
import torch

import probe
from tl_bridge import boot, tiny_gpt2

pytest.importorskip("transformers")
TEXT = "w1 w2 w3 w7 w9 w4 w4 w2"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(adapter over a TransformerBridge, HookedLM converted with from_hf) of one tiny random GPT-2
    (tests/tl_bridge.py); from_hf runs first: booting rewrites the HF model's modules."""
    d = tmp_path_factory.mktemp("tiny-gpt2")
    hf, tok = tiny_gpt2(d)
    ours = probe.from_hf(hf, tokenizer=tok)
    bridge = boot(d, hf)
    return probe.from_transformer_lens(bridge), ours


def test_same_cache_through_both_paths(pair):
    adapter, ours = pair
    assert torch.equal(adapter.to_tokens(TEXT), ours.to_tokens(TEXT))
    logits_a, cache_a = adapter.run_with_cache(TEXT)
    logits_o, cache_o = ours.run_with_cache(TEXT)
    torch.testing.assert_close(logits_a, logits_o, atol=1e-5, rtol=1e-5)
    shared = set(cache_a.keys()) & set(cache_o.keys())
    for i in range(2):
        for site in ("resid_pre", "resid_mid", "resid_post", "mixer_in", "mixer_out", "attn_out", "mlp_in", "mlp_out"):
            assert f"blocks.{i}.hook_{site}" in shared
    assert {"hook_embed", "hook_pos_embed", "hook_logits", "ln_final.hook_normalized",
            "blocks.1.mixer.hook_pattern", "blocks.0.mixer.hook_q", "blocks.0.mlp.hook_post"} <= shared
    for name in shared:
        a, o = cache_a[name], cache_o[name]
        if name.endswith("hook_attn_scores"):  # masked entries differ (-inf vs a large negative): compare causal ones
            keep = torch.ones(a.shape[-2:], dtype=torch.bool).tril()
            a, o = a[..., keep], o[..., keep]
        torch.testing.assert_close(a, o, atol=1e-5, rtol=1e-5, msg=name)
    assert cache_a["resid_post", 1].shape == (1, 9, 64)  # probe's tuple keys work on the adapter's cache


def test_hooks_use_probe_names_and_edits_match(pair):
    adapter, ours = pair
    seen = []
    ablate = [("blocks.0.hook_mixer_out", lambda t, hook: seen.append(hook.name) or torch.zeros_like(t)),
              (lambda name: name.endswith("mixer.hook_v"), lambda t, hook: t * 0.5)]
    out_a = adapter.run_with_hooks(TEXT, fwd_hooks=ablate)
    out_o = ours.run_with_hooks(TEXT, fwd_hooks=ablate)
    assert seen == ["blocks.0.hook_mixer_out", "blocks.0.hook_mixer_out"]
    torch.testing.assert_close(out_a, out_o, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_a, adapter(TEXT))


def test_logit_lens_through_both_paths(pair):
    lens = pytest.importorskip("probe.methods.lens")
    adapter, ours = pair
    a, o = lens.logit_lens(adapter, TEXT), lens.logit_lens(ours, TEXT)
    assert a.layers == o.layers == [0, 1, 2]
    torch.testing.assert_close(a.kl, o.kl, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.cross_entropy, o.cross_entropy, atol=1e-5, rtol=1e-4)
    assert torch.equal(a.top_tokens, o.top_tokens)
    # the lens is the final norm and unembedding applied to each stream: checked here by hand too
    _, cache = adapter.run_with_cache(TEXT)
    resid = cache["blocks.0.hook_resid_post"]
    by_hand = adapter.ln_final(resid) @ adapter.unembed_matrix + adapter.b_U
    torch.testing.assert_close(torch.log_softmax(by_hand, -1).argmax(-1), a.top_tokens[1])


def test_bad_input_is_refused_clearly(pair):
    adapter, _ = pair
    with pytest.raises(probe.ConfigError, match="expects a TransformerLens 4 TransformerBridge"):
        probe.from_transformer_lens(torch.nn.Linear(2, 2))
    with pytest.raises(probe.InputError, match="no carried state"):
        adapter(TEXT, return_states=True)
    with pytest.raises(probe.UnknownHookError, match="blocks.0.mixer.hook_state"):
        adapter.run_with_cache(TEXT, names_filter=["blocks.0.mixer.hook_state"])
    bridge = adapter.bridge
    bridge.cfg.parallel_attn_mlp = True
    try:
        with pytest.raises(probe.ConfigError, match="in parallel.*Supported: decoder-only"):
            probe.from_transformer_lens(bridge)
    finally:
        bridge.cfg.parallel_attn_mlp = False


def test_both_models_implement_the_model_interface(pair):
    """HookedLM and the adapter answer the interface the methods use, with the same answers."""
    from probe.interface import LanguageModel
    from probe.methods.support.input_checks import as_model

    adapter, ours = pair
    assert isinstance(adapter, LanguageModel) and isinstance(ours, LanguageModel)
    assert as_model(adapter) is adapter and as_model(ours) is ours and as_model(adapter.bridge) is not adapter.bridge
    assert torch.equal(adapter.as_tokens(TEXT), ours.as_tokens(TEXT))
    assert ours.carries_state and not adapter.carries_state
    assert not any(m.layer_carries_state(i) for m in pair for i in range(2))
    for i in range(2):
        (W_a, b_a), (W_o, b_o) = adapter.attention_output(i), ours.attention_output(i)
        torch.testing.assert_close(W_a, W_o)
        torch.testing.assert_close(b_a, b_o)
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, -1.0]])
    gen = torch.Generator()
    assert adapter.sample(logits, 0.0, None, gen).tolist() == ours.sample(logits, 0.0, None, gen).tolist() == [1, 0]
