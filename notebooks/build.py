"""Write the tutorial notebooks from the cell sources below, run them and store their outputs.

    python notebooks/build.py                # rewrites notebooks/0*.ipynb, executed, figures as PNG
    python notebooks/build.py --no-execute   # sources only (outputs empty), e.g. to review a diff

The notebooks are kept as code here so that a change is reviewable as a diff; run this after
editing a cell and commit both. The build executes every notebook at its default sizes (nbclient,
this interpreter's kernel) and keeps the outputs, so they render on GitHub: each plotly figure is
stored as a PNG drawn by plotly's static export (kaleido and Chromium: ``pip install -e ".[docs]"``).
tests/test_notebooks.py checks that the committed sources equal this build's (outputs aside), that
every code cell has its output stored, and executes every notebook again with small sizes.
The notebooks run on the zoo models shipped in ``probe/zoo``, each named where it is loaded.

A notebook whose run time depends on sizes (number of models, windows, examples) sets them in
one cell tagged ``parameters`` (papermill's convention) with defaults meant for a reader (each
notebook runs in under two minutes on 2 cores); ``SMALL`` below holds the smaller values
tests/test_notebooks.py injects after that cell.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def parameters(text: str):
    """The cell of sizes a test may override (tagged ``parameters``; see ``SMALL``)."""
    cell = code(text)
    cell.metadata["tags"] = ["parameters"]
    return cell


QUICKSTART = [
    md("""
# 01 · Quickstart

`probe` gives transformers and recurrent language models (LSTM, QRNN, Mamba, RWKV, xLSTM, ...)
**one hook vocabulary**: the residual stream, the mixer's internals and, for recurrent layers,
the **state at every position**. This notebook loads a model, lists its hooks, caches a run,
reads the state, and edits it with hooks (an edit of the state propagates through the recurrence).
The model is the zoo's QRNN (`probe/zoo`: ten small byte-level models of ten architectures, trained
with one recipe on Python code; `probe.zoo_names()` lists them).
"""),
    code('''import torch
import probe

model = probe.load("zoo:qrnn").eval()   # 4 QRNN layers, d_model 128, bytes as tokens
model'''),
    md("""
## Hook names

Every block has the same block-level hooks (`hook_resid_pre`, `hook_mixer_in`, `hook_mixer_out`,
`hook_resid_mid`, `hook_mlp_out`, `hook_resid_post`); the mixer adds its own under `blocks.{i}.mixer.`.
Every hook whose name contains `hook_state` is part of the recurrent memory; together they are all of it.
"""),
    code('''for name in model.hook_dict:
    if name.startswith("blocks.0.") or name.startswith("blocks.1.mixer"):
        print(name)'''),
    code('''model.state_hook_names()'''),
    md("""
## `run_with_cache`

Returns the logits and an `ActivationCache`. Keys are full hook names or `(site, layer)` tuples.
"""),
    code('''text = "the keys to the cabinet are red."
logits, cache = model.run_with_cache(text)
print("tokens:", model.to_str_tokens(text)[:8], "...")
print("logits", tuple(logits.shape))
print("resid_post of layer 0", tuple(cache["resid_post", 0].shape))
print("next token after the text:", repr(model.to_string([logits[0, -1].argmax().item()])))'''),
    md("""
## The state at every position

State hooks fire once per forward with the whole `[batch, pos, ...]` tensor, so the cache holds the
memory after *every* token. The state after the last token is the one a continuation starts from:
running the text in two pieces (carrying `return_states`) gives the same logits as one run.
"""),
    code('''for name in model.state_hook_names():
    print(f"{name:40s} {tuple(cache[name].shape)}")'''),
    code('''tokens = model.to_tokens(text)
first, states = model(tokens[:, :10], return_states=True)
second = model(tokens[:, 10:], states=states)
whole = model(tokens)
print("max |pieces - whole| =", (torch.cat([first, second], 1) - whole).abs().max().item())'''),
    md("""
## `run_with_hooks`

A hook is `fn(tensor, hook) -> tensor or None`. Zero-ablating a layer's mixer output:
"""),
    code('''def ablate(t, hook):
    return torch.zeros_like(t)

ablated = model.run_with_hooks(text, fwd_hooks=[("blocks.0.hook_mixer_out", ablate)])
print("max logit change from ablating layer 0's mixer:", (ablated - logits).abs().max().item())'''),
    md("""
