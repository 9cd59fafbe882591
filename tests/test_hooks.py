"""The hook vocabulary (probe.hooks) is the one the models fire: block sites, state hooks, names."""
import pytest

from conftest import ARCHS, make_model
from probe.hooks import (ATTENTION_ALIAS, BLOCK_SITES, MLP_SITES, RESIDUAL_SITES, act_name, is_state_hook, layer_of,
                         residual_before, site_label)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_block_fires_the_sites_the_vocabulary_names(arch):
    model = make_model(arch)
    for i, block in enumerate(model.blocks):
        fired = {n.rsplit(".hook_", 1)[1] for n in model.hook_dict if n.startswith(f"blocks.{i}.hook_")}
        want = set(RESIDUAL_SITES) | ({ATTENTION_ALIAS} if block.mixer.is_attention else set())
        want |= set(MLP_SITES) if block.mlp is not None else set()
        assert fired == want and fired <= set(BLOCK_SITES)
        assert all(act_name(site, i) in model.hook_dict for site in fired)
    assert set(model.state_hook_names()) == {n for n in model.hook_dict if is_state_hook(n)}


def test_names_of_sites():
    assert act_name("resid_post", 2) == "blocks.2.hook_resid_post"
    assert act_name("hook_state_c", 1) == "blocks.1.mixer.hook_state_c"
    assert act_name("attn_out", 0) == "blocks.0.hook_attn_out" and act_name("hook_embed") == "hook_embed"
    assert residual_before(0) == "blocks.0.hook_resid_pre" and residual_before(3) == "blocks.2.hook_resid_post"
    assert layer_of("blocks.12.mixer.hook_state") == 12 and layer_of("hook_embed") is None
    assert site_label("blocks.3.mixer.hook_forget") == "mixer.hook_forget" and site_label("state") == "state"
