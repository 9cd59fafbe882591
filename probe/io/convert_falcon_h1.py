r"""Import transformers' ``FalconH1ForCausalLM`` (TII's Falcon-H1) into :class:`probe.HookedLM`.

Every Falcon-H1 layer runs attention and a Mamba-2 mixer *side by side* on one normalised input,
then a SwiGLU MLP (transformers' ``FalconH1DecoderLayer``), with muP scalar multipliers ``m_*``::

    x = RMSNorm_1(h)
    h = h + m_ssm_out * Mamba2(m_ssm_in * x; in_proj rows scaled by the ssm_multipliers vector)
          + m_attn_out * Attn(m_attn_in * x; keys scaled by m_key)
    h = h + m_down * W_down (silu(m_gate * W_gate y) * W_up y),   y = RMSNorm_2(h)
    logits = m_lm_head * lm_head(RMSNorm_f(h)),   the embedding scaled by m_embed

which is probe's parallel-mixers block (:mod:`probe.mixers.parallel`): ``layout = ["attn+mamba2"] * n``,
``mlp = "swiglu"``, the attention grouped-query (``num_key_value_heads``) with RoPE, the Mamba-2 mixer
of width ``d_inner = mamba_d_ssm`` (or ``mamba_expand * hidden_size``) and its readout before
``out_proj`` chosen by ``mamba_rms_norm`` / ``mamba_norm_before_gate`` (mamba2 option ``norm``:
``"none"`` = ``y * silu(z)``, ``"before_gate"``, ``"gated"``).

Folded multipliers: each scalar multiplies a linear map's input or output, so it is folded into that
map's weights (exact up to float rounding; a bias is scaled only by what follows it)::

    attention_in_multiplier  -> W_q, W_k, W_v weights     key_multiplier    -> W_k weight and bias
    attention_out_multiplier -> W_o weight and bias       ssm_in_multiplier -> in_proj weight
    ssm_multipliers (z, x, B, C, dt blocks: the model's mup_vector) -> in_proj rows (weight and bias)
    ssm_out_multiplier       -> out_proj weight and bias
    mlp_multipliers (gate, down) -> W_gate weight, W_out weight
    lm_head_multiplier       -> W_U (tied embeddings: ln_final.w, since W_U is W_E)
    embedding_multiplier     -> cfg.embed_scale (kept a scale, applied before hook_embed: W_E may be tied)

Hooks therefore show what transformers computes, multipliers included: ``hook_embed`` is
``inputs_embeds``; the attention part's ``hook_q`` / ``hook_k`` / ``hook_v`` are its query / key /
value states (k after ``key_multiplier``), ``mixer.hook_attn_out`` its output after
``attention_out_multiplier``; the Mamba-2 part's ``hook_input`` / ``hook_B`` / ``hook_C`` / ``hook_dt`` /
``hook_output`` are computed from the scaled projection (transformers' ``projected_states * mup_vector``),
``mixer.hook_mamba2_out`` is its output after ``ssm_out_multiplier``; ``hook_mlp_out`` includes the down
multiplier, ``hook_logits`` the lm-head multiplier (tied: so does ``ln_final.hook_normalized``). What
no hook shows is the unscaled projection (transformers' ``in_proj(x)`` before ``mup_vector``).

TransformerLens 4 (``FalconH1ArchitectureAdapter``, which runs transformers' forward unfolded) names
the parts ``blocks.i.attn.*`` and ``blocks.i.mamba.*``: its ``mamba.hook_ssm_state`` is
``blocks.i.mixer.mamba2.hook_state`` here (TL's an after-the-scan readout, ours an edit that
propagates); its ``attn.hook_out`` / ``mamba.hook_out`` are ``mixer.hook_attn_out`` /
``mixer.hook_mamba2_out`` divided by ``attention_out_multiplier`` / ``ssm_out_multiplier``; its
``hook_resid_mid`` / ``ln1`` / ``ln2`` / ``mlp`` are the same as ours.

Mapping (``i`` the layer, ``s = model.layers.i.``, ``b = blocks.i.``)::

    model.embed_tokens.weight                         -> W_E
    s input_layernorm.weight, s pre_ff_layernorm.weight -> b ln1.w, b ln2.w
    s self_attn.{q,k,v,o}_proj                         -> b mixer.attn.W_{q,k,v,o}
    s mamba.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj} -> b mixer.mamba2.*  (norm: if mamba_rms_norm)
    s feed_forward.{up,gate,down}_proj                 -> b mlp.{W_in, W_gate, W_out}
    model.final_layernorm.weight                       -> ln_final.w
    lm_head.weight                                     -> W_U (transposed; or tied to W_E)

Every source tensor must be used: one this mapping does not know is a
:class:`~probe.errors.CheckpointError` naming it.

States: part ``mamba2``'s ``state`` is transformers' ``cache.layers[i].recurrent_states[0]``
``[B, heads, head_dim, d_state]`` and its ``state_conv [B, k-1, C]`` the last ``k - 1`` columns of
``conv_states[0]`` transposed; part ``attn``'s ``k`` / ``v`` are ``keys`` / ``values`` transposed to
``[B, P, kv heads, d_head]`` (rotated, k scaled by ``key_multiplier``): probe's block-state entries
``"mixer.mamba2"`` and ``"mixer.attn"``.

Usage::

    from transformers import AutoModelForCausalLM
    model = probe.from_hf(AutoModelForCausalLM.from_pretrained("<a Falcon-H1 folder>"))
"""
from __future__ import annotations

