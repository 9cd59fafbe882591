#!/usr/bin/env python
"""Drive the real explorer in headless Chromium: start the server on localhost, open the page, switch
views, wait for the figures to render, save screenshots and check what the page shows.

    python scripts/screenshot_explorer.py                        # docs/explorer.png (the README image)
    python scripts/screenshot_explorer.py --views Predictions "Logit lens" Memory --out /tmp/shots

Needs Debian's ``chromium`` (``apt-get install -y chromium``); only loopback addresses are used.
Streamlit renders in the browser over a websocket, so a plain ``chromium --screenshot``
fires before the figures exist; this script talks to Chromium over the DevTools protocol
instead (``websockets``, a Streamlit dependency) and waits until every figure of the open
view has drawn and the script has stopped running. Exits non-zero when a view is missing
its heading or figures, or shows an exception / internal error.
"""
from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
#: view label -> (expected heading, minimum figures) with the default demo/zoo models
EXPECTED = {
    "Predictions": ("Next-token predictions", 4),
    "Logit lens": ("Logit lens", 2),
    "Tuned lens": ("Tuned lens", 0),
    "Attribution": ("Direct logit attribution by component", 2),
    "Saliency": ("Token saliency (integrated gradients)", 2),
    "Memory": ("Memory maps: attention vs implicit attention", 4),
    "Probes": ("Probe accuracy by layer", 0),
    "Steering": ("Steering", 0),
    "Patching": ("Activation patching", 2),
    "Architecture": ("Architecture and state sizes", 2),
}

# JavaScript run in the page -------------------------------------------------------------------
JS_STATE = r"""(() => {
  const q = (s, root) => Array.from((root || document).querySelectorAll(s));
  const panel = q('[role="tabpanel"]').find(p => !p.hidden && p.offsetParent !== null) || document;
  const charts = q('[data-testid="stPlotlyChart"]', panel);
  return {
    running: q('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]').length > 0,
    spinners: q('[data-testid="stSpinner"], [data-testid="stSkeleton"]').length,
    plots: charts.length,
    drawn: charts.filter(e => e.querySelector('.js-plotly-plot .main-svg')).length,
    headings: q('h1, h2, h3, h4, h5').map(e => e.innerText.trim()).filter(Boolean),
    tabs: q('[role="tab"]').map(e => ({label: e.innerText.trim(), selected: e.getAttribute('aria-selected') === 'true'})),
    exceptions: q('[data-testid="stException"]').map(e => e.innerText.slice(0, 300)),
    captions: q('[data-testid="stCaptionContainer"]', panel).map(e => e.innerText.trim()),
    sliders: q('[data-testid="stSlider"]', panel).map(e => e.innerText.trim()),
    buttons: q('button', panel).map(e => ({label: e.innerText.trim(), top: e.getBoundingClientRect().top}))
      .filter(b => b.label),
    text: (panel.innerText || '').slice(0, 20000),
    figures: charts.map(e => {
      const plot = e.querySelector('.js-plotly-plot');
      const traces = (plot && plot._fullData) || [];
      return {
        top: e.getBoundingClientRect().top,
        title: (plot && plot._fullLayout && plot._fullLayout.title && plot._fullLayout.title.text) || '',
        traces: traces.map(t => ({type: t.type, name: t.name, zmin: t.zmin, zmax: t.zmax,
                                  columns: t.type === 'heatmap' && t.z && t.z[0] ? t.z[0].length : null,
                                  labelled: t.type === 'heatmap' ? !!t.texttemplate : null,
                                  x: t.type === 'scatter' ? Array.from(t.x || []) : null,
                                  y: t.type === 'scatter' ? Array.from(t.y || []) : null})),
      };
    }),
    errors: q('[data-testid="stAlertContentError"]').map(e => e.innerText.slice(0, 300)),
  };
})()"""


def js_click_tab(label: str) -> str:
    return ("(() => { const b = Array.from(document.querySelectorAll('[role=\"tab\"]'))"
            f".find(e => e.innerText.trim() === {json.dumps(label)}); if (b) b.click(); return !!b; }})()")


