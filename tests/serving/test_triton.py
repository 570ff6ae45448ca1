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
import urllib.request
from pathlib import Path

import pytest

from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams
from trtkv.serving.triton import write_triton_repo


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


def _stream(port: int, body: dict) -> list[list[int]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/trtkv/generate_stream",
                                     data=json.dumps(body).encode(), method="POST")
    chunks = []
    with urllib.request.urlopen(request, timeout=60) as resp:
        for line in resp:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                assert "error" not in event, event
                ids = event["output_ids"]  # Triton's JSON gives one element as a scalar
                chunks.append(ids if isinstance(ids, list) else [ids])
    return chunks


def test_triton_streams_the_engines_tokens(exported_factory, tmp_path: Path) -> None:
    root = _pytriton_root()
    if root is None:
        pytest.skip("tritonserver not found: pip install --no-deps nvidia-pytriton")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / f"pytriton/tritonserver/python_backend_stubs/{version}/triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"nvidia-pytriton has no Python backend stub for Python {version}")
    model_dir = exported_factory("llama")
    config = EngineConfig(num_blocks=64, num_threads=1)
    write_triton_repo(model_dir, tmp_path / "repo", config)
    backends = tmp_path / "backends"
    shutil.copytree(root / "pytriton/tritonserver/backends", backends)
    shutil.copy(stub, backends / "python/triton_python_backend_stub")

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the stub's python3
    env["LD_LIBRARY_PATH"] = f"{root / 'nvidia_pytriton.libs'}:{sysconfig.get_config_var('LIBDIR')}"
    http_port = _free_port()
    log = (tmp_path / "tritonserver.log").open("w")
    proc = subprocess.Popen(
        [str(root / "pytriton/tritonserver/bin/tritonserver"),
         "--model-repository", str(tmp_path / "repo"), "--backend-directory", str(backends),
         "--http-address", "127.0.0.1", "--http-port", str(http_port),
         "--grpc-port", str(_free_port()), "--allow-grpc", "false", "--allow-metrics", "false",
         "--allow-gpu-metrics", "false", "--exit-timeout-secs", "10"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "tritonserver.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/trtkv/ready",
                                            timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "tritonserver.log").read_text()[-3000:]
            time.sleep(0.5)

        prompt = [5, 17, 42, 9, 100]
        chunks = _stream(http_port, {"input_ids": prompt, "max_tokens": [10],
                                     "ignore_eos": [True]})
        engine = Engine(model_dir, config)
        engine.add_request(prompt, SamplingParams(max_new_tokens=10, temperature=0.0,
                                                  ignore_eos=True))
        expected: tuple[int, ...] = ()
        while engine.has_unfinished():
            for out in engine.step():
                expected = out.outputs[0].token_ids
        assert len(chunks) == 10  # one response per step: streamed, not batched up
        assert tuple(t for c in chunks for t in c) == expected
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
