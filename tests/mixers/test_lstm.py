"""The LSTM mixer: the hooked loop equals torch.nn.LSTM, and cached gates satisfy the recurrence."""
import torch

from conftest import make_model, tokens


def test_hooked_loop_equals_torch_lstm():
    model = make_model("lstm")
    mixer = model.blocks[0].mixer
    x = torch.randn(3, 17, model.cfg.d_model)
    state = {"state": torch.randn(3, 32), "state_h": torch.randn(3, 32)}
    with torch.no_grad():
        ref, (h, c) = mixer.lstm(x, (state["state_h"][None], state["state"][None]))
        fast, fast_state = mixer(x, state)  # no hooks: torch.nn.LSTM path
        loop = mixer._loop(x, state["state"], state["state_h"], {})  # the path edits take
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(loop["state_h"], ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loop["state"][:, -1], c[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loop["state_h"][:, -1], h[0], atol=1e-6, rtol=1e-5)


def test_cached_gates_satisfy_the_recurrence():
    model = make_model("lstm")
    _, cache = model.run_with_cache(tokens(2, 12))
    g = {k: cache[f"blocks.0.mixer.hook_{k}"] for k in ("input", "forget", "candidate", "output", "state", "state_h")}
    c_prev = torch.zeros_like(g["state"][:, 0])
    for t in range(12):
        c = g["forget"][:, t] * c_prev + g["input"][:, t] * g["candidate"][:, t]
        torch.testing.assert_close(c, g["state"][:, t], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(g["output"][:, t] * torch.tanh(c), g["state_h"][:, t], atol=1e-6, rtol=1e-5)
        c_prev = c
    torch.testing.assert_close(cache["blocks.0.hook_mixer_out"], g["state_h"])


def test_gradient_flows_through_the_loop():
    model = make_model("lstm")
    toks = tokens(1, 6)
    emb = []

    def keep(t, hook):
        t.retain_grad()
        emb.append(t)

    with model.hooks(fwd_hooks=[("hook_embed", keep), ("blocks.0.mixer.hook_state", lambda t, hook: None)]):
        model(toks)[0, -1].sum().backward()
    assert emb[0].grad is not None and emb[0].grad[0, 0].abs().sum() > 0


def test_read_only_hooks_use_the_fast_reconstruction_and_match_the_loop():
    model = make_model("lstm")
    mixer = model.blocks[0].mixer
    x = torch.randn(2, 30, 32)
    state = {"state": torch.randn(2, 32), "state_h": torch.randn(2, 32)}
    with torch.no_grad():
        recon = mixer.compute(x, state, {}, {"state"}).values
        loop = mixer._loop(x, state["state"], state["state_h"], {})
    for k in loop:
        torch.testing.assert_close(recon[k], loop[k], atol=1e-5, rtol=1e-4)
