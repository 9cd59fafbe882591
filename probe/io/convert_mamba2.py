r"""Import transformers' ``Mamba2ForCausalLM`` (Mamba-2 / SSD) into :class:`probe.HookedLM` (``mamba2`` layout).

transformers' Mamba-2 block is ``h + mixer(RMSNorm(h))`` with no MLP, then ``norm_f`` and
``lm_head`` (untied by default): :class:`probe.block.Block` with the MLP slot empty, so the
converted config has ``layout = ["mamba2"] * n`` and ``mlp_layout = ["none"] * n``. Mapping
(``i`` the layer)::

    backbone.embeddings.weight              -> W_E
    backbone.layers.i.norm.weight           -> blocks.i.ln1.w
    backbone.layers.i.mixer.in_proj         -> blocks.i.mixer.in_proj     ([z; xBC; dt] rows, bias if use_bias)
    backbone.layers.i.mixer.conv1d.weight   -> blocks.i.mixer.conv_weight ([conv_dim, 1, k] -> [conv_dim, k])
    backbone.layers.i.mixer.conv1d.bias     -> blocks.i.mixer.conv_bias   (if use_conv_bias)
    backbone.layers.i.mixer.dt_bias, A_log, D -> blocks.i.mixer.dt_bias, A_log, D   ([num_heads] each)
    backbone.layers.i.mixer.norm.weight     -> blocks.i.mixer.norm_weight (the gated RMSNorm)
    backbone.layers.i.mixer.out_proj        -> blocks.i.mixer.out_proj
    backbone.norm_f.weight                  -> ln_final.w
    lm_head.weight                          -> W_U (transposed; or tied to W_E)

Every source tensor must be used: a checkpoint with a tensor this mapping does not know is refused
(a :class:`~probe.errors.CheckpointError` naming it), never converted without it. Options carried
over: ``state_size`` -> ``d_state``, ``head_dim``, ``n_groups``, ``conv_kernel`` -> ``d_conv``,
``expand``, ``chunk_size`` -> ``chunk``, ``time_step_limit`` -> ``dt_limit_min`` / ``dt_limit_max``,
``use_bias`` / ``use_conv_bias``; the gated norm uses ``layer_norm_epsilon`` like every norm.
``residual_in_fp32`` only matters in half precision (probe's residual stream keeps the model dtype).

Usage::

    from transformers import Mamba2ForCausalLM
    model = mamba2_from_hf(Mamba2ForCausalLM.from_pretrained("<a Mamba-2 folder or hub id>"))
"""
from __future__ import annotations

import math
from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_common import (Mapping, build_model, causal_lm_tensors, check_all_used, embedding_and_head,
                                     sources, take)

ARCH = "Mamba2"


def _dt_limit(c: Any) -> tuple[float, float | None]:
    lo, hi = (float(v) for v in getattr(c, "time_step_limit", (0.0, math.inf)))
    return lo, (None if math.isinf(hi) else hi)


def mamba2_config_from_hf(c: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` equivalent to a transformers ``Mamba2Config``."""
    act = getattr(c, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"Mamba-2 with hidden_act={act!r} is not supported; transformers' Mamba-2 uses 'silu'.")
    n, d = int(c.num_hidden_layers), int(c.hidden_size)
    if int(c.expand) * d != int(c.num_heads) * int(c.head_dim):
        raise ConfigError(f"Mamba-2 config has hidden_size * expand = {d * int(c.expand)} but num_heads * head_dim = "
                          f"{int(c.num_heads) * int(c.head_dim)}; they must be equal.")
    if int(c.conv_kernel) < 2:
        raise ConfigError(f"Mamba-2 with conv_kernel={c.conv_kernel} is not supported (probe's mamba2 needs >= 2).")
    lo, hi = _dt_limit(c)
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=["mamba2"] * n, mlp_layout=["none"] * n, d_mlp=0,
        norm="rmsnorm", norm_eps=float(c.layer_norm_epsilon), positional="none", n_heads=1,
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        mixer_options={"mamba2": {
            "d_state": int(c.state_size), "d_conv": int(c.conv_kernel), "expand": int(c.expand),
            "head_dim": int(c.head_dim), "n_groups": int(c.n_groups), "chunk": int(c.chunk_size),
            "conv_bias": bool(c.use_conv_bias), "proj_bias": bool(c.use_bias),
            "dt_limit_min": lo, "dt_limit_max": hi}},
        name=str(getattr(c, "_name_or_path", "") or "mamba2"),
    )


def mamba2_weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> Mapping:
    """Our weights ``{probe name: (source name, tensor)}`` from a ``Mamba2ForCausalLM`` state dict."""
    get = lambda name: (name, take(sd, name, ARCH))
    w = embedding_and_head(sd, ARCH, "backbone.embeddings.weight", "backbone.norm_f.weight", cfg.tie_embeddings)
    opts = cfg.mixer_options["mamba2"]
    for i in range(cfg.n_layers):
        w[f"blocks.{i}.ln1.w"] = get(f"backbone.layers.{i}.norm.weight")
        w.update(mamba2_layer_weights(sd, f"backbone.layers.{i}.mixer.", f"blocks.{i}.mixer.", opts, ARCH))
    return w


def mamba2_layer_weights(sd: dict[str, torch.Tensor], src: str, dst: str, opts: dict[str, Any], arch: str) -> Mapping:
    """One transformers Mamba-2 mixer (``Mamba2Mixer`` and the Mamba-2 layers of the hybrids: Bamba,
    Falcon-H1, Zamba2) under prefix ``src`` -> probe's ``mamba2`` mixer under ``dst`` (module docstring).

    ``opts``: the mixer's options as given (``proj_bias`` and ``conv_bias`` decide which biases exist)."""
    get = lambda name: (src + name, take(sd, src + name, arch))
    names = ["in_proj.weight", "dt_bias", "A_log", "D", "out_proj.weight"]
    names += ["in_proj.bias", "out_proj.bias"] if opts.get("proj_bias", False) else []
    w: Mapping = {dst + name: get(name) for name in names}
    if opts.get("norm", "gated") != "none":  # Falcon-H1 without mamba_rms_norm has no norm weight
        w[dst + "norm_weight"] = get("norm.weight")
    conv = take(sd, src + "conv1d.weight", arch)
    if conv.dim() != 3 or conv.shape[1] != 1:
        raise CheckpointError(f"{src}conv1d.weight has shape {tuple(conv.shape)}, expected [conv_dim, 1, d_conv].")
    w[dst + "conv_weight"] = (src + "conv1d.weight", conv[:, 0])
    if opts.get("conv_bias", True):
        w[dst + "conv_bias"] = get("conv1d.bias")
    return w


def mamba2_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``Mamba2ForCausalLM`` to a HookedLM with the same logits (module docstring).

    Tested: max abs logit difference < 1e-4 in float32 on tiny random configs (n_groups 1 and 2),
    the final states equal to transformers' cache, greedy generation identical.
    """
    sd = causal_lm_tensors(hf_model, "mamba2_from_hf", "Mamba2", embed="backbone.embeddings.weight")
    c = hf_model.config
    cfg = mamba2_config_from_hf(c)
    weights = mamba2_weights(cfg, sd)
    check_all_used(sd, sources(weights), ARCH, tied=cfg.tie_embeddings, embed="backbone.embeddings.weight")
    return build_model(cfg, weights, ARCH, tokenizer, getattr(c, "_name_or_path", ""), dtype)
