"""Mamba: parity with transformers' MambaForCausalLM, the blocked selective scan against the
recurrence read back from the hooks, long and extreme inputs, and a fast path that never
holds every state."""
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import probe
from conftest import randomise
from mixer_checks import assert_gradients_match
from probe.errors import CheckpointError, ConfigError
from probe.io.convert_mamba import mamba_from_hf
from probe.mixers import mamba as mamba_module
from probe.ops.linear_scan import linear_scan_sequential

transformers = pytest.importorskip("transformers")


def hf_mamba(seed=0, **kw):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    args = dict(vocab_size=97, hidden_size=32, state_size=8, num_hidden_layers=2, conv_kernel=4, expand=2)
    args.update(kw)
    return randomise(MambaForCausalLM(MambaConfig(**args)).eval(), 0.05)  # every weight off its init


def _hf_logits(hf, toks):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return hf(toks, use_cache=False).logits


@pytest.mark.parametrize("kw", [{}, {"use_bias": True, "use_conv_bias": False, "tie_word_embeddings": False,
                                     "time_step_rank": 3, "conv_kernel": 2, "state_size": 4}])
def test_logits_match_transformers(kw):
    hf = hf_mamba(**kw)
    model = mamba_from_hf(hf)
    assert model.cfg.mlp_layout == ["none", "none"] and all(b.mlp is None for b in model.blocks)
    toks = torch.randint(0, 97, (2, 150), generator=torch.Generator().manual_seed(0))  # > one scan block
    ref = _hf_logits(hf, toks)
    with torch.no_grad():
        ours = model(toks)
        first, st = model(toks[:, :70], return_states=True)
        rest = model(toks[:, 70:], states=st)
    assert (ours - ref).abs().max() < 1e-4, (ours - ref).abs().max()
    assert (torch.cat([first, rest], 1) - ref).abs().max() < 1e-4


