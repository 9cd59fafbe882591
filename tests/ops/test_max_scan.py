"""The running-max stabiliser (probe.ops.max_scan): the chunked form against the sequential
definition m_t = max(m_{t-1} + g_t, x_t), and edits of the carried stabiliser."""
import pytest
import torch

from probe.ops.max_scan import empty_log, max_scan, max_scan_chunked, max_scan_sequential


def _inputs(T, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    g = -scale * torch.rand(2, T, 3, generator=gen, dtype=torch.float64)  # log-decays <= 0
    x = scale * torch.randn(2, T, 3, generator=gen, dtype=torch.float64)
    m0 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    return g, x, m0


def test_sequential_is_the_recurrence():
    g, x, m0 = _inputs(9)
    m, m_step = max_scan_sequential(g, x, m0)
    prev = m0
    for t in range(9):
        prev = torch.maximum(prev + g[:, t], x[:, t])
        assert torch.equal(m[:, t], prev)
    assert torch.equal(m_step, m)


@pytest.mark.parametrize("T", [1, 31, 32, 33, 200])
@pytest.mark.parametrize("chunk", [1, 7, 32])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_chunked_equals_sequential(T, chunk, scale):
    g, x, m0 = _inputs(T, scale=scale)
    torch.testing.assert_close(max_scan_chunked(g, x, m0, chunk=chunk), max_scan_sequential(g, x, m0)[0])


def test_broadcast_decay_and_empty_sequence():
    g, x, m0 = _inputs(40)
    g = g[..., :1]  # one decay per position, broadcast over the state
    torch.testing.assert_close(max_scan(g, x, m0)[0], max_scan_sequential(g.expand_as(x), x, m0)[0])
    assert max_scan_chunked(g[:, :0], x[:, :0], m0).shape == (2, 0, 3)


def test_forced_stabiliser_is_carried_and_the_step_value_kept():
    g, x, m0 = _inputs(12)
    mask = torch.zeros(2, 12, 3, dtype=torch.bool)
    mask[0, 5, 1] = True
    values = torch.full((2, 12, 3), 50.0, dtype=torch.float64)
    m, m_step = max_scan(g, x, m0, force=(mask, values))
    plain, _ = max_scan_sequential(g, x, m0)
    assert m[0, 5, 1] == 50.0 and m_step[0, 5, 1] == plain[0, 5, 1]
    assert m[0, 6, 1] == torch.maximum(50.0 + g[0, 6, 1], x[0, 6, 1])
    torch.testing.assert_close(m[:, :5], plain[:, :5])
    torch.testing.assert_close(m[1], plain[1])


def test_zero_decay_takes_the_sequential_form():
    g, x, m0 = _inputs(20)
    g[:, 4] = -float("inf")  # a decay of exactly 0 forgets everything before position 4
    m, _ = max_scan(g, x, m0)
    assert torch.equal(m, max_scan_sequential(g, x, m0)[0])
    assert torch.equal(m[:, 4], x[:, 4])


def test_empty_log_is_finite_after_a_decay():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        low = torch.tensor(empty_log(dtype), dtype=dtype)
        assert torch.isfinite(low + low.new_tensor(-1000.0))


def test_unknown_method_is_named():
    g, x, m0 = _inputs(4)
    with pytest.raises(ValueError, match="Unknown scan method"):
        max_scan(g, x, m0, method="fast")
