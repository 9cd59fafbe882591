"""The RWKV-7 converter against flash-linear-attention's ``RWKV7ForCausalLM``, from a checkpoint folder.

fla's model and layer classes import Triton, so the reference here is fla's forward assembled on the
CPU: the glue of ``fla/models/rwkv7/modeling_rwkv7.py`` and ``fla/layers/rwkv7.py`` (the non-fused
``fuse_norm``-free path: embeddings, ``pre_norm``, LoRAs, the value-residual ``torch.lerp``, the l2
normalised removal key) transcribed line by line, and every step fla itself has a CPU reference for
taken from fla-core's own files (``tests/fla_reference.py``): ``token_shift_ref``,
``torch_addcmul_rwkv7``, ``k_update_ref``, ``dplr_recurrence`` (the generalised delta rule),
``group_norm_ref``, ``gate_output_correction_ref``, ``layer_norm_ref``. What is not compared: fla's
Triton kernels (``chunk_rwkv7``, ``fused_mul_recurrent_rwkv7``, the fused norms), which fla tests
against these same references on GPUs.

The checkpoint is a random state dict in fla's names with a ``config.json`` as fla's ``RWKV7Config``
writes it, saved as safetensors with a tokenizer; ``probe.from_hf(folder)`` reads it without fla.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import probe
from fla_reference import fla_function, fla_naive
from hub_folder import save_tokenizer, text
from probe.errors import CheckpointError, ConfigError

VOCAB, D, LAYERS, HEAD = 60, 32, 3, 8


def fla_config(**kw) -> dict:
    """``config.json`` of a tiny fla ``RWKV7Config`` (the fields fla's class stores)."""
    n, d = kw.get("num_hidden_layers", LAYERS), kw.get("hidden_size", D)
    config = {"model_type": "rwkv7", "architectures": ["RWKV7ForCausalLM"], "attn_mode": "chunk",
              "hidden_size": d, "hidden_ratio": 4, "intermediate_size": None, "num_hidden_layers": n,
              "head_dim": HEAD, "num_heads": d // HEAD, "decay_low_rank_dim": 16, "gate_low_rank_dim": 24,
              "a_low_rank_dim": 8, "v_low_rank_dim": 12, "hidden_act": "sqrelu", "max_position_embeddings": 2048,
              "norm_first": True, "norm_bias": True, "norm_eps": 1e-5, "attn": None, "use_cache": True,
              "pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
              "initializer_range": 0.02, "fuse_norm": True, "fuse_cross_entropy": True, "use_l2warp": True,
              "vocab_size": VOCAB, "value_dim": [d] * n}
    return {**config, **kw}


def fla_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ``RWKV7ForCausalLM`` state dict for ``config`` (fla's parameter names and shapes)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, scale=0.3: torch.randn(*shape, generator=g) * scale  # noqa: E731
    d, n, V = config["hidden_size"], config["num_hidden_layers"], config["value_dim"][0]
    ranks = {"w_lora": config["decay_low_rank_dim"], "a_lora": config["a_low_rank_dim"],
             "g_lora": config["gate_low_rank_dim"], "v_lora": config["v_low_rank_dim"]}
    widths = {"w_lora": d, "a_lora": d, "g_lora": V, "v_lora": V}
    d_mlp = 32 * math.ceil(d * config["hidden_ratio"] / 32)
    norms = [f"model.layers.{i}.{s}" for i in range(n) for s in ("attn_norm", "ffn_norm")] + ["model.norm"]
    norms += ["model.layers.0.pre_norm"] if config["norm_first"] else []
    sd = {"model.embeddings.weight": rnd(VOCAB, d, scale=1.0), "lm_head.weight": rnd(VOCAB, d)}
    for name in norms:
        sd[name + ".weight"] = 1 + rnd(d, scale=0.1)
        if config["norm_bias"]:
            sd[name + ".bias"] = rnd(d, scale=0.1)
    for i in range(n):
        a, f = f"model.layers.{i}.attn.", f"model.layers.{i}.ffn."
        sd.update({a + x: torch.rand(1, 1, d, generator=g) for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")})
        sd.update({a + "k_k": 0.7 + rnd(d, scale=0.1), a + "k_a": 1 + rnd(d, scale=0.1),
                   a + "r_k": rnd(d // HEAD, HEAD)})
        sd.update({a + "r_proj.weight": rnd(d, d), a + "k_proj.weight": rnd(d, d), a + "v_proj.weight": rnd(V, d),
                   a + "o_proj.weight": rnd(d, V), a + "g_norm.weight": 1 + rnd(V, scale=0.1),
                   a + "g_norm.bias": rnd(V, scale=0.1)})
        for lora, rank in ranks.items():
            if lora == "v_lora" and i == 0:
                continue
            sd[f"{a}{lora}.lora.0.weight"] = rnd(rank, d)
            sd[f"{a}{lora}.lora.2.weight"] = rnd(widths[lora], rank)
            if lora != "g_lora":
                sd[f"{a}{lora}.lora.2.bias"] = rnd(widths[lora])
        sd.update({f + "x_k": torch.rand(d, generator=g), f + "key.weight": rnd(d_mlp, d),
                   f + "value.weight": rnd(d, d_mlp)})
    return sd


def fla_forward(sd: dict, config: dict, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits [b, T, vocab], last recurrent state of every layer [b, H, K, V])`` as fla computes them."""
    token_shift = fla_function("modules/token_shift.py", "token_shift_ref")
    addcmul = fla_function("ops/rwkv7/fused_addcmul.py", "torch_addcmul_rwkv7")
    k_update = fla_function("ops/rwkv7/fused_k_update.py", "k_update_ref")
    correction = fla_function("ops/rwkv7/gate_output_correction.py", "gate_output_correction_ref")
    layer_norm = fla_function("modules/norm/layernorm.py", "layer_norm_ref")
    group_norm = fla_function("modules/norm/layernorm.py", "group_norm_ref")
    dplr = fla_naive("ops/generalized_delta_rule/dplr/naive.py").dplr_recurrence
    eps, n, K = config["norm_eps"], config["num_hidden_layers"], config["head_dim"]
    ln = lambda x, name: layer_norm(x, sd[name + ".weight"], sd.get(name + ".bias"), eps=eps)  # noqa: E731

    def lora(x, prefix, act=lambda t: t):
        bias = sd.get(prefix + ".lora.2.bias")
        return F.linear(act(F.linear(x, sd[prefix + ".lora.0.weight"])), sd[prefix + ".lora.2.weight"], bias)

    heads = lambda t, width: t.unflatten(-1, (-1, width))  # noqa: E731  'b t (h d) -> b t h d'
    h = sd["model.embeddings.weight"][ids]
    h = ln(h, "model.layers.0.pre_norm") if config["norm_first"] else h
    states, v_first = [], None
    for i in range(n):
        a = f"model.layers.{i}.attn."
        x = ln(h, f"model.layers.{i}.attn_norm")
        lerps = (sd[a + c] for c in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
        xr, xw, xk, xv, xa, xg = addcmul(x, token_shift(x), *lerps)
        r = F.linear(xr, sd[a + "r_proj.weight"])
        w = -0.6065306597126334 * lora(xw, a + "w_lora", torch.tanh).sigmoid()
        k, v = F.linear(xk, sd[a + "k_proj.weight"]), F.linear(xv, sd[a + "v_proj.weight"])
        if i == 0:
            v_first = v
        else:
            v = torch.lerp(v, v_first, lora(xv, a + "v_lora").sigmoid())
        iclr, g = lora(xa, a + "a_lora").sigmoid(), lora(xg, a + "g_lora", torch.sigmoid)
        kk = F.normalize(heads(k * sd[a + "k_k"], K), dim=-1, p=2.0)
        k = k_update(k, iclr, sd[a + "k_a"])
        r, w, k, iclr = (heads(t, K) for t in (r, w, k, iclr))
        v = heads(v, v.shape[-1] // r.shape[2])
        first = lambda t: t.transpose(1, 2)  # noqa: E731  fla's naive rule is [B, H, T, D]; it scales q by K^-0.5
        o, S = dplr(first(r) * K ** 0.5, first(k), first(v), first(-kk), first(kk * iclr), first(w))
        o = group_norm(first(o).flatten(2), sd[a + "g_norm.weight"], sd[a + "g_norm.bias"], num_groups=r.shape[2],
                       eps=K * eps)
        h = h + F.linear(correction(o, r, k, sd[a + "r_k"], v, g), sd[a + "o_proj.weight"])
        f, x = f"model.layers.{i}.ffn.", ln(h, f"model.layers.{i}.ffn_norm")
        h = h + F.linear(torch.relu(F.linear(x.addcmul(token_shift(x), sd[f + "x_k"]), sd[f + "key.weight"])) ** 2,
                         sd[f + "value.weight"])
        states.append(S)
    return F.linear(ln(h, "model.norm"), sd["lm_head.weight"]), states


def save_folder(path, config: dict, sd: dict, tokenizer: bool = True):
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    if tokenizer:
        save_tokenizer(path, config["vocab_size"])
    return str(path)


VARIANTS = {"default": {}, "no_norm_bias": {"norm_bias": False}, "wide_values": {"value_dim": [2 * D] * LAYERS},
            "tied_no_pre_norm": {"tie_word_embeddings": True, "norm_first": False}}


@pytest.mark.numerical
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_folder_logits_states_and_generation_equal_fla(tmp_path, variant):
    config = fla_config(**VARIANTS[variant])
    sd = fla_state_dict(config)
    saved = dict(sd)
    if config["tie_word_embeddings"]:  # save_pretrained writes a tied head once, as the embedding
        sd["lm_head.weight"] = saved.pop("lm_head.weight").copy_(sd["model.embeddings.weight"])
    model = probe.from_hf(save_folder(tmp_path / "rwkv7", config, saved))
    assert model.cfg.layout == ["rwkv7"] * LAYERS and model.blocks[1].mixer.mixes_first_value
    ids = model.to_tokens(text(12, VOCAB))
    with torch.no_grad():
        ref, ref_states = fla_forward(sd, config, ids)
        logits, states = model(ids, return_states=True)
    # measured (float32): logits 3e-6 .. 2e-5 (tied: logits up to 20), last states 5e-6 .. 7e-6
    assert (logits - ref).abs().max() < 1e-4
    for i, S in enumerate(ref_states):
        torch.testing.assert_close(states.layers[i]["mixer"]["state"], S, rtol=0, atol=5e-5)
    greedy = ids
    with torch.no_grad():
        for _ in range(6):
            greedy = torch.cat([greedy, fla_forward(sd, config, greedy)[0][:, -1:].argmax(-1)], dim=1)
    assert torch.equal(model.generate(ids, max_new_tokens=6), greedy)


def test_an_older_checkpoints_stacked_lerp_weights_convert_alike():
    config = fla_config()
    sd = fla_state_dict(config)
    old = dict(sd)
    for i in range(LAYERS):
        a = f"model.layers.{i}.attn."
        old[a + "x_x"] = torch.cat([old.pop(a + x).view(1, D) for x in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")])
    from probe.io.convert_rwkv7 import rwkv7_from_fla

    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        stacked, split = (rwkv7_from_fla(s, config, tokenizer="byte")(ids) for s in (old, sd))
        assert torch.equal(stacked, split)


def test_folder_without_tokenizer_files_is_an_error_naming_them(tmp_path):
    config = fla_config()
    folder = save_folder(tmp_path / "rwkv7", config, fla_state_dict(config), tokenizer=False)
    with pytest.raises(CheckpointError, match="holds no tokenizer files.*tokenizer.json"):
        probe.from_hf(folder)
    assert probe.from_hf(folder, tokenizer="byte").cfg.layout == ["rwkv7"] * LAYERS


def test_unknown_tensors_and_unsupported_configs_are_refused(tmp_path):
    from probe.io.convert_rwkv7 import rwkv7_from_fla

    config = fla_config()
    sd = fla_state_dict(config)
    with pytest.raises(CheckpointError, match="does not map.*model.layers.0.attn.extra"):
        rwkv7_from_fla({**sd, "model.layers.0.attn.extra": torch.zeros(3)}, config, tokenizer="byte")
    missing = {k: v for k, v in sd.items() if k != "model.layers.2.attn.v_lora.lora.2.bias"}
    with pytest.raises(CheckpointError, match="no tensor 'model.layers.2.attn.v_lora.lora.2.bias'"):
        rwkv7_from_fla(missing, config, tokenizer="byte")
    with pytest.raises(ConfigError, match="interleaved attention"):
        rwkv7_from_fla(sd, fla_config(attn={"layers": [1], "num_heads": 4}), tokenizer="byte")
    with pytest.raises(ConfigError, match="differ between layers"):
        rwkv7_from_fla(sd, fla_config(value_dim=[D, 2 * D, D]), tokenizer="byte")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        probe.from_hf(str(tmp_path / "empty"), tokenizer="byte")
