"""Regressions found by a robustness sweep over unusual configurations, dtypes and inputs.

Each test builds a tiny random model in memory (odd widths, one or three heads) and checks one
behaviour that used to fail: a dtype silently ignored, a method refusing half precision, a tuned
lens going NaN in float16, token display crashing on a padded vocabulary, padding read as if it
were text, argument checks surfacing as deep torch errors.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import probe
from probe.errors import InputError
from probe.methods import (
    TunedLens, activation_patching, collect_activations, direct_logit_attribution, fit_probes, gradient_x_input,
    hidden_vs_state, hidden_vs_state_figure, integrated_gradients, logit_lens, steer, steering_vector,
)

torch.set_num_threads(1)


def tiny(layout, seed: int = 0, **overrides) -> probe.HookedLM:
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=257, d_model=18, n_heads=3, d_mlp=13, layout=layout)
    kwargs.update(overrides)
    model = probe.HookedLM(probe.ModelConfig(**kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


TOKENS = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))


# -- checkpoints -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_load_honours_dtype(tmp_path, dtype):
    """probe.load(path, dtype=...) used to copy the weights into a float32 model and return it as float32."""
    model = tiny(["qrnn", "attn"]).to(dtype)
    model.save(tmp_path / "m")
    loaded = probe.load(tmp_path / "m", dtype=dtype)
    assert loaded.dtype == dtype
    assert all(p.dtype == dtype for p in loaded.parameters())
    assert torch.equal(loaded(TOKENS), model(TOKENS))  # float64 weights survive without a float32 detour


def test_save_refuses_a_non_floating_dtype(tmp_path):
    """model.save(dtype=torch.int8) used to write a checkpoint of truncated weights that load refused."""
    with pytest.raises(InputError, match="floating dtype"):
        tiny(["lstm"]).save(tmp_path / "m", dtype=torch.int8)
    assert not (tmp_path / "m").exists()


# -- half precision ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_direct_logit_attribution_runs_in_half_precision(dtype):
    """DLA refused every float16 / bfloat16 model ("not the sum of embed, mixer and MLP outputs"): the
    residual sums of a half-precision model round at every addition."""
    model = tiny(["mamba", "attn"]).to(dtype)
    res = direct_logit_attribution(model, TOKENS, contrast=3, per_head=True)
    assert torch.allclose(res.total, res.logit, rtol=0.05, atol=0.05)
    assert set(res.head_contributions) == {1}
    # a genuinely non-additive stream is still refused
    full = tiny(["mamba", "attn"])
    with pytest.raises(probe.ProbeError, match="not the sum"):
        with full.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: 2 * x)]):
            direct_logit_attribution(full, TOKENS)


def test_tuned_lens_trains_on_a_float16_model(tmp_path):
    """TunedLens.fit on a float16 model gave a NaN loss at step 1 (Adam on float16 translators)."""
    model = tiny(["qrnn", "attn"]).to(torch.float16)
    lens = TunedLens(model).fit(model, torch.randint(0, 256, (200,)), steps=4, batch_size=2, seq_len=8)
    assert all(np.isfinite(lens.train_info["losses"]))
    assert lens.weight.dtype == torch.float32
    res = lens.run(model, TOKENS)
    assert torch.isfinite(res.kl).all()
    lens.save(tmp_path)
    assert torch.equal(TunedLens.load(tmp_path, model).run(model, TOKENS).kl, res.kl)


def test_tuned_lens_of_a_float64_model_reloads_exactly(tmp_path):
    """The lens was saved as float32 whatever the model's dtype, so a float64 lens changed on reload."""
    model = tiny(["lmu"]).to(torch.float64)
    lens = TunedLens(model).fit(model, torch.randint(0, 256, (200,)), steps=2, batch_size=2, seq_len=8)
    lens.save(tmp_path)
    again = TunedLens.load(tmp_path, model)
    assert torch.equal(again.weight, lens.weight) and torch.equal(again.bias, lens.bias)


# -- a vocabulary padded past the tokenizer's --------------------------------------------
def test_methods_show_ids_the_tokenizer_lacks():
    """vocab_size=260 with the 257-id byte tokenizer: the model predicts ids 257..259, and the lens,
    attribution labels, generate and steering crashed turning them into text."""
    model = tiny(["attn", "lstm"], vocab_size=260)
    with torch.no_grad():
        model.b_U[259] = 50.0  # make id 259 the top prediction everywhere
    assert model.token_str(259) == "<|259|>"
    assert model.to_string(torch.tensor([104, 259, 105])) == "h<|259|>i"
    assert model.to_str_tokens(torch.tensor([104, 259])) == ["h", "<|259|>"]
    lens = logit_lens(model, TOKENS)
    assert lens.top_strs[-1][0][0] == "<|259|>"
    lens.figure()
    dla = direct_logit_attribution(model, TOKENS)
    assert int(dla.target[0]) == 259 and "<|259|>" in dla.metric_label[0]
    assert model.generate("ab", max_new_tokens=2).endswith("<|259|><|259|>")
    vec = steering_vector(model, ["abc"], ["abd"])
    res = steer(model, "ab", vec, coefficients=[0.0], max_new_tokens=1)
    assert res.generations[min(res.layers), 0.0][0].endswith("<|259|>")
    with pytest.raises(InputError, match="Token id 260"):  # beyond the model's vocabulary: still an error
        model.to_string(torch.tensor([260]))


