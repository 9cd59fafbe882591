"""Fuzzing the public entry points: every case has one expected outcome, a clear error or a working call.

The table :data:`CASES` holds at least 700 cases (the option rows follow the mixers' declarations;
the last test prints the exact count), one row each, of two kinds (``Case.expect``).
A "clear error" case (:func:`C`) is ``(category, name, call, error type, regex)``: the call must
raise exactly that error type (never a bare torch ``RuntimeError``, a ``TypeError`` or an
``IndexError`` from deep inside a forward pass) with a message matching the regex, which names
what is wrong. A "works" case (:func:`W`) is ``(category, name, call, check)``: the call must
return and ``check(result, env)`` must hold; these sit next to the invalid values, so a check
cannot pass by refusing everything.

The last test prints the table's counts per category (cases, clear errors, works, passed). The
categories:

* ``config``: ``ModelConfig`` / ``HookedLM`` construction (names, widths, types, mixer options).
* ``options``: every option of every mixer and MLP kind (generated from its ``OPTIONS`` declaration): wrong
  types, out of range, NaN / inf where numeric (a clear error naming mixer, option and range), and
  a valid non-default value of each (works: a finite forward pass).
* ``fields``: every ``ModelConfig`` field: a value of the wrong type (``"2"`` layers, an 8.5-wide
  MLP, ``"false"`` as a boolean) and a valid non-default value (works, with its effect checked).
* ``states``: carried states of an integer dtype or on another device.
* ``tokens``: forward inputs: wrong dtypes and shapes, out-of-range ids, empty strings and tensors,
  carried states that do not fit, ``stop_at_layer``, context limits.
* ``hooks``: unknown hook names, malformed hook lists, hooks that return the wrong thing,
  ``run_with_cache`` filters, cache keys.
* ``generate``: sampling arguments and non-finite logits while generating.
* ``nonfinite``: NaN / inf in weights (named) and in activations written by a hook, seen by methods.
* ``checkpoint``: malformed ``config.json``, truncated or tampered ``model.safetensors``, bad
  ``probe.load`` arguments.
* ``zoo``: zoo names and sources that do not exist.
* ``tokenizer``: tokenizer and token/string conversions.
* ``lens``, ``attribution``, ``memory``, ``patching``, ``probing``, ``steering``: every method in
  ``probe.methods`` with bad layers, positions, targets, baselines, metrics, sites, vectors, data,
  and probes with one class.
* ``cli``: the ``probe`` command (exit code 2 and one line on stderr, no traceback).

A plain forward pass is left to propagate NaN (as torch does; mixed-precision training needs to see
an overflowed loss): everything that reads the numbers (generation, every method) raises
:class:`probe.NonFiniteError` instead, naming the non-finite weights when there are any.
Cases that share a model use tiny models built once per module; the whole table runs in seconds.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import probe
from probe import CheckpointError, ConfigError, InputError, NonFiniteError, ProbeError, UnknownHookError
from probe.tokenizers import get_tokenizer
from probe.config import option_owners
from probe.mixers import MLP_KINDS
from probe.mixers.options import Choice, Flag, Int, Real
from probe.methods import (
    TunedLens, activation_patching, attribution_patching, collect_activations, compare_lenses,
    direct_logit_attribution, fit_probes, gradient_influence, gradient_x_input, implicit_attention,
    integrated_gradients, logit_lens, memory_map, patching_agreement, state_sizes, steer, steering_vector,
)
from conftest import make_model, tokens


class CLIExit(Exception):
    """The ``probe`` command exited non-zero; ``str()`` is what it printed on stderr."""


def cli(*argv: str) -> None:
    """Run ``probe ARGV`` in-process; raise :class:`CLIExit` with its stderr when it fails."""
    from probe.cli import main

    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    text = err.getvalue()
    assert "Traceback" not in text, text
    if code:
        assert code == 2, (code, text)
        raise CLIExit(text)


class Env:
    """Tiny models, data and checkpoints shared by the cases (built on first use)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.t, self.c = tokens(1, 6), tokens(1, 6, seed=2)
        self._n = 0

    @cached_property
    def m(self):
        return make_model("qrnn")

    @cached_property
    def h(self):
        return make_model("hybrid_qrnn_attn_ff")

    @cached_property
    def attn16(self):
        return make_model("attn", n_ctx=16)

    @cached_property
    def nan(self):
        """A QRNN whose first conv weight holds NaN."""
        model = make_model("qrnn")
        with torch.no_grad():
            model.blocks[0].mixer.W_conv[0, 0, 0] = float("nan")
        return model

    @cached_property
    def one_class(self):
        """Activations whose label ``y`` has one class only."""
        seqs = [tokens(1, 8)[0].tolist(), tokens(1, 8, seed=3)[0].tolist()]
        return collect_activations(self.m, seqs, {"y": [1, 1], "z": [0.5, 0.5]}, sites=["resid_post"], layers=[0])

    @cached_property
    def base_checkpoint(self) -> Path:
        return self.m.save(self.tmp / "base")

    def checkpoint(self, edit: Callable[[Path], None]) -> Path:
        """A fresh copy of a saved QRNN checkpoint with ``edit(path)`` applied."""
        self._n += 1
        path = self.tmp / f"ck{self._n}"
        shutil.copytree(self.base_checkpoint, path)
        edit(path)
        return path

    def load(self, edit: Callable[[Path], None], **kwargs):
        return probe.load(self.checkpoint(edit), **kwargs)


# -- checkpoint editors ------------------------------------------------------------------
def _config(change: Callable[[dict], None]):
    def edit(path: Path):
        payload = json.loads((path / "config.json").read_text())
        change(payload)
        (path / "config.json").write_text(json.dumps(payload))
    return edit


def _set_field(key, value):
    return _config(lambda p: p["config"].__setitem__(key, value))


def _write_config(text: bytes):
    return lambda path: (path / "config.json").write_bytes(text)


