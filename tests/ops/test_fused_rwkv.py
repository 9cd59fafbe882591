"""The fused forwards of RWKV-7 (flash-linear-attention's ``chunk_rwkv7``) and RWKV-4 (its
``fused_recurrent_rwkv4``), run on the CPU with each kernel swapped for a reference of the same
signature: fla's ``dplr_recurrence`` behind ``chunk_rwkv7``'s, and ``fused_recurrent_rwkv4``'s stabilised
steps written out here one position at a time as its Triton kernel runs them. The call mappings equal
the PyTorch path in logits and carried states (float32 and bfloat16), continue a carried state, leave
state hooks and decay edits the kernel cannot take to the PyTorch path, and take edited inputs."""
import warnings
from contextlib import ExitStack

import pytest
import torch

from conftest import make_model, tokens
from fla_reference import fla_naive
from probe.ops.fused.delta_rule import MAX_K
from probe.ops.fused.registry import fused_disabled, fused_kernel, swapped_kernel
from probe.ops.fused.rwkv7 import LOG_DECAY_RANGE, takes_log_decays
from test_fused_dispatch import Recorder


# -- references with the libraries' signatures --------------------------------------------------------
def chunk_rwkv7_reference(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, **kwargs):
    """fla's ``chunk_rwkv7`` computed by its ``dplr_recurrence`` (``[B, H, T, D]``, float32 inside, which
    scales its queries by ``K^-1/2``): ``o`` in ``r``'s dtype, the final state ``[B, H, K, V]`` float32."""
    naive = fla_naive("ops/generalized_delta_rule/dplr/naive.py").dplr_recurrence
    first = lambda t: t.float().transpose(1, 2)  # noqa: E731
    q = first(r) * (scale * r.shape[-1] ** 0.5)
    o, last = naive(q, first(k), first(v), first(a), first(b), first(w), initial_state, output_final_state)
    return o.transpose(1, 2).to(r.dtype), last


def check_chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, **kwargs):
    assert r.shape == w.shape == k.shape == a.shape == b.shape and v.shape[:3] == r.shape[:3]
    assert r.shape[-1] <= 256 and not kwargs  # the chunk kernels' head limit; no varlen, no lower_bound
    assert r.dtype == k.dtype == v.dtype == a.dtype == b.dtype and w.dtype == torch.float32
    assert initial_state.shape == (r.shape[0], r.shape[2], r.shape[3], v.shape[3])  # [N, H, K, V]
    assert initial_state.dtype == torch.float32 and scale == 1.0 and output_final_state
    low, high = LOG_DECAY_RANGE
    assert bool(((w >= low) & (w <= high)).all())  # log-decays the chunked cumulative sums take
    assert all(t.is_contiguous() for t in (r, w, k, v, a, b, initial_state))


def fused_recurrent_rwkv4_reference(w, u, k, v, state):
    """fla's ``fused_recurrent_rwkv4`` one position at a time, as its forward kernel: ``w <- -exp(w)``,
    ``state [B, 3, 1, C] = (alpha, beta, eps)``, float32 inside; ``wkv [B, T, C]`` and the final state
    ``[B, 3, 1, C]`` in ``k``'s dtype."""
    w, u = -torch.exp(w.float()), u.float()
    alpha, beta, eps = state[:, :, 0].float().unbind(1)
    wkvs = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t].float(), v[:, t].float()
        ukt = u + kt
        tau = torch.maximum(ukt, eps)
        e1a, e2a = torch.exp(eps - tau), torch.exp(ukt - tau)
        wkvs.append((e1a * alpha + e2a * vt) / (e1a * beta + e2a))
        w_eps = w + eps
        eps = torch.maximum(w_eps, kt)
        e1b, e2b = torch.exp(w_eps - eps), torch.exp(kt - eps)
        alpha, beta = e1b * alpha + e2b * vt, e1b * beta + e2b
    wkv = torch.stack(wkvs, dim=1).to(k.dtype)
    return wkv, torch.stack([alpha, beta, eps], dim=1).unsqueeze(2).to(k.dtype)


