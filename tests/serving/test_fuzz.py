"""Property-based fuzzing of the server through its own OpenAPI schema (schemathesis): every
generated request, valid or not, is answered without a 5xx; the server stays healthy and no
KV block leaks. Outputs are capped at a few tokens so hundreds of requests stay cheap."""

from __future__ import annotations

import pytest

# End to end (the CLI or a server in subprocesses, real models): CI runs these; `-m 'not slow'` skips them.
pytestmark = pytest.mark.slow

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.serving.conftest import API_KEY, MODEL_NAME, LiveServer, context_len, http, start_server  # noqa: E402
from trtkv.runtime.config import EngineConfig  # noqa: E402
from trtkv.serving.config import ServerConfig  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(chat_model_dir):
    live = start_server(chat_model_dir, EngineConfig(num_blocks=256, num_threads=1, max_num_seqs=64,
                                                     max_model_len=context_len(chat_model_dir),
                                                     max_new_tokens_cap=4),
                        ServerConfig(port=0, served_model_name=MODEL_NAME, api_key=API_KEY,
                                     max_request_bytes=64 * 1024))
    yield live
    live.shutdown()


def test_no_request_gets_a_server_error(fuzz_server: LiveServer) -> None:
    """Each operation of the published schema, fuzzed by hypothesis (valid and invalid bodies)."""
    from hypothesis import given

    api = schemathesis.openapi.from_url(fuzz_server.base_url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/tokenize",
                                               "/detokenize", "/v1/models", "/health"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)  # the same examples every run
        def fuzz(case) -> None:
            case.call_and_validate(base_url=fuzz_server.base_url, headers={"Authorization": f"Bearer {API_KEY}"},
                                   checks=[not_a_server_error], timeout=60)

        fuzz()
    counts = fuzz_server.server.http_requests
    print("\n[test_fuzz] requests by (route, status):", dict(sorted(counts.items())))
    for route in ("/v1/completions", "/v1/chat/completions"):
        assert sum(n for (r, _), n in counts.items() if r == route) >= 40, counts
        assert counts[(route, 200)] >= 1, counts  # some generated bodies were valid and ran


def test_healthy_and_nothing_leaked_after_fuzzing(fuzz_server: LiveServer) -> None:
    import time

    assert http(fuzz_server.base_url, "GET", "/health")[0] == 200
    deadline = time.monotonic() + 10
    while fuzz_server.stats()["scheduler"]["kv"]["num_used"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fuzz_server.stats()["scheduler"]["kv"]["num_used"] == 0
    fuzz_server.server.engine.engine.scheduler.check_integrity()
    code, _, reply = http(fuzz_server.base_url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert code == 200 and reply["choices"][0]["finish_reason"] == "length"
