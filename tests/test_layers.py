"""The package's layers: no import cycles (module- or function-level), and dependencies point down only:
core (model, block, mixers, ops, hooks, interface, ...) <- io, data <- methods <- harvest <- cli / app."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "probe"
CORE = ("probe.atomic", "probe.block", "probe.cache", "probe.checkpoint_format", "probe.config", "probe.errors",
        "probe.finite", "probe.hooks", "probe.interface", "probe.mixers", "probe.mlp", "probe.model", "probe.norm",
        "probe.ops", "probe.result", "probe.sampling", "probe.state", "probe.tokenizers")
ABOVE = {"core": ("probe.io", "probe.data", "probe.train", "probe.evaluate", "probe.methods", "probe.harvest",
                  "probe.zoo", "probe.loading", "probe.cli"),
         "probe.io": ("probe.methods", "probe.harvest", "probe.zoo", "probe.cli"),
         "probe.data": ("probe.methods", "probe.harvest", "probe.io", "probe.evaluate", "probe.train", "probe.zoo",
                        "probe.cli"),
         "probe.methods": ("probe.harvest", "probe.zoo", "probe.cli", "probe.train")}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict) -> set[str]:
    """Every probe module ``name`` imports, at module level or inside functions (TYPE_CHECKING blocks aside)."""
    out = set()
    package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if package else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("probe"):
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def test_no_import_cycles(graph):
    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    cyclic = sorted(m for m in graph if reaches(m, m, set()))
    assert not cyclic, f"modules on an import cycle: {cyclic}"


#: probe.data still names evaluate_minimal_pairs (public), imported from probe.evaluate on first use
ALLOWED = {("probe.data", "probe.evaluate")}


def _layer(module: str) -> str | None:
    if module.startswith(CORE):
        return "core"
    return next((layer for layer in ABOVE if layer != "core" and module.startswith(layer)), None)


def test_dependencies_point_down(graph):
    upward = [(m, t) for m, targets in graph.items() for t in targets
              if _layer(m) and t.startswith(ABOVE[_layer(m)]) and (m, t) not in ALLOWED]
    assert not upward, f"imports from a higher layer: {upward}"
