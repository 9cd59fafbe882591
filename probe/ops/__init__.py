r"""Recurrence kernels, one module per recurrence: the sequential reference (a plain loop, the
math in its docstring) beside its fast forms (chunked / parallel), tested against each other
in float64. Mixers import their recurrence from here; a kernel knows nothing of hooks or
mixers (edits arrive as a ``force=(mask, values)`` argument where a kernel supports them).
"""
