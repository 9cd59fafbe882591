"""HookedLM versus the reference implementations at the same weights, in the same run.

For transformers' GPT-2, RWKV-4 and xLSTM (random weights, converted with ``probe.from_hf``):
tokens/s and peak memory of

* ``ref_plain`` / ``ours_plain``: the forward pass with no hooks (the reference with ``use_cache=False``);
* ``ref_hidden``: the reference with ``output_hidden_states=True`` (its nearest thing to a cache);
* ``ours_full_cache``: ``run_with_cache`` of every hook (states included);
* ``tl_full_cache`` (GPT-2 only): TransformerLens 4's ``TransformerBridge.run_with_cache``;

plus ``plain_time_ratio = t(ours_plain) / t(ref_plain)`` (target <= 1.1 on CPU) and the logits'
max abs difference (parity check in the same run).

Mamba (transformers' ``MambaForCausalLM``, its slow torch path on CPU, converted with
``probe.io.convert_mamba.mamba_from_hf``; a tiny and a ~100M config, :func:`measure_mamba`):
``ref_plain`` / ``ours_plain`` as above, and full-state capture, ``ours_state_cache`` (``run_with_cache``
of every ``hook_state``) vs ``tl_state_cache`` (TransformerLens 4's ``TransformerBridge`` with
``eager_scan=True`` on every mixer, caching ``hook_ssm_state``): ``state_time_ratio = t(ours) / t(TL)``
(target < 1), ``state_lighter = peak(TL) / peak(ours)`` (target >= 4), and
``state_overhead_lighter``, the same ratio for the memory beyond the returned states (equal in both).
``ours_all_states`` adds the conv windows (``hook_state_conv``: all of the memory). The states
themselves are compared in the same run (``state_max_abs_diff``).

LSTM: probe's mixer (hooks machinery included) against the ``torch.nn.LSTM`` it runs, one layer
(:func:`measure_lstm`).

Peak memory: see :func:`benchmarks.common.peak_memory`. No timing is asserted.
"""
from __future__ import annotations

import copy
import statistics
import tempfile

import torch

import probe

try:
    from benchmarks.common import hf_logits, interleaved, peak_memory
except ImportError:  # run as a script from benchmarks/
    from common import hf_logits, interleaved, peak_memory

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


def _mamba(d, n):
    from transformers import MambaConfig, MambaForCausalLM
    return MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=d, state_size=16, num_hidden_layers=n, expand=2,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0))


REFERENCES = {"gpt2": _gpt2, "rwkv": _rwkv, "xlstm": _xlstm}
#: Mamba sizes (d_model, layers): "100M" is mamba-130m's body (d 768, 24 layers) with a 512-token vocabulary
MAMBA_SIZES = {"tiny": (64, 2), "100M": (768, 24)}


