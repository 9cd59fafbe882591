r"""Import transformers' ``Qwen3NextForCausalLM`` (Qwen3-Next: Gated DeltaNet and gated attention layers,
dense or mixture-of-experts MLPs) into probe.

Every Qwen3-Next layer is ``h + mixer(RMSNorm(h))``, ``h + mlp(RMSNorm(h))`` — probe's
:class:`probe.block.Block`. ``layer_types[i]`` names layer ``i``'s mixer, and its MLP is a mixture of
experts when ``num_experts > 0``, ``i`` is not in ``mlp_only_layers`` and ``(i + 1) %
decoder_sparse_step == 0``, a dense SwiGLU otherwise. The converted config::

    layout      = ["gdn" if "linear_attention" else "attn"]
    mlp_layout  = ["moe" if MoE layer else "swiglu"]
    positional  = "rope" (rope_base = rope_theta), "none" when no layer is attention
    mixer_options = {
        "gdn":  {n_k_heads, n_v_heads, d_k, d_v, d_conv, norm_eps}          (probe.io.convert_gdn)
        "attn": {n_kv_heads, qk_norm: "head_offset", rotary_fraction: partial_rotary_factor,
                 output_gate: True, bias: attention_bias}                    (d_head = head_dim)
        "moe":  {n_experts, top_k, d_expert: moe_intermediate_size, router: "softmax",
                 renormalize: norm_topk_prob, d_shared: shared_expert_intermediate_size,
                 shared_gate: True}}

The gated attention (:mod:`probe.mixers.attention`): ``q, gate`` from one projection (per head
``[q_h | gate_h]``), q / k RMS-normed per head with gain ``1 + w``, RoPE on the first
``partial_rotary_factor * head_dim`` channels, the attention output times ``sigmoid(gate)`` before
``o_proj``. The MoE (:mod:`probe.mixers.moe`): softmax router then top-k (renormalised with
``norm_topk_prob``), plus a shared SwiGLU expert times ``sigmoid(shared_expert_gate . x)``.

Folded: Qwen3-Next's block and final RMSNorms multiply by ``1 + w`` (zero-initialised ``w``); probe's
``ln1``, ``ln2`` and ``ln_final`` hold the gain ``1 + w`` (their ``hook_normalized`` is unchanged).
The q / k norms keep ``w`` as stored (their ``head_offset`` kind adds the 1). The gated norm inside
the Gated DeltaNet multiplies by ``w`` itself.

Weight mapping (``i`` the layer, ``p = model.layers.i.``)::

    model.embed_tokens.weight             -> W_E
    p input_layernorm.weight              -> blocks.i.ln1.w                (1 + w)
    p linear_attn.*                       -> blocks.i.mixer.*              (probe.io.convert_gdn)
    p self_attn.{q,k,v,o}_proj, {q,k}_norm -> blocks.i.mixer.W_{q,gate,k,v,o}, {q,k}_norm.w
                                                                           (probe.io.convert_attention)
    p post_attention_layernorm.weight     -> blocks.i.ln2.w                (1 + w)
    p mlp.{gate,up,down}_proj.weight      -> blocks.i.mlp.W_{gate,in,out}.weight   (dense layers)
    p mlp.gate / experts / shared_expert* -> blocks.i.mlp.*                (probe.io.convert_moe)
    model.norm.weight                     -> ln_final.w                    (1 + w)
    lm_head.weight                        -> W_U (transposed; or tied to W_E)

Every source tensor must be used: an unmapped weight is a :class:`~probe.errors.CheckpointError`.

States: a Gated DeltaNet layer's ``state`` is transformers' ``cache.layers[i].recurrent_states[0]``
``[B, Hv, K, V]``; its ``state_conv [B, k-1, C]`` the last ``k - 1`` columns of ``conv_states[0]
[B, C, k]``, transposed; an attention layer's ``k`` / ``v`` are its cache's keys / values before
RoPE (probe rotates them when read). With every layer linear, transformers' model cannot run with a
cache (its causal-mask builder asks the cache for attention layers it does not have): compare such
a model with ``use_cache=False``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probe.config import ModelConfig
from probe.errors import ConfigError
from probe.io.convert_attention import attention_weights, rope_base, rotary_options
from probe.io.convert_common import Mapping, build_model, causal_lm_tensors, check_all_used, layer_kinds, take
from probe.io.convert_gdn import heads as gdn_heads, mixer_options as gdn_options, mixer_weights as gdn_weights
from probe.io.convert_moe import mlp_weights

ARCH = "Qwen3-Next"
MIXER_OF = {"linear_attention": "gdn", "full_attention": "attn"}


def _mlp_layout(c: Any) -> list[str]:
    experts = int(getattr(c, "num_experts", 0) or 0)
    dense = set(getattr(c, "mlp_only_layers", None) or [])
    step = int(getattr(c, "decoder_sparse_step", 1) or 1)
    return ["moe" if experts > 0 and i not in dense and (i + 1) % step == 0 else "swiglu"
            for i in range(int(c.num_hidden_layers))]


def _options(c: Any, layout: list[str], mlp_layout: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    if "gdn" in layout:
        options["gdn"] = gdn_options(c)
    if "attn" in layout:
        options["attn"] = {"n_kv_heads": int(c.num_key_value_heads), "qk_norm": "head_offset",
                           "qk_norm_eps": float(c.rms_norm_eps), "output_gate": True,
                           "bias": bool(getattr(c, "attention_bias", False)), **rotary_options(c)}
    if "moe" in mlp_layout:
        options["moe"] = {"n_experts": int(c.num_experts), "top_k": int(c.num_experts_per_tok),
                          "d_expert": int(c.moe_intermediate_size), "router": "softmax",
                          "renormalize": bool(c.norm_topk_prob), "d_shared": int(c.shared_expert_intermediate_size),
                          "shared_gate": True}
    return options


def qwen3_next_config_from_hf(c: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` of a transformers ``Qwen3NextConfig`` (module docstring)."""
    if getattr(c, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"Qwen3-Next with hidden_act={c.hidden_act!r} is not supported (its short convolution, "
                          "MLPs and experts use silu in probe).")
    layout, mlp_layout = layer_kinds(c, "layer_types", MIXER_OF, ARCH), _mlp_layout(c)
    d = int(c.hidden_size)
    has_attn = "attn" in layout
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=layout, mlp_layout=mlp_layout, n_layers=len(layout),
        n_heads=int(c.num_attention_heads), d_head=int(getattr(c, "head_dim", None) or d // int(c.num_attention_heads)),
        d_mlp=int(c.intermediate_size), mlp="swiglu", norm="rmsnorm", norm_eps=float(c.rms_norm_eps),
        positional="rope" if has_attn else "none", rope_base=rope_base(c) if has_attn else 10000.0,
        n_ctx=int(getattr(c, "max_position_embeddings", 2048)),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)), mixer_options=_options(c, layout, mlp_layout),
        name=str(getattr(c, "_name_or_path", "") or "qwen3_next"))


