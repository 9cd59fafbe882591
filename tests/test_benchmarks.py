"""The benchmark suite runs in quick mode and writes valid JSON, markdown and a README (no timing asserted)."""
import json

from benchmarks import report
from benchmarks import run as bench_run


def test_quick_mode_writes_valid_output(tmp_path):
    readme = tmp_path / "README.md"
    path = bench_run.main(["--quick", "--suite", "bench_model", "--out", str(tmp_path), "--readme", str(readme)])
    data = json.loads(path.read_text())
    assert data["quick"] is True and "torch" in data["machine"]
    rows = data["suites"]["bench_model"]
    assert rows and all("error" not in r for r in rows), rows
    archs = {r["arch"] for r in rows}
    assert {"attn", "lstm", "qrnn", "mamba"} <= archs
    for r in rows:
        assert r["plain_tok_s"] > 0 and r["full_cache_tok_s"] > 0 and r["plain_peak_mb"] >= 0
    assert (tmp_path / "cpu-quick.md").read_text().count("|") > 10
    text = readme.read_text()
    assert "## Targets (issue 11)" in text and "## What remains" in text
    # every architecture has a row in the model table, with the cache target judged
    assert all(f"| {a} |" in text for a in archs)
    assert "cache <= 1.5x plain: met?" in text
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_are_judged_per_row():
    """A synthetic result: each target's verdict follows its threshold, and misses are listed as remaining."""
    rows = [
        {"bench": "references", "arch": "gpt2", "T": 256, "plain_time_ratio": 1.05, "full_cache_over_plain": 1.7},
        {"bench": "references", "arch": "mamba", "size": "tiny", "T": 256, "plain_time_ratio": 0.8,
         "state_time_ratio": 0.5, "state_lighter": 1.2, "state_cache_mb": 4.0, "tl_state_cache_peak_mb": 10.0,
         "ours_state_cache_peak_mb": 8.0, "state_overhead_lighter": 1.5},
        {"suite": "scan", "mixer": "hgrn2", "T": 1024, "form": "chunked", "speedup_vs_sequential": 3.4},
        {"suite": "scan", "mixer": "mlstm (scan only)", "T": 1024, "form": "chunked", "speedup_vs_sequential": 2.0},
        {"suite": "scan", "mixer": "mamba", "T": 1024, "form": "sequential", "speedup_vs_sequential": 1.0},
    ]
    results = {"machine": {"cuda": None}, "quick": False, "suites": {"x": rows}}
    ev = report.evaluate(results)
    assert [m for _, _, m in ev["plain"]] == [True, True]
    assert [m for _, _, m in ev["cache"]] == [False]  # Mamba rows are not judged on the full cache
    assert [m for _, _, m in ev["scan3"]] == [True, False]
    assert [m for _, _, m in ev["scan"]] == [True, True]  # the sequential form itself is not judged
    assert [m for _, _, m in ev["mamba_time"]] == [True] and [m for _, _, m in ev["mamba_mem"]] == [False]
    text = "\n".join(report.remains(results, ev))
    assert "run_with_cache within 1.5x" in text and "gpt2" in text and "mlstm" in text
    assert "4x lighter" in text and "no GPU" in text


def test_probe_bench_cli_and_merge(tmp_path, capsys):
    """`probe bench -- ARGS` runs benchmarks/run.py; --merge keeps the other suites' rows and says
    when each suite was measured."""
    from probe.cli import main

    path = tmp_path / "cpu-quick.json"
    path.write_text(json.dumps({"machine": {"date": "2026-01-01", "commit": "old"}, "quick": True,
                                "suites": {"bench_scans": [{"suite": "scan", "mixer": "x"}]},
                                "seconds": {"bench_scans": 1.0}}))
    assert main(["bench", "--", "--quick", "--suite", "bench_model", "--out", str(tmp_path), "--merge"]) == 0
    assert str(path) in capsys.readouterr().out
    data = json.loads(path.read_text())
    assert set(data["suites"]) == {"bench_scans", "bench_model"}
    assert data["suites"]["bench_scans"] == [{"suite": "scan", "mixer": "x"}]
    assert data["runs"]["bench_scans"]["commit"] == "old" and data["runs"]["bench_model"]["date"] != "2026-01-01"
    assert "bench_scans: measured 2026-01-01" in "\n".join(report.machine_lines(data, None))
