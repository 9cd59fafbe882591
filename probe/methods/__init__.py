"""Interpretability methods. Each takes a model and inputs and returns a result object
with ``.to_frame()`` and ``.figure()``; all work through hooks only, so on every architecture.

One module per method family: lens.py (logit and tuned lens), attribution.py (direct logit
attribution, gradient x input, integrated gradients), memory.py (memory maps, state sizes),
patching.py, probing.py, steering.py. What they share and is no method lives in
:mod:`probe.methods.support`; per-mixer implicit attention in :mod:`probe.methods.implicit`.
"""
from probe.data.activation_dataset import ActivationDataset
from probe.methods.attribution import (
    DLAResult, TokenAttributionResult, direct_logit_attribution, gradient_x_input, integrated_gradients,
)
from probe.methods.lens import LensResult, TunedLens, compare_lenses, logit_lens
from probe.methods.memory import (
    LayerMemory, MemoryMapResult, gradient_influence, implicit_attention, memory_map, state_sizes,
)
from probe.methods.patching import (
    AttributionPatchingResult, PatchingResult, activation_patching, attribution_patching, patching_agreement,
)
from probe.methods.probing import (
    ProbeResult, collect_activations, fit_probes, hidden_vs_state, hidden_vs_state_figure,
)
from probe.methods.steering import SteeringResult, SteeringVector, steer, steering_vector
from probe.result import MethodResult

__all__ = [
    "MethodResult",
    "DLAResult", "LayerMemory", "LensResult", "MemoryMapResult", "TokenAttributionResult", "TunedLens",
    "compare_lenses", "direct_logit_attribution", "gradient_influence", "gradient_x_input", "implicit_attention",
    "integrated_gradients", "logit_lens", "memory_map", "state_sizes",
    "ActivationDataset", "AttributionPatchingResult", "PatchingResult", "ProbeResult", "SteeringResult",
    "SteeringVector", "activation_patching", "attribution_patching", "collect_activations", "fit_probes",
    "hidden_vs_state", "hidden_vs_state_figure", "patching_agreement", "steer", "steering_vector",
]
