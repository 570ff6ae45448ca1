"""`trtkv triton-repo` under a real tritonserver (CPU): streamed tokens equal the engine's.

tritonserver and its Python backend come from the ``nvidia-pytriton`` wheel (installed with
``pip install --no-deps nvidia-pytriton``: only its files are used, never its Python API).
Skips cleanly without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams
from trtkv.serving.triton import write_triton_repo

# End to end (the CLI or a server in subprocesses, real models): CI runs these; `-m 'not slow'` skips them.
pytestmark = pytest.mark.slow


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))).parent
    return root if (root / "pytriton/tritonserver/bin/tritonserver").is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REPO = Path(__file__).resolve().parents[2]
STUB_NUMPY = Path(sys.prefix) / "triton-stub-numpy"  # numpy 1, installed by scripts/setup.sh


def _stub_env(where: Path) -> Path:
    """A venv for the Python backend stub: this venv's packages and trtkv, numpy 1 first.

    nvidia-pytriton's stub is built against numpy 1 (the wheel requires numpy < 2); under
    numpy 2 every ``pb_utils.Tensor`` it makes has a wrong size. The stub runs isolated
    (no PYTHONPATH), so the venv's site-packages list the paths in a .pth file.
    """
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(where)], check=True)  # type: ignore[attr-defined]
    (site,) = where.glob("lib/python3*/site-packages")
    (site / "trtkv_stub.pth").write_text(f"{STUB_NUMPY}\n{sysconfig.get_paths()['purelib']}\n{REPO}\n")
    return where / "bin"


def _post(port: int, path: str, body: dict) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/trtkv/{path}",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.read()
    except urllib.error.HTTPError as exc:
        return exc.read()


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith(b"data: ")]


def _ids(event: dict) -> list[int]:
    ids = event["output_ids"]  # Triton's JSON gives one element as a scalar
    return ids if isinstance(ids, list) else [ids]


def _reference(model_dir: Path, config: EngineConfig, prompt, params: SamplingParams):
    engine = Engine(model_dir, config)
    engine.add_request(prompt, params)
    final = None
    while engine.has_unfinished():
        for out in engine.step():
            final = out.outputs[0]
    return final


@pytest.fixture(scope="module")
def triton(chat_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real tritonserver (HTTP + gRPC on loopback) serving `trtkv triton-repo`'s repository."""
    root = _pytriton_root()
    if root is None:
        pytest.skip("tritonserver not found: pip install --no-deps nvidia-pytriton")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / f"pytriton/tritonserver/python_backend_stubs/{version}/triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"nvidia-pytriton has no Python backend stub for Python {version}")
    if not (STUB_NUMPY / "numpy").is_dir():
        pytest.skip(f"numpy 1 for the Triton stub is not in {STUB_NUMPY}; run scripts/setup.sh")
    tmp_path = tmp_path_factory.mktemp("triton")
    export = tmp_path / "export"
    shutil.copytree(chat_model_dir, export)
    config = EngineConfig(num_blocks=64, num_threads=1)
    folder = write_triton_repo(export, tmp_path / "repo", config)
    backends = tmp_path / "backends"
    shutil.copytree(root / "pytriton/tritonserver/backends", backends)
    shutil.copy(stub, backends / "python/triton_python_backend_stub")

    env = dict(os.environ)
    env["PATH"] = f"{_stub_env(tmp_path / 'stub-venv')}:{env.get('PATH', '')}"  # the stub's python3
    env["LD_LIBRARY_PATH"] = f"{root / 'nvidia_pytriton.libs'}:{sysconfig.get_config_var('LIBDIR')}"
    http_port, grpc_port = _free_port(), _free_port()
    log_path = tmp_path / "tritonserver.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [str(root / "pytriton/tritonserver/bin/tritonserver"),
         "--model-repository", str(tmp_path / "repo"), "--backend-directory", str(backends),
         "--http-address", "127.0.0.1", "--http-port", str(http_port),
         "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port), "--allow-metrics", "false",
         "--allow-gpu-metrics", "false", "--exit-timeout-secs", "10"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/trtkv/ready",
                                            timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield {"http": http_port, "grpc": grpc_port, "model_dir": export, "config": config,
               "folder": folder, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]


