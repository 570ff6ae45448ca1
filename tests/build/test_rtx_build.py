"""Real engine builds with TensorRT for RTX (no GPU needed): `trtkv build --flavor rtx`.

TensorRT for RTX builds ahead of time on the CPU; running an engine needs a GPU of a targeted
compute capability, so what is checked here is everything up to the engine bytes: the parsed
network, the built engine's layer list (from the builder's detailed log), the profile, the
KV pool input types per KV dtype, and the fail-loudly checks. Skips cleanly when the `rtx`
extra is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from trtkv.build import BuildConfig, build_engine
from trtkv.build.network import check_trtkv_layers, report_layers, trtkv_node_names
from trtkv.errors import ConfigError, ModelDirError
from trtkv.manifest import Manifest
from trtkv.ops.lowered import lowered_op_functions
from trtkv.ops.schema import dynamic_scale_groups

try:
    from trtkv.build.tensorrt_env import import_tensorrt

    RTX = import_tensorrt("rtx")
except Exception as exc:  # BackendUnavailableError
    RTX, _REASON = None, str(exc)
else:
    _REASON = ""

pytestmark = [pytest.mark.trt, pytest.mark.skipif(RTX is None, reason=f"TensorRT for RTX unavailable: {_REASON}")]

#: Small profile: the lowered attention's memory grows with tokens x (context + tokens).
SMALL = dict(flavor="rtx", max_num_tokens=64, max_num_seqs=8, max_model_len=256, max_num_blocks=512)


def _build(exported: Path, out: Path, **kw) -> dict:
    build_engine(exported, out, BuildConfig(**{**SMALL, **kw}))
    return json.loads((out / "build.json").read_text())


def test_rtx_builds_a_real_engine(exported_factory, tmp_path: Path) -> None:
    exported = exported_factory("llama")
    info = _build(exported, tmp_path / "engine")
    engine = tmp_path / "engine" / "model.engine"
    manifest = Manifest.load(exported)
    # A serialized plan of a few MB (weights included), not a stub.
    assert engine.stat().st_size > 100_000
    assert (tmp_path / "engine" / "manifest.json").read_text() == (exported / "manifest.json").read_text()
    assert info["flavor"] == "rtx" and info["attention"] == "lowered" and info["kv_pool_write"] == "runtime"
    assert info["compute_capabilities"] == [80, 86, 89, 120]
    # Lowered route: standard layers only, attention as matmuls + softmax per decoder layer.
    assert info["plugin_layers"] == [] and "PLUGIN_V3" not in info["network_layers"]
    assert info["network_layers"]["SOFTMAX"] == manifest.num_layers
    assert info["network_layers"]["MATRIX_MULTIPLY"] >= 7 * manifest.num_layers
    kinds = {layer["type"] for layer in info["engine_layers"]}
    assert info["engine_layers"] and "gemm" in kinds, info["engine_layers"][:5]
    # The pools are read in place: each is an input of compute layers, none of a copy/reformat.
    readers = {f"kv_cache.{i}": [layer["type"] for layer in info["engine_layers"] if f"kv_cache.{i}" in layer["inputs"]]
               for i in range(manifest.num_layers)}
    assert all(readers.values()), readers
    assert not any(kind.lower() in ("reformat", "copy", "shuffle") for kinds_ in readers.values() for kind in kinds_)
    # Every graph input has a profile, and the pool keeps the export's dtype.
    assert set(info["profile"]) == set(info["inputs"])
    assert info["profile"]["block_tables"][2] == [8, 16]
    assert info["inputs"]["kv_cache.0"] == "FLOAT" and info["inputs"]["input_ids"] == "INT64"
    assert not list(tmp_path.glob(".engine.*")), "staging directory left behind"


@pytest.mark.parametrize("dtype,kv_dtype,kv_scales,pool_input", [
    ("fp16", "fp16", "per-tensor", "HALF"),
    ("bf16", "bf16", "per-tensor", "BF16"),
    ("fp16", "int8", "per-head", "INT8"),
    ("fp16", "fp8", "per-tensor", "INT8"),  # E4M3 bit patterns, decoded by table in the engine
    ("fp16", "fp8", "per-head", "INT8"),
    ("fp16", "int8", "dynamic", "INT8"),  # rows of head_dim codes + the groups' exponents, lowered
])
def test_rtx_kv_dtypes(checkpoint_factory, tmp_path: Path, dtype, kv_dtype, kv_scales, pool_input) -> None:
    from trtkv.export.exporter import ExportConfig, export

    exported = tmp_path / "onnx"
    export(checkpoint_factory("qwen3"), exported,
           ExportConfig(dtype=dtype, kv_dtype=kv_dtype, kv_scales=kv_scales, progress=False))
    info = _build(exported, tmp_path / "engine")
    assert info["inputs"]["kv_cache.0"] == pool_input
    manifest = Manifest.load(exported)
    assert info["profile"]["kv_cache.0"][2][-1] == manifest.pool_head_dim
    assert manifest.pool_head_dim == manifest.head_dim + (kv_scales == "dynamic") * dynamic_scale_groups(manifest.head_dim)
    assert info["kv_pool_input_dtype"] == ("int8" if kv_dtype == "fp8" else kv_dtype)
    if kv_dtype == "fp8":  # KVAppend quantizes with Quantize layers: FP8 stored codes out
        assert info["network_layers"].get("QUANTIZE", 0) == 2 * Manifest.load(exported).num_layers
        assert info["compute_capabilities"] == [89, 120]  # FP8 hardware only
        with pytest.raises(ConfigError, match="fp8 KV needs compute capability 89"):
            _build(exported, tmp_path / "ampere", compute_capabilities="80,89")


def test_rtx_rebuild_replaces_only_on_success(exported_factory, tmp_path: Path) -> None:
    exported = exported_factory("llama")
    out = tmp_path / "engine"
    _build(exported, out)
    first = (out / "model.engine").read_bytes()
    with pytest.raises(ConfigError):
        _build(exported, out, max_model_len=100_000)
    assert (out / "model.engine").read_bytes() == first
    _build(exported, out, max_num_tokens=32)
    assert json.loads((out / "build.json").read_text())["profile"]["input_ids"][2] == [32]


def test_silent_fallback_is_detected(exported_factory) -> None:
    """A trtkv node the parser inlines (no creator registered) must fail the plugin route."""
    exported = exported_factory("llama")
    manifest = Manifest.load(exported)
    model = onnx.load(str(exported / "model.onnx"))
    del model.functions[:]
    model.functions.extend(lowered_op_functions(manifest.kv_dtype))  # bodies the parser can inline
    logger = RTX.Logger(RTX.Logger.ERROR)
    network = RTX.Builder(logger).create_network(0)
    parser = RTX.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    report = report_layers(RTX, network)
    nodes = trtkv_node_names(model)
    assert len(nodes) == 2 * manifest.num_layers and report.plugin_layers == ()
    with pytest.raises(ModelDirError) as info:
        check_trtkv_layers(RTX, report, nodes, "plugin", exported / "model.onnx")
    message = str(info.value)
    assert "\n" not in message
    assert f"{len(nodes)} of {len(nodes)} trtkv nodes fell back" in message and "KVAppend.0" in message
    assert "no creator for" in message and "trtkv::PagedAttention v1" in message and "--attention lowered" in message
    check_trtkv_layers(RTX, report, nodes, "lowered", exported / "model.onnx")  # nothing to complain about


def test_plugin_route_refusals_are_one_line(exported_factory, tmp_path: Path, monkeypatch) -> None:
    from trtkv.build.network import require_creators
    from trtkv.build.plugin_library import find_plugin_library
    from trtkv.build.tensorrt_env import has_cuda_device
    from trtkv.errors import BackendUnavailableError

    if not has_cuda_device():  # TensorRT for RTX would abort the process: refused first
        with pytest.raises(BackendUnavailableError, match="without a GPU.*--attention lowered"):
            _build(exported_factory("llama"), tmp_path / "engine", attention="plugin")
        assert not (tmp_path / "engine").exists()
    monkeypatch.delenv("TRTKV_PLUGIN_LIB", raising=False)
    with pytest.raises(BackendUnavailableError, match="libtrtkv_plugins.so not found.*cmake"):
        find_plugin_library(str(tmp_path / "missing.so"))
    with pytest.raises(ModelDirError, match="no creator for trtkv::KVAppend v1, trtkv::PagedAttention v1"):
        require_creators(RTX, tmp_path / "libtrtkv_plugins.so")  # nothing registered them


def test_bad_inputs_fail_with_one_line_and_write_nothing(exported_factory, tmp_path: Path) -> None:
    exported = exported_factory("llama")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text((exported / "manifest.json").read_text())
    (corrupt / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ModelDirError, match="re-export"):
        _build(corrupt, tmp_path / "e1")
    with pytest.raises(ConfigError, match="exported model directory"):
        _build(exported, exported)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        _build(exported, tmp_path / "file")
    with pytest.raises(ConfigError, match="under the file"):
        _build(exported, tmp_path / "file" / "engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt", "file"]


def test_cli_build_rtx(exported_factory, tmp_path: Path) -> None:
    exported = exported_factory("llama")
    base = [sys.executable, "-m", "trtkv", "build", str(exported)]
    ok = subprocess.run([*base, "-o", str(tmp_path / "e"), "--flavor", "rtx", "--max-num-tokens", "32",
                         "--max-num-seqs", "4", "--max-model-len", "128", "--compute-capabilities", "89"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "e" / "build.json").read_text())["compute_capabilities"] == [89]
    bad = subprocess.run([*base, "-o", str(tmp_path / "h"), "--flavor", "rtx", "--compute-capabilities", "90"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "Hopper" in bad.stderr, bad.stderr
    choice = subprocess.run([*base, "-o", str(tmp_path / "c"), "--attention", "fast"], capture_output=True, text=True)
    assert choice.returncode == 2 and "plugin" in choice.stderr and "lowered" in choice.stderr
    assert not (tmp_path / "h").exists() and not (tmp_path / "c").exists()


def _local_gpu_capability() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


@pytest.mark.gpu
@pytest.mark.skipif(_local_gpu_capability() not in (75, 80, 86, 89, 120, 121),
                    reason="needs a CUDA GPU that TensorRT for RTX runs on (sm_75/80/86/89/12x) and a CUDA torch")
@pytest.mark.parametrize("kv_dtype", ["fp16", "int8", "int8-dynamic"])
def test_rtx_engine_runs_like_onnxruntime(checkpoint_factory, tmp_path: Path, kv_dtype: str) -> None:
    """On a GPU: the engine deserializes and two steps (prefill, decode; the pool written by the
    runtime in between) give ONNX Runtime's logits and argmax."""
    import numpy as np

    from trtkv.export.exporter import ExportConfig, export
    from trtkv.runtime.backends.base import BackendConfig
    from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from trtkv.runtime.backends.tensorrt_backend import TensorRTBackend
    from trtkv.runtime.plan import ScheduledSeq, StepPlan

    exported = tmp_path / "onnx"
    kv_dtype, _, scales = kv_dtype.partition("-")
    export(checkpoint_factory("llama"), exported, ExportConfig(dtype="fp16", kv_dtype=kv_dtype, progress=False,
                                                               **({"kv_scales": scales} if scales else {})))
    _build(exported, tmp_path / "engine", compute_capabilities=str(_local_gpu_capability()))
    manifest = Manifest.load(exported)
    config = BackendConfig(num_blocks=32)
    engine, reference = TensorRTBackend(tmp_path / "engine", manifest, config), OnnxRuntimeBackend(exported, manifest, config)
    rng = np.random.default_rng(0)
    a, b = (tuple(int(x) for x in rng.integers(3, 300, n)) for n in (20, 7))
    plans = [StepPlan(seqs=(ScheduledSeq(0, a, 0, (3, 5), True), ScheduledSeq(1, b, 0, (9,), True))),
             StepPlan(seqs=(ScheduledSeq(0, (11,), 20, (3, 5), True), ScheduledSeq(1, (12,), 7, (9,), True)))]
    for plan in plans:
        got, want = engine.execute(plan), reference.execute(plan)
        assert (got.argmax(-1) == want.argmax(-1)).all()
        assert float(np.abs(got - want).max()) <= 2e-2 * float(np.abs(want).max())
