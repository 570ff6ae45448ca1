"""Hostile inputs to the CLI: each gets exit 2 and one `error:` line, no traceback, no partial
output directory, and the checkpoint is never written to."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# End to end (the CLI or a server in subprocesses, real models): CI runs these; `-m 'not slow'` skips them.
pytestmark = pytest.mark.slow

TRTKV = [sys.executable, "-m", "trtkv"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*TRTKV, *args], capture_output=True, timeout=timeout)


def _one_line_error(r: subprocess.CompletedProcess[bytes], needle: str) -> None:
    err = r.stderr.decode("utf-8", "replace")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert r.returncode == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert needle in lines[0], lines[0]


def _digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        h.update(str(path.relative_to(directory)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def ckpt(checkpoint_factory, tmp_path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("llama"), copy)
    return copy


def _edit_config(ckpt: Path, edit) -> None:
    path = ckpt / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize("edit,needle", [
    (lambda c: [c], "holds a JSON list"),
    (lambda c: {k: v for k, v in c.items() if k != "hidden_size"}, "lacks hidden_size"),
    (lambda c: {k: v for k, v in c.items() if k != "vocab_size"}, "lacks vocab_size"),
    (lambda c: {**c, "num_hidden_layers": -1}, "num_hidden_layers must be a positive integer"),
])
def test_bad_config_json(ckpt: Path, tmp_path: Path, edit, needle: str) -> None:
    _edit_config(ckpt, edit)
    before = _digest(ckpt)
    _one_line_error(_run("export", str(ckpt), "-o", str(tmp_path / "out")), needle)
    assert not (tmp_path / "out").exists() and _digest(ckpt) == before
    assert not list(tmp_path.glob(".out.*")), "staging directory left behind"


def test_corrupt_tokenizer_fails_the_export(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": 7}}')
    _one_line_error(_run("export", str(ckpt), "-o", str(tmp_path / "out")), "tokenizer.json cannot be loaded")
    assert not (tmp_path / "out").exists()


def test_output_paths_that_cannot_be_an_export(ckpt: Path, tmp_path: Path) -> None:
    before = _digest(ckpt)
    (tmp_path / "file").write_text("x")
    for out, needle in ((ckpt, "inside the checkpoint"), (ckpt / "sub", "inside the checkpoint"),
                        (tmp_path / "file", "is a file"), (tmp_path / "file" / "out", "under the file")):
        _one_line_error(_run("export", str(ckpt), "-o", str(out)), needle)
    assert _digest(ckpt) == before and (tmp_path / "file").read_text() == "x"


def test_failed_export_leaves_nothing_and_keeps_an_old_export(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run("export", str(ckpt), "-o", str(out)).returncode == 0
    good = _digest(out)
    weights = next(ckpt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    _one_line_error(_run("export", str(ckpt), "-o", str(out)), "truncated")
    assert _digest(out) == good  # the old export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


@pytest.fixture(scope="module")
def exported(exported_factory) -> Path:
    return exported_factory("llama")


def _edited_export(exported: Path, tmp_path: Path, **fields) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(fields)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("fields,needle", [
    (dict(num_layers=3), "sliding_windows has 2 entries for 3 layers"),
    (dict(num_layers=3, sliding_windows=[0] * 3, k_scales=[[1.0]] * 3, v_scales=[[1.0]] * 3),
     "disagrees with model.onnx (num_layers 3 vs 2 kv_cache inputs"),
    (dict(num_kv_heads=1), "num_kv_heads"),
    (dict(head_dim=32), "head_dim 32 vs 48"),
    (dict(vocab_size=999), "vocab_size 999 vs 320"),
    (dict(eos_token_ids="1"), "eos_token_ids"),
    (dict(block_size=0), "block_size must be a positive integer"),
])
def test_manifest_that_disagrees_is_refused(exported: Path, tmp_path: Path, fields, needle: str) -> None:
    model = _edited_export(exported, tmp_path, **fields)
    _one_line_error(_run("generate", str(model), "--prompt-ids", "1,2,3", "--max-new-tokens", "2"), needle)


@pytest.mark.parametrize("args,needle", [
    (["--kv-cache-gib", "nan"], "--kv-cache-gib must be a finite number"),
    (["--kv-cache-gib", "inf"], "--kv-cache-gib must be a finite number"),
    (["--kv-cache-gib", "1e6"], "GiB of memory"),
    (["--num-threads", "-1"], "--num-threads must be >= 0"),
])
def test_numeric_engine_flags(exported: Path, args: list[str], needle: str) -> None:
    _one_line_error(_run("generate", str(exported), "--prompt-ids", "1,2,3", "--max-new-tokens", "2", *args), needle)


def test_prompt_that_is_not_utf8(tmp_path: Path) -> None:
    from trtkv.export.exporter import ExportConfig, export
    from trtkv.models import DEFAULT_MODEL_DIR

    export(DEFAULT_MODEL_DIR, tmp_path / "tiny", ExportConfig(progress=False))  # has a tokenizer
    # "\udcff" reaches the child's argv as the raw byte 0xff (os.fsencode's surrogateescape).
    r = _run("generate", str(tmp_path / "tiny"), "--prompt", "a\udcffb", "--max-new-tokens", "2")
    _one_line_error(r, "not valid UTF-8")


@pytest.mark.parametrize("args,needle", [
    (["--host", "256.1.1.1"], "cannot listen on 256.1.1.1"),
    (["--port", "99999"], "--port must be 0..65535"),
    (["--port", "-1"], "--port must be 0..65535"),
    (["--max-request-bytes", "-1"], "--max-request-bytes must be >= 1"),
    (["--default-chat-max-tokens", "0"], "--default-chat-max-tokens must be >= 1"),
    (["--drain-timeout-s", "-5"], "--drain-timeout-s must be a finite number >= 0"),
])
def test_serve_options(exported: Path, args: list[str], needle: str) -> None:
    _one_line_error(_run("serve", str(exported), *args, timeout=60), needle)


def test_serve_on_a_busy_port(exported: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        _one_line_error(_run("serve", str(exported), "--port", str(port), timeout=60), f"cannot listen on 127.0.0.1:{port}")
