"""The fused-kernel dispatch seam (probe.ops.fused): each library call mapping run on the CPU with the
kernel swapped for a reference of the same signature (fla's naive recurrent GLA, gated delta rule and
KDA behind chunk_gla's, chunk_gated_delta_rule's and chunk_kda's signatures; mamba-ssm's
selective_scan_ref, a step-by-step mamba_chunk_scan_combined and causal-conv1d's causal_conv1d_ref
written here as those libraries define them), equal to the PyTorch path; and the fallbacks: CPU
tensors, a state hook, a carried state the library cannot start from, fused kernels switched off, a
missing library, a key width the kernel does not take."""
import math
import warnings
from contextlib import ExitStack

import pytest
import torch
import torch.nn.functional as F

import probe
from conftest import randomise
from fla_reference import fla_naive
from probe.ops.fused import registry
from probe.ops.fused import fused_disabled, fused_kernel, swapped_kernel


class Recorder:
    """Counts the calls of ``function`` and checks each argument's dtype as the library's kernel does."""

    def __init__(self, function, check):
        self.function, self.check, self.calls = function, check, 0

    def __call__(self, *args, **kwargs):
        self.check(*args, **kwargs)
        self.calls += 1
        return self.function(*args, **kwargs)


# -- references with the libraries' signatures --------------------------------------------------------
def chunk_gla_reference(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    """fla's ``chunk_gla`` computed by its ``naive_recurrent_gla`` (which fixes scale = K^-1/2)."""
    naive = fla_naive("ops/gla/naive.py").naive_recurrent_gla
    K = q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    o, last = naive(q * (scale / K ** -0.5), k, v, g, initial_state, output_final_state)
    return o, last


def check_chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    assert q.shape == k.shape == g.shape and v.shape[:3] == q.shape[:3]  # fla's own assertions
    assert q.dtype == k.dtype == v.dtype and g.dtype == torch.float32
    assert initial_state is None or initial_state.dtype == torch.float32  # "initial_state must be in float32"
    assert all(t.is_contiguous() for t in (q, k, v, g))


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """mamba-ssm's ``selective_scan_ref``: ``u, delta [b, D, L]``, ``A [D, N]``, ``B, C [b, N, L]``; float32 inside."""
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    x = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = torch.exp(delta[:, :, i, None] * A) * x + (delta[:, :, i] * u[:, :, i])[..., None] * B[:, None, :, i].float()
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i].float()))
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype)
    return (out, x) if return_last_state else out


def check_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    assert u.dim() == 3 and delta.shape == u.shape and B.shape == C.shape == (u.shape[0], A.shape[1], u.shape[2])
    assert delta.dtype == B.dtype == C.dtype == u.dtype and A.dtype == torch.float32 and D.dtype == torch.float32
    assert all(t.is_contiguous() for t in (u, delta, B, C))


