r"""What a harvest keeps: sites x layers, positions, pooling, projection, storage dtype.

A :class:`Plan` is plain data (JSON in ``spec.json`` and the manifest, pickled to Ray workers):
every worker rebuilds the same reductions from it, so one worker and N workers write the
same numbers.

* ``positions``: ``None`` (every position), ``"last"``, or ints (negative from the end) read in
  every sequence (positions a short sequence lacks are skipped).
* ``pool``: ``None`` (one row per kept position) or ``"mean"`` (one row per sequence: the mean
  over its kept positions; ``position`` and ``token`` are then ``-1`` and each label is the value
  at the sequence's last kept position, i.e. the sequence's label when labels are per sequence).
* ``max_dim``: features wider than this are projected to ``max_dim`` columns by the seeded count
  sketch of :class:`probe.data.activation_dataset.Reducer` (the same map on every worker); ``None``
  keeps them whole (needed to steer with them or to train a tuned lens on them). PCA is not
  offered: it would need a pass over the corpus before the harvest.
"""
from __future__ import annotations


import numpy as np
import torch

from probe.data.harvest_reader import FeatureSpec, Plan
from probe.errors import InputError

POOLS = (None, "mean")


def make_plan(model, sites, layers, *, positions=None, pool=None, max_dim=None, dtype="float16", seq_len=256,
              batch_size=16, shard_size=64, seed=0) -> Plan:
    """Check the options against ``model`` and list the features to store (a clear error for each
    bad option)."""
    from probe.methods.support import input_checks as inputs, site_hooks as S
    from probe.data.activation_dataset import feature_key
    from probe.methods.probing import site_kind

    for name, v in (("seq_len", seq_len), ("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}.")
    if max_dim is not None and (isinstance(max_dim, bool) or not isinstance(max_dim, int) or max_dim < 1):
        raise InputError(f"max_dim must be a positive integer or None (keep features whole), got {max_dim!r}.")
    if pool not in POOLS:
        raise InputError(f"pool must be None or 'mean', got {pool!r}.")
    if dtype not in ("float16", "float32"):
        raise InputError(f"dtype must be 'float16' or 'float32', got {dtype!r}.")
    positions = _check_positions(positions)
    layers = inputs.check_layers(model, layers)
    sites = S.check_sites(model, sites, layers)
    plan = Plan(sites, layers, positions, pool, max_dim, dtype, seq_len, batch_size, shard_size, seed)
    wanted = {(site, layer): S.site_hooks(model, site, layer) for site in sites for layer in layers}
    shapes = hook_shapes(model, sorted({h for hs in wanted.values() for h in hs}))
    for (site, layer), hooks in wanted.items():
        if not hooks:
            continue
        key = feature_key(S.site_label(site), layer)
        raw = int(sum(np.prod(shapes[h]) for h in hooks))
        dim = raw if max_dim is None else min(raw, max_dim)
        plan.features[key] = FeatureSpec(S.site_label(site), layer, site_kind(site), hooks,
                                         [list(shapes[h]) for h in hooks], raw, dim,
                                         "random" if dim < raw else "none")
    return plan


def _check_positions(positions):
    if positions is None or positions == "last":
        return positions
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        return [int(positions)]
    items = list(positions) if isinstance(positions, (list, tuple)) else None
    if not items or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in items):
        raise InputError(f"positions must be None (all), 'last', an int or a list of ints, got {positions!r}.")
    return [int(p) for p in items]


def hook_shapes(model, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-position shape (``shape[2:]``) of every hook in ``names``, from a forward on two tokens."""
    shapes: dict[str, tuple[int, ...]] = {}

    def look(t, hook):
        shapes[hook.name] = tuple(t.shape[2:])

    ids = torch.zeros(1, 2, dtype=torch.long, device=model.device)
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, look) for n in names]):
        model(ids)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise InputError(f"Hook {missing[0]!r} did not fire; it cannot be harvested.")
    return shapes
