r"""Import xLSTM models into :class:`probe.HookedLM`.

**transformers' ``xLSTMForCausalLM``** (the xLSTM-7B design, mLSTM blocks only):
``h + mLSTM(RMSNorm(h))``, ``h + SwiGLU(RMSNorm(h))``, final RMSNorm, logits soft-capped ->
layout ``["mlstm"] * n`` with MLP ``swiglu`` and ``logit_soft_cap``. Mapping::

    backbone.embeddings                          -> W_E
    backbone.blocks.i.norm_mlstm / norm_ffn      -> blocks.i.ln1 / ln2
    backbone.blocks.i.mlstm_layer.{q,k,v}        -> blocks.i.mixer.W_{q,k,v}
    backbone.blocks.i.mlstm_layer.ogate_preact   -> blocks.i.mixer.W_ogate
    backbone.blocks.i.mlstm_layer.{i,f}gate_preact -> blocks.i.mixer.W_{i,f}gate
    (weight_mode="fused": qkv_opreact and ifgate_preact are split in that order)
    backbone.blocks.i.mlstm_layer.multihead_norm -> blocks.i.mixer.head_norm_w (/ _b)
    backbone.blocks.i.mlstm_layer.out_proj       -> blocks.i.mixer.out_proj
    backbone.blocks.i.ffn.proj_up_gate / proj_up / proj_down -> blocks.i.mlp.W_gate / W_in / W_out
    backbone.out_norm, lm_head                   -> ln_final, W_U

The q/k widths come from the weights, not from ``config.qk_dim`` (which rounds up to a
multiple of 64 and disagrees with the layer for small models: a known transformers trap).

**The ``xlstm`` package's ``xLSTMLMModel``** (the paper's blocks, mixed stacks such as
xLSTM[7:1] included; sLSTM with the vanilla backend on CPU): mLSTM blocks ``h + mLSTM(LN(h))``
with no MLP -> ``mlstm`` with ``layer="paper"``; sLSTM blocks ``h + sLSTM(LN(h))``,
``h + GatedFFN(LN(h))`` -> ``slstm`` with MLP ``geglu`` (``act_fn="gelu"``) or ``swiglu``
(``"swish"``). The package's LayerNorms store ``weight - 1`` (``residual_weight``); its sLSTM
layer computes the input gate with the module named ``fgate`` and the forget gate with the
one named ``igate`` (the order of its ``i, f, z, o = fgate(.), igate(.), ...``), and keeps the
recurrent kernel and bias gate-major in the vanilla backend. Mapping (block ``i``, ``X`` =
``xlstm_block_stack.blocks.i.xlstm.``)::

    xlstm_block_stack.blocks.i.xlstm_norm / ffn_norm  -> blocks.i.ln1 / ln2   (w = 1 + weight)
    sLSTM  X.conv1d.conv                        -> blocks.i.mixer.W_conv, b_conv
           X.{fgate,igate,zgate,ogate}.weight   -> blocks.i.mixer.W_in[0..3]   (i, f, z, o)
           X.slstm_cell._recurrent_kernel_      -> blocks.i.mixer.R
           X.slstm_cell._bias_                  -> blocks.i.mixer.bias
           X.group_norm.weight                  -> blocks.i.mixer.norm_w        (1 + weight)
           ...ffn.proj_up (gate rows first), proj_down -> blocks.i.mlp.W_gate, W_in, W_out
    mLSTM  X.proj_up / proj_down                -> blocks.i.mixer.W_up / out_proj
           X.conv1d.conv                        -> blocks.i.mixer.W_conv, b_conv
           X.{q,k,v}_proj.weight                -> blocks.i.mixer.W{q,k,v}_blocks
           X.mlstm_cell.{igate,fgate}           -> blocks.i.mixer.W_{i,f}gate
           X.mlstm_cell.outnorm.weight          -> blocks.i.mixer.head_norm_w   (1 + weight)
           X.learnable_skip                     -> blocks.i.mixer.skip
    xlstm_block_stack.post_blocks_norm, lm_head -> ln_final, W_U
"""
from __future__ import annotations

from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_common import Mapping, build_model, source_dict, take

# -- transformers xLSTMForCausalLM -------------------------------------------------------------


