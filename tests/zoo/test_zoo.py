"""The model zoo: matched recipes, shipped checkpoints that reproduce their cards, the table,
clear errors, and a cheap form of "probe zoo train ARCH reproduces the card" (a tiny run of
the recipe is deterministic)."""
import sys

import pytest
import torch
from safetensors.torch import load_file

import probe
from probe.cli import main
from probe.data.code_corpus import CodeCorpus, stdlib_stream
from probe.errors import CheckpointError, ConfigError
from probe.evaluate import evaluate_bpb
from probe.loading import ZOO_DIR, zoo_names
from probe.zoo.cards import (
    EVAL_SEQ_LEN, QUICK, above_chance, not_learned, read_card, render_readme, task_metrics, zoo_cards,
)
from probe.zoo.recipes import PARAM_TOLERANCE, RECIPES, TARGET_PARAMS, TRAIN, get_recipe

SHIPPED = zoo_names()
ALL = ["transformer", "lstm", "qrnn", "qrnn-hybrid", "lmu", "lmu-attn", "hgrn2", "mamba", "xlstm", "rwkv",
       "mamba2", "gdn"]


def test_twelve_recipes_with_matched_parameter_counts():
    assert list(RECIPES) == ALL
    counts = {}
    for name, recipe in RECIPES.items():
        assert recipe.available(), f"{name}: mixers {recipe.mixers} not registered"
        cfg = recipe.config()
        assert cfg.vocab_size == 257 and cfg.tokenizer == "byte"
        counts[name] = recipe.n_params()
        assert abs(counts[name] - TARGET_PARAMS) <= PARAM_TOLERANCE * TARGET_PARAMS, (name, counts[name])
    assert max(counts.values()) <= 1.10 * min(counts.values()), counts
    assert RECIPES["qrnn-hybrid"].layout == ("qrnn", "qrnn", "attn", "ff")
    assert RECIPES["lmu-attn"].layout[-1] == "attn" and set(RECIPES["lmu-attn"].layout[:-1]) == {"lmu"}
    assert RECIPES["xlstm"].layout.count("slstm") == 1 and "mlstm" in RECIPES["xlstm"].layout
    assert RECIPES["mamba2"].layout == ("mamba2",) * 8 and RECIPES["mamba2"].d_mlp == 0  # as Mamba: no MLP


def test_unknown_zoo_names_list_the_valid_ones(capsys):
    with pytest.raises(ConfigError, match="Unknown zoo architecture 'mambo'.*'mamba'.*Valid: transformer, lstm"):
        get_recipe("mambo")
    with pytest.raises(CheckpointError, match="No zoo model named 'mambo'"):
        probe.load("zoo:mambo")
    assert main(["zoo", "train", "mambo"]) == 2
    assert "Valid: transformer" in capsys.readouterr().err


