"""The server over loopback: the official `openai` client, then raw HTTP for every error."""

from __future__ import annotations

import json

import pytest

from tests.serving.conftest import API_KEY, MODEL_NAME, LiveServer, http

openai = pytest.importorskip("openai")


def _greedy(**kw):
    return dict(model=MODEL_NAME, temperature=0, max_tokens=8, extra_body={"ignore_eos": True}, **kw)


def test_models_and_health(client, live_server: LiveServer) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert http(live_server.base_url, "GET", "/health", api_key=None)[:1] == (200,)


def test_completion_and_its_stream_agree(client) -> None:
    full = client.completions.create(prompt="def main(", **_greedy())
    choice = full.choices[0]
    assert choice.finish_reason == "length"
    assert full.usage.completion_tokens == 8 and full.usage.prompt_tokens > 0
    chunks = list(client.completions.create(prompt="def main(", stream=True,
                                            stream_options={"include_usage": True}, **_greedy()))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8


def test_token_id_prompt_n_seed_stop_logprobs(client) -> None:
    ids = [5, 6, 7, 8]
    a = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, n=2, seed=7,
                                  temperature=1.0, logprobs=2, extra_body={"ignore_eos": True})
    b = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, n=2, seed=7,
                                  temperature=1.0, logprobs=2, extra_body={"ignore_eos": True})
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seeded: reproducible
    assert sorted(c.index for c in a.choices) == [0, 1]
    lp = a.choices[0].logprobs
    assert len(lp.token_logprobs) == 6 and all(len(t) <= 2 for t in lp.top_logprobs)
    assert a.usage.prompt_tokens == 4 and a.usage.completion_tokens == 12
    greedy = client.completions.create(prompt=ids, **_greedy())
    stop = greedy.choices[0].text[2:4]
    if stop.strip():
        cut = client.completions.create(prompt=ids, stop=[stop], **_greedy())
        assert stop not in cut.choices[0].text and cut.choices[0].finish_reason == "stop"


def test_chat_and_its_stream_agree(client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "import os"}]
    full = client.chat.completions.create(messages=messages, **_greedy())
    assert full.choices[0].message.role == "assistant"
    assert full.object == "chat.completion"
    stream = client.chat.completions.create(messages=messages, stream=True, logprobs=True,
                                            top_logprobs=1, **_greedy())
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    num_logprobs = sum(len(c.choices[0].logprobs.content) for c in chunks
                       if c.choices and c.choices[0].logprobs)
    assert num_logprobs == 8


def test_client_raises_openai_errors(client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2, temperature=-1)
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


BODY = {"model": MODEL_NAME, "prompt": "x", "max_tokens": 2}


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/completions", {**BODY, "max_tokens": "3"}, 400, "max_tokens"),
    ("/v1/completions", {**BODY, "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {**BODY, "stream": 1}, 400, "stream"),
    ("/v1/completions", {**BODY, "prompt": 5}, 400, "prompt"),
    ("/v1/completions", {**BODY, "prompt": [1, "a"]}, 400, "prompt"),
    ("/v1/completions", {**BODY, "stop": [1]}, 400, "stop"),
    ("/v1/completions", {**BODY, "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {**BODY, "n": 0}, 400, "n"),
    ("/v1/completions", {**BODY, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {**BODY, "logprobs": 99}, 400, "logprobs"),
    ("/v1/completions", {**BODY, "presence_penalty": 3}, 400, "presence_penalty"),
    ("/v1/completions", {**BODY, "seed": -1}, 400, "seed"),
    ("/v1/completions", {**BODY, "prompt": [10**9]}, 400, None),
    ("/v1/completions", [1, 2], 400, None),
    ("/v1/completions", {**BODY, "model": "gpt-4"}, 404, "model"),
    ("/v1/chat/completions", {"model": MODEL_NAME, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "user"}]}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL_NAME, "messages": []}, 400, "messages"),
    ("/v1/completions", {**BODY, "max_tokens": 10_000}, 400, None),
    ("/v1/completions", {**BODY, "prompt": [5] * 300}, 400, None),
])
def test_bad_requests_get_openai_errors(live_server: LiveServer, path, body, status, param) -> None:
    code, _, reply = http(live_server.base_url, "POST", path, body)
    assert code == status, reply
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["message"]
    if param is not None:
        assert reply["error"]["param"] == param


