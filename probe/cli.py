r"""The ``probe`` command.

::

    probe train --layout qrnn,attn --d-model 64 --text notes/ --out runs/mine
    probe zoo list                       # the zoo table (from the shipped cards)
    probe zoo train mamba [--device cpu] # retrain one zoo model from its recipe
    probe zoo train --all --jobs 4       # every available architecture, 4 at a time
    probe zoo card                       # re-evaluate the zoo, rewrite cards and README
    probe data export-stdlib DIR         # this Python's stdlib corpus as token streams
    probe harvest zoo:qrnn stdlib:val --out acts/ [--ray --workers 4 | --address auto]
    probe explore [--port 8502]          # the Streamlit explorer (app/explorer.py), on this machine only
    probe bench --quick                  # a smoke run of the benchmark suites
    probe --version

Adding a subcommand: write ``add_NAME(subparsers)`` that builds its parser and sets
``func`` to a ``run_NAME(args) -> int`` function, and list ``add_NAME`` in :data:`COMMANDS`.
Errors of type :class:`probe.ProbeError` (and file-system errors) are printed as one line (exit
code 2), not a traceback; numeric flags refuse ``nan`` / ``inf``, output folders refuse files.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from probe.errors import ProbeError


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` / ``inf`` would train a NaN model without a word)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def out_dir(path: str, flag: str) -> Path:
    """``path`` as an output folder: refused (one line, exit 2) when it exists and is not a folder."""
    from probe.errors import ConfigError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {path!r} is a file, not a folder; give a folder (it is created if missing).")
    return out


# -- probe train ---------------------------------------------------------------------
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model on text, the stdlib corpus or a HF dataset",
                       description="Train a HookedLM of any layout; checkpoints go to --out (resumable).")
    p.add_argument("--layout", default="attn,attn", help="comma-separated mixer names, e.g. qrnn,qrnn,attn,ff")
    p.add_argument("--d-model", type=int, default=64, help="residual stream width (default 64)")
    p.add_argument("--n-heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--d-mlp", type=int, default=None, help="MLP width (default 4 * d_model; 0 removes the MLP)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="a UTF-8 text file or a folder of text files")
    src.add_argument("--hf", help="a Hugging Face dataset name (needs network), e.g. wikitext:wikitext-2-raw-v1")
    p.add_argument("--text-field", default="text", help="column of the HF dataset holding the text")
    p.add_argument("--val-fraction", type=finite_float, default=0.05,
                   help="tail share of --text / --hf held out for validation (the stdlib has its own split)")
    p.add_argument("--tasks", default="", help="comma-separated synthetic tasks to mix in (agreement,recall,...)")
    p.add_argument("--task-fraction", type=finite_float, default=0.0,
                   help="share of training windows drawn from --tasks (default 0)")
    _add_train_options(p)
    p.add_argument("--out", required=True, help="output directory (checkpoints, final model)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.set_defaults(func=run_train)


def _add_train_options(p, defaults=None) -> None:
    from probe.train import TrainConfig

    d = defaults or TrainConfig()
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"windows per step (default {d.batch_size})")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per window (default {d.seq_len})")
    p.add_argument("--lr", type=finite_float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps,
                   help=f"linear warm-up steps (default {d.warmup_steps})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the weights and data order (default {d.seed})")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help=f"steps between validations, 0: only at the end (default {d.eval_every})")
    p.add_argument("--save-every", type=int, default=d.save_every,
                   help=f"steps between checkpoints, 0: only at the end (default {d.save_every})")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    p.add_argument("--amp", default=d.amp, choices=["auto", "none", "bf16", "fp16"],
                   help="mixed precision: auto (bf16 on CUDA, none on CPU), none, bf16, fp16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args) -> int:
    import torch

    import probe
    from probe.data.code_corpus import stdlib_stream
    from probe.data.mix import DataMix
    from probe.data.text_corpus import hf_corpus, text_corpus
    from probe.train import TrainConfig, Trainer

    # the model's config and the output folder first: they fail before any corpus is read
    out_dir(args.out, "--out")
    model_cfg = probe.ModelConfig(layout=[m.strip() for m in args.layout.split(",") if m.strip()],
                                  d_model=args.d_model, n_heads=args.n_heads, d_mlp=args.d_mlp)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         warmup_steps=min(args.warmup_steps, args.steps), seed=args.seed,
                         eval_every=args.eval_every, save_every=args.save_every, device=args.device, amp=args.amp)
    if args.text or args.hf:
        if args.text:
            stream = text_corpus(args.text, min_tokens=args.seq_len + 1)
        else:
            name, _, subset = args.hf.partition(":")
            stream = hf_corpus(name, args.text_field, name=subset or None, min_tokens=args.seq_len + 1)
        train, val = stream.split_tail(args.val_fraction, min_tokens=args.seq_len + 1)
    else:
        train, val = stdlib_stream("train"), stdlib_stream("val")
    tasks = [t for t in args.tasks.split(",") if t]
    mix = DataMix(train, tasks, args.task_fraction)
    torch.manual_seed(args.seed)
    model = probe.HookedLM(model_cfg)
    print(f"{model!r}; {config.steps * config.tokens_per_step:,} tokens; out: {args.out}")
    trainer = Trainer(model, mix, config, val, args.out, resume=not args.no_resume, progress=not args.no_progress)
    result = trainer.train()
    print(f"done: step {result.step}, {result.tokens_seen:,} tokens, val bits-per-byte {result.final_val_bpb}, "
          f"{result.train_seconds:.0f} s; model in {Path(args.out) / 'model'}")
    return 0


# -- probe zoo ... ---------------------------------------------------------------------
def add_zoo(sub) -> None:
    p = sub.add_parser("zoo", help="the model zoo: list, train, card")
    zsub = p.add_subparsers(dest="zoo_command", metavar="{list,train,card}")
    zsub.required = True

    lp = zsub.add_parser("list", help="print the zoo table")
    lp.add_argument("--zoo-dir", default=None, help="a zoo folder other than the shipped one")
    lp.add_argument("--markdown", action="store_true",
                    help="the full table of the zoo README (every metric, wide lines) instead of the summary")
    lp.set_defaults(func=run_zoo_list)

    from probe.zoo.recipes import TRAIN

    tp = zsub.add_parser("train", help="(re)train zoo architectures from their recipe")
    tp.add_argument("names", nargs="*", metavar="ARCH", help="zoo architectures (see `probe zoo list`)")
    tp.add_argument("--all", action="store_true", help="every architecture whose mixers are available")
    tp.add_argument("--out", default=None, help="output folder (default ./zoo-runs; the shipped zoo is not touched)")
    tp.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    tp.add_argument("--jobs", type=int, default=1, help="architectures trained at the same time")
    tp.add_argument("--steps", type=int, default=None, help=f"override the recipe's {TRAIN.steps} steps (tests)")
    tp.add_argument("--no-eval", action="store_true", help="skip the card metrics")
    tp.add_argument("--no-progress", action="store_true", help="no progress bar")
    tp.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    tp.set_defaults(func=run_zoo_train)

    cp = zsub.add_parser("card", help="evaluate zoo models, rewrite their cards and the zoo README")
    cp.add_argument("names", nargs="*", metavar="ARCH", help="models to evaluate (default: all in the folder)")
    cp.add_argument("--zoo-dir", default=None, help="a zoo folder other than the shipped one")
    cp.add_argument("--no-eval", action="store_true", help="only regenerate README.md from the existing cards")
    cp.add_argument("--cpu-timing", action="store_true",
                    help="measure each recipe's CPU training step (2 threads; run on an idle machine) into its card")
    cp.add_argument("--scale-to", metavar="ARCH", default=None,
                    help="with --cpu-timing: rescale to the machine that timed ARCH's card (ARCH is re-timed now)")
    cp.set_defaults(func=run_zoo_card)


def _zoo_dir(args) -> Path | None:
    """``--zoo-dir`` as a path, refused when it is not a folder (``None``: the shipped zoo)."""
    from probe.errors import ConfigError

    if args.zoo_dir is None:
        return None
    path = Path(args.zoo_dir)
    if not path.is_dir():
        raise ConfigError(f"--zoo-dir {args.zoo_dir!r} is not a folder.")
    return path


def run_zoo_list(args) -> int:
    from probe.zoo.cards import render_table, zoo_cards
    from probe.zoo.recipes import RECIPES

    _zoo_dir(args)
    cards = zoo_cards(args.zoo_dir)
    shipped = {c["name"] for c in cards}
    if not cards:
        print("No trained zoo models in this folder yet.")
    else:
        print(render_table(cards) if args.markdown else zoo_summary(cards))
    rest = [n for n in RECIPES if n not in shipped]
    if rest:
        print(f"\nRecipes without a trained model here: {', '.join(rest)} (train with `probe zoo train NAME`).")
    return 0


def zoo_summary(cards: list[dict]) -> str:
    """The zoo as a fixed-width table of about 100 characters a line: name, layout, parameters, validation
    bits per byte, the context the model was trained on, and the pair accuracy of each synthetic task."""
    tasks = list(dict.fromkeys(t for c in cards for t in c.get("tasks", {}) if "-" not in t))
    head = ["model", "layout", "params", "val bpb", "context"] + [t[:9] for t in tasks]
    rows = []
    for c in cards:
        layout = c.get("layout", [])
        short = f"{layout[0]}x{len(layout)}" if layout and len(set(layout)) == 1 else ",".join(layout)
        seq = c.get("train", {}).get("seq_len")
        rows.append([c["name"], short, f"{c.get('params', 0) / 1e6:.2f}M", f"{c.get('val_bpb', float('nan')):.3f}",
                     f"{seq} B" if seq else "?"]
                    + [f"{c['tasks'][t]['pair_accuracy']:.2f}" if t in c.get("tasks", {}) else "" for t in tasks])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
    notes = ("context: the window length it was trained on (bytes); past it the loss rises.\n"
             "Task columns: pair accuracy. Every metric: probe zoo list --markdown (or probe/zoo/README.md).")
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows] + ["", notes])


def run_zoo_train(args) -> int:
    from probe.errors import ConfigError
    from probe.zoo.build import train_zoo_model
    from probe.zoo.recipes import available_recipes, get_recipe

    names = available_recipes() if args.all else args.names
    if not names:
        raise ConfigError("Name the architectures to train (see `probe zoo list`) or pass --all.")
    for n in names:
        get_recipe(n)  # unknown names fail before anything runs
    out = out_dir(args.out, "--out") if args.out else Path("zoo-runs")
    extra = {"steps": args.steps} if args.steps else {}
    if len(names) > 1 and args.jobs > 1:
        from probe.zoo.train_all import train_many

        flags = (["--steps", str(args.steps)] if args.steps else []) + (["--no-eval"] if args.no_eval else []) \
            + (["--no-resume"] if args.no_resume else [])
        codes = train_many(names, out, args.jobs, args.device, flags)
        return 0 if all(c == 0 for c in codes.values()) else 1
    for n in names:
        path = train_zoo_model(n, out, device=args.device, progress=not args.no_progress,
                               resume=not args.no_resume, evaluate=not args.no_eval, **extra)
        print(f"{n}: written to {path}")
    return 0


def run_zoo_card(args) -> int:
    from probe.data.code_corpus import stdlib_stream
    from probe.io.checkpoint import load_model
    from probe.loading import ZOO_DIR
    from probe.zoo.cards import evaluate_card, read_card, render_readme, write_card, zoo_cards

    from probe.errors import ConfigError

    zoo_dir = _zoo_dir(args) or ZOO_DIR
    if args.scale_to and not args.cpu_timing:
        raise ConfigError("--scale-to rescales CPU timings: use it with --cpu-timing.")
    if args.cpu_timing:
        from probe.zoo.timing import cpu_timing, scaled_cpu_timing

        reference = read_card(zoo_dir / args.scale_to) if args.scale_to else None
        if reference is not None and "cpu_timing" not in reference:
            raise ConfigError(f"--scale-to {args.scale_to}: its card has no cpu_timing to scale to.")
        for n in args.names or [c["name"] for c in zoo_cards(zoo_dir)]:
            card = read_card(zoo_dir / n)
            card["cpu_timing"] = scaled_cpu_timing(n, reference) if reference is not None else cpu_timing(n)
            write_card(zoo_dir / n, card)
            print(f"{n}: {card['cpu_timing']['minutes']} min on {card['cpu_timing']['threads']} CPU threads")
    if not args.no_eval:
        names = args.names or [c["name"] for c in zoo_cards(zoo_dir)]
        cards = {n: read_card(zoo_dir / n) for n in names}  # a missing card is refused before the corpus is built
        val, train = stdlib_stream("val"), stdlib_stream("train")
        for n in names:
            card = cards[n]
            card.update(evaluate_card(load_model(zoo_dir / n), val, train))
            write_card(zoo_dir / n, card)
            print(f"{n}: val bpb {card['val_bpb']:.3f} (unigram {card['unigram_bpb']:.3f}); tasks "
                  + ", ".join(f"{k} {v['pair_accuracy']:.2f}" for k, v in card["tasks"].items()))
    (zoo_dir / "README.md").write_text(render_readme(zoo_cards(zoo_dir), zoo_dir / "results"))
    print(f"wrote {zoo_dir / 'README.md'}")
    return 0


# -- probe data ... --------------------------------------------------------------------
def add_data(sub) -> None:
    p = sub.add_parser("data", help="corpora utilities")
    dsub = p.add_subparsers(dest="data_command", metavar="{export-stdlib}")
    dsub.required = True
    ep = dsub.add_parser("export-stdlib", help="write this Python's stdlib train/val/test token streams to DIR "
                                               "(use them elsewhere with PROBE_STDLIB_STREAMS=DIR)")
    ep.add_argument("dir", help="output folder (stdlib-train/val/test.safetensors)")
    ep.set_defaults(func=run_data_export)


def run_data_export(args) -> int:
    from probe.data.code_corpus import SPLITS, CodeCorpus

    out_dir(args.dir, "export-stdlib DIR")
    for split in SPLITS:
        corpus = CodeCorpus(split)
        path = corpus.stream().save(Path(args.dir) / f"stdlib-{split}.safetensors")
        print(f"{split}: {len(corpus.files)} files, {corpus.n_bytes:,} bytes, {corpus.n_skipped} skipped -> {path}")
    return 0


# -- probe harvest ---------------------------------------------------------------------
def add_harvest(sub) -> None:
    p = sub.add_parser("harvest", help="write activations and states over a corpus as Parquet shards (local or Ray)",
                       description="Run MODEL over CORPUS and store the chosen sites as Parquet shards with a "
                                   "manifest in --out (probe.harvest); rerun the same command to resume.")
    p.add_argument("model", help="zoo:NAME or a checkpoint directory")
    p.add_argument("corpus", help="stdlib[:train|val|test], a text file or folder, or a saved dataset folder")
    p.add_argument("--out", required=True, help="output folder (created; an unfinished harvest there resumes)")
    p.add_argument("--sites", default="resid_post,mixer_out,state", help="comma-separated sites (default %(default)s)")
    p.add_argument("--layers", default=None, help="comma-separated layers (default: every layer)")
    p.add_argument("--positions", default="all",
                   help="all, last, or comma-separated positions (negative: from the end)")
    p.add_argument("--pool", choices=["none", "mean"], default="none", help="mean: one row per sequence")
    p.add_argument("--max-dim", type=int, default=None, help="project wider features to this many columns")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="storage dtype")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence window (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward (default 16)")
    p.add_argument("--shard-size", type=int, default=64, help="sequences per shard (default 64)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="harvest only the first sequences up to this many tokens")
    p.add_argument("--text-field", default="text", help="column of a saved dataset holding the text")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (local runs)")
    p.add_argument("--ray", action="store_true", help="run on Ray: a local cluster started here unless --address")
    p.add_argument("--workers", type=int, default=1, help="Ray workers, one model replica each (default 1)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (auto, ray://host:10001); implies --ray")
    p.add_argument("--gpus-per-worker", type=finite_float, default=0.0, help="GPUs per Ray worker (default 0: CPU)")
    p.add_argument("--overwrite", action="store_true", help="start over in a folder holding another harvest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_harvest)


def run_harvest(args) -> int:
    import probe
    from probe.harvest import harvest

    def ints(text):
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise probe.ConfigError(f"expected comma-separated integers, got {text!r}") from None

    out_dir(args.out, "--out")
    positions = {"all": None, "last": "last"}.get(args.positions) or ints(args.positions)
    model = probe.load(args.model, device=args.device).eval()
    h = harvest(model, args.corpus, args.out, sites=[s for s in args.sites.split(",") if s],
                layers=ints(args.layers) if args.layers else None, positions=positions,
                pool=None if args.pool == "none" else args.pool, max_dim=args.max_dim, dtype=args.dtype,
                seq_len=args.seq_len, batch_size=args.batch_size, shard_size=args.shard_size,
                max_tokens=args.max_tokens, text_field=args.text_field, ray=args.ray or args.address is not None,
                workers=args.workers, address=args.address, num_gpus=args.gpus_per_worker,
                overwrite=args.overwrite, progress=not args.no_progress)
    m = h.manifest
    print(f"{h!r}\n{m['corpus']['tokens']:,} tokens in {m['seconds']:.1f} s "
          f"({m['corpus']['tokens'] / max(m['seconds'], 1e-9):,.0f} tokens/s); bytes per token: "
          + ", ".join(f"{k} {v:.1f}" for k, v in m["bytes_per_token"].items() if k in h.features))
    return 0


# -- probe explore ---------------------------------------------------------------------
def add_explore(sub) -> None:
    p = sub.add_parser("explore", help="start the Streamlit explorer (two models side by side)",
                       description="Run `streamlit run app/explorer.py`; arguments after `--` go to streamlit "
                                   "(e.g. probe explore -- --theme.base dark).")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--address", default="localhost", help="interface to serve on (default: this machine only)")
    p.add_argument("--network", action="store_true",
                   help="serve on every network interface (--address 0.0.0.0): others on the network can open it")
    p.add_argument("streamlit_args", nargs="*", metavar="-- STREAMLIT_ARGS", help="passed on to `streamlit run`")
    p.set_defaults(func=run_explore)


def run_explore(args) -> int:
    import subprocess

    from probe.errors import ConfigError

    app = Path(__file__).resolve().parents[1] / "app" / "explorer.py"
    if not app.is_file():
        raise ConfigError(f"The explorer app is not at {app}; it ships with the source checkout (run "
                          "`probe explore` from an editable install: pip install -e '.[app]').")
    try:
        import streamlit  # noqa: F401
    except ImportError as exc:
        raise ConfigError("The explorer needs streamlit: pip install -e '.[app]'.") from exc
    address = "0.0.0.0" if args.network else args.address
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true", "--server.port",
           str(args.port), "--server.address", address, "--browser.gatherUsageStats", "false", *args.streamlit_args]
    return subprocess.call(cmd)


# -- probe bench -----------------------------------------------------------------------
def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmark suite (benchmarks/run.py)",
                       description="Speed and memory of every architecture and method against the reference "
                                   "implementations; the same as `python -m benchmarks.run` from the checkout. "
                                   "Every argument goes to it (e.g. probe bench --quick --suite bench_model); "
                                   "--quick is a smoke run of every suite (minutes on 2 cores), one line per suite.")
    p.add_argument("bench_args", nargs="*", metavar="ARGS",
                   help="passed on to benchmarks/run.py: --quick, --suite NAME, --out DIR, --readme PATH, --merge")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    from probe.errors import ConfigError

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "run.py").is_file():
        raise ConfigError(f"The benchmark suite is not at {root / 'benchmarks'}; it ships with the source checkout "
                          "(run `probe bench` from an editable install: pip install -e '.[dev]').")
    sys.path.insert(0, str(root))
    from benchmarks import run as bench_run

    print(bench_run.main(args.bench_args))
    return 0


#: every subcommand's parser builder, in help order
COMMANDS = [add_train, add_zoo, add_data, add_harvest, add_bench, add_explore]


class _Listed(Exception):
    """Raised by :class:`_ListOnly` to stop an ``add_NAME`` function once its command is listed."""


class _ListOnly:
    """The subparsers as an ``add_NAME`` function of a command that is not being run sees them: its first
    call (``add_parser(name, help=...)``) lists the command, then :class:`_Listed` stops the function
    before it builds options (whose defaults import torch and the training code)."""

    def __init__(self, sub):
        self.sub = sub

    def add_parser(self, name: str, **kwargs):
        self.sub.add_parser(name, help=kwargs.get("help"), description=kwargs.get("description"))
        raise _Listed


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``probe`` parser. ``only``: build the options of that command alone and list the others by
    name and help (``""``: list every command; ``probe --help`` then imports nothing heavy); ``None``:
    build everything."""
    from probe import __version__

    parser = argparse.ArgumentParser(prog="probe", description="Interpretability for recurrent vs transformer LMs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        try:
            add(sub if only is None or add.__name__ == f"add_{only}" else _ListOnly(sub))
        except _Listed:
            pass
    return parser


def _command(argv: list[str]) -> str:
    """The subcommand named in ``argv`` (its first word that is not an option), or ``""``."""
    return next((a for a in argv if not a.startswith("-")), "")


def _parse_bench(argv: list[str]) -> argparse.Namespace:
    """``probe bench ARGS``: every word after ``bench`` (a leading ``--`` dropped) goes to the suite as it
    is, options included (argparse would refuse ``--quick`` as one of its own); ``-h`` alone is the help."""
    i = argv.index("bench")
    rest = argv[i + 1:]
    if rest in (["-h"], ["--help"]):
        return build_parser("bench").parse_args(argv)
    args = build_parser("bench").parse_args(argv[: i + 1])
    args.bench_args = rest[1:] if rest[:1] == ["--"] else rest
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    args = _parse_bench(argv) if command == "bench" else build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ProbeError, OSError) as exc:  # bad input, or a file-system refusal (permissions, disk full)
        print(f"probe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probe: interrupted (training resumes from the last checkpoint when run again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
