"""SamplingDefaults: one set of defaults, the model's generation_config.json over the built-in
values, used alike by the Python API, the CLI, the OpenAI server and Triton."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtkv.runtime.sampling import SamplingParams
from trtkv.runtime.sampling_defaults import SamplingDefaults
from trtkv.serving.protocol import parse_chat, parse_completion


def _model(tmp_path: Path, config: object) -> Path:
    (tmp_path / "generation_config.json").write_text(json.dumps(config) if not isinstance(config, str) else config)
    return tmp_path


def test_built_in_defaults_are_sampling_params_defaults() -> None:
    d = SamplingDefaults()
    assert d.params() == SamplingParams()
    assert (d.value("max_new_tokens"), d.value("temperature"), d.source) == (16, 1.0, "built-in")


@pytest.mark.parametrize(("config", "want"), [
    ({"do_sample": False, "eos_token_id": 1}, {"temperature": 0.0}),
    ({"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20}, {"temperature": 0.6, "top_p": 0.9, "top_k": 20}),
    ({"max_new_tokens": 64, "repetition_penalty": 1.1}, {"max_new_tokens": 64, "repetition_penalty": 1.1}),
    ({"temperature": "hot", "top_k": 2.5, "top_p": True, "max_new_tokens": 0}, {}),  # not valid values: ignored
    ("{not json", {}),
    ([1, 2], {}),
])
def test_generation_config_overrides_what_it_sets(tmp_path: Path, config: object, want: dict[str, object]) -> None:
    d = SamplingDefaults.for_model(_model(tmp_path, config))
    got = {k: d.value(k) for k in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")}
    assert got == {**{k: SamplingDefaults().value(k) for k in got}, **want}
    assert (d.source == "built-in") == (not want)


def test_a_requests_own_values_win(tmp_path: Path) -> None:
    d = SamplingDefaults.for_model(_model(tmp_path, {"do_sample": False, "max_new_tokens": 40}))
    p = d.params(temperature=0.7, max_new_tokens=None, top_k=None)
    assert (p.temperature, p.max_new_tokens, p.top_k) == (0.7, 40, 0)
    assert SamplingDefaults.for_model(tmp_path / "missing") == SamplingDefaults()


def test_openai_parsing_fills_from_the_models_defaults(tmp_path: Path) -> None:
    d = SamplingDefaults.for_model(_model(tmp_path, {"temperature": 0.3, "max_new_tokens": 40}))
    req = parse_completion({"model": "m", "prompt": "hi"}, d)
    assert (req.params.temperature, req.params.max_new_tokens) == (0.3, 40)
    req = parse_completion({"model": "m", "prompt": "hi", "temperature": 0, "max_tokens": 3}, d)
    assert (req.params.temperature, req.params.max_new_tokens) == (0.0, 3)
    chat, _ = parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, 256, defaults=d)
    assert (chat.params.temperature, chat.params.max_new_tokens) == (0.3, 256)  # a chat reply's own budget
    plain = parse_completion({"model": "m", "prompt": "hi"})
    assert (plain.params.temperature, plain.params.max_new_tokens) == (1.0, 16)