def _header(change: Callable[[dict], None]):
    """Rewrite the safetensors JSON header (the tensor bytes stay as they are)."""
    def edit(path: Path):
        data = (path / "model.safetensors").read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + n])
        change(header)
        raw = json.dumps(header).encode()
        (path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return edit


def _tensors(change: Callable[[dict], None]):
    def edit(path: Path):
        tensors = load_file(str(path / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(path / "model.safetensors"))
    return edit


def _bytes(change: Callable[[bytes], bytes]):
    return lambda path: (path / "model.safetensors").write_bytes(change((path / "model.safetensors").read_bytes()))


def _nan_bytes(data: bytes) -> bytes:
    """A float32 NaN written over the first element of W_E (the header stays valid)."""
    n = struct.unpack("<Q", data[:8])[0]
    start = 8 + n + json.loads(data[8 : 8 + n])["W_E"]["data_offsets"][0]
    return data[:start] + struct.pack("<f", float("nan")) + data[start + 4 :]


def _weights_dir(path: Path):
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").mkdir()


# -- hooks that write non-finite values ------------------------------------------------------
def _nan_hook(t, hook):
    return t * float("nan")


def _inf_hook(t, hook):
    return t + float("inf")


@contextlib.contextmanager
def _hooked(model, name, fn):
    with model.hooks(fwd_hooks=[(name, fn)]):
        yield model


def _under_hook(model, name, fn, call):
    with _hooked(model, name, fn):
        return call(model)


CLEAR_ERROR, WORKS = "clear error", "works"


@dataclass(frozen=True)
class Case:
    """One row: ``call(env)`` must raise ``error`` matching ``match`` (``expect == "clear error"``),
    or return a result for which ``check(result, env)`` holds (``expect == "works"``)."""

    category: str
    name: str
    call: Callable[[Env], object]
    error: type[BaseException] | None = None
    match: str = ""
    check: Callable[[object, Env], bool] | None = None

    @property
    def expect(self) -> str:
        return WORKS if self.error is None else CLEAR_ERROR


def C(category, name, call, error, match) -> Case:
    """A case whose expected outcome is a clear error of type ``error`` matching ``match``."""
    return Case(category, name, call, error, match)


def W(category, name, call, check) -> Case:
    """A case whose expected outcome is a working call with ``check(result, env)`` true."""
    return Case(category, name, call, check=check)


def cfg(**kw):
    return lambda e: probe.HookedLM(probe.ModelConfig(**kw))


E, I, U, K, N, P, X = ConfigError, InputError, UnknownHookError, CheckpointError, NonFiniteError, ProbeError, CLIExit
R = "resid_pre"

CASES: list[Case] = [
    # -- config -------------------------------------------------------------------------------
    C("config", "unknown mixer", cfg(layout=["qrnn", "lstn"]), E, "Unknown mixer 'lstn'.*Did you mean 'lstm'"),
    C("config", "layout as a string", cfg(layout="qrnn"), E, "layout must be a list"),
    C("config", "empty layout", cfg(layout=[]), E, "layout is empty"),
    C("config", "layout entry not a name", cfg(layout=["qrnn", 3]), E, "layout lists mixer names.*got 3 \\(int\\)"),
    C("config", "layout entry None", cfg(layout=[None]), E, "layout lists mixer names.*None"),
    C("config", "d_model not divisible", cfg(d_model=30, n_heads=4), E, "d_model=30 is not divisible by n_heads=4"),
    C("config", "n_layers disagrees", cfg(layout=["attn"], n_layers=3), E, "n_layers=3 but layout has 1"),
    C("config", "unknown norm", cfg(norm="batchnorm"), E, "norm='batchnorm' is not one of"),
    C("config", "unknown positional", cfg(positional="alibi"), E, "positional='alibi' is not one of rope"),
    C("config", "unknown mlp", cfg(mlp="gelo"), E, "mlp='gelo' is not one of.*Did you mean 'gelu'"),
    C("config", "unknown mixer option", cfg(mixer_options={"qrnn": {"widow": 2}}, layout=["qrnn"]), E,
      "Unknown option 'widow'.*'window'"),
    C("config", "options for unknown mixer", cfg(mixer_options={"qrnm": {}}), E, "unknown mixer 'qrnm'"),
    C("config", "mixer_options not a dict", cfg(mixer_options=["qrnn"]), E, "mixer_options must be a dict"),
    C("config", "mixer options not a dict", cfg(layout=["qrnn"], mixer_options={"qrnn": 3}), E,
      "mixer_options\\['qrnn'\\] must be a dict"),
    C("config", "qrnn window 0", cfg(layout=["qrnn"], mixer_options={"qrnn": {"window": 0}}), E,
      "qrnn option window must be an integer >= 1, got 0"),
    C("config", "qrnn window float", cfg(layout=["qrnn"], mixer_options={"qrnn": {"window": 2.5}}), E,
      "qrnn option window must be an integer"),
    C("config", "lmu order 0", cfg(layout=["lmu"], mixer_options={"lmu": {"order": 0}}), E, "lmu option order"),
    C("config", "vocab_size 0", cfg(vocab_size=0), E, "vocab_size must be a positive integer"),
    C("config", "vocab_size bool", cfg(vocab_size=True), E, "vocab_size must be a positive integer, got True"),
    C("config", "d_model float", cfg(d_model=32.0), E, "d_model must be a positive integer, got 32.0"),
    C("config", "n_heads 0", cfg(n_heads=0), E, "n_heads must be a positive integer"),
    C("config", "n_ctx 0", cfg(n_ctx=0), E, "n_ctx must be a positive integer"),
    C("config", "negative d_mlp", cfg(d_mlp=-1), E, "d_mlp must be >= 0"),
    C("config", "unknown mlp_layout kind", cfg(mlp_layout=["gelu", "gelo"]), E, "Unknown MLP kind 'gelo'"),
    C("config", "mlp_layout length", cfg(layout=["qrnn"], mlp_layout=["gelu", "gelu"]), E,
      "mlp_layout has 2 entries for 1 layers"),
    C("config", "norm_eps 0", cfg(norm_eps=0), E, "norm_eps must be a finite number > 0"),
    C("config", "norm_eps string", cfg(norm_eps="small"), E, "norm_eps must be a finite number > 0, got 'small'"),
    C("config", "rope_base negative", cfg(rope_base=-1.0), E, "rope_base must be a finite number > 0"),
    C("config", "init_std NaN", cfg(init_std=float("nan")), E, "init_std must be a finite number >= 0, got nan"),
    C("config", "logit_soft_cap negative", cfg(logit_soft_cap=-1.0), E, "logit_soft_cap must be a finite number > 0"),
    C("config", "tokenizer not a name", cfg(tokenizer=5), E, "tokenizer must be a string, got 5 \\(int\\)"),
    C("config", "config and kwargs", lambda e: probe.HookedLM(probe.ModelConfig(), d_model=8), E,
      "either a ModelConfig or keyword arguments"),
    C("config", "from_dict of a list", lambda e: probe.ModelConfig.from_dict([1]), E, "must be a JSON object"),
    C("config", "from_dict unknown field", lambda e: probe.ModelConfig.from_dict({"d_modl": 8}), E,
      "Unknown config field 'd_modl'.*Did you mean 'd_model'"),
    C("config", "from_dict string width", lambda e: probe.ModelConfig.from_dict({"d_model": "32"}), E,
      "d_model must be a positive integer, got '32'"),
    # -- tokens -------------------------------------------------------------------------------
    C("tokens", "id above vocab", lambda e: e.m(torch.tensor([[1, 300]])), I,
      "Token id 300 is out of range for vocab_size=257"),
    C("tokens", "negative id", lambda e: e.m(torch.tensor([[1, -1]])), I, "Token id -1 is out of range"),
    C("tokens", "float tokens", lambda e: e.m(torch.rand(1, 4)), I, "integer ids, got dtype torch.float32"),
    C("tokens", "bool tokens",
      lambda e: e.m(torch.ones(1, 3, dtype=torch.bool)), I, "integer ids, got dtype torch.bool"),
    C("tokens", "complex tokens", lambda e: e.m(torch.ones(1, 3, dtype=torch.complex64)), I,
      "integer ids, got dtype torch.complex64"),
    C("tokens", "no positions", lambda e: e.m(torch.zeros(1, 0, dtype=torch.long)), I, "Empty input.*\\(1, 0\\)"),
    C("tokens", "no sequences", lambda e: e.m(torch.zeros(0, 3, dtype=torch.long)), I, "Empty input.*\\(0, 3\\)"),
    C("tokens", "empty text", lambda e: e.m("", prepend_bos=False), I, "The text is empty"),
    C("tokens", "empty texts in a batch", lambda e: e.m(["", ""], prepend_bos=False), I, "The text is empty"),
    C("tokens", "empty list", lambda e: e.m([]), I, "empty list of texts"),
    C("tokens", "3-d tokens", lambda e: e.m(torch.zeros(1, 2, 3, dtype=torch.long)), I, "shape \\[batch, pos\\]"),
    C("tokens", "0-d tokens", lambda e: e.m(torch.tensor(3)), I, "shape \\[batch, pos\\]; got \\(\\)"),
    C("tokens", "a dict", lambda e: e.m({"a": 1}), I, "text, a list of texts or a token tensor, got dict"),
    C("tokens", "a numpy array", lambda e: e.m(np.array([[1, 2]])), I, "got ndarray"),
    C("tokens", "a list of ints", lambda e: e.m([1, 2, 3]), I, "got list"),
    C("tokens", "unknown return_type",
      lambda e: e.m(tokens(1, 3), return_type="logit"), I, "return_type must be one of"),
    C("tokens", "loss of one token", lambda e: e.m(tokens(1, 1), return_type="loss"), I, "at least two tokens"),
    C("tokens", "stop_at_layer too large", lambda e: e.m(e.t, stop_at_layer=7), I,
      "stop_at_layer=7 is out of range for a model of 2 layers"),
    C("tokens", "stop_at_layer too negative",
      lambda e: e.m(e.t, stop_at_layer=-5), I, "stop_at_layer=-5 is out of range"),
    C("tokens", "stop_at_layer float", lambda e: e.m(e.t, stop_at_layer=1.0), I, "stop_at_layer must be an integer"),
    C("tokens", "text beyond a small vocab", lambda e: make_model("qrnn", vocab_size=10)("hello", prepend_bos=False), I,
      "Token id 111 is out of range for vocab_size=10.*the text gives it"),
    C("tokens", "longer than attention context", lambda e: e.attn16(tokens(1, 17)), I,
      "17 tokens is longer than this model's context n_ctx=16"),
    C("tokens", "beyond learned positions", lambda e: make_model("qrnn", positional="learned", n_ctx=8)(tokens(1, 9)),
      I, "Position 9 is beyond this model's learned positions \\(n_ctx=8\\)"),
    C("tokens", "states of another batch size",
      lambda e: e.h(tokens(1, 3), states=e.h(tokens(2, 5), return_states=True)[1]), I, "batch 2, input has batch 1"),
    C("tokens", "states not a ModelState", lambda e: e.h(tokens(2, 3), states={"not": "a state"}), I, "ModelState"),
    C("tokens", "states of another model",
      lambda e: e.h(tokens(2, 3), states=make_model("lstm")(tokens(2, 5), return_states=True)[1]), I,
      "ModelState returned by this model"),
    C("tokens", "keep_last of 0", lambda e: e.h(tokens(1, 3), return_states=True)[1].keep_last(0), I,
      "keep_last needs a window of at least 1"),
    # -- hooks ----------------------------------------------------------------------------------
    C("hooks", "unknown hook in run_with_hooks",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("blocks.0.hook_resid_pree", lambda t, hook: t)]), U,
      "Unknown hook name 'blocks.0.hook_resid_pree'.*Did you mean 'blocks.0.hook_resid_pre'"),
    C("hooks", "unknown hook in names_filter",
      lambda e: e.m.run_with_cache(e.t, names_filter=["blocks.1.mixer.hook_stat"]), U, "blocks.1.mixer.hook_state"),
    C("hooks", "unknown hook as names_filter string",
      lambda e: e.m.run_with_cache(e.t, names_filter="hook_embedd"), U, "Unknown hook name 'hook_embedd'"),
    C("hooks", "unknown hook in hooks()", lambda e: _under_hook(e.m, "blocks.9.hook_resid_pre", _nan_hook, lambda m: 0),
      U, "Unknown hook name 'blocks.9.hook_resid_pre'"),
    C("hooks", "unknown hook in add_hook", lambda e: e.m.add_hook("hook_embd", lambda t, hook: None), U,
      "Unknown hook name 'hook_embd'"),
    C("hooks", "names_filter of a wrong type", lambda e: e.m.run_with_cache(e.t, names_filter=5), I,
      "names_filter must be a hook name, a list of names or a function.*got int"),
    C("hooks", "names_filter list of ints", lambda e: e.m.run_with_cache(e.t, names_filter=[1]), I,
      "names_filter lists hook names"),
    C("hooks", "state_positions out of range",
      lambda e: e.m.run_with_cache(e.t, state_positions=10), I,
      "state_positions=10 does not index the 6 positions"),
    C("hooks", "hook is not a function", lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("hook_embed", 3)]), I,
      "fwd_hooks\\[0\\]: the hook for 'hook_embed' is a int, not a function"),
    C("hooks", "hook entry not a pair", lambda e: e.m.run_with_hooks(e.t, fwd_hooks=["hook_embed"]), I,
      "fwd_hooks\\[0\\] must be a \\(hook name, hook function\\) pair"),
    C("hooks", "one pair instead of a list",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=("hook_embed", lambda t, hook: t)), I, "wrap it in a list"),
    C("hooks", "hook point given as a number", lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[(3, lambda t, hook: t)]), I,
      "the hook point must be a name or a predicate"),
    C("hooks", "backward hook not a function", lambda e: e.m.run_with_hooks(e.t, bwd_hooks=[("hook_embed", None)]), I,
      "bwd_hooks\\[0\\]: the hook for 'hook_embed' is a NoneType"),
    C("hooks", "hook returns a string",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("blocks.0.mixer.hook_state", lambda t, hook: "x")]), I,
      "The hook on 'blocks.0.mixer.hook_state' returned a str"),
    C("hooks", "hook changes the dtype",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: t.long())]), I,
      "returned shape \\(1, 6, 32\\) and dtype torch.int64.*hooks must keep the shape and dtype"),
    C("hooks", "hook changes the shape of a state",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("blocks.0.mixer.hook_state", lambda t, hook: t[:, :2])]), I,
      "hooks must keep the shape"),
    C("hooks", "hook changes the shape of the residual",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: t[:, :2])]), I,
      "blocks.0.hook_resid_pre' returned shape \\(1, 2, 32\\)"),
    C("hooks", "hook by predicate returns a list",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[(lambda n: n.endswith("hook_z"), lambda t, hook: [t])]), I,
      "returned a list"),
    C("hooks", "cache key not cached",
      lambda e: e.m.run_with_cache(e.t, names_filter="hook_embed")[1]["blocks.0.hook_resid_pre"],
      U, "is a hook of the model but was not cached"),
    C("hooks", "cache key misspelt", lambda e: e.m.run_with_cache(e.t)[1]["blocks.0.hook_resid_postt"], U,
      "Did you mean 'blocks.0.hook_resid_post'"),
    # -- generate -------------------------------------------------------------------------------
    C("generate", "negative max_new_tokens", lambda e: e.m.generate(e.t, max_new_tokens=-1), I,
      "max_new_tokens must be an integer >= 0, got -1"),
    C("generate", "float max_new_tokens", lambda e: e.m.generate(e.t, max_new_tokens=2.5), I,
      "max_new_tokens must be an integer >= 0, got 2.5"),
    C("generate", "top_k 0", lambda e: e.m.generate(e.t, max_new_tokens=2, temperature=1.0, top_k=0), I,
      "top_k must be a positive integer or None, got 0"),
    C("generate", "NaN temperature", lambda e: e.m.generate(e.t, max_new_tokens=2, temperature=float("nan")), I,
      "temperature must be a finite number >= 0"),
    C("generate", "negative temperature", lambda e: e.m.generate(e.t, max_new_tokens=2, temperature=-1.0), I,
      "temperature must be a finite number >= 0"),
    C("generate", "unknown return_type", lambda e: e.m.generate(e.t, max_new_tokens=1, return_type="logits"), I,
      "generate's return_type must be one of"),
    C("generate", "beyond attention context", lambda e: e.attn16.generate(tokens(1, 14), max_new_tokens=5), I,
      "n_ctx=16"),
    C("generate", "float prompt", lambda e: e.m.generate(e.t.float(), max_new_tokens=1), I, "integer ids"),
    C("generate", "NaN weights, sampled", lambda e: e.nan.generate(e.t, max_new_tokens=2, temperature=1.0), N,
      "NaN in the logits at generation step 0: the model's weights hold NaN or inf \\(blocks.0.mixer.W_conv\\)"),
    C("generate", "NaN weights, greedy", lambda e: e.nan.generate(e.t, max_new_tokens=2), N,
      "NaN in the logits at generation step 0.*blocks.0.mixer.W_conv"),
    C("generate", "inf written by a hook",
      lambda e: _under_hook(e.m, "hook_logits", _inf_hook, lambda m: m.generate(e.t, max_new_tokens=1)), N,
      "inf in the logits at generation step 0: the model's weights are finite, so it comes from .*a hook"),
    # -- non-finite weights and activations, read by methods --------------------------------------
    C("nonfinite", "logit lens, NaN weights", lambda e: logit_lens(e.nan, e.t), N,
      "NaN in the model's logits: the model's weights hold NaN or inf \\(blocks.0.mixer.W_conv\\)"),
    C("nonfinite", "logit lens, NaN written into the residual",
      lambda e: _under_hook(e.m, "blocks.1.hook_resid_pre", _nan_hook, lambda m: logit_lens(m, e.t)), N,
      "NaN in the model's logits: the model's weights are finite"),
    C("nonfinite", "tuned lens fit, NaN weights",
      lambda e: TunedLens(e.nan).fit(e.nan, "hello world " * 4, steps=1, seq_len=8, batch_size=1), N,
      "NaN in the model's logits at tuned-lens step 0.*blocks.0.mixer.W_conv"),
    C("nonfinite", "tuned lens with NaN translators",
      lambda e: _nan_lens(e.m).run(e.m, e.t), N, "NaN in the tuned lens logits of layer 0"),
    C("nonfinite", "compare lenses, NaN weights", lambda e: compare_lenses(e.nan, TunedLens(e.nan), "abcdefgh" * 3,
                                                                           seq_len=8), N, "NaN in the model's logits"),
    C("nonfinite", "DLA, NaN weights", lambda e: direct_logit_attribution(e.nan, e.t), N,
      "NaN in the logits at position 5.*blocks.0.mixer.W_conv"),
    C("nonfinite", "DLA, inf in an MLP output",
      lambda e: _under_hook(e.h, "blocks.3.hook_mlp_out", _inf_hook, lambda m: direct_logit_attribution(m, e.t)), N,
      "in the logits at position 5: the model's weights are finite"),
    C("nonfinite", "gradient x input, NaN weights", lambda e: gradient_x_input(e.nan, e.t), N, "NaN in the logits"),
    C("nonfinite", "integrated gradients, NaN weights", lambda e: integrated_gradients(e.nan, e.t, steps=4), N,
      "NaN in the logits at position 5"),
    C("nonfinite", "gradient x input, NaN baseline",
      lambda e: gradient_x_input(e.m, e.t, baseline=torch.full((6, 32), float("nan"))), I,
      "baseline embedding contains NaN or inf"),
    C("nonfinite", "memory map, NaN weights", lambda e: memory_map(e.nan, e.t), N,
      "NaN in the memory map of layer 1 \\(qrnn\\).*blocks.0.mixer.W_conv"),
    C("nonfinite", "gradient influence, NaN weights", lambda e: gradient_influence(e.nan, e.t, 0, probes=2), N,
      "NaN in the gradient influence of layer 0"),
    C("nonfinite", "implicit attention, NaN in a gate",
      lambda e: _under_hook(e.m, "blocks.1.mixer.hook_forget", _nan_hook, lambda m: implicit_attention(m, e.t, 1)), N,
      "NaN in the memory map of layer 1 \\(qrnn\\): the model's weights are finite"),
    C("nonfinite", "activation patching, NaN weights",
      lambda e: activation_patching(e.nan, e.t, e.c, answer=1, contrast=2), N,
      "NaN in the metric: the model's weights hold NaN or inf \\(blocks.0.mixer.W_conv\\)"),
    C("nonfinite", "attribution patching, NaN weights",
      lambda e: attribution_patching(e.nan, e.t, e.c, answer=1, contrast=2), N, "NaN in the metric"),
    C("nonfinite", "patching, metric returning NaN",
      lambda e: activation_patching(e.m, e.t, e.c, metric=lambda l: l[:, -1, 0] * float("nan")), N,
      "NaN in the metric: the model's weights are finite.*a user function"),
    C("nonfinite", "probing, NaN weights",
      lambda e: collect_activations(e.nan, e.t, {"y": [1]}, sites=["resid_post"]), I,
      "rows of resid_post at layer 0 hold NaN or inf"),
    C("nonfinite", "probing, NaN labels only",
      lambda e: fit_probes(_with_labels(e.one_class, y=np.full(16, np.nan))), I,
      "Label 'y' has no rows with a value \\(all NaN\\)"),
    C("nonfinite", "steering vector, NaN weights", lambda e: steering_vector(e.nan, ["ab"], ["cd"]), N,
      "NaN in the mean activation difference at blocks.1.hook_resid_pre.*blocks.0.mixer.W_conv"),
    C("nonfinite", "steer, NaN weights",
      lambda e: steer(e.nan, "ab", torch.zeros(32), site=R, layers=[0], answer=1, contrast=2), N,
      "NaN in the model's logits on the input.*blocks.0.mixer.W_conv"),
    C("nonfinite", "steer, NaN vector",
      lambda e: steer(e.m, "ab", torch.full((32,), float("nan")), site=R, layers=[0], answer=1, contrast=2), I,
      "Steering vector for layer 0 contains NaN or inf"),
    C("nonfinite", "steer, inf coefficient",
      lambda e: steer(e.m, "ab", torch.zeros(32), [float("inf")], site=R, layers=[0], answer=1, contrast=2), I,
      "coefficients must be a non-empty list of finite numbers"),
    C("nonfinite", "patching, NaN alpha", lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=2,
                                                                        alpha=float("nan")), I,
      "alpha must be a finite number"),
    # -- checkpoint -----------------------------------------------------------------------------
    C("checkpoint", "config that does not match the weights",
      lambda e: e.load(_config(lambda p: p["config"].update(d_model=48, d_mlp=64))), K, "has shape .* but the config"),
    C("checkpoint", "config.json not JSON", lambda e: e.load(_write_config(b"{not json")), K, "not valid JSON"),
    C("checkpoint", "config.json empty", lambda e: e.load(_write_config(b"")), K, "not valid JSON"),
    C("checkpoint", "config.json binary", lambda e: e.load(_write_config(b"\xff\xfe\x00")), K,
      "not valid JSON.*can't decode"),
    C("checkpoint", "config.json a list", lambda e: e.load(_write_config(b"[1, 2]")), K, "has no 'config' entry"),
    C("checkpoint", "config entry a string", lambda e: e.load(_config(lambda p: p.__setitem__("config", "x"))), K,
      "A model config must be a JSON object, got str"),
    C("checkpoint", "unknown config field", lambda e: e.load(_set_field("frobnicate", 1)), K,
      "Unknown config field 'frobnicate'"),
    C("checkpoint", "unknown mixer in the config", lambda e: e.load(_set_field("layout", ["qrnm", "qrnn"])), K,
      "config.json: Unknown mixer 'qrnm'"),
    C("checkpoint", "width as a string", lambda e: e.load(_set_field("d_model", "32")), K,
      "d_model must be a positive integer, got '32'"),
    C("checkpoint", "another format", lambda e: e.load(_config(lambda p: p.__setitem__("format", "hf"))), K,
      "is a 'hf' file, not a probe checkpoint"),
    C("checkpoint", "newer format version", lambda e: e.load(_config(lambda p: p.__setitem__("version", 99))), K,
      "format version 99; this probe reads versions 1..1"),
    C("checkpoint", "truncated weights", lambda e: e.load(_bytes(lambda d: d[: len(d) // 2])), K,
      "not a readable safetensors file \\(truncated or tampered\\?\\)"),
    C("checkpoint", "empty weights file", lambda e: e.load(_bytes(lambda d: b"")), K, "not a readable safetensors"),
    C("checkpoint", "header length tampered", lambda e: e.load(_bytes(lambda d: b"\xff" * 8 + d[8:])), K,
      "not a readable safetensors.*header"),
    C("checkpoint", "header offsets tampered",
      lambda e: e.load(_header(lambda h: h["W_E"]["data_offsets"].__setitem__(1, h["W_E"]["data_offsets"][1] + 4))), K,
      "not a readable safetensors"),
    C("checkpoint", "header shape tampered",
      lambda e: e.load(_header(lambda h: h["W_E"].__setitem__("shape", h["W_E"]["shape"][::-1]))), K,
      "Tensor 'W_E' .* has shape \\(32, 257\\) but the config implies \\(257, 32\\)"),
    C("checkpoint", "header dtype tampered",
      lambda e: e.load(_header(lambda h: h["W_E"].__setitem__("dtype", "I32"))), K,
      "Tensor 'W_E' .* has dtype torch.int32, expected floating point"),
    C("checkpoint", "NaN bytes in a tensor",
      lambda e: e.load(_bytes(_nan_bytes)), K, "Tensor 'W_E' .* contains NaN or inf"),
    C("checkpoint", "inf weights", lambda e: e.load(_tensors(lambda t: t["b_U"].fill_(float("inf")))), K,
      "Tensor 'b_U' .* contains NaN or inf"),
    C("checkpoint", "bool weights", lambda e: e.load(_tensors(lambda t: t.__setitem__("W_E", t["W_E"] > 0))), K,
      "has dtype torch.bool, expected floating point"),
    C("checkpoint", "extra tensor", lambda e: e.load(_tensors(lambda t: t.__setitem__("extra", torch.zeros(2)))), K,
      "do not match its config: missing \\[\\], unexpected \\['extra'\\]"),
    C("checkpoint", "missing tensor", lambda e: e.load(_tensors(lambda t: t.pop("W_E"))), K, "missing \\['W_E'\\]"),
    C("checkpoint", "no weights file", lambda e: e.load(lambda p: (p / "model.safetensors").unlink()), K,
      "has config.json but no model.safetensors"),
    C("checkpoint", "weights file is a folder", lambda e: e.load(_weights_dir), K, "no model.safetensors"),
    C("checkpoint", "no config.json",
      lambda e: e.load(lambda p: (p / "config.json").unlink()), K, "has no config.json"),
    C("checkpoint", "load as int64", lambda e: probe.load(e.base_checkpoint, dtype=torch.int64), I,
      "Models load in a floating dtype.*torch.int64"),
    C("checkpoint", "load onto an unknown device", lambda e: probe.load(e.base_checkpoint, device="tpu"), I,
      "Unknown device 'tpu'"),
    C("checkpoint", "load a file", lambda e: probe.load(e.base_checkpoint / "config.json"), K,
      "No checkpoint directory at"),
    # -- zoo and sources ------------------------------------------------------------------------
    C("zoo", "no such zoo model", lambda e: probe.load("zoo:mambo"), K, "No zoo model named 'mambo'"),
    C("zoo", "empty zoo name", lambda e: probe.load("zoo:"), K, "No zoo model named ''"),
    C("zoo", "nonexistent path", lambda e: probe.load(e.tmp / "nothing" / "here"), K,
      "not a zoo name.*existing checkpoint directory"),
    C("zoo", "empty source", lambda e: probe.load(""), K, "probe.load got an empty name"),
    C("zoo", "not a path", lambda e: probe.load(None), I, "probe.load takes zoo:NAME, .* got NoneType"),
    C("zoo", "zoo train of an unknown architecture", lambda e: cli("zoo", "train", "mambo"), X,
      "Unknown zoo architecture 'mambo'. Did you mean 'mamba'"),
    # -- tokenizer ------------------------------------------------------------------------------
    C("tokenizer", "encode a number",
      lambda e: e.m.tokenizer.encode(5), I, "Expected text \\(str\\) to tokenize, got int"),
    C("tokenizer", "token_str out of range", lambda e: e.m.tokenizer.token_str(400), I,
      "Token id 400 is outside the byte tokenizer's range"),
    C("tokenizer", "decode out of range", lambda e: e.m.tokenizer.decode([65, 400]), I, "Token id 400 is outside"),
    C("tokenizer", "to_string out of range", lambda e: e.m.to_string(torch.tensor([400])), I, "Token id 400"),
    C("tokenizer", "not a tokenizer", lambda e: get_tokenizer(5), I, "Cannot use int as a tokenizer"),
    C("tokenizer", "to_single_token of two", lambda e: e.m.to_single_token("ab"), I, "'ab' is 2 tokens, not one"),
    C("tokenizer", "to_single_token of none", lambda e: e.m.to_single_token(""), I, "'' is 0 tokens, not one"),
    C("tokenizer", "to_str_tokens of a batch", lambda e: e.m.to_str_tokens(tokens(2, 3)), I,
      "to_str_tokens takes one sequence; got a batch of 2"),
    C("tokenizer", "to_tokens of a number",
      lambda e: e.m.to_tokens(5), I, "to_tokens takes a text or a list of texts, got int"),
    C("tokenizer", "to_tokens of mixed list", lambda e: e.m.to_tokens(["a", 1]), I, "got list holding non-text items"),
    C("tokenizer", "to_tokens of empty list", lambda e: e.m.to_tokens([]), I, "empty list of texts"),
    # -- lens -----------------------------------------------------------------------------------
    C("lens", "layer out of range", lambda e: logit_lens(e.m, e.t, layers=[5]), I, "layer 5 is out of range.*2 layers"),
    C("lens", "no layers", lambda e: logit_lens(e.m, e.t, layers=[]), I, "layers is empty"),
    C("lens", "layer as a string", lambda e: logit_lens(e.m, e.t, layers="a"), I, "layer must be an integer, got str"),
    C("lens", "empty text", lambda e: logit_lens(e.m, "", prepend_bos=False), I, "The text is empty"),
    C("lens", "float tokens", lambda e: logit_lens(e.m, e.t.float()), I, "integer ids"),
    C("lens", "tuned lens of another model",
      lambda e: TunedLens(make_model("qrnn", d_model=16, n_heads=2)).run(e.m, e.t),
      I, "made for a model with d_model=16.*this model has d_model=32"),
    C("lens", "tuned lens fit of 0 steps", lambda e: TunedLens(e.m).fit(e.m, "hello world", steps=0), I,
      "fit needs steps >= 1"),
    C("lens", "tuned lens fit on too little text", lambda e: TunedLens(e.m).fit(e.m, "abc", steps=1, seq_len=16), I,
      "data has only 4 tokens, fewer than one window of seq_len=16"),
    C("lens", "tuned lens fit on float data",
      lambda e: TunedLens(e.m).fit(e.m, torch.rand(100), steps=1, seq_len=16), I,
      "data token ids must be integers"),
    C("lens", "tuned lens fit on empty data",
      lambda e: TunedLens(e.m).fit(e.m, [], steps=1, seq_len=4), I, "data is empty"),
    C("lens", "tuned lens not on disk", lambda e: TunedLens.load(e.tmp / "nolens", e.m), K, "No tuned lens in"),
    C("lens", "tuned lens load without a model", lambda e: TunedLens.load(str(e.tmp)), I, "needs the model"),
    C("lens", "compare on too little text", lambda e: compare_lenses(e.m, TunedLens(e.m), "ab", seq_len=16), I,
      "fewer than one window"),
    # -- attribution ----------------------------------------------------------------------------
    C("attribution", "position out of range", lambda e: direct_logit_attribution(e.m, e.t, position=10), I,
      "position 10 is out of range for an input of 6 tokens"),
    C("attribution", "target out of vocabulary", lambda e: direct_logit_attribution(e.m, e.t, target=999), I,
      "target token id 999 is not in the vocabulary"),
    C("attribution", "float target", lambda e: direct_logit_attribution(e.m, e.t, target=1.5), I,
      "target ids must be integers"),
    C("attribution", "two-token target", lambda e: direct_logit_attribution(e.m, e.t, target="ab"), I,
      "target 'ab' is 2 tokens, not one"),
    C("attribution", "targets for another batch", lambda e: direct_logit_attribution(e.m, e.t, target=[1, 2]), I,
      "target has 2 ids for a batch of 1"),
    C("attribution", "contrast out of vocabulary", lambda e: gradient_x_input(e.m, e.t, contrast=-3), I,
      "contrast token id -3 is not in the vocabulary"),
    C("attribution", "unknown baseline", lambda e: gradient_x_input(e.m, e.t, baseline="ones"), I,
      "Unknown baseline 'ones'"),
    C("attribution", "baseline of the wrong shape", lambda e: gradient_x_input(e.m, e.t, baseline=torch.zeros(3, 3)), I,
      "baseline embedding has shape \\(3, 3\\); expected \\(6, 32\\)"),
    C("attribution", "baseline token out of range", lambda e: gradient_x_input(e.m, e.t, baseline=300), I,
      "baseline token id 300 is not in the vocabulary"),
    C("attribution", "IG steps 0", lambda e: integrated_gradients(e.m, e.t, steps=0), I,
      "steps must be a positive integer, got 0"),
    C("attribution", "unknown quadrature", lambda e: integrated_gradients(e.m, e.t, method="simpson"), I,
      "Unknown quadrature 'simpson'"),
    C("attribution", "IG chunk 0",
      lambda e: integrated_gradients(e.m, e.t, chunk=0), I, "chunk must be a positive integer"),
    C("attribution", "IG negative until", lambda e: integrated_gradients(e.m, e.t, until=-1), I,
      "until must be a positive"),
    C("attribution", "IG unknown spacing", lambda e: integrated_gradients(e.m, e.t, steps=4, spacing="log"), I,
      "spacing must be 'auto', 'linear' or a number"),
    # -- memory ---------------------------------------------------------------------------------
    C("memory", "unknown method", lambda e: memory_map(e.m, e.t, method="exact"), I, "method must be one of"),
    C("memory", "layer out of range", lambda e: memory_map(e.m, e.t, layers=[9]), I, "layer 9 is out of range"),
    C("memory", "implicit attention of an LSTM", lambda e: implicit_attention(make_model("lstm"), e.t, 0), P,
      "No exact implicit attention for mixer 'lstm'.*Supported: attn"),
    C("memory", "implicit attention of layer 0.5", lambda e: implicit_attention(e.m, e.t, 0.5), I,
      "layer must be an integer, got float"),
    C("memory", "gradient influence probes 0", lambda e: gradient_influence(e.m, e.t, 0, probes=0), I,
      "probes must be a positive integer or None"),
    C("memory", "gradient influence chunk 0", lambda e: gradient_influence(e.m, e.t, 0, chunk=0), I,
      "chunk must be a positive integer"),
    C("memory", "state sizes of empty text", lambda e: state_sizes(e.m, "", prepend_bos=False), I, "The text is empty"),
    # -- patching -------------------------------------------------------------------------------
    C("patching", "inputs of different shapes",
      lambda e: activation_patching(e.m, tokens(1, 6), tokens(1, 5), answer=1, contrast=2), I,
      "clean \\(1, 6\\) and corrupted \\(1, 5\\) inputs must have the same shape"),
    C("patching", "no answer", lambda e: activation_patching(e.m, e.t, e.c), I, "Give answer= and contrast="),
    C("patching", "answer equals contrast", lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=1), I,
      "answer and contrast are the same token"),
    C("patching", "identical runs", lambda e: activation_patching(e.m, e.t, e.t, answer=1, contrast=2), I,
      "The clean and corrupted runs give the same metric"),
    C("patching", "metric not callable", lambda e: activation_patching(e.m, e.t, e.c, metric=3), I,
      "metric must be a callable"),
    C("patching", "metric returning a string", lambda e: activation_patching(e.m, e.t, e.c, metric=lambda l: "x"), I,
      "The metric must return a number or a tensor of numbers, got str"),
    C("patching", "metric without gradient",
      lambda e: attribution_patching(e.m, e.t, e.c, metric=lambda l: l[:, -1].argmax(-1).float()), I,
      "The metric is not differentiable"),
    C("patching", "unknown site",
      lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=2, sites=["resid_pr"]),
      I, "Site 'resid_pr' exists at none of layers.*Did you mean 'resid_pre'"),
    C("patching", "unknown hook as a site",
      lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=2, sites=["blocks.0.hook_resid_pree"]), U,
      "Unknown hook name 'blocks.0.hook_resid_pree'"),
    C("patching", "no sites", lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=2, sites=[]), I,
      "sites is empty"),
    C("patching", "no positions", lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=2, positions=[]), I,
      "positions is empty"),
    C("patching", "position out of range",
      lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=2, positions=[20]), I,
      "position 20 is out of range for an input of 6 tokens"),
    C("patching", "max_batch 0", lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=2, max_batch=0), I,
      "max_batch must be a positive integer"),
    C("patching", "attention pattern as a site",
      lambda e: activation_patching(e.h, e.t, e.c, answer=1, contrast=2, sites=["blocks.2.mixer.hook_pattern"]), I,
      "hook_pattern' has shape .*not \\[batch, pos, ...\\]"),
    C("patching", "answer positions for another batch",
      lambda e: activation_patching(e.m, e.t, e.c, answer=1, contrast=2, answer_position=[1, 2]), I,
      "answer_position must be an int or 1 integer positions"),
    C("patching", "sweeps without a shared site",
      lambda e: patching_agreement(*[activation_patching(e.m, e.t, e.c, answer=1, contrast=2, sites=[s], layers=[0])
                                     for s in ("resid_pre", "mixer_out")]), I, "The two sweeps share no site"),
    # -- probing --------------------------------------------------------------------------------
    C("probing", "probe with one class", lambda e: fit_probes(e.one_class, labels="y"), I,
      "Label 'y' has a single class \\(1\\).*needs at least two"),
    C("probing", "regression on a constant", lambda e: fit_probes(e.one_class, labels="z", task="regression"), I,
      "Label 'z' is constant"),
    C("probing", "text labels", lambda e: fit_probes(_with_labels(e.one_class, y=np.array(["a"] * 16))), I,
      "Label 'y' has dtype <U1; labels must be numbers"),
    C("probing", "unknown label", lambda e: fit_probes(e.one_class, labels="w"), I, "Unknown label 'w'"),
    C("probing", "test_size above 1", lambda e: fit_probes(e.one_class, test_size=1.5), I,
      "test_size must be between 0 and 1"),
    C("probing", "unknown task", lambda e: fit_probes(e.one_class, task="cluster"), I, "task must be one of"),
    C("probing", "not a dataset", lambda e: fit_probes({"a": 1}), I, "fit_probes takes the ActivationDataset"),
    C("probing", "sites not collected", lambda e: fit_probes(e.one_class, sites=["state"]), I,
      "No features match sites=\\['state'\\]"),
    C("probing", "unknown reduction", lambda e: collect_activations(e.m, e.t, {"y": [1]}, reduce="svd"), I,
      "reduce must be 'random', 'pca' or None"),
    C("probing", "integer storage dtype", lambda e: collect_activations(e.m, e.t, {"y": [1]}, dtype="int8"), I,
      "dtype must be a float type"),
    C("probing", "unknown storage dtype", lambda e: collect_activations(e.m, e.t, {"y": [1]}, dtype="foo"), I,
      "dtype 'foo' is not a numpy dtype"),
    C("probing", "max_dim 0", lambda e: collect_activations(e.m, e.t, {"y": [1]}, max_dim=0), I,
      "max_dim must be a positive integer"),
    C("probing", "labels of the wrong length", lambda e: collect_activations(e.m, e.t, {"y": [1, 2, 3]}), I,
      "Label 'y' has shape \\(3,\\); expected one value per sequence"),
    C("probing", "empty dataset", lambda e: collect_activations(e.m, [], {"y": []}), I, "The dataset is empty"),
    C("probing", "float token ids", lambda e: collect_activations(e.m, e.t.float(), {"y": [1]}), I,
      "Token ids must be integers, got dtype float32"),
    C("probing", "token ids out of range", lambda e: collect_activations(e.m, e.t + 300, {"y": [1]}), I,
      "holds token id .* outside this model's vocabulary"),
    C("probing", "positions beyond every sequence", lambda e: collect_activations(e.m, e.t, {"y": [1]}, positions=[50]),
      I, "No positions selected"),
    C("probing", "unknown site", lambda e: collect_activations(e.m, e.t, {"y": [1]}, sites=["stat"]), I,
      "Site 'stat' exists at none of layers.*Did you mean 'state'"),
    # -- steering -------------------------------------------------------------------------------
    C("steering", "unequal contrast pairs", lambda e: steering_vector(e.m, ["ab", "cd"], ["ab"]), I,
      "2 positive and 1 negative examples"),
    C("steering", "unknown site", lambda e: steering_vector(e.m, ["ab"], ["cd"], site="stat"), I,
      "Site 'stat' has nothing to steer"),
    C("steering", "state of an attention model",
      lambda e: steering_vector(make_model("attn"), ["ab"], ["cd"], site="state"),
      I, "attention and ff layers have no hook_state"),
    C("steering", "no examples", lambda e: steering_vector(e.m, [], []), I, "positive: The dataset is empty"),
    C("steering", "empty text", lambda e: steering_vector(e.m, [""], ["a"], prepend_bos=False), I,
      "positive: The text is empty"),
    C("steering", "unknown position", lambda e: steering_vector(e.m, ["ab"], ["cd"], position="first"), I,
      "position must be -1 \\(last token\\), 'mean' or an int index"),
    C("steering", "vector of the wrong width",
      lambda e: steer(e.m, "ab", torch.zeros(5), site=R, layers=[0], answer=1, contrast=2), I,
      "Steering vector for layer 0 has shape \\(5,\\), but 'resid_pre' there holds \\(32,\\)"),
    C("steering", "vector as text", lambda e: steer(e.m, "ab", "abc", site=R, layers=[0], answer=1, contrast=2), I,
      "A steering vector must be a tensor \\(or array\\) of numbers, got str"),
    C("steering", "boolean vector",
      lambda e: steer(e.m, "ab", torch.ones(32, dtype=torch.bool), site=R, layers=[0], answer=1, contrast=2), I,
      "must hold real numbers, got dtype torch.bool"),
    C("steering", "nothing to measure", lambda e: steer(e.m, "ab", torch.zeros(32), site=R, layers=[0]), I,
      "Nothing to measure"),
    C("steering", "negative steering position",
      lambda e: steer(e.m, "ab", torch.zeros(32), site=R, layers=[0], answer=1, contrast=2, positions=[-1]), I,
      "Steering positions must be absolute indices >= 0"),
    C("steering", "raw tensor without a site",
      lambda e: steer(e.m, "ab", torch.zeros(32), layers=[0], answer=1, contrast=2),
      I, "A raw steering tensor needs site="),
    C("steering", "answer without contrast",
      lambda e: steer(e.m, "ab", torch.zeros(32), site=R, layers=[0], answer=1), I, "Give both answer= and contrast="),
    C("steering", "layer the vector lacks",
      lambda e: steer(e.m, "ab", steering_vector(e.m, ["ab"], ["cd"], layers=[0]), layers=[1], answer=1, contrast=2), I,
      "The steering vector has no direction for layers \\[1\\]"),
    # -- cli ------------------------------------------------------------------------------------
    C("cli", "unknown command", lambda e: cli("frobnicate"), X, "invalid choice: 'frobnicate'"),
    C("cli", "zoo train without names", lambda e: cli("zoo", "train"), X, "Name the architectures to train"),
    C("cli", "zoo list of a missing folder", lambda e: cli("zoo", "list", "--zoo-dir", str(e.tmp / "nozoo")), X,
      "--zoo-dir '.*nozoo' is not a folder"),
    C("cli", "zoo card of a missing folder",
      lambda e: cli("zoo", "card", "--no-eval", "--zoo-dir", str(e.tmp / "nozoo")),
      X, "--zoo-dir '.*nozoo' is not a folder"),
    C("cli", "zoo card of an unknown model", lambda e: cli("zoo", "card", "mambo", "--zoo-dir", str(e.tmp)), X,
      "mambo' has no card.json"),
    C("cli", "export without a folder",
      lambda e: cli("data", "export-stdlib"), X, "the following arguments are required: dir"),
    C("cli", "train with an unknown mixer (checked before the corpus)",
      lambda e: cli("train", "--layout", "qrnm", "--out", str(e.tmp / "run"), "--text", str(e.tmp / "none.txt")), X,
      "probe: error: Unknown mixer 'qrnm' in layout. Did you mean 'qrnn'"),
    C("cli", "train with an empty layout",
      lambda e: cli("train", "--layout", ",", "--out", str(e.tmp / "run"), "--text", str(e.tmp / "none.txt")), X,
      "layout is empty"),
    C("cli", "train with indivisible width",
      lambda e: cli("train", "--layout", "attn", "--d-model", "30", "--out", str(e.tmp / "run")), X,
      "d_model=30 is not divisible by n_heads=4"),
    C("cli", "train on a missing corpus",
      lambda e: cli("train", "--layout", "qrnn", "--out", str(e.tmp / "run"), "--text", str(e.tmp / "none.txt")), X,
      "Corpus path '.*none.txt' does not exist"),
    C("cli", "train for 0 steps", lambda e: cli("train", "--layout", "qrnn", "--out", str(e.tmp / "run"), "--text",
                                                 __file__, "--steps", "0"), X,
      "steps must be a positive integer, got 0"),
    C("cli", "train without --out", lambda e: cli("train", "--layout", "qrnn"), X,
      "the following arguments are required: --out"),
    C("cli", "explore on a non-numeric port", lambda e: cli("explore", "--port", "abc"), X,
      "argument --port: invalid int value: 'abc'"),
]