def xlstm_config_from_hf(c: Any, sd: dict) -> ModelConfig:
    if getattr(c, "use_bias", False):
        raise ConfigError("xLSTM with use_bias=True is not supported (probe's swiglu MLP has no biases).")
    if not getattr(c, "add_out_norm", True):
        raise ConfigError("xLSTM with add_out_norm=False is not supported (HookedLM always has a final norm).")
    n, d, H = int(c.num_hidden_layers), int(c.hidden_size), int(c.num_heads)
    L = "backbone.blocks.0.mlstm_layer."
    if getattr(c, "weight_mode", "single") == "fused":
        qkvo = take(sd, L + "qkv_opreact.weight", "xLSTM").shape[0]
        ffn = take(sd, "backbone.blocks.0.ffn.proj_up_gate_z.weight", "xLSTM").shape[0] // 2
        vd = int(d * c.v_dim_factor)
        qk = (qkvo - 2 * vd) // 2
    else:
        qk, vd = take(sd, L + "q.weight", "xLSTM").shape[0], take(sd, L + "v.weight", "xLSTM").shape[0]
        ffn = take(sd, "backbone.blocks.0.ffn.proj_up.weight", "xLSTM").shape[0]
    cap = getattr(c, "output_logit_soft_cap", None)
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=d, layout=["mlstm"] * n, n_heads=H, d_mlp=int(ffn), mlp="swiglu",
        norm="rmsnorm", norm_eps=float(c.norm_eps), positional="none",
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)), logit_soft_cap=float(cap) if cap else None,
        mixer_options={"mlstm": {"qk_factor": qk / d, "v_factor": vd / d, "gate_soft_cap": c.gate_soft_cap,
                                 "eps": float(c.eps), "norm_eps": float(c.norm_eps), "bias": False,
                                 "chunk": int(c.chunk_size)}},
        name=str(getattr(c, "_name_or_path", "") or "xlstm"), default_prepend_bos=False,
    )


