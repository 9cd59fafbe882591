"""sLSTM: the sequential definition, the xlstm package's sLSTM layer, and stability of the stabiliser."""
import pytest
import torch
import torch.nn.functional as F

import probe
from conftest import randomise


def _mixer(seed=0, conv=4):
    torch.manual_seed(seed)
    model = randomise(probe.HookedLM(probe.ModelConfig(d_model=32, n_heads=4, layout=["slstm"], d_mlp=0,
                                                       mixer_options={"slstm": {"conv": conv}})), 0.2)
    return model, model.blocks[0].mixer


def reference(mx, x):
    """The paper's equations with the true (unstabilised) c and n, float64, from the empty state."""
    x = x.double()
    b, T, d = x.shape
    H, dh = mx.n_heads, mx.d_head
    if mx.k > 1:
        padded = F.pad(x, (0, 0, mx.k - 1, 0))
        u = sum(padded[:, j:j + T] * mx.W_conv[:, j].double() for j in range(mx.k)) + mx.b_conv.double()
        u = F.silu(u)
    else:
        u = x
    heads = lambda t, W: torch.einsum("bhi,hoi->bho", t.view(b, H, dh), W.double()).reshape(b, d)
    c, n, h = (x.new_zeros(b, d) for _ in range(3))
    ys = []
    for t in range(T):
        pre = [heads(u[:, t] if g < 2 else x[:, t], mx.W_in[g]) + heads(h, mx.R[g]) + mx.bias[g].double()
               for g in range(4)]
        i, f = torch.exp(pre[0]), torch.sigmoid(pre[1])
        z, o = torch.tanh(pre[2]), torch.sigmoid(pre[3])
        c, n = f * c + i * z, f * n + i
        h = o * c / n
        ys.append(h)
    y = F.layer_norm(torch.stack(ys, 1).view(b, T, H, dh), (dh,), eps=mx.options["norm_eps"])
    return y.reshape(b, T, d) * mx.norm_w.double()


@pytest.mark.parametrize("conv", [0, 4])
def test_mixer_equals_the_sequential_definition(conv):
    model, mx = _mixer(conv=conv)
    x = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(conv))
    with torch.no_grad():
        y, _ = mx(x)
    torch.testing.assert_close(y.double(), reference(mx, x), atol=1e-5, rtol=1e-4)


def test_cached_states_and_gates_are_consistent():
    model, mx = _mixer()
    _, cache = model.run_with_cache(torch.randint(0, 256, (2, 9)))
    get = lambda k: cache[f"blocks.0.mixer.hook_{k}"]
    c, n, m, h = get("state"), get("state_n"), get("state_m"), get("state_h")
    log_i, log_f, z, o = get("input"), get("forget"), get("candidate"), get("output")
    assert get("state_conv").shape == (2, 9, 3, 32)
    torch.testing.assert_close(h, o * c / n)
    assert torch.all(n >= 1 - 1e-5)  # the stabiliser tracks the largest term: n~ >= 1
    torch.testing.assert_close(m[:, 0], log_i[:, 0])  # empty memory: m starts at the first input gate
    for t in range(1, 9):
        mt = torch.maximum(log_f[:, t] + m[:, t - 1], log_i[:, t])
        f, i = torch.exp(log_f[:, t] + m[:, t - 1] - mt), torch.exp(log_i[:, t] - mt)
        torch.testing.assert_close(c[:, t], f * c[:, t - 1] + i * z[:, t], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(n[:, t], f * n[:, t - 1] + i, atol=1e-6, rtol=1e-5)


def test_huge_input_gates_do_not_overflow():
    """Adding a constant to every input-gate pre-activation scales c and n alike: the output is unchanged,
    even when exp(gate) would overflow."""
    model, mx = _mixer()
    x = torch.randn(1, 400, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, _ = mx(x)
        mx.bias[0] += 200.0  # exp(200) overflows float32 (max ~ exp(88))
        y_big, st = mx(x)
    assert torch.isfinite(y_big).all() and all(torch.isfinite(v).all() for v in st.values())
    torch.testing.assert_close(y_big, y, atol=1e-3, rtol=1e-3)  # float32 rounding of gates near 200


def test_equals_the_xlstm_package_slstm_layer():
    xl = pytest.importorskip("xlstm")
    from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig

    torch.manual_seed(0)
    layer = sLSTMLayer(sLSTMLayerConfig(embedding_dim=32, num_heads=4, conv1d_kernel_size=4, backend="vanilla",
                                        dtype="float32")).eval()
    randomise(layer, 0.3)
    model = probe.from_hf(_wrap_in_lm(xl, layer))
    mx = model.blocks[0].mixer
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        torch.testing.assert_close(mx(x)[0], layer(x), atol=1e-5, rtol=1e-4)


def _wrap_in_lm(xl, layer):
    """A one-block xlstm LM whose sLSTM layer is ``layer`` (so the converter maps its weights)."""
    from xlstm import sLSTMBlockConfig, sLSTMLayerConfig, xLSTMLMModel, xLSTMLMModelConfig

    cfg = xLSTMLMModelConfig(vocab_size=20, embedding_dim=32, num_blocks=1, context_length=32, slstm_at="all",
                             slstm_block=sLSTMBlockConfig(slstm=sLSTMLayerConfig(
                                 backend="vanilla", num_heads=4, conv1d_kernel_size=4, dtype="float32"),
                                 feedforward=None))
    lm = xLSTMLMModel(cfg).eval()
    lm.xlstm_block_stack.blocks[0].xlstm.load_state_dict(layer.state_dict())
    return lm
