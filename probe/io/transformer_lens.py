r"""TransformerLens 4 interop: a thin adapter that gives a ``TransformerBridge`` probe's interface.

::

    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=hf_model)
    model = probe.from_transformer_lens(bridge)
    logits, cache = model.run_with_cache("hello")          # probe hook names, probe ActivationCache
    cache["blocks.0.hook_resid_post"], cache["blocks.1.mixer.hook_pattern"]
    probe.methods.logit_lens(model, "hello")               # any hook-based method

The adapter runs the bridge itself (TransformerLens computes every number); it only renames
hooks between the two vocabularies, builds a :class:`probe.ModelConfig` describing the
model (``layout = ["attn"] * n_layers``) and exposes the readout parameters (``W_E``,
``unembed_matrix``, ``b_U``, ``ln_final``) the methods use. Hook names (ours -> the bridge's)::

    hook_embed, hook_pos_embed                   -> hook_embed, hook_pos_embed
    blocks.{i}.hook_resid_pre / mid / post       -> blocks.{i}.hook_resid_pre / mid / post
    blocks.{i}.hook_mixer_in                     -> blocks.{i}.ln1.hook_out
    blocks.{i}.hook_mixer_out, hook_attn_out     -> blocks.{i}.hook_attn_out
    blocks.{i}.hook_mlp_in / hook_mlp_out        -> blocks.{i}.ln2.hook_out / hook_mlp_out
    blocks.{i}.mixer.hook_{q,k,v,z,pattern,attn_scores} -> blocks.{i}.attn.hook_{...}
    blocks.{i}.mlp.hook_pre / hook_post          -> blocks.{i}.mlp.hook_pre / hook_post
    blocks.{i}.ln{1,2}.hook_scale, ln_final.hook_scale (same names)
    blocks.{i}.ln{1,2}.hook_normalized, ln_final.hook_normalized -> ....hook_out (after the affine
                                                 part, like ours; the bridge's hook_normalized is before it)
    hook_logits                                  -> unembed.hook_out

Hook functions see tensors in the same layouts as on a HookedLM (``q/k/v/z``
``[batch, pos, head, d_head]``, ``pattern`` ``[batch, head, q_pos, k_pos]``) and ``hook.name``
is the probe name. Supported: decoder-only transformer bridges with sequential attention
and MLP sublayers (``blocks.{i}.ln1/attn/ln2/mlp``, ``ln_final``, ``unembed``) and LayerNorm
or RMSNorm — GPT-2 is tested. Others (parallel attention/MLP, Mamba bridges...) are refused
with a clear error. There is no carried state (``states=`` / ``return_states``).
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any

import torch
from torch import Tensor

from probe.cache import ActivationCache
from probe.config import ModelConfig
from probe.errors import ConfigError, InputError, unknown_hook
from probe.hooks import ATTENTION_ALIAS, block_hook, mixer_hook, mlp_hook, residual_before
from probe.model import HookedLM
from probe.sampling import sample

ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
        "silu": "swiglu", "swish": "swiglu"}
NORMS = {"LN": "layernorm", "LNPre": "layernorm", "RMS": "rmsnorm", "RMSPre": "rmsnorm"}
POSITIONALS = {"standard": "learned", "rotary": "rope"}


def is_bridge(obj: Any) -> bool:
    """True for a TransformerLens 4 ``TransformerBridge`` (checked without importing TransformerLens)."""
    return any(c.__name__ == "TransformerBridge" and c.__module__.startswith("transformer_lens")
               for c in type(obj).__mro__)


def as_probe_model(model: Any):
    """``model`` itself, or a :class:`BridgeAdapter` when it is a ``TransformerBridge``: methods call
    this so they accept both."""
    return BridgeAdapter(model) if is_bridge(model) else model


def from_transformer_lens(bridge: Any) -> "BridgeAdapter":
    """Wrap a TransformerLens 4 ``TransformerBridge`` so probe's methods and hook names work on it.

    TransformerLens computes; the adapter renames the bridge's hooks to probe's
    (``blocks.{i}.hook_resid_post``, ``blocks.{i}.mixer.hook_pattern`` ...) and exposes the config
    and readout parameters the methods need. An adapter given again is returned as it is.

    Example::

        from transformer_lens.model_bridge import TransformerBridge
        bridge = TransformerBridge.boot_transformers("gpt2")
        model = probe.from_transformer_lens(bridge)
        logits, cache = model.run_with_cache("The keys to the cabinet")
        cache["blocks.0.hook_resid_post"]             # [batch, pos, d_model]
        probe.methods.logit_lens(model, "The keys to the cabinet").to_frame()
    """
    if isinstance(bridge, BridgeAdapter):
        return bridge
    if not is_bridge(bridge):
        raise ConfigError(f"from_transformer_lens expects a TransformerLens 4 TransformerBridge (built with "
                          f"TransformerBridge.boot_transformers), got {type(bridge).__name__}.")
    return BridgeAdapter(bridge)


#: one lock per bridge, shared by every adapter over it (held weakly: the bridge is not kept alive)
_BRIDGE_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_BRIDGE_LOCKS_GUARD = threading.Lock()


def bridge_lock(bridge: Any) -> threading.RLock:
    """The re-entrant lock of ``bridge``: what :class:`probe.HookedLM`'s ``_run_lock`` is to a HookedLM.

    The adapter's hooks live on the bridge's shared ``HookPoint`` modules, so every adapter forward
    and every ``hooks()`` context (``run_with_hooks``, ``run_with_cache``, every method) holds it for
    its whole duration: runs from several threads, through one adapter or several over the same
    bridge, are serialised and each sees only its own hooks. Kept beside the bridge, not on it, so
    the user's bridge still deep-copies and pickles."""
    with _BRIDGE_LOCKS_GUARD:
        lock = _BRIDGE_LOCKS.get(bridge)
        if lock is None:
            lock = _BRIDGE_LOCKS[bridge] = threading.RLock()
        return lock


