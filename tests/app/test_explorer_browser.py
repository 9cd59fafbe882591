"""End-to-end: the real explorer server on localhost in headless Chromium.

Starts ``streamlit run app/explorer.py`` on 127.0.0.1, opens the page, switches views by
clicking their tabs, waits for every figure to draw and saves a screenshot of each; checks
the page shows the view's heading and its figures and no exception, and reads the drawn figures'
data to check what the fixed views show: one colour range across the columns, the default
steering direction, the shipped probe results with the fit button below them, and a window of
positions on a long input. Skipped where Chromium is not installed (Debian:
``apt-get install -y chromium``; .ci/run installs it); the driver is
scripts/screenshot_explorer.py (DevTools protocol over loopback, no webdriver needed).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("screenshot_explorer", ROOT / "scripts" / "screenshot_explorer.py")
shots = importlib.util.module_from_spec(spec)
sys.modules["screenshot_explorer"] = shots
spec.loader.exec_module(shots)

pytest.importorskip("streamlit")
pytest.importorskip("websockets.sync.client")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shots.find_chromium() is None, reason="chromium is not installed")]


#: a 147-token Python snippet (bytes as tokens): longer than the lens' first window of positions
LONG_TEXT = ("def mean(values):\n    total = 0\n    for v in values:\n        total += v\n"
             "    return total / len(values)\n\nprint(mean([1, 2, 3, 4]), mean(range(10)))\n")


def _heatmaps(state: dict) -> list[dict]:
    return [t for f in state["figures"] for t in f["traces"] if t["type"] == "heatmap"]


def check_shared_colour_scale(state: dict) -> None:
    """Logit lens: both columns' heatmaps on one colour range, written under each."""
    maps = _heatmaps(state)
    assert len(maps) >= 2, state["figures"]
    assert len({(m["zmin"], m["zmax"]) for m in maps}) == 1, [(m["zmin"], m["zmax"]) for m in maps]
    shared = [c for c in state["captions"] if c.startswith("Colour scale") and "the same in both columns" in c]
    assert len(shared) == 2, state["captions"]


def check_steering_default(state: dict) -> None:
    """Steering with the default pairs: a positive coefficient raises logit[a] - logit[i] at every layer
    after the embedding, in both columns (the figure's curves, coefficient +4 against 0)."""
    curves = [t for f in state["figures"] if "Steering at resid_pre" in f["title"] for t in f["traces"]
              if t["type"] == "scatter" and (t["name"] or "").startswith("layer ")]
    later = [t for t in curves if not t["name"].startswith("layer 0")]
    assert len(later) >= 6, [t["name"] for t in curves]  # 3 layers after the first, two models
    for t in later:
        at = dict(zip(t["x"], t["y"]))
        assert at[4] > at[0], (t["name"], at)


def check_shipped_probes(state: dict) -> None:
    """Probes: the results shipped with the zoo are shown in both columns, the fit button below them."""
    assert "No precomputed probe results" not in state["text"]
    assert sum(c == "Precomputed results shipped with the model." for c in state["captions"]) == 2, state["captions"]
    fit = [b["top"] for b in state["buttons"] if b["label"].startswith("Fit probes")]
    assert fit and min(fit) > min(f["top"] for f in state["figures"]), (fit, [f["top"] for f in state["figures"]])


def check_lens_window(state: dict) -> None:
    """Logit lens of a long input: a window of positions (a slider), no more than 64 columns, and no
    cell labels at that width (hover shows them)."""
    assert any(s.startswith("Positions shown") for s in state["sliders"]), state["sliders"]
    maps = _heatmaps(state)
    assert maps and all(m["columns"] <= 64 for m in maps), [m["columns"] for m in maps]
    assert not any(m["labelled"] for m in maps)


def _assert_rendered(report: dict, views: list[str]) -> None:
    assert list(report) == views
    for view, item in report.items():
        assert not item["problems"], (view, item["problems"])
        png = Path(item["path"])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000  # a real page
        state = item["state"]
        assert "probe explorer" in state["headings"]
        assert "Model A: demo:transformer" in state["headings"] or any(h.startswith("Model A: zoo:")
                                                                       for h in state["headings"])
        assert state["drawn"] >= shots.EXPECTED[view][1]


def test_explorer_in_headless_chromium(tmp_path):
    """Every view renders; the views issue 31 fixed show the fix (screenshots in tmp_path)."""
    views = ["Predictions", "Logit lens", "Memory", "Architecture", "Steering", "Probes"]
    report = shots.run(views, tmp_path, timeout=240)
    _assert_rendered(report, views)
    check_shared_colour_scale(report["Logit lens"]["state"])
    check_steering_default(report["Steering"]["state"])
    check_shipped_probes(report["Probes"]["state"])


def test_lens_window_on_a_long_input(tmp_path):
    """The text comes in through the page's address (the shareable state) and the lens shows a window."""
    report = shots.run(["Logit lens"], tmp_path, timeout=240, first_name="explorer-long-logit-lens.png",
                       query={"text::own": LONG_TEXT})
    _assert_rendered(report, ["Logit lens"])
    check_lens_window(report["Logit lens"]["state"])
