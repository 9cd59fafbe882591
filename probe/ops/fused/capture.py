r"""How a recurrence materialises every state on a GPU: whole chunks at a time, from boundary states.

When a state hook wants the state after every position, a linear recurrence
``h_t = a_t * h_{t-1} + b_t`` runs :func:`probe.ops.linear_scan.linear_scan_blocked` in its chunked
form: within a block, every chunk runs from a zero state at once, the chunk-boundary states follow by
a short scan over the chunk ends, and each chunk's states are rebuilt from its boundary state straight
into the result (``L + n`` steps for ``n`` chunks of ``L`` positions; the tested forms of
:mod:`probe.ops.linear_scan`). On the CPU small blocks are fastest (cache-sized; the PyTorch and
compiled kernels' own defaults); on a GPU every block costs a few dozen kernel launches, so a block is
as long as memory allows: :func:`capture_block` sizes it so that its temporaries (the decays, the
inputs and the block's states, about ``3 x block x state`` numbers) stay within a quarter of the
states being captured, and at most ``MAX_BLOCK_ELEMENTS`` numbers.
"""
from __future__ import annotations

__all__ = ["capture_block", "MAX_BLOCK_ELEMENTS"]

#: the most numbers (per temporary) one block of a GPU capture may hold: 2^28 float32 = 1 GiB
MAX_BLOCK_ELEMENTS = 1 << 28


def capture_block(T: int, state_elements: int, on_gpu: bool, default: int) -> int:
    """Positions per block when every state of ``T`` positions is kept (``state_elements`` numbers
    per position, batch included): ``default`` on the CPU; on a GPU the longest block whose three
    temporaries fit within a quarter of the captured states and ``MAX_BLOCK_ELEMENTS`` each."""
    if not on_gpu:
        return default
    by_share = T // 12  # 3 temporaries x block <= T / 4
    by_cap = MAX_BLOCK_ELEMENTS // max(1, state_elements)
    return max(default, min(T, by_share, by_cap))
