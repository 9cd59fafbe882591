#!/usr/bin/env python
"""Draw the README figure from the shipped zoo: the logit lens of every zoo model on held-out code.

    python scripts/readme_figure.py                  # docs/zoo_logit_lens.png, every zoo model (< 1 min CPU)
    python scripts/readme_figure.py --models transformer lstm --windows 8 --out /tmp/lens.png

Does what we know about transformers hold for RNNs? For transformers the logit lens (read the
residual stream after layer ``l`` with the final norm and unembedding) gives predictions that
converge smoothly on the output with depth. This script measures that for every model in
``probe/zoo`` on the same held-out text: ``--windows`` windows of ``--seq-len`` bytes spread
evenly over the Python standard library's **test** split (the zoo is trained on the train
split). Per lens layer ``l = 0 .. n_layers`` (0 = the embedding) it reports, averaged over
every position,

* ``kl``: ``KL(p_final || q_l)`` in nats, how far the lens is from the model's own
  next-token distribution (0 at the last layer), and
* ``bits``: the lens's next-token cross-entropy in bits per token (= bits per byte for the
  byte-level zoo); at the last layer this is the model's own loss.

The figure has one line per model, those two quantities against the layer. It is drawn with
matplotlib (the ``dev`` extra). The numbers are also written next to the figure as CSV.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "zoo_logit_lens.png"


def held_out_windows(seq_len: int, n_windows: int, split: str = "test") -> torch.Tensor:
    """``[n_windows, seq_len]`` byte-token windows at evenly spaced offsets of a stdlib split."""
    from probe.data.code_corpus import stdlib_stream
    from probe.methods.support.input_checks import spread_windows

    return spread_windows(torch.from_numpy(stdlib_stream(split).tokens), seq_len, n_windows)


def lens_curves(models: dict, tokens: torch.Tensor, batch_size: int = 8):
    """The per-layer logit lens of each model on ``tokens`` ``[n, seq_len]``.

    Returns a DataFrame with one row per (model, lens layer ``0 .. n_layers``): ``model``,
    ``layout``, ``layer``, ``label``, ``kl`` (mean ``KL(final || lens)``, nats), ``bits`` (mean
    next-token cross-entropy of the lens, bits per token) and ``top1`` (share of positions where
    the lens's top token is the model's). Means are over every window and position.

    Example::

        df = lens_curves({"qrnn": probe.load("zoo:qrnn")}, held_out_windows(256, 32))
        df[df.layer == df.layer.max()]  # kl == 0; bits == the model's own loss / ln 2
    """
    import pandas as pd

    from probe.methods.lens import kl_divergence, layer_label, residual_streams
    from probe.methods.support.logit_readout import readout

    rows = []
    for name, model in models.items():
        model.eval()
        layers = list(range(model.cfg.n_layers + 1))
        kl = torch.zeros(len(layers), dtype=torch.float64)
        ce = torch.zeros(len(layers), dtype=torch.float64)
        top1 = torch.zeros(len(layers), dtype=torch.float64)
        n_pos = n_next = 0
        with torch.no_grad():
            for chunk in tokens.to(model.device).split(batch_size):
                resid, final = residual_streams(model, chunk, layers)
                logp_final = F.log_softmax(final.float(), -1)
                final_top = logp_final.argmax(-1)
                for i, layer in enumerate(layers):
                    logp = F.log_softmax(readout(model, resid[layer]).float(), -1)
                    kl[i] += kl_divergence(logp_final, logp).double().sum()
                    ce[i] -= logp[:, :-1].gather(-1, chunk[:, 1:, None]).double().sum()
                    top1[i] += (logp.argmax(-1) == final_top).double().sum()
                n_pos += chunk.numel()
                n_next += chunk[:, 1:].numel()
        for i, layer in enumerate(layers):
            rows.append({"model": name, "layout": "+".join(model.cfg.layout), "layer": layer,
                         "label": layer_label(model, layer), "kl": float(kl[i] / n_pos),
                         "bits": float(ce[i] / n_next / math.log(2)), "top1": float(top1[i] / n_pos)})
    return pd.DataFrame(rows)


def _style(layout: str) -> dict:
    """Pure attention: black; pure recurrent: solid; hybrids (recurrent + attention): dashed."""
    mixers = set(layout.split("+")) - {"ff"}
    if mixers == {"attn"}:
        return {"color": "black", "linestyle": "-", "linewidth": 2.6}
    return {"linestyle": "--" if "attn" in mixers else "-", "linewidth": 1.8}


def draw(df, path: str | Path, title: str | None = None) -> Path:
    """Two panels against the layer: mean KL to the final distribution (log scale; the last layer,
    where it is 0, is left out) and the lens's next-token loss in bits per byte. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kl, ax_ce) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    ticks: dict = {ax_kl: set(), ax_ce: set()}
    for name, part in df.groupby("model", sort=False):
        part = part.sort_values("layer")
        style = _style(part["layout"].iloc[0])
        label = f"{name} ({part['layout'].iloc[0].replace('+', ' ')})"
        inner = part[part["layer"] < part["layer"].max()]
        ax_kl.plot(inner["layer"], inner["kl"], marker="o", label=label, **style)
        ax_ce.plot(part["layer"], part["bits"], marker="o", label=label, **style)
        ticks[ax_kl].update(int(l) for l in inner["layer"])
        ticks[ax_ce].update(int(l) for l in part["layer"])
    for ax, used in ticks.items():
        ax.set_xticks(sorted(used), ["embed" if l == 0 else str(l) for l in sorted(used)])
        ax.set_xlabel("residual stream after layer")
        ax.grid(alpha=0.3)
    ax_kl.set_yscale("log")
    ax_kl.set_ylabel("KL(final || logit lens), nats")
    ax_kl.set_title("How far each layer is from the output")
    ax_ce.set_ylabel("next-token loss of the lens, bits/byte")
    ax_ce.set_title("What each layer already predicts")
    ax_ce.legend(fontsize=8, loc="upper right")
    fig.suptitle(title or "Logit lens on held-out Python (stdlib test split), every zoo model", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="zoo names (default: every zoo model)")
    p.add_argument("--windows", type=int, default=32, help="held-out windows per model")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--split", default="test", help="stdlib split to read (the zoo trains on 'train')")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="PNG path; the numbers go beside it as .csv")
    args = p.parse_args(argv)

    import probe

    torch.manual_seed(0)
    names = args.models or probe.zoo_names()
    if not names:
        print("No zoo model is shipped (probe/zoo/<name>/config.json); nothing to draw.", file=sys.stderr)
        return 1
    start = time.perf_counter()
    models = {n: probe.load(f"zoo:{n}").eval() for n in names}
    tokens = held_out_windows(args.seq_len, args.windows, args.split)
    df = lens_curves(models, tokens)
    out = draw(df, args.out)
    df.to_csv(out.with_suffix(".csv"), index=False, float_format="%.4f")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{len(models)} models x {tokens.shape[0]} windows x {tokens.shape[1]} tokens in "
          f"{time.perf_counter() - start:.1f}s; wrote {out} and {out.with_suffix('.csv').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
