"""The API reference builds from the docstrings with every warning an error (``mkdocs build --strict``,
the command ``bash scripts/dev.sh docs`` runs), and each page documents its modules."""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_api_reference_builds_strict(tmp_path):
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    methods = (site / "api" / "methods.html").read_text()
    for name in ("logit_lens", "activation_patching", "fit_probes", "steering_vector", "memory_map"):
        assert f'id="probe.methods.' in methods and name in methods, f"{name} missing from the methods page"
    model = (site / "api" / "model.html").read_text()
    assert 'id="probe.model.HookedLM.run_with_cache"' in model
