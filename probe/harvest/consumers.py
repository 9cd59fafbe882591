r"""Steering vectors and tuned-lens batches streamed from harvests (memory bounds in :mod:`.reader`).

* :func:`steering_from_harvests`: ``v_l = mean(rows of the positive harvest) - mean(rows of the
  negative harvest)`` for feature ``site`` at each layer, the CAA mean difference with the
  harvests' kept positions in place of ``position`` (harvest with ``positions="last"`` for the
  last token, ``pool="mean"`` for the mean over each text). Features must be stored whole
  (``max_dim=None``): a projected state cannot be added back to the state.
* :func:`lens_batches`: the residual streams a tuned lens reads (``resid_pre`` of block 0 and
  ``resid_post`` of every block, whole) and the final logits read out from the last one.
"""
from __future__ import annotations

import numpy as np
import torch

from probe.errors import InputError
from probe.harvest.reader import Harvest, open_harvest


def _mean(h: Harvest, key: str) -> np.ndarray:
    """Mean of feature ``key`` over every row, summed in float64 one shard at a time."""
    total, n = np.zeros(h.feature_spec(key).dim), 0
    for values in h.iter_feature(key):
        total += values.astype(np.float64).sum(0)
        n += len(values)
    if n == 0:
        raise InputError(f"{str(h.path)!r} has no rows; harvest more text.")
    return total / n


def steering_from_harvests(model, positive, negative, site: str = "resid_pre", layers=None):
    """A :class:`~probe.methods.steering.SteeringVector` from two harvests of ``model``."""
    from probe.methods.support import input_checks as inputs, site_hooks as S
    from probe.methods.support.activation_dataset import feature_key
    from probe.methods.steering import SteeringVector, steering_hooks

    pos, neg = open_harvest(positive), open_harvest(negative)
    for h in (pos, neg):
        h.check_model(model)
    layers = inputs.check_layers(model, layers)
    vectors, parts = {}, {}
    for layer in layers:
        hooks = steering_hooks(model, site, layer)
        key = feature_key(S.site_label(site), layer)
        if not hooks or key not in pos.features:
            continue
        spec = pos.feature_spec(key)
        if spec.hooks != hooks or spec.dim != spec.raw_dim or neg.feature_spec(key) != spec:
            raise InputError(f"Feature {key!r} of the harvests is {spec.reduction}-reduced or reads other hooks "
                             f"than steering writes ({hooks}); harvest both with max_dim=None and the same sites.")
        v = torch.from_numpy(_mean(pos, key) - _mean(neg, key)).float()
        parts[layer] = [(hk, tuple(shape)) for hk, shape in zip(spec.hooks, spec.shapes)]
        v = v.view(*parts[layer][0][1]) if len(hooks) == 1 else v
        vectors[layer] = v.to(model.dtype).to(model.device)
    if not vectors:
        raise InputError(f"The harvests hold no {site!r} feature to steer at layers {layers}; harvest that site "
                         f"(they hold {', '.join(pos.features)}).")
    position = "mean" if pos.plan.pool == "mean" else pos.plan.positions
    return SteeringVector(site, vectors, parts, min(len(pos), len(neg)), position)


def lens_keys(model) -> list[str]:
    """Feature keys of lens layers ``0 .. n_layers`` (``0-resid_pre``, then each block's ``resid_post``)."""
    return ["0-resid_pre"] + [f"{l}-resid_post" for l in range(model.cfg.n_layers)]


def lens_batches(model, data, rows: int, seed: int = 0):
    """Endless ``({lens layer: resid [rows, d_model]}, final logits [rows, vocab])`` batches: shards in a
    seeded random order (a new order each pass), rows shuffled within a shard."""
    from probe.methods.support.logit_readout import readout

    h = open_harvest(data)
    h.check_model(model)
    keys = lens_keys(model)
    missing = [k for k in keys if k not in h.features or h.features[k].dim != model.cfg.d_model]
    if missing:
        raise InputError(f"A tuned lens trains on the whole residual stream at every layer; the harvest lacks "
                         f"{', '.join(missing)} (harvest sites resid_pre and resid_post at every layer, max_dim=None).")
    rng = np.random.default_rng(seed)
    while True:
        for i in rng.permutation(len(h.shards)):
            cols = h.read_shard(int(i), keys)
            order = rng.permutation(len(cols[keys[0]]))
            for first in range(0, len(order), rows):
                pick = order[first : first + rows]
                resid = {l: torch.from_numpy(cols[k][pick]).to(model.device, model.dtype) for l, k in enumerate(keys)}
                with torch.no_grad():
                    final = readout(model, resid.pop(len(keys) - 1))
                yield resid, final
