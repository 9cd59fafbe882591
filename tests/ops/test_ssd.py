"""probe.ops.ssd.segment_sums, the decay sums shared by the SSD scan and the implicit attention maps:
every entry against its definition, both fills above the diagonal, and exact zeros of exp."""
import math

import torch

from probe.methods.implicit import segment_sums as implicit_segment_sums
from probe.ops.ssd import segment_sums


def test_segment_sums_are_the_definition_with_either_fill():
    x = torch.tensor([[0.5, -1.0, 2.0, -math.inf, 0.25], [1.0, 2.0, 3.0, 4.0, 5.0]], dtype=torch.float64)
    S, S0 = segment_sums(x), segment_sums(x, above=0.0)
    for t in range(5):
        for s in range(5):
            want = x[:, s + 1 : t + 1].sum(-1) if s <= t else None
            if want is None:
                assert (S[:, t, s] == -math.inf).all() and (S0[:, t, s] == 0).all()
            else:
                assert torch.equal(S[:, t, s], want) and torch.equal(S0[:, t, s], want)
    assert torch.equal(implicit_segment_sums(x), S0)  # the implicit maps share the one kernel
    assert torch.equal(torch.exp(S).triu(1), torch.zeros(2, 5, 5, dtype=torch.float64))
