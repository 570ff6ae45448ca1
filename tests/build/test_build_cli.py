"""`trtkv build` and the TensorRT backend without TensorRT: clear errors, lazy imports, profiles.

Tests marked ``trt`` need the TensorRT libraries and a GPU and skip with a reason otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trtkv.build import BuildConfig, build_engine, profile_shapes
from trtkv.errors import BackendUnavailableError, ConfigError, ModelDirError
from trtkv.manifest import Manifest
from trtkv.runtime.backends.base import BackendConfig


def _tensorrt_available() -> bool:
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except Exception:
        return False


HAS_TRT = _tensorrt_available()
requires_trt = pytest.mark.skipif(not HAS_TRT, reason="TensorRT libraries are not installed (pip install 'trtkv[gpu]')")
without_trt = pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed; this checks the message shown without it")


def _manifest(**overrides: object) -> Manifest:
    fields: dict[str, object] = dict(
        architecture="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
        vocab_size=128, max_position_embeddings=512, dtype="fp16", kv_dtype="fp16",
        k_scales=((1.0,), (1.0,)), v_scales=((1.0,), (1.0,)), block_size=16, sliding_windows=(0, 0),
        eos_token_ids=(2,), bos_token_id=1,
    )
    fields.update(overrides)
    return Manifest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    _manifest().save(out)
    (out / "model.onnx").write_bytes(b"")
    return out


@without_trt
def test_build_without_tensorrt_says_what_to_install(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError) as info:
        build_engine(model_dir, tmp_path / "engines" / "tiny", BuildConfig(flavor="trt"))
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'trtkv[gpu]'" in message and "NVIDIA's Python package index" in message
    assert not (tmp_path / "engines" / "tiny").exists()


def test_build_rejects_a_directory_that_is_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="trtkv export"):
        build_engine(tmp_path / "missing", tmp_path / "out")


@without_trt
def test_tensorrt_backend_without_tensorrt(tmp_path: Path) -> None:
    from trtkv.runtime.backends.tensorrt_backend import TensorRTBackend

    (tmp_path / "model.engine").write_bytes(b"")
    with pytest.raises(BackendUnavailableError, match="pip install"):
        TensorRTBackend(tmp_path, _manifest(), BackendConfig(backend="tensorrt"))


def test_tensorrt_backend_requires_an_engine(tmp_path: Path) -> None:
    from trtkv.runtime.backends.tensorrt_backend import TensorRTBackend

    with pytest.raises(ModelDirError, match="trtkv build"):
        TensorRTBackend(tmp_path, _manifest(), BackendConfig(backend="tensorrt"))


def test_imports_are_lazy() -> None:
    code = (
        "import sys, trtkv.build, trtkv.runtime.backends.tensorrt_backend\n"
        "bad = [m for m in ('tensorrt', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_num_tokens=0), "max-num-tokens"),
        (dict(max_num_seqs=100, max_num_tokens=10), "cannot exceed"),
        (dict(block_size=12), "power of two"),
        (dict(opt_num_tokens=5000), "opt-num-tokens"),
        (dict(optimization_level=9), "optimization-level"),
        (dict(workspace_gib=0), "workspace-gib"),
        (dict(flavor="tensorrt"), "--flavor"),
        (dict(attention="fast"), "--attention"),
        (dict(compute_capabilities="8.9"), "comma-separated integers"),
        (dict(compute_capabilities="90"), "cannot build for compute capability 90 .*--flavor trt"),
        (dict(compute_capabilities="80,70"), "compute capability 70; choose from"),
    ],
)
def test_build_config_validation(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BuildConfig(**kwargs)  # type: ignore[arg-type]


def test_build_config_fields_have_help() -> None:
    for f in BuildConfig.__dataclass_fields__.values():
        assert f.metadata.get("help"), f.name


def test_profile_shapes_cover_every_graph_input() -> None:
    shapes = profile_shapes(_manifest(), BuildConfig(max_num_tokens=256, max_num_seqs=8, max_model_len=300))
    assert shapes["input_ids"] == ((1,), (8,), (256,))
    assert shapes["query_start_loc"] == ((2,), (9,), (9,))
    assert shapes["block_tables"][2] == (8, 19)  # ceil(300 / 16)
    assert shapes["logits_indices"][0] == (0,)
    assert shapes["kv_cache.1"][2] == (1 << 20, 2, 16, 2, 16)
    for lo, opt, hi in shapes.values():
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))


def test_profile_rejects_too_long_model_len() -> None:
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        profile_shapes(_manifest(), BuildConfig(max_model_len=4096))
    with pytest.raises(ConfigError, match="max-num-blocks"):
        profile_shapes(_manifest(), BuildConfig(max_num_blocks=4))


def test_pool_sizing_says_how_to_fit() -> None:
    from trtkv.runtime.backends.tensorrt_backend import plan_num_blocks

    gib = 2**30
    blocks = plan_num_blocks(free_bytes=70 * gib, total_bytes=80 * gib, utilization=0.9, engine_bytes=gib,
                             scratch_bytes=0, bytes_per_block=2**20, min_blocks=100, max_blocks=10**9)
    assert blocks == (72 - 10 - 1) * 1024 - 512
    with pytest.raises(ConfigError, match="gpu-memory-utilization.*max-model-len"):
        plan_num_blocks(free_bytes=2 * gib, total_bytes=80 * gib, utilization=0.9, engine_bytes=gib,
                        scratch_bytes=0, bytes_per_block=2**20, min_blocks=100, max_blocks=10**9)


@pytest.mark.trt
@pytest.mark.gpu
@requires_trt
@pytest.mark.parametrize("kv", [{}, {"kv_dtype": "int8", "kv_scales": "dynamic"}])  # + the plugins' dynamic layout
def test_build_tiny_engine(tmp_path: Path, kv: dict) -> None:
    pytest.importorskip("transformers")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trtkv.export.exporter import ExportConfig, export

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    hf.save_pretrained(tmp_path / "hf")
    export(tmp_path / "hf", tmp_path / "onnx", ExportConfig(dtype="fp16", progress=False, **kv))
    try:
        out = build_engine(tmp_path / "onnx", tmp_path / "engine", BuildConfig(max_num_tokens=32, max_num_seqs=4))
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    assert (out / "model.engine").stat().st_size > 0
    assert (out / "manifest.json").is_file() and (out / "libtrtkv_plugins.so").is_file()