## A state edit propagates

Scaling the recurrent state of layer 0 at one position `t` changes every *later* position as if the
recurrence had carried the edited value, and leaves earlier positions untouched.
"""),
    code('''state_hook = next(n for n in model.state_hook_names() if n.endswith("hook_state"))  # layer 0's main state
t = 6

def edit(state, hook):
    state = state.clone()
    state[:, t] = 3.0 * state[:, t]
    return state

edited = model.run_with_hooks(text, fwd_hooks=[(state_hook, edit)])
change = (edited - logits).abs().amax(dim=-1)[0]
print("edited", state_hook, "at position", t)
print("change before t: %.1e" % change[:t].max().item())
print("change from t on:", [round(v, 4) for v in change[t:t + 6].tolist()])
assert change[:t].max() < 1e-5 and change[t + 1:].min() > 0   # float round-off only before t'''),
    md("""
The edit is carried by the recurrence itself: layer 0's own output (computed from the state) changes
at `t` and at every later position. (A cache of the *edited hook itself* shows the tensor the hook
returned, i.e. only position `t` changed; read a downstream hook to see the propagation.)
"""),
    code('''out_hook = "blocks.0.hook_mixer_out"
with model.hooks(fwd_hooks=[(state_hook, edit)]):
    _, after = model.run_with_cache(text, names_filter=out_hook)
diff = (after[out_hook] - cache[out_hook]).abs().amax(-1)[0]
print("layer 0 output change per position:", [round(v, 3) for v in diff.tolist()])'''),
]

LENS = [
    md("""
# 02 · Transformer vs RNN through the lens

The **logit lens** reads the residual stream after every layer through the final norm and the
unembedding; the **tuned lens** first applies a learned affine translator per layer (trained to match
the final distribution). Both are transformer tools. Do they read recurrent models too, and how early
does each architecture "know" its prediction? We compare the zoo's **transformer** with two recurrent
models, an **LSTM** and **RWKV**, all trained on the same Python code with the same recipe.
"""),
    code('''import pandas as pd
import plotly.express as px
import probe
from probe.data.code_corpus import stdlib_stream
from probe.methods import TunedLens, compare_lenses, logit_lens'''),
    parameters('''MODELS = ["transformer", "lstm", "rwkv"]  # zoo names: the transformer, then recurrent models
SEQ_LEN = 256            # tokens per held-out window (the zoo's training context)
HELD_OUT_WINDOWS = 16    # windows of the standard library's test split per model'''),
    code('''models = {name: probe.load(f"zoo:{name}").eval() for name in MODELS}
# the zoo trains on the stdlib "train" split and fitted its tuned lenses on "val": compare on "test"
held_out = stdlib_stream("test")
{name: " ".join(m.cfg.layout) for name, m in models.items()}'''),
    md("""
## The logit lens on one input

Layer x position: the top token the lens reads from the residual stream after each layer, coloured by the
KL divergence from the model's final distribution (0: the lens already reads the output). The transformer
first, then the LSTM on the same text.
"""),
    code('''TEXT = "def add(a, b):\\n    return a + b\\n"

logit_lens(models["transformer"], TEXT).figure()'''),
    code('''logit_lens(models["lstm"], TEXT).figure()'''),
    md("""
## Logit lens vs tuned lens, per layer, on held-out code

