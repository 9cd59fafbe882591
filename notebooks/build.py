"""Write the tutorial notebooks (outputs empty) from the cell sources below.

    python notebooks/build.py          # rewrites notebooks/0*.ipynb

The notebooks are kept as code here so that a change is reviewable as a diff; run this after
editing a cell and commit both. tests/test_notebooks.py executes every notebook.
Each notebook runs on a zoo model when one is shipped, else on small random models (the
numbers then mean nothing, but every call is the real one).

A notebook whose run time depends on sizes (training steps, number of examples) sets them in
one cell tagged ``parameters`` (papermill's convention) with defaults meant for a reader;
``SMALL`` below holds the smaller values tests/test_notebooks.py injects after that cell.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

# the model-loading cell shared by the notebooks: a zoo model, or a random one offline
LOAD = '''import torch
import probe

def load_model(name=None, layout=("qrnn", "lstm", "attn")):
    """zoo:<name> (default: the first zoo model); a small random model when no zoo is shipped."""
    names = probe.zoo_names()
    if names:
        return probe.load(f"zoo:{name or names[0]}").eval()
    torch.manual_seed(0)
    cfg = probe.ModelConfig(d_model=32, layout=list(layout), name="random-" + "-".join(layout))
    return probe.HookedLM(cfg).eval()

print("zoo:", probe.zoo_names() or "none shipped: using random models")'''


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
"""),
    code(LOAD),
    code('''model = load_model()
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

The **logit lens** reads the residual stream after every layer through the final norm and the unembedding;
the **tuned lens** first applies a learned affine translator per layer (trained to match the final
distribution). We compare both across the zoo (or across small random transformer / QRNN / LSTM models
when no zoo is shipped): how early does each architecture "know" its prediction?
"""),
    code(LOAD),
    parameters('''N_MODELS = 3          # zoo models to compare
STEPS = 150           # tuned-lens training steps per model (8 windows of SEQ_LEN tokens each)
SEQ_LEN = 128         # tokens per window
HELD_OUT_WINDOWS = 16 # held-out windows per model for the comparison'''),
    code('''from probe.data.code_corpus import stdlib_stream
from probe.methods import TunedLens, compare_lenses, logit_lens

names = probe.zoo_names()[:N_MODELS]
models = [load_model(n) for n in names] if names else [load_model(layout=l) for l in
                                                      (("attn", "attn"), ("qrnn", "qrnn"), ("lstm", "lstm"))][:N_MODELS]
# the zoo trains on the stdlib "train" split: fit lenses on "val", compare them on "test"
train, held_out = stdlib_stream("val"), stdlib_stream("test")
[m.cfg.name for m in models]'''),
    code('''TEXT = "def add(a, b):\\n    return a + b\\n"

res = logit_lens(models[0], TEXT)
res.to_frame()'''),
    code('''res.figure()   # layer x position: the lens' top token, coloured by KL to the final distribution'''),
    md("""
## Tuned lens per model

Each lens is trained on the `val` split and scored on held-out `test` windows by `compare_lenses`:
mean `KL(final || lens)` per layer for the logit lens and the tuned lens. `lens.save()` /
`TunedLens.load(model)` keep a lens next to its model.
"""),
    code('''import pandas as pd

lenses, rows = {}, []
for m in models:
    lens = TunedLens(m).fit(m, train, steps=STEPS, seq_len=SEQ_LEN, batch_size=8)
    lenses[m.cfg.name] = lens
    scores = compare_lenses(m, lens, held_out, seq_len=SEQ_LEN, max_windows=HELD_OUT_WINDOWS)
    rows.append(scores.assign(model=m.cfg.name))
table = pd.concat(rows)
table.pivot_table(index=["model", "layer", "label"], values=["kl_logit", "kl_tuned"])'''),
    md("""
Where the tuned lens has the lower held-out KL (Paulo et al. 2024 report it wins on Mamba and RWKV as on
transformers):
"""),
    code('''table.groupby("model")["tuned_better"].agg(["sum", "count"])'''),
    code('''lenses[models[0].cfg.name].run(models[0], TEXT).figure()'''),
]

MEMORY = [
    md("""
# 03 · What the state remembers

Linear **probes** read a label from the activations of each site and layer. For a recurrent model the
interesting comparison is the hidden output (`resid_post`, `mixer_out`) against the **state** (`state`:
every `hook_state*` of the layer, i.e. the whole memory after the token). **Memory maps** show which
past positions each position reads from.
"""),
    code(LOAD),
    parameters('''N_SENTENCES = 200     # agreement sentences to probe on'''),
    code('''from probe.data.tasks import get_task
from probe.methods import collect_activations, fit_probes, hidden_vs_state, memory_map

model = load_model(layout=("qrnn", "lstm"))
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
probes.to_frame()'''),
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
    code(LOAD),
    code('''from probe.data.tasks import get_task
from probe.data.tasks.agreement import NOUNS
from probe.methods import activation_patching, attribution_patching, steer, steering_vector

model = load_model(layout=("qrnn", "attn"))'''),
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
With random weights the clean and corrupted metrics can be close, so the normalised scores are noisy;
on a zoo model trained on recall the `state` row lights up from the changed value onward.
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
    code('''singular = [f"the {s} " for s, _ in NOUNS[:8]]
plural = [f"the {p} " for _, p in NOUNS[:8]]
vec = steering_vector(model, plural, singular)                 # residual stream (resid_pre)
out = steer(model, "the dog ", vec, coefficients=[-4, 0, 4], answer="a", contrast="i")
out.to_frame()'''),
    code('''state_vec = steering_vector(model, plural, singular, site="state")
print(state_vec)
out = steer(model, "the dog ", state_vec, coefficients=[-4, 0, 4], answer="a", contrast="i", max_new_tokens=4)
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
    "02_lens.ipynb": "N_MODELS = 2\nSTEPS = 3\nSEQ_LEN = 32\nHELD_OUT_WINDOWS = 2",
    "03_state_memory.ipynb": "N_SENTENCES = 24",
}

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_lens.ipynb": LENS,
    "03_state_memory.ipynb": MEMORY,
    "04_patching_steering.ipynb": PATCHING,
    "05_bring_your_own.ipynb": BYO,
}


def build(out_dir: Path = HERE) -> list[Path]:
    paths = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"},
                                                 "language_info": {"name": "python"}})
        for i, cell in enumerate(nb.cells):
            cell.id = f"{name[:2]}-{i:02d}"  # stable ids: rebuilding gives the same file
        path = out_dir / name
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in build():
        print("wrote", p)
