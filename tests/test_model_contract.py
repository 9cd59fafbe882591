"""The contract every architecture keeps (parametrised over every registered mixer and hybrids),
on the device ``PROBE_TEST_DEVICE`` names (``conftest.DEVICE``, default cpu).

Segmented == whole, generation == full recomputation, state patching transfers the whole
memory, edits to any state hook propagate as if the recurrence had carried them, caches
are consistent with the forward pass, and save -> load is exact.
"""
import pytest
import torch

import probe
from conftest import ARCHS, DEVICE, layouts, make_model, recurrent_archs, tokens

ATOL = 2e-5


def _close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_cache_names_and_shapes(arch):
    model = make_model(arch, device=DEVICE)
    toks = tokens(2, 12, device=DEVICE)
    logits, cache = model.run_with_cache(toks)
    assert logits.shape == (2, 12, 257)
    d = model.cfg.d_model
    assert cache["hook_embed"].shape == (2, 12, d)
    for i, name in enumerate(model.cfg.layout):
        for site in ("resid_pre", "resid_mid", "resid_post", "mixer_in", "mixer_out", "mlp_in", "mlp_out"):
            assert cache[f"blocks.{i}.hook_{site}"].shape == (2, 12, d)
            assert torch.equal(cache[site, i], cache[f"blocks.{i}.hook_{site}"])
        if name == "attn":
            assert cache[f"blocks.{i}.mixer.hook_pattern"].shape == (2, 4, 12, 12)
            kv_heads_and_width = model.blocks[i].mixer.state_shapes()["k"][1:]  # grouped-query: fewer kv heads
            assert cache[f"blocks.{i}.mixer.hook_k"].shape == (2, 12, *kv_heads_and_width)
            assert torch.equal(cache[f"blocks.{i}.hook_attn_out"], cache[f"blocks.{i}.hook_mixer_out"])
        for key, shape in model.blocks[i].mixer.state_shapes().items():
            part, _, key = key.rpartition(".")  # parallel mixers: "mamba2.state" is mixer.mamba2.hook_state
            if "attn" in (name, part):
                continue
            assert cache[f"blocks.{i}.mixer.{part}{'.' if part else ''}hook_{key}"].shape == (2, 12, *shape), key
    assert cache["ln_final.hook_normalized"].shape == (2, 12, d)
    assert torch.equal(cache["hook_logits"], logits.detach())


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_intermediates_are_what_the_forward_used(arch):
    model = make_model(arch, device=DEVICE)
    toks = tokens(2, 10, device=DEVICE)
    logits, cache = model.run_with_cache(toks)
    cross = {}  # what cross-layer mixers hand to later layers (Mixer.cross_layer: RWKV-7's first-layer values)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            _close(cache["resid_pre", i] + cache["mixer_out", i], cache["resid_mid", i])
            _close(cache["resid_mid", i] + cache["mlp_out", i], cache["resid_post", i])
            # a layer reading a shared block adds its contribution to the mixer's input only
            shared = cache[f"blocks.{i}.shared.hook_out"] if block.shared is not None else 0
            # pre-norm: mixer_in = ln1(resid_pre); post-norm: mixer_out = ln1(the mixer's output)
            read, write = (lambda t: t, block.ln1) if block.post_norm else (block.ln1, lambda t: t)
            _close(read(cache["resid_pre", i] + shared), cache["mixer_in", i])
            # the mixer run again on its cached input gives its cached output
            extra = {"cross": cross} if block.mixer.cross_layer else {}  # replayed in layer order
            _close(write(block.mixer(cache["mixer_in", i], **extra)[0]), cache["mixer_out", i])
            if i + 1 < model.cfg.n_layers:
                assert torch.equal(cache["resid_post", i], cache["resid_pre", i + 1])
        final = model.ln_final(cache["resid_post", model.cfg.n_layers - 1]) @ model.unembed_matrix + model.b_U
        _close(final, logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_fire_once_and_ablation_changes_logits(arch):
    model = make_model(arch, device=DEVICE)
    toks = tokens(1, 10, device=DEVICE)
    clean = model(toks)
    counts = {}

    def count(t, hook):
        counts[hook.name] = counts.get(hook.name, 0) + 1

    model.run_with_hooks(toks, fwd_hooks=[(lambda n: True, count)])
    assert set(counts) == set(model.hook_dict) and set(counts.values()) == {1}
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())  # removed afterwards
    for name in model.hook_dict:
        if ".mixer." not in name or "hook_scale" in name:
            continue
        ablated = model.run_with_hooks(toks, fwd_hooks=[(name, lambda t, hook: torch.zeros_like(t))])
        assert not torch.allclose(ablated, clean), f"zero-ablating {name} changed nothing"


