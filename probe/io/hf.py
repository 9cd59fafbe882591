r"""``from_hf``: pretrained models from transformers (or the ``xlstm`` package) -> :class:`probe.HookedLM`.

::

    model = probe.from_hf("openai-community/gpt2")        # a hub id (needs network) or a local directory
    model = probe.from_hf(transformers_model)              # an in-memory model object

Dispatch is on ``config.model_type`` (or the class, for the ``xlstm`` package); one small
converter file per architecture maps the weights and checks every tensor's shape against the
config it derived:

=================  =====================================  ==================================
model_type         transformers class                     converter
=================  =====================================  ==================================
``gpt2``           ``GPT2LMHeadModel``                    :mod:`probe.io.convert_gpt2`
``rwkv``           ``RwkvForCausalLM`` (RWKV-4)            :mod:`probe.io.convert_rwkv`
``xlstm``          ``xLSTMForCausalLM`` (mLSTM, 7B design) :mod:`probe.io.convert_xlstm`
``xlstm-package``  ``xlstm.xLSTMLMModel`` (paper blocks)   :mod:`probe.io.convert_xlstm`
``mamba``          ``MambaForCausalLM``                   :mod:`probe.io.convert_mamba`
``qwen3_next``     ``Qwen3NextForCausalLM`` (all layers    :mod:`probe.io.convert_gdn`
                   Gated DeltaNet, dense MLPs)
``mamba2``         ``Mamba2ForCausalLM`` (Mamba-2 / SSD)   :mod:`probe.io.convert_mamba2`
=================  =====================================  ==================================

``recurrent_gemma`` (``RecurrentGemmaForCausalLM`` whose layers are all recurrent, Hawk):
:mod:`probe.io.convert_recurrentgemma`.

Converted logits equal the reference's to float rounding (tests: max abs diff < 1e-4 in
float32 on tiny random configs built in memory).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from probe.errors import CheckpointError, ConfigError, InputError

#: weights of a converted model: ``{probe name: (source name, tensor)}``
Mapping = dict[str, tuple[str, Tensor]]


def _gpt2(model, **kw):
    from probe.io.convert_gpt2 import gpt2_from_hf
    return gpt2_from_hf(model, **kw)


def _rwkv(model, **kw):
    from probe.io.convert_rwkv import rwkv_from_hf
    return rwkv_from_hf(model, **kw)


def _xlstm(model, **kw):
    from probe.io.convert_xlstm import xlstm_from_hf
    return xlstm_from_hf(model, **kw)


def _xlstm_package(model, **kw):
    from probe.io.convert_xlstm import xlstm_from_package
    return xlstm_from_package(model, **kw)


def _mamba(model, **kw):
    from probe.io.convert_mamba import mamba_from_hf  # written beside this file (another converter)
    return mamba_from_hf(model, **kw)


def _mamba2(model, **kw):
    from probe.io.convert_mamba2 import mamba2_from_hf
    return mamba2_from_hf(model, **kw)


def _qwen3_next(model, **kw):
    from probe.io.convert_gdn import qwen3_next_from_hf
    return qwen3_next_from_hf(model, **kw)


def _recurrent_gemma(model, **kw):
    from probe.io.convert_recurrentgemma import recurrentgemma_from_hf
    return recurrentgemma_from_hf(model, **kw)


CONVERTERS: dict[str, Callable] = {"gpt2": _gpt2, "rwkv": _rwkv, "xlstm": _xlstm, "mamba": _mamba,
                                   "mamba2": _mamba2, "xlstm-package": _xlstm_package}
CONVERTERS["qwen3_next"] = _qwen3_next
SUPPORTED = ("GPT2LMHeadModel (gpt2)", "RwkvForCausalLM (rwkv)", "xLSTMForCausalLM (xlstm)",
             "MambaForCausalLM (mamba)", "Mamba2ForCausalLM (mamba2)", "xlstm.xLSTMLMModel (mLSTM/sLSTM blocks)")
CONVERTERS["recurrent_gemma"] = _recurrent_gemma
SUPPORTED += ("RecurrentGemmaForCausalLM (recurrent_gemma, recurrent layers only)",)
SUPPORTED += ("Qwen3NextForCausalLM (qwen3_next, Gated DeltaNet layers only)",)


def model_kind(model: Any) -> str:
    """The converter key of a model object: its ``config.model_type``, or ``xlstm-package``."""
    if type(model).__name__ == "xLSTMLMModel" and type(model).__module__.startswith("xlstm"):
        return "xlstm-package"
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if not isinstance(kind, str):
        raise ConfigError(f"from_hf expects a transformers model (with .config.model_type) or a hub id; got "
                          f"{type(model).__name__}. Supported: {', '.join(SUPPORTED)}.")
    return kind


def from_hf(model_or_id: Any, device: str | torch.device | None = None, tokenizer: Any = None,
            dtype: torch.dtype = torch.float32):
    """Convert a pretrained model to a :class:`probe.HookedLM` with equal logits.

    ``model_or_id``: a transformers model object, an ``xlstm.xLSTMLMModel``, a hub id or a
    directory written by ``save_pretrained`` (loaded with ``AutoModelForCausalLM``).
    ``tokenizer``: a tokenizer object or name; by default the model's own (``name_or_path``)
    when it can be loaded, else the byte tokenizer with a warning.

    Example::

        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained("state-spaces/mamba-130m-hf")
        model = probe.from_hf(hf)                    # same logits as hf(ids).logits
        model.state_hook_names()                     # blocks.{i}.mixer.hook_state [batch, pos, d_inner, d_state], ...
    """
    if isinstance(model_or_id, str):
        model_or_id = _load_hub(model_or_id)
    kind = model_kind(model_or_id)
    if kind not in CONVERTERS:
        raise ConfigError(f"No converter for model_type {kind!r} ({type(model_or_id).__name__}). "
                          f"Supported: {', '.join(SUPPORTED)}.")
    was_training = getattr(model_or_id, "training", False)
    try:
        model = CONVERTERS[kind](model_or_id, tokenizer=tokenizer, dtype=dtype)
    finally:
        if hasattr(model_or_id, "train"):
            model_or_id.train(was_training)
    return model.to(device) if device is not None else model


def _load_hub(name: str):
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise ConfigError("Loading hub ids needs transformers: pip install 'probe[hf]'.") from exc
    try:
        return AutoModelForCausalLM.from_pretrained(name)
    except Exception as exc:  # offline, unknown id, unsupported architecture
        raise CheckpointError(f"Could not load {name!r} with transformers.AutoModelForCausalLM "
                              f"(offline, unknown id or unsupported architecture?): {exc}") from exc


#: files of which a transformers folder needs one to rebuild its tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")


def resolve_tokenizer(cfg, tokenizer: Any, name_or_path: str):
    """The tokenizer to attach: ``tokenizer`` if given, else the model's own by name, else bytes.

    A local folder without tokenizer files (:data:`TOKENIZER_FILES`) and a tokenizer that turns text
    into no tokens are errors: every text would silently become the BOS token alone.
    Sets ``cfg.tokenizer`` to the name when one is used, so a saved model reloads it."""
    import os

    from probe.tokenizers import get_tokenizer

    if tokenizer is None and not name_or_path:
        return get_tokenizer("byte")
    if tokenizer is None and os.path.isdir(name_or_path) and \
            not any(os.path.isfile(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES):
        raise CheckpointError(f"{name_or_path!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}), so "
                              "text cannot be tokenized for it. Save the tokenizer beside the model "
                              "(tokenizer.save_pretrained(folder)) or name one: probe.from_hf(folder, "
                              "tokenizer='openai-community/gpt2').")
    try:
        tok = get_tokenizer(tokenizer if tokenizer is not None else name_or_path)
    except InputError:
        if tokenizer is not None:
            raise
        warnings.warn(f"Could not load the tokenizer of {name_or_path!r}; using the byte tokenizer. "
                      "Pass tokenizer=... to from_hf to choose one.", stacklevel=3)
        return get_tokenizer("byte")
    if not tok.encode("hello world"):
        raise CheckpointError(f"The tokenizer of {tokenizer if tokenizer is not None else name_or_path!r} turns "
                              "'hello world' into no tokens; pass a working one: from_hf(..., tokenizer=...).")
    if isinstance(tokenizer, str) or tokenizer is None:
        cfg.tokenizer = tokenizer or name_or_path
    return tok


def source_dict(model: Any) -> dict[str, Tensor]:
    """The model's tensors (parameters and buffers), detached, as ``{name: tensor}``."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if any("_original_component" in k for k in sd):
        raise ConfigError(f"This {type(model).__name__} has been wrapped by a TransformerLens TransformerBridge "
                          "(boot_transformers rewrites the model's modules in place). Convert it with from_hf "
                          "before booting the bridge, or use probe.from_transformer_lens(bridge).")
    return sd


