"""`trtkv build`: exported ONNX (trtkv ops) -> TensorRT engine directory.

The engine directory ``engines/<name>/`` holds ``model.engine``, a copy of ``manifest.json``,
``build.json`` (flavor, attention route, profile, versions, the network's and the engine's
layer lists) and, for plugin engines, ``libtrtkv_plugins.so``, which the TensorRT backend
loads before deserializing. Networks are strongly typed (the ONNX types are the precision,
including the KV pool dtype chosen at export). The flavor (full TensorRT or TensorRT for
RTX) and the attention route (plugins or lowered standard layers) are described in
`trtkv.build.tensorrt_env` and `trtkv.build.network`.

Imports tensorrt lazily; must not import torch.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from trtkv.atomic_dir import check_output_dir, publish, staging_dir
from trtkv.build.config import DEFAULT_MAX_NUM_BLOCKS, BuildConfig
from trtkv.build.network import (
    ATTENTION_WORKSPACE_INPUT,
    check_trtkv_layers,
    load_for_tensorrt,
    report_layers,
    require_creators,
)
from trtkv.build.plugin_library import PLUGIN_LIBRARY_NAME, find_plugin_library
from trtkv.build.tensorrt_env import (
    flavor_of,
    has_cuda_device,
    import_tensorrt,
    load_plugin_library,
    make_logger,
    require_cuda_device,
)
from trtkv.errors import BackendUnavailableError, ConfigError, ModelDirError
from trtkv.manifest import INPUT_NAMES, KV_CACHE_INPUT, MANIFEST_FILE, Manifest
from trtkv.ops.schema import ceil_div

ENGINE_FILE = "model.engine"
#: Oldest GPU (compute capability x 10) with FP8 tensor types.
FP8_MIN_COMPUTE_CAPABILITY = 89
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
    max_blocks_per_seq = ceil_div(max_len, block_size)
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
        # R = sampling sequences (each 1 + its draft tokens with speculative decoding, so up
        # to the step's tokens); 0 when every sequence is mid-prefill.
        "logits_indices": ((0,), (s_opt,), (t_max,)),
    }
    kv_tail = (2, block_size, manifest.num_kv_heads, manifest.pool_head_dim)  # + exponent bytes (dynamic scales)
    pool_opt = min(max_pool, max(max_blocks_per_seq * s_opt, 1))
    for layer in range(manifest.num_layers):
        shapes[KV_CACHE_INPUT.format(layer=layer)] = ((1, *kv_tail), (pool_opt, *kv_tail), (max_pool, *kv_tail))
    assert set(INPUT_NAMES) <= set(shapes)
    return shapes


def build_engine(onnx_dir: str | Path, out_dir: str | Path, config: BuildConfig | None = None) -> Path:
    """Build a TensorRT engine directory from an exported model directory.

    The directory is written under a temporary name and renamed at the end, so a failed
    build leaves nothing behind (an existing ``out_dir`` is replaced only on success).

    Args:
        onnx_dir: output of `trtkv export` (``model.onnx`` [+ external data], ``manifest.json``).
        out_dir: engine directory to create, conventionally ``engines/<name>``.
        config: profile and builder options (defaults: `BuildConfig()`).

    Returns:
        ``out_dir`` (model.engine, manifest.json, build.json[, libtrtkv_plugins.so]).

    Raises:
        ModelDirError: onnx_dir is not an exported model, or TensorRT cannot parse/build it,
            or a trtkv node fell back to its ONNX function body.
        ConfigError: options do not fit the model or the flavor.
        BackendUnavailableError: TensorRT, a GPU (full TensorRT) or the plugin library is
            missing (one line saying what to install or build).
    """
    config = config or BuildConfig()
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    manifest = Manifest.load(onnx_dir)
    if manifest.weights != "none":
        raise ConfigError(f"{onnx_dir} has {manifest.weights} weights as ONNX Runtime MatMulNBits, which TensorRT "
                          "cannot build; export again without --weights for a TensorRT engine")
    shapes = profile_shapes(manifest, config)
    check_output_dir(out_dir, source=onnx_dir, what="the exported model directory")
    trt = import_tensorrt(config.flavor)
    flavor = flavor_of(trt)
    attention = config.attention if config.attention != "auto" else ("lowered" if flavor == "rtx" else "plugin")
    logger = make_logger(trt, config.verbose)
    builder = require_cuda_device(trt, logger) if flavor == "trt" else trt.Builder(logger)
    plugin_path = None
    if attention == "plugin" and flavor == "rtx" and not has_cuda_device():
        # Seen with TensorRT for RTX 1.7: its ONNX parser calls std::terminate right after
        # creating any plugin when no GPU is present (plugins/README.md), killing the process.
        raise BackendUnavailableError(
            "TensorRT for RTX cannot build plugin engines on a machine without a GPU (its ONNX parser "
            "aborts); use --attention lowered here, or build the plugin engine on the GPU machine"
        )
    if attention == "plugin":
        plugin_path = find_plugin_library(config.plugin_library)
        load_plugin_library(trt, plugin_path)
        require_creators(trt, plugin_path)

    model, expected_nodes = load_for_tensorrt(onnx_dir, manifest, attention)
    if attention == "plugin":  # the runtime sizes it (FlashInfer's plan for the step's shapes)
        shapes[ATTENTION_WORKSPACE_INPUT] = ((1,), (1 << 16,), (1 << 32,))
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    onnx_path = onnx_dir / manifest.onnx_file
    _progress(f"parsing {onnx_path} ({flavor}, attention: {attention})")
    parsed = _parse(parser, model, onnx_dir)
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelDirError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown error'}")
    report = report_layers(trt, network)
    check_trtkv_layers(trt, report, expected_nodes, attention, onnx_path)

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * 2**30))
    builder_config.builder_optimization_level = config.optimization_level
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer list in the engine and log
    targets = _set_targets(trt, builder_config, config, manifest) if flavor == "rtx" else ()
    if plugin_path is not None and hasattr(builder_config, "plugins_to_serialize"):
        builder_config.plugins_to_serialize = [str(plugin_path)]
    if hasattr(trt, "IProgressMonitor") and not config.verbose:
        builder_config.progress_monitor = _make_progress_monitor(trt)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise ModelDirError(f"{onnx_path} has an unexpected input {name!r}; re-export with this trtkv")
        profile.set_shape(name, *shapes[name])
    builder_config.add_optimization_profile(profile)

    cache_path: Path | None = None
    if flavor == "trt":  # TensorRT for RTX has no timing cache (its operations are no-ops there)
        cache_path = Path(config.timing_cache) if config.timing_cache else out_dir / "timing.cache"
        cache = builder_config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        builder_config.set_timing_cache(cache, ignore_mismatch=False)

    _progress(f"building engine ({network.num_layers} layers, {manifest.num_layers} decoder layers)")
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        errors = "; ".join(logger.errors[-5:]) or "see the TensorRT log above"
        hint = ""
        if attention == "lowered" and "OutOfMemory" in errors:
            hint = ("; the lowered attention's memory grows with max-num-tokens x (max-model-len + max-num-tokens): "
                    "lower --max-num-tokens / --max-model-len, or build with plugins")
        raise ModelDirError(f"TensorRT failed to build an engine from {onnx_path}: {errors}{hint}")
    info = {
        "flavor": flavor,
        "tensorrt_version": trt.__version__,
        "attention": attention,
        "kv_pool_write": "runtime",  # the engine never writes the pool (trtkv.build.network)
        "kv_pool_input_dtype": _pool_input_dtype(manifest, attention),
        "compute_capabilities": list(targets),
        "build_seconds": round(time.monotonic() - started, 1),
        "source": str(onnx_dir.resolve()),
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "profile": {name: [list(s) for s in mmo] for name, mmo in shapes.items()},
        "inputs": {network.get_input(i).name: str(network.get_input(i).dtype).rsplit(".", 1)[-1]
                   for i in range(network.num_inputs)},
        "network_layers": report.layer_types,
        "plugin_layers": list(report.plugin_layers),
        "engine_layers": parse_engine_layers(logger.engine_layers),
    }
    _write_engine_dir(out_dir, onnx_dir, bytes(serialized), builder_config, cache_path, plugin_path, info)
    _progress(f"wrote {out_dir / ENGINE_FILE} in {info['build_seconds']} s")
    return out_dir


def _parse(parser: Any, model: onnx.ModelProto, onnx_dir: Path) -> bool:
    """Parse an in-memory model; past protobuf's 2 GiB, save it with external data first."""
    if model.ByteSize() < 2**31 - 2**20:
        return bool(parser.parse(model.SerializeToString(), str(onnx_dir / "model.onnx")))
    with tempfile.TemporaryDirectory(prefix="trtkv-build-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
        return bool(parser.parse_from_file(str(path)))


def _set_targets(trt: Any, builder_config: Any, config: BuildConfig, manifest: Manifest) -> tuple[int, ...]:
    """TensorRT for RTX's ahead-of-time GPU targets. fp8 KV needs FP8 hardware (Ada, sm_89+):
    by default such models target only those; an explicit older target is refused."""
    targets = config.target_capabilities()
    if manifest.kv_dtype == "fp8":
        older = [cc for cc in targets if cc < FP8_MIN_COMPUTE_CAPABILITY]
        if older and config.compute_capabilities:
            raise ConfigError(
                f"fp8 KV needs compute capability {FP8_MIN_COMPUTE_CAPABILITY} or newer (Ada, Blackwell); "
                f"drop {', '.join(map(str, older))} from --compute-capabilities, or export with --kv-dtype int8 for Ampere"
            )
        targets = tuple(cc for cc in targets if cc >= FP8_MIN_COMPUTE_CAPABILITY)
    builder_config.num_compute_capabilities = len(targets)
    for i, cc in enumerate(targets):
        builder_config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{cc}"), i)
    return targets


def _pool_input_dtype(manifest: Manifest, attention: str) -> str:
    """How the runtime binds the pool: fp8 pools go to a lowered engine as int8 bit patterns."""
    if attention == "lowered" and manifest.kv_dtype == "fp8":
        return "int8"
    return manifest.kv_dtype


def parse_engine_layers(text: str) -> list[dict[str, Any]]:
    """``[{"name", "type", "inputs"}]`` of the built engine, from the verbose "Layers:" log block
    (``inputs``: the names of the tensors each layer reads)."""
    layers: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.startswith("Name: "):
            continue
        name = line[len("Name: "):].split(", LayerType: ", 1)[0]
        kind = line.split("LayerType: ", 1)[1].split(",", 1)[0] if "LayerType: " in line else ""
        reads = line.split("Inputs: [", 1)[1].split("], Outputs: [", 1)[0] if "Inputs: [" in line else ""
        inputs = [part.split(",", 1)[0].strip() for part in reads.split("{ Name: ")[1:]]
        layers.append({"name": name, "type": kind, "inputs": inputs})
    return layers


def _write_engine_dir(out_dir: Path, onnx_dir: Path, engine: bytes, builder_config: Any, cache_path: Path | None,
                      plugin_path: Path | None, info: dict[str, Any]) -> None:
    """Write everything into a sibling temporary directory, then swap it in."""
    staging = staging_dir(out_dir)
    try:
        (staging / ENGINE_FILE).write_bytes(engine)
        shutil.copy2(onnx_dir / MANIFEST_FILE, staging / MANIFEST_FILE)
        if plugin_path is not None:
            shutil.copy2(plugin_path, staging / PLUGIN_LIBRARY_NAME)
        (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if cache_path is not None:
            timing = bytes(builder_config.get_timing_cache().serialize())
            if cache_path.parent == out_dir:
                (staging / cache_path.name).write_bytes(timing)
            else:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                cache_path.write_bytes(timing)
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
