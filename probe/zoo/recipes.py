r"""The model zoo's recipes: twelve architectures, one data mix, one training budget.

Every zoo model is a byte-level (vocab 257) language model of about
:data:`TARGET_PARAMS` parameters (within 10 %, asserted by the tests), trained with the
same :data:`TRAIN` settings (same steps and tokens per step, so the same tokens seen) on the
same data: the Python standard library's train split interleaved with the four synthetic
tasks, in the two :data:`STAGES` of a curriculum. Widths are set per architecture to match the
parameter count; :func:`fit_d_mlp` is the helper that chose them.

The curriculum exists for associative recall. With the tasks a quarter of the rows each, in
16 rows of 256 bytes for all 1200 steps, no zoo model learned recall (the zoo README's recall
section): attention finds the recall circuit only with many sequences per step, and every
architecture needs many recall rows with few pairs first. So the first stage draws four times
as many rows, a quarter as long (the same tokens per step), mostly task rows with recall weighted
up and 2-4 pairs; the last stage is the full rows with the evaluation's 3-8 pairs. The numbers
are in :data:`STAGES`; :func:`describe_curriculum` says them in words (the zoo README quotes it).

=============  ============================================================================
name           layout (one entry per layer)
=============  ============================================================================
transformer    attn x4 (RoPE)
lstm           lstm x4
qrnn           qrnn x4 (window 2)
qrnn-hybrid    qrnn, qrnn, attn, ff: QRNN layers, attention kept in one layer, a
               feed-forward layer replacing another (after Lindenmaier et al. 2025)
lmu            lmu x4 (a 32-byte window in 32 Legendre coefficients: :data:`LMU_MEMORY`)
lmu-attn       lmu x3 + attn: LMU with one global attention layer (after Chilkuri et al. 2021),
               the same LMU memory
hgrn2          hgrn2 x4
mamba          mamba x8 (no MLP, as in Mamba)
xlstm          mlstm, slstm, mlstm, mlstm: mLSTM with one sLSTM block (xLSTM[3:1])
rwkv           rwkv x4 (RWKV channel mixing in the MLP slot)
mamba2         mamba2 x8 (Mamba-2 / SSD: 8 heads of 32, d_state 64; no MLP, as in Mamba-2)
gdn            gdn x4 (Gated DeltaNet: 4 heads of 32, then the zoo's GELU MLP)
=============  ============================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probe.config import ModelConfig
from probe.errors import ConfigError, suggest
from probe.train import TrainConfig

#: the parameter count every zoo model is matched to (within :data:`PARAM_TOLERANCE`)
TARGET_PARAMS = 1_000_000
PARAM_TOLERANCE = 0.10
SEED = 0

#: the one training budget of the zoo (4.9M tokens: 1200 steps x 16 x 256)
TRAIN = TrainConfig(steps=1200, batch_size=16, seq_len=256, lr=3e-3, min_lr_ratio=0.1, warmup_steps=100,
                    weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0, seed=SEED, eval_every=200,
                    eval_windows=32, save_every=200, log_every=20, device="auto", amp="none")

#: the text corpus and the synthetic tasks of every stage
TEXT = "python-stdlib/train"
TASKS = ("agreement", "recall", "induction", "brackets")


@dataclass(frozen=True)
class Stage:
    """One stage of the zoo's curriculum, from step ``first_step`` until the next stage.

    ``task_fraction`` is the share of task rows (the rest are stdlib text windows),
    ``task_weights`` the relative frequency of each of :data:`TASKS` in task rows,
    ``recall_pairs`` the (min, max) key-value pairs of a recall example and ``split`` how many
    rows each of the training config's rows becomes: batches of ``batch_size * split`` rows of
    ``seq_len // split`` tokens, the same tokens per step (16 x 256 -> 64 x 64 with ``split=4``)."""

    first_step: int
    task_fraction: float
    task_weights: tuple[float, ...]
    recall_pairs: tuple[int, int] = (3, 8)
    split: int = 1

    def shape(self, batch_size: int, seq_len: int) -> tuple[int, int]:
        """``(batch_size, seq_len)`` of this stage's batches for a config's ``batch_size, seq_len``."""
        if seq_len % self.split:
            raise ConfigError(f"A zoo curriculum stage splits every row into {self.split}; seq_len {seq_len} "
                              f"is not a multiple of {self.split}.")
        return batch_size * self.split, seq_len // self.split

    def describe(self, last_step: int, batch_size: int, seq_len: int) -> str:
        """This stage in words, e.g. ``"steps 0-999: 64 rows of 64 tokens, 75 % task rows, ..."``."""
        b, L = self.shape(batch_size, seq_len)
        recall = self.task_weights[TASKS.index("recall")] / sum(self.task_weights) * self.task_fraction
        lo, hi = self.recall_pairs
        return (f"steps {self.first_step}-{last_step}: {b} rows of {L} tokens, {self.task_fraction:.0%} task rows "
                f"(weights {', '.join(f'{t} {w:g}' for t, w in zip(TASKS, self.task_weights))}; "
                f"{recall:.0%} of all rows recall, {lo}-{hi} pairs)")

    def to_dict(self) -> dict[str, Any]:
        return {"first_step": self.first_step, "task_fraction": self.task_fraction,
                "task_weights": list(self.task_weights), "recall_pairs": list(self.recall_pairs),
                "split": self.split}