def test_malformed_oversize_auth_and_routes(live_server: LiveServer) -> None:
    base = live_server.base_url
    code, _, reply = http(base, "POST", "/v1/completions", raw=b'{"model": ')
    assert code == 400 and reply["error"]["code"] == "invalid_json"
    code, _, reply = http(base, "POST", "/v1/completions", {**BODY, "prompt": "a" * 100_000})
    assert code == 413 and reply["error"]["code"] == "request_too_large"
    code, _, reply = http(base, "POST", "/v1/completions", {**BODY, "prompt": [5] * 300})
    assert code == 400 and reply["error"]["code"] == "context_length_exceeded"
    for key in (None, "sk-wrong", API_KEY + "x"):
        code, _, reply = http(base, "POST", "/v1/completions", BODY, api_key=key)
        assert code == 401 and reply["error"]["type"] == "authentication_error"
    code, _, reply = http(base, "GET", "/v1/nothing-here")
    assert code == 404 and "error" in reply
    code, _, reply = http(base, "GET", "/v1/completions")
    assert code == 405 and "error" in reply
    # Still healthy, still serving, nothing left behind.
    assert http(base, "GET", "/health")[0] == 200
    assert http(base, "POST", "/v1/completions", BODY)[0] == 200
    assert live_server.stats()["scheduler"]["kv"]["num_used"] == 0


def _raw_http(port: int, payload: bytes, *, wait_s: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; return all the server sent until it closed."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_hostile_bodies_and_headers_get_4xx_not_500(live_server: LiveServer) -> None:
    base, port = live_server.base_url, live_server.port
    surrogate = b'{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 2}'
    code, _, reply = http(base, "POST", "/v1/completions", raw=surrogate)
    assert code == 400 and "surrogate" in reply["error"]["message"], reply
    chat = b'{"model": "tiny", "messages": [{"role": "user", "content": "x\\udfff"}]}'
    code, _, reply = http(base, "POST", "/v1/chat/completions", raw=chat)
    assert code == 400 and reply["error"]["code"] == "invalid_json"
    deep = b"[" * 30_000 + b"]" * 30_000
    code, _, reply = http(base, "POST", "/v1/completions", raw=deep)
    assert code == 400 and reply["error"]["code"] == "invalid_json"
    nested = json.dumps({**BODY, "stop": [[[[[[[[[[[[[["x"]]]]]]]]]]]]]]}).encode()  # within depth, wrong type
    assert http(base, "POST", "/v1/completions", raw=nested)[0] == 400
    body = json.dumps(BODY).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer \xff\xfe\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    reply_bytes = _raw_http(port, head + body)
    assert reply_bytes.startswith(b"HTTP/1.1 401"), reply_bytes[:200]
    assert http(base, "GET", "/health")[0] == 200
    assert live_server.stats()["scheduler"]["kv"]["num_used"] == 0


def test_half_sent_bodies_time_out(chat_model_dir) -> None:
    """A body that never arrives gets 408 after --request-timeout-s and the connection closes;
    other clients are served meanwhile."""
    import time

    from tests.serving.conftest import context_len, start_server
    from trtkv.runtime.config import EngineConfig
    from trtkv.serving.config import ServerConfig

    live = start_server(chat_model_dir, EngineConfig(num_blocks=64, num_threads=1, max_model_len=context_len(chat_model_dir)),
                        ServerConfig(port=0, served_model_name=MODEL_NAME, request_timeout_s=1.0))
    try:
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 5000\r\n\r\n{\"")
        started = time.monotonic()
        reply = _raw_http(live.port, head, wait_s=20)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"request_timeout" in reply and time.monotonic() - started < 10
        # A declared length over --max-request-bytes is refused at once, before any body.
        huge = head.replace(b"Content-Length: 5000", b"Content-Length: 5000000")
        started = time.monotonic()
        reply = _raw_http(live.port, huge, wait_s=20)
        assert reply.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 1.0, reply[:200]
        code, _, _ = http(live.base_url, "POST", "/v1/completions", BODY, api_key=None)
        assert code == 200
    finally:
        live.shutdown()


@pytest.mark.parametrize("kwargs,match", [
    (dict(port=99999), "--port"), (dict(port=-1), "--port"), (dict(max_request_bytes=-1), "--max-request-bytes"),
    (dict(default_chat_max_tokens=0), "--default-chat-max-tokens"), (dict(drain_timeout_s=-5), "--drain-timeout-s"),
    (dict(request_timeout_s=float("nan")), "--request-timeout-s"),
])
def test_server_config_validation(kwargs, match) -> None:
    from trtkv.errors import ConfigError
    from trtkv.serving.config import ServerConfig

    with pytest.raises(ConfigError, match=match):
        ServerConfig(**kwargs)


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True,
      "stream_options": {"include_usage": True, "continuous_usage_stats": True}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "hi"}], "echo": True}, "echo"),
    *[({"messages": [{"role": "user", "content": "hi"}], name: value}, name) for name, value in (
        ("include_stop_str_in_output", True), ("guided_whitespace_pattern", " "),
        ("prompt_logprobs", 1), ("truncate_prompt_tokens", 8), ("chat_template_kwargs", {"x": 1}),
        ("continue_final_message", True))],
])
def test_parameters_we_would_ignore_are_refused(live_server: LiveServer, body, param) -> None:
    code, _, reply = http(live_server.base_url, "POST", "/v1/chat/completions", {"model": MODEL_NAME, **body})
    assert code == 400, reply
    assert reply["error"]["param"] == param, reply


