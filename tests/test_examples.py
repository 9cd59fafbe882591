"""Every examples/*.py runs as a script (a subprocess, small arguments) and prints what it promises.

Each entry: the arguments that keep the run short, and strings its output must contain. A new example
must be added here (the first test fails otherwise), so none goes untested. The scripts run with one
intra-op thread (as the rest of the suite: on a busy machine torch's threads wait on each other) and
with ``PROBE_STDLIB_STREAMS`` pointing at stdlib splits of two files each.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script -> (arguments; {out} is a temporary directory, output must contain every string in expect)
RUNS = {
    "attribution.py": (["--until", "0.1", "--out", "{out}"], ["parts sum to", "completeness error"]),
    "logit_lens.py": (["--steps", "3", "--seq-len", "32", "--windows", "2", "--out", "{out}"],
                      ["tuned lens trained in", "held-out KL"]),
    "memory_map.py": (["--text", "x = [1, 2]\nx[0]", "--out", "{out}"], ["reconstruction_error", "figures in"]),
    "patching.py": (["--sites", "state", "--out", "{out}"], ["clean", "pearson", "state"]),
    "probing.py": (["--n", "24", "--out", "{out}"], ["hidden vs state", "number"]),
    "steering.py": (["--tokens", "0"], ["coefficient", "resid_pre"]),
    "import_hf.py": (["--arch", "rwkv"], ["max |probe - transformers| logit difference", "hook_state"]),
    "import_transformer_lens.py": ([], ["max |bridge - converted| logits", "logit lens"]),
    "recall_study.py": (["--models", "lstm", "--steps", "2", "--eval-every", "1", "--examples", "8", "--batch", "2",
                         "--seq-len", "64", "--markdown", "{out}/recall.md"], ["learned at step", "| lstm | not in 2 |"]),
}
# scripts run by another test on tiny random models (see the reason)
SKIP = {
    "lens_zoo_table.py": "tests/methods/test_lens.py runs it with --tiny",
    "probe_zoo_table.py": "tests/test_probe_zoo_table.py runs it with --random-tiny",
}
#: the zoo-wide studies: a quick run by default, the full study with --full (examples/_sizes.py)
STUDIES = ["lens_zoo_table.py", "probe_zoo_table.py", "recall_study.py"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses' environment: one thread, small stdlib splits."""
    from probe.data.code_corpus import CodeCorpus

    streams = tmp_path_factory.mktemp("streams")
    for split in ("val", "test"):
        CodeCorpus(split, max_files=2).stream().save(streams / f"stdlib-{split}.safetensors")
    return dict(os.environ, PROBE_STDLIB_STREAMS=str(streams), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def scripts() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def _sizes_module():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import _sizes
    finally:
        sys.path.pop(0)
    return _sizes


def test_presets_fill_only_unset_options():
    import argparse

    sizes = _sizes_module()
    quick, full = {"steps": 30, "models": ["lstm"]}, {"steps": 250, "models": None}
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int)
    parser.add_argument("--models", nargs="*")
    sizes.add_full_flag(parser, quick, full)
    assert vars(sizes.apply(parser.parse_args([]), quick, full)) == {"steps": 30, "models": ["lstm"], "full": False}
    assert vars(sizes.apply(parser.parse_args(["--full"]), quick, full)) == {"steps": 250, "models": None, "full": True}
    assert sizes.apply(parser.parse_args(["--full", "--steps", "7"]), quick, full).steps == 7


@pytest.mark.parametrize("script", STUDIES)
def test_zoo_study_says_how_to_run_the_full_study(script, env):
    """The docstring's first paragraphs name the --full command, and --help lists both presets."""
    head = (EXAMPLES / script).read_text().split("from __future__")[0]
    assert f"python examples/{script} --full" in head, f"{script}: say at the top how to run the full study"
    run = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--full" in run.stdout and "instead of the quick one" in " ".join(run.stdout.split())


def test_every_example_is_run_here():
    missing = [s for s in scripts() if s not in RUNS and s not in SKIP]
    assert not missing, f"add these examples to RUNS in tests/test_examples.py: {missing}"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", [s for s in RUNS if (EXAMPLES / s).exists()])
def test_example_runs(script, tmp_path, env):
    args, expect = RUNS[script]
    if script.startswith("import_"):
        pytest.importorskip("transformers")
    cmd = [sys.executable, str(EXAMPLES / script)] + [a.format(out=tmp_path / "out") for a in args]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, f"{script} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    for text in expect:
        assert text in run.stdout, f"{script} output lacks {text!r}:\n{run.stdout[-2000:]}"
    if "{out}" in args:
        assert any((tmp_path / "out").iterdir()), f"{script} wrote no figure"