#: the zoo's curriculum (see the module docstring for why); each stage keeps 4096 tokens per step
STAGES: tuple[Stage, ...] = (
    Stage(0, task_fraction=0.75, task_weights=(1.0, 6.0, 1.0, 1.0), recall_pairs=(2, 4), split=4),
    Stage(1000, task_fraction=0.5, task_weights=(1.0, 3.0, 1.0, 1.0), recall_pairs=(3, 8)),
)


def describe_curriculum(stages: tuple[Stage, ...] = STAGES, config: TrainConfig = TRAIN) -> str:
    """Every stage of the curriculum in words, ``"; "``-separated (for the zoo README)."""
    ends = [s.first_step - 1 for s in stages[1:]] + [config.steps - 1]
    return "; ".join(s.describe(end, config.batch_size, config.seq_len) for s, end in zip(stages, ends))


@dataclass(frozen=True)
class Recipe:
    """One zoo architecture: a name, a layout and the widths that match the parameter budget."""

    name: str
    layout: tuple[str, ...]
    d_model: int = 128
    d_mlp: int = 512
    n_heads: int = 4
    mixer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlp_layout: tuple[str, ...] | None = None
    note: str = ""

    def config(self) -> ModelConfig:
        return ModelConfig(vocab_size=257, d_model=self.d_model, layout=list(self.layout), n_heads=self.n_heads,
                           d_mlp=self.d_mlp, mixer_options={k: dict(v) for k, v in self.mixer_options.items()},
                           mlp_layout=list(self.mlp_layout) if self.mlp_layout else None, positional="rope",
                           tokenizer="byte", name=f"zoo:{self.name}")

    @property
    def mixers(self) -> set[str]:
        return set(self.layout)

    def available(self) -> bool:
        """True when every mixer of the layout is registered in ``probe.mixers.MIXERS``."""
        from probe.mixers import MIXERS

        return self.mixers <= set(MIXERS)

    def n_params(self) -> int:
        from probe.model import HookedLM

        return sum(p.numel() for p in HookedLM(self.config()).parameters())


#: the zoo LMUs' memory: a window of 32 bytes held in 32 Legendre coefficients per channel. With the
#: mixer's default (64 bytes in 16 coefficients, 4 bytes per coefficient) the memory blurs which value
#: followed which key, and the LMU did not learn recall (pair / top-1 0.504 / 0.091 in the zoo mix, not
#: within 600 steps of recall rows alone); with this memory 0.602 / 0.374 in the zoo mix and learned at
#: step 250 of recall rows alone (the zoo README's recall study), at a cost in induction (0.98 -> 0.81).
#: 48 bytes in 48 coefficients (16 channels) learned recall as well (0.598 / 0.348) with a worse
#: bits-per-byte (2.068 against 2.052) and induction (0.75).
LMU_MEMORY = {"theta": 32, "order": 32}

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("transformer", ("attn",) * 4, d_mlp=640, note="pre-norm transformer, RoPE"),
    Recipe("lstm", ("lstm",) * 4, d_mlp=384),
    Recipe("qrnn", ("qrnn",) * 4, d_mlp=448, mixer_options={"qrnn": {"window": 2}}),
    Recipe("qrnn-hybrid", ("qrnn", "qrnn", "attn", "ff"), d_mlp=480, mixer_options={"qrnn": {"window": 2}},
           note="Lindenmaier et al.: QRNN layers, attention in one layer, FF replacing another"),
    Recipe("lmu", ("lmu",) * 4, d_mlp=320, mixer_options={"lmu": LMU_MEMORY},
           note="LMU memory of one Legendre coefficient per byte of its 32-byte window"),
    Recipe("lmu-attn", ("lmu", "lmu", "lmu", "attn"), d_mlp=416, mixer_options={"lmu": LMU_MEMORY},
           note="Chilkuri et al.: LMU + one global attention"),
    Recipe("hgrn2", ("hgrn2",) * 4, d_mlp=640),
    Recipe("mamba", ("mamba",) * 8, d_mlp=0, note="Mamba blocks without MLPs"),
    Recipe("xlstm", ("mlstm", "slstm", "mlstm", "mlstm"), d_mlp=672, note="xLSTM[3:1]: mLSTM with one sLSTM"),
    Recipe("rwkv", ("rwkv",) * 4, d_mlp=576, note="RWKV time mixing + channel mixing"),
    Recipe("mamba2", ("mamba2",) * 8, d_mlp=0, note="Mamba-2 (SSD) blocks without MLPs, as in Mamba-2"),
    Recipe("gdn", ("gdn",) * 4, d_mlp=576,
           note="Gated DeltaNet layers with the zoo's GELU MLP (Qwen3-Next pairs them with SwiGLU or MoE)"),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"Unknown zoo architecture {name!r}.{suggest(name, RECIPES)} "
                          f"Valid: {', '.join(RECIPES)}.")
    return RECIPES[name]


def available_recipes() -> list[str]:
    """Names of the recipes whose mixers are all registered (trainable now)."""
    return [n for n, r in RECIPES.items() if r.available()]


def fit_d_mlp(recipe: Recipe, target: int = TARGET_PARAMS, multiple: int = 32) -> int:
    """The ``d_mlp`` (a multiple of ``multiple``) bringing ``recipe`` closest to ``target`` parameters.
    Parameters are linear in ``d_mlp``, so two evaluations solve it."""
    from dataclasses import replace

    a = replace(recipe, d_mlp=multiple).n_params()
    b = replace(recipe, d_mlp=2 * multiple).n_params()
    slope = (b - a) / multiple
    if slope <= 0:
        return recipe.d_mlp
    best = multiple + (target - a) / slope
    return max(multiple, int(round(best / multiple)) * multiple)
