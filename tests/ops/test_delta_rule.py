"""probe.ops.delta_rule: the gated delta rule with a scalar gate per head (Gated DeltaNet) and a gate
per key channel (Kimi Delta Attention). The sequential reference against the matrix recurrence
written out, the chunked and all-states forms against the reference (float64, 1e-10), forced states,
the generalised (DPLR) rule containing both, and fla's ``naive_recurrent_kda`` (fla-core, a dev dependency)."""
import pytest
import torch

from fla_reference import fla_naive
from probe.ops.delta_rule import (dplr_sequential, gated_delta_rule_chunked, gated_delta_rule_sequential,
                                  gated_delta_rule_states)


def _inputs(T, gates="uniform", seed=0, b=2, H=3, K=4, V=5, per_channel=False):
    """``q, k, v, log_decay, beta, h0`` in float64 (``log_decay [b, T, H]``, or ``[b, T, H, K]`` per channel)."""
    g = torch.Generator().manual_seed(seed)
    d = dict(dtype=torch.float64)
    q = torch.randn(b, T, H, K, generator=g, **d)
    k = torch.nn.functional.normalize(torch.randn(b, T, H, K, generator=g, **d), dim=-1)
    v = torch.randn(b, T, H, V, generator=g, **d)
    a = torch.rand(b, T, H, *((K,) if per_channel else ()), generator=g, **d)
    if gates == "exact0and1":
        a = (a > 0.5).to(a.dtype)
    elif gates == "near1":
        a = 1 - 1e-3 * a
    beta = torch.rand(b, T, H, generator=g, **d)
    return q, k, v, a.log(), beta, torch.randn(b, H, K, V, generator=g, **d)


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "channel"])
def test_sequential_is_the_matrix_recurrence(per_channel):
    """S_t = (I - beta_t k_t k_t^T) diag(alpha_t) S_{t-1} + beta_t k_t v_t^T, o_t = scale S_t^T q_t, as matrices
    (alpha_t = a_t 1 for a scalar gate)."""
    q, k, v, g, beta, h0 = _inputs(6, per_channel=per_channel)
    S, outs = h0.clone(), []
    eye = torch.eye(4, dtype=torch.float64)
    alpha = g.exp() if per_channel else g.exp()[..., None].expand(*g.shape, 4)
    for t in range(6):
        kk = k[:, t, :, :, None] * k[:, t, :, None, :]
        S = (eye - beta[:, t, :, None, None] * kk) @ torch.diag_embed(alpha[:, t]) @ S \
            + beta[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(0.5 * S.transpose(-1, -2) @ q[:, t, :, :, None])
    o, hT = gated_delta_rule_sequential(q, k, v, g, beta, h0, scale=0.5)
    torch.testing.assert_close(o, torch.stack(outs, 1)[..., 0])
    torch.testing.assert_close(hT, S)


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "channel"])
@pytest.mark.parametrize("gates", ["uniform", "exact0and1", "near1"])
@pytest.mark.parametrize("T", [1, 15, 16, 17, 50])
def test_chunked_and_states_equal_sequential(T, gates, per_channel):
    q, k, v, g, beta, h0 = _inputs(T, gates, per_channel=per_channel)
    o_ref, h_ref = gated_delta_rule_sequential(q, k, v, g, beta, h0, scale=0.5)
    for chunk in (1, 7, 16):
        o, h = gated_delta_rule_chunked(q, k, v, g, beta, h0, scale=0.5, chunk=chunk)
        torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    S = gated_delta_rule_states(k, v, g, beta, h0, chunk=7)
    torch.testing.assert_close(0.5 * torch.einsum("bthkv,bthk->bthv", S, q), o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S[:, -1], h_ref, rtol=1e-10, atol=1e-10)


def test_a_per_channel_gate_of_equal_channels_is_the_scalar_gate():
    q, k, v, g, beta, h0 = _inputs(20)
    wide = g[..., None].expand(*g.shape, 4)
    for rule in (gated_delta_rule_sequential, gated_delta_rule_chunked):
        o_ref, h_ref = rule(q, k, v, g, beta, h0)
        o, h = rule(q, k, v, wide, beta, h0)
        torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


