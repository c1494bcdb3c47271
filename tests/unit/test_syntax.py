"""The text syntax shared by config/ and tables/: logical lines and lists."""

import ast
import pathlib

import pytest

import mailferry
from mailferry.syntax import logical_lines, split_list

SOURCE = pathlib.Path(mailferry.__file__).parent


def mailferry_imports(path: pathlib.Path) -> set[str]:
    """Every mailferry module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] == "mailferry"}


def test_the_syntax_module_imports_nothing_from_mailferry():
    assert mailferry_imports(SOURCE / "syntax.py") == set()


def test_tables_import_nothing_from_config():
    """config/ opens tables (check, local domains); the other way round would make a loop."""
    borrowed = {(path.name, name) for path in (SOURCE / "tables").glob("*.py")
                for name in mailferry_imports(path) if name.startswith("mailferry.config")}
    assert borrowed == set()


def test_logical_line_maps_offsets_to_physical_lines():
    [line] = list(logical_lines(["a = x\n", "  y\n", "  z\n"]))
    assert line.text == "a = x  y  z"
    assert line.line_at(0) == 1
    assert line.line_at(line.text.index("y")) == 2
    assert line.line_at(line.text.index("z")) == 3


def test_logical_lines_compare_by_value_and_are_not_hashable():
    first, again = (next(logical_lines(["a = x\n", " y\n"])) for _ in range(2))
    assert first == again and first is not again
    assert first != next(logical_lines(["a = x\n"]))
    assert repr(first) == "LogicalLine(text='a = x y', line=1, starts=[(1, 0), (2, 5)])"
    with pytest.raises(TypeError):
        hash(first)


def test_split_list_commas_and_whitespace():
    assert split_list("a, b  c,,d\n e") == ["a", "b", "c", "d", "e"]


def test_split_list_keeps_brace_groups():
    assert split_list("inline:{ a=b, c=d }, hash:/x") == ["inline:{ a=b, c=d }", "hash:/x"]
    assert split_list("{ x y }, z") == ["{ x y }", "z"]