import math
from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_attention import attention_weights, rope_base, rotary_options
from probe.io.convert_common import Mapping, build_model, causal_lm_tensors, check_all_used, sources, take
from probe.io.convert_mamba2 import mamba2_layer_weights

ARCH = "FalconH1"
LAYOUT = "attn+mamba2"


def _d_inner(c: Any) -> int:
    return int(c.mamba_d_ssm) if getattr(c, "mamba_d_ssm", None) is not None else int(c.mamba_expand) * int(c.hidden_size)


def _check_supported(c: Any) -> None:
    if getattr(c, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"Falcon-H1 with hidden_act={c.hidden_act!r} is not supported (its MLP and Mamba-2 use silu).")
    if getattr(c, "mlp_bias", False):
        raise ConfigError("Falcon-H1 with mlp_bias=True is not supported: probe's swiglu MLP has no biases.")
    if bool(getattr(c, "mamba_proj_bias", False)) != bool(getattr(c, "projectors_bias", False)):
        raise ConfigError(f"Falcon-H1 with mamba_proj_bias={c.mamba_proj_bias} but projectors_bias={c.projectors_bias} "
                          "is not supported: probe's mamba2 has one proj_bias for in_proj and out_proj.")
    if int(c.mamba_d_conv) < 2:
        raise ConfigError(f"Falcon-H1 with mamba_d_conv={c.mamba_d_conv} is not supported (probe's mamba2 needs >= 2).")
    if int(c.mamba_n_heads) * int(c.mamba_d_head) != _d_inner(c):
        raise ConfigError(f"Falcon-H1 config has a Mamba-2 width (mamba_d_ssm or mamba_expand * hidden_size) of "
                          f"{_d_inner(c)} but mamba_n_heads * mamba_d_head = {int(c.mamba_n_heads) * int(c.mamba_d_head)}.")
    for name, n in (("mlp_multipliers", 2), ("ssm_multipliers", 5)):
        if len(getattr(c, name)) != n:
            raise ConfigError(f"Falcon-H1 {name} has {len(getattr(c, name))} entries; transformers reads {n}.")


def mamba2_options(c: Any) -> dict[str, Any]:
    """The ``mamba2`` options of a Falcon-H1 config."""
    lo, hi = (float(v) for v in (getattr(c, "time_step_limit", None) or (0.0, math.inf)))
    norm = ("before_gate" if c.mamba_norm_before_gate else "gated") if c.mamba_rms_norm else "none"
    return {"d_state": int(c.mamba_d_state), "d_conv": int(c.mamba_d_conv), "d_inner": _d_inner(c),
            "head_dim": int(c.mamba_d_head), "n_groups": int(c.mamba_n_groups), "chunk": int(c.mamba_chunk_size),
            "conv_bias": bool(c.mamba_conv_bias), "proj_bias": bool(c.mamba_proj_bias), "norm": norm,
            "dt_limit_min": lo, "dt_limit_max": None if math.isinf(hi) else hi}


