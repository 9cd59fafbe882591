r"""Import transformers' ``Zamba2ForCausalLM`` into :class:`probe.HookedLM`: Mamba-2 layers and shared blocks.

Zamba2's layer ``i`` is a Mamba-2 layer ``h + mamba(RMSNorm(h + c_i))`` with no MLP, where ``c_i = 0``
for a plain layer and, for a *hybrid* layer, ``c_i = linear_i(shared(h, e))``: the shared attention +
MLP block ``u % num_mem_blocks`` (``u`` counting hybrid layers) reading ``[h ; e]`` (``e`` the token
embeddings), with use ``u``'s own LoRA adapters. In probe terms (:mod:`probe.shared_block`):
``layout = ["mamba2"] * n``, ``mlp_layout = ["none"] * n``, ``shared_layout[i] = u % num_mem_blocks``
at hybrid layers (else ``None``), and the use's ``W_out`` is ``linear_i``. Mapping (``p`` =
``model.layers.i.``, ``s`` = ``p + "shared_transformer."``, ``j`` the shared block, ``u`` the use)::

    model.embed_tokens.weight                 -> W_E
    p[mamba_decoder.]input_layernorm.weight   -> blocks.i.ln1.w
    p[mamba_decoder.]mamba.*                  -> blocks.i.mixer.* (as probe.io.convert_mamba2)
    p linear.weight                           -> blocks.i.shared.W_out.weight
    s input_layernorm.weight                  -> shared_blocks.j.ln_in.w          [2 d_model]
    s self_attn.{q,k,v,o}_proj.weight         -> shared_blocks.j.W_{q,k,v,o}.weight
    s pre_ff_layernorm.weight                 -> shared_blocks.j.ln_mlp.w
    s feed_forward.gate_up_proj.weight        -> shared_blocks.j.W_gate_up.weight ([gate; up] rows)
    s feed_forward.down_proj.weight           -> shared_blocks.j.W_down.weight
    s self_attn.linear_{q,k,v}_adapter_list.u.{0,1}.weight -> blocks.i.shared.adapter_{q,k,v}.{down,up}.weight
    s feed_forward.gate_up_proj_adapter_list.u.{0,1}.weight -> blocks.i.shared.adapter_gate_up.{down,up}.weight
    model.final_layernorm.weight              -> ln_final.w
    lm_head.weight                            -> W_U (transposed; or tied to W_E, the default)

transformers ties the shared weights of every hybrid layer of block ``j`` to its first one: each
copy must equal the first (a :class:`~probe.errors.CheckpointError` names one that differs) and is
held once. Every source tensor must be used. Options carried over: the Mamba-2 widths
(``mamba_d_state``, ``mamba_d_conv``, ``mamba_expand``, ``mamba_headdim``, ``mamba_ngroups``,
``chunk_size``, ``use_conv_bias``, ``time_step_min`` as the dt clamp: transformers' one-token decode
step skips it, as for Mamba-2); the shared attention's heads (``num_attention_heads`` of
``2 hidden_size / num_attention_heads``, ``num_key_value_heads``), its scale ``1 / sqrt(d_head / 2)``,
RoPE when ``use_mem_rope`` (``rope_theta``; ``positional="rope"``), ``intermediate_size``, the MLP's
activation (gated: ``gelu`` -> ``geglu``), ``adapter_rank`` and ``use_shared_attention_adapter``.
Nothing is folded. Refused with a :class:`~probe.errors.ConfigError`: ``rms_norm_eps != 1e-5``
(transformers fixes the Mamba gated norm's epsilon at 1e-5, probe uses the model's ``norm_eps``),
``add_bias_linear`` (biases on the shared MLP), rope types other than ``default``.

Usage::

    from transformers import Zamba2ForCausalLM
    model = zamba2_from_hf(Zamba2ForCausalLM.from_pretrained("<a Zamba2 folder or hub id>"))
"""
from __future__ import annotations

from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_common import (Mapping, build_model, causal_lm_tensors, check_all_used, embedding_and_head,
                                     sources, take)
from probe.io.convert_mamba2 import mamba2_layer_weights

ARCH = "Zamba2"

#: transformers' activation -> the shared block's gated MLP kind
GATED_KINDS = {"gelu": "geglu", "silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu_tanh",
               "gelu_new": "geglu_tanh"}


