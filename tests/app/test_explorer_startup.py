"""The explorer's first page needs no torch: its title and every sidebar picker are drawn before
any model code is imported, so a user sees them while the first model loads.

Checked in a fresh Python (the test process has torch imported already) whose import system
refuses ``torch``: the page must still show its title, both model pickers and the input box, and
say under each picker that the model could not load (not crash). The timing itself is measured
by benchmarks/explorer_startup.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked by the test")
        return None

sys.meta_path.insert(0, NoTorch())
from streamlit.testing.v1 import AppTest

at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
print(json.dumps({
    "title": [t.value for t in at.title],
    "pickers": {s.label: list(s.options) for s in at.sidebar.selectbox},
    "text_areas": [t.label for t in at.sidebar.text_area],
    "sidebar_errors": [e.value for e in at.sidebar.error],
    "exceptions": [str(e.value) for e in at.exception],
    "torch_imported": "torch" in sys.modules,
}))
"""


def test_title_and_sidebar_are_drawn_without_torch():
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT / "app" / "explorer.py")], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    page = json.loads(run.stdout.strip().splitlines()[-1])
    assert page["title"] == ["probe explorer"]
    assert set(page["pickers"]) == {"Model A", "Model B"}, page
    assert all("zoo: transformer" in options or "demo: transformer (untrained)" in options
               for options in page["pickers"].values()), page["pickers"]
    assert page["text_areas"] == ["Text"]
    # each model's load failed for want of torch and says so under its picker; nothing crashed
    assert len(page["sidebar_errors"]) == 2 and all("torch is blocked" in e for e in page["sidebar_errors"]), page
    assert not page["exceptions"], page["exceptions"]
    assert not page["torch_imported"]
