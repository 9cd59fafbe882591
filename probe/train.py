r"""The trainer used to build the model zoo (and ``probe train``).

AdamW with decoupled weight decay (none on biases, norms and embeddings), a linear
warm-up then cosine decay of the learning rate::

    lr(s) = lr * s / warmup                                         s < warmup
    lr(s) = lr * (r + (1 - r) * (1 + cos(pi * (s - warmup) / (steps - warmup))) / 2)   after
            (r = min_lr_ratio)

gradient-norm clipping, optional bf16/fp16 autocast on CUDA, periodic validation
bits-per-byte, a progress bar with loss and tokens/s, and checkpoints that make training
resumable: the batch of step ``s`` is drawn from ``numpy.random.default_rng([seed, s])``
(no data-loader state), and the checkpoint holds the model, AdamW's moments and the torch
RNG state, so an interrupted run resumed from its last checkpoint ends with the same
weights as one run straight through (bitwise on CPU).

Checkpoint layout (no pickle anywhere)::

    OUT/checkpoint/model/            config.json + model.safetensors (probe.io.checkpoint)
    OUT/checkpoint/optimizer.safetensors   AdamW tensors ("state.<param index>.<name>") + RNG states
    OUT/checkpoint/trainer.json      step, tokens seen, history, train config, AdamW param groups
    OUT/model/                       the final model (written when training ends)

A save writes the whole checkpoint into ``OUT/.checkpoint.tmp`` (``trainer.json`` last: it marks
it complete), moves the previous one aside to ``OUT/.checkpoint.old``, renames the new one in
and deletes the old one. A run killed at any step leaves the newest complete copy, which
``resume=True`` (and the next save) renames back into place
(:func:`probe.atomic.settle_directory`); complete checkpoints are deleted only once a newer
complete one is in place.

Example::

    model = probe.HookedLM(probe.ModelConfig(d_model=64, layout=["qrnn"] * 2))
    result = train(model, DataMix(text_corpus("notes.txt")), TrainConfig(steps=200), out_dir="runs/x")
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from probe.data.corpus import TokenStream
from probe.data.curriculum import Curriculum
from probe.data.mix import DataMix
from probe.errors import CheckpointError, InputError
from probe.evaluate import evaluate_bpb

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all JSON-serialisable).

    ``device``: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    ``amp``: ``"auto"`` (bf16 autocast on CUDA, none on CPU), ``"bf16"``, ``"fp16"`` or ``"none"``.
    ``eval_every`` / ``save_every``: steps between validations / checkpoints (0 = only at the end).
    """

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 200
    eval_windows: int = 32
    save_every: int = 500
    log_every: int = 10
    device: str = "auto"
    amp: str = "auto"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"{name} must be a positive integer, got {value!r}.")
        if self.lr <= 0:
            raise InputError(f"lr must be > 0, got {self.lr}.")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.save_every < 0:
            raise InputError("warmup_steps, eval_every and save_every must be >= 0.")
        if self.amp not in ("auto", "none", *AMP_DTYPES):
            raise InputError(f"amp must be auto, none, bf16 or fp16, got {self.amp!r}.")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) optimizer step ``step``."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(self.steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


#: fields that may differ between an interrupted run and its resumption
_RESUME_FREE = {"device", "log_every", "save_every", "eval_every", "eval_windows"}
#: written last into a checkpoint folder: its presence marks the folder complete
TRAINER_FILE = "trainer.json"