def hybrid_layers(c: Any) -> list[int]:
    """The indices of the layers that read a shared block (transformers' ``hybrid_layer_ids``)."""
    return [i for i, kind in enumerate(c.layers_block_type) if kind == "hybrid"]


def _check_supported(c: Any) -> None:
    if float(c.rms_norm_eps) != 1e-5:
        raise ConfigError(f"Zamba2 with rms_norm_eps={c.rms_norm_eps} is not supported: transformers' Mamba gated "
                          "norm uses 1e-5 whatever the config says, probe's uses the model's norm_eps.")
    if bool(c.add_bias_linear):
        raise ConfigError("Zamba2 with add_bias_linear=True (biases on the shared MLP) is not supported.")
    if str(c.hidden_act) not in GATED_KINDS:
        raise ConfigError(f"Zamba2 with hidden_act={c.hidden_act!r} is not supported; supported: "
                          f"{', '.join(GATED_KINDS)}.")
    rope = getattr(c, "rope_parameters", None) or {}
    if c.use_mem_rope and rope.get("rope_type", "default") != "default":
        raise ConfigError(f"Zamba2 with rope_type={rope.get('rope_type')!r} is not supported (only 'default').")
    d_inner = int(c.mamba_expand * c.hidden_size)
    if d_inner % int(c.n_mamba_heads):
        raise ConfigError(f"Zamba2 config has mamba_expand * hidden_size = {d_inner}, not divisible by "
                          f"n_mamba_heads={c.n_mamba_heads}.")
    if not hybrid_layers(c):
        raise ConfigError("This Zamba2 config has no hybrid layer; convert a Mamba-2 model with mamba2_from_hf.")


