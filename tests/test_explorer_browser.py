"""End-to-end: the real explorer server on localhost in headless Chromium.

Starts ``streamlit run app/explorer.py`` on 127.0.0.1, opens the page, switches views by
clicking their tabs, waits for every figure to draw and saves a screenshot of each; checks
the page shows the view's heading and its figures and no exception. Skipped where Chromium
is not installed (Debian: ``apt-get install -y chromium``); the driver is
scripts/screenshot_explorer.py (DevTools protocol over loopback, no webdriver needed).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("screenshot_explorer", ROOT / "scripts" / "screenshot_explorer.py")
shots = importlib.util.module_from_spec(spec)
sys.modules["screenshot_explorer"] = shots
spec.loader.exec_module(shots)

pytest.importorskip("streamlit")
pytest.importorskip("websockets.sync.client")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shots.find_chromium() is None, reason="chromium is not installed")]


def test_explorer_in_headless_chromium(tmp_path):
    views = ["Predictions", "Logit lens", "Memory", "Architecture"]
    report = shots.run(views, tmp_path, timeout=240)
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
