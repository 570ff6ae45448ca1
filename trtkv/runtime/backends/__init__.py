"""Model backends: turn a StepPlan into logits over a paged KV pool (ONNX Runtime, TensorRT)."""

from __future__ import annotations

from trtkv.manifest import Manifest
from trtkv.runtime.backends.base import BackendConfig, BaseBackend
from trtkv.runtime.backends.inputs import StepInputs, build_step_inputs

__all__ = ["BackendConfig", "BaseBackend", "StepInputs", "build_step_inputs", "create_backend"]


def create_backend(model_dir: str, config: BackendConfig, manifest: Manifest | None = None) -> BaseBackend:
    """The backend named by ``config.backend`` for an exported model directory (``manifest``:
    its manifest, when the caller loaded it already)."""
    from trtkv.errors import ConfigError

    if manifest is None:  # an engine directory holds model.engine instead of model.onnx
        manifest = Manifest.load(model_dir, require_onnx=config.backend != "tensorrt")
    if config.backend == "onnxruntime":
        from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_dir, manifest, config)
    if config.backend == "tensorrt":
        if config.kv_scales not in ("auto", manifest.kv_scale_mode):
            raise ConfigError(f"a TensorRT engine's KV scales are fixed at export ({manifest.kv_scale_mode}); "
                              f"re-export with --kv-scales {config.kv_scales} and rebuild, or drop --kv-scales")
        if config.kv_dtype not in ("auto", manifest.kv_dtype):
            raise ConfigError(
                f"a TensorRT engine's KV dtype is fixed at export ({manifest.kv_dtype}); "
                f"re-export with --kv-dtype {config.kv_dtype} and rebuild, or drop --kv-dtype"
            )
        from trtkv.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_dir, manifest, config)
    raise ConfigError(f"unknown backend {config.backend!r}; use onnxruntime or tensorrt")
