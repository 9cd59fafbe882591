"""Cached model loading for the explorer: zoo names, demo models, checkpoint paths, hub ids.

A model is named by its *source string* and cached under it (``st.cache_resource``), so
every view and every cached result (``st.cache_data``) hashes the string, never the model. A
checkpoint directory (or zoo model) is cached under its files' version too
(:func:`checkpoint_version`), so a checkpoint overwritten by ``model.save`` loads again:

=====================  ==================================================================
source                 model
=====================  ==================================================================
``zoo:NAME``           a shipped zoo checkpoint (``probe/zoo/NAME``)
``demo:NAME``          a small *untrained* model of a fixed layout, seeded (used when no
                       zoo is installed, and by the tests)
``/some/dir``          a checkpoint directory written by ``model.save``
``hf:owner/name``      a Hugging Face hub id (``owner/name`` or a bare name such as ``gpt2``)
                       converted with ``probe.from_hf`` (network)
``/some/hf_dir``       a transformers ``save_pretrained`` folder, converted the same way
=====================  ==================================================================

Every failure is a :class:`probe.ProbeError` with a message for the page. Importing this module
needs no torch (the page's title and sidebar draw before it is imported): torch and the model
code are imported by the first model load.
"""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

import probe
from probe.errors import CheckpointError
from probe.loading import is_transformers_dir

if TYPE_CHECKING:
    import torch

#: untrained demo models: layout of each (d_model 64, byte tokenizer, seed 0)
DEMO_LAYOUTS: dict[str, list[str]] = {
    "transformer": ["attn", "attn"],
    "lstm": ["lstm", "lstm"],
    "qrnn-hybrid": ["qrnn", "qrnn", "attn", "ff"],
    "mamba": ["mamba", "mamba"],
}
#: the longest input (in tokens) the explorer analyses; longer texts get a message
MAX_TOKENS = 512
HF_HOST = ("huggingface.co", 443)
#: a hub id: ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``)
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")



def zoo_sources() -> list[str]:
    return [f"zoo:{name}" for name in probe.zoo_names()]


def demo_sources() -> list[str]:
    return [f"demo:{n}" for n in DEMO_LAYOUTS]


def default_sources() -> tuple[str, str]:
    """Model A and model B shown first: a transformer and a recurrent model from the zoo when it is
    installed (else the demo transformer and demo LSTM)."""
    zoo = zoo_sources()
    if len(zoo) >= 2:
        a = next((s for s in zoo if s.endswith("transformer")), zoo[0])
        preferred = ("zoo:qrnn-hybrid", "zoo:lstm", "zoo:mamba", "zoo:qrnn")
        b = next((s for s in preferred if s in zoo), next(s for s in zoo if s != a))
        return a, b
    return "demo:transformer", "demo:lstm"


