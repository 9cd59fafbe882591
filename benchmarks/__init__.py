"""Speed and memory benchmarks (run with ``python -m benchmarks.run`` or ``probe bench``)."""
