r"""LMU: Legendre Memory Unit (Voelker et al. 2019), in the parallel, linear form of the LMU
language model of Chilkuri et al. 2021.

The memory is the LTI system that best remembers a sliding window of ``theta`` tokens with
``q = order`` Legendre coefficients::

    theta dm/dt = A m + B u,     A_ij = (2i+1) * (-1 if i < j else (-1)^(i-j+1)),
                                 B_i  = (2i+1) * (-1)^i,         i, j = 0 .. q-1

discretised with a zero-order hold over one token (:func:`probe.ops.lti.zoh`). Each of the
``d_u`` input channels drives its own memory::

    u_t = W_u x_t + b_u                                   ([d_u])
    m_t = Abar m_{t-1} + Bbar u_t                         ([d_u, q], Abar applied per channel)
    y_t = gelu(W_m vec(m_t) + W_x x_t + b_x)              ([d_model])

``m_t[c]`` holds the shifted-Legendre coefficients of channel c's last ``theta`` inputs:
``u_{t-r theta} ~= sum_i P_i(2r - 1) m_t[c, i]`` for ``0 <= r <= 1``.

Because the memory is linear and time-invariant, all states come from one causal
convolution with its impulse response (FFT for long inputs without gradients, a Toeplitz
contraction for short ones and training batches) plus the free response of the carried
state, and generation and long training inputs use the recurrence
(:meth:`probe.ops.lti.LTIMemory.resolve` picks; all forms are tested equal). No form holds more than
about one copy of the layer's outputs plus its states at once (the FFT runs a block of channels at
a time, the Toeplitz form within chunks of up to 256 positions). Editing ``hook_state``
at some positions restarts the parallel form from each edited state, so edits propagate
exactly.

State: ``state`` = m_t, ``[batch, d_u, order]`` (``hook_state``: ``[batch, pos, d_u, order]``);
``d_u * order`` numbers per position and layer. Hooks: ``hook_input`` (u, ``[b, pos, d_u]``),
``hook_state``. Options: ``order`` (q, default 16), ``theta`` (window in tokens, default 64),
``d_u`` (default ``d_model // 4``). ``mixer.method`` ("auto", "recurrent", "direct", "fft")
picks the form (for benchmarks and tests).

Half precision: the memory (every form of :class:`probe.ops.lti.LTIMemory`, the readout ``W_m vec(m_t)``
and the gelu) runs in float32 and the carried ``state`` stays float32 (``WIDE_STATES``): a
float16/bfloat16 recurrence rounds ``m_t`` at every step, an error that grows with the window.
``hook_input`` shows the input's dtype, ``hook_state`` float32; the output returns in the input's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probe.ops.lti import LTIMemory, zoh
from probe.mixers.base import RecurrentMixer
from probe.mixers.options import Int, Real
from probe.mixers.edits import Computation, apply_forcing


def legendre_matrices(order: int, theta: float) -> tuple[Tensor, Tensor]:
    """Continuous-time ``(A / theta, B / theta)`` of the Legendre memory, float64."""
    i = torch.arange(order, dtype=torch.float64)
    r = (2 * i + 1)[:, None]
    diff = i[:, None] - i[None, :]
    sign = torch.where(diff >= 0, (-1.0) ** (diff + 1), torch.tensor(-1.0, dtype=torch.float64))
    A = r * sign
    B = (2 * i + 1) * (-1.0) ** i
    return A / theta, B / theta


def shifted_legendre(order: int, r: Tensor) -> Tensor:
    """``P_i(2r - 1)`` for ``i < order``: the decoders of the memory (``r`` = delay / theta) -> ``[..., order]``."""
    x = 2 * r.to(torch.float64) - 1
    out = [torch.ones_like(x), x]
    for n in range(1, order - 1):  # Bonnet's recursion
        out.append(((2 * n + 1) * x * out[n] - n * out[n - 1]) / (n + 1))
    return torch.stack(out[:order], dim=-1)


class LMU(RecurrentMixer):
    NAME = "lmu"
    OPTIONS = {"order": Int(16), "theta": Real(64.0), "d_u": Int(None)}
    HOOKED = ("input", "state")
    WIDE_STATES = ("state",)

    def __init__(self, cfg, layer: int):
        super().__init__(cfg, layer)
        order, theta, d_u = self.options["order"], self.options["theta"], self.options["d_u"]  # checked by OPTIONS
        self.d_u = max(1, cfg.d_model // 4) if d_u is None else d_u
        self.order, self.theta = order, float(theta)
        self.memory = LTIMemory(*zoh(*legendre_matrices(order, self.theta)))
        self.method = "auto"
        self.W_u = nn.Linear(cfg.d_model, self.d_u)
        self.W_m = nn.Linear(self.d_u * order, cfg.d_model, bias=False)
        self.W_x = nn.Linear(cfg.d_model, cfg.d_model)

    def state_shapes(self):
        return {"state": (self.d_u, self.order)}

    def _forced_states(self, u: Tensor, m0: Tensor, mask: Tensor, values: Tensor) -> Tensor:
        """States with ``m_p = values_p`` where ``mask``: the parallel form restarted after each edited position."""
        edited = mask.flatten(2).any(-1).any(0)  # [T]
        pieces, start, m = [], 0, m0
        for p in torch.nonzero(edited).flatten().tolist():
            seg = self.memory.states(u[:, start : p + 1], m, self.method)
            m = torch.where(mask[:, p], values[:, p].to(seg.dtype), seg[:, -1])
            pieces += [seg[:, :-1], m.unsqueeze(1)]
            start = p + 1
        if start < u.shape[1]:
            pieces.append(self.memory.states(u[:, start:], m, self.method))
        return torch.cat(pieces, dim=1)

    def _readout_without_states(self, u: Tensor, m0: Tensor) -> tuple[Tensor, Tensor]:
        """``(W_m vec(m_t) [b, T, d_model], m_{T-1} [b, d_u, order])`` without building the
        ``[b, T, d_u, order]`` states at once: they are read out a block of channels at a time
        (:meth:`probe.ops.lti.LTIMemory.convolve_readout`); a nonzero initial state adds its free response."""
        memory = self.memory.convolve_readout(u, self.W_m.weight.view(-1, self.d_u, self.order))
        last = self.memory.convolve_last(u)
        if bool(m0.ne(0).any()):
            free = self.memory.free_response(m0.to(u.dtype), u.shape[1])
            memory, last = memory + self._read(free.flatten(2)), last + free[:, -1]
        return memory, last

    def compute(self, x, state, forcing, keep):
        u = apply_forcing("input", self.W_u(x), forcing)
        values = {"input": u}
        u = u.to(self.state_dtype("state", x.dtype))
        grad = torch.is_grad_enabled() and (u.requires_grad or x.requires_grad)
        form = self.memory.resolve(self.method, x.shape[1], x.shape[0], grad)
        if "state" not in forcing and "state" not in keep and form == "fft":
            memory, last = self._readout_without_states(u, state["state"])  # no state hooked: none built
        else:
            if "state" in forcing:
                m = self._forced_states(u, state["state"], *forcing["state"])
            else:
                m = self.memory.states(u, state["state"], form)
            memory, last, values["state"] = self._read(m.flatten(2)), m[:, -1], m
        return Computation(F.gelu(memory + self.W_x(x)).to(x.dtype), values, {"state": last})

    def _read(self, m: Tensor) -> Tensor:
        """``W_m vec(m)`` in ``m``'s dtype (float32 in a half-precision model): ``[..., d_u q] -> [..., d_model]``."""
        return F.linear(m, self.W_m.weight.to(m.dtype))
