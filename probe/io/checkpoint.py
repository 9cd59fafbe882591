r"""Checkpoints: a directory with ``config.json`` and ``model.safetensors`` (no pickle).

``config.json`` holds ``{"format": "probe", "version": 1, "config": {...ModelConfig...}}``
plus optional ``"meta"`` (training facts shown in model cards). Saving writes to a
temporary directory and renames it into place, so an interrupted save never leaves a
half-written checkpoint; loading checks every tensor's name and shape against the config.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError, InputError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 1


def default_mode(directory: bool = False) -> int:
    """The permissions a new file (or directory) gets under the process umask: safetensors and
    ``tempfile`` create private (0600 / 0700) ones, which other users could not read."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_atomically(target: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``target``, then rename it onto
    ``target`` (readers never see a half-written file; a failed write leaves ``target`` as it was)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, default_mode())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def save_model(model, path: str | Path, dtype: torch.dtype | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (a HookedLM) to directory ``path``; ``dtype`` e.g. ``torch.float16`` to shrink it."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise InputError(f"Models are saved in a floating dtype (torch.float16, torch.bfloat16, ...), got {dtype!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in model.state_dict().items()}
    payload = {"format": "probe", "version": FORMAT_VERSION, "config": model.cfg.to_dict(), "meta": meta or {}}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))
        os.chmod(tmp / WEIGHTS_FILE, default_mode())
        os.chmod(tmp, default_mode(directory=True))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """``(config, meta)`` of checkpoint directory ``path``, with clear errors for bad files."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"No checkpoint directory at {str(path)!r}.")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(f"{str(path)!r} has no {CONFIG_FILE}; a probe checkpoint holds {CONFIG_FILE} "
                              f"and {WEIGHTS_FILE} (written by model.save(path)).")
    try:
        payload = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict) or "config" not in payload:
        raise CheckpointError(f"{cfg_file} has no 'config' entry; is this a probe checkpoint?")
    if payload.get("format", "probe") != "probe":
        raise CheckpointError(f"{cfg_file} is a {payload['format']!r} file, not a probe checkpoint (format 'probe').")
    version = payload.get("version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{cfg_file} has format version {version!r}; this probe reads versions 1.."
                              f"{FORMAT_VERSION} (a newer probe wrote it? upgrade probe).")
    try:
        cfg = ModelConfig.from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{cfg_file}: {exc}") from exc
    return cfg, payload.get("meta", {})


def load_model(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """Load a checkpoint directory into a :class:`probe.HookedLM` (float32 by default)."""
    from probe.model import HookedLM

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"Models load in a floating dtype (torch.float32, torch.bfloat16, ...), got {dtype!r}.")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise InputError(f"Unknown device {device!r}: {exc}") from exc
    path = Path(path)
    cfg, meta = read_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{str(path)!r} has {CONFIG_FILE} but no {WEIGHTS_FILE}.")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file (truncated or tampered?): {exc}") from exc
    model = HookedLM(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"Weights in {weights} do not match its config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}.")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"Tensor {k!r} in {weights} has shape {tuple(v.shape)} but the config implies "
                                  f"{tuple(expected[k].shape)}.")
        if not v.is_floating_point() and expected[k].is_floating_point():
            raise CheckpointError(f"Tensor {k!r} in {weights} has dtype {v.dtype}, expected floating point.")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"Tensor {k!r} in {weights} contains NaN or inf.")
    model.to(dtype)  # before loading: load_state_dict copies (and casts) into the existing parameters
    model.load_state_dict(tensors)
    model.meta = meta
    model.checkpoint_path = str(path)
    if device is not None:
        model.to(device)
    return model
