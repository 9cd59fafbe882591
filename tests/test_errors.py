"""Error behaviour beyond the fuzz table (tests/test_fuzz.py, where every bad-input case of the public
entry points lives): errors keep the model clean, unknown cache keys stay ``KeyError``s, checkpoints
hold no pickle and are replaced atomically."""
import pytest
import torch

import probe
from conftest import make_model, tokens


def test_hooks_removed_when_a_hook_raises():
    model = make_model("qrnn")

    def boom(t, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(tokens(1, 4), fwd_hooks=[("blocks.0.mixer.hook_state", boom)])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
    # a malformed hook list is refused before anything is attached
    with pytest.raises(probe.InputError):
        model.run_with_hooks(tokens(1, 4), fwd_hooks=[("hook_embed", lambda t, hook: None), ("hook_embed", 3)])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values()) and model.context_level == 0


def test_unknown_cache_keys_are_key_errors():
    """``UnknownHookError`` is a ``KeyError`` too, so ``key in cache`` and dict-style handling keep working."""
    _, cache = make_model("qrnn").run_with_cache(tokens(1, 4), names_filter=["blocks.0.hook_resid_post"])
    with pytest.raises(KeyError, match="Did you mean"):
        cache["blocks.0.hook_resid_postt"]
    assert "blocks.0.hook_resid_pre" not in cache and "blocks.0.hook_resid_post" in cache


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


def test_saved_files_are_readable_per_umask_and_lens_saves_atomically(tmp_path):
    """safetensors and tempfile create private files (0600 / 0700); saved checkpoints and tuned
    lenses get the process umask's permissions instead, and a lens save leaves no temporary file."""
    import os
    import stat

    from probe.io.checkpoint import default_mode
    from probe.methods import TunedLens

    model = make_model("qrnn", seed=0)
    model.save(tmp_path / "m")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "m") == default_mode(directory=True)
    assert {mode(p) for p in (tmp_path / "m").iterdir()} == {default_mode()}
    lens = TunedLens(model)
    lens.save(tmp_path / "m")
    assert {mode(p) for p in (tmp_path / "m").iterdir()} == {default_mode()}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "model.safetensors", "tuned_lens.json", "tuned_lens.safetensors"]
    again = TunedLens.load(tmp_path / "m", model)
    assert torch.equal(again.weight, lens.weight)
