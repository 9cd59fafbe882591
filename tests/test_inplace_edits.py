"""A hook receives a tensor it owns (DESIGN, "State edits propagate").

For every hook point of every architecture in ``ARCHS`` (read from ``model.hook_dict``, so a new
mixer is covered with no edit here): writing position ``t`` of the hooked tensor in place means
exactly what returning an edited copy means, and changes nothing at positions before ``t``. An
overlapping strided view (a conv window built with ``unfold``) fails both: writing window ``t``
through it rewrites windows ``t-1``, ``t-2``.
"""
import pytest
import torch

from conftest import ARCHS, DEVICE, make_model, tokens

T = 13  # no other axis of any hooked tensor has this size, so the position axis is found by size
EDIT = 7


def position_axis(shape) -> int:
    """The position axis of a hooked tensor: the first axis after batch of size ``T`` (the query
    axis of an attention pattern ``[batch, head, q_pos, k_pos]``)."""
    return next(i for i in range(1, len(shape)) if shape[i] == T)


def halve_at(position: int, inplace: bool):
    """A hook multiplying the tensor by 0.5 at ``position``, in place or on a returned copy."""
    def edit(t, hook):
        target = t if inplace else t.clone()
        index = [slice(None)] * t.dim()
        index[position_axis(t.shape)] = position
        target[tuple(index)] = target[tuple(index)] * 0.5
        return None if inplace else target

    return edit


@pytest.mark.numerical  # positions before the edit: a recomputed path vs the clean one (the bug moved them 3e-3)
@pytest.mark.parametrize("arch", ARCHS)
def test_inplace_edit_equals_returned_copy_at_every_hook(arch):
    model = make_model(arch, device=DEVICE)
    toks = tokens(1, T, device=DEVICE)
    with torch.no_grad():
        clean = model(toks)
        unchanged = []
        for name in model.hook_dict:
            inplace = model.run_with_hooks(toks, fwd_hooks=[(name, halve_at(EDIT, True))])
            copied = model.run_with_hooks(toks, fwd_hooks=[(name, halve_at(EDIT, False))])
            assert torch.equal(inplace, copied), f"{name}: an in-place edit differs from the returned copy"
            torch.testing.assert_close(inplace[:, :EDIT], clean[:, :EDIT], atol=2e-5, rtol=1e-5,
                                       msg=lambda m, name=name: f"{name}: positions before the edit moved. {m}")
            if torch.equal(inplace, clean):
                unchanged.append(name)
    assert not unchanged, f"halving these hooks at position {EDIT} changed nothing: {unchanged}"
