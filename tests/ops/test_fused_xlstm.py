"""mLSTM's and sLSTM's fused forwards (probe.ops.fused.mlstm, probe.ops.fused.slstm) run on the CPU with the
xLSTM kernels swapped for the libraries' own PyTorch forms behind the same signatures: mlstm_kernels'
``mlstm_chunkwise__native_autograd`` behind the Triton ``mlstm_chunkwise__xl_chunk``, and xlstm's vanilla
``slstm_forward`` behind the CUDA cell's ``sLSTMCellFuncGenerator(...).apply``. Each reference checks the
layout and dtypes its kernel asserts. Logits and final states equal the PyTorch path in float32 and within
bfloat16 rounding; a carried state continues through the kernels; the mLSTM's state hooks, state edits
and edited forget gates take the PyTorch path, the sLSTM's hooks read the states its kernel returns;
states at a few positions run the kernels on the pieces between them; widths the Triton kernel does not
take, a failed sLSTM build and float64 run the PyTorch form."""
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import make_model, tokens
from mlstm_kernels.torch.chunkwise.native import mlstm_chunkwise__native_autograd
from probe.ops.fused import swapped_kernel
from probe.ops.fused.mlstm import NEUTRAL, forget_preactivation, padded_length, takes
from test_fused_dispatch import Recorder
from xlstm.blocks.slstm.src.vanilla import slstm_forward, slstm_pointwise_function_registry


# -- mlstm_kernels: the chunkwise kernel ---------------------------------------------------------------
def xl_chunk_reference(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False,
                       eps=1e-6, chunk_size=128, autocast_kernel_dtype=torch.float32, **kwargs):
    """``mlstm_chunkwise__xl_chunk`` computed by mlstm_kernels' ``mlstm_chunkwise__native_autograd`` in
    float32, returning what the Triton kernel returns: ``h`` in ``q``'s dtype, the states float32."""
    h, last = mlstm_chunkwise__native_autograd(q.float(), k.float(), v.float(), i, f, c_initial, n_initial, m_initial,
                                               return_last_states=True, eps=eps, chunk_size=chunk_size)
    return (h.to(q.dtype), last) if return_last_states else h.to(q.dtype)


def check_xl_chunk(q, k, v, i, f, c_initial=None, n_initial=None, m_initial=None, return_last_states=False,
                   eps=1e-6, chunk_size=128, autocast_kernel_dtype=torch.float32, **kwargs):
    """What the Triton kernel asserts and reads: heads-first layout, T of 16, 32, 64 or a multiple of the
    chunk (128), the widths it takes, gates and states float32, contiguous, no NaN or +inf gate."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    assert k.shape == q.shape and v.shape == (B, H, T, V) and i.shape == f.shape == (B, H, T)
    assert T % 16 == 0 and (T == chunk_size <= 64 or (chunk_size == 128 and T % 128 == 0))
    assert takes(K, V, q.dtype) and q.dtype == k.dtype == v.dtype and autocast_kernel_dtype == torch.float32
    assert i.dtype == f.dtype == torch.float32 and not torch.isnan(i).any()
    assert bool(torch.isfinite(f).all())  # its chunk sums of logsigmoid(f) turn an infinite f into NaN
    assert c_initial.shape == (B, H, K, V) and n_initial.shape == (B, H, K) and m_initial.shape == (B, H, 1)
    assert c_initial.dtype == n_initial.dtype == m_initial.dtype == torch.float32 and return_last_states
    assert all(t.is_contiguous() for t in (q, k, v, i, f, c_initial, n_initial, m_initial)) and not kwargs


# -- xlstm: the compiled sLSTM cell --------------------------------------------------------------------
def vanilla_apply(training, x, s0, R, b):
    """The CUDA function's ``apply`` by xlstm's vanilla ``slstm_forward``: its input, recurrent kernel and
    bias reordered from the CUDA layout (head, gate) to the vanilla one (gate, head), as xlstm's cell
    classes convert them."""
    T, B, _ = x.shape
    H, dh = R.shape[0], R.shape[1]
    x_vanilla = x.view(T, B, H, 4, dh).transpose(2, 3).reshape(T, B, -1)
    b_vanilla = b.view(H, 4, dh).transpose(0, 1).reshape(-1)
    return slstm_forward(x_vanilla, s0, R.transpose(1, 2), b_vanilla, slstm_pointwise_function_registry["slstm"])[0]


def check_slstm_apply(training, x, s0, R, b):
    """What ``sLSTMFunc.forward`` checks (the config's float32 everywhere, contiguous) and its shapes."""
    T, B, G = x.shape
    H, dh = R.shape[0], R.shape[1]
    assert isinstance(training, bool) and R.shape == (H, dh, 4 * dh) and G == 4 * H * dh
    assert s0.shape == (4, B, H * dh) and b.shape == (G,)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in (x, s0, R, b))


