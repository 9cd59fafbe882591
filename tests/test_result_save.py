"""``result.save(path)``: a method's table (csv / json) or figure (html; images need kaleido) written by suffix."""
from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import torch

import probe
from probe.errors import ConfigError, InputError
from probe.methods import logit_lens


@pytest.fixture(scope="module")
def lens():
    torch.manual_seed(0)
    model = probe.HookedLM(probe.ModelConfig(d_model=32, n_heads=2, layout=["attn", "lstm"])).eval()
    return logit_lens(model, "x = a + b\n")


def test_save_writes_the_table_and_the_figure_by_suffix(lens, tmp_path):
    frame = lens.to_frame()
    assert lens.save(tmp_path / "lens.csv") == tmp_path / "lens.csv"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "lens.csv"), frame, check_dtype=False)
    lens.save(tmp_path / "sub" / "lens.json")
    records = json.loads((tmp_path / "sub" / "lens.json").read_text())
    assert len(records) == len(frame) and records[0]["kl"] == pytest.approx(frame["kl"].iloc[0])
    lens.save(tmp_path / "lens.html", color="prob")
    html = (tmp_path / "lens.html").read_text()
    assert "plotly" in html and "top-token prob" in html  # the figure asked for


def test_save_refuses_unknown_formats_and_folders(lens, tmp_path):
    with pytest.raises(InputError, match=r"\.csv, \.json"):
        lens.save(tmp_path / "lens.xlsx")
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        lens.save(tmp_path / "out.csv")


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is not None, reason="kaleido installed: images work")
def test_images_without_kaleido_name_the_package(lens, tmp_path):
    with pytest.raises(ConfigError, match="pip install kaleido"):
        lens.save(tmp_path / "lens.png")
