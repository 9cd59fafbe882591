r"""Import the delta-rule layers of transformers: Qwen3-Next's Gated DeltaNet and Kimi Linear's Kimi
Delta Attention, one layer at a time or for a whole-model converter.

* :func:`gdn_mixer_from_hf`: one ``Qwen3NextGatedDeltaNet`` (``model.layers[i].linear_attn``) -> a
  ``gdn`` mixer (:class:`probe.mixers.gdn.GatedDeltaNet`); :func:`mixer_options` and
  :func:`mixer_weights` serve :mod:`probe.io.convert_qwen3_next`.
* :func:`kda_mixer_from_hf`: one ``KimiLinearDeltaAttention`` (``model.layers[i].self_attn`` of a
  ``"linear_attention"`` layer) -> a ``kda`` mixer (:class:`probe.mixers.gdn.KimiDeltaAttention`);
  :func:`kda_mixer_options` and :func:`kda_mixer_weights` serve a whole Kimi Linear converter.

Each mixer's output equals the module's and its final state the module's cache; mixers come back in
float32 and eval mode.

Gated DeltaNet mapping (``src = model.layers.i.linear_attn.``, ``r = Hv / Hk``)::

    src in_proj_qkvz.weight   -> mixer.{q,k,v,z}_proj   (rows grouped per key head as
                                 [q (K) | k (K) | v (r V) | z (r V)]: de-interleaved)
    src in_proj_ba.weight     -> mixer.{b,a}_proj       (per key head [b (r) | a (r)])
    src conv1d.weight         -> mixer.conv_weight      ([C, 1, k] -> [C, k]; channels [q | k | v])
    src A_log, dt_bias        -> mixer.A_log, dt_bias
    src norm.weight           -> mixer.norm.w           (the gated norm multiplies by w itself)
    src out_proj.weight       -> mixer.out_proj.weight

Kimi Delta Attention mapping (``src = model.layers.i.self_attn.``)::

    src {q,k,v,b,g_a,g_b}_proj.weight          -> mixer.{q,k,v,b,g_a,g_b}_proj.weight
    src forget_gate.{f_a_proj,f_b_proj}.weight -> mixer.{f_a_proj,f_b_proj}.weight
    src forget_gate.dt_bias, A_log [1,1,H,1]   -> mixer.dt_bias, A_log [H]
    src conv1d.weight [C, 1, k]                -> mixer.conv_weight [C, k]   (channels [q | k | v])
    src o_norm.weight, o_proj.weight           -> mixer.norm.w, mixer.out_proj.weight

Every source tensor of a layer must be used: an unmapped weight is a :class:`~probe.errors.CheckpointError`.

States (both): probe's ``state`` is transformers' ``cache.layers[i].recurrent_states[0]``
``[B, Hv, K, V]`` exactly; ``state_conv [B, k-1, C]`` is the last ``k - 1`` columns of
``conv_states[0] [B, C, k]``, transposed.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_common import check_all_used
from probe.mixers import MIXERS


def heads(hf_config: Any) -> dict[str, int]:
    """``Hk, Hv, K, V, d_conv`` of a Qwen3-Next config."""
    out = {"Hk": int(hf_config.linear_num_key_heads), "Hv": int(hf_config.linear_num_value_heads),
           "K": int(hf_config.linear_key_head_dim), "V": int(hf_config.linear_value_head_dim),
           "d_conv": int(hf_config.linear_conv_kernel_dim)}
    if out["Hv"] % out["Hk"]:
        raise ConfigError(f"Qwen3-Next linear_num_value_heads={out['Hv']} is not a multiple of "
                          f"linear_num_key_heads={out['Hk']}.")
    if getattr(hf_config, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"Qwen3-Next with hidden_act={hf_config.hidden_act!r} is not supported (its "
                          "short convolution and MLP use silu).")
    return out


def mixer_options(hf_config: Any) -> dict[str, Any]:
    """The ``gdn`` mixer options of a Qwen3-Next config."""
    h = heads(hf_config)
    return {"n_k_heads": h["Hk"], "n_v_heads": h["Hv"], "d_k": h["K"], "d_v": h["V"], "d_conv": h["d_conv"],
            "norm_eps": float(hf_config.rms_norm_eps)}


def mixer_weights(sd: dict[str, Tensor], src: str, h: dict[str, int], used: set[str]) -> dict[str, Tensor]:
    """The mixer's ``{name: tensor}`` from the tensors under prefix ``src`` (names recorded in ``used``)."""
    def get(name: str) -> Tensor:
        if src + name not in sd:
            raise CheckpointError(f"The Qwen3-Next state dict has no {src + name!r}; is this a Gated DeltaNet layer?")
        used.add(src + name)
        return sd[src + name]

    Hk, K, rV, r = h["Hk"], h["K"], h["Hv"] // h["Hk"] * h["V"], h["Hv"] // h["Hk"]
    qkvz = get("in_proj_qkvz.weight")
    d = qkvz.shape[-1]
    if qkvz.shape[0] != Hk * (2 * K + 2 * rV):
        raise CheckpointError(f"{src}in_proj_qkvz.weight has {qkvz.shape[0]} rows; the config implies "
                              f"{Hk * (2 * K + 2 * rV)}.")
    q, k, v, z = (w.reshape(-1, d) for w in qkvz.view(Hk, 2 * K + 2 * rV, d).split([K, K, rV, rV], dim=1))
    b, a = (w.reshape(-1, d) for w in get("in_proj_ba.weight").view(Hk, 2 * r, d).split([r, r], dim=1))
    conv = get("conv1d.weight")
    if conv.dim() != 3 or conv.shape[1] != 1:
        raise CheckpointError(f"{src}conv1d.weight has shape {tuple(conv.shape)}, expected [channels, 1, kernel].")
    return {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "z_proj.weight": z, "b_proj.weight": b,
            "a_proj.weight": a, "conv_weight": conv[:, 0], "A_log": get("A_log"), "dt_bias": get("dt_bias"),
            "norm.w": get("norm.weight"), "out_proj.weight": get("out_proj.weight")}


