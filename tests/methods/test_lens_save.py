"""TunedLens.save is crash-safe beside a model checkpoint (issue 24, data loss).

A save killed at any point leaves a loadable lens (the old one before its commit point, the new
one after), the temporaries it left are deleted by the next save or load, and the model's own
checkpoint files in the same folder are never touched.
"""
from __future__ import annotations

import os

import pytest
import torch

import probe
from conftest import make_model
from probe.methods import TunedLens
from probe.methods import lens as lens_module


def _lens(model, seed: int) -> TunedLens:
    """A lens with distinct random weights (no training needed to tell two saves apart)."""
    lens = TunedLens(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        lens.weight.add_(0.01 * torch.randn(lens.weight.shape, generator=g))
        lens.bias.add_(0.01 * torch.randn(lens.bias.shape, generator=g))
    return lens


@pytest.fixture
def saved(tmp_path):
    """``(model, folder, model-file bytes)``: a checkpoint with a lens saved beside it."""
    make_model("qrnn").save(tmp_path / "m")
    model = probe.load(tmp_path / "m")
    _lens(model, 1).save(model=model)
    files = {n: (tmp_path / "m" / n).read_bytes() for n in ("config.json", "model.safetensors")}
    return model, tmp_path / "m", files


def _temporaries(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def test_stale_temporaries_of_a_killed_save_are_cleaned_and_the_model_survives(saved):
    model, folder, files = saved
    old = TunedLens.load(model)
    # what a save killed before its commit point leaves: pending weights and a config temporary
    (folder / ".tuned_lens.safetensors.0123abcd").write_bytes(b"half-written")
    (folder / ".tuned_lens.json.k2j4x9").write_text("{")
    (folder / "notes.txt").write_text("mine")
    back = TunedLens.load(model)  # the old lens, and the temporaries are gone
    assert torch.equal(back.weight, old.weight) and torch.equal(back.bias, old.bias)
    assert _temporaries(folder) == []
    (folder / ".tuned_lens.safetensors.feedface").write_bytes(b"half-written")
    _lens(model, 2).save(model=model)
    assert _temporaries(folder) == []
    assert {n: (folder / n).read_bytes() for n in files} == files and (folder / "notes.txt").read_text() == "mine"
    assert torch.equal(probe.load(folder)(torch.arange(8)[None]), model(torch.arange(8)[None]))


def test_a_save_killed_after_its_commit_point_loads_the_new_lens(saved, monkeypatch):
    model, folder, files = saved
    new = _lens(model, 3)
    real_replace = os.replace

    def killed(src, dst):  # the process dies at the rename of the weights into place
        if os.path.basename(dst) == lens_module.LENS_WEIGHTS:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(lens_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        new.save(model=model)
    monkeypatch.setattr(lens_module.os, "replace", real_replace)
    assert _temporaries(folder)  # the committed weights are still pending
    back = TunedLens.load(model)
    assert torch.equal(back.weight, new.weight) and torch.equal(back.bias, new.bias)
    assert _temporaries(folder) == [] and (folder / lens_module.LENS_WEIGHTS).is_file()
    assert {n: (folder / n).read_bytes() for n in files} == files
