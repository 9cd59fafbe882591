"""benchmarks/gpu_suite.py: its logic on the CPU with tiny shapes (the measurement itself needs a GPU),
its clear exit without one, and the targets it judges."""
import json

import torch

from benchmarks import gpu_suite


def test_cpu_smoke_run_writes_json_and_table(tmp_path):
    code = gpu_suite.main(["--device", "cpu", "--quick", "--mixers", "hgrn2,mamba,lmu", "--lengths", "16",
                           "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "gpu-cpu-quick.json").read_text())
    rows = {r["mixer"]: r for r in data["rows"]}
    assert set(rows) == {"hgrn2", "mamba", "lmu"} and all("error" not in r for r in rows.values()), rows
    for r in rows.values():
        assert r["forward_ms"] > 0 and r["capture_ms"] > 0 and r["positions_ms"] > 0
        assert r["states_mb"] > 0 and r["outputs_mb"] == 16 * 32 * 4 / 2**20
    assert rows["hgrn2"]["pytorch_ms"] > 0 and "pytorch_ms" not in rows["lmu"]  # only mixers with a kernel
    # every state of the layer is counted: hgrn2 [1, 16, heads 2, 16, 16] float32
    assert rows["hgrn2"]["states_mb"] == 16 * 2 * 16 * 16 * 4 / 2**20
    table = (tmp_path / "gpu-cpu-quick.md").read_text()
    assert all(f"| {m} | 16 |" in table for m in rows)


def test_without_a_gpu_it_says_so(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_suite.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_targets_judged_per_row():
    row = {"mixer": "lmu", "forward_ms": 10.0, "reference_ms": 5.0, "capture_ms": 30.0, "write_ms": 4.0,
           "forward_peak_mb": 100.0, "capture_peak_mb": 150.0, "outputs_mb": 20.0, "states_mb": 30.0}
    judged = gpu_suite.judge(dict(row))
    assert judged["forward_target_met"] is False  # 10 > 1.5 x 5
    assert judged["capture_target_met"] is False  # 30 > 2 x (10 + 4)
    assert judged["lmu_memory_ratio"] == 3.0 and judged["lmu_memory_target_met"] is True
    judged = gpu_suite.judge(dict(row, mixer="hgrn2", reference_ms=8.0, capture_ms=20.0))
    assert judged["forward_target_met"] is True and judged["capture_target_met"] is True
    assert "lmu_memory_ratio" not in judged


def test_the_issue_shapes_keep_their_options_whatever_the_lengths():
    import dataclasses

    shape = dataclasses.replace(gpu_suite.FULL, lengths=(64,))
    hgrn2 = gpu_suite.build_mixer("hgrn2", shape, "cpu", torch.float32)
    mamba = gpu_suite.build_mixer("mamba", shape, "cpu", torch.float32)
    assert (hgrn2.e, hgrn2.heads) == (128, 8) and (mamba.d_state, mamba.d_inner) == (16, 2048)
    mamba2 = gpu_suite.build_mixer("mamba2", shape, "cpu", torch.float32)
    assert (mamba2.d_state, mamba2.head_dim, mamba2.d_inner) == (128, 64, 2048)  # mamba-ssm's Mamba2 defaults
    for name in ("gdn", "kda"):
        delta = gpu_suite.build_mixer(name, shape, "cpu", torch.float32)
        assert (delta.Hk, delta.Hv, delta.K, delta.V) == (8, 8, 128, 128)
    assert {"mamba2", "gdn", "kda"} <= gpu_suite.FUSED