@pytest.mark.parametrize("arch", ARCHS)
def test_segmented_equals_whole(arch):
    model = make_model(arch, device=DEVICE)
    toks = tokens(2, 20, device=DEVICE)
    with torch.no_grad():
        whole = model(toks)
        first, st = model(toks[:, :7], return_states=True)
        second, st = model(toks[:, 7:8], states=st, return_states=True)
        third, st = model(toks[:, 8:], states=st, return_states=True)
    _close(torch.cat([first, second, third], dim=1), whole)
    assert st.position == 20


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_with_carried_state_equals_recomputation(arch):
    model = make_model(arch, device=DEVICE)
    prompt = tokens(2, 6, device=DEVICE)
    out = model.generate(prompt, max_new_tokens=8, return_type="tokens")
    assert out.shape == (2, 14)
    with torch.no_grad():
        full = model(out)
    # greedy: each generated token is the argmax of the full recomputation at the previous position
    assert torch.equal(full[:, 5:-1].argmax(-1), out[:, 6:])
    sampled = model.generate(prompt, max_new_tokens=5, temperature=1.0, top_k=5, seed=3, return_type="tokens")
    again = model.generate(prompt, max_new_tokens=5, temperature=1.0, top_k=5, seed=3, return_type="tokens")
    assert torch.equal(sampled, again)


def memory_hooks(model, source_cache, position):
    """Hooks that overwrite all memory at ``position`` with the source run's: every hook_state*
    at that position, and (attention) the keys/values of every position up to it."""
    hooks = []
    for name in model.hook_dict:
        if "hook_state" in name:
            sl = (slice(None), position)
        elif name.endswith(("mixer.hook_k", "mixer.hook_v", "shared.hook_k", "shared.hook_v", "mixer.hook_kv_latent",
                            "mixer.hook_k_rot", "mixer.attn.hook_k", "mixer.attn.hook_v")):
            # KV cache entries (mla: latent and shared rotary key; parallel mixers: the attn part's)
            sl = (slice(None), slice(0, position + 1))
        else:
            continue

        def patch(t, hook, sl=sl):
            t = t.clone()
            t[sl] = source_cache[hook.name][sl]
            return t

        hooks.append((name, patch))
    return hooks


@pytest.mark.parametrize("arch", ARCHS)
def test_patching_all_state_at_prefix_end_transfers_the_run(arch):
    model = make_model(arch, device=DEVICE)
    P = 9
    source, target = tokens(2, 16, seed=1, device=DEVICE), tokens(2, 16, seed=2, device=DEVICE)
    target[:, P:] = source[:, P:]  # shared suffix, different prefixes
    src_logits, src_cache = model.run_with_cache(source)
    patched = model.run_with_hooks(target, fwd_hooks=memory_hooks(model, src_cache, P - 1))
    _close(patched[:, P:], src_logits[:, P:])
    if arch != "ff":  # a model without memory cannot tell the prefixes apart anyway
        assert not torch.allclose(model(target)[:, P:], src_logits[:, P:])