def check_rwkv4(w, u, k, v, state):
    B, T, C = k.shape
    assert w.shape == u.shape == (C,) and v.shape == k.shape and state.shape == (B, 3, 1, C)
    # the kernel writes the state in k's dtype: float32 k keeps probe's float32 state
    assert k.dtype == v.dtype == state.dtype == u.dtype == torch.float32
    assert all(t.is_contiguous() for t in (w, u, k, v, state))


KERNEL = {"rwkv7": "chunk_rwkv7", "rwkv": "fused_recurrent_rwkv4"}
STATE_HOOK = {"rwkv7": "hook_state", "rwkv": "hook_state_num"}


def _swap(kind):
    if kind == "rwkv7":
        return Recorder(chunk_rwkv7_reference, check_chunk_rwkv7)
    return Recorder(fused_recurrent_rwkv4_reference, check_rwkv4)


def _run_swapped(kind, recorder, fn):
    with ExitStack() as stack:
        stack.enter_context(swapped_kernel(KERNEL[kind], recorder))
        return fn()


def _model(kind, dtype=torch.float32):
    return make_model(kind).to(dtype)


TOKENS = tokens(T=40)
KINDS = ["rwkv7", "rwkv"]


# -- parity with the PyTorch path ---------------------------------------------------------------------
@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_fused_forward_equals_the_pytorch_path(kind):
    """Float32: logits and every layer's final state through the kernel mapping equal the PyTorch path's
    (max |diff| over 4 seeds: logits 2.5e-6 (rwkv7), 8.3e-7 (rwkv); states 1.1e-6 (rwkv7), 1.1e-5 of
    magnitudes up to 25 (rwkv's den: the kernel's stepwise stabiliser rounds apart from probe's max-scan
    by up to 7e-6)); the kernel ran once per layer."""
    model = _model(kind)
    calls = _swap(kind)
    with torch.no_grad():
        ref, ref_states = model(TOKENS, return_states=True)
        out, states = _run_swapped(kind, calls, lambda: model(TOKENS, return_states=True))
    assert calls.calls == 2
    assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()
    for mine, theirs in zip(states.layers, ref_states.layers):
        assert mine["mixer"].keys() == theirs["mixer"].keys()
        for name, value in theirs["mixer"].items():
            assert mine["mixer"][name].dtype == value.dtype
            torch.testing.assert_close(mine["mixer"][name], value, rtol=1e-5, atol=3e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_fused_forward_in_bfloat16(kind):
    """A bfloat16 model hands the kernels the dtypes they take (checked by the references) and keeps its
    states float32. RWKV-4's kernel runs on float32 ``k, v`` as the PyTorch path does: its logits stay
    within bfloat16 rounding of that path's (max |diff| / max |logit| measured 0 over 4 seeds). RWKV-7's
    kernel takes ``k, kk, kk a`` rounded to bfloat16 (the PyTorch path keeps them float32; the removal
    ``kk (kk a)^T`` amplifies that rounding, 3.4e-2 of max |logit| apart at worst over 6 seeds), so both
    paths are compared through their distance to the float64 model: the fused one is at most twice as
    far (measured at most 1.15x over 6 seeds)."""
    model = _model(kind, torch.bfloat16)
    calls = _swap(kind)
    with torch.no_grad():
        ref, ref_states = model(TOKENS, return_states=True)
        out, states = _run_swapped(kind, calls, lambda: model(TOKENS, return_states=True))
        truth = _model(kind, torch.float64)(TOKENS).float()
    assert calls.calls == 2
    out, ref = out.float(), ref.float()
    if kind == "rwkv7":
        error = lambda y: (y - truth).abs().max() / truth.abs().max()  # noqa: E731
        assert error(out) <= 2 * error(ref) + 1e-2, (error(out), error(ref))
    else:
        assert (out - ref).abs().max() / ref.abs().max() < 3e-2, (out - ref).abs().max() / ref.abs().max()
    for mine, theirs in zip(states.layers, ref_states.layers):
        assert {n: t.dtype for n, t in mine["mixer"].items()} == {n: t.dtype for n, t in theirs["mixer"].items()}


@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_a_carried_state_continues_through_the_kernel(kind):
    """The second half of a sequence from the first half's states equals the whole forward's, the
    kernel running in both layers."""
    model = _model(kind)
    calls = _swap(kind)
    with torch.no_grad():
        _, st = model(TOKENS[:, :20], return_states=True)
        out = _run_swapped(kind, calls, lambda: model(TOKENS[:, 20:], states=st))
        whole = model(TOKENS)
    assert calls.calls == 2
    torch.testing.assert_close(out, whole[:, 20:], rtol=1e-5, atol=1e-5)


# -- what takes the PyTorch path ----------------------------------------------------------------------
@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_state_hooks_and_edits_take_the_pytorch_path(kind, state_pieces):
    """A state hook on layer 0 wants every state: its recurrence runs in PyTorch (layer 1 keeps the
    kernel), and the cache and an edit's effect equal those with no kernel swapped in; states at a few
    positions run the kernel between them."""
    model = _model(kind)
    calls = _swap(kind)
    name = f"blocks.0.mixer.{STATE_HOOK[kind]}"

    def edit(value, hook):
        value[:, 10] = 0.0

    with torch.no_grad():
        _, cache = _run_swapped(kind, calls, lambda: model.run_with_cache(TOKENS, names_filter=name))
        edited = _run_swapped(kind, calls, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)]))
        _, ref_cache = model.run_with_cache(TOKENS, names_filter=name)
        ref_edited = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
        assert calls.calls == 2 + 2  # layer 1 in each run; layer 0's rerun over [0, 10) and (10, 40)
        _, some = _run_swapped(kind, calls, lambda: model.run_with_cache(TOKENS, names_filter=name,
                                                                         state_positions=[3, 20]))
    # layer 0 over [0, 3], (3, 20] and (20, 40) through the kernel, then layer 1
    assert calls.calls == 4 + 4
    torch.testing.assert_close(cache[name], ref_cache[name])
    # pieces through the kernel: within 0.53 of this bound over 3 seeds (rwkv's state_num, up to 9)
    torch.testing.assert_close(some[name], ref_cache[name][:, [3, 20]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(edited, ref_edited)
    assert not torch.allclose(edited, model(TOKENS))  # the edit reached the output


@pytest.mark.parametrize("value", [float("-inf"), -6.0, 0.25])
def test_log_decays_outside_the_kernels_range_take_the_pytorch_path(value):
    """RWKV-7: a log-decay edited outside [-5, 0] (a decay of 0, below e^-5, above 1) runs layer 0's
    recurrence in PyTorch once edited; the output is the PyTorch path's."""
    model = _model("rwkv7")
    calls = _swap("rwkv7")
    name = "blocks.0.mixer.hook_log_decay"

    def edit(log_w, hook):
        log_w[:, 7] = value

    with torch.no_grad():
        out = _run_swapped("rwkv7", calls, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)]))
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
    assert calls.calls >= 2  # layer 0 before the edit (its check: no edited decay reached the kernel), layer 1
    assert not torch.allclose(ref, model(TOKENS))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # the edit took effect