# the server -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def explorer_server(port: int, timeout: float = 120.0, env: dict | None = None):
    """``streamlit run app/explorer.py`` on ``127.0.0.1:port``; yields the URL once healthy."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "explorer.py"), "--server.headless", "true",
           "--server.address", HOST, "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"The explorer did not start (exit {proc.poll()}):\n{log.read()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


# the browser ------------------------------------------------------------------------------------
def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (CDP) on loopback."""

    def __init__(self, width: int = 1400, height: int = 1000, binary: str | None = None):
        from websockets.sync.client import connect

        binary = binary or find_chromium()
        if binary is None:
            raise RuntimeError("No chromium found: apt-get install -y chromium")
        self.profile = tempfile.mkdtemp(prefix="probe-chromium-")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port.")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://{HOST}:{port}/json/list", timeout=5) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self._connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ws = self._connection.__enter__()
        self.ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            if getattr(self, "_connection", None) is not None:
                self._connection.__exit__(None, None, None)
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_rendered(browser: Browser, min_plots: int, timeout: float, settle: float = 1.5) -> dict:
    """Poll the page until the script has stopped, no spinner shows and ``min_plots`` figures have
    drawn, and that state holds for ``settle`` seconds. Returns the last page state."""
    deadline = time.monotonic() + timeout
    ready_since = None
    state: dict = {}
    while time.monotonic() < deadline:
        state = browser.evaluate(JS_STATE) or {}
        ready = (state.get("tabs") and not state.get("running") and not state.get("spinners")
                 and state.get("drawn", 0) >= min_plots and state.get("drawn", 0) == state.get("plots", 0))
        if ready or state.get("exceptions"):
            ready_since = ready_since or time.monotonic()
            if time.monotonic() - ready_since >= settle or state.get("exceptions"):
                return state
        else:
            ready_since = None
        time.sleep(0.3)
    state["timed_out"] = True
    return state


def check_view(label: str, state: dict) -> list[str]:
    """Problems with a rendered view (empty when it shows what it should)."""
    heading, min_plots = EXPECTED.get(label, (label, 0))
    problems = []
    if state.get("timed_out"):
        problems.append(f"timed out (state: running={state.get('running')}, plots={state.get('plots')}, "
                        f"drawn={state.get('drawn')})")
    if not any(h.startswith(heading) for h in state.get("headings", [])):
        problems.append(f"heading {heading!r} missing (headings: {state.get('headings')})")
    if state.get("drawn", 0) < min_plots:
        problems.append(f"{state.get('drawn', 0)} figures drawn, expected at least {min_plots}")
    selected = [t["label"] for t in state.get("tabs", []) if t.get("selected")]
    if selected != [label]:
        problems.append(f"selected tab is {selected}, not {label!r}")
    problems += [f"exception: {e}" for e in state.get("exceptions", [])]
    problems += [f"internal error: {e}" for e in state.get("errors", []) if "Internal error" in e]
    return problems


def run(views: list[str], out: Path, width: int = 1400, height: int = 1000, timeout: float = 180.0,
        first_name: str = "explorer.png", query: dict[str, str] | None = None, prefix: str = "explorer") \
        -> dict[str, dict]:
    """Screenshot every view (the first as ``out/first_name``, the others as ``out/<prefix>-<view>.png``),
    after opening the page with ``query`` in its address (the explorer's shareable state, e.g. the text).
    Returns ``{view: {"state": ..., "problems": [...], "path": ...}}``."""
    from urllib.parse import urlencode

    report: dict[str, dict] = {}
    with explorer_server(free_port()) as url, Browser(width, height) as browser:
        browser.goto(url + "/" + (f"?{urlencode(query)}" if query else ""))
        for i, label in enumerate(views):
            if i > 0 or label != "Predictions":
                if not wait_rendered(browser, 0, timeout).get("tabs"):
                    raise RuntimeError("The page never showed its tabs.")
                if not browser.evaluate(js_click_tab(label)):
                    report[label] = {"state": {}, "problems": [f"no tab {label!r}"], "path": None}
                    continue
                time.sleep(0.5)
            state = wait_rendered(browser, EXPECTED.get(label, (label, 0))[1], timeout)
            name = first_name if i == 0 else f"{prefix}-{label.lower().replace(' ', '-')}.png"
            path = out / name
            browser.screenshot(path)
            report[label] = {"state": state, "problems": check_view(label, state), "path": str(path)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", nargs="+", default=["Predictions"], help=f"tabs, from {', '.join(EXPECTED)}")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the screenshots")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each view")
    args = parser.parse_args(argv)
    report = run(args.views, Path(args.out), args.width, args.height, args.timeout)
    failed = False
    for label, item in report.items():
        status = "ok" if not item["problems"] else "FAILED: " + "; ".join(item["problems"])
        print(f"{label:14s} {item['state'].get('drawn', 0)} figures  {item['path']}  {status}")
        failed |= bool(item["problems"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
