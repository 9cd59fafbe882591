r"""Import flash-linear-attention's RWKV-7 (``RWKV7ForCausalLM``, ``model_type`` ``"rwkv7"``) into
:class:`probe.HookedLM` (``rwkv7`` layout).

fla's stack (``fla/models/rwkv7/modeling_rwkv7.py``, ``fla/layers/rwkv7.py``), with ``e`` the embedding::

    h_0     = pre_norm(e)                                   (layer 0 only, when norm_first)
    h, v    = h + attn_i(attn_norm_i(h), v_first)           (RWKV7Attention; layer 0 sets v_first = v)
    h       = h + ffn_i(ffn_norm_i(h))                      (RWKV7FeedForward, squared ReLU)
    logits  = lm_head(norm(h))

which is our :class:`probe.block.Block` with LayerNorms, the ``rwkv7`` mixer (value residual on) and
the ``rwkv7_channel_mix`` MLP. ``pre_norm`` reads only the token's embedding row, so it is folded into
``W_E`` exactly (``W_E[v] = pre_norm(e[v])``). Mapping (``i`` the layer)::

    model.embeddings.weight (+ layers.0.pre_norm)       -> W_E (folded)
    model.layers.i.attn_norm.{weight,bias}             -> blocks.i.ln1.{w,b}
    model.layers.i.attn.{x_r,x_w,x_k,x_v,x_a,x_g}      -> blocks.i.mixer.{same}   ([1, 1, d]; an older
                                                          checkpoint's attn.x_x [6, d] is split into them)
    model.layers.i.attn.{k_k,k_a,r_k}                  -> blocks.i.mixer.{same}
    model.layers.i.attn.{r,k,v,o}_proj.weight          -> blocks.i.mixer.{same}
    model.layers.i.attn.{w,a,g,v}_lora.lora.{0,2}.*    -> blocks.i.mixer.{same}   (v_lora: layers > 0)
    model.layers.i.attn.g_norm.{weight,bias}           -> blocks.i.mixer.g_norm.{weight,bias}
    model.layers.i.ffn_norm.{weight,bias}              -> blocks.i.ln2.{w,b}
    model.layers.i.ffn.{x_k,key.weight,value.weight}   -> blocks.i.mlp.{same}
    model.norm.{weight,bias}                           -> ln_final.{w,b}
    lm_head.weight                                     -> W_U (transposed; or tied to W_E)

With ``norm_bias=False`` the LayerNorm biases are zeros. Options carried over: ``head_dim`` ->
``d_head``, ``value_dim`` -> ``d_value`` (one width for every layer), the LoRA widths (read from
the weights), ``norm_eps`` (the LayerNorms' epsilon, and the group norm's ``head_dim * norm_eps``),
the MLP width (from ``ffn.key``). Refused with a :class:`~probe.errors.ConfigError`: interleaved
attention layers (``attn``), an activation other than ``sqrelu``, value widths that differ
between layers; a tensor this mapping does not know is a :class:`~probe.errors.CheckpointError`.

fla's model classes import Triton (a GPU), so the usual way in is a checkpoint folder
(``config.json`` + safetensors), read without fla: ``probe.from_hf("<folder>")`` dispatches here
on the folder's ``model_type``. Tested (tests/io/test_rwkv7_fla.py) against a forward assembled from
fla's own CPU reference functions.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from probe.config import ModelConfig
from probe.errors import ConfigError
from probe.io.convert_common import (Mapping, build_model, check_all_used, read_safetensors_folder, source_dict,
                                     sources, take)

ARCH = "RWKV-7 (fla)"
#: the token-shift lerp weights of the time mixing, in the order of an older checkpoint's ``attn.x_x``
LERPS = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
#: the low-rank projections (``lora.0``: down, no bias; ``lora.2``: up, with a bias except the gate's)
LORAS = {"w_lora": True, "a_lora": True, "g_lora": False, "v_lora": True}


def _field(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def _value_dim(config: Any, d: int, n: int) -> int:
    """fla's ``value_dim`` (``None``, an int, or one per layer) as the one width every layer uses."""
    value = _field(config, "value_dim")
    widths = [d] * n if value is None else [int(value)] * n if isinstance(value, (int, float)) else list(value)
    if len(set(widths)) != 1:
        raise ConfigError(f"RWKV-7 with value widths that differ between layers ({widths}) is not supported: "
                          "the value residual mixes every layer's values with the first layer's.")
    return int(widths[0])