class _Renamed:
    """The bridge's hook object with ``name`` replaced by the probe name."""

    def __init__(self, hook, name: str):
        self._hook, self.name = hook, name

    def __getattr__(self, attr):
        return getattr(self._hook, attr)


class BridgeAdapter:
    """probe's model interface over a ``TransformerBridge``; see the module docstring."""

    def __init__(self, bridge: Any):
        from probe.tokenizers import get_tokenizer
        from probe.norm import LayerNorm, RMSNorm

        self.bridge = bridge
        self._run_lock = bridge_lock(bridge)
        c = bridge.cfg
        n = int(c.n_layers)
        names = set(bridge.hook_dict)
        needed = ["ln_final.hook_out", "ln_final.hook_scale", "unembed.hook_out", "hook_embed"]
        for i in range(n):
            needed += [f"blocks.{i}.{p}" for p in ("ln1.hook_out", "ln2.hook_out", "hook_attn_out", "hook_mlp_out")]
            needed += [block_hook(i, site) for site in ("resid_pre", "resid_mid", "resid_post")]
        missing = [x for x in needed if x not in names]
        norm = NORMS.get(getattr(c, "normalization_type", None))
        if missing or norm is None or getattr(c, "parallel_attn_mlp", False):
            why = (f"it lacks hooks {missing[:4]}" if missing else
                   "it computes attention and MLP in parallel" if norm is not None else
                   f"normalization_type={getattr(c, 'normalization_type', None)!r}")
            raise ConfigError(f"TransformerBridge of {getattr(c, 'architecture', '?')} is not supported: {why}. "
                              "Supported: decoder-only transformers with sequential ln1 -> attn -> ln2 -> mlp "
                              "blocks, LayerNorm or RMSNorm, a final norm and unembedding (GPT-2 is tested).")
        d, H = int(c.d_model), int(c.n_heads)
        self.cfg = ModelConfig(
            vocab_size=int(c.d_vocab), d_model=d, layout=["attn"] * n, n_heads=H, d_head=int(c.d_head),
            d_mlp=int(getattr(c, "d_mlp", None) or 4 * d), mlp=ACTS.get(getattr(c, "act_fn", "gelu"), "gelu"),
            norm=norm, norm_eps=float(getattr(c, "eps", 1e-5)),
            positional=POSITIONALS.get(getattr(c, "positional_embedding_type", ""), "none"),
            n_ctx=int(c.n_ctx), name=str(getattr(c, "model_name", "") or "transformer-lens bridge"),
            default_prepend_bos=bool(getattr(c, "default_prepend_bos", True)),
        )
        self.tokenizer = get_tokenizer(bridge.tokenizer) if getattr(bridge, "tokenizer", None) is not None \
            else get_tokenizer("byte")
        original = bridge.ln_final.original_component
        self.ln_final = (LayerNorm if norm == "layernorm" else RMSNorm)(d, float(getattr(original, "eps", self.cfg.norm_eps)))
        self.ln_final.w = original.weight  # the bridge's own parameters, shared
        if norm == "layernorm":
            self.ln_final.b = original.bias if original.bias is not None else torch.nn.Parameter(torch.zeros(d))
        self._map = self._hook_map(n)
        self.hook_dict = {ours: bridge.hook_dict[theirs] for ours, theirs in self._map.items()}

    @staticmethod
    def _hook_map(n: int) -> dict[str, str]:
        m = {"hook_embed": "hook_embed", "hook_pos_embed": "hook_pos_embed", "hook_logits": "unembed.hook_out",
             "ln_final.hook_scale": "ln_final.hook_scale", "ln_final.hook_normalized": "ln_final.hook_out"}
        for i in range(n):
            b = f"blocks.{i}."
            theirs = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
                      "mixer_in": "ln1.hook_out", "mixer_out": "hook_attn_out", ATTENTION_ALIAS: "hook_attn_out",
                      "mlp_in": "ln2.hook_out", "mlp_out": "hook_mlp_out"}
            m.update({block_hook(i, site): b + name for site, name in theirs.items()})
            m.update({mlp_hook(i, site): f"{b}mlp.hook_{site}" for site in ("pre", "post")})
            m.update({mixer_hook(i, site): f"{b}attn.hook_{site}" for site in ("q", "k", "v", "z", "pattern", "attn_scores")})
            for ln in ("ln1", "ln2"):  # the bridge's hook_normalized is before the affine part; ours after it
                m[f"{b}{ln}.hook_scale"], m[f"{b}{ln}.hook_normalized"] = f"{b}{ln}.hook_scale", f"{b}{ln}.hook_out"
        return m

    # -- parameters the methods read ---------------------------------------------------
    @property
    def W_E(self) -> Tensor:
        return self.bridge.W_E

    @property
    def unembed_matrix(self) -> Tensor:
        """``[d_model, vocab]``."""
        return self.bridge.W_U

    @property
    def W_U(self) -> Tensor:
        return self.bridge.W_U

    @property
    def b_U(self) -> Tensor:
        return self.bridge.b_U

    @property
    def device(self) -> torch.device:
        return self.bridge.W_U.device

    @property
    def dtype(self) -> torch.dtype:
        return self.bridge.W_U.dtype

    def state_dict(self, *args, **kwargs):
        return self.bridge.state_dict(*args, **kwargs)

    def parameters(self, *args, **kwargs):
        return self.bridge.parameters(*args, **kwargs)

    def eval(self) -> "BridgeAdapter":
        self.bridge.eval()
        return self

    def state_hook_names(self) -> list[str]:
        return []

    def check_hook_names(self, names) -> None:
        for name in names:
            if name not in self._map:
                raise unknown_hook(name, self._map)

    # -- tokens (the same conventions as HookedLM) ---------------------------------------
    to_tokens = HookedLM.to_tokens
    to_string = HookedLM.to_string
    to_str_tokens = HookedLM.to_str_tokens
    to_single_token = HookedLM.to_single_token
    token_str = HookedLM.token_str
    _untokenized = HookedLM._untokenized
    _decode = HookedLM._decode
    as_tokens = HookedLM.as_tokens
    _tokens_and_lengths = HookedLM._tokens_and_lengths
    _tokenize = HookedLM._tokenize
    _check_ids = HookedLM._check_ids
    loss = staticmethod(HookedLM.loss)
    sample = staticmethod(sample)

    # -- structure the methods read (probe.interface) -----------------------------------
    carries_state = False

    def layer_carries_state(self, layer: int) -> bool:
        """Always False: the bridge's layers are attention (its memory is the keys and values)."""
        return False

    def attention_output(self, layer: int) -> tuple[Tensor, Tensor | None]:
        """``(W_O [head, d_head, d_model], b_O [d_model] or None)`` of the bridge's attention layer ``layer``."""
        attn = self.bridge.blocks[layer].attn
        return attn.W_O, getattr(attn, "b_O", None)

    # -- running -----------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        """Run the bridge (see :meth:`_forward`), holding the bridge's lock (:func:`bridge_lock`)."""
        with self._run_lock:
            return self._forward(*args, **kwargs)

    def _forward(self, input, return_type: str | None = "logits", *, states=None, return_states: bool = False,
                 loss_per_token: bool = False, stop_at_layer: int | None = None, prepend_bos: bool | None = None):
        """Like :meth:`probe.HookedLM.forward` (no carried state: a bridge has no ``states``)."""
        if states is not None or return_states:
            raise InputError("A TransformerBridge adapter has no carried state; run the whole sequence at once.")
        if return_type not in ("logits", "loss", "both", None):
            raise InputError(f"return_type must be logits, loss, both or None, got {return_type!r}.")
        tokens = self.as_tokens(input, prepend_bos)
        if stop_at_layer is not None:
            found = {}
            name = residual_before(stop_at_layer)
            with self.hooks(fwd_hooks=[(name, lambda t, hook: found.__setitem__("x", t))]):
                self.bridge(tokens, return_type="logits")
            return found["x"]
        logits = self.bridge(tokens, return_type="logits")
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss(logits, tokens, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def _translate(self, hooks) -> list:
        out = []
        for name, fn in hooks or []:
            ours = [n for n in self._map if name(n)] if callable(name) else [name]
            for n in ours:
                if n not in self._map:
                    raise unknown_hook(n, self._map)
                out.append((self._map[n], self._wrap(fn, n)))
        return out

    @staticmethod
    def _wrap(fn, name: str):
        def hook(tensor, hook):
            return fn(tensor, hook=_Renamed(hook, name))
        return hook

    @contextlib.contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Temporarily attach hooks given with probe names (names or predicates on names), holding the
        bridge's lock (:func:`bridge_lock`) until they are removed."""
        with self._run_lock, self.bridge.hooks(fwd_hooks=self._translate(fwd_hooks), bwd_hooks=self._translate(bwd_hooks),
                               reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            yield self

    def run_with_hooks(self, *args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True,
                       clear_contexts: bool = False, **kwargs):
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter=None, state_positions=None, **kwargs):
        """``(output, ActivationCache)`` keyed by probe hook names (``state_positions`` is moot: no state)."""
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if isinstance(names_filter, (list, tuple)):
            self.check_hook_names(names_filter)
            wanted = list(names_filter)
        elif callable(names_filter):
            wanted = [n for n in self._map if names_filter(n)]
        elif names_filter is None:
            wanted = list(self._map)
        else:
            raise InputError("names_filter must be a hook name, a list of names or a function of the name.")
        cache: dict[str, Tensor] = {}

        def save(tensor, hook):
            cache[hook.name] = tensor.detach()

        with self.hooks(fwd_hooks=[(n, save) for n in wanted]):
            out = self(*args, **kwargs)
        return out, ActivationCache(cache, self)

    def generate(self, *args, **kwargs):
        """TransformerLens's own generation (``TransformerBridge.generate``), holding the bridge's lock."""
        with self._run_lock:
            return self.bridge.generate(*args, **kwargs)

    def __repr__(self) -> str:
        c = self.cfg
        return f"BridgeAdapter({getattr(self.bridge.cfg, 'architecture', '?')}, n_layers={c.n_layers}, d_model={c.d_model})"