class SlstmCellReference:
    """``sLSTMCellFuncGenerator(training, config)`` returning a function whose ``apply`` is
    :func:`vanilla_apply`, recorded; the configs it was asked for are kept."""

    def __init__(self):
        self.apply = Recorder(vanilla_apply, check_slstm_apply)
        self.configs = []

    def __call__(self, training, config):
        self.configs.append(config)
        return self

    @property
    def calls(self):
        return self.apply.calls


# -- models --------------------------------------------------------------------------------------------
#: (arch, mixer options, kernel): mLSTM's large layer with K = 16, V = 32 (one head of d_model 32), its
#: paper layer with K = V = 32 (two heads of d_inner 64), sLSTM with four heads of 8
MODELS = {"mlstm": ("mlstm", {"heads": 1}, "mlstm_chunkwise"),
          "mlstm_paper": ("mlstm", {"layer": "paper", "heads": 2, "d_inner": 64}, "mlstm_chunkwise"),
          "slstm": ("slstm", {}, "slstm_cell")}
TOKENS = tokens(2, 40)


def _model(key, dtype=torch.float32, **options):
    arch, opts, _ = MODELS[key]
    return make_model(arch, mixer_options={arch: {**opts, **options}}).to(dtype)


def _reference(key):
    return SlstmCellReference() if key == "slstm" else Recorder(xl_chunk_reference, check_xl_chunk)


def _swapped(key, reference, fn):
    with swapped_kernel(MODELS[key][2], reference):
        return fn()


def _mixer_states(states):
    return [layer["mixer"] for layer in states.layers]


