r"""One layer: ``norm -> mixer -> + resid ; norm -> mlp -> + resid``.

Hooks (TransformerLens names; ``mixer_in`` / ``mlp_in`` are the inputs the mixer / MLP actually
read, ``mixer_out`` / ``mlp_out`` exactly what the residual stream receives)::

    hook_resid_pre -> ln1 -> hook_mixer_in -> mixer -> hook_mixer_out (+ hook_attn_out for attn)
    hook_resid_mid = resid_pre + mixer_out
    hook_resid_mid -> ln2 -> hook_mlp_in -> mlp -> hook_mlp_out
    hook_resid_post = resid_mid + mlp_out

Norm placement (``cfg.norm_placement[layer]``):

- ``"pre"`` (the default, above): ``resid + f(norm(resid))``.
- ``"post"`` (OLMo-2 / OLMo hybrid attention layers): ``resid + norm(f(resid))``; the norm moves
  onto the output, so ``hook_mixer_in`` is ``resid_pre`` itself and ``hook_mixer_out`` is
  ``ln1(mixer(resid_pre))`` (after the norm: still what the residual receives, so
  ``resid_mid = resid_pre + mixer_out`` and direct logit attribution and patching decompose as for
  pre-norm). The mixer's raw output is ``ln1``'s input (``blocks.{l}.ln1.hook_scale`` holds its
  scale); likewise ``mlp_in = resid_mid`` and ``mlp_out = ln2(mlp(resid_mid))``.

Parallel mixers (a layout entry ``"a+b"``, :mod:`probe.mixers.parallel`): the mixer slot holds
both parts reading ``mixer_in``; ``hook_mixer_out`` is their sum and ``mixer.hook_{p}_out`` each
part's share; part ``p``'s own hooks are ``blocks.{l}.mixer.{p}.hook_*``.

Shared blocks (``cfg.shared_layout``, :mod:`probe.shared_block`): a layer that reads one adds its
contribution ``blocks.{l}.shared.hook_out`` to the mixer's input only,
``mixer_in = ln1(resid_pre + shared(resid_pre, embed))``; its KV cache is the state entry ``"shared"``.

The block's state is ``{"mixer": {...}, "mlp": {...}}`` (a parallel slot: one entry per part,
``{"mixer.attn": {...}, "mixer.mamba2": {...}, "mlp": {...}}``, keyed by the part's module path);
the MLP slot may carry memory (RWKV channel mixing's token shift).
"""
from __future__ import annotations

from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from probe.errors import InputError
from probe.hooks import ATTENTION_ALIAS, MLP_SITES, RESIDUAL_SITES
from probe.mixers import MIXERS, Parallel, make_mlp
from probe.norm import make_norm
from probe.shared_block import make_shared_use


class Block(nn.Module):
    def __init__(self, cfg, layer: int, shared_blocks=None):
        super().__init__()
        self.layer = layer
        self.mixer_name = cfg.layout[layer]
        self.post_norm = cfg.norm_placement[layer] == "post"
        self.ln1 = make_norm(cfg)
        self.shared = make_shared_use(cfg, layer, shared_blocks)
        self.mixer = MIXERS[self.mixer_name](cfg, layer)
        self.mlp = make_mlp(cfg.mlp_layout[layer], cfg, layer)
        self.ln2 = make_norm(cfg) if self.mlp is not None else None
        sites = RESIDUAL_SITES + ((ATTENTION_ALIAS,) if self.mixer.is_attention else ())
        for name in sites + (MLP_SITES if self.mlp is not None else ()):
            setattr(self, f"hook_{name}", HookPoint())
        #: the entries of this block's state (see the module docstring)
        self.state_entries = tuple(self.initial_state(0))

    def initial_state(self, batch: int, device=None, dtype=None) -> dict:
        shared = {"shared": self.shared.initial_state(batch, device, dtype)} if self.shared is not None else {}
        return {**self._mixer_parts(self.mixer.initial_state(batch, device, dtype)),
                "mlp": self.mlp.initial_state(batch, device, dtype) if self.mlp is not None else {}, **shared}

    def _mixer_parts(self, mixer_state: dict) -> dict:
        """The mixer's state as block-state entries: ``{"mixer": state}``, or for parallel mixers
        ``{"mixer.{part}": part state}`` (each keyed by its module path in the block)."""
        if isinstance(self.mixer, Parallel):
            return {f"mixer.{p}": s for p, s in mixer_state.items()}
        return {"mixer": mixer_state}

    def _mixer_state(self, state: dict) -> dict | None:
        """The mixer's part of a block state (the inverse of :meth:`_mixer_parts`)."""
        if isinstance(self.mixer, Parallel):
            return {p: state.get(f"mixer.{p}") for p in self.mixer.parts()}
        return state.get("mixer")

    def _check_state(self, state: dict | None) -> dict:
        if state is None:
            return {}
        expected = set(self.state_entries)
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise InputError(f"Layer {self.layer} ({self.mixer_name}) expects a state with entries "
                             f"{sorted(expected)}, got {got}. Pass the states returned by a previous run "
                             "of the same model.")
        return state

    def _read(self, norm: nn.Module, resid: Tensor) -> Tensor:
        """What a slot reads: ``norm(resid)`` (pre-norm), or ``resid`` itself (post-norm; a copy, so an
        in-place edit of ``hook_mixer_in`` / ``hook_mlp_in`` leaves the residual stream alone)."""
        return resid.clone() if self.post_norm else norm(resid)

    def _write(self, norm: nn.Module, out: Tensor) -> Tensor:
        """What a slot adds to the residual stream: ``out`` (pre-norm) or ``norm(out)`` (post-norm)."""
        return norm(out) if self.post_norm else out

    def forward(self, resid: Tensor, state: dict | None = None, embed: Tensor | None = None,
                cross: dict | None = None) -> tuple[Tensor, dict]:
        """``(resid_post, state)``; ``cross``: the forward's cross-layer dictionary, handed to a mixer with
        ``cross_layer`` (RWKV-7's value residual, :class:`probe.mixers.base.Mixer`)."""
        state = self._check_state(state)
        resid = self.hook_resid_pre(resid)
        x, shared = resid, {}
        if self.shared is not None:  # a shared block writes into the mixer's input only
            extra, shared["shared"] = self.shared(resid, embed, state.get("shared"))
            x = resid + extra
        x = self.hook_mixer_in(self._read(self.ln1, x))
        mixer_state = self._mixer_state(state)
        if self.mixer.cross_layer:
            out, mixer_state = self.mixer(x, mixer_state, cross=cross)
        else:
            out, mixer_state = self.mixer(x, mixer_state)
        out = self.hook_mixer_out(self._write(self.ln1, out))
        if self.mixer.is_attention:
            out = self.hook_attn_out(out)
        resid = self.hook_resid_mid(resid + out)
        mlp_state = {}
        if self.mlp is not None:
            out, mlp_state = self.mlp(self.hook_mlp_in(self._read(self.ln2, resid)), state.get("mlp"))
            resid = resid + self.hook_mlp_out(self._write(self.ln2, out))
        return self.hook_resid_post(resid), {**self._mixer_parts(mixer_state), "mlp": mlp_state, **shared}