@dataclass
class TrainResult:
    model: Any
    step: int
    tokens_seen: int
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    final_val_bpb: float | None = None


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise InputError(f"Unknown device {spec!r}; use auto, cpu, cuda or cuda:N.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"Device {spec!r} asked for, but no CUDA GPU is available; use --device cpu.")
    return device


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (dim >= 2) except embeddings; none on biases, gains, embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and name not in ("W_E", "W_pos") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Train ``model`` on ``data`` (a :class:`DataMix`, a :class:`Curriculum` of mixes by step, or a
    :class:`TokenStream`), validating on ``val``.

    ``out_dir`` holds checkpoints; with ``resume=True`` (the default) an existing checkpoint
    there is continued. ``meta`` is stored with the final model (model-card facts).
    """

    def __init__(self, model, data: DataMix | Curriculum | TokenStream, config: TrainConfig,
                 val: TokenStream | None = None, out_dir: str | Path | None = None, resume: bool = True,
                 progress: bool = True, meta: dict[str, Any] | None = None):
        self.config = config
        self.data = data if isinstance(data, (DataMix, Curriculum)) else DataMix(data)
        self.data.check(config.seq_len)
        self.val = val
        if val is not None:
            val.check_length(config.seq_len)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.meta = dict(meta or {})
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        amp = config.amp if config.amp != "auto" else ("bf16" if self.device.type == "cuda" else "none")
        if amp != "none" and self.device.type != "cuda":
            raise InputError(f"amp={amp!r} needs a CUDA device; use amp='none' on {self.device.type}.")
        self.amp_dtype = AMP_DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                                           betas=config.betas, eps=config.eps)
        self.step = 0
        self.tokens_seen = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        if resume and self.out_dir is not None and self.out_dir.is_dir() and self._settle_checkpoints():
            self.load_checkpoint(self.checkpoint_dir)

    # -- checkpoints ------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / "checkpoint" if self.out_dir is not None else None

    def _settle_checkpoints(self) -> bool:
        """Recover ``out_dir/checkpoint`` from a save that was killed; True when one is there."""
        from probe.atomic import directory_lock, settle_directory

        final = self.checkpoint_dir
        interrupted = (self.out_dir / f".{final.name}.tmp").exists()
        with directory_lock(self.out_dir):
            complete = settle_directory(self.out_dir, final.name, TRAINER_FILE)
        if final.exists() and not complete:
            raise CheckpointError(f"{str(final)!r} holds no {TRAINER_FILE}, so it is not a complete checkpoint; "
                                  "move it away to start over, or pass resume=False.")
        if interrupted and not complete:
            warnings.warn(f"The first checkpoint save in {str(self.out_dir)!r} was interrupted before it "
                          "completed; training starts at step 0.", stacklevel=3)
        return complete

    def save_checkpoint(self) -> Path:
        """Write model, optimizer and trainer state to ``out_dir/checkpoint``, replacing the one
        there as a whole: a process killed at any point leaves the newest complete checkpoint
        for ``resume=True`` (see :func:`probe.atomic.replace_directory`)."""
        from probe.atomic import directory_lock, replace_directory

        if self.out_dir is None:
            raise InputError("save_checkpoint needs out_dir.")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with directory_lock(self.out_dir):
            return replace_directory(self.out_dir, self.checkpoint_dir.name, TRAINER_FILE, self._write_checkpoint)

    def _write_checkpoint(self, folder: Path) -> None:
        """The checkpoint's files in ``folder``, ``trainer.json`` last (it marks the folder complete)."""
        from probe.atomic import write_atomically
        from probe.io.checkpoint import save_model

        save_model(self.model, folder / "model")
        state = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        for idx, entry in state["state"].items():
            for name, value in entry.items():
                value = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        if self.scaler is not None:
            tensors["scaler.scale"] = torch.tensor(float(self.scaler.get_scale()))
        write_atomically(folder / "optimizer.safetensors", lambda tmp: save_file(tensors, str(tmp)))
        info = {"step": self.step, "tokens_seen": self.tokens_seen, "history": self.history,
                "train_seconds": self.train_seconds, "config": self.config.to_dict(),
                "param_groups": state["param_groups"], "meta": self.meta}
        write_atomically(folder / TRAINER_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=1, sort_keys=True)))

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimizer, RNG and counters from a checkpoint directory."""
        from probe.io.checkpoint import load_model

        path = Path(path)
        try:
            info = json.loads((path / TRAINER_FILE).read_text())
            tensors = load_file(str(path / "optimizer.safetensors"))
        except (OSError, json.JSONDecodeError, ValueError) as exc:
            raise CheckpointError(f"Cannot resume from {str(path)!r}: {exc}") from exc
        saved = {k: v for k, v in info["config"].items() if k not in _RESUME_FREE}
        now = {k: v for k, v in self.config.to_dict().items() if k not in _RESUME_FREE}
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise CheckpointError(f"The checkpoint in {str(path)!r} was made with different training settings "
                                  f"({', '.join(diff)}); use another out_dir or resume=False.")
        saved_model = load_model(path / "model")
        if saved_model.cfg.to_dict() != self.model.cfg.to_dict():
            raise CheckpointError(f"The checkpoint in {str(path)!r} holds a different model config.")
        self.model.load_state_dict(saved_model.state_dict())
        state: dict[str, Any] = {"state": {}, "param_groups": info["param_groups"]}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, idx, name = key.split(".", 2)
                state["state"].setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict(state)
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        if self.scaler is not None and "scaler.scale" in tensors:
            self.scaler.update(float(tensors["scaler.scale"]))
        self.step = int(info["step"])
        self.tokens_seen = int(info["tokens_seen"])
        self.history = list(info["history"])
        self.train_seconds = float(info["train_seconds"])
        self.meta = {**info.get("meta", {}), **self.meta}

    # -- training ---------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.config.seed, step])
        shape = self.data.shape_at(step, self.config.batch_size, self.config.seq_len)
        return torch.from_numpy(self.data.mix_at(step).batch(rng, *shape))

    def validate(self) -> float | None:
        if self.val is None:
            return None
        return evaluate_bpb(self.model, self.val, self.config.seq_len, self.config.eval_windows)

    def train_step(self, tokens: torch.Tensor) -> float:
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        tokens = tokens.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.model(tokens, return_type="loss")
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Loss became {float(loss)} at step {self.step}; lower the learning rate "
                                     "or use amp='none'.")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        self.tokens_seen += tokens.shape[0] * (tokens.shape[1] - 1)
        return float(loss.detach())

    def train(self, stop_after: int | None = None) -> TrainResult:
        """Run until ``config.steps`` (or ``stop_after`` more steps, to simulate an interruption)."""
        from tqdm.auto import tqdm

        cfg = self.config
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        self.model.train()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        window_loss, window_tokens, window_time = [], 0, 0.0
        try:
            while self.step < end:
                tokens = self.batch(self.step)
                t0 = time.perf_counter()
                loss = self.train_step(tokens)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                self.train_seconds += dt
                window_loss.append(loss)
                window_tokens += tokens.numel() - tokens.shape[0]
                window_time += dt
                bar.update(1)
                record = None
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    record = {"step": self.step, "loss": float(np.mean(window_loss)), "lr": cfg.lr_at(self.step - 1),
                              "tokens_per_s": window_tokens / max(window_time, 1e-9), "tokens_seen": self.tokens_seen}
                    bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}")
                    window_loss, window_tokens, window_time = [], 0, 0.0
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.steps:
                    val = self.validate()
                    if val is not None:
                        record = record or {"step": self.step, "tokens_seen": self.tokens_seen}
                        record["val_bpb"] = val
                        bar.set_postfix(loss=f"{np.mean(window_loss or [loss]):.3f}", val_bpb=f"{val:.3f}")
                if record is not None:
                    self.history.append(record)
                if self.out_dir is not None and ((cfg.save_every and self.step % cfg.save_every == 0)
                                                 or self.step == end):
                    self.save_checkpoint()
        finally:
            bar.close()
        final_val = next((h["val_bpb"] for h in reversed(self.history) if "val_bpb" in h), None)
        if self.out_dir is not None and self.step >= cfg.steps:
            from probe.io.checkpoint import save_model

            save_model(self.model, self.out_dir / "model", meta=self.meta)
        return TrainResult(self.model, self.step, self.tokens_seen, self.history, self.train_seconds, final_val)


def train(model, data: DataMix | Curriculum | TokenStream, config: TrainConfig | None = None,
          val: TokenStream | None = None, out_dir: str | Path | None = None, resume: bool = True,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Convenience wrapper: ``Trainer(...).train(stop_after)``."""
    trainer = Trainer(model, data, config or TrainConfig(), val, out_dir, resume, progress)
    return trainer.train(stop_after)