def test_repository_is_relocatable(triton) -> None:
    text = (triton["folder"] / "config.pbtxt").read_text()
    assert '"../../export"' in text and "KIND_CPU" in text and str(triton["model_dir"]) not in text


def test_token_ids_stream_one_response_per_step(triton) -> None:
    prompt = [5, 17, 42, 9, 100]
    events = _events(_post(triton["http"], "generate_stream", {
        "input_ids": prompt, "max_tokens": [10], "ignore_eos": [True], "stream": [True]}))
    assert all("error" not in e for e in events), events
    expected = _reference(triton["model_dir"], triton["config"], prompt,
                          SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True))
    assert len(events) == 10  # one response per step: streamed, not batched up
    assert tuple(t for e in events for t in _ids(e)) == expected.token_ids
    assert "".join(e["text_output"] for e in events) == expected.text
    assert events[-1]["finish_reason"] == "length" and events[0]["finish_reason"] == ""


def test_text_in_text_out_over_http_generate(triton) -> None:
    prompt = "def main():"
    reply = json.loads(_post(triton["http"], "generate", {"text_input": prompt, "max_tokens": 12,
                                                           "temperature": 0.0}))
    expected = _reference(triton["model_dir"], triton["config"], prompt,
                          SamplingParams(max_new_tokens=12, temperature=0.0))
    assert reply.get("text_output") == expected.text and reply["finish_reason"] == expected.finish_reason, reply
    # sampling_parameters (a JSON string, as Triton's vLLM backend takes them): seeded = reproducible.
    body = {"text_input": prompt, "sampling_parameters": json.dumps({"max_tokens": 6, "temperature": 0.9,
                                                                     "seed": 5, "top_p": 0.9})}
    first, second = (json.loads(_post(triton["http"], "generate", body)) for _ in range(2))
    assert first["text_output"] == second["text_output"]
    assert first["text_output"] == _reference(triton["model_dir"], triton["config"], prompt, SamplingParams(
        max_new_tokens=6, temperature=0.9, seed=5, top_p=0.9)).text


def test_grpc_streaming_with_tritonclient(triton) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    import queue

    import numpy as np

    prompt = "import os\n"
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton['grpc']}")
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inputs = [grpcclient.InferInput("text_input", [1], "BYTES"), grpcclient.InferInput("max_tokens", [1], "INT32"),
              grpcclient.InferInput("stream", [1], "BOOL"), grpcclient.InferInput("ignore_eos", [1], "BOOL")]
    inputs[0].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([8], dtype=np.int32))
    inputs[2].set_data_from_numpy(np.array([True]))
    inputs[3].set_data_from_numpy(np.array([True]))
    client.async_stream_infer("trtkv", inputs)
    pieces, reasons = [], []
    try:
        while not reasons or reasons[-1] == "":
            result, error = results.get(timeout=60)
            assert error is None, error
            pieces.append(result.as_numpy("text_output")[0].decode())
            reasons.append(result.as_numpy("finish_reason")[0].decode())
    finally:
        client.stop_stream()
        client.close()
    expected = _reference(triton["model_dir"], triton["config"], prompt,
                          SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True))
    assert len(pieces) == 8 and "".join(pieces) == expected.text and reasons[-1] == "length"


@pytest.mark.parametrize("body,needle", [
    ({"text_input": "x", "input_ids": [1, 2]}, "give one of"),
    ({"max_tokens": 3}, "give one of"),
    ({"text_input": "x", "sampling_parameters": json.dumps({"beam_width": 2})}, "unknown keys"),
    ({"text_input": "x", "sampling_parameters": "[1]"}, "JSON object"),
    ({"text_input": "x", "temperature": -1.0}, "temperature"),
    ({"input_ids": [1, 99999999]}, "outside the vocabulary"),
])
def test_bad_requests_get_one_error_and_no_traceback(triton, body: dict, needle: str) -> None:
    reply = json.loads(_post(triton["http"], "generate", body))
    assert needle in reply.get("error", ""), reply
    assert "Traceback" not in triton["log"].read_text()
