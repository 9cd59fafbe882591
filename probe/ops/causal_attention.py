r"""Causal softmax attention as kernels, shared by the attention-like mixers (:mod:`probe.mixers.attention`,
:mod:`probe.mixers.mla`) and shared blocks: rotary embedding, the causal mask of new queries after a
cache, and ``scaled_dot_product_attention`` over a cache without a dense mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rope(x: Tensor, start: int, base: float, rotary_dim: int | None = None) -> Tensor:
    """Rotary embedding (half-split pairs) of ``x [batch, pos, head, d]`` at positions ``start..``.

    The first ``rotary_dim`` channels (default ``d``; an odd count leaves its last channel) rotate:
    channel ``i`` pairs with ``i + r/2`` at frequency ``base^(-i / (r/2))``, ``r`` the rotated count;
    the other channels pass unchanged."""
    d = x.shape[-1]
    half = (d if rotary_dim is None else rotary_dim) // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    pos = torch.arange(start, start + x.shape[1], device=x.device, dtype=torch.float32)
    angles = pos[:, None] * inv_freq[None, :]  # [pos, half]
    cos, sin = angles.cos()[None, :, None, :].to(x.dtype), angles.sin()[None, :, None, :].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1) if 2 * half < d else rotated


#: the most entries of a boolean causal mask built at once (16 MB); longer inputs are split by queries
MASK_ENTRIES = 1 << 24


def causal_mask(P: int, start: int, stop: int, device=None) -> Tensor:
    """``[stop - start, P + stop]`` bool: query ``i`` (absolute position ``P + i``) sees key ``j`` iff
    ``j <= P + i``, for the queries ``start <= i < stop`` after ``P`` cached positions."""
    queries = torch.arange(P + start, P + stop, device=device)
    return torch.arange(P + stop, device=device)[None, :] <= queries[:, None]


def causal_sdpa(qh: Tensor, kh: Tensor, vh: Tensor, P: int, scale: float | None = None) -> Tensor:
    """Causal ``scaled_dot_product_attention`` of ``T`` new queries ``qh [b, H, T, d]`` over
    ``P + T`` keys / values ``kh, vh [b, H_kv, P + T, d]`` (``P`` cached positions first; ``H_kv``
    dividing ``H``: query head ``h`` reads kv head ``h // (H / H_kv)``), softmax scale ``scale``
    (default ``d^-1/2``).

    No dense ``T x (P + T)`` mask is built: without a cache SDPA applies its own causal mask
    (``is_causal``), a single query sees every key, and otherwise the queries run in chunks whose
    masks hold at most :data:`MASK_ENTRIES` entries (query ``i`` reads keys ``0 .. P + i``).
    """
    T = qh.shape[-2]
    kw = {"scale": scale, "enable_gqa": kh.shape[1] != qh.shape[1]}
    if P == 0:
        return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, **kw)
    if T == 1:
        return F.scaled_dot_product_attention(qh, kh, vh, **kw)
    rows = max(1, MASK_ENTRIES // (P + T))
    out = []
    for start in range(0, T, rows):
        stop = min(T, start + rows)
        mask = causal_mask(P, start, stop, qh.device)
        out.append(F.scaled_dot_product_attention(qh[..., start:stop, :], kh[..., : P + stop, :],
                                                  vh[..., : P + stop, :], attn_mask=mask, **kw))
    return torch.cat(out, dim=-2)


def hooked_causal_attention(qh: Tensor, kh: Tensor, vh: Tensor, P: int, scale: float | None,
                            hook_scores, hook_pattern) -> Tensor:
    """``z [b, H, T, d_v]``: causal attention of ``T`` new queries ``qh [b, H, T, d]`` over ``P + T`` keys /
    values ``kh, vh [b, H_kv, P + T, d]`` (as :func:`causal_sdpa`), through the hook points ``hook_scores``
    and ``hook_pattern`` (``[b, H, T, P + T]``)::

        scores = scale q k^T, masked causally;  pattern = softmax(scores);  z = pattern v

    Only when either hook point has hooks are the scores and the pattern materialised (kv heads repeated
    to the query heads); otherwise :func:`causal_sdpa` runs, with no dense mask."""
    if not (hook_scores.has_hooks() or hook_pattern.has_hooks()):
        return causal_sdpa(qh, kh, vh, P, scale)
    group = qh.shape[1] // kh.shape[1]
    if group > 1:
        kh, vh = (t.repeat_interleave(group, dim=1) for t in (kh, vh))
    T = qh.shape[-2]
    scale = qh.shape[-1] ** -0.5 if scale is None else scale
    scores = qh @ kh.transpose(-1, -2) * scale
    scores = hook_scores(scores.masked_fill(~causal_mask(P, 0, T, qh.device), float("-inf")))
    return hook_pattern(torch.softmax(scores, dim=-1)) @ vh