def zamba2_config_from_hf(c: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` equivalent to a transformers ``Zamba2Config``."""
    _check_supported(c)
    n, d = int(c.num_hidden_layers), int(c.hidden_size)
    shared_layout: list[int | None] = [None] * n
    for u, i in enumerate(hybrid_layers(c)):
        shared_layout[i] = u % int(c.num_mem_blocks)
    d_head = 2 * d // int(c.num_attention_heads)
    rope = getattr(c, "rope_parameters", None) or {}
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=["mamba2"] * n, mlp_layout=["none"] * n, d_mlp=0,
        norm="rmsnorm", norm_eps=float(c.rms_norm_eps), n_heads=1, n_ctx=int(c.max_position_embeddings),
        positional="rope" if c.use_mem_rope else "none", rope_base=float(rope.get("rope_theta", 10000.0)),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
        mixer_options={"mamba2": {
            "d_state": int(c.mamba_d_state), "d_conv": int(c.mamba_d_conv), "expand": int(c.mamba_expand),
            "head_dim": int(c.mamba_expand * d) // int(c.n_mamba_heads), "n_groups": int(c.mamba_ngroups),
            "chunk": int(c.chunk_size), "conv_bias": bool(c.use_conv_bias),
            "dt_limit_min": float(c.time_step_min)}},
        shared_layout=shared_layout,
        shared_options={"n_heads": int(c.num_attention_heads), "n_kv_heads": int(c.num_key_value_heads),
                        "d_mlp": int(c.intermediate_size), "mlp": GATED_KINDS[str(c.hidden_act)],
                        "adapter_rank": int(c.adapter_rank), "attn_adapters": bool(c.use_shared_attention_adapter),
                        "scale": (d_head / 2) ** -0.5},
        name=str(getattr(c, "_name_or_path", "") or "zamba2"),
    )


def _mamba_weights(cfg: ModelConfig, sd: dict, src: str, i: int) -> Mapping:
    """Layer ``i``'s Mamba-2 mixer and its norm, from the ``Zamba2MambaDecoderLayer`` at ``src``."""
    norm = src + "input_layernorm.weight"
    w: Mapping = {f"blocks.{i}.ln1.w": (norm, take(sd, norm, ARCH))}
    w.update(mamba2_layer_weights(sd, src + "mamba.", f"blocks.{i}.mixer.", cfg.mixer_options["mamba2"], ARCH))
    return w


SHARED_TENSORS = {"ln_in.w": "input_layernorm.weight", "W_q.weight": "self_attn.q_proj.weight",
                  "W_k.weight": "self_attn.k_proj.weight", "W_v.weight": "self_attn.v_proj.weight",
                  "W_o.weight": "self_attn.o_proj.weight", "ln_mlp.w": "pre_ff_layernorm.weight",
                  "W_gate_up.weight": "feed_forward.gate_up_proj.weight", "W_down.weight": "feed_forward.down_proj.weight"}


def _adapter_weights(cfg: ModelConfig, sd: dict, src: str, i: int, u: int) -> Mapping:
    """Use ``u``'s adapters (layer ``i``) from the shared transformer at ``src``."""
    lists = {"gate_up": f"feed_forward.gate_up_proj_adapter_list.{u}."}
    if cfg.shared_options["attn_adapters"]:
        lists.update({p: f"self_attn.linear_{p}_adapter_list.{u}." for p in "qkv"})
    w: Mapping = {}
    for name, prefix in lists.items():
        for k, part in (("0", "down"), ("1", "up")):
            key = src + prefix + k + ".weight"
            w[f"blocks.{i}.shared.adapter_{name}.{part}.weight"] = (key, take(sd, key, ARCH))
    return w


def zamba2_weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> tuple[Mapping, set[str]]:
    """``(our weights {probe name: (source name, tensor)}, the tied copies checked equal to them)``."""
    w = embedding_and_head(sd, ARCH, "model.embed_tokens.weight", "model.final_layernorm.weight", cfg.tie_embeddings)
    first: dict[int, str] = {}  # shared block -> the transformers prefix holding its weights
    uses = 0
    for i, j in enumerate(cfg.shared_layout):
        p = f"model.layers.{i}."
        if j is None:
            w.update(_mamba_weights(cfg, sd, p, i))
            continue
        w.update(_mamba_weights(cfg, sd, p + "mamba_decoder.", i))
        w[f"blocks.{i}.shared.W_out.weight"] = (p + "linear.weight", take(sd, p + "linear.weight", ARCH))
        s = first.setdefault(j, p + "shared_transformer.")
        w.update(_adapter_weights(cfg, sd, s, i, uses))
        uses += 1
    for j, s in first.items():
        for ours, theirs in SHARED_TENSORS.items():
            w[f"shared_blocks.{j}.{ours}"] = (s + theirs, take(sd, s + theirs, ARCH))
    return w, _tied_copies(cfg, sd, first)


def _tied_copies(cfg: ModelConfig, sd: dict, first: dict[int, str]) -> set[str]:
    """The names of the shared-transformer tensors of the later uses of each block: each must equal the
    first use's tensor of the same name (transformers ties them)."""
    tied = set()
    for i, j in enumerate(cfg.shared_layout):
        s = f"model.layers.{i}.shared_transformer."
        if j is None or s == first[j]:
            continue
        for key in (k for k in sd if k.startswith(s)):
            canonical = first[j] + key[len(s):]
            if canonical not in sd or not torch.equal(sd[key], sd[canonical]):
                raise CheckpointError(f"Zamba2 tensor {key!r} should be tied to {canonical!r} (layers using shared "
                                      f"block {j} share its weights) but differs. transformers 5.25 leaves these "
                                      "copies untied when tie_word_embeddings=False; set it to True (the Zamba2 "
                                      "checkpoints' value) or fix the checkpoint.")
            tied.add(key)
    return tied


def zamba2_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``Zamba2ForCausalLM`` to a HookedLM with the same logits (module docstring).

    Tested (tests/io/test_zamba2.py): max abs logit difference < 1e-4 in float32 on tiny random
    configs, the final Mamba-2 states and the shared blocks' KV caches equal to transformers' cache,
    greedy generation identical, a ``save_pretrained`` folder loaded by ``probe.from_hf``.
    """
    sd = causal_lm_tensors(hf_model, "zamba2_from_hf", "Zamba2")
    c = hf_model.config
    cfg = zamba2_config_from_hf(c)
    weights, tied = zamba2_weights(cfg, sd)
    check_all_used(sd, sources(weights) | tied, ARCH, tied=cfg.tie_embeddings)
    return build_model(cfg, weights, ARCH, tokenizer, getattr(c, "_name_or_path", ""), dtype)
