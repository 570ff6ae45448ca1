"""Tool calling: tools reach the chat template, forced tool_choice (a function, "required")
is a JSON grammar over the tools' schemas, "auto" output is parsed (hermes, llama3_json),
streamed calls arrive whole in the finishing chunk, and tool messages render."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.serving.conftest import API_KEY, MODEL_NAME, LiveServer, context_len, http, start_server
from trtkv.runtime.config import EngineConfig
from trtkv.serving.config import ServerConfig
from trtkv.serving.tools import ToolError, parse_tool_calls, plan_tools, template_messages

WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                            "unit": {"enum": ["C", "F"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather now", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
TEMPLATE = ("{%- if tools %}<|system|>tools: {{ tools | tojson }}\n{% endif %}"
            "{%- for m in messages %}<|{{ m.role }}|>{{ m.content }}"
            "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
ASK = [{"role": "user", "content": "Weather in Paris?"}]
HERMES_CALL = r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome)", "unit": "C"\}\}</tool_call>'


# -- parsing and planning (no server) -------------------------------------------------------
def test_hermes_parser() -> None:
    text = 'Sure.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    content, calls = parse_tool_calls("hermes", text)
    assert content == "Sure." and [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {})]
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    assert parse_tool_calls("hermes", "<tool_call>{not json}</tool_call>") == ("<tool_call>{not json}</tool_call>", [])
    assert parse_tool_calls("hermes", "no calls here") == ("no calls here", [])


def test_llama3_json_parser() -> None:
    content, calls = parse_tool_calls("llama3_json", '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}')
    assert content is None and [c.name for c in calls] == ["a", "b"] and json.loads(calls[0].arguments) == {"x": 1}
    assert parse_tool_calls("llama3_json", "The answer is 4.") == ("The answer is 4.", [])
    assert parse_tool_calls("llama3_json", '{"name": "a"}')[1] == []  # no parameters: not a call


@pytest.mark.parametrize("tools,choice,auto,needle,param", [
    (TOOLS, "auto", False, "--enable-auto-tool-choice", "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, True, "not in 'tools'", "tool_choice"),
    (TOOLS, "sometimes", True, "must be", "tool_choice"),
    ([{"type": "function", "function": {"name": "bad name!"}}], "auto", True, "tools[0]", "tools"),
    ([TOOLS[0], TOOLS[0]], "auto", True, "given twice", "tools"),
    (None, "required", True, "needs 'tools'", "tool_choice"),
])
def test_bad_tool_requests(tools, choice, auto, needle, param) -> None:
    with pytest.raises(ToolError, match=needle.replace("[", r"\[").replace("]", r"\]")) as info:
        plan_tools(tools, choice, parser="hermes", auto_enabled=auto)
    assert info.value.param == param


def test_tool_messages_are_made_template_ready() -> None:
    msgs = template_messages([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}])
    assert msgs[0]["content"] == "" and msgs[0]["tool_calls"][0]["function"]["arguments"] == {"x": 1}
    with pytest.raises(ToolError, match="string 'content'"):
        template_messages([{"role": "tool", "content": None}])


# -- through the server --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tool_server(chat_model_dir):
    live = start_server(chat_model_dir, EngineConfig(num_blocks=256, num_threads=1, max_num_seqs=16,
                                                     max_model_len=context_len(chat_model_dir, 512)),
                        ServerConfig(port=0, served_model_name=MODEL_NAME, api_key=API_KEY,
                                     enable_auto_tool_choice=True, tool_call_parser="hermes"))
    yield live
    live.shutdown()


@pytest.fixture(scope="module")
def tool_client(tool_server: LiveServer):
    import openai

    return openai.OpenAI(base_url=tool_server.base_url + "/v1", api_key=API_KEY, max_retries=0)


def _create(client, **kw):
    kw.setdefault("max_tokens", 64)
    return client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS,
                                          extra_body={"chat_template": TEMPLATE, **kw.pop("extra", {})}, **kw)


def test_tools_reach_the_template(tool_server: LiveServer) -> None:
    body = {"model": MODEL_NAME, "messages": ASK, "max_tokens": 1, "chat_template": TEMPLATE}
    plain = http(tool_server.base_url, "POST", "/v1/chat/completions", body)[2]
    with_tools = http(tool_server.base_url, "POST", "/v1/chat/completions", {**body, "tools": TOOLS,
                                                                              "tool_choice": "auto"})[2]
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20


def test_named_tool_choice_is_a_valid_call(tool_client) -> None:
    reply = _create(tool_client, temperature=0.9, seed=2, n=2,
                    tool_choice={"type": "function", "function": {"name": "get_weather"}})
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_required_tool_choice_calls_known_tools(tool_client, tool_server: LiveServer) -> None:
    for seed in range(3):
        reply = _create(tool_client, temperature=1.0, seed=seed, tool_choice="required", parallel_tool_calls=False)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        (call,) = choice.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    reply = _create(tool_client, temperature=0, tool_choice="required", max_tokens=200)
    choice = reply.choices[0]
    if choice.finish_reason == "tool_calls":  # parallel calls allowed: one or more
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    else:  # cut by max_tokens: the partial JSON comes back as content, never as a broken call
        assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert tool_server.stats()["scheduler"]["kv"]["num_used"] == 0


def test_auto_tool_choice_parses_hermes_output(tool_client) -> None:
    # The output is forced into a Hermes call by a regex, so the parse path runs on real output.
    reply = _create(tool_client, temperature=0.8, seed=1, tool_choice="auto", extra={"guided_regex": HERMES_CALL})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["unit"] == "C"
    plain = _create(tool_client, temperature=0, tool_choice="auto", extra={"guided_regex": "[a-z]{4,12}"})
    assert plain.choices[0].message.tool_calls is None and plain.choices[0].finish_reason == "stop"
    assert plain.choices[0].message.content


def test_streamed_tool_call_arrives_whole(tool_client) -> None:
    chunks = list(_create(tool_client, temperature=0, stream=True, tool_choice="auto",
                          extra={"guided_regex": r"Checking\. " + HERMES_CALL}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    text = "".join(d.content or "" for d in deltas)
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert text.strip() == "Checking." and "<" not in text  # the text before the call streams
    assert len(calls) == 1 and calls[0].function.name == "get_weather" and calls[0].id.startswith("call_")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    named = list(_create(tool_client, temperature=0, stream=True,
                         tool_choice={"type": "function", "function": {"name": "get_time"}}))
    calls = [tc for c in named if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and json.loads(calls[0].function.arguments)["zone"] in ("UTC", "CET")


def test_tool_results_render_in_the_next_turn(tool_client) -> None:
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"}]
    reply = tool_client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS, max_tokens=4,
                                                extra_body={"chat_template": TEMPLATE, "ignore_eos": True})
    assert reply.choices[0].finish_reason == "length" and reply.usage.prompt_tokens > 40


def test_auto_needs_the_server_flags(live_server: LiveServer) -> None:
    code, _, reply = http(live_server.base_url, "POST", "/v1/chat/completions",
                          {"model": MODEL_NAME, "messages": ASK, "tools": TOOLS, "max_tokens": 2})
    assert code == 400 and reply["error"]["param"] == "tool_choice" and "--enable-auto-tool-choice" in reply["error"]["message"]
    code, _, reply = http(live_server.base_url, "POST", "/v1/chat/completions",
                          {"model": MODEL_NAME, "messages": ASK, "tools": TOOLS, "max_tokens": 40,
                           "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
    assert code == 200 and reply["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
