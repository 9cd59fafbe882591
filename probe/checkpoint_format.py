r"""Checkpoints: a directory with ``config.json`` and ``model.safetensors`` (no pickle).

``config.json`` holds ``{"format": "probe", "version": 1, "config": {...ModelConfig...}}``
plus optional ``"meta"`` (training facts shown in model cards) and ``"weights_id"``, the
random id of the save that wrote it; ``model.safetensors`` carries the same id in its header
metadata (``probe_save_id``), so the two files of one save are never mixed with another's.

Saving replaces only these two files and keeps everything else in the folder (notes, a tuned
lens saved beside the model, a model card). One save, under an exclusive lock on the folder:

1. write the weights to ``.model.safetensors.<id>`` (a name no reader uses yet) and fsync;
2. replace ``config.json`` atomically with one naming ``<id>``: **the commit point**;
3. rename ``.model.safetensors.<id>`` onto ``model.safetensors``.

A process killed before step 2 leaves the old checkpoint (plus a stray pending file); after
it, the new one: a reader whose ``model.safetensors`` has another id takes the pending file
named by ``config.json``, and the next save or load renames it into place (step 3) and
deletes stray temporaries. Weights without an id (older probe, other tools) are accepted.

Saving refuses a path that is a file, and a non-empty folder that holds no probe checkpoint
unless ``overwrite=True`` (which writes the two files into it and still keeps the rest).
Saving through a symlink writes into the folder it points to.

Loading (:func:`probe.io.checkpoint.load_model`) checks every tensor's name and shape in the safetensors header against the config
*before* the model is allocated, so a crafted config cannot make the loader allocate more
than its weight file justifies. float8 weights (``float8_e4m3fn``, ``float8_e5m2``) load,
cast up to the model's dtype.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from probe.atomic import default_mode, directory_lock, fsync_path, temp_prefix, write_atomically, write_new_file
from probe.config import ModelConfig
from probe.errors import CheckpointError, ConfigError, InputError


CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 1
SAVE_ID = "probe_save_id"  # key of the save id in the safetensors header metadata


# -- saving ---------------------------------------------------------------------------------
def save_model(model, path: str | Path, dtype: torch.dtype | None = None, meta: dict[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    """Save ``model`` (a HookedLM) to directory ``path``; ``dtype`` e.g. ``torch.float16`` to shrink it.

    Only ``config.json`` and ``model.safetensors`` are replaced (atomically, see the module
    docstring); other files in ``path`` stay. ``overwrite=True`` allows a non-empty folder
    that holds no probe checkpoint."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise InputError(f"Models are saved in a floating dtype (torch.float16, torch.bfloat16, ...), got {dtype!r}.")
    path = Path(path)
    _check_target(path, overwrite)
    save_id = uuid.uuid4().hex
    cast = lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v  # noqa: E731
    tensors = {k: cast(v.detach()).contiguous().cpu() for k, v in model.state_dict().items()}
    data = safetensors_bytes(tensors, metadata={SAVE_ID: save_id})
    payload = {"format": "probe", "version": FORMAT_VERSION, "config": model.cfg.to_dict(), "meta": meta or {},
               "weights_id": save_id}
    if not path.is_dir():
        path.mkdir(parents=True)
        os.chmod(path, default_mode(directory=True))
    with directory_lock(path):
        settle(path)
        _commit(path, data, payload, save_id)
    return path


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_symlink() and not path.exists():
        raise InputError(f"{str(path)!r} is a broken symbolic link; point it at a folder or save elsewhere.")
    if path.exists() and not path.is_dir():
        raise InputError(f"{str(path)!r} is a file, not a folder; a checkpoint is a folder (config.json + "
                         f"{WEIGHTS_FILE}). Give a folder path.")
    if overwrite or not path.is_dir() or _holds_checkpoint(path):
        return
    foreign = sorted(n for n in os.listdir(path) if not _is_temporary(n))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise InputError(f"{str(path)!r} holds {shown} but no probe checkpoint; save into a new or empty folder, "
                         f"or pass overwrite=True to write {CONFIG_FILE} and {WEIGHTS_FILE} into it (other files "
                         "are kept).")


