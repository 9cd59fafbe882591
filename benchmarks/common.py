"""Measurement helpers shared by every benchmark: median wall time after warm-up, and peak
memory (CUDA: the allocator's peak; CPU: the kernel's resident-set high-water mark, see
:func:`peak_memory`)."""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import threading
import time
from datetime import datetime, timezone

import torch


def timeit(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hf_logits(model, toks):
    """``model(toks).logits`` of a transformers causal LM without its KV cache, with its warnings
    silenced (Mamba's "fast path not available" is printed on every call on CPU)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(toks, use_cache=False).logits


def interleaved(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each run, timed round-robin (one of each per round, after a warm-up round), so
    that a change in the machine's load hits every contender alike; the ratios are what matter."""
    times = {name: [] for name in runs}
    for rnd in range(repeats + 1):
        for name, fn in runs.items():
            seconds = timeit(fn, repeats=1, warmup=0)
            if rnd:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def _reset_high_water() -> bool:
    """Reset this process's peak resident set size (``VmHWM``) to the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_freed_memory(collect: bool = True) -> None:
    """Collect garbage and give freed heap pages back to the OS, so a resident-set measurement
    starts from the memory actually in use (glibc keeps freed pages otherwise)."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_memory_method() -> str:
    """How :func:`peak_memory` measures on this machine's CPU (recorded with every result)."""
    if os.path.exists("/proc/self/status") and _reset_high_water():
        return "VmHWM (kernel resident-set high-water mark, reset before each call)"
    if os.path.exists("/proc/self/statm"):
        return "resident set sampled at ~1 kHz (may miss short peaks)"
    return "unavailable"


def peak_memory(fn, device: str = "cpu", collect: bool = True) -> int:
    """Peak extra bytes used while running ``fn()`` once (its output included while it is alive).

    CUDA: the caching allocator's peak over the allocation before the call. CPU: freed heap
    pages are returned to the OS, the kernel's high-water mark of the resident set (``VmHWM``)
    is reset through ``/proc/self/clear_refs``, and the result is that mark after the call
    minus the resident set before it: every page touched counts, however briefly (no
    sampling), for torch's allocations and Python's alike. Where ``clear_refs`` cannot be
    written, the resident set is sampled at ~1 kHz in a thread instead (short peaks can be
    missed). -1 where neither exists (not Linux). ``collect=False`` skips the full garbage
    collection before the call (~0.2 s with torch loaded; for smoke runs), trusting that
    tensors were freed by reference counting."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not os.path.exists("/proc/self/statm"):
        return -1
    release_freed_memory(collect)
    if _reset_high_water():
        base = _status_bytes("VmRSS")
        fn()
        return max(0, _status_bytes("VmHWM") - base)
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    peak[0] = max(peak[0], _rss_bytes())
    return peak[0] - base


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _commit() -> str | None:
    """The repository's commit (with ``+changes`` when the work tree differs), or None outside git."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+changes" if dirty else "")) or None


def machine() -> dict:
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_memory": cpu_memory_method(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "commit": _commit(),
    }
    from importlib import metadata

    for key, dist in (("numpy", "numpy"), ("transformers", "transformers"), ("transformer_lens", "transformer-lens")):
        try:
            info[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info