@pytest.mark.numerical
@pytest.mark.parametrize("T", [40, 150])
@pytest.mark.parametrize("key", MODELS)
def test_fused_forward_equals_the_pytorch_path(key, T):
    """Float32: logits and every layer's final state (the mLSTM's after the neutral padding to 64 and 256
    positions) equal the PyTorch path's; the kernel ran once per layer (measured over 4 seeds and both
    lengths: max |diff| / max |logit| 2.9e-6, states 7.4e-7 relative to their largest entry)."""
    model = _model(key)
    reference = _reference(key)
    toks = tokens(2, T)
    with torch.no_grad():
        ref, ref_states = model(toks, return_states=True)
        out, states = _swapped(key, reference, lambda: model(toks, return_states=True))
    assert reference.calls == 2
    assert (out - ref).abs().max() / ref.abs().max() < 2e-5, (out - ref).abs().max() / ref.abs().max()
    for mine, theirs in zip(_mixer_states(states), _mixer_states(ref_states)):
        assert mine.keys() == theirs.keys()
        for name, value in theirs.items():
            assert mine[name].dtype == value.dtype
            torch.testing.assert_close(mine[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("key", MODELS)
def test_fused_forward_in_bfloat16(key):
    """A bfloat16 model passes the kernels the dtypes they take (checked by the references), keeps float32
    cell states, and stays within bfloat16 rounding of the PyTorch path: max |diff| / max |logit| measured
    at most 1.8e-3 for the mLSTMs and 7.1e-3 for the sLSTM (its kernel keeps h in float32 between steps,
    the PyTorch loop rounds it to bfloat16; both are as far from float64) over 4 seeds."""
    model = _model(key, torch.bfloat16)
    reference = _reference(key)
    with torch.no_grad():
        ref, ref_states = model(TOKENS, return_states=True)
        out, states = _swapped(key, reference, lambda: model(TOKENS, return_states=True))
    assert reference.calls == 2
    ref, out = ref.float(), out.float()
    assert (out - ref).abs().max() / ref.abs().max() < 3e-2, (out - ref).abs().max() / ref.abs().max()
    for mine, theirs in zip(_mixer_states(states), _mixer_states(ref_states)):
        assert {n: t.dtype for n, t in mine.items()} == {n: t.dtype for n, t in theirs.items()}


@pytest.mark.numerical
@pytest.mark.parametrize("key", MODELS)
def test_a_carried_state_continues_through_the_kernel(key):
    """The second of two segments starts from the first's state inside the kernel and equals the whole
    forward's second half."""
    model = _model(key)
    reference = _reference(key)
    with torch.no_grad():
        _, st = model(TOKENS[:, :20], return_states=True)
        out = _swapped(key, reference, lambda: model(TOKENS[:, 20:], states=st))
        whole = model(TOKENS)
    assert reference.calls == 2
    torch.testing.assert_close(out, whole[:, 20:], rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("key", MODELS)
def test_gradients_through_the_call_mapping(key):
    """The mapping is differentiable: parameter gradients through the references equal the PyTorch path's."""
    model = _model(key)
    reference = _reference(key)

    def grads(run):
        model.zero_grad()
        run().logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = grads(lambda: model(TOKENS))
    out = _swapped(key, reference, lambda: grads(lambda: model(TOKENS)))
    assert reference.calls == 2 and out.keys() == ref.keys()
    for name, g in ref.items():
        torch.testing.assert_close(out[name], g, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("key", ["mlstm", "mlstm_paper"])
def test_mlstm_state_hooks_and_edits_take_the_pytorch_path(key, state_pieces):
    """A state hook on layer 0 wants every state: that layer runs the PyTorch form for it (layer 1 keeps
    the kernel), an edit's rerun runs the kernel around the edited position, and the cache and the
    edit's effect equal those without any kernel swapped in."""
    model = _model(key)
    reference = _reference(key)
    name = "blocks.0.mixer.hook_state"

    def edit(value, hook):
        value[:, 10] = 0.0

    with torch.no_grad():
        _, cache = _swapped(key, reference, lambda: model.run_with_cache(TOKENS, names_filter=name))
        edited = _swapped(key, reference, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)]))
        _, ref_cache = model.run_with_cache(TOKENS, names_filter=name)
        ref_edited = model.run_with_hooks(TOKENS, fwd_hooks=[(name, edit)])
    assert reference.calls == 2 + 2  # layer 1 in each run; layer 0's rerun before and after the edit
    torch.testing.assert_close(cache[name], ref_cache[name])
    torch.testing.assert_close(edited, ref_edited)
    assert not torch.allclose(edited, model(TOKENS))  # the edit reached the output


@pytest.mark.numerical
def test_slstm_hooks_read_the_kernels_states_and_edits_take_the_pytorch_loop():
    """xlstm's cell returns every state: a cache of every gate and state of both layers comes from the
    kernel (the gates recomputed from h_{t-1} at all positions at once) and equals the PyTorch loop's
    (measured over 4 seeds: max |diff| 3.0e-7 of each quantity's largest entry, at most 7 % of the
    tolerance); an edit of a state runs the edited layer's loop and its effect equals the unswapped
    model's."""
    model = _model("slstm")
    reference = _reference("slstm")
    cell = ("input", "forget", "candidate", "output", "state_m", "state", "state_n", "state_h")
    names = [f"blocks.{layer}.mixer.hook_{q}" for layer in (0, 1) for q in cell]
    edited_name = "blocks.0.mixer.hook_state"

    def edit(value, hook):
        value[:, 10] = 0.0

    with torch.no_grad():
        out, cache = _swapped("slstm", reference, lambda: model.run_with_cache(TOKENS, names_filter=names))
        assert reference.calls == 2
        edited = _swapped("slstm", reference, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(edited_name, edit)]))
        ref, ref_cache = model.run_with_cache(TOKENS, names_filter=names)
        ref_edited = model.run_with_hooks(TOKENS, fwd_hooks=[(edited_name, edit)])
    assert sorted(cache.keys()) == sorted(names)
    for name in names:
        assert cache[name].dtype == ref_cache[name].dtype
        torch.testing.assert_close(cache[name], ref_cache[name], rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(edited, ref_edited, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited, model(TOKENS))  # the edit reached the output


@pytest.mark.numerical
@pytest.mark.parametrize("key", MODELS)
def test_states_at_a_few_positions_run_the_kernel_on_the_pieces(key, state_pieces):
    """``run_with_cache(state_positions=[3, 31])`` runs the forward in the pieces the positions cut, each
    through the kernel from the previous piece's state, and the states equal the full cache there."""
    model = _model(key)
    reference = _reference(key)
    names = [f"blocks.0.mixer.hook_{q}" for q in ("state", "state_n", "state_m")]
    with torch.no_grad():
        _, some = _swapped(key, reference, lambda: model.run_with_cache(TOKENS, names_filter=names,
                                                                       state_positions=[3, 31]))
        _, full = model.run_with_cache(TOKENS, names_filter=names)
    assert reference.calls == 4  # layer 0: the pieces [0, 4), [4, 32), [32, 40); layer 1: the whole
    for name in names:
        torch.testing.assert_close(some[name], full[name][:, [3, 31]], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("key", ["mlstm", "mlstm_paper"])
def test_an_edited_forget_gate_takes_the_pytorch_path(key):
    """An edited forget gate may be exactly 0 (log f = -inf), which no pre-activation gives: the edited
    layer runs the PyTorch form, and the output equals the unswapped model's."""
    model = _model(key)
    reference = _reference(key)
    name = "blocks.0.mixer.hook_forget"

    def forget_all(value, hook):
        value[:, 12] = float("-inf")

    with torch.no_grad():
        out = _swapped(key, reference, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, forget_all)]))
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, forget_all)])
    assert reference.calls >= 2  # layer 0 unedited, layer 1; the edited run of layer 0 is the PyTorch form
    assert torch.isfinite(out).all() and not torch.allclose(ref, model(TOKENS))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
