"""``probe.load``: one entry point for zoo names, checkpoint directories and hub ids."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from probe.errors import CheckpointError, InputError, suggest

if TYPE_CHECKING:
    import torch

ZOO_DIR = Path(__file__).parent / "zoo"


def zoo_names() -> list[str]:
    """Names of the models shipped in ``probe/zoo`` (each a checkpoint directory), sorted.

    Example::

        probe.zoo_names()        # ['lmu', 'lmu-attn', 'lstm', 'qrnn', 'qrnn-hybrid', 'transformer', ...]
    """
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def is_transformers_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by transformers' ``save_pretrained``: its config.json names a
    ``model_type`` and has no probe ``config`` entry."""
    import json

    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config and "config" not in config


def load(source: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a model: ``"zoo:NAME"``, a checkpoint directory, or (with network and the ``hf``
    extra) a Hugging Face hub id converted with :func:`probe.from_hf`.

    Returns a :class:`probe.HookedLM` with its weights in ``dtype`` (default ``torch.float32``; the
    zoo's files hold float16 and are cast on loading) on ``device``. Listing the zoo
    (:func:`zoo_names`) needs no torch; loading imports it.

    Example::

        model = probe.load("zoo:qrnn").eval()
        model = probe.load("path/to/checkpoint")          # written by model.save(path)
    """
    import torch

    from probe.io.checkpoint import load_model

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"probe.load takes zoo:NAME, a checkpoint directory or a hub id, got {type(source).__name__}.")
    text = str(source)
    if not text.strip():
        raise CheckpointError("probe.load got an empty name: give zoo:NAME, a checkpoint directory or a hub id.")
    if text.startswith("zoo:"):
        name = text[4:]
        names = zoo_names()
        if name not in names:
            raise CheckpointError(f"No zoo model named {name!r}.{suggest(name, names)} "
                                  f"Shipped: {', '.join(names) or 'none yet'}.")
        return load_model(ZOO_DIR / name, device=device, dtype=dtype)
    path = Path(text).expanduser()
    if is_transformers_dir(path):
        raise CheckpointError(f"{text!r} is a transformers folder (save_pretrained), not a probe checkpoint: "
                              f"convert it with probe.from_hf({text!r}).")
    if path.exists():
        return load_model(path, device=device, dtype=dtype)
    if "/" in text and not text.startswith((".", "/", "~")):
        try:
            from probe.io.hf import from_hf  # noqa: F401  (added with the converters)
        except ImportError as exc:
            raise CheckpointError(f"{text!r} is not a local path; loading hub ids needs the converters "
                                  "(probe.io.hf) and the 'hf' extra.") from exc
        return from_hf(text, device=device)
    raise CheckpointError(f"Cannot load {text!r}: not a zoo name (zoo:NAME), an existing checkpoint "
                          f"directory, or a hub id (owner/name).")
