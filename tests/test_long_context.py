"""Long inputs: segmented processing equals one pass, memory stays bounded, attention slides or refuses."""
import pytest
import torch

import probe
from probe.long_context import iter_segments, segmented_loss
from conftest import make_model, tokens


@pytest.mark.parametrize("arch", ["qrnn", "lstm", "hybrid_qrnn_attn_ff"])
def test_segmented_loss_equals_one_pass(arch):
    model = make_model(arch)
    toks = tokens(2, 50)
    with torch.no_grad():
        whole = model(toks, return_type="loss", loss_per_token=True)
    torch.testing.assert_close(segmented_loss(model, toks, segment_length=7), whole, atol=1e-5, rtol=1e-4)


def test_100k_tokens_through_a_recurrent_model_in_segments():
    model = make_model("qrnn")
    toks = torch.randint(0, 256, (1, 100_000), generator=torch.Generator().manual_seed(0))
    peak = 0
    n = 0
    for start, logits in iter_segments(model, toks, segment_length=8192):
        assert torch.isfinite(logits).all()
        peak = max(peak, logits.numel())
        n += logits.shape[1]
    assert n == 100_000 and peak == 8192 * 257  # only one segment's logits at a time


def test_attention_refuses_or_slides():
    model = make_model("attn", n_ctx=16)
    toks = tokens(1, 40)
    with pytest.raises(probe.InputError, match="n_ctx=16"):
        list(iter_segments(model, toks, segment_length=8))
    losses = segmented_loss(model, toks, segment_length=8, sliding_window=8)
    assert losses.shape == (1, 39) and torch.isfinite(losses).all()
    # within the first window, sliding equals the full computation
    torch.testing.assert_close(losses[:, :15], model(toks[:, :16], return_type="loss", loss_per_token=True),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(probe.InputError, match="learned positions"):
        list(iter_segments(make_model("attn", positional="learned"), toks, 8, sliding_window=8))
