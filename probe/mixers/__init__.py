"""Sequence mixers, one file each, and the registries that name them.

``MIXERS`` maps layout names to mixer classes (a name ``"a+b"`` resolves to mixers ``a`` and ``b``
in parallel, :mod:`probe.mixers.parallel`); ``MLP_KINDS`` maps MLP kinds (the block's
MLP slot) to factories ``(cfg, layer) -> module`` (``None`` for no MLP): the plain MLPs of
:mod:`probe.mlp` and RWKV's channel mixing, built by :func:`make_mlp`. A new mixer is one
file with a :class:`~probe.mixers.base.Mixer` subclass, registered here.
"""
from __future__ import annotations

from probe.mixers.attention import Attention
from probe.mixers.base import Mixer, RecurrentMixer
from probe.mixers.ff import FeedForward
from probe.mixers.gdn import GatedDeltaNet, KimiDeltaAttention
from probe.mixers.hgrn2 import HGRN2
from probe.mixers.lmu import LMU
from probe.mixers.lstm import LSTM
from probe.mixers.mamba import Mamba
from probe.mixers.mamba2 import Mamba2
from probe.mixers.mla import MultiHeadLatentAttention
from probe.mixers.mlstm import MLSTM
from probe.mixers.moe import MixtureOfExperts
from probe.mixers.parallel import MixerRegistry, Parallel
from probe.mixers.qrnn import QRNN
from probe.mixers.rglru import RGLRU
from probe.mixers.rwkv import RWKV, RWKVChannelMix
from probe.mixers.rwkv7 import RWKV7, RWKV7ChannelMix
from probe.mixers.slstm import SLSTM
from probe.mlp import MLP

MIXERS: dict[str, type[Mixer]] = MixerRegistry(
    {cls.NAME: cls for cls in (Attention, FeedForward, LSTM, QRNN, LMU, HGRN2, Mamba)})
MIXERS[MLSTM.NAME] = MLSTM
MIXERS[RWKV.NAME] = RWKV
MIXERS[RGLRU.NAME] = RGLRU
MIXERS[SLSTM.NAME] = SLSTM
MIXERS[Mamba2.NAME] = Mamba2
MIXERS[GatedDeltaNet.NAME] = GatedDeltaNet
MIXERS[KimiDeltaAttention.NAME] = KimiDeltaAttention
MIXERS[RWKV7.NAME] = RWKV7
MIXERS[MultiHeadLatentAttention.NAME] = MultiHeadLatentAttention


def _plain_mlp(act):
    return lambda cfg, layer: MLP(cfg.d_model, cfg.d_mlp, act)


MLP_KINDS = {kind: _plain_mlp(kind) for kind in ("gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh")}
MLP_KINDS["geglu_tanh_bias"] = lambda cfg, layer: MLP(cfg.d_model, cfg.d_mlp, "geglu_tanh", bias=True)
MLP_KINDS["none"] = None
MLP_KINDS["rwkv_channel_mix"] = RWKVChannelMix  # called as (cfg, layer)
MLP_KINDS["rwkv7_channel_mix"] = RWKV7ChannelMix
MLP_KINDS[MixtureOfExperts.NAME] = MixtureOfExperts  # options in mixer_options["moe"]


def make_mlp(kind: str, cfg, layer: int):
    """The MLP-slot module of layer ``layer`` for MLP kind ``kind`` (``None`` for ``"none"``)."""
    factory = MLP_KINDS[kind]
    return None if factory is None else factory(cfg, layer)


def register_mixer(cls: type[Mixer]) -> type[Mixer]:
    """Add a mixer class to ``MIXERS`` under its ``NAME`` (usable as a decorator)."""
    MIXERS[cls.NAME] = cls
    return cls


__all__ = ["MIXERS", "MLP_KINDS", "Mixer", "Parallel", "RecurrentMixer", "make_mlp", "register_mixer"]
