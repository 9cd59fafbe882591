r"""Import transformers' ``RwkvForCausalLM`` (RWKV-4) into :class:`probe.HookedLM` (``rwkv`` layout).

Block ``i``: ``h + time_mix(ln1(h))``, then ``h + channel_mix(ln2(h))``, LayerNorms with
biases; our ``rwkv`` mixer and ``rwkv_channel_mix`` MLP. Block 0 also applies ``pre_ln`` to
the embedding; that LayerNorm reads only the token's embedding row, so it is folded into
``W_E`` exactly (``W_E[v] = pre_ln(emb[v])``). Mapping::

    rwkv.embeddings + blocks.0.pre_ln             -> W_E (folded)
    rwkv.blocks.i.ln1 / ln2                       -> blocks.i.ln1 / ln2 (w, b)
    rwkv.blocks.i.attention.time_decay/first      -> blocks.i.mixer.time_decay / time_first
    rwkv.blocks.i.attention.time_mix_{key,value,receptance} -> blocks.i.mixer.mix_{k,v,r}
    rwkv.blocks.i.attention.{key,value,receptance,output}   -> blocks.i.mixer.W_{k,v,r,o}
    rwkv.blocks.i.feed_forward.time_mix_{key,receptance}    -> blocks.i.mlp.mix_{k,r}
    rwkv.blocks.i.feed_forward.{key,receptance,value}       -> blocks.i.mlp.W_{k,r,v}
    rwkv.ln_out, head                             -> ln_final, W_U

**The rescaling trap.** In eval mode transformers divides ``attention.output`` and
``feed_forward.value`` weights of block ``i`` *in place* by ``2 ** (i // rescale_every)``
(and the hidden state by 2 every ``rescale_every`` blocks) the first time it runs. The
converter reads ``layers_are_rescaled`` and undoes it, so the HookedLM holds the true
weights whatever the model's history; it equals the unrescaled model (the rescaled one
differs from it only through the LayerNorm epsilon).

transformers builds ``ln_out`` with the default epsilon (1e-5) and the other LayerNorms with
``layer_norm_epsilon``; probe has one ``norm_eps``, so a config with ``layer_norm_epsilon !=
1e-5`` is refused rather than converted approximately.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from probe.config import ModelConfig
from probe.errors import ConfigError
from probe.io.convert_common import Mapping, build_model, source_dict, take


def rwkv_config_from_hf(c: Any) -> ModelConfig:
    n, d = int(c.num_hidden_layers), int(c.hidden_size)
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=["rwkv"] * n, n_heads=1,
        d_mlp=int(c.intermediate_size or 4 * d), norm="layernorm", norm_eps=float(c.layer_norm_epsilon),
        positional="none", tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        mixer_options={"rwkv": {"d_attn": int(c.attention_hidden_size or d)}},
        name=str(getattr(c, "_name_or_path", "") or "rwkv"), default_prepend_bos=False,
    )


def rwkv_weights(cfg: ModelConfig, sd: dict, rescale: list[float]) -> Mapping:
    get = lambda name: (name, take(sd, name, "RWKV"))
    emb = take(sd, "rwkv.embeddings.weight", "RWKV")
    pre_w, pre_b = take(sd, "rwkv.blocks.0.pre_ln.weight", "RWKV"), take(sd, "rwkv.blocks.0.pre_ln.bias", "RWKV")
    if emb.shape[-1] != pre_w.shape[0]:
        raise ConfigError(f"RWKV embedding width {emb.shape[-1]} != pre_ln width {pre_w.shape[0]}.")
    w: Mapping = {"W_E": ("rwkv.embeddings.weight + pre_ln",
                          F.layer_norm(emb.float(), (emb.shape[-1],), pre_w.float(), pre_b.float(), cfg.norm_eps)),
                  "ln_final.w": get("rwkv.ln_out.weight"), "ln_final.b": get("rwkv.ln_out.bias")}
    if cfg.tie_embeddings:
        raise ConfigError("RWKV with tie_word_embeddings=True is not supported (pre_ln is folded into W_E).")
    w["W_U"] = ("head.weight", take(sd, "head.weight", "RWKV").T)
    for i in range(cfg.n_layers):
        p, q = f"rwkv.blocks.{i}.", f"blocks.{i}."
        A, M = p + "attention.", p + "feed_forward."
        for ours, theirs in (("ln1", "ln1"), ("ln2", "ln2")):
            w[f"{q}{ours}.w"], w[f"{q}{ours}.b"] = get(f"{p}{theirs}.weight"), get(f"{p}{theirs}.bias")
        w[q + "mixer.time_decay"], w[q + "mixer.time_first"] = get(A + "time_decay"), get(A + "time_first")
        for ours, theirs in (("k", "key"), ("v", "value"), ("r", "receptance")):
            w[f"{q}mixer.mix_{ours}"] = (A + f"time_mix_{theirs}", take(sd, A + f"time_mix_{theirs}", "RWKV").flatten())
            w[f"{q}mixer.W_{ours}.weight"] = get(A + f"{theirs}.weight")
        w[q + "mixer.W_o.weight"] = (A + "output.weight", take(sd, A + "output.weight", "RWKV") * rescale[i])
        for ours, theirs in (("k", "key"), ("r", "receptance")):
            w[f"{q}mlp.mix_{ours}"] = (M + f"time_mix_{theirs}", take(sd, M + f"time_mix_{theirs}", "RWKV").flatten())
            w[f"{q}mlp.W_{ours}.weight"] = get(M + f"{theirs}.weight")
        w[q + "mlp.W_v.weight"] = (M + "value.weight", take(sd, M + "value.weight", "RWKV") * rescale[i])
    return w


def rwkv_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert a transformers ``RwkvForCausalLM`` to a HookedLM with the same logits (see the module docstring)."""
    c = hf_model.config
    if abs(float(c.layer_norm_epsilon) - 1e-5) > 1e-12:
        raise ConfigError(f"RWKV with layer_norm_epsilon={c.layer_norm_epsilon} is not supported: transformers' final "
                          "norm uses 1e-5 regardless, and probe uses one epsilon for every norm.")
    cfg = rwkv_config_from_hf(c)
    sd = source_dict(hf_model)
    if "head.weight" not in sd:
        raise ConfigError("This is a bare RwkvModel without a language-model head; pass RwkvForCausalLM.")
    every = int(getattr(c, "rescale_every", 0) or 0)
    rescaled = bool(getattr(getattr(hf_model, "rwkv", None), "layers_are_rescaled", False)) and every > 0
    rescale = [float(2 ** (i // every)) if rescaled else 1.0 for i in range(cfg.n_layers)]
    return build_model(cfg, rwkv_weights(cfg, sd, rescale), "RWKV", tokenizer, getattr(c, "_name_or_path", ""), dtype)
