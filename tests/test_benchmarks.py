"""The benchmark suite runs in quick mode and writes valid JSON and markdown (no timing asserted)."""
import json

from benchmarks import run as bench_run


def test_quick_mode_writes_valid_output(tmp_path):
    path = bench_run.main(["--quick", "--suite", "bench_model", "--out", str(tmp_path)])
    data = json.loads(path.read_text())
    assert data["quick"] is True and "torch" in data["machine"]
    rows = data["suites"]["bench_model"]
    assert rows and all("error" not in r for r in rows), rows
    archs = {r["arch"] for r in rows}
    assert {"attn", "lstm", "qrnn"} <= archs
    for r in rows:
        assert r["plain_tok_s"] > 0 and r["full_cache_tok_s"] > 0
    assert (tmp_path / "cpu-quick.md").read_text().count("|") > 10
