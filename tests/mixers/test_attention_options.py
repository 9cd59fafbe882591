"""Attention options (grouped-query attention, q / k norms, partial rotary, output gate, softmax scale,
q / k / v bias): one attention layer equals the transformers layer that has the option (whole
sequence and the KV cache it writes), the model contract holds with every option on, hooks sit
where the docstring says, and bad combinations are named."""
import math
import warnings

import pytest
import torch

import probe
from conftest import randomise, tokens
from mixer_checks import assert_segments_match
from probe.errors import ConfigError
from probe.io.convert_attention import attention_weights, rope_base, rotary_options
from probe.methods import implicit_attention
from probe.mixers.attention import Attention, rope

transformers = pytest.importorskip("transformers")

D_MODEL = 32


def _tiny(config_cls, **kw):
    args = dict(hidden_size=D_MODEL, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                vocab_size=50, num_hidden_layers=1)
    args.update(kw)
    config = config_cls(**args)
    config._attn_implementation = "eager"
    return config


def _qwen2():
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2RotaryEmbedding
    c = _tiny(Qwen2Config)
    return c, Qwen2Attention(c, 0), Qwen2RotaryEmbedding(c), {"n_kv_heads": 2, "qkv_bias": True}


def _qwen3():
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RotaryEmbedding
    c = _tiny(Qwen3Config, head_dim=8)
    return c, Qwen3Attention(c, 0), Qwen3RotaryEmbedding(c), {"n_kv_heads": 2, "qk_norm": "head", "qk_norm_eps": 1e-6}


def _qwen3_next():
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextAttention, Qwen3NextRotaryEmbedding
    c = _tiny(Qwen3NextConfig, head_dim=16, layer_types=["full_attention"])  # 4 heads of 16: wider than d_model
    return c, Qwen3NextAttention(c, 0), Qwen3NextRotaryEmbedding(c), {
        "n_kv_heads": 2, "qk_norm": "head_offset", "qk_norm_eps": 1e-6, "output_gate": True, **rotary_options(c)}


