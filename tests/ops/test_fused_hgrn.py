"""RG-LRU's and QRNN's fused forward (probe.ops.fused.hgrn): the call mapping run on the CPU with fla's
``chunk_hgrn`` swapped for its ``naive_recurrent_hgrn`` (which has the same signature), equal to the
PyTorch path in float32 and bfloat16, in logits, carried states and per-position states; a carried state
continuing through the kernel; state edits, negative decays and float64 taking the PyTorch scan; decays
of 0 (an RG-LRU reset, an edited forget gate) entering as log 0 = -inf with finite gradients."""
import pytest
import torch

from conftest import make_model, tokens
from fla_reference import fla_naive
from probe.ops.fused import swapped_kernel
from probe.ops.fused.hgrn import TINY, log_decay
from test_fused_dispatch import Recorder


def chunk_hgrn_reference(x, g, initial_state=None, output_final_state=False):
    """fla's ``chunk_hgrn`` computed by its ``naive_recurrent_hgrn`` (``h_t = exp(g_t) h_{t-1} + x_t``)."""
    return fla_naive("ops/hgrn/naive.py").naive_recurrent_hgrn(x, g, initial_state, output_final_state)


def check_chunk_hgrn(x, g, initial_state=None, output_final_state=False):
    """The layout and dtypes fla's kernel reads: ``x, g [B, T, D]`` contiguous, ``g`` and the state float32."""
    assert x.dim() == 3 and g.shape == x.shape and all(t.is_contiguous() for t in (x, g))
    assert x.dtype in (torch.float32, torch.bfloat16, torch.float16) and g.dtype == torch.float32
    assert initial_state is None or (initial_state.dtype == torch.float32 and initial_state.is_contiguous()
                                     and initial_state.shape == (x.shape[0], x.shape[2]))
    assert not torch.isnan(g).any() and not (g == float("inf")).any()  # a NaN or +inf decay poisons the chunk sums


def recorded():
    return Recorder(chunk_hgrn_reference, check_chunk_hgrn)


#: (arch, mixer options): RG-LRU, QRNN with a conv window of 3 (conftest's) and of 1 (a plain linear map)
MODELS = {"rglru": ("rglru", None), "qrnn": ("qrnn", None), "qrnn_w1": ("qrnn", {"qrnn": {"window": 1}})}
TOKENS = tokens(2, 40)


def _model(key, dtype=torch.float32):
    arch, options = MODELS[key]
    model = make_model(arch) if options is None else make_model(arch, mixer_options=options)
    return model.to(dtype)


def _states(states):
    return [layer["mixer"] for layer in states.layers]