def _holds_checkpoint(path: Path) -> bool:
    try:
        payload = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and "config" in payload and payload.get("format", "probe") == "probe"


def _is_temporary(name: str) -> bool:
    return name.startswith((temp_prefix(CONFIG_FILE), temp_prefix(WEIGHTS_FILE)))


def _pending(path: Path, save_id: str) -> Path:
    return path / f"{temp_prefix(WEIGHTS_FILE)}{save_id}"


def _commit(path: Path, data: bytes, payload: dict, save_id: str) -> None:
    pending = write_new_file(_pending(path, save_id), data)
    write_atomically(path / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True)))
    os.replace(pending, path / WEIGHTS_FILE)
    fsync_path(path)


def settle(path: str | Path) -> None:
    """Finish or discard what a killed save left in checkpoint folder ``path``: rename the
    committed pending weights into place and delete every other temporary. Call with the
    folder's :func:`~probe.atomic.directory_lock` held."""
    path = Path(path)
    committed = _committed_id(path)
    pending = _pending(path, committed) if committed else None
    if pending is not None and pending.is_file():
        os.replace(pending, path / WEIGHTS_FILE)
        fsync_path(path)
    for name in os.listdir(path):
        if _is_temporary(name) and (path / name).is_file():
            os.remove(path / name)


def _committed_id(path: Path) -> str | None:
    try:
        payload = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    wid = payload.get("weights_id") if isinstance(payload, dict) else None
    return wid if isinstance(wid, str) and wid.isalnum() else None


def _settle_if_needed(path: Path) -> None:
    """Best effort before a load: settle ``path`` when a killed save left something and nobody
    is saving (a read-only folder or a busy lock just leaves it for the next save)."""
    try:
        if not any(_is_temporary(n) for n in os.listdir(path)):
            return
        with directory_lock(path, wait=False) as locked:
            if locked:
                settle(path)
    except OSError:
        pass


# -- reading --------------------------------------------------------------------------------
def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """``(config, meta)`` of checkpoint directory ``path``, with clear errors for bad files."""
    path = Path(path)
    return _parse(_read_payload(path), path / CONFIG_FILE)


def _read_payload(path: Path) -> dict:
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
    return payload


def _parse(payload: dict, cfg_file: Path) -> tuple[ModelConfig, dict[str, Any]]:
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


def _header_id(weights: Path) -> str | None:
    try:
        with safe_open(str(weights), framework="pt") as f:
            return (f.metadata() or {}).get(SAVE_ID)
    except (SafetensorError, OSError, ValueError):
        return None


def weights_file(path: str | Path, payload: dict) -> Path:
    """The weight file that belongs to ``config.json`` ``payload`` of checkpoint ``path``:
    ``model.safetensors``, or the pending file of a save killed after its commit point."""
    path = Path(path)
    main, wid = path / WEIGHTS_FILE, payload.get("weights_id")
    if isinstance(wid, str) and wid.isalnum():
        found = _header_id(main) if main.is_file() else None
        if found != wid and _pending(path, wid).is_file():
            return _pending(path, wid)
        if found not in (wid, None):
            raise CheckpointError(f"{main} was written by another save than {path / CONFIG_FILE} (save ids "
                                  f"{found} and {wid}); the folder mixes two checkpoints. Save the model again.")
    if not main.is_file():
        raise CheckpointError(f"{str(path)!r} has {CONFIG_FILE} but no {WEIGHTS_FILE}.")
    return main


def _locate(path: Path) -> tuple[dict, Path]:
    """``(payload, weights)``; reads ``config.json`` again if a concurrent save switched files."""
    payload = _read_payload(path)
    try:
        return payload, weights_file(path, payload)
    except CheckpointError:
        again = _read_payload(path)
        if again == payload:
            raise
        return again, weights_file(path, again)