def test_the_zoo_is_small_fp16_and_documented(capsys):
    assert SHIPPED, "no zoo model is shipped"
    total = 0
    for name in SHIPPED:
        weights = ZOO_DIR / name / "model.safetensors"
        total += weights.stat().st_size
        assert all(t.dtype == torch.float16 for t in load_file(str(weights)).values())
    assert total < 60e6
    assert (ZOO_DIR / "README.md").read_text() == render_readme(zoo_cards()), "run `probe zoo card --no-eval`"
    assert main(["zoo", "list", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| model |" in out and all(f"`{n}`" in out for n in SHIPPED)


@pytest.fixture(scope="module")
def val_stream():
    return stdlib_stream("val")


@pytest.mark.numerical
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_reproduces_its_card(name, val_stream):
    model = probe.load(f"zoo:{name}")
    card = read_card(ZOO_DIR / name)
    assert card["name"] == name and model.cfg.layout == card["layout"] == list(RECIPES[name].layout)
    assert card["params"] == sum(p.numel() for p in model.parameters())
    assert card["tokens_seen"] == TRAIN.steps * TRAIN.batch_size * TRAIN.seq_len  # same tokens for every model
    assert card["train"]["steps"] == TRAIN.steps and card["seed"] == TRAIN.seed
    for key in ("hardware", "train_seconds", "code_version", "unigram_bpb"):
        assert card[key] not in (None, "", "unknown")
    # a quick re-evaluation on a small slice gives the card's numbers
    quick = card["quick"]
    bpb = evaluate_bpb(model, val_stream, EVAL_SEQ_LEN, quick["windows"])
    same_corpus = card["data"]["corpus_python"] == sys.version.split()[0]
    assert bpb == pytest.approx(quick["val_bpb"], abs=2e-3 if same_corpus else 0.3)
    tasks, pairs = task_metrics(model, QUICK["examples"], QUICK["seed"])
    for task, value in quick["tasks"].items():
        assert tasks[task]["pair_accuracy"] == pytest.approx(value, abs=0.02), task
        assert pairs[task] == pytest.approx(quick["minimal_pairs"][task], abs=0.05), task
    # it learned: far below the unigram baseline, and the tasks beyond chance
    assert card["val_bpb"] < card["unigram_bpb"] - 2.0
    for task in ("induction", "brackets", "recall", "agreement"):  # beyond chance by 3 binomial SE
        assert task not in not_learned(card), (task, card["tasks"][task])
        assert card["tasks"][task]["answers"] >= card["eval"]["task_examples"]
    assert card["tasks"]["agreement"]["pair_accuracy"] > 0.55
    # minimal pairs: at least 2 binomial SE above chance
    assert above_chance(card["minimal_pairs"]["agreement"], card["eval"]["task_examples"], z=2.0)


def test_zoo_curriculum_keeps_tokens_per_step_and_teaches_recall_with_few_pairs(tmp_path, monkeypatch):
    """The zoo trains on STAGES: every stage sees TRAIN's tokens per step (so the card's tokens are
    steps x batch x seq_len), the first in more, shorter rows with 2-4-pair recall and half of the
    rows recall; batches are the stage mix's rows at the stage's shape, and a bad split is named."""
    import numpy as np

    from probe.data.tasks.recall import AssociativeRecall
    from probe.zoo.build import zoo_data
    from probe.zoo.recipes import STAGES, Stage

    streams = tmp_path / "streams"
    for split in ("train", "val"):
        CodeCorpus(split, max_files=2).stream().save(streams / f"stdlib-{split}.safetensors")
    monkeypatch.setenv("PROBE_STDLIB_STREAMS", str(streams))
    data = zoo_data().curriculum
    assert data.firsts == [s.first_step for s in STAGES] and data.firsts[0] == 0 and data.firsts[-1] < TRAIN.steps
    for i, (stage, mix) in enumerate(zip(STAGES, data.mixes)):
        step = stage.first_step
        b, length = data.shape_at(step, TRAIN.batch_size, TRAIN.seq_len)
        assert b * length == TRAIN.batch_size * TRAIN.seq_len, (i, b, length)
        recall = [t for t in mix.tasks if isinstance(t, AssociativeRecall)]
        assert len(recall) == 1 and (recall[0].min_pairs, recall[0].max_pairs) == stage.recall_pairs
        batch = data.mix_at(step).batch(np.random.default_rng([0, step]), b, length)
        assert batch.shape == (b, length + 1)
    first = STAGES[0]
    assert data.shape_at(0, 16, 256) == (64, 64) and first.recall_pairs == (2, 4)
    assert first.task_fraction * first.task_weights[1] / sum(first.task_weights) == pytest.approx(0.5)
    assert data.shape_at(TRAIN.steps - 1, 16, 256) == (16, 256) and STAGES[-1].recall_pairs == (3, 8)
    with pytest.raises(ConfigError, match="seq_len 30 is not a multiple of 4"):
        Stage(0, 0.5, (1, 1, 1, 1), split=4).shape(2, 30)


def test_tiny_recipe_run_is_deterministic(tmp_path, monkeypatch):
    """`probe zoo train ARCH` repeats itself: two tiny runs of a recipe give the same bytes."""
    streams = tmp_path / "streams"
    for split in ("train", "val"):
        CodeCorpus(split, max_files=2).stream().save(streams / f"stdlib-{split}.safetensors")
    monkeypatch.setenv("PROBE_STDLIB_STREAMS", str(streams))
    from probe.zoo.build import train_zoo_model

    small = dict(steps=2, batch_size=2, seq_len=32, eval_windows=2, warmup_steps=1)
    paths = [train_zoo_model("qrnn-hybrid", tmp_path / run, device="cpu", progress=False, evaluate=False, **small)
             for run in ("a", "b")]
    a, b = (load_file(str(p / "model.safetensors")) for p in paths)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = read_card(paths[0])
    assert card["steps"] == 2 and card["tokens_seen"] == 2 * 2 * 32 and card["params"] == RECIPES["qrnn-hybrid"].n_params()
    assert card["train"]["lr"] == TRAIN.lr and card["data"]["tasks"] == ["agreement", "recall", "induction", "brackets"]
    assert probe.load(paths[0]).cfg.layout == ["qrnn", "qrnn", "attn", "ff"]


def test_zoo_readme_includes_the_result_sections(tmp_path):
    """The sections written by the zoo scripts (tuned lens, probes/patching/steering) land in the README."""
    from probe.zoo.cards import RESULTS

    (tmp_path / "methods").mkdir()
    (tmp_path / "lens.md").write_text("| model | layer |\n")
    (tmp_path / "methods" / "tables.md").write_text("### Linear probes\n")
    (tmp_path / "recall_study.md").write_text("| model | learned at step |\n")
    text = render_readme(zoo_cards(), tmp_path)
    for title, command in RESULTS.values():
        assert f"## {title}" in text and command in text
    assert "| model | layer |" in text and "### Linear probes" in text and "| model | learned at step |" in text
    assert "## " + RESULTS["lens.md"][0] not in render_readme(zoo_cards(), tmp_path / "absent")


def test_curriculum_description_follows_the_stages():
    """The zoo README's curriculum sentence is generated from ``STAGES``: a changed stage changes it."""
    from probe.zoo.recipes import STAGES, TRAIN, Stage, describe_curriculum

    text = describe_curriculum()
    assert text.startswith("steps 0-999: 64 rows of 64 tokens, 75% task rows") and f"-{TRAIN.steps - 1}:" in text
    assert text.count("steps ") == len(STAGES) and "50% of all rows recall, 2-4 pairs" in text
    other = describe_curriculum((Stage(0, 0.5, (1, 1, 1, 1), (2, 3), split=2),), TRAIN)
    assert other == (f"steps 0-{TRAIN.steps - 1}: 32 rows of 128 tokens, 50% task rows (weights agreement 1, "
                     "recall 1, induction 1, brackets 1; 12% of all rows recall, 2-3 pairs)")


def test_agreement_scores_split_by_the_nearest_noun():
    """Cards break agreement down by attractor condition: the groups partition the examples, their
    scores average back to the task's, each label matches the example's nouns, and the README
    renders the split for every card that has it."""
    from probe.data.tasks import get_task
    from probe.evaluate import task_scores
    from probe.zoo.cards import condition_scores, render_conditions

    task = get_task("agreement")
    examples = task.examples(90, seed=5)
    for e in examples:
        label = task.condition(e)
        plural = e.meta["attractor_plural"]
        assert label == ("no attractor" if not plural else
                         "attractor agrees" if plural[-1] == e.meta["plural"] else "attractor disagrees")
    assert get_task("recall").condition(get_task("recall").examples(1)[0]) is None
    model = probe.load("zoo:qrnn-hybrid")
    by = condition_scores(model, task, examples)
    assert list(by) == [c for c in task.CONDITIONS if c in by] and len(by) == 3
    assert sum(v["answers"] for v in by.values()) == len(examples)
    overall = task_scores(model, examples)["pair_accuracy"]
    assert sum(v["pair_accuracy"] * v["answers"] for v in by.values()) / len(examples) == pytest.approx(overall, abs=1e-3)
    table = render_conditions([{"name": "m", "tasks": {"agreement": {"by_condition": by}}}])
    assert "| `m` |" in table and all(f"{c} (n)" in table for c in by)
    stored = {"name": "m", "tasks": {"agreement": {"by_condition": dict(sorted(by.items()))}}}  # as card.json keeps it
    header = render_conditions([stored]).splitlines()[2]
    assert [h.strip().removesuffix(" (n)") for h in header.strip("|").split("|")][1:] == list(task.CONDITIONS)
    assert render_conditions([{"name": "m", "tasks": {"agreement": {"pair_accuracy": 0.5}}}]) == ""


def test_cpu_timing_rescaled_by_a_reference_timed_in_the_same_run(monkeypatch):
    """A model re-timed on another machine is scaled by the reference recipe timed now and in its card:
    own_now x reference_then / reference_now; the table cell says so."""
    from probe.zoo import cards, timing as zoo_timing

    now = {"transformer": 0.6, "lmu": 0.9}
    monkeypatch.setattr(zoo_timing, "cpu_timing", lambda name, threads=2: {
        "seconds_per_step": now[name], "minutes": now[name] * TRAIN.steps / 60, "threads": threads})
    reference = {"name": "transformer", "cpu_timing": {"seconds_per_step": 0.2}}
    timing = zoo_timing.scaled_cpu_timing("lmu", reference)
    assert timing["seconds_per_step"] == pytest.approx(0.3) and timing["minutes"] == pytest.approx(0.3 * TRAIN.steps / 60, abs=0.05)
    assert timing["scaled_by"] == {"model": "transformer", "reference_then": 0.2, "reference_now": 0.6, "measured_now": 0.9}
    row = cards.render_table([{"name": "lmu", "cpu_timing": timing}]).splitlines()[-1]
    assert "0.30 s/step" in row and "scaled: 0.90 s/step measured with `transformer` at 0.60 (its column: 0.20)" in row
    assert main(["zoo", "card", "--scale-to", "transformer", "--no-eval"]) == 2  # --scale-to needs --cpu-timing
