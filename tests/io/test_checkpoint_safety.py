"""Saving never loses data: ``model.save`` keeps what else is in the folder and a process killed
(SIGKILL) at any step of a save leaves the old or the new checkpoint, never none and never a mix;
``Trainer`` checkpoints survive a kill at any step of their save and resume from the newest
complete one. Loading bounds its memory by the weight file before trusting the config.

The kill tests fork this process: the child runs the save with the file-system calls it makes
(``os.replace``, ``os.fsync``, ``os.mkdir``, ``os.unlink`` ...) counted, and kills itself with
SIGKILL just before call number k; k runs over every call the save makes.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

import probe
from probe.data import DataMix, TokenStream
from probe.errors import CheckpointError, InputError
from probe.methods import TunedLens
from probe.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill tests fork (POSIX)")

#: the file-system calls a save makes; the child dies just before one of them
FS_CALLS = ("replace", "rename", "remove", "unlink", "rmdir", "mkdir", "fsync")


def _model(seed: int, name: str) -> probe.HookedLM:
    torch.manual_seed(seed)
    return probe.HookedLM(probe.ModelConfig(d_model=32, n_heads=2, layout=["qrnn", "attn"], name=name))


def _run_killed_at(k: int, action) -> bool:
    """Run ``action()`` in a forked child that SIGKILLs itself before its k-th file-system call;
    True when it was killed, False when the action finished first."""
    pid = os.fork()
    if pid == 0:  # the child never returns to pytest
        code = 1
        try:
            calls = [0]

            def counted(fn):
                def call(*args, **kwargs):
                    if calls[0] == k:
                        os.kill(os.getpid(), signal.SIGKILL)
                    calls[0] += 1
                    return fn(*args, **kwargs)
                return call

            for name in FS_CALLS:
                setattr(os, name, counted(getattr(os, name)))
            action()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the save failed in the child (traceback above)"
    return False


def _kill_points(prepare, action, check) -> int:
    """For k = 0, 1, ...: ``prepare()``, run ``action`` killed before file-system call k, then
    ``check(k)``; until the action completes. Returns the number of kill points."""
    k = 0
    while True:
        prepare()
        killed = _run_killed_at(k, action)
        check(k if killed else None)
        if not killed:
            return k
        k += 1


# -- model.save -------------------------------------------------------------------------------
def _folder_with_extras(path: Path, model: probe.HookedLM) -> None:
    """A checkpoint of ``model`` with notes, a sub-folder and a tuned lens beside it."""
    if path.exists():
        shutil.rmtree(path)
    model.save(path)
    (path / "notes.txt").write_text("run 7: lr 3e-4")
    (path / "plots").mkdir()
    (path / "plots" / "loss.csv").write_text("1,2\n")
    TunedLens(model).save(path)


def _extras(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.name not in ("config.json", "model.safetensors"))


EXTRAS = ["notes.txt", "plots", "plots/loss.csv", "tuned_lens.json", "tuned_lens.safetensors"]


def test_save_keeps_the_folders_other_files(tmp_path):
    old, new = _model(0, "old"), _model(1, "new")
    path = tmp_path / "m"
    _folder_with_extras(path, old)
    new.save(path)
    assert _extras(path) == EXTRAS
    assert (path / "notes.txt").read_text() == "run 7: lr 3e-4"
    loaded = probe.load(path)
    assert loaded.cfg.name == "new" and torch.equal(loaded.W_E, new.W_E)
    TunedLens.load(path, old)  # the lens beside the model is still there and readable


def test_save_killed_at_every_step_leaves_old_or_new(tmp_path):
    """SIGKILL before each file-system call of a save: the folder always loads, as the old or
    the new checkpoint whole (config and weights of one save), the other files survive, and the
    next load leaves no temporary behind."""
    old, new = _model(0, "old"), _model(1, "new")
    path = tmp_path / "m"
    seen = []

    def check(k):
        loaded = probe.load(path)  # never "no checkpoint", never a mix
        source = {"old": old, "new": new}[loaded.cfg.name]
        assert torch.equal(loaded.W_E, source.W_E) and torch.equal(loaded.W_U, source.W_U), k
        assert _extras(path) == EXTRAS, k  # no temporaries either: the load cleaned them up
        seen.append(loaded.cfg.name)

    points = _kill_points(lambda: _folder_with_extras(path, old), lambda: new.save(path), check)
    assert points >= 6  # pending weights, its fsyncs, the config switch, the rename into place
    assert seen[0] == "old" and seen[-1] == "new" and "new" in seen[:-1]  # killed after the commit too


def test_save_refuses_a_file_and_a_foreign_folder(tmp_path):
    model = _model(0, "m")
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(InputError, match="is a file, not a folder"):
        model.save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["file"]

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(InputError, match="holds cat.jpg but no probe checkpoint.*overwrite=True"):
        model.save(foreign)
    assert os.listdir(foreign) == ["cat.jpg"]
    model.save(foreign, overwrite=True)
    assert sorted(os.listdir(foreign)) == ["cat.jpg", "config.json", "model.safetensors"]
    assert probe.load(foreign).cfg.name == "m"
    model.save(tmp_path / "empty")  # new and empty folders are fine
    (tmp_path / "empty2").mkdir()
    model.save(tmp_path / "empty2")


def test_save_through_a_symlink_writes_into_its_folder(tmp_path):
    target, link = tmp_path / "real", tmp_path / "link"
    _folder_with_extras(target, _model(0, "old"))
    link.symlink_to(target, target_is_directory=True)
    _model(1, "new").save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert probe.load(target).cfg.name == "new" and _extras(target) == EXTRAS


def test_mixed_files_of_two_saves_are_refused(tmp_path):
    """config.json of one save beside model.safetensors of another (same shapes, other weights)
    is an error, not a silently wrong model."""
    _model(0, "a").save(tmp_path / "a")
    _model(1, "b").save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match="written by another save.*mixes two checkpoints"):
        probe.load(tmp_path / "a")


# -- loading a crafted checkpoint -------------------------------------------------------------
def _peak_rss_growth_mb(action) -> float:
    """Peak resident memory growth (MB) of ``action()`` run in a forked child."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            action()
        except Exception:
            pass
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        os.write(write, f"{grown}".encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return float(f.read())


def test_a_crafted_vocab_size_is_refused_before_allocating(tmp_path):
    """A small checkpoint whose config claims vocab_size=4e6 would build 2 x 512 MB of embeddings;
    the loader compares the header's shapes first and never allocates them."""
    path = _model(0, "m").save(tmp_path / "m")
    payload = json.loads((path / "config.json").read_text())
    payload["config"]["vocab_size"] = 4_000_000
    (path / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"'W_E' .* has shape \(257, 32\) but the config implies \(4000000, 32\)"):
        probe.load(path)
    assert _peak_rss_growth_mb(lambda: probe.load(path)) < 200
    payload["config"]["vocab_size"] = 10**10  # 640 GB: refused as fast
    (path / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"has shape \(257, 32\) but the config implies \(10000000000, 32\)"):
        probe.load(path)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_checkpoints_load(tmp_path, dtype):
    model = _model(0, "m")
    model.save(tmp_path / "m", dtype=dtype)
    loaded = probe.load(tmp_path / "m")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.to(dtype).float()), name