def test_the_kernels_log_decay_range():
    assert takes_log_decays(torch.tensor([-5.0, -0.6, 0.0]))
    for bad in (float("-inf"), -5.01, 1e-3, float("nan")):
        assert not takes_log_decays(torch.tensor([-0.3, bad]))


def test_an_edited_rwkv4_decay_takes_the_pytorch_path():
    """RWKV-4's kernel takes one decay per channel: a decay edited at one position runs layer 0's WKV in
    PyTorch once edited (layer 1 keeps the kernel), and the output is the PyTorch path's."""
    model = _model("rwkv")
    calls = _swap("rwkv")
    name = "blocks.0.mixer.hook_decay"

    def edit(decay, hook):
        decay[:, 7] = 0.0

    with torch.no_grad():
        out = _run_swapped("rwkv", calls, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)]))
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
    assert calls.calls >= 2  # layer 0 before the edit (reading the decay needs no state), layer 1
    assert not torch.allclose(ref, model(TOKENS))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # the kernel would have dropped the edit


@pytest.mark.parametrize("kind", KINDS)
def test_a_float64_model_runs_the_pytorch_path(kind):
    """The kernels compute in float32: a float64 model keeps its precision in the PyTorch form."""
    model = _model(kind, torch.float64)
    calls = _swap(kind)
    with torch.no_grad():
        out = _run_swapped(kind, calls, lambda: model(TOKENS))
        ref = model(TOKENS)
    assert calls.calls == 0
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_keys_wider_than_the_kernel_takes_run_the_pytorch_path(monkeypatch):
    """fla's chunk kernels take key heads up to 256 wide: a wider one runs the PyTorch form (here with the
    limit lowered below the test model's head width 8)."""
    import probe.mixers.rwkv7 as rwkv7

    assert MAX_K == 256
    monkeypatch.setattr(rwkv7, "MAX_K", 4)
    model = _model("rwkv7")
    calls = _swap("rwkv7")
    with torch.no_grad():
        out = _run_swapped("rwkv7", calls, lambda: model(TOKENS))
        ref = model(TOKENS)
    assert calls.calls == 0
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


