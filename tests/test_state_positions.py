"""``run_with_cache(state_positions=...)``: every recurrent mixer's state hooks fire with the asked
positions only, taken from its plain forward run in segments (probe.mixers.state_positions); the states
equal the full capture's, edits at the asked positions propagate as edits of the full tensor do, and
the order, repeats, negative indices and slices of the request are honoured."""
import pytest
import torch

from conftest import make_model, recurrent_archs, tokens
from probe.errors import InputError
from probe.mixers import state_positions as positions_module
from probe.mixers.state_positions import MAX_SEGMENTS, StatesAtPositions

ARCHS = recurrent_archs()
T = 20


def is_state(name: str) -> bool:
    return "hook_state" in name


def close(a, b, scale: float = 1.0):
    """Equal up to float32 rounding of a regrouped sum (the segments add the recurrence in another order)."""
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * scale)


@pytest.fixture(autouse=True)
def pieces(state_pieces):
    """The tiny models' states are small: run the pieces anyway (the tests of the whole run opt out)."""


@pytest.fixture
def segments_only(monkeypatch):
    """Fail any whole-sequence fallback: the asked states must come from the segmented forward."""
    def refuse(*args, **kwargs):
        raise AssertionError("the whole-sequence path ran")
    monkeypatch.setattr(StatesAtPositions, "_whole", refuse)


@pytest.mark.numerical
@pytest.mark.parametrize("arch", ARCHS)
def test_states_at_positions_equal_the_full_capture(arch, segments_only):
    model = make_model(arch)
    toks = tokens(2, T)
    asked = [4, 11, -1]
    with torch.no_grad():
        logits_full, full = model.run_with_cache(toks, names_filter=is_state)
        logits, part = model.run_with_cache(toks, names_filter=is_state, state_positions=asked)
    close(logits, logits_full)
    assert set(part.keys()) == set(full.keys()) and part.keys()
    for name in full.keys():
        assert part[name].shape == (2, 3, *full[name].shape[2:]), name
        close(part[name].float(), full[name][:, [4, 11, T - 1]].float(), scale=1 + full[name].abs().max().item())


@pytest.mark.numerical
@pytest.mark.parametrize("arch", ARCHS)
def test_an_edit_at_an_asked_position_propagates_as_on_the_full_tensor(arch, segments_only):
    """Scaling every state at position 7 (and zeroing one element at 13) under state_positions gives the
    logits of the same edit made on the full [batch, pos, ...] tensors; in place and returned alike."""
    model = make_model(arch)
    toks = tokens(2, T)

    def edit_asked(value, hook):
        value[:, 0] *= 0.5
        value[:, 1].view(value.shape[0], -1)[:, 0] = 0.0

    def edit_full(value, hook):
        value = value.clone()
        value[:, 7] *= 0.5
        value[:, 13].view(value.shape[0], -1)[:, 0] = 0.0
        return value

    with torch.no_grad():
        plain = model(toks)
        reference = model.run_with_hooks(toks, fwd_hooks=[(is_state, edit_full)])
        with positions_module.states_at([7, 13]):
            edited = model.run_with_hooks(toks, fwd_hooks=[(is_state, edit_asked)])
    assert (reference - plain).abs().max() > 1e-3  # the edit matters
    close(edited, reference)
    torch.testing.assert_close(edited[:, :7], plain[:, :7], rtol=2e-5, atol=2e-5)  # earlier positions untouched


@pytest.mark.parametrize("arch", ["mamba", "lstm", "rwkv"])
def test_order_repeats_negatives_and_slices(arch):
    model = make_model(arch)
    toks = tokens(1, T)
    name = "blocks.1.mixer.hook_state" if arch != "rwkv" else "blocks.1.mixer.hook_state_num"
    with torch.no_grad():
        _, full = model.run_with_cache(toks, names_filter=name)
        for asked, index in (([9, 2, 9], [9, 2, 9]), ([-1, 0], [T - 1, 0]), (slice(3, None, 5), [3, 8, 13, 18]),
                             (5, [5]), (torch.tensor([6, 1]), [6, 1])):
            _, part = model.run_with_cache(toks, names_filter=name, state_positions=asked)
            close(part[name], full[name][:, index], scale=1 + full[name].abs().max().item())


