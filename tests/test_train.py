"""The trainer: schedule, learning, pickle-free checkpoints, resume == straight through, the CLI."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import probe
from probe.cli import main
from probe.data import DataMix, TokenStream
from probe.errors import CheckpointError, InputError
from probe.train import TrainConfig, Trainer, train


def _stream(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    text = "".join(rng.choice(["def f(x):\n    return x\n", "class A:\n    pass\n", "import os\n"], size=n // 10))
    data = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)[:n]
    return TokenStream(data, len(data), name="toy")


def _model(layout=("qrnn", "attn"), seed=0):
    torch.manual_seed(seed)
    return probe.HookedLM(probe.ModelConfig(d_model=32, n_heads=2, d_mlp=64, layout=list(layout)))


CFG = dict(batch_size=4, seq_len=32, lr=1e-2, warmup_steps=2, eval_every=3, eval_windows=2, save_every=3, device="cpu")


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert [cfg.lr_at(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cfg.lr_at(10) == pytest.approx(1.0) and cfg.lr_at(60) == pytest.approx(0.55)
    assert cfg.lr_at(110) == pytest.approx(0.1) and cfg.lr_at(500) == pytest.approx(0.1)
    lrs = [cfg.lr_at(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_training_lowers_loss_and_validates(tmp_path):
    data, val = _stream(), _stream(600, seed=1)
    model = _model()
    before = probe.evaluate.evaluate_bpb(model, val, 32, 4)
    result = train(model, DataMix(data), TrainConfig(steps=25, **CFG), val, tmp_path, progress=False)
    assert result.step == 25 and result.tokens_seen == 25 * 4 * 32
    assert result.final_val_bpb < before - 2.0  # from ~8 bits (uniform over 257) to far less
    assert [h["step"] for h in result.history if "val_bpb" in h] == [3, 6, 9, 12, 15, 18, 21, 24, 25]
    loaded = probe.load(tmp_path / "model")
    assert torch.equal(loaded.W_E, model.W_E.cpu())


def test_checkpoints_hold_no_pickle(tmp_path):
    train(_model(), _stream(), TrainConfig(steps=3, **CFG), _stream(600, 1), tmp_path, progress=False)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["checkpoint/model/config.json", "checkpoint/model/model.safetensors",
                     "checkpoint/optimizer.safetensors", "checkpoint/trainer.json",
                     "model/config.json", "model/model.safetensors"]
    state = load_file(str(tmp_path / "checkpoint" / "optimizer.safetensors"))
    assert "rng.torch" in state and any(k.endswith(".exp_avg_sq") for k in state)
    info = json.loads((tmp_path / "checkpoint" / "trainer.json").read_text())
    assert info["step"] == 3 and info["param_groups"][0]["weight_decay"] == 0.1


@pytest.mark.parametrize("layout", [("qrnn", "attn"), ("lstm", "ff")])
def test_interrupted_and_resumed_equals_straight_through(tmp_path, layout):
    data, val = _stream(), _stream(600, seed=1)
    cfg = TrainConfig(steps=8, **CFG)
    straight = train(_model(layout), data, cfg, val, tmp_path / "a", progress=False)
    first = train(_model(layout), data, cfg, val, tmp_path / "b", progress=False, stop_after=4)  # "interrupted"
    assert first.step == 4
    # a fresh process: a new (differently initialised) model object picks the checkpoint up
    resumed = train(_model(layout, seed=123), data, cfg, val, tmp_path / "b", progress=False)
    assert resumed.step == 8 and resumed.tokens_seen == straight.tokens_seen
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h.get("val_bpb") for h in straight.history] == [h.get("val_bpb") for h in resumed.history]
    oa = load_file(str(tmp_path / "a" / "checkpoint" / "optimizer.safetensors"))
    ob = load_file(str(tmp_path / "b" / "checkpoint" / "optimizer.safetensors"))
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


def test_resume_refuses_other_settings(tmp_path):
    data = _stream()
    train(_model(), data, TrainConfig(steps=3, **CFG), None, tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="different training settings.*lr"):
        Trainer(_model(), data, TrainConfig(steps=3, **{**CFG, "lr": 0.5}), None, tmp_path)
    Trainer(_model(), data, TrainConfig(steps=3, **{**CFG, "lr": 0.5}), None, tmp_path, resume=False)  # fine


def test_bad_training_input():
    with pytest.raises(InputError, match="shorter than one training sequence"):
        Trainer(_model(), TokenStream(np.arange(20), 20), TrainConfig(steps=1, **CFG))
    with pytest.raises(InputError, match="needs a CUDA device"):
        Trainer(_model(), _stream(), TrainConfig(steps=1, **{**CFG, "amp": "bf16"}))
    with pytest.raises(InputError, match="steps must be a positive integer"):
        TrainConfig(steps=0)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            Trainer(_model(), _stream(), TrainConfig(steps=1, **{**CFG, "device": "cuda"}))


def test_cli_train_on_a_text_file(tmp_path, capsys):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "run"
    code = main(["train", "--text", str(corpus), "--layout", "qrnn,ff", "--d-model", "16", "--n-heads", "2",
                 "--steps", "3", "--batch-size", "2", "--seq-len", "16", "--eval-every", "0", "--out", str(out),
                 "--no-progress", "--device", "cpu", "--tasks", "induction", "--task-fraction", "0.5"])
    assert code == 0 and (out / "model" / "model.safetensors").is_file()
    assert "val bits-per-byte" in capsys.readouterr().out
    (tmp_path / "tiny.txt").write_text("abc")
    assert main(["train", "--text", str(tmp_path / "tiny.txt"), "--out", str(out), "--seq-len", "16"]) == 2
    assert "shorter than one sequence" in capsys.readouterr().err


def test_cli_parser_lists_commands():
    from probe.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    args = build_parser().parse_args(["zoo", "train", "qrnn", "--device", "cpu"])
    assert args.names == ["qrnn"] and args.device == "cpu" and callable(args.func)
    assert math.isclose(TrainConfig().lr_at(0), TrainConfig().lr / TrainConfig().warmup_steps)
    assert Path(probe.__file__).parent.joinpath("cli.py").is_file()


def test_curriculum_switches_mix_by_step_and_resumes_exactly(tmp_path):
    """A Curriculum's batch at step s is the batch of the stage holding s (the same rows as that
    mix alone would give), and an interrupted run resumed across the switch equals one straight run."""
    from probe.data import Curriculum
    from probe.data.tasks.recall import AssociativeRecall

    data, val = _stream(), _stream(600, seed=1)
    easy = DataMix(data, [AssociativeRecall(2, 3)], task_fraction=1.0)
    full = DataMix(data, ["recall", "brackets"], task_fraction=0.5)
    curriculum = Curriculum([(0, easy), (5, full)])
    assert [curriculum.mix_at(s) is m for s, m in ((0, easy), (4, easy), (5, full), (10**6, full))] == [True] * 4
    cfg = TrainConfig(steps=8, **CFG)
    trainer = Trainer(_model(), curriculum, cfg, None, progress=False)
    for step, mix in ((2, easy), (5, full), (7, full)):
        rng = np.random.default_rng([cfg.seed, step])
        assert torch.equal(trainer.batch(step), torch.from_numpy(mix.batch(rng, cfg.batch_size, cfg.seq_len)))
    assert not torch.equal(trainer.batch(4), Trainer(_model(), full, cfg, None, progress=False).batch(4))
    straight = train(_model(), curriculum, cfg, val, tmp_path / "a", progress=False)
    train(_model(), curriculum, cfg, val, tmp_path / "b", progress=False, stop_after=3)  # interrupted before the switch
    resumed = train(_model(seed=5), curriculum, cfg, val, tmp_path / "b", progress=False)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_curriculum_stage_shapes_set_the_batch_and_resume_exactly(tmp_path):
    """A stage with its own (batch_size, seq_len) gives batches of that shape (the rows its mix gives
    at that shape); stages without one use the config's; a run resumed across the switch equals one
    straight run, and the tokens seen count the real shapes."""
    from probe.data import Curriculum

    data, val = _stream(), _stream(600, seed=1)
    short = DataMix(data, ["recall"], task_fraction=0.5)
    full = DataMix(data, ["recall", "brackets"], task_fraction=0.5)
    cfg = TrainConfig(steps=6, **CFG)
    curriculum = Curriculum([(0, short, (2 * cfg.batch_size, cfg.seq_len // 2)), (3, full)])
    assert curriculum.shape_at(2, cfg.batch_size, cfg.seq_len) == (2 * cfg.batch_size, cfg.seq_len // 2)
    assert curriculum.shape_at(3, cfg.batch_size, cfg.seq_len) == (cfg.batch_size, cfg.seq_len)
    trainer = Trainer(_model(), curriculum, cfg, None, progress=False)
    first, later = (2 * cfg.batch_size, cfg.seq_len // 2), (cfg.batch_size, cfg.seq_len)
    for step, mix, shape in ((1, short, first), (4, full, later)):
        rng = np.random.default_rng([cfg.seed, step])
        batch = trainer.batch(step)
        assert tuple(batch.shape) == (shape[0], shape[1] + 1)
        assert torch.equal(batch, torch.from_numpy(mix.batch(rng, *shape)))
    straight = train(_model(), curriculum, cfg, val, tmp_path / "a", progress=False)
    train(_model(), curriculum, cfg, val, tmp_path / "b", progress=False, stop_after=2)
    resumed = train(_model(seed=5), curriculum, cfg, val, tmp_path / "b", progress=False)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    per_step = [2 * cfg.batch_size * (cfg.seq_len // 2)] * 3 + [cfg.batch_size * cfg.seq_len] * 3
    assert straight.tokens_seen == sum(per_step)


@pytest.mark.parametrize("stages, match", [
    ([], "at least one stage"),
    ([(0, "mix", (0, 8))], "two positive integers"),
    ([(0, "mix", 8)], "two positive integers"),
    ([(1, None)], "expected a DataMix"),
    ("x", "must be a \\(first_step, DataMix\\) pair"),
    ([(0, "mix", (4, 8), 1)], "must be a \\(first_step, DataMix\\) pair"),
    ([(-1, "mix")], "non-negative integer"),
    ([(2, "mix")], "start at step 0"),
    ([(0, "mix"), (0, "mix")], "strictly increasing"),
])
def test_curriculum_bad_stages_are_named(stages, match):
    from probe.data import Curriculum

    mix = DataMix(_stream())
    stages = [(first, mix if m == "mix" else m, *rest) for first, m, *rest in stages] if isinstance(stages, list) \
        else stages
    with pytest.raises(InputError, match=match):
        Curriculum(stages)