def xlstm_weights(cfg: ModelConfig, sd: dict, fused: bool) -> Mapping:
    get = lambda name: (name, take(sd, name, "xLSTM"))
    w: Mapping = {"W_E": get("backbone.embeddings.weight"), "ln_final.w": get("backbone.out_norm.weight")}
    if not cfg.tie_embeddings:
        w["W_U"] = ("lm_head.weight", take(sd, "lm_head.weight", "xLSTM").T)
    for i in range(cfg.n_layers):
        p, q = f"backbone.blocks.{i}.", f"blocks.{i}."
        L = p + "mlstm_layer."
        w[q + "ln1.w"], w[q + "ln2.w"] = get(p + "norm_mlstm.weight"), get(p + "norm_ffn.weight")
        if fused:
            src = L + "qkv_opreact.weight"
            W = take(sd, src, "xLSTM")
            d, qk = cfg.d_model, int(cfg.d_model * cfg.options("mlstm")["qk_factor"])
            vd = (W.shape[0] - 2 * qk) // 2
            for name, part in zip(("W_q", "W_k", "W_v", "W_ogate"), W.split([qk, qk, vd, vd])):
                w[f"{q}mixer.{name}.weight"] = (src, part)
            H = cfg.n_heads
            for kind in ("weight", "bias"):
                src = L + f"ifgate_preact.{kind}"
                i_part, f_part = take(sd, src, "xLSTM").split([H, H])
                w[f"{q}mixer.W_igate.{kind}"], w[f"{q}mixer.W_fgate.{kind}"] = (src, i_part), (src, f_part)
            up = take(sd, p + "ffn.proj_up_gate_z.weight", "xLSTM")
            gate, z = up.split(up.shape[0] // 2)
            w[q + "mlp.W_gate.weight"], w[q + "mlp.W_in.weight"] = (p + "ffn.proj_up_gate_z.weight", gate), \
                (p + "ffn.proj_up_gate_z.weight", z)
        else:
            for ours, theirs in (("W_q", "q"), ("W_k", "k"), ("W_v", "v"), ("W_ogate", "ogate_preact")):
                w[f"{q}mixer.{ours}.weight"] = get(f"{L}{theirs}.weight")
            for ours, theirs in (("W_igate", "igate_preact"), ("W_fgate", "fgate_preact")):
                w[f"{q}mixer.{ours}.weight"], w[f"{q}mixer.{ours}.bias"] = get(f"{L}{theirs}.weight"), \
                    get(f"{L}{theirs}.bias")
            w[q + "mlp.W_gate.weight"], w[q + "mlp.W_in.weight"] = get(p + "ffn.proj_up_gate.weight"), \
                get(p + "ffn.proj_up.weight")
        w[q + "mixer.head_norm_w"] = get(L + "multihead_norm.weight")
        w[q + "mixer.out_proj.weight"] = get(L + "out_proj.weight")
        w[q + "mlp.W_out.weight"] = get(p + "ffn.proj_down.weight")
    return w


def xlstm_from_hf(hf_model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert transformers' ``xLSTMForCausalLM`` to a HookedLM with the same logits."""
    c = hf_model.config
    sd = source_dict(hf_model)
    if "lm_head.weight" not in sd and not getattr(c, "tie_word_embeddings", False):
        raise ConfigError("This is a bare xLSTMModel without a language-model head; pass xLSTMForCausalLM.")
    cfg = xlstm_config_from_hf(c, sd)
    fused = getattr(c, "weight_mode", "single") == "fused"
    return build_model(cfg, xlstm_weights(cfg, sd, fused), "xLSTM", tokenizer, getattr(c, "_name_or_path", ""), dtype)


# -- the xlstm package's xLSTMLMModel (paper mLSTM and sLSTM blocks) -------------------------------

FFN_ACTS = {"gelu": "geglu", "swish": "swiglu"}
PKG = "xlstm package"


def xlstm_package_config(c: Any, sd: dict) -> ModelConfig:
    n = int(c.num_blocks)
    slstm_at = set(c.slstm_at)
    layout = ["slstm" if i in slstm_at else "mlstm" for i in range(n)]
    if not c.add_post_blocks_norm:
        raise ConfigError("xlstm package models without add_post_blocks_norm are not supported.")
    options, mlp, d_mlp, heads = {}, "none", 0, []
    if "slstm" in layout:
        block = c.slstm_block
        ff = block.feedforward
        if ff is not None:
            if ff.act_fn not in FFN_ACTS or ff.bias:
                raise ConfigError(f"xlstm feedforward act_fn={ff.act_fn!r}, bias={ff.bias} is not supported; "
                                  f"supported: act_fn in {sorted(FFN_ACTS)} without bias.")
            up = take(sd, f"xlstm_block_stack.blocks.{layout.index('slstm')}.ffn.proj_up.weight", PKG)
            mlp, d_mlp = FFN_ACTS[ff.act_fn], up.shape[0] // 2
        options["slstm"] = {"conv": int(block.slstm.conv1d_kernel_size), "heads": int(block.slstm.num_heads)}
        heads.append(int(block.slstm.num_heads))
    if "mlstm" in layout:
        m = c.mlstm_block.mlstm
        up = take(sd, f"xlstm_block_stack.blocks.{layout.index('mlstm')}.xlstm.proj_up.weight", PKG)
        options["mlstm"] = {"layer": "paper", "heads": int(m.num_heads), "d_inner": up.shape[0] // 2,
                            "conv": int(m.conv1d_kernel_size), "qkv_blocksize": int(m.qkv_proj_blocksize),
                            "bias": bool(m.bias), "eps": 1e-6, "norm_eps": 1e-5}
        heads.append(int(m.num_heads))
    return ModelConfig(
        vocab_size=int(c.vocab_size), d_model=int(c.embedding_dim), layout=layout, n_heads=heads[0],
        d_mlp=d_mlp, mlp=mlp, mlp_layout=[mlp if name == "slstm" else "none" for name in layout],
        norm="layernorm", norm_eps=1e-5, positional="none", tie_embeddings=bool(getattr(c, "tie_weights", False)),
        mixer_options=options, name="xlstm", default_prepend_bos=False,
    )


def _slstm_weights(cfg: ModelConfig, sd: dict, X: str, q: str) -> Mapping:
    get = lambda name: (name, take(sd, name, PKG))
    opts = cfg.options("slstm")
    H = int(opts["heads"] or cfg.n_heads)
    dh = cfg.d_model // H
    w: Mapping = {}
    if opts["conv"] > 1:
        conv = take(sd, X + "conv1d.conv.weight", PKG)
        w[q + "W_conv"] = (X + "conv1d.conv.weight", conv.reshape(conv.shape[0], -1))
        w[q + "b_conv"] = get(X + "conv1d.conv.bias")
    gates = [take(sd, X + f"{g}.weight", PKG) for g in ("fgate", "igate", "zgate", "ogate")]  # i, f, z, o
    w[q + "W_in"] = (X + "{f,i,z,o}gate.weight", torch.stack(gates))
    R = take(sd, X + "slstm_cell._recurrent_kernel_", PKG)  # [H, (gate, out), in]
    if R.numel() != 4 * H * dh * dh:
        raise CheckpointError(f"xlstm recurrent kernel has shape {tuple(R.shape)}, expected {(H, 4 * dh, dh)}.")
    w[q + "R"] = (X + "slstm_cell._recurrent_kernel_", R.reshape(H, 4, dh, dh).permute(1, 0, 2, 3))
    w[q + "bias"] = (X + "slstm_cell._bias_", take(sd, X + "slstm_cell._bias_", PKG).reshape(4, -1))  # gate-major
    w[q + "norm_w"] = (X + "group_norm.weight", 1.0 + take(sd, X + "group_norm.weight", PKG))
    return w


def _mlstm_weights(cfg: ModelConfig, sd: dict, X: str, q: str) -> Mapping:
    get = lambda name: (name, take(sd, name, PKG))
    opts = cfg.options("mlstm")
    w: Mapping = {q + "W_up.weight": get(X + "proj_up.weight"), q + "out_proj.weight": get(X + "proj_down.weight"),
                  q + "skip": get(X + "learnable_skip"),
                  q + "head_norm_w": (X + "mlstm_cell.outnorm.weight", 1.0 + take(sd, X + "mlstm_cell.outnorm.weight", PKG))}
    if opts["conv"] > 1:
        conv = take(sd, X + "conv1d.conv.weight", PKG)
        w[q + "W_conv"] = (X + "conv1d.conv.weight", conv.reshape(conv.shape[0], -1))
        w[q + "b_conv"] = get(X + "conv1d.conv.bias")
    for ours, theirs in (("Wq_blocks", "q_proj"), ("Wk_blocks", "k_proj"), ("Wv_blocks", "v_proj")):
        w[q + ours] = get(X + f"{theirs}.weight")
        if opts["bias"]:
            w[q + "b" + ours[1]] = get(X + f"{theirs}.bias")
    for ours, theirs in (("W_igate", "igate"), ("W_fgate", "fgate")):
        w[q + ours + ".weight"], w[q + ours + ".bias"] = get(X + f"mlstm_cell.{theirs}.weight"), \
            get(X + f"mlstm_cell.{theirs}.bias")
    if opts["bias"]:
        w[q + "W_up.bias"], w[q + "out_proj.bias"] = get(X + "proj_up.bias"), get(X + "proj_down.bias")
        w[q + "head_norm_b"] = ("(none)", torch.zeros_like(w[q + "head_norm_w"][1]))
    return w


def xlstm_package_weights(cfg: ModelConfig, sd: dict) -> Mapping:
    one_plus = lambda name: (name, 1.0 + take(sd, name, PKG))  # residual_weight LayerNorms store w - 1
    zeros = ("(none)", torch.zeros(cfg.d_model))
    w: Mapping = {"W_E": ("token_embedding.weight", take(sd, "token_embedding.weight", PKG)),
                  "ln_final.w": one_plus("xlstm_block_stack.post_blocks_norm.weight"), "ln_final.b": zeros}
    if not cfg.tie_embeddings:
        w["W_U"] = ("lm_head.weight", take(sd, "lm_head.weight", PKG).T)
    for i, name in enumerate(cfg.layout):
        p, q = f"xlstm_block_stack.blocks.{i}.", f"blocks.{i}."
        w[q + "ln1.w"], w[q + "ln1.b"] = one_plus(p + "xlstm_norm.weight"), zeros
        mixer = _slstm_weights if name == "slstm" else _mlstm_weights
        w.update(mixer(cfg, sd, p + "xlstm.", q + "mixer."))
        if cfg.mlp_layout[i] != "none":
            w[q + "ln2.w"], w[q + "ln2.b"] = one_plus(p + "ffn_norm.weight"), zeros
            up = take(sd, p + "ffn.proj_up.weight", PKG)
            gate, z = up.split(up.shape[0] // 2)
            w[q + "mlp.W_gate.weight"], w[q + "mlp.W_in.weight"] = (p + "ffn.proj_up.weight", gate), \
                (p + "ffn.proj_up.weight", z)
            w[q + "mlp.W_out.weight"] = (p + "ffn.proj_down.weight", take(sd, p + "ffn.proj_down.weight", PKG))
    return w


def xlstm_from_package(model: Any, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert an ``xlstm.xLSTMLMModel`` (paper mLSTM and/or sLSTM blocks) to a HookedLM with the same logits."""
    sd = source_dict(model)
    cfg = xlstm_package_config(model.config, sd)
    return build_model(cfg, xlstm_package_weights(cfg, sd), PKG, tokenizer, "", dtype)
