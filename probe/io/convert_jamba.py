r"""Import transformers' ``JambaForCausalLM`` (Jamba: Mamba-1 and attention layers, MoE MLPs) into probe.

Every Jamba layer is ``h + mixer(RMSNorm(h))``, ``h + ffn(RMSNorm(h))`` — probe's
:class:`probe.block.Block`. Layer ``i``'s mixer is attention when ``i % attn_layer_period ==
attn_layer_offset`` and Mamba-1 otherwise; its feed-forward is a mixture of experts when ``i %
expert_layer_period == expert_layer_offset`` (and ``num_experts > 1``), a dense SwiGLU otherwise.
The converted config therefore has::

    layout      = ["attn" if attention layer else "mamba"]        (JambaConfig.layers_block_type)
    mlp_layout  = ["moe" if MoE layer else "swiglu"]             (JambaConfig.layers_num_experts)
    positional  = "none"                                          (Jamba's attention has no RoPE)
    mixer_options = {"mamba": {..., "inner_norms": True}, "attn": {"n_kv_heads": ...},
                     "moe": {"n_experts", "top_k", "d_expert": intermediate_size}}   (softmax then top-k,
                                                                  the top-k weights not renormalised)

Jamba's Mamba RMS-normalises ``dt`` (before ``dt_proj``), ``B`` and ``C`` inside the mixer: the
``mamba`` option ``inner_norms``, with the model's ``rms_norm_eps``. Nothing is folded.
Weight mapping (``i`` the layer, ``p = model.layers.i.``)::

    model.embed_tokens.weight                 -> W_E
    p input_layernorm.weight                  -> blocks.i.ln1.w
    p pre_ff_layernorm.weight                 -> blocks.i.ln2.w
    p mamba.{in_proj,x_proj,dt_proj,out_proj} -> blocks.i.mixer.{same}         (weights; biases if present)
    p mamba.conv1d.weight                     -> blocks.i.mixer.conv_weight    ([d_inner, 1, k] -> [d_inner, k])
    p mamba.conv1d.bias                       -> blocks.i.mixer.conv_bias      (if mamba_conv_bias)
    p mamba.A_log, D                          -> blocks.i.mixer.A_log, D
    p mamba.{dt,b,c}_layernorm.weight         -> blocks.i.mixer.{dt,B,C}_norm
    p self_attn.{q,k,v,o}_proj.weight         -> blocks.i.mixer.W_{q,k,v,o}.weight   (probe.io.convert_attention)
    p feed_forward.{gate,up,down}_proj.weight -> blocks.i.mlp.W_{gate,in,out}.weight (dense layers)
    p feed_forward.router / experts.*         -> blocks.i.mlp.*                      (probe.io.convert_moe)
    model.final_layernorm.weight              -> ln_final.w
    lm_head.weight                            -> W_U (transposed; or tied to W_E)

Every source tensor must be used: an unmapped weight is a :class:`~probe.errors.CheckpointError`.

States: layer ``i``'s ``state`` ``[B, d_inner, d_state]`` is transformers' ``cache.layers[i]
.recurrent_states[0]``; ``state_conv [B, k-1, d_inner]`` the last ``k - 1`` columns of its
``conv_states[0] [B, d_inner, k]``, transposed. transformers' Jamba drops the SSM state when it
continues a cache with several tokens at once (its chunked scan starts from zeros); its
whole-sequence forward and its one-token decode are right, and the tests compare those.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_attention import attention_weights
from probe.io.convert_common import Mapping, build_model, causal_lm_tensors, check_all_used, take
from probe.io.convert_moe import mlp_weights

ARCH = "Jamba"


def jamba_config_from_hf(c: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` of a transformers ``JambaConfig`` (module docstring)."""
    if getattr(c, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"Jamba with hidden_act={c.hidden_act!r} is not supported (its conv, MLPs and experts "
                          "use silu in probe).")
    d, n = int(c.hidden_size), int(c.num_hidden_layers)
    layout = ["attn" if kind == "attention" else "mamba" for kind in c.layers_block_type]
    mlp_layout = ["moe" if e > 1 else "swiglu" for e in c.layers_num_experts]
    d_head = int(getattr(c, "head_dim", None) or d // int(c.num_attention_heads))
    options: dict[str, dict[str, Any]] = {"mamba": {
        "d_state": int(c.mamba_d_state), "d_conv": int(c.mamba_d_conv), "expand": int(c.mamba_expand),
        "dt_rank": int(c.mamba_dt_rank), "conv_bias": bool(c.mamba_conv_bias), "proj_bias": bool(c.mamba_proj_bias),
        "inner_norms": True}}
    if "attn" in layout and int(c.num_key_value_heads) != int(c.num_attention_heads):
        options["attn"] = {"n_kv_heads": int(c.num_key_value_heads)}
    if "moe" in mlp_layout:
        options["moe"] = {"n_experts": int(c.num_experts), "top_k": int(c.num_experts_per_tok),
                          "d_expert": int(c.intermediate_size)}
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=layout, mlp_layout=mlp_layout, n_layers=n,
        n_heads=int(c.num_attention_heads), d_head=d_head, d_mlp=int(c.intermediate_size), mlp="swiglu",
        norm="rmsnorm", norm_eps=float(c.rms_norm_eps), positional="none",
        n_ctx=int(getattr(c, "max_position_embeddings", 2048)),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)), mixer_options=options,
        name=str(getattr(c, "_name_or_path", "") or "jamba"))


