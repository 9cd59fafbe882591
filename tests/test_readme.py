"""README.md: every ```python block runs, in order, in one namespace (the tour on the shipped zoo),
and every picture it shows exists."""
import re
from pathlib import Path

import pytest

import probe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def test_readme_shows_setup_and_existing_pictures():
    for command in ("bash scripts/dev.sh explore", "bash scripts/dev.sh test"):
        assert command in README
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert "docs/explorer.png" in pictures and "docs/zoo_logit_lens.png" in pictures
    for picture in pictures:
        assert (ROOT / picture).is_file(), f"README shows {picture}, which does not exist"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    if "qrnn-hybrid" not in probe.zoo_names():
        pytest.skip("the tour loads zoo:qrnn-hybrid, which is not shipped")
    blocks = python_blocks(README)
    assert len(blocks) >= 3, "the README tour has lost its code blocks"
    monkeypatch.chdir(tmp_path)  # the tour saves a model to ./my-model
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"README python block {i + 1} fails:\n{block}") from exc
    # what the tour says it shows
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
    assert namespace["cache"]["blocks.0.mixer.hook_state"].shape[:2] == namespace["logits"].shape[:2]
    assert namespace["patch"].to_frame()["site"].isin(["resid_pre", "state"]).all()
    assert "def f(" in capsys.readouterr().out  # the generated text (after the BOS token)