def network_available(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub can be reached (``HF_HUB_OFFLINE=1`` means no)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(HF_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def _demo_model(name: str) -> probe.HookedLM:
    if name not in DEMO_LAYOUTS:
        raise CheckpointError(f"No demo model {name!r}; demos: {', '.join(DEMO_LAYOUTS)}.")
    import torch

    torch.manual_seed(0)
    cfg = probe.ModelConfig(d_model=64, layout=DEMO_LAYOUTS[name], name=f"demo:{name} (untrained)")
    return probe.HookedLM(cfg).eval()


def _hf_model(hub_id: str) -> probe.HookedLM:
    hub_id = hub_id.strip()
    if not HUB_ID.fullmatch(hub_id):
        raise CheckpointError(f"{hub_id!r} is not a Hugging Face id; write it as owner/name or name, "
                              "e.g. openai-community/gpt2 or gpt2.")
    if not network_available():
        raise CheckpointError(f"No network: the Hugging Face hub ({HF_HOST[0]}) cannot be reached, so "
                              f"{hub_id!r} cannot be downloaded. Pick a zoo model or a local checkpoint "
                              "directory instead.")
    try:
        from probe.io.hf import from_hf
    except ImportError as exc:
        raise CheckpointError("Loading Hugging Face models needs the converters and transformers: "
                              "pip install -e '.[hf]'.") from exc
    return from_hf(hub_id).eval()


def checkpoint_version(source: str) -> tuple:
    """What identifies the files behind ``source`` now: ``(name, mtime_ns, size, inode)`` of
    ``config.json`` and ``model.safetensors`` for a checkpoint directory or zoo model, ``()``
    for other sources. ``model.save`` replaces both files by renaming, so every save changes it."""
    if source.startswith(("demo:", "hf:")):
        return ()
    path = probe.loading.ZOO_DIR / source[4:] if source.startswith("zoo:") else os.path.expanduser(source)
    version = []
    for name in ("config.json", "model.safetensors"):
        try:
            st_ = os.stat(os.path.join(path, name))
        except OSError:
            continue
        version.append((name, st_.st_mtime_ns, st_.st_size, st_.st_ino))
    return tuple(version)


#: the checkpoint version each source was last loaded at (views cache results under the source alone)
_SEEN_VERSIONS: dict[str, tuple] = {}


def load_model(source: str) -> probe.HookedLM:
    """The model named by ``source`` (see the module docstring), in eval mode, cached under the
    source and its checkpoint files' version. When the files behind a source change (a checkpoint
    saved again), every cached view result is dropped too: those are keyed by the source string and
    would otherwise show the old model's numbers."""
    version = checkpoint_version(source)
    if _SEEN_VERSIONS.setdefault(source, version) != version:
        st.cache_data.clear()
        _SEEN_VERSIONS[source] = version
    return _cached_model(source, version)


@st.cache_resource(show_spinner=False, max_entries=8)  # the sidebar's spinner names the model
def _cached_model(source: str, version: tuple) -> probe.HookedLM:
    """The model behind ``source``; ``version`` is only part of the cache key."""
    import torch

    # Small models gain nothing from intra-op threads, and on a small shared machine threads wait on each
    # other (tens of times slower); PROBE_THREADS=N gives big (Hugging Face) models more.
    torch.set_num_threads(max(1, int(os.environ.get("PROBE_THREADS", "1"))))
    model = _load(source)
    prepare_kernels(model)
    return model


def _load(source: str) -> probe.HookedLM:
    if source.startswith("demo:"):
        return _demo_model(source[5:])
    if source.startswith("hf:"):
        return _hf_model(source[3:])
    if not source.strip():
        raise CheckpointError("Give a checkpoint directory (written by model.save).")
    if not source.startswith("zoo:"):
        path = os.path.expanduser(source)
        if not os.path.isdir(path):
            raise CheckpointError(f"No checkpoint directory at {source!r}: give a folder holding config.json and "
                                  "model.safetensors (written by model.save), or pick a zoo model.")
        if is_transformers_dir(path):
            return _converted(path)
    return probe.load(source).eval()


def prepare_kernels(model: probe.HookedLM) -> None:
    """Build the compiled CPU kernel a model's mixers use (Mamba: the selective scan) now, under a
    message: the first build takes about a minute and would otherwise stall the first view silently."""
    from probe.ops.native import native_enabled

    if "mamba" in model.cfg.layout and native_enabled():
        selective_scan_kernel()


@st.cache_resource(show_spinner="Preparing the Mamba CPU kernel: compiled once on this machine (about a minute "
                                "the first time, cached on disk afterwards)...")
def selective_scan_kernel() -> bool:
    """Whether the compiled selective-scan kernel is available (built on the first call of this server)."""
    from probe.ops.native import native

    return native("selective_scan") is not None


def _converted(path: str) -> probe.HookedLM:
    try:
        from probe.io.hf import from_hf
    except ImportError as exc:
        raise CheckpointError("Converting a transformers checkpoint needs transformers: "
                              "pip install -e '.[hf]'.") from exc
    return from_hf(path).eval()


def n_params(model: probe.HookedLM) -> int:
    return sum(p.numel() for p in model.parameters())


def trained_context(model: probe.HookedLM) -> int | None:
    """The window length (tokens) a model was trained on, from the ``card.json`` beside its checkpoint
    (``train.seq_len``; the zoo's: 256 bytes), or None when unknown."""
    path = getattr(model, "checkpoint_path", None)
    if not path:
        return None
    try:
        card = json.loads((Path(path) / "card.json").read_text())
    except (OSError, ValueError):
        return None
    seq_len = card.get("train", {}).get("seq_len") if isinstance(card, dict) else None
    return int(seq_len) if isinstance(seq_len, int) else None


def describe(model: probe.HookedLM) -> str:
    """One line: layout, width, parameters, and the context it was trained on when known."""
    cfg = model.cfg
    layout = ", ".join(cfg.layout)
    trained = trained_context(model)
    context = f" · trained on {trained}-token windows" if trained else ""
    return f"layout [{layout}] · d_model {cfg.d_model} · {n_params(model):,} parameters{context}"


def truncate_text(model: probe.HookedLM, text: str, n: int = MAX_TOKENS) -> str:
    """The longest start of ``text`` that ``model`` tokenises into at most ``n`` tokens (BOS included);
    a character split by the cut is dropped, never shown as a replacement character."""
    ids = model.to_tokens(text)[0].tolist()
    if len(ids) <= n:
        return text
    bos = len(ids) == len(model.tokenizer.encode(text)) + 1  # to_tokens prepended the BOS token
    body = ids[1:] if bos else ids
    k = n - 1 if bos else n
    while k > 0:
        cut = model.tokenizer.decode(body[:k]).rstrip("\ufffd")
        if model.to_tokens(cut).shape[1] <= n:
            return cut
        k -= 1
    return ""


def check_text(model: probe.HookedLM, text: str) -> torch.Tensor:
    """The text's tokens ``[1, pos]``, or a :class:`probe.InputError` naming the limit it breaks."""
    if not text.strip():
        raise probe.InputError("The text is empty: type some text or pick an example.")
    tokens = model.to_tokens(text)
    n = tokens.shape[1]
    if n > MAX_TOKENS:
        raise probe.InputError(f"The text is {n} tokens long; the explorer analyses at most {MAX_TOKENS} "
                               "tokens. Shorten it.")
    limit = model.cfg.context_limit
    if limit is not None and n > limit:
        raise probe.InputError(f"The text is {n} tokens long, longer than this model's context of {limit} "
                               "tokens. Shorten it.")
    return tokens