# -- edits of the recurrence's inputs reach the kernel ------------------------------------------------
@pytest.mark.numerical
@pytest.mark.parametrize("kind, hook, value", [("rwkv7", "hook_k", 1.5), ("rwkv7", "hook_log_decay", -2.0),
                                               ("rwkv7", "hook_iclr", 0.9), ("rwkv", "hook_k", 3.0),
                                               ("rwkv", "hook_v", -2.0)])
def test_an_edited_recurrence_input_runs_through_the_kernel(kind, hook, value):
    """An edit of a recurrence input (in the kernel's range) is recomputed through the kernel: layer 0's
    kernel receives the edited input, and the logits equal the PyTorch path's with the same edit."""
    model = _model(kind)
    calls = _swap(kind)
    name = f"blocks.0.mixer.{hook}"
    seen = []
    check = calls.check
    calls.check = lambda *a, **kw: (seen.append(a), check(*a, **kw))

    def edit(x, hook):
        x[:, 7] = value

    with torch.no_grad():
        out = _run_swapped(kind, calls, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)]))
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
    assert calls.calls >= 3  # layer 0 before and after the edit, layer 1
    edited = seen[-2]  # layer 0's last call, the edited one (layer 1 runs after it)
    position = {("rwkv7", "hook_log_decay"): edited[1], ("rwkv", "hook_k"): edited[2],
                ("rwkv", "hook_v"): edited[3]}.get((kind, hook))
    if position is not None:
        assert bool((position[:, 7] == value).all())
    assert not torch.allclose(ref, model(TOKENS))
    assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()


# -- the real kernels ------------------------------------------------------------------------------------
@pytest.mark.numerical
@pytest.mark.parametrize("kind", KINDS)
def test_library_kernels_on_cuda_equal_the_pytorch_path(kind):
    """The GPU check: with flash-linear-attention on CUDA, the fused forward's float32 logits against the
    PyTorch forward's. Needs a CUDA device and the probe-interp[cuda] extra."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (scripts/gpu_check.sh runs it on a GPU)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fused_kernel(KERNEL[kind], torch.zeros(1, device="cuda")) is None:
            pytest.skip(f"{kind}'s kernel library is not installed (pip install 'probe-interp[cuda]')")
    model = make_model(kind, device="cuda")
    toks = TOKENS.cuda()
    with torch.no_grad():
        out = model(toks)
        with fused_disabled():
            ref = model(toks)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-3, (out - ref).abs().max()
