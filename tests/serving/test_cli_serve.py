"""`trtkv serve` as a real process: it listens, answers, and exits 0 on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.conftest import http

# End to end (the CLI or a server in subprocesses, real models): CI runs these; `-m 'not slow'` skips them.
pytestmark = pytest.mark.slow


def test_serve_subprocess_answers_and_stops_on_sigterm(chat_model_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trtkv", "serve", str(chat_model_dir), "--port", "0",
         "--served-model-name", "m", "--num-blocks", "32", "--num-threads", "1"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:  # the ready line carries the bound port
            match = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "trtkv serve did not report its port"
        base = f"http://127.0.0.1:{port}"
        status, _, body = http(base, "POST", "/v1/completions",
                               {"model": "m", "prompt": [4, 5, 6], "max_tokens": 3}, api_key=None)
        assert status == 200 and body["usage"]["completion_tokens"] <= 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
