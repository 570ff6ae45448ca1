"""StopChecker: finish reasons, min_tokens, stop strings across tokens and stream hold-back."""

from __future__ import annotations

import pytest

from trtkv.errors import RequestRejectedError
from trtkv.runtime.sampling import SamplingParams, StopChecker, StopUpdate

EOS = 0
# A toy vocabulary: token id -> text delta (as an IncrementalDetokenizer would give).
VOCAB = {0: "", 1: "Hello", 2: " wor", 3: "ld", 4: "!", 5: " EN", 6: "D", 7: "E", 8: "x",
         9: "ENDx", 10: "\n\n"}


def run(params: SamplingParams, token_ids: list[int], **kwargs: int) -> tuple[
        list[StopUpdate], StopChecker]:
    checker = StopChecker(params, eos_token_ids=[EOS], **kwargs)
    updates = []
    for token in token_ids:
        updates.append(checker.update(token, VOCAB[token]))
        if updates[-1].is_finished:
            break
    return updates, checker


def streamed(updates: list[StopUpdate]) -> str:
    return "".join(u.text_delta for u in updates)


def test_eos_stops_and_its_text_is_dropped() -> None:
    updates, checker = run(SamplingParams(), [1, 2, 3, EOS, 4])
    assert len(updates) == 4
    assert (updates[-1].finish_reason, updates[-1].stop_reason) == ("stop", EOS)
    assert streamed(updates) == checker.text == "Hello world"
    assert checker.is_finished and checker.finish_reason == "stop"


def test_ignore_eos_keeps_going_until_length() -> None:
    updates, checker = run(SamplingParams(ignore_eos=True, max_new_tokens=5), [1, EOS, 2, 3, 4])
    assert [u.finish_reason for u in updates] == [None] * 4 + ["length"]
    assert updates[-1].stop_reason is None
    assert checker.text == "Hello world!"


def test_stop_token_ids() -> None:
    updates, checker = run(SamplingParams(stop_token_ids=(4,)), [1, 2, 3, 4, 1])
    assert (updates[-1].finish_reason, updates[-1].stop_reason) == ("stop", 4)
    assert checker.text == "Hello world"


def test_min_tokens_blocks_eos_stop_ids_and_stop_strings() -> None:
    params = SamplingParams(min_tokens=3, stop_token_ids=(4,), stop=("Hello",))
    updates, checker = run(params, [EOS, 4, 1, EOS])
    assert [u.finish_reason for u in updates] == [None, None, None, "stop"]
    assert checker.text == "!Hello"
    updates, _ = run(params, [1, 1, 1, 1])
    assert [u.stop_reason for u in updates] == [None, None, None, "Hello"]


def test_stop_string_split_over_two_tokens_is_never_emitted() -> None:
    params = SamplingParams(stop=("END",))
    updates, checker = run(params, [1, 5, 6, 4])
    assert [u.text_delta for u in updates] == ["Hello", " ", ""]
    assert (updates[-1].finish_reason, updates[-1].stop_reason) == ("stop", "END")
    assert checker.text == "Hello "


def test_stop_string_inside_one_token_truncates_the_token_text() -> None:
    updates, checker = run(SamplingParams(stop=("END",)), [1, 9, 4])
    assert updates[-1].stop_reason == "END"
    assert checker.text == "Hello"


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    params = SamplingParams(stop=("END",))
    updates, checker = run(params, [1, 5, 8, 7, 7, 3])
    assert [u.text_delta for u in updates] == ["Hello", " ", "ENx", "", "E", "Eld"]
    assert not checker.is_finished
    assert checker.text == "Hello ENxEEld"
    for u in updates:
        assert "END" not in u.text_delta


def test_held_back_text_is_released_at_length_and_eos() -> None:
    updates, checker = run(SamplingParams(stop=("END",), max_new_tokens=2), [1, 5])
    assert updates[-1].finish_reason == "length"
    assert streamed(updates) == checker.text == "Hello EN"
    updates, checker = run(SamplingParams(stop=("END",)), [1, 5, EOS])
    assert updates[-1].finish_reason == "stop"
    assert streamed(updates) == checker.text == "Hello EN"


def test_earliest_of_several_stop_strings_wins() -> None:
    updates, checker = run(SamplingParams(stop=("ld!", "orl", "\n")), [1, 2, 3, 4])
    assert updates[-1].stop_reason == "orl"
    assert checker.text == "Hello w"


@pytest.mark.parametrize("max_new_tokens", [1, 3])
def test_length(max_new_tokens: int) -> None:
    updates, checker = run(SamplingParams(max_new_tokens=max_new_tokens), [1, 2, 3, 4, 1])
    assert len(updates) == max_new_tokens
    assert updates[-1].finish_reason == "length"
    assert checker.num_output_tokens == max_new_tokens


def test_max_model_len_bounds_prompt_plus_output() -> None:
    updates, _ = run(SamplingParams(max_new_tokens=100), [1, 2, 3, 4, 1],
                     num_prompt_tokens=6, max_model_len=9)
    assert len(updates) == 3 and updates[-1].finish_reason == "length"
    with pytest.raises(RequestRejectedError, match="max_model_len"):
        StopChecker(SamplingParams(), [EOS], num_prompt_tokens=9, max_model_len=9)


def test_update_after_finish_is_a_bug() -> None:
    _, checker = run(SamplingParams(max_new_tokens=1), [1])
    with pytest.raises(AssertionError):
        checker.update(1, "Hello")
