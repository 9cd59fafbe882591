r"""Import transformers' ``RecurrentGemmaForCausalLM`` (Griffin / Hawk) into :class:`probe.HookedLM`.

A RecurrentGemma layer is ``h + temporal_block(RMSNorm(h))`` then ``h + mlp_block(RMSNorm(h))``:
our :class:`probe.block.Block` with the ``rglru`` mixer (:mod:`probe.mixers.rglru`) and the
``geglu_tanh_bias`` MLP (``down(gelu_tanh(gate x) * up x)``, biases on all three). Gemma's
numerics map onto config options: embeddings scaled by ``sqrt(hidden_size)`` rounded to bfloat16
as transformers does (``embed_scale``), logits soft-capped (``logit_soft_cap``), embeddings tied,
and its RMSNorm's ``(1 + weight)`` folded into our norm weight. Weight mapping (``i`` a layer)::

    model.embed_tokens.weight                        -> W_E (and, tied, the unembedding)
    model.layers.i.temporal_pre_norm.weight          -> blocks.i.ln1.w   (1 + w)
    model.layers.i.channel_pre_norm.weight           -> blocks.i.ln2.w   (1 + w)
    model.layers.i.temporal_block.linear_{x,y,out}   -> blocks.i.mixer.linear_{x,y,out}
    model.layers.i.temporal_block.conv_1d            -> blocks.i.mixer.conv_weight ([W, 1, k] -> [W, k]), conv_bias
    model.layers.i.temporal_block.rg_lru.<p>         -> blocks.i.mixer.<p>  (input/recurrent gate weights and
                                                        biases, recurrent_param)
    model.layers.i.mlp_block.{gate,up,down}_proj     -> blocks.i.mlp.{W_gate, W_in, W_out}
    model.final_norm.weight                          -> ln_final.w       (1 + w)

Every source tensor must be mapped: a leftover is a :class:`CheckpointError`, not a silent drop.

Supported: configs whose layers are all recurrent (``block_types=["recurrent"]``, the Hawk
model). Griffin's attention layers (local sliding-window attention, multi-query, rotary on half
of each head) are refused with a :class:`ConfigError`: probe's attention has no window and rotates
whole heads, so their conversion would not be exact. The recurrent layers of any checkpoint match
layer by layer (``tests/mixers/test_rglru.py`` compares the block with transformers' module).
"""
from __future__ import annotations

from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError

ARCH = "RecurrentGemma"
#: the tanh-approximated GELU both the gate branch and the MLP use
ACTIVATION = "gelu_pytorch_tanh"
RGLRU_PARAMS = ("input_gate_weight", "input_gate_bias", "recurrent_gate_weight", "recurrent_gate_bias",
                "recurrent_param")


def embed_scale(hidden_size: int) -> float:
    """transformers' embedding normaliser: ``sqrt(hidden_size)`` held in bfloat16 (5.65625 for 32)."""
    return float(torch.tensor(hidden_size ** 0.5, dtype=torch.bfloat16))


def recurrentgemma_config_from_hf(hf_config: Any) -> ModelConfig:
    """The :class:`probe.ModelConfig` equivalent to a transformers ``RecurrentGemmaConfig``."""
    kinds = list(hf_config.layers_block_type)
    if any(kind != "linear_attention" for kind in kinds):
        raise ConfigError(f"This RecurrentGemma has attention layers (block_types={list(hf_config.block_types)}); "
                          "probe converts the recurrent layers only: its attention has no sliding window and "
                          "rotates whole heads, so Griffin's local attention would not convert exactly. Convert a "
                          "Hawk config (block_types=['recurrent']), or compare single recurrent blocks.")
    act = getattr(hf_config, "hidden_activation", ACTIVATION)
    if act != ACTIVATION:
        raise ConfigError(f"RecurrentGemma with hidden_activation={act!r} is not supported; probe's rglru gate "
                          f"and geglu_tanh_bias MLP use {ACTIVATION!r} (tanh GELU).")
    if not getattr(hf_config, "tie_word_embeddings", True):
        raise ConfigError("RecurrentGemma with untied embeddings is not supported (transformers ties them).")
    n, d_model = int(hf_config.num_hidden_layers), int(hf_config.hidden_size)
    return ModelConfig(
        vocab_size=int(hf_config.vocab_size), d_model=d_model, layout=["rglru"] * n,
        mlp_layout=["geglu_tanh_bias"] * n, d_mlp=int(hf_config.intermediate_size) // 2,
        n_heads=int(hf_config.num_attention_heads), norm="rmsnorm", norm_eps=float(hf_config.rms_norm_eps),
        positional="none", tie_embeddings=True, logit_soft_cap=float(hf_config.logits_soft_cap),
        embed_scale=embed_scale(d_model),
        mixer_options={"rglru": {"lru_width": int(hf_config.lru_width), "n_heads": int(hf_config.num_attention_heads),
                                 "d_conv": int(hf_config.conv1d_width)}},
        name=str(getattr(hf_config, "_name_or_path", "") or "recurrentgemma"),
    )


