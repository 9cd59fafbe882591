r"""A model too large for one device, spread over several with accelerate's device map.

:func:`dispatch` maps probe's modules to devices (``"auto"``: accelerate's
``infer_auto_device_map`` within ``max_memory``, never splitting a block) and calls
``accelerate.dispatch_model``: each block runs where its weights are, its inputs moved there
by accelerate's forward hooks, so the residual stream hops device to device between blocks.
Weights mapped to ``"disk"`` (or ``"cpu"`` when GPUs hold the rest) are offloaded and
brought in for their block's forward only, the whole block at once (``preload_module_classes``:
a mixer reads its submodules' weights outside their own forward when it rebuilds states for a
hook, e.g. the LSTM's gates). The embedding and unembedding stay resident (inputs go to
``model.device``, the embedding's device).

probe's hooks are TransformerLens HookPoints inside the blocks: they fire on the block's
device with tensors of that device, so caches, patches and state edits (an edit re-runs the
recurrence inside its own mixer) work as on one device; states carried between segments
stay on their block's device. ``model.device`` is the embedding's device, where inputs go.

Example::

    model = probe.load("path/to/big-checkpoint")
    dispatch(model, "auto", max_memory={0: "20GiB", 1: "20GiB", "cpu": "64GiB"})
    harvest(model, "stdlib:val", "acts/")
"""
from __future__ import annotations

from probe.errors import ConfigError

#: modules a device map never splits (a block's mixer, MLP and hooks stay together)
NO_SPLIT = ["Block"]


def dispatch(model, device_map="auto", *, max_memory: dict | None = None, offload_dir: str | None = None):
    """Spread ``model`` (a HookedLM) over devices; returns it (changed in place), with the map in
    ``model.hf_device_map``.

    Args:
        device_map: ``"auto"``, or ``{module or parameter name: device}`` covering every weight
            (``"blocks.3"``, ``"W_E"``, ``"ln_final"``; devices ``0``, ``"cuda:1"``, ``"cpu"``, ``"disk"``).
        max_memory: per-device budget for ``"auto"`` (``{0: "20GiB", "cpu": "64GiB"}``).
        offload_dir: folder for weights mapped to ``"disk"``.
    """
    try:
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError as exc:
        raise ConfigError("Spreading a model over devices needs accelerate: pip install accelerate "
                          "(it comes with the 'hf' extra).") from exc
    if not hasattr(model, "blocks") or not hasattr(model, "W_E"):
        raise ConfigError("dispatch spreads a probe HookedLM over devices; convert the model first (probe.from_hf).")
    if device_map == "auto":
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT)
    if not isinstance(device_map, dict):
        raise ConfigError(f"device_map must be 'auto' or a dict of module name -> device, got {device_map!r}.")
    if "disk" in device_map.values() and offload_dir is None:
        raise ConfigError("The device map offloads weights to 'disk'; give offload_dir=FOLDER for them.")
    main = device_map.get("W_E", device_map.get("", "cpu"))
    main = "cpu" if main == "disk" else main
    try:
        dispatch_model(model, device_map=device_map, main_device=main, offload_dir=offload_dir,
                       preload_module_classes=NO_SPLIT)
    except ValueError as exc:  # accelerate names the weights the map leaves out
        raise ConfigError(f"Cannot dispatch with this device map: {exc}") from exc
    return model
