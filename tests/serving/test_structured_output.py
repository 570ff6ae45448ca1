"""Structured output through the OpenAI API (the official client): response_format
json_object / json_schema and vLLM's guided_* / structured_outputs, as a grammar mask in the
sampler (llguidance). Outputs must parse and validate; bad constraints are 400s; no leaks."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from tests.serving.conftest import MODEL_NAME, LiveServer, http

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "visited": {"type": "boolean"},
        "days": {"type": "integer", "minimum": 1, "maximum": 30},
        "tags": {"type": "array", "items": {"enum": ["food", "art"]}, "maxItems": 2},
    },
    "required": ["city", "visited", "days", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a trip as JSON."}]


def _no_leaks(live: LiveServer) -> None:
    assert live.stats()["scheduler"]["kv"]["num_used"] == 0


def test_json_schema_output_parses_and_validates(client, live_server: LiveServer) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=80, temperature=0.9, seed=3, n=3,
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}})
    assert len(reply.choices) == 3
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    _no_leaks(live_server)


def test_json_schema_streamed(client, live_server: LiveServer) -> None:
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=80, temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)
    # Greedy: the streamed text is the non-streamed one.
    full = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=80, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}})
    assert full.choices[0].message.content == text


def test_json_object_is_an_object(client) -> None:
    reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=120,
                                           temperature=0, response_format={"type": "json_object"})
    choice = reply.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # cut by max_tokens: still a prefix of one JSON object
        assert choice.finish_reason == "length" and choice.message.content.startswith("{")


def test_vllm_guided_parameters(client, live_server: LiveServer) -> None:
    options = ["positive", "negative", "neutral"]
    for seed in range(3):
        reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=10,
                                               temperature=1.0, seed=seed, extra_body={"guided_choice": options})
        assert reply.choices[0].message.content in options and reply.choices[0].finish_reason == "stop"
    pattern = r"[A-Z][a-z]{2,5}-\d{3}"
    done = client.completions.create(model=MODEL_NAME, prompt="id: ", max_tokens=20, temperature=0.7, seed=1,
                                     n=2, extra_body={"guided_regex": pattern})
    for choice in done.choices:
        assert re.fullmatch(pattern, choice.text), choice.text
    grammar = 'root ::= "(" [0-9] ("+" [0-9])* ")"'
    done = client.completions.create(model=MODEL_NAME, prompt="sum: ", max_tokens=24, temperature=0,
                                     extra_body={"guided_grammar": grammar})
    text = done.choices[0].text
    assert re.fullmatch(r"\(\d(\+\d)*\)", text) or (done.choices[0].finish_reason == "length"
                                                    and re.fullmatch(r"\(\d(\+\d)*\+?", text)), text
    reply = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=80, temperature=0,
                                           extra_body={"structured_outputs": {"json": SCHEMA}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
    _no_leaks(live_server)


@pytest.mark.parametrize("extra,param,needle", [
    ({"guided_regex": "(unclosed"}, "guided_regex", "does not compile"),
    ({"guided_json": "{not json"}, "guided_json", "invalid"),
    ({"guided_choice": []}, "guided_choice", "at least 1 item"),
    ({"guided_choice": "yes"}, "guided_choice", "valid list"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice", "one structured-output constraint"),
    ({"structured_outputs": {"xml": "<a/>"}}, "structured_outputs", "not supported"),
])
def test_bad_constraints_are_400(live_server: LiveServer, extra: dict, param: str, needle: str) -> None:
    body = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 4, **extra}
    code, _, reply = http(live_server.base_url, "POST", "/v1/chat/completions", body)
    assert code == 400, reply
    assert reply["error"]["param"] == param and needle in reply["error"]["message"], reply
    # The server is fine afterwards.
    assert http(live_server.base_url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200
    _no_leaks(live_server)
