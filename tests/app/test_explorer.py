"""The explorer (app/explorer.py) with Streamlit's AppTest: every view renders for a transformer and a
recurrent model, widgets change the output, and bad input is a message, never a traceback.

Uses the small untrained demo models (``demo:*``), so the tests do not depend on the zoo. The
real-browser check is tests/app/test_explorer_browser.py.
"""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

import probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app" / "explorer.py")
TRANSFORMER, RECURRENT = "demo:transformer", "demo:lstm"
TEXT_KEY = "text::own"
TEXT = "x = a + b\n"  # 11 tokens with the BOS: keeps every view fast

#: view -> (heading, figures expected for two loaded models)
VIEWS = {
    "Predictions": ("Next-token predictions", 4),
    "Logit lens": ("Logit lens", 2),
    "Tuned lens": ("Tuned lens", 0),
    "Attribution": ("Direct logit attribution by component", 2),
    "Saliency": ("Token saliency (integrated gradients)", 2),
    "Memory": ("Memory maps: attention vs implicit attention", 5),
    "Probes": ("Probe accuracy by layer: hidden vs state", 0),
    "Steering": ("Steering", 2),
    "Patching": ("Activation patching", 2),
    "Architecture": ("Architecture and state sizes", 2),
}


def explorer(models=(TRANSFORMER, RECURRENT), view: str | None = None, **state) -> AppTest:
    """Run the app once with models A/B, an open view and any other session-state values."""
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_A"], at.session_state["model_B"] = models
    at.session_state[TEXT_KEY] = TEXT
    if view is not None:
        at.session_state["view"] = view
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def problems(at: AppTest) -> list[str]:
    """Exceptions and internal errors on the page (a ProbeError message is not a problem)."""
    return [str(e.value) for e in at.exception] + [e.value for e in at.error if "Internal error" in e.value]


def figures(at: AppTest) -> list:
    """The page's plotly figures (``plotly.graph_objects.Figure``; arrays decoded)."""
    import plotly.io

    return [plotly.io.from_json(p.proto.spec) for p in at.get("plotly_chart")]


