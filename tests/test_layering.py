"""The architecture of docs/DEVELOPING.md, checked on the source text (static imports):

* the layer order: every package imports only the layers of :data:`ALLOWED` (cli -> recipes ->
  training -> checkpoint -> models -> ops -> base; training -> data, evaluation; export ->
  models, checkpoint, data, evaluation), and no forbidden third-party package;
* no import cycle anywhere in the module graph (inside a package too);
* no function-local import below ``cli.py`` except of a heavy optional dependency
  (:data:`OPTIONAL`), marked with a ``# optional here: <why>`` comment.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "labeldistill"
PACKAGE = "labeldistill"
#: Top-level modules of the base layer (imported by every layer).
BASE = {"errors", "structures", "geometry", "config", "nuscenes_schema", "io"}
#: layer -> the internal modules / packages it may import (None: everything). One row per
#: layer; a new package adds one row (and its name to the rows allowed to import it).
ALLOWED: dict[str, set[str] | None] = {
    "base": BASE,
    "ops": BASE | {"ops"},
    "data": BASE | {"ops", "data"},
    "models": BASE | {"ops", "models"},
    "synth": BASE | {"synth"},
    "checkpoint": BASE | {"ops", "models", "checkpoint"},
    "evaluation": BASE | {"evaluation", "data.infos", "data.nuscenes_reader"},
    "viz": BASE | {"viz", "evaluation", "data"},
    # stage 0 reads the class list of the synthetic class maps (synth.camera)
    "training": BASE
    | {"ops", "data", "models", "evaluation", "checkpoint", "training", "synth.camera"},
    "export": BASE | {"ops", "data", "models", "evaluation", "checkpoint", "export"},
    "recipes": BASE
    | {"ops", "data", "models", "evaluation", "checkpoint", "training", "recipes", "synth", "viz"},
    "cli": None,
}
THIRD_PARTY_FORBIDDEN: dict[str, set[str]] = {
    "base": {"lightning", "nuscenes"},
    "ops": {"lightning", "nuscenes"},
    "data": {"lightning"},
    "models": {"lightning", "nuscenes"},
    "checkpoint": {"lightning", "nuscenes"},
    "evaluation": {"lightning"},
    "synth": {"torch", "torchvision", "lightning"},
    "viz": {"lightning"},
    "export": {"lightning"},
}
#: Heavy optional dependencies that may be imported inside a function (with a comment).
OPTIONAL = {"onnx", "onnxruntime", "spconv", "nuscenes", "threadpoolctl"}
MARK = "# optional here:"


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    if len(rel.parts) == 1:
        stem = rel.stem
        if stem in BASE or stem == "__init__":
            return "base"
        return "cli"
    return rel.parts[0]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            # ``from labeldistill.training import run`` imports the module training.run
            names += [f"{node.module}.{a.name}" for a in node.names if _is_module(node.module, a)]
    return names


def _is_module(module: str, alias: ast.alias) -> bool:
    if not module.startswith(PACKAGE):
        return False
    base = SRC.joinpath(*module.split(".")[1:])
    return (base / f"{alias.name}.py").is_file() or (base / alias.name).is_dir()


def _allowed(internal: str, allowed: set[str]) -> bool:
    return any(internal == a or internal.startswith(a + ".") for a in allowed)


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_import_direction(path: Path) -> None:
    layer = _layer(path)
    allowed = ALLOWED[layer]
    for name in _imports(path):
        top = name.split(".")[0]
        if top == PACKAGE:
            internal = name[len(PACKAGE) + 1 :] if "." in name else ""
            if allowed is not None and internal:
                assert _allowed(internal, allowed), (
                    f"{path.relative_to(SRC)} ({layer}) imports {name}"
                )
        else:
            assert top not in THIRD_PARTY_FORBIDDEN.get(layer, set()), (
                f"{path.relative_to(SRC)} ({layer}) imports {name}"
            )


def _graph() -> dict[str, set[str]]:
    """module -> the internal modules it imports (package ``__init__`` files excluded)."""
    modules = {_module_name(p): p for p in SOURCES if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _local_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, node.module or "."))
    return found


@pytest.mark.parametrize(
    "path",
    [p for p in SOURCES if p != SRC / "cli.py"],
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_no_function_local_import(path: Path) -> None:
    lines = path.read_text().splitlines()
    for lineno, name in _local_imports(path):
        where = f"{path.relative_to(SRC)}:{lineno} imports {name} inside a function"
        assert name.split(".")[0] in OPTIONAL, f"{where}: import it at the top of the file"
        # the mark sits on the import, or on the line above its block of imports
        above = lineno - 2
        while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
            above -= 1
        marked = MARK in lines[lineno - 1] or (above >= 0 and MARK in lines[above])
        assert marked, f"{where}: say why with a '{MARK} <why>' comment"


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from labeldistill.training import run\n")
    names = _imports(bad)
    assert not _allowed(names[0][len("labeldistill.") :], ALLOWED["models"])  # type: ignore[arg-type]
    local = tmp_path / "local.py"
    local.write_text("def f():\n    import torch\n")
    assert _local_imports(local) == [(2, "torch")]


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_test_module_imports_another() -> None:
    """Test helpers live in conftest.py fixtures: no test file imports a sibling test module
    (or a conftest) by name."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top.startswith("test_") or top in {"conftest", "tests"}:
                    offenders.append(f"{path.relative_to(tests)}:{node.lineno} imports {name}")
    assert not offenders, offenders