def _mamba_weights(sd: dict[str, Tensor], src: str, dst: str, opts: dict[str, Any], used: set[str]) -> Mapping:
    def get(name: str) -> tuple[str, Tensor]:
        used.add(src + name)
        return src + name, take(sd, src + name, ARCH)

    names = ["in_proj.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight"]
    names += ["in_proj.bias", "out_proj.bias"] if opts["proj_bias"] else []
    w: Mapping = {dst + name: get(name) for name in names}
    for ours, theirs in (("dt_norm", "dt_layernorm"), ("B_norm", "b_layernorm"), ("C_norm", "c_layernorm")):
        w[dst + ours] = get(f"{theirs}.weight")
    name, conv = get("conv1d.weight")
    if conv.dim() != 3 or conv.shape[1] != 1:
        raise CheckpointError(f"{name} has shape {tuple(conv.shape)}, expected [d_inner, 1, d_conv].")
    w[dst + "conv_weight"] = (name, conv[:, 0])
    if opts["conv_bias"]:
        w[dst + "conv_bias"] = get("conv1d.bias")
    return w


def jamba_weights(cfg: ModelConfig, sd: dict[str, Tensor], used: set[str]) -> Mapping:
    """Our weights ``{probe name: (source name, tensor)}`` from a ``JambaForCausalLM`` state dict."""
    def get(name: str) -> tuple[str, Tensor]:
        used.add(name)
        return name, take(sd, name, ARCH)

    w: Mapping = {"W_E": get("model.embed_tokens.weight"), "ln_final.w": get("model.final_layernorm.weight")}
    if not cfg.tie_embeddings:
        name, head = get("lm_head.weight")
        w["W_U"] = (name, head.T)
    for i, (mixer, mlp) in enumerate(zip(cfg.layout, cfg.mlp_layout)):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        w[b + "ln1.w"] = get(p + "input_layernorm.weight")
        w[b + "ln2.w"] = get(p + "pre_ff_layernorm.weight")
        if mixer == "mamba":
            w.update(_mamba_weights(sd, p + "mamba.", b + "mixer.", cfg.options("mamba"), used))
        else:
            w.update(attention_weights(sd, p + "self_attn.", b + "mixer.", cfg.options("attn"), cfg.n_heads,
                                       cfg.d_head, used))
        w.update(mlp_weights(sd, p + "feed_forward.", b + "mlp.", mlp, used, ARCH))
    return w


def jamba_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``JambaForCausalLM`` to a HookedLM with the same logits (module docstring).

    Tested on tiny random configs in float32: max abs logit difference <= 1e-4, every Mamba layer's final
    state equal to transformers' cache, one-token decode and greedy generation equal.
    """
    sd = causal_lm_tensors(hf_model, "jamba_from_hf", "Jamba")
    cfg = jamba_config_from_hf(hf_model.config)
    used: set[str] = set()
    weights = jamba_weights(cfg, sd, used)
    check_all_used(sd, used, ARCH, tied=cfg.tie_embeddings)
    return build_model(cfg, weights, ARCH, tokenizer, getattr(hf_model.config, "_name_or_path", ""), dtype)
