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


def test_declared_option_defaults_are_valid_and_resolved():
    """Every mixer declares each option with a check its own default passes, and
    ``ModelConfig.options`` gives the defaults updated with the given values."""
    from probe.mixers import MIXERS
    from probe.mixers.options import Option, defaults

    for mixer, cls in MIXERS.items():
        for name, spec in cls.OPTIONS.items():
            assert isinstance(spec, Option), (mixer, name)
            spec.check(mixer, name, spec.default)
    cfg = probe.ModelConfig(layout=["qrnn"], mixer_options={"qrnn": {"window": 3}})
    assert cfg.options("qrnn") == {**defaults(MIXERS["qrnn"].OPTIONS), "window": 3}
    assert cfg.options("qrnn")["d_hidden"] is None


def test_a_hook_may_run_its_model_when_it_does_not_recurse():
    """Only a run that reaches the running hook again is refused: a hook on the logits may run the
    model up to layer 1, and the model is clean and usable after a refused recursion."""
    model, x = make_model("qrnn"), tokens(1, 5)
    seen = []

    def partial_rerun(t, hook):
        seen.append(model(x, stop_at_layer=1).shape)

    out = model.run_with_hooks(x, fwd_hooks=[("hook_logits", partial_rerun)])
    assert seen == [(1, 5, 32)] and torch.equal(out, model(x))

    def full_rerun(t, hook):
        model(x)

    with pytest.raises(probe.InputError, match="ran the model it hooks"):
        model.run_with_hooks(x, fwd_hooks=[("hook_logits", full_rerun)])
    assert not any(hp.has_hooks() for hp in model.hook_dict.values()) and model.context_level == 0
    assert torch.equal(model(x), out)


def test_the_recursion_check_is_per_thread():
    """One hook (permanent, so shared) run by several threads at once is no recursion."""
    import threading

    model, x = make_model("qrnn"), tokens(1, 5)
    calls, errors = [], []
    model.add_hook("blocks.0.hook_resid_pre", lambda t, hook: calls.append(1), is_permanent=True)

    def run():
        try:
            model(x)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model.reset_hooks(including_permanent=True)
    assert errors == [] and len(calls) == 4
