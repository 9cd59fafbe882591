"""Shared fixtures: a tiny model of every registered mixer and a few hybrids.

Tests parametrised over ``ARCHS`` automatically cover every mixer in ``probe.mixers.MIXERS``,
so a new mixer is held to the same contract (segments, generation, state patching, edits).
"""
from __future__ import annotations

import os

# No network at run time: transformers otherwise asks the Hugging Face hub for kernels when a model
# class first loads, and each test process waits ~20 s for the request to time out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import probe  # noqa: E402
from probe.mixers import MIXERS  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a small shared machine threads wait
# on each other (30-80x slowdowns measured); the suite runs in parallel processes instead.
torch.set_num_threads(1)

#: the device of the device-parametrised tests (the mixer contract, one test per method):
#: ``PROBE_TEST_DEVICE`` (default ``cpu``); ``scripts/gpu_check.sh`` runs them with ``cuda``
DEVICE = torch.device(os.environ.get("PROBE_TEST_DEVICE", "cpu"))

#: per-mixer options used by the contract tests (exercise the interesting paths)
TEST_OPTIONS = {"qrnn": {"window": 3}, "mlstm": {"chunk": 4}}

HYBRIDS = {
    "hybrid_qrnn_attn_ff": ["qrnn", "qrnn", "attn", "ff"],
    "hybrid_lstm_attn": ["lstm", "attn"],
    "hybrid_lmu_attn": ["lmu", "lmu", "attn"],
    "hybrid_xlstm": ["mlstm", "mlstm", "slstm"],
    "hybrid_jamba": ["mamba", "attn"],
    "hybrid_zamba2": ["mamba2", "mamba2", "mamba2"],
    "hybrid_falcon_h1": ["attn+mamba2", "attn+mamba2"],  # parallel mixers (probe.mixers.parallel)
    "hybrid_post_norm": ["mamba2", "attn"],
    "hybrid_olmo": ["gdn", "attn"],
    "hybrid_bamba": ["mamba2", "attn"],
    "hybrid_kimi": ["kda", "mla"],
    "hybrid_qwen3_next": ["gdn", "attn"],
}

#: config fields a hybrid needs beyond its layout (``mixer_options`` merged over ``TEST_OPTIONS``)
HYBRID_CONFIGS = {
    "hybrid_jamba": {"mlp_layout": ["swiglu", "moe"],
                     "mixer_options": {"mamba": {"inner_norms": True},
                                       "moe": {"n_experts": 4, "top_k": 2, "renormalize": True, "d_shared": 16,
                                               "shared_gate": True}}},
    # Zamba2's shared attention + MLP blocks (probe.shared_block): block 0 read by layers 0 and 2
    "hybrid_zamba2": {"shared_layout": [0, 1, 0],
                      "shared_options": {"adapter_rank": 4, "attn_adapters": True, "n_kv_heads": 2}},
    # OLMo-2 style norms on the outputs of the attention layer's mixer and MLP (probe.block)
    "hybrid_post_norm": {"norm_placement": ["pre", "post"]},
    # Falcon-H1's parts: grouped-query attention, Mamba-2 of its own width, RMSNorm before the gate
    "hybrid_falcon_h1": {"mixer_options": {"attn": {"n_kv_heads": 2},
                                           "mamba2": {"d_inner": 48, "norm": "before_gate", "chunk": 8}}},
    # OLMo hybrid: Gated DeltaNet (beta in (0, 2)) pre-norm, GQA attention with whole-projection q / k
    # norms post-norm, SwiGLU MLPs (probe.io.convert_olmo_hybrid)
    "hybrid_olmo": {"norm_placement": ["pre", "post"], "mlp": "swiglu",
                    "mixer_options": {"gdn": {"n_k_heads": 2, "n_v_heads": 4, "d_k": 8, "d_v": 4, "norm_eps": 1e-5,
                                              "allow_neg_eigval": True},
                                      "attn": {"n_kv_heads": 2, "qk_norm": "projection"}}},
    # Bamba: Mamba-2 + grouped-query attention with RoPE on half of each head, SwiGLU MLPs (probe.io.convert_bamba)
    "hybrid_bamba": {"mlp": "swiglu", "mixer_options": {"attn": {"n_kv_heads": 2, "rotary_fraction": 0.5}}},
    # Kimi Linear: Kimi Delta Attention and NoPE latent attention, a sigmoid-routed MoE with selection bias,
    # grouped choice and a shared expert (probe.io.convert_kimi_linear)
    "hybrid_kimi": {"positional": "none", "mlp": "swiglu", "mlp_layout": ["swiglu", "moe"],
                    "mixer_options": {"kda": {"d_k": 8, "d_v": 8}, "mla": {"kv_rank": 12, "d_v": 6},
                                      "moe": {"n_experts": 4, "top_k": 2, "d_expert": 16, "router": "sigmoid",
                                              "selection_bias": True, "n_group": 2, "topk_group": 1,
                                              "renormalize": True, "routed_scaling_factor": 2.5, "d_shared": 16}}},
    # Qwen3-Next: Gated DeltaNet (grouped value heads) and gated attention (zero-centred q / k norms, a quarter
    # of each 16-wide head rotated, sigmoid output gate), softmax-routed MoE with a gated shared expert
    # (probe.io.convert_qwen3_next)
    "hybrid_qwen3_next": {"mlp": "swiglu", "mlp_layout": ["moe", "swiglu"], "d_head": 16,
                          "mixer_options": {"gdn": {"n_k_heads": 2, "n_v_heads": 4, "d_k": 8, "d_v": 4},
                                            "attn": {"n_kv_heads": 2, "qk_norm": "head_offset",
                                                     "rotary_fraction": 0.25, "output_gate": True},
                                            "moe": {"n_experts": 4, "top_k": 2, "d_expert": 16, "renormalize": True,
                                                    "d_shared": 16, "shared_gate": True}}},
}