def take(sd: dict[str, Tensor], name: str, arch: str) -> Tensor:
    """``sd[name]`` or a clear error naming the missing tensor."""
    if name not in sd:
        raise CheckpointError(f"{arch} checkpoint has no tensor {name!r}; is it a {arch} model?")
    return sd[name]


def build_model(cfg, weights: Mapping, arch: str, tokenizer: Any, name_or_path: str, dtype: torch.dtype):
    """A HookedLM of ``cfg`` loaded with ``weights``; every shape is checked, nothing may stay unset.

    ``b_U`` defaults to zeros (none of the supported models has an unembedding bias)."""
    from probe.model import HookedLM

    tok = resolve_tokenizer(cfg, tokenizer, name_or_path)
    model = HookedLM(cfg, tokenizer=tok)
    expected = model.state_dict()
    for name, (src, tensor) in weights.items():
        if name not in expected:
            raise CheckpointError(f"{arch} conversion produced {name!r} (from {src!r}), which the config does not have.")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{arch} weight {src!r} has shape {tuple(tensor.shape)}, but its config implies "
                                  f"{tuple(expected[name].shape)} for {name!r}; the checkpoint and its config "
                                  "disagree.")
    state = {k: t for k, (_, t) in weights.items()}
    state.setdefault("b_U", torch.zeros_like(expected["b_U"]))
    missing = sorted(set(expected) - set(state))
    if missing:  # a mapping gap would leave random weights behind: never silently
        raise CheckpointError(f"{arch} conversion left {missing[:5]} unset.")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.to(dtype).eval()
