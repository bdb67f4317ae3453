"""The code's shape, checked from its source: imports run one way (orchestrator -> workers -> tasks),
no two modules import each other (directly or round a loop, function-level imports included), and
no module in workers/ or orchestrator/ grows past 500 lines (one idea per module)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("tasks", "workers", "orchestrator")  # installed as circuitry.tasks, circuitry.workers, ...
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["circuitry", *parts])


MODULES = {module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every module name an import statement anywhere in the file names (top level, in functions,
    under TYPE_CHECKING): `from a import b` names a.b where that is a module, else a."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return out


GRAPH = {m: {d for d in imported(p) if d in MODULES and d != m} for m, p in MODULES.items()}


def test_the_walk_sees_the_code():
    """The walk finds the modules and their imports (a walk that saw nothing would pass everything)."""
    assert "circuitry.workers.acdc.speculate" in MODULES and "circuitry.orchestrator.cli" in MODULES
    assert "circuitry.workers.acdc.downstream" in GRAPH["circuitry.workers.acdc.speculate"]
    assert "circuitry.orchestrator.cli_sweep" in GRAPH["circuitry.orchestrator.cli"]  # a function-level import


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops: one path round each strongly connected component of more than one module."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    loops = cycles(GRAPH)
    assert not loops, "modules that import each other (round a loop): " + "; ".join(" <-> ".join(c) for c in loops)


@pytest.mark.parametrize("layer,forbidden", [
    ("tasks", ("circuitry.workers", "circuitry.orchestrator", "ray", "mlflow")),
    ("workers", ("circuitry.orchestrator", "ray", "mlflow")),
])
def test_imports_run_one_way(layer, forbidden):
    """tasks -> nothing of ours; workers -> tasks only, and neither Ray nor MLflow (pure compute)."""
    wrong = [f"{m} imports {d}" for m, p in MODULES.items() if m.startswith(f"circuitry.{layer}")
             for d in sorted(imported(p)) if any(d == f or d.startswith(f + ".") for f in forbidden)]
    assert not wrong, wrong


def test_no_module_in_workers_or_orchestrator_passes_500_lines():
    long = {str(p.relative_to(ROOT)): n for m, p in MODULES.items() if not m.startswith("circuitry.tasks")
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (one idea each, at most {MAX_LINES} lines): {long}"


def test_imports_name_the_installed_package():
    """Bare folder names (workers.x) import only from the repository root; the installed names are circuitry.*."""
    bare = [f"{p.relative_to(ROOT)} imports {d}" for folder in (*FOLDERS, "tests", "benchmarks", "examples")
            for p in sorted((ROOT / folder).rglob("*.py")) for d in sorted(imported(p))
            if d.split(".")[0] in FOLDERS]
    assert not bare, bare