def causal_conv1d_reference(x, weight, bias=None, initial_states=None, return_final_states=False,
                            final_states_out=None, activation=None):
    """causal-conv1d's ``causal_conv1d_ref``: ``x [b, D, L]``, ``weight [D, k]`` from a zero window."""
    k = weight.shape[1]
    out = F.conv1d(F.pad(x, (k - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return out if activation is None else F.silu(out)


def check_causal_conv1d(x, weight, bias=None, initial_states=None, return_final_states=False,
                        final_states_out=None, activation=None):
    assert x.dim() == 3 and weight.shape == (x.shape[1], weight.shape[1]) and 2 <= weight.shape[1] <= 4
    assert weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype) and activation in (None, "silu")


def ssd_combined_reference(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                           cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf), return_final_states=False,
                           return_varlen_states=False):
    """mamba-ssm's ``mamba_chunk_scan_combined`` one step at a time, float32 inside: ``x [b, l, h, p]``,
    ``dt [b, l, h]`` (bias, softplus, then the clamp to ``dt_limit``), ``A [h]``, ``B, C [b, l, g, n]``,
    ``D [h]``, ``initial_states [b, h, p, n]``; ``y`` in ``x``'s dtype, the final state float32."""
    dtype, H = x.dtype, x.shape[2]
    x, dt, Bh, Ch = x.float(), dt.float(), *(t.float().repeat_interleave(H // B.shape[2], dim=2) for t in (B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    s = x.new_zeros(x.shape[0], H, x.shape[3], B.shape[3]) if initial_states is None else initial_states.float()
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t, :, None, None] * A[:, None, None])
        s = decay * s + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None]
        ys.append(torch.einsum("bhpn,bhn->bhp", s, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D.float()[:, None] * x
    if z is not None:
        y = y * F.silu(z.float())
    return (y.to(dtype), s) if return_final_states else y.to(dtype)


def check_ssd_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                       cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf), return_final_states=False,
                       return_varlen_states=False):
    b, T, H, P = x.shape  # the library's own assertions, then the dtypes probe passes
    assert dt.shape == (b, T, H) and A.shape == (H,) and B.shape == C.shape and B.shape[:2] == (b, T)
    assert H % B.shape[2] == 0
    assert initial_states is None or initial_states.shape == (b, H, P, B.shape[3])
    assert B.dtype == C.dtype == x.dtype and dt.dtype == A.dtype == D.dtype == initial_states.dtype == torch.float32
    assert bool((dt * A <= 0).all())  # the chunk scan takes exp(min(segment sum of dt A, 0)): decays <= 1
    assert all(t.is_contiguous() for t in (x, dt, B, C)) and chunk_size & (chunk_size - 1) == 0


def chunk_gated_delta_rule_reference(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                     use_qk_l2norm_in_kernel=False, **kwargs):
    """fla's ``chunk_gated_delta_rule`` computed by its ``naive_recurrent_gated_delta_rule`` (which takes
    one head count: the key heads are repeated for their value heads, as fla's kernel reads them)."""
    naive = fla_naive("ops/gated_delta_rule/naive.py").naive_recurrent_gated_delta_rule
    group = v.shape[2] // q.shape[2]
    o, last = naive(q.repeat_interleave(group, 2), k.repeat_interleave(group, 2), v, beta, g, scale,
                    initial_state, output_final_state)
    return o.to(q.dtype), last


def chunk_kda_reference(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                        use_qk_l2norm_in_kernel=False, **kwargs):
    """fla's ``chunk_kda`` computed by its ``naive_recurrent_kda`` (value-head grouping included)."""
    naive = fla_naive("ops/kda/naive.py").naive_recurrent_kda
    return naive(q, k, v, g, beta, scale, initial_state, output_final_state)


def check_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, **kwargs):
    assert q.shape == k.shape and v.shape[:2] == q.shape[:2] and v.shape[2] % q.shape[2] == 0  # fla's assertions
    assert beta.shape == v.shape[:3] and g.shape in (v.shape[:3], (*v.shape[:3], q.shape[3])) and q.shape[3] <= 256
    assert initial_state is None or initial_state.dtype == torch.float32  # "initial_state must be in float32"
    assert q.dtype == k.dtype == v.dtype == beta.dtype and g.dtype == torch.float32 and not use_qk_l2norm_in_kernel
    assert kwargs == {"state_v_first": False}  # the state read by keys, [K, V], as probe's
    assert all(t.is_contiguous() for t in (q, k, v, g, beta))


# -- models --------------------------------------------------------------------------------------------
def _model(kind, dtype=torch.float32):
    torch.manual_seed(0)
    # grouped value heads of 16 (the narrowest tl.dot takes)
    heads = {"n_k_heads": 2, "n_v_heads": 4, "d_k": 16, "d_v": 16, "chunk": 8}
    opts = {"hgrn2": {"expand_ratio": 8}, "mamba": {"d_state": 8}, "gdn": heads, "kda": heads,
            "mamba2": {"d_state": 8, "head_dim": 16, "n_groups": 2, "chunk": 16}}[kind]
    cfg = probe.ModelConfig(vocab_size=50, d_model=32, layout=[kind, kind], d_mlp=64, mixer_options={kind: opts})
    return randomise(probe.HookedLM(cfg).eval(), 0.2).to(dtype)


