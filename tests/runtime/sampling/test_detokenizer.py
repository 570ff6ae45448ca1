"""IncrementalDetokenizer on a real byte-level BPE tokenizer trained on the fly."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trtkv.runtime.sampling import IncrementalDetokenizer, SamplingParams, StopChecker
from trtkv.runtime.sampling.detokenizer import REPLACEMENT_CHAR

SENTENCES = [
    "héllo wörld 你好 🙂",
    "hello world, hello again. 你好世界!",
    "wörld peace 🙂🙂 and smiles 🙂 über alles",
    "the quick brown fox jumps over the lazy dog 🦊",
    "日本語のテキスト and ascii, café crème, naïve 🎉",
]


@functools.cache
def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )


def decode(tokenizer: PreTrainedTokenizerFast, ids: list[int], skip: bool = True) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    assert isinstance(text, str)
    return text


def test_tokenizer_splits_characters_over_tokens() -> None:
    """Guard: the fixture really has tokens holding parts of a multi-byte character."""
    tokenizer = make_tokenizer()
    partial = [
        t for text in SENTENCES for t in tokenizer.encode(text)
        if REPLACEMENT_CHAR in decode(tokenizer, [t])
    ]
    assert len(partial) >= 4


@pytest.mark.parametrize("text", SENTENCES)
@pytest.mark.parametrize("prompt", ["", "Say: ", "prompt 你"])
def test_every_prefix_streams_whole_characters(text: str, prompt: str) -> None:
    tokenizer = make_tokenizer()
    prompt_ids = tokenizer.encode(prompt)
    output_ids = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=True)
    streamed = ""
    for k, token in enumerate(output_ids, start=1):
        delta = detok.push(token)
        assert REPLACEMENT_CHAR not in delta
        streamed += delta
        full = decode(tokenizer, output_ids[:k])
        if not full.endswith(REPLACEMENT_CHAR):
            assert streamed == full
        else:
            assert full.startswith(streamed)
    assert streamed == text
    assert detok.flush() == ""


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(skip: bool) -> None:
    tokenizer = make_tokenizer()
    eos = tokenizer.eos_token_id
    assert eos is not None
    ids = [*tokenizer.encode("héllo"), eos, *tokenizer.encode(" 🙂")]
    detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=skip)
    streamed = "".join(detok.push(t) for t in ids)
    assert streamed == decode(tokenizer, ids, skip)
    assert ("<eos>" in streamed) is not skip


def test_window_stays_bounded() -> None:
    tokenizer = make_tokenizer()
    ids = tokenizer.encode(" ".join(SENTENCES * 10))
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("hi"), skip_special_tokens=True,
                                   use_stream=False)  # the window path (DecodeStream keeps its own)
    widths = []
    for token in ids:
        detok.push(token)
        widths.append(len(detok._ids))
    assert max(widths) <= 8


@settings(max_examples=150, deadline=None)
@given(
    output_ids=st.lists(st.integers(0, 299), max_size=30),
    prompt_index=st.integers(0, len(SENTENCES)),
    skip=st.booleans(),
)
def test_random_ids_concatenate_to_full_decode(output_ids: list[int], prompt_index: int,
                                               skip: bool) -> None:
    tokenizer = make_tokenizer()
    output_ids = [t % len(tokenizer) for t in output_ids]
    prompt = SENTENCES[prompt_index] if prompt_index < len(SENTENCES) else ""
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode(prompt), skip_special_tokens=skip)
    streamed = ""
    for k, token in enumerate(output_ids, start=1):
        streamed += detok.push(token)
        assert decode(tokenizer, output_ids[:k], skip).startswith(streamed)
    assert streamed + detok.flush() == decode(tokenizer, output_ids, skip)


@pytest.mark.parametrize("stop", ["你好", "🙂", "wörld"])
def test_stop_string_on_real_tokens(stop: str) -> None:
    """Detokenizer + StopChecker: the stop string (split over byte tokens) is never streamed."""
    tokenizer = make_tokenizer()
    text = SENTENCES[0]  # "héllo wörld 你好 🙂"
    params = SamplingParams(stop=(stop,), max_new_tokens=64)
    detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)
    checker = StopChecker(params, [tokenizer.eos_token_id or 0])
    deltas = []
    for token in tokenizer.encode(text):
        update = checker.update(token, detok.push(token))
        deltas.append(update.text_delta)
        if update.is_finished:
            break
    assert update.stop_reason == stop
    assert "".join(deltas) == checker.text == text[: text.index(stop)]
    assert all(REPLACEMENT_CHAR not in d and stop not in d for d in deltas)


@settings(max_examples=200, deadline=None)
@given(prompt=st.lists(st.integers(0, 299), min_size=1, max_size=12),
       output=st.lists(st.integers(0, 299), min_size=1, max_size=60), skip=st.booleans())
def test_decode_stream_and_window_give_the_same_text(prompt: list[int], output: list[int], skip: bool) -> None:
    """DecodeStream (used when the prompt context decodes cleanly) and the window agree,
    delta for delta, on any ids."""
    tokenizer = make_tokenizer()
    fast = IncrementalDetokenizer(tokenizer, prompt, skip)
    window = IncrementalDetokenizer(tokenizer, prompt, skip, use_stream=False)
    assert [fast.push(t) for t in output] + [fast.flush()] == [window.push(t) for t in output] + [window.flush()]


def test_decode_stream_is_used_for_clean_prompts() -> None:
    tokenizer = make_tokenizer()
    assert IncrementalDetokenizer(tokenizer, tokenizer.encode("héllo"))._stream is not None
    split = tokenizer.encode("🙂")[:1]  # a prompt ending inside a character: the window handles it
    assert len(tokenizer.encode("🙂")) > 1 and IncrementalDetokenizer(tokenizer, split)._stream is None