Every zoo model ships the tuned lens fitted for it (`TunedLens.load(model)` reads it from beside the
checkpoint). `compare_lenses` measures the mean `KL(final || lens)` per layer on held-out windows for
both lenses, for the embedding and the residual stream after every block but the last (after the last
block, the lens *is* the output: KL 0). Depth is the number of blocks read over the model's number of
blocks, so models of different depths share one axis.
"""),
    code('''rows = []
for name, m in models.items():
    lens = TunedLens.load(m)
    scores = compare_lenses(m, lens, held_out, seq_len=SEQ_LEN, max_windows=HELD_OUT_WINDOWS)
    rows.append(scores.assign(model=name, depth=scores["layer"] / m.cfg.n_layers))
table = pd.concat(rows, ignore_index=True)
table[["model", "label", "kl_logit", "kl_tuned", "reduction"]].round(3)'''),
    code('''long = table.melt(id_vars=["model", "depth"], value_vars=["kl_logit", "kl_tuned"], var_name="lens",
                  value_name="KL")
long["lens"] = long["lens"].map({"kl_logit": "logit lens", "kl_tuned": "tuned lens"})
px.line(long, x="depth", y="KL", color="model", line_dash="lens", markers=True,
        labels={"depth": "blocks read / number of blocks (0: the embedding)", "KL": "KL(final || lens), nats"},
        title="How far each layer is from the model's output, transformer vs RNNs")'''),
    md("""
The number of layers where the tuned lens reads closer to the output than the logit lens, and its mean
relative reduction of the KL (Belrose et al. 2023 for transformers; Paulo et al.
2024 find the same on Mamba and RWKV):
"""),
    code('''table.groupby("model", sort=False).agg(tuned_better=("tuned_better", "sum"), layers=("label", "size"),
                                          mean_reduction=("reduction", "mean")).round(2)'''),
    md("""
Both lenses read the recurrent models as they read the transformer: the KL falls block by block towards
the output in every model, and the tuned lens closes most of the gap at every layer. On this code the
transformer's residual stream is the farthest from its own output before its last block.
"""),
    md("""
The tuned lens of the RNN on the same text as above:
"""),
    code('''TunedLens.load(models["lstm"]).run(models["lstm"], TEXT).figure()'''),
    md("""
To fit a lens yourself (a minute or two per model on a CPU):
`TunedLens(model).fit(model, stdlib_stream("val"), steps=250)`, then `lens.save()` to keep it beside the
model. `examples/lens_zoo_table.py --full` refits and scores every zoo model.
"""),
]

MEMORY = [
    md("""
# 03 · What the state remembers

Linear **probes** read a label from the activations of each site and layer. For a recurrent model the
interesting comparison is the hidden output (`resid_post`, `mixer_out`) against the **state** (`state`:
every `hook_state*` of the layer, i.e. the whole memory after the token). **Memory maps** show which
past positions each position reads from. The model is the zoo's QRNN.
"""),
    code('''import probe
from probe.data.tasks import get_task
from probe.methods import collect_activations, fit_probes, hidden_vs_state, memory_map'''),
    parameters('''N_SENTENCES = 200     # agreement sentences to probe on'''),
    code('''model = probe.load("zoo:qrnn").eval()
task = get_task("agreement")
examples = task.examples(N_SENTENCES, seed=1)
print(examples[0].text, examples[0].labels["number"][:3])'''),
    md("""
## Probes on hidden vs state

`collect_activations` takes `(tokens, {label: per-token values})` pairs; the label here is the number
(singular/plural) of the sentence's subject, which the model must remember until the verb.
"""),
    code('''data = [(e.tokens, {"number": e.labels["number"]}) for e in examples]
acts = collect_activations(model, data, sites=["resid_post", "mixer_out", "state"], max_dim=64)
probes = fit_probes(acts, "number", max_iter=100)
probes.to_frame()[["site", "layer", "score", "baseline", "control_score", "selectivity"]].round(3)'''),
    md("""
Each probe is also refitted on a **control task** (`control_score`): every sentence takes the label
sequence of another sentence, so the control keeps how often each label occurs and how labels run along
a sentence, but has nothing to do with the text. A probe beats the majority baseline on it only by
reading the position or the label frequency. **Selectivity** = score - control score is what the
activations hold about *this* sentence beyond that: near 0, the score is explained by position and
frequency alone; **negative**, the real label is not linearly readable there (the probe sits near the
baseline while the control fits a positional pattern). A control that gives every token type its own
label (Hewitt & Liang 2019) would be a poor one here: it is a function of the token at the probed
position, which every residual stream holds, so it scores about 1.0 everywhere and makes any contextual
label look negative.
"""),
    code('''hidden_vs_state([probes])'''),
    code('''probes.figure("number")'''),
    md("""
## Memory maps