def layouts() -> dict[str, list[str]]:
    out = {name: [name, name] for name in sorted(MIXERS)}
    out.update(HYBRIDS)
    return out


ARCHS = sorted(layouts())


def make_model(arch: str, seed: int = 0, device: str | torch.device = "cpu", **overrides) -> probe.HookedLM:
    """A tiny random model of ``arch`` (weights drawn on the CPU, so equal on every ``device``)."""
    torch.manual_seed(seed)
    layout = layouts()[arch]
    extra = dict(HYBRID_CONFIGS.get(arch, {}))
    opts = {k: v for k, v in TEST_OPTIONS.items() if k in layout} | extra.pop("mixer_options", {})
    kwargs = dict(vocab_size=257, d_model=32, n_heads=4, layout=layout, mixer_options=opts, d_mlp=64)
    kwargs.update(extra)
    kwargs.update(overrides)
    model = probe.HookedLM(probe.ModelConfig(**kwargs))
    randomise(model)
    return model.to(device).eval()


def randomise(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Add ``N(0, scale^2)`` noise to every parameter of ``module`` (a probe model or a reference
    implementation): larger random weights than the training init, so every path visibly matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def recurrent_archs() -> list[str]:
    return [a for a in ARCHS if any(MIXERS[m].recurrent for m in layouts()[a])]


@pytest.fixture
def state_pieces(monkeypatch):
    """``state_positions`` runs each mixer's forward in pieces whatever its states' size (a tiny test
    model's states are below ``WHOLE_RUN_BYTES``, where the whole-sequence run is used)."""
    from probe.mixers import state_positions
    monkeypatch.setattr(state_positions, "WHOLE_RUN_BYTES", 0)


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


def tokens(batch: int = 2, T: int = 24, seed: int = 1, vocab: int = 256,
           device: str | torch.device = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, T), generator=g).to(device)


@pytest.fixture(autouse=True)
def _grad_mode_is_restored():
    """Every test starts with autograd on. A test (or app code run in-process by AppTest) that
    leaves it off, e.g. through a generator abandoned inside ``torch.no_grad()``, would break
    later gradient tests in the same worker; restore it and warn with the culprit's name."""
    torch.set_grad_enabled(True)
    yield
    if not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        import warnings

        warnings.warn("this test left torch grad mode disabled", RuntimeWarning)