def test_repeated_positions_take_the_later_entrys_edit():
    model = make_model("qrnn")
    toks = tokens(1, T)
    name = "blocks.0.mixer.hook_state"

    def edit_twice(value, hook):
        value[:, 0] = 1.0   # position 6, overridden by ...
        value[:, 1] = -2.0  # ... the later entry for position 6

    def edit_once(value, hook):
        value[:, 6] = -2.0

    with torch.no_grad():
        with positions_module.states_at([6, 6]):
            twice = model.run_with_hooks(toks, fwd_hooks=[(name, edit_twice)])
        once = model.run_with_hooks(toks, fwd_hooks=[(name, edit_once)])
    close(twice, once)


@pytest.mark.parametrize("arch", ["mamba2", "gdn"])
def test_many_positions_and_inner_hooks_take_the_whole_run(arch, monkeypatch):
    """More than MAX_SEGMENTS positions, or a hook inside the mixer (its gated norm's hook_scale, which
    must fire once), read the asked states from the whole-sequence run; edits still propagate."""
    model = make_model(arch)
    toks = tokens(1, T)
    monkeypatch.setattr(positions_module, "MAX_SEGMENTS", 4)
    many = list(range(0, T, 3))
    name = "blocks.0.mixer.hook_state"
    with torch.no_grad():
        _, full = model.run_with_cache(toks)
        _, part = model.run_with_cache(toks, state_positions=many)  # every hook, the norms' included
        _, few = model.run_with_cache(toks, names_filter=name, state_positions=many)
    for name_ in full.keys():
        if is_state(name_):
            torch.testing.assert_close(part[name_], full[name_][:, many])
        else:
            assert part[name_].shape == full[name_].shape  # fired once, over every position
    torch.testing.assert_close(few[name], full[name][:, many])

    def edit_full(value, hook):
        value[:, 9] = 0.0

    def edit_asked(value, hook):
        value[:, many.index(9)] = 0.0

    with torch.no_grad():
        reference = model.run_with_hooks(toks, fwd_hooks=[(name, edit_full)])
        with positions_module.states_at(many):
            edited = model.run_with_hooks(toks, fwd_hooks=[(name, edit_asked)])
    torch.testing.assert_close(edited, reference)
    assert MAX_SEGMENTS >= 8  # the module's own bound covers the usual handful of positions


def test_bad_positions_are_named():
    model = make_model("mamba")
    toks = tokens(1, 6)
    for bad in (10, [0, -7]):
        with pytest.raises(InputError, match="does not index the 6 positions"):
            model.run_with_cache(toks, state_positions=bad)
    with pytest.raises(InputError, match="selects none of the 6 positions"):
        model.run_with_cache(toks, state_positions=slice(7, None))
    for bad in ([1.5], ["a"], True, "3", torch.tensor([[1, 2]]), torch.tensor([0.5])):
        with pytest.raises(InputError, match="does not index positions"):  # refused before the forward
            model.run_with_cache(toks, names_filter="hook_embed", state_positions=bad)
    with pytest.raises(InputError, match="is empty"):
        model.run_with_cache(toks, state_positions=[])


def test_gradients_reach_an_asked_state():
    """d logits / d state at an asked position (a zero delta marked as an edit) equals the derivative
    through the same delta placed on the full tensor."""
    from probe.mixers.edits import mark_forced
    model = make_model("mamba")
    toks = tokens(1, T)
    name = "blocks.0.mixer.hook_state"
    grads = []
    for asked in (True, False):
        delta = torch.zeros(1, *model.blocks[0].mixer.state_shapes()["state"], requires_grad=True)

        def add(value, hook):
            at = 0 if asked else 8
            mask = torch.zeros(value.shape[:2], dtype=torch.bool)
            mask[:, at] = True
            added = value + torch.where(mask.view(*mask.shape, 1, 1), delta.unsqueeze(1), 0.0)
            return mark_forced(added, mask.view(*mask.shape, 1, 1))

        if asked:
            with positions_module.states_at([8]):
                out = model.run_with_hooks(toks, fwd_hooks=[(name, add)])
        else:
            out = model.run_with_hooks(toks, fwd_hooks=[(name, add)])
        out[0, -1, 3].backward()
        grads.append(delta.grad.clone())
    assert grads[1].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_small_states_are_read_from_the_whole_run(monkeypatch):
    """Below WHOLE_RUN_BYTES of states (every position, batch included) the whole-sequence run is used,
    above it the pieces; both give the asked states."""
    model = make_model("mamba")
    toks = tokens(1, T)
    name = "blocks.0.mixer.hook_state"
    whole_bytes = T * model.blocks[0].mixer.initial_state(1)["state"].numel() * 4
    ran = []
    for path in ("_whole", "_segments"):
        original = getattr(StatesAtPositions, path)
        monkeypatch.setattr(StatesAtPositions, path,
                            lambda self, *a, _f=original, _p=path: ran.append(_p) or _f(self, *a))
    with torch.no_grad():
        _, full = model.run_with_cache(toks, names_filter=name)
        for limit, expected in ((whole_bytes, "_whole"), (whole_bytes - 1, "_segments")):
            monkeypatch.setattr(positions_module, "WHOLE_RUN_BYTES", limit)
            ran.clear()
            _, part = model.run_with_cache(toks, names_filter=name, state_positions=[5, 12])
            assert ran == [expected]
            close(part[name], full[name][:, [5, 12]])