def _nan_lens(model):
    lens = TunedLens(model)
    with torch.no_grad():
        lens.bias[0, 0] = float("nan")
    return lens


def _with_labels(data, **labels):
    """A shallow copy of an ActivationDataset with some labels replaced."""
    import copy

    out = copy.copy(data)
    out.labels = {**data.labels, **labels}
    return out


# -- options: every option of every mixer, generated from its declaration ----------------------
#: options set under every fuzzed one where an option only means something beside another (a shared expert's gate)
FUZZ_BASE = {"moe": {"d_shared": 8, "n_group": 2}}


def _one_layer(owner: str, options: dict) -> probe.HookedLM:
    """A tiny one-layer model of mixer ``owner`` (or of an attention layer with MLP kind ``owner``) with ``options``."""
    kind = {"layout": ["attn"], "mlp_layout": [owner]} if owner in MLP_KINDS else {"layout": [owner]}
    options = {**FUZZ_BASE.get(owner, {}), **options}
    return probe.HookedLM(probe.ModelConfig(d_model=32, n_heads=4, d_mlp=32, mixer_options={owner: options}, **kind))


def _options_of(model: probe.HookedLM, owner: str) -> dict:
    """The resolved options of the layer module ``owner`` names (the mixer, or the MLP of that kind)."""
    block = model.blocks[0]
    return (block.mlp if owner in MLP_KINDS else block.mixer).options


