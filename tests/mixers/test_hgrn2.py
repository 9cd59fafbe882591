"""HGRN2: the mixer against the recurrence read back from its hooks, and the fla converter
against a line-by-line pure-torch implementation of flash-linear-attention's HGRN2 forward pass
(the gated-linear-attention kernel itself: tests/ops/test_gla.py)."""
import pytest
import torch
import torch.nn.functional as F

import probe
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_hgrn2 import hgrn2_from_fla, lower_bound_values

# -- the mixer -------------------------------------------------------------------------------


def _model(layout=("hgrn2", "hgrn2"), seed=0, **kw):
    torch.manual_seed(seed)
    cfg = probe.ModelConfig(vocab_size=50, d_model=16, n_heads=4, layout=list(layout), d_mlp=32, **kw)
    model = probe.HookedLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def test_hooks_follow_the_recurrence():
    model = _model()
    toks = torch.randint(0, 50, (2, 21), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(toks)
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        q, f, k, v, S = (cache[f"blocks.{i}.mixer.hook_{n}"] for n in ("q", "forget", "input", "value", "state"))
        lb = cache[f"blocks.{i}.mixer.hook_lower_bound"]
        assert S.shape == (2, 21, 4, 4, 4)
        assert torch.all(f >= lb - 1e-6) and torch.allclose(k, 1 - f)
        prev = torch.zeros_like(S[:, 0])
        for t in range(21):
            expected = f[:, t, ..., None] * prev + k[:, t, ..., None] * v[:, t, :, None, :]
            torch.testing.assert_close(S[:, t], expected, rtol=1e-5, atol=1e-6)
            prev = S[:, t]
        o = torch.einsum("bthk,bthkv->bthv", q, S) * mixer.e ** -0.5
        with torch.no_grad():
            y = mixer.o_proj(mixer.g_norm(o.flatten(2)))
        torch.testing.assert_close(y, cache[f"blocks.{i}.hook_mixer_out"], rtol=1e-4, atol=1e-5)


def test_lower_bound_grows_with_depth():
    model = probe.HookedLM(probe.ModelConfig(d_model=16, n_heads=4, layout=["hgrn2"] * 4))
    assert [float(b.mixer.lower_bound.detach()[0]) for b in model.blocks] == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("T", [40, 300])
def test_chunked_sequential_and_state_forms_agree_in_the_model(T):
    model = _model()
    toks = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = model(toks)
        _, cache = model.run_with_cache(toks, names_filter=lambda n: "hook_state" in n)  # state form
        for b in model.blocks:
            b.mixer.method = "sequential"
        slow = model(toks)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.run_with_hooks(toks, fwd_hooks=[("blocks.1.mixer.hook_state", lambda t, hook: t)]),
                               slow, rtol=1e-4, atol=1e-4)