For each layer, the influence of every earlier position on each position: exact implicit attention for
linear recurrences (QRNN, Mamba, RWKV, ...), the attention pattern for attention, gradient influence
for nonlinear ones (LSTM, sLSTM). `state_sizes` measures the state's norm after every token.
"""),
    code('''mm = memory_map(model, examples[0].text)
mm.to_frame().head()'''),
    code('''mm.figure(layer=0)'''),
]

PATCHING = [
    md("""
# 04 · Patching and steering

**Activation patching** copies one site (layer x position) from a *clean* run into a *corrupted* run and
measures how much of the clean answer comes back (1 = all). Sites include `state`: patching the whole
memory after a token. **Attribution patching** is its first-order (gradient) estimate, exact total
derivatives through the recurrence. **Steering** adds a difference-of-means vector to the residual
stream or to the state.

Pairs come from the synthetic tasks in `probe.data.tasks`: associative recall and subject-verb agreement.
"""),
    code('''import probe
from probe.data.contrast import NUMBER            # the pairs the README and the explorer use
from probe.data.tasks import get_task
from probe.data.tasks.agreement import NOUNS
from probe.methods import activation_patching, attribution_patching, steer, steering_vector

model = probe.load("zoo:qrnn-hybrid").eval()      # two QRNN layers, attention, a feed-forward layer
" ".join(model.cfg.layout)'''),
    md("""
## Pairs that differ in the context

A task example's own minimal pair differs *at* the answer; patching needs two inputs that differ
*earlier*, so that each predicts a different answer at the same position. For recall we change the value
stored under the queried key; the clean run should answer the original value, the corrupted one the contrast.
Token positions are text positions + 1 (the BOS token).
"""),
    code('''def recall_pair(e):
    p, s = e.answer_positions[0], e.meta["source_positions"][0]
    contrast = chr(e.contrast[0])
    corrupted = e.text[:s] + contrast + e.text[s + 1:p]
    return e.text[:p], corrupted, chr(e.correct[0]), contrast

recall = get_task("recall", min_pairs=3, max_pairs=4, max_queries=1)
e = recall.examples(1, seed=3)[0]
clean, corrupted, answer, contrast = recall_pair(e)
print(repr(clean), "->", answer)
print(repr(corrupted), "->", contrast)'''),
    code('''patch = activation_patching(model, clean, corrupted, answer=answer, contrast=contrast)
print(f"clean {patch.clean_metric:.3f}  corrupted {patch.corrupted_metric:.3f}  "
      f"({patch.forward_passes} forward passes, {patch.seconds:.1f} s)")
patch.to_frame().sort_values("score", ascending=False).head(8)'''),
    code('''patch.figure()'''),
    md("""
A score is the share of the clean answer a patched site restores (1: all of it); the `state` rows
show where the recurrent memory carries the changed value to the query.
Attribution patching gives the same table from two forward and a few backward passes; `compare=True`
also runs the real sweep and reports the correlation per site.
"""),
    code('''attr = attribution_patching(model, clean, corrupted, answer=answer, contrast=contrast, sites=["resid_pre", "state"],
                            compare=True)
attr.agreement()'''),
    md("""
## Agreement

Swap the subject noun for one of the other number and the same length, so every position lines up.
"""),
    code('''def agreement_pair(e):
    p, end = e.answer_positions[0], e.meta["subject_pos"] + 1
    start = e.text.rindex(" ", 0, end) + 1
    noun, other = e.text[start:end], 1 - int(e.meta["plural"])
    swaps = [forms[other] for forms in NOUNS if len(forms[other]) == len(noun)]
    if not swaps:
        return None
    return e.text[:p], e.text[:start] + swaps[0] + e.text[end:p], chr(e.correct[0]), chr(e.contrast[0])

pairs = [q for q in map(agreement_pair, get_task("agreement").examples(20, seed=0)) if q]
clean, corrupted, answer, contrast = min(pairs, key=lambda q: len(q[0]))
print(repr(clean), "->", answer, "|", repr(corrupted), "->", contrast)
agree = activation_patching(model, clean, corrupted, answer=answer, contrast=contrast, sites=["resid_pre", "state"])
agree.to_frame().groupby(["site", "layer"])["score"].agg(["min", "max"])'''),
    md("""
## Steering

