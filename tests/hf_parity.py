"""Parity of a converted model with the transformers model it came from, as the converter tests check it
(tests/io/test_<family>.py, tests/mixers/test_mamba2.py): the reference run without gradients, logits and
final states of one whole-sequence pass, a one-token decode from a carried state, greedy generation, and
``probe.from_hf`` of the model object and of its ``save_pretrained`` folder.

Tolerances are on the max abs difference of logits ``[batch, pos, vocab]``; the state comparisons take
transformers' cache layers (``recurrent_states`` / ``conv_states``, ``keys`` / ``values``).
"""
from __future__ import annotations

import warnings

import torch

import probe


def hf_tokens(vocab: int, T: int, seed: int = 0, batch: int = 2, low: int = 0) -> torch.Tensor:
    """``[batch, T]`` token ids drawn uniformly from ``[low, vocab)``, fixed by ``seed``."""
    return torch.randint(low, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


def hf_run(hf, toks: torch.Tensor, **kw):
    """``hf(toks, **kw)`` without gradients, its warnings silenced (transformers warns that it falls back
    to its PyTorch path when the fast kernels are missing)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return hf(toks, **kw)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def assert_logits_match(model, hf, toks: torch.Tensor, tol: float = 1e-4, min_logit: float = 0.1):
    """One pass over ``toks``: probe's logits within ``tol`` of transformers', whose largest logit exceeds
    ``min_logit`` (a model whose logits all vanish would match anything).

    Returns ``(probe's final states, transformers' cache)`` for the state comparisons."""
    ref = hf_run(hf, toks, use_cache=True)
    with torch.no_grad():
        ours, states = model(toks, return_states=True)
    assert float(ref.logits.abs().max()) > min_logit
    diff = _max_diff(ours, ref.logits)
    assert diff < tol, diff
    return states, ref.cache


def assert_decode_matches(model, hf, toks: torch.Tensor, tol: float = 1e-4, **step_kw):
    """transformers' one-token step over ``toks[:, -1:]`` from its cache of ``toks[:, :-1]`` (``step_kw``
    passed to that step) against probe carrying its own states: the next logits within ``tol``.

    Returns ``(probe's states after the step, transformers' cache after it)``."""
    prefix = hf_run(hf, toks[:, :-1], use_cache=True)
    step = hf_run(hf, toks[:, -1:], cache=prefix.cache, use_cache=True, **step_kw)
    with torch.no_grad():
        _, states = model(toks[:, :-1], return_states=True)
        ours, states = model(toks[:, -1:], states=states, return_states=True)
    diff = _max_diff(ours, step.logits)
    assert diff < tol, diff
    return states, step.cache


def assert_greedy_generation_matches(model, hf, prompt: torch.Tensor, max_new_tokens: int = 8, **hf_kw) -> None:
    """probe's greedy continuation of ``prompt`` is token for token transformers' (``hf_kw`` passed to its
    ``generate``)."""
    ours = model.generate(prompt, max_new_tokens=max_new_tokens, return_type="tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, **hf_kw)
    assert torch.equal(ours, ref)


def assert_from_hf_matches(hf, folder, toks: torch.Tensor, layout: list[str], tol: float = 1e-4):
    """``probe.from_hf`` of ``hf`` and of the folder ``hf.save_pretrained(folder)`` writes: each has
    ``layout`` and logits within ``tol`` of transformers'. Returns the model loaded from the folder."""
    ref = hf_run(hf, toks).logits
    hf.save_pretrained(folder)
    for source in (hf, str(folder)):
        model = probe.from_hf(source, tokenizer="byte")
        assert model.cfg.layout == layout
        with torch.no_grad():
            diff = _max_diff(model(toks), ref)
        assert diff < tol, (source, diff)
    return model


def assert_recurrent_state_close(mine: dict, layer, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """probe's ``state`` and ``state_conv`` ``[b, k - 1, channels]`` against a transformers cache layer:
    ``recurrent_states[0]`` and the last ``k - 1`` inputs of ``conv_states[0]`` ``[b, channels, k]``."""
    torch.testing.assert_close(mine["state"], layer.recurrent_states[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(mine["state_conv"], layer.conv_states[0][..., 1:].transpose(1, 2), rtol=rtol, atol=atol)


def assert_kv_close(mine: dict, layer, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """probe's ``k`` / ``v`` ``[b, pos, kv heads, d_head]`` against transformers' cached keys / values
    ``[b, kv heads, pos, d_head]`` (keys as cached: normed and rotated where the model does so)."""
    torch.testing.assert_close(mine["k"], layer.keys.transpose(1, 2), rtol=rtol, atol=atol)
    torch.testing.assert_close(mine["v"], layer.values.transpose(1, 2), rtol=rtol, atol=atol)
