r"""The harvest on Ray: Ray Data ``map_batches`` with one model replica per worker.

The shards still to do become a Ray Dataset of shard indices; ``map_batches`` runs them
through :class:`ShardWriter`, a callable class that Ray instantiates once per worker
(``concurrency=workers``, each holding ``num_cpus=1`` or ``num_gpus``), so each worker
builds its model replica once and then writes whole shards (atomically) into the output
folder, returning their token counts to the driver for the progress bar. Scheduling, retries
and placement are Ray's; nothing here queues or sends messages itself.

On a cluster the output folder must be on storage every node sees (NFS, a mounted bucket),
and the model travels as its config and safetensors weights in Ray's object store, so any
HookedLM works, trained here or loaded.

The local cluster (``address=None``) is started in this process with ``workers`` CPUs and no
dashboard, and shut down afterwards; with ``address`` (``"auto"``, ``"ray://host:10001"``) an
existing cluster is used. When Ray is already initialised (a notebook, a test) it is used as is.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from probe.errors import ConfigError


def import_ray():
    """``ray``, or a ConfigError naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError("The Ray harvest needs Ray: pip install 'probe[dist]' (or run without --ray).") from exc
    return ray


def model_payload(model) -> dict:
    """The model as plain data: its config and its weights as safetensors bytes (no pickle)."""
    from safetensors.torch import save

    if not hasattr(model, "cfg") or not hasattr(model.cfg, "to_dict") or not hasattr(model, "blocks"):
        raise ConfigError("The Ray harvest ships a probe HookedLM to its workers; convert the model first "
                          "(probe.from_hf / probe.load), or harvest without --ray.")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {"config": model.cfg.to_dict(), "weights": save(state), "dtype": str(model.dtype).removeprefix("torch.")}


def build_model(payload: dict, device: str):
    """A HookedLM from :func:`model_payload`'s data, on ``device``, in eval mode."""
    import torch
    from safetensors.torch import load

    from probe.model import HookedLM

    model = HookedLM(payload["config"])
    model.to(getattr(torch, payload["dtype"]))
    model.load_state_dict(load(payload["weights"]))
    return model.to(device).eval()


class ShardWriter:
    """The ``map_batches`` callable: one per worker, holding one model replica."""

    def __init__(self, payload, corpus, plan: dict, folder: str, compression: str):
        import ray
        import torch

        from probe.harvest.corpus import Windows
        from probe.harvest.plan import Plan

        torch.set_num_threads(1)
        payload, corpus = (ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in (payload[0], corpus[0]))
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.model = build_model(payload, device)
        self.windows = Windows(**corpus)
        self.plan = Plan.from_dict(plan)
        self.folder, self.compression = Path(folder), compression

    def __call__(self, batch: dict) -> dict:
        from probe.harvest.shard import write_shard

        shards = [int(k) for k in batch["shard"]]
        tokens = [write_shard(self.model, self.windows, self.plan, k, self.folder, self.compression) for k in shards]
        return {"shard": np.array(shards, dtype=np.int64), "tokens": np.array(tokens, dtype=np.int64)}


def run_on_ray(model, windows, plan, folder: Path, todo: list[int], workers: int, address, num_gpus: float,
               compression: str, bar) -> None:
    """Write shards ``todo`` on Ray with ``workers`` model replicas; ``bar`` counts tokens."""
    ray = import_ray()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}.")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        payload = ray.put(model_payload(model))
        corpus = ray.put({"tokens": windows.tokens, "offsets": windows.offsets, "labels": windows.labels,
                          "name": windows.name})
        resources = {"num_gpus": num_gpus} if num_gpus else {"num_cpus": 1}
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(ShardWriter, batch_size=1, concurrency=workers, batch_format="numpy",
                            fn_constructor_kwargs={"payload": [payload], "corpus": [corpus], "plan": plan.to_dict(),
                                                   "folder": str(folder), "compression": compression},
                            **resources)
        for row in ds.iter_rows():
            bar.update(int(row["tokens"]))
    finally:
        if started:
            ray.shutdown()
