r"""Harvests of activations and states over large corpora, sharded to Parquet, locally or on Ray.

* :func:`harvest` (``probe harvest`` on the command line): run a model over a corpus and write
  the chosen sites as shards with a manifest (:mod:`probe.harvest.run`, :mod:`.folder`, :mod:`.shard`);
  ``ray=True`` spreads it over Ray workers (:mod:`.on_ray`).
* :class:`Harvest` / :func:`open_harvest`: read it back lazily (:mod:`probe.data.harvest_reader`, below the methods that stream it); ``fit_probes``,
  ``steering_vector`` and ``TunedLens.fit`` accept a harvest folder and stream it.
* :func:`dispatch` (:mod:`.devices`): spread a model too large for one device over several.

This package sits above :mod:`probe.methods` (it uses sites, reductions and the model identity
from there); nothing below imports it.
"""
from probe.data.harvest_reader import Harvest, LazyFeature, is_harvest, open_harvest
from probe.harvest.devices import dispatch
from probe.harvest.run import harvest

__all__ = ["Harvest", "LazyFeature", "dispatch", "harvest", "is_harvest", "open_harvest"]
