"""Linear probes: collection at any site (hidden and state) on every architecture, recovery of a
planted linear feature, control tasks and selectivity, disk streaming equal to memory, errors."""
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ARCHS, make_model, tokens
from probe.errors import InputError
from probe.methods import ActivationDataset, collect_activations, fit_probes, hidden_vs_state, hidden_vs_state_figure
from probe.data.activation_dataset import FeatureInfo


@pytest.mark.parametrize("arch", ARCHS)
def test_collects_hidden_and_state_features_on_every_architecture(arch):
    model = make_model(arch)
    toks = tokens(3, 12, seed=2)
    positions = [2, 5, -1]
    data = collect_activations(model, toks, {"tok": toks.numpy() % 2}, positions=positions, max_dim=40)
    assert len(data) == 9 and data.labels["tok"].shape == (9,)
    assert np.array_equal(data.position, np.tile([2, 5, 11], 3))
    assert np.array_equal(data.token, toks[:, [2, 5, 11]].flatten().numpy())
    _, cache = model.run_with_cache(toks)
    for key, info in data.info.items():
        feats = np.asarray(data.features[key], dtype=np.float32)
        assert feats.shape == (9, info.dim) and np.isfinite(feats).all()
        assert info.kind == ("state" if info.site == "state" else "hidden")
        if info.reduction == "none":  # unreduced features are the hooks' values, flattened and concatenated
            want = torch.cat([cache[h][:, [2, 5, 11]].flatten(2) for h in info.hooks], -1).flatten(0, 1)
            np.testing.assert_allclose(feats, want.numpy(), rtol=2e-3, atol=2e-3)  # float16 storage
        else:
            assert info.raw_dim > 40 and info.dim == 40
    if arch != "ff":
        assert any(i.kind == "state" for i in data.info.values())


def test_probe_recovers_a_planted_linear_feature():
    """Labels defined as a linear function of the model's own activations (residual stream of layer 1
    and, separately, layer 0's recurrent state) are recovered by the probe at that site and layer."""
    model = make_model("qrnn")
    toks = tokens(60, 16, seed=3)
    _, cache = model.run_with_cache(toks)
    g = torch.Generator().manual_seed(0)
    hidden = cache["blocks.1.hook_resid_post"]
    state = torch.cat([cache["blocks.0.mixer.hook_state"].flatten(2), cache["blocks.0.mixer.hook_state_conv"].flatten(2)], -1)
    planted_h = hidden @ torch.randn(hidden.shape[-1], generator=g)
    planted_s = state @ torch.randn(state.shape[-1], generator=g)
    labels = {"h_value": planted_h.numpy(), "h_class": (planted_h > planted_h.median()).long().numpy(),
              "s_value": planted_s.numpy()}
    data = collect_activations(model, toks, labels, sites=["resid_post", "state"], max_dim=512, dtype="float32")
    values = fit_probes(data, ["h_value", "s_value"], alpha=1e-3, control=False).to_frame()
    classes = fit_probes(data, "h_class", sites=["resid_post"], layers=[1], C=10.0, control=False).to_frame()
    frame = pd.concat([values, classes]).set_index(["label", "site", "layer"])
    assert frame.loc[("h_value", "resid_post", 1), "score"] > 0.999
    assert frame.loc[("h_class", "resid_post", 1), "score"] > 0.95
    assert frame.loc[("h_class", "resid_post", 1), "task"] == "classification"
    assert frame.loc[("s_value", "state", 0), "score"] > 0.999
    assert frame.loc[("h_value", "resid_post", 1), "task"] == "regression"
    assert frame.loc[("h_value", "resid_post", 1), "score"] > frame.loc[("h_value", "state", 0), "score"]


def _synthetic(n_seq=60, T=20, vocab=40, seed=0):
    """Two representations of the same rows: ``token`` holds the token's identity (one-hot) and a
    context feature, ``context`` only the context feature (and noise)."""
    rng = np.random.default_rng(seed)
    n = n_seq * T
    token = rng.integers(vocab, size=n)
    context = rng.normal(size=n)
    noise = lambda d: 0.05 * rng.normal(size=(n, d))
    feats = {"0-token": np.concatenate([np.eye(vocab)[token], context[:, None]], 1) + noise(vocab + 1),
             "0-context": np.concatenate([context[:, None], rng.normal(size=(n, 4))], 1) + noise(5)}
    info = {k: FeatureInfo(k[2:], 0, "hidden", [], v.shape[1], v.shape[1], "none") for k, v in feats.items()}
    labels = {"lexical": token % 3, "contextual": (context > 0).astype(np.int64)}
    return ActivationDataset({k: v.astype(np.float16) for k, v in feats.items()}, info, labels, token,
                             np.repeat(np.arange(n_seq), T), np.tile(np.arange(T), n_seq), "synthetic", ["attn"])


@pytest.mark.numerical
def test_control_task_selectivity():
    """The control task (each sequence takes another sequence's labels) is not readable from the token
    at the probed position: it stays near the majority baseline on a representation that holds token
    identity (a control drawn per token type would score ~1 there), so a contextual label decoded from
    either representation has high selectivity."""
    frame = fit_probes(_synthetic()).to_frame().set_index(["label", "site"])
    tok, ctx = frame.loc[("contextual", "token")], frame.loc[("contextual", "context")]
    assert tok["score"] > 0.9 and tok["control_score"] < 0.65 and tok["selectivity"] > 0.3
    assert ctx["score"] > 0.95 and ctx["control_score"] < 0.65 and ctx["selectivity"] > 0.3
    lex = frame.loc[("lexical", "token")]
    assert lex["score"] > 0.95 and lex["control_score"] < 0.5 and lex["selectivity"] > 0.45  # 3 classes
    assert frame.loc[("lexical", "context"), "score"] < 0.5  # token identity is not in the context features
    assert 0.4 < ctx["baseline"] < 0.65
    threaded = fit_probes(_synthetic(), n_jobs=2).to_frame().set_index(["label", "site"])
    np.testing.assert_allclose(threaded["score"].to_numpy(), frame["score"].to_numpy())
    no_control = fit_probes(_synthetic(), control=False).to_frame()
    assert no_control["control_score"].isna().all()
    np.testing.assert_allclose(no_control["score"].to_numpy(), frame["score"].to_numpy())


