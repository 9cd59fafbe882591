"""Mamba-2: parity with transformers' Mamba2ForCausalLM (logits, final states, greedy generation,
folder loading), the chunked SSD kernel against its sequential reference and a literal per-head
loop (float64, extreme decays), hooks that follow the recurrence, every scan form with equal
gradients, the implicit attention with grouped B/C, and clear errors."""
import pytest
import torch

import probe
from conftest import make_model, randomise, tokens
from hf_parity import (assert_from_hf_matches, assert_greedy_generation_matches, assert_logits_match,
                       assert_recurrent_state_close, hf_tokens)
from mixer_checks import assert_gradients_match, assert_segments_match
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_mamba2 import mamba2_from_hf
from probe.methods import implicit_attention
from probe.mixers.mamba2 import gated_rms_norm
from probe.ops.ssd import ssd_chunked, ssd_sequential

transformers = pytest.importorskip("transformers")

VOCAB = 97


def hf_mamba2(seed=0, **kw):
    """A tiny random ``Mamba2ForCausalLM``: 8 heads of 16 (= 64 * expand 2 / 2), chunk 16."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    args = dict(vocab_size=VOCAB, hidden_size=64, num_heads=8, head_dim=16, state_size=8, n_groups=1,
                num_hidden_layers=2, conv_kernel=4, expand=2, chunk_size=16)
    args.update(kw)
    return randomise(Mamba2ForCausalLM(Mamba2Config(**args)).eval(), 0.05)  # every weight off its init


VARIANTS = {
    "groups1": {},
    "groups2_bias_tied_k3_dtlimit": {"n_groups": 2, "use_bias": True, "use_conv_bias": False,
                                     "tie_word_embeddings": True, "conv_kernel": 3, "state_size": 4,
                                     "time_step_limit": (0.0, 0.05)},
    "groups4_k2": {"n_groups": 4, "conv_kernel": 2, "num_heads": 4, "head_dim": 32},
}


@pytest.mark.numerical
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_final_states_match_transformers(variant):
    hf = hf_mamba2(**VARIANTS[variant])
    model = mamba2_from_hf(hf)
    assert model.cfg.mlp_layout == ["none", "none"] and all(b.mlp is None for b in model.blocks)
    toks = hf_tokens(VOCAB, 70)  # 4.4 chunks of 16
    states, cache = assert_logits_match(model, hf, toks)
    for i, layer in enumerate(cache.layers):
        mine = states.layers[i]["mixer"]
        assert_recurrent_state_close(mine, layer)
        assert mine["state_conv"].shape[1] == hf.config.conv_kernel - 1
    assert_segments_match(model, toks, 37)


def test_generation_matches_transformers_greedy():
    hf = hf_mamba2(seed=1, n_groups=2)
    model = mamba2_from_hf(hf)
    assert_greedy_generation_matches(model, hf, hf_tokens(VOCAB, 9, seed=1, batch=1))


@pytest.mark.numerical
def test_from_hf_loads_a_saved_folder(tmp_path):
    assert_from_hf_matches(hf_mamba2(seed=2), tmp_path, hf_tokens(VOCAB, 20, seed=2, batch=1), ["mamba2", "mamba2"])


def _ssd_inputs(seed, b=2, T=41, H=4, P=3, G=2, N=5):
    g = torch.Generator().manual_seed(seed)
    d = torch.float64
    x, B, C = torch.randn(b, T, H, P, generator=g, dtype=d), *(torch.randn(b, T, G, N, generator=g, dtype=d)
                                                                 for _ in range(2))
    dt, A = torch.rand(b, T, H, generator=g, dtype=d), -torch.rand(H, generator=g, dtype=d) * 3
    return x, dt, A, B, C, torch.randn(b, H, P, N, generator=g, dtype=d), torch.randn(H, generator=g, dtype=d)


def test_sequential_reference_is_the_per_head_recurrence():
    x, dt, A, B, C, h0, D = _ssd_inputs(0)
    y, states = ssd_sequential(x, dt, A, B, C, h0, D)
    H, G = x.shape[2], B.shape[2]
    S = h0.clone()
    for t in range(x.shape[1]):
        for h in range(H):
            g = h // (H // G)  # consecutive heads share a group
            S[:, h] = (torch.exp(dt[:, t, h] * A[h])[:, None, None] * S[:, h]
                       + dt[:, t, h, None, None] * x[:, t, h, :, None] * B[:, t, g, None, :])
            expected = torch.einsum("bpn,bn->bp", S[:, h], C[:, t, g]) + D[h] * x[:, t, h]
            torch.testing.assert_close(y[:, t, h], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(states[:, t], S, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 16, 41, 64])
def test_chunked_ssd_equals_the_sequential_reference(chunk):
    x, dt, A, B, C, h0, D = _ssd_inputs(1)
    y_ref, states = ssd_sequential(x, dt, A, B, C, h0, D)
    y, last = ssd_chunked(x, dt, A, B, C, h0, D, chunk=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, states[:, -1], rtol=1e-10, atol=1e-10)


def test_chunked_ssd_with_extreme_decays():
    """Heads forgetting at once (dt A ~ -1e4 per step) beside heads that barely decay (dt A ~ -1e-8):
    segment sums never subtract large cumulative sums, so both stay exact over long chunks."""
    x, dt, A, B, C, h0, D = _ssd_inputs(2, T=300, H=4, G=1)
    A = torch.tensor([-1e4, -1.0, -1e-8, -5.0], dtype=x.dtype)
    y_ref, states = ssd_sequential(x, dt, A, B, C, h0, D)
    y, last = ssd_chunked(x, dt, A, B, C, h0, D, chunk=128)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(last, states[:, -1], rtol=1e-9, atol=1e-9)


def test_hooks_follow_the_recurrence():
    model = mamba2_from_hf(hf_mamba2(n_groups=2))
    toks = hf_tokens(VOCAB, 25, seed=3)
    _, cache = model.run_with_cache(toks)
    mixer = model.blocks[1].mixer
    u, dt, B, C, gate, S, y = (cache[f"blocks.1.mixer.hook_{n}"] for n in ("input", "dt", "B", "C", "output",
                                                                            "state", "y"))
    assert S.shape == (2, 25, 8, 16, 8) and B.shape == (2, 25, 2, 8) and u.shape == (2, 25, 8, 16)
    assert cache["blocks.1.mixer.hook_state_conv"].shape == (2, 25, 3, 64 * 2 + 2 * 2 * 8)
    A = -torch.exp(mixer.A_log.detach())
    Bh, Ch = B.repeat_interleave(4, dim=2), C.repeat_interleave(4, dim=2)  # 8 heads, 2 groups
    prev = torch.zeros_like(S[:, 0])
    for t in range(25):
        expected = (torch.exp(dt[:, t] * A)[..., None, None] * prev
                    + (dt[:, t, :, None] * u[:, t])[..., None] * Bh[:, t, :, None, :])
        torch.testing.assert_close(S[:, t], expected, rtol=1e-5, atol=1e-6)
        prev = S[:, t]
    torch.testing.assert_close(y, torch.einsum("bthpn,bthn->bthp", S, Ch) + mixer.D.detach()[:, None] * u,
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        out = mixer.out_proj(gated_rms_norm(y.flatten(2), gate, mixer.norm_weight, 2, model.cfg.norm_eps))
    torch.testing.assert_close(out, cache["blocks.1.hook_mixer_out"], rtol=1e-4, atol=1e-5)


def test_every_scan_form_gives_the_same_logits_and_gradients():
    model = mamba2_from_hf(hf_mamba2(n_groups=2))
    toks = hf_tokens(VOCAB, 40, seed=4)
    with torch.no_grad():
        fast = model(toks)  # the chunked SSD
        for block in model.blocks:
            block.mixer.method = "sequential"  # every state built by the linear scan
        torch.testing.assert_close(model(toks), fast, rtol=1e-4, atol=1e-5)
    assert_gradients_match(model, toks, ("auto", "chunked", "sequential", "loop"))


def test_implicit_attention_rebuilds_grouped_heads():
    model = make_model("mamba2", mixer_options={"mamba2": {"n_groups": 2, "d_state": 8, "chunk": 4}})
    for layer in range(model.cfg.n_layers):
        ia, errs = implicit_attention(model, tokens(2, 13), layer)
        assert ia.matrix.shape == (2, model.blocks[layer].mixer.heads, 13, 13)
        assert errs["output"] < 1e-4 and errs["signal"] < 1e-4, errs


def test_bad_config_and_checkpoints_are_named():
    for bad, match in (({"head_dim": 12}, "head_dim"), ({"n_groups": 3}, "n_groups"), ({"d_conv": 1}, "d_conv"),
                       ({"dt_min": 0.5, "dt_max": 0.1}, "dt_min"), ({"dt_limit_min": 0.2, "dt_limit_max": 0.1},
                                                                   "dt_limit")):
        with pytest.raises(ConfigError, match=match):
            probe.HookedLM(probe.ModelConfig(d_model=16, n_heads=2, layout=["mamba2"],
                                             mixer_options={"mamba2": bad}))
    hf = hf_mamba2()
    hf.backbone.layers[0].mixer.register_buffer("extra_scale", torch.ones(3))
    with pytest.raises(CheckpointError, match="extra_scale"):
        mamba2_from_hf(hf)
    hf = hf_mamba2()
    hf.backbone.layers[1].mixer.A_log = torch.nn.Parameter(torch.zeros(5))
    with pytest.raises(CheckpointError, match="A_log"):
        mamba2_from_hf(hf)
    with pytest.raises(ConfigError, match="Mamba2ForCausalLM"):
        mamba2_from_hf(object())
