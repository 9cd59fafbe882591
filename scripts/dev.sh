#!/usr/bin/env bash
# Set up a local virtualenv (.venv) and run one of the project's jobs.
#   bash scripts/dev.sh explore   install + start the Streamlit explorer on the shipped zoo (localhost;
#                                 add --network to serve on every interface)
#   bash scripts/dev.sh docs      install + build the API reference from the docstrings (mkdocs, warnings are
#                                 errors) into build/site/
#   bash scripts/dev.sh test      install + run the whole test suite (numerical targets under every
#                                 CPU vector path); extra args run pytest once with them instead
# torch is installed first and pinned (torch==2.13.0, a CPU build) so that no CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
job="${1:-}"
shift || true
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q torch==2.13.0
case "$job" in
  test)
    "$PY" -m pip install -q -e ".[dev]"
    # one process per core (tests set torch to one thread each)
    run_tests() { "$PY" -m pytest -q -p no:cacheprovider -n "${PROBE_TEST_WORKERS:-2}" "$@"; }
    if [ "$#" -gt 0 ]; then
      run_tests "$@"
      exit
    fi
    # Floating-point results differ between CPUs (vector widths pick other summation orders), so
    # the tests that assert a numerical target (marker "numerical") run under each of PyTorch's
    # x86-64 vector paths; the rest run once.
    run_tests -m "not numerical"
    for capability in default avx2 avx512; do
      echo "== tests of numerical targets under ATEN_CPU_CAPABILITY=$capability"
      ATEN_CPU_CAPABILITY="$capability" run_tests -m numerical
    done
    ;;
  docs)
    "$PY" -m pip install -q -e ".[docs]"
    exec "$PY" -m mkdocs build --strict "$@"
    ;;
  explore)
    "$PY" -m pip install -q -e ".[app]"
    # this machine only and no usage statistics (also in .streamlit/config.toml); --network serves on every interface
    address=localhost
    if [ "${1:-}" = "--network" ]; then address=0.0.0.0; shift; fi
    exec "$PY" -m streamlit run app/explorer.py --server.headless true --server.address "$address" \
      --browser.gatherUsageStats false "$@"
    ;;
  *)
    echo "usage: bash scripts/dev.sh {docs|explore|test} [extra args]" >&2
    exit 2
    ;;
esac