def test_per_channel_gates_decay_the_channels_a_key_reads():
    """A channel with gate 0 forgets exactly (its state row is the new write only); one with gate 1 keeps."""
    q, k, v, g, beta, h0 = _inputs(1, per_channel=True, b=1, H=1)
    g = torch.tensor([[[[-torch.inf, 0.0, -torch.inf, 0.0]]]], dtype=torch.float64)
    beta = torch.zeros(1, 1, 1, dtype=torch.float64)  # no write: S_1 = diag(alpha) S_0
    for rule in (gated_delta_rule_sequential, gated_delta_rule_chunked):
        _, h = rule(q, k, v, g, beta, h0)
        assert torch.equal(h[0, 0, [0, 2]], torch.zeros(2, 5, dtype=torch.float64))
        assert torch.equal(h[0, 0, [1, 3]], h0[0, 0, [1, 3]])


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "channel"])
def test_forced_state_restarts_the_rule(per_channel):
    q, k, v, g, beta, h0 = _inputs(20, per_channel=per_channel)
    mask = torch.zeros(2, 20, 3, 4, 5, dtype=torch.bool)
    mask[0, 9, 1] = True  # one sequence, one head
    values = torch.full((2, 20, 3, 4, 5), 3.0, dtype=torch.float64)
    S = gated_delta_rule_states(k, v, g, beta, h0, force=(mask, values), chunk=4)
    assert torch.equal(S[0, 9, 1], values[0, 9, 1])
    clean = gated_delta_rule_states(k, v, g, beta, h0)
    torch.testing.assert_close(S[1], clean[1])  # the other sequence is untouched
    torch.testing.assert_close(S[:, :9], clean[:, :9])
    _, after = gated_delta_rule_sequential(q[:, 10:], k[:, 10:], v[:, 10:], g[:, 10:], beta[:, 10:], S[:, 9])
    torch.testing.assert_close(S[:, -1], after, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "channel"])
def test_generalised_rule_contains_the_gated_delta_rule(per_channel):
    """dplr with w = alpha, a = -beta k, b = alpha * k and key beta k is the gated delta rule (RWKV-7 reuses
    dplr): (diag(alpha) - beta k (alpha * k)^T) S = (I - beta k k^T) diag(alpha) S."""
    q, k, v, g, beta, h0 = _inputs(9, per_channel=per_channel)
    o_ref, h_ref = gated_delta_rule_sequential(q, k, v, g, beta, h0)
    log_w = g if per_channel else g[..., None].expand_as(k)
    o, h = dplr_sequential(q, beta[..., None] * k, v, log_w, -beta[..., None] * k, log_w.exp() * k, h0)
    torch.testing.assert_close(o, o_ref)
    torch.testing.assert_close(h, h_ref)


def test_kernel_refuses_mismatched_shapes():
    q, k, v, g, beta, h0 = _inputs(5)
    with pytest.raises(ValueError, match="log_decay must be"):
        gated_delta_rule_chunked(q, k, v, g[..., None], beta)  # [b, T, H, 1] is neither form
    with pytest.raises(ValueError, match="beta must be"):
        gated_delta_rule_sequential(q, k, v, g, beta[..., None])
    with pytest.raises(ValueError, match="h0"):
        gated_delta_rule_chunked(q, k, v, g, beta, h0[:, :1])


def _fla_kda_naive():
    """fla's ``fla/ops/kda/naive.py``, loaded by path from the installed fla-core (tests/fla_reference.py)."""
    return fla_naive("ops/kda/naive.py")


@pytest.mark.numerical
def test_per_channel_rule_matches_fla_naive_kda():
    """fla computes in float32 (it casts its inputs), so the tolerance is float32's."""
    pytest.importorskip("einops")
    naive = _fla_kda_naive()
    q, k, v, g, beta, h0 = (x.float() for x in _inputs(37, per_channel=True))
    o_ref, h_ref = naive.naive_recurrent_kda(q, k, v, g, beta, scale=0.5, initial_state=h0, output_final_state=True)
    o, h = gated_delta_rule_chunked(q, k, v, g, beta, h0, scale=0.5)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