@pytest.mark.parametrize("reduce", ["random", "pca"])
def test_streaming_to_disk_equals_in_memory(tmp_path, reduce):
    model = make_model("hybrid_lstm_attn")
    toks = tokens(1, 300, seed=4)[0]  # one stream, cut into windows of seq_len
    depth = (np.cumsum(toks.numpy() % 3 == 0) % 4).astype(np.int64)
    kw = dict(sites=["resid_post", "state"], seq_len=64, batch_size=2, max_dim=24, reduce=reduce)
    mem = collect_activations(model, toks, {"depth": depth}, **kw)
    disk = collect_activations(model, toks, {"depth": depth}, path=tmp_path / "acts", **kw)
    auto = collect_activations(model, toks, {"depth": depth}, memory_limit=0, **kw)  # too big: a temp dir
    assert mem.path is None and disk.path == tmp_path / "acts" and auto.path is not None
    assert isinstance(disk.features["0-state"], np.memmap)
    loaded = ActivationDataset.load(tmp_path / "acts")
    for other in (disk, auto, loaded):
        assert other.keys == mem.keys and len(other) == len(mem) == 300
        for k in mem.keys:
            assert other.features[k].dtype == np.float16
            assert np.array_equal(np.asarray(other.features[k]), mem.features[k])
        assert np.array_equal(other.labels["depth"], depth)
        for field in ("token", "sequence", "position"):
            assert np.array_equal(getattr(other, field), getattr(mem, field))
    assert loaded.info == mem.info
    a, b = fit_probes(mem).to_frame(), fit_probes(loaded).to_frame()
    np.testing.assert_array_equal(a["score"].to_numpy(), b["score"].to_numpy())
    res = fit_probes(mem)
    assert len(res.figure().data) >= 2
    summary = hidden_vs_state([res])
    assert set(summary.columns) >= {"hidden", "state", "hidden_site", "state_site"} and len(summary) == 1
    assert summary.equals(hidden_vs_state(res.to_frame()))
    assert len(hidden_vs_state_figure([res]).data) == 3


def test_texts_pairs_and_positions():
    model = make_model("qrnn")
    texts = ["def f(x):", "return (a, b)"]
    per_seq = collect_activations(model, texts, {"kind": [0, 1]}, sites=["resid_post"], positions=[-1])
    assert len(per_seq) == 2 and per_seq.labels["kind"].tolist() == [0, 1]
    pairs = [(np.arange(10) + 40, {"a": np.arange(10)}), (np.arange(5) + 60, {"a": np.arange(5)})]
    data = collect_activations(model, pairs, sites=["state"], layers=[1], seq_len=4)
    assert len(data) == 15 and data.labels["a"].tolist() == list(range(10)) + list(range(5))
    mask = np.zeros((2, 10), dtype=bool)
    mask[0, 3] = mask[1, 7] = True
    masked = collect_activations(model, tokens(2, 10), {"y": [1, 2]}, positions=mask, sites=["resid_post"])
    assert masked.position.tolist() == [3, 7]


def test_errors():
    model = make_model("qrnn")
    toks = tokens(4, 10)
    with pytest.raises(InputError, match="single class"):
        fit_probes(collect_activations(model, toks, {"y": np.zeros((4, 10), dtype=np.int64)}, sites=["resid_post"]))
    with pytest.raises(InputError, match="No positions"):
        collect_activations(model, toks, {"y": np.zeros((4, 10))}, positions=[[], [], [], []])
    with pytest.raises(InputError, match="empty"):
        collect_activations(model, [], {"y": []})
    with pytest.raises(InputError, match="shape"):
        collect_activations(model, toks, {"y": np.zeros((4, 9))})
    with pytest.raises(InputError, match="stream of 40"):
        collect_activations(model, toks.flatten(), {"y": np.zeros(39)})
    with pytest.raises(InputError, match="no labels"):
        fit_probes(collect_activations(model, toks, sites=["resid_post"]))
    with pytest.raises(InputError, match="Unknown label"):
        fit_probes(collect_activations(model, toks, {"y": toks.numpy() % 2}, sites=["resid_post"]), labels="z")
    broken = make_model("qrnn")
    with torch.no_grad():
        broken.blocks[0].mixer.W_conv.fill_(float("nan"))
    import glob
    import tempfile

    pattern = f"{tempfile.gettempdir()}/probe-activations-*"
    before = set(glob.glob(pattern))
    with pytest.raises(InputError, match="NaN"):
        collect_activations(broken, toks, {"y": toks.numpy() % 2}, memory_limit=0)  # streaming to a temp dir
    assert set(glob.glob(pattern)) == before  # removed after the error
    assert not any(hp.has_hooks() for hp in broken.hook_dict.values())
    data = _synthetic()
    data.features["0-token"][3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_probes(data)
    big = make_model("qrnn")
    with torch.no_grad():
        big.W_E.mul_(1e6)
    with pytest.raises(InputError, match="float32"):
        collect_activations(big, toks, {"y": toks.numpy() % 2}, sites=["resid_post"], layers=[0])
