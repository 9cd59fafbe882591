"""Bad input gets a clear error naming the problem (and never a deep torch traceback)."""
import json

import pytest
import torch

import probe
from conftest import make_model, tokens


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layout=["qrnn", "lstn"]), "Unknown mixer 'lstn'.*Did you mean 'lstm'"),
        (dict(layout="qrnn"), "layout must be a list"),
        (dict(layout=[]), "layout is empty"),
        (dict(d_model=30, n_heads=4), "d_model=30 is not divisible by n_heads=4"),
        (dict(layout=["attn"], n_layers=3), "n_layers=3 but layout has 1"),
        (dict(norm="batchnorm"), "norm='batchnorm' is not one of"),
        (dict(mixer_options={"qrnn": {"widow": 2}}, layout=["qrnn"]), "Unknown option 'widow'.*'window'"),
        (dict(mixer_options={"qrnm": {}}), "unknown mixer 'qrnm'"),
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(mlp_layout=["gelu", "gelo"]), "Unknown MLP kind 'gelo'"),
    ],
)
def test_bad_configs(kwargs, message):
    with pytest.raises(probe.ConfigError, match=message):
        probe.HookedLM(probe.ModelConfig(**kwargs))


def test_bad_tokens():
    model = make_model("qrnn")
    with pytest.raises(probe.InputError, match="Token id 300 is out of range for vocab_size=257"):
        model(torch.tensor([[1, 300]]))
    with pytest.raises(probe.InputError, match="Token id -1"):
        model(torch.tensor([[1, -1]]))
    with pytest.raises(probe.InputError, match="integer ids, got dtype torch.float32"):
        model(torch.rand(1, 4))
    with pytest.raises(probe.InputError, match="Empty input"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(probe.InputError, match="The text is empty"):
        model("", prepend_bos=False)
    with pytest.raises(probe.InputError, match="shape \\[batch, pos\\]"):
        model(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(probe.InputError, match="return_type"):
        model(tokens(1, 3), return_type="logit")


def test_unknown_hook_names_suggest_near_matches():
    model = make_model("qrnn")
    with pytest.raises(probe.UnknownHookError, match="Did you mean 'blocks.0.hook_resid_pre'"):
        model.run_with_hooks(tokens(1, 4), fwd_hooks=[("blocks.0.hook_resid_pree", lambda t, hook: t)])
    with pytest.raises(probe.UnknownHookError, match="blocks.1.mixer.hook_state"):
        model.run_with_cache(tokens(1, 4), names_filter=["blocks.1.mixer.hook_stat"])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
    _, cache = model.run_with_cache(tokens(1, 4), names_filter=["blocks.0.hook_resid_post"])
    with pytest.raises(probe.UnknownHookError, match="was not cached"):
        cache["blocks.0.hook_resid_pre"]
    with pytest.raises(KeyError, match="Did you mean"):
        cache["blocks.0.hook_resid_postt"]


def test_hooks_removed_when_a_hook_raises():
    model = make_model("qrnn")

    def boom(t, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(tokens(1, 4), fwd_hooks=[("blocks.0.mixer.hook_state", boom)])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_bad_states():
    model = make_model("hybrid_qrnn_attn_ff")
    _, st = model(tokens(2, 5), return_states=True)
    with pytest.raises(probe.InputError, match="batch 2, input has batch 1"):
        model(tokens(1, 3), states=st)
    with pytest.raises(probe.InputError, match="ModelState"):
        model(tokens(2, 3), states={"not": "a state"})
    other = make_model("lstm")
    _, wrong = other(tokens(2, 5), return_states=True)
    with pytest.raises(probe.InputError):
        model(tokens(2, 3), states=wrong)


def test_hook_changing_shape_is_named():
    model = make_model("qrnn")
    with pytest.raises(ValueError, match="hooks must keep the shape"):
        model.run_with_hooks(tokens(1, 5), fwd_hooks=[("blocks.0.mixer.hook_state", lambda t, hook: t[:, :2])])


def test_checkpoint_errors(tmp_path):
    model = make_model("qrnn")
    path = model.save(tmp_path / "m")
    with pytest.raises(probe.CheckpointError, match="not a zoo name.*existing checkpoint directory"):
        probe.load(tmp_path / "nothing" / "here")
    with pytest.raises(probe.CheckpointError, match="No zoo model named 'mambo'"):
        probe.load("zoo:mambo")
    # config that does not match the weights
    cfg = json.loads((path / "config.json").read_text())
    cfg["config"]["d_model"] = 48
    cfg["config"]["d_mlp"] = 64
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(probe.CheckpointError, match="has shape"):
        probe.load(path)
    # malformed json
    (path / "config.json").write_text("{not json")
    with pytest.raises(probe.CheckpointError, match="not valid JSON"):
        probe.load(path)
    # unknown field
    cfg["config"]["d_model"] = 32
    cfg["config"]["frobnicate"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(probe.CheckpointError, match="Unknown config field 'frobnicate'"):
        probe.load(path)
    # truncated weights
    del cfg["config"]["frobnicate"]
    (path / "config.json").write_text(json.dumps(cfg))
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(probe.CheckpointError, match="not a readable safetensors"):
        probe.load(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(probe.CheckpointError, match="no model.safetensors"):
        probe.load(path)
    (path / "config.json").unlink()
    with pytest.raises(probe.CheckpointError, match="has no config.json"):
        probe.load(path)


def test_no_pickle_in_checkpoints(tmp_path):
    path = make_model("lstm").save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert (path / "model.safetensors").read_bytes()[8:9] == b"{"  # safetensors header, not a pickle


def test_save_overwrites_atomically(tmp_path):
    a, b = make_model("qrnn", seed=0), make_model("qrnn", seed=1)
    a.save(tmp_path / "m")
    b.save(tmp_path / "m")
    loaded = probe.load(tmp_path / "m")
    assert torch.equal(loaded(tokens(1, 4)), b(tokens(1, 4)))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
