r"""Import transformers' ``BambaForCausalLM`` (IBM's Bamba: Mamba-2 layers + attention layers) into probe.

Every Bamba layer is a pre-norm block with a SwiGLU MLP; its mixer is a Mamba-2 mixer, or attention at
the layers in ``config.attn_layer_indices``::

    h = h + mixer(RMSNorm_1(h))          mixer: mamba2 (SSD, gated RMSNorm) or attn
    h = h + MLP(RMSNorm_2(h))            MLP(x) = W_down (silu(W_gate x) * W_up x)

so the converted config has ``layout[i] = "attn"`` at the attention indices and ``"mamba2"``
elsewhere, ``mlp = "swiglu"`` everywhere. The attention is grouped-query (``num_key_value_heads``)
with RoPE on the first half of each head (Bamba fixes ``partial_rotary_factor = 0.5``): attn options
``n_kv_heads``, ``rotary_fraction`` (and ``bias`` when ``attention_bias``); softmax scale
``d_head^-1/2``. The Mamba-2 mixers are transformers' ``Mamba2Mixer`` (see
:mod:`probe.io.convert_mamba2`; their gated norm uses ``rms_norm_eps`` like every norm). Mapping
(``i`` the layer, ``s = model.layers.i.``)::

    model.embed_tokens.weight               -> W_E
    s input_layernorm.weight                -> blocks.i.ln1.w
    s mamba.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}  -> blocks.i.mixer.*   (Mamba-2 layers)
    s self_attn.{q,k,v,o}_proj              -> blocks.i.mixer.W_{q,k,v,o}               (attention layers)
    s pre_ff_layernorm.weight               -> blocks.i.ln2.w
    s feed_forward.{up,gate,down}_proj      -> blocks.i.mlp.{W_in, W_gate, W_out}
    model.final_layernorm.weight            -> ln_final.w
    lm_head.weight                          -> W_U (transposed; or tied to W_E)

Nothing is folded: every hook shows the quantity transformers computes. Every source tensor must be
used: one this mapping does not know is a :class:`~probe.errors.CheckpointError` naming it.

States: a Mamba-2 layer's ``state`` is transformers' ``cache.layers[i].recurrent_states[0]``
``[B, heads, head_dim, d_state]``, its ``state_conv [B, k-1, C]`` the last ``k - 1`` columns of
``conv_states[0] [B, C, k]`` transposed; an attention layer's ``k`` / ``v`` cache is transformers'
``keys`` / ``values`` ``[B, kv heads, P, d_head]`` transposed to ``[B, P, kv heads, d_head]`` (rotated).

Positions: probe counts positions across segments (a continuation from a state starts at the
state's position); transformers' Bamba restarts RoPE positions at 0 for a multi-token continuation
unless ``position_ids`` are passed.

Usage::

    from transformers import AutoModelForCausalLM
    model = probe.from_hf(AutoModelForCausalLM.from_pretrained("<a Bamba folder>"))
"""
from __future__ import annotations

import math
from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import ConfigError
from probe.io.convert_attention import attention_weights, rope_base, rotary_options
from probe.io.convert_common import (Mapping, build_model, causal_lm_tensors, check_all_used, embedding_and_head,
                                     sources, take)
from probe.io.convert_mamba2 import mamba2_layer_weights
from probe.io.convert_moe import mlp_weights

ARCH = "Bamba"


def _layout(c: Any) -> list[str]:
    n = int(c.num_hidden_layers)
    attn = set(getattr(c, "attn_layer_indices", None) or [])
    outside = sorted(i for i in attn if not 0 <= i < n)
    if outside:
        raise ConfigError(f"Bamba attn_layer_indices {outside} lie outside the {n} layers.")
    return ["attn" if i in attn else "mamba2" for i in range(n)]