#: a valid non-default value of every option of every mixer (d_model 32, 4 heads): the "works" half
VALID_OPTIONS = {
    "attn": {"bias": True, "qkv_bias": True, "n_kv_heads": 2, "qk_norm": "projection", "qk_norm_eps": 1e-6,
             "rotary_fraction": 0.5, "output_gate": True, "scale": 0.2},
    "ff": {"d_hidden": 16, "act": "swiglu"},
    "qrnn": {"window": 1, "d_hidden": 16},
    "lmu": {"order": 4, "theta": 8.0, "d_u": 4},
    "hgrn2": {"expand_ratio": 4},
    "mamba": {"d_state": 4, "d_conv": 1, "expand": 1, "dt_rank": 2, "conv_bias": False, "proj_bias": True,
              "dt_min": 0.01, "dt_max": 0.05, "inner_norms": True},
    "moe": {"n_experts": 4, "top_k": 1, "d_expert": 16, "router": "sigmoid", "renormalize": True,
            "routed_scaling_factor": 2.5, "selection_bias": True, "n_group": 4, "topk_group": 2, "d_shared": 16,
            "shared_gate": True},
    "mlstm": {"layer": "paper", "heads": 2, "eps": 1e-5, "norm_eps": 1e-5, "bias": True, "chunk": 8,
              "qk_factor": 0.25, "v_factor": 0.5, "gate_soft_cap": None, "d_inner": 32, "conv": 2, "qkv_blocksize": 2},
    "rwkv": {"d_attn": 16},
    "slstm": {"conv": 0, "norm_eps": 1e-3, "heads": 2},
    "mamba2": {"d_state": 8, "d_conv": 2, "expand": 1, "head_dim": 8, "n_groups": 2, "chunk": 4, "conv_bias": False,
               "proj_bias": True, "dt_min": 0.01, "dt_max": 0.05, "dt_limit_min": 0.001, "dt_limit_max": 10.0,
               "d_inner": 48, "norm": "none"},
    "rglru": {"lru_width": 16, "n_heads": 2, "d_conv": 2, "c": 4.0},
    "gdn": {"n_k_heads": 2, "n_v_heads": 4, "d_k": 8, "d_v": 8, "d_conv": 2, "norm_eps": 1e-5, "chunk": 4,
            "allow_neg_eigval": True},
    "mla": {"kv_rank": 8, "q_rank": 8, "d_nope": 4, "d_rope": 2, "d_v": 4, "latent_norm_eps": 1e-5, "bias": True},
    "kda": {"n_k_heads": 2, "n_v_heads": 4, "d_k": 8, "d_v": 8, "d_conv": 2, "norm_eps": 1e-5, "chunk": 4,
            "allow_neg_eigval": True, "gate_bias": True},
    "rwkv7": {"d_head": 16, "d_value": 16, "d_decay_lora": 8, "d_a_lora": 8, "d_gate_lora": 8, "d_value_lora": 8,
              "value_residual": False, "norm_eps": 1e-3},
}