def _bridge(hf_model):
    """A TransformerBridge over ``hf_model`` booted offline: the model and a WordLevel tokenizer are
    saved to a temporary directory (removed after booting), so nothing is fetched from the hub."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from transformer_lens.model_bridge import TransformerBridge

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<unk>": VOCAB - 1}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  unk_token="<unk>", bos_token="<unk>", eos_token="<unk>")
    with tempfile.TemporaryDirectory(prefix=f"bench-{hf_model.config.model_type}-") as d:
        hf_model.save_pretrained(d)
        tok.save_pretrained(d)
        return TransformerBridge.boot_transformers(d, hf_model=hf_model, device=str(hf_model.device))


def mamba_bridge(hf_model):
    """TransformerLens 4's bridge over a copy of a transformers Mamba, every mixer switched to its
    ``eager_scan`` (the Python S6 loop that fires ``hook_ssm_state``; HF's path never exposes it)."""
    bridge = _bridge(copy.deepcopy(hf_model))  # the bridge rewrites the model it boots on
    for block in bridge.blocks:
        block.mixer.eager_scan = True
    return bridge


def bridge_states(bridge, toks):
    """``(logits, {layer: states [batch, pos, d_inner, d_state]})`` from the bridge's ``hook_ssm_state``
    (cached as ``[batch, d_inner, pos, d_state]``; the eager scan runs only with ``use_cache=False``)."""
    logits, cache = bridge.run_with_cache(toks, names_filter=lambda name: name.endswith("hook_ssm_state"),
                                          use_cache=False)
    if len(cache) != len(bridge.blocks):
        raise RuntimeError(f"the bridge cached {len(cache)} hook_ssm_state tensors for {len(bridge.blocks)} layers "
                           "(eager_scan not taken?)")
    return logits, {i: cache[f"blocks.{i}.mixer.hook_ssm_state"].transpose(1, 2) for i in range(len(bridge.blocks))}


def _time_runs(row: dict, runs: dict, repeats: int, tokens: int, device: str) -> None:
    """Add each run's tokens/s and peak memory to ``row``, and the two ratios every table reports."""
    for name, seconds in interleaved(runs, repeats).items():
        row[f"{name}_tok_s"] = tokens / seconds
    for name, fn in runs.items():
        row[f"{name}_peak_mb"] = peak_memory(fn, device) / 2**20
    row["plain_time_ratio"] = row["ref_plain_tok_s"] / row["ours_plain_tok_s"]
    row["full_cache_over_plain"] = row["ours_plain_tok_s"] / row["ours_full_cache_tok_s"]
    if "ours_cache_no_state_tok_s" in row:
        row["cache_no_state_over_plain"] = row["ours_plain_tok_s"] / row["ours_cache_no_state_tok_s"]


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
    if ours.state_hook_names():  # what the full cache costs beyond the per-position states
        runs["ours_cache_no_state"] = lambda: ours.run_with_cache(toks, names_filter=lambda n: "hook_state" not in n)[0]
    row = {"bench": "references", "arch": arch, "d_model": d, "n_layers": n, "batch": batch, "T": T,
           "params": sum(p.numel() for p in ours.parameters()), "device": device}
    with torch.no_grad():
        row["logits_max_abs_diff"] = (runs["ref_plain"]() - runs["ours_plain"]()).abs().max().item()
        if arch == "gpt2":  # the bridge wraps (rewrites) the model it boots on: give it its own copy
            bridge = _bridge(copy.deepcopy(ref))
            runs["tl_full_cache"] = lambda: bridge.run_with_cache(toks)[0]
        _time_runs(row, runs, repeats, batch * T, device)
    return row


def measure_mamba(size: str, batch: int, T: int, repeats: int, device: str) -> dict:
    """Mamba: transformers' forward vs ours (no hooks), and full-state capture: ours
    (``run_with_cache`` of ``hook_state``; also of every ``hook_state*``, conv windows included)
    vs TransformerLens 4's bridge with ``eager_scan`` caching ``hook_ssm_state`` (the same
    ``[batch, pos, d_inner, d_state]`` numbers, checked in the same run)."""
    from probe.io.convert_mamba import mamba_from_hf

    d, n = MAMBA_SIZES[size]
    torch.manual_seed(0)
    ref = _mamba(d, n).to(device).eval()
    ours = mamba_from_hf(ref).to(device)
    toks = torch.randint(0, VOCAB, (batch, T), device=device)
    state_names = [f"blocks.{i}.mixer.hook_state" for i in range(n)]

    runs = {
        "ref_plain": lambda: hf_logits(ref, toks),
        "ours_plain": lambda: ours(toks),
        "ours_state_cache": lambda: ours.run_with_cache(toks, names_filter=state_names),
        "ours_all_states": lambda: ours.run_with_cache(toks, names_filter=ours.state_hook_names()),
    }
    row = {"bench": "references", "arch": "mamba", "size": size, "d_model": d, "n_layers": n, "batch": batch, "T": T,
           "params": sum(p.numel() for p in ours.parameters()), "device": device}
    with torch.no_grad():
        logits, cache = runs["ours_state_cache"]()
        row["logits_max_abs_diff"] = (hf_logits(ref, toks) - logits).abs().max().item()
        row["state_cache_mb"] = sum(t.nbytes for t in cache.values()) / 2**20
        try:
            bridge = mamba_bridge(ref)
            tl_logits, tl_states = bridge_states(bridge, toks)
        except Exception as exc:  # say exactly why the bridge could not run
            row["tl_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        else:
            row["tl_logits_max_abs_diff"] = (tl_logits - logits).abs().max().item()
            row["state_max_abs_diff"] = max((tl_states[i] - cache[name]).abs().max().item()
                                            for i, name in enumerate(state_names))
            row["state_max_rel_diff"] = max(((tl_states[i] - cache[name]).abs().max() / cache[name].abs().max()).item()
                                            for i, name in enumerate(state_names))  # per layer, to its largest state
            runs["tl_state_cache"] = lambda: bridge_states(bridge, toks)
        del cache, logits
        for name, seconds in interleaved(runs, repeats).items():
            row[f"{name}_tok_s"] = batch * T / seconds
        for name, fn in runs.items():
            row[f"{name}_peak_mb"] = peak_memory(fn, device) / 2**20
    row["plain_time_ratio"] = row["ref_plain_tok_s"] / row["ours_plain_tok_s"]
    if "tl_state_cache_tok_s" in row:
        row["state_time_ratio"] = row["tl_state_cache_tok_s"] / row["ours_state_cache_tok_s"]  # < 1: ours faster
        row["state_lighter"] = row["tl_state_cache_peak_mb"] / row["ours_state_cache_peak_mb"]  # target >= 4
        cache_mb = row["state_cache_mb"]  # the returned states, the same in both: what each needs beyond them
        row["state_overhead_lighter"] = ((row["tl_state_cache_peak_mb"] - cache_mb)
                                         / max(row["ours_state_cache_peak_mb"] - cache_mb, 1e-3))
    return row


def measure_lstm(d: int, batch: int, T: int, repeats: int, device: str) -> dict:
    """probe's LSTM mixer (one layer, hooks machinery included) vs the ``torch.nn.LSTM`` it wraps, same
    weights and input: no hooks, and every hook cached (gates and ``c`` rebuilt from ``h``)."""
    torch.manual_seed(0)
    model = probe.HookedLM(probe.ModelConfig(d_model=d, n_heads=4, layout=["lstm"])).to(device).eval()
    mixer = model.blocks[0].mixer
    x = torch.randn(batch, T, d, device=device)
    names = [n for n in model.hook_dict if n.startswith("blocks.0.mixer.hook_")]

    def cached():
        store = {}

        def save(t, hook):
            store[hook.name] = t.detach()

        with model.hooks(fwd_hooks=[(n, save) for n in names]):
            return mixer(x)[0], store

    runs = {"ref_plain": lambda: mixer.lstm(x)[0], "ours_plain": lambda: mixer(x)[0], "ours_full_cache": cached}
    row = {"bench": "references", "arch": "lstm (mixer vs torch.nn.LSTM)", "d_model": d, "n_layers": 1,
           "batch": batch, "T": T, "params": sum(p.numel() for p in mixer.parameters()), "device": device}
    with torch.no_grad():
        row["logits_max_abs_diff"] = (runs["ref_plain"]() - runs["ours_plain"]()).abs().max().item()
        _time_runs(row, runs, repeats, batch * T, device)
    return row


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quick:
        plan, repeats = [(64, 2, 1, 32)], 1
        mamba_plan, lstm_plan = [("tiny", 1, 32, 1)], [(64, 1, 32)]
    else:
        plan, repeats = [(256, 4, 1, 256), (256, 4, 1, 1024), (256, 4, 4, 1024)], 5
        mamba_plan = [("tiny", 1, 256, 5), ("tiny", 1, 1024, 5), ("100M", 1, 256, 3), ("100M", 1, 1024, 3)]
        lstm_plan = [(256, 1, 256), (256, 1, 1024), (256, 4, 1024)]
    rows = []
    for d, n, batch, T in plan:
        for arch in REFERENCES:
            try:
                rows.append(measure(arch, d, n, batch, T, repeats, device))
            except Exception as exc:  # a missing optional reference must not hide the others
                rows.append({"bench": "references", "arch": arch, "d_model": d, "T": T,
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    for d, batch, T in lstm_plan:
        try:
            rows.append(measure_lstm(d, batch, T, repeats, device))
        except Exception as exc:
            rows.append({"bench": "references", "arch": "lstm (mixer vs torch.nn.LSTM)", "d_model": d, "T": T,
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    for size, batch, T, reps in mamba_plan:
        try:
            rows.append(measure_mamba(size, batch, T, reps, device))
        except Exception as exc:
            rows.append({"bench": "references", "arch": "mamba", "size": size, "T": T,
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    return rows


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