def _edit_hooks(names, positions, inplace, offset=0):
    """Hooks writing fixed values (seeded by absolute position ``offset + p``) at ``positions``.

    Values that do not depend on what the hook sees make the edit identical whether the hook
    fires once on the whole sequence or once per segment."""
    def edit(t, hook):
        if not inplace:
            t = t.clone()
        for p in positions:
            if 0 <= p < t.shape[1]:
                g = torch.Generator().manual_seed(offset + p)
                t[:, p] = 0.5 * torch.rand(t[:, p].shape, generator=g).to(t.device, t.dtype)
        return None if inplace else t

    return [(n, edit) for n in names]


def _memory_names(model, layer):
    names = [n for n in model.hook_dict if n.startswith(f"blocks.{layer}.") and "hook_state" in n]
    # a layer without recurrent state: the per-position entries of its cache (attention: k, v)
    return names or [f"blocks.{layer}.mixer.hook_{key}" for key in model.blocks[layer].mixer.state_shapes()]


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "ff"])
def test_state_edits_propagate_like_carried_state(arch, inplace):
    """Editing state at positions t1 < t2 in one run equals running three segments with the edit
    applied at each segment's last position and the state carried across."""
    model = make_model(arch, device=DEVICE)
    toks = tokens(2, 18, device=DEVICE)
    layer = next(i for i, m in enumerate(model.cfg.layout) if m != "ff")
    for name in _memory_names(model, layer):
        t1, t2 = 4, 11
        hooked = model.run_with_hooks(toks, fwd_hooks=_edit_hooks([name], [t1, t2], inplace))
        pieces, st, start = [], None, 0
        for end in (t1 + 1, t2 + 1, 18):
            seg_hooks = _edit_hooks([name], [end - 1 - start] if end <= t2 + 1 else [], inplace, offset=start)
            with model.hooks(fwd_hooks=seg_hooks):
                out, st = model(toks[:, start:end], states=st, return_states=True)
            pieces.append(out)
            start = end
        _close(hooked, torch.cat(pieces, 1))
        assert not torch.allclose(hooked[:, t1 + 1 :], model(toks)[:, t1 + 1 :]), name


@pytest.mark.parametrize("arch", recurrent_archs())
def test_edited_state_is_the_state_carried(arch):
    """After editing hook_state* at the last position, the returned state holds the edited value."""
    model = make_model(arch, device=DEVICE)
    toks = tokens(1, 8, device=DEVICE)
    layer = next(i for i, m in enumerate(model.cfg.layout) if model.blocks[i].mixer.recurrent)
    for name in _memory_names(model, layer):
        key = name.rsplit("hook_", 1)[1]
        part = name.split(".", 2)[2].rsplit(".hook_", 1)[0]  # the module path in the block: "mixer.mamba2"
        _, cache = model.run_with_cache(toks, names_filter=[name])
        with model.hooks(fwd_hooks=_edit_hooks([name], [7], False)):
            _, st = model(toks, return_states=True)
        expected = 0.5 * torch.rand(cache[name][:, 7].shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
        _close(st.layers[layer][part][key], expected, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_roundtrip(arch, tmp_path):
    model = make_model(arch, device=DEVICE)
    toks = tokens(2, 9, device=DEVICE)
    model.save(tmp_path / "m")
    loaded = probe.load(tmp_path / "m").to(DEVICE)
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        assert torch.equal(model(toks), loaded(toks))


@pytest.mark.parametrize("arch", ARCHS)
def test_state_positions_keeps_only_those(arch):
    """The states at the asked positions and every other hook as in the full cache, bit for bit: a tiny
    model's states are below WHOLE_RUN_BYTES, so they come from the whole-sequence run (the pieces,
    equal to rounding, are tested in tests/test_state_positions.py)."""
    model = make_model(arch, device=DEVICE)
    toks = tokens(1, 10, device=DEVICE)
    _, full = model.run_with_cache(toks)
    _, part = model.run_with_cache(toks, state_positions=[3, 9])
    for name in full.state_names():
        assert torch.equal(part[name], full[name][:, [3, 9]]), name
    assert set(part.keys()) == set(full.keys())