def gdn_mixer_from_hf(module: Any):
    """A :class:`~probe.mixers.gdn.GatedDeltaNet` equal to a transformers ``Qwen3NextGatedDeltaNet``.

    ``mixer(x)`` equals ``module(x)`` and its final state equals the module's cache (see the
    module docstring for the layouts). The mixer is in float32 and eval mode."""
    _expect(module, "Qwen3NextGatedDeltaNet", "gdn_mixer_from_hf", "model.model.layers[i].linear_attn")
    h = {"Hk": module.num_k_heads, "Hv": module.num_v_heads, "K": module.head_k_dim, "V": module.head_v_dim,
         "d_conv": module.conv_kernel_size}
    opts = {"n_k_heads": h["Hk"], "n_v_heads": h["Hv"], "d_k": h["K"], "d_v": h["V"], "d_conv": h["d_conv"],
            "norm_eps": float(module.layer_norm_epsilon)}
    return _layer_mixer("gdn", opts, module, lambda sd, used: mixer_weights(sd, "", h, used))


def _expect(module: Any, cls: str, fn: str, where: str) -> None:
    if type(module).__name__ != cls:
        raise ConfigError(f"{fn} expects a transformers {cls} ({where}), got {type(module).__name__}.")


def _layer_mixer(name: str, opts: dict[str, Any], module: Any, weights_of):
    """Mixer ``name`` with options ``opts`` holding ``weights_of(sd, used)`` of ``module``'s state dict
    (every tensor used), in float32 and eval mode."""
    cfg = ModelConfig(vocab_size=1, d_model=int(module.hidden_size), n_heads=1, layout=[name], d_mlp=0,
                      positional="none", mixer_options={name: opts})
    mixer = MIXERS[name](cfg, 0)
    sd = {k: v.detach() for k, v in module.state_dict().items()}
    used: set[str] = set()
    weights = weights_of(sd, used)
    check_all_used(sd, used, type(module).__name__)
    mixer.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()})
    return mixer.eval()


def kda_mixer_options(hf_config: Any) -> dict[str, Any]:
    """The ``kda`` mixer options of a Kimi Linear config (``linear_num_heads`` heads of ``linear_head_dim``
    for keys and values alike)."""
    if getattr(hf_config, "hidden_act", "silu") not in ("silu", "swish"):
        raise ConfigError(f"Kimi Linear with hidden_act={hf_config.hidden_act!r} is not supported (its short "
                          "convolution uses silu).")
    H, K = int(hf_config.linear_num_heads), int(hf_config.linear_head_dim)
    return {"n_k_heads": H, "n_v_heads": H, "d_k": K, "d_v": K, "d_conv": int(hf_config.linear_conv_kernel_dim),
            "norm_eps": float(hf_config.rms_norm_eps)}


def kda_mixer_weights(sd: dict[str, Tensor], src: str, used: set[str]) -> dict[str, Tensor]:
    """The ``kda`` mixer's ``{name: tensor}`` from a ``KimiLinearDeltaAttention``'s tensors under ``src``
    (``model.layers.i.self_attn.``); names recorded in ``used``. ``forget_gate.A_log [1, 1, H, 1]``
    becomes ``A_log [H]``, ``conv1d.weight [C, 1, k]`` becomes ``conv_weight [C, k]``."""
    def get(name: str) -> Tensor:
        if src + name not in sd:
            raise CheckpointError(f"The Kimi Linear state dict has no {src + name!r}; is this a Kimi Delta "
                                  "Attention layer?")
        used.add(src + name)
        return sd[src + name]

    conv = get("conv1d.weight")
    if conv.dim() != 3 or conv.shape[1] != 1:
        raise CheckpointError(f"{src}conv1d.weight has shape {tuple(conv.shape)}, expected [channels, 1, kernel].")
    out = {f"{n}.weight": get(f"{n}.weight") for n in ("q_proj", "k_proj", "v_proj", "b_proj", "g_a_proj", "g_b_proj",
                                                       "o_proj")}
    out["out_proj.weight"] = out.pop("o_proj.weight")
    out.update({"f_a_proj.weight": get("forget_gate.f_a_proj.weight"),
                "f_b_proj.weight": get("forget_gate.f_b_proj.weight"), "dt_bias": get("forget_gate.dt_bias"),
                "A_log": get("forget_gate.A_log").flatten(), "conv_weight": conv[:, 0], "norm.w": get("o_norm.weight")})
    return out


def kda_mixer_from_hf(module: Any):
    """A ``kda`` mixer (:class:`~probe.mixers.gdn.KimiDeltaAttention`) equal to a transformers
    ``KimiLinearDeltaAttention`` (``model.model.layers[i].self_attn`` of a ``"linear_attention"`` layer):
    the same output, its ``state`` equal to ``cache.layers[i].recurrent_states[0]`` and its ``state_conv``
    to the last ``k - 1`` columns of ``conv_states[0]``, transposed. Float32, eval mode."""
    _expect(module, "KimiLinearDeltaAttention", "kda_mixer_from_hf", "a linear_attention layer's self_attn")
    opts = {"n_k_heads": module.num_heads, "n_v_heads": module.num_heads, "d_k": module.head_dim,
            "d_v": module.head_dim, "d_conv": module.conv_kernel_size, "norm_eps": float(module.layer_norm_epsilon)}
    return _layer_mixer("kda", opts, module, lambda sd, used: kda_mixer_weights(sd, "", used))