def _check_supported(c: Any) -> None:
    if getattr(c, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"Bamba with hidden_act={c.hidden_act!r} is not supported (its MLP and Mamba-2 conv use silu).")
    if getattr(c, "mlp_bias", False):
        raise ConfigError("Bamba with mlp_bias=True is not supported: probe's swiglu MLP has no biases.")
    if int(c.mamba_d_conv) < 2:
        raise ConfigError(f"Bamba with mamba_d_conv={c.mamba_d_conv} is not supported (probe's mamba2 needs >= 2).")
    if int(c.mamba_expand) * int(c.hidden_size) != int(c.mamba_n_heads) * int(c.mamba_d_head):
        raise ConfigError(f"Bamba config has hidden_size * mamba_expand = {int(c.mamba_expand) * int(c.hidden_size)} "
                          f"but mamba_n_heads * mamba_d_head = {int(c.mamba_n_heads) * int(c.mamba_d_head)}.")


def mamba2_options(c: Any) -> dict[str, Any]:
    """The ``mamba2`` options of a Bamba config."""
    lo, hi = (float(v) for v in (getattr(c, "time_step_limit", None) or (0.0, math.inf)))
    return {"d_state": int(c.mamba_d_state), "d_conv": int(c.mamba_d_conv), "expand": int(c.mamba_expand),
            "head_dim": int(c.mamba_d_head), "n_groups": int(c.mamba_n_groups), "chunk": int(c.mamba_chunk_size),
            "conv_bias": bool(c.mamba_conv_bias), "proj_bias": bool(c.mamba_proj_bias),
            "dt_limit_min": lo, "dt_limit_max": None if math.isinf(hi) else hi}


def attention_options(c: Any) -> dict[str, Any]:
    """The ``attn`` options of a Bamba config."""
    kv = int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    return {"n_kv_heads": kv, "bias": bool(getattr(c, "attention_bias", False)), **rotary_options(c)}


def bamba_config_from_hf(c: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` equivalent to a transformers ``BambaConfig``."""
    _check_supported(c)
    layout = _layout(c)
    d, heads = int(c.hidden_size), int(c.num_attention_heads)
    d_head = int(getattr(c, "head_dim", None) or d // heads)
    options = {"mamba2": mamba2_options(c)}
    if "attn" in layout:
        options["attn"] = attention_options(c)
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=layout, n_heads=heads, d_head=d_head,
        mlp="swiglu", d_mlp=int(c.intermediate_size), norm="rmsnorm", norm_eps=float(c.rms_norm_eps),
        positional="rope", rope_base=rope_base(c), n_ctx=int(c.max_position_embeddings),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)), mixer_options=options,
        name=str(getattr(c, "_name_or_path", "") or "bamba"),
    )


def bamba_weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> Mapping:
    """Our weights ``{probe name: (source name, tensor)}`` from a ``BambaForCausalLM`` state dict."""
    get = lambda name: (name, take(sd, name, ARCH))
    w = embedding_and_head(sd, ARCH, "model.embed_tokens.weight", "model.final_layernorm.weight", cfg.tie_embeddings)
    used: set[str] = set()
    for i, mixer in enumerate(cfg.layout):
        s, b = f"model.layers.{i}.", f"blocks.{i}."
        w[b + "ln1.w"] = get(s + "input_layernorm.weight")
        w[b + "ln2.w"] = get(s + "pre_ff_layernorm.weight")
        w.update(mlp_weights(sd, s + "feed_forward.", b + "mlp.", "swiglu", used, ARCH))
        if mixer == "attn":
            w.update(attention_weights(sd, s + "self_attn.", b + "mixer.", cfg.options("attn"), cfg.n_heads,
                                       cfg.d_head, used))
        else:
            w.update(mamba2_layer_weights(sd, s + "mamba.", b + "mixer.", cfg.mixer_options["mamba2"], ARCH))
    return w


def bamba_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``BambaForCausalLM`` to a HookedLM with the same logits (module docstring).

    Tested: max abs logit difference < 1e-4 in float32 on tiny random configs, the final Mamba-2
    states and KV caches equal to transformers' cache, greedy generation identical.
    """
    sd = causal_lm_tensors(hf_model, "bamba_from_hf", "Bamba")
    c = hf_model.config
    cfg = bamba_config_from_hf(c)
    weights = bamba_weights(cfg, sd)
    check_all_used(sd, sources(weights), ARCH, tied=cfg.tie_embeddings)
    return build_model(cfg, weights, ARCH, tokenizer, getattr(c, "_name_or_path", ""), dtype)