def _swaps(kind):
    """The kernels of ``kind`` as recorded references, the recurrence's first."""
    conv = {"causal_conv1d": Recorder(causal_conv1d_reference, check_causal_conv1d)}
    if kind == "hgrn2":
        return {"chunk_gla": Recorder(chunk_gla_reference, check_chunk_gla)}
    if kind == "mamba":
        return {"selective_scan": Recorder(selective_scan_reference, check_selective_scan), **conv}
    if kind == "mamba2":
        return {"ssd_combined": Recorder(ssd_combined_reference, check_ssd_combined), **conv}
    if kind == "gdn":
        return {"chunk_gated_delta_rule": Recorder(chunk_gated_delta_rule_reference, check_delta_rule), **conv}
    return {"chunk_kda": Recorder(chunk_kda_reference, check_delta_rule), **conv}


def _run_swapped(swaps, fn):
    """``fn()`` with every kernel of ``swaps`` standing in for its library."""
    with ExitStack() as stack:
        for name, function in swaps.items():
            stack.enter_context(swapped_kernel(name, function))
        return fn()


TOKENS = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(1))
KINDS = ["hgrn2", "mamba", "mamba2", "gdn", "kda"]
#: the delta rules' triangular solve amplifies rounding (and their fused bfloat16 path rounds the
#: normalised q, k to bfloat16, as fla's layers do; the PyTorch path keeps them float32): their float32
#: bound is 3x wider (measured 4.9e-6), and in bfloat16 the paths are compared through their distance
#: to float64
DELTA_RULES = ("gdn", "kda")


@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_fused_call_mapping_equals_the_pytorch_path(kind):
    """Float32: the mixer's forward through the kernel mapping equals its PyTorch forward, in logits and in
    the state each layer leaves (so the next segment starts right); every kernel ran once per layer."""
    model = _model(kind)
    swaps = _swaps(kind)
    with torch.no_grad():
        ref, ref_states = model(TOKENS, return_states=True)
        out, states = _run_swapped(swaps, lambda: model(TOKENS, return_states=True))
    assert all(r.calls == 2 for r in swaps.values()), {n: r.calls for n, r in swaps.items()}
    assert (out - ref).abs().max() < (3e-5 if kind in DELTA_RULES else 1e-5), (out - ref).abs().max()
    for mine, theirs in zip(states.layers, ref_states.layers):
        for name, value in theirs["mixer"].items():
            torch.testing.assert_close(mine["mixer"][name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_fused_call_mapping_in_bfloat16(kind):
    """A bfloat16 model passes the kernels the dtypes they take (checked by the references) and stays
    within bfloat16 rounding of the PyTorch path (max |diff| / max |logit|: 1.7e-2 at most over 4 seeds);
    for the delta rules the fused path is at most twice as far from float64 as the PyTorch path (measured
    at most 1.5x over 4 seeds)."""
    model = _model(kind, torch.bfloat16)
    swaps = _swaps(kind)
    with torch.no_grad():
        ref = model(TOKENS).float()
        out = _run_swapped(swaps, lambda: model(TOKENS)).float()
        truth = _model(kind, torch.float64)(TOKENS).float()
    assert all(r.calls == 2 for r in swaps.values())
    if kind in DELTA_RULES:
        error = lambda y: (y - truth).abs().max() / truth.abs().max()  # noqa: E731
        assert error(out) <= 2 * error(ref) + 1e-2, (error(out), error(ref))
    else:
        assert (out - ref).abs().max() / ref.abs().max() < 3e-2, (out - ref).abs().max() / ref.abs().max()


@pytest.mark.parametrize("kind", KINDS)
def test_state_hooks_and_edits_take_the_pytorch_path(kind, state_pieces):
    """A state hook wants every state: the kernel does not run for it, and the cache and an edit's effect
    equal those without any kernel swapped in; the edit's rerun and states at a few positions run it
    between the positions (probe.mixers.state_positions)."""
    model = _model(kind)
    swaps = _swaps(kind)
    name = "blocks.0.mixer.hook_state"

    def edit(value, hook):
        value[:, 10] = 0.0

    with torch.no_grad():
        _, cache = _run_swapped(swaps, lambda: model.run_with_cache(TOKENS, names_filter=name))
        edited = _run_swapped(swaps, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)]))
        _, ref_cache = model.run_with_cache(TOKENS, names_filter=name)
        ref_edited = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
        first = next(iter(swaps.values()))
        assert first.calls == 2 + 2  # layer 1 in each run; layer 0's rerun over [0, 10) and (10, 40)
        _, some = _run_swapped(swaps, lambda: model.run_with_cache(TOKENS, names_filter=name, state_positions=[3, 20]))
    assert first.calls == 4 + 4  # layer 0 over [0, 3], (3, 20] and (20, 40), then layer 1
    torch.testing.assert_close(cache[name], ref_cache[name])
    torch.testing.assert_close(some[name], ref_cache[name][:, [3, 20]])
    torch.testing.assert_close(edited, ref_edited)
    assert not torch.allclose(edited, model(TOKENS))  # the edit reached the output


