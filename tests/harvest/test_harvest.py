"""probe.harvest on one machine: the shards hold what collect_activations computes, a crashed
harvest resumes to the same bytes without redoing finished shards, and the consumers (fit_probes,
steering_vector, TunedLens.fit) stream a harvest folder with the same answers and bounded memory."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from probe.errors import ConfigError, InputError
from probe.harvest import harvest, open_harvest
from probe.harvest import run as harvest_run

ROOT = Path(__file__).resolve().parents[2]


def tiny(layout=("qrnn", "attn"), d_model=32, seed=0):
    torch.manual_seed(seed)
    return probe.HookedLM(probe.ModelConfig(d_model=d_model, layout=list(layout), n_heads=2)).eval()


def labelled(n_seq=12, length=40, seed=0):
    """``(tokens, {"even": ...})`` pairs: the label is the parity of the previous token (a context fact)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_seq):
        t = rng.integers(0, 256, size=length)
        out.append((t, {"even": np.concatenate([[0], (t[:-1] % 2 == 0)]).astype(np.int64)}))
    return out


def test_shards_hold_what_collect_activations_computes(tmp_path):
    model = tiny()
    data = labelled()
    h = harvest(model, data, tmp_path / "h", sites=["resid_post", "state"], dtype="float32", batch_size=4,
                shard_size=5, progress=False)
    ref = probe.methods.collect_activations(model, data, sites=["resid_post", "state"], reduce=None,
                                            max_dim=10**6, dtype="float32", batch_size=4)
    acts = h.activations()
    assert len(h.shards) == 3 and len(acts) == len(ref) == 12 * 40
    for name in ("token", "sequence", "position"):
        np.testing.assert_array_equal(getattr(acts, name), getattr(ref, name))
    np.testing.assert_array_equal(acts.labels["even"], ref.labels["even"])
    assert set(acts.features) == set(ref.features)
    for key in ref.features:
        np.testing.assert_allclose(acts.features[key][:], ref.features[key], rtol=1e-5, atol=1e-6)
    rows = np.array([479, 3, 200, 3])  # unsorted, repeated, across shards
    np.testing.assert_array_equal(acts.features["1-state"][rows], ref.features["1-state"][rows])
    assert h.manifest["bytes_per_token"]["1-state"] > h.manifest["bytes_per_token"]["0-resid_post"] > 0


def test_pooled_and_projected_rows(tmp_path):
    model = tiny()
    data = labelled(n_seq=6)
    full = harvest(model, data, tmp_path / "full", sites=["state"], layers=[0], dtype="float32",
                   positions=[-1, 5, 9], progress=False)
    pooled = harvest(model, data, tmp_path / "pooled", sites=["state"], layers=[0], dtype="float32",
                     positions=[-1, 5, 9], pool="mean", progress=False)
    projected = harvest(model, data, tmp_path / "proj", sites=["state"], layers=[0], dtype="float32",
                        positions=[-1, 5, 9], max_dim=8, progress=False)
    a, p = full.activations(), pooled.activations()
    np.testing.assert_array_equal(a.position[:3], [5, 9, 39])
    assert len(p) == 6 and (p.position == -1).all()
    for s in range(6):
        np.testing.assert_allclose(p.features["0-state"][[s]][0], a.features["0-state"][a.sequence == s].mean(0),
                                   rtol=1e-5, atol=1e-6)
    assert projected.features["0-state"].dim == 8 and projected.features["0-state"].reduction == "random"
    from probe.data.activation_dataset import Reducer

    spec = projected.features["0-state"]
    sketch = Reducer(spec.raw_dim, 8, "random", 0, "0-state")(torch.from_numpy(a.features["0-state"][:]))
    np.testing.assert_allclose(projected.activations().features["0-state"][:], sketch.numpy(), rtol=1e-5, atol=1e-5)


