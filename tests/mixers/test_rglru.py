"""RG-LRU (Griffin / RecurrentGemma recurrent block): the kernel against its sequential definition,
the mixer against transformers' ``RecurrentGemmaRecurrentBlock``, the whole converted model against
``RecurrentGemmaForCausalLM`` (logits, last states, greedy continuation), the reset flag, the converter's
refusals.

transformers keeps RecurrentGemma's state on its modules and its multi-token continuation is wrong
(../shared/REFERENCES.md): the comparisons are on whole sequences and single-token decodes. With only
recurrent layers its cached forward fails building an attention mask, so the cached runs pass the mask
dict and the positions themselves.
"""
from __future__ import annotations

import pytest
import torch

import probe
from conftest import make_model, randomise, tokens
from probe.errors import CheckpointError, ConfigError
from probe.ops.fused.hgrn import hgrn_scan
from probe.ops.linear_scan import linear_scan
from probe.ops.rglru import coefficients, rglru_sequential

transformers = pytest.importorskip("transformers")
from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM  # noqa: E402
from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRecurrentBlock  # noqa: E402

from probe.io.convert_recurrentgemma import recurrentgemma_from_hf  # noqa: E402


def hf_config(**kw) -> RecurrentGemmaConfig:
    base = dict(hidden_size=32, lru_width=48, num_attention_heads=4, num_hidden_layers=2, vocab_size=64,
                intermediate_size=96, block_types=["recurrent"], attention_window_size=8)
    return RecurrentGemmaConfig(**{**base, **kw})


def hf_model(seed: int = 0, **kw) -> RecurrentGemmaForCausalLM:
    torch.manual_seed(seed)
    return randomise(RecurrentGemmaForCausalLM(hf_config(**kw)), 0.2).eval()


def cached_forward(ref, toks: torch.Tensor, start: int, cache=None):
    """transformers' forward with its module states carried: positions ``start ..`` given, mask prebuilt."""
    pos = torch.arange(start, start + toks.shape[1])[None].expand(toks.shape[0], -1)
    with torch.no_grad():
        return ref(toks, position_ids=pos, attention_mask={"sliding_attention": None}, use_cache=True, cache=cache)


@pytest.mark.numerical
def test_scan_equals_the_sequential_definition_with_resets_and_edits():
    g = torch.Generator().manual_seed(0)
    b, T, W = 2, 13, 5
    x, i, a = (torch.rand(b, T, W, generator=g, dtype=torch.float64) for _ in range(3))
    reset = (torch.rand(b, T, 1, generator=g) < 0.2).double()
    reset[:, 0] = 1
    h0 = torch.randn(b, W, generator=g, dtype=torch.float64)
    ref = rglru_sequential(x, i, a, reset, h0)
    for method in ("chunked", "sequential", "loop"):
        assert torch.allclose(linear_scan(*coefficients(x, i, a, reset), h0, method=method), ref, atol=1e-12)
    # a reset forgets h0 entirely; without one, h0 decays through
    assert torch.allclose(ref[:, 0], i[:, 0] * x[:, 0])
    mask = torch.zeros(b, T, W, dtype=torch.bool)
    mask[:, 6] = True
    forced = hgrn_scan(*coefficients(x, i, a, reset), h0, force=(mask, torch.full((b, T, W), 3.0, dtype=torch.float64)))
    tail = rglru_sequential(x[:, 7:], i[:, 7:], a[:, 7:], reset[:, 7:], torch.full((b, W), 3.0, dtype=torch.float64))
    assert torch.allclose(forced[:, 7:], tail, atol=1e-12) and torch.allclose(forced[:, :6], ref[:, :6])


def converted_block(ref_block: RecurrentGemmaRecurrentBlock, cfg: RecurrentGemmaConfig):
    model = probe.HookedLM(probe.ModelConfig(vocab_size=8, d_model=cfg.hidden_size, n_heads=cfg.num_attention_heads,
                                             layout=["rglru"], mixer_options={"rglru": {"lru_width": cfg.lru_width}}))
    mixer = model.blocks[0].mixer
    src = ref_block.state_dict()
    with torch.no_grad():
        for name, p in mixer.named_parameters():
            theirs = {"conv_weight": "conv_1d.weight", "conv_bias": "conv_1d.bias"}.get(name)
            theirs = theirs or (name if name.startswith("linear") else f"rg_lru.{name}")
            p.copy_(src[theirs].reshape(p.shape))
    return mixer


