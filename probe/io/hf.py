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
``jamba``          ``JambaForCausalLM`` (Mamba-1 +         :mod:`probe.io.convert_jamba`
                   attention layers, MoE MLPs)
``qwen3_next``     ``Qwen3NextForCausalLM`` (Gated        :mod:`probe.io.convert_qwen3_next`
                   DeltaNet + gated attention, MoE MLPs)
``mamba2``         ``Mamba2ForCausalLM`` (Mamba-2 / SSD)   :mod:`probe.io.convert_mamba2`
``olmo_hybrid``    ``OlmoHybridForCausalLM`` (Gated        :mod:`probe.io.convert_olmo_hybrid`
                   DeltaNet + post-norm attention)
``kimi_linear``    ``KimiLinearForCausalLM`` (Kimi Delta   :mod:`probe.io.convert_kimi_linear`
                   Attention + latent attention, MoE)
``zamba2``         ``Zamba2ForCausalLM`` (Mamba-2 + shared :mod:`probe.io.convert_zamba2`
                   attention blocks, probe.shared_block)
``bamba``          ``BambaForCausalLM`` (Mamba-2 +        :mod:`probe.io.convert_bamba`
                   grouped-query attention layers)
``falcon_h1``      ``FalconH1ForCausalLM`` (attention and  :mod:`probe.io.convert_falcon_h1`
                   Mamba-2 in parallel in every layer)
=================  =====================================  ==================================

``rwkv7`` and ``hgrn2`` (flash-linear-attention's ``RWKV7ForCausalLM`` and ``HGRN2ForCausalLM``,
:mod:`probe.io.convert_rwkv7`, :mod:`probe.io.convert_hgrn2`): fla's classes need Triton, so a checkpoint
*folder* whose ``config.json`` names a model type in ``FOLDER_CONVERTERS`` is read straight from its files
(config + safetensors + tokenizer), without importing fla.

``recurrent_gemma`` (``RecurrentGemmaForCausalLM`` whose layers are all recurrent, Hawk):
:mod:`probe.io.convert_recurrentgemma`.

Converted logits equal the reference's to float rounding (tests: max abs diff < 1e-4 in
float32 on tiny random configs built in memory).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from probe.errors import CheckpointError, ConfigError


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


def _jamba(model, **kw):
    from probe.io.convert_jamba import jamba_from_hf
    return jamba_from_hf(model, **kw)


def _qwen3_next(model, **kw):
    from probe.io.convert_qwen3_next import qwen3_next_from_hf
    return qwen3_next_from_hf(model, **kw)


def _zamba2(model, **kw):
    from probe.io.convert_zamba2 import zamba2_from_hf
    return zamba2_from_hf(model, **kw)


def _rwkv7(model, **kw):
    from probe.io.convert_rwkv7 import rwkv7_from_fla
    return rwkv7_from_fla(model, **kw)


def _rwkv7_folder(folder, **kw):
    from probe.io.convert_rwkv7 import rwkv7_from_folder
    return rwkv7_from_folder(folder, **kw)


def _hgrn2(model, **kw):
    from probe.io.convert_hgrn2 import hgrn2_from_fla
    return hgrn2_from_fla(model, **kw)


def _hgrn2_folder(folder, **kw):
    from probe.io.convert_hgrn2 import hgrn2_from_folder
    return hgrn2_from_folder(folder, **kw)


def _olmo_hybrid(model, **kw):
    from probe.io.convert_olmo_hybrid import olmo_hybrid_from_hf
    return olmo_hybrid_from_hf(model, **kw)


def _bamba(model, **kw):
    from probe.io.convert_bamba import bamba_from_hf
    return bamba_from_hf(model, **kw)


def _kimi_linear(model, **kw):
    from probe.io.convert_kimi_linear import kimi_linear_from_hf
    return kimi_linear_from_hf(model, **kw)


def _falcon_h1(model, **kw):
    from probe.io.convert_falcon_h1 import falcon_h1_from_hf
    return falcon_h1_from_hf(model, **kw)


def _recurrent_gemma(model, **kw):
    from probe.io.convert_recurrentgemma import recurrentgemma_from_hf
    return recurrentgemma_from_hf(model, **kw)