def test_an_interrupted_harvest_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    model = tiny()
    data = labelled(n_seq=14)
    options = dict(sites=["resid_post", "state"], shard_size=3, batch_size=2, progress=False)
    whole = harvest(model, data, tmp_path / "whole", **options)
    real = harvest_run.write_shard
    calls = []

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between shards
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(harvest_run, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        harvest(model, data, tmp_path / "resumed", **options)
    shards = tmp_path / "resumed" / "shards"
    assert sorted(p.name for p in shards.iterdir()) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    with pytest.raises(InputError, match="unfinished harvest"):
        open_harvest(tmp_path / "resumed")
    (shards / ".shard-00002.parquet.abc123").write_bytes(b"half a shard")  # a writer killed mid-file
    calls.clear()
    monkeypatch.setattr(harvest_run, "write_shard", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    resumed = harvest(model, data, tmp_path / "resumed", **options)
    assert calls == [2, 3, 4]  # finished shards are not redone
    assert sorted(p.name for p in shards.iterdir()) == [f"shard-0000{k}.parquet" for k in range(5)]
    for a, b in zip(whole.shards, resumed.shards):
        assert (whole.path / a["file"]).read_bytes() == (resumed.path / b["file"]).read_bytes()
    assert resumed.n_rows == whole.n_rows == 14 * 40


def test_a_killed_harvest_process_resumes(tmp_path):
    """SIGKILL in the middle of a harvest (a subprocess killed once its third shard is written)."""
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path[:0] = [{str(ROOT / 'tests' / 'harvest')!r}, {str(ROOT / 'tests')!r}]
        from test_harvest import tiny, labelled
        from probe.harvest import harvest, run
        real = run.write_shard
        def write(*a, **k):
            n = real(*a, **k)
            if a[3] == 2 and sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            return n
        run.write_shard = write
        torch.set_num_threads(1)
        harvest(tiny(), labelled(n_seq=14), sys.argv[2], sites=["state"], shard_size=3, progress=False)
    """)
    run = lambda *argv: subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    killed = run("kill", str(tmp_path / "h"))
    assert killed.returncode == -9, killed.stderr
    assert len(list((tmp_path / "h" / "shards").glob("shard-*.parquet"))) == 3
    assert run("finish", str(tmp_path / "h")).returncode == 0
    assert run("finish", str(tmp_path / "ref")).returncode == 0
    for k in range(5):
        name = f"shards/shard-{k:05d}.parquet"
        assert (tmp_path / "h" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def test_a_folder_with_another_harvest_is_refused(tmp_path):
    model = tiny()
    harvest(model, labelled(n_seq=3), tmp_path / "h", sites=["state"], progress=False)
    with pytest.raises(ConfigError, match="holds another harvest.*plan"):
        harvest(model, labelled(n_seq=3), tmp_path / "h", sites=["resid_post"], progress=False)
    with pytest.raises(ConfigError, match="corpus"):
        harvest(model, labelled(n_seq=4), tmp_path / "h", sites=["state"], progress=False)
    other = harvest(model, labelled(n_seq=3), tmp_path / "h", sites=["resid_post"], overwrite=True, progress=False)
    assert list(other.features) == ["0-resid_post", "1-resid_post"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        harvest(model, labelled(n_seq=3), tmp_path / "notes", sites=["state"], progress=False)


def test_corpus_sources_text_folder_and_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    model = tiny()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("def f(x):\n    return x\n" * 5)
    h = harvest(model, tmp_path / "docs", tmp_path / "h1", sites=["state"], layers=[0], seq_len=32, progress=False)
    stream = probe.data.text_corpus(tmp_path / "docs")
    np.testing.assert_array_equal(h.column("token"), stream.tokens)
    datasets.Dataset.from_dict({"text": ["def f(x):\n    return x\n" * 5]}).save_to_disk(str(tmp_path / "ds"))
    d = harvest(model, str(tmp_path / "ds"), tmp_path / "h2", sites=["state"], layers=[0], seq_len=32, progress=False)
    np.testing.assert_array_equal(d.column("token"), stream.tokens)
    with pytest.raises(InputError, match="does not exist"):
        harvest(model, str(tmp_path / "missing/"), tmp_path / "h3", progress=False)


def test_ray_missing_is_named_with_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"probe\[dist\]"):
        harvest(tiny(), labelled(n_seq=2), tmp_path / "h", sites=["state"], ray=True, progress=False)


def test_steering_vector_from_two_harvests_equals_the_direct_one(tmp_path):
    model = tiny(layout=("qrnn", "lstm"))
    pos, neg = ["the keys to the", "some dogs ran", "they were"], ["the key to the", "a dog ran", "he was"]
    for position, kw in ((-1, {"positions": "last"}), ("mean", {"pool": "mean"})):
        direct = probe.methods.steering_vector(model, pos, neg, site="state", position=position)
        hp = harvest(model, pos, tmp_path / f"p{position}", sites=["state"], dtype="float32", progress=False, **kw)
        hn = harvest(model, neg, tmp_path / f"n{position}", sites=["state"], dtype="float32", progress=False, **kw)
        streamed = probe.methods.steering_vector(model, str(hp.path), hn.path, site="state")
        assert streamed.layers == direct.layers == [0, 1] and streamed.parts == direct.parts
        for layer in direct.layers:
            torch.testing.assert_close(streamed.vectors[layer], direct.vectors[layer], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="another model"):
        probe.methods.steering_vector(tiny(layout=("qrnn", "lstm"), seed=1), hp.path, hn.path, site="state")
    small = harvest(model, pos, tmp_path / "small", sites=["state"], max_dim=4, progress=False)
    with pytest.raises(InputError, match="max_dim=None"):
        probe.methods.steering_vector(model, small.path, small.path, site="state")


def test_tuned_lens_trains_on_a_harvest(tmp_path):
    from probe.methods.lens import lens_batches

    model = tiny()
    data = [t for t, _ in labelled(n_seq=8, length=64)]
    h = harvest(model, np.stack(data), tmp_path / "h", sites=["resid_pre", "resid_post"], dtype="float32",
                shard_size=2, progress=False)
    resid, final = next(lens_batches(model, h, rows=50))
    with torch.no_grad():
        logits = model(torch.from_numpy(np.stack(data)))
    acts = h.activations()
    # each harvested row's read-out final stream is the model's own logits at that (sequence, position)
    last = torch.from_numpy(acts.features["1-resid_post"][:])
    from probe.methods.support.logit_readout import readout

    torch.testing.assert_close(readout(model, last), logits[acts.sequence, acts.position], rtol=1e-4, atol=1e-4)
    assert set(resid) == {0, 1} and resid[0].shape == (50, 32) and final.shape == (50, model.cfg.vocab_size)
    lens = probe.methods.TunedLens(model).fit(model, h.path, steps=30, batch_size=2, seq_len=32, lr=1e-2)
    assert lens.train_info["loss_last"] < 0.7 * lens.train_info["loss_first"]
    partial = harvest(model, np.stack(data), tmp_path / "p", sites=["resid_post"], progress=False)
    with pytest.raises(InputError, match="0-resid_pre"):
        probe.methods.TunedLens(model).fit(model, partial.path, steps=1)


MEASURE = """
import json, sys, tracemalloc
import numpy as np, pyarrow as pa, torch
torch.set_num_threads(1)
import pandas, pyarrow.parquet, sklearn.linear_model  # imported before measuring: code, not data
import probe.harvest
from probe.methods import fit_probes
tracemalloc.start()
res = fit_probes(sys.argv[1], "even", max_train=1000, max_test=500, control=False)
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory(),
                  "arrow": pa.default_memory_pool().max_memory(),
                  "scores": res.to_frame()["score"].tolist()}))
