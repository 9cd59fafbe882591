"""TransformerLens 4's hook names for the recurrent families (probe.hooks.TL_ALIASES) name the same
tensors as probe's: in caches, names filters, hooks() / run_with_hooks and add_hook, with edits that
propagate as through probe's own name."""
from __future__ import annotations

import pytest
import torch

from conftest import make_model, tokens
from probe.errors import UnknownHookError
from probe.hooks import TL_ALIASES, tl_aliases

#: (arch, TL name, probe name) per family
PAIRS = [("mamba", "blocks.0.mixer.hook_ssm_state", "blocks.0.mixer.hook_state"),
         ("mamba", "blocks.1.mixer.hook_ssm_out", "blocks.1.hook_mixer_out"),
         ("mamba2", "blocks.1.mixer.hook_ssm_state", "blocks.1.mixer.hook_state"),
         ("mamba2", "blocks.0.mixer.hook_in", "blocks.0.hook_mixer_in"),
         ("gdn", "blocks.0.linear_attn.hook_ssm_state", "blocks.0.mixer.hook_state"),
         ("gdn", "blocks.1.mixer.hook_ssm_write", "blocks.1.mixer.hook_beta"),
         ("gdn", "blocks.0.linear_attn.hook_log_decay", "blocks.0.mixer.hook_log_decay"),
         ("gdn", "blocks.1.linear_attn.hook_out", "blocks.1.hook_mixer_out"),
         ("hybrid_falcon_h1", "blocks.1.mamba.hook_ssm_state", "blocks.1.mixer.mamba2.hook_state")]
#: the conftest model of each layout entry with aliases
ARCH_OF = {"mamba": "mamba", "mamba2": "mamba2", "gdn": "gdn", "attn+mamba2": "hybrid_falcon_h1"}


@pytest.mark.numerical
@pytest.mark.parametrize("arch, alias, name", PAIRS)
def test_alias_reads_the_same_tensor_in_the_cache_and_a_names_filter(arch, alias, name):
    model = make_model(arch)
    toks = tokens(1, 8)
    _, cache = model.run_with_cache(toks)
    assert torch.equal(cache[alias], cache[name])
    _, only = model.run_with_cache(toks, names_filter=[alias])
    assert list(only.keys()) == [name]
    # the same tensor, computed along another path (fewer hooks: probe may take a faster form)
    torch.testing.assert_close(only[alias], cache[name], rtol=1e-5, atol=1e-6)


@pytest.mark.numerical
@pytest.mark.parametrize("arch", ["mamba", "mamba2", "gdn"])
def test_an_edit_through_the_alias_is_the_edit_through_probes_name(arch):
    """Zeroing the state at position 3 under TL's name propagates to the later logits exactly as under
    probe's (TL's own hook_ssm_state edit would change only position 3's readout)."""
    model = make_model(arch)
    toks = tokens(1, 8)

    def zero_at_3(state, hook):
        state[:, 3] = 0

    clean = model(toks)
    via_alias = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.mixer.hook_ssm_state", zero_at_3)])
    via_name = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.mixer.hook_state", zero_at_3)])
    assert torch.equal(via_alias, via_name)
    assert (via_alias - clean)[:, 5:].abs().max() > 1e-3  # later positions follow the edited state
    torch.testing.assert_close(via_alias[:, :3], clean[:, :3], rtol=1e-5, atol=1e-5)
    seen = []
    model.add_hook("blocks.1.mixer.hook_ssm_out" if arch != "gdn" else "blocks.1.linear_attn.hook_out",
                   lambda t, hook: seen.append(hook.name))
    try:
        model(toks)
    finally:
        model.reset_hooks()
    assert seen == ["blocks.1.hook_mixer_out"]


def test_aliases_exist_only_where_their_family_and_target_do():
    hybrid = make_model("hybrid_lstm_attn")
    assert hybrid.hook_aliases == {}
    with pytest.raises(UnknownHookError):
        hybrid.run_with_cache(tokens(1, 4), names_filter=["blocks.0.mixer.hook_ssm_state"])
    names = {"blocks.0.mixer.hook_state", "blocks.0.hook_mixer_in", "blocks.0.hook_mixer_out"}
    assert tl_aliases(["mamba", "lstm"], names) == {f"blocks.0.{a}": f"blocks.0.{t}"
                                                   for a, t in TL_ALIASES["mamba"].items()}
    # every alias of every family names a hook its mixer really has
    assert set(ARCH_OF) == set(TL_ALIASES)
    for entry, arch in ARCH_OF.items():
        model = make_model(arch)
        assert len(model.hook_aliases) == 2 * len(TL_ALIASES[entry])
        assert set(model.hook_aliases.values()) <= set(model.hook_dict)


def test_a_function_filter_or_hook_predicate_matches_through_the_aliases():
    """A predicate written against TransformerLens 4's names (``n.endswith("hook_ssm_state")``) selects the
    hooks those names alias, in a names filter and as a hook's name; probe's own names still match."""
    model = make_model("mamba")
    toks = tokens(1, 8)
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_ssm_state"))
    assert sorted(cache.keys()) == ["blocks.0.mixer.hook_state", "blocks.1.mixer.hook_state"]
    _, own = model.run_with_cache(toks, names_filter=lambda n: n.endswith("mixer.hook_state"))
    assert sorted(own.keys()) == sorted(cache.keys())
    seen = []
    model.run_with_hooks(toks, fwd_hooks=[(lambda n: "hook_ssm_state" in n, lambda t, hook: seen.append(hook.name))])
    assert seen == ["blocks.0.mixer.hook_state", "blocks.1.mixer.hook_state"]