def qwen3_next_weights(cfg: ModelConfig, hf_config: Any, sd: dict[str, Tensor], used: set[str]) -> Mapping:
    """Our weights ``{probe name: (source name, tensor)}`` from a ``Qwen3NextForCausalLM`` state dict."""
    def get(name: str) -> tuple[str, Tensor]:
        used.add(name)
        return name, take(sd, name, ARCH)

    def gain(name: str) -> tuple[str, Tensor]:  # the folded 1 + w
        src, w = get(name)
        return src, 1 + w.float()

    w: Mapping = {"W_E": get("model.embed_tokens.weight"), "ln_final.w": gain("model.norm.weight")}
    if not cfg.tie_embeddings:
        name, head = get("lm_head.weight")
        w["W_U"] = (name, head.T)
    heads = gdn_heads(hf_config) if "gdn" in cfg.layout else {}
    for i, (mixer, mlp) in enumerate(zip(cfg.layout, cfg.mlp_layout)):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        w[b + "ln1.w"] = gain(p + "input_layernorm.weight")
        w[b + "ln2.w"] = gain(p + "post_attention_layernorm.weight")
        if mixer == "gdn":
            w.update({f"{b}mixer.{k}": (f"{p}linear_attn.{k}", v)
                      for k, v in gdn_weights(sd, p + "linear_attn.", heads, used).items()})
        else:
            w.update(attention_weights(sd, p + "self_attn.", b + "mixer.", cfg.options("attn"), cfg.n_heads,
                                       cfg.d_head, used))
        w.update(mlp_weights(sd, p + "mlp.", b + "mlp.", mlp, used, ARCH))
    return w


def qwen3_next_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``Qwen3NextForCausalLM`` to a HookedLM with the same logits (module docstring).

    Tested on tiny random configs in float32: max abs logit difference <= 1e-4, every Gated DeltaNet
    layer's final state equal to transformers' cache, one-token decode and greedy generation equal."""
    sd = causal_lm_tensors(hf_model, "qwen3_next_from_hf", "Qwen3Next")
    cfg = qwen3_next_config_from_hf(hf_model.config)
    used: set[str] = set()
    weights = qwen3_next_weights(cfg, hf_model.config, sd, used)
    check_all_used(sd, used, ARCH, tied=cfg.tie_embeddings)
    return build_model(cfg, weights, ARCH, tokenizer, getattr(hf_model.config, "_name_or_path", ""), dtype)
