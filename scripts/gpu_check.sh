#!/usr/bin/env bash
# The CUDA checks (CI has no GPU): run whenever a GPU is at hand, within 8 minutes on one GPU (the first run
# compiles xlstm's sLSTM cell, 1-2 minutes).
#   1. the device-parametrised tests on CUDA: the mixer contract, in-place state edits, and one
#      test per method comparing CUDA with the CPU (PROBE_TEST_DEVICE=cuda);
#   2. every zoo model moved with .to("cuda") through every method, and its logits compared with
#      the CPU's (scripts/gpu_zoo_check.py);
#   3. the fused library kernels (probe-interp[cuda]) against the PyTorch path (tests/ops/test_fused_*.py).
# The timing suite of issue 30 is separate (about four minutes): python benchmarks/gpu_suite.py
# Usage: bash scripts/gpu_check.sh        (PYTHON=... to pick the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PY; nothing checked." >&2
    exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"
status=0
PROBE_TEST_DEVICE=cuda timeout 150 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_model_contract.py tests/test_inplace_edits.py tests/test_devices.py || status=1
timeout 140 "$PY" scripts/gpu_zoo_check.py || status=1
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -rs tests/ops/test_fused_*.py -k cuda || status=1
echo "gpu_check: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
