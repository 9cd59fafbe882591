"""Every zoo model's shipped tuned lens loads for that model (its fingerprint matches): a config field
added to ModelConfig must not orphan the lenses saved before it (the explorer and notebook 02 read them)."""
import pytest

import probe
from probe.methods import TunedLens


@pytest.mark.parametrize("name", probe.zoo_names())
def test_shipped_tuned_lens_matches_its_model(name):
    model = probe.load(f"zoo:{name}").eval()
    lens = TunedLens.load(model)
    assert lens.n_layers == model.cfg.n_layers
