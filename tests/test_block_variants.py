"""Block variants (probe.block): parallel mixers ("attn+mamba2") and post-norm placement.

Each block is checked against its math written out by hand from its parts, and its hooks against
what they promise (the contract tests run both variants through conftest's HYBRIDS too).
"""
import pytest
import torch

import probe
from conftest import make_model, randomise, tokens
from probe.errors import ConfigError, InputError
from probe.mixers import MIXERS, Parallel


def _model(**kw) -> probe.HookedLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=257, d_model=32, n_heads=4, d_mlp=64, layout=["attn+mamba2", "mamba2"])
    return randomise(probe.HookedLM(probe.ModelConfig(**{**cfg, **kw}))).eval()


def test_parallel_block_is_the_sum_of_its_parts_on_one_normed_input():
    model = _model()
    toks = tokens(2, 11)
    block = model.blocks[0]
    _, cache = model.run_with_cache(toks)
    x = block.ln1(cache["blocks.0.hook_resid_pre"])
    with torch.no_grad():
        attn, _ = block.mixer.attn(x)
        mamba2, _ = block.mixer.mamba2(x)
    torch.testing.assert_close(cache["blocks.0.hook_mixer_in"], x)
    torch.testing.assert_close(cache["blocks.0.mixer.hook_attn_out"], attn)
    torch.testing.assert_close(cache["blocks.0.mixer.hook_mamba2_out"], mamba2)
    torch.testing.assert_close(cache["blocks.0.hook_mixer_out"], attn + mamba2)
    torch.testing.assert_close(cache["blocks.0.hook_resid_mid"], cache["blocks.0.hook_resid_pre"] + attn + mamba2)


def test_parallel_names_hooks_and_state_by_part():
    model = _model()
    assert issubclass(MIXERS["attn+mamba2"], Parallel) and "attn+mamba2" in MIXERS
    assert "attn+mamba2" not in list(MIXERS)  # resolved on lookup, never listed (ARCHS stays the mixers)
    cls = MIXERS["attn+mamba2"]
    assert cls.recurrent and cls.mixes_positions and not cls.is_attention and not cls.nonlinear_state
    assert "blocks.0.mixer.attn.hook_pattern" in model.hook_dict
    assert "blocks.0.mixer.mamba2.hook_state" in model.hook_dict
    _, st = model(tokens(1, 5), return_states=True)
    assert set(st.layers[0]) == {"mixer.attn", "mixer.mamba2", "mlp"} and set(st.layers[1]) == {"mixer", "mlp"}
    assert st.kv_length() == 5
    # every recurrent state entry is named like the hook that shows it
    states = [n for n in st.hook_items() if "hook_state" in n]
    assert states and all(n in model.hook_dict for n in states)
    assert st.layers[0]["mixer.attn"]["k"].shape[1] == 5


def test_parallel_attention_part_keeps_the_context_limit():
    model = _model(n_ctx=8)
    assert model.cfg.has_attention
    with pytest.raises(InputError, match="n_ctx=8"):
        model(tokens(1, 9))


def test_editing_one_part_output_changes_only_that_share():
    model = _model()
    toks = tokens(1, 9)
    _, clean = model.run_with_cache(toks)
    zero = lambda t, hook: torch.zeros_like(t)
    with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_mamba2_out", zero)]):
        _, cache = model.run_with_cache(toks, names_filter="blocks.0.hook_mixer_out")
    torch.testing.assert_close(cache["blocks.0.hook_mixer_out"], clean["blocks.0.mixer.hook_attn_out"])


def test_post_norm_block_normalises_what_each_slot_writes():
    model = _model(layout=["mamba2", "attn"], norm_placement=["pre", "post"], norm="layernorm")
    toks = tokens(2, 10)
    block = model.blocks[1]
    _, cache = model.run_with_cache(toks)
    resid = cache["blocks.1.hook_resid_pre"]
    with torch.no_grad():
        mid = resid + block.ln1(block.mixer(resid)[0])
        post = mid + block.ln2(block.mlp(mid)[0])
    torch.testing.assert_close(cache["blocks.1.hook_mixer_in"], resid)
    torch.testing.assert_close(cache["blocks.1.hook_resid_mid"], mid)
    torch.testing.assert_close(cache["blocks.1.hook_mlp_in"], mid)
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], post)
    # the pre-norm layer is unchanged: its mixer reads ln1(resid)
    torch.testing.assert_close(cache["blocks.0.hook_mixer_in"], model.blocks[0].ln1(cache["blocks.0.hook_resid_pre"]))


def test_post_norm_per_head_attribution_sums_to_the_layer():
    from probe.methods import direct_logit_attribution

    model = _model(layout=["mamba2", "attn"], norm_placement=["pre", "post"], norm="layernorm")
    dla = direct_logit_attribution(model, tokens(2, 8), per_head=True)  # raises if the heads miss the layer
    layer = dla.contributions[dla.components.index("L1 attn")]
    torch.testing.assert_close(dla.head_contributions[1].sum(0) + dla.head_bias[1], layer, rtol=1e-6, atol=1e-8)
    assert float(dla.rel_error.max()) < 1e-6