def _bad_values(spec) -> list[tuple[str, object, str]]:
    """``(label, value, regex)`` for values the declaration ``spec`` refuses: wrong types, out of
    range, NaN and inf."""
    nan, inf = float("nan"), float("inf")
    if isinstance(spec, Int):
        rule = f"must be an integer >= {spec.low}"
        values = [("a string", "2"), ("a float", 2.5), ("a bool", True), ("NaN", nan), ("inf", inf),
                  (f"{spec.low - 1} (below the range)", spec.low - 1)]
    elif isinstance(spec, Real):
        rule = f"must be a finite number {'>' if spec.open_low else '>='} {spec.low:g}"
        values = [("a string", "0.1"), ("a bool", True), ("NaN", nan), ("inf", inf), ("-inf", -inf),
                  ("-1 (below the range)", -1.0)] + ([("0 (the open bound)", 0.0)] if spec.open_low else [])
    elif isinstance(spec, Flag):
        rule = "must be True or False"
        values = [("the string 'false'", "false"), ("the number 0", 0), ("the number 1", 1), ("None", None)]
    else:
        rule = "=.* is not one of " + ", ".join(spec.choices)
        values = [("an unknown name", "nope"), ("a number", 3), ("None", None)]
    return [(label, value, rule) for label, value in values]


