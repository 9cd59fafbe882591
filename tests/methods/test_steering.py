"""Steering: CAA vectors, steer() equal to a hand-written hook, state steering that propagates
forward only, coefficient 0 as the identity, steered generation with the state carried."""
import pytest
import torch

from conftest import ARCHS, layouts, make_model, tokens
from probe.errors import InputError
from probe.methods import SteeringVector, steer, steering_vector
from probe.mixers import MIXERS

STATE_ARCHS = [a for a in ARCHS if any(MIXERS[m].recurrent for m in layouts()[a])]


def test_steering_vector_is_the_mean_difference_at_the_last_token():
    model = make_model("hybrid_qrnn_attn_ff")
    pos, neg = ["the keys are", "dogs"], ["the key is", "a dog"]
    v = steering_vector(model, pos, neg, site="resid_pre", layers=[1, 2])
    assert isinstance(v, SteeringVector) and v.layers == [1, 2] and v.n_pairs == 2
    for layer in (1, 2):
        name = f"blocks.{layer}.hook_resid_pre"
        diffs = []
        for a, b in zip(pos, neg):
            _, ca = model.run_with_cache(a, names_filter=[name])
            _, cb = model.run_with_cache(b, names_filter=[name])
            diffs.append(ca[name][0, -1] - cb[name][0, -1])
        torch.testing.assert_close(v.vectors[layer], torch.stack(diffs).mean(0))
    state = steering_vector(model, pos, neg, site="state")
    assert state.layers == [0, 1]  # attention and ff layers have no hook_state
    parts = state.split(0)  # the whole memory: the QRNN's c and its conv window, concatenated
    assert set(parts) == {"blocks.0.mixer.hook_state", "blocks.0.mixer.hook_state_conv"}
    assert parts["blocks.0.mixer.hook_state"].shape == (model.blocks[0].mixer.d_hidden,)
    assert state.vectors[0].shape == (sum(p.numel() for p in parts.values()),)
    single = steering_vector(model, pos, neg, site="blocks.0.mixer.hook_state")
    torch.testing.assert_close(single.vectors[0], parts["blocks.0.mixer.hook_state"])


