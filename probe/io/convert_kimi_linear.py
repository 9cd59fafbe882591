r"""Import transformers' ``KimiLinearForCausalLM`` (Kimi Linear: Kimi Delta Attention + latent attention,
mixture-of-experts MLPs) into :class:`probe.HookedLM`.

Every block is pre-norm, ``h + mixer(RMSNorm(h))``, ``h + MLP(RMSNorm(h))`` (RMSNorms multiply by
``w``, epsilon ``rms_norm_eps``); ``config.layer_types`` and ``config.mlp_layer_types`` choose the parts::

    "linear_attention" -> kda  Kimi Delta Attention: Gated DeltaNet with a decay per key channel and
                               low-rank sigmoid output gate (probe.mixers.gdn.KimiDeltaAttention)
    "full_attention"   -> mla  multi-head latent attention with NoPE: no rotary embedding at all, the
                               "rope" key part is shared by the heads but never rotated
                               (probe.mixers.mla, positional "none")
    "dense"            -> swiglu   (intermediate_size)
    "sparse"           -> moe  sigmoid router, e_score_correction_bias for the choice only, grouped
                               choice (n_group / topk_group), renormalised (moe_renormalize) and scaled
                               (routed_scaling_factor) weights, a shared SwiGLU expert of width
                               moe_intermediate_size * n_shared_experts (probe.mixers.moe)

Weight mapping (``i`` the layer, ``s = model.layers.i.``)::

    model.embed_tokens.weight                   -> W_E
    s input_layernorm / post_attention_layernorm -> blocks.i.ln1.w / ln2.w
    s self_attn.*  (linear_attention)           -> blocks.i.mixer.*  (probe.io.convert_gdn.kda_mixer_weights)
    s self_attn.q_proj.weight                   -> blocks.i.mixer.W_q.weight   (or q_a_proj, q_a_layernorm,
                                                   q_b_proj -> W_qa, q_norm.w, W_qb with q_lora_rank)
    s self_attn.kv_a_proj_with_mqa              -> blocks.i.mixer.W_kva        ([latent | shared key] rows)
    s self_attn.kv_a_layernorm.weight           -> blocks.i.mixer.kv_norm.w
    s self_attn.kv_b_proj.weight                -> blocks.i.mixer.W_kvb.weight ([k_nope | v] rows per head)
    s self_attn.o_proj                          -> blocks.i.mixer.W_o
    s mlp.{gate,up,down}_proj.weight (dense)    -> blocks.i.mlp.{W_gate,W_in,W_out}.weight
    s mlp.* (sparse)                            -> blocks.i.mlp.*  (probe.io.convert_moe.moe_weights)
    model.norm.weight                           -> ln_final.w
    lm_head.weight                              -> W_U (transposed; never tied: transformers'
                                                   KimiLinearForCausalLM keeps its own head whatever
                                                   tie_word_embeddings says)

Nothing is folded. Every source tensor must be used: one this mapping does not know is a
:class:`~probe.errors.CheckpointError` naming it.

States: a kda layer's ``state`` is transformers' ``cache.layers[i].recurrent_states[0]`` ``[B, H, K, V]``
and its ``state_conv`` the last ``k - 1`` columns of ``conv_states[0]`` transposed; an mla layer's
``kv_latent [B, P, r]`` / ``k_rot [B, P, d_rope]`` are the cache's ``keys`` / ``values`` ``[B, 1, P, .]``.

Usage::

    from transformers import AutoModelForCausalLM
    model = probe.from_hf(AutoModelForCausalLM.from_pretrained("<a Kimi Linear folder>"))
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probe.config import ModelConfig
from probe.errors import ConfigError
from probe.io.convert_common import (Mapping, build_model, causal_lm_tensors, check_all_used, embedding_and_head,
                                     layer_kinds, sources, take)
from probe.io.convert_gdn import kda_mixer_options, kda_mixer_weights
from probe.io.convert_moe import mlp_weights

ARCH = "Kimi Linear"
MIXER_OF = {"linear_attention": "kda", "full_attention": "mla"}
MLP_OF = {"dense": "swiglu", "sparse": "moe"}
#: the epsilon of the latent attention's q / kv latent norms (transformers builds them with the default)
LATENT_NORM_EPS = 1e-6


def mla_options(c: Any) -> dict[str, Any]:
    """The ``mla`` mixer options of a Kimi Linear config."""
    if int(c.num_key_value_heads) != int(c.num_attention_heads):
        raise ConfigError(f"{ARCH} with num_key_value_heads={c.num_key_value_heads} != num_attention_heads="
                          f"{c.num_attention_heads} is not supported: its latent attention decompresses one key and "
                          "value per head.")
    return {"kv_rank": int(c.kv_lora_rank), "q_rank": None if c.q_lora_rank is None else int(c.q_lora_rank),
            "d_nope": int(c.qk_nope_head_dim), "d_rope": int(c.qk_rope_head_dim), "d_v": int(c.v_head_dim),
            "latent_norm_eps": LATENT_NORM_EPS, "bias": bool(c.attention_bias)}


def moe_options(c: Any) -> dict[str, Any]:
    """The ``moe`` MLP options of a Kimi Linear config."""
    h = int(c.moe_intermediate_size)
    return {"n_experts": int(c.num_local_experts), "top_k": int(c.num_experts_per_tok), "d_expert": h,
            "router": "sigmoid", "renormalize": bool(c.norm_topk_prob),
            "routed_scaling_factor": float(c.routed_scaling_factor), "selection_bias": True,
            "n_group": int(c.n_group), "topk_group": int(c.topk_group), "d_shared": h * int(c.n_shared_experts)}


def kimi_linear_config_from_hf(c: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` equivalent to a transformers ``KimiLinearConfig``."""
    layout, mlps = layer_kinds(c, "layer_types", MIXER_OF, ARCH), layer_kinds(c, "mlp_layer_types", MLP_OF, ARCH)
    options = {"kda": kda_mixer_options(c)}
    if "mla" in layout:
        options["mla"] = mla_options(c)
    if "moe" in mlps:
        options["moe"] = moe_options(c)
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=int(c.hidden_size), layout=layout, mlp_layout=mlps,
        n_heads=int(c.num_attention_heads), d_head=int(c.v_head_dim), mlp="swiglu", d_mlp=int(c.intermediate_size),
        norm="rmsnorm", norm_eps=float(c.rms_norm_eps), positional="none", n_ctx=int(c.max_position_embeddings),
        tie_embeddings=False, mixer_options=options,
        name=str(getattr(c, "_name_or_path", "") or "kimi_linear"),
    )


