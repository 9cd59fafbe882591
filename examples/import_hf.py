"""Convert a transformers model (GPT-2, Mamba, RWKV-4, xLSTM...) with probe.from_hf and check parity.

    python examples/import_hf.py [hub-id-or-dir] [--arch gpt2|mamba|rwkv]

With a hub id or a saved directory, converts that model (needs the network for a hub id). Without,
builds a tiny random model of --arch offline. Prints the layout, the state hooks (the memory at every
position) and the largest logit difference between transformers and the converted HookedLM.
"""
import argparse

import torch

import probe

VOCAB = 100


def tiny(arch: str):
    """A small random transformers model, weights scaled up so every path matters."""
    import transformers as tf

    torch.manual_seed(0)
    if arch == "gpt2":
        model, scale = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                         n_positions=64)), 0.2
    elif arch == "mamba":
        model, scale = tf.MambaForCausalLM(tf.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                           state_size=8, pad_token_id=0)), 0.05
    else:
        model, scale = tf.RwkvForCausalLM(tf.RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                         intermediate_size=64, attention_hidden_size=32,
                                                         rescale_every=0, context_length=64)), 0.2
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


p = argparse.ArgumentParser()
p.add_argument("source", nargs="?", help="hub id or saved directory (default: a tiny random model)")
p.add_argument("--arch", choices=["gpt2", "mamba", "rwkv"], default="mamba")
args = p.parse_args()

if args.source:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(args.source).eval()
else:
    hf = tiny(args.arch)
model = probe.from_hf(hf)
print(model)
ids = torch.randint(0, min(VOCAB, model.cfg.vocab_size), (1, 24), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    diff = (model(ids) - hf(ids).logits).abs().max().item()
print(f"max |probe - transformers| logit difference: {diff:.2e}")
_, cache = model.run_with_cache(ids)
for name in model.state_hook_names():
    print(f"  {name:40s} {tuple(cache[name].shape)}")