def test_vllm_and_openai_conformance(client, live_server: LiveServer) -> None:
    base = live_server.base_url
    messages = [{"role": "user", "content": "def add(a, b):"}]
    # model is optional; max_completion_tokens wins over max_tokens; usage has cached_tokens.
    code, headers, reply = http(base, "POST", "/v1/chat/completions",
                                {"messages": messages, "max_tokens": 9, "max_completion_tokens": 2, "ignore_eos": True})
    assert code == 200, reply
    assert reply["usage"]["completion_tokens"] == 2
    assert reply["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert headers["X-Request-Id"].startswith("chatcmpl-")
    # no-op values are accepted: response_format text, tool_choice none.
    code, _, _ = http(base, "POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 1,
                                                              "response_format": {"type": "text"}, "tool_choice": "none"})
    assert code == 200
    # add_generation_prompt and chat_template are honoured (the prompt changes).
    plain = http(base, "POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 1})[2]
    bare = http(base, "POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 1,
                                                       "add_generation_prompt": False})[2]
    custom = http(base, "POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 1,
                                                         "chat_template": "{{ messages[0]['content'] }}"})[2]
    assert bare["usage"]["prompt_tokens"] < plain["usage"]["prompt_tokens"]
    assert custom["usage"]["prompt_tokens"] < bare["usage"]["prompt_tokens"]
    # The client's X-Request-Id is echoed.
    import urllib.request

    req = urllib.request.Request(base + "/v1/completions", method="POST", data=json.dumps(
        {"prompt": "x", "max_tokens": 1}).encode(), headers={"Content-Type": "application/json",
                                                              "Authorization": f"Bearer {API_KEY}",
                                                              "X-Request-Id": "trace-42"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["X-Request-Id"] == "trace-42"
    # Model card, version, ping; errors speak the client's parameter names.
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    assert http(base, "GET", "/v1/models/other-model")[0] == 404
    assert http(base, "GET", "/version")[2]["version"]
    assert http(base, "GET", "/ping")[0] == 200
    code, _, reply = http(base, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 0})
    assert code == 400 and "max_new_tokens" not in reply["error"]["message"] and "max_tokens" in reply["error"]["message"]
    assert live_server.stats()["scheduler"]["kv"]["num_used"] == 0


def test_metrics_parse_and_speak_vllm(live_server: LiveServer) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    assert http(live_server.base_url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200
    with urllib.request.urlopen(live_server.base_url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:time_to_first_token_seconds",
                 "vllm:cache_config_info", "vllm:generation_tokens", "process_resident_memory_bytes",
                 "trtkv_kv_blocks_total", "trtkv_requests_rejected"):
        assert name in families, name
    info = families["vllm:cache_config_info"].samples[0]
    assert info.labels["model_name"] == MODEL_NAME and info.labels["num_gpu_blocks"] == "256"
    assert int(info.labels["block_size"]) > 0
    ttft = [s for s in families["vllm:time_to_first_token_seconds"].samples if s.name.endswith("_count")]
    assert ttft and ttft[0].labels == {"model_name": MODEL_NAME} and ttft[0].value >= 1
    generated = families["vllm:generation_tokens"].samples[0]
    assert generated.value >= 2
    assert families["vllm:num_requests_running"].samples[0].value == 0  # nothing in flight now
    evictions = {(s.labels["reason"], s.labels["policy"]) for s in families["trtkv_prefix_cache_evictions"].samples}
    assert evictions == {("capacity", "lru"), ("ttl", "lru")}
    for name in ("trtkv_prefix_cache_evicted_age_seconds", "trtkv_prefix_cache_hit_blocks"):
        assert name in families, name


def test_batch_prompts_on_completions(client, live_server: LiveServer) -> None:
    """A list of prompts (strings or token ids) is a batch: choice i of prompt k has index
    k * n + i, each equal to the prompt sent alone; usage is summed; streaming too."""
    prompts = ["def add(a, b):", "import os", "class Foo:"]
    alone = [client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=6, temperature=0) for p in prompts]
    batch = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in batch.choices] == list(range(6))
    for k, single in enumerate(alone):
        for i in range(2):
            assert batch.choices[k * 2 + i].text == single.choices[0].text
    assert batch.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)  # once per prompt
    assert batch.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)
    texts: dict[int, str] = {}
    for chunk in client.completions.create(model=MODEL_NAME, prompt=[[5, 6, 7], [9, 10]], max_tokens=4,
                                           temperature=0, stream=True, extra_body={"ignore_eos": True}):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert sorted(texts) == [0, 1]
    code, _, reply = http(live_server.base_url, "POST", "/v1/completions",
                          {"prompt": ["x"] * 65, "max_tokens": 1})
    assert code == 400 and reply["error"]["param"] == "prompt"
    code, _, reply = http(live_server.base_url, "POST", "/v1/completions",
                          {"prompt": ["x", [10**9]], "max_tokens": 1})  # one bad prompt: none admitted
    assert code == 400
    assert live_server.stats()["scheduler"]["kv"]["num_used"] == 0