def falcon_h1_config_from_hf(c: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` equivalent to a transformers ``FalconH1Config``."""
    _check_supported(c)
    n, d, heads = int(c.num_hidden_layers), int(c.hidden_size), int(c.num_attention_heads)
    attn = {"n_kv_heads": int(getattr(c, "num_key_value_heads", None) or heads),
            "bias": bool(getattr(c, "attention_bias", False)), **rotary_options(c)}
    embed = float(c.embedding_multiplier)
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=[LAYOUT] * n, n_heads=heads,
        d_head=int(getattr(c, "head_dim", None) or d // heads), mlp="swiglu", d_mlp=int(c.intermediate_size),
        norm="rmsnorm", norm_eps=float(c.rms_norm_eps), positional="rope", rope_base=rope_base(c),
        n_ctx=int(c.max_position_embeddings), tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        embed_scale=None if embed == 1.0 else embed, mixer_options={"attn": attn, "mamba2": mamba2_options(c)},
        name=str(getattr(c, "_name_or_path", "") or "falcon_h1"),
    )


def _scaled(entry: tuple[str, torch.Tensor], factor) -> tuple[str, torch.Tensor]:
    """``(source name, tensor * factor)``: a multiplier folded into a weight."""
    return entry[0], entry[1] * factor


def _attention(sd, c, cfg: ModelConfig, s: str, b: str, used: set[str]) -> Mapping:
    """One layer's attention part, with attention_in / key / attention_out multipliers folded."""
    w = attention_weights(sd, s + "self_attn.", b + "mixer.attn.", cfg.options("attn"), cfg.n_heads, cfg.d_head, used)
    m_in, m_key, m_out = float(c.attention_in_multiplier), float(c.key_multiplier), float(c.attention_out_multiplier)
    for name, entry in list(w.items()):
        if name.endswith(("W_q.weight", "W_v.weight")):
            w[name] = _scaled(entry, m_in)
        elif name.endswith("W_k.weight"):
            w[name] = _scaled(entry, m_in * m_key)
        elif name.endswith("W_k.bias"):
            w[name] = _scaled(entry, m_key)
        elif ".W_o." in name:
            w[name] = _scaled(entry, m_out)
    return w


def _mamba2(sd, c, cfg: ModelConfig, s: str, b: str, mup: torch.Tensor) -> Mapping:
    """One layer's Mamba-2 part, with ssm_in, the ssm_multipliers vector ``mup`` and ssm_out folded."""
    dst = b + "mixer.mamba2."
    w = mamba2_layer_weights(sd, s + "mamba.", dst, cfg.mixer_options["mamba2"], ARCH)
    if w[dst + "in_proj.weight"][1].shape[0] != mup.shape[0]:
        raise CheckpointError(f"{s}mamba.in_proj.weight has {w[dst + 'in_proj.weight'][1].shape[0]} rows but the "
                              f"mup_vector {mup.shape[0]}; the checkpoint and its config disagree.")
    w[dst + "in_proj.weight"] = _scaled(w[dst + "in_proj.weight"], mup[:, None] * float(c.ssm_in_multiplier))
    if dst + "in_proj.bias" in w:
        w[dst + "in_proj.bias"] = _scaled(w[dst + "in_proj.bias"], mup)
    for name in ("out_proj.weight", "out_proj.bias"):
        if dst + name in w:
            w[dst + name] = _scaled(w[dst + name], float(c.ssm_out_multiplier))
    return w


def mup_vector(c: Any) -> torch.Tensor:
    """``[rows of in_proj]``: ``ssm_multipliers`` spread over in_proj's ``z, x, B, C, dt`` row blocks (what
    transformers multiplies the projection by, its ``mup_vector``)."""
    d_inner, gn, heads = _d_inner(c), int(c.mamba_n_groups) * int(c.mamba_d_state), int(c.mamba_n_heads)
    sizes = (d_inner, d_inner, gn, gn, heads)
    return torch.cat([torch.full((n,), float(m)) for n, m in zip(sizes, c.ssm_multipliers)])


def falcon_h1_weights(cfg: ModelConfig, c: Any, sd: dict[str, torch.Tensor]) -> Mapping:
    """Our weights ``{probe name: (source name, tensor)}`` from a ``FalconH1ForCausalLM`` state dict, the
    multipliers of config ``c`` folded in (module docstring)."""
    get = lambda name: (name, take(sd, name, ARCH))
    lm_head = float(c.lm_head_multiplier)
    w: Mapping = {"W_E": get("model.embed_tokens.weight"), "ln_final.w": get("model.final_layernorm.weight")}
    if cfg.tie_embeddings:
        w["ln_final.w"] = _scaled(w["ln_final.w"], lm_head)
    else:
        w["W_U"] = ("lm_head.weight", take(sd, "lm_head.weight", ARCH).T * lm_head)
    gate, down = (float(m) for m in c.mlp_multipliers)
    mup, used = mup_vector(c), set()
    for i in range(cfg.n_layers):
        s, b = f"model.layers.{i}.", f"blocks.{i}."
        w[b + "ln1.w"] = get(s + "input_layernorm.weight")
        w[b + "ln2.w"] = get(s + "pre_ff_layernorm.weight")
        w[b + "mlp.W_in.weight"] = get(s + "feed_forward.up_proj.weight")
        w[b + "mlp.W_gate.weight"] = _scaled(get(s + "feed_forward.gate_proj.weight"), gate)
        w[b + "mlp.W_out.weight"] = _scaled(get(s + "feed_forward.down_proj.weight"), down)
        w.update(_attention(sd, c, cfg, s, b, used))
        w.update(_mamba2(sd, c, cfg, s, b, mup))
    return w


def falcon_h1_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``FalconH1ForCausalLM`` to a HookedLM with the same logits (module docstring).

    Tested: max abs logit difference < 1e-4 in float32 on tiny random configs with every multiplier
    away from 1 (each Mamba-2 readout: no norm, norm before the gate, gated norm), the final Mamba-2
    states and KV caches equal to transformers' cache, greedy generation identical.
    """
    sd = causal_lm_tensors(hf_model, "falcon_h1_from_hf", "FalconH1")
    c = hf_model.config
    cfg = falcon_h1_config_from_hf(c)
    weights = falcon_h1_weights(cfg, c, sd)
    check_all_used(sd, sources(weights), ARCH, tied=cfg.tie_embeddings)
    return build_model(cfg, weights, ARCH, tokenizer, getattr(c, "_name_or_path", ""), dtype)
