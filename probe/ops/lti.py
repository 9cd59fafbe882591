r"""Linear time-invariant (LTI) state-space memories: discretisation and three exact forms.

A discrete LTI system with state ``m_t in R^q`` driven, independently, by each of ``c``
scalar input channels ``u_t in R^c``::

    m_t = Abar m_{t-1} + Bbar u_t               (Abar [q, q], Bbar [q]; one m per channel)

has the closed form (impulse response ``H_k = Abar^k Bbar``)::

    m_t = sum_{s=0}^{t} H_{t-s} u_s  +  Abar^{t+1} m_{-1}

so every state comes out of one causal convolution plus the free response of the initial
state. :class:`LTIMemory` evaluates it three ways, all tested equal:

* ``"recurrent"``: the recurrence one step at a time (generation, very short inputs).
* ``"direct"``: the convolution as a Toeplitz contraction (``T^2 q c`` work; short inputs).
* ``"fft"``: the convolution by real FFT (``T log T``; long inputs).

The free response ``Abar^{t+1} m_{-1}`` is computed in chunks of ``L`` positions (powers
``Abar^1 .. Abar^L`` times one carried ``Abar^{jL} m_{-1}`` per chunk), so no ``[T, q, q]``
tensor is ever built. Impulse responses and powers are computed in float64 by repeated
doubling and cached per length, device and dtype.

:func:`zoh` discretises a continuous system ``dm/dt = A m + B u`` with a zero-order hold over
a step ``dt``: ``Abar = exp(A dt)``, ``Bbar = A^{-1} (Abar - I) B``, read off the matrix
exponential of the augmented matrix ``[[A, B], [0, 0]] dt`` (no inverse, no SciPy).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from probe.ops.checks import widen

METHODS = ("auto", "recurrent", "direct", "fft")
#: "auto" (see :meth:`LTIMemory.resolve`): the recurrence up to this length; the Toeplitz form up to
#: DIRECT_UNTIL without gradients, up to TRAIN_DIRECT_UNTIL with them; FFT only without gradients,
#: for at most FFT_MAX_BATCH sequences or at most FFT_BATCHED_UNTIL positions
RECURRENT_UNTIL = 4
DIRECT_UNTIL = 32
TRAIN_DIRECT_UNTIL = 256
FFT_MAX_BATCH = 4
FFT_BATCHED_UNTIL = 256


def zoh(A: Tensor, B: Tensor, dt: float = 1.0) -> tuple[Tensor, Tensor]:
    """Zero-order-hold discretisation of ``dm/dt = A m + B u`` (``A [q, q]``, ``B [q]``), in float64."""
    q = A.shape[0]
    M = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    M[:q, :q] = A.to(torch.float64)
    M[:q, q] = B.to(torch.float64)
    E = torch.linalg.matrix_exp(M * dt)
    return E[:q, :q].clone(), E[:q, q].clone()


class LTIMemory:
    """``m_t = Abar m_{t-1} + Bbar u_t`` for each of ``c`` channels, in the forms of the module docstring.

    Not an ``nn.Module``: a mixer holds one, built from its options (float64 on the CPU), and
    its derived tensors are cached per ``(device, dtype)``.
    """

    def __init__(self, Abar: Tensor, Bbar: Tensor):
        self.Abar = Abar.to(torch.float64).cpu()
        self.Bbar = Bbar.to(torch.float64).cpu()
        self.order = self.Abar.shape[0]
        self._impulse = self.Bbar[None].clone()  # H_0 .. H_{n-1}, float64
        self._power = torch.eye(self.order, dtype=torch.float64)  # Abar^n for n = len(_impulse)
        self._powers = self.Abar[None].clone()  # Abar^1 .. Abar^n, float64
        self._cast: dict = {}

    # -- cached float64 tensors, extended by doubling ------------------------------------
    def _impulse64(self, T: int) -> Tensor:
        while self._impulse.shape[0] < T:
            n = self._impulse.shape[0]
            step = torch.linalg.matrix_power(self.Abar, n)  # Abar^n
            self._impulse = torch.cat([self._impulse, self._impulse @ step.T], dim=0)
        return self._impulse[:T]

    def _powers64(self, n: int) -> Tensor:
        while self._powers.shape[0] < n:
            top = self._powers[-1]
            self._powers = torch.cat([self._powers, top @ self._powers], dim=0)
        return self._powers[:n]

    def _get(self, kind: str, n: int, like: Tensor) -> Tensor:
        key = (kind, n, like.device, like.dtype)
        if key not in self._cast:
            src = self._impulse64(n) if kind == "impulse" else self._powers64(n)
            if len(self._cast) > 16:
                self._cast.clear()
            self._cast[key] = src.to(device=like.device, dtype=like.dtype)
        return self._cast[key]

    def matrices(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(Abar, Bbar)`` in ``like``'s device and dtype."""
        return self._get("powers", 1, like)[0], self._get("impulse", 1, like)[0]

    def impulse_response(self, T: int, like: Tensor) -> Tensor:
        """``H [T, q]`` with ``H_k = Abar^k Bbar``."""
        return self._get("impulse", T, like)

    # -- the three forms -------------------------------------------------------------------
    def recurrent(self, u: Tensor, m0: Tensor | None = None) -> Tensor:
        """One step at a time: ``u [b, T, c]``, ``m0 [b, c, q]`` -> states ``[b, T, c, q]``."""
        Abar, Bbar = self.matrices(u)
        m = u.new_zeros(u.shape[0], u.shape[2], self.order) if m0 is None else m0.to(u.dtype)
        out = []
        for u_t in u.unbind(1):
            m = torch.addcmul(m @ Abar.T, u_t[..., None], Bbar)
            out.append(m)
        return torch.stack(out, dim=1) if out else u.new_zeros(u.shape[0], 0, u.shape[2], self.order)

    def convolve(self, u: Tensor, method: str = "fft") -> Tensor:
        """Zero-initial-state part ``sum_s H_{t-s} u_s``: ``[b, T, c]`` -> ``[b, T, c, q]``."""
        T = u.shape[1]
        H = self.impulse_response(T, u)
        if method == "direct":
            idx = torch.arange(T, device=u.device)
            lag = idx[:, None] - idx[None, :]  # t - s
            toeplitz = torch.where((lag >= 0)[..., None], H[lag.clamp(min=0)], H.new_zeros(()))  # [T, T, q]
            return torch.einsum("tsq,bsc->btcq", toeplitz, u)
        if method != "fft":
            raise ValueError(f"Unknown convolution method {method!r}; use 'direct' or 'fft'.")
        return self._states_from_spectra(*self._spectra(u), T).to(u.dtype)

    def _spectra(self, u: Tensor) -> tuple[int, Tensor, Tensor]:
        """``(n, U, H)``: the FFT length ``n >= 2T - 1`` (no wrap-around) and the real FFTs of the
        inputs ``u [b, T, c]`` -> ``[b, F, c]`` and of the impulse response -> ``[F, q]``
        (``F = n / 2 + 1``; float32, or float64 for float64 inputs: FFT needs one of them)."""
        T = u.shape[1]
        n = 1 << math.ceil(math.log2(max(2 * T - 1, 1)))
        work = torch.float64 if u.dtype == torch.float64 else torch.float32
        Uf = torch.fft.rfft(u.to(work), n=n, dim=1)
        Hf = torch.fft.rfft(self.impulse_response(T, u).to(work), n=n, dim=0)
        return n, Uf, Hf

    def convolve_readout(self, u: Tensor, W: Tensor) -> Tensor:
        """A linear readout of the zero-initial-state part, ``[b, T, d]``, by FFT.

        ``y_t[d] = sum_{c, i} W[d, c, i] (sum_s H_{t-s} u_s)[c, i]`` for ``u [b, T, c]`` and
        ``W [d, c, q]`` -> ``[b, T, d]``. In the frequency domain the readout folds into the
        filter, ``Y(f) = sum_c U(f)[c] K(f)[c, d]`` with ``K(f)[c, d] = sum_i W[d, c, i] H(f)[i]``,
        so the ``[b, T, c, q]`` states (and their gradient) never exist: what a forward pass that
        hooks no state needs.

        Building ``K`` and applying it cost about ``2 F c d (q + 2 b)`` real operations (``F``, between
        ``T`` and ``2T``, frequencies; ``b`` sequences), reading the states out ``b T c q d``: the fold
        pays for training batches, while one long sequence is cheaper through its states (built by
        FFT and read out; ``b T c q`` numbers, then fewer than ``K``'s ``F c d``). The cheaper is taken
        (:meth:`resolve` sends training batches to the Toeplitz form or the recurrence, which were
        faster still at the zoo's sizes; this is for forwards without gradients and explicit ``"fft"``).
        """
        n, Uf, Hf = self._spectra(u)
        b, T, c = u.shape
        F_, q = Hf.shape
        if b * T * q < 2 * F_ * (q + 2 * b):
            return self._readout_of_states(n, Uf, Hf, W, T).to(u.dtype)
        return self._readout_folded(n, Uf, Hf, W, T).to(u.dtype)

    @staticmethod
    def _states_from_spectra(n: int, Uf: Tensor, Hf: Tensor, T: int) -> Tensor:
        """The zero-initial-state part ``[b, T, c, q]`` by inverse FFT of ``U(f) H(f)`` (:meth:`_spectra`)."""
        return torch.fft.irfft(Uf.unsqueeze(-1) * Hf[:, None, :], n=n, dim=1)[:, :T]

    @classmethod
    def _readout_of_states(cls, n: int, Uf: Tensor, Hf: Tensor, W: Tensor, T: int) -> Tensor:
        """The states by inverse FFT, ``[b, T, c, q]``, then the readout ``W [d, c, q]``."""
        states = cls._states_from_spectra(n, Uf, Hf, T)
        return states.flatten(2) @ W.reshape(W.shape[0], -1).to(states.dtype).T

    @staticmethod
    def _readout_folded(n: int, Uf: Tensor, Hf: Tensor, W: Tensor, T: int) -> Tensor:
        """``Y(f) = U(f) K(f)`` with ``K(f) = sum_i W[:, :, i] H(f)[i]``, in real arithmetic (PyTorch's
        complex bmm on the CPU loops over the matrices with copies):
        ``[Re U, Im U] [F, b, 2c] @ [[Re K, Im K], [-Im K, Re K]] [F, 2c, 2d] = [Re Y, Im Y]``."""
        F_, q = Hf.shape
        d, c = W.shape[0], W.shape[1]
        H_parts = torch.stack([Hf.real, Hf.imag]).reshape(2 * F_, q)
        K = (H_parts @ W.reshape(d * c, q).to(H_parts.dtype).T).view(2, F_, d, c).transpose(2, 3)  # [2, F, c, d]
        K_block = torch.cat([torch.cat([K[0], K[1]], dim=2), torch.cat([-K[1], K[0]], dim=2)], dim=1)
        U_parts = torch.cat([Uf.real, Uf.imag], dim=2).transpose(0, 1)  # [F, b, 2c]
        Y_parts = torch.bmm(U_parts, K_block).transpose(0, 1)  # [b, F, 2d]
        return torch.fft.irfft(torch.complex(Y_parts[..., :d], Y_parts[..., d:]), n=n, dim=1)[:, :T]

    def convolve_last(self, u: Tensor) -> Tensor:
        """The zero-initial-state part at the last position alone, ``sum_s H_{T-1-s} u_s``:
        ``u [b, T, c]`` -> ``[b, c, q]`` (the state a segment leaves, with :meth:`free_response`)."""
        return torch.einsum("sq,bsc->bcq", self.impulse_response(u.shape[1], u).flip(0), u)

    def resolve(self, method: str, T: int, batch: int = 1, grad: bool = False) -> str:
        """The form ``method`` stands for at length ``T`` for ``batch`` sequences, ``grad``: whether a
        backward pass will follow.

        ``"auto"`` picks what was fastest on a 2-core CPU (the zoo's LMU, d_model 128, q 16, c 32, whole
        forwards): one sequence and no gradient, FFT from 64 positions on (4096 tokens: 0.25 s against 0.89
        s for the recurrence); batches of long inputs, the recurrence (8 x 1024: 0.56 s against 0.93 s
        by FFT); with gradients, the Toeplitz form up to 256 positions, then the recurrence (a
        16 x 256 training step: 0.38-0.47 s direct, 0.41-0.52 s recurrent, 0.67-0.81 s by FFT, whose
        complex intermediates and their gradients cost more than they save at these sizes).
        """
        if method not in METHODS:
            raise ValueError(f"Unknown LTI method {method!r}; use one of {', '.join(METHODS)}.")
        if method != "auto":
            return method
        if T <= RECURRENT_UNTIL:
            return "recurrent"
        if grad:
            return "direct" if T <= TRAIN_DIRECT_UNTIL else "recurrent"
        if T <= DIRECT_UNTIL:
            return "direct"
        return "fft" if batch <= FFT_MAX_BATCH or T <= FFT_BATCHED_UNTIL else "recurrent"

    def free_response(self, m0: Tensor, T: int, chunk: int = 64) -> Tensor:
        """``Abar^{t+1} m0`` for ``t = 0 .. T-1``: ``m0 [b, c, q]`` -> ``[b, T, c, q]``."""
        L = max(1, min(chunk, T))
        n = math.ceil(T / L)
        P = self._get("powers", L, m0)  # Abar^1 .. Abar^L
        carries, c = [], m0
        for _ in range(n):
            carries.append(c)
            c = c @ P[-1].T
        C = torch.stack(carries, dim=1)  # [b, n, c, q]: Abar^{jL} m0
        out = torch.einsum("lqr,bncr->bnlcq", P, C)
        return out.reshape(m0.shape[0], n * L, *m0.shape[1:])[:, :T]

    def states(self, u: Tensor, m0: Tensor | None = None, method: str = "auto") -> Tensor:
        """Every state ``[b, T, c, q]`` from inputs ``u [b, T, c]`` and initial state ``m0 [b, c, q]``."""
        T = u.shape[1]
        u, = widen(m0, u)  # a float32 state of a half-precision model: the memory runs in float32
        method = self.resolve(method, T, u.shape[0], torch.is_grad_enabled() and u.requires_grad)
        if method == "recurrent":
            return self.recurrent(u, m0)
        m = self.convolve(u, method)
        if m0 is not None and bool(m0.ne(0).any()):
            m = m + self.free_response(m0.to(u.dtype), T)
        return m
