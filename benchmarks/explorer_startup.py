"""How fast the explorer's first page appears: seconds from the server being up to what a user sees.

For each of ``--repeats`` fresh servers (``streamlit run app/explorer.py`` on localhost, the page
opened in headless Chromium the moment ``/_stcore/health`` answers), the seconds from that moment to

(a) ``title``: the page title ("probe explorer") drawn,
(b) ``sidebar``: both model pickers drawn in the sidebar,
(c) ``first view``: the default view (Predictions) with its figures drawn and the script finished,

and the seconds from launching the server to its being up. Medians over the repeats are printed
with the load average, since a shared machine's times move with its load. ``--imports`` also times
``python -c "import X"`` for the modules the page imports (medians), which is what (a)-(c) wait
for on a cold process. The first server of a machine may also compile Mamba's CPU kernel, when a
Mamba model is picked; the default models (transformer | qrnn-hybrid) need none.

    python benchmarks/explorer_startup.py                 # 3 servers
    python benchmarks/explorer_startup.py --repeats 5 --imports

Measured on the shared 2-core machine at load average 4.5 (2026-12-05, medians of 4 starts): title
0.8 s, sidebar 1.7 s, first view 6.9 s; the first view waits for ``import torch`` and
``import transformer_lens`` (which probe's attention mixer pulls in for its hook points), then the
two models' loads and forwards. Re-run on an idle machine for the idle numbers.

Needs Chromium (``apt-get install -y chromium``) and the ``websockets`` package; the driver is
``scripts/screenshot_explorer.py``. Nothing here is asserted by the tests.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MILESTONES = ("title", "sidebar", "first view")
IMPORTS = ("streamlit", "torch", "pandas", "plotly.graph_objects", "transformer_lens", "probe", "app.sidebar",
           "app.views")

JS_MILESTONES = r"""(() => {
  const q = s => Array.from(document.querySelectorAll(s));
  const charts = q('[data-testid="stPlotlyChart"]');
  return {
    title: q('h1').some(e => e.innerText.trim() === 'probe explorer'),
    sidebar: q('[data-testid="stSidebar"] [data-testid="stSelectbox"]').length >= 2,
    tabs: q('[role="tab"]').length > 0,
    running: q('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]').length > 0,
    spinner: q('[data-testid="stSpinner"]').map(e => e.innerText.trim()).join(' | '),
    drawn: charts.filter(e => e.querySelector('.js-plotly-plot .main-svg')).length,
  };
})()"""


def _driver():
    spec = importlib.util.spec_from_file_location("screenshot_explorer", ROOT / "scripts" / "screenshot_explorer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["screenshot_explorer"] = module
    spec.loader.exec_module(module)
    return module


def one_start(shots, browser, timeout: float) -> dict[str, float | list]:
    """Seconds from launch to the server's health answer (``server``), and from that answer to each
    milestone; ``spinners``: the spinner texts seen on the way."""
    launched = time.perf_counter()
    with shots.explorer_server(shots.free_port(), timeout=timeout) as url:
        up = time.perf_counter()
        times: dict[str, float | list] = {"server": up - launched}
        spinners: list[str] = []
        browser.goto(url + "/")
        min_plots = shots.EXPECTED["Predictions"][1]
        while time.perf_counter() - up < timeout:
            s = browser.evaluate(JS_MILESTONES) or {}
            now = time.perf_counter() - up
            if s.get("spinner") and s["spinner"] not in spinners:
                spinners.append(s["spinner"])
            if s.get("title"):
                times.setdefault("title", now)
            if s.get("sidebar"):
                times.setdefault("sidebar", now)
            if s.get("tabs") and not s.get("running") and s.get("drawn", 0) >= min_plots:
                times["first view"] = now
                break
            time.sleep(0.05)
        times["spinners"] = spinners
    return times


def import_times(repeats: int) -> dict[str, float]:
    """Median seconds of a fresh ``python -c "import X"`` for each of :data:`IMPORTS`."""
    out = {}
    for name in IMPORTS:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
            runs.append(time.perf_counter() - start)
        out[name] = statistics.median(runs)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="fresh servers to start (medians over them)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the first view")
    p.add_argument("--imports", action="store_true", help="also time the imports the page waits for")
    args = p.parse_args(argv)
    shots = _driver()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    runs = []
    with shots.Browser() as browser:
        for i in range(args.repeats):
            t = one_start(shots, browser, args.timeout)
            runs.append(t)
            shown = "  ".join(f"{k} {t[k]:.1f}s" if k in t else f"{k} -" for k in ("server",) + MILESTONES)
            print(f"start {i + 1}: {shown}   spinners: {t['spinners']}")
    print("median seconds after the server is up: " + ", ".join(
        f"{k} {statistics.median(r[k] for r in runs):.1f}" for k in MILESTONES if all(k in r for r in runs)))
    if args.imports:
        for name, seconds in import_times(args.repeats).items():
            print(f"import {name:22s} {seconds:5.2f}s")
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
