"""The ``moe`` MLP kind: parity with transformers' sparse MoE blocks of every router kind (Jamba and
Qwen3-Next softmax then top-k, Granite top-k then softmax, Kimi Linear sigmoid with a selection bias,
grouped choice and scaling), what edits of its hooks mean, that unrouted experts never run, and
the declared options' errors."""
import pytest
import torch

import probe
from conftest import HYBRID_CONFIGS, make_model, randomise, tokens
from probe.errors import ConfigError
from probe.io.convert_moe import moe_weights
from probe.methods import activation_patching, integrated_gradients
from probe.mixers.moe import MixtureOfExperts

transformers = pytest.importorskip("transformers")

D, E, H = 32, 8, 24


def probe_moe(**options) -> MixtureOfExperts:
    cfg = probe.ModelConfig(d_model=D, d_mlp=H, layout=["mamba"], mlp_layout=["moe"], mixer_options={"moe": options})
    return MixtureOfExperts(cfg, 0)


def converted(reference, **options) -> MixtureOfExperts:
    """A probe moe with ``reference``'s weights (every source tensor used)."""
    sd = {k: v.detach() for k, v in reference.state_dict().items()}
    used: set[str] = set()
    moe = probe_moe(**options)
    moe.load_state_dict(moe_weights(sd, "", used))
    assert used == set(sd), f"unused source tensors: {set(sd) - used}"
    return moe


def initialised(block):
    """transformers leaves expert weights as torch.empty: fill every tensor with random values (Kimi's
    ``e_score_correction_bias`` buffer too: zeros would hide a bias that weights instead of choosing)."""
    with torch.no_grad():
        for p in [*block.parameters(), *block.buffers()]:
            p.copy_(torch.randn_like(p) * 0.3)
    return block.eval()


def jamba():
    from transformers import JambaConfig
    from transformers.models.jamba.modeling_jamba import JambaSparseMoeBlock
    c = JambaConfig(hidden_size=D, intermediate_size=H, num_experts=E, num_experts_per_tok=2)
    return JambaSparseMoeBlock(c), {"n_experts": E, "top_k": 2}


def qwen3_next():
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock
    c = Qwen3NextConfig(hidden_size=D, moe_intermediate_size=H, shared_expert_intermediate_size=40, num_experts=E,
                        num_experts_per_tok=3, norm_topk_prob=True)
    return Qwen3NextSparseMoeBlock(c), {"n_experts": E, "top_k": 3, "renormalize": True, "d_shared": 40,
                                        "shared_gate": True}


def granite():
    from transformers import GraniteMoeConfig
    from transformers.models.granitemoe.modeling_granitemoe import GraniteMoeMoE
    c = GraniteMoeConfig(hidden_size=D, intermediate_size=H, num_local_experts=E, num_experts_per_tok=2)
    return GraniteMoeMoE(c), {"n_experts": E, "top_k": 2, "router": "topk_softmax"}


def kimi():
    from transformers import KimiLinearConfig
    from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearMoE
    c = KimiLinearConfig(hidden_size=D, moe_intermediate_size=H, num_experts=E, num_experts_per_token=3,
                         num_shared_experts=2, n_group=4, topk_group=2, routed_scaling_factor=2.446,
                         moe_renormalize=True)
    block = KimiLinearMoE(c)
    return block, {"n_experts": E, "top_k": 3, "router": "sigmoid", "selection_bias": True, "n_group": 4,
                   "topk_group": 2, "renormalize": True, "routed_scaling_factor": 2.446, "d_shared": 2 * H}


REFERENCES = {"jamba": jamba, "qwen3_next": qwen3_next, "granite": granite, "kimi": kimi}


@pytest.mark.numerical
@pytest.mark.parametrize("family", sorted(REFERENCES))
def test_parity_with_transformers_moe_blocks(family):
    """fp32 outputs within 1e-5 of transformers' block (Kimi's selection bias randomised: it moves the choice)."""
    torch.manual_seed(0)
    block, options = REFERENCES[family]()
    initialised(block)
    moe = converted(block, **options)
    x = torch.randn(3, 11, D)
    with torch.no_grad():
        ref, ours = block(x), moe(x)[0]
    assert (ref - ours).abs().max().item() <= 1e-5
    assert ref.abs().max().item() > 0.1  # the comparison is not between two near-zero tensors


