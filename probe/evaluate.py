r"""Evaluation shared by the trainer, the zoo cards and the tests.

* :func:`evaluate_bpb`: held-out bits-per-byte on consecutive windows of a token stream::

      bpb = sum_t -ln p(x_t | x_<t)  /  (ln 2 * bytes predicted)

  (``bytes predicted = targets * stream.bytes_per_token``; one token is one byte for the
  byte tokenizer, so there it is the loss in bits per token).
* :func:`task_scores`: pair accuracy (``logit[correct] > logit[contrast]``, chance 0.5) and
  top-1 accuracy (chance ``task.chance``) over the answer positions of task examples.
* :func:`text_logprobs`: summed log-probability of each text, and :func:`evaluate_minimal_pairs`:
  the share of :class:`~probe.data.minimal_pairs.MinimalPair` whose good text scores higher (BLiMP's
  metric, chance 0.5).

All run in ``eval`` mode under ``torch.no_grad`` and restore the model's mode afterwards.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from probe.data.corpus import TokenStream
from probe.data.minimal_pairs import MinimalPair
from probe.errors import InputError
from probe.result import MethodResult


@contextmanager
def evaluating(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows: ``(tokens [b, max_len], lengths [b])``. Causal models ignore the padding."""
    if not rows:
        raise InputError("Nothing to evaluate: the list of sequences is empty.")
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out.to(device), torch.tensor([len(r) for r in rows])


def evaluate_bpb(model, stream: TokenStream, seq_len: int = 256, max_windows: int | None = None,
                 batch_size: int = 16) -> float:
    """Bits-per-byte of ``model`` on the first ``max_windows`` windows of ``seq_len + 1`` tokens."""
    windows = torch.from_numpy(stream.windows(seq_len, max_windows))
    nats, count = 0.0, 0
    with evaluating(model):
        for i in range(0, len(windows), batch_size):
            batch = windows[i : i + batch_size].to(model.device)
            logits = model(batch)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1),
                                   reduction="sum")
            nats += float(loss)
            count += batch[:, 1:].numel()
    return nats / math.log(2) / (count * stream.bytes_per_token)


def task_scores(model, examples, batch_size: int = 64) -> dict[str, float]:
    """Scores of ``model`` on a list of :class:`~probe.data.tasks.TaskExample` (all of one task)."""
    if not examples:
        raise InputError("task_scores got no examples.")
    pair, top1, n = 0, 0, 0
    with evaluating(model):
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            tokens, _ = pad_batch([e.tokens for e in chunk], model.tokenizer.pad_token_id or 0, model.device)
            logits = model(tokens).float()
            for b, e in enumerate(chunk):
                pos = torch.as_tensor(e.answer_positions, device=logits.device)
                lg = logits[b, pos]
                correct = torch.as_tensor(e.correct, device=lg.device)
                contrast = torch.as_tensor(e.contrast, device=lg.device)
                pair += int((lg.gather(1, correct[:, None]) > lg.gather(1, contrast[:, None])).sum())
                top1 += int((lg.argmax(-1) == correct).sum())
                n += len(e.answer_positions)
    return {"pair_accuracy": pair / n, "top1": top1 / n, "answers": n}


def text_logprobs(model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """``[len(texts)]`` total log-probability (nats) of every token of each text given a BOS."""
    tok = model.tokenizer
    rows = []
    for t in texts:
        ids = tok.encode(t)
        if not ids:
            raise InputError("Cannot score an empty text.")
        rows.append(([tok.bos_token_id] if tok.bos_token_id is not None else []) + list(ids))
    if any(len(r) < 2 for r in rows):
        raise InputError("Texts must have at least one token after the BOS to be scored.")
    out = np.zeros(len(rows))
    with evaluating(model):
        for i in range(0, len(rows), batch_size):
            tokens, lengths = pad_batch(rows[i : i + batch_size], tok.pad_token_id or 0, model.device)
            logp = torch.log_softmax(model(tokens).float(), -1)[:, :-1]
            picked = logp.gather(-1, tokens[:, 1:, None])[..., 0]
            mask = torch.arange(tokens.shape[1] - 1, device=picked.device)[None] < (lengths.to(picked.device) - 1)[:, None]
            out[i : i + len(tokens)] = (picked * mask).sum(1).cpu().numpy()
    return out


@dataclass
class MinimalPairResult(MethodResult):
    """Per-pair scores; ``accuracy`` overall, ``by_phenomenon()`` per phenomenon."""

    pairs: list[MinimalPair]
    logp_good: np.ndarray
    logp_bad: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.logp_good > self.logp_bad

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    def by_phenomenon(self) -> dict[str, float]:
        frame = self.to_frame()
        return {str(k): float(v) for k, v in frame.groupby("phenomenon")["correct"].mean().items()}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"phenomenon": [p.phenomenon for p in self.pairs], "good": [p.good for p in self.pairs],
                             "bad": [p.bad for p in self.pairs], "logp_good": self.logp_good,
                             "logp_bad": self.logp_bad, "correct": self.correct})

    def figure(self, **kwargs):
        import plotly.express as px

        acc = self.by_phenomenon()
        fig = px.bar(x=list(acc), y=list(acc.values()), labels={"x": "phenomenon", "y": "accuracy"},
                     title=f"Minimal pairs: accuracy {self.accuracy:.3f} (chance 0.5)", **kwargs)
        fig.add_hline(y=0.5, line_dash="dot")
        return fig


def evaluate_minimal_pairs(model, pairs: Sequence[MinimalPair | tuple[str, str]], batch_size: int = 64) -> MinimalPairResult:
    """Score every pair with ``model`` (any :class:`probe.HookedLM`)."""
    pairs = [p if isinstance(p, MinimalPair) else MinimalPair(*p) for p in pairs]
    if not pairs:
        raise InputError("evaluate_minimal_pairs got no pairs.")
    good = text_logprobs(model, [p.good for p in pairs], batch_size)
    bad = text_logprobs(model, [p.bad for p in pairs], batch_size)
    return MinimalPairResult(pairs, good, bad)
