"""SamplingParams validation: every bad field is rejected with a message naming it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from trtkv.errors import InvalidRequestError
from trtkv.runtime.sampling import SamplingParams

INVALID: list[tuple[str, Any]] = [
    ("n", 0),
    ("n", 1.5),
    ("n", True),
    ("max_new_tokens", 0),
    ("max_new_tokens", -3),
    ("temperature", -0.1),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("temperature", "hot"),
    ("top_k", -1),
    ("top_k", 2.0),
    ("top_p", 0.0),
    ("top_p", 1.01),
    ("top_p", -0.5),
    ("min_p", -0.1),
    ("min_p", 1.5),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("presence_penalty", 2.5),
    ("presence_penalty", -2.01),
    ("frequency_penalty", 3.0),
    ("frequency_penalty", -7.0),
    ("seed", 1.5),
    ("seed", "42"),
    ("seed", -1),
    ("seed", True),
    ("logprobs", 21),
    ("logprobs", -1),
    ("logprobs", 2.0),
    ("stop", ("ok", "")),
    ("stop", ("ok", 3)),
    ("stop", "END"),
    ("stop_token_ids", (1, -2)),
    ("stop_token_ids", (1, "2")),
    ("ignore_eos", 1),
    ("min_tokens", -1),
    ("skip_special_tokens", "yes"),
]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_value_names_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    message = str(info.value)
    assert field in message
    assert repr(value) in message or field in ("stop", "stop_token_ids")


def test_min_tokens_may_not_exceed_max_new_tokens() -> None:
    with pytest.raises(InvalidRequestError, match="min_tokens=9 .*max_new_tokens"):
        SamplingParams(max_new_tokens=8, min_tokens=9)
    SamplingParams(max_new_tokens=8, min_tokens=8)


def test_range_is_in_message() -> None:
    with pytest.raises(InvalidRequestError, match=r"top_p=1\.5 .*\(0, 1\]"):
        SamplingParams(top_p=1.5)
    with pytest.raises(InvalidRequestError, match=r"logprobs=25 .*\[0, 20\]"):
        SamplingParams(logprobs=25)


def test_valid_edges_and_defaults() -> None:
    p = SamplingParams()
    assert (p.n, p.max_new_tokens, p.temperature, p.top_k, p.top_p) == (1, 16, 1.0, 0, 1.0)
    assert not p.is_greedy
    assert SamplingParams(temperature=0).is_greedy
    SamplingParams(top_p=1.0, min_p=1.0, presence_penalty=-2, frequency_penalty=2,
                   repetition_penalty=0.01, seed=0, logprobs=20, top_k=1)


def test_lists_become_tuples_and_params_are_frozen() -> None:
    p = SamplingParams(stop=["a", "bc"], stop_token_ids=[3, 4])  # type: ignore[arg-type]
    assert p.stop == ("a", "bc")
    assert p.stop_token_ids == (3, 4)
    hash(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.n = 2  # type: ignore[misc]
    assert p.as_dict()["stop"] == ("a", "bc")


def test_stop_lists_are_capped() -> None:
    from trtkv.runtime.sampling.params import (
        MAX_STOP_STRING_CHARS,
        MAX_STOP_STRINGS,
        MAX_STOP_TOKEN_IDS,
    )

    SamplingParams(stop=["x"] * MAX_STOP_STRINGS, stop_token_ids=list(range(MAX_STOP_TOKEN_IDS)))
    for kwargs in ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, {"stop": ["y" * (MAX_STOP_STRING_CHARS + 1)]},
                   {"stop_token_ids": list(range(MAX_STOP_TOKEN_IDS + 1))}):
        with pytest.raises(InvalidRequestError, match="at most"):
            SamplingParams(**kwargs)