def test_extreme_forget_gates_stay_finite():
    model = _model()
    with torch.no_grad():
        model.blocks[0].mixer.f_proj.weight.mul_(200)  # forget gates saturate at 0 and 1
        model.blocks[1].mixer.lower_bound.fill_(0.9999)
    toks = torch.randint(0, 50, (1, 500), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast = model(toks)
        for b in model.blocks:
            b.mixer.method = "sequential"
        slow = model(toks)
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_bad_config_is_named():
    for bad in (5, 0, 2.5):
        cfg = probe.ModelConfig(d_model=16, layout=["hgrn2"], mixer_options={"hgrn2": {"expand_ratio": bad}})
        with pytest.raises(ConfigError, match="expand_ratio"):
            probe.HookedLM(cfg)


# -- the converter: flash-linear-attention's HGRN2ForCausalLM, line by line -------------------


def fla_config(**kw):
    cfg = dict(hidden_size=32, num_hidden_layers=3, expand_ratio=8, num_heads=None, use_short_conv=False,
               use_lower_bound=True, hidden_act="swish", norm_eps=1e-6, attn=None, vocab_size=61,
               tie_word_embeddings=False, intermediate_size=48)
    cfg.update(kw)
    return cfg


def fla_state_dict(cfg, seed=0):
    """A random state dict in fla's HGRN2ForCausalLM layout."""
    g = torch.Generator().manual_seed(seed)
    d, n, m, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]

    def w(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    sd = {"model.embeddings.weight": w(vocab, d, std=1.0), "model.norm.weight": 1 + w(d, std=0.1),
          "model.lower_bounds": w(n, d, std=1.0)}
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = w(vocab, d)
    for i in range(n):
        p = f"model.layers.{i}."
        sd[p + "attn_norm.weight"] = 1 + w(d, std=0.1)
        sd[p + "mlp_norm.weight"] = 1 + w(d, std=0.1)
        for name in ("q_proj", "f_proj", "i_proj", "o_proj"):
            sd[p + f"attn.{name}.weight"] = w(d, d, std=d ** -0.5)
        sd[p + "attn.g_norm.weight"] = 1 + w(d, std=0.1)
        sd[p + "mlp.gate_proj.weight"] = w(m, d, std=d ** -0.5)
        sd[p + "mlp.up_proj.weight"] = w(m, d, std=d ** -0.5)
        sd[p + "mlp.down_proj.weight"] = w(d, m, std=m ** -0.5)
    return sd


def fla_hgrn2_logits(sd, cfg, input_ids):
    """fla's HGRN2ForCausalLM.forward in plain torch: modeling_hgrn2.py (HGRN2Model/Block),
    layers/hgrn2.py (HGRN2Attention, no short conv) and the naive recurrent GLA of ops/gla."""
    def rms_norm(x, weight, eps):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    d, eps = cfg["hidden_size"], cfg["norm_eps"]
    expand = cfg["expand_ratio"] or d // cfg["num_heads"]
    num_heads = d // expand
    head_f_dim, head_i_dim = expand, d // num_heads
    hidden_states = sd["model.embeddings.weight"][input_ids]
    if cfg["use_lower_bound"]:
        lower_bounds = sd["model.lower_bounds"].softmax(0, dtype=torch.float)
        lower_bounds = lower_bounds.cumsum(0) - lower_bounds[0]
    for layer_idx in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer_idx}."
        lower_bound = lower_bounds[layer_idx] if cfg["use_lower_bound"] else None
        residual = hidden_states
        hidden_states = rms_norm(hidden_states, sd[p + "attn_norm.weight"], eps)
        # HGRN2Attention.forward
        q = hidden_states @ sd[p + "attn.q_proj.weight"].T
        f = hidden_states @ sd[p + "attn.f_proj.weight"].T
        i = hidden_states @ sd[p + "attn.i_proj.weight"].T
        q = F.silu(q)
        g = F.logsigmoid(f)
        if lower_bound is not None and layer_idx > 0:
            g = torch.logaddexp(lower_bound.log(), torch.log1p(-lower_bound) + g)
        k = 1 - g.exp()
        q, k, g = (x.unflatten(-1, (-1, head_f_dim)) for x in (q, k, g))
        i = i.unflatten(-1, (-1, head_i_dim))
        # naive_recurrent_gla: [B, H, T, K] layout, scale K ** -0.5
        q, k, v, gk = (x.transpose(1, 2) for x in (q, k, i, g))
        B, H, T, K = q.shape
        o = torch.zeros_like(v)
        h = q.new_zeros(B, H, K, v.shape[-1])
        for t in range(T):
            q_t = q[:, :, t] * K ** -0.5
            h = h * gk[:, :, t].exp()[..., None] + k[:, :, t, :, None] * v[:, :, t, None, :]
            o[:, :, t] = (q_t[..., None] * h).sum(-2)
        o = o.transpose(1, 2).flatten(-2)
        o = rms_norm(o, sd[p + "attn.g_norm.weight"], 1e-5) @ sd[p + "attn.o_proj.weight"].T  # rms_norm_linear
        hidden_states = residual + o
        residual = hidden_states
        hidden_states = rms_norm(hidden_states, sd[p + "mlp_norm.weight"], eps)
        gate, up = hidden_states @ sd[p + "mlp.gate_proj.weight"].T, hidden_states @ sd[p + "mlp.up_proj.weight"].T
        hidden_states = residual + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    hidden_states = rms_norm(hidden_states, sd["model.norm.weight"], eps)
    head = sd["model.embeddings.weight"] if cfg["tie_word_embeddings"] else sd["lm_head.weight"]
    return hidden_states @ head.T