def array(value) -> np.ndarray:
    """A figure array: plotly sends numbers as base64 typed arrays (``{"dtype", "bdata", "shape"}``)."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape([int(n) for n in str(value["shape"]).split(",")]) if "shape" in value else flat
    return np.asarray(value)


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_first_page_shows_predictions_of_both_models():
    at = explorer()
    assert not problems(at)
    assert texts(at.subheader) == ["Next-token predictions"]
    assert [t for t in texts(at.markdown) if t.startswith("##### ")] == [
        f"##### Model A: {TRANSFORMER}", f"##### Model B: {RECURRENT}"]
    figs = figures(at)
    assert len(figs) == 4  # top tokens + surprisal, per model
    top_a, top_b = figs[0].data[0].y, figs[2].data[0].y  # the top tokens of each model
    assert len(top_a) == 10 and list(top_a) != list(top_b)  # different models, different predictions
    assert [t.label for t in at.tabs] == list(VIEWS)


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_view_renders_for_a_transformer_and_a_recurrent_model(view):
    heading, n_figures = VIEWS[view]
    at = explorer(view=view)
    assert not problems(at), problems(at)
    assert not at.error, texts(at.error)
    assert heading in texts(at.subheader)
    assert len(at.get("plotly_chart")) >= n_figures


@pytest.mark.parametrize("view", ["Memory", "Architecture"])
def test_views_render_for_hybrid_and_selective_models(view):
    at = explorer(("demo:qrnn-hybrid", "demo:mamba"), view=view)
    assert not problems(at), problems(at)
    assert not at.error, texts(at.error)
    assert len(at.get("plotly_chart")) >= 2


def test_changing_a_widget_changes_the_output():
    at = explorer()
    before = [t for t in texts(at.markdown) if t.startswith("After")]
    at.slider(key="pred_position").set_value(5).run()
    after = [t for t in texts(at.markdown) if t.startswith("After")]
    assert before != after and all("position 5 of" in t for t in after)

    at = explorer(view="Logit lens")
    prob = array(figures(at)[0].data[0].z)
    at.radio(key="logit_lens_color").set_value("kl").run()
    kl = array(figures(at)[0].data[0].z)
    assert prob.shape == kl.shape == (3, 11) and not (prob == kl).all()  # embed + 2 layers, 11 tokens
    hover = array(figures(at)[0].data[0].customdata)
    assert hover.shape == (3, 11) and hover[0][0].count(" · ") == 4  # top-5 tokens and probabilities

    at = explorer(view="Memory")
    title = figures(at)[0].layout.title.text
    at.selectbox(key="mem_head_A").set_value(1).run()
    assert figures(at)[0].layout.title.text != title and "head 1" in figures(at)[0].layout.title.text


def test_empty_text_is_a_message_not_a_traceback():
    at = explorer(**{TEXT_KEY: "   "})
    assert not at.exception
    assert any("Enter some text" in w for w in texts(at.warning))


def test_unknown_checkpoint_path_is_a_message_and_model_b_still_renders():
    at = explorer(("Local checkpoint...", RECURRENT), path_A="/no/such/checkpoint")
    assert not problems(at)
    assert any("No checkpoint directory at '/no/such/checkpoint'" in e for e in texts(at.error))
    assert len(at.get("plotly_chart")) == 2  # model B's predictions


def test_text_longer_than_the_model_allows_is_a_message(tmp_path):
    torch.manual_seed(0)
    short = probe.HookedLM(probe.ModelConfig(d_model=16, n_heads=2, layout=["attn"], n_ctx=16))
    short.save(tmp_path / "short")
    at = explorer(("Local checkpoint...", RECURRENT), path_A=str(tmp_path / "short"),
                  **{TEXT_KEY: "def add(a, b):\n    return a + b\n"})  # 33 tokens > 16
    assert not problems(at)
    assert any("longer than this model's context of 16 tokens" in e for e in texts(at.error))

    at = explorer(truncate=False, **{TEXT_KEY: "x = 1\n" * 100})  # 601 tokens: over the explorer's own limit
    assert not problems(at)
    assert sum("the explorer analyses at most 512 tokens" in e for e in texts(at.error)) == 2


def test_a_long_text_is_cut_to_the_first_512_tokens_and_the_page_says_so():
    """A pasted text past the limit is analysed from its start (the box's default) with a message saying how
    much; no character limit drops the paste; a character split by the cut is left out."""
    at = explorer(**{TEXT_KEY: "计算 = 1\n" * 200})  # 2,401 tokens: 3-byte characters
    assert not problems(at), problems(at)
    assert not at.text_area[0].max_chars  # no limit (0): a long paste is not dropped
    assert any("the explorer analyses at most 512" in i and "its first" in i for i in texts(at.info))
    caption = next(c for c in texts(at.caption) if c.startswith("Input:"))
    assert 510 <= int(caption.split(" tokens")[0].split()[-1]) <= 512  # up to 2 bytes of a split character
    assert len(at.get("plotly_chart")) == 4 and not at.error
    assert "\ufffd" not in "".join(array(figures(at)[0].data[0].y).astype(str))


@pytest.mark.skipif("transformer" not in probe.zoo_names(), reason="needs the zoo")
def test_past_a_zoo_models_trained_context_the_page_warns():
    at = explorer(("zoo:transformer", RECURRENT), **{TEXT_KEY: "x = a + b\n" * 30})  # 301 tokens
    assert not problems(at), problems(at)
    assert any("trained on 256-token windows" in c for c in texts(at.caption))  # the model's description
    warnings = [w for w in texts(at.warning) if "trained on 256-token windows" in w]
    assert len(warnings) == 1 and warnings[0].startswith("Model A") and "301 tokens" in warnings[0]


def test_hugging_face_id_without_network_is_a_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = explorer(("Hugging Face id...", RECURRENT), hub_A="openai-community/gpt2")
    assert not problems(at)
    assert any("No network" in e and "openai-community/gpt2" in e for e in texts(at.error))
    at = explorer(("Hugging Face id...", RECURRENT), hub_A="gpt2")  # a bare name is a hub id too
    assert any("No network" in e and "'gpt2'" in e for e in texts(at.error))
    at = explorer(("Hugging Face id...", RECURRENT), hub_A="a/b/c")
    assert any("not a Hugging Face id" in e for e in texts(at.error))


def test_a_task_example_sets_the_text_and_the_views_defaults():
    state = {"input_mode": "Synthetic task", "task_name": "recall"}
    at = explorer(view="Attribution", **state)
    assert not problems(at)
    text = at.text_area[0].value
    assert "|" in text  # a recall example: "k1 v2 ...|..."
    assert any("recall task's answer" in c for c in texts(at.caption))
    assert at.text_input(key="dla_target::recall #0").value.isdigit()

    at = explorer(view="Patching", **state)
    assert not problems(at)
    assert at.selectbox(key="patch_task").value == "recall"
    assert len(at.get("plotly_chart")) == 2


def test_a_code_corpus_snippet_is_an_input():
    at = explorer(input_mode="Code corpus")
    assert not problems(at)
    snippet = at.text_area[0].value
    assert snippet.lstrip().startswith(("def ", "class ")) and len(snippet) > 80
    labels = at.selectbox(key="code_example").options
    assert len(labels) >= 4 and all(".py:" in label for label in labels)  # held-out stdlib file:line
    assert len(at.get("plotly_chart")) == 4


def test_tuned_lens_is_fitted_on_request():
    at = explorer(view="Tuned lens", tuned_steps=5)
    assert len(at.get("plotly_chart")) == 0
    at.button(key="fit-A").click().run()
    assert not problems(at), problems(at)
    assert [b.key for b in at.button] == ["fit-B"]  # model A's offer gave way to its tuned lens
    figs = figures(at)
    assert "Tuned lens" in figs[0].layout.title.text
    assert any("fitted here: 5 steps" in c for c in texts(at.caption))


def test_probes_are_fitted_on_request_hidden_and_state():
    at = explorer(view="Probes", probe_examples=30, probe_sites=["resid_post", "state"])
    before = len(at.get("plotly_chart"))  # the shipped zoo's table of every architecture, when present
    at.button(key="probe-fit-B").click().run()
    assert not problems(at), problems(at)
    assert len(at.get("plotly_chart")) == before + 1
    assert [b.key for b in at.button] == ["probe-fit-A"]  # model B's button gave way to its result
    fig = figures(at)[0]
    assert "Linear probes for 'number'" in fig.layout.title.text
    assert {t.name for t in fig.data} >= {"resid_post (hidden)", "state (state)"}
    summary = at.dataframe[0].value
    assert summary["label"].tolist() == ["number"] and 0 <= summary["state"].iloc[0] <= 1


def _probe_rows(model: str, scores: dict[tuple[str, int], float]) -> pd.DataFrame:
    """ProbeResult.to_frame()-shaped rows (as examples/probe_zoo_table.py writes them) for one label."""
    return pd.DataFrame([{"model": model, "label": "number", "task": "classification", "score_name": "accuracy",
                          "site": site, "kind": "state" if site == "state" else "hidden", "layer": layer,
                          "score": score, "baseline": 0.5, "control_score": 0.5, "selectivity": score - 0.5}
                         for (site, layer), score in scores.items()])


def test_precomputed_probe_results_are_shown(tmp_path, monkeypatch):
    torch.manual_seed(0)
    probe.HookedLM(probe.ModelConfig(d_model=16, n_heads=2, layout=["lstm", "lstm"])).save(tmp_path / "ckpt")
    _probe_rows("", {("resid_post", 0): 0.6, ("resid_post", 1): 0.9, ("state", 0): 0.7, ("state", 1): 0.8}) \
        .drop(columns="model").to_csv(tmp_path / "ckpt" / "probes.csv", index=False)  # beside the checkpoint
    shared = tmp_path / "results"
    shared.mkdir()
    pd.concat([_probe_rows("transformer", {("resid_post", 0): 0.95, ("state", 0): 0.7}),
               _probe_rows("lstm", {("resid_post", 0): 0.8, ("state", 0): 0.85})]).to_csv(shared / "probes.csv")
    monkeypatch.setenv("PROBE_RESULTS", str(shared))
    at = explorer(("Local checkpoint...", RECURRENT), view="Probes", path_A=str(tmp_path / "ckpt"))
    assert not problems(at), problems(at)
    figs = figures(at)
    assert len(figs) == 2  # model A's saved probes, and every architecture; model B has none saved
    assert list(array(figs[0].data[0].y)) == [0.6, 0.9] and "Linear probes for 'number'" in figs[0].layout.title.text
    assert list(figs[1].data[0].x) == ["transformer", "lstm"] and list(array(figs[1].data[1].y)) == [0.7, 0.85]
    assert "##### Every architecture (precomputed)" in texts(at.markdown)
    assert texts(at.caption).count("No precomputed probe results for this model.") == 1


@pytest.mark.skipif(not {"transformer", "lstm"} <= set(probe.zoo_names()), reason="needs the zoo")
def test_shipped_zoo_probe_results_are_found_and_explained():
    """probe/zoo/results/methods/probes.csv holds every zoo model's probes: the tab shows them (no "No
    precomputed" message), with the fit button below them, and explains control task and selectivity."""
    at = explorer(("zoo:transformer", "zoo:lstm"), view="Probes")
    assert not problems(at), problems(at)
    assert "No precomputed probe results for this model." not in texts(at.caption)
    assert texts(at.caption).count("Precomputed results shipped with the model.") == 2
    assert len(at.get("plotly_chart")) == 3  # model A, model B, every architecture
    assert "##### Every architecture (precomputed)" in texts(at.markdown)
    assert any("Negative" in m and "Control task" in m for m in texts(at.markdown))


def test_shipped_zoo_probe_results_use_the_another_sequence_control():
    """The shipped table was fitted with the control the view explains (another sequence's labels): its
    control scores sit near the majority baseline, not near 1.0 as a per-token-type control's do."""
    frame = pd.read_csv(probe.loading.ZOO_DIR / "results" / "methods" / "probes.csv")
    assert frame["control_score"].notna().all()
    for label, rows in frame.groupby("label"):
        assert rows["control_score"].median() <= rows["baseline"].median() + 0.1, label
        assert rows["selectivity"].median() > 0, label


def test_state_steering_coefficient_changes_the_steered_generation():
    short = {"steer_preset": "your own pairs", "steer_pos": "ab\nab", "steer_neg": "cd\nce", "steer_prompt": "the k",
             "steer_tokens": 4, "steer_site": "state"}  # a short prompt keeps the propagating state edits cheap
    at = explorer(view="Steering", **short)
    assert not problems(at), problems(at)
    assert any("no recurrent state to steer" in i for i in texts(at.info))  # the transformer (model A)
    assert "Steering at state" in figures(at)[0].layout.title.text  # the LSTM's coefficient sweep
    steered = [c.value for c in at.get("code")][1]
    at.slider(key="steer_coefficient").set_value(-8.0).run()
    assert not problems(at)
    assert any("coefficient -8" in m for m in texts(at.markdown))
    assert [c.value for c in at.get("code")][1] != steered


def test_probe_explore_runs_streamlit_on_the_app(monkeypatch):
    import subprocess

    from probe import cli

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["explore", "--port", "8599", "--", "--theme.base", "dark"]) == 0
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == Path(APP)
    assert cmd[cmd.index("--server.port") + 1] == "8599" and cmd[-2:] == ["--theme.base", "dark"]


