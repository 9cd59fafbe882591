"""Use a TransformerLens 4 TransformerBridge through probe's hook names (offline, tiny random GPT-2).

    python examples/import_transformer_lens.py [hub-id]

Without an argument a tiny GPT-2 and a word-level tokenizer are saved to a temporary directory
(booting a bridge offline needs both on disk). The bridge is wrapped with probe.from_transformer_lens;
its cache, hooks and the logit lens are compared with the same model converted by probe.from_hf.
"""
import argparse
import tempfile

import torch

import probe
from probe.methods import logit_lens

p = argparse.ArgumentParser()
p.add_argument("source", nargs="?", help="hub id, e.g. gpt2 (needs the network)")
args = p.parse_args()

from transformer_lens.model_bridge import TransformerBridge  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

if args.source:
    folder, text = args.source, "The keys to the cabinet are"
    hf, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
else:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(98)} | {"<unk>": 98, "<|endoftext|>": 99}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                    bos_token_id=99, eos_token_id=99)).eval()
    folder, text = tempfile.mkdtemp(), "w1 w2 w3 w7 w9 w4 w4 w2"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)

converted = probe.from_hf(hf, tokenizer=tok)  # first: booting the bridge rewrites the HF model's modules
bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, device="cpu")
model = probe.from_transformer_lens(bridge)

logits, cache = model.run_with_cache(text)
print("hooks on the bridge, probe names:", [k for k in cache.keys() if k.startswith("blocks.0.")][:8])
print(f"max |bridge - converted| logits: {(logits - converted(text)).abs().max().item():.2e}")
ablated = model.run_with_hooks(text, fwd_hooks=[("blocks.0.hook_mixer_out", lambda t, hook: torch.zeros_like(t))])
print(f"zero-ablating layer 0's attention changes the logits by up to {(ablated - logits).abs().max().item():.3f}")
print(logit_lens(model, text).to_frame().to_string(index=False))