def option_cases() -> list[Case]:
    cases = []
    for mixer, cls in sorted(option_owners().items()):
        for name, spec in cls.OPTIONS.items():
            for label, value, rule in _bad_values(spec):
                cases.append(C("options", f"{mixer} {name}: {label}",
                               lambda e, m=mixer, o={name: value}: _one_layer(m, o), E,
                               f"{mixer} option {name} ?{rule}"))
            if name not in VALID_OPTIONS.get(mixer, {}):
                continue  # test_every_option_and_field_is_fuzzed names it
            good = VALID_OPTIONS[mixer][name]
            cases.append(W("options", f"{mixer} {name} = {good!r}", lambda e, m=mixer, o={name: good}: _one_layer(m, o),
                           lambda model, e, m=mixer, n=name, v=good: (_options_of(model, m)[n] == v
                                                                      and bool(torch.isfinite(model(e.t)).all()))))
    return cases


# -- fields: every ModelConfig field -----------------------------------------------------------
def _with(**kw) -> Callable[[Env], probe.HookedLM]:
    """A call building a tiny 2-layer qrnn+attn model with the field values ``kw``."""
    base = dict(d_model=32, n_heads=4, d_mlp=32, layout=["qrnn", "attn"])
    return lambda e: probe.HookedLM(probe.ModelConfig(**{**base, **kw}))


