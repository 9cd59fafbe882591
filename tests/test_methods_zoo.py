"""Methods I on the shipped zoo models (trained weights): DLA sums to the logit, memory maps rebuild
each layer's output, IG is complete, the tuned lens beats the logit lens on held-out text."""
import pytest
import torch

import probe
from probe.methods import TunedLens, compare_lenses, direct_logit_attribution, integrated_gradients, memory_map

ZOO = probe.zoo_names()
pytestmark = pytest.mark.skipif(not ZOO, reason="no zoo model shipped")
TEXT = "def area(radius):\n    return 3.14159 * radius ** 2\n"
#: a second IG input (code the zoo's models saw the like of, not this exact text)
IG_TEXT = "import os\nfor i in range(10):\n  print(i)"
#: IG inputs: the default mean-embedding baseline at 64 steps must be complete to 1 % on each (worst on
#: the shipped zoo: Mamba 0.0046, xLSTM 0.0034; before the re-planning of rough paths in
#: probe.methods.path_quadrature the xLSTM missed by 0.79 and 0.25 on the second and third, and Mamba and
#: RWKV by 0.015 and 0.011 on one each)
IG_TEXTS = (TEXT[:32], TEXT[8:40], IG_TEXT)


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
    """< 1 % completeness at 64 steps on every zoo model (the issue's target)."""
    model = probe.load(f"zoo:{name}")
    for text in IG_TEXTS:
        err = float(integrated_gradients(model, text, steps=64).completeness_error.max())
        assert err < 0.01, (name, text, err)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_tuned_lens_beats_the_logit_lens(name, corpus):
    model = probe.load(f"zoo:{name}")
    train, held_out = corpus
    lens = TunedLens(model).fit(model, train, steps=30, batch_size=4, seq_len=64, lr=3e-3)
    table = compare_lenses(model, lens, held_out, seq_len=64, max_windows=8)
    assert bool(table["tuned_better"].all()), table
    assert torch.isfinite(torch.tensor(table["kl_logit"].to_numpy())).all()


@pytest.mark.parametrize("name", [n for n in ("transformer", "lstm", "hgrn2", "mamba") if n in ZOO])
def test_zoo_integrated_gradients_per_token_match_a_fine_reference(name):
    """Completeness checks only the sum of the attributions; this checks each token's. At 64 adaptive
    steps every token's attribution is within 1 % (of the largest) of a 512-point Gauss-Legendre
    reference on a smooth path. (A quadrature that meets completeness with low-order panels where
    ``f`` looks linear can miss this by 20-40 %: the per-token integrands vary where their sum
    does not. Measured with the adaptive rule: at most 0.5 %, except Mamba on IG_TEXT, 0.98 %: its
    path is one the rule re-plans (the panel plan alone missed completeness by 1.5 % there, with
    0.4 % per token), and the re-planned rule, fitted to the sum, is less accurate per token.)"""
    model = probe.load(f"zoo:{name}")
    for text in (TEXT[:32], IG_TEXT):
        ref = integrated_gradients(model, text, steps=512, method="gausslegendre", spacing="linear").attributions
        res = integrated_gradients(model, text, steps=64).attributions
        err = float((res - ref).abs().max() / ref.abs().max())
        assert err < 0.01, (name, text, err)
