"""Model configuration: one dataclass that fully describes a :class:`probe.HookedLM`.

A model is ``embed -> blocks -> final norm -> unembed``; ``layout`` names the sequence
mixer of every block, so a hybrid is just a layout::

    ModelConfig(d_model=64, layout=["qrnn", "qrnn", "attn", "ff"])
    ModelConfig(d_model=64, layout=["lmu"] * 5 + ["attn"])
    ModelConfig(d_model=64, layout=["attn+mamba2"] * 4)      # attention and Mamba-2 side by side

A layout entry ``"a+b"`` runs mixers ``a`` and ``b`` in parallel on the same input, their outputs
summed (:mod:`probe.mixers.parallel`); ``norm_placement`` puts a layer's norms before its mixer
and MLP (``"pre"``, the default) or on their outputs (``"post"``, :mod:`probe.block`).

Per-mixer options live in ``mixer_options`` keyed by mixer name, e.g.
``mixer_options={"qrnn": {"window": 2}}``; each mixer declares its options and their
defaults and accepted values in its ``OPTIONS`` class attribute (:mod:`probe.mixers.options`);
unknown keys and malformed values are a :class:`ConfigError` naming the mixer and the option.
An MLP kind that declares ``OPTIONS`` under its own name takes its options the same way
(``mixer_options={"moe": {"n_experts": 8, "top_k": 2}}``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from probe.errors import ConfigError, suggest
from probe.mixers import MIXERS, MLP_KINDS
from probe.mixers.options import resolve
from probe.mixers.parallel import part_names
from probe.shared_block import check_shared_layout

NORMS = ("rmsnorm", "layernorm")
MLPS = ("gelu", "gelu_tanh", "swiglu", "geglu", "relu", "moe", "none")
POSITIONALS = ("rope", "learned", "none")
NORM_PLACEMENTS = ("pre", "post")


@dataclass
class ModelConfig:
    """Everything needed to build a :class:`probe.HookedLM`.

    Attributes:
        vocab_size: number of token ids (byte tokenizer: 256 bytes + 1 special = 257).
        d_model: width of the residual stream.
        layout: mixer name of every layer (see ``probe.mixers.MIXERS``); its length is
            the number of layers. Defaults to ``["attn"] * n_layers``. ``"a+b"``: mixers
            ``a`` and ``b`` in parallel, outputs summed (Falcon-H1's ``"attn+mamba2"``).
        n_layers: optional; must equal ``len(layout)`` when both are given.
        n_heads: heads of attention (and of multi-head recurrent mixers).
        d_head: per-head width; defaults to ``d_model // n_heads``.
        d_mlp: hidden width of the MLP after each mixer; ``0`` removes the MLP.
        mlp: MLP kind, one of ``gelu``, ``gelu_tanh``, ``swiglu``, ``geglu``, ``relu``, ``moe`` (mixture of
            experts, options in ``mixer_options["moe"]``), ``none``.
        mlp_layout: optional per-layer MLP kind (overrides ``mlp`` and a mixer's
            preferred MLP, e.g. RWKV's channel mixing).
        norm: ``rmsnorm`` or ``layernorm``; ``norm_eps`` its epsilon.
        norm_placement: per layer ``"pre"`` (``resid + f(norm(resid))``, the default) or ``"post"``
            (``resid + norm(f(resid))``, OLMo-2 style), for the mixer and the MLP of that layer.
        positional: ``rope`` (inside attention), ``learned`` (added to the embedding)
            or ``none``; ``rope_base`` the RoPE frequency base.
        n_ctx: the longest sequence attention / learned positions accept; recurrent
            only models have no limit.
        tie_embeddings: unembed with the transpose of the embedding matrix.
        logit_soft_cap: if set, logits are ``cap * tanh(logits / cap)`` (xLSTM-7B uses 30).
        embed_scale: if set, token embeddings are multiplied by it before ``hook_embed``
            (Gemma / RecurrentGemma scale by ``sqrt(d_model)``); the unembedding is not scaled.
        mixer_options: option overrides keyed by mixer name, or by the name of an MLP kind that
            declares options (``"moe"``).
        init_std: std of the normal initialisation of linear and embedding weights.
        tokenizer: ``"byte"`` or the name/path of a Hugging Face tokenizer.
        default_prepend_bos: whether ``to_tokens`` prepends the BOS token by default.
        name: free-form model name (shown in the explorer and model cards).
        shared_layout: optional, per layer: the index of the shared attention + MLP block the
            layer reads before its mixer (``None``: none), e.g. Zamba2's ``[None, 0, None, 1, None, 0]``;
            the blocks ``0 .. n-1`` are held once and each must be used (:mod:`probe.shared_block`).
        shared_options: options of the shared blocks (``n_heads``, ``n_kv_heads``, ``d_mlp``, ``mlp``,
            ``adapter_rank``, ``attn_adapters``, ``scale``: ``probe.shared_block.OPTIONS``).
    """

    vocab_size: int = 257
    d_model: int = 64
    layout: list[str] | None = None
    n_layers: int | None = None
    n_heads: int = 4
    d_head: int | None = None
    d_mlp: int | None = None
    mlp: str = "gelu"
    mlp_layout: list[str] | None = None
    norm: str = "rmsnorm"
    norm_placement: list[str] | None = None
    norm_eps: float = 1e-5
    positional: str = "rope"
    rope_base: float = 10000.0
    n_ctx: int = 2048
    tie_embeddings: bool = False
    logit_soft_cap: float | None = None
    embed_scale: float | None = None
    mixer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    init_std: float = 0.02
    tokenizer: str = "byte"
    default_prepend_bos: bool = True
    name: str = ""
    shared_layout: list[int | None] | None = None
    shared_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        if self.layout is None:
            self.layout = ["attn"] * (self.n_layers if self.n_layers is not None else 2)
        self.layout = list(self.layout)
        if not self.layout:
            raise ConfigError("layout is empty: a model needs at least one layer.")
        if self.n_layers is None:
            self.n_layers = len(self.layout)
        elif self.n_layers != len(self.layout):
            raise ConfigError(f"n_layers={self.n_layers} but layout has {len(self.layout)} entries; "
                              "give one of them or make them agree.")
        for name in self.layout:
            if not isinstance(name, str):
                raise ConfigError(f"layout lists mixer names (strings), got {name!r} ({type(name).__name__}). "
                                  f"Known mixers: {', '.join(sorted(MIXERS))}.")
            _check_mixer_name(name)
        if not isinstance(self.mixer_options, dict):
            raise ConfigError("mixer_options must be a dict {mixer name: {option: value}}, got "
                              f"{type(self.mixer_options).__name__}.")
        owners = option_owners()
        for key, opts in self.mixer_options.items():
            if key not in owners:
                raise ConfigError(f"mixer_options has an entry for unknown mixer {key!r}.{suggest(str(key), owners)} "
                                  f"Mixers and MLP kinds with options: {', '.join(sorted(owners))}.")
            if not isinstance(opts, dict):
                raise ConfigError(f"mixer_options[{key!r}] must be a dict of options, e.g. {{'window': 2}}; "
                                  f"got {type(opts).__name__}.")
        _positive("vocab_size", self.vocab_size)
        _positive("d_model", self.d_model)
        _positive("n_heads", self.n_heads)
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                                  "choose n_heads dividing d_model or set d_head explicitly.")
            self.d_head = self.d_model // self.n_heads
        _positive("d_head", self.d_head)
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.d_mlp < 0:
            raise ConfigError(f"d_mlp must be >= 0 (0 removes the MLP), got {self.d_mlp}.")
        _choice("mlp", self.mlp, MLPS)
        _choice("norm", self.norm, NORMS)
        _choice("positional", self.positional, POSITIONALS)
        if self.mlp_layout is None:
            self.mlp_layout = [self._default_mlp(MIXERS[name]) for name in self.layout]
        else:
            self.mlp_layout = list(self.mlp_layout)
            if len(self.mlp_layout) != self.n_layers:
                raise ConfigError(f"mlp_layout has {len(self.mlp_layout)} entries for {self.n_layers} layers.")
        for kind in self.mlp_layout:
            if not isinstance(kind, str):
                raise ConfigError(f"mlp_layout lists MLP kinds (strings), got {kind!r} ({type(kind).__name__}). "
                                  f"Known: {', '.join(sorted(MLP_KINDS))}.")
            if kind not in MLP_KINDS:
                raise ConfigError(f"Unknown MLP kind {kind!r} in mlp_layout.{suggest(kind, MLP_KINDS)} "
                                  f"Known: {', '.join(sorted(MLP_KINDS))}.")
        self._check_norm_placement()
        _positive("n_ctx", self.n_ctx)
        _number("norm_eps", self.norm_eps, low=0.0)
        _number("rope_base", self.rope_base, low=0.0)
        _number("init_std", self.init_std, low=0.0, open_low=False)
        if self.logit_soft_cap is not None:
            _number("logit_soft_cap", self.logit_soft_cap, low=0.0)
        if self.embed_scale is not None:
            _number("embed_scale", self.embed_scale, low=0.0)
        check_shared_layout(self)

    def _check_types(self) -> None:
        """Every field of the right type before anything is derived from it (``"2"`` layers, an
        8.5-wide MLP, ``"false"`` as a boolean (truthy!) are a :class:`ConfigError` naming the field)."""
        if isinstance(self.layout, str):
            raise ConfigError(f"layout must be a list of mixer names, got the string {self.layout!r}; "
                              f"write layout=[{self.layout!r}] * n_layers.")
        _sequence("layout", self.layout)
        _sequence("mlp_layout", self.mlp_layout)
        _sequence("norm_placement", self.norm_placement)
        if self.n_layers is not None:
            _positive("n_layers", self.n_layers)
        if self.d_head is not None:
            _positive("d_head", self.d_head)
        if self.d_mlp is not None and (not isinstance(self.d_mlp, int) or isinstance(self.d_mlp, bool)):
            raise ConfigError(f"d_mlp must be an integer >= 0 (0 removes the MLP) or None, got {self.d_mlp!r}.")
        for name in ("tie_embeddings", "default_prepend_bos"):
            _flag(name, getattr(self, name))
        for name in ("mlp", "norm", "positional", "tokenizer", "name"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r} "
                                  f"({type(getattr(self, name)).__name__}).")

    def _check_norm_placement(self) -> None:
        """``norm_placement``: ``None`` (every layer ``"pre"``) or one of ``"pre"`` / ``"post"`` per layer."""
        if self.norm_placement is None:
            self.norm_placement = ["pre"] * self.n_layers
        self.norm_placement = list(self.norm_placement)
        if len(self.norm_placement) != self.n_layers:
            raise ConfigError(f"norm_placement has {len(self.norm_placement)} entries for {self.n_layers} layers; "
                              "give one 'pre' or 'post' per layer.")
        for placement in self.norm_placement:
            _choice("norm_placement entry", placement, NORM_PLACEMENTS)

    def _default_mlp(self, mixer_cls) -> str:
        if self.d_mlp == 0 or self.mlp == "none":
            return "none"
        return getattr(mixer_cls, "default_mlp", None) or self.mlp

    def options(self, mixer_name: str) -> dict[str, Any]:
        """The options of mixer (or option-declaring MLP kind) ``mixer_name``: its declared defaults
        updated with ``mixer_options``, every given value checked against the declaration
        (:mod:`probe.mixers.options`)."""
        return resolve(mixer_name, option_owners()[mixer_name].OPTIONS, self.mixer_options.get(mixer_name, {}))

    @property
    def has_attention(self) -> bool:
        return any(MIXERS[part].is_attention for name in self.layout for part in part_names(name)) or self.shared_layout is not None

    @property
    def context_limit(self) -> int | None:
        """Longest total sequence the model accepts (None: unlimited, recurrent only)."""
        return self.n_ctx if (self.has_attention or self.positional == "learned") else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"A model config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown config field {unknown[0]!r}.{suggest(unknown[0], known)} "
                              "The config may come from a newer probe or be malformed.")
        try:
            return cls(**data)
        except TypeError as exc:  # wrong value types surface here
            raise ConfigError(f"Malformed model config: {exc}") from exc


def option_owners() -> dict[str, type]:
    """The names ``mixer_options`` accepts: every mixer, and every MLP kind that is a class declaring
    ``OPTIONS`` under its own name (``moe``; RWKV's channel mixing reads the ``rwkv`` mixer's options)."""
    kinds = {kind: f for kind, f in MLP_KINDS.items() if isinstance(f, type) and getattr(f, "NAME", None) == kind
             and getattr(f, "OPTIONS", None)}
    return {**MIXERS, **kinds}


def _check_mixer_name(name: str) -> None:
    """A :class:`ConfigError` unless ``name`` is a registered mixer or a parallel ``"a+b"`` of distinct ones."""
    parts = part_names(name)
    for part in parts:
        if part not in MIXERS.keys():
            what = f"{part!r} in the parallel layout entry {name!r}" if len(parts) > 1 else f"{name!r} in layout"
            raise ConfigError(f"Unknown mixer {what}.{suggest(part, MIXERS)} "
                              f"Known mixers: {', '.join(sorted(MIXERS))}.")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"The parallel layout entry {name!r} names a mixer twice; each part of 'a+b' is a "
                          "different mixer (its hooks are named by it).")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


def _flag(name: str, value: Any) -> None:
    """``value`` must be a real bool: ``bool("false")`` is True, so strings and numbers are refused."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")


def _sequence(name: str, value: Any) -> None:
    """``value`` must be ``None`` or a list (or tuple) of names."""
    if value is not None and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list of names, got {type(value).__name__} {value!r}.")


def _number(name: str, value: Any, low: float, open_low: bool = True) -> None:
    """``value`` must be a finite real number ``> low`` (``>= low`` with ``open_low=False``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if open_low else value < low):
        raise ConfigError(f"{name} must be a finite number {'>' if open_low else '>='} {low:g}, got {value!r}.")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}.{suggest(str(value), choices)}")
