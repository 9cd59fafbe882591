r"""Import an HGRN2 language model in flash-linear-attention's layout (``HGRN2ForCausalLM``).

fla's block is ``h + attn(attn_norm(h))`` then ``h + mlp(mlp_norm(h))`` with a SwiGLU MLP
(``down(silu(gate(x)) * up(x))``), a final ``model.norm`` and ``lm_head`` — our
:class:`probe.block.Block` with ``norm="rmsnorm"`` and ``mlp="swiglu"``. Weight mapping::

    model.embeddings.weight                  -> W_E
    model.layers.i.attn_norm.weight          -> blocks.i.ln1.w
    model.layers.i.attn.{q,f,i,o}_proj.weight -> blocks.i.mixer.{q,f,i,o}_proj.weight
    model.layers.i.attn.g_norm.weight        -> blocks.i.mixer.g_norm.w   (ones if not affine)
    model.layers.i.mlp_norm.weight           -> blocks.i.ln2.w
    model.layers.i.mlp.gate_proj.weight      -> blocks.i.mlp.W_gate.weight
    model.layers.i.mlp.up_proj.weight        -> blocks.i.mlp.W_in.weight
    model.layers.i.mlp.down_proj.weight      -> blocks.i.mlp.W_out.weight
    model.norm.weight                        -> ln_final.w
    lm_head.weight                           -> W_U (transposed; or tied to W_E)

    model.lower_bounds [n_layers, d]         -> blocks.i.mixer.lower_bound [d], the *values*
        lb = softmax(lower_bounds, dim=0); lb = lb.cumsum(0) - lb[0]; layer i gets lb[i]
        (fla applies no bound in layer 0, and lb[0] is 0; use_lower_bound=False: all zeros)

fla's trainable matrix lives at model level (softmax over layers couples them); each of our
layers stores the resulting row, so the logits are identical but further training moves the
rows independently. Short convolutions (``use_short_conv``) and interleaved attention layers
(``attn``) are not supported and raise a :class:`probe.errors.ConfigError`.

flash-linear-attention needs a GPU (Triton); tests compare against a line-by-line
pure-torch implementation of its forward pass instead. A checkpoint folder (``config.json`` with
``model_type`` ``"hgrn2"`` + safetensors + tokenizer files) converts without fla:
``probe.from_hf("<folder>")`` (:func:`hgrn2_from_folder`).
"""
from __future__ import annotations

from typing import Any

import torch

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError


