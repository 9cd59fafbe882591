r"""What every converter in :mod:`probe.io` shares: the source tensors, a checked lookup, the tokenizer
rule and the checked build of the :class:`probe.HookedLM` (:mod:`probe.io.hf` dispatches to the
converters; a converter imports this module and the shared layer mappings it needs:
:mod:`~probe.io.convert_attention`, :mod:`~probe.io.convert_moe`, :mod:`~probe.io.convert_mamba2`)."""
from __future__ import annotations

import os
import warnings
from typing import Any, Iterable

import torch
from torch import Tensor

from probe.errors import CheckpointError, ConfigError, InputError
from probe.model import HookedLM
from probe.tokenizers import get_tokenizer

#: weights of a converted model: ``{probe name: (source name, tensor)}``
Mapping = dict[str, tuple[str, Tensor]]


#: files of which a transformers folder needs one to rebuild its tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")


def resolve_tokenizer(cfg, tokenizer: Any, name_or_path: str):
    """The tokenizer to attach: ``tokenizer`` if given, else the model's own by name, else bytes.

    A local folder without tokenizer files (:data:`TOKENIZER_FILES`) and a tokenizer that turns text
    into no tokens are errors: every text would silently become the BOS token alone.
    Sets ``cfg.tokenizer`` to the name when one is used, so a saved model reloads it."""
    if tokenizer is None and not name_or_path:
        return get_tokenizer("byte")
    if tokenizer is None:
        require_tokenizer_files(name_or_path)
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


def require_tokenizer_files(name_or_path: str) -> None:
    """A :class:`CheckpointError` naming :data:`TOKENIZER_FILES` when ``name_or_path`` is a local folder
    without any of them (a hub id passes: its files are not on disk)."""
    if os.path.isdir(name_or_path) and not any(os.path.isfile(os.path.join(name_or_path, f))
                                               for f in TOKENIZER_FILES):
        raise CheckpointError(f"{name_or_path!r} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}), so "
                              "text cannot be tokenized for it. Save the tokenizer beside the model "
                              "(tokenizer.save_pretrained(folder)) or name one: probe.from_hf(folder, "
                              "tokenizer='openai-community/gpt2').")


