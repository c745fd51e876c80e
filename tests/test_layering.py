"""The import direction of DESIGN.md section 2, checked on the source text (static imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "labeldistill"
BASE = {"errors", "structures", "geometry", "config", "nuscenes_schema", "io"}
ALLOWED: dict[str, set[str]] = {
    "base": BASE,
    "ops": BASE | {"ops"},
    "data": BASE | {"ops", "data"},
    "models": BASE | {"ops", "models"},
    "evaluation": BASE | {"evaluation", "data.infos", "data.nuscenes_reader"},
    "synth": BASE | {"synth"},
    "viz": BASE | {"viz", "evaluation", "data"},
    "training": BASE | {"ops", "data", "models", "evaluation", "training", "synth", "viz"},
    "cli": None,  # everything
}
THIRD_PARTY_FORBIDDEN = {
    "ops": {"lightning", "nuscenes"},
    "data": {"lightning"},
    "models": {"lightning", "nuscenes"},
    "evaluation": {"lightning"},
    "synth": {"torch", "torchvision", "lightning"},
    "viz": {"lightning"},
    "base": {"lightning", "nuscenes"},
}


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
    return names


def _allowed(internal: str, allowed: set[str]) -> bool:
    return any(internal == a or internal.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_import_direction(path: Path) -> None:
    layer = _layer(path)
    allowed = ALLOWED[layer]
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "labeldistill":
            internal = name[len("labeldistill.") :] if "." in name else ""
            if allowed is not None and internal:
                assert _allowed(internal, allowed), (
                    f"{path.relative_to(SRC)} ({layer}) imports {name}"
                )
        else:
            assert top not in THIRD_PARTY_FORBIDDEN.get(layer, set()), (
                f"{path.relative_to(SRC)} ({layer}) imports {name}"
            )


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from labeldistill.training import run\n")
    names = _imports(bad)
    assert not _allowed(names[0][len("labeldistill.") :], ALLOWED["models"])