@pytest.mark.numerical
@pytest.mark.parametrize("kind", ["mamba", "mamba2", "gdn", "kda"])
def test_a_hooked_conv_window_takes_the_pytorch_conv(kind):
    """Reading the conv windows of layer 0 runs its PyTorch conv (layer 1 still runs causal-conv1d),
    the recurrence kernels run in both layers, and the windows and logits equal the PyTorch path's."""
    model = _model(kind)
    swaps = _swaps(kind)
    name = "blocks.0.mixer.hook_state_conv"
    with torch.no_grad():
        out, cache = _run_swapped(swaps, lambda: model.run_with_cache(TOKENS, names_filter=name))
        ref, ref_cache = model.run_with_cache(TOKENS, names_filter=name)
    assert [r.calls for r in swaps.values()] == [2, 1]
    torch.testing.assert_close(cache[name], ref_cache[name])
    assert (out - ref).abs().max() < (3e-5 if kind in DELTA_RULES else 1e-5), (out - ref).abs().max()


def test_a_conv_wider_than_causal_conv1d_takes_runs_the_pytorch_conv():
    """causal-conv1d takes widths 2 to 4: a Mamba-2 with d_conv 5 runs its conv in PyTorch, its scan fused."""
    torch.manual_seed(0)
    cfg = probe.ModelConfig(vocab_size=50, d_model=32, layout=["mamba2"], d_mlp=64,
                            mixer_options={"mamba2": {"d_state": 8, "head_dim": 16, "d_conv": 5}})
    model = randomise(probe.HookedLM(cfg).eval(), 0.2)
    swaps = _swaps("mamba2")
    with torch.no_grad():
        out = _run_swapped(swaps, lambda: model(TOKENS))
        ref = model(TOKENS)
    assert [r.calls for r in swaps.values()] == [1, 0]
    assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()


@pytest.mark.numerical
def test_an_edited_dt_runs_mamba2s_scan_in_pytorch():
    """mamba-ssm's chunk scan clamps decay products at 1 (right only for dt A <= 0, which its reference
    here asserts): an edited dt (negated at one position) runs layer 0's scan in PyTorch, layer 1 keeps
    the kernel, and the logits are the PyTorch path's."""
    model = _model("mamba2")
    swaps = _swaps("mamba2")
    name = "blocks.0.mixer.hook_dt"

    def negate(value, hook):
        value[:, 7] = -value[:, 7]

    with torch.no_grad():
        out = _run_swapped(swaps, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, negate)]))
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, negate)])
    assert swaps["ssd_combined"].calls >= 1  # layer 1 (once per pass the edit runs)
    assert not torch.allclose(ref, model(TOKENS))
    assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()