@pytest.mark.numerical
def test_mixer_equals_the_transformers_block_whole_sequence_and_decode():
    cfg = hf_config()
    torch.manual_seed(0)
    # a block built alone is not initialised by transformers (post_init runs on whole models): its
    # parameters hold whatever memory torch.empty returned, NaN at times; take it from a built model
    ref = randomise(RecurrentGemmaForCausalLM(cfg).model.layers[0].temporal_block, 0.3)
    mixer = converted_block(ref, cfg)
    x = torch.randn(2, 10, 32)
    ref._setup_cache(2, x.device, x.dtype)
    with torch.no_grad():
        want, _ = ref(x, torch.arange(10)[None].expand(2, -1), None, use_cache=True)
        got, state = mixer(x)
        assert (got - want).abs().max() < 1e-5
        assert (state["state"] - ref.rg_lru.recurrent_states).abs().max() < 1e-5
        # the conv window holds linear_x's outputs: equal up to the matmul's rounding on this CPU path
        torch.testing.assert_close(state["state_conv"], ref.conv1d_state.transpose(1, 2), rtol=0, atol=1e-5)
        x1 = torch.randn(2, 1, 32)
        want1, _ = ref(x1, torch.full((2, 1), 10), None, use_cache=True)
        got1, state1 = mixer(x1, state)
    assert (got1 - want1).abs().max() < 1e-5
    assert (state1["state"] - ref.rg_lru.recurrent_states).abs().max() < 1e-5


@pytest.mark.numerical
def test_converted_model_logits_states_and_greedy_continuation_equal_transformers():
    ref = hf_model()
    model = recurrentgemma_from_hf(ref)
    toks = tokens(2, 12, vocab=64)
    with torch.no_grad():
        logits, states = model(toks, return_states=True)
        assert (logits - ref(toks, use_cache=False).logits).abs().max() < 1e-4
        cache = transformers.DynamicCache(config=ref.config)
        cached_forward(ref, toks, 0, cache)
        for layer, block in zip(states.layers, ref.model.layers):
            tb = block.temporal_block
            assert (layer["mixer"]["state"] - tb.rg_lru.recurrent_states).abs().max() < 1e-5
            assert (layer["mixer"]["state_conv"] - tb.conv1d_state.transpose(1, 2)).abs().max() < 1e-5
        nxt = toks[:, :1]
        step = cached_forward(ref, nxt, 12, cache).logits
        assert (model(nxt, states=states) - step).abs().max() < 1e-4
        seq = toks[:1, :5]
        for _ in range(6):  # transformers' greedy choice, each from the whole sequence (its exact path)
            seq = torch.cat([seq, ref(seq, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(model.generate(toks[:1, :5], max_new_tokens=6, return_type="tokens"), seq)


def test_reset_flag_starts_a_document_and_zero_state_is_fresh():
    model = make_model("rglru")
    toks = tokens(1, 10)
    prefix, states = model(toks[:, :4], return_states=True)
    assert all(float(layer["mixer"]["state_started"].min()) == 1.0 for layer in states.layers)
    fresh = model(toks[:, 4:])

    def restart(t, hook):  # token 4 starts afresh: empty conv window, RG-LRU reset
        t[:, 3] = 0

    hooks = [(f"blocks.{i}.mixer.hook_state_{name}", restart) for i in range(2) for name in ("conv", "started")]
    restarted = model.run_with_hooks(toks, fwd_hooks=hooks)
    assert torch.allclose(restarted[:, 4:], fresh, atol=1e-5)
    assert not torch.allclose(model(toks)[:, 4:], fresh, atol=1e-3)


def test_converter_refuses_attention_layers_other_activations_and_unmapped_weights():
    with pytest.raises(ConfigError, match="attention layers"):
        recurrentgemma_from_hf(RecurrentGemmaForCausalLM(hf_config(block_types=["recurrent", "attention"])))
    with pytest.raises(ConfigError, match="hidden_activation"):
        recurrentgemma_from_hf(RecurrentGemmaForCausalLM(hf_config(hidden_activation="relu")))
    ref = hf_model()
    ref.register_buffer("extra", torch.zeros(3))
    with pytest.raises(CheckpointError, match="extra"):
        recurrentgemma_from_hf(ref)


def test_from_hf_dispatches_recurrent_gemma():
    ref = hf_model()
    model = probe.from_hf(ref)
    assert model.cfg.layout == ["rglru", "rglru"] and model.cfg.embed_scale == 5.65625
