"""Tuned lens vs logit lens on every zoo model: the held-out KL table (Paulo et al. 2024).

For each model, trains a tuned lens (one affine translator per layer, identity init) on the
stdlib ``val`` split, then measures the mean KL(final || lens) per layer on the ``test`` split
for the logit lens and the tuned lens. Prints a markdown table and a plain statement of where
the tuned lens wins; ``--csv`` / ``--markdown`` also write them to files; ``--save`` writes each
trained lens beside its model (``tuned_lens.safetensors`` + ``tuned_lens.json``).

The full study (every zoo model, 250 steps, 64 held-out windows: the table of ``probe/zoo/results/lens.md``):

    python examples/lens_zoo_table.py --full --markdown probe/zoo/results/lens.md

By default a quick run (about a minute): the transformer and the QRNN, 15 steps, 8 held-out
windows; any option given overrides its preset.

    python examples/lens_zoo_table.py                      # the quick run
    python examples/lens_zoo_table.py --models transformer mamba --steps 300
    python examples/lens_zoo_table.py --tiny               # a tiny random model, synthetic text (smoke test)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the examples' helpers, also when imported by a test
from _sizes import add_full_flag, apply  # noqa: E402

#: the quick run's sizes and the full study's (``--full``); ``models=None``: every zoo model
QUICK = {"models": ["transformer", "qrnn"], "steps": 15, "max_windows": 8}
FULL = {"models": None, "steps": 250, "max_windows": 64}


def markdown(df) -> str:
    """The table as markdown: one row per (model, layer), then one summary line per model."""
    lines = ["| model | layer | KL logit lens | KL tuned lens | reduction |", "|---|---|---:|---:|---:|"]
    for row in df.itertuples():
        lines.append(f"| {row.model} | {row.label} | {row.kl_logit:.3f} | {row.kl_tuned:.3f} | "
                     f"{100 * row.reduction:.0f}% |")
    return "\n".join(lines)


def verdict(df) -> str:
    """Plain sentences: per model, on how many layers the tuned lens has the lower held-out KL."""
    out = []
    for name, part in df.groupby("model", sort=False):
        wins, n = int(part["tuned_better"].sum()), len(part)
        losers = part.loc[~part["tuned_better"], "label"].tolist()
        mean = 100 * part["reduction"].mean()
        s = f"- {name} ({part['layout'].iloc[0]}): tuned lens lower KL on {wins}/{n} layers, mean reduction {mean:.0f}%"
        s += "." if not losers else f"; not on {', '.join(map(str, losers))}."
        out.append(s)
    all_wins = bool(df["tuned_better"].all())
    out.append("The tuned lens beats the logit lens on every layer of every model." if all_wins else
               "The tuned lens does not win everywhere: see the layers listed above.")
    return "\n".join(out)


def _tiny():
    import probe

    torch.manual_seed(0)
    models = {}
    for layout in (["attn", "attn"], ["qrnn", "qrnn"]):
        cfg = probe.ModelConfig(d_model=32, n_heads=4, d_mlp=64, layout=layout, name="+".join(layout))
        models["tiny-" + "+".join(layout)] = probe.HookedLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    text = lambda n: torch.randint(97, 123, (n,), generator=g)
    return models, text(4000), text(2000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="zoo names or checkpoint directories")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--max-windows", type=int, help="held-out windows of seq-len tokens")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-split", default="val")
    p.add_argument("--eval-split", default="test")
    p.add_argument("--save", action="store_true", help="write each lens beside its model")
    p.add_argument("--csv", help="also write the table as CSV here")
    p.add_argument("--markdown", help="also write the markdown table and verdict here")
    p.add_argument("--tiny", action="store_true", help="tiny random models and synthetic text (a smoke test)")
    add_full_flag(p, QUICK, FULL)
    args = apply(p.parse_args(argv), QUICK, FULL)

    import probe
    from probe.methods.lens import lens_table

    if args.tiny:
        models, train, held_out = _tiny()
    else:
        from probe.data.code_corpus import stdlib_stream

        names = args.models or probe.zoo_names()
        if not names:
            print("No zoo models found (probe/zoo/<name>/config.json); train them first or pass --models DIR.",
                  file=sys.stderr)
            return 1
        models = {}
        for name in names:
            is_path = "/" in name or name.startswith(".")
            models[Path(name).name if is_path else name] = probe.load(name if is_path else f"zoo:{name}").eval()
        train, held_out = stdlib_stream(args.train_split), stdlib_stream(args.eval_split)
    start = time.perf_counter()
    df = lens_table(models, train, held_out, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                    max_windows=args.max_windows, lr=args.lr, save=args.save)
    text = markdown(df) + "\n\n" + verdict(df)
    print(text)
    timing = df.groupby("model", sort=False)[["train_seconds", "seconds_per_layer"]].first()
    print(f"\nlens training time (s), {args.steps} steps x {args.batch_size} x {args.seq_len} tokens:\n{timing}")
    print(f"total {time.perf_counter() - start:.0f}s")
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
