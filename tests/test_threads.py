"""Hooked runs on one model from many threads: each run sees only its own hooks and caches.

Hooks live on the model's shared ``HookPoint`` modules, so without serialisation two threads
with different hooks (or two ``run_with_cache`` calls) would read and edit each other's
activations. The explorer serves every browser session from one cached model in threads.
"""
from __future__ import annotations

import threading

import pytest
import torch

import probe
from tests.conftest import make_model

THREADS, RUNS = 8, 10


def _run_threads(work):
    """``work(i, j)`` for thread i and run j on THREADS threads; returns {(i, j): result}."""
    results, errors = {}, []
    start = threading.Barrier(THREADS)

    def worker(i):
        try:
            start.wait()
            for j in range(RUNS):
                results[(i, j)] = work(i, j)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_run_with_hooks_from_threads_equals_serial():
    model = make_model("hybrid_qrnn_attn_ff")
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))

    def work(i, j):
        def add(t, hook):
            return t + (i + 1) * 0.5

        return model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mixer.hook_state", add)])

    serial = {(i, j): work(i, j) for i in range(THREADS) for j in range(RUNS)}
    threaded = _run_threads(work)
    wrong = [k for k in serial if not torch.equal(serial[k], threaded[k])]
    assert not wrong, f"{len(wrong)} of {len(serial)} threaded results differ from the serial ones"
    assert not torch.equal(serial[(0, 0)], serial[(1, 0)])  # the hooks do change the output


def test_run_with_cache_from_threads_keeps_caches_apart():
    model = make_model("mamba")
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randint(0, 256, (1, 10), generator=gen) for _ in range(THREADS)]

    def work(i, j):
        _, cache = model.run_with_cache(inputs[i], names_filter=["blocks.0.hook_resid_post",
                                                                  "blocks.1.mixer.hook_state"])
        return {k: v.clone() for k, v in cache.items()}

    serial = {(i, 0): work(i, 0) for i in range(THREADS)}
    threaded = _run_threads(work)
    wrong = [k for k, c in threaded.items() if any(not torch.equal(c[n], serial[(k[0], 0)][n]) for n in c)]
    assert not wrong, f"{len(wrong)} of {len(threaded)} caches hold another thread's activations"


def test_plain_forward_is_not_hooked_by_another_threads_hooks():
    model = make_model("qrnn")
    tokens = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(2))
    clean = model(tokens)

    def work(i, j):
        if i % 2:
            return model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: t * 3)])
        return model(tokens)

    threaded = _run_threads(work)
    assert all(torch.equal(threaded[(i, j)], clean) for i in range(0, THREADS, 2) for j in range(RUNS))


def test_hook_may_run_the_model_again_in_its_own_thread():
    """The lock is re-entrant: a hook that calls the model (a nested hooked run) does not deadlock."""
    model = make_model("qrnn")
    tokens = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(3))
    inner = {}

    def nested(t, hook):  # a second forward that stops before this hook (re-reaching it is refused)
        inner["x"] = model(tokens, stop_at_layer=1)

    done = threading.Event()

    def go():
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", nested)])
        done.set()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout=60)
    assert done.is_set(), "a hook that runs the model again deadlocked"
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    assert torch.equal(inner["x"], cache["blocks.0.hook_resid_post"])  # block 0's output is block 1's input


def test_model_with_its_lock_deep_copies():
    import copy

    model = make_model("qrnn")
    twin = copy.deepcopy(model)
    tokens = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(4))
    assert torch.equal(model(tokens), twin(tokens))
    assert twin._run_lock is not model._run_lock


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    """A TransformerLens TransformerBridge of a tiny random GPT-2, built offline (tests/tl_bridge.py)."""
    pytest.importorskip("transformers")
    from tests.tl_bridge import boot, tiny_gpt2

    d = tmp_path_factory.mktemp("tiny-gpt2")
    return boot(d, tiny_gpt2(d)[0])


def test_bridge_adapter_run_with_hooks_from_threads_equals_serial(bridge):
    """The adapter's hooks live on the bridge's shared HookPoints: two adapters over one bridge share
    its lock, so threads using either see only their own hooks."""
    adapters = [probe.from_transformer_lens(bridge) for _ in range(2)]
    tokens = torch.randint(0, 99, (1, 12), generator=torch.Generator().manual_seed(0))

    def work(i, j):
        def add(t, hook):
            return t + (i + 1) * 0.5

        return adapters[i % 2].run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", add)])

    serial = {(i, j): work(i, j) for i in range(THREADS) for j in range(RUNS)}
    threaded = _run_threads(work)
    wrong = [k for k in serial if not torch.equal(serial[k], threaded[k])]
    assert not wrong, f"{len(wrong)} of {len(serial)} threaded results differ from the serial ones"
    assert not torch.equal(serial[(0, 0)], serial[(1, 0)])  # the hooks do change the output


def test_bridge_adapter_run_with_cache_from_threads_keeps_caches_apart(bridge):
    model = probe.from_transformer_lens(bridge)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randint(0, 99, (1, 10), generator=gen) for _ in range(THREADS)]

    def work(i, j):
        if j % 2:  # plain forwards in between: not hooked by another thread's cache hooks either
            return {"logits": model(inputs[i])}
        _, cache = model.run_with_cache(inputs[i], names_filter=["blocks.0.hook_resid_post", "ln_final.hook_scale"])
        return {k: v.clone() for k, v in cache.items()}

    serial = {(i, j): work(i, j) for i in range(THREADS) for j in range(2)}
    threaded = _run_threads(work)
    wrong = [k for k, c in threaded.items() if any(not torch.equal(c[n], serial[(k[0], k[1] % 2)][n]) for n in c)]
    assert not wrong, f"{len(wrong)} of {len(threaded)} results hold another thread's activations or hooks"
