"""Mamba's memory map is Ali et al.'s hidden attention (times the output gate), with the D skip
shown apart, checked against the recurrence unrolled one step at a time in float64."""
import pytest
import torch

from conftest import make_model, tokens
from probe.methods import memory_map


@pytest.mark.numerical
def test_mamba_map_excludes_the_d_skip_and_shows_it_apart():
    model = make_model("mamba").double()
    toks = tokens(1, 6)
    names = [f"blocks.0.mixer.hook_{h}" for h in ("input", "dt", "B", "C", "output")]
    _, cache = model.run_with_cache(toks, names_filter=names)
    u, dt, B, C, g = (cache[n][0] for n in names)  # [T, di] / [T, N]
    mixer = model.blocks[0].mixer
    A = -torch.exp(mixer.A_log.detach())  # [di, N]
    T, di = u.shape
    alpha = torch.zeros(di, T, T, dtype=torch.float64)
    for t in range(T):
        for s in range(t + 1):
            decay = torch.ones_like(A)
            for r in range(s + 1, t + 1):
                decay = decay * torch.exp(dt[r][:, None] * A)
            alpha[:, t, s] = (decay * B[s][None, :] * C[t][None, :]).sum(-1) * dt[s]
    lm = memory_map(model, toks, layers=[0], with_state_sizes=False).layer(0)
    gate = g.T[:, :, None]  # [di, t, 1]
    torch.testing.assert_close(lm.matrix[0], gate * alpha)
    torch.testing.assert_close(lm.skip[0], g.T * mixer.D.detach()[:, None])
    torch.testing.assert_close(lm.with_skip()[0], gate * alpha + torch.diag_embed(g.T * mixer.D.detach()[:, None]))
    assert lm.reconstruction_error < 1e-10  # matrix and skip together rebuild the mixer output
    assert "skip apart" in lm.description
    assert "skip apart" in memory_map(model, toks, layers=[0], with_state_sizes=False).figure().layout.annotations[0].text
