r"""Import transformers' ``GPT2LMHeadModel`` into :class:`probe.HookedLM` (``attn`` layout).

GPT-2 is pre-norm with learned positions, LayerNorm, attention and MLP with biases, the
tanh-approximated GELU (``gelu_new`` -> our MLP kind ``gelu_tanh``) and an unembedding tied
to the token embedding. transformers' ``Conv1D`` computes ``x @ W + b`` (``W [in, out]``), so
its weights are transposed into our ``nn.Linear``\ s. Mapping (``i`` the layer)::

    transformer.wte / wpe                 -> W_E / W_pos
    transformer.h.i.ln_1, ln_2            -> blocks.i.ln1, ln2        (w, b)
    transformer.h.i.attn.c_attn [d, 3d]   -> blocks.i.mixer.W_q, W_k, W_v (split, transposed; biases)
    transformer.h.i.attn.c_proj           -> blocks.i.mixer.W_o
    transformer.h.i.mlp.c_fc, c_proj      -> blocks.i.mlp.W_in, W_out
    transformer.ln_f                      -> ln_final
    lm_head (tied)                        -> W_E.T (or W_U when untied)
"""
from __future__ import annotations

from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_common import Mapping, build_model, source_dict, take

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def gpt2_config_from_hf(c: Any) -> ModelConfig:
    act = getattr(c, "activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ConfigError(f"GPT-2 activation {act!r} is not supported; known: {', '.join(ACTIVATIONS)}.")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) or not getattr(c, "scale_attn_weights", True):
        raise ConfigError("GPT-2 variants with scale_attn_by_inverse_layer_idx=True or scale_attn_weights=False "
                          "are not supported (probe's attention scales scores by 1/sqrt(d_head)).")
    n, d = int(c.n_layer), int(c.n_embd)
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=["attn"] * n, n_heads=int(c.n_head),
        d_mlp=int(c.n_inner or 4 * d), mlp=ACTIVATIONS[act], norm="layernorm", norm_eps=float(c.layer_norm_epsilon),
        positional="learned", n_ctx=int(c.n_positions), tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
        mixer_options={"attn": {"bias": True}}, name=str(getattr(c, "_name_or_path", "") or "gpt2"),
    )


def gpt2_weights(cfg: ModelConfig, sd: dict) -> Mapping:
    d = cfg.d_model
    get = lambda name: (name, take(sd, name, "GPT-2"))
    w: Mapping = {"W_E": get("transformer.wte.weight"), "W_pos": get("transformer.wpe.weight"),
                  "ln_final.w": get("transformer.ln_f.weight"), "ln_final.b": get("transformer.ln_f.bias")}
    if not cfg.tie_embeddings:
        w["W_U"] = ("lm_head.weight", take(sd, "lm_head.weight", "GPT-2").T)
    for i in range(cfg.n_layers):
        p, q = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            w[f"{q}{ours}.w"], w[f"{q}{ours}.b"] = get(f"{p}{theirs}.weight"), get(f"{p}{theirs}.bias")
        src = f"{p}attn.c_attn.weight"
        W, b = take(sd, src, "GPT-2"), take(sd, f"{p}attn.c_attn.bias", "GPT-2")
        if W.shape != (d, 3 * d):
            raise CheckpointError(f"GPT-2 weight {src!r} has shape {tuple(W.shape)}, expected {(d, 3 * d)}.")
        for j, name in enumerate(("W_q", "W_k", "W_v")):
            w[f"{q}mixer.{name}.weight"] = (src, W[:, j * d:(j + 1) * d].T)
            w[f"{q}mixer.{name}.bias"] = (src, b[j * d:(j + 1) * d])
        for ours, theirs in (("mixer.W_o", "attn.c_proj"), ("mlp.W_in", "mlp.c_fc"), ("mlp.W_out", "mlp.c_proj")):
            w[f"{q}{ours}.weight"] = (f"{p}{theirs}.weight", take(sd, f"{p}{theirs}.weight", "GPT-2").T)
            w[f"{q}{ours}.bias"] = get(f"{p}{theirs}.bias")
    return w


def gpt2_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``GPT2LMHeadModel`` to a HookedLM with the same logits."""
    cfg = gpt2_config_from_hf(hf_model.config)
    sd = source_dict(hf_model)
    if "transformer.wte.weight" not in sd and "wte.weight" in sd:
        raise ConfigError("This is a bare GPT2Model without a language-model head; pass GPT2LMHeadModel.")
    return build_model(cfg, gpt2_weights(cfg, sd), "GPT-2", tokenizer,
                       getattr(hf_model.config, "_name_or_path", ""), dtype)
