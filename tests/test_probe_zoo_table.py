"""The zoo table script (examples/probe_zoo_table.py) on tiny random models: it runs end to end and
writes the hidden-vs-state, patching and steering tables."""
import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).parents[1] / "examples" / "probe_zoo_table.py"


def test_zoo_table_script_on_tiny_random_models(tmp_path):
    spec = importlib.util.spec_from_file_location("probe_zoo_table", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # two models: the second must see the same agreement data as the first (a shadowed variable broke it)
    out = script.main(["--random-tiny", "qrnn-hybrid", "lstm", "--code-bytes", "6000", "--sentences", "40", "--pairs", "3",
                       "--fit-rows", "800", "--stride", "8", "--out", str(tmp_path)])
    summary = out["probe_summary"]
    assert set(summary["label"]) >= {"in_string", "number"} and set(summary["model"]) == {"qrnn-hybrid", "lstm"}
    assert np.isfinite(summary["hidden"]).all() and np.isfinite(summary["state"]).all()
    patch = out["patching"]
    assert set(patch["task"]) == {"recall", "agreement"} and set(patch["site"]) == {"state", "resid_pre", "mixer_out"}
    assert set(out["patching_agreement"]["site"]) == {"state", "resid_pre", "mixer_out"}
    assert set(out["steering"]["site"]) == {"resid_pre", "state"}
    text = (tmp_path / "tables.md").read_text()
    assert "hidden / state" in text and "| qrnn-hybrid |" in text
    assert {p.name for p in tmp_path.glob("*.csv")} >= {"probes.csv", "patching.csv", "steering.csv", "probe_summary.csv"}
