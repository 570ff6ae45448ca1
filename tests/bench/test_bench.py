"""`trtkv bench` end to end: in-process and against a real server on loopback.

Each run goes through the CLI (`trtkv.cli.main`) and is checked through its JSON and PNG.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from trtkv.bench.config import BenchConfig
from trtkv.bench.workload import arrival_times, create_workload
from trtkv.errors import ConfigError
from trtkv.runtime.config import EngineConfig
from trtkv.serving.config import ServerConfig

API_KEY = "sk-bench"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """`trtkv bench ...` through the real entry point."""
    from trtkv.cli import main

    return main(["bench", *argv])


def check_document(path: Path, num_requests: int) -> dict:
    """Counts add up, completed requests have exactly their output length, percentiles order."""
    doc = json.loads(path.read_text())
    s, requests = doc["summary"], doc["requests"]
    assert len(requests) == num_requests == s["num_requests"]
    assert s["completed"] + s["rejected"] + s["failed"] == num_requests
    assert sum(s["rejected_by_reason"].values()) == s["rejected"]
    assert s["failed"] == 0, s["errors"]
    assert s["completed"] >= 1
    ok = [r for r in requests if r["status"] == "ok"]
    assert len(ok) == s["completed"]
    for r in ok:
        assert r["num_output_tokens"] == r["output_len"] == sum(r["chunk_tokens"])
        assert r["start_s"] <= r["chunk_times_s"][0] <= r["chunk_times_s"][-1] <= r["end_s"]
    assert s["total_output_tokens"] == sum(r["output_len"] for r in ok)
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        d = s[key]
        assert 0 <= d["p50"] <= d["p95"] <= d["p99"] <= d["max"], (key, d)
    assert s["ttft_ms"]["p50"] <= s["e2e_ms"]["p50"]
    assert s["output_throughput"] > 0 and s["request_throughput"] > 0
    assert math.isclose(s["output_throughput"] * s["duration_s"], s["total_output_tokens"],
                        rel_tol=1e-3)
    tl = doc["timeline"]
    assert sum(tl["output_tokens_per_s"]) * tl["window_s"] >= s["total_output_tokens"]
    assert doc["config"]["api_key"] in ("", "***")
    return doc


def max_in_flight(requests: list[dict]) -> int:
    """Most requests in flight at once, from their send and end times."""
    return max(sum(q["start_s"] <= r["start_s"] < q["end_s"] for q in requests) for r in requests)


def check_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] >= 800 and img.size[1] >= 300


# -- workload and options ----------------------------------------------------------------
def test_workload_is_deterministic_and_shaped() -> None:
    config = BenchConfig(model_dir="x", num_requests=50, prompt_len=40, output_len=10,
                         random_range_ratio=0.5, shared_prefix_len=12, seed=3)
    specs = create_workload(config, vocab_size=100)
    assert specs == create_workload(config, vocab_size=100)
    assert specs != create_workload(BenchConfig(model_dir="x", num_requests=50, prompt_len=40,
                                                output_len=10, random_range_ratio=0.5,
                                                shared_prefix_len=12, seed=4), vocab_size=100)
    lens = [len(s.prompt_ids) for s in specs]
    assert min(lens) >= 20 and max(lens) <= 60 and len(set(lens)) > 5
    assert all(5 <= s.output_len <= 15 for s in specs)
    assert len({s.prompt_ids[:12] for s in specs}) == 1
    assert len({s.prompt_ids[12:20] for s in specs}) == 50
    assert all(0 <= t < 100 for s in specs for t in s.prompt_ids)
    fixed = create_workload(BenchConfig(model_dir="x", num_requests=5, prompt_len=7, output_len=3),
                            vocab_size=100)
    assert {len(s.prompt_ids) for s in fixed} == {7} and {s.output_len for s in fixed} == {3}

    times = arrival_times(2000, 50.0, seed=1)
    assert times[0] == 0.0 and all(b >= a for a, b in zip(times, times[1:], strict=False))
    assert 0.9 * 2000 / 50 < times[-1] < 1.1 * 2000 / 50  # mean gap 1/rate
    assert arrival_times(4, math.inf, seed=1) == [0.0] * 4


@pytest.mark.parametrize("kwargs, flag", [
    (dict(), "exactly one target"),
    (dict(url="http://h:1", model_dir="d"), "exactly one target"),
    (dict(url="localhost:8000"), "--url"),
    (dict(model_dir="d", num_requests=0), "--num-requests"),
    (dict(model_dir="d", random_range_ratio=1.0), "--random-range-ratio"),
    (dict(model_dir="d", request_rate=0.0), "--request-rate"),
    (dict(model_dir="d", concurrency=-1), "--concurrency"),
    (dict(model_dir="d", prompt_len=8, shared_prefix_len=8), "--shared-prefix-len"),
])
def test_bad_options_name_the_option(kwargs: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        BenchConfig(**kwargs)


def test_workload_longer_than_context_is_refused() -> None:
    with pytest.raises(ConfigError, match="context of 64"):
        create_workload(BenchConfig(model_dir="d", prompt_len=60, output_len=8), 100, 64)


# -- in-process --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(exported_factory) -> Path:
    return exported_factory("llama")


def test_in_process(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    rc = run_cli(["--model-dir", str(model_dir), "--num-requests", "12", "--prompt-len", "24",
                  "--output-len", "6", "--random-range-ratio", "0.5", "--shared-prefix-len", "8",
                  "--concurrency", "4", "--num-blocks", "64", "--num-threads", "1",
                  "--enable-prefix-caching", "--no-progress",
                  "--output-json", str(out_json), "--output-png", str(out_png)], monkeypatch)
    assert rc == 0
    doc = check_document(out_json, 12)
    assert doc["summary"]["completed"] == 12
    assert len({r["output_len"] for r in doc["requests"]}) > 1  # lengths really vary
    assert doc["engine_config"]["enable_prefix_caching"] is True
    assert max_in_flight(doc["requests"]) == 4  # the concurrency cap holds, and is reached
    check_png(out_png)
    table = capsys.readouterr().out
    assert "12 / 0 / 0" in table and "TTFT" in table and "ITL" in table


def test_in_process_queue_full_is_counted_as_rejected(model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out_json = tmp_path / "r.json"
    rc = run_cli(["--model-dir", str(model_dir), "--num-requests", "10", "--prompt-len", "8",
                  "--output-len", "4", "--max-num-seqs", "1", "--max-num-queued-requests", "1",
                  "--num-blocks", "32", "--num-threads", "1", "--no-progress",
                  "--output-json", str(out_json)], monkeypatch)
    assert rc == 0
    s = check_document(out_json, 10)["summary"]
    assert s["rejected"] >= 1 and set(s["rejected_by_reason"]) == {"queue_full"}


# -- against a server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    from tests.serving.conftest import start_server

    live = start_server(
        model_dir,
        EngineConfig(num_blocks=128, num_threads=1, max_num_seqs=4, max_model_len=256,
                     max_num_queued_requests=4),
        ServerConfig(port=0, served_model_name="tiny", api_key=API_KEY, drain_timeout_s=1.0),
    )
    yield f"http://127.0.0.1:{live.port}"
    live.shutdown()


def test_server(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    rc = run_cli(["--url", server + "/v1", "--api-key", API_KEY, "--num-requests", "16",
                  "--prompt-len", "32", "--output-len", "8", "--random-range-ratio", "0.25",
                  "--shared-prefix-len", "16", "--request-rate", "40", "--concurrency", "4",
                  "--no-progress", "--output-json", str(out_json), "--output-png", str(out_png)],
                 monkeypatch)
    assert rc == 0
    doc = check_document(out_json, 16)
    assert doc["summary"]["completed"] == 16  # 4 in flight never overflow the queue
    assert doc["target"]["model_name"] == "tiny" and doc["target"]["max_model_len"] == 256
    assert doc["config"]["api_key"] == "***" and API_KEY not in out_json.read_text()
    assert max_in_flight(doc["requests"]) <= 4
    starts = [r["start_s"] for r in doc["requests"]]
    assert starts[-1] > 0.1  # Poisson arrivals spread the sends out (mean 15/40 s)
    check_png(out_png)


def test_server_429_is_counted_as_rejected(server: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # 24 at once against 4 running + 4 queued: the rest get 429 queue_full.
    out_json = tmp_path / "r.json"
    rc = run_cli(["--url", server, "--api-key", API_KEY, "--num-requests", "24",
                  "--prompt-len", "16", "--output-len", "48", "--no-progress",
                  "--output-json", str(out_json)], monkeypatch)
    assert rc == 0
    s = check_document(out_json, 24)["summary"]
    assert s["rejected"] >= 1 and set(s["rejected_by_reason"]) == {"queue_full"}


def test_wrong_api_key_is_a_clear_error(server: str, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--url", server, "--api-key", "nope", "--no-progress"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--api-key" in err and "\n" not in err


def test_unreachable_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert run_cli(["--url", url, "--no-progress"], monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach a server at " + url)
    assert "trtkv serve" in err and "\n" not in err


def test_engine_options_with_url_are_refused(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--url", "http://127.0.0.1:1", "--num-blocks", "8"], monkeypatch) == 2
    assert "apply only with --model-dir" in capsys.readouterr().err
