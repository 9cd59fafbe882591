"""benchmarks/ig_zoo_completeness.py: the default integrated gradients is measured against a reference
computed on a float64 copy of the model (a float32 path cannot resolve the zoo xLSTM's narrowest steps)."""
import copy

import pytest
import torch

from benchmarks import ig_zoo_completeness as bench
from conftest import make_model, tokens


@pytest.mark.numerical
def test_the_reference_runs_on_the_float64_copy_and_the_default_on_the_model(monkeypatch):
    model = make_model("mlstm")
    exact = copy.deepcopy(model).to(torch.float64)
    seen = []
    real = bench.integrated_gradients

    def spy(m, text, **kwargs):
        seen.append((next(m.parameters()).dtype, kwargs.get("until")))
        return real(m, text, **kwargs)

    monkeypatch.setattr(bench, "integrated_gradients", spy)
    row = bench.measure(model, tokens(1, 8), 1e-4, exact)
    assert seen == [(torch.float32, None), (torch.float64, 1e-4)]
    assert next(model.parameters()).dtype == torch.float32  # the measured model is left as it was
    assert row["bounded"] and row["converged"]
    assert row["true"] <= row["estimate"] < 0.01 and row["reference_estimate"] < 1e-4
