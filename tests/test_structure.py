"""The tree shows the design: functions short enough to read, and no import cycle, not even one
hidden in an import inside a function. (`make test` checks the layers with lint-imports.)"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import grimp
import pytest

import mailer

MAX_FUNCTION_LINES = 60
PACKAGE = Path(mailer.__file__).resolve().parent


def long_functions(root: Path) -> list[str]:
    """Every function under root longer than MAX_FUNCTION_LINES, from its def line to its last."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}() is {length} lines")
    return found


def import_cycles(package: str) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's algorithm)."""
    graph = grimp.build_graph(package, cache_dir=None)  # imports inside functions included
    imports = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in imports[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in imports:
        if module not in index:
            visit(module)
    return cycles


AREAS = ["cli", "content", "web", "inbound", "delivery", "recipients", "modules"]  # modules: mailer/*.py


@pytest.mark.parametrize("area", AREAS)
def test_no_function_is_longer_than_60_lines(area: str) -> None:
    if area == "modules":
        found = [f for f in long_functions(PACKAGE) if f.count("/") == 1]
    else:
        found = long_functions(PACKAGE / area)
    assert found == [], "split by meaning:\n" + "\n".join(found)


def test_the_length_check_counts_from_the_def_line_to_the_last(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    (package / "m.py").write_text(
        f"def sixty() -> None:\n{body}\n\n@staticmethod\ndef sixty_one() -> None:\n{body}    pass\n",
        encoding="utf-8",
    )
    assert long_functions(package) == ["pkg/m.py:64 sixty_one() is 61 lines"]


def test_no_module_imports_itself_through_others() -> None:
    assert import_cycles("mailer") == []


def test_a_cycle_through_an_import_inside_a_function_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "a.py").write_text("from cyclic import b\n", encoding="utf-8")
    (package / "b.py").write_text("def late() -> None:\n    from cyclic import a\n", encoding="utf-8")
    (package / "c.py").write_text("from cyclic import a\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cyclic", raising=False)
    assert import_cycles("cyclic") == [["cyclic.a", "cyclic.b"]]


def test_tests_take_shared_fixtures_as_fixtures_not_imports_from_conftest() -> None:
    tests = Path(__file__).parent
    importing = sorted(p.name for p in tests.glob("*.py")
                       if re.search(r"^\s*(from conftest import|import conftest)", p.read_text(encoding="utf-8"),
                                    re.MULTILINE))
    assert importing == [], "use the fixture, or a helper module such as cli_helpers: " + ", ".join(importing)
