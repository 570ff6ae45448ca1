"""Shared fixtures: tiny random-weight HF checkpoints and their trtkv exports, and an exported
model with a tokenizer and chat template (`chat_model_dir`), made once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.tiny_models import FAMILIES, make_checkpoint


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[tuple, Path] = {}

    def make(family: str, **kw) -> Path:
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_checkpoint(tmp_path_factory.mktemp(f"hf_{family}"), family, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exported_factory(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory):
    from trtkv.export.exporter import ExportConfig, export

    cache: dict[tuple, Path] = {}

    def make(family: str, dtype: str = "fp32", kv_dtype: str = "auto", block_size: int = 16, **kw) -> Path:
        key = (family, dtype, kv_dtype, block_size, tuple(sorted(kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ex_{family}_{dtype}")
            export(checkpoint_factory(family, **kw), out,
                   ExportConfig(dtype=dtype, kv_dtype=kv_dtype, block_size=block_size, progress=False))
            cache[key] = out
        return cache[key]

    return make


# -- a model that chats: tokenizer + chat template ---------------------------------------
# The shipped tiny-stdlib checkpoint when present; otherwise a random-weight tiny Llama with a
# small byte-level BPE tokenizer trained here (no downloads either way).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

def _add_tokenizer(model_dir: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [Path(__file__).read_text()] * 4 + ["def add(a, b):\n    return a + b\n"] * 20
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(model_dir))


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory, exported_factory) -> Path:
    from trtkv.models import DEFAULT_MODEL_DIR

    if (DEFAULT_MODEL_DIR / "config.json").is_file() and (DEFAULT_MODEL_DIR / "tokenizer.json").is_file():
        from trtkv.export.exporter import ExportConfig, export

        out = tmp_path_factory.mktemp("tiny_stdlib")
        export(DEFAULT_MODEL_DIR, out, ExportConfig(progress=False))
        return out
    out = tmp_path_factory.mktemp("tiny_llama_tok")
    shutil.copytree(exported_factory("llama"), out, dirs_exist_ok=True)
    vocab = json.loads((out / "manifest.json").read_text()).get("vocab_size", 320)
    _add_tokenizer(out, vocab)
    return out


ALL_FAMILIES = sorted(FAMILIES)


def require_native_ops() -> None:
    """Skip unless the native CPU kernels build here; in CI (``$CI`` set) fail instead, so
    their tests cannot silently skip where they must run."""
    from trtkv.runtime.backends.native_ops import native_ops_reason

    reason = native_ops_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must build the native CPU kernels: {reason}")
    if reason:
        pytest.skip(reason)


def cpu_has_amx_bf16() -> bool:
    """Whether /proc/cpuinfo lists AMX-BF16 (and the AVX512-BF16 the kernel's small-M path uses)."""
    try:
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    except OSError:
        return False
    return {"amx_bf16", "amx_tile", "avx512_bf16"} <= set(flags)


def require_amx_bf16() -> Path:
    """The native library, when this CPU has AMX-BF16 (skip otherwise: a hardware condition).
    Where the CPU has it, the library must build and be allowed the tile state (fail if not)."""
    from trtkv.runtime.backends.cpu_matmul import amx_bf16_available
    from trtkv.runtime.backends.native_ops import native_ops_library

    if not cpu_has_amx_bf16():
        pytest.skip("this CPU has no AMX-BF16 (trtkv.cpu::MatMulBf16 needs Intel Xeon 4th generation or newer)")
    require_native_ops()
    library = native_ops_library()
    assert amx_bf16_available(library), "the CPU lists AMX-BF16 but the library may not use it (kernel permission?)"
    return library


def _has_cuda_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _has_tensorrt() -> bool:
    """Whether full TensorRT or TensorRT for RTX imports (its native libraries too)."""
    from trtkv.build.tensorrt_env import import_tensorrt

    try:
        import_tensorrt("auto")
    except Exception:  # BackendUnavailableError, or a broken install
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests skip cleanly without a CUDA device, ``trt`` ones without a TensorRT (each
    test may add its own finer skip);
    the nvcc compile tests count as ``slow`` (CI runs them; ``-m 'not slow'`` leaves them out)."""
    gpu = trt = None
    for item in items:
        if item.get_closest_marker("gpu"):
            gpu = _has_cuda_gpu() if gpu is None else gpu
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU visible to torch (CUDA build)"))
        if item.get_closest_marker("trt"):
            trt = _has_tensorrt() if trt is None else trt
            if not trt:
                item.add_marker(pytest.mark.skip(reason="needs TensorRT or TensorRT for RTX (pip install 'trtkv[gpu]' or 'trtkv[rtx]')"))
        if item.nodeid.startswith("tests/plugins/test_compile.py"):
            item.add_marker(pytest.mark.slow)


# -- a real redis-server on a free loopback port (the shared KV store tier's tests) --------
REDIS = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path):
    """(url, process) of a fresh redis-server; skips when the binary is absent."""
    if REDIS is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh installs it from Debian packages)")
    port = _free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
        time.sleep(0.05)
    url = f"redis://127.0.0.1:{port}/0"
    url_proc = (url, proc)
    yield url_proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)
