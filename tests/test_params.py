import math
import os
import subprocess
import sys

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


@pytest.mark.parametrize(
    "env, outcome",
    [
        ({"FINCH_PROMPT_CACHE_MIB": "0"}, "0"),  # no prompt cache: allowed
        ({"FINCH_PROMPT_CACHE_MIB": ""}, "1024"),  # blank: the default
        ({"FINCH_PROMPT_CACHE_MIB": "-1"}, "FINCH_PROMPT_CACHE_MIB=-1 must be at least 0"),
        (
            {"FINCH_PROMPT_CACHE_MIB": "1G"},
            "'1G' is not a whole number; unset it or set e.g. FINCH_PROMPT_CACHE_MIB=1024",
        ),
        ({"FINCH_QUEUE_SIZE": "0"}, "FINCH_QUEUE_SIZE=0 must be at least 1"),
    ],
)
def test_limits_from_the_environment_are_checked_with_what_to_set(env, outcome, repo_root):
    """A Space variable set wrong stops the app at start with what to set, not later mid-reply."""
    code = "from chat_runtime import limits; print(limits.PROMPT_CACHE_MIB)"
    env = {**os.environ, "PYTHONPATH": str(repo_root / "spaces"), **env}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    if outcome.isdigit():  # taken: the value the runtime uses
        assert done.returncode == 0 and done.stdout.strip() == outcome, done.stderr[-2000:]
    else:  # refused at start, saying what to set
        assert done.returncode != 0 and outcome in done.stderr
