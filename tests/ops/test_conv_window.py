"""Causal convolution windows as a state (probe.ops.conv_window): the windows are the last
k-1 inputs, an edited window shifts through the later ones, and the depthwise convolution gives
the same output whether it builds its windows or runs one conv1d."""
import torch

from probe.ops import conv_window


def _inputs(T=9, w=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(2, T, d, generator=g, dtype=torch.float64)
    return u, torch.randn(2, w, d, generator=g, dtype=torch.float64)


def test_windows_are_the_last_inputs():
    u, init = _inputs()
    W = conv_window.windows(u, init)
    history = torch.cat([init, u], dim=1)
    for t in range(u.shape[1]):
        assert torch.equal(W[:, t], history[:, t + 1 : t + 4])
    assert torch.equal(conv_window.previous_windows(W, init)[:, 0], init)
    assert torch.equal(conv_window.conv_inputs(conv_window.previous_windows(W, init), u)[:, 5], history[:, 5:9])


def test_an_edited_window_shifts_through_the_later_ones():
    u, init = _inputs()
    W = conv_window.windows(u, init)
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[0, 4, 2] = True  # the newest entry of window 4 in the first sequence
    values = torch.full_like(W, 7.0)
    F = conv_window.force_windows(W, u, init, mask, values)
    assert F[0, 4, 2].eq(7.0).all() and F[0, 5, 1].eq(7.0).all() and F[0, 6, 0].eq(7.0).all()
    keep = torch.ones_like(W, dtype=torch.bool)
    keep[0, 4, 2] = keep[0, 5, 1] = keep[0, 6, 0] = False
    assert torch.equal(F[keep], W[keep])  # nothing else moves, and W itself is not written
    assert torch.equal(W, conv_window.windows(u, init))


def test_depthwise_conv_paths_agree_with_the_definition():
    u, init = _inputs(T=11, w=3, d=5)
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    fast, none, final = conv_window.depthwise_conv(u, init, weight, bias, {}, set())
    kept, W, final_kept = conv_window.depthwise_conv(u, init, weight, bias, {}, {"state_conv"})
    history = torch.cat([init, u], dim=1)
    want = torch.stack([(history[:, t : t + 4] * weight.T).sum(1) for t in range(11)], dim=1) + bias
    torch.testing.assert_close(fast, want)
    torch.testing.assert_close(kept, want)
    assert none is None and W.shape == (2, 11, 3, 5)
    assert torch.equal(final, history[:, -3:]) and torch.equal(final_kept, history[:, -3:])


def test_depthwise_conv_honours_an_edit_for_k_positions():
    u, init = _inputs(T=10, w=2, d=3)
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    plain, W, _ = conv_window.depthwise_conv(u, init, weight, None, {}, {"state_conv"})
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[:, 3] = True
    edited, _, _ = conv_window.depthwise_conv(u, init, weight, None, {"state_conv": (mask, torch.zeros_like(W))}, set())
    changed = (edited - plain).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [t in (4, 5) for t in range(10)]  # outputs 4 and 5 read window 3's entries
