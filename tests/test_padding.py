"""A list of texts of different lengths: every entry point answers as if each text ran alone.

``to_tokens`` right-pads the shorter texts; the pads must never reach an answer: ``generate``
continues each prompt from its own last token, the loss ignores the pads, and a state after
the pads (``return_states``) is refused rather than returned as the text's state.
"""
from __future__ import annotations

import pytest
import torch

from probe.errors import InputError
from tests.conftest import make_model

TEXTS = ["def f(x): return x + 1", "ab", "import os"]


@pytest.mark.parametrize("arch", ["qrnn", "mamba", "hybrid_lstm_attn"])
def test_generate_ragged_batch_equals_one_by_one(arch):
    model = make_model(arch)
    together = model.generate(TEXTS, max_new_tokens=6)
    alone = [model.generate(t, max_new_tokens=6) for t in TEXTS]
    assert together == alone


def test_generate_ragged_batch_sampled_equals_one_by_one():
    """Texts of different lengths run as separate groups, each sampled from ``seed``: with one text
    per length, each continuation is the one that text gets alone."""
    model = make_model("qrnn")
    out = model.generate(TEXTS, max_new_tokens=5, temperature=1.0, seed=3)
    assert out == [model.generate(t, max_new_tokens=5, temperature=1.0, seed=3) for t in TEXTS]


def test_generate_ragged_tokens_output_is_refused():
    model = make_model("qrnn")
    with pytest.raises(InputError, match="different lengths"):
        model.generate(TEXTS, max_new_tokens=2, return_type="tokens")


@pytest.mark.parametrize("arch", ["qrnn", "hybrid_lstm_attn"])
def test_loss_of_ragged_batch_ignores_pads(arch):
    model = make_model(arch)
    per_text = [model(t, return_type="loss", loss_per_token=True)[0] for t in TEXTS]
    expected = torch.cat(per_text).mean()
    assert torch.allclose(model(TEXTS, return_type="loss"), expected, atol=1e-6, rtol=0)
    rows = model(TEXTS, return_type="loss", loss_per_token=True)
    for b, lp in enumerate(per_text):
        assert torch.allclose(rows[b, : lp.numel()], lp, atol=1e-6, rtol=0)
        assert torch.isnan(rows[b, lp.numel():]).all()  # pads are marked, not averaged in silently
    _, loss = model(TEXTS, return_type="both")
    assert torch.allclose(loss, expected, atol=1e-6, rtol=0)


def test_return_states_of_ragged_batch_is_refused_equal_lengths_work():
    model = make_model("qrnn")
    with pytest.raises(InputError, match="different lengths"):
        model(TEXTS, return_states=True)
    _, st = model(["abc", "xyz"], return_states=True)  # equal lengths: no padding
    assert st.batch_size == 2


def test_to_tokens_still_right_pads():
    model = make_model("qrnn")
    tokens = model.to_tokens(["ab", "a"], prepend_bos=False)
    assert tokens.tolist() == [[97, 98], [97, model.tokenizer.pad_token_id]]