def _runs(model) -> bool:
    return bool(torch.isfinite(model(torch.tensor([[1, 2, 3, 4]]))).all())


#: (field, a value of the wrong type, regex): every field at least once
FIELD_ERRORS = [
    ("vocab_size", "257", "vocab_size must be a positive integer, got '257'"),
    ("d_model", 32.5, "d_model must be a positive integer, got 32.5"),
    ("layout", {"qrnn": 1}, "layout must be a list of names, got dict"),
    ("n_layers", "2", "n_layers must be a positive integer, got '2'"),
    ("n_layers", 2.0, "n_layers must be a positive integer, got 2.0"),
    ("n_heads", "4", "n_heads must be a positive integer, got '4'"),
    ("d_head", 8.5, "d_head must be a positive integer, got 8.5"),
    ("d_mlp", 8.5, "d_mlp must be an integer >= 0 \\(0 removes the MLP\\) or None, got 8.5"),
    ("d_mlp", "64", "d_mlp must be an integer >= 0.*got '64'"),
    ("d_mlp", True, "d_mlp must be an integer >= 0.*got True"),
    ("mlp", ["gelu"], "mlp must be a string, got \\['gelu'\\] \\(list\\)"),
    ("mlp_layout", [1, 1], "mlp_layout lists MLP kinds \\(strings\\), got 1 \\(int\\)"),
    ("mlp_layout", "gelu", "mlp_layout must be a list of names, got str 'gelu'"),
    ("norm", 1, "norm must be a string, got 1"),
    ("norm_eps", float("inf"), "norm_eps must be a finite number > 0, got inf"),
    ("positional", None, "positional must be a string, got None"),
    ("rope_base", "1e4", "rope_base must be a finite number > 0, got '1e4'"),
    ("rope_base", float("nan"), "rope_base must be a finite number > 0, got nan"),
    ("n_ctx", 2.5, "n_ctx must be a positive integer, got 2.5"),
    ("tie_embeddings", "no", "tie_embeddings must be True or False, got 'no' \\(str\\)"),
    ("tie_embeddings", 1, "tie_embeddings must be True or False, got 1 \\(int\\)"),
    ("logit_soft_cap", float("inf"), "logit_soft_cap must be a finite number > 0, got inf"),
    ("logit_soft_cap", "30", "logit_soft_cap must be a finite number > 0, got '30'"),
    ("mixer_options", [("qrnn", {})], "mixer_options must be a dict"),
    ("mixer_options", {"qrnn": {"window": "2"}}, "qrnn option window must be an integer >= 1, got '2' \\(a str\\)"),
    ("init_std", "0.02", "init_std must be a finite number >= 0, got '0.02'"),
    ("tokenizer", None, "tokenizer must be a string, got None"),
    ("default_prepend_bos", "false", "default_prepend_bos must be True or False, got 'false' \\(str\\)"),
    ("default_prepend_bos", 0, "default_prepend_bos must be True or False, got 0 \\(int\\)"),
    ("name", 3, "name must be a string, got 3 \\(int\\)"),
    ("embed_scale", "2", "embed_scale must be a finite number > 0, got '2'"),
    ("embed_scale", float("nan"), "embed_scale must be a finite number > 0, got nan"),
    ("norm_placement", "post", "norm_placement must be a list of names, got str 'post'"),
    ("norm_placement", ["pre"], "norm_placement has 1 entries for 2 layers"),
    ("shared_layout", "0", "shared_layout needs one entry per layer \\(2\\)"),
    ("shared_layout", [0, 1.0], "shared_layout entries are shared-block indices \\(integers >= 0\\) or None, got 1.0"),
    ("shared_options", [("n_heads", 2)], "shared_options must be a dict of options"),
    ("shared_options", {"adapter_rank": 4}, "shared_options is given but no layer uses a shared block"),
]

#: (field, a valid non-default value, check of its effect on the built model)
FIELD_WORKS = [
    ("vocab_size", 100, lambda m: m.W_E.shape[0] == 100),
    ("d_model", 16, lambda m: m.W_E.shape[1] == 16),
    ("layout", ("attn", "qrnn"), lambda m: m.cfg.layout == ["attn", "qrnn"]),
    ("n_layers", 2, lambda m: len(m.blocks) == 2),
    ("n_heads", 2, lambda m: m.blocks[1].mixer.n_heads == 2 and m.blocks[1].mixer.d_head == 16),
    ("d_head", 4, lambda m: m.blocks[1].mixer.d_head == 4),
    ("d_mlp", 0, lambda m: all(b.mlp is None for b in m.blocks)),
    ("mlp", "relu", lambda m: all(b.mlp.act == "relu" for b in m.blocks)),
    ("mlp_layout", ["none", "swiglu"], lambda m: m.blocks[0].mlp is None and m.blocks[1].mlp.act == "swiglu"),
    ("norm", "layernorm", lambda m: type(m.ln_final).__name__ == "LayerNorm"),
    ("norm_eps", 1e-3, lambda m: m.cfg.norm_eps == 1e-3),
    ("positional", "learned", lambda m: m.W_pos.shape == (m.cfg.n_ctx, 32)),
    ("rope_base", 500.0, lambda m: m.cfg.rope_base == 500.0),
    ("n_ctx", 64, lambda m: m.cfg.context_limit == 64),
    ("tie_embeddings", True, lambda m: not hasattr(m, "W_U") and m.unembed_matrix.shape == (32, 257)),
    ("logit_soft_cap", 0.5, lambda m: float(m(torch.tensor([[1, 2, 3]])).detach().abs().max()) <= 0.5),
    ("mixer_options", {"qrnn": {"window": 3}}, lambda m: m.blocks[0].mixer.options["window"] == 3),
    ("init_std", 0.0, lambda m: float(m.W_E.detach().abs().max()) == 0.0),
    ("tokenizer", "byte", lambda m: m.tokenizer.name == "byte"),
    ("default_prepend_bos", False, lambda m: m.to_tokens("ab").tolist() == [[97, 98]]),
    ("name", "fuzzed", lambda m: m.cfg.name == "fuzzed"),
    ("embed_scale", 2.0, lambda m: m.cfg.embed_scale == 2.0),
    ("norm_placement", ["pre", "post"], lambda m: not m.blocks[0].post_norm and m.blocks[1].post_norm),
    ("shared_layout", [None, 0], lambda m: m.blocks[0].shared is None and m.blocks[1].shared.block is m.shared_blocks[0]),
    ("shared_options", {"adapter_rank": 4}, lambda m: m.blocks[1].shared.adapter_gate_up.down.weight.shape == (4, 32)),
]

#: other fields a FIELD_WORKS value needs beside it (shared_options act only on layers that use a shared block)
FIELD_CONTEXT = {"shared_options": {"shared_layout": [None, 0]}}


def field_cases() -> list[Case]:
    cases = [C("fields", f"{field} = {value!r}", _with(**{field: value}), E, regex)
             for field, value, regex in FIELD_ERRORS]
    cases += [W("fields", f"{field} = {value!r} (valid)", _with(**{field: value}, **FIELD_CONTEXT.get(field, {})),
                lambda m, e, check=check: check(m) and _runs(m)) for field, value, check in FIELD_WORKS]
    return cases


# -- the items of issue 24 that are neither options nor fields -----------------------------------
def _states(model, e, **kw):
    return model(e.t, return_states=True, **kw)[1]


def _continues(model, e, states) -> bool:
    """Running ``e.c`` from ``states`` equals running ``e.t + e.c`` at once (float32 tolerance)."""
    whole = model(torch.cat([e.t, e.c], dim=1))[:, e.t.shape[1]:]
    return torch.allclose(model(e.c, states=states), whole, atol=1e-4)


def _nested(model, run):
    """``model`` run with a hook on ``blocks.0.hook_resid_pre`` that runs the model again (``run(model)``)."""
    def hook(t, hook):
        run(model)
    return model.run_with_hooks(tokens(1, 4), fwd_hooks=[("blocks.0.hook_resid_pre", hook)])


def _other_model_in_hook(e):
    seen = []

    def hook(t, hook):
        seen.append(e.h(tokens(1, 3)).shape)
    e.m.run_with_hooks(e.t, fwd_hooks=[("blocks.0.hook_resid_pre", hook)])
    return seen


def _afile(e) -> str:
    path = e.tmp / "a-file"
    path.write_text("not a folder\n")
    return str(path)