def test_streamed_text_offset_counts_from_the_start(client) -> None:
    whole = client.completions.create(model=MODEL_NAME, prompt="def f(x):", max_tokens=8, temperature=0,
                                      logprobs=1, extra_body={"ignore_eos": True})
    offsets: list[int] = []
    for chunk in client.completions.create(model=MODEL_NAME, prompt="def f(x):", max_tokens=8, temperature=0,
                                           logprobs=1, stream=True, extra_body={"ignore_eos": True}):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                offsets += choice.logprobs.text_offset
    assert offsets == whole.choices[0].logprobs.text_offset and len(offsets) == 8
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_tokenize_detokenize_and_stop_reason(client, live_server: LiveServer) -> None:
    base = live_server.base_url
    code, _, tok = http(base, "POST", "/tokenize", {"prompt": "def add(a, b):"})
    assert code == 200 and tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] > 0
    code, _, detok = http(base, "POST", "/detokenize", {"tokens": tok["tokens"]})
    assert code == 200 and "def add(a, b):" in detok["prompt"]
    code, _, chat_tok = http(base, "POST", "/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert code == 200 and chat_tok["count"] > 1
    assert http(base, "POST", "/detokenize", {"tokens": [10**9]})[0] == 400
    assert http(base, "POST", "/tokenize", {"prompt": 5})[0] == 400
    # stop_reason: the stop string that ended a choice; null for length.
    greedy = client.completions.create(**_greedy(prompt="def f(x):"))
    text = greedy.choices[0].text
    stop = text[3:5]
    cut = client.completions.create(model=MODEL_NAME, prompt="def f(x):", temperature=0, max_tokens=12,
                                    stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].model_extra["stop_reason"] == stop
    assert greedy.choices[0].model_extra["stop_reason"] is None


def test_malformed_http_gets_a_json_error_and_the_schema_is_published(live_server: LiveServer) -> None:
    reply = _raw_http(live_server.port, b"NOT HTTP AT ALL\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head.lower(), reply[:300]
    assert json.loads(body)["error"]["code"] == "bad_http_request"
    code, _, doc = http(live_server.base_url, "GET", "/openapi.json")
    assert code == 200
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in chat["required"] and "tools" in chat["properties"]
    # Unknown routes and methods answer in the OpenAI error shape too.
    code, _, reply = http(live_server.base_url, "GET", "/v1/nope")
    assert code == 404 and reply["error"]["code"] == "not_found"
    code, _, reply = http(live_server.base_url, "GET", "/v1/completions")
    assert code == 405 and reply["error"]["code"] == "method_not_allowed"


def test_beam_search_extra_parameters(client, chat_model_dir) -> None:
    """vLLM's use_beam_search / length_penalty / early_stopping: the n best beams, as the
    engine's beam search gives them; refused with sampling filters."""
    from trtkv.runtime.config import EngineConfig
    from trtkv.runtime.llm import LLM
    from trtkv.runtime.sampling import SamplingParams

    ids = [5, 6, 7, 8]
    body = {"use_beam_search": True, "length_penalty": 0.8, "early_stopping": True}
    out = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, n=3, extra_body=body)
    llm = LLM(chat_model_dir, EngineConfig(num_threads=1))
    want = llm.generate([ids], SamplingParams(n=3, max_new_tokens=6, use_beam_search=True, length_penalty=0.8,
                                               early_stopping=True))[0]
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == [c.text for c in want.outputs]
    import openai

    with pytest.raises(openai.BadRequestError, match="beam search does not support top_p"):
        client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, n=2, top_p=0.5,
                                  extra_body={"use_beam_search": True})
    with pytest.raises(openai.BadRequestError, match="early_stopping"):
        client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, n=2,
                                  extra_body={"use_beam_search": True, "early_stopping": "sometimes"})
