"""memory_map sizes its quadratic maps before building them and refuses past ``memory_limit``."""
import time

import pytest
import torch

from conftest import ARCHS, make_model, tokens
from probe.errors import InputError
from probe.methods import implicit_attention, memory_map
from probe.methods.memory import memory_estimate


@pytest.mark.parametrize("arch", ARCHS)
def test_estimate_counts_the_maps_kept(arch):
    """The declared size of every unrolling (and of gradient influence) is exactly what the result
    keeps: ``[batch, head, T, T]`` per layer."""
    model = make_model(arch)
    toks = tokens(2, 7)
    result = memory_map(model, toks, with_state_sizes=False)
    sizes = memory_estimate(model, list(range(model.cfg.n_layers)), "auto", 2, 7)
    for lm in result.layers:
        kept = 0 if lm.matrix is None else lm.matrix.numel() * lm.matrix.element_size()
        assert sizes.get(lm.layer, (0, 0))[0] == kept, (lm.layer, lm.mixer)


def test_long_input_is_refused_before_any_work():
    model = make_model("mamba")
    long = tokens(1, 20_000)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"about \d+\.\d GiB.*memory_limit=4\.0 GiB.*shorter input.*layers="):
        memory_map(model, long)
    with pytest.raises(InputError, match="memory_limit"):
        implicit_attention(model, long, layer=0)
    assert time.perf_counter() - start < 2.0  # refused up front, not after building 20k x 20k maps


def test_memory_limit_is_the_boundary():
    model = make_model("hybrid_qrnn_attn_ff")
    toks = tokens(1, 16)
    sizes = memory_estimate(model, [0, 1, 2, 3], "auto", 1, 16)
    need = sum(k for k, _ in sizes.values()) + max(s for _, s in sizes.values())
    memory_map(model, toks, memory_limit=need, with_state_sizes=False)
    with pytest.raises(InputError, match="memory_limit"):
        memory_map(model, toks, memory_limit=need - 1, with_state_sizes=False)
    for bad in (0, -1.0, float("nan"), "4GB", True):
        with pytest.raises(InputError, match="memory_limit must be a positive number"):
            memory_map(model, toks, memory_limit=bad)