def source_dict(model: Any) -> dict[str, Tensor]:
    """The model's tensors (parameters and buffers), detached, as ``{name: tensor}``."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if any("_original_component" in k for k in sd):
        raise ConfigError(f"This {type(model).__name__} has been wrapped by a TransformerLens TransformerBridge "
                          "(boot_transformers rewrites the model's modules in place). Convert it with from_hf "
                          "before booting the bridge, or use probe.from_transformer_lens(bridge).")
    return sd


def causal_lm_tensors(hf_model: Any, fn: str, cls: str, embed: str = "model.embed_tokens.weight") -> dict[str, Tensor]:
    """The tensors of a transformers ``{cls}ForCausalLM`` (:func:`source_dict`), for converter ``fn``.

    A :class:`ConfigError` for anything that is not a transformers model, and for one without the
    embedding ``embed`` (the bare ``{cls}Model``, which has no language-model head)."""
    if not hasattr(hf_model, "config") or not hasattr(hf_model, "state_dict"):
        raise ConfigError(f"{fn} expects a transformers {cls}ForCausalLM, got {type(hf_model).__name__}.")
    sd = source_dict(hf_model)
    if embed not in sd:
        raise ConfigError(f"This {type(hf_model).__name__} has no {embed.removesuffix('.weight')}; pass a "
                          f"{cls}ForCausalLM (a bare {cls}Model has no language-model head).")
    return sd


def layer_kinds(c: Any, field: str, table: dict[str, str], arch: str) -> list[str]:
    """Config ``c``'s per-layer list ``field`` (``layer_types`` ...) translated by ``table`` into probe's
    names; a :class:`ConfigError` for a list of the wrong length or a kind ``table`` does not hold."""
    kinds, n = list(getattr(c, field, None) or []), int(c.num_hidden_layers)
    if len(kinds) != n:
        raise ConfigError(f"{arch} config has {len(kinds)} {field} for {n} layers; give one per layer.")
    unknown = [f"layer {i} is {t!r}" for i, t in enumerate(kinds) if t not in table]
    if unknown:
        raise ConfigError(f"{arch} {field}: {unknown[0]}; probe converts {' and '.join(map(repr, table))}.")
    return [table[t] for t in kinds]


def sources(weights: Mapping) -> set[str]:
    """The source names behind ``weights`` (a source folded from several, ``"a + b"``, names each)."""
    return {name for src, _ in weights.values() for name in src.split(" + ")}


def check_all_used(sd: dict[str, Tensor], used: Iterable[str], arch: str, tied: bool = False,
                   embed: str = "model.embed_tokens.weight", head: str = "lm_head.weight") -> None:
    """Refuse a conversion that would drop source tensors: every name of ``sd`` must be in ``used``.

    ``tied`` (the config ties the embeddings): a stored ``sd[head]`` is the tied copy, so it must equal
    ``sd[embed]`` (a :class:`CheckpointError` otherwise) and counts as used."""
    used = set(used)
    if tied and head in sd:
        if not torch.equal(sd[head], sd[embed]):
            raise CheckpointError(f"{arch} config says tie_word_embeddings=True but {head} differs from {embed}; "
                                  "set tie_word_embeddings=False to convert both, or fix the checkpoint.")
        used.add(head)
    unused = sorted(set(sd) - used)
    if unused:
        raise CheckpointError(f"{arch} checkpoint has tensors the conversion does not map: {unused[:5]}"
                              f"{' ...' if len(unused) > 5 else ''}; converting without them would change the model.")


def take(sd: dict[str, Tensor], name: str, arch: str) -> Tensor:
    """``sd[name]`` or a clear error naming the missing tensor."""
    if name not in sd:
        raise CheckpointError(f"{arch} checkpoint has no tensor {name!r}; is it a {arch} model?")
    return sd[name]


def embedding_and_head(sd: dict[str, Tensor], arch: str, embed: str, final_norm: str, tied: bool,
                       head: str = "lm_head.weight") -> Mapping:
    """The model-level weights of a pre-norm causal LM: ``W_E`` from ``embed``, ``ln_final.w`` from
    ``final_norm`` and, unless the embeddings are ``tied``, ``W_U`` as the transpose of ``head``."""
    w: Mapping = {"W_E": (embed, take(sd, embed, arch)), "ln_final.w": (final_norm, take(sd, final_norm, arch))}
    if not tied:
        w["W_U"] = (head, take(sd, head, arch).T)
    return w


def build_model(cfg, weights: Mapping, arch: str, tokenizer: Any, name_or_path: str, dtype: torch.dtype):
    """A HookedLM of ``cfg`` loaded with ``weights``; every shape is checked, nothing may stay unset.

    ``b_U`` defaults to zeros (none of the supported models has an unembedding bias)."""
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


def read_safetensors_folder(folder: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config.json as a dict, every tensor)`` of a checkpoint folder written by ``save_pretrained``
    (``model.safetensors``, or the shards its ``model.safetensors.index.json`` lists), for families
    whose model classes cannot be imported here (flash-linear-attention's need Triton)."""
    import json

    from safetensors.torch import load_file

    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{folder!r} has no config.json; give the folder save_pretrained wrote.")
    with open(config_path) as f:
        config = json.load(f)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder!r} has no model.safetensors (nor a model.safetensors.index.json); probe "
                              "reads safetensors only (no pickle): save with save_pretrained(folder, "
                              "safe_serialization=True).")
    tensors: dict[str, Tensor] = {}
    for name in files:
        tensors.update(load_file(os.path.join(folder, name)))
    return config, tensors