@pytest.mark.numerical
@pytest.mark.skipif(not {"transformer", "lstm", "qrnn-hybrid"} <= set(probe.zoo_names()), reason="needs the zoo")
@pytest.mark.parametrize("models", [("zoo:transformer", "zoo:qrnn-hybrid"), ("zoo:lstm", "zoo:transformer")])
def test_default_steering_moves_the_metric_the_stated_way_on_the_zoo(models):
    """The Steering tab's defaults (plural minus singular subject, residual stream, coefficient +4) raise
    logit[a] - logit[i] after "the dog " at every layer of the sweep and at the layer used for generation,
    as the tab's caption and the README say. The first pair is the explorer's default models. Layer 0's
    residual stream is the embedding of the last token, a space in every text: its vector is zero."""
    from probe.data.contrast import NUMBER

    at = explorer(models, view="Steering")
    assert not problems(at), problems(at)
    assert at.selectbox(key="steer_preset").value == NUMBER.description
    assert at.radio(key="steer_site").value == "resid_pre" and at.slider(key="steer_coefficient").value == 4.0
    for fig in figures(at)[:2]:
        assert fig.data[0].name.startswith("layer 0") and np.ptp(array(fig.data[0].y)) < 1e-4  # see below
        for line in fig.data[1:]:  # one line per layer: metric against the coefficient
            x, y = list(array(line.x)), array(line.y)
            assert y[x.index(4.0)] > y[x.index(0.0)] + 0.05, (fig.layout.title.text, line.name)  # smallest: +0.13
    unsteered = [float(m.split("logit difference ")[1].rstrip(")")) for m in texts(at.markdown) if "Unsteered" in m]
    steered = [float(m.split("logit difference ")[1].rstrip(")")) for m in texts(at.markdown) if "Steered, " in m]
    assert len(unsteered) == len(steered) == 2 and all(s > u for u, s in zip(unsteered, steered))


