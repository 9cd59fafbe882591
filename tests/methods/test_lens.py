"""Logit lens and tuned lens on every architecture: definitions, identity init, training, persistence."""
import pytest
import torch
import torch.nn.functional as F

import probe
from conftest import ARCHS, make_model, tokens
from method_checks import assert_untouched, failing_hook, snapshot
from probe.errors import CheckpointError, InputError
from probe.methods import LensResult, TunedLens, compare_lenses, logit_lens
from probe.methods.lens import lens_site


@pytest.mark.parametrize("arch", ARCHS)
def test_logit_lens_reads_every_layer_with_the_final_norm(arch):
    model = make_model(arch)
    toks = tokens(2, 10)
    before = snapshot(model)
    res = logit_lens(model, toks, keep_logits=True)
    assert_untouched(model, before)
    n = model.cfg.n_layers
    assert res.layers == list(range(n + 1)) and res.layer_labels[0] == "embed"
    assert res.kl.shape == (n + 1, 2, 10) and res.cross_entropy.shape == (n + 1, 2, 9)
    logits, cache = model.run_with_cache(toks)
    with torch.no_grad():
        for layer in range(n + 1):  # the definition, from the cache
            resid = cache[lens_site(model, layer)]
            expect = model.ln_final(resid) @ model.unembed_matrix + model.b_U
            torch.testing.assert_close(res.logits[layer], expect, atol=1e-5, rtol=1e-5)
            lp, lq = F.log_softmax(logits, -1), F.log_softmax(expect, -1)
            torch.testing.assert_close(res.kl[layer], (lp.exp() * (lp - lq)).sum(-1), atol=1e-5, rtol=1e-4)
            ce = F.cross_entropy(expect[:, :-1].transpose(1, 2), toks[:, 1:], reduction="none")
            torch.testing.assert_close(res.cross_entropy[layer], ce, atol=1e-5, rtol=1e-4)
    # the last lens layer is the model's own output
    assert float(res.kl[-1].abs().max()) < 1e-5 and bool(res.top1_agreement[-1].all())
    frame = res.to_frame()
    assert list(frame["layer"]) == list(range(n + 1))
    assert {"kl", "cross_entropy", "top1_agreement"} <= set(frame.columns)


@pytest.mark.parametrize("arch", ARCHS)
def test_tuned_lens_at_identity_init_is_the_logit_lens(arch):
    model = make_model(arch)
    toks = tokens(2, 9)
    tuned = TunedLens(model).run(model, toks)
    plain = logit_lens(model, toks)
    assert tuned.kind == "tuned lens" and plain.kind == "logit lens"
    for field in ("kl", "cross_entropy", "top_tokens", "top_probs"):
        assert torch.equal(getattr(tuned, field), getattr(plain, field)), field