def mla_weights(sd: dict[str, Tensor], src: str, used: set[str]) -> dict[str, Tensor]:
    """The ``mla`` mixer's ``{name: tensor}`` from a ``KimiLinearAttention``'s tensors under ``src``
    (names recorded in ``used``); biases where the checkpoint has them (``attention_bias``)."""
    names = {"W_kva": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "W_kvb": "kv_b_proj", "W_o": "o_proj"}
    names.update({"W_q": "q_proj"} if src + "q_proj.weight" in sd else
                 {"W_qa": "q_a_proj", "q_norm": "q_a_layernorm", "W_qb": "q_b_proj"})
    out = {}
    for ours, theirs in names.items():
        for kind in ("weight", "bias"):
            name = f"{src}{theirs}.{kind}"
            if kind == "weight" or name in sd:
                used.add(name)
                out[f"{ours}.{'w' if ours.endswith('norm') else kind}"] = take(sd, name, ARCH)
    return out


def _layer_weights(sd: dict[str, Tensor], i: int, mixer: str, mlp: str, used: set[str]) -> Mapping:
    s, b = f"model.layers.{i}.", f"blocks.{i}."
    out = {f"{b}{ours}.w": (f"{s}{theirs}.weight", take(sd, f"{s}{theirs}.weight", ARCH))
           for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"))}
    read = kda_mixer_weights if mixer == "kda" else mla_weights
    out.update({f"{b}mixer.{k}": (f"{s}self_attn.{k}", t) for k, t in read(sd, s + "self_attn.", used).items()})
    out.update(mlp_weights(sd, s + "mlp.", b + "mlp.", mlp, used, ARCH))
    return out


def _weights(cfg: ModelConfig, sd: dict[str, Tensor]) -> Mapping:
    """Every probe weight with its source; refuses source tensors that nothing maps."""
    out = embedding_and_head(sd, ARCH, "model.embed_tokens.weight", "model.norm.weight", tied=False)
    used: set[str] = set()
    for i, (mixer, mlp) in enumerate(zip(cfg.layout, cfg.mlp_layout)):
        out.update(_layer_weights(sd, i, mixer, mlp, used))
    check_all_used(sd, used | sources(out), ARCH)
    return out


def kimi_linear_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``KimiLinearForCausalLM`` to a :class:`probe.HookedLM` with equal logits
    (tested on tiny random configs in float32: max abs diff <= 1e-4), equal Kimi Delta Attention states
    and latent caches, and equal greedy generation."""
    sd = causal_lm_tensors(hf_model, "kimi_linear_from_hf", "KimiLinear")
    cfg = kimi_linear_config_from_hf(hf_model.config)
    weights = _weights(cfg, sd)
    return build_model(cfg, weights, ARCH, tokenizer, getattr(hf_model.config, "_name_or_path", ""), dtype)