def _olmo_hybrid():
    from transformers import OlmoHybridConfig
    from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridAttention, OlmoHybridRotaryEmbedding
    c = _tiny(OlmoHybridConfig, attention_bias=True, num_hidden_layers=2,
              layer_types=["full_attention", "linear_attention"], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return c, OlmoHybridAttention(c, 0), OlmoHybridRotaryEmbedding(c), {
        "n_kv_heads": 2, "qk_norm": "projection", "qk_norm_eps": 1e-6, "bias": True}


def _bamba():
    from transformers import BambaConfig
    from transformers.models.bamba.modeling_bamba import BambaAttention, BambaRotaryEmbedding
    c = _tiny(BambaConfig, attn_layer_indices=[0], mamba_n_heads=4)
    return c, BambaAttention(c, 0), BambaRotaryEmbedding(c), {"n_kv_heads": 2, **rotary_options(c)}


def _granite():
    from transformers import GraniteConfig
    from transformers.models.granite.modeling_granite import GraniteAttention, GraniteRotaryEmbedding
    c = _tiny(GraniteConfig, attention_multiplier=0.3, num_key_value_heads=1)
    return c, GraniteAttention(c, 0), GraniteRotaryEmbedding(c), {"n_kv_heads": 1, "scale": 0.3}


REFERENCES = {"qwen2_gqa_qkv_bias": _qwen2, "qwen3_head_norm": _qwen3,
              "qwen3_next_offset_norm_gate_partial_rotary": _qwen3_next, "olmo_hybrid_projection_norm_bias": _olmo_hybrid,
              "bamba_partial_rotary": _bamba, "granite_scale_multi_query": _granite}


def probe_layer(hf_config, module, options) -> Attention:
    """A probe ``attn`` mixer with ``options`` and the weights of the transformers attention ``module``."""
    d_head = module.head_dim
    cfg = probe.ModelConfig(d_model=D_MODEL, n_heads=hf_config.num_attention_heads, d_head=d_head, layout=["attn"],
                            d_mlp=0, rope_base=rope_base(hf_config), mixer_options={"attn": options})
    mixer = Attention(cfg, 0)
    sd = {k: v.detach() for k, v in module.state_dict().items()}
    used: set[str] = set()
    weights = attention_weights(sd, "", "", mixer.options, cfg.n_heads, d_head, used)
    assert used == set(sd), f"unmapped: {set(sd) - used}"
    mixer.load_state_dict({k: t for k, (_, t) in weights.items()})
    return mixer.eval()


def _reference(module, rotary, x, cache=None, start=0):
    """The transformers layer's output on ``x [b, T, d_model]`` at positions ``start..`` (causal mask)."""
    T, S = x.shape[1], start + x.shape[1]
    pos = torch.arange(start, S)[None]
    allowed = torch.arange(S)[None, :] <= pos[0, :, None]
    mask = torch.zeros(T, S).masked_fill(~allowed, float("-inf"))[None, None]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return module(x, position_embeddings=rotary(x, pos), attention_mask=mask, cache=cache)[0]


@pytest.mark.numerical
@pytest.mark.parametrize("reference", list(REFERENCES))
def test_layer_and_kv_cache_match_transformers(reference):
    hf_config, module, rotary, options = REFERENCES[reference]()
    torch.manual_seed(0)
    randomise(module.eval(), 0.3)  # norm weights off 1 (and off 0 for the offset norm)
    mixer = probe_layer(hf_config, module, options)
    x = torch.randn(2, 11, D_MODEL, generator=torch.Generator().manual_seed(1))
    from transformers import DynamicCache
    cache = DynamicCache(config=hf_config)
    ref = _reference(module, rotary, x, cache)
    with torch.no_grad():
        ours, state = mixer(x)
    assert (ours - ref).abs().max() <= 1e-5, (ours - ref).abs().max()
    keys, values = cache.layers[0].keys, cache.layers[0].values  # [b, kv heads, P, d], normed and rotated
    assert state["k"].shape == (2, 11, options["n_kv_heads"], module.head_dim)
    torch.testing.assert_close(state["k"], keys.transpose(1, 2), rtol=0, atol=1e-5)
    torch.testing.assert_close(state["v"], values.transpose(1, 2), rtol=0, atol=1e-5)
    # the next token read from the cache: probe's carried state against transformers' cache
    x_next = torch.randn(2, 1, D_MODEL, generator=torch.Generator().manual_seed(2))
    ref_next = _reference(module, rotary, x_next, cache, start=11)
    with torch.no_grad():
        ours_next, _ = mixer(x_next, state)
    assert (ours_next - ref_next).abs().max() <= 1e-5


def test_partial_rope_rotates_the_leading_channels_only():
    x = torch.randn(1, 5, 2, 8, dtype=torch.float64)
    out = rope(x, 3, 10000.0, rotary_dim=4)
    assert torch.equal(out[..., 4:], x[..., 4:])
    torch.testing.assert_close(out[..., :4], rope(x[..., :4], 3, 10000.0))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # a rotation
    assert torch.equal(rope(x, 0, 10000.0, rotary_dim=4)[:, 0], x[:, 0])  # position 0 is the identity


ALL_OPTIONS = {"n_kv_heads": 2, "qk_norm": "head_offset", "rotary_fraction": 0.5, "output_gate": True, "scale": 0.4,
               "qkv_bias": True}


def _model(options, layout=("attn", "attn"), **kw):
    torch.manual_seed(0)
    cfg = probe.ModelConfig(vocab_size=257, d_model=D_MODEL, n_heads=4, layout=list(layout), d_mlp=64,
                            mixer_options={"attn": options}, **kw)
    return randomise(probe.HookedLM(cfg)).eval()


@pytest.mark.parametrize("options", [ALL_OPTIONS, {**ALL_OPTIONS, "qk_norm": "projection", "output_gate": False}],
                         ids=["offset_gate", "projection"])
def test_contract_with_options(options):
    """Segments, the explicit pattern path, in-place edits of every attention hook and KV-cache
    patching all hold with the options on."""
    model = _model(options)
    toks = tokens(2, 14)
    assert_segments_match(model, toks, 5)
    with torch.no_grad():
        fast = model(toks)
        slow, cache = model.run_with_cache(toks)
    torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-4)
    assert cache["blocks.0.mixer.hook_k"].shape == (2, 14, 2, 8)
    assert cache["blocks.0.mixer.hook_pattern"].shape == (2, 4, 14, 14)
    for name in [n for n in model.hook_dict if n.startswith("blocks.1.mixer.")]:
        def halve(t, hook, inplace):
            target = t if inplace else t.clone()
            axis = 2 if name.endswith(("pattern", "attn_scores")) else 1
            target.select(axis, 9).mul_(0.5)
            return None if inplace else target
        with torch.no_grad():
            a = model.run_with_hooks(toks, fwd_hooks=[(name, lambda t, hook: halve(t, hook, True))])
            b = model.run_with_hooks(toks, fwd_hooks=[(name, lambda t, hook: halve(t, hook, False))])
        assert torch.equal(a, b), name
        torch.testing.assert_close(a[:, :9], fast[:, :9], atol=2e-5, rtol=1e-5)
        assert not torch.allclose(a[:, 9:], fast[:, 9:]), f"halving {name} changed nothing"


