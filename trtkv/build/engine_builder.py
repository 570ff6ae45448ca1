"""`trtkv build`: exported ONNX (trtkv ops) -> TensorRT engine directory.

The engine directory ``engines/<name>/`` holds ``model.engine``, a copy of ``manifest.json``
(plus ``build.json`` with the profile and versions) and ``libtrtkv_plugins.so``, which the
TensorRT backend loads before deserializing. Networks are strongly typed (TensorRT 11: the
ONNX types are the precision, including the KV pool dtype chosen at export).

Imports tensorrt lazily; must not import torch.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from trtkv.build.config import DEFAULT_MAX_NUM_BLOCKS, BuildConfig
from trtkv.build.plugin_library import PLUGIN_LIBRARY_NAME, find_plugin_library
from trtkv.build.tensorrt_env import (
    import_tensorrt,
    load_plugin_library,
    make_logger,
    require_cuda_device,
)
from trtkv.errors import ConfigError, ModelDirError
from trtkv.manifest import INPUT_NAMES, KV_CACHE_INPUT, MANIFEST_FILE, Manifest

ENGINE_FILE = "model.engine"
BUILD_INFO_FILE = "build.json"

Shape = tuple[int, ...]


def profile_shapes(manifest: Manifest, config: BuildConfig) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every dynamic graph input of the exported model.

    Raises:
        ConfigError: the options do not fit the model (e.g. max_model_len too long).
    """
    block_size = config.block_size or manifest.block_size
    max_len = config.max_model_len or manifest.max_position_embeddings
    if max_len > manifest.max_position_embeddings:
        raise ConfigError(
            f"--max-model-len {max_len} exceeds the model's max_position_embeddings "
            f"({manifest.max_position_embeddings}); lower it"
        )
    max_blocks_per_seq = -(-max_len // block_size)
    max_pool = config.max_num_blocks or DEFAULT_MAX_NUM_BLOCKS
    if max_pool < max_blocks_per_seq:
        raise ConfigError(
            f"--max-num-blocks {max_pool} cannot hold one {max_len}-token sequence "
            f"({max_blocks_per_seq} blocks of {block_size}); raise it or lower --max-model-len"
        )
    t_max, s_max = config.max_num_tokens, config.max_num_seqs
    t_opt = config.opt_num_tokens or s_max
    s_opt = min(s_max, t_opt)
    m_opt = max(1, min(max_blocks_per_seq, 2048 // block_size))
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {
        "input_ids": ((1,), (t_opt,), (t_max,)),
        "positions": ((1,), (t_opt,), (t_max,)),
        "slot_mapping": ((1,), (t_opt,), (t_max,)),
        "query_start_loc": ((2,), (s_opt + 1,), (s_max + 1,)),
        "context_lens": ((1,), (s_opt,), (s_max,)),
        "block_tables": ((1, 1), (s_opt, m_opt), (s_max, max_blocks_per_seq)),
        # R = sampling sequences; 0 when every sequence is mid-prefill.
        "logits_indices": ((0,), (s_opt,), (s_max,)),
    }
    kv_tail = (2, block_size, manifest.num_kv_heads, manifest.head_dim)
    pool_opt = min(max_pool, max(max_blocks_per_seq * s_opt, 1))
    for layer in range(manifest.num_layers):
        shapes[KV_CACHE_INPUT.format(layer=layer)] = ((1, *kv_tail), (pool_opt, *kv_tail), (max_pool, *kv_tail))
    assert set(INPUT_NAMES) <= set(shapes)
    return shapes


def build_engine(onnx_dir: str | Path, out_dir: str | Path, config: BuildConfig | None = None) -> Path:
    """Build a TensorRT engine directory from an exported model directory.

    Args:
        onnx_dir: output of `trtkv export` (``model.onnx`` [+ external data], ``manifest.json``).
        out_dir: engine directory to create, conventionally ``engines/<name>``.
        config: profile and builder options (defaults: `BuildConfig()`).

    Returns:
        ``out_dir`` (holding model.engine, manifest.json, build.json, libtrtkv_plugins.so).

    Raises:
        ModelDirError: onnx_dir is not an exported model, or TensorRT cannot parse/build it.
        ConfigError: options do not fit the model.
        BackendUnavailableError: TensorRT, a GPU or the plugin library is missing (one line
            saying what to install or build).
    """
    config = config or BuildConfig()
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    manifest = Manifest.load(onnx_dir)
    shapes = profile_shapes(manifest, config)
    trt = import_tensorrt()
    logger = make_logger(trt, config.verbose)
    builder = require_cuda_device(trt, logger)
    plugin_path = find_plugin_library(config.plugin_library)
    load_plugin_library(trt, plugin_path)

    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    onnx_path = onnx_dir / manifest.onnx_file
    _progress(f"parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelDirError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown error'}")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * 2**30))
    builder_config.builder_optimization_level = config.optimization_level
    if hasattr(builder_config, "plugins_to_serialize"):
        builder_config.plugins_to_serialize = [str(plugin_path)]
    if hasattr(trt, "IProgressMonitor"):
        builder_config.progress_monitor = _make_progress_monitor(trt)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise ModelDirError(f"{onnx_path} has an unexpected input {name!r}; re-export with this trtkv")
        profile.set_shape(name, *shapes[name])
    builder_config.add_optimization_profile(profile)

    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = Path(config.timing_cache) if config.timing_cache else out_dir / "timing.cache"
    cache = builder_config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    builder_config.set_timing_cache(cache, ignore_mismatch=False)

    _progress(f"building engine ({network.num_layers} layers, {manifest.num_layers} decoder layers)")
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        errors = "; ".join(logger.errors[-5:]) or "see the TensorRT log above"
        raise ModelDirError(f"TensorRT failed to build an engine from {onnx_path}: {errors}")
    (out_dir / ENGINE_FILE).write_bytes(bytes(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(bytes(builder_config.get_timing_cache().serialize()))
    shutil.copy2(onnx_dir / MANIFEST_FILE, out_dir / MANIFEST_FILE)
    shutil.copy2(plugin_path, out_dir / PLUGIN_LIBRARY_NAME)
    info = {
        "tensorrt_version": trt.__version__,
        "build_seconds": round(time.monotonic() - started, 1),
        "source": str(onnx_dir.resolve()),
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "profile": {name: [list(s) for s in mmo] for name, mmo in shapes.items()},
    }
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    _progress(f"wrote {out_dir / ENGINE_FILE} in {info['build_seconds']} s")
    return out_dir


def _network_flags(trt: Any) -> int:
    """Strongly typed where the flag exists (TensorRT 10); TensorRT 11 networks always are."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _progress(message: str) -> None:
    print(f"trtkv build: {message}", file=sys.stderr, flush=True)


def _make_progress_monitor(trt: Any) -> Any:
    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            if parent_phase is None:
                _progress(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            self._steps.pop(phase_name, None)

    return _Monitor()