def test_generation_matches_transformers_greedy():
    hf = hf_mamba(seed=1)
    model = mamba_from_hf(hf)
    prompt = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(1))
    ours = model.generate(prompt, max_new_tokens=10, return_type="tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, ref)


def test_hooks_follow_the_recurrence():
    model = mamba_from_hf(hf_mamba())
    toks = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(2))
    _, cache = model.run_with_cache(toks)
    mixer = model.blocks[1].mixer
    u, dt, B, C, gate, s = (cache[f"blocks.1.mixer.hook_{n}"] for n in ("input", "dt", "B", "C", "output", "state"))
    assert s.shape == (2, 30, 64, 8) and cache["blocks.1.mixer.hook_state_conv"].shape == (2, 30, 3, 64)
    A = -torch.exp(mixer.A_log.detach())
    prev = torch.zeros_like(s[:, 0])
    for t in range(30):
        expected = torch.exp(dt[:, t, :, None] * A) * prev + (dt[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        torch.testing.assert_close(s[:, t], expected, rtol=1e-5, atol=1e-6)
        prev = s[:, t]
    y = (torch.einsum("btdn,btn->btd", s, C) + mixer.D.detach() * u) * gate
    with torch.no_grad():
        torch.testing.assert_close(mixer.out_proj(y), cache["blocks.1.hook_mixer_out"], rtol=1e-4, atol=1e-5)


def _reference_mixer(mixer, x):
    """The whole layer with one sequential scan over every position (no blocks)."""
    with torch.no_grad():
        _, cache_values = None, {}
        xi, z = mixer.in_proj(x).chunk(2, -1)
        pre = torch.nn.functional.conv1d(torch.nn.functional.pad(xi.transpose(1, 2), (mixer.d_conv - 1, 0)),
                                         mixer.conv_weight.unsqueeze(1), mixer.conv_bias, groups=mixer.d_inner)
        u = torch.nn.functional.silu(pre.transpose(1, 2))
        r, B, C = mixer.x_proj(u).split([mixer.dt_rank, mixer.d_state, mixer.d_state], -1)
        dt = torch.nn.functional.softplus(mixer.dt_proj(r))
        A = -torch.exp(mixer.A_log)
        s = linear_scan_sequential(torch.exp(dt[..., None] * A), (dt * u)[..., None] * B[:, :, None, :])
        y = (torch.einsum("btdn,btn->btd", s, C) + mixer.D * u) * torch.nn.functional.silu(z)
        return mixer.out_proj(y), s


@pytest.mark.parametrize("block", [1, 7, 64])
def test_blocked_scan_equals_one_sequential_scan(block, monkeypatch):
    monkeypatch.setattr(mamba_module, "BLOCK", block)
    mixer = mamba_from_hf(hf_mamba()).blocks[0].mixer
    x = torch.randn(2, 45, 32, generator=torch.Generator().manual_seed(3))
    ref_y, ref_s = _reference_mixer(mixer, x)
    with torch.no_grad():
        y, st = mixer(x)
    torch.testing.assert_close(y, ref_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st["state"], ref_s[:, -1], rtol=1e-4, atol=1e-5)


def test_long_sequence_and_extreme_decays():
    torch.manual_seed(0)
    cfg = probe.ModelConfig(vocab_size=50, d_model=8, layout=["mamba"], d_mlp=0,
                            mixer_options={"mamba": {"d_state": 4, "d_conv": 3, "expand": 2}})
    model = probe.HookedLM(cfg).eval()
    mixer = model.blocks[0].mixer
    with torch.no_grad():  # half the channels forget at once (decay ~0), half barely at all (decay ~1)
        mixer.A_log[: mixer.d_inner // 2] = 12.0
        mixer.dt_proj.bias[mixer.d_inner // 2 :] = -14.0
        mixer.A_log[mixer.d_inner // 2 :] = -8.0
    x = torch.randn(1, 8192, 8, generator=torch.Generator().manual_seed(4))
    ref_y, ref_s = _reference_mixer(mixer, x)
    with torch.no_grad():
        y, st = mixer(x)
    assert torch.isfinite(y).all() and torch.isfinite(st["state"]).all()
    torch.testing.assert_close(y, ref_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(st["state"], ref_s[:, -1], rtol=1e-4, atol=1e-5)
    decay = torch.exp(torch.nn.functional.softplus(mixer.dt_proj.bias)[:, None] * -torch.exp(mixer.A_log)).detach()
    assert decay[: mixer.d_inner // 2].max() < 1e-6 and decay[mixer.d_inner // 2 :].min() > 1 - 1e-6


class _LargestStateTensor(TorchDispatchMode):
    """Records the largest tensor created whose trailing dims are a Mamba state ``[d_inner, d_state]``."""

    def __init__(self, state_shape):
        super().__init__()
        self.state_shape, self.largest = tuple(state_shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and tuple(t.shape[-2:]) == self.state_shape:
                self.largest = max(self.largest, t.numel())
        return out


def test_fast_path_never_holds_every_state():
    model = mamba_from_hf(hf_mamba())
    toks = torch.randint(0, 97, (1, 512), generator=torch.Generator().manual_seed(5))
    all_states = 512 * 64 * 8
    with torch.no_grad(), _LargestStateTensor((64, 8)) as probe_fast:
        model(toks)
    assert probe_fast.largest <= 2 * mamba_module.BLOCK * 64 * 8 <= all_states // 2  # a block (scan padding incl.)
    with torch.no_grad(), _LargestStateTensor((64, 8)) as probe_cached:
        _, cache = model.run_with_cache(toks, names_filter="blocks.0.mixer.hook_state")
    assert probe_cached.largest >= all_states and cache["blocks.0.mixer.hook_state"].shape == (1, 512, 64, 8)


def test_state_positions_keep_a_small_cache():
    model = mamba_from_hf(hf_mamba())
    toks = torch.randint(0, 97, (1, 200), generator=torch.Generator().manual_seed(6))
    _, full = model.run_with_cache(toks, names_filter=lambda n: "hook_state" in n)
    _, part = model.run_with_cache(toks, names_filter=lambda n: "hook_state" in n, state_positions=[199])
    assert part.nbytes() * 100 < full.nbytes()
    torch.testing.assert_close(part["blocks.1.mixer.hook_state"][:, 0], full["blocks.1.mixer.hook_state"][:, 199])


def test_bad_config_and_weights_are_named():
    for bad in ({"d_state": 0}, {"d_conv": 0}, {"expand": 0}, {"dt_rank": 0}, {"dt_min": 0.5, "dt_max": 0.1}):
        cfg = probe.ModelConfig(d_model=8, layout=["mamba"], mixer_options={"mamba": bad})
        with pytest.raises(ConfigError):
            probe.HookedLM(cfg)
    hf = hf_mamba()
    with torch.no_grad():
        hf.backbone.layers[0].mixer.A_log = torch.nn.Parameter(torch.zeros(64, 5))
    with pytest.raises(CheckpointError, match="A_log"):
        mamba_from_hf(hf)
    with pytest.raises(ConfigError, match="MambaForCausalLM"):
        mamba_from_hf(object())


def test_gradients_of_scan_forms_match():
    model = mamba_from_hf(hf_mamba())
    toks = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(7))
    assert_gradients_match(model, toks, ("auto", "chunked", "sequential", "loop"))  # auto = the fused selective scan


def test_state_cache_without_gradients_equals_blocked_scan(monkeypatch):
    """A no-grad state cache takes the state-writing scan; its states and logits equal the
    blocked scan's (method "sequential")."""
    import probe.mixers.mamba as mamba_module

    calls = []
    original = mamba_module.selective_scan_states
    monkeypatch.setattr(mamba_module, "selective_scan_states", lambda *a: calls.append(1) or original(*a))
    model = mamba_from_hf(hf_mamba()).double()
    toks = torch.randint(0, 97, (2, 33), generator=torch.Generator().manual_seed(5))
    names = [n for n in model.state_hook_names() if n.endswith("hook_state")]
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks, names_filter=names)
        for block in model.blocks:
            block.mixer.method = "sequential"
        ref_logits, ref_cache = model.run_with_cache(toks, names_filter=names)
    assert len(calls) == len(model.blocks)  # the first run only
    torch.testing.assert_close(logits, ref_logits)
    for name in names:
        torch.testing.assert_close(cache[name], ref_cache[name])