@pytest.mark.parametrize("kind", ["gdn", "kda"])
def test_keys_wider_than_the_kernel_takes_run_the_pytorch_path(kind, monkeypatch):
    """fla's delta-rule kernels take key heads up to 256 wide: a wider one runs the PyTorch form (here
    with the limit lowered below the test model's d_k = 8)."""
    import probe.mixers.gdn as gdn

    monkeypatch.setattr(gdn, "MAX_K", 4)
    model = _model(kind)
    swaps = _swaps(kind)
    with torch.no_grad():
        out = _run_swapped(swaps, lambda: model(TOKENS))
        ref = model(TOKENS)
    assert [r.calls for r in swaps.values()] == [0, 0]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_a_carried_state_continues_through_the_recurrence_kernel(kind):
    """A carried state continues through the kernel (the second half equals the whole forward's): as its
    initial state, or for mamba-ssm's scan, which starts from zeros, with the state's free response
    added; causal-conv1d starts from a zero window, so a carried window runs the PyTorch conv."""
    model = _model(kind)
    swaps = _swaps(kind)
    with torch.no_grad():
        _, st = model(TOKENS[:, :20], return_states=True)
        out = _run_swapped(swaps, lambda: model(TOKENS[:, 20:], states=st))
        whole = model(TOKENS)
    calls = [r.calls for r in swaps.values()]
    assert calls == [2] + [0] * (len(calls) - 1), calls
    torch.testing.assert_close(out, whole[:, 20:], rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
def test_a_carried_mamba_states_response_in_blocks_and_its_gradient(monkeypatch):
    """The free response of a carried Mamba state, a few positions per block, gives the PyTorch path's
    output and final state, and its gradients with respect to the carried state and the weights."""
    from probe.ops.fused import mamba as fused_mamba
    monkeypatch.setattr(fused_mamba, "MAX_RESPONSE_ELEMENTS", 2 * 64 * 16)  # 2 positions per block, batch 2
    model = _model("mamba")
    swaps = _swaps("mamba")
    with torch.no_grad():
        _, st = model(TOKENS[:, :20], return_states=True)
    results = []
    for fused in (True, False):
        model.zero_grad()
        run = lambda: model(TOKENS[:, 20:], states=st, return_states=True)  # noqa: E731
        out, after = _run_swapped(swaps, run) if fused else run()
        out.float().pow(2).mean().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((out.detach(), after.layers[0]["mixer"]["state"].detach(), grads))
    assert swaps["selective_scan"].calls == 2
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)
    for mine, ref in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)


def test_no_kernel_on_cpu_or_when_switched_off(monkeypatch):
    x = torch.zeros(2, 3)
    assert fused_kernel("chunk_gla", x) is None  # CPU tensors: the PyTorch form
    calls = Recorder(chunk_gla_reference, check_chunk_gla)
    with swapped_kernel("chunk_gla", calls):
        assert fused_kernel("chunk_gla", x) is calls
        with fused_disabled():
            assert fused_kernel("chunk_gla", x) is None
        monkeypatch.setenv("PROBE_FUSED", "0")
        assert fused_kernel("chunk_gla", x) is None
    with pytest.raises(KeyError, match="chunk_gla"):
        fused_kernel("chunk_glaa", x)


def test_a_missing_library_is_said_once(monkeypatch):
    """On CUDA inputs without the library: one warning naming the extra, then the PyTorch form (None)."""
    monkeypatch.setitem(registry.KERNELS, "chunk_gla", registry.Kernel("probe_absent_library", "chunk_gla", "fla"))
    monkeypatch.setattr(registry, "_loaded", {})

    class OnCuda:
        is_cuda = True

    with pytest.warns(RuntimeWarning, match=r"probe-interp\[cuda\]"):
        assert fused_kernel("chunk_gla", OnCuda()) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused_kernel("chunk_gla", OnCuda()) is None


@pytest.mark.parametrize("version, usable", [("3.8.0", True), ("3.9.0", False), ("3.10.1", False),
                                              ("3.9.0rc1", False)])