@pytest.mark.parametrize("layout, match", [
    (["attn+mamba3"], r"Unknown mixer 'mamba3' in the parallel layout entry 'attn\+mamba3'.*mamba2"),
    (["mamba2+mamba2"], "names a mixer twice"),
])
def test_bad_parallel_layouts_are_named(layout, match):
    with pytest.raises(ConfigError, match=match):
        probe.ModelConfig(layout=layout)


@pytest.mark.parametrize("placement, match", [
    (["pre"], "norm_placement has 1 entries for 2 layers"),
    (["pre", "after"], "norm_placement entry='after' is not one of pre, post"),
    ("post", "norm_placement must be a list"),
])
def test_bad_norm_placement_is_named(placement, match):
    with pytest.raises(ConfigError, match=match):
        probe.ModelConfig(layout=["attn", "attn"], norm_placement=placement)


def test_a_state_of_another_block_shape_is_refused():
    model = _model()
    _, st = model(tokens(1, 4), return_states=True)
    st.layers[0] = {"mixer": st.layers[1]["mixer"], "mlp": {}}
    with pytest.raises(InputError, match=r"Layer 0 \(attn\+mamba2\) expects a state with entries"):
        model(tokens(1, 2), states=st)


def test_variants_save_and_load(tmp_path):
    model = make_model("hybrid_post_norm")
    model.save(tmp_path / "m")
    assert probe.load(tmp_path / "m").cfg.norm_placement == ["pre", "post"]


def test_short_sites_reach_the_parts_of_a_parallel_layer():
    from probe.methods.support.site_hooks import memory_hooks, site_hooks

    model = _model()
    assert site_hooks(model, "pattern", 0) == ["blocks.0.mixer.attn.hook_pattern"]
    assert site_hooks(model, "mamba2_out", 0) == ["blocks.0.mixer.hook_mamba2_out"]
    # the layer's whole memory: the Mamba-2 part's states and the attention part's keys and values
    assert set(memory_hooks(model, 0)) == {"blocks.0.mixer.mamba2.hook_state", "blocks.0.mixer.mamba2.hook_state_conv",
                                           "blocks.0.mixer.attn.hook_k", "blocks.0.mixer.attn.hook_v"}
    assert set(memory_hooks(model, 1)) == {"blocks.1.mixer.hook_state", "blocks.1.mixer.hook_state_conv"}


def test_patching_the_state_site_of_a_parallel_layer_transfers_the_prefix():
    """Patching site 'state' (both parts' memory) of every layer at the prefix end with another run's
    values reproduces that run on a shared suffix."""
    from probe.methods.support.site_hooks import memory_hooks

    model = _model()
    P = 6
    source, target = tokens(1, 12, seed=1), tokens(1, 12, seed=2)
    target[:, P:] = source[:, P:]
    src_logits, cache = model.run_with_cache(source)

    def patch(t, hook):
        t = t.clone()
        upto = slice(0, P) if hook.name.endswith(("hook_k", "hook_v")) else P - 1  # the KV cache up to P-1
        t[:, upto] = cache[hook.name][:, upto]
        return t

    names = [n for layer in range(2) for n in memory_hooks(model, layer)]
    patched = model.run_with_hooks(target, fwd_hooks=[(n, patch) for n in names])
    torch.testing.assert_close(patched[:, P:], src_logits[:, P:], atol=2e-5, rtol=1e-4)


def test_memory_map_of_a_parallel_layer_is_its_parts_side_by_side():
    """The attention part's pattern and the Mamba-2 part's implicit attention stacked along the head axis,
    the layer's output rebuilt from them (the sum of the parts' rebuilt outputs)."""
    from probe.methods import memory_map

    model = _model()
    toks = tokens(1, 9)
    lm = memory_map(model, toks, layers=[0], with_state_sizes=False).layers[0]
    heads = model.blocks[0].mixer.mamba2.heads
    assert lm.kind == "implicit attention" and lm.matrix.shape == (1, 4 + heads, 9, 9)
    _, cache = model.run_with_cache(toks, names_filter="blocks.0.mixer.attn.hook_pattern")
    torch.testing.assert_close(lm.matrix[:, :4], cache["blocks.0.mixer.attn.hook_pattern"])
    assert lm.reconstruction_error < 1e-5
    assert lm.matrix[:, 4:].triu(1).abs().max() == 0  # causal


def test_a_cross_layer_part_reads_the_forward_s_cross_layer_values():
    """An rwkv7 part of a parallel layer gets the value residual of the first rwkv7 layer, as it would alone:
    its output equals the part run by hand with the cross dictionary of a plain rwkv7 model's forward."""
    model = _model(layout=["rwkv7", "attn+rwkv7"])
    assert MIXERS["attn+rwkv7"].cross_layer
    toks = tokens(1, 7)
    _, cache = model.run_with_cache(toks)
    with torch.no_grad():
        cross: dict = {}
        model.blocks[0].mixer(cache["blocks.0.hook_mixer_in"], None, cross=cross)
        alone, _ = model.blocks[1].mixer.rwkv7(cache["blocks.1.hook_mixer_in"], None, cross=cross)
    torch.testing.assert_close(cache["blocks.1.mixer.hook_rwkv7_out"], alone)
