r"""HookedLM: ``embed -> blocks -> final norm -> unembed`` for every architecture.

A subclass of TransformerLens's ``HookedRootModule``: ``run_with_hooks``,
``run_with_cache``, ``hooks()`` and hook filters behave as TransformerLens users expect;
``config.layout`` names each block's mixer, so transformers, RNNs and hybrids are one class.

Model-level hooks: ``hook_embed`` ``[batch, pos, d_model]``, ``hook_pos_embed`` (learned
positions), ``ln_final.hook_scale`` / ``ln_final.hook_normalized``, ``hook_logits``
``[batch, pos, vocab]``; block and mixer hooks are listed in :mod:`probe.block` and in each
mixer's docstring. Shared blocks (``cfg.shared_layout``, Zamba2) hold their weights once at
``shared_blocks.{j}``; each layer that reads one has its hooks at ``blocks.{i}.shared.hook_*``
(:mod:`probe.shared_block`).

Example::

    cfg = probe.ModelConfig(d_model=64, layout=["qrnn", "qrnn", "attn", "ff"])
    model = probe.HookedLM(cfg)
    logits, cache = model.run_with_cache("def f(x):")
    cache["blocks.0.mixer.hook_state"]          # [1, pos, d_hidden]: the state after every token
    logits, st = model("def f(", return_states=True)
    more = model("x):", states=st)             # == the last positions of model("def f(x):")
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from probe.block import Block
from probe.cache import ActivationCache
from probe.checkpoint_format import save_model
from probe.config import ModelConfig
from probe.errors import ConfigError, InputError, unknown_hook
from probe.finite import check_finite
from probe.hooks import is_state_hook, tl_aliases
from probe.mixers.state_positions import states_at
from probe.norm import make_norm
from probe.sampling import check_sampling, sample
from probe.shared_block import make_shared_blocks
from probe.state import ModelState
from probe.tokenizers import get_tokenizer

RETURN_TYPES = ("logits", "loss", "both", None)


class HookedLM(HookedRootModule):
    """A hooked language model of any layout (see the module docstring for the hooks).

    Build one from a :class:`probe.ModelConfig` (or its fields as keyword arguments), or load
    one with :func:`probe.load`. Inputs are text, a list of texts or token ids ``[batch, pos]``;
    logits are ``[batch, pos, vocab]``.

    Threads: hooks live on the model's shared ``HookPoint`` modules, so every forward and every
    ``hooks()`` context (hence ``run_with_hooks``, ``run_with_cache`` and every method) holds the
    model's re-entrant lock ``_run_lock`` for its whole duration: runs from several threads are
    serialised and each sees only its own hooks. A hook may call the model again in its own
    thread; a hook that waits on another thread running the same model would deadlock. Permanent
    hooks (``add_hook(..., is_permanent=True)``) are model-wide by design.

    Example::

        model = probe.HookedLM(probe.ModelConfig(d_model=64, layout=["lstm", "attn"]))
        logits, cache = model.run_with_cache("def f(x):")
        cache["blocks.0.mixer.hook_state"]   # [1, pos, d_model]: the LSTM cell c after every token
        model.generate("def f(", max_new_tokens=10)
    """

    def __init__(self, cfg: ModelConfig | dict | None = None, tokenizer: Any = None, **kwargs):
        super().__init__()
        self._run_lock = threading.RLock()
        if cfg is None:
            cfg = ModelConfig(**kwargs)
        elif isinstance(cfg, dict):
            cfg = ModelConfig.from_dict({**cfg, **kwargs})
        elif kwargs:
            raise ConfigError("Pass either a ModelConfig or keyword arguments, not both.")
        self.cfg = cfg
        self.tokenizer = get_tokenizer(tokenizer if tokenizer is not None else cfg.tokenizer)
        self.W_E = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
            self.hook_pos_embed = HookPoint()
        self.shared_blocks = make_shared_blocks(cfg)  # weights used by several layers (cfg.shared_layout)
        self.blocks = nn.ModuleList(Block(cfg, i, self.shared_blocks) for i in range(cfg.n_layers))
        self.ln_final = make_norm(cfg)
        if not cfg.tie_embeddings:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.vocab_size))
        self.b_U = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.hook_logits = HookPoint()
        self.init_weights()
        self.setup()
        #: TransformerLens 4 names this model also answers to -> its own hook names (probe.hooks, TL_ALIASES)
        self.hook_aliases = tl_aliases(cfg.layout, self.hook_dict)

    # -- construction ----------------------------------------------------------------
    def init_weights(self) -> None:
        """Normal(0, init_std) for embeddings and linear weights, zero biases, then each mixer's own init."""
        std = self.cfg.init_std
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        module.bias.zero_()
            nn.init.normal_(self.W_E, std=std)
            if hasattr(self, "W_pos"):
                nn.init.normal_(self.W_pos, std=std)
            if not self.cfg.tie_embeddings:
                nn.init.normal_(self.W_U, std=std)
            for block in self.blocks:
                block.mixer.init_special()
                if block.mlp is not None and hasattr(block.mlp, "init_special"):
                    block.mlp.init_special()

    @property
    def unembed_matrix(self) -> Tensor:
        """``[d_model, vocab]``: ``W_U``, or ``W_E.T`` when embeddings are tied."""
        return self.W_E.T if self.cfg.tie_embeddings else self.W_U

    @property
    def device(self) -> torch.device:
        """The device of the weights (inputs are moved here)."""
        return self.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (states are created in it)."""
        return self.W_E.dtype

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {k: v for k, v in state.items() if k != "_run_lock"}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._run_lock = threading.RLock()

    # -- hooks -----------------------------------------------------------------------
    def resolve_hook_name(self, name):
        """``name`` itself, or the hook a TransformerLens 4 alias stands for (:data:`probe.hooks.TL_ALIASES`:
        ``blocks.0.mixer.hook_ssm_state`` -> ``blocks.0.mixer.hook_state`` on a Mamba layer)."""
        return self.hook_aliases.get(name, name) if isinstance(name, str) else name

    def alias_aware(self, predicate: Callable[[str], bool]) -> Callable[[str], bool]:
        """``predicate`` of a hook name, also true of a hook when it is true of one of the hook's
        TransformerLens 4 aliases (``lambda n: n.endswith("hook_ssm_state")`` picks Mamba's ``hook_state``)."""
        if not self.hook_aliases:
            return predicate
        aliases: dict[str, list[str]] = {}
        for alias, target in self.hook_aliases.items():
            aliases.setdefault(target, []).append(alias)
        return lambda name: bool(predicate(name)) or any(predicate(a) for a in aliases.get(name, ()))

    def _enable_hook(self, name, hook, dir):
        name = self.alias_aware(name) if callable(name) else self.resolve_hook_name(name)
        if isinstance(name, str) and name not in self.hook_dict:
            raise unknown_hook(name, self.hook_dict)
        return super()._enable_hook(name, checked_hook(hook) if dir == "fwd" else hook, dir)

    @contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """TransformerLens's ``hooks`` context, with every ``(name, hook)`` pair checked first (a
        malformed list or a hook that is not a function is named before anything is attached) and
        every forward hook's return value checked (``None`` or a tensor of the activation's shape
        and dtype). All hooks are removed on exit, also when the forward raises."""
        fwd, bwd = hook_pairs(fwd_hooks, "fwd_hooks"), hook_pairs(bwd_hooks, "bwd_hooks")
        with self._run_lock, super().hooks(fwd, bwd, reset_hooks_end, clear_contexts) as model:
            yield model

    def add_hook(self, name, hook, dir="fwd", is_permanent: bool = False, level=None, prepend: bool = False):
        """TransformerLens's ``add_hook`` with the name and the hook checked (see :meth:`hooks`)."""
        (name, hook), = hook_pairs([(name, hook)], "add_hook")
        name = self.resolve_hook_name(name)
        if isinstance(name, str) and name not in self.hook_dict:
            raise unknown_hook(name, self.hook_dict)
        return super().add_hook(name, checked_hook(hook) if dir == "fwd" else hook, dir=dir,
                                is_permanent=is_permanent, level=level, prepend=prepend)

    def check_hook_names(self, names: Sequence[str]) -> None:
        """Raise a clear error for any name that is not a hook point of this model."""
        for name in names:
            if self.resolve_hook_name(name) not in self.hook_dict:
                raise unknown_hook(name, self.hook_dict)

    def state_hook_names(self) -> list[str]:
        """Every ``hook_state*`` of the model: together, the whole recurrent memory."""
        return [n for n in self.hook_dict if is_state_hook(n)]

    # -- tokens ----------------------------------------------------------------------
    def to_tokens(self, text: str | list[str], prepend_bos: bool | None = None) -> Tensor:
        """Token ids ``[batch, pos]``; a list of texts is right-padded with the pad token (the
        model's own entry points keep track of the pads: see :meth:`forward`, :meth:`generate`)."""
        return self._tokenize(text, prepend_bos)[0]

    def _tokenize(self, text: str | list[str], prepend_bos: bool | None) -> tuple[Tensor, list[int]]:
        """``(tokens [batch, pos] right-padded, length of every text in tokens)``."""
        prepend_bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        if not isinstance(text, (str, list, tuple)) or not all(isinstance(t, str) for t in text):
            raise InputError(f"to_tokens takes a text or a list of texts, got {type(text).__name__}"
                             f"{' holding non-text items' if isinstance(text, (list, tuple)) else ''}; "
                             "token ids go to the model directly.")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InputError("to_tokens got an empty list of texts.")
        rows = []
        for t in texts:
            ids = self.tokenizer.encode(t)
            if prepend_bos and self.tokenizer.bos_token_id is not None:
                ids = [self.tokenizer.bos_token_id] + ids
            rows.append(ids)
        width = max(len(r) for r in rows)
        if width == 0:
            raise InputError("The text is empty: give at least one character (or prepend_bos=True).")
        pad = self.tokenizer.pad_token_id or 0
        tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=self.device)
        return tokens, [len(r) for r in rows]

    def to_string(self, tokens: Tensor | Sequence[int] | int) -> str | list[str]:
        """Decode one id, ids ``[pos]`` (a string) or ``[batch, pos]`` (a list of strings)."""
        if isinstance(tokens, int) or (isinstance(tokens, Tensor) and tokens.dim() == 0):
            return self._decode([int(tokens)])
        if isinstance(tokens, Tensor) and tokens.dim() == 2:
            return [self._decode(row.tolist()) for row in tokens]
        return self._decode(tokens.tolist() if isinstance(tokens, Tensor) else tokens)

    def _untokenized(self, i: int) -> bool:
        """True for an id of this model's vocabulary that its tokenizer lacks: a vocabulary padded past
        the tokenizer's (``vocab_size=260`` with the 257-id byte tokenizer; converted checkpoints often
        round their vocabulary up), whose extra ids the model can still predict."""
        known = getattr(self.tokenizer, "vocab_size", None)
        return known is not None and known <= i < self.cfg.vocab_size

    def token_str(self, token: int) -> str:
        """The text of one token id; an id beyond the tokenizer's vocabulary but inside the model's
        (see :meth:`_untokenized`) has no text and shows as ``"<|id|>"``."""
        i = int(token)
        return f"<|{i}|>" if self._untokenized(i) else self.tokenizer.token_str(i)

    def _decode(self, ids) -> str:
        """``tokenizer.decode(ids)``, with ids the tokenizer lacks but the model has shown as ``"<|id|>"``."""
        ids = [int(i) for i in ids]
        if not any(self._untokenized(i) for i in ids):
            return self.tokenizer.decode(ids)
        out, run = [], []
        for i in ids:
            if self._untokenized(i):
                if run:
                    out.append(self.tokenizer.decode(run))
                out.append(f"<|{i}|>")
                run = []
            else:
                run.append(i)
        if run:
            out.append(self.tokenizer.decode(run))
        return "".join(out)

    def to_str_tokens(self, input: str | Tensor, prepend_bos: bool | None = None) -> list[str]:
        """Display string of every token of one text or one sequence of ids (``[pos]`` or ``[1, pos]``)."""
        tokens = self.to_tokens(input, prepend_bos) if isinstance(input, str) else input
        if isinstance(tokens, Tensor):
            if tokens.dim() == 2:
                if tokens.shape[0] != 1:
                    raise InputError("to_str_tokens takes one sequence; got a batch of "
                                     f"{tokens.shape[0]}.")
                tokens = tokens[0]
            tokens = tokens.tolist()
        return [self.token_str(t) for t in tokens]

    def to_single_token(self, text: str) -> int:
        """The id of ``text``, which must be exactly one token (``"a"`` with the byte tokenizer)."""
        ids = self.tokenizer.encode(text)
        if len(ids) != 1:
            raise InputError(f"{text!r} is {len(ids)} tokens, not one.")
        return ids[0]

    def as_tokens(self, input, prepend_bos: bool | None = None) -> Tensor:
        """Token ids ``[batch, pos]`` on the model's device for text, a list of texts (right-padded) or ids
        ``[batch, pos]`` / ``[pos]``, checked against the vocabulary."""
        return self._tokens_and_lengths(input, prepend_bos)[0]


    # -- structure the methods read (probe.interface) -----------------------------------
    carries_state = True

    def layer_carries_state(self, layer: int) -> bool:
        """True when layer ``layer``'s mixer is a recurrence (its memory is its ``hook_state*``)."""
        return bool(self.blocks[layer].mixer.recurrent)

    def attention_output(self, layer: int) -> tuple[Tensor, Tensor | None]:
        """``(W_O [head, d_head, d_model], b_O [d_model] or None)`` of attention layer ``layer``: its
        output is ``sum_h z_h W_O[h] + b_O``."""
        mixer = self.blocks[layer].mixer
        return mixer.W_O, mixer.W_o.bias

    def _tokens_and_lengths(self, input, prepend_bos: bool | None) -> tuple[Tensor, Tensor | None]:
        """``(tokens [batch, pos], lengths [batch] or None)``: ``lengths`` counts the tokens of each text
        when ``input`` is a list of texts of different lengths (the rest of its row is padding), else
        ``None`` (every row is all tokens; token ids are taken as given)."""
        if isinstance(input, (str, list)) and (isinstance(input, str) or all(isinstance(t, str) for t in input)):
            tokens, lengths = self._tokenize(input, prepend_bos)
            ragged = min(lengths) != max(lengths)
            lengths = torch.tensor(lengths, device=self.device) if ragged else None
            return self._check_ids(tokens, from_text=True), lengths
        if not isinstance(input, Tensor):
            raise InputError(f"Model input must be text, a list of texts or a token tensor, got {type(input).__name__}.")
        tokens = input
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2:
            raise InputError(f"Tokens must have shape [batch, pos]; got {tuple(input.shape)}.")
        if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
            raise InputError(f"Tokens must be integer ids, got dtype {tokens.dtype}; use model.to_tokens(text) "
                             "or tokens.long().")
        if tokens.shape[1] == 0 or tokens.shape[0] == 0:
            raise InputError(f"Empty input: tokens have shape {tuple(tokens.shape)}; give at least one token.")
        return self._check_ids(tokens).to(self.device, torch.long), None

    def _check_ids(self, tokens: Tensor, from_text: bool = False) -> Tensor:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.vocab_size:
            bad = lo if lo < 0 else hi
            why = (f"; the text gives it, so the tokenizer {self.tokenizer!r} has more ids than this model's "
                   "embedding" if from_text else "")
            raise InputError(f"Token id {bad} is out of range for vocab_size={self.cfg.vocab_size} "
                             f"(valid ids 0..{self.cfg.vocab_size - 1}){why}.")
        return tokens

    # -- forward ---------------------------------------------------------------------
    def initial_state(self, batch: int) -> ModelState:
        """The memory before any token (zeros, empty KV caches) for ``batch`` sequences."""
        return ModelState([b.initial_state(batch, self.device, self.dtype) for b in self.blocks], 0)

    def forward(self, *args, **kwargs):
        """Run the model (see :meth:`_forward` for the arguments), holding the model's lock (class docstring)."""
        with self._run_lock:
            return self._forward(*args, **kwargs)

    def _forward(
        self,
        input: str | list[str] | Tensor,
        return_type: str | None = "logits",
        *,
        states: ModelState | None = None,
        return_states: bool = False,
        loss_per_token: bool = False,
        stop_at_layer: int | None = None,
        prepend_bos: bool | None = None,
    ):
        """Run the model.

        Args:
            input: text, list of texts, or token ids ``[batch, pos]`` (``[pos]`` is accepted).
            return_type: ``"logits"`` ``[batch, pos, vocab]``, ``"loss"`` (mean next-token
                cross-entropy, or per token ``[batch, pos-1]`` with ``loss_per_token``),
                ``"both"`` or ``None``. For a list of texts of different lengths (right-padded)
                the loss counts each text's own tokens only: the mean is over every real
                prediction and a per-token loss is NaN where it would predict a pad. The logits
                of a padded row past its text are about the pads.
            states: a :class:`ModelState` from a previous call: continue from it.
            return_states: also return the state after the last position (``(out, states)``);
                refused for texts of different lengths (a shorter text's state would have read
                the pads).
            stop_at_layer: return the residual stream before block ``stop_at_layer`` (``0 .. n_layers``;
                negative counts from the end, as in TransformerLens: ``-1`` runs all but the last block).
        """
        if return_type not in RETURN_TYPES:
            raise InputError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}.")
        if prepend_bos is None and states is not None:
            prepend_bos = False  # a continuation never starts with BOS
        if stop_at_layer is not None:
            stop_at_layer = self._check_stop(stop_at_layer)
        tokens, lengths = self._tokens_and_lengths(input, prepend_bos)
        if lengths is not None and return_states:
            raise InputError(f"return_states=True with texts of different lengths ({int(lengths.min())}.."
                             f"{int(lengths.max())} tokens): the shorter texts are right-padded, so their state "
                             "would have read the pads. Run texts of equal length together, or one at a time.")
        batch, T = tokens.shape
        offset = 0
        if states is not None:
            if not isinstance(states, ModelState) or len(states.layers) != self.cfg.n_layers:
                raise InputError("states must be the ModelState returned by this model with return_states=True.")
            if states.batch_size not in (0, batch):
                raise InputError(f"states were computed for batch {states.batch_size}, input has batch {batch}.")
            offset = states.position
        self._check_context(offset, T, states)
        x = self.W_E[tokens]
        if self.cfg.embed_scale is not None:
            x = x * self.cfg.embed_scale
        x = self.hook_embed(x)
        if self.cfg.positional == "learned":
            x = x + self.hook_pos_embed(self.W_pos[offset : offset + T].unsqueeze(0).expand(batch, -1, -1))
        # shared blocks read the embedding beside the residual stream: a copy, so that an in-place edit
        # of blocks.0.hook_resid_pre (the same tensor) does not also edit what they read
        new_layers, embed = [], (x.clone() if len(self.shared_blocks) else None)
        cross: dict[str, Tensor] = {}  # per-position tensors layers hand to later layers (Mixer.cross_layer)
        for i, block in enumerate(self.blocks):
            if stop_at_layer is not None and i >= stop_at_layer:
                return x
            x, layer_state = block(x, states.layers[i] if states is not None else None, embed, cross)
            new_layers.append(layer_state)
        if stop_at_layer is not None and stop_at_layer >= self.cfg.n_layers:
            return x
        logits = self.ln_final(x) @ self.unembed_matrix + self.b_U
        if self.cfg.logit_soft_cap is not None:
            logits = self.cfg.logit_soft_cap * torch.tanh(logits / self.cfg.logit_soft_cap)
        logits = self.hook_logits(logits)
        if return_type == "logits":
            out = logits
        elif return_type is None:
            out = None
        else:
            loss = self.loss(logits, tokens, per_token=loss_per_token, lengths=lengths)
            out = loss if return_type == "loss" else (logits, loss)
        if return_states:
            return out, ModelState(new_layers, offset + T)
        return out

    def _check_stop(self, stop: int) -> int:
        n = self.cfg.n_layers
        if isinstance(stop, bool) or not isinstance(stop, int):
            raise InputError(f"stop_at_layer must be an integer or None, got {type(stop).__name__}.")
        if not -n <= stop <= n:
            raise InputError(f"stop_at_layer={stop} is out of range for a model of {n} layers "
                             f"(valid 0..{n}, or -{n}..-1 from the end).")
        return stop % n if stop < 0 else stop

    def _check_context(self, offset: int, T: int, states: ModelState | None) -> None:
        """Learned positions need ``offset + T <= n_ctx``; attention needs its KV cache plus the
        new tokens to fit in ``n_ctx`` (a cache trimmed with ``ModelState.keep_last`` is a
        sliding window). Recurrent-only models have no limit."""
        limit = self.cfg.n_ctx
        if self.cfg.positional == "learned" and offset + T > limit:
            raise InputError(f"Position {offset + T} is beyond this model's learned positions (n_ctx={limit}). "
                             "Truncate the text; learned positions cannot slide.")
        if self.cfg.has_attention:
            cached = states.kv_length() if states is not None else 0
            if cached + T > limit:
                raise InputError(f"Input of {cached + T} tokens is longer than this model's context n_ctx={limit} "
                                 "(it has attention). Truncate the text, run a recurrent model in segments, or use "
                                 "probe.long_context with a sliding window.")

    @staticmethod
    def loss(logits: Tensor, tokens: Tensor, per_token: bool = False, lengths: Tensor | None = None) -> Tensor:
        """Next-token cross-entropy of ``logits [b, pos, vocab]`` on ``tokens [b, pos]``.

        ``lengths [b]``: row ``i`` holds ``lengths[i]`` real tokens, then padding. Only predictions
        of real tokens (position ``t`` with ``t + 1 < lengths[i]``) count: the mean is over those,
        and the per-token loss ``[b, pos-1]`` is NaN elsewhere."""
        if tokens.shape[1] < 2:
            raise InputError("The loss needs at least two tokens (it predicts each next token).")
        lp = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")
        if lengths is None:
            return lp if per_token else lp.mean()
        real = torch.arange(lp.shape[1], device=lp.device)[None] < (lengths.to(lp.device) - 1)[:, None]
        return lp.masked_fill(~real, float("nan")) if per_token else lp[real].mean()

    def run_with_cache(self, *model_args, names_filter=None, state_positions=None, **kwargs):
        """Run and cache activations: ``(output, ActivationCache)``.

        ``names_filter``: a hook name, list of names (checked: unknown names raise) or a
        predicate (of probe's names and their TransformerLens 4 aliases). ``state_positions``: the
        states after these positions only (an int, a list, a 1-D integer tensor or a slice; negative
        ints count from the end), ``[batch, P, ...]`` per ``hook_state*`` in the order asked. Where
        every state would take more than ``WHOLE_RUN_BYTES``, each recurrent mixer runs its plain
        forward (a fused kernel on a GPU) in the pieces the positions cut and never holds them all
        (:mod:`probe.mixers.state_positions`); the states equal the full capture's to rounding.
        """
        if isinstance(names_filter, str):
            self.check_hook_names([names_filter])
            names_filter = self.resolve_hook_name(names_filter)
        elif isinstance(names_filter, (list, tuple)):
            if not all(isinstance(n, str) for n in names_filter):
                raise InputError("names_filter lists hook names (strings); got "
                                 f"{[type(n).__name__ for n in names_filter if not isinstance(n, str)][0]} in it.")
            self.check_hook_names(list(names_filter))
            names_filter = [self.resolve_hook_name(n) for n in names_filter]
        elif callable(names_filter):
            names_filter = self.alias_aware(names_filter)
        elif names_filter is not None:
            raise InputError(f"names_filter must be a hook name, a list of names or a function of the name; "
                             f"got {type(names_filter).__name__}.")
        if state_positions is None:
            out, cache = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
            return out, ActivationCache(cache, self)
        return self._run_with_state_positions(model_args, names_filter, state_positions, kwargs)

    def _run_with_state_positions(self, model_args, names_filter, positions, kwargs):
        """Every state hook fires with the states after ``positions`` only (:mod:`probe.mixers.state_positions`:
        each recurrent mixer runs its plain forward in the pieces the positions cut)."""
        filt = _as_predicate(names_filter)
        cache: dict[str, Tensor] = {}

        def save(tensor, hook):
            cache[hook.name] = tensor.detach()

        hooks = [(name, save) for name in self.hook_dict if filt(name)]
        with self.hooks(fwd_hooks=hooks), states_at(positions):
            out = self(*model_args, **kwargs)
        return out, ActivationCache(cache, self)

    # -- generation ------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input: str | Tensor,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = False,
        return_type: str = "auto",
    ) -> str | list[str] | Tensor:
        """Sample ``max_new_tokens`` tokens, carrying the state (O(1) per token for recurrent
        mixers, the KV cache for attention). ``temperature=0`` is greedy. Returns text when
        the input is text (``return_type="auto"``) or ``"str"``, tokens ``[batch, pos + new]``
        for ``"tokens"``.

        A list of texts of different lengths runs as one batch per length (each prompt continues
        from its own last token, never from padding), every batch sampled from ``seed``; its
        tokens would be ragged, so ``return_type="tokens"`` is refused for it."""
        check_sampling(max_new_tokens, temperature, top_k, return_type)
        tokens, lengths = self._tokens_and_lengths(input, None)
        if lengths is not None:
            return self._generate_by_length(input, lengths.tolist(), return_type, max_new_tokens=max_new_tokens,
                                            temperature=temperature, top_k=top_k, seed=seed, stop_at_eos=stop_at_eos)
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        logits, states = self(tokens, return_states=True)
        out = [tokens]
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            check_finite(logits[:, -1], f"the logits at generation step {step}", self)
            nxt = self.sample(logits[:, -1], temperature, top_k, gen)
            if stop_at_eos and self.tokenizer.eos_token_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, self.tokenizer.pad_token_id), nxt)
                finished |= nxt == self.tokenizer.eos_token_id
            out.append(nxt[:, None])
            if stop_at_eos and bool(finished.all()):
                break
            logits, states = self(nxt[:, None], states=states, return_states=True)
        result = torch.cat(out, dim=1)
        as_text = return_type == "str" or (return_type == "auto" and isinstance(input, (str, list)))
        if not as_text:
            return result
        texts = self.to_string(result)
        return texts[0] if isinstance(input, str) else texts

    def _generate_by_length(self, texts: list[str], lengths: list[int], return_type: str, **kwargs) -> list[str]:
        """:meth:`generate` for texts of different lengths: one batch per length, results in input order."""
        if return_type == "tokens":
            raise InputError(f"generate(return_type='tokens') with texts of different lengths ({min(lengths)}.."
                             f"{max(lengths)} tokens) would return ragged rows; use return_type='str', or give "
                             "texts of equal length (or one at a time).")
        out: list[str] = [""] * len(texts)
        for n in sorted(set(lengths)):
            rows = [i for i, m in enumerate(lengths) if m == n]
            for i, text in zip(rows, self.generate([texts[i] for i in rows], return_type="str", **kwargs)):
                out[i] = text
        return out

    sample = staticmethod(sample)

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str | Path, dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to directory ``path`` (atomically; other files
        there are kept, see :mod:`probe.checkpoint_format`)."""
        return save_model(self, path, dtype=dtype, overwrite=overwrite)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedLM(layout={c.layout}, d_model={c.d_model}, vocab={c.vocab_size}, "
                f"params={sum(p.numel() for p in self.parameters()):,})")


def _as_predicate(names_filter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if isinstance(names_filter, list):
        allowed = set(names_filter)
        return lambda name: name in allowed
    if callable(names_filter):
        return names_filter
    raise InputError("names_filter must be a hook name, a list of names or a function of the name.")


def hook_pairs(hooks, what: str) -> list[tuple]:
    """``hooks`` as a list of ``(name or predicate, function)`` pairs, or an :class:`InputError`
    naming the malformed entry."""
    if isinstance(hooks, tuple) and len(hooks) == 2 and isinstance(hooks[0], str):
        raise InputError(f"{what} is a list of (name, hook) pairs; got one pair {hooks[0]!r}: wrap it in a list.")
    out = []
    for i, entry in enumerate(hooks):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise InputError(f"{what}[{i}] must be a (hook name, hook function) pair, got {type(entry).__name__} "
                             f"{str(entry)[:60]!r}.")
        name, fn = entry
        if not isinstance(name, str) and not callable(name):
            raise InputError(f"{what}[{i}]: the hook point must be a name or a predicate on names, "
                             f"got {type(name).__name__}.")
        if not callable(fn):
            raise InputError(f"{what}[{i}]: the hook for {name!r} is a {type(fn).__name__}, not a function "
                             "hook(tensor, hook) -> tensor or None.")
        check_hook_signature(fn, f"{what}[{i}]: the hook for {name!r}")
        out.append((name, fn))
    return out


def check_hook_signature(fn: Callable, what: str) -> None:
    """An :class:`InputError` unless ``fn`` can be called as ``fn(tensor, hook=hook)`` (the way
    hooks are called); a ``lambda t: t`` would otherwise fail mid-forward with a TypeError."""
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    try:
        signature.bind(None, hook=None)
    except TypeError:
        raise InputError(f"{what} has the signature {getattr(fn, '__name__', type(fn).__name__)}{signature}; hooks "
                         "are called as hook(tensor, hook=hook): write `def fn(tensor, hook): ...` "
                         "(or `lambda t, hook: ...`).") from None


def checked_hook(fn: Callable) -> Callable:
    """``fn`` with its return value checked: ``None``, or a tensor of the activation's shape and dtype
    (anything else would surface later as a deep torch error, or silently change the output's shape),
    and with a hook that runs its own model back into itself refused (an endless recursion)."""
    running: set[int] = set()  # threads inside this hook right now

    def wrapped(tensor, hook):
        me = threading.get_ident()
        if me in running:
            raise InputError(f"The hook on {hook.name!r} ran the model it hooks (a forward, run_with_hooks or "
                             "run_with_cache inside the hook), which reached this hook again: that recursion "
                             "never ends. Run the second pass before or after the hooked run, or on a copy "
                             "(copy.deepcopy(model)).")
        running.add(me)
        try:
            out = fn(tensor, hook=hook)
        finally:
            running.discard(me)
        if out is None or out is tensor or not isinstance(tensor, Tensor):
            return out
        if not isinstance(out, Tensor):
            raise InputError(f"The hook on {hook.name!r} returned a {type(out).__name__}; a hook returns None or "
                             f"a tensor like its input ({tuple(tensor.shape)}, {tensor.dtype}).")
        if out.shape != tensor.shape or out.dtype != tensor.dtype:
            raise InputError(f"The hook on {hook.name!r} returned shape {tuple(out.shape)} and dtype {out.dtype} "
                             f"for an activation of shape {tuple(tensor.shape)} and dtype {tensor.dtype}; "
                             "hooks must keep the shape and dtype.")
        return out

    wrapped.__name__ = getattr(fn, "__name__", type(fn).__name__)
    wrapped.__wrapped__ = fn
    return wrapped
