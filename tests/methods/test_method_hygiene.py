"""Every public method leaves the model as it found it, also when a hook raises in the middle of it.

For every method of ``probe.methods`` (and the model's own entry points) on a few architectures:

1. a normal run changes nothing: every parameter and buffer (non-persistent ones too) hashes the
   same, with the same dtype, shape and ``requires_grad``; no gradient is left on a parameter, no
   hook and no hook context is left behind, grad mode and the training flag are restored;
2. a user hook on *every* hook point counts the firings ``n`` of a normal run (the method must keep
   the user's hooks attached, and add none that outlive it);
3. the run is repeated with that hook raising at firing ``n // 2`` (in the middle: inside a forward
   pass, with the method's own hooks attached, part of its passes done) and at firing ``n`` (its
   last forward pass): the error reaches the caller and (1) holds again.
"""
from __future__ import annotations

import pytest
import torch

from conftest import make_model, tokens
from method_checks import assert_clean, tensor_hashes
from probe.methods import (
    TunedLens, activation_patching, attribution_patching, collect_activations, compare_lenses,
    direct_logit_attribution, gradient_influence, gradient_x_input, implicit, implicit_attention,
    integrated_gradients, logit_lens, memory_map, state_sizes, steer, steering_vector,
)
from probe.methods.lens import lens_table

ARCHS_UNDER_TEST = ["qrnn", "lstm", "hybrid_qrnn_attn_ff"]
T, C = tokens(1, 6), tokens(1, 6, seed=2)
TEXT = "def f(x):\n    return x + 1\n" * 3


def _linear_layer(model) -> int | None:
    """A layer with an exact implicit attention (None when the model has none)."""
    return next((i for i, m in enumerate(model.cfg.layout) if m in implicit.REGISTRY), None)


def _state_layer(model) -> int | None:
    return next((i for i in range(model.cfg.n_layers) if model.state_hook_names()
                 and any(n.startswith(f"blocks.{i}.") for n in model.state_hook_names())), None)


def _implicit(model):
    layer = _linear_layer(model)
    if layer is None:
        pytest.skip("no layer with an exact implicit attention")
    return implicit_attention(model, T, layer)


def _steer_state(model):
    if _state_layer(model) is None:
        pytest.skip("no recurrent state to steer")
    v = steering_vector(model, ["ab c"], ["ab d"], site="state")
    return steer(model, "abc", v, [-1.0, 2.0], answer=1, contrast=2, positions="last")


def _probes(model):
    seqs = [tokens(1, 8, seed=s)[0].tolist() for s in range(3)]
    return collect_activations(model, seqs, {"y": [0, 1, 0]}, sites=["resid_post", "state"], batch_size=2, max_dim=8)


METHODS = {
    "forward": lambda m: m(T),
    "run_with_cache": lambda m: m.run_with_cache(T),
    "generate": lambda m: m.generate(T, max_new_tokens=3, temperature=1.0, seed=0),
    "logit_lens": lambda m: logit_lens(m, T),
    "tuned_lens.fit": lambda m: TunedLens(m).fit(m, TEXT, steps=2, batch_size=2, seq_len=8),
    "tuned_lens.run": lambda m: TunedLens(m).run(m, T),
    "compare_lenses": lambda m: compare_lenses(m, TunedLens(m), TEXT, seq_len=8, max_windows=2),
    "lens_table": lambda m: lens_table({"m": m}, TEXT, TEXT, steps=1, batch_size=2, seq_len=8, max_windows=2),
    "direct_logit_attribution": lambda m: direct_logit_attribution(m, T),
    "gradient_x_input": lambda m: gradient_x_input(m, T, target=4),
    "integrated_gradients": lambda m: integrated_gradients(m, T, steps=4, chunk=4),
    "memory_map": lambda m: memory_map(m, T),
    "implicit_attention": _implicit,
    "gradient_influence": lambda m: gradient_influence(m, T, m.cfg.n_layers - 1, probes=3),
    "state_sizes": lambda m: state_sizes(m, T),
    "activation_patching": lambda m: activation_patching(m, T, C, answer=1, contrast=2),
    "attribution_patching": lambda m: attribution_patching(m, T, C, answer=1, contrast=2),
    "collect_activations": _probes,
    "steering_vector": lambda m: steering_vector(m, ["ab c"], ["ab d"]),
    "steer": lambda m: steer(m, "abc", torch.ones(m.cfg.d_model), [0.0, 1.0], site="resid_pre", layers=[0],
                             answer=1, contrast=2, max_new_tokens=2),
    "steer (state)": _steer_state,
}


class Tripped(Exception):
    pass


class Tripwire:
    """A user hook on every hook point of ``model``: counts firings; with ``at``, raises on that firing."""

    def __init__(self, model, at: int | None = None):
        self.count, self.at = 0, at
        self.handles = [(hp, hp.add_hook(self)) for hp in model.hook_dict.values()]

    def __call__(self, t, hook):
        self.count += 1
        if self.count == self.at:
            raise Tripped(f"raised at firing {self.at}, in {hook.name}")

    def remove(self) -> None:
        for hp, handle in self.handles:
            handle.hook.remove()
            hp.fwd_hooks = [h for h in hp.fwd_hooks if h is not handle]


@pytest.mark.parametrize("arch", ARCHS_UNDER_TEST)
@pytest.mark.parametrize("method", list(METHODS))
def test_method_leaves_the_model_clean_even_when_a_hook_raises(method, arch):
    model = make_model(arch)
    run = METHODS[method]
    before = tensor_hashes(model)
    run(model)
    assert_clean(model, before)

    wire = Tripwire(model)
    try:
        run(model)
        assert_clean(model, before, kept_hooks=len(model.hook_dict))  # the user's hooks are still there
    finally:
        wire.remove()
    n = wire.count
    assert n > 0
    for at in sorted({max(1, n // 2), n}):
        wire = Tripwire(model, at=at)
        try:
            with pytest.raises(Tripped, match=f"firing {at}"):
                run(model)
            assert_clean(model, before, kept_hooks=len(model.hook_dict))
        finally:
            wire.remove()
        assert_clean(model, before)


def test_the_hash_sees_every_kind_of_change():
    """The checks above are only as good as the hash: a weight, a flag, a non-persistent buffer (no
    registered mixer has one today; a future one, e.g. a cached RoPE table, is hashed too)."""
    changes = [
        lambda m: m.blocks[0].mixer.W_conv.data.view(-1)[7].add_(1e-7),
        lambda m: m.blocks[1].ln1.w.requires_grad_(False),
        lambda m: m.train(),
        lambda m: m.blocks[2].mixer.get_buffer("table").add_(1.0),
    ]
    for change in changes:
        m = make_model("hybrid_qrnn_attn_ff")
        m.blocks[2].mixer.register_buffer("table", torch.zeros(3), persistent=False)
        before = tensor_hashes(m)
        assert "buffer:blocks.2.mixer.table" in before
        with torch.no_grad():
            change(m)
        with pytest.raises(AssertionError, match="the model changed"):
            assert_clean(m, before)