A steering vector is the mean difference of a site between positive and negative examples (per layer).
With `site="state"` it covers the whole memory of each recurrent layer, and the addition runs through
the recurrence as it would in token-by-token generation.
"""),
    code('''plural, singular = NUMBER.positive, NUMBER.negative
vec = steering_vector(model, plural, singular)                 # residual stream (resid_pre)
out = steer(model, NUMBER.prompt, vec, coefficients=[-4, 0, 4], answer=NUMBER.answer, contrast=NUMBER.contrast)
out.to_frame()'''),
    code('''state_vec = steering_vector(model, plural, singular, site="state")
print(state_vec)
out = steer(model, NUMBER.prompt, state_vec, coefficients=[-4, 0, 4], answer=NUMBER.answer, contrast=NUMBER.contrast,
            max_new_tokens=4)
out.to_frame()'''),
]

BYO = [
    md("""
# 05 · Bring your own model

`probe.from_hf` converts a Hugging Face `transformers` model (GPT-2, Mamba, RWKV-4, xLSTM, ...) into a
`HookedLM` with the same numbers, so every method (and the state hooks) works on it.
`probe.from_transformer_lens` wraps a TransformerLens 4 `TransformerBridge` instead: TransformerLens
computes, `probe` renames the hooks. Everything here is built offline from tiny random models; with
network access `probe.from_hf("state-spaces/mamba-130m-hf")` loads real weights the same way.
"""),
    code('''import torch
import probe
from probe.methods import logit_lens

VOCAB = 100

def noisy(model, scale=0.2):
    """Random weights of a visible size (default inits leave some paths near zero)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()

ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(1))'''),
    md("## Mamba"),
    code('''from transformers import MambaConfig, MambaForCausalLM

hf = noisy(MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0)), scale=0.05)
mamba = probe.from_hf(hf)
with torch.no_grad():
    print(mamba, "| max |probe - transformers| =", (mamba(ids) - hf(ids).logits).abs().max().item())
mamba.state_hook_names()'''),
    code('''_, cache = mamba.run_with_cache(ids)
{name: tuple(cache[name].shape) for name in mamba.state_hook_names()}'''),
    md("## RWKV-4"),
    code('''from transformers import RwkvConfig, RwkvForCausalLM

hf = noisy(RwkvForCausalLM(RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                      attention_hidden_size=32, rescale_every=0, context_length=64,
                                      bos_token_id=0, eos_token_id=0)))
rwkv = probe.from_hf(hf)
with torch.no_grad():
    print(rwkv, "| max |probe - transformers| =", (rwkv(ids) - hf(ids).logits).abs().max().item())
rwkv.state_hook_names()'''),
    md("## GPT-2"),
    code('''from transformers import GPT2Config, GPT2LMHeadModel

hf = noisy(GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)))
gpt2 = probe.from_hf(hf)
with torch.no_grad():
    print(gpt2, "| max |probe - transformers| =", (gpt2(ids) - hf(ids).logits).abs().max().item())
logit_lens(gpt2, ids).to_frame()'''),
    md("""
## A TransformerLens 4 bridge

Offline, `TransformerBridge.boot_transformers` needs the model and a tokenizer saved in a directory;
a small word-level tokenizer is enough. Convert with `from_hf` first: booting rewrites the HF model's modules.
"""),
    code('''import tempfile
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformer_lens.model_bridge import TransformerBridge

vocab = {f"w{i}": i for i in range(98)} | {"<unk>": 98, "<|endoftext|>": 99}
core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
core.pre_tokenizer = pre_tokenizers.Whitespace()
tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<|endoftext|>",
                              eos_token="<|endoftext|>", pad_token="<|endoftext|>")
torch.manual_seed(0)
hf = noisy(GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=99, eos_token_id=99)))
folder = tempfile.mkdtemp()
hf.save_pretrained(folder)
tok.save_pretrained(folder)
converted = probe.from_hf(hf, tokenizer=tok)
bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, device="cpu")
adapter = probe.from_transformer_lens(bridge)'''),
    code('''TEXT = "w1 w2 w3 w7 w9 w4 w4 w2"
