"""What each part may import (docs/architecture.md): agent/ and controller/ share only proto/, plugins/ and proto/
import nothing of ours. Read from the sources, so a new module is checked the day it is added."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# part (folder) -> the xpud packages it may import besides itself; "xpud" alone is the package root (__version__)
ALLOWED = {
    "proto": {"xpud"},
    "plugins": set(),
    "agent": {"xpud", "xpud.plugins", "xpud.proto"},
    "controller": {"xpud", "xpud.proto"},
}


def _imports(path: Path) -> set[str]:
    """The xpud packages a module imports, by their first two dotted names ("xpud.proto", or "xpud")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "xpud":
                found.add(".".join(parts[:2]))
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_a_part_imports_only_what_it_may(part: str) -> None:
    own = f"xpud.{part}"
    wrong = {}
    for path in sorted((ROOT / part).rglob("*.py")):
        bad = _imports(path) - ALLOWED[part] - {own}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{part}/ may import only {sorted(ALLOWED[part]) or 'nothing of ours'}: {wrong}"


def test_relative_imports_stay_inside_their_part() -> None:
    """`from ..x import y` may not climb out of agent/ or controller/ (their parents are different packages)."""
    wrong = []
    for part in ALLOWED:
        for path in (ROOT / part).rglob("*.py"):
            depth = len(path.relative_to(ROOT / part).parts) - 1  # packages below the part's own
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level > depth + 1:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not wrong
