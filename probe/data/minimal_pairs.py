r"""Minimal pairs: does the model prefer the good sentence of each pair?

A pair is ``(good, bad)`` texts that differ in one grammatical point; the model prefers
the good one when its total log-probability is higher (BLiMP's metric, Warstadt et al. 2020)::

    accuracy = mean_i [ log p(good_i) > log p(bad_i) ]          chance 0.5

Scoring is :func:`probe.evaluate.evaluate_minimal_pairs` (it runs a model). Pairs come from the synthetic tasks (``task.minimal_pairs(n)``), from any ``datasets``
dataset with good/bad columns, or from real BLiMP on the hub (:func:`blimp_pairs`, needs
network).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from probe.errors import InputError


@dataclass
class MinimalPair:
    good: str
    bad: str
    phenomenon: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.good, str) or not isinstance(self.bad, str) or not self.good or not self.bad:
            raise InputError("A minimal pair needs two non-empty texts (good, bad).")
        if self.good == self.bad:
            raise InputError(f"Minimal pair texts are identical: {self.good!r}.")


def pairs_from_dataset(dataset: Any, good_field: str = "sentence_good", bad_field: str = "sentence_bad",
                       phenomenon_field: str | None = "UID", phenomenon: str = "", max_pairs: int | None = None
                       ) -> list[MinimalPair]:
    """Minimal pairs from a ``datasets.Dataset`` (or anything indexable by column name), BLiMP's
    column names by default."""
    columns = list(getattr(dataset, "column_names", None) or getattr(dataset, "keys", lambda: [])())
    for f in (good_field, bad_field):
        if f not in columns:
            raise InputError(f"The dataset has no column {f!r}; its columns are {', '.join(map(str, columns))}. "
                             "Pass good_field= / bad_field=.")
    n = len(dataset[good_field]) if max_pairs is None else min(max_pairs, len(dataset[good_field]))
    goods, bads = list(dataset[good_field][:n]), list(dataset[bad_field][:n])
    names = (list(dataset[phenomenon_field][:n]) if phenomenon_field and phenomenon_field in columns
             else [phenomenon] * n)
    return [MinimalPair(g, b, str(k)) for g, b, k in zip(goods, bads, names)]


def blimp_pairs(subsets: str | Sequence[str] = ("regular_plural_subject_verb_agreement_1",
                                                "distractor_agreement_relational_noun"),
                max_pairs: int | None = None, dataset: str = "nyu-mll/blimp") -> list[MinimalPair]:
    """Real BLiMP pairs from the hub (network and the ``datasets`` package needed)."""
    try:
        import datasets
    except ImportError as exc:
        raise InputError("BLiMP needs the `datasets` package: pip install datasets.") from exc
    out = []
    for name in [subsets] if isinstance(subsets, str) else subsets:
        try:
            ds = datasets.load_dataset(dataset, name, split="train")
        except Exception as exc:  # offline or unknown subset
            raise InputError(f"Could not load BLiMP subset {name!r} from {dataset!r} (offline?): {exc}") from exc
        out += pairs_from_dataset(ds, phenomenon=name, max_pairs=max_pairs)
    return out
