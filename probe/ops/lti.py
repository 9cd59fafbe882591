r"""Linear time-invariant (LTI) state-space memories: discretisation and three exact forms.

A discrete LTI system with state ``m_t in R^q`` driven, independently, by each of ``c``
scalar input channels ``u_t in R^c``::

    m_t = Abar m_{t-1} + Bbar u_t               (Abar [q, q], Bbar [q]; one m per channel)

has the closed form (impulse response ``H_k = Abar^k Bbar``)::

    m_t = sum_{s=0}^{t} H_{t-s} u_s  +  Abar^{t+1} m_{-1}

so every state comes out of one causal convolution plus the free response of the initial
state. :class:`LTIMemory` evaluates it three ways, all tested equal:

* ``"recurrent"``: the recurrence one step at a time (generation, very short inputs).
* ``"direct"``: the convolution as a Toeplitz contraction within chunks of up to ``DIRECT_CHUNK``
  positions, the state carried across chunks (``T L q c`` work; short inputs and training).
* ``"fft"``: the convolution by real FFT (``T log T``; long inputs), a block of channels at a time.

No form builds an intermediate more than a few times its ``[b, T, c, q]`` states (or, for
:meth:`LTIMemory.convolve_readout`, its ``[b, T, d]`` output).

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
#: positions per chunk of the Toeplitz form (:meth:`LTIMemory._convolve_chunked`): at most the
#: longest input "auto" sends to it, so those run as one Toeplitz contraction
DIRECT_CHUNK = TRAIN_DIRECT_UNTIL


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

    def convolve(self, u: Tensor, method: str = "fft", budget: int | None = None) -> Tensor:
        """Zero-initial-state part ``sum_s H_{t-s} u_s``: ``[b, T, c]`` -> ``[b, T, c, q]``.

        ``"direct"``: :meth:`_convolve_chunked`. ``"fft"``: channel blocks (:meth:`_fft_blocks`) written
        into the result, each block's transforms holding at most ``budget`` numbers (default: the
        result's own size)."""
        if method == "direct":
            return self._convolve_chunked(u)
        if method != "fft":
            raise ValueError(f"Unknown convolution method {method!r}; use 'direct' or 'fft'.")
        b, T, c = u.shape
        out = u.new_empty(b, T, c, self.order)
        for block, part in self._fft_blocks(u, budget or out.numel()):
            out[:, :, block] = part
        return out

    def _convolve_chunked(self, u: Tensor) -> Tensor:
        """The Toeplitz form within chunks of ``L`` positions, the state carried across them (``L`` is
        ``DIRECT_CHUNK``, less where the ``[L, L, q]`` filter would outgrow the ``[b, T, c, q]`` states).

        Chunk ``j`` (positions ``jL .. jL + L - 1``) starts from the state ``e_{j-1}`` the earlier chunks
        leave: its states are ``sum_{s <= l} H_{l-s} u_{jL+s} + Abar^{l+1} e_{j-1}``, and
        ``e_j = Abar^L e_{j-1} + (the within-chunk sum at l = L - 1)`` (one ``[b, c, q]`` step per
        chunk). Work ``b T L c q``; intermediates a few times the ``[b, T, c, q]`` result.
        """
        b, T, c = u.shape
        L = max(1, min(DIRECT_CHUNK, T, math.isqrt(b * T * c)))  # the [L, L, q] filter within the states' size
        n = math.ceil(T / L)
        chunks = torch.nn.functional.pad(u, (0, 0, 0, n * L - T)).view(b, n, L, c)
        H = self.impulse_response(L, u)
        lag = torch.arange(L, device=u.device)[:, None] - torch.arange(L, device=u.device)[None, :]  # l - s
        toeplitz = torch.where((lag >= 0)[..., None], H[lag.clamp(min=0)], H.new_zeros(()))  # [L, L, q]
        states = torch.einsum("lsq,bnsc->bnlcq", toeplitz, chunks)
        if n > 1:
            P = self._get("powers", L, u)  # Abar^1 .. Abar^L
            within = states[:, :, -1].clone()  # [b, n, c, q]: each chunk's own part of its last state
            ends, e = [], within[:, 0]
            for j in range(1, n):
                ends.append(e)
                e = e @ P[-1].T + within[:, j]
            carried = torch.stack(ends, dim=1)  # [b, n - 1, c, q]: e_0 .. e_{n-2}
            states[:, 1:] += torch.einsum("lqr,bncr->bnlcq", P, carried)
        return states.reshape(b, n * L, c, self.order)[:, :T]

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

    def _fft_blocks(self, u: Tensor, budget: int):
        """Yield ``(channel slice, zero-initial-state part [b, T, k, q])`` for blocks of ``k`` channels.

        A block's spectrum product ``U(f) H(f)`` and its inverse transform hold about ``2 b n k q``
        numbers (``n`` the FFT length, up to ``4T``); ``k`` is the most channels (at least one) that keeps
        this within ``budget`` numbers, so no intermediate grows with the channel count."""
        b, T, c = u.shape
        n, Uf, Hf = self._spectra(u)
        k = max(1, min(c, budget // max(1, 2 * b * n * self.order)))
        for start in range(0, c, k):
            block = slice(start, start + k)
            yield block, torch.fft.irfft(Uf[:, :, block, None] * Hf[:, None, :], n=n, dim=1)[:, :T]

    def convolve_readout(self, u: Tensor, W: Tensor) -> Tensor:
        """A linear readout of the zero-initial-state part, ``[b, T, d]``, by FFT, without its states.

        ``y_t[d] = sum_{c, i} W[d, c, i] (sum_s H_{t-s} u_s)[c, i]`` for ``u [b, T, c]`` and
        ``W [d, c, q]`` -> ``[b, T, d]``: the states of one channel block at a time
        (:meth:`_fft_blocks`, each block's transforms within the size of the output and the states,
        ``b T (d + c q)``), read out and summed into the output, so the ``[b, T, c, q]`` states never
        exist at once (what a forward pass that hooks no state needs). The readout costs ``b T c q d``
        multiply-adds, as reading materialised states would.
        """
        b, T, c = u.shape
        d = W.shape[0]
        out = None
        for block, part in self._fft_blocks(u, b * T * (d + c * self.order)):
            read = part.flatten(2) @ W[:, block].reshape(d, -1).to(part.dtype).T
            out = read if out is None else out.add_(read)
        return out.to(u.dtype)

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