@pytest.mark.parametrize("variant", [{}, {"tie_word_embeddings": True}, {"use_lower_bound": False},
                                     {"expand_ratio": None, "num_heads": 2}])
def test_converter_matches_fla_forward(variant):
    cfg = fla_config(**variant)
    sd = fla_state_dict(cfg)
    if not cfg["use_lower_bound"]:
        del sd["model.lower_bounds"]
    toks = torch.randint(0, cfg["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(3))
    model = hgrn2_from_fla(sd, cfg)
    with torch.no_grad():
        ours, ref = model(toks), fla_hgrn2_logits(sd, cfg, toks)
    assert (ours - ref).abs().max() < 1e-4, (ours - ref).abs().max()
    assert model.cfg.norm_eps == 1e-6 and model.blocks[0].mixer.g_norm.eps == 1e-5
    # a segmented run and generation-style steps give the same logits as the whole
    with torch.no_grad():
        first, st = model(toks[:, :25], return_states=True)
        second = model(toks[:, 25:], states=st)
    torch.testing.assert_close(torch.cat([first, second], 1), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.numerical
def test_a_saved_fla_folder_loads_offline_with_its_tokenizer(tmp_path):
    """An fla HGRN2 checkpoint folder (config.json, model.safetensors, tokenizer files) converts through
    probe.from_hf without fla; without tokenizer files it is refused, naming them."""
    import json

    from safetensors.torch import save_file

    from hub_folder import save_tokenizer, text

    cfg = fla_config()
    sd = fla_state_dict(cfg)
    folder = tmp_path / "hgrn2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "hgrn2", **cfg}))
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="holds no tokenizer files"):
        probe.from_hf(str(folder))
    tok = save_tokenizer(folder, cfg["vocab_size"])
    model = probe.from_hf(str(folder))
    ids = model.to_tokens(text(12, cfg["vocab_size"]), prepend_bos=False)
    assert ids[0].tolist() == tok.encode(text(12, cfg["vocab_size"]))
    with torch.no_grad():
        assert (model(ids) - fla_hgrn2_logits(sd, cfg, ids)).abs().max() < 1e-4


def test_lower_bound_mapping():
    lbs = torch.randn(4, 8)
    values = lower_bound_values(lbs)
    assert torch.all(values[0] == 0) and torch.all(values[1:] > 0) and torch.all(values < 1)
    assert torch.all(values[1:] >= values[:-1])  # increasing with depth
    cfg = fla_config(num_hidden_layers=4, hidden_size=8, expand_ratio=4)
    sd = fla_state_dict(cfg)
    sd["model.lower_bounds"] = lbs
    model = hgrn2_from_fla(sd, cfg)
    for i in range(4):
        torch.testing.assert_close(model.blocks[i].mixer.lower_bound.data, values[i])


def test_converter_errors():
    cfg = fla_config()
    sd = fla_state_dict(cfg)
    with pytest.raises(ConfigError, match="use_short_conv"):
        hgrn2_from_fla(sd, fla_config(use_short_conv=True))
    with pytest.raises(ConfigError, match="attention"):
        hgrn2_from_fla(sd, fla_config(attn={"layers": [1], "num_heads": 2}))
    with pytest.raises(ConfigError, match="config"):
        hgrn2_from_fla(sd)
    bad = dict(sd)
    bad["model.layers.1.attn.q_proj.weight"] = torch.zeros(32, 31)
    with pytest.raises(CheckpointError, match="q_proj"):
        hgrn2_from_fla(bad, cfg)
    missing = {k: v for k, v in sd.items() if "f_proj" not in k}
    with pytest.raises(CheckpointError, match="f_proj"):
        hgrn2_from_fla(missing, cfg)


def test_model_gradients_are_finite_and_reach_the_lower_bound():
    model = _model()
    toks = torch.randint(0, 50, (2, 30), generator=torch.Generator().manual_seed(9))
    model(toks, return_type="loss").backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[1].mixer.lower_bound.grad.abs().sum() > 0