ISSUE_CASES = [
    # carried states
    C("states", "integer states", lambda e: e.m(e.c, states=_states(e.m, e).map(lambda v: v.long())), I,
      "Layer 0 \\(qrnn\\) state '.*' has dtype torch.int64; states hold real numbers"),
    C("states", "integer KV cache", lambda e: e.attn16(e.c, states=_states(e.attn16, e).map(lambda v: v.int())), I,
      "Layer 0 \\(attn\\) state 'k' has dtype torch.int32"),
    C("states", "boolean states", lambda e: e.m(e.c, states=_states(e.m, e).map(lambda v: v > 0)), I,
      "has dtype torch.bool"),
    C("states", "states on another device", lambda e: e.m(e.c, states=_states(e.m, e).to("meta")), I,
      "state '.*' is on meta but the model runs on cpu; move the states"),
    C("states", "KV cache on another device", lambda e: e.attn16(e.c, states=_states(e.attn16, e).to("meta")), I,
      "Layer 0 \\(attn\\) state 'k' is on meta but the model runs on cpu"),
    W("states", "states as returned", lambda e: _states(e.h, e), lambda st, e: _continues(e.h, e, st)),
    W("states", "float64 states", lambda e: _states(e.h, e).to(torch.float64), lambda st, e: _continues(e.h, e, st)),
    # hooks
    C("hooks", "hook taking only the tensor",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("hook_embed", lambda t: t)]), I,
      "the hook for 'hook_embed' has the signature <lambda>\\(t\\); hooks are called as hook\\(tensor, hook=hook\\)"),
    C("hooks", "hook whose second argument is not named hook",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("hook_embed", lambda t, h: t)]), I,
      "hooks are called as hook\\(tensor, hook=hook\\)"),
    C("hooks", "add_hook of a one-argument function",  # a fresh model: today's code would keep the hook
      lambda e: make_model("qrnn").add_hook("hook_embed", lambda t: t), I,
      "add_hook\\[0\\]: the hook for 'hook_embed' has the signature"),
    C("hooks", "run_with_hooks inside a hook",
      lambda e: _nested(e.m, lambda m: m.run_with_hooks(tokens(1, 4), fwd_hooks=[("hook_embed", _nan_hook)])), I,
      "The hook on 'blocks.0.hook_resid_pre' ran the model it hooks"),
    C("hooks", "run_with_cache inside a hook", lambda e: _nested(e.m, lambda m: m.run_with_cache(tokens(1, 4))), I,
      "ran the model it hooks.*recursion never ends"),
    C("hooks", "forward inside a hook", lambda e: _nested(e.m, lambda m: m(tokens(1, 4))), I,
      "ran the model it hooks"),
    W("hooks", "hook running another model", _other_model_in_hook, lambda seen, e: seen == [(1, 3, 257)]),
    W("hooks", "hook with hook as a keyword and extras",
      lambda e: e.m.run_with_hooks(e.t, fwd_hooks=[("hook_embed", lambda t, hook=None, **kw: t * 1.0)]),
      lambda out, e: torch.allclose(out, e.m(e.t))),
    # steering, attribution
    C("steering", "position beyond the input",
      lambda e: steer(e.m, "ab", torch.zeros(32), site=R, layers=[0], answer=1, contrast=2, positions=[100]), I,
      "Steering positions \\[100\\] are beyond the input: the longest input has 3 tokens"),
    C("steering", "position beyond the generated tokens",
      lambda e: steer(e.m, "ab", torch.zeros(32), site=R, layers=[0], answer=1, contrast=2, positions=[2, 5],
                      max_new_tokens=2), I, "Steering positions \\[5\\] are beyond the input.*positions 0..4 exist"),
    C("steering", "empty positions",
      lambda e: steer(e.m, "ab", torch.zeros(32), site=R, layers=[0], answer=1, contrast=2, positions=[]), I,
      "positions is empty: nothing would be steered"),
    W("steering", "position in the generated part",
      lambda e: steer(e.m, "ab", torch.ones(32), [0.0, 4.0], site=R, layers=[0], positions=[4], max_new_tokens=2,
                      answer=1, contrast=2), lambda r, e: r is not None),
    C("attribution", "DLA target equals contrast",
      lambda e: direct_logit_attribution(e.m, e.t, target=5, contrast=5), I,
      "target and contrast are the same token \\(5\\) in sequence 0: the logit difference is 0"),
    C("attribution", "DLA target equals contrast in one row",
      lambda e: direct_logit_attribution(e.m, tokens(2, 4), target=[5, 6], contrast=[7, 6]), I,
      "same token \\(6\\) in sequence 1"),
    W("attribution", "DLA with a contrast", lambda e: direct_logit_attribution(e.m, e.t, target=5, contrast=6),
      lambda r, e: float(r.rel_error.max()) < 1e-6),
    # text
    C("tokenizer", "lone surrogate in text", lambda e: e.m("ab\ud800c"), I,
      "The text holds a lone surrogate '\\\\ud800' at character 2: it is not valid Unicode"),
    C("tokenizer", "lone surrogate in to_tokens", lambda e: e.m.to_tokens(["ok", "\udcff"]), I, "lone surrogate"),
    C("tokenizer", "lone surrogate in a probing dataset",
      lambda e: collect_activations(e.m, ["ab\udc80"], {"y": [1]}), I, "lone surrogate"),
    W("tokenizer", "astral characters", lambda e: e.m.to_tokens("a\U0001F600", prepend_bos=False),
      lambda ids, e: ids.tolist() == [[97, 240, 159, 152, 128]]),
    # the command line
    C("cli", "train with lr nan",
      lambda e: cli("train", "--layout", "qrnn", "--out", str(e.tmp / "run"), "--lr", "nan"), X, "argument --lr: must be a finite number, got 'nan'"),
    C("cli", "train with lr inf",
      lambda e: cli("train", "--layout", "qrnn", "--out", str(e.tmp / "run"), "--lr", "inf"), X, "argument --lr: must be a finite number, got 'inf'"),
    C("cli", "train with lr text", lambda e: cli("train", "--layout", "qrnn", "--out", str(e.tmp / "run"), "--lr", "x"),
      X, "argument --lr: must be a number, got 'x'"),
    C("cli", "train with val-fraction nan",
      lambda e: cli("train", "--layout", "qrnn", "--out", str(e.tmp / "run"), "--val-fraction", "nan"), X,
      "argument --val-fraction: must be a finite number"),
    C("cli", "train into a file", lambda e: cli("train", "--layout", "qrnn", "--out", _afile(e)), X,
      "--out '.*a-file' is a file, not a folder"),
    C("cli", "zoo train into a file", lambda e: cli("zoo", "train", "qrnn", "--out", _afile(e)), X,
      "--out '.*a-file' is a file, not a folder"),
    C("cli", "export the stdlib into a file", lambda e: cli("data", "export-stdlib", _afile(e)), X,
      "export-stdlib DIR '.*a-file' is a file, not a folder"),
]

CASES += option_cases() + field_cases() + ISSUE_CASES


def _documented_count() -> int:
    return int(re.search(r"holds at least (\d+) cases", __doc__).group(1))


def _documented_categories() -> set[str]:
    """The category names (in double backquotes) before the colon of each bullet of the module docstring."""
    head = __doc__.split("A plain forward pass")[0]
    return {name for bullet in re.findall(r"^\* (.*?):", head, flags=re.M) for name in re.findall(r"``(\w+)``", bullet)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("fuzz"))


#: (category, name) of every case that met its expected outcome in this session (for the printed table)
PASSED: set[tuple[str, str]] = set()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}: {c.name}" for c in CASES])
def test_case(case: Case, env: Env):
    if case.expect == WORKS:
        result = case.call(env)
        assert case.check(result, env), f"{case.name}: the call worked but its result is wrong"
    else:
        with pytest.raises(case.error, match=case.match) as info:
            case.call(env)
        assert isinstance(info.value, (ProbeError, CLIExit)), type(info.value)
    PASSED.add((case.category, case.name))


def test_the_table_is_counted_and_categorised():
    assert len(CASES) >= _documented_count()
    assert len({(c.category, c.name) for c in CASES}) == len(CASES), "case names repeat"
    assert {c.category for c in CASES} == _documented_categories()
    assert all(issubclass(c.error, (ProbeError, CLIExit)) for c in CASES if c.expect == CLEAR_ERROR)
    methods_covered = {c.category for c in CASES} & {"lens", "attribution", "memory", "patching", "probing", "steering"}
    assert len(methods_covered) == 6


def test_every_option_and_field_is_fuzzed():
    """Every declared option of every mixer has invalid cases and a working one; every ModelConfig
    field has a wrong-typed case and a working one (a new option or field must join the table)."""
    import dataclasses

    names = {c.name for c in CASES if c.category == "options"}
    for mixer, cls in option_owners().items():
        assert set(VALID_OPTIONS.get(mixer, {})) == set(cls.OPTIONS), (
            f"VALID_OPTIONS[{mixer!r}] must list a valid non-default value of each option of {mixer!r}")
        for option, spec in cls.OPTIONS.items():
            assert isinstance(spec, (Int, Real, Flag, Choice)), (mixer, option)
            assert sum(n.startswith(f"{mixer} {option}:") for n in names) >= 3, (mixer, option)
    fields = {f.name for f in dataclasses.fields(probe.ModelConfig)}
    assert {f for f, _, _ in FIELD_ERRORS} == fields == {f for f, _, _ in FIELD_WORKS}, (
        "FIELD_ERRORS and FIELD_WORKS must each hold every ModelConfig field")


def table() -> str:
    """The fuzz table's counts per category: cases, expected clear errors, expected works, passed."""
    rows = [("category", "cases", "clear errors", "works", "passed")]
    for category in sorted({c.category for c in CASES}):
        mine = [c for c in CASES if c.category == category]
        rows.append((category, len(mine), sum(c.expect == CLEAR_ERROR for c in mine),
                     sum(c.expect == WORKS for c in mine), sum((c.category, c.name) in PASSED for c in mine)))
    rows.append(("total", len(CASES), sum(c.expect == CLEAR_ERROR for c in CASES),
                 sum(c.expect == WORKS for c in CASES), len(PASSED)))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    return "\n".join("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in rows)


def test_print_the_table(capsys):
    """Print the table (shown with -q too); "passed" counts the cases of this session that met their
    expected outcome (all of them when the whole file ran and passed)."""
    text = table()
    with capsys.disabled():
        print(f"\n\nfuzz table ({len(CASES)} cases):\n{text}\n")
    assert text.splitlines()[-1].split()[1] == str(len(CASES))


def test_the_fuzzed_models_are_left_clean(env: Env):
    """After every case above (hooks that raised, methods that refused), no hook is left on the shared models."""
    for model in (env.m, env.h, env.nan):
        assert not [n for n, hp in model.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]
        assert model.context_level == 0