def test_kv_patching_transfers_the_prefix_with_grouped_heads():
    """Overwriting hook_k / hook_v of a prefix with another run's (kv-head shaped) values gives that
    run's logits on the shared suffix: hook_k / hook_v are the whole KV cache."""
    model = _model(ALL_OPTIONS)
    source, target = tokens(1, 12, seed=1), tokens(1, 12, seed=2)
    target[:, 6:] = source[:, 6:]
    src_logits, src_cache = model.run_with_cache(source)

    def patch(t, hook):
        t = t.clone()
        t[:, :6] = src_cache[hook.name][:, :6]
        return t

    names = [n for n in model.hook_dict if n.endswith(("mixer.hook_k", "mixer.hook_v"))]
    patched = model.run_with_hooks(target, fwd_hooks=[(n, patch) for n in names])
    torch.testing.assert_close(patched[:, 6:], src_logits[:, 6:], atol=2e-5, rtol=1e-4)


def test_hooks_are_what_the_layer_computes():
    """hook_q / hook_k are after the q / k norm (the norm's hook_normalized), hook_z is what W_O reads
    (the gated read), and the pattern times the grouped values, gated, is hook_z."""
    model = _model(ALL_OPTIONS, positional="rope")
    _, cache = model.run_with_cache(tokens(1, 9))
    m = "blocks.1.mixer."
    assert torch.equal(cache[m + "hook_q"], cache[m + "q_norm.hook_normalized"])
    assert cache[m + "q_norm.hook_scale"].shape == (1, 9, 4, 1)
    v = cache[m + "hook_v"].repeat_interleave(2, dim=2)  # kv head j serves query heads 2j, 2j + 1
    read = torch.einsum("bhqk,bkhd->bqhd", cache[m + "hook_pattern"], v)
    torch.testing.assert_close(read * cache[m + "hook_gate"], cache[m + "hook_z"], atol=1e-6, rtol=1e-5)
    mixer = model.blocks[1].mixer
    assert mixer.W_q.bias is not None and mixer.W_o.bias is None  # qkv_bias: no output bias
    with torch.no_grad():
        out = torch.einsum("bthe,hed->btd", cache[m + "hook_z"], mixer.W_O)
    torch.testing.assert_close(out, cache["blocks.1.hook_mixer_out"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [ALL_OPTIONS, {"n_kv_heads": 1}], ids=["gated_gqa", "multi_query"])
def test_implicit_attention_rebuilds_grouped_and_gated_layers(options):
    model = _model(options)
    for layer in range(2):
        ia, errors = implicit_attention(model, tokens(2, 10), layer)
        assert ia.matrix.shape == (2, 4, 10, 10)
        assert errors["output"] < 1e-5, errors
        assert ("signal" in errors) == (not options.get("output_gate", False))


def test_projection_norm_normalises_across_heads():
    model = _model({"qk_norm": "projection", "n_kv_heads": 2})
    _, cache = model.run_with_cache(tokens(1, 5))
    mixer = model.blocks[0].mixer
    assert mixer.q_norm.w.shape == (32,) and mixer.k_norm.w.shape == (16,)
    q = cache["blocks.0.mixer.hook_q"].flatten(2) / mixer.q_norm.w.detach()  # [b, T, H d], gain removed
    torch.testing.assert_close(q.pow(2).mean(-1), torch.ones(1, 5), atol=1e-4, rtol=0)


def test_default_options_are_plain_attention():
    mixer = _model({}).blocks[0].mixer
    assert (mixer.n_kv_heads, mixer.rotary_dim, mixer.q_norm, mixer.W_gate) == (4, 8, None, None)
    assert mixer.scale == 1 / math.sqrt(8) and mixer.W_q.bias is None and mixer.W_o.bias is None


@pytest.mark.parametrize("options,kw,match", [
    ({"n_kv_heads": 3}, {}, "n_kv_heads=3 must divide n_heads=4"),
    ({"rotary_fraction": 1.5}, {}, "rotary_fraction=1.5 must be in"),
    ({"rotary_fraction": 0.5}, {"positional": "none"}, "needs positional='rope'"),
    ({"rotary_fraction": 0.1}, {}, "rotates no channel pair"),
    ({"qk_norm": "rms"}, {}, "qk_norm='rms' is not one of none, head, head_offset, projection"),
])
def test_bad_options_are_named(options, kw, match):
    with pytest.raises(ConfigError, match=match):
        _model(options, **kw)


def test_a_cache_of_the_wrong_head_count_is_refused():
    model = _model({"n_kv_heads": 2})
    _, st = _model({}).forward(tokens(1, 4), return_states=True)
    with pytest.raises(probe.InputError, match=r"expected \[1, P, 2, 8\]"):
        model(tokens(1, 2), states=st)
