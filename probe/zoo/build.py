r"""Train one zoo model from its recipe and write it as a shippable checkpoint.

``train_zoo_model("qrnn", out_dir)`` writes::

    out_dir/qrnn/config.json        the model config + training facts ("meta")
    out_dir/qrnn/model.safetensors  fp16 weights
    out_dir/qrnn/card.json          the model card (training facts; metrics added by probe.zoo.cards)
    out_dir/.runs/qrnn/             trainer checkpoints (resumable; not shipped)

Everything that decides the result is in the recipe (:mod:`probe.zoo.recipes`): the seed
fixes the initial weights, and every batch is a function of ``(seed, step)``, so a rerun on
the same kind of device reproduces the run and another device lands within float noise of it.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from probe.data.code_corpus import stdlib_stream
from probe.data.corpus import TokenStream
from probe.data.curriculum import Curriculum
from probe.data.mix import DataMix
from probe.data.tasks.recall import AssociativeRecall
from probe.errors import ConfigError
from probe.loading import ZOO_DIR
from probe.zoo.recipes import SEED, STAGES, TASKS, TEXT, TRAIN, Recipe, Stage, get_recipe

#: where the shipped zoo lives (``probe.load("zoo:NAME")`` reads it)


def stage_mix(text: TokenStream, stage: Stage) -> DataMix:
    """The :class:`DataMix` of one curriculum stage over the ``text`` stream."""
    tasks = [AssociativeRecall(*stage.recall_pairs) if t == "recall" else t for t in TASKS]
    return DataMix(text, tasks, stage.task_fraction, stage.task_weights)


class ZooData(NamedTuple):
    """What a zoo model trains on: the curriculum, the text stream its text rows come from (the stdlib
    train split) and the validation stream (the stdlib val split)."""

    curriculum: Curriculum
    train: TokenStream
    val: TokenStream


def zoo_data(batch_size: int = TRAIN.batch_size, seq_len: int = TRAIN.seq_len) -> ZooData:
    """The zoo's training data: the :data:`~probe.zoo.recipes.STAGES` curriculum over the stdlib
    train split, for a config's ``batch_size`` and ``seq_len``, with its train and val streams."""
    train = stdlib_stream("train")
    val = stdlib_stream("val")
    data = Curriculum([(s.first_step, stage_mix(train, s), s.shape(batch_size, seq_len)) for s in STAGES])
    data.check(seq_len)
    return ZooData(data, train, val)


def zoo_data_description() -> dict[str, Any]:
    """What a card records of the training data."""
    return {"text": TEXT, "tasks": list(TASKS), "stages": [s.to_dict() for s in STAGES]}


def build_model(recipe: Recipe | str, seed: int = SEED):
    """The recipe's model with its seeded initial weights."""
    from probe.model import HookedLM

    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if not recipe.available():
        from probe.mixers import MIXERS

        missing = sorted(recipe.mixers - set(MIXERS))
        raise ConfigError(f"Zoo architecture {recipe.name!r} needs mixers {', '.join(missing)}, which this "
                          "version of probe does not have yet.")
    torch.manual_seed(seed)
    return HookedLM(recipe.config())


def code_version() -> str:
    """``$PROBE_CODE_VERSION`` or ``git describe --always --dirty`` of the source tree (else ``unknown``)."""
    if os.environ.get("PROBE_CODE_VERSION"):
        return os.environ["PROBE_CODE_VERSION"]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: torch.device) -> str:
    """The device in words; ``$PROBE_CONCURRENT_RUNS`` > 1 notes that runs shared it."""
    shared = os.environ.get("PROBE_CONCURRENT_RUNS")
    note = f", shared by {shared} concurrent runs" if shared and shared != "1" else ""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}{note}"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores{note}"


def train_zoo_model(name: str, out_dir: str | Path = ZOO_DIR, device: str = "auto", progress: bool = True,
                    resume: bool = True, evaluate: bool = True, **train_overrides: Any) -> Path:
    """Train zoo architecture ``name`` and write ``out_dir/name`` (see the module docstring).

    ``train_overrides`` change :data:`probe.zoo.recipes.TRAIN` (e.g. ``steps=5`` for a smoke
    test); the card records the settings actually used. Returns the model directory.
    """
    from probe.io.checkpoint import load_model, save_model
    from probe.train import Trainer
    from probe.zoo.cards import evaluate_card, write_card

    recipe = get_recipe(name)
    config = replace(TRAIN, device=device, **train_overrides)
    model = build_model(recipe, config.seed)
    data, text, val = zoo_data(config.batch_size, config.seq_len)
    out_dir = Path(out_dir)
    run_dir = out_dir / ".runs" / name
    trainer = Trainer(model, data, config, val, run_dir, resume=resume, progress=progress)
    result = trainer.train()
    n_params = sum(p.numel() for p in model.parameters())
    card: dict[str, Any] = {
        "name": name,
        "layout": list(recipe.layout),
        "note": recipe.note,
        "d_model": recipe.d_model,
        "d_mlp": recipe.d_mlp,
        "params": n_params,
        "tokens_seen": result.tokens_seen,
        "steps": result.step,
        "train": config.to_dict(),
        "data": {**zoo_data_description(), "corpus_python": text.meta.get("python"), "train_bytes": text.n_bytes,
                 "val_bytes": val.n_bytes},
        "train_seconds": round(result.train_seconds, 1),
        "hardware": hardware(trainer.device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "seed": config.seed,
        "code_version": code_version(),
        "trained_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "history": result.history,
    }
    target = out_dir / name
    save_model(model, target, dtype=torch.float16, meta={"zoo": name, "card": "card.json"})
    write_card(target, card)
    if evaluate:
        shipped = load_model(target)  # evaluate the fp16 weights that ship, in float32
        card.update(evaluate_card(shipped, val, text))
        write_card(target, card)
    return target