def test_an_edited_input_gate_runs_through_the_kernel():
    """The kernel takes input gates of exactly 0 (log i = -inf): a zeroed position runs the edited layer
    through the kernel and equals the PyTorch path."""
    model = _model("mlstm")
    closed = []

    def check(q, k, v, i, f, **kwargs):
        check_xl_chunk(q, k, v, i, f, **kwargs)
        closed.append(bool((i[:, :, 5:9] == float("-inf")).all()))

    reference = Recorder(xl_chunk_reference, check)
    name = "blocks.0.mixer.hook_input"

    def close_input(value, hook):
        value[:, 5:9] = float("-inf")

    with torch.no_grad():
        out = _swapped("mlstm", reference, lambda: model.run_with_hooks(TOKENS, fwd_hooks=[(name, close_input)]))
        ref = model.run_with_hooks(TOKENS, fwd_hooks=[(name, close_input)])
    assert closed.count(True) == 1  # the edited layer 0, once
    assert not torch.allclose(ref, model(TOKENS))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.numerical
def test_a_hooked_conv_window_keeps_the_slstm_kernel():
    """sLSTM's conv window comes before the cell: reading it keeps the kernel in both layers."""
    model = _model("slstm")
    reference = _reference("slstm")
    name = "blocks.0.mixer.hook_state_conv"
    with torch.no_grad():
        out, cache = _swapped("slstm", reference, lambda: model.run_with_cache(TOKENS, names_filter=name))
        ref, ref_cache = model.run_with_cache(TOKENS, names_filter=name)
    assert reference.calls == 2
    torch.testing.assert_close(cache[name], ref_cache[name])
    assert (out - ref).abs().max() < 1e-5


def test_the_slstm_cell_is_built_once_per_width_in_float32():
    """One build per (d_model, heads), float32 whatever the model's dtype, reused by both layers and later
    forwards."""
    model = _model("slstm", torch.bfloat16)
    reference = _reference("slstm")
    with torch.no_grad():
        _swapped("slstm", reference, lambda: (model(TOKENS), model(TOKENS)))
    assert reference.calls == 4 and len(reference.configs) == 1
    config = reference.configs[0]
    assert (config.hidden_size, config.num_heads, config.function, config.backend) == (32, 4, "slstm", "cuda")
    assert config.dtype == config.dtype_r == config.dtype_s == config.dtype_b == "float32"


