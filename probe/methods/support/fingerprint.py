r"""Which model is this? A short hash of a model's config and weights, so that a tuned lens or a harvest
made with one model is refused for another (:func:`model_fingerprint`, :func:`model_identity`)."""
from __future__ import annotations

import hashlib
import json

import torch

from probe.errors import InputError


def model_fingerprint(model) -> str:
    """A short hash of a model's config and weights (fp16, strided sample of every tensor), used
    to refuse a tuned lens trained for another model."""
    h = hashlib.sha256(json.dumps(config_identity(model), sort_keys=True).encode())
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().flatten()
        step = max(1, flat.numel() // 65536)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(flat[::step].to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


#: ModelConfig fields added after tuned lenses were first saved, each with the test of "at its default":
#: left out of the fingerprint while at it, so that a lens saved before the field existed still matches
_LATER_FIELDS = {
    "embed_scale": lambda value: value is None,
    "shared_layout": lambda value: value is None,
    "shared_options": lambda value: not value,
    "norm_placement": lambda value: value is None or all(place == "pre" for place in value),
}


def config_identity(model) -> dict:
    """The model's config as a dict, without its name and without later fields left at their default."""
    cfg = model.cfg.to_dict()
    cfg.pop("name", None)
    for field, at_default in _LATER_FIELDS.items():
        if at_default(cfg.get(field)):
            cfg.pop(field, None)
    return cfg


def model_identity(model) -> str:
    """The weights fingerprint of :func:`model_fingerprint`; for a model whose device
    map offloads weights to disk (their tensors are on the 'meta' device here), a hash of the config
    and of each weight's name, shape and device instead."""
    if not any(p.is_meta for p in model.parameters()):
        return model_fingerprint(model)
    h = hashlib.sha256(model.cfg.to_json().encode())
    for name, p in sorted(model.state_dict().items()):
        h.update(f"{name}{tuple(p.shape)}{p.device.type}".encode())
    return "offloaded-" + h.hexdigest()[:16]


def check_harvest_model(harvest, model) -> None:
    """Refuse a model other than the one ``harvest`` (a :class:`probe.data.harvest_reader.Harvest`) was
    harvested from (weights fingerprint)."""
    if model_identity(model) != harvest.manifest["model"]["fingerprint"]:
        m = harvest.manifest["model"]
        raise InputError(f"{str(harvest.path)!r} was harvested from another model ({m['name']!r}, layout "
                         f"{m['layout']}); pass that model, or harvest this one.")
