r"""Import transformers' ``OlmoHybridForCausalLM`` (OLMo hybrid: Gated DeltaNet + attention) into probe.

OLMo hybrid interleaves two layer types (``config.layer_types``; by default every fourth layer is
attention) with two different block shapes::

    "linear_attention" -> gdn, pre-norm:   h = h + GDN(RMSNorm_1(h));  h = h + MLP(RMSNorm_2(h))
    "full_attention"   -> attn, post-norm: h = h + RMSNorm_1(Attn(h)); h = h + RMSNorm_2(MLP(h))

(the attention block normalises the mixer's and the MLP's *outputs* before the residual add, and
its inputs not at all: probe's post-norm block variant). Every MLP is SwiGLU; every RMSNorm
multiplies by ``w`` and uses ``rms_norm_eps``, except the Gated DeltaNet's gated output norm, whose
epsilon is fixed at 1e-5 (fla's ``FusedRMSNormGated``).

Gated DeltaNet layers (probe's ``gdn``): separate q / k / v projections feed one causal depthwise
conv (no bias) over ``[q; k; v]`` with silu, q and k are l2-normalised per head in the kernel,
``g = -exp(A_log) softplus(W_a x + dt_bias)``, and ``beta = 2 sigmoid(W_b x)`` when
``linear_allow_neg_eigval`` (the default; gdn option ``allow_neg_eigval``), else ``sigmoid(W_b x)``.
The output is ``W_o [RMSNorm(o) * w * silu(W_g x)]`` per value head.

Attention layers (probe's ``attn``): grouped-query attention with RMSNorm over the *whole* q and k
projections (before the split into heads; attn option ``qk_norm="projection"``), then RoPE on
every head dimension when ``rope_parameters`` has a ``rope_theta`` (``positional="rope"``), or no
positional encoding at all (NoPE, the released checkpoints: ``rope_parameters`` is ``None``).

Weight mapping (``i`` the layer; ``s = model.layers.i.``)::

    model.embed_tokens.weight               -> W_E
    s input_layernorm.weight                -> blocks.i.ln1.w                (gdn layers)
    s post_attention_layernorm.weight       -> blocks.i.ln2.w                (gdn layers: the MLP's pre-norm)
    s linear_attn.{q,k,v,a,b}_proj.weight   -> blocks.i.mixer.{q,k,v,a,b}_proj.weight
    s linear_attn.g_proj.weight             -> blocks.i.mixer.z_proj.weight  (the output gate)
    s linear_attn.conv1d.weight             -> blocks.i.mixer.conv_weight    ([C, 1, k] -> [C, k])
    s linear_attn.{A_log, dt_bias}          -> blocks.i.mixer.{A_log, dt_bias}
    s linear_attn.o_norm.weight             -> blocks.i.mixer.norm.w
    s linear_attn.o_proj.weight             -> blocks.i.mixer.out_proj.weight
    s self_attn.{q,k,v,o}_proj.weight       -> blocks.i.mixer.W_{q,k,v,o}.weight   (attention layers)
    s self_attn.{q,k}_norm.weight           -> blocks.i.mixer.{q,k}_norm.w
    s post_attention_layernorm.weight       -> blocks.i.ln1.w                (attention layers: the mixer's post-norm)
    s post_feedforward_layernorm.weight     -> blocks.i.ln2.w                (attention layers: the MLP's post-norm)
    s mlp.{up,gate,down}_proj.weight        -> blocks.i.mlp.{W_in,W_gate,W_out}.weight
    model.norm.weight                       -> ln_final.w
    lm_head.weight                          -> W_U (transposed; or tied to W_E)

Nothing is folded: every hook shows the quantity transformers computes. Every source tensor must
be used: one this mapping does not know is a :class:`~probe.errors.CheckpointError` naming it.

States: a gdn layer's ``state`` is transformers' ``cache.layers[i].recurrent_states[0]``
``[B, Hv, K, V]``, its ``state_conv [B, k-1, C]`` the last ``k - 1`` columns of
``conv_states[0] [B, C, k]`` transposed; an attention layer's ``k`` / ``v`` cache is transformers'
``keys`` / ``values`` transposed to ``[B, P, heads, d_head]`` (after the norm and RoPE).

Usage::

    from transformers import AutoModelForCausalLM
    model = probe.from_hf(AutoModelForCausalLM.from_pretrained("<an OLMo hybrid folder>"))
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_common import (Mapping, build_model, causal_lm_tensors, check_all_used, embedding_and_head,
                                     layer_kinds, sources, take)

ARCH = "OLMo hybrid"
#: transformers' layer type -> probe mixer
MIXER_OF = {"linear_attention": "gdn", "full_attention": "attn"}
#: the epsilon of the Gated DeltaNet's gated output norm (fixed in transformers, fla's default)
GATED_NORM_EPS = 1e-5


def _positional(c: Any) -> dict[str, Any]:
    """``positional`` / ``rope_base`` of the config: RoPE with ``rope_theta``, or none (NoPE)."""
    rope = getattr(c, "rope_parameters", None)
    if not rope or rope.get("rope_theta") is None:
        return {"positional": "none"}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{ARCH} with rope_type={rope['rope_type']!r} is not supported: probe's attention "
                          "applies the default RoPE only. Use rope_parameters=None (NoPE) or rope_type 'default'.")
    return {"positional": "rope", "rope_base": float(rope["rope_theta"])}


def gdn_options(c: Any) -> dict[str, Any]:
    """The ``gdn`` mixer options of an OLMo hybrid config."""
    Hk, Hv = int(c.linear_num_key_heads), int(c.linear_num_value_heads)
    if Hv % Hk:
        raise ConfigError(f"{ARCH} linear_num_value_heads={Hv} is not a multiple of linear_num_key_heads={Hk}.")
    return {"n_k_heads": Hk, "n_v_heads": Hv, "d_k": int(c.linear_key_head_dim), "d_v": int(c.linear_value_head_dim),
            "d_conv": int(c.linear_conv_kernel_dim), "norm_eps": GATED_NORM_EPS,
            "allow_neg_eigval": bool(c.linear_allow_neg_eigval)}


def attention_options(c: Any) -> dict[str, Any]:
    """The ``attn`` mixer options of an OLMo hybrid config."""
    return {"n_kv_heads": int(c.num_key_value_heads), "qk_norm": "projection", "bias": bool(c.attention_bias)}


def olmo_hybrid_config_from_hf(c: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` equivalent to a transformers ``OlmoHybridConfig``."""
    if getattr(c, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"{ARCH} with hidden_act={c.hidden_act!r} is not supported (its short convolution and "
                          "SwiGLU MLP use silu).")
    layout = layer_kinds(c, "layer_types", MIXER_OF, ARCH)
    d, heads = int(c.hidden_size), int(c.num_attention_heads)
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=layout, n_heads=heads,
        d_head=int(getattr(c, "head_dim", None) or d // heads), mlp="swiglu", d_mlp=int(c.intermediate_size),
        norm="rmsnorm", norm_eps=float(c.rms_norm_eps), n_ctx=int(c.max_position_embeddings),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        norm_placement=["post" if m == "attn" else "pre" for m in layout],
        mixer_options={"gdn": gdn_options(c), "attn": attention_options(c)},
        name=str(getattr(c, "_name_or_path", "") or "olmo_hybrid"), **_positional(c),
    )


