r"""Import transformers' ``MambaForCausalLM`` (Mamba-1) into :class:`probe.HookedLM`.

transformers' Mamba block is ``h + mixer(RMSNorm(h))`` with no MLP, then a final RMSNorm
``norm_f`` and ``lm_head`` (tied to the embedding by default) — our :class:`probe.block.Block`
with the MLP slot empty, so the converted config has ``layout = ["mamba"] * n`` and
``mlp_layout = ["none"] * n``. Weight mapping (``i`` the layer)::

    backbone.embeddings.weight               -> W_E
    backbone.layers.i.norm.weight            -> blocks.i.ln1.w
    backbone.layers.i.mixer.in_proj          -> blocks.i.mixer.in_proj      (weight, bias if use_bias)
    backbone.layers.i.mixer.conv1d.weight    -> blocks.i.mixer.conv_weight  ([d_inner, 1, k] -> [d_inner, k])
    backbone.layers.i.mixer.conv1d.bias      -> blocks.i.mixer.conv_bias    (if use_conv_bias)
    backbone.layers.i.mixer.x_proj.weight    -> blocks.i.mixer.x_proj.weight
    backbone.layers.i.mixer.dt_proj          -> blocks.i.mixer.dt_proj      (weight, bias)
    backbone.layers.i.mixer.A_log, D         -> blocks.i.mixer.A_log, D
    backbone.layers.i.mixer.out_proj         -> blocks.i.mixer.out_proj
    backbone.norm_f.weight                   -> ln_final.w
    lm_head.weight                           -> W_U (transposed; or tied to W_E)

Usage::

    from transformers import MambaForCausalLM
    model = mamba_from_hf(MambaForCausalLM.from_pretrained("state-spaces/mamba-130m-hf"))
"""
from __future__ import annotations

from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError


def mamba_config_from_hf(hf_config: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` equivalent to a transformers ``MambaConfig``."""
    act = getattr(hf_config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"Mamba with hidden_act={act!r} is not supported; transformers' Mamba uses 'silu'.")
    n = int(hf_config.num_hidden_layers)
    d_model = int(hf_config.hidden_size)
    d_inner = int(hf_config.intermediate_size)
    if d_inner % d_model:
        raise ConfigError(f"Mamba intermediate_size={d_inner} is not a multiple of hidden_size={d_model}; "
                          "probe's mamba mixer uses d_inner = expand * d_model.")
    return ModelConfig(
        vocab_size=int(hf_config.vocab_size),
        d_model=d_model,
        layout=["mamba"] * n,
        mlp_layout=["none"] * n,
        d_mlp=0,
        norm="rmsnorm",
        norm_eps=float(hf_config.layer_norm_epsilon),
        positional="none",
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)),
        n_heads=1,
        mixer_options={"mamba": {
            "d_state": int(hf_config.state_size),
            "d_conv": int(hf_config.conv_kernel),
            "expand": d_inner // d_model,
            "dt_rank": int(hf_config.time_step_rank),
            "conv_bias": bool(hf_config.use_conv_bias),
            "proj_bias": bool(hf_config.use_bias),
        }},
        name=str(getattr(hf_config, "_name_or_path", "") or "mamba"),
    )


def _weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state-dict entries from a transformers Mamba state dict."""
    def get(name: str) -> torch.Tensor:
        if name not in sd:
            raise CheckpointError(f"The Mamba state dict has no {name!r}; is this a transformers MambaForCausalLM?")
        return sd[name]

    out = {"W_E": get("backbone.embeddings.weight"), "ln_final.w": get("backbone.norm_f.weight")}
    if not cfg.tie_embeddings:
        out["W_U"] = get("lm_head.weight").T
    opts = cfg.mixer_options["mamba"]
    for i in range(cfg.n_layers):
        src, dst = f"backbone.layers.{i}.mixer.", f"blocks.{i}.mixer."
        out[f"blocks.{i}.ln1.w"] = get(f"backbone.layers.{i}.norm.weight")
        names = ["in_proj.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight"]
        if opts["proj_bias"]:
            names += ["in_proj.bias", "out_proj.bias"]
        for name in names:
            out[dst + name] = get(src + name)
        conv = get(src + "conv1d.weight")
        if conv.dim() != 3 or conv.shape[1] != 1:
            raise CheckpointError(f"{src}conv1d.weight has shape {tuple(conv.shape)}, expected [d_inner, 1, d_conv].")
        out[dst + "conv_weight"] = conv[:, 0]
        if opts["conv_bias"]:
            out[dst + "conv_bias"] = get(src + "conv1d.bias")
    return out


def mamba_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``MambaForCausalLM`` (or a bare ``MambaModel``, head tied) to a HookedLM.

    ``tokenizer``: a tokenizer object or name; by default the model's ``name_or_path`` is
    tried (works for hub ids when online or cached) and the byte tokenizer used otherwise.
    Logits equal the transformers model's to float rounding (tested: max abs diff < 1e-4 in
    float32 on random tiny configs). Every tensor's shape is checked against the config.
    """
    from probe.model import HookedLM

    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise ConfigError(f"mamba_from_hf expects a transformers MambaForCausalLM, got {type(hf_model).__name__}.")
    cfg = mamba_config_from_hf(hf_model.config)
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    if "backbone.embeddings.weight" not in sd and "embeddings.weight" in sd:  # a bare MambaModel
        sd = {f"backbone.{k}": v for k, v in sd.items()}
        cfg.tie_embeddings = True
    weights = _weights(cfg, sd)
    tok = _tokenizer(cfg, tokenizer, getattr(hf_model.config, "_name_or_path", ""))
    model = HookedLM(cfg, tokenizer=tok)
    expected = model.state_dict()
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"Mamba weight for {name!r} has shape {tuple(tensor.shape)}, but the config "
                                  f"implies {tuple(expected[name].shape)}.")
    missing = sorted(set(expected) - set(weights) - {"b_U"})
    if missing:  # a mapping gap would leave random weights behind: never silently
        raise CheckpointError(f"Mamba conversion left {missing[:5]} unset.")
    weights["b_U"] = torch.zeros_like(expected["b_U"])
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()})
    return model.to(dtype).eval()


def _tokenizer(cfg: ModelConfig, tokenizer: Any, name_or_path: str):
    """The tokenizer to attach; the shared rule of :func:`probe.io.convert_common.resolve_tokenizer`."""
    from probe.io.convert_common import resolve_tokenizer

    return resolve_tokenizer(cfg, tokenizer, name_or_path)