def test_steer_equals_adding_the_vector_by_hand():
    model = make_model("hybrid_lstm_attn")
    toks = tokens(2, 9)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    res = steer(model, toks, v, [2.5], site="resid_pre", layers=[1], keep_logits=True)
    hand = model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", lambda t, hook: t + 2.5 * v)])
    torch.testing.assert_close(res.logits[0, 0], hand)
    some = steer(model, toks, v, [2.5], site="resid_pre", layers=[1], positions=[3, 5], keep_logits=True)

    def at(t, hook):
        t = t.clone()
        t[:, [3, 5]] += 2.5 * v
        return t

    torch.testing.assert_close(some.logits[0, 0], model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", at)]))
    ragged = [toks[0, :5], toks[1, :9]]  # "last": each input's own last token, lengths may differ
    last = steer(model, ragged, v, [2.5], site="resid_pre", layers=[1], positions="last", answer=65, contrast=66)
    hand = []
    for seq in ragged:
        def at_last(t, hook, n=len(seq)):
            t = t.clone()
            t[:, n - 1] += 2.5 * v
            return t

        with torch.no_grad():
            logits = model.run_with_hooks(seq[None], fwd_hooks=[("blocks.1.hook_resid_pre", at_last)])[0, -1]
        hand.append(float(logits[65] - logits[66]))
    torch.testing.assert_close(float(last.metric[0, 0]), sum(hand) / 2, atol=1e-5, rtol=1e-5)
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_coefficient_zero_is_the_identity(arch):
    model = make_model(arch)
    toks = tokens(2, 8)
    v = steering_vector(model, tokens(3, 8, seed=5), tokens(3, 8, seed=6))
    res = steer(model, toks, v, [0.0, 1.0], answer=65, contrast=66, keep_logits=True)
    with torch.no_grad():
        plain = model(toks)
    for i in range(len(res.layers)):
        assert torch.equal(res.logits[i, 0], plain)
        assert res.metric[i, 0] == res.baseline
    assert res.metric.shape == (model.cfg.n_layers, 2)
    frame = res.to_frame()
    assert len(frame) == 2 * model.cfg.n_layers and (frame[frame.coefficient == 0]["change"] == 0).all()
    assert len(res.figure().data) == model.cfg.n_layers


@pytest.mark.parametrize("arch", STATE_ARCHS)
def test_state_steering_changes_later_positions_only(arch):
    """Adding a direction to hook_state at position t: logits before t are untouched; from t on the
    recurrence carries the edit (state edits propagate)."""
    model = make_model(arch)
    toks = tokens(2, 10)
    v = steering_vector(model, tokens(4, 10, seed=7), tokens(4, 10, seed=8), site="state")
    t = 4
    res = steer(model, toks, v, [3.0], positions=[t], keep_logits=True)
    with torch.no_grad():
        plain = model(toks)
    for i, layer in enumerate(res.layers):
        steered = res.logits[i, 0]
        torch.testing.assert_close(steered[:, :t], plain[:, :t], atol=1e-5, rtol=1e-5)  # other kernel paths round differently
        assert not torch.allclose(steered[:, t + 1 :], plain[:, t + 1 :]), layer  # carried forward
    at_last = steer(model, toks, v, [3.0], positions="last", keep_logits=True)
    for i in range(len(at_last.layers)):
        torch.testing.assert_close(at_last.logits[i, 0][:, :-1], plain[:, :-1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(at_last.logits[i, 0][:, -1], plain[:, -1])


@pytest.mark.parametrize("arch", ["hybrid_qrnn_attn_ff", "mamba", "lstm"])
def test_steered_generation_carries_the_state(arch):
    model = make_model(arch)
    prompt = tokens(1, 6)
    v = steering_vector(model, tokens(2, 6, seed=3), tokens(2, 6, seed=4), site="state", layers=[0])
    kw = dict(coefficients=[2.0], max_new_tokens=6)
    greedy = steer(model, prompt, v, **kw)
    out = greedy.generated_tokens[0, 2.0]
    assert out.shape == (1, 12) and torch.equal(out[:, :6], prompt)
    # greedy generation with the state carried == argmax of the steered full recomputation
    full = steer(model, out, v, [2.0], keep_logits=True).logits[0, 0]
    assert torch.equal(full[:, 5:-1].argmax(-1), out[:, 6:])
    sampled = [steer(model, prompt, v, **kw, temperature=1.0, top_k=20, seed=11).generated_tokens[0, 2.0]
               for _ in range(2)]
    assert torch.equal(sampled[0], sampled[1])
    assert isinstance(greedy.generations[0, 2.0][0], str)


def test_errors():
    model = make_model("hybrid_qrnn_attn_ff")
    with pytest.raises(InputError, match="same number"):
        steering_vector(model, ["a", "b"], ["c"])
    with pytest.raises(InputError, match="equal length"):
        steering_vector(model, ["abc"], ["abcdef"], position=1)
    with pytest.raises(InputError, match="nothing to steer"):
        steering_vector(model, ["abc"], ["abd"], site="state", layers=[2])
    with pytest.raises(InputError, match="shape"):
        steer(model, "abc", torch.zeros(7), site="resid_pre", layers=[0], answer=65, contrast=66)
    v = steering_vector(model, ["abc"], ["abd"], site="state", layers=[0])
    with pytest.raises(InputError, match="layers"):
        steer(model, "abc", v, layers=[1], answer=65, contrast=66)
    with pytest.raises(InputError, match="Nothing to measure"):
        steer(model, "abc", v)
    with pytest.raises(InputError, match="equal length"):
        steer(model, ["abc", "abcdef"], v, max_new_tokens=2)
    with pytest.raises(InputError, match="NaN"):
        steer(model, "abc", torch.full((32,), float("nan")), site="resid_pre", layers=[0], answer=65, contrast=66)
