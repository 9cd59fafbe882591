"""The checks every converter shares (probe.io.convert_common): no source tensor dropped, a tied head
equal to the embedding, per-layer kinds checked against the config, and only a causal LM converted."""
from types import SimpleNamespace

import pytest
import torch

from probe.errors import CheckpointError, ConfigError
from probe.io.convert_common import causal_lm_tensors, check_all_used, layer_kinds, sources


def _sd(*names):
    return {name: torch.full((2,), float(i)) for i, name in enumerate(names)}


def test_check_all_used_names_what_would_be_dropped():
    sd = _sd("model.embed_tokens.weight", *(f"model.layers.{i}.extra" for i in range(7)))
    check_all_used(sd, sd, "Toy")
    with pytest.raises(CheckpointError, match=r"Toy checkpoint has tensors the conversion does not map: "
                                              r"\['model.layers.0.extra', .*'model.layers.4.extra'\] \.\.\."):
        check_all_used(sd, {"model.embed_tokens.weight"}, "Toy")
    with pytest.raises(CheckpointError, match=r"\['model.layers.6.extra'\];"):
        check_all_used(sd, set(sd) - {"model.layers.6.extra"}, "Toy")


def test_a_tied_head_must_equal_the_embedding_and_then_counts_as_used():
    sd = {"emb": torch.ones(3, 2), "lm_head.weight": torch.ones(3, 2)}
    check_all_used(sd, {"emb"}, "Toy", tied=True, embed="emb")
    with pytest.raises(CheckpointError, match="does not map: \\['lm_head.weight'\\]"):  # untied: W_U must map it
        check_all_used(sd, {"emb"}, "Toy", embed="emb")
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    with pytest.raises(CheckpointError, match="Toy config says tie_word_embeddings=True but lm_head.weight differs "
                                              "from emb; set tie_word_embeddings=False"):
        check_all_used(sd, {"emb"}, "Toy", tied=True, embed="emb")


def test_sources_splits_folded_names():
    weights = {"W_E": ("a + b", torch.zeros(1)), "ln.w": ("c", torch.zeros(1))}
    assert sources(weights) == {"a", "b", "c"}


def test_layer_kinds_translates_and_refuses_what_it_cannot():
    table = {"linear_attention": "gdn", "full_attention": "attn"}
    c = SimpleNamespace(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"])
    assert layer_kinds(c, "layer_types", table, "Toy") == ["gdn", "attn"]
    c.layer_types = ["linear_attention"]
    with pytest.raises(ConfigError, match="Toy config has 1 layer_types for 2 layers"):
        layer_kinds(c, "layer_types", table, "Toy")
    c.layer_types = ["linear_attention", "sliding_attention"]
    with pytest.raises(ConfigError, match="layer 1 is 'sliding_attention'; probe converts 'linear_attention' and "
                                          "'full_attention'"):
        layer_kinds(c, "layer_types", table, "Toy")


def test_causal_lm_tensors_refuses_other_objects_and_bare_models():
    class Bare(torch.nn.Module):  # a backbone without the ForCausalLM wrapper: no model.embed_tokens
        config = SimpleNamespace()

        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(4, 2)

    with pytest.raises(ConfigError, match="toy_from_hf expects a transformers ToyForCausalLM, got object"):
        causal_lm_tensors(object(), "toy_from_hf", "Toy")
    with pytest.raises(ConfigError, match="This Bare has no model.embed_tokens; pass a ToyForCausalLM"):
        causal_lm_tensors(Bare(), "toy_from_hf", "Toy")
    assert set(causal_lm_tensors(Bare(), "f", "Toy", embed="embed_tokens.weight")) == {"embed_tokens.weight"}
