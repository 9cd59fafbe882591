"""scripts/readme_figure.py: the per-layer logit-lens numbers are the lens's (checked against
probe.methods.logit_lens and the model's own loss), and the script draws the PNG + CSV from zoo
models at a small size."""
import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

import probe
from probe.methods import logit_lens

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_figure", ROOT / "scripts" / "readme_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {"+".join(l): probe.HookedLM(probe.ModelConfig(d_model=32, n_heads=4, d_mlp=64, layout=l)).eval()
            for l in (["attn", "attn"], ["qrnn", "lstm", "ff"])}


def test_lens_curves_are_the_logit_lens(tiny_models):
    fig = _script()
    tokens = torch.randint(0, 257, (3, 20), generator=torch.Generator().manual_seed(1))
    df = fig.lens_curves(tiny_models, tokens, batch_size=2)  # two chunks: the sums must be pooled right
    for name, model in tiny_models.items():
        part = df[df["model"] == name].set_index("layer")
        assert list(part.index) == list(range(model.cfg.n_layers + 1))
        ref = logit_lens(model, tokens).to_frame().set_index("layer")
        assert part["kl"].to_numpy() == pytest.approx(ref["kl"].to_numpy(), rel=1e-4, abs=1e-6)
        assert part["top1"].to_numpy() == pytest.approx(ref["top1_agreement"].to_numpy(), abs=1e-6)
        last = part.loc[model.cfg.n_layers]
        assert last["kl"] == pytest.approx(0.0, abs=1e-5) and last["top1"] == 1.0
        with torch.no_grad():
            loss = float(model(tokens, return_type="loss"))
        assert last["bits"] == pytest.approx(loss / math.log(2), rel=1e-4)  # the lens at the end is the model


def test_draw_writes_a_png(tiny_models, tmp_path):
    pytest.importorskip("matplotlib")
    fig = _script()
    df = fig.lens_curves(tiny_models, torch.randint(0, 257, (2, 12)))
    path = fig.draw(df, tmp_path / "sub" / "lens.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_script_runs_on_zoo_models(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    names = probe.zoo_names()[:2]
    if not names:
        pytest.skip("no zoo model shipped")
    from probe.data.code_corpus import CodeCorpus

    CodeCorpus("test", max_files=2).stream().save(tmp_path / "stdlib-test.safetensors")
    monkeypatch.setenv("PROBE_STDLIB_STREAMS", str(tmp_path))
    out = tmp_path / "zoo.png"
    assert _script().main(["--models", *names, "--windows", "2", "--seq-len", "32", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    df = pd.read_csv(out.with_suffix(".csv"))
    assert list(dict.fromkeys(df["model"])) == names
    for name in names:
        part = df[df["model"] == name]
        assert len(part) == probe.load(f"zoo:{name}").cfg.n_layers + 1
        assert part["kl"].iloc[-1] == pytest.approx(0.0, abs=1e-3) and (part["kl"].iloc[:-1] > 0).all()