def test_kimi_selection_bias_chooses_experts_without_weighting_them():
    """A large bias on one expert puts it in every position's choice, with its weight still its sigmoid score."""
    torch.manual_seed(0)
    moe = randomise(probe_moe(n_experts=E, top_k=2, router="sigmoid", selection_bias=True), 0.3)
    with torch.no_grad():
        moe.selection_bias[5] = 10.0
    logits, weights = capture(moe, torch.randn(2, 7, D), "hook_router_logits", "hook_expert_weights")
    assert (weights[..., 5] != 0).all()
    torch.testing.assert_close(weights[..., 5], torch.sigmoid(logits[..., 5]))


def capture(moe, x, *names):
    seen = {}
    handles = [getattr(moe, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.clone()))
               for n in names]
    with torch.no_grad():
        moe(x)
    for h in handles:
        h.remove()
    return [seen[n] for n in names]


def dense(moe, x, weights):
    """``sum_e w_e expert_e(x)`` with every expert run on every position (the definition)."""
    h = torch.nn.functional.silu(torch.einsum("ehd,btd->bteh", moe.W_gate, x)) * torch.einsum("ehd,btd->bteh",
                                                                                               moe.W_in, x)
    return torch.einsum("bte,bteh,edh->btd", weights, h, moe.W_out)


