"""QRNN: fo-pooling from cached gates, the conv fast path equals the hooked window path."""
import pytest
import torch

from conftest import make_model, tokens


@pytest.mark.parametrize("window", [1, 2, 4])
def test_cached_quantities_satisfy_fo_pooling(window):
    model = make_model("qrnn", mixer_options={"qrnn": {"window": window}})
    _, cache = model.run_with_cache(tokens(2, 15))
    mixer = model.blocks[0].mixer
    z, f, o, c = (cache[f"blocks.0.mixer.hook_{k}"] for k in ("z", "forget", "output", "state"))
    prev = torch.zeros_like(c[:, 0])
    for t in range(15):
        prev = f[:, t] * prev + (1 - f[:, t]) * z[:, t]
        torch.testing.assert_close(prev, c[:, t], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mixer.out_proj(o * c), cache["blocks.0.hook_mixer_out"], atol=1e-6, rtol=1e-5)
    # the gates are a causal conv of width k over the mixer input
    x = cache["blocks.0.hook_mixer_in"]
    padded = torch.cat([torch.zeros(2, window - 1, x.shape[-1]), x], 1)
    t = 9
    pre = sum(padded[:, t + j] @ mixer.W_conv[:, :, j].T for j in range(window)) + mixer.b_conv
    torch.testing.assert_close(torch.tanh(pre[:, : mixer.d_hidden]), z[:, t], atol=1e-6, rtol=1e-5)
    if window > 1:
        conv = cache["blocks.0.mixer.hook_state_conv"]
        assert conv.shape == (2, 15, window - 1, x.shape[-1])
        torch.testing.assert_close(conv[:, t], padded[:, t + 1 : t + window])


def test_fast_path_equals_hooked_path():
    model = make_model("qrnn", mixer_options={"qrnn": {"window": 3}})
    x = torch.randn(2, 20, 32)
    mixer = model.blocks[0].mixer
    init = {"state": torch.randn(2, 32), "state_conv": torch.randn(2, 2, 32)}
    with torch.no_grad():
        fast, fast_state = mixer(x, init)
        with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_state_conv", lambda t, hook: None)]):
            slow, slow_state = mixer(x, init)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
    for k in fast_state:
        torch.testing.assert_close(fast_state[k], slow_state[k], atol=1e-6, rtol=1e-5)


def test_conv_state_edit_shifts_through_later_windows():
    model = make_model("qrnn", mixer_options={"qrnn": {"window": 4}})
    toks = tokens(1, 12)
    seen = {}

    def edit(t, hook):
        t = t.clone()
        t[:, 5] = 7.0
        return t

    def grab(t, hook):
        seen["w"] = t.clone()

    model.run_with_hooks(toks, fwd_hooks=[("blocks.0.mixer.hook_state_conv", edit)])
    with model.hooks(fwd_hooks=[("blocks.0.mixer.hook_state_conv", edit)]):
        _, st = model(toks[:, :8], return_states=True)
    # window after token 7 = (x_5', x_6', x_7) where only the edited slots carry 7.0
    w = st.layers[0]["mixer"]["state_conv"][0]
    assert torch.all(w[0] == 7.0) and not torch.all(w[2] == 7.0)