def _edit_rows(rows):
    def edit(value, hook):
        value[:, rows] *= 0.5
    return edit


@pytest.mark.numerical
@pytest.mark.parametrize("arch", ARCHS)
def test_an_edit_reruns_in_pieces_around_the_edited_positions(arch, monkeypatch):
    """An edit of the full state tensors at positions 4 and 11 reruns each layer in pieces around them
    (the plain forward between, each edited position alone with its edit forced) and gives the logits
    of the whole-sequence forced rerun (MAX_SEGMENTS 0 forces that one)."""
    model = make_model(arch)
    toks = tokens(2, T)
    ran = []
    original = positions_module.run_in_pieces
    monkeypatch.setattr(positions_module, "run_in_pieces", lambda *a, **k: ran.append(1) or original(*a, **k))
    with torch.no_grad():
        plain = model(toks)
        pieces = model.run_with_hooks(toks, fwd_hooks=[(is_state, _edit_rows([4, 11]))])
        assert ran  # the rerun went through the pieces
        monkeypatch.setattr(positions_module, "MAX_SEGMENTS", 0)
        ran.clear()
        whole = model.run_with_hooks(toks, fwd_hooks=[(is_state, _edit_rows([4, 11]))])
        assert not ran
    assert (whole - plain).abs().max() > 1e-3
    close(pieces, whole)


def test_a_state_edit_and_a_later_gate_edit_rerun_together():
    """QRNN: its conv window edited at 5 (pieces around 5) and then its forget gate at 9 (a forcing cut
    into those pieces) give the whole forced rerun's logits; an edit at every position takes the whole run."""
    model = make_model("qrnn")
    toks = tokens(2, T)
    hooks = [("blocks.0.mixer.hook_state_conv", _edit_rows([5])), ("blocks.0.mixer.hook_forget", _edit_rows([9])),
             ("blocks.1.mixer.hook_state", _edit_rows(list(range(T))))]
    with torch.no_grad():
        pieces = model.run_with_hooks(toks, fwd_hooks=hooks)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(positions_module, "MAX_SEGMENTS", 0)
            whole = model.run_with_hooks(toks, fwd_hooks=hooks)
    close(pieces, whole)


def test_small_edited_states_rerun_whole(monkeypatch):
    """Edited states that take at most WHOLE_RUN_BYTES over every position rerun in one forced run (fewer
    calls than the pieces for a tiny model); above it, the pieces. Both give the same logits."""
    model = make_model("mamba")
    toks = tokens(1, T)
    ran = []
    original = positions_module.run_in_pieces
    monkeypatch.setattr(positions_module, "run_in_pieces", lambda *a, **k: ran.append(1) or original(*a, **k))
    edit = [("blocks.0.mixer.hook_state", _edit_rows([6]))]
    state_bytes = T * model.blocks[0].mixer.initial_state(1)["state"].numel() * 4
    outs = []
    with torch.no_grad():
        for limit, pieces in ((state_bytes, False), (state_bytes - 1, True)):
            monkeypatch.setattr(positions_module, "WHOLE_RUN_BYTES", limit)
            ran.clear()
            outs.append(model.run_with_hooks(toks, fwd_hooks=edit))
            assert bool(ran) == pieces
    close(outs[0], outs[1])