# -- the explorer's model cache ---------------------------------------------------------------
def test_explorer_reloads_an_overwritten_checkpoint(tmp_path):
    pytest.importorskip("streamlit")
    from app import loading

    path = tmp_path / "m"
    _model(0, "first").save(path)
    assert loading.load_model(str(path)).cfg.name == "first"
    assert loading.load_model(str(path)).cfg.name == "first"
    _model(1, "second").save(path)
    assert loading.load_model(str(path)).cfg.name == "second"


def test_explorer_view_results_follow_an_overwritten_checkpoint(tmp_path):
    """Views cache their results under the source string (st.cache_data): after the checkpoint is
    saved again they must be computed from the new model, not served from the old one."""
    st = pytest.importorskip("streamlit")
    from app import loading

    @st.cache_data
    def logits_sum(source: str) -> float:
        return float(loading.load_model(source)(torch.arange(6)[None]).sum())

    path = tmp_path / "m"
    first, second = _model(0, "first"), _model(1, "second")
    first.save(path)
    loading.load_model(str(path))
    with torch.no_grad():
        expect_first, expect_second = (float(m(torch.arange(6)[None]).sum()) for m in (first, second))
    assert logits_sum(str(path)) == pytest.approx(expect_first, rel=1e-5)
    second.save(path)
    loading.load_model(str(path))  # what every view does first
    assert logits_sum(str(path)) == pytest.approx(expect_second, rel=1e-5)


# -- Trainer checkpoints ----------------------------------------------------------------------
CFG = dict(batch_size=2, seq_len=16, lr=1e-2, warmup_steps=1, eval_every=0, save_every=3, device="cpu", steps=20)


def _data() -> DataMix:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=2000).astype(np.int64)
    return DataMix(TokenStream(tokens, len(tokens), name="toy"))


def _trainer(out: Path) -> Trainer:
    return Trainer(_model(5, "t"), _data(), TrainConfig(**CFG), None, out, resume=True, progress=False)


def test_trainer_checkpoint_killed_at_every_step_resumes(tmp_path):
    """A complete checkpoint at step 3; a save of step 6 killed before each of its file-system
    calls: resuming always finds step 3 or step 6 with that step's weights (never step 0), and
    the next save keeps a resumable checkpoint."""
    base, out = tmp_path / "base", tmp_path / "run"
    _trainer(base).train(stop_after=3)
    straight = _trainer(tmp_path / "straight")
    straight.train(stop_after=3)
    weights_at = {3: {k: v.clone() for k, v in straight.model.state_dict().items()}}
    straight.train(stop_after=3)
    weights_at[6] = straight.model.state_dict()
    steps = []

    def prepare():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(base, out)

    def check(k):
        trainer = _trainer(out)
        assert trainer.step in (3, 6), (k, trainer.step)
        for name, value in trainer.model.state_dict().items():
            assert torch.equal(value, weights_at[trainer.step][name]), (k, name)
        assert sorted(os.listdir(out)) == ["checkpoint"], k  # stray copies cleaned up
        steps.append(trainer.step)
        trainer.step += 1
        trainer.save_checkpoint()  # the first save after a kill deletes nothing it needs
        assert sorted(os.listdir(out)) == ["checkpoint"], k
        assert json.loads((out / "checkpoint" / "trainer.json").read_text())["step"] == trainer.step, k

    straight.out_dir = out  # the child writes the step-6 state into the copy of base
    points = _kill_points(prepare, straight.save_checkpoint, check)
    assert points >= 10
    assert steps[0] == 3 and steps[-1] == 6 and 6 in steps[:-1]  # killed after the new one was complete too


def test_trainer_refuses_an_incomplete_checkpoint_folder(tmp_path):
    (tmp_path / "checkpoint").mkdir(parents=True)
    (tmp_path / "checkpoint" / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="holds no trainer.json.*resume=False"):
        _trainer(tmp_path)