def _field(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def hgrn2_config_from_fla(config: Any, d_mlp: int) -> ModelConfig:
    """Our :class:`probe.ModelConfig` for an fla ``HGRN2Config`` (object or dict); ``d_mlp`` from the weights."""
    d = int(_field(config, "hidden_size"))
    expand = _field(config, "expand_ratio")
    heads = _field(config, "num_heads")
    if expand is None:
        if heads is None:
            raise ConfigError("The HGRN2 config gives neither expand_ratio nor num_heads.")
        expand = d // int(heads)
    if _field(config, "use_short_conv", False):
        raise ConfigError("HGRN2 with use_short_conv=True is not supported by probe's hgrn2 mixer.")
    if _field(config, "attn") is not None:
        raise ConfigError("HGRN2 models with interleaved attention layers (config.attn) are not supported.")
    act = _field(config, "hidden_act", "swish")
    if act not in ("swish", "silu"):
        raise ConfigError(f"HGRN2 MLP activation {act!r} is not supported (fla's default is 'swish').")
    n = int(_field(config, "num_hidden_layers"))
    return ModelConfig(
        vocab_size=int(_field(config, "vocab_size")),
        d_model=d,
        layout=["hgrn2"] * n,
        n_heads=max(1, d // int(expand)),
        d_mlp=int(d_mlp),
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=float(_field(config, "norm_eps", 1e-6)),
        positional="none",
        tie_embeddings=bool(_field(config, "tie_word_embeddings", False)),
        mixer_options={"hgrn2": {"expand_ratio": int(expand)}},
        name="hgrn2",
    )


def lower_bound_values(lower_bounds: torch.Tensor) -> torch.Tensor:
    """fla's per-layer forget-gate lower bounds from its ``model.lower_bounds`` matrix ``[n_layers, d]``."""
    sm = lower_bounds.float().softmax(dim=0)
    return sm.cumsum(dim=0) - sm[0]


def hgrn2_from_fla(model_or_state_dict: Any, config: Any = None, tokenizer: Any = None,
                   dtype: torch.dtype = torch.float32, name_or_path: str = ""):
    """Convert an fla ``HGRN2ForCausalLM`` (or its state dict plus its config) to a HookedLM.

    ``config``: the ``HGRN2Config`` (or a dict of its fields); taken from the model when a
    model is given. Every tensor's shape is checked against the config. ``name_or_path``: where the
    tokenizer is looked for when ``tokenizer`` is not given (the rule of
    :func:`probe.io.convert_common.resolve_tokenizer`; a model's own ``_name_or_path`` by default).
    """
    from probe.io.convert_common import resolve_tokenizer
    from probe.model import HookedLM

    if hasattr(model_or_state_dict, "state_dict") and not isinstance(model_or_state_dict, dict):
        config = config if config is not None else model_or_state_dict.config
        sd = model_or_state_dict.state_dict()
        name_or_path = name_or_path or str(_field(config, "_name_or_path", "") or "")
    elif isinstance(model_or_state_dict, dict):
        sd = model_or_state_dict
    else:
        raise ConfigError(f"hgrn2_from_fla expects an fla HGRN2ForCausalLM or a state dict, "
                          f"got {type(model_or_state_dict).__name__}.")
    if config is None:
        raise ConfigError("hgrn2_from_fla needs the HGRN2 config (object or dict) along with a state dict.")
    sd = {k: v.detach() for k, v in sd.items()}

    def get(name: str) -> torch.Tensor:
        if name not in sd:
            raise CheckpointError(f"The HGRN2 state dict has no {name!r}; expected flash-linear-attention's "
                                  "HGRN2ForCausalLM layout (model.layers.i.attn.q_proj.weight, ...).")
        return sd[name]

    cfg = hgrn2_config_from_fla(config, d_mlp=get("model.layers.0.mlp.gate_proj.weight").shape[0])
    d, n = cfg.d_model, cfg.n_layers
    out = {"W_E": get("model.embeddings.weight"), "ln_final.w": get("model.norm.weight"),
           "b_U": torch.zeros(cfg.vocab_size)}
    if not cfg.tie_embeddings:
        out["W_U"] = get("lm_head.weight").T
    if _field(config, "use_lower_bound", True):
        lb = lower_bound_values(get("model.lower_bounds"))
        if tuple(lb.shape) != (n, d):
            raise CheckpointError(f"model.lower_bounds has shape {tuple(lb.shape)}, expected {(n, d)}.")
        lb[0] = 0.0  # fla applies no lower bound in the first layer
    else:
        lb = torch.zeros(n, d)
    for i in range(n):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        out[dst + "ln1.w"] = get(src + "attn_norm.weight")
        out[dst + "ln2.w"] = get(src + "mlp_norm.weight")
        for p in ("q_proj", "f_proj", "i_proj", "o_proj"):
            out[f"{dst}mixer.{p}.weight"] = get(f"{src}attn.{p}.weight")
        g_norm = sd.get(src + "attn.g_norm.weight")
        out[dst + "mixer.g_norm.w"] = g_norm if g_norm is not None else torch.ones(d)
        out[dst + "mixer.lower_bound"] = lb[i]
        out[dst + "mlp.W_gate.weight"] = get(src + "mlp.gate_proj.weight")
        out[dst + "mlp.W_in.weight"] = get(src + "mlp.up_proj.weight")
        out[dst + "mlp.W_out.weight"] = get(src + "mlp.down_proj.weight")

    model = HookedLM(cfg, tokenizer=resolve_tokenizer(cfg, tokenizer, name_or_path))
    expected = model.state_dict()
    for name, tensor in out.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"HGRN2 weight for {name!r} has shape {tuple(tensor.shape)}, but the config "
                                  f"implies {tuple(expected[name].shape)}.")
    missing = sorted(set(expected) - set(out))
    if missing:  # a mapping gap would leave random weights behind: never silently
        raise CheckpointError(f"HGRN2 conversion left {missing[:5]} unset.")
    model.load_state_dict({k: v.to(dtype) for k, v in out.items()})
    return model.to(dtype).eval()


def hgrn2_from_folder(folder: str, tokenizer: Any = None, dtype: torch.dtype = torch.float32):
    """Convert an fla HGRN2 checkpoint folder (``config.json`` + safetensors, as fla's ``save_pretrained``
    writes it) without importing fla; its tokenizer files are required unless ``tokenizer`` is given."""
    from probe.io.convert_common import read_safetensors_folder

    config, sd = read_safetensors_folder(folder)
    return hgrn2_from_fla(sd, config, tokenizer=tokenizer, dtype=dtype, name_or_path=folder)
