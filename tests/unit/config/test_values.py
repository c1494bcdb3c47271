import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailferry.config.values import parse_bool, parse_size, parse_time


@pytest.mark.parametrize("text, seconds", [
    ("300s", 300), ("5m", 300), ("4000s", 4000), ("5d", 432000), ("1w", 604800), ("2h", 7200), ("0", 0),
])
def test_time_units(text, seconds):
    assert parse_time(text) == seconds


def test_bare_number_takes_the_parameters_default_unit():
    assert parse_time("5", "d") == 5 * 86400
    assert parse_time("5") == 5


@pytest.mark.parametrize("bad", ["", "5x", "s", "-1s", "1.5h", "5 m"])
def test_bad_time_values(bad):
    with pytest.raises(ValueError, match="bad time value"):
        parse_time(bad)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from("smhdw"))
def test_time_round_trip(number, unit):
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_time(f"{number}{unit}") == number * factor


def test_size():
    assert parse_size("10240000") == 10240000
    with pytest.raises(ValueError, match="bad size"):
        parse_size("10M")


def test_bool():
    assert parse_bool("yes") is True and parse_bool("NO") is False
    with pytest.raises(ValueError, match="yes or no"):
        parse_bool("true")
