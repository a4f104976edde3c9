import math

import pytest

from chat_runtime import DEFAULTS, RANGES, GenerationParams, validate

pytestmark = pytest.mark.gpu_set  # also on requirements-gpu.txt's versions


def test_defaults_are_inside_their_ranges():
    for name, (low, high) in RANGES.items():
        assert low <= getattr(DEFAULTS, name) <= high, name


def test_none_means_default_and_strings_of_numbers_are_accepted():
    params = validate(temperature=None, top_p="0.5", max_new_tokens=12.0, repetition_penalty=1)
    assert params == GenerationParams(
        temperature=DEFAULTS.temperature, top_p=0.5, max_new_tokens=12, repetition_penalty=1.0
    )
    assert isinstance(params.max_new_tokens, int)


def test_temperature_zero_is_greedy():
    assert validate(temperature=0).greedy and not validate(temperature=0.1).greedy


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"temperature": -0.1}, "temperature must be between 0 and 2"),
        ({"temperature": math.nan}, "temperature must be a finite number"),
        ({"top_p": math.inf}, "top_p must be a finite number"),
        ({"top_p": 0}, "top_p must be between"),
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1"),
        ({"max_new_tokens": -1}, "max_new_tokens must be between 1"),
        ({"max_new_tokens": 10**9}, "max_new_tokens must be between 1"),
        ({"max_new_tokens": 3.5}, "whole number"),
        ({"repetition_penalty": "lots"}, "repetition_penalty must be a number, got 'lots'"),
        ({"temperature": [1]}, "temperature must be a number, got list"),
        ({"temperature": True}, "temperature must be a number, got bool"),
        ({"seed": 3}, "unknown generation parameter(s): seed"),
    ],
)
def test_bad_values_are_refused_with_what_to_fix(values, fragment):
    with pytest.raises(ValueError) as err:
        validate(**values)
    assert fragment in str(err.value)