def _corpus(n=6000, seed=0):
    """A text-like byte stream with structure a model has learned nothing about."""
    g = torch.Generator().manual_seed(seed)
    words = [bytes(torch.randint(97, 123, (int(k),), generator=g).tolist())
             for k in torch.randint(2, 7, (40,), generator=g)]
    idx = torch.randint(0, 40, (n // 4,), generator=g)
    text = b" ".join(words[i] for i in idx.tolist())[:n]
    return torch.tensor(list(text))


@pytest.mark.numerical
@pytest.mark.parametrize("arch", ["attn", "qrnn", "lstm"])
def test_tuned_lens_training_lowers_held_out_kl(arch):
    model = make_model(arch)
    before = snapshot(model)
    lens = TunedLens(model).fit(model, _corpus(seed=1), steps=40, batch_size=4, seq_len=32, lr=3e-3)
    assert_untouched(model, before)
    info = lens.train_info
    assert info["loss_last"] < info["loss_first"] and info["seconds"] > 0
    table = compare_lenses(model, lens, _corpus(seed=2), seq_len=32, max_windows=8)
    assert list(table["layer"]) == list(range(model.cfg.n_layers))
    assert bool(table["tuned_better"].all()), table
    assert lens.fingerprint is not None


def test_tuned_lens_save_load_beside_the_model(tmp_path):
    model = make_model("hybrid_qrnn_attn_ff")
    model.save(tmp_path / "m")
    model = probe.load(tmp_path / "m")
    lens = TunedLens(model).fit(model, _corpus(), steps=3, batch_size=2, seq_len=16)
    where = lens.save(model=model)
    assert (where / "tuned_lens.safetensors").is_file() and (where / "tuned_lens.json").is_file()
    back = TunedLens.load(model)
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    toks = tokens(1, 8)
    assert torch.equal(back.run(model, toks).kl, lens.run(model, toks).kl)
    # the model still loads with the lens files beside it
    probe.load(tmp_path / "m")


def test_tuned_lens_refuses_another_model(tmp_path):
    model = make_model("qrnn")
    lens = TunedLens(model).fit(model, _corpus(), steps=2, batch_size=2, seq_len=16)
    lens.save(tmp_path / "lens")
    other_weights = make_model("qrnn", seed=5)
    with pytest.raises(InputError, match="trained for another model"):
        TunedLens.load(tmp_path / "lens", other_weights)
    with pytest.raises(InputError, match="trained for another model"):
        lens.run(other_weights, tokens(1, 5))
    other_shape = make_model("qrnn", d_model=16, n_heads=2)
    with pytest.raises(InputError, match="d_model"):
        TunedLens.load(tmp_path / "lens", other_shape)
    with pytest.raises(CheckpointError, match="No tuned lens"):
        TunedLens.load(tmp_path / "nothing", model)
    with pytest.raises(InputError, match="not loaded from a checkpoint"):
        TunedLens.load(model)


def test_lens_bad_input_and_hooks_removed_on_error():
    model = make_model("hybrid_lstm_attn")
    before = snapshot(model)
    with pytest.raises(InputError, match="out of range"):
        logit_lens(model, tokens(1, 5), layers=[7])
    with pytest.raises(InputError, match="out of range"):
        logit_lens(model, torch.tensor([[1, 2, 999]]))
    with pytest.raises(InputError, match="fewer than one window"):
        TunedLens(model).fit(model, torch.arange(10), seq_len=32, steps=1)
    with pytest.raises(InputError, match="outside this model's vocabulary"):
        TunedLens(model).fit(model, torch.tensor([5, 300] * 50), seq_len=8, steps=1)
    with failing_hook(model, "blocks.1.hook_resid_post"), pytest.raises(RuntimeError, match="boom"):
        logit_lens(model, tokens(1, 6))
    assert_untouched(model, before)


def test_lens_figures_are_labelled():
    model = make_model("qrnn")
    res = logit_lens(model, "def f(x):")
    assert isinstance(res, LensResult)
    fig = res.figure()
    heat = fig.data[0]
    assert list(heat.y) == res.layer_labels
    assert heat.x[0].startswith("0:") and "f" in "".join(heat.x)
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert res.metric_figure().layout.title.text
    assert len(res.position_frame()) == (model.cfg.n_layers + 1) * res.tokens.shape[1]


def test_lens_zoo_table_script_on_tiny_models(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "lens_zoo_table.py"
    spec = importlib.util.spec_from_file_location("lens_zoo_table", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    csv = tmp_path / "table.csv"
    assert script.main(["--tiny", "--steps", "15", "--seq-len", "24", "--max-windows", "6", "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "| model | layer | KL logit lens | KL tuned lens |" in printed and "tiny-qrnn+qrnn" in printed
    import pandas as pd

    table = pd.read_csv(csv)
    assert set(table["model"]) == {"tiny-attn+attn", "tiny-qrnn+qrnn"}
    assert {"kl_logit", "kl_tuned", "tuned_better", "seconds_per_layer"} <= set(table.columns)
    assert (table["kl_logit"] > 0).all()