def test_readme_notebooks_and_explorer_take_the_steering_pairs_from_one_source():
    """The contrast pairs are written once (probe.data.contrast); the README and notebook 04 import them."""
    import json

    from app.views.steering import PRESETS
    from probe.data.contrast import NUMBER

    assert NUMBER in PRESETS.values() and all(t.endswith(" ") for t in NUMBER.positive + NUMBER.negative)
    readme = (ROOT / "README.md").read_text()
    cells = json.loads((ROOT / "notebooks" / "04_patching_steering.ipynb").read_text())["cells"]
    notebook = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for source in (readme, notebook):
        assert "from probe.data.contrast import NUMBER" in source
        assert "steering_vector(model, NUMBER.positive" in source or "steering_vector(model, plural, singular" in source
        assert 'f"the {p}' not in source and "f\"the {s}" not in source


def test_side_by_side_heatmaps_share_one_colour_scale_and_show_it():
    """The same colour means the same value in both columns: a probability on [0, 1], KL from 0 to the larger
    maximum of the two models, patching scores on one symmetric range; the range is written under each figure."""
    at = explorer(view="Logit lens")
    assert not problems(at), problems(at)
    a, b = (fig.data[0] for fig in figures(at) if fig.data[0].type == "heatmap")
    assert (a.zmin, a.zmax) == (b.zmin, b.zmax) == (0.0, 1.0)
    assert sum("the same in both columns" in c for c in texts(at.caption)) == 2
    at.radio(key="logit_lens_color").set_value("kl").run()
    a, b = (fig.data[0] for fig in figures(at) if fig.data[0].type == "heatmap")
    top = max(array(a.z).max(), array(b.z).max())
    assert a.zmin == b.zmin == 0.0 and a.zmax == b.zmax == pytest.approx(top)
    assert min(array(a.z).max(), array(b.z).max()) < 0.9 * top  # the two models do differ: one scale matters

    at = explorer(view="Patching")
    assert not problems(at), problems(at)
    ranges = {(t.zmin, t.zmax) for fig in figures(at) for t in fig.data if t.type == "heatmap"}
    assert len(ranges) == 1
    (lo, hi), = ranges
    assert lo == -hi and hi >= 1.0