def test_expert_weight_edits_reweight_drop_and_reroute():
    """The output is sum_e w_e expert_e(x) for the hooked w: a scaled, a zeroed and a new expert all count."""
    torch.manual_seed(0)
    moe = randomise(probe_moe(n_experts=E, top_k=2), 0.3)
    x = torch.randn(2, 5, D)
    (w,) = capture(moe, x, "hook_expert_weights")
    edited = w.clone()
    chosen = w[0, 1].nonzero().flatten()
    unchosen = (w[0, 2] == 0).nonzero().flatten()[0]
    edited[0, 1, chosen[0]] *= 3.0          # re-weight
    edited[0, 1, chosen[1]] = 0.0           # drop
    edited[0, 2, unchosen] = 0.7            # re-route to an expert outside the top-k
    moe.hook_expert_weights.add_hook(lambda t, hook: edited)
    with torch.no_grad():
        y = moe(x)[0]
    moe.hook_expert_weights.remove_hooks()
    torch.testing.assert_close(y, dense(moe, x, edited), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(y[0, 2], dense(moe, x, w)[0, 2])


def test_router_logit_edits_reroute():
    """Raising one logit far above the rest makes that expert take (almost) all the weight."""
    torch.manual_seed(0)
    moe = randomise(probe_moe(n_experts=E, top_k=2), 0.3)
    x = torch.randn(1, 4, D)

    def favour(t, hook):
        t[:, 3, 6] = 50.0

    moe.hook_router_logits.add_hook(favour)
    (w,) = capture(moe, x, "hook_expert_weights")
    moe.hook_router_logits.remove_hooks()
    assert w[0, 3, 6] > 0.999


def test_unrouted_experts_never_run():
    """An expert no position is routed to does not run: NaN weights in it leave the output finite."""
    torch.manual_seed(0)
    moe = randomise(probe_moe(n_experts=E, top_k=1), 0.3)
    x = torch.randn(1, 6, D)
    (w,) = capture(moe, x, "hook_expert_weights")
    idle = (w.reshape(-1, E) == 0).all(0).nonzero().flatten()
    assert idle.numel() > 0
    with torch.no_grad():
        moe.W_out[idle] = float("nan")
        assert torch.isfinite(moe(x)[0]).all()


def test_shared_expert_is_hooked_and_gated():
    torch.manual_seed(0)
    moe = randomise(probe_moe(n_experts=4, top_k=1, d_shared=16, shared_gate=True), 0.3)
    x = torch.randn(1, 3, D)
    (shared,) = capture(moe, x, "hook_shared_out")
    with torch.no_grad():
        expected = torch.sigmoid(moe.shared_gate(x)) * moe.shared(x)[0]
    torch.testing.assert_close(shared, expected)
    moe.hook_shared_out.add_hook(lambda t, hook: torch.zeros_like(t))
    with torch.no_grad():
        without = moe(x)[0]
    moe.hook_shared_out.remove_hooks()
    (w,) = capture(moe, x, "hook_expert_weights")
    torch.testing.assert_close(without, dense(moe, x, w), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"n_expert": 4}, "Unknown option 'n_expert' for mixer 'moe'"),
    ({"router": "softmax_topk"}, "router='softmax_topk' is not one of"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"renormalize": "yes"}, "renormalize must be True or False"),
    ({"n_experts": 4, "top_k": 5}, "top_k=5 exceeds"),
    ({"n_experts": 6, "n_group": 4}, "not divisible by n_group"),
    ({"n_experts": 8, "n_group": 4, "topk_group": 1, "top_k": 3}, "top_k=3 exceeds the 2 experts"),
    ({"shared_gate": True}, "needs a shared expert"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        probe.HookedLM(probe.ModelConfig(d_model=D, layout=["mamba"], mlp_layout=["moe"],
                                         mixer_options={"moe": options}))


def test_mixer_options_names_the_option_owners():
    with pytest.raises(ConfigError, match="unknown mixer 'mo'.*moe"):
        probe.ModelConfig(d_model=D, layout=["mamba"], mixer_options={"mo": {}})
    with pytest.raises(ConfigError, match="unknown mixer 'rwkv_channel_mix'"):  # it reads the rwkv options
        probe.ModelConfig(d_model=D, layout=["rwkv"], mixer_options={"rwkv_channel_mix": {}})


def test_integrated_gradients_are_complete_when_no_routing_switch_can_happen():
    """With every expert chosen (k = E) the layer is smooth and IG's completeness holds; with k < E the
    output jumps at routing switches (``continuous`` False) and the contract test expects IG to say so."""
    dense = {**HYBRID_CONFIGS["hybrid_jamba"]["mixer_options"]["moe"], "top_k": 4}
    model = make_model("hybrid_jamba", mixer_options={"mamba": {"inner_norms": True}, "moe": dense})
    assert model.blocks[1].mlp.continuous and not make_model("hybrid_jamba").blocks[1].mlp.continuous
    res = integrated_gradients(model, tokens(2, 10), steps=64, chunk=64)
    assert res.completeness_error.max().item() < 1e-3 and bool(res.converged.all())


def test_every_layer_takes_moe_from_the_config_mlp():
    model = probe.HookedLM(probe.ModelConfig(d_model=D, layout=["mamba", "attn"], mlp="moe", d_mlp=16,
                                             mixer_options={"moe": {"n_experts": 4, "top_k": 1}}))
    assert model.cfg.mlp_layout == ["moe", "moe"]
    assert all(isinstance(b.mlp, MixtureOfExperts) and b.mlp.d_expert == 16 for b in model.blocks)


def test_selection_bias_is_saved_and_loaded(tmp_path):
    """The selection bias is a buffer (no gradient moves it) that a checkpoint keeps."""
    options = {"n_experts": 4, "top_k": 2, "router": "sigmoid", "selection_bias": True}
    cfg = probe.ModelConfig(d_model=D, layout=["attn"], mlp="moe", d_mlp=16, mixer_options={"moe": options})
    model = probe.HookedLM(cfg)
    with torch.no_grad():
        model.blocks[0].mlp.selection_bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    loaded = probe.load(model.save(tmp_path / "m"))
    torch.testing.assert_close(loaded.blocks[0].mlp.selection_bias, model.blocks[0].mlp.selection_bias)
    assert "blocks.0.mlp.selection_bias" not in dict(model.named_parameters())
    toks = tokens(1, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(toks), model(toks))


def test_routing_is_a_patching_site():
    """``expert_weights`` names ``blocks.{l}.mlp.hook_expert_weights``: patching the clean routing into the
    corrupted run moves the metric at the MoE layer; a layer without experts has no such site (NaN)."""
    model = make_model("hybrid_jamba")
    clean, corrupted = tokens(1, 8, seed=1), tokens(1, 8, seed=2)
    res = activation_patching(model, clean, corrupted, answer=5, contrast=7, sites=["expert_weights"], positions=[7],
                              normalize=False)
    moe_layer = model.cfg.mlp_layout.index("moe")
    assert torch.isnan(res.scores[0, 1 - moe_layer]).all()
    with torch.no_grad():
        base = model(corrupted)[0, -1]
    assert abs(float(res.scores[0, moe_layer, 0]) - float(base[5] - base[7])) > 1e-4