def test_a_triton_too_new_for_a_library_is_said_and_skipped(monkeypatch, version, usable):
    """mlstm_kernels' kernels fail at their first launch under Triton 3.9 (no block pointers): the registry
    refuses them there, with the usual warning, and the PyTorch form runs."""
    import sys
    import types
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=version))
    monkeypatch.setitem(registry.KERNELS, "chunk_gla", registry.Kernel("math", "sqrt", "fla", triton_below="3.9"))
    monkeypatch.setattr(registry, "_loaded", {})

    class OnCuda:
        is_cuda = True

    if usable:
        assert fused_kernel("chunk_gla", OnCuda()) is math.sqrt
    else:
        with pytest.warns(RuntimeWarning, match=f"need Triton below 3.9, this is Triton {version}"):
            assert fused_kernel("chunk_gla", OnCuda()) is None
    assert registry.KERNELS["mlstm_chunkwise"].triton_below == "3.9"


@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_library_kernels_on_cuda_equal_the_pytorch_path(kind):
    """The GPU check (scripts/gpu_check.sh): with the real libraries on CUDA, fp32 logits of the fused
    forward against the PyTorch forward. Needs a CUDA device and the probe-interp[cuda] extra."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (scripts/gpu_check.sh runs it on a GPU)")
    names = list(_swaps(kind))
    x = torch.zeros(1, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if any(fused_kernel(n, x) is None for n in names):
            pytest.skip(f"{kind}'s kernel library is not installed (pip install 'probe-interp[cuda]')")
    model = _model(kind).cuda()
    toks = TOKENS.cuda()
    with torch.no_grad():
        out = model(toks)
        with fused_disabled():
            ref = model(toks)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-3, (out - ref).abs().max()


# -- every state on a GPU: long blocks of whole chunks ---------------------------------------------------
def test_capture_blocks_are_long_on_a_gpu_and_bounded():
    from probe.ops.fused.capture import MAX_BLOCK_ELEMENTS, capture_block

    assert capture_block(8192, 4 * 2048 * 16, on_gpu=False, default=128) == 128  # the CPU keeps its default
    assert capture_block(8192, 4 * 2048 * 16, on_gpu=True, default=128) == 8192 // 12  # a quarter of the states
    hgrn2 = 4 * 8 * 128 * 128
    assert capture_block(8192, hgrn2, on_gpu=True, default=128) == MAX_BLOCK_ELEMENTS // hgrn2  # 1 GiB per temporary
    assert capture_block(100, 10, on_gpu=True, default=128) == 128  # never below the default


@pytest.mark.numerical
def test_capture_in_long_chunked_blocks_equals_the_step_by_step_states():
    """Mamba's coefficients scanned as a GPU capture runs them (chunked form, blocks of capture_block)
    give the states and outputs of the per-position step, float64 (PyTorch step, no compiled kernel)."""
    from probe.ops.fused.capture import capture_block
    from probe.ops.linear_scan import linear_scan_blocked
    from probe.ops.selective_scan import selective_scan_states

    g = torch.Generator().manual_seed(3)
    b, T, D, N = 2, 300, 6, 4
    dt = torch.rand(b, T, D, generator=g, dtype=torch.float64) * 0.5
    A = -torch.rand(D, N, generator=g, dtype=torch.float64) * 2
    B, C = (torch.randn(b, T, N, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, T, D, generator=g, dtype=torch.float64)
    h0 = torch.randn(b, D, N, generator=g, dtype=torch.float64)
    block = capture_block(T, h0.numel(), on_gpu=True, default=16)
    assert 16 < block < T
    coefficients = lambda t0, t1: (torch.exp(dt[:, t0:t1, :, None] * A), v[:, t0:t1, :, None] * B[:, t0:t1, None, :])  # noqa: E731
    readout = lambda t0, t1, s: torch.einsum("btdn,btn->btd", s, C[:, t0:t1])  # noqa: E731
    y, last, states = linear_scan_blocked(coefficients, T, h0, readout, block=block, keep_states=True, method="chunked")
    y_ref, last_ref, states_ref = selective_scan_states(dt, A, B, C, v, h0, native_path=False)
    torch.testing.assert_close(states, states_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=1e-10, atol=1e-10)