CONVERTERS: dict[str, Callable] = {"gpt2": _gpt2, "rwkv": _rwkv, "xlstm": _xlstm, "mamba": _mamba,
                                   "mamba2": _mamba2, "xlstm-package": _xlstm_package}
CONVERTERS["qwen3_next"] = _qwen3_next
SUPPORTED = ("GPT2LMHeadModel (gpt2)", "RwkvForCausalLM (rwkv)", "xLSTMForCausalLM (xlstm)",
             "MambaForCausalLM (mamba)", "Mamba2ForCausalLM (mamba2)", "xlstm.xLSTMLMModel (mLSTM/sLSTM blocks)")
CONVERTERS["recurrent_gemma"] = _recurrent_gemma
CONVERTERS["jamba"] = _jamba
SUPPORTED += ("JambaForCausalLM (jamba)",)
CONVERTERS["zamba2"] = _zamba2
SUPPORTED += ("Zamba2ForCausalLM (zamba2: Mamba-2 layers + shared attention blocks)",)
SUPPORTED += ("RecurrentGemmaForCausalLM (recurrent_gemma, recurrent layers only)",)
CONVERTERS["bamba"] = _bamba
SUPPORTED += ("BambaForCausalLM (bamba: Mamba-2 + attention layers)",)
SUPPORTED += ("Qwen3NextForCausalLM (qwen3_next: Gated DeltaNet + gated attention layers, MoE MLPs)",)
CONVERTERS["olmo_hybrid"] = _olmo_hybrid
SUPPORTED += ("OlmoHybridForCausalLM (olmo_hybrid: Gated DeltaNet + post-norm attention layers)",)
CONVERTERS["kimi_linear"] = _kimi_linear
SUPPORTED += ("KimiLinearForCausalLM (kimi_linear: Kimi Delta Attention + latent attention, MoE MLPs)",)
CONVERTERS["rwkv7"] = _rwkv7
SUPPORTED += ("flash-linear-attention's RWKV7ForCausalLM (rwkv7; also its saved folder, read without fla)",)
CONVERTERS["falcon_h1"] = _falcon_h1
SUPPORTED += ("FalconH1ForCausalLM (falcon_h1: attention and Mamba-2 side by side in every layer)",)
CONVERTERS["hgrn2"] = _hgrn2
SUPPORTED += ("flash-linear-attention's HGRN2ForCausalLM (hgrn2; also its saved folder, read without fla)",)
#: model types converted from a checkpoint folder's files, without their (unimportable) model classes
FOLDER_CONVERTERS: dict[str, Callable] = {"rwkv7": _rwkv7_folder, "hgrn2": _hgrn2_folder}


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
    directory written by ``save_pretrained`` (loaded with ``AutoModelForCausalLM``, or read from its
    files for a model type in ``FOLDER_CONVERTERS``: flash-linear-attention's ``rwkv7``).
    ``tokenizer``: a tokenizer object or name; by default the model's own (``name_or_path``)
    when it can be loaded, else the byte tokenizer with a warning. A local folder without tokenizer
    files is a :class:`~probe.errors.CheckpointError` (raised before any weight is read) unless
    ``tokenizer`` is given.

    Example::

        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained("state-spaces/mamba-130m-hf")
        model = probe.from_hf(hf)                    # same logits as hf(ids).logits
        model.state_hook_names()                     # blocks.{i}.mixer.hook_state [batch, pos, d_inner, d_state], ...
    """
    if isinstance(model_or_id, str):
        if tokenizer is None:  # a folder without tokenizer files is refused before any weight is read
            from probe.io.convert_common import require_tokenizer_files
            require_tokenizer_files(model_or_id)
        folder_kind = _folder_model_type(model_or_id)
        if folder_kind in FOLDER_CONVERTERS:
            model = FOLDER_CONVERTERS[folder_kind](model_or_id, tokenizer=tokenizer, dtype=dtype)
            return model.to(device) if device is not None else model
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


def _folder_model_type(path: str) -> str | None:
    """The ``model_type`` of a local folder's ``config.json`` (``None`` for anything else)."""
    import json
    import os

    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return None
    try:
        with open(config) as f:
            kind = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


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