def test_a_failed_slstm_build_is_said_once_and_runs_the_pytorch_loop():
    def no_compiler(training, config):
        raise RuntimeError("Ninja is required to load C++ extensions")

    model = _model("slstm")
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="nvcc"):
            out = _swapped("slstm", no_compiler, lambda: model(TOKENS))
        ref = model(TOKENS)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("key, options, dtype", [("mlstm", {"heads": 4}, torch.float32),  # K = 4, V = 8
                                                 ("mlstm", {}, torch.float64),
                                                 ("slstm", {}, torch.float64)])
def test_what_the_kernels_do_not_take_runs_the_pytorch_path(key, options, dtype):
    model = _model(key, dtype, **options)
    reference = _reference(key)
    with torch.no_grad():
        out = _swapped(key, reference, lambda: model(TOKENS))
        ref = model(TOKENS)
    assert reference.calls == 0
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_the_kernel_lengths_and_widths():
    assert [padded_length(T) for T in (1, 16, 17, 40, 64, 65, 128, 129, 2048)] == [
        (16, 16), (16, 16), (32, 32), (64, 64), (64, 64), (128, 128), (128, 128), (256, 128), (2048, 128)]
    assert takes(16, 32, torch.bfloat16) and takes(64, 192, torch.float32) and takes(128, 128, torch.float16)
    assert not takes(8, 32, torch.float32) and not takes(48, 64, torch.float32) and not takes(64, 64, torch.float64)


@pytest.mark.numerical
def test_the_forget_preactivation_gives_back_log_f():
    """``logsigmoid(logit(f)) = log f`` across forget gates from 1e-13 to 1 - 1e-8 (relative error at most
    2e-6 in float32), and ``log f = 0`` (f rounded to 1) maps to the neutral pre-activation."""
    pre = torch.linspace(-30.0, 18.0, 2001)
    log_f = F.logsigmoid(pre)
    back = F.logsigmoid(forget_preactivation(log_f))
    assert ((back - log_f).abs() / log_f.abs()).max() < 2e-6
    assert forget_preactivation(torch.zeros(1)).item() == NEUTRAL and F.logsigmoid(torch.tensor(NEUTRAL)) == 0


# -- the libraries' kernels on a GPU (scripts/gpu_check.sh) ---------------------------------------------
class _Counted:
    """A library's ``sLSTMCellFuncGenerator`` whose functions' ``apply`` is recorded and checked."""

    def __init__(self, generator):
        self.generator, self.applies = generator, []

    def __call__(self, training, config):
        function = self.generator(training, config)
        self.applies.append(Recorder(function.apply, check_slstm_apply))
        return SimpleNamespace(apply=self.applies[-1])

    @property
    def calls(self):
        return sum(r.calls for r in self.applies)


@pytest.mark.numerical
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("key", MODELS)
def test_the_xlstm_kernels_on_cuda_equal_the_pytorch_path(key, dtype, monkeypatch):
    """The GPU check: with mlstm_kernels' Triton kernel and xlstm's compiled cell on CUDA, each checked by
    the assertions above, logits against the PyTorch forward. Bounds (not yet measured on a GPU): the
    float32 mLSTM kernel multiplies in TF32 (10-bit mantissa), hence 5e-3 of the largest logit; the sLSTM
    cell runs float32 with fast-math exp / tanh, 1e-4; bfloat16 3e-2 as on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (scripts/gpu_check.sh runs it on a GPU)")
    from probe.ops.fused import fused_disabled, fused_kernel, registry

    name = MODELS[key][2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = fused_kernel(name, torch.zeros(1, device="cuda"))
    if library is None:
        pytest.skip(f"{registry.KERNELS[name].package} is not installed with its GPU kernels")
    counted = _Counted(library) if key == "slstm" else Recorder(library, check_xl_chunk)
    monkeypatch.setitem(registry._loaded, name, counted)
    model = _model(key, dtype).cuda()
    toks = TOKENS.cuda()
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(toks).float()
        with fused_disabled():
            ref = model(toks).float()
    failed = [str(w.message) for w in caught if "did not build" in str(w.message)]
    if counted.calls == 0 and failed:
        pytest.skip(failed[0])
    assert counted.calls == 2
    bound = 3e-2 if dtype == torch.bfloat16 else (1e-4 if key == "slstm" else 5e-3)
    assert (out - ref).abs().max() / ref.abs().max() < bound, (out - ref).abs().max() / ref.abs().max()