"""


@pytest.mark.slow
def test_fit_probes_streams_a_harvest_ten_times_its_memory_bound(tmp_path):
    """Features of 10x the bound on disk; fit_probes(folder) peaks under the bound (numpy/Python
    allocations by tracemalloc plus pyarrow's pool) and scores exactly as on the loaded dataset."""
    bound = 8 * 2**20
    model = tiny(layout=("qrnn", "qrnn"), d_model=96)
    data = labelled(n_seq=150, length=256, seed=1)
    h = harvest(model, data, tmp_path / "h", sites=["resid_pre", "resid_post", "mixer_out"], dtype="float32",
                shard_size=4, batch_size=8, progress=False)
    feature_bytes = sum(len(h) * f.dim * 4 for f in h.features.values())
    assert feature_bytes > 10 * bound
    out = subprocess.run([sys.executable, "-c", MEASURE, str(h.path)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["peak"] < bound, (got["peak"] / 2**20, got["arrow"] / 2**20, "MiB")
    acts = h.activations()
    acts.features = {k: np.asarray(v) for k, v in acts.features.items()}  # everything in memory
    ref = probe.methods.fit_probes(acts, "even", max_train=1000, max_test=500, control=False)
    np.testing.assert_allclose(got["scores"], ref.to_frame()["score"], rtol=1e-6)


def test_probe_harvest_command(tmp_path, capsys):
    from probe.cli import main

    model = tiny()
    model.save(tmp_path / "m")
    (tmp_path / "a.txt").write_text("import os\nprint(os.getcwd())\n" * 20)
    argv = ["harvest", str(tmp_path / "m"), str(tmp_path / "a.txt"), "--out", str(tmp_path / "h"), "--sites",
            "state", "--layers", "0", "--positions", "last", "--seq-len", "64", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "0-state" in out
    h = open_harvest(tmp_path / "h")
    n = 20 * len("import os\nprint(os.getcwd())\n") + 1  # the file and its end-of-text token
    assert len(h) == -(-n // 64) and (h.column("position") == [63] * (n // 64) + [n % 64 - 1]).all()
    assert main(argv[:-1] + ["--layers", "7", "--out", str(tmp_path / "h2")]) == 2
    assert "layer" in capsys.readouterr().err


def test_explorer_probe_tab_fits_a_harvest_folder(tmp_path):
    pytest.importorskip("streamlit")
    from app.views import probing as tab

    h = harvest(tiny(), labelled(n_seq=8), tmp_path / "h", sites=["state"], progress=False)
    frame = tab.fit_harvest(str(h.path))
    ref = probe.methods.fit_probes(h.path, max_train=tab.MAX_TRAIN, max_test=tab.MAX_TRAIN // 2).to_frame()
    assert list(frame["layer"]) == [0, 1] and frame["label"].eq("even").all()
    np.testing.assert_allclose(frame["score"], ref["score"])
    with pytest.raises(InputError, match="or a harvest folder"):
        tab.fit_harvest(str(tmp_path))