def _layer_weights(sd: dict, i: int, take) -> dict[str, tuple[str, torch.Tensor]]:
    """Our entries of layer ``i``: ``{probe name: (source name, tensor)}``."""
    src, dst = f"model.layers.{i}.", f"blocks.{i}."
    out = {f"{dst}ln1.w": (f"{src}temporal_pre_norm.weight", 1 + take(f"{src}temporal_pre_norm.weight")),
           f"{dst}ln2.w": (f"{src}channel_pre_norm.weight", 1 + take(f"{src}channel_pre_norm.weight"))}
    block = f"{src}temporal_block."
    for lin in ("linear_x", "linear_y", "linear_out"):
        for p in ("weight", "bias"):
            out[f"{dst}mixer.{lin}.{p}"] = (f"{block}{lin}.{p}", take(f"{block}{lin}.{p}"))
    conv = take(f"{block}conv_1d.weight")
    if conv.dim() != 3 or conv.shape[1] != 1:
        raise CheckpointError(f"{block}conv_1d.weight has shape {tuple(conv.shape)}, expected [lru_width, 1, width].")
    out[f"{dst}mixer.conv_weight"] = (f"{block}conv_1d.weight", conv[:, 0])
    out[f"{dst}mixer.conv_bias"] = (f"{block}conv_1d.bias", take(f"{block}conv_1d.bias"))
    for p in RGLRU_PARAMS:
        out[f"{dst}mixer.{p}"] = (f"{block}rg_lru.{p}", take(f"{block}rg_lru.{p}"))
    for theirs, ours in (("gate_proj", "W_gate"), ("up_proj", "W_in"), ("down_proj", "W_out")):
        for p in ("weight", "bias"):
            out[f"{dst}mlp.{ours}.{p}"] = (f"{src}mlp_block.{theirs}.{p}", take(f"{src}mlp_block.{theirs}.{p}"))
    return out


def _weights(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """Every probe weight with its source; refuses source tensors that nothing maps."""
    from probe.io.convert_common import take as take_from

    take = lambda name: take_from(sd, name, ARCH)
    out = {"W_E": ("model.embed_tokens.weight", take("model.embed_tokens.weight")),
           "ln_final.w": ("model.final_norm.weight", 1 + take("model.final_norm.weight"))}
    for i in range(cfg.n_layers):
        out.update(_layer_weights(sd, i, take))
    used = {src for src, _ in out.values()}
    head = sd.get("lm_head.weight")
    if head is not None and torch.equal(head, sd["model.embed_tokens.weight"]):
        used.add("lm_head.weight")  # the tied head
    leftover = sorted(set(sd) - used)
    if leftover:
        raise CheckpointError(f"{ARCH} tensors {leftover[:5]} have no place in the converted model (an untied "
                              "lm_head or weights of a newer layout); refusing to drop them silently.")
    return out


def recurrentgemma_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``RecurrentGemmaForCausalLM`` with only recurrent layers to a HookedLM.

    Logits equal transformers' to float rounding (tested on tiny random configs in float32:
    max abs diff < 1e-4), and so does each layer's last RG-LRU and conv state.
    """
    from probe.io.convert_common import build_model, source_dict

    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise ConfigError(f"recurrentgemma_from_hf expects a transformers RecurrentGemmaForCausalLM, got "
                          f"{type(hf_model).__name__}.")
    cfg = recurrentgemma_config_from_hf(hf_model.config)
    weights = _weights(cfg, source_dict(hf_model))
    return build_model(cfg, weights, ARCH, tokenizer, getattr(hf_model.config, "_name_or_path", ""), dtype)