@pytest.mark.numerical
@pytest.mark.parametrize("key", MODELS)
def test_fused_forward_equals_the_pytorch_path(key, state_pieces):
    """Float32: logits, every layer's carried state and the cached per-position states (which the kernel
    returns; all of them, or those at two asked positions) equal the PyTorch path's; the kernel ran once
    per layer per forward (measured max |diff| over 4 seeds and the three models: logits 9.5e-7,
    carried states 3.9e-7)."""
    model = _model(key)
    kernel = recorded()
    states_only = lambda n: n.endswith("hook_state")  # noqa: E731
    with torch.no_grad():
        ref, ref_states = model(TOKENS, return_states=True)
        _, ref_cache = model.run_with_cache(TOKENS, names_filter=states_only)
        with swapped_kernel("chunk_hgrn", kernel):
            out, states = model(TOKENS, return_states=True)
            _, cache = model.run_with_cache(TOKENS, names_filter=states_only)
            assert kernel.calls == 4
            _, some = model.run_with_cache(TOKENS, names_filter=states_only, state_positions=[3, 31])
    assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()
    for mine, theirs in zip(_states(states), _states(ref_states)):
        for name, value in theirs.items():
            torch.testing.assert_close(mine[name], value, rtol=1e-5, atol=1e-5)
    assert set(cache) == set(ref_cache) == {"blocks.0.mixer.hook_state", "blocks.1.mixer.hook_state"}
    for name in ref_cache:
        torch.testing.assert_close(cache[name], ref_cache[name], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(some[name], ref_cache[name][:, [3, 31]], rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("key", MODELS)
def test_fused_forward_in_bfloat16(key):
    """A bfloat16 model hands the kernel float32 increments, decays and state (the states it keeps,
    WIDE_STATES; checked by the reference) and stays within bfloat16 rounding of the PyTorch path
    (measured over 4 seeds and the three models: logits identical, carried float32 states within
    1.2e-7; the bound allows a state difference to flip one bfloat16 rounding)."""
    model = _model(key, torch.bfloat16)
    kernel = recorded()
    with torch.no_grad():
        ref, ref_states = model(TOKENS, return_states=True)
        with swapped_kernel("chunk_hgrn", kernel):
            out, states = model(TOKENS, return_states=True)
    assert kernel.calls == 2
    assert out.dtype == torch.bfloat16
    assert ((out - ref).float().abs().max() / ref.float().abs().max()) < 1e-2
    for mine, theirs in zip(_states(states), _states(ref_states)):
        assert mine["state"].dtype == torch.float32
        torch.testing.assert_close(mine["state"], theirs["state"], rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("key", ["rglru", "qrnn"])
def test_a_carried_state_continues_through_the_kernel(key):
    """The second segment starts from the first's state (RG-LRU: started, so no reset at its first
    token) and equals the whole forward's second half."""
    model = _model(key)
    kernel = recorded()
    with torch.no_grad():
        _, first = model(TOKENS[:, :17], return_states=True)
        with swapped_kernel("chunk_hgrn", kernel):
            second = model(TOKENS[:, 17:], states=first)
        whole = model(TOKENS)
    assert kernel.calls == 2
    torch.testing.assert_close(second, whole[:, 17:], rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("key", ["rglru", "qrnn"])
def test_an_edited_state_takes_the_pytorch_scan(key, state_pieces):
    """An edit of layer 0's state reruns that layer through the kernel before and after the edited
    position, which runs alone in PyTorch with the state forced (probe.mixers.state_positions:
    the kernel has no way to overwrite a state); the result equals the unswapped model's and differs
    from no edit. A forcing handed to compute itself never reaches the kernel."""
    model = _model(key)
    kernel = recorded()
    name = "blocks.0.mixer.hook_state"

    def edit(value, hook):
        return value.index_fill(1, torch.tensor([10]), 0.0)

    with torch.no_grad():
        edited = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
        with swapped_kernel("chunk_hgrn", kernel):
            out = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
    assert kernel.calls == 4  # layer 0: its reading pass, then [0, 10) and (10, 40) around the forced step; layer 1
    assert not torch.allclose(edited, model(TOKENS))
    torch.testing.assert_close(out, edited, rtol=1e-5, atol=1e-5)

    mixer = model.blocks[0].mixer
    x = torch.randn(2, 12, 32)
    state = mixer.initial_state(2, x.device, x.dtype)
    mask = torch.zeros(2, 12, mixer.state_shapes()["state"][0], dtype=torch.bool)
    mask[:, 5] = True
    forcing = {"state": (mask, torch.full(mask.shape, 3.0))}
    kernel = recorded()
    with torch.no_grad():
        with swapped_kernel("chunk_hgrn", kernel):
            forced = mixer.compute(x, state, forcing, set())
        ref = mixer.compute(x, state, forcing, set())
    assert kernel.calls == 0
    assert bool((forced.values["state"][:, 5] == 3.0).all())
    torch.testing.assert_close(forced.y, ref.y, rtol=0, atol=0)


#: per mixer: the decay hook of layer 0 and edits at position 10 the kernel takes (0: log 0 = -inf; above 1)
DECAY_HOOK = {"rglru": "decay", "qrnn": "forget"}


@pytest.mark.numerical
@pytest.mark.parametrize("key", ["rglru", "qrnn"])
@pytest.mark.parametrize("value", [0.0, 1.2])
def test_an_edited_decay_propagates_through_the_kernel(key, value):
    """An edited decay (RG-LRU's a, QRNN's forget gate) of 0 or 1.2 at position 10 runs through the
    kernel (g = -inf or log 1.2), changes the later outputs and equals the PyTorch path's result."""
    model = _model(key)
    kernel = recorded()
    name = f"blocks.0.mixer.hook_{DECAY_HOOK[key]}"

    def edit(v, hook):
        return v.index_fill(1, torch.tensor([10]), value)

    with torch.no_grad():
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
        with swapped_kernel("chunk_hgrn", kernel):
            out = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
        plain = model(TOKENS)
    assert kernel.calls == 3  # layer 0 twice (the pass that read the decay, the edited pass), layer 1 once
    assert torch.equal(ref[:, :10], plain[:, :10]) and not torch.allclose(ref[:, 10:], plain[:, 10:])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", ["rglru", "qrnn"])
def test_a_negative_decay_takes_the_pytorch_scan(key):
    """A decay edited below 0 has no logarithm: layer 0's edited pass runs the PyTorch scan, and the
    result equals the unswapped model's."""
    model = _model(key)
    kernel = recorded()
    name = f"blocks.0.mixer.hook_{DECAY_HOOK[key]}"

    def edit(v, hook):
        return v.index_fill(1, torch.tensor([10]), -0.5)

    with torch.no_grad():
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
        with swapped_kernel("chunk_hgrn", kernel):
            out = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
    assert kernel.calls == 2  # layer 0's reading pass and layer 1
    assert not torch.allclose(ref, model(TOKENS))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_an_edited_reset_flag_propagates_through_the_kernel(state_pieces):
    """RG-LRU: writing 0 to ``hook_state_started`` at position 10 resets the recurrence at 11
    (decay 0, g = -inf in the kernel), as on the PyTorch path."""
    model = _model("rglru")
    kernel = recorded()
    name = "blocks.0.mixer.hook_state_started"

    def edit(v, hook):
        return v.index_fill(1, torch.tensor([10]), 0.0)

    with torch.no_grad():
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
        with swapped_kernel("chunk_hgrn", kernel):
            out = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
    assert kernel.calls == 5  # layer 0: the first pass, then [0, 10), 10 alone (the flag forced), (10, 40); layer 1
    assert not torch.allclose(ref[:, 11:], model(TOKENS)[:, 11:])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("key", ["rglru", "qrnn"])
def test_gradients_through_the_kernel_equal_the_pytorch_path(key):
    """Parameter gradients through the kernel (RG-LRU's first token is a reset, decay 0; QRNN with a
    forget gate edited to 0) are finite and equal the PyTorch path's (measured: within 9e-7 of each
    parameter's largest gradient)."""
    model = _model(key)
    name = f"blocks.0.mixer.hook_{DECAY_HOOK[key]}"

    def edit(v, hook):
        return v.index_fill(1, torch.tensor([10]), 0.0)

    def grads():
        model.zero_grad()
        model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)]).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = grads()
    kernel = recorded()
    with swapped_kernel("chunk_hgrn", kernel):
        fused = grads()
    assert kernel.calls == 3
    assert set(fused) == set(ref)
    for n in ref:
        assert torch.isfinite(fused[n]).all(), n
        torch.testing.assert_close(fused[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_float64_runs_the_pytorch_scan():
    """The kernel computes in float32: a float64 model keeps its own precision."""
    model = _model("qrnn", torch.float64)
    kernel = recorded()
    with torch.no_grad(), swapped_kernel("chunk_hgrn", kernel):
        out = model(TOKENS)
    assert kernel.calls == 0
    torch.testing.assert_close(out, model(TOKENS), rtol=0, atol=0)


def test_log_decay_takes_zero_and_subnormal_decays_to_minus_infinity_with_finite_gradients():
    a = torch.tensor([0.0, 1e-40, TINY, 0.5, 1.0, 1.5], requires_grad=True)
    g = log_decay(a)
    expected = torch.tensor([float("-inf"), float("-inf"), torch.tensor(TINY).log().item(), -0.6931472, 0.0, 0.4054651])
    torch.testing.assert_close(g, expected)
    g[2:].sum().backward()
    torch.testing.assert_close(a.grad, torch.tensor([0.0, 0.0, 1 / TINY, 2.0, 1.0, 1 / 1.5]))
    a.grad = None
    (log_decay(a).exp() * torch.arange(6.0)).sum().backward()  # exp(-inf) = 0: no 0 * inf
    assert torch.isfinite(a.grad).all()


@pytest.mark.numerical
@pytest.mark.parametrize("key", MODELS)
def test_library_kernel_on_cuda_equals_the_pytorch_path(key):
    """The GPU check: with fla installed on CUDA, float32 logits and carried states of the fused forward
    against the PyTorch forward (a fresh start, so RG-LRU's first decay is 0). Needs a CUDA device and
    the probe-interp[cuda] extra. The bounds are not measured yet (no GPU run): 1e-4 leaves room for the
    kernel's approximate exp (``__expf``, a few ulps per decay)."""
    import warnings

    from probe.ops.fused import fused_disabled, fused_kernel

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (scripts/gpu_check.sh runs it on a GPU)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fused_kernel("chunk_hgrn", torch.zeros(1, device="cuda")) is None:
            pytest.skip("flash-linear-attention is not installed (pip install 'probe-interp[cuda]')")
    model = _model(key).cuda()
    toks = TOKENS.cuda()
    with torch.no_grad():
        out, states = model(toks, return_states=True)
        with fused_disabled():
            ref, ref_states = model(toks, return_states=True)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-4, (out - ref).abs().max()
    for mine, theirs in zip(_states(states), _states(ref_states)):
        torch.testing.assert_close(mine["state"], theirs["state"], rtol=1e-4, atol=1e-4)
