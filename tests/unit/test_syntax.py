"""The text syntax shared by config/ and tables/: logical lines and lists."""

import pytest

from mailferry.syntax import logical_lines, split_list


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
