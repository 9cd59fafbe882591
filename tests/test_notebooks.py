"""Every tutorial notebook runs top to bottom without a cell error (nbclient, the venv's kernel), and
the committed notebooks are what notebooks/build.py writes: the same cells, executed, with every code
cell's output stored (figures as PNG, so they render on GitHub) and no error among them.

Kept fast in three ways, none of which changes what the notebooks do for a reader:

* sizes: after a notebook's ``parameters`` cell the test inserts ``build.SMALL[name]`` (fewer
  training steps, fewer examples), as papermill would;
* data: the kernel gets ``PROBE_STDLIB_STREAMS`` pointing at stdlib splits of two files each;
* one kernel per test process runs the notebooks in turn, with one intra-op thread as the rest
  of the suite (a kernel started from the plain environment used a thread per core, and threads
  of tiny ops wait on each other on a busy machine). Every user variable, imported modules
  included, is deleted before each notebook, so each starts from an empty namespace, but the
  imports of torch and TransformerLens are paid once (``%reset -f`` would also run a full
  garbage collection of the big heap: seconds on a busy machine).
"""
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _build_module():
    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        import build
    finally:
        sys.path.pop(0)
    return build


def test_notebooks_are_the_build_with_outputs():
    build = _build_module()
    assert [p.name for p in NOTEBOOKS] == sorted(build.NOTEBOOKS), "run python notebooks/build.py"
    for name in build.NOTEBOOKS:
        committed = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        fresh = build.notebook(name)
        stale = f"{name} is stale: run python notebooks/build.py"
        assert [(c.id, c.cell_type, c.source, c.metadata.get("tags")) for c in committed.cells] == \
               [(c.id, c.cell_type, c.source, c.metadata.get("tags")) for c in fresh.cells], stale
        code = [c for c in committed.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), f"{name} is stored without its outputs: {stale}"
        outputs = [o for c in code for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], f"{name} stores an error"
        figures = sum("image/png" in o.get("data", {}) for o in outputs)
        drawn = sum(".figure(" in c.source or "px." in c.source for c in code)
        assert figures >= drawn, f"{name}: {drawn} cells draw a figure, {figures} PNG figures stored"


def test_small_sizes_override_a_parameters_cell():
    """Every SMALL entry targets a notebook with exactly one ``parameters`` cell and only reassigns
    names that cell defines (so the override cannot silently miss)."""
    build = _build_module()
    for name, small in build.SMALL.items():
        cells = [c for c in build.NOTEBOOKS[name] if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{name}: one cell tagged 'parameters' expected"
        defined = {line.split("=")[0].strip() for line in cells[0].source.splitlines() if "=" in line}
        assigned = {line.split("=")[0].strip() for line in small.splitlines() if "=" in line}
        assert assigned and assigned <= defined, f"{name}: SMALL sets {assigned - defined}, not parameters"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One started kernel (in notebooks/, one thread, small stdlib splits) shared by the notebooks."""
    from jupyter_core.utils import run_sync

    from probe.data.code_corpus import CodeCorpus

    streams = tmp_path_factory.mktemp("streams")
    for split in ("val", "test"):
        CodeCorpus(split, max_files=2).stream().save(streams / f"stdlib-{split}.safetensors")
    env = dict(os.environ, PROBE_STDLIB_STREAMS=str(streams), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    owner = nbclient.NotebookClient(nbformat.v4.new_notebook(), kernel_name=_build_module().kernel_name())
    owner.km = owner.create_kernel_manager()
    owner.start_new_kernel(cwd=str(ROOT / "notebooks"), env=env)
    yield owner.km
    run_sync(owner.km.shutdown_kernel)(now=True)


def small_notebook(path: Path):
    """The notebook with ``SMALL`` sizes injected after its parameters cell and the namespace emptied first."""
    build = _build_module()
    nb = nbformat.read(path, as_version=4)
    small = build.SMALL.get(path.name)
    if small:
        at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        injected = nbformat.v4.new_code_cell(small, metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(at + 1, injected)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset_selective -f ."))
    return nb


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel):
    nb = small_notebook(path)
    client = nbclient.NotebookClient(nb, km=kernel, timeout=300, allow_errors=False)
    try:
        client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert ran and all(c.execution_count is not None for c in ran)
