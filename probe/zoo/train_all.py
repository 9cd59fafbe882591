r"""Train several zoo models at once, one subprocess each (``probe zoo train --all``).

Small models leave most of a GPU idle, so running a few side by side finishes the zoo
sooner; each child is ``python -m probe.cli zoo train NAME`` with its own log file, and the
number of concurrent runs is recorded in each card's ``hardware`` field.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def train_many(names: list[str], out_dir: str | Path, jobs: int = 1, device: str = "auto",
               extra_args: list[str] | None = None) -> dict[str, int]:
    """Run ``probe zoo train NAME --out OUT_DIR`` for every name, ``jobs`` at a time.
    Returns each name's exit code; logs go to ``OUT_DIR/logs/NAME.log``."""
    out_dir = Path(out_dir)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROBE_CONCURRENT_RUNS": str(min(jobs, len(names)))}
    pending, running, codes = list(names), {}, {}
    while pending or running:
        while pending and len(running) < max(jobs, 1):
            name = pending.pop(0)
            cmd = [sys.executable, "-m", "probe.cli", "zoo", "train", name, "--out", str(out_dir), "--device", device,
                   "--no-progress", *(extra_args or [])]
            log = open(logs / f"{name}.log", "w")
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.time())
            print(f"[zoo] started {name}", flush=True)
        for name, (proc, log, t0) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                codes[name] = proc.returncode
                print(f"[zoo] {name} finished with code {proc.returncode} after {time.time() - t0:.0f} s", flush=True)
                del running[name]
        time.sleep(1.0)
    return codes