def test_lens_heatmap_of_a_long_input_shows_a_position_window():
    """At 512 tokens the heatmap shows a window of positions (a range slider) and labels its cells only when
    the window is narrow enough to read them; the hover keeps the top tokens of every cell."""
    text = "for i in range(10):\n    total += i * i\n" * 13  # 507 tokens with the BOS
    at = explorer(view="Logit lens", **{TEXT_KEY: text})
    assert not problems(at), problems(at)
    fig = next(fig.data[0] for fig in figures(at) if fig.data[0].type == "heatmap")
    assert array(fig.z).shape == (3, 64) and fig.texttemplate == "" and list(fig.x)[0].startswith("0:")
    assert array(fig.customdata).shape == (3, 64)
    at.slider(key="logit_lens_window").set_value((100, 119)).run()
    assert not problems(at), problems(at)
    for trace in (fig.data[0] for fig in figures(at) if fig.data[0].type == "heatmap"):
        assert array(trace.z).shape == (3, 20) and list(trace.x)[0].startswith("100:")
        assert trace.texttemplate != "" and len(trace.text[0]) == 20


def test_every_figure_and_table_has_a_download_button():
    at = explorer(view="Patching")
    assert not problems(at), problems(at)
    labels = [d.proto.label for d in at.get("download_button")]
    assert labels.count("Table (CSV)") == 2  # one per model
    assert labels.count("Figure (HTML)") + labels.count("Figure (PNG)") == len(at.get("plotly_chart"))


def test_the_view_is_restored_from_the_address():
    """Models, input, tab and options live in the URL's query parameters, so a shared address opens the same
    view: a page opened with them shows what they name (a choice is written as its label, as Streamlit does)."""
    at = AppTest.from_file(APP, default_timeout=240)
    at.query_params.update({"model_A": "demo: lstm (untrained)", "model_B": "demo: transformer (untrained)",
                            "view": "Logit lens", "logit_lens_color": "KL to the final distribution",
                            TEXT_KEY: "y = 2 * x\n"})
    at.run()
    assert not problems(at), problems(at)
    assert [t for t in texts(at.markdown) if t.startswith("##### ")] == ["##### Model A: demo:lstm",
                                                                       "##### Model B: demo:transformer"]
    assert at.text_area[0].value == "y = 2 * x\n" and texts(at.subheader) == ["Logit lens"]
    assert at.radio(key="logit_lens_color").value == "kl"
    assert "KL" in figures(at)[0].data[0].colorbar.title.text


def test_saliency_texts_share_one_colour_scale():
    """The saliency backgrounds of both models are scaled by the larger |attribution| of the two: the model
    with the smaller attributions is paler, and the shared range is written under each."""
    import re

    at = explorer(view="Saliency")
    assert not problems(at), problems(at)
    scales = [c for c in texts(at.caption) if c.startswith("Colour scale: |attribution|")]
    assert len(scales) == 2 and len({c.split(",")[0] for c in scales}) == 1
    html = [m for m in texts(at.markdown) if "<span title=" in m]
    strongest = [max(float(a) for a in re.findall(r"rgba\([\d,]+,([\d.]+)\)", h)) for h in html]
    assert len(strongest) == 2 and max(strongest) == 1.0 and min(strongest) < 1.0