def _gdn_weights(sd: dict[str, Tensor], i: int) -> Mapping:
    src, dst = f"model.layers.{i}.linear_attn.", f"blocks.{i}.mixer."
    get = lambda name: (src + name, take(sd, src + name, ARCH))  # noqa: E731
    out = {f"{dst}{p}_proj.weight": get(f"{p}_proj.weight") for p in "qkvab"}
    out[f"{dst}z_proj.weight"] = get("g_proj.weight")
    out[f"{dst}out_proj.weight"] = get("o_proj.weight")
    out[f"{dst}norm.w"] = get("o_norm.weight")
    out[f"{dst}A_log"], out[f"{dst}dt_bias"] = get("A_log"), get("dt_bias")
    name, conv = get("conv1d.weight")
    if conv.dim() != 3 or conv.shape[1] != 1:
        raise CheckpointError(f"{name} has shape {tuple(conv.shape)}, expected [channels, 1, kernel].")
    out[f"{dst}conv_weight"] = (name, conv[:, 0])
    return out


def _attention_weights(sd: dict[str, Tensor], i: int) -> Mapping:
    src, dst = f"model.layers.{i}.self_attn.", f"blocks.{i}.mixer."
    out = {}
    for p in "qkvo":
        for kind in ("weight", "bias"):
            if kind == "weight" or f"{src}{p}_proj.bias" in sd:
                out[f"{dst}W_{p}.{kind}"] = (f"{src}{p}_proj.{kind}", take(sd, f"{src}{p}_proj.{kind}", ARCH))
    for p in "qk":
        out[f"{dst}{p}_norm.w"] = (f"{src}{p}_norm.weight", take(sd, f"{src}{p}_norm.weight", ARCH))
    return out


def _layer_weights(sd: dict[str, Tensor], i: int, mixer: str) -> Mapping:
    s, b = f"model.layers.{i}.", f"blocks.{i}."
    norms = (("input_layernorm", "post_attention_layernorm") if mixer == "gdn"
             else ("post_attention_layernorm", "post_feedforward_layernorm"))
    out = {f"{b}{ours}.w": (f"{s}{theirs}.weight", take(sd, f"{s}{theirs}.weight", ARCH))
           for ours, theirs in zip(("ln1", "ln2"), norms)}
    for ours, theirs in (("W_in", "up_proj"), ("W_gate", "gate_proj"), ("W_out", "down_proj")):
        out[f"{b}mlp.{ours}.weight"] = (f"{s}mlp.{theirs}.weight", take(sd, f"{s}mlp.{theirs}.weight", ARCH))
    out.update(_gdn_weights(sd, i) if mixer == "gdn" else _attention_weights(sd, i))
    return out


def _weights(cfg: ModelConfig, sd: dict[str, Tensor]) -> Mapping:
    """Every probe weight with its source; refuses source tensors that nothing maps."""
    out = embedding_and_head(sd, ARCH, "model.embed_tokens.weight", "model.norm.weight", cfg.tie_embeddings)
    for i, mixer in enumerate(cfg.layout):
        out.update(_layer_weights(sd, i, mixer))
    check_all_used(sd, sources(out), ARCH, tied=cfg.tie_embeddings)
    return out


def olmo_hybrid_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``OlmoHybridForCausalLM`` to a :class:`probe.HookedLM` with equal logits
    (tested on tiny random configs in float32: max abs diff <= 1e-4), equal Gated DeltaNet states and
    equal greedy generation."""
    sd = causal_lm_tensors(hf_model, "olmo_hybrid_from_hf", "OlmoHybrid")
    cfg = olmo_hybrid_config_from_hf(hf_model.config)
    weights = _weights(cfg, sd)
    return build_model(cfg, weights, ARCH, tokenizer, getattr(hf_model.config, "_name_or_path", ""), dtype)