def rwkv7_config_from_fla(config: Any, sd: dict[str, torch.Tensor]) -> ModelConfig:
    """The :class:`probe.ModelConfig` of an fla ``RWKV7Config`` (object or ``config.json`` dict); the
    MLP and LoRA widths come from the weights ``sd``."""
    if _field(config, "attn") is not None:
        raise ConfigError("RWKV-7 models with interleaved attention layers (config.attn) are not supported.")
    act = _field(config, "hidden_act", "sqrelu")
    if act != "sqrelu":
        raise ConfigError(f"RWKV-7 channel mixing with hidden_act={act!r} is not supported (fla's is 'sqrelu').")
    d, n = int(_field(config, "hidden_size")), int(_field(config, "num_hidden_layers"))
    head_dim, heads = _field(config, "head_dim"), _field(config, "num_heads")
    head_dim = int(head_dim) if head_dim is not None else d // int(heads)
    value_dim = _value_dim(config, d, n)
    def rank(lora: str, layer: int = 0) -> int:
        return take(sd, f"model.layers.{layer}.attn.{lora}.lora.0.weight", ARCH).shape[0]

    eps = float(_field(config, "norm_eps", 1e-5))
    options = {"d_head": head_dim, "d_value": value_dim, "d_decay_lora": rank("w_lora"), "d_a_lora": rank("a_lora"),
               "d_gate_lora": rank("g_lora"), "norm_eps": eps}
    if n > 1:
        options["d_value_lora"] = rank("v_lora", 1)
    return ModelConfig(
        vocab_size=int(_field(config, "vocab_size")), d_model=d, layout=["rwkv7"] * n, n_heads=d // head_dim,
        d_mlp=int(take(sd, "model.layers.0.ffn.key.weight", ARCH).shape[0]), norm="layernorm", norm_eps=eps,
        positional="none", tie_embeddings=bool(_field(config, "tie_word_embeddings", False)),
        mixer_options={"rwkv7": options}, name=str(_field(config, "_name_or_path", "") or "rwkv7"),
        default_prepend_bos=False,
    )


def _norm(sd: dict, src: str, dst: str, d: int) -> Mapping:
    """A LayerNorm's weight and bias (zeros when fla built it with ``norm_bias=False``)."""
    bias = (src + ".bias", sd[src + ".bias"]) if src + ".bias" in sd else ("(no bias)", torch.zeros(d))
    return {dst + ".w": (src + ".weight", take(sd, src + ".weight", ARCH)), dst + ".b": bias}


def _embedding(cfg: ModelConfig, sd: dict) -> tuple[str, torch.Tensor]:
    """``W_E``: the embedding with layer 0's ``pre_norm`` folded in (when the checkpoint has one)."""
    emb = take(sd, "model.embeddings.weight", ARCH)
    if "model.layers.0.pre_norm.weight" not in sd:
        return "model.embeddings.weight", emb
    w = sd["model.layers.0.pre_norm.weight"].float()
    b = sd.get("model.layers.0.pre_norm.bias")
    folded = F.layer_norm(emb.float(), (emb.shape[-1],), w, None if b is None else b.float(), cfg.norm_eps)
    return "model.embeddings.weight + model.layers.0.pre_norm", folded


