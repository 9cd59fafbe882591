"""HookedLM versus the reference implementations at the same weights, in the same run.

For transformers' GPT-2, RWKV-4 and xLSTM (random weights, converted with ``probe.from_hf``):
tokens/s and peak memory of

* ``ref_plain`` / ``ours_plain``: the forward pass with no hooks (the reference with ``use_cache=False``);
* ``ref_hidden``: the reference with ``output_hidden_states=True`` (its nearest thing to a cache);
* ``ours_full_cache``: ``run_with_cache`` of every hook (states included);
* ``tl_full_cache`` (GPT-2 only): TransformerLens 4's ``TransformerBridge.run_with_cache``;

plus ``plain_time_ratio = t(ours_plain) / t(ref_plain)`` (target <= 1.1 on CPU) and the logits'
max abs difference (parity check in the same run). No timing is asserted.
"""
from __future__ import annotations

import copy
import statistics
import tempfile

import torch

import probe

try:
    from benchmarks.common import peak_memory, timeit
except ImportError:  # run as a script from benchmarks/
    from common import peak_memory, timeit

VOCAB = 512


def _gpt2(d, n):
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=d, n_layer=n, n_head=max(1, d // 64), n_positions=4096,
                                      bos_token_id=0, eos_token_id=0))


def _rwkv(d, n):
    from transformers import RwkvConfig, RwkvForCausalLM
    return RwkvForCausalLM(RwkvConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=n, rescale_every=0,
                                      context_length=4096, bos_token_id=0, eos_token_id=0))


def _xlstm(d, n):
    from transformers import xLSTMConfig, xLSTMForCausalLM
    return xLSTMForCausalLM(xLSTMConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=n, num_heads=4,
                                        mode="inference", chunk_size=64, autocast_kernel_dtype="float32",
                                        use_cache=False, pad_token_id=1, bos_token_id=0, eos_token_id=2))


REFERENCES = {"gpt2": _gpt2, "rwkv": _rwkv, "xlstm": _xlstm}


def _bridge(hf_model):
    """A TransformerBridge over ``hf_model`` booted offline from a temp dir (model + a WordLevel tokenizer)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from transformer_lens.model_bridge import TransformerBridge

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<unk>": VOCAB - 1}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  unk_token="<unk>", bos_token="<unk>", eos_token="<unk>")
    d = tempfile.mkdtemp(prefix="bench-gpt2-")
    hf_model.save_pretrained(d)
    tok.save_pretrained(d)
    return TransformerBridge.boot_transformers(d, hf_model=hf_model, device="cpu")


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


def measure(arch: str, d: int, n: int, batch: int, T: int, repeats: int, device: str) -> dict:
    torch.manual_seed(0)
    ref = REFERENCES[arch](d, n).to(device).eval()
    ours = probe.from_hf(ref, device=device)
    toks = torch.randint(0, VOCAB, (batch, T), device=device)
    runs = {
        "ref_plain": lambda: ref(toks, use_cache=False).logits,
        "ref_hidden": lambda: ref(toks, use_cache=False, output_hidden_states=True).logits,
        "ours_plain": lambda: ours(toks),
        "ours_full_cache": lambda: ours.run_with_cache(toks)[0],
    }
    row = {"bench": "references", "arch": arch, "d_model": d, "n_layers": n, "batch": batch, "T": T,
           "params": sum(p.numel() for p in ours.parameters()), "device": device}
    with torch.no_grad():
        row["logits_max_abs_diff"] = (runs["ref_plain"]() - runs["ours_plain"]()).abs().max().item()
        if arch == "gpt2":  # the bridge wraps (rewrites) the model it boots on: give it its own copy
            bridge = _bridge(copy.deepcopy(ref))
            runs["tl_full_cache"] = lambda: bridge.run_with_cache(toks)[0]
        for name, seconds in interleaved(runs, repeats).items():
            row[f"{name}_tok_s"] = batch * T / seconds
        for name, fn in runs.items():
            row[f"{name}_peak_mb"] = peak_memory(fn, device) / 2**20
    row["plain_time_ratio"] = row["ref_plain_tok_s"] / row["ours_plain_tok_s"]
    row["full_cache_over_plain"] = row["ours_plain_tok_s"] / row["ours_full_cache_tok_s"]
    return row


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quick:
        plan, repeats = [(64, 2, 1, 32)], 1
    else:
        plan, repeats = [(256, 4, 1, 256), (256, 4, 1, 1024), (256, 4, 4, 1024)], 5
    rows = []
    for d, n, batch, T in plan:
        for arch in REFERENCES:
            try:
                rows.append(measure(arch, d, n, batch, T, repeats, device))
            except Exception as exc:  # a missing optional reference must not hide the others
                rows.append({"bench": "references", "arch": arch, "d_model": d, "T": T,
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    return rows


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