# -- texts of different lengths ------------------------------------------------------------
def test_position_in_the_padding_of_a_shorter_text_is_refused():
    """A list of texts is right-padded; position -1 silently explained the pad token of the shorter ones."""
    model = tiny(["qrnn", "attn"])
    texts = ["ab", "abcdef"]
    for method in (direct_logit_attribution, gradient_x_input):
        with pytest.raises(InputError, match="padding for text 0"):
            method(model, texts)
    with pytest.raises(InputError, match="padding for text 0"):
        integrated_gradients(model, texts, steps=4)
    with pytest.raises(InputError, match="answer position 6 is padding for text 0"):
        activation_patching(model, texts, ["xb", "xbcdef"], answer=1, contrast=2)
    # positions inside every text, and per-sequence answer positions, still work
    inside = direct_logit_attribution(model, texts, position=1)
    alone = direct_logit_attribution(model, texts[0], position=1)
    assert torch.allclose(inside.contributions[:, 0], alone.contributions[:, 0], atol=1e-5)
    res = activation_patching(model, texts, ["xb", "xbcdef"], answer=1, contrast=2, answer_position=[2, 6],
                              sites=["resid_pre"])
    assert torch.isfinite(res.scores).all()
    direct_logit_attribution(model, ["ab", "cd"])  # equal lengths: no padding


def test_logit_lens_means_leave_out_padding():
    """logit_lens(...).to_frame() averaged KL, loss and agreement over the pad positions too."""
    model = tiny(["hgrn2", "attn"])
    texts = ["ab", "abcdef"]  # 3 and 7 tokens with the BOS
    both = logit_lens(model, texts).to_frame()
    one, two = logit_lens(model, texts[0]).to_frame(), logit_lens(model, texts[1]).to_frame()
    np.testing.assert_allclose(both["kl"], (3 * one["kl"] + 7 * two["kl"]) / 10, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(both["cross_entropy"], (2 * one["cross_entropy"] + 6 * two["cross_entropy"]) / 8,
                               rtol=1e-5)
    np.testing.assert_allclose(both["top1_agreement"], (3 * one["top1_agreement"] + 7 * two["top1_agreement"]) / 10)


# -- argument checks -----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=1.5), "max_new_tokens must be an integer"),
    (dict(max_new_tokens=2, temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(max_new_tokens=2, temperature=1.0, top_k=0), "top_k must be a positive integer"),
])
def test_steer_checks_its_sampling_arguments(kwargs, message):
    """steer passed these on unchecked: a TypeError, a silent greedy run, a tensor-size RuntimeError."""
    model = tiny(["rwkv"])
    vec = steering_vector(model, ["abc"], ["abd"])
    with pytest.raises(InputError, match=message):
        steer(model, "ab", vec, **kwargs)


def test_integer_arguments_are_checked():
    model = tiny(["mlstm"], mixer_options={"mlstm": {"chunk": 3}})
    with pytest.raises(InputError, match="fit needs steps >= 1"):
        TunedLens(model).fit(model, torch.randint(0, 256, (100,)), steps=1.5, seq_len=4)
    with pytest.raises(InputError, match="max_steps must be a positive integer"):
        integrated_gradients(model, TOKENS, steps=4, until=1e-9, max_steps="many")
    with pytest.raises(InputError, match="until must be a positive"):
        integrated_gradients(model, TOKENS, steps=4, until="small")


# -- probing summaries -----------------------------------------------------------------------
def test_hidden_vs_state_takes_a_dict_of_results():
    """hidden_vs_state({name: result}) raised AttributeError ('str' object has no attribute 'groupby')."""
    data = []
    rng = np.random.default_rng(0)
    for _ in range(8):
        toks = rng.integers(0, 256, 7)
        data.append((toks, {"parity": toks % 2}))
    results = {}
    for name in ("slstm", "attn"):
        model = tiny([name], d_model=12)
        results[name] = fit_probes(collect_activations(model, data, max_dim=8), max_iter=30)
    table = hidden_vs_state(results)
    assert table["model"].tolist() == ["slstm", "attn"]  # named by the keys, one row each
    assert np.isfinite(table.loc[0, "state"]) and np.isfinite(table.loc[1, "hidden"])
    assert list(hidden_vs_state_figure(results).data[0].x) == ["slstm", "attn"]
    with pytest.raises(InputError, match="ProbeResults of fit_probes"):
        hidden_vs_state({"x": "not a result"})