def _time_mixing(sd: dict, i: int, d: int) -> Mapping:
    """Layer ``i``'s ``RWKV7Attention`` tensors under our names."""
    src, dst = f"model.layers.{i}.attn.", f"blocks.{i}.mixer."
    get = lambda name: (src + name, take(sd, src + name, ARCH))  # noqa: E731
    w: Mapping = {}
    if src + "x_x" in sd:  # fla's first layout: the six lerp weights stacked
        stacked = sd[src + "x_x"].reshape(len(LERPS), d)
        w.update({dst + name: (src + "x_x", stacked[j].view(1, 1, d)) for j, name in enumerate(LERPS)})
    else:
        w.update({dst + name: get(name) for name in LERPS})
    for name in ("k_k", "k_a", "r_k", "r_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                 "g_norm.weight", "g_norm.bias"):
        w[dst + name] = get(name)
    for lora, has_bias in LORAS.items():
        if lora == "v_lora" and i == 0:
            continue
        for part in ("lora.0.weight", "lora.2.weight") + (("lora.2.bias",) if has_bias else ()):
            w[f"{dst}{lora}.{part}"] = get(f"{lora}.{part}")
    return w


def rwkv7_weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> Mapping:
    """Our weights ``{probe name: (source name, tensor)}`` from an fla ``RWKV7ForCausalLM`` state dict."""
    d = cfg.d_model
    w: Mapping = {"W_E": _embedding(cfg, sd), **_norm(sd, "model.norm", "ln_final", d)}
    if not cfg.tie_embeddings:
        w["W_U"] = ("lm_head.weight", take(sd, "lm_head.weight", ARCH).T)
    for i in range(cfg.n_layers):
        w.update(_norm(sd, f"model.layers.{i}.attn_norm", f"blocks.{i}.ln1", d))
        w.update(_norm(sd, f"model.layers.{i}.ffn_norm", f"blocks.{i}.ln2", d))
        w.update(_time_mixing(sd, i, d))
        for name in ("x_k", "key.weight", "value.weight"):
            src = f"model.layers.{i}.ffn.{name}"
            w[f"blocks.{i}.mlp.{name}"] = (src, take(sd, src, ARCH))
    return w


def rwkv7_from_fla(model_or_state_dict: Any, config: Any = None, tokenizer: Any = None,
                   dtype: torch.dtype = torch.float32, name_or_path: str = ""):
    """Convert an fla ``RWKV7ForCausalLM`` (or its state dict plus its config, object or dict) to a
    HookedLM with the same logits (module docstring). ``name_or_path``: where a tokenizer is looked
    for when ``tokenizer`` is not given (a model object's own ``_name_or_path`` by default)."""
    if isinstance(model_or_state_dict, dict):
        sd = {k: v.detach() for k, v in model_or_state_dict.items()}
    elif hasattr(model_or_state_dict, "state_dict"):
        config = config if config is not None else model_or_state_dict.config
        sd = source_dict(model_or_state_dict)
        name_or_path = name_or_path or str(getattr(config, "_name_or_path", "") or "")
    else:
        raise ConfigError(f"rwkv7_from_fla expects an fla RWKV7ForCausalLM or a state dict, got "
                          f"{type(model_or_state_dict).__name__}.")
    if config is None:
        raise ConfigError("rwkv7_from_fla needs the RWKV-7 config (object or config.json dict) with a state dict.")
    cfg = rwkv7_config_from_fla(config, sd)
    weights = rwkv7_weights(cfg, sd)
    pre_norm = {"model.layers.0.pre_norm.weight", "model.layers.0.pre_norm.bias"}  # folded into W_E
    check_all_used(sd, sources(weights) | pre_norm, ARCH, tied=cfg.tie_embeddings, embed="model.embeddings.weight")
    return build_model(cfg, weights, ARCH, tokenizer, name_or_path, dtype)


def rwkv7_from_folder(folder: str, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert an fla RWKV-7 checkpoint folder (``config.json`` + safetensors, as fla's
    ``save_pretrained`` writes it) without importing fla; its tokenizer files are required unless
    ``tokenizer`` is given."""
    config, sd = read_safetensors_folder(folder)
    return rwkv7_from_fla(sd, config, tokenizer=tokenizer, dtype=dtype, name_or_path=folder)
