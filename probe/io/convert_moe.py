r"""The weights of transformers' sparse mixture-of-experts blocks -> probe's ``moe`` MLP kind
(:class:`probe.mixers.moe.MixtureOfExperts`), for every converter whose model has one.

The blocks of Jamba (``JambaSparseMoeBlock``), Qwen3-Next (``Qwen3NextSparseMoeBlock``), Granite
(``GraniteMoeMoE``) and Kimi Linear (``KimiLinearMoE``) share one layout under a prefix ``p``::

    p router.weight | p gate.weight            [E, d]      -> router.weight
    p experts.gate_up_proj                     [E, 2h, d]  -> W_gate (rows :h), W_in (rows h:)
    p experts.down_proj                        [E, d, h]   -> W_out
    p {router,gate}.e_score_correction_bias    [E]         -> selection_bias   (sigmoid routers)
    p shared_expert(s).{gate,up,down}_proj.weight          -> shared.{W_gate,W_in,W_out}.weight
    p shared_expert_gate.weight                [1, d]      -> shared_gate.weight   (Qwen3-Next)

The router kind and its options come from each family's config (its converter says which).
:func:`mlp_weights` maps a layer's MLP of either kind: the MoE block, or the dense SwiGLU MLP the same
models put in the other layers (``p {gate,up,down}_proj.weight -> W_gate, W_in, W_out``).
"""
from __future__ import annotations

from torch import Tensor

from probe.errors import CheckpointError
from probe.io.convert_common import Mapping, take

ROUTER_NAMES = ("router.", "gate.")
SHARED_NAMES = ("shared_expert.", "shared_experts.")


def moe_weights(sd: dict[str, Tensor], src: str, used: set[str]) -> dict[str, Tensor]:
    """``{name inside the moe module: tensor}`` from the MoE block under prefix ``src``; the source
    names taken are added to ``used``. A block without a router or experts is a CheckpointError."""
    def get(name: str) -> Tensor:
        used.add(src + name)
        return sd[src + name]

    router = next((r for r in ROUTER_NAMES if src + r + "weight" in sd), None)
    if router is None or src + "experts.gate_up_proj" not in sd or src + "experts.down_proj" not in sd:
        raise CheckpointError(f"{src!r} is not a mixture-of-experts block: it needs a router ({src}router.weight or "
                              f"{src}gate.weight) and experts.gate_up_proj / experts.down_proj.")
    gate_up = get("experts.gate_up_proj")
    h = gate_up.shape[1] // 2
    out = {"router.weight": get(router + "weight"), "W_gate": gate_up[:, :h], "W_in": gate_up[:, h:],
           "W_out": get("experts.down_proj")}
    if src + router + "e_score_correction_bias" in sd:
        out["selection_bias"] = get(router + "e_score_correction_bias")
    shared = next((s for s in SHARED_NAMES if src + s + "gate_proj.weight" in sd), None)
    if shared is not None:
        for theirs, ours in (("gate_proj", "W_gate"), ("up_proj", "W_in"), ("down_proj", "W_out")):
            out[f"shared.{ours}.weight"] = get(f"{shared}{theirs}.weight")
    if src + "shared_expert_gate.weight" in sd:
        out["shared_gate.weight"] = get("shared_expert_gate.weight")
    return out


def mlp_weights(sd: dict[str, Tensor], src: str, dst: str, kind: str, used: set[str], arch: str) -> Mapping:
    """``{probe name under dst: (source name, tensor)}`` of the MLP under prefix ``src``: the ``moe`` block
    (:func:`moe_weights`) when ``kind`` is ``"moe"``, else a dense SwiGLU MLP; source names taken are added
    to ``used``."""
    if kind == "moe":
        return {dst + k: (src + k, v) for k, v in moe_weights(sd, src, used).items()}
    w: Mapping = {}
    for ours, theirs in (("W_gate", "gate_proj"), ("W_in", "up_proj"), ("W_out", "down_proj")):
        used.add(f"{src}{theirs}.weight")
        w[f"{dst}{ours}.weight"] = (f"{src}{theirs}.weight", take(sd, f"{src}{theirs}.weight", arch))
    return w
