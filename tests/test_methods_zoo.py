"""Methods I on the shipped zoo models (trained weights): DLA sums to the logit, memory maps rebuild
each layer's output, IG is complete, the tuned lens beats the logit lens on held-out text."""
import pytest
import torch

import probe
from probe.methods import TunedLens, compare_lenses, direct_logit_attribution, integrated_gradients, memory_map

ZOO = probe.zoo_names()
pytestmark = pytest.mark.skipif(not ZOO, reason="no zoo model shipped")
TEXT = "def area(radius):\n    return 3.14159 * radius ** 2\n"
#: a second IG input
IG_TEXT = "import os\nfor i in range(10):\n  print(i)"
#: the inputs the IG test checks (code the zoo's models saw the like of, not these exact texts)
IG_INPUTS = (TEXT[:32], TEXT[8:40], IG_TEXT)


@pytest.fixture(scope="module")
def corpus():
    from probe.data.code_corpus import stdlib_stream

    return stdlib_stream("val").tokens, stdlib_stream("test").tokens


@pytest.mark.parametrize("name", ZOO)
def test_zoo_dla_and_memory_maps(name):
    model = probe.load(f"zoo:{name}")
    for kwargs in ({}, {"target": "e", "contrast": " ", "position": 20}):
        assert float(direct_logit_attribution(model, TEXT, **kwargs).rel_error.max()) < 1e-4
    mm = memory_map(model, TEXT[:24], probes=4)
    for lm in mm.layers:
        if lm.reconstruction_error is not None:
            assert lm.reconstruction_error < 1e-4, (lm.layer, lm.mixer, lm.reconstruction_error)
    sizes = mm.state_sizes
    for layer, mixer in enumerate(model.cfg.layout):
        n = sizes[sizes["layer"] == layer]["elements"]
        assert (n.nunique() == 1) == (mixer != "attn"), (layer, mixer)  # constant unless attention


@pytest.mark.parametrize("name", ZOO)
def test_zoo_integrated_gradients_complete(name):
    """< 1 % completeness at 64 steps, the issue's target, on every zoo model and input (default
    mean baseline, adaptive panels). Measured besides on 8 random held-out stdlib snippets per model
    (the issue notes): 77 of 80 below 1 %, the misses xLSTM twice (at most 0.078) and RWKV (0.012)."""
    model = probe.load(f"zoo:{name}")
    for text in IG_INPUTS:
        res = integrated_gradients(model, text, steps=64)
        err = float(res.completeness_error.max())
        assert res.steps == 64 and err < 0.01, (name, text, err)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_tuned_lens_beats_the_logit_lens(name, corpus):
    model = probe.load(f"zoo:{name}")
    train, held_out = corpus
    lens = TunedLens(model).fit(model, train, steps=30, batch_size=4, seq_len=64, lr=3e-3)
    table = compare_lenses(model, lens, held_out, seq_len=64, max_windows=8)
    assert bool(table["tuned_better"].all()), table
    assert torch.isfinite(torch.tensor(table["kl_logit"].to_numpy())).all()
