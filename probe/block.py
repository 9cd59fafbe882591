r"""One layer: ``norm -> mixer -> + resid ; norm -> mlp -> + resid``.

Hooks (TransformerLens names; ``mixer_in`` / ``mlp_in`` are the *normalised* inputs the
mixer / MLP actually read)::

    hook_resid_pre -> ln1 -> hook_mixer_in -> mixer -> hook_mixer_out (+ hook_attn_out for attn)
    hook_resid_mid = resid_pre + mixer_out
    hook_resid_mid -> ln2 -> hook_mlp_in -> mlp -> hook_mlp_out
    hook_resid_post = resid_mid + mlp_out

The block's state is ``{"mixer": {...}, "mlp": {...}}``; the MLP slot may carry memory
(RWKV channel mixing's token shift).
"""
from __future__ import annotations

from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from probe.hooks import ATTENTION_ALIAS, MLP_SITES, RESIDUAL_SITES
from probe.mixers import MIXERS, make_mlp
from probe.norm import make_norm


class Block(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.layer = layer
        self.mixer_name = cfg.layout[layer]
        self.ln1 = make_norm(cfg)
        self.mixer = MIXERS[self.mixer_name](cfg, layer)
        self.mlp = make_mlp(cfg.mlp_layout[layer], cfg, layer)
        self.ln2 = make_norm(cfg) if self.mlp is not None else None
        sites = RESIDUAL_SITES + ((ATTENTION_ALIAS,) if self.mixer.is_attention else ())
        for name in sites + (MLP_SITES if self.mlp is not None else ()):
            setattr(self, f"hook_{name}", HookPoint())

    def initial_state(self, batch: int, device=None, dtype=None) -> dict:
        return {
            "mixer": self.mixer.initial_state(batch, device, dtype),
            "mlp": self.mlp.initial_state(batch, device, dtype) if self.mlp is not None else {},
        }

    def forward(self, resid: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        state = state or {}
        resid = self.hook_resid_pre(resid)
        out, mixer_state = self.mixer(self.hook_mixer_in(self.ln1(resid)), state.get("mixer"))
        out = self.hook_mixer_out(out)
        if self.mixer.is_attention:
            out = self.hook_attn_out(out)
        resid = self.hook_resid_mid(resid + out)
        mlp_state = {}
        if self.mlp is not None:
            out, mlp_state = self.mlp(self.hook_mlp_in(self.ln2(resid)), state.get("mlp"))
            resid = resid + self.hook_mlp_out(out)
        return self.hook_resid_post(resid), {"mixer": mixer_state, "mlp": mlp_state}
