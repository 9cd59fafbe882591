r"""The attention layers of transformers' decoder families -> probe's ``attn`` mixer (weights and options).

Every Llama-descended attention in transformers (Llama, Qwen2 / 3, Qwen3-Next, OLMo-2 / hybrid, Bamba,
Granite, Falcon-H1, Zamba2's, Jamba's) has ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` and optionally
``q_norm`` / ``k_norm``; the families differ in options (:mod:`probe.mixers.attention`). Mapping, with
``src`` the module's prefix (``model.layers.i.self_attn.``) and ``dst`` the mixer's (``blocks.i.mixer.``)::

    src q_proj.{weight,bias}  -> dst W_q           (output_gate: rows [q_h (d); gate_h (d)] per head ->
                                                    W_q and W_gate, Qwen3-Next's layout)
    src k_proj, v_proj        -> dst W_k, W_v      ([n_kv_heads * d_head, d_model])
    src o_proj.{weight,bias}  -> dst W_o
    src q_norm.weight, k_norm.weight -> dst q_norm.w, k_norm.w   (as stored: the "head_offset" norm
                                                    keeps Qwen3-Next's zero-centred w, its gain is 1 + w)

Biases are taken when the options say so (``bias``: all four; ``qkv_bias``: q / k / v), and the
names taken are added to ``used`` so a converter can refuse tensors nobody mapped.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from probe.errors import CheckpointError, ConfigError


def rotary_options(hf_config: Any) -> dict[str, Any]:
    """``rotary_fraction`` of a transformers config (``rope_parameters["partial_rotary_factor"]``, or the
    older ``partial_rotary_factor`` attribute); ``{}`` when it is 1. Refuses RoPE scaling types probe
    does not implement (only ``"default"`` RoPE is)."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default")
    if kind != "default":
        raise ConfigError(f"RoPE type {kind!r} (rope_parameters) is not supported; probe's attention implements "
                          "the default RoPE only.")
    fraction = rope.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 1.0))
    return {} if fraction in (None, 1, 1.0) else {"rotary_fraction": float(fraction)}


def rope_base(hf_config: Any) -> float:
    """The RoPE frequency base (``rope_parameters["rope_theta"]``, or the older ``rope_theta``)."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    base = rope.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if base is None:
        raise ConfigError("The config names no rope_theta; probe needs RoPE's frequency base.")
    return float(base)


def attention_weights(sd: dict[str, Tensor], src: str, dst: str, options: dict[str, Any], n_heads: int,
                      d_head: int, used: set[str]) -> dict[str, tuple[str, Tensor]]:
    """``{probe name: (source name, tensor)}`` of one attention layer (module docstring).

    ``options`` are the layer's ``attn`` options (unset ones at their defaults)."""
    def get(name: str) -> Tensor:
        if src + name not in sd:
            raise CheckpointError(f"The checkpoint has no {src + name!r}; its attention layer does not have the "
                                  "shape the config implies.")
        used.add(src + name)
        return sd[src + name]

    bias, qkv_bias = options.get("bias", False), options.get("qkv_bias", False)
    out: dict[str, tuple[str, Tensor]] = {}
    suffixes = ("weight", "bias") if bias or qkv_bias else ("weight",)
    for ours, theirs in (("W_k", "k_proj"), ("W_v", "v_proj")):
        for s in suffixes:
            out[f"{dst}{ours}.{s}"] = (f"{src}{theirs}.{s}", get(f"{theirs}.{s}"))
    for s in ("weight", "bias") if bias else ("weight",):
        out[f"{dst}W_o.{s}"] = (f"{src}o_proj.{s}", get(f"o_proj.{s}"))
    for s in suffixes:
        q = get(f"q_proj.{s}")
        if options.get("output_gate", False):
            rows = q.shape[0]
            if rows != 2 * n_heads * d_head:
                raise CheckpointError(f"{src}q_proj.{s} has {rows} rows; a gated attention layer of {n_heads} heads "
                                      f"of {d_head} needs {2 * n_heads * d_head} (query and gate per head).")
            q, gate = q.unflatten(0, (n_heads, 2 * d_head)).split(d_head, dim=1)
            q, gate = q.flatten(0, 1), gate.flatten(0, 1)
            out[f"{dst}W_gate.{s}"] = (f"{src}q_proj.{s}", gate)
        out[f"{dst}W_q.{s}"] = (f"{src}q_proj.{s}", q)
    if options.get("qk_norm", "none") != "none":
        for name in ("q_norm", "k_norm"):
            out[f"{dst}{name}.w"] = (f"{src}{name}.weight", get(f"{name}.weight"))
    return out
