"""Interpretability methods. Each takes a model and inputs and returns a result object
with ``.to_frame()`` and ``.figure()``; all work through hooks only, so on every architecture.

Modules: lens.py attribution.py memory.py (methods I), patching.py probing.py steering.py
(methods II). Names are re-exported here as they land.
"""
from probe.result import MethodResult

# methods I: lenses, attribution, memory maps
from probe.methods.attribution import (
    DLAResult, TokenAttributionResult, direct_logit_attribution, gradient_x_input, integrated_gradients,
)
from probe.methods.lens import LensResult, TunedLens, compare_lenses, logit_lens
from probe.methods.memory import (
    LayerMemory, MemoryMapResult, gradient_influence, implicit_attention, memory_map, state_sizes,
)
# methods II: patching, probing, steering
from probe.methods.support.activation_dataset import ActivationDataset
from probe.methods.patching import (
    AttributionPatchingResult, PatchingResult, activation_patching, attribution_patching, patching_agreement,
)
from probe.methods.probing import (
    ProbeResult, collect_activations, fit_probes, hidden_vs_state, hidden_vs_state_figure,
)
from probe.methods.steering import SteeringResult, SteeringVector, steer, steering_vector

__all__ = [
    "MethodResult",
    "DLAResult", "LayerMemory", "LensResult", "MemoryMapResult", "TokenAttributionResult", "TunedLens",
    "compare_lenses", "direct_logit_attribution", "gradient_influence", "gradient_x_input", "implicit_attention",
    "integrated_gradients", "logit_lens", "memory_map", "state_sizes",
    "ActivationDataset", "AttributionPatchingResult", "PatchingResult", "ProbeResult", "SteeringResult",
    "SteeringVector", "activation_patching", "attribution_patching", "collect_activations", "fit_probes",
    "hidden_vs_state", "hidden_vs_state_figure", "patching_agreement", "steer", "steering_vector",
]
