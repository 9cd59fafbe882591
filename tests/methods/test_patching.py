"""Activation and attribution patching, parametrised over every architecture.

Activation patching restores the clean answer exactly where the runs differ and does nothing
elsewhere; the whole state at the end of a prefix carries the answer; attribution patching is
the exact first-order expansion of activation patching (checked against central finite
differences of interpolated patches in float64) and equals it on a linear toy model.
"""
import pytest
import torch

import probe
from conftest import ARCHS, layouts, make_model, tokens
from probe.errors import InputError, ProbeError
from probe.methods import activation_patching, attribution_patching
from probe.methods.support.site_hooks import memory_hooks, site_hooks
from probe.mixers import MIXERS

T, D = 10, 3  # sequence length, the corrupted position


def _pair(arch, batch=2, T=T, d=D):
    clean = tokens(batch, T, seed=1)
    corrupted = clean.clone()
    d = T - 1 if arch == "ff" else d  # a model without sequence mixing only sees its own position
    corrupted[:, d] = (corrupted[:, d] + 11) % 256
    return clean, corrupted, d


ANSWER = dict(answer=[65, 66], contrast=[67, 68])


@pytest.mark.parametrize("arch", ARCHS)
def test_patching_restores_exactly_where_the_runs_differ(arch):
    model = make_model(arch)
    clean, corrupted, d = _pair(arch)
    L = model.cfg.n_layers
    res = activation_patching(model, clean, corrupted, **ANSWER,
                              sites=["resid_pre", f"blocks.{L - 1}.hook_resid_post"])
    assert res.scores.shape == (2, L, T)
    first = res.scores[0, 0]  # resid_pre of layer 0 is the embedding: the corrupted token itself
    if model.cfg.shared_layout is not None:  # ... but shared blocks (Zamba2) read the embedding too: patch it
        first = activation_patching(model, clean, corrupted, **ANSWER, sites=["hook_embed"]).scores[0, 0]
    torch.testing.assert_close(first[d], torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)
    others = torch.cat([first[:d], first[d + 1 :]])
    assert torch.equal(others, torch.zeros_like(others))  # identical activations: exactly no effect
    last = res.scores[1, L - 1]  # the final residual stream at the answer position is everything
    torch.testing.assert_close(last[T - 1], torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.isnan(res.scores[1, : L - 1]).all()  # a full hook name belongs to its own layer only
    frame = res.to_frame()
    assert len(frame) == 2 * L * T and {"site", "layer", "position", "score"} <= set(frame.columns)
    assert len(res.figure().data) == 2
    # the clean run patched into itself is the clean run everywhere
    same = activation_patching(model, clean, clean, **ANSWER, sites=["resid_pre"], normalize=False)
    assert torch.allclose(same.metric, torch.tensor(same.clean_metric, dtype=torch.float64))


RECURRENT = sorted(m for m, cls in MIXERS.items() if cls.recurrent)


@pytest.mark.parametrize("mixer", RECURRENT)
def test_full_state_at_prefix_end_transfers_the_answer(mixer):
    """A one-layer recurrent model: patching its whole memory (every hook_state*) after the last
    prefix token makes the corrupted run give the clean answer on the shared suffix."""
    # float64: the clean run may take a mixer's unhooked fast path (Mamba's fused scan) and the patched
    # run its hooked path; in float32 their different summation orders alone move the normalised score ~1e-4
    model = make_model(mixer, layout=[mixer]).double()
    P = 6
    clean = tokens(2, T, seed=4)
    corrupted = tokens(2, T, seed=5)
    corrupted[:, P:] = clean[:, P:]
    res = activation_patching(model, clean, corrupted, **ANSWER, sites=["state", "resid_pre"], positions=[P - 2, P - 1])
    torch.testing.assert_close(res.score("state", 0, P - 1), 1.0, atol=1e-4, rtol=0)
    assert abs(res.score("state", 0, P - 2) - 1.0) > 1e-3  # one token earlier the state misses the last one
    assert abs(res.score("resid_pre", 0, P - 1) - 1.0) > 1e-3  # one token's input is not the memory


@pytest.mark.parametrize("arch", ARCHS)
def test_attribution_is_the_exact_linearisation(arch):
    """d/d alpha of patching ``a_corr + alpha (a_clean - a_corr)`` at alpha = 0 (central finite
    differences, float64) equals attribution patching at every site, layer and position, state
    included: the state's gradient follows the recurrence through later positions."""
    model = make_model(arch).double()
    clean, corrupted, d = _pair(arch, T=8)
    kw = dict(**ANSWER, positions=[d - 1, d, 7] if d < 7 else [d - 2, 7])
    attr = attribution_patching(model, clean, corrupted, **kw)
    eps = 1e-5
    up = activation_patching(model, clean, corrupted, alpha=eps, **kw)
    down = activation_patching(model, clean, corrupted, alpha=-eps, **kw)
    fd = (up.scores - down.scores) / (2 * eps)
    finite = torch.isfinite(fd)
    assert torch.equal(finite, torch.isfinite(attr.scores))
    assert fd[finite].abs().max() > 1e-3
    torch.testing.assert_close(attr.scores[finite], fd[finite], atol=1e-5 * max(1.0, float(fd[finite].abs().max())),
                               rtol=1e-4)


def test_attribution_equals_patching_on_a_linear_toy():
    """One QRNN layer of window 1 (its state c_t enters c_{t+1} = f c_t + ..., and the output,
    linearly), no MLP, the final norm's scale frozen: the logit difference is linear in the state
    and in the mixer output, so the gradient estimate is exact."""
    torch.manual_seed(0)
    model = probe.HookedLM(probe.ModelConfig(d_model=16, layout=["qrnn"], mlp="none", n_heads=2,
                                             mixer_options={"qrnn": {"window": 1}})).double()
    clean, corrupted, d = _pair("qrnn", T=8)
    corrupted[:, d + 2] = (corrupted[:, d + 2] + 5) % 256  # a second difference: patches restore part of it
    frozen = [("ln_final.hook_scale", lambda s, hook: torch.full_like(s, 0.3))]
    with model.hooks(fwd_hooks=frozen):
        attr = attribution_patching(model, clean, corrupted, **ANSWER, sites=["state", "mixer_out"], compare=True)
    real = attr.reference
    partial = real.scores[(real.scores > 0.05) & (real.scores < 0.95)]
    assert partial.numel() >= 2
    torch.testing.assert_close(attr.scores, real.scores, atol=1e-9, rtol=1e-7)
    assert "ln_final.hook_scale" not in [n for n, hp in model.hook_dict.items() if hp.has_hooks()]


def test_attribution_correlates_with_real_patching():
    model = make_model("hybrid_qrnn_attn_ff")
    clean, corrupted, _ = _pair("hybrid_qrnn_attn_ff", T=12)
    attr = attribution_patching(model, clean, corrupted, **ANSWER, compare=True)
    table = attr.agreement().set_index("site")
    assert set(table.index) == {"resid_pre", "mixer_out", "mlp_out", "state"}
    assert (table.loc[["mixer_out", "mlp_out", "state"], "pearson"] > 0.8).all(), table
    assert attr.forward_passes < attr.reference.forward_passes
    assert len(attr.agreement_figure().data) == 4


def test_state_site_is_the_memory_of_each_layer():
    model = make_model("hybrid_qrnn_attn_ff")
    assert site_hooks(model, "state", 0) == ["blocks.0.mixer.hook_state", "blocks.0.mixer.hook_state_conv"] or \
        sorted(site_hooks(model, "state", 0)) == ["blocks.0.mixer.hook_state", "blocks.0.mixer.hook_state_conv"]
    assert site_hooks(model, "state", 2) == ["blocks.2.mixer.hook_k", "blocks.2.mixer.hook_v"]
    assert site_hooks(model, "state", 3) == [] and memory_hooks(model, 3) == []
    assert site_hooks(model, "forget", 1) == ["blocks.1.mixer.hook_forget"]


def test_bad_input_and_hook_hygiene():
    model = make_model("hybrid_lstm_attn")
    clean, corrupted, _ = _pair("hybrid_lstm_attn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="same shape"):
        activation_patching(model, clean, corrupted[:, :-1], **ANSWER)
    with pytest.raises(InputError, match="answer= and contrast="):
        activation_patching(model, clean, corrupted)
    with pytest.raises(InputError, match="same metric"):
        activation_patching(model, clean, clean, **ANSWER)
    with pytest.raises(InputError, match="Did you mean"):
        activation_patching(model, clean, corrupted, **ANSWER, sites=["resid_pree"])
    with pytest.raises(InputError, match="out of range"):
        activation_patching(model, clean, corrupted, **ANSWER, positions=[T + 3])
    with pytest.raises(InputError, match="not \\[batch, pos"):
        activation_patching(model, clean, corrupted, **ANSWER, sites=["pattern"])
    calls = []

    def failing(logits):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("metric failed")
        return logits[:, -1, 65] - logits[:, -1, 66]

    for method in (activation_patching, attribution_patching):
        calls.clear()
        with pytest.raises(RuntimeError, match="metric failed"):
            method(model, clean, corrupted, metric=failing)
        assert not any(hp.has_hooks() for hp in model.hook_dict.values())
    attribution_patching(model, clean, corrupted, **ANSWER)
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_custom_metric_and_per_sequence_answer_positions():
    model = make_model("qrnn")
    clean, corrupted, d = _pair("qrnn")
    pos = [6, 8]
    res = activation_patching(model, clean, corrupted, **ANSWER, answer_position=pos, sites=["resid_pre"], layers=[0])
    assert res.positions == list(range(9))  # up to the latest answer position

    def metric(logits):
        rows = torch.arange(2)
        at = logits[rows, torch.tensor(pos)]
        return at[rows, torch.tensor([65, 66])] - at[rows, torch.tensor([67, 68])]

    custom = activation_patching(model, clean, corrupted, metric=metric, sites=["resid_pre"], layers=[0],
                                 positions=res.positions)
    torch.testing.assert_close(custom.scores, res.scores)


@pytest.mark.parametrize("task", ["recall", "agreement"])
def test_task_pairs_differ_in_context_only(task):
    from probe.data.patching_pairs import task_pairs

    pairs = task_pairs(task, 12, seed=3)
    assert len(pairs) == 12
    for p in pairs:
        assert p.clean.shape == p.corrupted.shape and p.answer != p.contrast
        diff = (p.clean != p.corrupted).nonzero().flatten().tolist()
        last = p.length - 1
        assert diff and max(diff) < last and all(0 <= r <= last for r in p.roles.values())
        if task == "recall":
            assert diff == [p.roles["value"]] and int(p.corrupted[p.roles["value"]]) == p.contrast
            assert p.roles["query"] == last and int(p.clean[last]) == int(p.clean[p.roles["key"]])
        else:
            assert max(diff) == p.roles["subject"] and p.roles["verb"] == last
    model = make_model("qrnn", layout=["qrnn"])
    p = pairs[0]
    res = activation_patching(model, p.clean, p.corrupted, answer=p.answer, contrast=p.contrast, sites=["state"])
    assert res.scores.shape == (1, 1, p.length)