logits_a, cache_a = adapter.run_with_cache(TEXT)
logits_c, cache_c = converted.run_with_cache(TEXT)
print("same logits through both paths:", (logits_a - logits_c).abs().max().item())
print("probe hook names on the bridge:", sorted(cache_a.keys())[:6])
print("pattern", tuple(cache_a["blocks.1.mixer.hook_pattern"].shape))'''),
    code('''print("logit lens KL per layer, bridge:   ", logit_lens(adapter, TEXT).kl.mean(-1).flatten().tolist())
print("logit lens KL per layer, converted:", logit_lens(converted, TEXT).kl.mean(-1).flatten().tolist())'''),
]

#: smaller sizes for the tests, injected after a notebook's ``parameters`` cell
SMALL = {
    "02_lens.ipynb": 'MODELS = ["transformer", "lstm"]\nSEQ_LEN = 64\nHELD_OUT_WINDOWS = 2',
    "03_state_memory.ipynb": "N_SENTENCES = 24",
}

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_lens.ipynb": LENS,
    "03_state_memory.ipynb": MEMORY,
    "04_patching_steering.ipynb": PATCHING,
    "05_bring_your_own.ipynb": BYO,
}


def notebook(name: str):
    """The notebook ``name`` as written from its cells (no outputs), with stable cell ids."""
    nb = new_notebook(cells=[nbformat.from_dict(c) for c in NOTEBOOKS[name]],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                "language_info": {"name": "python"}})
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding gives the same sources
    return nb


def kernel_name() -> str:
    """A Jupyter kernel running this interpreter (registered on the fly when there is none)."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    for name, spec in KernelSpecManager().get_all_specs().items():
        argv = spec["spec"]["argv"]
        if argv and Path(argv[0]).absolute() == Path(sys.executable).absolute():
            return name
    from ipykernel.kernelspec import install

    install(prefix=sys.prefix, kernel_name="probe-venv", display_name="probe venv")
    return "probe-venv"


PLOTLY = "application/vnd.plotly.v1+json"


def execute(nb, timeout: int = 600) -> float:
    """Run ``nb`` in place in a fresh kernel (in notebooks/, figures kept as plotly JSON); seconds taken."""
    import os
    import time

    import nbclient

    env = dict(os.environ, PLOTLY_RENDERER="plotly_mimetype")
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name(), timeout=timeout, record_timing=False,
                                     resources={"metadata": {"path": str(HERE)}})
    t0 = time.perf_counter()
    with client.setup_kernel(env=env, cwd=str(HERE)):
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
    return time.perf_counter() - t0


def static_figures(nb, attempts: int = 3) -> int:
    """Replace every plotly figure among ``nb``'s outputs by a PNG of it (GitHub draws no plotly JSON);
    returns how many. The export drives a headless browser, which can fail on a busy machine: retried."""
    import base64
    import json

    import plotly.io as pio

    count = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            spec = out.get("data", {}).pop(PLOTLY, None)
            if spec is None:
                continue
            fig = pio.from_json(json.dumps(spec))
            for attempt in range(attempts):
                try:
                    png = fig.to_image(format="png")  # at the layout's size (plotly's default 700 x 500)
                    break
                except Exception:
                    if attempt == attempts - 1:
                        raise
            out["data"]["image/png"] = base64.b64encode(png).decode()
            count += 1
    return count


def build(out_dir: Path = HERE, run: bool = True) -> list[Path]:
    """Write every notebook to ``out_dir`` (executed, with outputs, when ``run``)."""
    paths = []
    for name in NOTEBOOKS:
        nb = notebook(name)
        if run:
            print(f"running {name} ...", flush=True)
            seconds = execute(nb)
            print(f"  {seconds:.0f} s to run, {static_figures(nb)} figures drawn as PNG", flush=True)
        path = out_dir / name
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write (and run) the tutorial notebooks.")
    parser.add_argument("--no-execute", action="store_true", help="write the sources only, outputs empty")
    parser.add_argument("--only", nargs="+", choices=sorted(NOTEBOOKS), help="these notebooks only")
    args = parser.parse_args()
    if args.only:
        NOTEBOOKS = {n: NOTEBOOKS[n] for n in args.only}
    for p in build(run=not args.no_execute):
        print("wrote", p)
