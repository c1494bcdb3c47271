import pytest

from mailferry.config.expand import Expander, ExpansionError


def expander(**values):
    return Expander(values.get)


def test_three_reference_forms():
    e = expander(a="A")
    assert e.expand("$a ${a} $(a)") == "A A A"


def test_recursive_expansion():
    e = expander(myhostname="mail.example.com", myorigin="$myhostname", from_="x")
    assert e.value_of("myorigin") == "mail.example.com"


def test_name_ends_at_non_name_character():
    e = expander(mydomain="example.com")
    assert e.expand("localhost.$mydomain, $mydomain.") == "localhost.example.com, example.com."


def test_undefined_expands_to_empty():
    assert expander().expand("[$nothing]") == "[]"


def test_double_dollar_is_literal():
    assert expander(a="A").expand("$$a") == "$a"


def test_question_mark_form():
    e = expander(set="yes", empty="")
    assert e.expand("${set?on}") == "on"
    assert e.expand("${empty?on}") == ""
    assert e.expand("${unset?on}") == ""


def test_colon_form():
    e = expander(set="yes", empty="")
    assert e.expand("${set:off}") == ""
    assert e.expand("${empty:off}") == "off"
    assert e.expand("${unset:off}") == "off"


def test_braced_branches_and_else():
    e = expander(set="yes")
    assert e.expand("${set?{a b}:{c d}}") == "a b"
    assert e.expand("${unset?{a b}:{c d}}") == "c d"


def test_conditional_text_is_expanded():
    e = expander(tls="yes", level="may")
    assert e.expand("${tls?level=$level}") == "level=may"


def test_nested_braces_inside_conditional():
    e = expander(a="1", b="B")
    assert e.expand("${a?x${b}y}") == "xBy"


def test_loop_is_detected_and_named():
    e = expander(a="$b", b="${c}", c="$(a)")
    with pytest.raises(ExpansionError) as info:
        e.value_of("a")
    assert "$a -> $b -> $c -> $a" in str(info.value)


def test_self_loop():
    with pytest.raises(ExpansionError, match=r"\$x -> \$x"):
        expander(x="pre $x").value_of("x")


def test_same_name_twice_is_not_a_loop():
    assert expander(a="$b $b", b="B").value_of("a") == "B B"


def test_unbalanced_brace_is_an_error():
    with pytest.raises(ExpansionError, match="unbalanced"):
        expander().expand("${a")


def test_compatibility_level_comparison():
    e = expander(compatibility_level="3.6")
    text = "${{$compatibility_level} <level {2} ? {subnet} : {host}}"
    assert e.expand(text) == "host"
    assert expander(compatibility_level="0").expand(text) == "subnet"
    assert expander(compatibility_level="3.10").expand("${{$compatibility_level} >level {3.6} ? {new} : {old}}") == "new"


def test_string_and_number_comparisons():
    e = expander(a="x")
    assert e.expand("${{$a} == {x} ? {same} : {diff}}") == "same"
    assert e.expand("${{$a} != {x} ? {same} : {diff}}") == "diff"
    assert e.expand("${{10} > {9} ? {yes} : {no}}") == "yes"
