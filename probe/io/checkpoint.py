r"""Loading a checkpoint (:mod:`probe.checkpoint_format`: ``config.json`` + ``model.safetensors``) into a
:class:`probe.HookedLM`, with every tensor's name and shape checked against the config *before* the
model is allocated (a crafted config cannot make the loader allocate more than its weight file
justifies) and every value checked finite. float8 weights load, cast up to the model's dtype.
:func:`save_model` and :func:`read_config` are the format's, importable from here too.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from probe.atomic import default_mode  # noqa: F401  (re-exported: checkpoint folders' permissions)
from probe.checkpoint_format import (CONFIG_FILE, FORMAT_VERSION, SAVE_ID, WEIGHTS_FILE, _locate, _parse,  # noqa: F401
                                     _settle_if_needed, read_config, save_model, settle, weights_file)
from probe.config import ModelConfig
from probe.errors import CheckpointError, InputError
from probe.io.bounded_build import build_bounded
from probe.model import HookedLM

#: elements a config may allocate beyond its weight file's while being checked (init temporaries)
BUILD_SLACK = 1 << 24


# -- loading --------------------------------------------------------------------------------
def load_model(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """Load a checkpoint directory into a :class:`probe.HookedLM` (float32 by default)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"Models load in a floating dtype (torch.float32, torch.bfloat16, ...), got {dtype!r}.")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"Unknown device {device!r}: {exc}") from exc
    path = Path(path)
    if path.is_dir():
        _settle_if_needed(path)
    payload, weights = _locate(path)
    cfg, meta = _parse(payload, path / CONFIG_FILE)
    model, tensors = _read_checked(cfg, weights)
    model.to(dtype)  # before loading: load_state_dict copies (and casts) into the existing parameters
    model.load_state_dict(tensors)
    model.meta = meta
    model.checkpoint_path = str(path)
    if device is not None:
        model.to(device)
    return model


def _read_checked(cfg: ModelConfig, weights: Path):
    """``(model, tensors)`` after checking the header's names and shapes against ``cfg`` (before
    allocating the model) and every tensor's dtype and values."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            model = _model_for(cfg, shapes, weights)
            expected = model.state_dict()
            tensors = {k: _checked_tensor(k, f.get_tensor(k), expected[k], weights) for k in shapes}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file (truncated or tampered?): {exc}") from exc
    return model, tensors


def _model_for(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], weights: Path):
    """The model ``cfg`` builds, once its state dict's names and shapes are those in ``shapes``."""
    budget = 4 * sum(int(torch.Size(s).numel()) for s in shapes.values()) + BUILD_SLACK
    model, spilled = build_bounded(lambda: HookedLM(cfg), budget)
    if model is None:
        raise CheckpointError(f"The config in {weights.parent} builds a model of more than {spilled:,} elements, far "
                              f"more than {weights.name} holds; the config does not belong to these weights.")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"Weights in {weights} do not match its config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}.")
    for k, shape in shapes.items():
        if shape != expected[k]:
            raise CheckpointError(f"Tensor {k!r} in {weights} has shape {shape} but the config implies "
                                  f"{expected[k]}.")
    return HookedLM(cfg) if spilled else model  # the shapes match the file, so the full build is bounded


def _checked_tensor(name: str, v: torch.Tensor, expected: torch.Tensor, weights: Path) -> torch.Tensor:
    if not v.is_floating_point() and expected.is_floating_point():
        raise CheckpointError(f"Tensor {name!r} in {weights} has dtype {v.dtype}, expected floating point.")
    if v.is_floating_point() and v.element_size() == 1:
        v = v.to(torch.float32)  # float8 storage: torch has no isfinite for it
    if v.is_floating_point() and not torch.isfinite(v).all():
        raise CheckpointError(f"Tensor {name!r} in {weights} contains NaN or inf.")
    return v
